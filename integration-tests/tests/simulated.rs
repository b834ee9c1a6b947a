//! Simulated hosts (the agent's `[simulated]`) under a real controller: one
//! `fluid-agent` process serves three hosts over mTLS gRPC, the controller lists them
//! as `simulated`, and sandboxes are created, run commands with streamed output, write
//! and read files, take snapshots and are destroyed through the REST API, with nothing
//! left behind. No VM is involved: this is the backend of the control-plane load tests
//! (`loadtest`), kept working here.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use fluid_client::types::{
    CreateSandboxRequest, ReadFileRequest, RunCommandRequest, WriteFileRequest,
};
use integration_tests::api::Api;
use integration_tests::fleet::{SimFleet, SimOptions};
use integration_tests::stack::StoreKind;
use reqwest::Method;
use serde_json::json;

const OUTPUT_BYTES: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_hosts_serve_the_whole_sandbox_life_through_the_controller() -> Result<()> {
    let mut opts = SimOptions::new(3, StoreKind::Sqlite);
    opts.simulated = format!(
        "boot_ms = 200\nexec_ms = 100\noutput_bytes = {OUTPUT_BYTES}\noutput_bytes_per_sec = 1000000\n"
    );
    let mut fleet = SimFleet::start(opts).await?;
    let hosts = fleet.wait_online(Duration::from_secs(60)).await?;
    for h in &hosts {
        println!(
            "host {} {:?} simulated={} cpus={} memory={} MiB",
            h.name, h.state, h.simulated, h.cpus_total, h.memory_mb_total
        );
        ensure!(h.simulated, "{} is not reported as simulated", h.name);
    }
    let token = fleet.token("sim-bot", "agent", Some("agent-sim"))?;
    let agent = fleet.client_with(&token)?;

    let mut ids = Vec::new();
    let mut placed = BTreeSet::new();
    for i in 0..6 {
        let r = agent
            .create_sandbox(&CreateSandboxRequest {
                source_vm_name: "debian-12".into(),
                agent_id: "agent-sim".into(),
                vm_name: Some(format!("sim-{i}")),
                cpu: Some(1),
                memory_mb: Some(512),
                ttl_seconds: None,
                auto_start: Some(true),
                wait_for_ip: Some(true),
            })
            .await?;
        let host = r.sandbox.host_name.clone().context("no host")?;
        println!(
            "sandbox {} on {host}: {:?} ip {:?}",
            r.sandbox.id, r.sandbox.state, r.ip_address
        );
        ensure!(r.ip_address.is_some(), "no address: {r:?}");
        placed.insert(host);
        ids.push(r.sandbox.id);
    }
    ensure!(
        placed.len() == 3,
        "the six sandboxes went to {placed:?}, not to all three hosts"
    );

    let id = &ids[0];
    let run = agent
        .run_command(
            id,
            &RunCommandRequest {
                command: "make -j4".into(),
                timeout_sec: Some(30),
                ..Default::default()
            },
        )
        .await?
        .command;
    println!(
        "command {}: exit {} in {:?} ms, {} bytes of stdout",
        run.id,
        run.exit_code,
        run.duration_ms,
        run.stdout.len()
    );
    ensure!(
        run.exit_code == 0 && run.stdout.len() == OUTPUT_BYTES,
        "{run:?}"
    );
    ensure!(run.stdout.starts_with("simulated output line 1\n"));

    agent
        .write_file(
            id,
            &WriteFileRequest {
                path: "/etc/app.conf".into(),
                content: "port = 8080\n".into(),
                ..Default::default()
            },
        )
        .await?;
    let read = agent
        .read_file(
            id,
            &ReadFileRequest {
                path: "/etc/app.conf".into(),
                ..Default::default()
            },
        )
        .await?;
    println!("read back: {:?} ({} bytes)", read.content, read.size);
    ensure!(read.content == "port = 8080\n" && read.size == 12);

    let api = Api::new(&fleet.api_url);
    let (status, body) = api
        .send(
            &token,
            Method::POST,
            &format!("/v1/sandboxes/{id}/snapshots"),
            Some(json!({"name": "before"})),
        )
        .await?;
    println!("snapshot: {status} {}", body["snapshot"]["id"]);
    ensure!(status == 201, "snapshot: {status} {body}");

    let (status, metrics) = api
        .send(&fleet.admin_token, Method::GET, "/metrics", None)
        .await?;
    let metrics = metrics.as_str().unwrap_or_default();
    let simulated_gauges = metrics
        .lines()
        .filter(|l| l.starts_with("fluid_host_simulated{") && l.ends_with(" 1"))
        .count();
    println!("/metrics: {status}, {simulated_gauges} hosts with fluid_host_simulated 1");
    ensure!(status == 200 && simulated_gauges == 3, "{metrics}");

    for id in &ids {
        agent.destroy_sandbox(id).await?;
    }
    let hosts = fleet.wait_online(Duration::from_secs(10)).await?;
    let left: u64 = hosts.iter().map(|h| h.sandboxes).sum();
    let overlays = std::fs::read_dir(fleet.dir.path().join("agent"))?
        .filter_map(Result::ok)
        .filter_map(|host| std::fs::read_dir(host.path().join("overlays")).ok())
        .flatten()
        .count();
    println!("after the destroys: {left} sandboxes on the hosts, {overlays} overlay files");
    ensure!(left == 0 && overlays == 0);
    ensure!(fleet.agent.is_running() && fleet.controller.is_running());
    Ok(())
}
