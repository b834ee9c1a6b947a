//! A sandbox's whole life against real libvirt: create+start → IP → stop → start →
//! IP → destroy, then checks that no domain, overlay, lease or record is left. A
//! stopped sandbox refuses Exec before any stream starts.
//!
//! Needs root, a running libvirtd with the `default` network active, `qemu-img`,
//! `dhcp_release`, and a golden image (`/var/cache/fluid/images/debian-12-*/`, or
//! `FLUID_TEST_IMAGE_DIR`). It must run in the network namespace libvirtd runs in (for
//! `dhcp_release`); `scripts/test.sh` runs it; by hand:
//!
//! ```text
//! source scripts/lib/netns.sh; fluid_libvirt_up fluid-test
//! ip netns exec fluid-test env PATH=$PATH FLUID_TEST_IMAGE_DIR=… \
//!   cargo test -p fluid-agent --test libvirt_lifecycle -- --nocapture
//! ```
//!
//! Guests run under TCG (`virt_type = "qemu"`), see docs/BUILD-HOSTS.md.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fluid_agent::AgentConfig;
use fluid_agent::Sandboxes;
use fluid_agent::error::ServiceError;
use fluid_agent::hypervisor::libvirt::Libvirt;
use fluid_proto::model::{ObservedState, SandboxId, StopSandbox, WaitForIp};
use russh::keys::PrivateKey;
use russh::keys::ssh_key::private::Ed25519Keypair;

mod common;
use common::image_dir;

fn virsh(args: &[&str]) -> (bool, String) {
    let out = Command::new("virsh")
        .args(args)
        .output()
        .expect("virsh is installed");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Runs `command` in the sandbox; its stdout and exit code.
async fn exec(
    s: &Sandboxes<Libvirt>,
    id: &SandboxId,
    cert: &str,
    command: &str,
) -> Result<(String, i32), ServiceError> {
    common::run(s, id, cert, command).await
}

/// Waits until the guest has finished booting (`systemctl is-system-running --wait`),
/// so that it honours the ACPI power button; retries while sshd is not up yet (300 s
/// from `since` at most).
async fn wait_booted(s: &Sandboxes<Libvirt>, id: &SandboxId, cert: &str, since: Instant) {
    let deadline = since + Duration::from_secs(300);
    loop {
        match exec(s, id, cert, "systemctl is-system-running --wait").await {
            Ok((state, _)) => {
                println!(
                    "guest booted ({}) {:.1} s after create",
                    state.trim(),
                    since.elapsed().as_secs_f64()
                );
                assert!(
                    matches!(state.trim(), "running" | "degraded"),
                    "the guest's boot ended as {state:?}"
                );
                return;
            }
            Err(e) if Instant::now() < deadline => {
                println!("  not yet: {e}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => panic!("the guest never ran a command: {e}"),
        }
    }
}

#[tokio::test]
async fn sandbox_lifecycle_against_libvirt() {
    if !common::real_host() {
        return;
    }
    let dir = image_dir().expect("a golden image (set FLUID_TEST_IMAGE_DIR)");
    let (id, name) = common::unique("life");
    let state_dir = PathBuf::from(format!("/var/tmp/{name}"));
    let toml = format!(
        "stop_timeout_seconds = 20\n{}",
        // The cold-boot path: no memory template.
        common::agent_toml_with(
            &format!("{name}-host"),
            &state_dir,
            &dir,
            "[templates]\nenabled = false\n"
        )
    );
    let config = AgentConfig::from_toml(&toml).expect("config");
    let table = config.network.nft_table.clone();
    let sandboxes = fluid_agent::open(config).await.expect("open the agent");

    let checks = tokio::spawn({
        let (s, id, name, state_dir) = (sandboxes.clone(), id.clone(), name, state_dir.clone());
        async move { lifecycle(&s, &id, &name, &state_dir).await }
    })
    .await;

    // Whatever happened: nothing of this test is left.
    let _ = sandboxes.destroy(&id).await;
    drop(sandboxes);
    common::remove_agent_leftovers(&table, &state_dir);
    if let Err(e) = checks {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn lifecycle(
    sandboxes: &Arc<Sandboxes<Libvirt>>,
    id: &SandboxId,
    name: &str,
    state_dir: &std::path::Path,
) {
    let ca = PrivateKey::from(Ed25519Keypair::from_seed(&rand::random()));
    let cert = common::certificate(&ca, sandboxes.ssh_public_key(), id, false);
    let create = common::create_request(id, name, ca.public_key().to_openssh().expect("CA line"));

    let t = Instant::now();
    let v = sandboxes.create(create.clone()).await.expect("create");
    let create_s = t.elapsed().as_secs_f64();
    println!("create+start: {create_s:.2} s, state {:?}", v.state);
    let again = sandboxes.create(create).await.expect("repeat create");
    assert_eq!(again.record.domain_uuid, v.record.domain_uuid);

    let wait = WaitForIp {
        id: id.clone(),
        timeout_seconds: 240,
    };
    let ip = sandboxes.wait_for_ip(wait.clone()).await.expect("ip");
    println!(
        "boot to DHCP lease: {:.1} s ({ip})",
        t.elapsed().as_secs_f64()
    );
    let listed = sandboxes.list().await.expect("list");
    assert!(
        listed
            .iter()
            .any(|s| s.record.id == *id && s.ip == Some(ip))
    );

    // A graceful stop needs a guest that honours the power button: wait for its boot
    // to finish (an event in the guest), not for a fixed time.
    wait_booted(sandboxes, id, &cert, t).await;
    let t = Instant::now();
    let v = sandboxes
        .stop(StopSandbox {
            id: id.clone(),
            force: false,
            timeout_seconds: None,
        })
        .await
        .expect("stop");
    println!(
        "graceful stop: {:.1} s, state {:?}",
        t.elapsed().as_secs_f64(),
        v.state
    );
    assert_eq!(v.state, ObservedState::Stopped);

    // A stopped sandbox refuses Exec before any stream starts.
    let e = exec(sandboxes, id, &cert, "true")
        .await
        .expect_err("exec on a stopped sandbox");
    println!("exec on a stopped sandbox: {e}");
    assert!(matches!(e, ServiceError::FailedPrecondition(_)), "{e:?}");

    let t = Instant::now();
    sandboxes.start(id).await.expect("start");
    let ip2 = sandboxes.wait_for_ip(wait).await.expect("ip after restart");
    println!(
        "restart to DHCP lease: {:.1} s ({ip2})",
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    assert!(sandboxes.destroy(id).await.expect("destroy"));
    println!("destroy: {:.2} s", t.elapsed().as_secs_f64());
    assert!(!sandboxes.destroy(id).await.expect("destroy again"));

    // Nothing is left.
    let (exists, _) = virsh(&["dominfo", name]);
    assert!(!exists, "the domain is gone");
    assert!(sandboxes.get(id).await.is_err(), "the record is gone");
    let overlay = state_dir.join(format!("overlays/{id}.qcow2"));
    assert!(!overlay.exists(), "the overlay is gone");
    assert!(!state_dir.join(format!("console/{id}.log")).exists());
    // dnsmasq's helper updates the status file asynchronously: poll (5 s at most).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, leases) = virsh(&["net-dhcp-leases", "default"]);
        if !leases.contains(&v.record.mac) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the DHCP lease of {} is not released: {leases}",
            v.record.mac
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
