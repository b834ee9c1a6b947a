//! Attacks on the host's disk (issue 12, hole 7): a `readonly` token asks for diffs,
//! each of which exports whole disk images to the agent's scratch directory, and an
//! `agent` token floods snapshots. One real sandbox under TCG, a real agent and
//! controller; the agent's `<state_dir>/scratch` is a 300 MiB tmpfs mounted by the
//! test, smaller than one export of the golden image's disk (its measured allocation
//! is about 400 MiB).
//!
//! - A diff that cannot fit is refused with 507 and a message naming the figures;
//!   nothing is left in scratch, the file system's free space is what it was, and no
//!   temporary snapshot remains.
//! - Concurrent diffs past `[disk] max_inspections_per_sandbox` get 429 (or 507), and
//!   concurrent snapshots past `max_snapshot_jobs_per_sandbox` get 429; never a 500.
//! - Past `max_snapshots_per_sandbox`, a snapshot is refused with 409 and a message.
//!
//! (Hole 8, the crafted directory of duplicate names, is proven in
//! `host-agent/inspect/src/tests/duplicate_tests.rs`: the ext4 reader runs in the agent
//! on bytes the guest wrote, no VM is needed to craft them.)

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fluid_client::types::HostState;
use integration_tests::api::Api;
use integration_tests::guest::{create, ready};
use integration_tests::stack::{AgentOptions, Stack, StoreKind};
use reqwest::Method;
use serde_json::{Value, json};

const SCRATCH_MIB: u64 = 300;
const MAX_SNAPSHOTS: usize = 3;

/// A tmpfs mounted over a directory, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u64) -> Result<Self> {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={mib}m,mode=0700"))
            .arg("fluid-hostile-disk")
            .arg(dir)
            .output()?;
        ensure!(
            out.status.success(),
            "mount tmpfs on {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Self(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .output();
    }
}

/// Bytes available on the file system holding `dir` (`stat -f`).
fn available(dir: &Path) -> Result<u64> {
    let out = std::process::Command::new("stat")
        .args(["-f", "-c", "%a %S"])
        .arg(dir)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut f = text.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(blocks)), Some(Ok(size))) = (f.next(), f.next()) else {
        anyhow::bail!("stat -f {}: {text}", dir.display());
    };
    Ok(blocks * size)
}

fn entries(dir: &Path) -> Result<Vec<String>> {
    Ok(std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?)
}

/// The domain's snapshots as libvirt lists them (the agent's temporary ones included).
fn domain_snapshots(domain: &str) -> Result<Vec<String>> {
    let out = std::process::Command::new("virsh")
        .args(["-c", "qemu:///system", "snapshot-list", "--name", domain])
        .output()?;
    ensure!(
        out.status.success(),
        "virsh snapshot-list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

fn error_text(body: &Value) -> String {
    body["error"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_readonly_token_cannot_fill_the_hosts_disk() -> Result<()> {
    let started = Instant::now();
    let mut stack = Stack::start(
        StoreKind::Sqlite,
        vec![
            AgentOptions::new("a")
                .memory_mb(4096)
                .config("disk.min_free_mb = 16")
                .config("disk.min_free_percent = 0")
                .config(&format!("disk.max_snapshots_per_sandbox = {MAX_SNAPSHOTS}"))
                .config("disk.max_snapshot_jobs_per_sandbox = 1")
                .config("disk.max_inspections_per_sandbox = 1"),
        ],
    )
    .await?;
    stack
        .wait_host("a", HostState::Online, Duration::from_secs(30))
        .await?;
    let agent_token = stack.token_cli("disk-bot", "agent", Some("agent-disk"))?;
    let readonly_token = stack.token_cli("disk-reader", "readonly", Some("agent-disk"))?;
    let agent = stack.client_with(&agent_token)?;
    let api = Api::new(&stack.api_url);
    let name = format!("{}-disk", stack.prefix);
    let (s, _) = create(&agent, "agent-disk", &name).await?;
    ready(&agent, &s, Duration::from_secs(240)).await?;
    println!("sandbox {s} ready ({:.0?})", started.elapsed());

    let scratch = stack.agent("a")?.state_dir.join("scratch");
    let _tmpfs = Tmpfs::mount(&scratch, SCRATCH_MIB)?;
    let snapshot = |n: String| {
        let (api, token, s) = (api.clone(), agent_token.clone(), s.clone());
        async move {
            api.send(
                &token,
                Method::POST,
                &format!("/v1/sandboxes/{s}/snapshots"),
                Some(json!({"name": n})),
            )
            .await
        }
    };
    let (status, body) = snapshot("base".into()).await?;
    ensure!(status == 201, "snapshot base: {status} {body}");

    // 1. A diff whose exports cannot fit: 507 before anything is written.
    let before = available(&scratch)?;
    let diff = |from: &'static str| {
        let (api, token, s) = (api.clone(), readonly_token.clone(), s.clone());
        async move {
            api.send(
                &token,
                Method::POST,
                &format!("/v1/sandboxes/{s}/diff"),
                Some(json!({"from_snapshot": from})),
            )
            .await
        }
    };
    let t = Instant::now();
    let (status, body) = diff("base").await?;
    println!(
        "readonly diff base→now: {status} in {:.1?}: {}",
        t.elapsed(),
        error_text(&body)
    );
    ensure!(
        status == 507,
        "expected 507 Insufficient Storage: {status} {body}"
    );
    let message = error_text(&body);
    ensure!(
        message.contains("not enough disk space") && message.contains("MiB"),
        "the refusal says why: {message}"
    );
    let after = available(&scratch)?;
    let left = entries(&scratch)?;
    println!(
        "scratch: {} MiB free before, {} MiB after, {} files left",
        before >> 20,
        after >> 20,
        left.len()
    );
    ensure!(left.is_empty(), "files left in scratch: {left:?}");
    ensure!(
        after + (4 << 20) >= before,
        "the scratch file system lost space: {before} → {after}"
    );
    let snaps = domain_snapshots(&name)?;
    ensure!(
        snaps == ["base"],
        "a temporary snapshot was left behind: {snaps:?}"
    );

    // 2. A flood of diffs: each is 429 (the per-sandbox cap) or 507, never a 500.
    let answers = futures::future::join_all((0..6).map(|_| diff("base"))).await;
    let mut codes = Vec::new();
    for a in answers {
        let (status, body) = a?;
        ensure!(
            status == 429 || status == 507,
            "a diff in a flood: {status} {body}"
        );
        codes.push(status);
    }
    println!("6 concurrent diffs: {codes:?}");
    ensure!(entries(&scratch)?.is_empty(), "files left in scratch");

    // 3. A flood of snapshots: one at a time per sandbox, the others 429.
    let t = Instant::now();
    let answers = futures::future::join_all((0..5).map(|i| snapshot(format!("flood-{i}")))).await;
    let mut taken = 0;
    let mut busy = Vec::new();
    for a in answers {
        let (status, body) = a?;
        match status {
            201 => taken += 1,
            429 => busy.push(error_text(&body)),
            _ => anyhow::bail!("a snapshot in a flood: {status} {body}"),
        }
    }
    println!(
        "5 concurrent snapshots in {:.1?}: {taken} taken, {} refused with 429: {}",
        t.elapsed(),
        busy.len(),
        busy.first().map(String::as_str).unwrap_or("")
    );
    ensure!(taken >= 1, "no snapshot of the flood was taken");
    ensure!(!busy.is_empty(), "no snapshot of the flood was refused");
    ensure!(
        busy.iter()
            .all(|m| m.contains("max_snapshot_jobs_per_sandbox")),
        "429s name the cap: {busy:?}"
    );

    // 4. The count cap: snapshots until refused, never more than the cap.
    let mut count = 1 + taken;
    let mut refused = None;
    for i in 0..=MAX_SNAPSHOTS {
        let (status, body) = snapshot(format!("more-{i}")).await?;
        match status {
            201 => count += 1,
            409 => {
                refused = Some(error_text(&body));
                break;
            }
            _ => anyhow::bail!("snapshot more-{i}: {status} {body}"),
        }
    }
    let refused = refused.context("no snapshot was refused past the cap")?;
    println!("snapshot past the cap of {MAX_SNAPSHOTS}: 409: {refused}");
    ensure!(
        count == MAX_SNAPSHOTS,
        "{count} snapshots, cap {MAX_SNAPSHOTS}"
    );
    ensure!(
        refused.contains("max_snapshots_per_sandbox"),
        "the refusal names the cap: {refused}"
    );
    let snaps = domain_snapshots(&name)?;
    ensure!(snaps.len() == MAX_SNAPSHOTS, "the domain has {snaps:?}");

    agent.destroy_sandbox(&s).await?;
    println!("disk attacks done in {:.0?}", started.elapsed());
    Ok(())
}
