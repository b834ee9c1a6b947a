//! Attacks: commands without end, and concurrent commands that make each other fail.
//!
//! A hostile `agent` token (or a careless one) runs commands that try to outlive their
//! timeout (`setsid`, `nohup`, double forks), commands with no timeout at all, and more
//! commands at once than the guest's sshd allows on one connection (`MaxSessions`).
//! Before the fix, 12 concurrent `sleep 20` made 10 of them fail with "connection lost"
//! (the agent took sshd's refused channel for a dead connection and reconnected,
//! killing the in-flight ones), and `setsid sleep 300` survived its command's timeout.
//!
//! One real VM (TCG) is booted and shared by every step; the controller runs with
//! `[commands] default_timeout_secs = 4` and `max_concurrent_per_sandbox = 12`. The
//! guest's sshd is lowered to `MaxSessions 4` halfway, so the agent's pool meets real
//! channel refusals.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use fluid_client::Client;
use fluid_client::types::{Command, CreateSandboxRequest, HostState, RunCommandRequest};
use integration_tests::stack::wait_ssh_banner;
use integration_tests::{AgentOptions, Stack, StoreKind};

const CONTROLLER: &str =
    "[commands]\ndefault_timeout_secs = 4\nmax_concurrent_per_sandbox = 12\nretry_after_secs = 3\n";

/// A command with a generous timeout (the controller's default here is only 4 s, and
/// a loaded TCG guest can take longer than that for a `systemctl reload`).
fn cmd(command: &str) -> RunCommandRequest {
    RunCommandRequest {
        command: command.to_owned(),
        timeout_sec: Some(120),
        ..Default::default()
    }
}

async fn run(client: &Client, id: &str, req: RunCommandRequest) -> Result<Command> {
    Ok(client.run_command(id, &req).await?.command)
}

/// The audit row of command `cid`.
async fn audit_row(client: &Client, id: &str, cid: &str) -> Result<Command> {
    client
        .list_commands(id, "limit=1000")
        .await?
        .commands
        .into_iter()
        .find(|c| c.id == cid)
        .with_context(|| format!("no audit row for {cid}"))
}

/// Polls `probe` (a command printing what it finds, or `none`) until it prints `none`.
async fn wait_none(client: &Client, id: &str, probe: &str, within: Duration) -> Result<Duration> {
    wait_for(client, id, probe, "none", within).await
}

/// Polls `probe` until it prints `expect`.
async fn wait_for(
    client: &Client,
    id: &str,
    probe: &str,
    expect: &str,
    within: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let c = run(client, id, cmd(probe)).await?;
        if c.stdout.trim() == expect {
            return Ok(started.elapsed());
        }
        ensure!(
            started.elapsed() < within,
            "still there after {within:?}: {probe} printed {:?}",
            c.stdout
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Sends `n` concurrent `command`s through the raw REST API; answers (status,
/// Retry-After, body) for each.
async fn concurrent(
    stack: &Stack,
    id: &str,
    n: usize,
    command: &str,
) -> Result<Vec<(u16, Option<String>, serde_json::Value)>> {
    let http = reqwest::Client::new();
    let url = format!("{}/v1/sandboxes/{id}/run", stack.api_url);
    let calls = (0..n).map(|_| {
        let req = http
            .post(&url)
            .bearer_auth(&stack.admin_token)
            .json(&serde_json::json!({ "command": command, "timeout_sec": 120 }));
        async move {
            let resp = req.send().await?;
            let status = resp.status().as_u16();
            let retry = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body: serde_json::Value = resp.json().await?;
            Ok::<_, anyhow::Error>((status, retry, body))
        }
    });
    futures::future::join_all(calls).await.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_end_at_their_timeout_and_concurrent_ones_never_fail() -> Result<()> {
    // A loaded TCG host can take a while to open the extra SSH connections: the agent
    // call's deadline is not what this test is about.
    let mut stack = Stack::start_configured(
        StoreKind::Sqlite,
        vec![AgentOptions::new("a")],
        "agent_timeout_secs = 120",
        CONTROLLER,
    )
    .await?;
    stack
        .wait_host("a", HostState::Online, Duration::from_secs(30))
        .await?;
    let created = stack
        .client
        .create_sandbox(&CreateSandboxRequest {
            source_vm_name: "debian-12".into(),
            agent_id: "hostile-commands".into(),
            vm_name: Some(format!("{}-cmds", stack.prefix)),
            wait_for_ip: Some(true),
            ..Default::default()
        })
        .await?;
    let id = created.sandbox.id.clone();
    let ip = created.ip_address.context("no ip")?;
    wait_ssh_banner(&format!("{ip}:22"), Duration::from_secs(90)).await?;
    let client = stack.client.clone();

    // Warm up, and the exec latency of `true` (for the report).
    run(&client, &id, cmd("true")).await?;
    let mut took = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let c = run(&client, &id, cmd("true")).await?;
        ensure!(c.exit_code == 0, "true: {c:?}");
        took.push(t.elapsed().as_millis());
    }
    took.sort_unstable();
    println!("latency: `true` in {took:?} ms (median {} ms)", took[2]);
    // What a transient systemd scope would cost inside the guest, per command, beside
    // the wrapper's own cgroup (for the report).
    let c = run(
        &client,
        &id,
        RunCommandRequest {
            timeout_sec: Some(120),
            ..cmd("a=$(date +%s%N); for i in 1 2 3 4 5; do systemd-run --quiet --scope --collect true; done; \
             b=$(date +%s%N); for i in 1 2 3 4 5; do g=/sys/fs/cgroup/fluid/bench$i; mkdir -p $g; \
             setsid -w sh -c 'echo $$ >$0/cgroup.procs; exec true' $g; rmdir $g; done; \
             c=$(date +%s%N); for i in 1 2 3 4 5; do setsid -w true; done; d=$(date +%s%N); \
             echo \"scope $(( (b - a) / 5000000 )) ms, cgroup $(( (c - b) / 5000000 )) ms, plain $(( (d - c) / 5000000 )) ms\"")
        },
    )
    .await?;
    println!(
        "latency in the guest, per command: {} (exit {}, {:?})",
        c.stdout.trim(),
        c.exit_code,
        c.error
    );

    // 1. Escapes from the timeout: a new session, nohup, a double fork. Everything
    //    the command started is in its cgroup, and dies with it.
    let t = Instant::now();
    let c = run(
        &client,
        &id,
        RunCommandRequest {
            timeout_sec: Some(3),
            ..cmd("setsid sleep 300 & nohup sh -c 'sleep 300' & sh -c '(sleep 300 &)'; sleep 100")
        },
    )
    .await?;
    println!(
        "escape: timed_out={} exit {} after {:.1} s, error {:?}",
        c.timed_out,
        c.exit_code,
        t.elapsed().as_secs_f64(),
        c.error
    );
    ensure!(c.timed_out, "not timed out: {c:?}");
    // Ended by its timeout, not by its own end (`sleep 100`).
    ensure!(
        t.elapsed() < Duration::from_secs(100),
        "took {:?}",
        t.elapsed()
    );
    let error = c.error.clone().unwrap_or_default();
    ensure!(
        error.contains("timed out after 3 s") && error.contains("cgroup /sys/fs/cgroup/fluid/CMD-"),
        "the error does not name the timeout and the cgroup: {error:?}"
    );
    let gone = wait_none(
        &client,
        &id,
        "pgrep -f '^(sh -c )?sleep 300$' || echo none",
        Duration::from_secs(15),
    )
    .await?;
    println!(
        "escape: no `sleep 300` left in the guest ({} ms after the timeout's answer)",
        gone.as_millis()
    );
    let row = audit_row(&client, &id, &c.id).await?;
    ensure!(
        row.timed_out && row.error.as_deref() == Some(error.as_str()),
        "audit row: {row:?}"
    );

    // 2. No timeout at all: the default (4 s here) applies.
    let t = Instant::now();
    let c = run(
        &client,
        &id,
        RunCommandRequest {
            timeout_sec: None,
            ..cmd("sleep 100")
        },
    )
    .await?;
    let took = t.elapsed();
    println!(
        "default: timed_out={} after {:.1} s, error {:?}",
        c.timed_out,
        took.as_secs_f64(),
        c.error
    );
    ensure!(
        c.timed_out && took >= Duration::from_secs(4) && took < Duration::from_secs(100),
        "a command without a timeout was not ended by the default: {c:?} after {took:?}"
    );
    ensure!(
        c.error
            .as_deref()
            .is_some_and(|e| e.contains("timed out after 4 s")),
        "{c:?}"
    );
    wait_none(
        &client,
        &id,
        "pgrep -f '^sleep 100$' || echo none",
        Duration::from_secs(15),
    )
    .await?;

    // 3. The guest's sshd allows only 4 sessions per connection from now on (sshd takes
    //    the first value it reads, and 00- sorts before the image's fluid-exec.conf).
    let c = run(
        &client,
        &id,
        cmd("printf 'MaxSessions 4\\n' >/etc/ssh/sshd_config.d/00-test.conf && systemctl reload ssh && sshd -T | grep -i '^maxsessions'"),
    )
    .await?;
    ensure!(
        c.exit_code == 0 && c.stdout.trim() == "maxsessions 4",
        "lowering MaxSessions: {c:?}"
    );

    // 4. The connection dies under a running command (the guest's session sshds are
    //    killed): the error says so, in the answer and in the audit row, and the command
    //    does not go on running unseen.
    let victim = {
        let client = client.clone();
        let id = id.clone();
        tokio::spawn(async move { run(&client, &id, cmd("sleep 60")).await })
    };
    wait_for(
        &client,
        &id,
        "pgrep -f '^sleep 60$' >/dev/null && echo running || echo waiting",
        "running",
        Duration::from_secs(30),
    )
    .await
    .context("the victim never started")?;
    let killer = run(&client, &id, cmd("pkill -KILL -f '^sshd: root'")).await?;
    println!(
        "lost: the killer itself ended with status {} and error {:?}",
        killer.status, killer.error
    );
    let c = tokio::time::timeout(Duration::from_secs(60), victim)
        .await
        .context("the victim's answer did not come")???;
    println!(
        "lost: status {} exit {} error {:?}",
        c.status, c.exit_code, c.error
    );
    let error = c.error.clone().unwrap_or_default();
    ensure!(c.status == "failed" && c.exit_code == -1, "victim: {c:?}");
    ensure!(
        error.contains("connection to the guest lost"),
        "the error does not name the cause: {error:?}"
    );
    let row = audit_row(&client, &id, &c.id).await?;
    ensure!(
        row.status == "failed" && row.error.as_deref() == Some(error.as_str()),
        "audit row: {row:?}"
    );
    wait_none(
        &client,
        &id,
        "pgrep -f '^sleep 60$' || echo none",
        Duration::from_secs(15),
    )
    .await
    .context("the lost command went on running")?;

    // 5. 12 at once (MaxSessions + 8): sshd refuses channels past 4 on a connection;
    //    the agent opens more connections and every command succeeds.
    let t = Instant::now();
    let answers = concurrent(&stack, &id, 12, "sleep 5").await?;
    let ok = answers
        .iter()
        .filter(|(s, _, b)| {
            *s == 200 && b["command"]["exit_code"] == 0 && b["command"]["status"] == "completed"
        })
        .count();
    println!(
        "concurrent: {ok} of 12 `sleep 5` exited 0 in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    ensure!(ok == 12, "not all succeeded: {answers:#?}");
    let log = stack.agent("a")?.service.log_tail(2000);
    let refusals = log.matches("sshd refused a channel").count();
    println!(
        "concurrent: the agent met {refusals} channel refusals by sshd and used other connections"
    );
    ensure!(
        refusals > 0,
        "sshd never refused a channel: the test did not exercise MaxSessions"
    );

    // 6. 14 at once, past the controller's limit of 12: exactly 2 get 429 with
    //    Retry-After, the 12 others succeed.
    let answers = concurrent(&stack, &id, 14, "sleep 5").await?;
    let ok = answers
        .iter()
        .filter(|(s, _, b)| *s == 200 && b["command"]["exit_code"] == 0)
        .count();
    let busy: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 429).collect();
    println!(
        "limit: {ok} succeeded, {} got 429 (Retry-After {:?}): {}",
        busy.len(),
        busy.first().and_then(|b| b.1.clone()),
        busy.first()
            .map(|b| b.2["error"].to_string())
            .unwrap_or_default()
    );
    ensure!(
        ok == 12 && busy.len() == 2,
        "expected 12 successes and 2 × 429: {answers:#?}"
    );
    ensure!(
        busy.iter()
            .all(|(_, retry, body)| retry.as_deref() == Some("3")
                && body["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("max_concurrent_per_sandbox"))),
        "{busy:#?}"
    );
    let failed = client
        .list_commands(&id, "limit=1000")
        .await?
        .commands
        .into_iter()
        .filter(|c| c.command == "sleep 5" && c.status != "completed")
        .count();
    ensure!(failed == 0, "{failed} concurrent commands did not complete");
    Ok(())
}
