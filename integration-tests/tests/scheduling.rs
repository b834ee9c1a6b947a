//! Acceptance: with several agents, creates spread by free memory, a full host is
//! skipped, an offline host is never chosen, and a create that fits nowhere answers 409
//! naming what is short. Sandboxes are defined without booting (auto_start=false):
//! scheduling reserves capacity either way.

use std::time::Duration;

use anyhow::{Result, ensure};
use fluid_client::types::{CreateSandboxRequest, HostState};
use integration_tests::{AgentOptions, Stack, StoreKind};

fn request(name: &str) -> CreateSandboxRequest {
    CreateSandboxRequest {
        source_vm_name: "debian-12".into(),
        agent_id: "integration".into(),
        vm_name: Some(name.to_owned()),
        cpu: Some(1),
        memory_mb: Some(512),
        auto_start: Some(false),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_spread_by_free_memory_and_skip_full_and_offline_hosts() -> Result<()> {
    let mut stack = Stack::start(
        StoreKind::Sqlite,
        vec![
            AgentOptions::new("a").memory_mb(2048),
            AgentOptions::new("b").memory_mb(1024),
            AgentOptions::new("c").memory_mb(65536),
        ],
    )
    .await?;
    for h in ["a", "b", "c"] {
        stack
            .wait_host(h, HostState::Online, Duration::from_secs(30))
            .await?;
    }
    // c has by far the most memory, but goes offline.
    stack.agent("c")?.service.stop().await?;
    stack
        .wait_host("c", HostState::Offline, Duration::from_secs(30))
        .await?;

    // Most free memory wins; ties go to the host with fewer sandboxes.
    // a: 2048 b: 1024 → a; 1536/1024 → a; 1024/1024 → b; 1024/512 → a; 512/512 → b;
    // 512/0 → a (b is full and skipped); then nothing fits.
    let expected = ["a", "a", "b", "a", "b", "a"];
    let mut ids = Vec::new();
    for (i, want) in expected.iter().enumerate() {
        let name = format!("{}-s{i}", stack.prefix);
        // What the controller weighs (its hosts' free memory and sandboxes), printed
        // so a surprising placement says what it was based on.
        let seen: Vec<String> = stack
            .client
            .list_hosts()
            .await?
            .hosts
            .iter()
            .map(|h| {
                format!(
                    "{} {} MiB free, {} sandboxes",
                    h.name, h.memory_mb_free, h.sandboxes
                )
            })
            .collect();
        let got = stack.client.create_sandbox(&request(&name)).await?.sandbox;
        let host = got.host_name.clone().unwrap_or_default();
        println!(
            "create {i}: placed on {host} (before it: {})",
            seen.join("; ")
        );
        ensure!(
            host == stack.host(want),
            "create {i} went to {host}, expected {}",
            stack.host(want)
        );
        ids.push(got.id);
    }
    let err = stack
        .client
        .create_sandbox(&request(&format!("{}-s-full", stack.prefix)))
        .await
        .expect_err("a create that fits nowhere must fail");
    println!("create 6: {err}");
    ensure!(
        err.status().map(|s| s.as_u16()) == Some(409),
        "expected 409, got {err}"
    );
    let text = err.to_string();
    ensure!(
        text.contains(&stack.host("c")) && text.contains("offline"),
        "409 must name the offline host: {text}"
    );
    ensure!(
        text.contains(&stack.host("a")) && text.contains(&stack.host("b")),
        "409 must name the full hosts: {text}"
    );

    let hosts = stack.client.list_hosts().await?;
    for h in &hosts.hosts {
        println!(
            "host {} {:?} memory free {} / {} MiB, {} sandboxes",
            h.name, h.state, h.memory_mb_free, h.memory_mb_total, h.sandboxes
        );
    }
    let c = hosts.hosts.iter().find(|h| h.name == stack.host("c"));
    ensure!(
        c.map(|h| h.sandboxes) == Some(0),
        "offline host got sandboxes"
    );

    for id in ids {
        stack.client.destroy_sandbox(&id).await?;
    }
    Ok(())
}
