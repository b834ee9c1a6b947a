//! Roles × endpoint classes, REST and gRPC: every allow and every deny, stated as an
//! explicit table (not derived from the code under test).

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use fluid_client::governance::Role;
use fluid_proto::api;
use fluid_proto::api::approvals_client::ApprovalsClient;
use fluid_proto::api::sandboxes_client::SandboxesClient;
use futures::StreamExt as _;
use serde_json::{Value, json};
use tonic::Code;
use tower::ServiceExt as _;

use super::tests::{TestApp, app};
use crate::grpc::tests::{Bearer, serve_api};

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Admin,
    Operator,
    /// An agent token scoped to `agent-7`, which owns the sandbox under test.
    AgentOwn,
    /// An agent token scoped to `agent-9`.
    AgentOther,
    Readonly,
    NoToken,
    BadToken,
    Revoked,
}

const WHO: [Who; 8] = [
    Who::Admin,
    Who::Operator,
    Who::AgentOwn,
    Who::AgentOther,
    Who::Readonly,
    Who::NoToken,
    Who::BadToken,
    Who::Revoked,
];

/// Endpoint classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Open,
    /// Reads not about one sandbox (lists are filtered to a scoped caller's own).
    Read,
    /// Reads of the sandbox under test.
    ReadSandbox,
    ReadFleet,
    Create,
    Control,
    Work,
    Ask,
    /// Ask about the sandbox under test (`Ask` and `Read` on it): an egress request.
    AskSandbox,
    Decide,
    ManageHosts,
    SetMode,
    RevokeAccess,
    ManageTokens,
    ManageNetwork,
    /// Write playbooks, verify them, start Ansible jobs.
    Playbooks,
    /// Generate a playbook from the sandbox under test (`Playbooks` and `Read` on it).
    PlaybooksSandbox,
}

/// The expected table: `true` = allowed. Unauthenticated callers are refused
/// everything but `Open` with 401; the table covers the four roles.
fn allowed(class: Class, who: Who) -> bool {
    use Class::*;
    use Who::*;
    //                   admin operator agent-own agent-other readonly
    let row: [bool; 5] = match class {
        Open => [true, true, true, true, true],
        Read => [true, true, true, true, true],
        ReadSandbox => [true, true, true, false, true],
        ReadFleet => [true, true, false, false, true],
        Create => [true, false, true, false, false],
        Control => [true, true, true, false, false],
        Work => [true, false, true, false, false],
        Ask => [true, true, true, true, false],
        AskSandbox => [true, true, true, false, false],
        Decide => [true, true, false, false, false],
        ManageHosts => [true, true, false, false, false],
        SetMode => [true, true, false, false, false],
        RevokeAccess => [true, true, false, false, false],
        ManageTokens => [true, false, false, false, false],
        ManageNetwork => [true, true, false, false, false],
        Playbooks => [true, true, true, true, false],
        PlaybooksSandbox => [true, true, true, false, false],
    };
    match who {
        Admin => row[0],
        Operator => row[1],
        AgentOwn => row[2],
        AgentOther => row[3],
        Readonly => row[4],
        NoToken | BadToken | Revoked => class == Open,
    }
}

struct Callers {
    tokens: Vec<(Who, Option<String>)>,
}

impl Callers {
    async fn new(app: &TestApp) -> Self {
        let mut tokens = Vec::new();
        for who in WHO {
            let t = match who {
                Who::Admin => Some(app.admin_token.clone()),
                Who::Operator => Some(app.token("op", Role::Operator, None).await),
                Who::AgentOwn => Some(app.token("a7", Role::Agent, Some("agent-7")).await),
                Who::AgentOther => Some(app.token("a9", Role::Agent, Some("agent-9")).await),
                Who::Readonly => Some(app.token("ro", Role::Readonly, None).await),
                Who::NoToken => None,
                Who::BadToken => Some("fluid_not-a-token".into()),
                Who::Revoked => {
                    let t = app.token("gone", Role::Admin, None).await;
                    app.state.auth.revoke("gone").await.expect("revoke");
                    Some(t)
                }
            };
            tokens.push((who, t));
        }
        Self { tokens }
    }
}

/// One REST call of a class. `{id}` is the sandbox under test, `{apr}` a fresh
/// pending approval, `{n}` a unique suffix.
struct Call {
    class: Class,
    method: Method,
    path: &'static str,
    body: Option<Value>,
    /// The answer never ends (SSE): judge the status only.
    streaming: bool,
}

fn call(class: Class, method: Method, path: &'static str, body: Option<Value>) -> Call {
    Call {
        class,
        method,
        path,
        body,
        streaming: false,
    }
}

fn calls() -> Vec<Call> {
    use Class::*;
    let get = Method::GET;
    let post = Method::POST;
    vec![
        call(Open, get.clone(), "/v1/health", None),
        // Needs ReadFleet unless `[metrics] public = true`; its body is not JSON.
        Call {
            streaming: true,
            ..call(ReadFleet, get.clone(), "/metrics", None)
        },
        call(Read, get.clone(), "/v1/sandboxes", None),
        call(Read, get.clone(), "/v1/hosts", None),
        call(Read, get.clone(), "/v1/vms", None),
        call(Read, get.clone(), "/v1/access/ca-pubkey", None),
        call(Read, get.clone(), "/v1/approvals", None),
        call(Read, get.clone(), "/v1/whoami", None),
        call(Read, get.clone(), "/v1/roles", None),
        call(Read, get.clone(), "/openapi.json", None),
        call(ReadSandbox, get.clone(), "/v1/sandboxes/{id}", None),
        call(ReadSandbox, get.clone(), "/v1/sandboxes/{id}/ip", None),
        call(
            ReadSandbox,
            get.clone(),
            "/v1/sandboxes/{id}/commands",
            None,
        ),
        call(ReadSandbox, get.clone(), "/v1/sandboxes/{id}/mode", None),
        call(ReadSandbox, get.clone(), "/v1/sandboxes/{id}/network", None),
        call(
            ReadSandbox,
            post.clone(),
            "/v1/sandboxes/{id}/files/read",
            Some(json!({"path": "/etc/hostname"})),
        ),
        Call {
            streaming: true,
            ..call(ReadSandbox, get.clone(), "/v1/sandboxes/{id}/stream", None)
        },
        call(ReadFleet, get.clone(), "/v1/audit", None),
        call(ReadFleet, get.clone(), "/v1/access/certificates", None),
        call(
            ReadFleet,
            get.clone(),
            "/v1/access/certificate/CRT-nosuch0000",
            None,
        ),
        call(
            Create,
            post.clone(),
            "/v1/sandboxes",
            Some(json!({"source_vm_name": "debian-12", "agent_id": "agent-7"})),
        ),
        call(
            Work,
            post.clone(),
            "/v1/sandboxes/{id}/run",
            Some(json!({"command": "true"})),
        ),
        call(
            Work,
            post.clone(),
            "/v1/sandboxes/{id}/command",
            Some(json!({"command": "true"})),
        ),
        call(
            Work,
            post.clone(),
            "/v1/sandboxes/{id}/files/write",
            Some(json!({"path": "/tmp/x", "content": "x"})),
        ),
        call(
            Work,
            post.clone(),
            "/v1/sandboxes/{id}/files/edit",
            Some(json!({"path": "/tmp/x", "old_str": "x", "new_str": "y"})),
        ),
        call(
            Work,
            post.clone(),
            "/v1/sandboxes/{id}/sshkey",
            Some(
                json!({"public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk1mbvvJ0mCq2r4gIuBVYXdGQTl3q0A6cF5S1mQKX9j t", "username": "root"}),
            ),
        ),
        call(
            Work,
            post.clone(),
            "/v1/access/request",
            Some(
                json!({"sandbox_id": "{id}", "user_id": "u", "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk1mbvvJ0mCq2r4gIuBVYXdGQTl3q0A6cF5S1mQKX9j t", "ttl_minutes": 5}),
            ),
        ),
        call(Work, get.clone(), "/v1/sandboxes/{id}/attach", None),
        call(
            Ask,
            post.clone(),
            "/v1/human/ask",
            Some(json!({"prompt": "ok?", "timeout_secs": 1})),
        ),
        call(
            Ask,
            post.clone(),
            "/api/v1/human/ask",
            Some(json!({"prompt": "ok?", "timeout_secs": 1})),
        ),
        call(
            AskSandbox,
            post.clone(),
            "/v1/sandboxes/{id}/network/requests?wait=false",
            Some(json!({"destination": "10.{n}.0.0/16", "reason": "authz"})),
        ),
        call(Decide, post.clone(), "/v1/approvals/{apr}/approve", None),
        call(
            Decide,
            post.clone(),
            "/v1/approvals/{apr}/reject",
            Some(json!({"comment": "no"})),
        ),
        call(
            ManageHosts,
            post.clone(),
            "/v1/hosts",
            Some(json!({"name": "kvm-{n}", "address": "10.9.9.9:7443"})),
        ),
        call(
            SetMode,
            Method::PUT,
            "/v1/sandboxes/{id}/mode",
            Some(json!({"mode": "read-write"})),
        ),
        call(
            RevokeAccess,
            Method::DELETE,
            "/v1/access/certificate/CRT-nosuch0000",
            None,
        ),
        call(
            ManageNetwork,
            Method::PUT,
            "/v1/sandboxes/{id}/network",
            Some(json!({"allow": [{"domain": "deb.debian.org", "protocol": "tcp", "port": 443}]})),
        ),
        // Snapshots: taking, restoring and deleting change the sandbox (Work); a fork
        // creates one (CreateSandbox, and Read on the source); the rest read.
        call(
            Work,
            post.clone(),
            "/v1/sandboxes/{id}/snapshots",
            Some(json!({"name": "s-{n}"})),
        ),
        call(
            Work,
            post.clone(),
            "/v1/sandboxes/{id}/snapshot",
            Some(json!({"name": "t-{n}"})),
        ),
        call(
            Work,
            post.clone(),
            "/v1/sandboxes/{id}/snapshots/nosuch/restore",
            None,
        ),
        call(
            Work,
            Method::DELETE,
            "/v1/sandboxes/{id}/snapshots/nosuch",
            None,
        ),
        call(
            Create,
            post.clone(),
            "/v1/sandboxes/{id}/fork",
            Some(json!({"snapshot": "nosuch"})),
        ),
        call(
            ReadSandbox,
            get.clone(),
            "/v1/sandboxes/{id}/snapshots",
            None,
        ),
        call(
            ReadSandbox,
            post.clone(),
            "/v1/sandboxes/{id}/diff",
            Some(json!({"from_snapshot": "nosuch"})),
        ),
        call(ReadSandbox, get.clone(), "/v1/sandboxes/{id}/diffs", None),
        call(
            ReadSandbox,
            get.clone(),
            "/v1/sandboxes/{id}/diffs/DIF-nosuch0000",
            None,
        ),
        // Ansible: reading is Read; writing, verifying and jobs are Playbooks; a job on
        // the sandbox also needs Work on it, a generate Read on it. (Bodies are refused
        // after the permission checks, so nothing is written or run.)
        call(Read, get.clone(), "/v1/ansible/playbooks", None),
        call(Read, get.clone(), "/v1/ansible/playbooks/nosuch", None),
        call(
            Read,
            get.clone(),
            "/v1/ansible/playbooks/nosuch/export",
            None,
        ),
        call(Read, get.clone(), "/v1/ansible/jobs", None),
        call(Read, get.clone(), "/v1/ansible/jobs/JOB-nosuch0000", None),
        call(
            Playbooks,
            post.clone(),
            "/v1/ansible/playbooks",
            Some(json!({"name": "a/b"})),
        ),
        call(
            Playbooks,
            Method::DELETE,
            "/v1/ansible/playbooks/nosuch",
            None,
        ),
        call(
            Playbooks,
            post.clone(),
            "/v1/ansible/playbooks/nosuch/tasks",
            Some(json!({"name": "x", "module": "copy"})),
        ),
        call(
            Playbooks,
            Method::PATCH,
            "/v1/ansible/playbooks/nosuch/tasks/reorder",
            Some(json!({"task_ids": []})),
        ),
        call(
            Playbooks,
            post.clone(),
            "/v1/ansible/playbooks/nosuch/verify",
            None,
        ),
        call(
            Playbooks,
            post.clone(),
            "/v1/ansible/jobs",
            Some(json!({"vm_name": "nosuch", "playbook": "nosuch"})),
        ),
        call(
            Work,
            post.clone(),
            "/v1/ansible/jobs",
            Some(json!({"vm_name": "{id}", "playbook": "nosuch"})),
        ),
        call(
            PlaybooksSandbox,
            post.clone(),
            "/v1/sandboxes/{id}/generate/ansible",
            Some(json!({"name": "a/b"})),
        ),
        call(ManageTokens, get.clone(), "/v1/tokens", None),
        call(
            ManageTokens,
            post.clone(),
            "/v1/tokens",
            Some(json!({"name": "t-{n}", "role": "readonly"})),
        ),
        call(ManageTokens, Method::DELETE, "/v1/tokens/nosuch", None),
        // Control last: destroy ends the sandbox under test.
        call(Control, post.clone(), "/v1/sandboxes/{id}/stop", None),
        call(Control, post.clone(), "/v1/sandboxes/{id}/start", None),
        call(Control, Method::DELETE, "/v1/sandboxes/{id}", None),
    ]
}

async fn sandbox(app: &TestApp) -> String {
    let v = app
        .create(json!({"source_vm_name": "debian-12", "agent_id": "agent-7"}))
        .await;
    v["sandbox"]["id"].as_str().expect("id").to_owned()
}

async fn pending_approval(app: &TestApp) -> String {
    let rec = app
        .state
        .approvals
        .open(
            crate::governance::approvals::NewRequest {
                kind: fluid_client::governance::ApprovalKind::Custom,
                requester: crate::governance::approvals::Requester {
                    name: "someone".into(),
                    agent_id: Some("agent-7".into()),
                },
                sandbox_id: None,
                summary: "a question".into(),
                details: json!({}),
                timeout: std::time::Duration::from_secs(600),
            },
            "agent",
        )
        .await
        .expect("approval");
    rec.id
}

async fn send(
    app: &TestApp,
    c: &Call,
    token: Option<&str>,
    id: &str,
    apr: &str,
    n: usize,
) -> (StatusCode, Value) {
    let fill = |s: &str| {
        s.replace("{id}", id)
            .replace("{apr}", apr)
            .replace("{n}", &n.to_string())
    };
    let mut req = Request::builder()
        .method(c.method.clone())
        .uri(fill(c.path));
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = match &c.body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(fill(&b.to_string()))),
        None => req.body(Body::empty()),
    }
    .expect("request");
    if c.streaming {
        let resp = app.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        if status.is_success() {
            return (status, Value::Null);
        }
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .expect("body");
        return (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        );
    }
    app.send_with(req, false).await
}

fn judge(what: &str, who: Who, class: Class, got: &(StatusCode, Value)) {
    let (status, body) = got;
    let ok = allowed(class, who);
    match who {
        Who::NoToken | Who::BadToken | Who::Revoked if !ok => {
            assert_eq!(
                *status,
                StatusCode::UNAUTHORIZED,
                "{what} as {who:?}: {body}"
            );
        }
        _ if ok => {
            assert!(
                *status != StatusCode::UNAUTHORIZED
                    && *status != StatusCode::FORBIDDEN
                    && !status.is_server_error(),
                "{what} as {who:?} should be allowed: {status} {body}"
            );
        }
        _ => {
            assert_eq!(*status, StatusCode::FORBIDDEN, "{what} as {who:?}: {body}");
            let msg = body["error"].as_str().unwrap_or_default();
            assert!(
                msg.contains("needs role")
                    || msg.contains("belongs to another agent")
                    || msg.contains("scoped to agent"),
                "{what} as {who:?}: the refusal says why: {msg:?}"
            );
        }
    }
}

#[tokio::test]
async fn rest_roles_by_endpoint_class() {
    let app = app().await;
    let callers = Callers::new(&app).await;
    let mut checked = 0;
    for (who, token) in &callers.tokens {
        // A fresh sandbox (owned by agent-7) for each caller: Control destroys it.
        let id = sandbox(&app).await;
        for (n, c) in calls().iter().enumerate() {
            let apr = pending_approval(&app).await;
            let what = format!("{} {}", c.method, c.path);
            let got = send(&app, c, token.as_deref(), &id, &apr, n).await;
            judge(&what, *who, c.class, &got);
            checked += 1;
        }
    }
    assert_eq!(checked, WHO.len() * calls().len());
}

#[tokio::test]
async fn an_agent_token_cannot_touch_another_agents_sandbox_nor_decide() {
    let app = app().await;
    let a9 = app.token("a9", Role::Agent, Some("agent-9")).await;
    let id = sandbox(&app).await;
    let apr = pending_approval(&app).await;
    for c in calls() {
        if !matches!(
            c.class,
            Class::ReadSandbox
                | Class::Work
                | Class::Control
                | Class::Decide
                | Class::AskSandbox
                | Class::ManageNetwork
                | Class::PlaybooksSandbox
        ) {
            continue;
        }
        let got = send(&app, &c, Some(&a9), &id, &apr, 0).await;
        assert_eq!(
            got.0,
            StatusCode::FORBIDDEN,
            "{} {}: {}",
            c.method,
            c.path,
            got.1
        );
    }
    // Its own lists show nothing of agent-7's.
    let req = Request::get("/v1/sandboxes")
        .header(header::AUTHORIZATION, format!("Bearer {a9}"))
        .body(Body::empty())
        .expect("req");
    let (s, v) = app.send_with(req, false).await;
    assert_eq!((s, v["total"].clone()), (StatusCode::OK, json!(0)), "{v}");
    let req = Request::get("/v1/sandboxes?agent_id=agent-7")
        .header(header::AUTHORIZATION, format!("Bearer {a9}"))
        .body(Body::empty())
        .expect("req");
    assert_eq!(app.send_with(req, false).await.0, StatusCode::FORBIDDEN);
    // Nor can it create in agent-7's name.
    let req = Request::post("/v1/sandboxes")
        .header(header::AUTHORIZATION, format!("Bearer {a9}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            json!({"source_vm_name": "debian-12", "agent_id": "agent-7"}).to_string(),
        ))
        .expect("req");
    assert_eq!(app.send_with(req, false).await.0, StatusCode::FORBIDDEN);
    let rec = app.state.approvals.get(&apr).await.expect("approval");
    assert_eq!(
        rec.status.as_str(),
        "pending",
        "the agent's decision did not count"
    );
}

/// A gRPC call's outcome: `Ok` or the status code.
type Outcome = Result<(), Code>;

async fn grpc_calls(
    channel: tonic::transport::Channel,
    token: Option<String>,
    id: &str,
    apr: &str,
) -> Vec<(&'static str, Class, Outcome)> {
    let mut sb = SandboxesClient::with_interceptor(channel.clone(), Bearer(token.clone()));
    let mut ap = ApprovalsClient::with_interceptor(channel, Bearer(token));
    let code = |r: Result<(), tonic::Status>| r.map_err(|s| s.code());
    let exec = sb
        .exec(api::ExecCommandRequest {
            sandbox_id: id.to_owned(),
            command: "true".into(),
            ..Default::default()
        })
        .await;
    let exec = match exec {
        Ok(s) => {
            // Drain it: the command completes.
            let _ = s.into_inner().collect::<Vec<_>>().await;
            Ok(())
        }
        Err(e) => Err(e),
    };
    let get = sb
        .get_sandbox(api::GetSandboxRequest {
            sandbox_id: id.to_owned(),
        })
        .await
        .map(|_| ());
    let list = ap
        .list_approvals(api::ListApprovalsRequest::default())
        .await
        .map(|_| ());
    let decide = ap
        .decide(api::DecideRequest {
            approval_id: apr.to_owned(),
            approve: true,
            comment: String::new(),
        })
        .await
        .map(|_| ());
    vec![
        ("Sandboxes.Exec", Class::Work, code(exec)),
        ("Sandboxes.GetSandbox", Class::ReadSandbox, code(get)),
        ("Approvals.ListApprovals", Class::Read, code(list)),
        ("Approvals.Decide", Class::Decide, code(decide)),
    ]
}

#[tokio::test]
async fn grpc_roles_by_endpoint_class() {
    let app = app().await;
    let callers = Callers::new(&app).await;
    let (channel, stop) = serve_api(&app).await;
    let id = sandbox(&app).await;
    let mut checked = 0;
    for (who, token) in &callers.tokens {
        let apr = pending_approval(&app).await;
        for (what, class, got) in grpc_calls(channel.clone(), token.clone(), &id, &apr).await {
            let want = if allowed(class, *who) {
                Ok(())
            } else if matches!(who, Who::NoToken | Who::BadToken | Who::Revoked) {
                Err(Code::Unauthenticated)
            } else {
                Err(Code::PermissionDenied)
            };
            assert_eq!(got, want, "{what} as {who:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, WHO.len() * 4);
    stop.cancel();
}
