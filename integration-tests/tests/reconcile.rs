//! Intent vs observed, on real libvirt: the janitor destroys a sandbox whose TTL has
//! passed, the reconciler destroys an orphan the store does not know, and a sandbox
//! whose domain vanished behind the agent's back is marked ERROR. No VM boots here:
//! the sandboxes are defined, not started.

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use fluid_client::types::{CreateSandboxRequest, HostState, SandboxState};
use fluid_proto::pb;
use integration_tests::{AgentOptions, Stack, StoreKind, virsh};

fn request(name: &str, ttl: Option<i64>) -> CreateSandboxRequest {
    CreateSandboxRequest {
        source_vm_name: "debian-12".into(),
        agent_id: "integration".into(),
        vm_name: Some(name.to_owned()),
        ttl_seconds: ttl,
        auto_start: Some(false),
        ..Default::default()
    }
}

async fn wait_state(stack: &Stack, id: &str, want: SandboxState, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let got = stack.client.get_sandbox(id).await?.sandbox;
        if got.state == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{id} is {} after {within:?}, expected {want}", got.state);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn janitor_and_reconciler_close_the_gap() -> Result<()> {
    let mut stack = Stack::start(StoreKind::Sqlite, vec![AgentOptions::new("a")]).await?;
    stack
        .wait_host("a", HostState::Online, Duration::from_secs(30))
        .await?;
    let ctl = stack.pki.controller();
    let mut grpc = stack.agent_grpc("a", Some(&ctl), &ctl.ca_cert).await?;

    // TTL: the janitor destroys the sandbox once ttl_seconds has passed.
    let ttl_name = format!("{}-ttl", stack.prefix);
    let ttl = stack
        .client
        .create_sandbox(&request(&ttl_name, Some(2)))
        .await?
        .sandbox;
    ensure!(virsh::domains()?.contains(&ttl_name));
    let t0 = Instant::now();
    wait_state(
        &stack,
        &ttl.id,
        SandboxState::Destroyed,
        Duration::from_secs(30),
    )
    .await?;
    ensure!(
        !virsh::domains()?.contains(&ttl_name),
        "expired sandbox's domain left behind"
    );
    println!(
        "ttl 2 s: DESTROYED by the janitor after {:.1}s, domain gone",
        t0.elapsed().as_secs_f64()
    );

    // Orphan: a sandbox on the agent that the store never heard of.
    let orphan_name = format!("{}-orphan", stack.prefix);
    grpc.create_sandbox(pb::CreateSandboxRequest {
        id: "SBX-orphan0001".into(),
        name: orphan_name.clone(),
        image: "debian-12".into(),
        cpus: 1,
        memory_mb: 256,
        start: false,
        ssh_user_ca_keys: Vec::new(),
        egress: None,
        from_snapshot: None,
        fork_of_running: String::new(),
    })
    .await?;
    ensure!(virsh::domains()?.contains(&orphan_name));
    let t0 = Instant::now();
    loop {
        let gone = grpc
            .get_sandbox(pb::SandboxRef {
                id: "SBX-orphan0001".into(),
            })
            .await;
        if matches!(&gone, Err(s) if s.code() == tonic::Code::NotFound) {
            break;
        }
        ensure!(
            t0.elapsed() < Duration::from_secs(30),
            "orphan still on the agent after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ensure!(
        !virsh::domains()?.contains(&orphan_name),
        "orphan domain left behind"
    );
    println!(
        "orphan destroyed by the reconciler after {:.1}s",
        t0.elapsed().as_secs_f64()
    );

    // Lost: the domain disappears behind the agent's back → ERROR.
    let lost_name = format!("{}-lost", stack.prefix);
    let lost = stack
        .client
        .create_sandbox(&request(&lost_name, None))
        .await?
        .sandbox;
    let out = std::process::Command::new("virsh")
        .args(["-c", "qemu:///system", "undefine", &lost_name])
        .output()?;
    ensure!(out.status.success(), "virsh undefine failed");
    let t0 = Instant::now();
    wait_state(
        &stack,
        &lost.id,
        SandboxState::Error,
        Duration::from_secs(30),
    )
    .await?;
    println!(
        "vanished domain: sandbox marked ERROR after {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    // An ERROR sandbox can still be destroyed, and that cleans up the agent's record.
    let destroyed = stack.client.destroy_sandbox(&lost.id).await?;
    ensure!(destroyed.state == SandboxState::Destroyed);
    let inventory = grpc
        .list_sandboxes(pb::ListSandboxesRequest {})
        .await?
        .into_inner();
    ensure!(
        inventory.sandboxes.is_empty(),
        "agent records left: {:?}",
        inventory.sandboxes
    );
    Ok(())
}
