//! Benchmark: the exec round trip of `true` through the REST API, against a direct
//! Exec on the agent (gRPC over mTLS, then the agent's multiplexed SSH connection to
//! the VM). Both are measured side by side in one run, interleaved, on one booted VM.
//!
//! Run inside the test namespace, as scripts/test.sh sets up:
//!   ip netns exec fluid-test target/debug/exec-bench [RUNS]
//! (needs FLUID_GOLDEN_IMAGE_DIR; RUNS defaults to 200).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fluid_client::types::{CreateSandboxRequest, HostState, RunCommandRequest};
use fluid_controller::work::ssh_ca::{CertSpec, SshCa, sandbox_principal};
use fluid_proto::pb;
use integration_tests::bench::percentile;
use integration_tests::stack::wait_ssh_banner;
use integration_tests::{AgentOptions, Stack, StoreKind};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let arg = std::env::args().nth(1);
    if matches!(arg.as_deref(), Some("--version" | "-V")) {
        println!("exec-bench {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    let runs: usize = arg.map(|s| s.parse()).transpose()?.unwrap_or(200);
    let mut stack = Stack::start(StoreKind::Sqlite, vec![AgentOptions::new("a")]).await?;
    stack
        .wait_host("a", HostState::Online, Duration::from_secs(30))
        .await?;
    let created = stack
        .client
        .create_sandbox(&CreateSandboxRequest {
            source_vm_name: "debian-12".into(),
            agent_id: "bench".into(),
            vm_name: Some(format!("{}-bench", stack.prefix)),
            wait_for_ip: Some(true),
            ..Default::default()
        })
        .await?;
    let id = created.sandbox.id.clone();
    let ip = created.ip_address.context("no ip")?;
    wait_ssh_banner(&format!("{ip}:22"), Duration::from_secs(90)).await?;

    // The direct path needs what the controller would give the agent: a certificate
    // for the agent's SSH key, signed by the controller's user CA.
    let ctl = stack.pki.controller();
    let mut agent = stack.agent_grpc("a", Some(&ctl), &ctl.ca_cert).await?;
    let status = agent
        .get_status(pb::GetStatusRequest {})
        .await?
        .into_inner();
    let ca = SshCa::load_or_create(&stack.dir.path().join("controller").join("ssh_user_ca"))?;
    let cert = ca.sign(&CertSpec {
        public_key: &status.ssh_public_key,
        principals: &[sandbox_principal(&id, "root")],
        ttl: Duration::from_secs(600),
        key_id: "exec-bench",
        permit_pty: false,
    })?;
    let direct = |n: usize| pb::ExecRequest {
        sandbox_id: id.clone(),
        command_id: format!("CMD-bench{n:08}"),
        command: "true".into(),
        output_cap_bytes: 1024 * 1024,
        ssh_certificate: cert.openssh.clone(),
        ..Default::default()
    };
    let rest = RunCommandRequest {
        command: "true".into(),
        ..Default::default()
    };

    // Warm up both paths (SSH connection, channels, database pages).
    for n in 0..10 {
        stack.client.run_command(&id, &rest).await?;
        drain(&mut agent, direct(n)).await?;
    }
    let (mut via_rest, mut via_agent) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for n in 0..runs {
        let t = Instant::now();
        let c = stack.client.run_command(&id, &rest).await?.command;
        via_rest.push(t.elapsed());
        ensure!(c.exit_code == 0, "REST run failed: {c:?}");
        let t = Instant::now();
        drain(&mut agent, direct(1000 + n)).await?;
        via_agent.push(t.elapsed());
    }
    // Each REST run is paired with the direct run right after it: the median of the
    // paired differences is far less sensitive to the guest's noise (TCG) than the
    // difference of the two medians.
    let mut paired: Vec<f64> = via_rest
        .iter()
        .zip(&via_agent)
        .map(|(r, a)| ms(*r) - ms(*a))
        .collect();
    paired.sort_by(f64::total_cmp);
    via_rest.sort();
    via_agent.sort();
    println!("exec round trip of `true`, {runs} runs each, interleaved, one VM (TCG)");
    println!(
        "{:<34} {:>9} {:>9} {:>9}",
        "path", "p50 ms", "p99 ms", "mean ms"
    );
    for (name, v) in [
        ("REST → controller → agent → SSH", &via_rest),
        ("gRPC → agent → SSH (direct)", &via_agent),
    ] {
        let mean = v.iter().sum::<Duration>() / u32::try_from(v.len().max(1))?;
        println!(
            "{name:<34} {:>9.2} {:>9.2} {:>9.2}",
            ms(percentile(v, 50.0)),
            ms(percentile(v, 99.0)),
            ms(mean)
        );
    }
    let added = ms(percentile(&via_rest, 50.0)) - ms(percentile(&via_agent, 50.0));
    let paired_p50 = paired.get(paired.len() / 2).copied().unwrap_or_default();
    println!(
        "REST adds {added:.2} ms at p50 (difference of medians); median of paired differences {paired_p50:.2} ms (target ≤ 10 ms)"
    );
    stack.client.destroy_sandbox(&id).await?;
    Ok(())
}

async fn drain(
    agent: &mut pb::host_agent_client::HostAgentClient<tonic::transport::Channel>,
    req: pb::ExecRequest,
) -> Result<()> {
    let mut stream = agent.exec(req).await?.into_inner();
    while let Some(ev) = stream.message().await? {
        if let Some(pb::exec_event::Event::Exit(x)) = ev.event {
            ensure!(
                x.exit_code == 0 && x.error.is_empty(),
                "direct exec failed: {x:?}"
            );
            return Ok(());
        }
    }
    anyhow::bail!("exec stream ended without exit")
}
