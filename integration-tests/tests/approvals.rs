//! Human in the loop, with real processes: tokens made by `fluid-controller token
//! create`, a blocking ask decided from a second client, expiry, the signed webhook
//! (a receiver on loopback), the over-commit gate on a small real host (the approved
//! sandbox boots under TCG), and `fluidctl audit verify` before and after a hand edit
//! of the database.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use fluid_client::client::{ApprovalQuery, CreateOutcome};
use fluid_client::governance::{ApprovalStatus, AskRequest, DecideRequest};
use fluid_client::types::{CreateSandboxRequest, HostState, SandboxState};
use integration_tests::stack::{AgentOptions, Stack, StoreKind};

const SECRET: &str = "it-webhook-secret";

#[derive(Debug, Clone)]
struct Delivery {
    headers: HeaderMap,
    body: Bytes,
}

/// A webhook receiver on 127.0.0.1; what it received.
async fn receiver() -> Result<(String, Arc<Mutex<Vec<Delivery>>>)> {
    let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                if let Ok(mut v) = sink.lock() {
                    v.push(Delivery { headers, body });
                }
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, got))
}

fn req(agent: &str, memory_mb: u64, auto_start: bool) -> CreateSandboxRequest {
    CreateSandboxRequest {
        source_vm_name: "debian-12".into(),
        agent_id: agent.into(),
        vm_name: None,
        cpu: Some(1),
        memory_mb: Some(memory_mb),
        ttl_seconds: None,
        auto_start: Some(auto_start),
        wait_for_ip: None,
    }
}

async fn one_pending(client: &fluid_client::Client) -> Result<fluid_client::governance::Approval> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = client
            .list_approvals(&ApprovalQuery {
                status: Some(ApprovalStatus::Pending),
                ..Default::default()
            })
            .await?;
        if let Some(a) = page.approvals.into_iter().next() {
            return Ok(a);
        }
        ensure!(Instant::now() < deadline, "no pending approval appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn fluidctl(stack: &Stack, token: &str, args: &[&str]) -> Result<(i32, String)> {
    let out = std::process::Command::new(stack.env.bin_dir.join("fluidctl"))
        .args(["--url", &stack.api_url, "--token", token])
        .args(args)
        .output()
        .context("running fluidctl")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.code().unwrap_or(-1), text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn humans_decide_and_the_record_cannot_be_rewritten() -> Result<()> {
    let (hook_url, deliveries) = receiver().await?;
    let tables = format!(
        "[approvals]\novercommit_approval = true\novercommit_timeout_secs = 120\nwebhook_url = {hook_url:?}\nwebhook_secret = {SECRET:?}\n"
    );
    let mut stack = Stack::start_with(
        StoreKind::Sqlite,
        vec![AgentOptions::new("a").memory_mb(1024)],
        &tables,
    )
    .await?;
    stack
        .wait_host("a", HostState::Online, Duration::from_secs(30))
        .await?;
    let agent = stack.client_with(&stack.token_cli("bot", "agent", Some("agent-it"))?)?;
    let operator = stack.client_with(&stack.token_cli("alice", "operator", None)?)?;
    let viewer = stack.client_with(&stack.token_cli("viewer", "readonly", None)?)?;

    // Roles over the real API (the full matrix is a unit test).
    let who = agent.whoami().await?;
    println!(
        "tokens: agent {} ({}, {:?})",
        who.name, who.role, who.agent_id
    );
    let e = viewer
        .create_sandbox(&req("agent-it", 256, false))
        .await
        .expect_err("readonly cannot create");
    println!("readonly create → {e}");
    ensure!(e.status() == Some(StatusCode::FORBIDDEN));
    let anon = fluid_client::Client::new(&stack.api_url)?;
    let e = anon.list_sandboxes("").await.expect_err("no token");
    println!("no token → {e}");
    ensure!(e.status() == Some(StatusCode::UNAUTHORIZED));

    // 1. A blocking ask is answered by an approval from a second client.
    let asker = {
        let agent = agent.clone();
        tokio::spawn(async move {
            agent
                .ask(&AskRequest {
                    prompt: "May I install nginx?".into(),
                    context: Some(serde_json::json!({"packages": ["nginx"]})),
                    action_type: Some("package_install".into()),
                    urgency: Some("normal".into()),
                    timeout_secs: Some(120),
                    sandbox_id: None,
                })
                .await
        })
    };
    let pending = one_pending(&operator).await?;
    println!(
        "ask: pending {} {:?} from {}",
        pending.id, pending.summary, pending.requested_by
    );
    let e = agent
        .approve(&pending.id, &DecideRequest::default())
        .await
        .expect_err("an agent cannot approve");
    println!("agent approves → {e}");
    ensure!(e.status() == Some(StatusCode::FORBIDDEN));
    let approved_at = Instant::now();
    operator
        .approve(
            &pending.id,
            &DecideRequest {
                comment: Some("fine".into()),
            },
        )
        .await?;
    let answer = asker.await??;
    let latency = approved_at.elapsed();
    println!(
        "ask: answered {:?} {} by {:?} {:.0} ms after the approval",
        answer.status,
        answer.approved,
        answer.approved_by,
        latency.as_secs_f64() * 1000.0
    );
    // Answered by the decision (approved, by alice), not by its timeout; how fast is a
    // benchmark's question, not this test's.
    ensure!(answer.approved && answer.approved_by.as_deref() == Some("alice"));

    // 2. An ask whose timeout passes answers approved=false with the reason.
    let t = Instant::now();
    let answer = agent
        .ask(&AskRequest {
            prompt: "Anyone there?".into(),
            context: None,
            action_type: None,
            urgency: None,
            timeout_secs: Some(2),
            sandbox_id: None,
        })
        .await?;
    println!(
        "ask: timed out after {:.1} s: approved={} reason={:?}",
        t.elapsed().as_secs_f64(),
        answer.approved,
        answer.reason
    );
    ensure!(!answer.approved && answer.status == ApprovalStatus::Expired);
    ensure!(answer.reason.as_deref() == Some("expired: no decision within 2 s"));

    // 3. The webhook received each request, signed.
    let got = deliveries.lock().map(|v| v.clone()).unwrap_or_default();
    let requested: Vec<&Delivery> = got
        .iter()
        .filter(|d| {
            d.headers
                .get("x-fluid-event")
                .is_some_and(|v| v == "approval.requested")
        })
        .collect();
    ensure!(requested.len() >= 2, "webhook deliveries: {}", got.len());
    for d in &requested {
        let ts: i64 = d
            .headers
            .get("x-fluid-timestamp")
            .and_then(|v| v.to_str().ok())
            .context("timestamp")?
            .parse()?;
        let sig = d
            .headers
            .get("x-fluid-signature")
            .and_then(|v| v.to_str().ok())
            .context("signature")?;
        ensure!(fluid_controller::governance::webhook::verify(
            SECRET.as_bytes(),
            ts,
            &d.body,
            sig
        ));
        ensure!(!fluid_controller::governance::webhook::verify(
            b"forged", ts, &d.body, sig
        ));
    }
    println!(
        "webhook: {} deliveries, {} requests, signatures verify ({})",
        got.len(),
        requested.len(),
        requested[0]
            .headers
            .get("x-fluid-signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    );

    // 4. Over-commit on a 1024 MiB host: 768 MiB reserved, then 512 MiB more waits.
    let first = agent.create_sandbox(&req("agent-it", 768, false)).await?;
    let host_free = |h: &fluid_client::types::ListHostsResponse| {
        h.hosts
            .first()
            .map(|h| h.memory_mb_free)
            .unwrap_or_default()
    };
    let before = host_free(&operator.list_hosts().await?);
    let creator = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.create_sandbox(&req("agent-it", 512, true)).await })
    };
    let gate = one_pending(&operator).await?;
    let while_waiting = host_free(&operator.list_hosts().await?);
    let sandboxes = operator.list_sandboxes("").await?;
    println!(
        "overcommit: {} pending: {:?}; host free {before} MiB before, {while_waiting} MiB while it waits; {} sandboxes",
        gate.id, gate.summary, sandboxes.total
    );
    println!("overcommit details: {}", gate.details);
    ensure!(gate.kind.as_str() == "overcommit" && while_waiting == before && sandboxes.total == 1);
    operator
        .approve(&gate.id, &DecideRequest::default())
        .await?;
    let created = creator.await??;
    println!(
        "overcommit: approved → {} {:?} on {:?}; host free now {} MiB",
        created.sandbox.id,
        created.sandbox.state,
        created.sandbox.host_name,
        host_free(&operator.list_hosts().await?)
    );
    ensure!(created.sandbox.state == SandboxState::Running);

    // A rejection answers 409, and wait=false answers 202 first.
    let pending = match agent
        .create_sandbox_nowait(&req("agent-it", 512, true))
        .await?
    {
        CreateOutcome::Pending(p) => p,
        CreateOutcome::Created(c) => anyhow::bail!("created without approval: {c:?}"),
    };
    println!(
        "overcommit: wait=false → 202 {} for {}",
        pending.request_id, pending.sandbox_id
    );
    operator
        .reject(
            &pending.request_id,
            &DecideRequest {
                comment: Some("no room".into()),
            },
        )
        .await?;
    let creator = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.create_sandbox(&req("agent-it", 512, true)).await })
    };
    let gate = one_pending(&operator).await?;
    operator
        .reject(
            &gate.id,
            &DecideRequest {
                comment: Some("not today".into()),
            },
        )
        .await?;
    let e = creator.await?.expect_err("rejected");
    println!("overcommit: rejected → {e}");
    ensure!(e.status() == Some(StatusCode::CONFLICT));
    // The 409 is the gated create's last act (the continuation answers it after the
    // decision, and creates nothing on a rejection), so no wait is needed before
    // checking that nothing was created.
    let e = operator
        .get_sandbox(&pending.sandbox_id)
        .await
        .expect_err("never created");
    ensure!(e.status() == Some(StatusCode::NOT_FOUND), "{e}");
    ensure!(operator.list_sandboxes("").await?.total == 2);
    for id in [&first.sandbox.id, &created.sandbox.id] {
        stack.client.destroy_sandbox(id).await?;
    }

    // 5. The audit chain verifies, and a hand edit is found and named.
    let (code, out) = fluidctl(&stack, &stack.admin_token, &["audit", "verify"])?;
    println!("fluidctl audit verify → exit {code}: {}", out.trim());
    ensure!(code == 0, "{out}");
    let db = stack.dir.path().join("controller").join("fluid.db");
    let edit = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg("DROP TRIGGER audit_events_no_update; UPDATE audit_events SET outcome = '200' WHERE seq = 5;")
        .output()?;
    ensure!(
        edit.status.success(),
        "{}",
        String::from_utf8_lossy(&edit.stderr)
    );
    let (code, out) = fluidctl(&stack, &stack.admin_token, &["audit", "verify"])?;
    println!(
        "after editing seq 5 by hand: fluidctl audit verify → exit {code}:\n{}",
        out.trim()
    );
    ensure!(code == 1 && out.contains("event 5"), "{out}");
    Ok(())
}
