//! Free space and caps on exports and snapshots (issue 12, hole 7), against the fake
//! hypervisor: refusals come before anything is written or snapshotted.

use std::sync::Arc;

use fluid_proto::model::{DiskState, SnapshotName};

use super::room::Op;
use super::snapshots::CreateSnapshot;
use crate::error::ServiceError;
use crate::hypervisor::simulated::SimulatedHypervisor;
use crate::sandboxes::inspect::ReadFileRequest;
use crate::sandboxes::tests::{env_with, id, req};

fn snap(n: &str) -> CreateSnapshot {
    CreateSnapshot {
        sandbox_id: id("SBX-aaaaaaaa"),
        name: SnapshotName::parse("name", n).expect("name"),
        disk_only: false,
        ssh_certificate: String::new(),
    }
}

fn read_now() -> ReadFileRequest {
    ReadFileRequest {
        state: DiskState {
            sandbox_id: id("SBX-aaaaaaaa"),
            snapshot: None,
        },
        path: "/etc/hostname".into(),
        max_bytes: 0,
        ssh_certificate: String::new(),
    }
}

fn snapshot_creates(hv: &SimulatedHypervisor) -> usize {
    hv.lock()
        .snapshot_calls
        .iter()
        .filter(|(o, _, _)| *o == "create")
        .count()
}

#[tokio::test]
async fn snapshots_past_the_cap_are_refused() {
    let e = env_with("[disk]\nmax_snapshots_per_sandbox = 2\n").await;
    e.s.create(req("SBX-aaaaaaaa", "a", false))
        .await
        .expect("create");
    e.s.create_snapshot(snap("one")).await.expect("one");
    e.s.create_snapshot(snap("two")).await.expect("two");
    let err = e.s.create_snapshot(snap("three")).await.expect_err("three");
    assert!(
        matches!(&err, ServiceError::FailedPrecondition(m)
            if m.contains("2 snapshots") && m.contains("max_snapshots_per_sandbox")),
        "{err:?}"
    );
    // Asking again for one that exists is not a new snapshot.
    e.s.create_snapshot(snap("one")).await.expect("repeat");
    assert_eq!(snapshot_creates(&e.hv), 2);
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test]
async fn no_room_means_nothing_is_written() {
    // A reserve larger than any disk.
    let e = env_with("[disk]\nmin_free_mb = 1099511627776\n").await;
    let (s, hv, _tmp) = (Arc::new(e.s), e.hv, e._tmp);
    s.create(req("SBX-aaaaaaaa", "a", false))
        .await
        .expect("create");
    let err = s.create_snapshot(snap("one")).await.expect_err("snapshot");
    assert!(
        matches!(&err, ServiceError::InsufficientStorage(m) if m.contains("snapshot one")),
        "{err:?}"
    );
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        status
            .metadata()
            .get(crate::error::EXHAUSTED_KEY)
            .and_then(|v| v.to_str().ok()),
        Some("storage")
    );
    // A read of "now": refused on the measured size before the temporary snapshot.
    let err = s.read_snapshot_file(read_now()).await.expect_err("read");
    assert!(
        matches!(&err, ServiceError::InsufficientStorage(m)
            if m.contains("not enough disk space") && m.contains("current disk state")),
        "{err:?}"
    );
    assert_eq!(snapshot_creates(&hv), 0, "nothing was snapshotted");
    let scratch: Vec<_> = std::fs::read_dir(s.scratch_dir())
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(scratch.is_empty(), "scratch: {scratch:?}");
}

#[tokio::test]
async fn per_sandbox_caps_answer_busy() {
    let e = env_with("").await;
    let (s, _tmp) = (Arc::new(e.s), e._tmp);
    s.create(req("SBX-aaaaaaaa", "a", false))
        .await
        .expect("create");
    let sid = id("SBX-aaaaaaaa");
    let held = s.room.begin(&sid, Op::Inspection).expect("a slot");
    let err = s.read_snapshot_file(read_now()).await.expect_err("busy");
    assert!(matches!(&err, ServiceError::Busy(_)), "{err:?}");
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        status
            .metadata()
            .get(crate::error::EXHAUSTED_KEY)
            .and_then(|v| v.to_str().ok()),
        Some("busy")
    );
    drop(held);
    let held = s.room.begin(&sid, Op::Snapshot).expect("a slot");
    let err = s.create_snapshot(snap("one")).await.expect_err("busy");
    assert!(
        matches!(&err, ServiceError::Busy(m) if m.contains("max_snapshot_jobs_per_sandbox")),
        "{err:?}"
    );
    drop(held);
    s.create_snapshot(snap("one"))
        .await
        .expect("a slot is free again");
}
