//! The REST contract, request by request, against a SQLite store and a fake agent.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::config::Config;
use crate::store::Store;
use crate::testing::fake_agents::FakeAgents;

pub(crate) struct TestApp {
    pub router: Router,
    pub agents: Arc<FakeAgents>,
    pub store: Arc<dyn Store>,
    pub state: super::AppState,
    /// An admin token, sent by [`TestApp::send`] when a request has no
    /// `Authorization` header of its own.
    pub admin_token: String,
    _dir: tempfile::TempDir,
}

pub(crate) async fn app() -> TestApp {
    app_with(Config::default()).await
}

pub(crate) async fn app_with(config: Config) -> TestApp {
    let dir = tempfile::tempdir().expect("tmp");
    let store = crate::store::tests::sqlite(&dir).await;
    store
        .upsert_host("kvm-1", "kvm-1.lab:7443")
        .await
        .expect("host");
    let agents = Arc::new(FakeAgents::default());
    let state = crate::build_state(
        store.clone(),
        agents.clone(),
        &config,
        crate::testing::fake_agents::test_ca(),
    )
    .expect("state");
    state.hosts.beat_all().await.expect("first heartbeat");
    let (admin_token, _) = state
        .auth
        .create("test-admin", fluid_client::governance::Role::Admin, None)
        .await
        .expect("admin token");
    TestApp {
        router: super::router(state.clone()),
        agents,
        store,
        state,
        admin_token,
        _dir: dir,
    }
}

/// Adds the admin's `Authorization` header to a request that has none.
async fn add_admin_auth(
    axum::extract::State(v): axum::extract::State<axum::http::HeaderValue>,
    mut req: Request<Body>,
) -> Request<Body> {
    if !req.headers().contains_key(header::AUTHORIZATION) {
        req.headers_mut().insert(header::AUTHORIZATION, v);
    }
    req
}

impl TestApp {
    /// The router, with the admin token added to requests that carry none (for tests
    /// that serve it on a socket or call it directly).
    pub fn admin_router(&self) -> Router {
        let v: axum::http::HeaderValue = format!("Bearer {}", self.admin_token)
            .parse()
            .expect("header value");
        self.router
            .clone()
            .layer(axum::middleware::map_request_with_state(v, add_admin_auth))
    }

    /// A new token with `role` (scoped to `agent_id`, if given).
    pub async fn token(
        &self,
        name: &str,
        role: fluid_client::governance::Role,
        agent_id: Option<&str>,
    ) -> String {
        self.state
            .auth
            .create(name, role, agent_id)
            .await
            .expect("token")
            .0
    }

    pub async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        self.send_with(req, true).await
    }

    /// Sends `req`; with `as_admin`, adds the admin token when it carries none.
    pub async fn send_with(&self, mut req: Request<Body>, as_admin: bool) -> (StatusCode, Value) {
        if as_admin && !req.headers().contains_key(header::AUTHORIZATION) {
            let v = format!("Bearer {}", self.admin_token)
                .parse()
                .expect("header value");
            req.headers_mut().insert(header::AUTHORIZATION, v);
        }
        let resp = self.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body");
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
        };
        (status, v)
    }

    pub async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.send(Request::get(uri).body(Body::empty()).expect("req"))
            .await
    }

    pub async fn delete(&self, uri: &str) -> (StatusCode, Value) {
        self.send(Request::delete(uri).body(Body::empty()).expect("req"))
            .await
    }

    pub async fn post_raw(&self, uri: &str, body: impl Into<Body>) -> (StatusCode, Value) {
        self.send(
            Request::post(uri)
                .header(header::CONTENT_TYPE, "application/json")
                .body(body.into())
                .expect("req"),
        )
        .await
    }

    pub async fn post(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        self.post_raw(uri, body.to_string()).await
    }

    pub async fn post_empty(&self, uri: &str) -> (StatusCode, Value) {
        self.send(Request::post(uri).body(Body::empty()).expect("req"))
            .await
    }

    pub async fn create(&self, body: Value) -> Value {
        let (s, v) = self.post("/v1/sandboxes", body).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v
    }
}

/// Asserts an error answer: status, `{"error", "code"}` (and `details` if any).
pub(super) fn assert_error(got: (StatusCode, Value), want: StatusCode, mentions: &str) {
    let (status, v) = got;
    assert_eq!(status, want, "{v}");
    assert_eq!(v["code"], json!(want.as_u16()), "{v}");
    let msg = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error string: {v}"));
    let all = format!("{msg} {}", v["details"].as_str().unwrap_or(""));
    assert!(
        all.contains(mentions),
        "{all:?} does not mention {mentions:?}"
    );
    let obj = v.as_object().expect("object");
    assert!(
        obj.keys()
            .all(|k| ["error", "code", "details"].contains(&k.as_str())),
        "{v}"
    );
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    k.sort();
    k
}

/// A started sandbox's keys (`start_path` is absent while unknown).
const SANDBOX_KEYS: [&str; 16] = [
    "agent_id",
    "base_image",
    "cpu",
    "created_at",
    "host_name",
    "id",
    "ip_address",
    "job_id",
    "memory_mb",
    "network",
    "read_only",
    "sandbox_name",
    "start_path",
    "state",
    "ttl_seconds",
    "updated_at",
];

fn assert_sandbox_shape(s: &Value) {
    assert_eq!(keys(s), SANDBOX_KEYS, "{s}");
    let id = s["id"].as_str().expect("id");
    assert!(id.starts_with("SBX-") && id.len() == 14, "{id}");
    assert!(s["job_id"].as_str().expect("job").starts_with("JOB-"));
    for t in ["created_at", "updated_at"] {
        let ts = s[t].as_str().expect("timestamp");
        chrono::DateTime::parse_from_rfc3339(ts).unwrap_or_else(|e| panic!("{t} {ts}: {e}"));
    }
}

#[tokio::test]
async fn health_and_openapi() {
    let app = app().await;
    assert_eq!(
        app.get("/v1/health").await,
        (
            StatusCode::OK,
            json!({
                "status": "ok",
                "store": "ok",
                "hosts": {"online": 1, "offline": 0, "unknown": 0, "total": 1},
                "version": env!("CARGO_PKG_VERSION"),
            })
        )
    );
    let (s, doc) = app.get("/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    for p in [
        "/v1/health",
        "/v1/hosts",
        "/v1/vms",
        "/v1/sandboxes",
        "/v1/sandboxes/{id}",
        "/v1/sandboxes/{id}/start",
        "/v1/sandboxes/{id}/stop",
        "/v1/sandboxes/{id}/ip",
    ] {
        assert!(
            doc["paths"][p].is_object(),
            "{p} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"]["Sandbox"].is_object());
    assert_error(
        app.get("/v1/nope").await,
        StatusCode::NOT_FOUND,
        "no such route",
    );
    assert_error(
        app.delete("/v1/health").await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method",
    );
}

#[tokio::test]
async fn health_reports_a_failing_store() {
    let app = app().await;
    app.store.close().await;
    let (s, v) = app.get("/v1/health").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v["status"], "degraded");
    assert_eq!(v["code"], 503);
    assert!(v["error"].as_str().expect("error").contains("store"));
    assert!(v["store"].as_str().is_some_and(|s| s != "ok"), "{v}");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    // Old clients still read it as a health answer.
    let h: fluid_client::types::HealthResponse = serde_json::from_value(v).expect("parses");
    assert_eq!(h.status, "degraded");
}

#[tokio::test]
async fn sandbox_lifecycle_shapes() {
    let app = app().await;
    let created = app
        .create(json!({
            "source_vm_name": "debian-12",
            "agent_id": "agent-1",
            "vm_name": "web-1",
            "ttl_seconds": 3600,
            "wait_for_ip": true,
        }))
        .await;
    assert_eq!(keys(&created), ["ip_address", "sandbox"]);
    assert_eq!(created["ip_address"], "192.168.122.10");
    let sb = &created["sandbox"];
    assert_sandbox_shape(sb);
    assert_eq!(sb["agent_id"], "agent-1");
    assert_eq!(sb["sandbox_name"], "web-1");
    assert_eq!(sb["base_image"], "debian-12");
    assert_eq!(sb["network"], "default");
    assert_eq!(sb["ip_address"], "192.168.122.10");
    assert_eq!(sb["state"], "RUNNING");
    assert_eq!(sb["ttl_seconds"], 3600);
    assert_eq!(sb["host_name"], "kvm-1");
    assert_eq!(sb["cpu"], 1);
    assert_eq!(sb["memory_mb"], 512);
    assert_eq!(sb["start_path"], "boot");
    let id = sb["id"].as_str().expect("id").to_owned();

    // Defaults: generated vm name, no TTL, no IP wait.
    let other = app
        .create(json!({"source_vm_name": "debian-12", "agent_id": "agent-2", "cpu": 2, "memory_mb": 1024}))
        .await;
    assert_eq!(keys(&other), ["sandbox"]);
    let other_id = other["sandbox"]["id"].as_str().expect("id").to_owned();
    assert_eq!(
        other["sandbox"]["sandbox_name"],
        format!("sbx-{}", &other_id[4..])
    );
    assert_eq!(other["sandbox"]["ttl_seconds"], Value::Null);
    assert_eq!(other["sandbox"]["ip_address"], Value::Null);
    assert_eq!(
        (
            other["sandbox"]["cpu"].clone(),
            other["sandbox"]["memory_mb"].clone()
        ),
        (json!(2), json!(1024))
    );

    let (s, list) = app.get("/v1/sandboxes").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(keys(&list), ["sandboxes", "total"]);
    assert_eq!(list["total"], 2);
    list["sandboxes"]
        .as_array()
        .expect("array")
        .iter()
        .for_each(assert_sandbox_shape);
    let (_, list) = app
        .get("/v1/sandboxes?agent_id=agent-1&state=running&limit=5000")
        .await;
    assert_eq!(list["total"], 1);
    assert_eq!(list["sandboxes"][0]["id"], id.as_str());
    let (_, list) = app
        .get("/v1/sandboxes?vm_name=web-1&base_image=debian-12")
        .await;
    assert_eq!(list["total"], 1);
    let (_, list) = app.get("/v1/sandboxes?limit=1&offset=1").await;
    assert_eq!(
        (
            list["total"].clone(),
            list["sandboxes"].as_array().map(Vec::len)
        ),
        (json!(2), Some(1))
    );

    let (s, got) = app.get(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(keys(&got), ["sandbox"]);
    assert_eq!(got["sandbox"], *sb);
    let (_, got) = app
        .get(&format!("/v1/sandboxes/{id}?include_commands=true"))
        .await;
    assert_eq!(got["commands"], json!([]));

    let (s, ip) = app.get(&format!("/v1/sandboxes/{id}/ip")).await;
    assert_eq!(
        (s, ip),
        (StatusCode::OK, json!({"ip_address": "192.168.122.10"}))
    );

    let (s, stopped) = app.post_empty(&format!("/v1/sandboxes/{id}/stop")).await;
    assert_eq!(s, StatusCode::OK, "{stopped}");
    assert_eq!(keys(&stopped), ["sandbox"]);
    assert_sandbox_shape(&stopped["sandbox"]);
    assert_eq!(stopped["sandbox"]["state"], "STOPPED");
    assert_eq!(stopped["sandbox"]["ip_address"], Value::Null);

    let (s, started) = app
        .post(
            &format!("/v1/sandboxes/{id}/start"),
            json!({"wait_for_ip": true}),
        )
        .await;
    assert_eq!(
        (s, started),
        (StatusCode::OK, json!({"ip_address": "192.168.122.10"}))
    );
    // An empty body is allowed too.
    let (s, _) = app.post_empty(&format!("/v1/sandboxes/{id}/start")).await;
    assert_eq!(s, StatusCode::OK);
    let (_, got) = app.get(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(got["sandbox"]["state"], "RUNNING");

    let want = json!({"state": "DESTROYED", "base_image": "debian-12", "sandbox_name": "web-1", "ttl_seconds": 3600});
    assert_eq!(
        app.delete(&format!("/v1/sandboxes/{id}")).await,
        (StatusCode::OK, want.clone())
    );
    assert!(
        app.agents
            .on_host("kvm-1")
            .iter()
            .all(|s| s.id.as_str() != id)
    );
    // Twice: the same answer.
    assert_eq!(
        app.delete(&format!("/v1/sandboxes/{id}")).await,
        (StatusCode::OK, want)
    );
    let (_, got) = app.get(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(got["sandbox"]["state"], "DESTROYED");
    let (_, list) = app.get("/v1/sandboxes?state=DESTROYED").await;
    assert_eq!(list["total"], 1);

    // The state machine refuses operations on a destroyed sandbox.
    assert_error(
        app.post_empty(&format!("/v1/sandboxes/{id}/start")).await,
        StatusCode::CONFLICT,
        "destroyed",
    );
    assert_error(
        app.post_empty(&format!("/v1/sandboxes/{id}/stop")).await,
        StatusCode::CONFLICT,
        "destroyed",
    );
    assert_error(
        app.get(&format!("/v1/sandboxes/{id}/ip")).await,
        StatusCode::CONFLICT,
        "destroyed",
    );

    // Its name is free again.
    app.create(json!({"source_vm_name": "debian-12", "agent_id": "a", "vm_name": "web-1"}))
        .await;
}

#[tokio::test]
async fn bad_create_requests() {
    let app = app().await;
    let app = &app;
    let bad = |body: Value| async move { app.post("/v1/sandboxes", body).await };
    assert_error(
        bad(json!({"agent_id": "a"})).await,
        StatusCode::BAD_REQUEST,
        "source_vm_name",
    );
    assert_error(
        bad(json!({"source_vm_name": "debian-12"})).await,
        StatusCode::BAD_REQUEST,
        "agent_id",
    );
    assert_error(
        bad(json!({"source_vm_name": "debian-12", "agent_id": ""})).await,
        StatusCode::BAD_REQUEST,
        "agent_id",
    );
    assert_error(
        bad(json!({"source_vm_name": "", "agent_id": "a"})).await,
        StatusCode::BAD_REQUEST,
        "source_vm_name",
    );
    assert_error(
        bad(json!({"source_vm_name": "../etc", "agent_id": "a"})).await,
        StatusCode::BAD_REQUEST,
        "source_vm_name",
    );
    assert_error(
        bad(json!({"source_vm_name": "centos-7", "agent_id": "a"})).await,
        StatusCode::BAD_REQUEST,
        "no host has image \"centos-7\"",
    );
    assert_error(
        bad(json!({"source_vm_name": "debian-12", "agent_id": "a", "memory_mb": 0})).await,
        StatusCode::BAD_REQUEST,
        "memory_mb",
    );
    assert_error(
        bad(json!({"source_vm_name": "debian-12", "agent_id": "a", "memory_mb": 1_000_000_000u64}))
            .await,
        StatusCode::BAD_REQUEST,
        "memory_mb",
    );
    assert_error(
        bad(json!({"source_vm_name": "debian-12", "agent_id": "a", "memory_mb": -5})).await,
        StatusCode::BAD_REQUEST,
        "invalid value",
    );
    assert_error(
        bad(json!({"source_vm_name": "debian-12", "agent_id": "a", "cpu": 0})).await,
        StatusCode::BAD_REQUEST,
        "cpu",
    );
    assert_error(
        bad(json!({"source_vm_name": "debian-12", "agent_id": "a", "cpu": "two"})).await,
        StatusCode::BAD_REQUEST,
        "invalid type",
    );
    assert_error(
        bad(json!({"source_vm_name": "debian-12", "agent_id": "a", "ttl_seconds": 0})).await,
        StatusCode::BAD_REQUEST,
        "ttl_seconds",
    );
    assert_error(
        bad(json!({"source_vm_name": "debian-12", "agent_id": "a", "vm_name": "a b"})).await,
        StatusCode::BAD_REQUEST,
        "vm_name",
    );
    assert_error(bad(json!({"source_vm_name": "debian-12", "agent_id": "a", "auto_start": false, "wait_for_ip": true})).await, StatusCode::BAD_REQUEST, "wait_for_ip");
    assert_error(
        bad(json!({"source_vm_name": "debian-12", "agent_id": "a", "colour": "red"})).await,
        StatusCode::BAD_REQUEST,
        "unknown field `colour`",
    );
    assert_error(bad(json!([1, 2])).await, StatusCode::BAD_REQUEST, "invalid");
    assert_error(
        app.post_raw("/v1/sandboxes", "{\"source_vm_name\": ").await,
        StatusCode::BAD_REQUEST,
        "invalid request body",
    );
    assert_error(
        app.post_raw("/v1/sandboxes", "").await,
        StatusCode::BAD_REQUEST,
        "invalid request body",
    );
    // No content type.
    let req = Request::post("/v1/sandboxes")
        .body(Body::from(
            json!({"source_vm_name": "debian-12", "agent_id": "a"}).to_string(),
        ))
        .expect("req");
    assert_error(
        app.send(req).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "application/json",
    );
    // Over 1 MiB.
    let huge = format!(
        "{{\"source_vm_name\": \"{}\", \"agent_id\": \"a\"}}",
        "x".repeat(2 * 1024 * 1024)
    );
    assert_error(
        app.post_raw("/v1/sandboxes", huge).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "larger than",
    );
    // Nothing was created by any of these.
    assert_eq!(app.get("/v1/sandboxes").await.1["total"], 0);

    // Duplicate vm_name.
    app.create(json!({"source_vm_name": "debian-12", "agent_id": "a", "vm_name": "web-1"}))
        .await;
    assert_error(
        bad(json!({"source_vm_name": "debian-12", "agent_id": "b", "vm_name": "web-1"})).await,
        StatusCode::CONFLICT,
        "web-1",
    );
    // Valid but more than any host has.
    assert_error(
        bad(json!({"source_vm_name": "debian-12", "agent_id": "a", "memory_mb": 65536})).await,
        StatusCode::CONFLICT,
        "kvm-1: 7680 MiB memory free < 65536 requested",
    );
}

#[tokio::test]
async fn bad_ids_and_queries() {
    let app = app().await;
    assert_error(
        app.get("/v1/sandboxes/SBX-doesnotexist").await,
        StatusCode::NOT_FOUND,
        "SBX-doesnotexist",
    );
    assert_error(
        app.delete("/v1/sandboxes/SBX-doesnotexist").await,
        StatusCode::NOT_FOUND,
        "not found",
    );
    assert_error(
        app.post_empty("/v1/sandboxes/SBX-doesnotexist/stop").await,
        StatusCode::NOT_FOUND,
        "not found",
    );
    assert_error(
        app.post_empty("/v1/sandboxes/SBX-doesnotexist/start").await,
        StatusCode::NOT_FOUND,
        "not found",
    );
    assert_error(
        app.get("/v1/sandboxes/SBX-doesnotexist/ip").await,
        StatusCode::NOT_FOUND,
        "not found",
    );
    for bad in ["nope", "SBX-UPPER1234", "SBX-1", "sbx-abcdefgh"] {
        assert_error(
            app.get(&format!("/v1/sandboxes/{bad}")).await,
            StatusCode::BAD_REQUEST,
            "sandbox id",
        );
    }
    assert_error(
        app.get("/v1/sandboxes?state=BOGUS").await,
        StatusCode::BAD_REQUEST,
        "state",
    );
    assert_error(
        app.get("/v1/sandboxes?limit=abc").await,
        StatusCode::BAD_REQUEST,
        "invalid query",
    );
    assert_error(
        app.get("/v1/sandboxes?limit=0").await,
        StatusCode::BAD_REQUEST,
        "limit",
    );
    assert_error(
        app.get("/v1/sandboxes?offset=-1").await,
        StatusCode::BAD_REQUEST,
        "invalid query",
    );
    assert_error(
        app.get("/v1/sandboxes/SBX-doesnotexist?include_commands=maybe")
            .await,
        StatusCode::BAD_REQUEST,
        "invalid query",
    );
    assert_error(
        app.post(
            "/v1/sandboxes/SBX-doesnotexist/start",
            json!({"wait": true}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "unknown field",
    );
}

#[tokio::test]
async fn agent_failures_are_502_or_503_and_leave_an_error_row() {
    let app = app().await;
    app.agents.fail_create.store(true, Ordering::SeqCst);
    let got = app
        .post(
            "/v1/sandboxes",
            json!({"source_vm_name": "debian-12", "agent_id": "a", "vm_name": "doomed"}),
        )
        .await;
    assert_error(got, StatusCode::BAD_GATEWAY, "disk full");
    assert_eq!(
        app.agents.destroys.load(Ordering::SeqCst),
        1,
        "best-effort cleanup"
    );
    let (_, list) = app.get("/v1/sandboxes?vm_name=doomed").await;
    assert_eq!(list["sandboxes"][0]["state"], "ERROR");

    app.agents.fail_create.store(false, Ordering::SeqCst);
    let ok = app
        .create(json!({"source_vm_name": "debian-12", "agent_id": "a"}))
        .await;
    let id = ok["sandbox"]["id"].as_str().expect("id").to_owned();
    app.agents.down.lock().expect("lock").insert("kvm-1".into());
    assert_error(
        app.post_empty(&format!("/v1/sandboxes/{id}/stop")).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "unreachable",
    );
    let (_, got) = app.get(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(
        got["sandbox"]["state"], "RUNNING",
        "a failed stop changes nothing"
    );
}

#[tokio::test]
async fn hosts_and_vms() {
    let app = app().await;
    app.create(
        json!({"source_vm_name": "debian-12", "agent_id": "a", "memory_mb": 1024, "cpu": 2}),
    )
    .await;
    let (s, v) = app.get("/v1/hosts").await;
    assert_eq!(s, StatusCode::OK);
    let h = &v["hosts"][0];
    for k in [
        "name",
        "address",
        "state",
        "cpus_total",
        "cpus_free",
        "memory_mb_total",
        "memory_mb_free",
        "sandboxes",
        "last_seen",
    ] {
        assert!(h.get(k).is_some(), "host lacks {k}: {h}");
    }
    assert_eq!(h["name"], "kvm-1");
    assert_eq!(h["state"], "ONLINE");
    assert_eq!(
        (h["cpus_total"].clone(), h["cpus_free"].clone()),
        (json!(8), json!(30))
    );
    assert_eq!(
        (h["memory_mb_total"].clone(), h["memory_mb_free"].clone()),
        (json!(8192), json!(7168))
    );
    assert_eq!(h["sandboxes"], 1);
    assert_eq!(h["images"], json!(["debian-12"]));
    assert_eq!(h["agent_version"], "0.1.0-fake");

    let (s, v) = app
        .post(
            "/v1/hosts",
            json!({"name": "kvm-2", "address": "10.0.0.7:7443"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["host"]["state"], "UNKNOWN");
    assert_eq!(v["host"]["last_seen"], Value::Null);
    assert_error(
        app.post(
            "/v1/hosts",
            json!({"name": "kvm-2", "address": "10.0.0.8:7443"}),
        )
        .await,
        StatusCode::CONFLICT,
        "kvm-2",
    );
    assert_error(
        app.post("/v1/hosts", json!({"name": "kvm 3", "address": "h:1"}))
            .await,
        StatusCode::BAD_REQUEST,
        "name",
    );
    assert_error(
        app.post("/v1/hosts", json!({"name": "kvm-3", "address": "nowhere"}))
            .await,
        StatusCode::BAD_REQUEST,
        "address",
    );
    assert_error(
        app.post("/v1/hosts", json!({"name": "kvm-3"})).await,
        StatusCode::BAD_REQUEST,
        "address",
    );

    app.agents.down.lock().expect("lock").insert("kvm-2".into());
    let (s, v) = app.get("/v1/vms").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v["vms"],
        json!([{
            "name": "debian-12", "uuid": "", "state": "available", "persistent": false,
            "disk_path": "/var/lib/fluid/images/debian-12.qcow2",
            "host_name": "kvm-1", "host_address": "kvm-1.lab:7443",
        }])
    );
    assert_eq!(v["host_errors"][0]["host_name"], "kvm-2");
    assert!(
        v["host_errors"][0]["error"]
            .as_str()
            .expect("error")
            .contains("unreachable")
    );
}

#[tokio::test]
async fn a_host_goes_offline_after_missed_beats_and_is_not_scheduled() {
    let app = app().await;
    let state = crate::build_state(
        app.store.clone(),
        app.agents.clone(),
        &Config::default(),
        crate::testing::fake_agents::test_ca(),
    )
    .expect("state");
    app.agents.down.lock().expect("lock").insert("kvm-1".into());
    for _ in 0..3 {
        state.hosts.beat_all().await.expect("beat");
    }
    let (_, v) = app.get("/v1/hosts").await;
    assert_eq!(v["hosts"][0]["state"], "OFFLINE");
    assert!(
        v["hosts"][0]["last_error"]
            .as_str()
            .expect("err")
            .contains("refused")
    );
    assert_error(
        app.post(
            "/v1/sandboxes",
            json!({"source_vm_name": "debian-12", "agent_id": "a"}),
        )
        .await,
        StatusCode::CONFLICT,
        "kvm-1: offline",
    );
}
