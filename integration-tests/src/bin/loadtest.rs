//! `loadtest`: the control plane under fleet-scale load, on simulated hosts. Starts a
//! controller (SQLite or PostgreSQL) and one `fluid-agent` serving `--hosts` simulated
//! hosts, then creates `--sandboxes` sandboxes and runs `--sessions` agent sessions for
//! `--duration` (see `integration_tests::load`), and prints a table per phase. Traffic
//! goes only to loopback.
//!
//!   target/debug/loadtest --store postgres --hosts 50 --sandboxes 1000 --sessions 300 --duration 300
//!
//! Exits non-zero when an error other than an intended 429 happened, or the audit
//! chain does not verify. `--smoke` is the small run CI makes (a few seconds).
//! PostgreSQL needs FLUID_TEST_DATABASE_URL (scripts/test.sh sets it) and root.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, ValueEnum};
use integration_tests::fleet::{SimFleet, SimOptions};
use integration_tests::load::{self, LoadOptions, Mix};
use integration_tests::stack::StoreKind;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Store {
    Sqlite,
    Postgres,
}

/// Load test of the controller over simulated hosts.
#[derive(Debug, Parser)]
struct Args {
    #[arg(long, value_enum, default_value = "sqlite")]
    store: Store,
    #[arg(long, default_value_t = 50)]
    hosts: u32,
    #[arg(long, default_value_t = 1000)]
    sandboxes: u32,
    #[arg(long, default_value_t = 300)]
    sessions: u32,
    /// Seconds the sessions run.
    #[arg(long, default_value_t = 300)]
    duration: u64,
    /// Operations per session at most.
    #[arg(long, default_value_t = 100_000)]
    budget: u64,
    /// Creates (and destroys) at once.
    #[arg(long, default_value_t = 64)]
    create_concurrency: usize,
    /// Weights of the sessions' operations.
    #[arg(
        long,
        default_value = "exec=50,read=12,write=12,snapshot=4,list=18,approval=4"
    )]
    mix: Mix,
    /// Milliseconds a session pauses between operations.
    #[arg(long, default_value_t = 500)]
    think_ms: u64,
    /// Simulated guests: a command's shortest run, its output and that output's pace.
    #[arg(long, default_value_t = 200)]
    exec_ms: u64,
    #[arg(long, default_value_t = 16384)]
    output_bytes: u64,
    #[arg(long, default_value_t = 65536)]
    output_bytes_per_sec: u64,
    /// Simulated hosts: a domain's start to its lease.
    #[arg(long, default_value_t = 0)]
    boot_ms: u64,
    /// Extra lines of the controller's configuration (top level).
    #[arg(long, default_value = "")]
    controller_config: String,
    /// CI's small run: 3 hosts, 30 sandboxes, 10 sessions for 5 s.
    #[arg(long)]
    smoke: bool,
}

async fn run(mut a: Args) -> Result<bool> {
    if a.smoke {
        (a.hosts, a.sandboxes, a.sessions, a.duration, a.think_ms) = (3, 30, 10, 5, 50);
    }
    let store = match a.store {
        Store::Sqlite => StoreKind::Sqlite,
        Store::Postgres => StoreKind::Postgres,
    };
    let mut opts = SimOptions::new(a.hosts, store);
    opts.log_level = "warn".into();
    opts.simulated = format!(
        "boot_ms = {}\nexec_ms = {}\noutput_bytes = {}\noutput_bytes_per_sec = {}\ncpus = 64\nmemory_mb = 262144\n",
        a.boot_ms, a.exec_ms, a.output_bytes, a.output_bytes_per_sec
    );
    opts.controller_top = format!("heartbeat_interval_secs = 5\n{}\n", a.controller_config);
    println!(
        "loadtest: {:?}, {} simulated hosts, {} sandboxes, {} sessions for {} s (think {} ms; mix {:?}); machine: {} cores",
        a.store,
        a.hosts,
        a.sandboxes,
        a.sessions,
        a.duration,
        a.think_ms,
        a.mix,
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    let mut fleet = SimFleet::start(opts).await?;
    fleet.wait_online(Duration::from_secs(120)).await?;
    let outcome = load::run(
        &fleet,
        &LoadOptions {
            sandboxes: a.sandboxes,
            sessions: a.sessions,
            duration: Duration::from_secs(a.duration),
            budget: a.budget,
            create_concurrency: a.create_concurrency,
            mix: a.mix,
            think: Duration::from_millis(a.think_ms),
        },
    )
    .await?;
    println!("{}", outcome.report());
    let bad = outcome.unintended_errors();
    if bad > 0 || !outcome.chain_ok {
        eprintln!(
            "loadtest FAILED: {bad} unintended errors; audit chain ok: {}; controller log tail:\n{}",
            outcome.chain_ok,
            fleet.controller.log_tail(20)
        );
        return Ok(false);
    }
    Ok(true)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadtest: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}
