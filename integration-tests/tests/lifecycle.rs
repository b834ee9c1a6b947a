//! Acceptance: a sandbox's whole life on real libvirt (TCG), through the REST API, with
//! controller and agent talking mTLS; once on SQLite and once on PostgreSQL. Restarts of
//! the agent (VM keeps running) and of the controller (nothing lost) happen mid-life.
//! After DELETE nothing is left on the host: no domain, overlay, lease or agent record.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fluid_client::types::{CreateSandboxRequest, HostState, SandboxState};
use fluid_proto::pb;
use integration_tests::stack::wait_ssh_banner;
use integration_tests::{AgentOptions, Stack, StoreKind, virsh};

async fn lifecycle(store: StoreKind) -> Result<()> {
    let mut stack = Stack::start(store, vec![AgentOptions::new("a")]).await?;
    stack
        .wait_host("a", HostState::Online, Duration::from_secs(30))
        .await?;
    let vm_name = format!("{}-life", stack.prefix);

    // 1. create with wait_for_ip → RUNNING with an IP whose port 22 answers.
    let t0 = Instant::now();
    let created = stack
        .client
        .create_sandbox(&CreateSandboxRequest {
            source_vm_name: "debian-12".into(),
            agent_id: "integration".into(),
            vm_name: Some(vm_name.clone()),
            cpu: Some(1),
            memory_mb: Some(512),
            wait_for_ip: Some(true),
            ..Default::default()
        })
        .await?;
    let boot = t0.elapsed();
    let sbx = created.sandbox;
    ensure!(
        sbx.state == SandboxState::Running,
        "state after create: {}",
        sbx.state
    );
    let ip = created
        .ip_address
        .context("create with wait_for_ip answered no ip")?;
    ensure!(sbx.ip_address.as_deref() == Some(ip.as_str()));
    let banner = wait_ssh_banner(&format!("{ip}:22"), Duration::from_secs(90)).await?;
    println!(
        "[{store:?}] create → IP {ip} in {:.1}s; port 22 answered {banner:?} at {:.1}s",
        boot.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    ensure!(virsh::domain_state(&vm_name).as_deref() == Some("running"));

    let mut grpc = {
        let ctl = stack.pki.controller();
        stack.agent_grpc("a", Some(&ctl), &ctl.ca_cert).await?
    };
    let on_host = grpc
        .get_sandbox(pb::SandboxRef { id: sbx.id.clone() })
        .await?
        .into_inner();
    let mac = on_host.mac_address.clone();
    let overlay = std::path::PathBuf::from(&on_host.overlay_path);
    ensure!(overlay.exists(), "overlay {} missing", overlay.display());
    ensure!(virsh::leases()?.contains(&ip), "no lease for {ip}");

    // 2. stop → STOPPED, start → RUNNING again.
    let stopped = stack.client.stop_sandbox(&sbx.id).await?;
    ensure!(
        stopped.sandbox.state == SandboxState::Stopped,
        "after stop: {}",
        stopped.sandbox.state
    );
    ensure!(virsh::domain_state(&vm_name).as_deref() == Some("shut off"));
    let t1 = Instant::now();
    let started = stack.client.start_sandbox(&sbx.id, true).await?;
    let ip2 = started
        .ip_address
        .context("start with wait_for_ip answered no ip")?;
    println!(
        "[{store:?}] stop → STOPPED; start → IP {ip2} in {:.1}s",
        t1.elapsed().as_secs_f64()
    );
    let got = stack.client.get_sandbox(&sbx.id).await?.sandbox;
    ensure!(
        got.state == SandboxState::Running,
        "after start: {}",
        got.state
    );

    // Restart the agent while the VM runs: the VM keeps running, the agent reports it again.
    stack.agent("a")?.service.stop().await?;
    ensure!(
        virsh::domain_state(&vm_name).as_deref() == Some("running"),
        "VM stopped with the agent"
    );
    stack
        .wait_host("a", HostState::Offline, Duration::from_secs(30))
        .await?;
    stack.agent("a")?.service.start()?;
    stack
        .wait_host("a", HostState::Online, Duration::from_secs(30))
        .await?;
    let ctl = stack.pki.controller();
    let mut grpc = stack.agent_grpc("a", Some(&ctl), &ctl.ca_cert).await?;
    let inventory = grpc
        .list_sandboxes(pb::ListSandboxesRequest {})
        .await?
        .into_inner();
    let again = inventory
        .sandboxes
        .iter()
        .find(|s| s.id == sbx.id)
        .context("restarted agent does not report the sandbox")?;
    ensure!(
        again.state == pb::SandboxState::Running as i32,
        "restarted agent reports state {}",
        again.state
    );
    println!("[{store:?}] agent restarted: VM still running, reported again");

    // Restart the controller: nothing is lost.
    let before = stack.client.get_sandbox(&sbx.id).await?.sandbox;
    stack.restart_controller().await?;
    let after = stack.client.get_sandbox(&sbx.id).await?.sandbox;
    ensure!(
        before == after,
        "sandbox changed across a controller restart:\n{before:?}\n{after:?}"
    );
    let listed = stack.client.list_sandboxes("").await?;
    ensure!(listed.sandboxes.iter().any(|s| s.id == sbx.id));
    println!("[{store:?}] controller restarted: sandbox record unchanged");

    // 3. DELETE → DESTROYED; nothing left on the host.
    let destroyed = stack.client.destroy_sandbox(&sbx.id).await?;
    ensure!(destroyed.state == SandboxState::Destroyed);
    ensure!(destroyed.sandbox_name == vm_name && destroyed.base_image == "debian-12");
    ensure!(
        !virsh::domains()?.contains(&vm_name),
        "domain {vm_name} left behind"
    );
    ensure!(
        !overlay.exists(),
        "overlay {} left behind",
        overlay.display()
    );
    let leases = virsh::leases()?;
    ensure!(
        !leases.contains(&mac),
        "lease for {mac} left behind:\n{leases}"
    );
    let status = grpc
        .get_sandbox(pb::SandboxRef { id: sbx.id.clone() })
        .await
        .expect_err("agent still has a record");
    ensure!(
        status.code() == tonic::Code::NotFound,
        "GetSandbox after destroy: {status}"
    );
    let inventory = grpc
        .list_sandboxes(pb::ListSandboxesRequest {})
        .await?
        .into_inner();
    ensure!(
        inventory.sandboxes.is_empty(),
        "agent records left: {:?}",
        inventory.sandboxes
    );
    let got = stack.client.get_sandbox(&sbx.id).await?.sandbox;
    ensure!(got.state == SandboxState::Destroyed);
    // Destroying again answers the same.
    let twice = stack.client.destroy_sandbox(&sbx.id).await?;
    ensure!(twice.state == SandboxState::Destroyed);
    println!("[{store:?}] destroyed: no domain, overlay, lease or agent record left");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_on_sqlite() -> Result<()> {
    lifecycle(StoreKind::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_on_postgres() -> Result<()> {
    lifecycle(StoreKind::Postgres).await
}
