//! Acceptance: the mTLS refusals. The agent refuses a client without a certificate, a
//! certificate from another CA, and a fleet certificate that is not the controller's;
//! the controller refuses an agent whose certificate names another host.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fluid_client::types::HostState;
use fluid_proto::pb;
use integration_tests::pki::Pki;
use integration_tests::{AgentOptions, Stack, StoreKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refusals() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut stack = Stack::start(
        StoreKind::Sqlite,
        vec![
            AgentOptions::new("a"),
            // Certificate for another host name than the address the controller dials.
            AgentOptions::new("x").sans(&["other-host.example"]),
        ],
    )
    .await?;
    stack
        .wait_host("a", HostState::Online, Duration::from_secs(30))
        .await?;
    let ca = stack.pki.ca_cert();

    // Positive control: the controller's own certificate is accepted.
    let ctl = stack.pki.controller();
    let status = stack
        .agent_grpc("a", Some(&ctl), &ca)
        .await?
        .get_status(pb::GetStatusRequest {})
        .await?
        .into_inner();
    ensure!(status.host_name == stack.host("a"));

    // 1. No client certificate.
    let refused = match stack.agent_grpc("a", None, &ca).await {
        Err(e) => format!("connect: {e:#}"),
        Ok(mut c) => match c.get_status(pb::GetStatusRequest {}).await {
            Err(s) => format!("call: {s}"),
            Ok(_) => anyhow::bail!("agent accepted a client without a certificate"),
        },
    };
    println!("no client certificate → refused ({refused})");

    // 2. A certificate from another CA.
    let other = Pki::init(
        &stack.env.bin_dir.join("fluid-controller"),
        &stack.dir.path().join("other-pki"),
    )?;
    let foreign = other.controller();
    let refused = match stack.agent_grpc("a", Some(&foreign), &ca).await {
        Err(e) => format!("connect: {e:#}"),
        Ok(mut c) => match c.get_status(pb::GetStatusRequest {}).await {
            Err(s) => format!("call: {s}"),
            Ok(_) => anyhow::bail!("agent accepted a certificate from another CA"),
        },
    };
    println!("certificate from another CA → refused ({refused})");

    // 3a. A fleet certificate that is not a client certificate (another agent's).
    let agent_cert = stack.agent("x")?.tls.clone();
    let refused = match stack.agent_grpc("a", Some(&agent_cert), &ca).await {
        Err(e) => format!("connect: {e:#}"),
        Ok(mut c) => match c.get_status(pb::GetStatusRequest {}).await {
            Err(s) => format!("call: {s}"),
            Ok(_) => anyhow::bail!("agent accepted another agent's certificate as a client"),
        },
    };
    println!("another agent's certificate as client → refused ({refused})");

    // 3b. A client certificate from the fleet CA that is not the controller's.
    let intruder = stack.pki.client_cert_for("intruder.example")?;
    let status = stack
        .agent_grpc("a", Some(&intruder), &ca)
        .await?
        .get_status(pb::GetStatusRequest {})
        .await
        .expect_err("agent accepted a fleet client certificate that is not the controller's");
    ensure!(
        status.code() == tonic::Code::PermissionDenied,
        "expected PermissionDenied, got {status}"
    );
    println!(
        "fleet client certificate that is not the controller's → {:?}: {}",
        status.code(),
        status.message()
    );

    // 4. The controller never accepts agent x: its certificate names another host. The
    // heartbeat must have dialled it and recorded why it refused (no fixed wait: poll
    // until the refusal is on record).
    let deadline = Instant::now() + Duration::from_secs(60);
    let x = loop {
        let hosts = stack.client.list_hosts().await?;
        let x = hosts
            .hosts
            .into_iter()
            .find(|h| h.name == stack.host("x"))
            .context("host x not registered")?;
        ensure!(
            x.state != HostState::Online,
            "controller accepted an agent certificate for another host"
        );
        // Until agent x listens, a dial fails with "connection refused": that says nothing
        // about its certificate, so keep polling for the TLS verdict.
        let why = x.last_error.clone().unwrap_or_default();
        if refused_for_its_name(&why) {
            break x;
        }
        ensure!(
            Instant::now() < deadline,
            "host x was not refused for its certificate's name within 60 s (last error: {why:?})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let why = x.last_error.clone().unwrap_or_default();
    println!(
        "agent certificate for another host → host {:?}, last error: {why:?}",
        x.state
    );
    Ok(())
}

fn refused_for_its_name(last_error: &str) -> bool {
    last_error.contains("NotValidForName") || last_error.contains("not valid for name")
}
