//! Who may call what. The routes come from the router itself (its OpenAPI document and
//! [`crate::http::UNDOCUMENTED`]); [`matrix`] states, for each of them, the exact status
//! every role gets, against real objects one agent made through the API, so that
//! another agent meets the ownership checks (403), not a missing object (404). A route
//! without a row, or a row without a route, fails the tests with the list. [`grpc`]
//! does the same for the public gRPC API.

mod grpc;
mod matrix;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, StatusCode, header};
use fluid_client::governance::Role;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tower::ServiceExt as _;

use super::UNDOCUMENTED;
use super::tests::TestApp;
use super::tests_ansible::{AnsibleApp, ansible_app};
use crate::config::Config;
use crate::testing::fake_agents::AGENT_SSH_KEY;
use matrix::{Row, Via, rows};

/// The agent that makes every object.
const OWNER: &str = "agent-7";
/// The agent that acts on them.
const OTHER: &str = "agent-9";
/// The matrix's columns.
const COLUMNS: [&str; 6] = [
    "admin",
    "operator",
    OWNER,
    OTHER,
    "readonly",
    "readonly scoped to agent-9",
];
/// Methods a route may have.
const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

/// A method and a path template.
type Route = (String, String);

/// Every route the router serves: each operation of the OpenAPI document it serves,
/// and the undocumented ones.
async fn served_routes(app: &TestApp) -> BTreeSet<Route> {
    let (s, doc) = app.get(super::openapi::PATH).await;
    assert_eq!(s, StatusCode::OK, "{doc}");
    let mut out = BTreeSet::new();
    const OPERATIONS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in item.as_object().expect("path item").keys() {
            if OPERATIONS.contains(&m.as_str()) {
                out.insert((m.to_ascii_uppercase(), path.clone()));
            }
        }
    }
    for (m, p) in UNDOCUMENTED {
        assert!(
            out.insert((m.to_string(), p.to_owned())),
            "{m} {p} is in UNDOCUMENTED and in the OpenAPI document"
        );
    }
    out
}

/// Whether `uri` requests `route`: the same segments, a parameter anywhere `route` has
/// one.
fn requests(uri: &str, route: &str) -> bool {
    let path = uri.split('?').next().unwrap_or_default();
    let (a, b): (Vec<&str>, Vec<&str>) = (path.split('/').collect(), route.split('/').collect());
    a.len() == b.len()
        && a.iter().zip(&b).all(|(u, r)| {
            let param = |s: &str| s.starts_with('{') && s.ends_with('}');
            if param(r) { param(u) } else { u == r }
        })
}

/// What is wrong between the served routes and the matrix: routes without a row, rows
/// without a route, rows twice, rows whose `uri` is another route.
fn coverage(served: &BTreeSet<Route>, rows: &[Row]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for r in rows {
        let key = (r.method.to_string(), r.route.to_owned());
        if !seen.insert(key.clone()) {
            problems.push(format!("two rows for {} {}", key.0, key.1));
        }
        if !served.contains(&key) {
            problems.push(format!(
                "a row for {} {}, which the router does not serve",
                key.0, key.1
            ));
        }
        if !requests(r.uri, r.route) {
            problems.push(format!(
                "the row for {} {} requests {}",
                key.0, key.1, r.uri
            ));
        }
    }
    for (m, p) in served.difference(&seen) {
        problems.push(format!("no row for {m} {p}"));
    }
    problems
}

#[tokio::test]
async fn every_route_has_a_row_and_every_row_a_route() {
    let app = super::tests::app().await;
    let served = served_routes(&app).await;
    let rows = rows();
    let problems = coverage(&served, &rows);
    assert!(
        problems.is_empty(),
        "the role matrix (http/tests_authz/matrix.rs) and the router disagree:\n  {}",
        problems.join("\n  ")
    );
    assert_eq!(rows.len(), served.len());
}

#[tokio::test]
async fn the_router_serves_no_method_its_routes_do_not_name() {
    let app = super::tests::app().await;
    let served = served_routes(&app).await;
    let paths: BTreeSet<&String> = served.iter().map(|(_, p)| p).collect();
    let mut wrong = Vec::new();
    for path in paths {
        let uri = path
            .split('/')
            .map(|s| if s.starts_with('{') { "x" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        for m in METHODS {
            if served.contains(&(m.to_string(), path.clone())) {
                continue;
            }
            let req = Request::builder()
                .method(m.clone())
                .uri(&uri)
                .body(Body::empty())
                .expect("request");
            let (s, _) = app.send(req).await;
            if s != StatusCode::METHOD_NOT_ALLOWED {
                wrong.push(format!("{m} {path}: {s}"));
            }
        }
    }
    assert!(wrong.is_empty(), "not 405:\n  {}", wrong.join("\n  "));
}

/// The app, a token per column, and the router on a real port (for WebSockets).
struct Matrix {
    app: AnsibleApp,
    tokens: [String; 6],
    ws_base: String,
    n: AtomicUsize,
}

impl Matrix {
    async fn new() -> Self {
        // The matrix makes objects as fast as it can: no create rate to trip on.
        let app = ansible_app(Config {
            quotas: crate::governance::quotas::QuotasConfig {
                creates_per_second_per_token: 100_000,
                ..Default::default()
            },
            ..Config::default()
        })
        .await;
        app.agents.put_file("/etc/hostname", b"sandbox\n");
        let tokens = [
            app.admin_token.clone(),
            app.token("op", Role::Operator, None).await,
            app.token("a7", Role::Agent, Some(OWNER)).await,
            app.token("a9", Role::Agent, Some(OTHER)).await,
            app.token("ro", Role::Readonly, None).await,
            app.token("ro9", Role::Readonly, Some(OTHER)).await,
        ];
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let ws_base = format!("ws://{}", listener.local_addr().expect("addr"));
        let router = app.router.clone();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            app,
            tokens,
            ws_base,
            n: AtomicUsize::new(0),
        }
    }

    /// Sends a request with `token` (none: no `Authorization`); the status and the body
    /// (unread for events that were allowed: they never end).
    async fn send(
        &self,
        method: &Method,
        uri: &str,
        body: Option<String>,
        token: Option<&str>,
        via: Via,
    ) -> (u16, String) {
        if via == Via::WebSocket && token.is_some() {
            return self.upgrade(uri, token).await;
        }
        let mut req = Request::builder().method(method.clone()).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b)),
            None => req.body(Body::empty()),
        }
        .expect("request");
        let resp = self
            .app
            .router
            .clone()
            .oneshot(req)
            .await
            .expect("infallible");
        let status = resp.status();
        if via == Via::Events && status.is_success() {
            return (status.as_u16(), String::new());
        }
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body");
        (
            status.as_u16(),
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    /// A WebSocket upgrade on the real port: 101, or the refusal.
    async fn upgrade(&self, uri: &str, token: Option<&str>) -> (u16, String) {
        let mut req = format!("{}{uri}", self.ws_base)
            .into_client_request()
            .expect("ws request");
        if let Some(t) = token {
            let v = HeaderValue::from_str(&format!("Bearer {t}")).expect("header");
            req.headers_mut().insert(header::AUTHORIZATION, v);
        }
        match tokio_tungstenite::connect_async(req).await {
            // Dropped: the session or the job's stream ends with the connection.
            Ok((_ws, resp)) => (resp.status().as_u16(), String::new()),
            Err(tungstenite::Error::Http(resp)) => {
                let body = resp.body().as_deref().unwrap_or_default();
                (
                    resp.status().as_u16(),
                    String::from_utf8_lossy(body).into_owned(),
                )
            }
            Err(e) => panic!("GET {uri}: {e}"),
        }
    }

    /// A call that makes an object: it must answer `want`.
    async fn make(&self, token: usize, method: Method, uri: &str, body: Value, want: u16) -> Value {
        let (s, v) = self
            .send(
                &method,
                uri,
                Some(body.to_string()),
                Some(&self.tokens[token]),
                Via::Http,
            )
            .await;
        assert_eq!(s, want, "making an object: {method} {uri}: {v}");
        serde_json::from_str(&v).expect("JSON")
    }

    /// Makes the objects whose placeholders `text` holds (and those they need), as
    /// agent-7 (a token: as admin); what to put in place of each placeholder.
    async fn objects(&self, text: &str) -> Vec<(&'static str, String)> {
        const ADMIN: usize = 0;
        const AGENT: usize = 2;
        let n = self.n.fetch_add(1, Ordering::Relaxed);
        let has = |p: &str| text.contains(p);
        let generated = has("{gen}");
        let snap = has("{snap}") || has("{diff}") || generated;
        let sbx = has("{sbx}") || snap || has("{job}") || has("{apr}") || has("{crt}");
        let pb = has("{pb}") || has("{task}") || has("{job}");
        let id = |v: &Value, k: &str| v[k].as_str().expect(k).to_owned();
        let mut out = vec![("{n}", n.to_string())];
        let mut sandbox = String::new();
        let mut playbook = String::new();
        if sbx {
            let body =
                json!({"source_vm_name": "debian-12", "agent_id": OWNER, "wait_for_ip": true});
            let v = self
                .make(AGENT, Method::POST, "/v1/sandboxes", body, 201)
                .await;
            sandbox = id(&v["sandbox"], "id");
            out.push(("{sbx}", sandbox.clone()));
        }
        if snap {
            let uri = format!("/v1/sandboxes/{sandbox}/snapshots");
            self.make(AGENT, Method::POST, &uri, json!({"name": "a"}), 201)
                .await;
            out.push(("{snap}", "a".into()));
        }
        if has("{diff}") {
            let uri = format!("/v1/sandboxes/{sandbox}/diff");
            let body = json!({"from_snapshot": "a"});
            let v = self.make(AGENT, Method::POST, &uri, body, 200).await;
            out.push(("{diff}", id(&v["diff"], "id")));
        }
        if generated {
            let uri = format!("/v1/sandboxes/{sandbox}/generate/ansible");
            let body = json!({"name": format!("gen-{n}"), "from_snapshot": "a"});
            let v = self.make(AGENT, Method::POST, &uri, body, 201).await;
            out.push(("{gen}", id(&v["playbook"], "name")));
        }
        if pb {
            playbook = format!("pb-{n}");
            let body = json!({"name": playbook});
            self.make(AGENT, Method::POST, "/v1/ansible/playbooks", body, 201)
                .await;
            let uri = format!("/v1/ansible/playbooks/{playbook}/tasks");
            let body = json!({"name": "first", "module": "ping"});
            let v = self.make(AGENT, Method::POST, &uri, body, 201).await;
            out.push(("{pb}", playbook.clone()));
            out.push(("{task}", id(&v["task"], "id")));
        }
        if has("{job}") {
            let body = json!({"vm_name": sandbox, "playbook": playbook});
            let v = self
                .make(AGENT, Method::POST, "/v1/ansible/jobs", body, 201)
                .await;
            out.push(("{job}", id(&v, "job_id")));
        }
        if has("{apr}") {
            let uri = format!("/v1/sandboxes/{sandbox}/network/requests?wait=false");
            let body = json!({"destination": "10.200.0.0/16", "reason": "a fixture"});
            let v = self.make(AGENT, Method::POST, &uri, body, 202).await;
            out.push(("{apr}", id(&v, "request_id")));
        }
        if has("{crt}") {
            let body = json!({"sandbox_id": sandbox, "user_id": "u", "public_key": AGENT_SSH_KEY});
            let v = self
                .make(AGENT, Method::POST, "/v1/access/request", body, 200)
                .await;
            out.push(("{crt}", id(&v, "certificate_id")));
        }
        if has("{tok}") {
            let body = json!({"name": format!("fixture-{n}"), "role": "readonly"});
            let v = self
                .make(ADMIN, Method::POST, "/v1/tokens", body, 201)
                .await;
            out.push(("{tok}", id(&v["info"], "id")));
        }
        out
    }

    /// Destroys every sandbox still alive, so the host keeps room.
    async fn clean(&self) {
        let all = self
            .app
            .store
            .sandboxes_on_host("kvm-1")
            .await
            .expect("store");
        for sb in all {
            if sb.state != fluid_client::types::SandboxState::Destroyed {
                let id = crate::error::parse_id(&sb.id).expect("id");
                self.app
                    .state
                    .sandboxes
                    .destroy_unchecked(&id)
                    .await
                    .expect("destroy");
            }
        }
    }
}

/// `text` with the placeholders replaced; none may be left.
fn fill(text: &str, with: &[(&str, String)]) -> String {
    let out = with
        .iter()
        .fold(text.to_owned(), |t, (k, v)| t.replace(k, v));
    let left = regex::Regex::new(r"\{[a-z_]+\}").expect("regex");
    assert!(
        !left.is_match(&out),
        "a placeholder without an object: {out}"
    );
    out
}

#[tokio::test]
async fn every_role_gets_the_exact_status_on_every_route() {
    let m = Matrix::new().await;
    let served = served_routes(&m.app).await;
    let rows = rows();
    let problems = coverage(&served, &rows);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let mut wrong = Vec::new();
    let mut checked = 0;
    for r in &rows {
        let body = r.body.as_ref().map(Value::to_string);
        for (col, who) in COLUMNS.iter().enumerate() {
            let text = format!("{} {}", r.uri, body.as_deref().unwrap_or_default());
            let with = m.objects(&text).await;
            let uri = fill(r.uri, &with);
            let sent = body.as_deref().map(|b| fill(b, &with));
            let token = Some(m.tokens[col].as_str());
            let (got, answer) = m.send(&r.method, &uri, sent, token, r.via).await;
            let want = r.want[col];
            if got != want {
                wrong.push(format!(
                    "{} {} as {who}: want {want}, got {got}: {answer}",
                    r.method, r.route
                ));
            } else if got == 403
                && !["needs role", "another agent", "scoped to agent"]
                    .iter()
                    .any(|why| answer.contains(why))
            {
                wrong.push(format!(
                    "{} {} as {who}: the 403 does not say why: {answer}",
                    r.method, r.route
                ));
            }
            checked += 1;
            m.clean().await;
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {checked} calls:\n  {}",
        wrong.len(),
        wrong.join("\n  ")
    );
    assert_eq!(checked, served.len() * COLUMNS.len());
}

#[tokio::test]
async fn callers_without_a_valid_token_get_401_everywhere_but_health() {
    let m = Matrix::new().await;
    let revoked = m.app.token("gone", Role::Admin, None).await;
    m.app.state.auth.revoke("gone").await.expect("revoke");
    let callers = [
        ("no token", None),
        ("a bad token", Some("fluid_not-a-token")),
        ("a revoked token", Some(revoked.as_str())),
    ];
    let mut wrong = Vec::new();
    for r in rows() {
        // Refused before any handler: no objects needed.
        let uri = r.uri.replace('{', "x").replace('}', "");
        let want = if super::auth::OPEN_PATHS.contains(&r.route) {
            200
        } else {
            401
        };
        for (who, token) in callers {
            let body = r.body.as_ref().map(Value::to_string);
            let (got, answer) = m.send(&r.method, &uri, body, token, Via::Http).await;
            if got != want {
                wrong.push(format!(
                    "{} {} with {who}: want {want}, got {got}: {answer}",
                    r.method, r.route
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Agent-9 finds none of agent-7's objects in its lists, may not ask for them, and its
/// decision does not count.
#[tokio::test]
async fn another_agent_sees_nothing_of_an_agents_objects() {
    let m = Matrix::new().await;
    let with = m.objects("{sbx} {pb} {job} {apr}").await;
    let apr = fill("{apr}", &with);
    let other = Some(m.tokens[3].as_str());
    for list in [
        "/v1/sandboxes",
        "/v1/ansible/playbooks",
        "/v1/ansible/jobs",
        "/v1/approvals?status=all",
    ] {
        let (s, v) = m.send(&Method::GET, list, None, other, Via::Http).await;
        let v: Value = serde_json::from_str(&v).expect("JSON");
        assert_eq!((s, &v["total"]), (200, &json!(0)), "{list}: {v}");
        let (s, v) = m
            .send(&Method::GET, list, None, Some(&m.tokens[2]), Via::Http)
            .await;
        let v: Value = serde_json::from_str(&v).expect("JSON");
        assert_eq!((s, &v["total"]), (200, &json!(1)), "{list} as {OWNER}: {v}");
    }
    let (s, v) = m
        .send(
            &Method::GET,
            "/v1/sandboxes?agent_id=agent-7",
            None,
            other,
            Via::Http,
        )
        .await;
    assert_eq!(s, 403, "{v}");
    let uri = format!("/v1/approvals/{apr}/approve");
    let (s, _) = m.send(&Method::POST, &uri, None, other, Via::Http).await;
    assert_eq!(s, 403);
    let rec = m
        .app
        .state
        .approvals
        .get(&crate::support::ids::ApprovalId::parse("id", &apr).expect("id"))
        .await
        .expect("approval");
    assert_eq!(
        rec.status.as_str(),
        "pending",
        "agent-9's decision did not count"
    );
}
