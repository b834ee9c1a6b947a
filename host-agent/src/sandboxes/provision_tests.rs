//! The restore path against the fake hypervisor: a ready template is restored with the
//! sandbox's own identity; a failed restore or identity step cold-boots the same disk.

use super::tests::{Env, backing_of, env_with, id, req};
use crate::templates::Template;

const SHAPE: &str = r#"[templates]
shapes = [{ image = "debian-12", cpus = 2, memory_mb = 1024 }]
"#;

/// An agent whose configured template is built.
async fn with_template() -> (Env, Template) {
    let e = env_with(SHAPE).await;
    e.s.start_templates().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(t) = e.s.templates().list().await.pop() {
            return (e, t);
        }
        assert!(std::time::Instant::now() < deadline, "no template built");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_ready_template_is_restored_with_the_sandbox_s_own_identity() {
    let (e, t) = with_template().await;
    let v =
        e.s.create(req("SBX-restore01", "web-1", true))
            .await
            .expect("create");
    let r = &v.record;
    assert_eq!(r.start_path.as_deref(), Some("restore"));
    assert_eq!(r.template.as_deref(), Some(t.name.as_str()));
    let ip = r.static_ip.expect("reserved");
    assert_eq!(r.known_ip, Some(ip), "its address is admitted at once");
    assert_eq!(v.ip, Some(ip));
    let hv = e.hv.lock();
    assert_eq!(hv.restores, vec![r.domain_uuid.clone()]);
    let (uuid, up) = hv.interface_updates.last().expect("the NIC was plugged in");
    assert_eq!(uuid, &r.domain_uuid);
    assert!(
        up.contains(&r.mac) && up.contains("<link state=\"up\"/>"),
        "{up}"
    );
    let (_, argv) = hv.guest_execs.last().expect("the identity step ran");
    let args = &argv[4..];
    assert_eq!(args[0], "SBX-restore01");
    assert_eq!(args[1], "web-1");
    assert_eq!(args[3], r.mac);
    assert_eq!(args[4], format!("{ip}/24"));
    assert_eq!(args[5], "192.168.122.1");
    let pinned = r.ssh_host_key.as_deref().expect("pinned host key");
    assert_eq!(args[9], pinned, "the host key given is the one pinned");
    assert!(args[8].contains("OPENSSH PRIVATE KEY"));
    drop(hv);
    // The clone's overlay is backed by the template's disk.
    assert_eq!(backing_of(&r.overlay_path), t.disk().display().to_string());
}

#[tokio::test]
async fn a_failed_restore_or_identity_step_cold_boots_the_same_disk() {
    let (e, _) = with_template().await;
    e.hv.lock().fail_restore = true;
    let v =
        e.s.create(req("SBX-restore02", "web-2", true))
            .await
            .expect("create");
    assert_eq!(v.record.start_path.as_deref(), Some("boot"));
    assert!(v.record.template.is_some(), "still backed by the template");
    e.hv.lock().fail_restore = false;
    e.hv.lock().guest_exec_exit = 1;
    let v =
        e.s.create(req("SBX-restore03", "web-3", true))
            .await
            .expect("create");
    assert_eq!(v.record.start_path.as_deref(), Some("boot"));
    assert_eq!(
        v.record.ssh_host_key, None,
        "a cold boot learns its key on first use"
    );
}

#[tokio::test]
async fn without_a_template_of_its_shape_a_create_cold_boots() {
    let (e, _) = with_template().await;
    let mut other = req("SBX-restore04", "web-4", true);
    other.memory_mb = 2048;
    let v = e.s.create(other).await.expect("create");
    assert_eq!(v.record.start_path.as_deref(), Some("boot"));
    assert_eq!(v.record.template, None);
    assert!(e.hv.lock().restores.is_empty());
    let stopped = e.s.get(&id("SBX-restore04")).await.expect("get");
    assert_eq!(stopped.record.start_path.as_deref(), Some("boot"));
}

/// Runs qemu-io on `image`; whether it succeeded.
fn qemu_io(image: &std::path::Path, command: &str) -> bool {
    std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", command])
        .arg(image)
        .output()
        .expect("qemu-io is needed by these tests")
        .status
        .success()
}

#[tokio::test]
async fn a_fork_of_a_restored_sandbox_shares_its_template_and_keeps_its_data() {
    use crate::sandboxes::snapshots::CreateSnapshot;
    use fluid_proto::model::{SnapshotName, SnapshotRef, StopSandbox};
    let (e, t) = with_template().await;
    // What the template's boot wrote: only in the template's overlay.
    assert!(qemu_io(&t.disk(), "write -P 0xab 0 64k"));
    let a =
        e.s.create(req("SBX-restore05", "src", true))
            .await
            .expect("create");
    assert_eq!(a.record.start_path.as_deref(), Some("restore"));
    e.s.stop(StopSandbox {
        id: id("SBX-restore05"),
        force: true,
        timeout_seconds: None,
    })
    .await
    .expect("stop");
    let name = SnapshotName::parse("name", "base").expect("name");
    e.s.create_snapshot(CreateSnapshot {
        sandbox_id: id("SBX-restore05"),
        name: name.clone(),
        disk_only: true,
        ssh_certificate: String::new(),
    })
    .await
    .expect("snapshot");
    let st = std::process::Command::new("qemu-img")
        .args(["snapshot", "-c", "base"])
        .arg(&a.record.overlay_path)
        .status()
        .expect("qemu-img");
    assert!(st.success());
    let mut fork = req("SBX-restore06", "fork", false);
    fork.from_snapshot = Some(SnapshotRef {
        sandbox_id: id("SBX-restore05"),
        name,
    });
    let b = e.s.create(fork).await.expect("fork");
    assert_eq!(b.record.template.as_deref(), Some(t.name.as_str()));
    // The template's data reads through the fork's chain (a fork based on the image
    // alone would read zeros there).
    assert!(qemu_io(&b.record.overlay_path, "read -P 0xab 0 64k"));
}
