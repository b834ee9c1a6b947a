//! Approvals through the REST API: the blocking ask, decisions, expiry, the
//! over-commit gate, the signed webhook, read-only mode and the audit trail.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use fluid_client::audit_chain::ChainVerifier;
use fluid_client::governance::{AuditEvent, Role};
use serde_json::{Value, json};

use super::tests::{TestApp, app, app_with};
use crate::config::Config;

async fn as_token(
    app: &TestApp,
    token: &str,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .expect("request");
    app.send_with(req, false).await
}

async fn pending_ids(app: &TestApp) -> Vec<String> {
    let (_, v) = app.get("/v1/approvals?status=pending").await;
    v["approvals"]
        .as_array()
        .expect("approvals")
        .iter()
        .map(|a| a["id"].as_str().expect("id").to_owned())
        .collect()
}

async fn wait_pending(app: &TestApp, n: usize) -> Vec<String> {
    for _ in 0..200 {
        let ids = pending_ids(app).await;
        if ids.len() >= n {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no {n} pending approvals");
}

#[tokio::test]
async fn a_blocking_ask_returns_as_soon_as_a_human_approves() {
    let app = Arc::new(app().await);
    let agent = app.token("bot", Role::Agent, Some("agent-7")).await;
    let op = app.token("alice", Role::Operator, None).await;
    let asker = {
        let app = app.clone();
        tokio::spawn(async move {
            as_token(
                &app,
                &agent,
                Method::POST,
                "/v1/human/ask",
                Some(json!({"prompt": "install nginx?", "context": {"why": "web"}, "urgency": "high", "timeout_secs": 60})),
            )
            .await
        })
    };
    let id = wait_pending(&app, 1).await.remove(0);
    let (s, v) = app.get(&format!("/v1/approvals/{id}")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["approval"]["kind"], "custom");
    assert_eq!(v["approval"]["requested_by"], "bot");
    assert_eq!(v["approval"]["agent_id"], "agent-7");
    assert_eq!(v["approval"]["details"]["context"]["why"], "web");
    let decided = Instant::now();
    let (s, v) = as_token(
        &app,
        &op,
        Method::POST,
        &format!("/v1/approvals/{id}/approve"),
        Some(json!({"comment": "go ahead"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["approval"]["status"], "approved");
    let (s, answer) = asker.await.expect("asker");
    let latency = decided.elapsed();
    assert_eq!(s, StatusCode::OK, "{answer}");
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    assert_eq!(
        answer,
        json!({"request_id": id, "approved": true, "comment": "go ahead", "approved_by": "alice", "status": "approved"})
    );
    // A second decision is a conflict that names the first.
    let (s, v) = app
        .post(&format!("/v1/approvals/{id}/reject"), json!({}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"]
            .as_str()
            .expect("error")
            .contains("already approved (by alice)")
    );
}

#[tokio::test]
async fn an_ask_whose_time_runs_out_is_refused_with_the_reason() {
    let app = app().await;
    let started = Instant::now();
    let (s, v) = app
        .post(
            "/v1/human/ask",
            json!({"prompt": "anyone?", "timeout_secs": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(v["approved"], false);
    assert_eq!(v["status"], "expired");
    assert_eq!(v["reason"], "expired: no decision within 1 s");
    let id = v["request_id"].as_str().expect("id");
    let (s, v) = app
        .post(&format!("/v1/approvals/{id}/approve"), json!({}))
        .await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "an expired request cannot be approved: {v}"
    );
    // A rejection answers approved=false with who and why.
    let app = Arc::new(app);
    let asker = {
        let app = app.clone();
        tokio::spawn(async move {
            app.post(
                "/api/v1/human/ask",
                json!({"prompt": "rm -rf?", "timeout_secs": 60}),
            )
            .await
        })
    };
    let id = wait_pending(&app, 1).await.remove(0);
    app.post(
        &format!("/v1/approvals/{id}/reject"),
        json!({"comment": "no way"}),
    )
    .await;
    let (_, v) = asker.await.expect("asker");
    assert_eq!(v["approved"], false);
    assert_eq!(v["reason"], "rejected by test-admin: no way");
}

#[tokio::test]
async fn bad_asks_and_decisions_are_4xx() {
    let app = app().await;
    for (body, mentions) in [
        (json!({"prompt": ""}), "prompt"),
        (json!({"prompt": "x", "timeout_secs": 0}), "timeout_secs"),
        (
            json!({"prompt": "x", "timeout_secs": 99999}),
            "timeout_secs",
        ),
        (json!({"prompt": "x", "sandbox_id": "junk"}), "id"),
        (json!({"prompt": "x", "bogus": 1}), "unknown field"),
    ] {
        let (s, v) = app.post("/v1/human/ask", body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(v.to_string().contains(mentions), "{body}: {v}");
    }
    let (s, _) = app
        .post(
            "/v1/human/ask",
            json!({"prompt": "x", "sandbox_id": "SBX-nosuch0000"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app
        .post("/v1/approvals/APR-nosuch0000/approve", json!({}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app.post("/v1/approvals/nonsense/approve", json!({})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = app.get("/v1/approvals?status=maybe").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

fn gated() -> Config {
    let mut c = Config::default();
    c.approvals.overcommit_approval = true;
    c
}

async fn fill_host(app: &TestApp) {
    // The fake host has 8192 MiB.
    app.create(json!({"source_vm_name": "debian-12", "agent_id": "agent-7", "memory_mb": 8192}))
        .await;
}

#[tokio::test]
async fn an_overcommit_waits_reserves_nothing_and_runs_once_approved() {
    let app = Arc::new(app_with(gated()).await);
    fill_host(&app).await;
    let creator = {
        let app = app.clone();
        tokio::spawn(async move {
            app.post(
                "/v1/sandboxes",
                json!({"source_vm_name": "debian-12", "agent_id": "agent-7", "vm_name": "extra"}),
            )
            .await
        })
    };
    let id = wait_pending(&app, 1).await.remove(0);
    let (_, v) = app.get(&format!("/v1/approvals/{id}")).await;
    let a = &v["approval"];
    assert_eq!(a["kind"], "overcommit");
    assert_eq!(
        a["details"]["requested"],
        json!({"cpu": 1, "memory_mb": 512, "source_vm_name": "debian-12"})
    );
    assert_eq!(a["details"]["target_host"], "kvm-1");
    assert_eq!(a["details"]["hosts"][0]["memory_mb_free"], 0);
    assert!(
        a["details"]["hosts"][0]["reason"]
            .as_str()
            .expect("reason")
            .contains("memory")
    );
    // Nothing is reserved while it waits.
    let (_, v) = app.get("/v1/sandboxes?vm_name=extra").await;
    assert_eq!(v["total"], 0, "{v}");
    let usage = app.store.host_usage().await.expect("usage");
    assert_eq!(usage["kvm-1"].memory_mb, 8192);

    app.post(&format!("/v1/approvals/{id}/approve"), json!({}))
        .await;
    let (s, v) = creator.await.expect("creator");
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["sandbox"]["state"], "RUNNING");
    assert_eq!(v["sandbox"]["id"], a["sandbox_id"]);
    let usage = app.store.host_usage().await.expect("usage");
    assert_eq!(
        usage["kvm-1"].memory_mb,
        8192 + 512,
        "over-committed by approval"
    );
}

#[tokio::test]
async fn a_rejected_overcommit_is_409_and_wait_false_answers_202() {
    let app = Arc::new(app_with(gated()).await);
    fill_host(&app).await;
    let (s, v) = app
        .post(
            "/v1/sandboxes?wait=false",
            json!({"source_vm_name": "debian-12", "agent_id": "agent-7"}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["status"], "pending");
    let (apr, sbx) = (
        v["request_id"].as_str().expect("id").to_owned(),
        v["sandbox_id"].as_str().expect("sbx").to_owned(),
    );
    app.post(&format!("/v1/approvals/{apr}/approve"), json!({}))
        .await;
    // The create completes without anyone waiting on it.
    let mut state = Value::Null;
    for _ in 0..200 {
        let (_, v) = app.get(&format!("/v1/sandboxes/{sbx}")).await;
        state = v["sandbox"]["state"].clone();
        if state == "RUNNING" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(state, "RUNNING");

    let creator = {
        let app = app.clone();
        tokio::spawn(async move {
            app.post(
                "/v1/sandboxes",
                json!({"source_vm_name": "debian-12", "agent_id": "agent-7"}),
            )
            .await
        })
    };
    let id = wait_pending(&app, 1).await.remove(0);
    app.post(
        &format!("/v1/approvals/{id}/reject"),
        json!({"comment": "host is busy"}),
    )
    .await;
    let (s, v) = creator.await.expect("creator");
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"]
            .as_str()
            .expect("error")
            .contains("rejected by test-admin: host is busy"),
        "{v}"
    );
    let (_, v) = app.get("/v1/sandboxes").await;
    assert_eq!(v["total"], 2, "the rejected sandbox was never created: {v}");
}

#[tokio::test]
async fn without_the_gate_a_full_host_is_still_409() {
    let app = app().await;
    fill_host(&app).await;
    let (s, v) = app
        .post(
            "/v1/sandboxes",
            json!({"source_vm_name": "debian-12", "agent_id": "agent-7"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(pending_ids(&app).await.is_empty());
}

#[derive(Debug, Clone)]
struct Delivery {
    headers: HeaderMap,
    body: axum::body::Bytes,
}

#[tokio::test]
async fn the_webhook_gets_each_request_signed() {
    let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let sink = got.clone();
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock().expect("lock").push(Delivery { headers, body });
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, receiver).await });
    let mut config = Config::default();
    config.approvals.webhook_url = Some(format!("http://{addr}/hook"));
    config.approvals.webhook_secret = Some("hook-secret".into());
    let app = app_with(config).await;
    let (_, v) = app
        .post(
            "/v1/human/ask",
            json!({"prompt": "deploy?", "timeout_secs": 1}),
        )
        .await;
    let id = v["request_id"].as_str().expect("id").to_owned();
    let mut deliveries = Vec::new();
    for _ in 0..300 {
        deliveries = got.lock().expect("lock").clone();
        if deliveries.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(deliveries.len(), 2, "requested and decided (expired)");
    for (d, event) in deliveries
        .iter()
        .zip(["approval.requested", "approval.decided"])
    {
        let h = |k: &str| {
            d.headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .expect(k)
                .to_owned()
        };
        let ts: i64 = h("x-fluid-timestamp").parse().expect("timestamp");
        assert!((chrono::Utc::now().timestamp() - ts).abs() < 60);
        assert!(crate::governance::webhook::verify(
            b"hook-secret",
            ts,
            &d.body,
            &h("x-fluid-signature")
        ));
        assert!(!crate::governance::webhook::verify(
            b"wrong",
            ts,
            &d.body,
            &h("x-fluid-signature")
        ));
        assert_eq!(h("x-fluid-event"), event);
        let v: Value = serde_json::from_slice(&d.body).expect("json");
        assert_eq!(
            (v["event"].as_str(), v["approval"]["id"].as_str()),
            (Some(event), Some(id.as_str()))
        );
    }
}

const REFUSED_IN_READ_ONLY: [(&str, &str); 8] = [
    ("POST", "/v1/sandboxes/{id}/run"),
    ("POST", "/v1/sandboxes/{id}/command"),
    ("POST", "/v1/sandboxes/{id}/files/write"),
    ("POST", "/v1/sandboxes/{id}/files/edit"),
    ("POST", "/v1/sandboxes/{id}/start"),
    ("POST", "/v1/sandboxes/{id}/stop"),
    ("DELETE", "/v1/sandboxes/{id}"),
    ("POST", "/v1/sandboxes/{id}/sshkey"),
];

fn body_for(path: &str) -> Option<Value> {
    if path.ends_with("/run") || path.ends_with("/command") {
        Some(json!({"command": "true"}))
    } else if path.ends_with("/write") {
        Some(json!({"path": "/tmp/f", "content": "x"}))
    } else if path.ends_with("/edit") {
        Some(json!({"path": "/tmp/f", "old_str": "x", "new_str": "y"}))
    } else if path.ends_with("/sshkey") {
        Some(
            json!({"public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk1mbvvJ0mCq2r4gIuBVYXdGQTl3q0A6cF5S1mQKX9j t", "username": "root"}),
        )
    } else {
        None
    }
}

async fn read_only_operations_work(app: &TestApp, token: &str, id: &str) {
    for (m, p, body) in [
        (Method::GET, "/v1/sandboxes".to_owned(), None),
        (Method::GET, format!("/v1/sandboxes/{id}"), None),
        (Method::GET, format!("/v1/sandboxes/{id}/commands"), None),
        (
            Method::POST,
            format!("/v1/sandboxes/{id}/files/read"),
            Some(json!({"path": "/etc/hostname"})),
        ),
    ] {
        let (s, v) = as_token(app, token, m.clone(), &p, body).await;
        assert!(
            s.is_success() || s == StatusCode::NOT_FOUND && p.ends_with("/read"),
            "{m} {p}: {s} {v}"
        );
    }
}

#[tokio::test]
async fn read_only_tokens_and_sandboxes_refuse_every_change() {
    let app = app().await;
    app.agents.put_file("/etc/hostname", b"sbx\n");
    let ro = app.token("viewer", Role::Readonly, None).await;
    let agent = app.token("bot", Role::Agent, Some("agent-7")).await;
    let v = app
        .create(json!({"source_vm_name": "debian-12", "agent_id": "agent-7"}))
        .await;
    let id = v["sandbox"]["id"].as_str().expect("id").to_owned();

    // A readonly token: every refused operation is 403, reads work.
    let (s, _) = as_token(
        &app,
        &ro,
        Method::POST,
        "/v1/sandboxes",
        Some(json!({"source_vm_name": "debian-12", "agent_id": "x"})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    for (m, p) in REFUSED_IN_READ_ONLY {
        let p = p.replace("{id}", &id);
        let (s, v) = as_token(&app, &ro, m.parse().expect("method"), &p, body_for(&p)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{m} {p}: {v}");
        assert!(
            v["error"].as_str().expect("error").contains("needs role"),
            "{v}"
        );
    }
    read_only_operations_work(&app, &ro, &id).await;

    // A sandbox an operator flags read-only: the agent (and even an admin) is refused.
    let (s, v) = as_token(
        &app,
        &agent,
        Method::PUT,
        &format!("/v1/sandboxes/{id}/mode"),
        Some(json!({"mode": "read-only"})),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "an agent cannot unlock itself: {v}"
    );
    let (s, v) = app
        .send(
            Request::put(format!("/v1/sandboxes/{id}/mode"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(json!({"mode": "read-only"}).to_string()))
                .expect("req"),
        )
        .await;
    assert_eq!(
        (s, v["mode"].clone()),
        (StatusCode::OK, json!("read-only")),
        "{v}"
    );
    for token in [agent.as_str(), app.admin_token.as_str()] {
        for (m, p) in REFUSED_IN_READ_ONLY {
            let p = p.replace("{id}", &id);
            let (s, v) = as_token(&app, token, m.parse().expect("method"), &p, body_for(&p)).await;
            assert_eq!(s, StatusCode::FORBIDDEN, "{m} {p}: {v}");
            assert!(
                v["error"].as_str().expect("error").contains("is read-only"),
                "{v}"
            );
        }
        read_only_operations_work(&app, token, &id).await;
    }
    let (_, v) = app.get(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(
        (
            v["sandbox"]["read_only"].clone(),
            v["sandbox"]["state"].clone()
        ),
        (json!(true), json!("RUNNING"))
    );
    let (s, _) = app
        .send(
            Request::put(format!("/v1/sandboxes/{id}/mode"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(json!({"mode": "read-write"}).to_string()))
                .expect("req"),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = as_token(
        &app,
        &agent,
        Method::POST,
        &format!("/v1/sandboxes/{id}/run"),
        Some(json!({"command": "true"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "writable again: {v}");
}

async fn all_events(app: &TestApp) -> Vec<AuditEvent> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let (s, v) = app
            .get(&format!("/v1/audit?after_seq={after}&limit=7"))
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let page: fluid_client::governance::ListAuditResponse =
            serde_json::from_value(v).expect("page");
        out.extend(page.events);
        match page.next_after_seq {
            Some(n) => after = n,
            None => return out,
        }
    }
}

#[tokio::test]
async fn the_audit_trail_records_calls_states_decisions_and_commands_in_a_chain() {
    let app = app().await;
    let agent = app.token("bot", Role::Agent, Some("agent-7")).await;
    let v = app
        .create(json!({"source_vm_name": "debian-12", "agent_id": "agent-7"}))
        .await;
    let id = v["sandbox"]["id"].as_str().expect("id").to_owned();
    as_token(
        &app,
        &agent,
        Method::POST,
        &format!("/v1/sandboxes/{id}/run"),
        Some(json!({"command": "echo hi"})),
    )
    .await;
    let (s, _) = as_token(
        &app,
        &agent,
        Method::POST,
        "/v1/approvals/APR-nosuch0000/approve",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    app.post("/v1/human/ask", json!({"prompt": "ok?", "timeout_secs": 1}))
        .await;
    app.delete(&format!("/v1/sandboxes/{id}")).await;

    let events = all_events(&app).await;
    let mut v = ChainVerifier::default();
    for e in &events {
        v.push(e).expect("intact chain");
    }
    let has =
        |kind: &str, f: &dyn Fn(&AuditEvent) -> bool| events.iter().any(|e| e.kind == kind && f(e));
    assert!(has("api", &|e| e.action == "POST /v1/sandboxes"
        && e.actor == "test-admin"
        && e.outcome == "201"));
    assert!(has("api", &|e| e.action == "POST /v1/sandboxes/{id}/run"
        && e.actor == "bot"
        && e.role == "agent"
        && e.sandbox_id.as_deref() == Some(id.as_str())));
    assert!(
        has("api", &|e| e.action == "POST /v1/approvals/{id}/approve"
            && e.outcome == "403"),
        "denials are recorded"
    );
    assert!(has("state", &|e| e.action == "RUNNING"
        && e.sandbox_id.as_deref() == Some(id.as_str())));
    assert!(has("state", &|e| e.action == "DESTROYED"));
    assert!(has("command", &|e| e.action == "echo hi"
        && e.outcome == "exit 0"));
    assert!(has("approval", &|e| e.action == "requested"));
    assert!(has("approval", &|e| e.action == "expired"
        && e.outcome == "expired"));

    // Filters; and a scoped token reads only its own sandbox's trail.
    let (_, v) = app
        .get(&format!("/v1/audit?sandbox_id={id}&kind=state"))
        .await;
    assert!(
        v["events"]
            .as_array()
            .expect("events")
            .iter()
            .all(|e| e["kind"] == "state" && e["sandbox_id"] == json!(id))
    );
    let (s, _) = as_token(&app, &agent, Method::GET, "/v1/audit", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, v) = as_token(
        &app,
        &agent,
        Method::GET,
        &format!("/v1/audit?sandbox_id={id}"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = app.get("/v1/audit?since=yesterday").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn tokens_over_rest_and_revocation_take_effect_at_once() {
    let app = app().await;
    let (s, v) = app
        .post(
            "/v1/tokens",
            json!({"name": "ci", "role": "agent", "agent_id": "ci-1"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let secret = v["token"].as_str().expect("secret").to_owned();
    let (s, who) = as_token(&app, &secret, Method::GET, "/v1/whoami", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (
            who["name"].as_str(),
            who["role"].as_str(),
            who["agent_id"].as_str()
        ),
        (Some("ci"), Some("agent"), Some("ci-1"))
    );
    let (s, v) = app.get("/v1/tokens").await;
    assert_eq!(s, StatusCode::OK);
    assert!(!v.to_string().contains(&secret), "secrets are never listed");
    for (body, why) in [
        (json!({"name": "ci", "role": "admin"}), StatusCode::CONFLICT),
        (
            json!({"name": "x", "role": "agent"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "bad name", "role": "admin"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "y", "role": "root"}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (s, v) = app.post("/v1/tokens", body.clone()).await;
        assert_eq!(s, why, "{body}: {v}");
    }
    let (s, _) = app.delete("/v1/tokens/ci").await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = as_token(&app, &secret, Method::GET, "/v1/whoami", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(v["error"].as_str().expect("error").contains("revoked"));
    let (s, _) = app
        .send_with(
            Request::get("/v1/health").body(Body::empty()).expect("req"),
            false,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "health is open");
    let (s, _) = app
        .send_with(
            Request::get("/v1/sandboxes")
                .header(header::AUTHORIZATION, "Basic eDp5")
                .body(Body::empty())
                .expect("req"),
            false,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}
