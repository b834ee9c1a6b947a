//! Acceptance: a sandbox's life on real libvirt (TCG), through the REST API, with
//! controller and agent talking mTLS; once on SQLite and once on PostgreSQL. Each store
//! has one shared stack with one booted sandbox, and each test is one step of its life
//! named after what it proves: create, stop and start, an agent restart (the VM keeps
//! running), a controller restart (nothing lost). The destroy test makes a sandbox of
//! its own, so every test holds in any order; after DELETE nothing is left on the host:
//! no domain, overlay, lease or agent record.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fluid_client::types::{CreateSandboxRequest, HostState, SandboxState};
use fluid_prereq::shared::{Shared, Teardown};
use fluid_proto::pb;
use integration_tests::stack::wait_ssh_banner;
use integration_tests::{AgentOptions, Stack, StoreKind, virsh};

/// One store's shared stack and its booted sandbox.
struct Life {
    store: StoreKind,
    stack: Stack,
    id: String,
    vm_name: String,
    ip: String,
}

impl Teardown for Life {
    async fn teardown(self) {
        if let Err(e) = self.stack.client.destroy_sandbox(&self.id).await {
            eprintln!("teardown: destroying {}: {e}", self.id);
        }
        drop(self.stack);
        println!("teardown: the {:?} stack is gone", self.store);
    }
}

static SQLITE: Shared<Life> = Shared::new();
static POSTGRES: Shared<Life> = Shared::new();

fn request(vm_name: &str) -> CreateSandboxRequest {
    CreateSandboxRequest {
        source_vm_name: "debian-12".into(),
        agent_id: "integration".into(),
        vm_name: Some(vm_name.to_owned()),
        cpu: Some(1),
        memory_mb: Some(512),
        wait_for_ip: Some(true),
        ..Default::default()
    }
}

async fn setup(store: StoreKind) -> Result<Life> {
    let mut stack = Stack::start(store, vec![AgentOptions::new("a")]).await?;
    stack
        .wait_host("a", HostState::Online, Duration::from_secs(30))
        .await?;
    let vm_name = format!("{}-life", stack.prefix);
    let t0 = Instant::now();
    let created = stack.client.create_sandbox(&request(&vm_name)).await?;
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
    println!(
        "[{store:?}] create → RUNNING, IP {ip} in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    Ok(Life {
        store,
        stack,
        id: sbx.id,
        vm_name,
        ip,
    })
}

/// Runs one step on `store`'s shared stack.
fn step(store: StoreKind, test: impl AsyncFnOnce(&mut Life) -> Result<()>) -> Result<()> {
    match store {
        StoreKind::Sqlite => SQLITE.run(|| setup(StoreKind::Sqlite), test),
        StoreKind::Postgres => POSTGRES.run(|| setup(StoreKind::Postgres), test),
    }
}

async fn running_with_sshd(l: &mut Life) -> Result<()> {
    let store = l.store;
    let banner = wait_ssh_banner(&format!("{}:22", l.ip), Duration::from_secs(90)).await?;
    println!("[{store:?}] port 22 of {} answered {banner:?}", l.ip);
    ensure!(virsh::domain_state(&l.vm_name).as_deref() == Some("running"));
    let ctl = l.stack.pki.controller();
    let mut grpc = l.stack.agent_grpc("a", Some(&ctl), &ctl.ca_cert).await?;
    let on_host = grpc
        .get_sandbox(pb::SandboxRef { id: l.id.clone() })
        .await?
        .into_inner();
    let overlay = PathBuf::from(&on_host.overlay_path);
    ensure!(overlay.exists(), "overlay {} missing", overlay.display());
    // A sandbox restored from a memory template starts its DHCP client when it is
    // handed over: its lease may come a few seconds after sshd answers.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !virsh::leases()?.contains(&l.ip) {
        ensure!(
            Instant::now() < deadline,
            "no lease for {} after 60 s",
            l.ip
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

async fn stop_then_start(l: &mut Life) -> Result<()> {
    let (store, client) = (l.store, &l.stack.client);
    let stopped = client.stop_sandbox(&l.id).await?;
    ensure!(
        stopped.sandbox.state == SandboxState::Stopped,
        "after stop: {}",
        stopped.sandbox.state
    );
    ensure!(virsh::domain_state(&l.vm_name).as_deref() == Some("shut off"));
    let t1 = Instant::now();
    let started = client.start_sandbox(&l.id, true).await?;
    let ip = started
        .ip_address
        .context("start with wait_for_ip answered no ip")?;
    println!(
        "[{store:?}] stop → STOPPED; start → IP {ip} in {:.1}s",
        t1.elapsed().as_secs_f64()
    );
    let got = client.get_sandbox(&l.id).await?.sandbox;
    ensure!(
        got.state == SandboxState::Running,
        "after start: {}",
        got.state
    );
    l.ip = ip;
    Ok(())
}

async fn agent_restart(l: &mut Life) -> Result<()> {
    let store = l.store;
    l.stack.agent("a")?.service.stop().await?;
    ensure!(
        virsh::domain_state(&l.vm_name).as_deref() == Some("running"),
        "VM stopped with the agent"
    );
    l.stack
        .wait_host("a", HostState::Offline, Duration::from_secs(30))
        .await?;
    l.stack.agent("a")?.service.start()?;
    l.stack
        .wait_host("a", HostState::Online, Duration::from_secs(30))
        .await?;
    let ctl = l.stack.pki.controller();
    let mut grpc = l.stack.agent_grpc("a", Some(&ctl), &ctl.ca_cert).await?;
    let inventory = grpc
        .list_sandboxes(pb::ListSandboxesRequest {})
        .await?
        .into_inner();
    let again = inventory
        .sandboxes
        .iter()
        .find(|s| s.id == l.id)
        .context("restarted agent does not report the sandbox")?;
    ensure!(
        again.state == pb::SandboxState::Running as i32,
        "restarted agent reports state {}",
        again.state
    );
    println!("[{store:?}] agent restarted: VM still running, reported again");
    Ok(())
}

async fn controller_restart(l: &mut Life) -> Result<()> {
    let store = l.store;
    let before = l.stack.client.get_sandbox(&l.id).await?.sandbox;
    l.stack.restart_controller().await?;
    let after = l.stack.client.get_sandbox(&l.id).await?.sandbox;
    ensure!(
        before == after,
        "sandbox changed across a controller restart:\n{before:?}\n{after:?}"
    );
    let listed = l.stack.client.list_sandboxes("").await?;
    ensure!(listed.sandboxes.iter().any(|s| s.id == l.id));
    println!("[{store:?}] controller restarted: sandbox record unchanged");
    Ok(())
}

/// A sandbox of its own (no wait for its address: what destroy must remove exists
/// from the create on), destroyed twice.
async fn destroy_leaves_nothing(l: &mut Life) -> Result<()> {
    let (store, client) = (l.store, &l.stack.client);
    let vm_name = format!("{}-gone", l.stack.prefix);
    let created = client
        .create_sandbox(&CreateSandboxRequest {
            wait_for_ip: Some(false),
            ..request(&vm_name)
        })
        .await?;
    let id = created.sandbox.id;
    let ctl = l.stack.pki.controller();
    let mut grpc = l.stack.agent_grpc("a", Some(&ctl), &ctl.ca_cert).await?;
    let on_host = grpc
        .get_sandbox(pb::SandboxRef { id: id.clone() })
        .await?
        .into_inner();
    let mac = on_host.mac_address.clone();
    let overlay = PathBuf::from(&on_host.overlay_path);
    ensure!(overlay.exists(), "overlay {} missing", overlay.display());
    ensure!(virsh::domains()?.contains(&vm_name), "no domain {vm_name}");

    let destroyed = client.destroy_sandbox(&id).await?;
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
        .get_sandbox(pb::SandboxRef { id: id.clone() })
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
        inventory.sandboxes.iter().all(|s| s.id != id),
        "agent record left: {:?}",
        inventory.sandboxes
    );
    let got = client.get_sandbox(&id).await?.sandbox;
    ensure!(got.state == SandboxState::Destroyed);
    // Destroying again answers the same.
    let twice = client.destroy_sandbox(&id).await?;
    ensure!(twice.state == SandboxState::Destroyed);
    println!("[{store:?}] destroyed: no domain, overlay, lease or agent record left");
    Ok(())
}

macro_rules! on_both_stores {
    ($($name:ident => $step:ident),* $(,)?) => {
        mod sqlite {
            use super::*;
            $(#[test]
            fn $name() -> Result<()> {
                step(StoreKind::Sqlite, $step)
            })*
        }
        mod postgres {
            use super::*;
            $(#[test]
            fn $name() -> Result<()> {
                step(StoreKind::Postgres, $step)
            })*
        }
    };
}

on_both_stores! {
    create_gives_a_running_sandbox_whose_sshd_answers => running_with_sshd,
    stop_then_start_brings_it_back_with_an_address => stop_then_start,
    an_agent_restart_keeps_the_vm_running_and_reports_it_again => agent_restart,
    a_controller_restart_loses_nothing => controller_restart,
    destroy_leaves_no_domain_overlay_lease_or_record => destroy_leaves_nothing,
}
