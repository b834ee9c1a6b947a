//! Command limits (`[commands]`) against a SQLite store and the fake agent: the default
//! and longest timeout, commands at once per sandbox (429 with Retry-After, no audit
//! row, never a failure), and the agent's own ceiling (RESOURCE_EXHAUSTED) as a 429.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use futures::StreamExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::tests::{TestApp, app_with};
use crate::agents::{AgentError, ExecEvent};
use crate::config::Config;
use crate::testing::fake_agents::exit;
use crate::work::commands::CommandsConfig;

fn config(limits: CommandsConfig) -> Config {
    Config {
        commands: limits,
        ..Config::default()
    }
}

async fn running(app: &TestApp) -> String {
    let v = app
        .create(json!({"source_vm_name": "debian-12", "agent_id": "agent-7"}))
        .await;
    v["sandbox"]["id"].as_str().expect("id").to_owned()
}

fn run_request(id: &str, body: Value) -> Request<Body> {
    Request::post(format!("/v1/sandboxes/{id}/run"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("req")
}

#[tokio::test]
async fn a_command_without_a_timeout_gets_the_default_and_too_long_is_refused() {
    let app = app_with(config(CommandsConfig {
        default_timeout_secs: 7,
        max_timeout_secs: 100,
        ..CommandsConfig::default()
    }))
    .await;
    let id = running(&app).await;
    for (body, want) in [
        (json!({"command": "x"}), 7),
        (json!({"command": "x", "timeout_sec": 0}), 7),
        (json!({"command": "x", "timeout_sec": 3}), 3),
        (json!({"command": "x", "timeout_sec": 100}), 100),
    ] {
        let (s, v) = app
            .post(&format!("/v1/sandboxes/{id}/run"), body.clone())
            .await;
        assert_eq!(s, StatusCode::OK, "{body}: {v}");
        let last = app.agents.execs.lock().expect("lock").last().cloned();
        assert_eq!(last.expect("an exec").timeout_seconds, want, "{body}");
    }
    let (s, v) = app
        .post(
            &format!("/v1/sandboxes/{id}/run"),
            json!({"command": "x", "timeout_sec": 101}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("timeout_sec") && e.contains("max_timeout_secs")),
        "{v}"
    );
}

#[tokio::test]
async fn past_the_limit_a_command_gets_429_with_retry_after_and_the_others_finish() {
    let app = app_with(config(CommandsConfig {
        max_concurrent_per_sandbox: 2,
        retry_after_secs: 5,
        ..CommandsConfig::default()
    }))
    .await;
    let id = running(&app).await;
    let other = running(&app).await;
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let g = gate.clone();
    app.agents.script_exec(move |_| {
        let g = g.clone();
        futures::stream::once(async { Ok(ExecEvent::Started { at_unix_ms: 1 }) })
            .chain(futures::stream::once(async move {
                let _ = g.acquire().await.map(|p| p.forget());
                Ok(exit(0))
            }))
            .boxed()
    });
    let router = app.admin_router();
    let first = tokio::spawn(
        router
            .clone()
            .oneshot(run_request(&id, json!({"command": "a"}))),
    );
    let second = tokio::spawn(
        router
            .clone()
            .oneshot(run_request(&id, json!({"command": "b"}))),
    );
    // Both run, and their rows are written, before the third arrives (the slot is
    // taken before the row: wait for both, with a deadline).
    let rows = async || app.store.list_commands(&id, 10, 0).await.expect("list").1;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.state.commands.running(&id) != 2 || rows().await != 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first two commands did not both start within 10 s: {} running, {} rows",
            app.state.commands.running(&id),
            rows().await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let resp = router
        .clone()
        .oneshot(run_request(&id, json!({"command": "c"})))
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()[header::RETRY_AFTER], "5");
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("max_concurrent_per_sandbox")),
        "{v}"
    );
    // Not run, so not audited; another sandbox is not affected by this one's limit.
    assert_eq!(rows().await, 2);
    let other_run = tokio::spawn(
        router
            .clone()
            .oneshot(run_request(&other, json!({"command": "d"}))),
    );
    gate.add_permits(3);
    for h in [first, second, other_run] {
        let resp = h.await.expect("join").expect("infallible");
        assert_eq!(resp.status(), StatusCode::OK);
    }
    assert_eq!(app.state.commands.running(&id), 0);
    let rows = app.store.list_commands(&id, 10, 0).await.expect("list").0;
    assert!(
        rows.iter().all(|r| r.status.as_str() == "completed"),
        "{rows:?}"
    );
    // A slot is free again.
    gate.add_permits(1);
    let (s, _) = app
        .post(&format!("/v1/sandboxes/{id}/run"), json!({"command": "e"}))
        .await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn the_agents_ceiling_is_a_429_too_and_audited_as_denied() {
    let app = app_with(config(CommandsConfig::default())).await;
    let id = running(&app).await;
    *app.agents.exec_error.lock().expect("lock") = Some(AgentError::Busy {
        host: "kvm-1".into(),
        message:
            "sandbox already runs 64 commands, this host's limit (exec.max_concurrent_per_sandbox)"
                .into(),
    });
    let resp = app
        .admin_router()
        .oneshot(run_request(&id, json!({"command": "x"})))
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
    let rows = app.store.list_commands(&id, 10, 0).await.expect("list").0;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status.as_str(), "denied");
    assert!(
        rows[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("busy") && e.contains("exec.max_concurrent_per_sandbox")),
        "{rows:?}"
    );
    // The slot taken for it was given back.
    assert_eq!(app.state.commands.running(&id), 0);
}
