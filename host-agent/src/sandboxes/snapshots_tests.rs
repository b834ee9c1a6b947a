//! Snapshots, revert, fork, diff/read preconditions and tunnels against the fake
//! hypervisor.

use std::sync::Arc;

use fluid_proto::model::{
    CreateSandbox, DiskState, Name, ObservedState, SnapshotName, SnapshotRef, StopSandbox,
};

use super::*;
use crate::hypervisor::simulated::SimulatedHypervisor;
use crate::sandboxes::inspect::{DiffRequest, ReadFileRequest};
use crate::sandboxes::tests::{Env, env, id, req};
use crate::sandboxes::tunnel;

fn name(s: &str) -> SnapshotName {
    SnapshotName::parse("name", s).expect("name")
}

fn snap_req(sid: &str, n: &str, disk_only: bool) -> CreateSnapshot {
    CreateSnapshot {
        sandbox_id: id(sid),
        name: name(n),
        disk_only,
        ssh_certificate: String::new(),
    }
}

fn sref(sid: &str, n: &str) -> SnapshotRef {
    SnapshotRef {
        sandbox_id: id(sid),
        name: name(n),
    }
}

fn calls(hv: &SimulatedHypervisor, op: &str) -> usize {
    hv.lock()
        .snapshot_calls
        .iter()
        .filter(|(o, _, _)| *o == op)
        .count()
}

fn stop(sid: &str) -> StopSandbox {
    StopSandbox {
        id: id(sid),
        force: true,
        timeout_seconds: None,
    }
}

#[tokio::test]
async fn a_stopped_sandbox_gets_a_disk_only_snapshot_once() {
    let e = env().await;
    e.s.create(req("SBX-aaaaaaaa", "a", false))
        .await
        .expect("create");
    let s =
        e.s.create_snapshot(snap_req("SBX-aaaaaaaa", "before", false))
            .await
            .expect("snapshot");
    assert!(!s.memory);
    assert_eq!(s.vm_state, "shutoff");
    assert_eq!(s.guest_sync, "skipped: not running");
    assert!(s.active_services.is_empty());
    assert!(s.created_at_unix > 0);
    // Repeating it returns the same snapshot; disk-only asked explicitly too.
    let again =
        e.s.create_snapshot(snap_req("SBX-aaaaaaaa", "before", true))
            .await
            .expect("again");
    assert_eq!(again, s);
    assert_eq!(calls(&e.hv, "create"), 1);
    let list = e.s.list_snapshots(&id("SBX-aaaaaaaa")).await.expect("list");
    assert_eq!(list, vec![s]);
}

#[tokio::test]
async fn reserved_names_and_unknown_sandboxes_are_refused() {
    let e = env().await;
    let err =
        e.s.create_snapshot(snap_req("SBX-aaaaaaaa", "x", false))
            .await
            .expect_err("unknown sandbox");
    assert!(matches!(err, ServiceError::NotFound(_)), "{err:?}");
    e.s.create(req("SBX-aaaaaaaa", "a", false))
        .await
        .expect("create");
    for err in [
        e.s.create_snapshot(snap_req("SBX-aaaaaaaa", "fluid-now-x", false))
            .await
            .expect_err("reserved"),
        e.s.delete_snapshot(&sref("SBX-aaaaaaaa", "fluid-now-x"))
            .await
            .expect_err("reserved"),
        e.s.revert_snapshot(&sref("SBX-aaaaaaaa", "fluid-x"), false)
            .await
            .expect_err("reserved"),
    ] {
        assert!(
            matches!(&err, ServiceError::InvalidArgument(m) if m.contains("reserved")),
            "{err:?}"
        );
    }
    assert_eq!(calls(&e.hv, "create"), 0);
    let err =
        e.s.revert_snapshot(&sref("SBX-aaaaaaaa", "nope"), false)
            .await
            .expect_err("unknown snapshot");
    assert!(matches!(err, ServiceError::NotFound(_)), "{err:?}");
    let err =
        e.s.list_snapshots(&id("SBX-bbbbbbbb"))
            .await
            .expect_err("unknown");
    assert!(matches!(err, ServiceError::NotFound(_)), "{err:?}");
}

#[tokio::test]
async fn the_agents_own_snapshots_are_not_listed() {
    let e = env().await;
    let v =
        e.s.create(req("SBX-aaaaaaaa", "a", false))
            .await
            .expect("create");
    e.hv.snapshot_create(&v.record.domain_uuid, "fluid-now-abcdefghij", "{}")
        .await
        .expect("temp");
    e.s.create_snapshot(snap_req("SBX-aaaaaaaa", "mine", false))
        .await
        .expect("snapshot");
    let names: Vec<String> =
        e.s.list_snapshots(&id("SBX-aaaaaaaa"))
            .await
            .expect("list")
            .into_iter()
            .map(|s| s.name)
            .collect();
    assert_eq!(names, vec!["mine".to_owned()]);
}

#[tokio::test]
async fn a_running_sandbox_gets_memory_and_refuses_disk_only() {
    let e = env().await;
    e.s.create(req("SBX-aaaaaaaa", "a", true))
        .await
        .expect("create");
    let err =
        e.s.create_snapshot(snap_req("SBX-aaaaaaaa", "d", true))
            .await
            .expect_err("disk-only while running");
    assert!(
        matches!(&err, ServiceError::FailedPrecondition(m) if m.contains("running")),
        "{err:?}"
    );
    let s =
        e.s.create_snapshot(snap_req("SBX-aaaaaaaa", "live", false))
            .await
            .expect("snapshot");
    assert!(s.memory);
    assert_eq!(s.vm_state, "running");
    // No certificate and no connection: the snapshot is taken, the sync's failure noted.
    assert!(s.guest_sync.starts_with("failed: "), "{}", s.guest_sync);
    assert!(s.guest_sync.contains("ssh_certificate"), "{}", s.guest_sync);
    // The same name asked disk-only names a snapshot with memory: a conflict.
    let err =
        e.s.create_snapshot(snap_req("SBX-aaaaaaaa", "live", true))
            .await
            .expect_err("exists with memory");
    assert!(matches!(err, ServiceError::AlreadyExists(_)), "{err:?}");
    // Without disk_only it is the same snapshot again.
    let again =
        e.s.create_snapshot(snap_req("SBX-aaaaaaaa", "live", false))
            .await
            .expect("again");
    assert_eq!(again, s);
}

#[tokio::test]
async fn the_metadata_lives_in_the_description() {
    let e = env().await;
    let v =
        e.s.create(req("SBX-aaaaaaaa", "a", true))
            .await
            .expect("create");
    e.s.create_snapshot(snap_req("SBX-aaaaaaaa", "live", false))
        .await
        .expect("snapshot");
    let list =
        e.hv.snapshot_list(&v.record.domain_uuid)
            .await
            .expect("list");
    let meta = SnapshotMeta::of(&list[0]).expect("the agent's metadata");
    assert_eq!(meta.fluid_snapshot, 1);
    assert_eq!(meta.ip, v.ip);
    // A snapshot someone else made reads as one without the agent's metadata.
    e.hv.snapshot_create(&v.record.domain_uuid, "by-hand", "taken with virsh")
        .await
        .expect("by hand");
    let by_hand =
        e.s.list_snapshots(&id("SBX-aaaaaaaa"))
            .await
            .expect("list")
            .into_iter()
            .find(|s| s.name == "by-hand")
            .expect("listed");
    assert_eq!(by_hand.guest_sync, "");
    assert!(by_hand.memory);
}

#[test]
fn active_services_are_the_first_column() {
    let out = "cron.service  loaded active running Regular background program processing daemon\n\
               nginx.service loaded active running A high performance web server\n\
               \n\
               ssh.service   loaded active running OpenBSD Secure Shell server\n\
               cron.service  loaded active running again\n\
               garbage\n";
    assert_eq!(
        parse_active_services(out),
        vec!["cron.service", "nginx.service", "ssh.service"]
    );
}

#[tokio::test]
async fn revert_to_memory_resumes_and_readmits_the_address() {
    let e = env().await;
    let v =
        e.s.create(req("SBX-aaaaaaaa", "a", true))
            .await
            .expect("create");
    let ip = v.ip.expect("ip");
    e.s.create_snapshot(snap_req("SBX-aaaaaaaa", "live", false))
        .await
        .expect("snapshot");
    // Running → running: same lease, nothing to do for the network.
    let back =
        e.s.revert_snapshot(&sref("SBX-aaaaaaaa", "live"), false)
            .await
            .expect("revert");
    assert_eq!(back.state, ObservedState::Running);
    assert_eq!(back.ip, Some(ip));
    // Stopped (lease released) → the resumed guest's old address is admitted.
    let stopped = e.s.stop(stop("SBX-aaaaaaaa")).await.expect("stop");
    assert_eq!(stopped.state, ObservedState::Stopped);
    let back =
        e.s.revert_snapshot(&sref("SBX-aaaaaaaa", "live"), false)
            .await
            .expect("revert");
    assert_eq!(back.state, ObservedState::Running);
    let r =
        e.s.store
            .get(&id("SBX-aaaaaaaa"))
            .await
            .expect("get")
            .expect("record");
    assert_eq!(r.known_ip, Some(ip));
    assert!(r.started);
    assert_eq!(calls(&e.hv, "revert"), 2);
}

#[tokio::test]
async fn revert_to_disk_only_stops_or_boots() {
    let e = env().await;
    e.s.create(req("SBX-aaaaaaaa", "a", false))
        .await
        .expect("create");
    e.s.create_snapshot(snap_req("SBX-aaaaaaaa", "cold", false))
        .await
        .expect("snapshot");
    e.s.start(&id("SBX-aaaaaaaa")).await.expect("start");
    // Running, no start: left stopped, its lease gone.
    let v =
        e.s.revert_snapshot(&sref("SBX-aaaaaaaa", "cold"), false)
            .await
            .expect("revert");
    assert_eq!(v.state, ObservedState::Stopped);
    assert_eq!(v.ip, None);
    assert!(e.hv.lock().leases.is_empty());
    // Stopped, start: booted.
    let v =
        e.s.revert_snapshot(&sref("SBX-aaaaaaaa", "cold"), true)
            .await
            .expect("revert and start");
    assert_eq!(v.state, ObservedState::Running);
    // Running, start: off (old lease released), then booted with a fresh one.
    let before = e.hv.lock().released.len();
    let v =
        e.s.revert_snapshot(&sref("SBX-aaaaaaaa", "cold"), true)
            .await
            .expect("revert running and start");
    assert_eq!(v.state, ObservedState::Running);
    assert_eq!(e.hv.lock().released.len(), before + 1);
}

#[tokio::test]
async fn revert_restores_the_host_key_of_the_snapshot() {
    let e = env().await;
    e.s.create(req("SBX-aaaaaaaa", "a", false))
        .await
        .expect("create");
    // Taken before the guest ever booted: it had no host key then.
    e.s.create_snapshot(snap_req("SBX-aaaaaaaa", "fresh", false))
        .await
        .expect("snapshot");
    let mut r =
        e.s.store
            .get(&id("SBX-aaaaaaaa"))
            .await
            .expect("get")
            .expect("record");
    r.ssh_host_key = Some(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl".into(),
    );
    e.s.store.put(&r).await.expect("put");
    e.s.revert_snapshot(&sref("SBX-aaaaaaaa", "fresh"), false)
        .await
        .expect("revert");
    let r =
        e.s.store
            .get(&id("SBX-aaaaaaaa"))
            .await
            .expect("get")
            .expect("record");
    assert_eq!(r.ssh_host_key, None, "learned again on first use");
}

#[tokio::test]
async fn delete_is_idempotent_and_destroy_takes_snapshots_along() {
    let e = env().await;
    let v =
        e.s.create(req("SBX-aaaaaaaa", "a", false))
            .await
            .expect("create");
    e.s.create_snapshot(snap_req("SBX-aaaaaaaa", "one", false))
        .await
        .expect("one");
    e.s.create_snapshot(snap_req("SBX-aaaaaaaa", "two", false))
        .await
        .expect("two");
    assert!(
        e.s.delete_snapshot(&sref("SBX-aaaaaaaa", "one"))
            .await
            .expect("delete")
    );
    assert!(
        !e.s.delete_snapshot(&sref("SBX-aaaaaaaa", "one"))
            .await
            .expect("delete again")
    );
    assert_eq!(e.hv.snapshot_names(&v.record.domain_uuid), vec!["two"]);
    let err =
        e.s.delete_snapshot(&sref("SBX-bbbbbbbb", "one"))
            .await
            .expect_err("unknown sandbox");
    assert!(matches!(err, ServiceError::NotFound(_)), "{err:?}");
    // A sandbox with snapshots is destroyed whole.
    assert!(e.s.destroy(&id("SBX-aaaaaaaa")).await.expect("destroy"));
    assert_eq!(e.hv.owned_count(), 0);
}

/// A fake snapshot plus the matching internal qcow2 snapshot in the overlay (what
/// libvirt would have made), so qemu-img can export it.
pub(crate) async fn real_snapshot(e: &Env, sid: &str, n: &str) {
    e.s.create_snapshot(snap_req(sid, n, false))
        .await
        .expect("snapshot");
    let overlay = e.s.overlays.path_for(&id(sid));
    let st = std::process::Command::new("qemu-img")
        .args(["snapshot", "-c", n])
        .arg(&overlay)
        .status()
        .expect("qemu-img");
    assert!(st.success());
}

fn fork_req(sid: &str, n: &str, from: Option<SnapshotRef>) -> CreateSandbox {
    let mut r = req(sid, n, false);
    r.from_snapshot = from;
    r
}

#[tokio::test]
async fn forks_are_checked_then_made_from_the_snapshot() {
    let e = env().await;
    e.s.create(req("SBX-aaaaaaaa", "src", false))
        .await
        .expect("create");
    real_snapshot(&e, "SBX-aaaaaaaa", "base").await;
    let cases = [
        (
            sref("SBX-cccccccc", "base"),
            "does not exist",
            "unknown sandbox",
        ),
        (
            sref("SBX-aaaaaaaa", "nope"),
            "no snapshot",
            "unknown snapshot",
        ),
        (
            sref("SBX-aaaaaaaa", "fluid-now-a"),
            "agent's own",
            "reserved",
        ),
        (sref("SBX-bbbbbbbb", "base"), "itself", "self"),
    ];
    for (from, needle, what) in cases {
        let err =
            e.s.create(fork_req("SBX-bbbbbbbb", "fork", Some(from)))
                .await
                .expect_err(what);
        assert!(err.to_string().contains(needle), "{what}: {err}");
    }
    let mut other_image = fork_req("SBX-bbbbbbbb", "fork", Some(sref("SBX-aaaaaaaa", "base")));
    other_image.image = Name::parse("image", "from-vm").expect("name");
    let err = e.s.create(other_image).await.expect_err("other image");
    assert!(
        matches!(&err, ServiceError::InvalidArgument(m) if m.contains("image")),
        "{err:?}"
    );
    // Nothing was left by the refusals.
    assert!(
        e.s.store
            .get(&id("SBX-bbbbbbbb"))
            .await
            .expect("get")
            .is_none()
    );
    assert!(!e.s.overlays.path_for(&id("SBX-bbbbbbbb")).exists());

    let fork =
        e.s.create(fork_req(
            "SBX-bbbbbbbb",
            "fork",
            Some(sref("SBX-aaaaaaaa", "base")),
        ))
        .await
        .expect("fork");
    assert_eq!(fork.state, ObservedState::Created);
    assert!(fork.record.overlay_path.exists());
    let src = e.s.get(&id("SBX-aaaaaaaa")).await.expect("source");
    assert_ne!(fork.record.mac, src.record.mac);
    assert_ne!(fork.record.domain_uuid, src.record.domain_uuid);
    let info = std::process::Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(&fork.record.overlay_path)
        .output()
        .expect("qemu-img");
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("disk.qcow2"), "backed by the image: {info}");
    assert!(
        !info.contains("\"base\""),
        "no snapshots of its own: {info}"
    );
    assert!(
        e.s.list_snapshots(&fork.record.id)
            .await
            .expect("list")
            .is_empty()
    );
}

#[tokio::test]
async fn leftovers_of_an_interrupted_diff_are_cleared() {
    let e = env().await;
    let v =
        e.s.create(req("SBX-aaaaaaaa", "a", false))
            .await
            .expect("create");
    e.hv.snapshot_create(&v.record.domain_uuid, "fluid-now-abcdefghij", "{}")
        .await
        .expect("temp");
    e.s.create_snapshot(snap_req("SBX-aaaaaaaa", "keep", false))
        .await
        .expect("keep");
    std::fs::create_dir_all(e.s.scratch_dir()).expect("dir");
    std::fs::write(e.s.scratch_dir().join("x.raw"), b"raw").expect("file");
    e.s.clear_leftovers().await.expect("clear");
    assert_eq!(e.hv.snapshot_names(&v.record.domain_uuid), vec!["keep"]);
    assert_eq!(
        std::fs::read_dir(e.s.scratch_dir()).expect("dir").count(),
        0
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(e.s.scratch_dir())
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

fn state(sid: &str, snap: Option<&str>) -> DiskState {
    DiskState {
        sandbox_id: id(sid),
        snapshot: snap.map(name),
    }
}

fn diff_req(from: DiskState, to: DiskState) -> DiffRequest {
    DiffRequest {
        from,
        to,
        volatile_paths: Vec::new(),
        metadata_only_paths: Vec::new(),
        text_limit_bytes: 0,
        ssh_certificate: String::new(),
    }
}

#[tokio::test]
async fn diffs_refuse_bad_requests_and_always_clean_up() {
    let Env { _tmp, s, hv, .. } = env().await;
    let s = Arc::new(s);
    s.create(req("SBX-aaaaaaaa", "a", false))
        .await
        .expect("create");
    s.clear_leftovers().await.expect("scratch dir");
    let err = s
        .diff(diff_req(
            state("SBX-aaaaaaaa", Some("x")),
            state("SBX-aaaaaaaa", Some("x")),
        ))
        .await
        .expect_err("itself");
    assert!(matches!(err, ServiceError::InvalidArgument(_)), "{err:?}");
    let mut big = diff_req(
        state("SBX-aaaaaaaa", None),
        state("SBX-aaaaaaaa", Some("x")),
    );
    big.text_limit_bytes = 2 * 1024 * 1024;
    let err = s.diff(big).await.expect_err("text limit");
    assert!(matches!(err, ServiceError::InvalidArgument(m) if m.contains("text_limit")));
    let err = s
        .diff(diff_req(
            state("SBX-aaaaaaaa", None),
            state("SBX-cccccccc", None),
        ))
        .await
        .expect_err("unknown sandbox");
    assert!(matches!(err, ServiceError::NotFound(_)), "{err:?}");
    assert_eq!(
        calls(&hv, "create"),
        0,
        "nothing exported for a refused diff"
    );
    let err = s
        .diff(diff_req(
            state("SBX-aaaaaaaa", Some("nope")),
            state("SBX-aaaaaaaa", None),
        ))
        .await
        .expect_err("unknown snapshot");
    assert!(matches!(err, ServiceError::NotFound(_)), "{err:?}");
    // "now" against a snapshot: the temporary snapshot is taken, its export fails here
    // (the fake's snapshot is not in the qcow2 file), and it is deleted all the same.
    let err = s
        .diff(diff_req(
            state("SBX-aaaaaaaa", None),
            state("SBX-aaaaaaaa", Some("nope")),
        ))
        .await
        .expect_err("export fails");
    assert!(matches!(err, ServiceError::Internal(_)), "{err:?}");
    assert_eq!(calls(&hv, "create"), 1);
    assert_eq!(calls(&hv, "delete"), 1);
    let uuid = s
        .get(&id("SBX-aaaaaaaa"))
        .await
        .expect("get")
        .record
        .domain_uuid;
    assert!(hv.snapshot_names(&uuid).is_empty());
    assert_eq!(std::fs::read_dir(s.scratch_dir()).expect("dir").count(), 0);
    // A failed temporary snapshot is cleaned up too.
    hv.lock().fail_snapshot = true;
    s.diff(diff_req(
        state("SBX-aaaaaaaa", None),
        state("SBX-aaaaaaaa", Some("nope")),
    ))
    .await
    .expect_err("snapshot fails");
    assert_eq!(calls(&hv, "delete"), 2);
}

#[tokio::test]
async fn file_reads_refuse_bad_requests() {
    let Env { _tmp, s, hv, .. } = env().await;
    let s = Arc::new(s);
    s.create(req("SBX-aaaaaaaa", "a", false))
        .await
        .expect("create");
    let read = |path: &str, max_bytes| ReadFileRequest {
        state: state("SBX-aaaaaaaa", None),
        path: path.into(),
        max_bytes,
        ssh_certificate: String::new(),
    };
    let err = s
        .read_snapshot_file(read("/etc/hostname", 257 * 1024 * 1024))
        .await
        .expect_err("too much");
    assert!(matches!(err, ServiceError::InvalidArgument(m) if m.contains("max_bytes")));
    for bad in ["etc/hostname", "/etc/../shadow", ""] {
        let err = s.read_snapshot_file(read(bad, 0)).await.expect_err(bad);
        assert!(
            matches!(err, ServiceError::InvalidArgument(_)),
            "{bad}: {err:?}"
        );
    }
    assert_eq!(calls(&hv, "create"), 0);
    let mut unknown = read("/etc/hostname", 0);
    unknown.state = state("SBX-cccccccc", None);
    let err = s.read_snapshot_file(unknown).await.expect_err("unknown");
    assert!(matches!(err, ServiceError::NotFound(_)), "{err:?}");
}

#[tokio::test]
async fn tunnels_need_a_running_sandbox_port_22_and_a_free_slot() {
    let e = env().await;
    let sid = id("SBX-aaaaaaaa");
    let err = e.s.open_tunnel(&sid, 22).await.expect_err("unknown");
    assert!(matches!(err, ServiceError::NotFound(_)), "{err:?}");
    e.s.create(req("SBX-aaaaaaaa", "a", false))
        .await
        .expect("create");
    let err = e.s.open_tunnel(&sid, 22).await.expect_err("not running");
    assert!(
        matches!(err, ServiceError::FailedPrecondition(_)),
        "{err:?}"
    );
    let err = e.s.open_tunnel(&sid, 80).await.expect_err("port");
    assert!(matches!(err, ServiceError::InvalidArgument(_)), "{err:?}");
    // Every slot taken: refused before anything else.
    let held =
        e.s.tunnels
            .clone()
            .try_acquire_many_owned(u32::try_from(tunnel::MAX_TUNNELS).expect("n"))
            .expect("all slots");
    let err = e.s.open_tunnel(&sid, 22).await.expect_err("exhausted");
    assert!(matches!(err, ServiceError::ResourceExhausted(_)), "{err:?}");
    drop(held);
    // A refused tunnel gives its slot back.
    assert_eq!(e.s.tunnels.available_permits(), tunnel::MAX_TUNNELS);
}
