//! Live forks against the fake hypervisor: the source is saved, copied and resumed; the
//! fork restores the source's saved state under its own identity; nothing is left when
//! a step fails.

use fluid_proto::model::{CreateSandbox, SnapshotName, SnapshotRef};

use super::tests::{Env, backing_of, env, id, req};
use crate::error::ServiceError;
use crate::hypervisor::DomainState;
use crate::sandboxes::snapshots::tests::real_snapshot;

fn live_fork(sid: &str, name: &str, source: &str) -> CreateSandbox {
    let mut r = req(sid, name, true);
    r.fork_of_running = Some(id(source));
    r
}

fn state_of(e: &Env, uuid: &str) -> DomainState {
    e.hv.lock().domains[uuid].state.clone()
}

#[tokio::test]
async fn a_live_fork_resumes_its_source_and_starts_as_a_new_machine() {
    let e = env().await;
    let src =
        e.s.create(req("SBX-forksrc01", "src", true))
            .await
            .expect("source");
    let v =
        e.s.create(live_fork("SBX-forklive01", "fork", "SBX-forksrc01"))
            .await
            .expect("live fork");
    let r = &v.record;
    assert_eq!(r.start_path.as_deref(), Some("fork"));
    assert_ne!(r.mac, src.record.mac);
    assert_ne!(r.domain_uuid, src.record.domain_uuid);
    let ip = r.static_ip.expect("reserved");
    assert_ne!(Some(ip), src.record.static_ip);
    assert_eq!(state_of(&e, &src.record.domain_uuid), DomainState::Running);
    assert_eq!(state_of(&e, &r.domain_uuid), DomainState::Running);
    {
        let hv = e.hv.lock();
        assert_eq!(
            hv.restores,
            vec![src.record.domain_uuid.clone(), r.domain_uuid.clone()],
            "the source is resumed, then its saved state restored as the fork"
        );
        let [(clock_of, clock), (uuid, argv)] = &hv.guest_execs[..] else {
            panic!("a clock step and an identity step: {:?}", hv.guest_execs);
        };
        assert_eq!(
            clock_of, &src.record.domain_uuid,
            "the source's clock is stepped"
        );
        assert_eq!(clock[..3], ["date", "-u", "-s"]);
        assert_eq!(uuid, &r.domain_uuid);
        let args = &argv[4..];
        assert_eq!(args[0], "SBX-forklive01");
        assert_eq!(args[1], "fork");
        assert_eq!(args[3], r.mac);
        assert_eq!(args[4], format!("{ip}/24"));
        assert_eq!(Some(args[9].as_str()), r.ssh_host_key.as_deref());
    }
    assert!(
        !e.s.fork_state_path(&r.id).exists(),
        "the saved state is gone once restored"
    );
    assert_eq!(
        backing_of(&r.overlay_path),
        e.image().display().to_string(),
        "the copy is on the source's base"
    );
}

#[tokio::test]
async fn a_live_fork_needs_a_running_source_on_this_host_with_its_image() {
    let e = env().await;
    e.s.create(req("SBX-forksrc02", "src", false))
        .await
        .expect("stopped source");
    let cases = [
        (
            live_fork("SBX-forklive02", "f2", "SBX-forksrc02"),
            "only a running sandbox forks live",
        ),
        (
            live_fork("SBX-forklive03", "f3", "SBX-nosuch0001"),
            "does not exist on this host",
        ),
        (
            live_fork("SBX-forklive04", "f4", "SBX-forklive04"),
            "cannot be forked from itself",
        ),
        (
            {
                let mut r = live_fork("SBX-forklive05", "f5", "SBX-forksrc02");
                r.image = fluid_proto::model::Name::parse("image", "from-vm").expect("name");
                r
            },
            "which a fork of it must use",
        ),
    ];
    for (r, why) in cases {
        let sid = r.id.clone();
        let err = e.s.create(r).await.expect_err(why);
        assert!(err.to_string().contains(why), "{sid}: {err}");
        assert!(e.s.store.get(&sid).await.expect("store").is_none());
    }
}

#[tokio::test]
async fn a_source_that_cannot_be_resumed_runs_again_from_its_disk_and_the_fork_fails() {
    let e = env().await;
    let src =
        e.s.create(req("SBX-forksrc03", "src", true))
            .await
            .expect("source");
    e.hv.lock().fail_restore = true;
    let err =
        e.s.create(live_fork("SBX-forklive06", "f6", "SBX-forksrc03"))
            .await
            .expect_err("the source's restore fails");
    assert!(matches!(err, ServiceError::Internal(_)), "{err:?}");
    assert!(err.to_string().contains("could not be resumed"), "{err}");
    assert_eq!(state_of(&e, &src.record.domain_uuid), DomainState::Running);
    let fork = id("SBX-forklive06");
    assert!(e.s.store.get(&fork).await.expect("store").is_none());
    assert!(!e.s.fork_state_path(&fork).exists());
    assert!(!e.s.overlays.path_for(&fork).exists(), "no overlay left");
}

/// The snapshots inside an overlay file, by name (`qemu-img snapshot -l`).
fn qcow2_snapshots(path: &std::path::Path) -> String {
    let out = std::process::Command::new("qemu-img")
        .args(["snapshot", "-U", "-l"])
        .arg(path)
        .output()
        .expect("qemu-img");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn a_fork_from_a_snapshot_with_memory_resumes_it_as_a_new_machine() {
    let e = env().await;
    let src =
        e.s.create(req("SBX-forksrc04", "src", true))
            .await
            .expect("source");
    // Taken while it runs: with memory (and the overlay holds them, as libvirt's would).
    real_snapshot(&e, "SBX-forksrc04", "mem").await;
    real_snapshot(&e, "SBX-forksrc04", "other").await;
    let mut r = req("SBX-forkmem01", "fmem", true);
    r.from_snapshot = Some(SnapshotRef {
        sandbox_id: id("SBX-forksrc04"),
        name: SnapshotName::parse("name", "mem").expect("name"),
    });
    let v = e.s.create(r).await.expect("fork from a memory snapshot");
    let f = &v.record;
    assert_eq!(f.start_path.as_deref(), Some("fork"));
    assert_eq!(state_of(&e, &src.record.domain_uuid), DomainState::Running);
    assert_eq!(state_of(&e, &f.domain_uuid), DomainState::Running);
    {
        let hv = e.hv.lock();
        assert!(
            hv.restores.contains(&src.record.domain_uuid),
            "the running source was saved for the copy and resumed"
        );
        let on_fork: Vec<(&str, &str)> = hv
            .snapshot_calls
            .iter()
            .filter(|(_, uuid, _)| uuid == &f.domain_uuid)
            .map(|(op, _, n)| (*op, n.as_str()))
            .collect();
        assert_eq!(
            on_fork,
            vec![("redefine", "mem"), ("revert", "mem"), ("delete", "mem")],
            "the snapshot is moved onto the fork, resumed, and deleted"
        );
        let (uuid, argv) = hv.guest_execs.last().expect("the identity step ran");
        assert_eq!(uuid, &f.domain_uuid);
        assert_eq!(argv[4], "SBX-forkmem01");
    }
    assert!(e.hv.snapshot_names(&f.domain_uuid).is_empty());
    let copy = qcow2_snapshots(&f.overlay_path);
    assert!(copy.contains("mem") && !copy.contains("other"), "{copy}");
    assert_eq!(
        e.hv.snapshot_names(&src.record.domain_uuid),
        ["mem", "other"],
        "the source keeps its snapshots"
    );
}

#[tokio::test]
async fn a_fork_from_a_disk_only_snapshot_still_boots_its_disk() {
    let e = env().await;
    e.s.create(req("SBX-forksrc05", "src", false))
        .await
        .expect("stopped source");
    real_snapshot(&e, "SBX-forksrc05", "disk").await;
    let mut r = req("SBX-forkdsk01", "fdsk", true);
    r.from_snapshot = Some(SnapshotRef {
        sandbox_id: id("SBX-forksrc05"),
        name: SnapshotName::parse("name", "disk").expect("name"),
    });
    let v = e.s.create(r).await.expect("fork");
    assert_eq!(v.record.start_path.as_deref(), Some("boot"));
    assert!(e.hv.lock().restores.is_empty());
    assert!(!qcow2_snapshots(&v.record.overlay_path).contains("disk"));
}
