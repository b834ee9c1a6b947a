//! `[quotas]` through the REST API (SQLite store, fake agents): past a quota the answer
//! is 429 with `Retry-After` and a message naming the key, nothing is created, and the
//! quota belongs to its owner or token alone.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use fluid_client::governance::Role;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::tests::{TestApp, app_with};
use crate::config::Config;
use crate::governance::quotas::QuotasConfig;

async fn app(quotas: QuotasConfig) -> TestApp {
    app_with(Config {
        quotas,
        ..Config::default()
    })
    .await
}

/// POST `uri` with `token`: the status, `Retry-After` and the body.
async fn post(
    app: &TestApp,
    token: &str,
    uri: &str,
    body: Value,
) -> (StatusCode, Option<u32>, Value) {
    let req = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::from(body.to_string()))
        .expect("req");
    let resp = app.router.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    (
        status,
        retry_after,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn create(agent: &str) -> Value {
    json!({"source_vm_name": "debian-12", "agent_id": agent})
}

#[tokio::test]
async fn a_token_past_its_creates_per_second_gets_429_and_another_token_does_not() {
    let app = app(QuotasConfig {
        creates_per_second_per_token: 1,
        ..QuotasConfig::default()
    })
    .await;
    let bot = app.token("bot", Role::Agent, Some("bot")).await;
    let other = app.token("other", Role::Agent, Some("other")).await;
    // A burst of two, then the third within the second is refused.
    for _ in 0..2 {
        let (s, _, v) = post(&app, &bot, "/v1/sandboxes", create("bot")).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let (s, retry, v) = post(&app, &bot, "/v1/sandboxes", create("bot")).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert!(retry.is_some_and(|r| r >= 1), "Retry-After: {retry:?}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("quotas.creates_per_second_per_token")),
        "{v}"
    );
    let (s, _, v) = post(&app, &other, "/v1/sandboxes", create("other")).await;
    assert_eq!(
        s,
        StatusCode::CREATED,
        "another token has its own rate: {v}"
    );
    let (s, v) = app.get("/v1/sandboxes?agent_id=bot").await;
    assert_eq!((s, v["total"].as_u64()), (StatusCode::OK, Some(2)), "{v}");
}

#[tokio::test]
async fn an_agent_past_its_sandboxes_gets_429_until_one_is_destroyed() {
    let app = app(QuotasConfig {
        sandboxes_per_agent: 2,
        ..QuotasConfig::default()
    })
    .await;
    let bot = app.token("bot", Role::Agent, Some("bot")).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (s, _, v) = post(&app, &bot, "/v1/sandboxes", create("bot")).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        ids.push(v["sandbox"]["id"].as_str().expect("id").to_owned());
    }
    let (s, retry, v) = post(&app, &bot, "/v1/sandboxes", create("bot")).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(retry, Some(crate::scheduler::QUOTA_RETRY_AFTER_SECS));
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("quotas.sandboxes_per_agent = 2")),
        "{v}"
    );
    // The admin creating for another owner is not counted against "bot".
    let (s, _, v) = post(&app, &app.admin_token, "/v1/sandboxes", create("ops")).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = app.delete(&format!("/v1/sandboxes/{}", ids[0])).await;
    assert!(s.is_success(), "{v}");
    let (s, _, v) = post(&app, &bot, "/v1/sandboxes", create("bot")).await;
    assert_eq!(
        s,
        StatusCode::CREATED,
        "a destroyed sandbox frees a place: {v}"
    );
}

#[tokio::test]
async fn a_sandbox_past_its_snapshots_gets_429() {
    let app = app(QuotasConfig {
        snapshots_per_sandbox: 1,
        ..QuotasConfig::default()
    })
    .await;
    let v = app.create(create("agent-7")).await;
    let id = v["sandbox"]["id"].as_str().expect("id");
    let uri = format!("/v1/sandboxes/{id}/snapshots");
    let (s, _, v) = post(&app, &app.admin_token, &uri, json!({"name": "a"})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, retry, v) = post(&app, &app.admin_token, &uri, json!({"name": "b"})).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert!(retry.is_some());
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("quotas.snapshots_per_sandbox = 1")),
        "{v}"
    );
}
