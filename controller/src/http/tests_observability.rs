//! `/metrics` (strictly parsed, counters moving after a create and an exec through the
//! REST API, gauges from the store, the `[metrics] public` switch) and `/v1/health`
//! with agents' reachability, against a SQLite store and the fake agent.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use fluid_client::governance::{ApprovalKind, Role};
use fluid_telemetry::exposition::{Exposition, parse};
use serde_json::json;
use tower::ServiceExt as _;

use super::tests::{TestApp, app, app_with};
use crate::config::{Config, MetricsConfig};
use crate::governance::approvals::{NewRequest, Requester};

/// `GET /metrics` with `token` (none: no Authorization header): status, content type
/// and body.
async fn get_metrics(app: &TestApp, token: Option<&str>) -> (StatusCode, String, String) {
    let mut req = Request::get("/metrics");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let resp = app
        .router
        .clone()
        .oneshot(req.body(Body::empty()).expect("req"))
        .await
        .expect("infallible");
    let status = resp.status();
    let ctype = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    (
        status,
        ctype,
        String::from_utf8(bytes.to_vec()).expect("utf-8"),
    )
}

pub(super) async fn scrape(app: &TestApp) -> Exposition {
    let (s, ctype, text) = get_metrics(app, Some(&app.admin_token)).await;
    assert_eq!(s, StatusCode::OK, "{text}");
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[tokio::test]
async fn counters_move_after_a_create_and_an_exec() {
    let app = app().await;
    let before = scrape(&app).await;
    let created = app
        .create(json!({"source_vm_name": "debian-12", "agent_id": "agent-7"}))
        .await;
    let id = created["sandbox"]["id"].as_str().expect("id").to_owned();
    let (s, v) = app
        .post(
            &format!("/v1/sandboxes/{id}/run"),
            json!({"command": "echo hi"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["command"]["exit_code"], 0);
    let after = scrape(&app).await;

    let moved = |sample: &str, labels: &[(&str, &str)]| {
        after.sum(sample, labels) - before.sum(sample, labels)
    };
    let create_ok = [("outcome", "ok")];
    assert_eq!(
        moved("fluid_sandbox_create_duration_seconds_count", &create_ok),
        1.0
    );
    assert_eq!(
        moved(
            "fluid_execs_total",
            &[("kind", "command"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        moved("fluid_exec_duration_seconds_count", &[("kind", "command")]),
        1.0
    );
    // REST requests by route template, never the raw path (no sandbox id in labels).
    assert_eq!(
        moved(
            "fluid_http_requests_total",
            &[
                ("method", "POST"),
                ("route", "/v1/sandboxes"),
                ("status", "201")
            ]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "fluid_http_requests_total",
            &[("route", "/v1/sandboxes/{id}/run"), ("status", "200")]
        ),
        1.0
    );
    assert!(
        after
            .samples("fluid_http_requests_total")
            .all(|s| !s.labels["route"].contains("SBX-")),
        "a raw path leaked into a label"
    );
    // The scrape itself is counted (from the second one on).
    assert!(after.sum("fluid_http_requests_total", &[("route", "/metrics")]) >= 1.0);

    // Gauges from the store.
    assert_eq!(after.sum("fluid_sandboxes", &[("state", "RUNNING")]), 1.0);
    assert_eq!(after.sum("fluid_sandboxes", &[("state", "ERROR")]), 0.0);
    assert_eq!(after.sum("fluid_hosts", &[("state", "ONLINE")]), 1.0);
    assert!(after.sum("fluid_host_cpus", &[("host", "kvm-1")]) > 0.0);
    let total = after.sum("fluid_host_memory_bytes", &[("host", "kvm-1")]);
    let free = after.sum("fluid_host_memory_free_bytes", &[("host", "kvm-1")]);
    assert_eq!(total - free, 512.0 * 1024.0 * 1024.0, "512 MiB reserved");
    assert_eq!(
        after.sum(
            "fluid_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
}

#[tokio::test]
async fn refused_commands_and_pending_approvals_are_counted() {
    let mut config = Config::default();
    config.policy.command_deny = vec!["^shutdown".into()];
    let app = app_with(config).await;
    let created = app
        .create(json!({"source_vm_name": "debian-12", "agent_id": "agent-7"}))
        .await;
    let id = created["sandbox"]["id"].as_str().expect("id").to_owned();
    let (s, _) = app
        .post(
            &format!("/v1/sandboxes/{id}/run"),
            json!({"command": "shutdown now"}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    app.state
        .approvals
        .open(
            NewRequest {
                kind: ApprovalKind::Custom,
                requester: Requester {
                    name: "bot".into(),
                    agent_id: None,
                },
                sandbox_id: None,
                summary: "may I?".into(),
                details: json!({}),
                timeout: Duration::from_secs(60),
            },
            "agent",
        )
        .await
        .expect("approval");
    let m = scrape(&app).await;
    assert_eq!(
        m.sum(
            "fluid_execs_total",
            &[("kind", "command"), ("outcome", "denied")]
        ),
        1.0
    );
    assert_eq!(m.sum("fluid_approvals_pending", &[("kind", "custom")]), 1.0);
    assert_eq!(m.sum("fluid_approvals_pending", &[("kind", "egress")]), 0.0);
    assert_eq!(
        m.sum(
            "fluid_http_requests_total",
            &[("route", "/v1/sandboxes/{id}/run"), ("status", "403")]
        ),
        1.0
    );
}

#[tokio::test]
async fn metrics_need_a_fleet_reader_by_default() {
    let app = app().await;
    let (s, _, _) = get_metrics(&app, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let agent = app.token("bot", Role::Agent, Some("agent-7")).await;
    let (s, _, body) = get_metrics(&app, Some(&agent)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{body}");
    let reader = app.token("grafana", Role::Readonly, None).await;
    let (s, _, body) = get_metrics(&app, Some(&reader)).await;
    assert_eq!(s, StatusCode::OK);
    parse(&body).expect("valid exposition");
}

#[tokio::test]
async fn public_metrics_need_no_token_when_configured() {
    let app = app_with(Config {
        metrics: MetricsConfig { public: true },
        ..Config::default()
    })
    .await;
    let (s, _, body) = get_metrics(&app, None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    parse(&body).expect("valid exposition");
}

#[tokio::test]
async fn health_reports_offline_agents_without_failing() {
    let app = app().await;
    app.agents.down.lock().expect("lock").insert("kvm-1".into());
    for _ in 0..3 {
        app.state.hosts.beat_all().await.expect("beat");
    }
    let (s, v) = app.get("/v1/health").await;
    assert_eq!(s, StatusCode::OK, "an offline agent is reported, not fatal");
    assert_eq!(v["status"], "ok");
    assert_eq!(v["store"], "ok");
    assert_eq!(
        v["hosts"],
        json!({"online": 0, "offline": 1, "unknown": 0, "total": 1})
    );
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let m = scrape(&app).await;
    assert_eq!(m.sum("fluid_hosts", &[("state", "OFFLINE")]), 1.0);
}

// With public metrics (a token-gated scrape needs the store to check its token: a down
// store answers 503 there, like every authenticated call).
#[tokio::test]
async fn a_failing_store_still_answers_the_counters() {
    let app = app_with(Config {
        metrics: MetricsConfig { public: true },
        ..Config::default()
    })
    .await;
    let (s, _, _) = get_metrics(&app, None).await;
    assert_eq!(s, StatusCode::OK);
    app.store.close().await;
    let (s, _, text) = get_metrics(&app, None).await;
    assert_eq!(s, StatusCode::OK, "{text}");
    let m = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(m.sum("fluid_metrics_scrape_errors_total", &[]) >= 1.0);
}
