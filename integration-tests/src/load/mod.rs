//! The control-plane load harness (`loadtest`): drives a controller over simulated
//! hosts ([`crate::fleet::SimFleet`]) as real clients would, and measures it.
//!
//! A run has three timed phases: creates (at a set concurrency), sessions (each with
//! its own agent token and sandboxes, running the [`Mix`] of operations: commands with
//! streamed output, file reads and writes, snapshots, lists, egress requests approved
//! by an operator) and destroys. Every loop is bounded in count and time. It reports
//! per-route throughput and latency, errors by kind, audit events per second, the
//! controller's memory and CPU and the database's size, and verifies the audit chain
//! with `fluidctl audit verify`.

pub mod caller;
pub mod monitor;
pub mod record;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt as _;
use reqwest::Method;
use serde_json::json;
use tokio::time::Instant;

pub use caller::Caller;
pub use monitor::{Monitor, Usage};
pub use record::Recorder;
pub use session::{Mix, Session};

use crate::fleet::SimFleet;

/// What a run does.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub sandboxes: u32,
    pub sessions: u32,
    pub duration: Duration,
    /// Operations per session at most.
    pub budget: u64,
    pub create_concurrency: usize,
    pub mix: Mix,
    pub think: Duration,
}

/// A phase's figures.
#[derive(Debug)]
pub struct Phase {
    pub name: &'static str,
    pub elapsed: Duration,
    pub rec: Arc<Recorder>,
    pub usage: Usage,
}

/// What a run measured.
#[derive(Debug)]
pub struct Outcome {
    pub creates: Phase,
    pub sessions: Phase,
    pub destroys: Phase,
    /// Sandboxes created.
    pub created: usize,
    /// Operations the sessions ran.
    pub operations: u64,
    pub audit_events_during_sessions: u64,
    pub audit_events_total: u64,
    pub chain: String,
    pub chain_ok: bool,
    pub database_bytes: u64,
}

fn http() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?)
}

/// `fluidctl audit verify` against the fleet's controller: (ok, events, its line).
pub fn verify_audit(fleet: &SimFleet) -> Result<(bool, u64, String)> {
    let out = std::process::Command::new(fleet.bin_dir.join("fluidctl"))
        .args([
            "--url",
            &fleet.api_url,
            "--token",
            &fleet.admin_token,
            "audit",
            "verify",
        ])
        .output()
        .context("running fluidctl audit verify")?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let events = text
        .strip_prefix("audit chain OK: ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let line = if text.is_empty() {
        String::from_utf8_lossy(&out.stderr).trim().to_owned()
    } else {
        text
    };
    Ok((out.status.success(), events, line))
}

/// Runs the three phases against `fleet` (its hosts online).
pub async fn run(fleet: &SimFleet, opts: &LoadOptions) -> Result<Outcome> {
    let http = http()?;
    let pid = fleet
        .controller
        .pid()
        .context("the controller is not running")?;
    let setup = Arc::new(Recorder::default());
    let admin = Caller::new(
        http.clone(),
        &fleet.api_url,
        &fleet.admin_token,
        setup.clone(),
    );
    let token = |name: String, role: &'static str, agent: Option<String>| {
        let admin = admin.clone();
        async move {
            let body = match agent {
                Some(a) => json!({"name": name, "role": role, "agent_id": a}),
                None => json!({"name": name, "role": role}),
            };
            let made = admin
                .json(
                    "POST /v1/tokens",
                    Method::POST,
                    "/v1/tokens",
                    Some(body),
                    &[201],
                )
                .await
                .map_err(|e| anyhow::anyhow!("creating a token: {}", e.0))?;
            made["token"]
                .as_str()
                .map(str::to_owned)
                .context("no token in the answer")
        }
    };
    let operator = token("load-operator".into(), "operator", None).await?;
    let mut agent_tokens = Vec::new();
    for i in 0..opts.sessions {
        agent_tokens.push(token(format!("load-{i}"), "agent", Some(format!("load-{i}"))).await?);
    }

    // Creates, each by the session that will own the sandbox.
    let creates = Arc::new(Recorder::default());
    let monitor = Monitor::start(pid);
    let t = Instant::now();
    let made: Vec<(usize, String)> = futures::stream::iter(0..opts.sandboxes)
        .map(|i| {
            let owner = (i % opts.sessions.max(1)) as usize;
            let caller = Caller::new(http.clone(), &fleet.api_url, &agent_tokens[owner], creates.clone());
            async move {
                let body = json!({"source_vm_name": "debian-12", "agent_id": format!("load-{owner}"),
                    "vm_name": format!("load-{i}"), "cpu": 1, "memory_mb": 256, "auto_start": true});
                let created = caller
                    .json("POST /v1/sandboxes", Method::POST, "/v1/sandboxes", Some(body), &[201])
                    .await
                    .ok()?;
                Some((owner, created["sandbox"]["id"].as_str()?.to_owned()))
            }
        })
        .buffer_unordered(opts.create_concurrency.max(1))
        .filter_map(|x| async move { x })
        .collect()
        .await;
    let creates = Phase {
        name: "creates",
        elapsed: t.elapsed(),
        rec: creates,
        usage: monitor.finish(),
    };
    if made.is_empty() {
        bail!("no sandbox was created:\n{:?}", creates.rec.errors());
    }
    let (_, before, _) = verify_audit(fleet)?;

    // Sessions.
    let rec = Arc::new(Recorder::default());
    let operator = Caller::new(http.clone(), &fleet.api_url, &operator, rec.clone());
    let monitor = Monitor::start(pid);
    let t = Instant::now();
    let deadline = t + opts.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, tok) in agent_tokens.iter().enumerate() {
        let session = Session {
            agent: Caller::new(http.clone(), &fleet.api_url, tok, rec.clone()),
            operator: operator.clone(),
            sandboxes: made
                .iter()
                .filter(|(o, _)| *o == i)
                .map(|(_, id)| id.clone())
                .collect(),
            mix: opts.mix.clone(),
            think: opts.think,
        };
        tasks.spawn(session.run(deadline, opts.budget));
    }
    let mut operations = 0;
    while let Some(n) = tasks.join_next().await {
        operations += n.context("a session task")?;
    }
    let sessions = Phase {
        name: "sessions",
        elapsed: t.elapsed(),
        rec,
        usage: monitor.finish(),
    };
    let (_, after, _) = verify_audit(fleet)?;

    // Destroys.
    let destroys = Arc::new(Recorder::default());
    let monitor = Monitor::start(pid);
    let t = Instant::now();
    futures::stream::iter(made.iter())
        .for_each_concurrent(opts.create_concurrency.max(1), |(owner, id)| {
            let caller = Caller::new(
                http.clone(),
                &fleet.api_url,
                &agent_tokens[*owner],
                destroys.clone(),
            );
            async move {
                let _ = caller
                    .json(
                        "DELETE /v1/sandboxes/{id}",
                        Method::DELETE,
                        &format!("/v1/sandboxes/{id}"),
                        None,
                        &[200, 204],
                    )
                    .await;
            }
        })
        .await;
    let destroys = Phase {
        name: "destroys",
        elapsed: t.elapsed(),
        rec: destroys,
        usage: monitor.finish(),
    };
    let (chain_ok, total, chain) = verify_audit(fleet)?;
    let database_bytes = match fleet.database() {
        Some(db) => monitor::postgres_bytes(db).unwrap_or(0),
        None => monitor::sqlite_bytes(&fleet.data_dir()),
    };
    Ok(Outcome {
        created: made.len(),
        creates,
        sessions,
        destroys,
        operations,
        audit_events_during_sessions: after.saturating_sub(before),
        audit_events_total: total,
        chain,
        chain_ok,
        database_bytes,
    })
}

impl Outcome {
    /// The report: each phase's table, errors by kind, resources, the audit chain.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for p in [&self.creates, &self.sessions, &self.destroys] {
            out += &format!(
                "\n-- {} ({:.1} s; controller: peak RSS {:.0} MiB, CPU {:.2} cores)\n{}",
                p.name,
                p.elapsed.as_secs_f64(),
                p.usage.peak_rss_mib,
                p.usage.cpu_cores,
                p.rec.table(p.elapsed)
            );
        }
        out += &format!(
            "\ncreated {} sandboxes: {:.1} creates/s; sessions ran {} operations ({:.1}/s)\n",
            self.created,
            self.created as f64 / self.creates.elapsed.as_secs_f64().max(1e-3),
            self.operations,
            self.operations as f64 / self.sessions.elapsed.as_secs_f64().max(1e-3),
        );
        out += &format!(
            "audit: {} events during the sessions ({:.1}/s), {} in all; {}\n",
            self.audit_events_during_sessions,
            self.audit_events_during_sessions as f64
                / self.sessions.elapsed.as_secs_f64().max(1e-3),
            self.audit_events_total,
            self.chain
        );
        out += &format!(
            "database: {:.1} MiB\n",
            self.database_bytes as f64 / f64::from(1 << 20)
        );
        let mut errors = String::new();
        for p in [&self.creates, &self.sessions, &self.destroys] {
            for (k, n) in p.rec.errors() {
                errors += &format!("  {:>7}  {} {k}\n", n, p.name);
            }
        }
        out += if errors.is_empty() {
            "errors: none\n".to_owned()
        } else {
            format!("errors:\n{errors}")
        }
        .as_str();
        out
    }

    /// Errors of every phase other than intended 429s.
    pub fn unintended_errors(&self) -> u64 {
        [&self.creates, &self.sessions, &self.destroys]
            .iter()
            .map(|p| p.rec.unintended_errors())
            .sum()
    }
}
