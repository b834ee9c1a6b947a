//! Benchmark: how long from `POST /v1/sandboxes` to the first successful command in the
//! new sandbox, restored from a memory template against cold-booted, measured side by
//! side in one run (two stacks, one agent each, on this machine: interleaved, one
//! sandbox at a time), then 4 creates at once from the template, and the exec round
//! trip of `true` through REST in a restored sandbox, and live forks of that sandbox
//! (`POST /v1/sandboxes/{id}/fork` without a snapshot) to their first command. Before
//! all that, on a stack of its own, creates claiming members of a warm pool of 4: one
//! at a time, then 4 at once.
//!
//! Run inside the test namespace, as scripts/test.sh sets up, after the template is
//! built (scripts/test.sh does, or `fluid-agent build-templates`):
//!   ip netns exec fluid-test target/debug/start-bench [RESTORES [BOOTS [FORKS [POOLED]]]]
//! (needs FLUID_GOLDEN_IMAGE_DIR; RESTORES defaults to 20, BOOTS to 3, FORKS to 5,
//! POOLED to 20).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use fluid_client::Client;
use fluid_client::snapshots::ForkRequest;
use fluid_client::types::{
    CreateSandboxRequest, CreateSandboxResponse, HostState, RunCommandRequest, StartPath,
};
use integration_tests::bench::percentile;
use integration_tests::stack::SHARED_TEMPLATES;
use integration_tests::{AgentOptions, Stack, StoreKind};

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Creates a sandbox and runs `true` in it until that succeeds: the time from the
/// create request to the first successful command, and the sandbox's id. The create
/// must have taken the path `expected`.
async fn create_to_first_exec(
    client: &Client,
    name: &str,
    expected: StartPath,
) -> Result<(Duration, String)> {
    let t = Instant::now();
    let created = client
        .create_sandbox(&CreateSandboxRequest {
            source_vm_name: "debian-12".into(),
            agent_id: "bench".into(),
            vm_name: Some(name.to_owned()),
            wait_for_ip: Some(true),
            ..Default::default()
        })
        .await?;
    first_exec(client, t, created, expected).await
}

/// Live-forks `source` and runs `true` in the fork until that succeeds: the time from
/// the fork request to the first successful command, and the fork's id.
async fn fork_to_first_exec(
    client: &Client,
    source: &str,
    name: &str,
) -> Result<(Duration, String)> {
    let t = Instant::now();
    let created = client
        .fork_sandbox(
            source,
            &ForkRequest {
                vm_name: Some(name.to_owned()),
                wait_for_ip: Some(true),
                ..Default::default()
            },
        )
        .await?;
    first_exec(client, t, created, StartPath::Fork).await
}

/// Runs `true` in the sandbox just `created` (at `t`) until it succeeds.
async fn first_exec(
    client: &Client,
    t: Instant,
    created: CreateSandboxResponse,
    expected: StartPath,
) -> Result<(Duration, String)> {
    let id = created.sandbox.id.clone();
    ensure!(
        created.sandbox.start_path == Some(expected),
        "{id} started by {:?}, expected {expected:?}",
        created.sandbox.start_path
    );
    let run = RunCommandRequest {
        command: "true".into(),
        timeout_sec: Some(30),
        ..Default::default()
    };
    let deadline = t + Duration::from_secs(600);
    loop {
        match client.run_command(&id, &run).await {
            Ok(r) if r.command.exit_code == 0 => return Ok((t.elapsed(), id)),
            Ok(r) => bail!("`true` exited {} in {id}", r.command.exit_code),
            // sshd is not up yet (a cold boot): try again.
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e).context("no successful command after 600 s"),
        }
    }
}

/// The first pool of the stack's agent "a" as `GET /v1/hosts` reports it: (size,
/// ready, filling).
async fn pool_of(stack: &Stack) -> Result<(u32, u32, u32)> {
    let hosts = stack.client.list_hosts().await?;
    let host = stack.host("a");
    let p = hosts
        .hosts
        .iter()
        .find(|h| h.name == host)
        .and_then(|h| h.pools.first())
        .context("the host reports no pool")?;
    Ok((p.size, p.ready, p.filling))
}

/// Waits until the pool is full and nothing is being restored.
async fn pool_full(stack: &Stack) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Ok((size, ready, 0)) = pool_of(stack).await
            && ready == size
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the pool was not full within 600 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A stack whose agent keeps 4 sandboxes warm: `n` creates one at a time (each with
/// the pool full), then twice 4 creates at once; and the memory of a paused member.
async fn pool_section(n: usize) -> Result<(Vec<Duration>, Vec<Duration>, String)> {
    let mut stack =
        Stack::start(StoreKind::Sqlite, vec![AgentOptions::new("a").warm_pool(4)]).await?;
    stack
        .wait_host("a", HostState::Online, Duration::from_secs(30))
        .await?;
    pool_full(&stack).await?;
    let memory = match integration_tests::virsh::domains()?
        .into_iter()
        .find(|d| d.starts_with("fluid-pool-"))
    {
        Some(d) => qemu_memory(&d),
        None => "unknown (no pool domain)".to_owned(),
    };
    let mut one = Vec::new();
    for i in 0..n {
        pool_full(&stack).await?;
        let (d, id) = create_to_first_exec(
            &stack.client,
            &format!("{}-p{i}", stack.prefix),
            StartPath::Pool,
        )
        .await?;
        println!("pool    {i:>2}: {:.2} s", secs(d));
        one.push(d);
        stack.client.destroy_sandbox(&id).await?;
    }
    let mut four = Vec::new();
    for round in 0..2 {
        pool_full(&stack).await?;
        let runs = (0..4).map(|i| {
            let name = format!("{}-q{round}{i}", stack.prefix);
            let client = stack.client.clone();
            async move { create_to_first_exec(&client, &name, StartPath::Pool).await }
        });
        for r in futures::future::join_all(runs).await {
            let (d, id) = r?;
            println!("pool, 4 at once: {:.2} s", secs(d));
            four.push(d);
            stack.client.destroy_sandbox(&id).await?;
        }
    }
    Ok((one, four, memory))
}

/// The resident memory of domain `name`'s QEMU process (`/proc/<pid>/status`).
fn qemu_memory(name: &str) -> String {
    let pid = std::fs::read_to_string(format!("/run/libvirt/qemu/{name}.pid"))
        .unwrap_or_default()
        .trim()
        .to_owned();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let fields: Vec<String> = status
        .lines()
        .filter(|l| {
            ["VmRSS:", "RssAnon:", "RssFile:", "RssShmem:"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    if fields.is_empty() {
        format!("unknown (no QEMU process for {name})")
    } else {
        fields.join(", ")
    }
}

fn row(name: &str, v: &mut [Duration]) {
    if v.is_empty() {
        println!("{name:<44} {:>4}  (not measured in this run)", 0);
        return;
    }
    v.sort();
    println!(
        "{name:<44} {:>4} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
        v.len(),
        secs(percentile(v, 0.0)),
        secs(percentile(v, 50.0)),
        secs(percentile(v, 99.0)),
        secs(percentile(v, 100.0)),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if matches!(first.as_deref(), Some("--version" | "-V")) {
        println!("start-bench {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    let restores: usize = first.map(|s| s.parse()).transpose()?.unwrap_or(20);
    let boots: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3);
    let forks: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    let pooled: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(20);
    let ready = std::fs::read_dir(SHARED_TEMPLATES)
        .map(|d| {
            d.filter_map(Result::ok).any(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("debian-12-1c-512m-")
                    && e.path().join("meta.json").exists()
            })
        })
        .unwrap_or(false);
    ensure!(
        ready,
        "no 1-vCPU 512 MiB template in {SHARED_TEMPLATES}: run scripts/test.sh's template step (fluid-agent build-templates) first"
    );
    // The warm pool first, on its own (its refills would slow the other paths down).
    let pool = pool_section(pooled).await?;

    let mut warm = Stack::start(StoreKind::Sqlite, vec![AgentOptions::new("a")]).await?;
    let mut cold =
        Stack::start(StoreKind::Sqlite, vec![AgentOptions::new("a").cold_boot()]).await?;
    for s in [&mut warm, &mut cold] {
        s.wait_host("a", HostState::Online, Duration::from_secs(30))
            .await?;
    }

    // One at a time, interleaved: a cold boot after every restores/boots restores.
    let (mut from_restore, mut from_boot) = (Vec::new(), Vec::new());
    let every = (restores / boots.max(1)).max(1);
    for n in 0..restores {
        let (d, id) = create_to_first_exec(
            &warm.client,
            &format!("{}-r{n}", warm.prefix),
            StartPath::Restore,
        )
        .await?;
        println!("restore {n:>2}: {:.2} s", secs(d));
        from_restore.push(d);
        warm.client.destroy_sandbox(&id).await?;
        if (n + 1) % every == 0 && from_boot.len() < boots {
            let (d, id) = create_to_first_exec(
                &cold.client,
                &format!("{}-b{n}", cold.prefix),
                StartPath::Boot,
            )
            .await?;
            println!("boot       {:.2} s", secs(d));
            from_boot.push(d);
            cold.client.destroy_sandbox(&id).await?;
        }
    }

    // Four at once from the template.
    let mut concurrent = Vec::new();
    for round in 0..2 {
        let runs = (0..4).map(|i| {
            let name = format!("{}-c{round}{i}", warm.prefix);
            let client = warm.client.clone();
            async move { create_to_first_exec(&client, &name, StartPath::Restore).await }
        });
        for r in futures::future::join_all(runs).await {
            let (d, id) = r?;
            concurrent.push(d);
            warm.client.destroy_sandbox(&id).await?;
        }
    }

    // The exec round trip of `true` in a restored sandbox.
    let idle = format!("{}-x", warm.prefix);
    let (_, id) = create_to_first_exec(&warm.client, &idle, StartPath::Restore).await?;
    let run = RunCommandRequest {
        command: "true".into(),
        ..Default::default()
    };
    let mut exec = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        warm.client.run_command(&id, &run).await?;
        exec.push(t.elapsed());
    }
    let memory = qemu_memory(&idle);

    // Live forks of that sandbox, one at a time.
    let mut forked = Vec::new();
    for n in 0..forks {
        let (d, fork) =
            fork_to_first_exec(&warm.client, &id, &format!("{}-f{n}", warm.prefix)).await?;
        println!("fork    {n:>2}: {:.2} s", secs(d));
        forked.push(d);
        warm.client.destroy_sandbox(&fork).await?;
    }
    warm.client.destroy_sandbox(&id).await?;

    println!();
    println!("create → first successful `true`, through REST, TCG, 1 vCPU 512 MiB (seconds)");
    println!(
        "{:<44} {:>4} {:>8} {:>8} {:>8} {:>8}",
        "path", "n", "min", "p50", "p99", "max"
    );
    let (mut from_pool, mut pool_concurrent, pool_memory) = pool;
    row(
        "from the warm pool (pool full at each create)",
        &mut from_pool,
    );
    row("warm pool, 4 creates at once", &mut pool_concurrent);
    row("restore from the memory template", &mut from_restore);
    row("cold boot", &mut from_boot);
    row("restore, 4 creates at once", &mut concurrent);
    row("exec `true` via REST (restored sandbox)", &mut exec);
    row("live fork of a running sandbox", &mut forked);
    let ratio =
        secs(percentile(&from_boot, 50.0)) / secs(percentile(&from_restore, 50.0)).max(1e-9);
    println!("cold boot p50 / restore p50 = {ratio:.1}×");
    let ratio =
        secs(percentile(&from_restore, 50.0)) / secs(percentile(&from_pool, 50.0)).max(1e-9);
    println!("restore p50 / pool p50 = {ratio:.1}×");
    println!("memory of an idle (paused) pool member's QEMU: {pool_memory}");
    println!("memory of an idle restored sandbox's QEMU (512 MiB guest): {memory}");
    Ok(())
}
