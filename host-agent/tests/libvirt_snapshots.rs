//! Snapshots, revert, fork and the out-of-band readers against real libvirt, without
//! booting a guest (TCG boots take ~35 s; the booted paths are the integration tests'):
//!
//! - disk-only snapshots of a shut-off sandbox (idempotent; the agent's JSON in the
//!   libvirt snapshot's description);
//! - revert really puts the disk back (a byte pattern written with `qemu-io` between
//!   two snapshots comes and goes);
//! - forks made with `qemu-img convert -l snapshot.name=…` carry that snapshot's disk;
//! - a file read from a snapshot and a diff of a snapshot against a fork's disk "now"
//!   (temporary snapshot taken and removed) through `fluid_inspect`;
//! - destroying a sandbox that has snapshots leaves nothing.
//!
//! Needs what `libvirt_lifecycle` needs (root, libvirtd, a golden image, `qemu-img`,
//! `qemu-io`), run in libvirt's network namespace:
//!
//! ```text
//! source scripts/lib/netns.sh; fluid_libvirt_up fluid-test
//! ip netns exec fluid-test env PATH=$PATH cargo test -p fluid-agent --test libvirt_snapshots -- --nocapture
//! ```

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use fluid_agent::Sandboxes;
use fluid_agent::error::ServiceError;
use fluid_agent::hypervisor::libvirt::Libvirt;
use fluid_agent::sandboxes::inspect::{DiffRequest, ReadFileRequest};
use fluid_agent::sandboxes::snapshots::CreateSnapshot;
use fluid_agent::{AgentConfig, sandboxes::SandboxView};
use fluid_proto::model::{CreateSandbox, DiskState, Name, SandboxId, SnapshotName, SnapshotRef};

/// This run's hex: ids and names are unique, so runs on the same libvirtd do not collide
/// (the hex and the letter first in an id: taps are named after its first ten).
fn run_hex() -> &'static str {
    static HEX: OnceLock<String> = OnceLock::new();
    HEX.get_or_init(|| format!("{:08x}", rand::random::<u32>()))
}

/// Sandbox `which` of this run (`a`…`d`).
fn sbx(which: char) -> String {
    format!("SBX-{}{which}snap", run_hex())
}

/// The domain name of sandbox `which`.
fn dom(which: char) -> String {
    format!("agentdev-snap-{}-{which}", run_hex())
}

fn sid(s: &str) -> SandboxId {
    SandboxId::parse("id", s).expect("id")
}

fn snap(s: &str) -> SnapshotName {
    SnapshotName::parse("name", s).expect("name")
}

fn sref(id: &str, n: &str) -> SnapshotRef {
    SnapshotRef {
        sandbox_id: sid(id),
        name: snap(n),
    }
}

fn create(id: &str, name: &str, from: Option<SnapshotRef>) -> CreateSandbox {
    CreateSandbox {
        id: sid(id),
        name: Name::parse("name", name).expect("name"),
        image: Name::parse("image", "debian-12").expect("image"),
        cpus: 1,
        memory_mb: 512,
        start: false,
        ssh_user_ca_keys: Vec::new(),
        egress: Default::default(),
        from_snapshot: from,
        fork_of_running: None,
    }
}

fn take(id: &str, n: &str) -> CreateSnapshot {
    CreateSnapshot {
        sandbox_id: sid(id),
        name: snap(n),
        disk_only: true,
        ssh_certificate: String::new(),
    }
}

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn virtual_size(overlay: &Path) -> u64 {
    let (ok, out) = run(
        "qemu-img",
        &[
            "info",
            "-U",
            "--output=json",
            &overlay.display().to_string(),
        ],
    );
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    v["virtual-size"].as_u64().expect("virtual-size")
}

/// True when `overlay` holds the test pattern at `offset` (read-only, shared).
fn has_pattern(overlay: &Path, offset: u64) -> bool {
    let (ok, out) = run(
        "qemu-io",
        &[
            "-r",
            "-U",
            "-f",
            "qcow2",
            "-c",
            &format!("read -P 0x5a {offset} 64k"),
            &overlay.display().to_string(),
        ],
    );
    ok && !out.contains("Pattern verification failed")
}

fn overlay(v: &SandboxView) -> PathBuf {
    v.record.overlay_path.clone()
}

#[tokio::test]
async fn snapshots_revert_fork_and_inspect_against_libvirt() {
    if !common::real_host() {
        return;
    }
    let dir = common::image_dir().expect("a golden image (set FLUID_TEST_IMAGE_DIR)");
    let state_dir = PathBuf::from(format!("/var/tmp/agentdev-snap-{}", run_hex()));
    let _ = tracing_subscriber::fmt()
        .with_env_filter("fluid_agent=info")
        .try_init();
    let toml = common::agent_toml(
        &format!("agentdev-snap-{}-host", run_hex()),
        &state_dir,
        &dir,
    );
    let config = AgentConfig::from_toml(&toml).expect("config");
    let table = config.network.nft_table.clone();
    let s: Arc<Sandboxes<Libvirt>> = fluid_agent::open(config).await.expect("open the agent");

    let checks = {
        let s = s.clone();
        tokio::spawn(async move { checks(&s).await })
    }
    .await;

    // Destroying sandboxes with snapshots leaves nothing; checked after every run, and
    // whatever happens the agent's state and tables go.
    let mut left = Vec::new();
    for w in ['a', 'b', 'c'] {
        if let Err(e) = s.destroy(&sid(&sbx(w))).await {
            left.push(format!("destroy {}: {e}", sbx(w)));
        }
        if run("virsh", &["dominfo", &dom(w)]).0 {
            left.push(format!("domain {} is still defined", dom(w)));
        }
    }
    match std::fs::read_dir(state_dir.join("overlays")) {
        Ok(d) => left.extend(d.map(|e| format!("overlay left: {e:?}"))),
        Err(e) => left.push(format!("overlays: {e}")),
    }
    drop(s);
    common::remove_agent_leftovers(&table, &state_dir);
    if let Err(e) = checks {
        std::panic::resume_unwind(e.into_panic());
    }
    assert!(left.is_empty(), "{left:#?}");
}

async fn checks(s: &Arc<Sandboxes<Libvirt>>) {
    let a = s
        .create(create(&sbx('a'), &dom('a'), None))
        .await
        .expect("create a");
    let offset = virtual_size(&overlay(&a)) - 1024 * 1024;

    // s1: a disk-only snapshot of the shut-off sandbox, idempotent.
    let t = Instant::now();
    let s1 = s.create_snapshot(take(&sbx('a'), "s1")).await.expect("s1");
    println!("disk-only snapshot: {:.2} s", t.elapsed().as_secs_f64());
    assert!(!s1.memory);
    assert_eq!(s1.vm_state, "shutoff");
    assert_eq!(s1.guest_sync, "skipped: not running");
    assert_eq!(
        s.create_snapshot(take(&sbx('a'), "s1"))
            .await
            .expect("again"),
        s1
    );
    let (ok, xml) = run("virsh", &["snapshot-dumpxml", &dom('a'), "s1"]);
    assert!(ok, "{xml}");
    assert!(xml.contains("fluid_snapshot"), "metadata in libvirt: {xml}");

    // A change after s1, then s2.
    let (ok, out) = run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            &format!("write -P 0x5a {offset} 64k"),
            &overlay(&a).display().to_string(),
        ],
    );
    assert!(ok, "{out}");
    assert!(has_pattern(&overlay(&a), offset));
    s.create_snapshot(take(&sbx('a'), "s2")).await.expect("s2");
    let names: Vec<String> = s
        .list_snapshots(&sid(&sbx('a')))
        .await
        .expect("list")
        .into_iter()
        .map(|x| x.name)
        .collect();
    assert_eq!(names, vec!["s1", "s2"]);

    // Forks: b from s2 has the change, c from s1 does not.
    let t = Instant::now();
    let b = s
        .create(create(&sbx('b'), &dom('b'), Some(sref(&sbx('a'), "s2"))))
        .await
        .expect("fork b");
    println!(
        "fork (qemu-img convert): {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let c = s
        .create(create(&sbx('c'), &dom('c'), Some(sref(&sbx('a'), "s1"))))
        .await
        .expect("fork c");
    assert!(has_pattern(&overlay(&b), offset), "b is s2's disk");
    assert!(!has_pattern(&overlay(&c), offset), "c is s1's disk");
    assert_ne!(b.record.mac, a.record.mac);
    let e = s
        .create(create(&sbx('d'), &dom('d'), Some(sref(&sbx('a'), "nope"))))
        .await
        .expect_err("unknown snapshot");
    assert!(matches!(e, ServiceError::NotFound(_)), "{e:?}");

    // Revert puts the disk back, both ways.
    let v = s
        .revert_snapshot(&sref(&sbx('a'), "s1"), false)
        .await
        .expect("revert s1");
    assert_eq!(v.state, fluid_proto::model::ObservedState::Created);
    assert!(!has_pattern(&overlay(&a), offset), "reverted to s1");
    s.revert_snapshot(&sref(&sbx('a'), "s2"), false)
        .await
        .expect("revert s2");
    assert!(has_pattern(&overlay(&a), offset), "reverted to s2");

    // One file out of a snapshot, read out-of-band.
    let t = Instant::now();
    let (meta, data) = s
        .read_snapshot_file(ReadFileRequest {
            state: DiskState {
                sandbox_id: sid(&sbx('a')),
                snapshot: Some(snap("s1")),
            },
            path: "/etc/os-release".into(),
            max_bytes: 0,
            ssh_certificate: String::new(),
        })
        .await
        .expect("read");
    println!(
        "read a file from a snapshot: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let text = String::from_utf8_lossy(&data);
    assert!(text.contains("bookworm"), "{text}");
    assert_eq!(meta.size, u64::try_from(data.len()).expect("len"));
    assert_eq!((meta.uid, meta.owner.as_str()), (0, "root"));

    // s1 against c's disk now (c is a fork of s1): nothing differs.
    let t = Instant::now();
    let d = s
        .diff(DiffRequest {
            from: DiskState {
                sandbox_id: sid(&sbx('a')),
                snapshot: Some(snap("s1")),
            },
            to: DiskState {
                sandbox_id: sid(&sbx('c')),
                snapshot: None,
            },
            volatile_paths: Vec::new(),
            metadata_only_paths: Vec::new(),
            text_limit_bytes: 0,
            ssh_certificate: String::new(),
        })
        .await
        .expect("diff");
    println!(
        "diff s1 vs a fork of it now: {:.2} s ({} / {} entries)",
        t.elapsed().as_secs_f64(),
        d.from_entries,
        d.to_entries
    );
    assert!(d.from_entries > 1000, "{}", d.from_entries);
    assert_eq!(d.from_entries, d.to_entries);
    assert!(d.files.is_empty(), "{:?}", d.files);
    assert!(d.packages.is_empty() && d.services.is_empty());
    assert!(
        s.list_snapshots(&sid(&sbx('c')))
            .await
            .expect("list")
            .is_empty(),
        "the temporary snapshot is gone"
    );
    let (_, listed) = run("virsh", &["snapshot-list", "--name", &dom('c')]);
    assert!(listed.trim().is_empty(), "not even in libvirt: {listed}");
    let scratch = s.config().state_dir.join("scratch");
    assert_eq!(std::fs::read_dir(&scratch).expect("scratch").count(), 0);

    // Delete: idempotent.
    assert!(
        s.delete_snapshot(&sref(&sbx('a'), "s1"))
            .await
            .expect("delete")
    );
    assert!(
        !s.delete_snapshot(&sref(&sbx('a'), "s1"))
            .await
            .expect("again")
    );
}
