//! Ansible jobs over REST: the production-apply gate (a rejected or expired approval
//! never runs; an approved one runs after its check), sandbox jobs, bad input, the
//! output stream and resumption after a restart — against a runner that records what
//! ansible-playbook would have been asked.

use std::time::Duration;

use axum::http::StatusCode;
use futures::StreamExt as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::tests::{TestApp, assert_error};
use super::tests_ansible::{AnsibleApp, ansible_app, keys, playbook, task};
use crate::config::{AnsibleTarget, Config};
use crate::store::{AuditFilter, JobRecord};

pub(crate) fn prod_config() -> Config {
    let mut c = Config::default();
    c.ansible.targets = vec![AnsibleTarget {
        name: "prod-web".into(),
        hosts: vec!["10.0.0.5".into(), "10.0.0.6:2222".into()],
        user: "deploy".into(),
        private_key: "/etc/fluid/prod.key".into(),
        ssh_common_args: vec!["-o".into(), "StrictHostKeyChecking=yes".into()],
        r#become: None,
    }];
    c
}

async fn web(app: &TestApp) {
    playbook(app, "web").await;
    task(
        app,
        "web",
        json!({"name": "nginx", "module": "ansible.builtin.apt", "params": {"name": "nginx"}}),
    )
    .await;
}

async fn job(app: &TestApp, id: &str) -> Value {
    let (s, v) = app.get(&format!("/v1/ansible/jobs/{id}")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["job"].clone()
}

/// Polls the job until `done` says so.
async fn wait_until(app: &TestApp, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..400 {
        let j = job(app, id).await;
        if done(&j) {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("job {id} never got there: {}", job(app, id).await);
}

fn ended(j: &Value) -> bool {
    matches!(j["status"].as_str(), Some("finished" | "failed"))
}

fn awaiting(j: &Value) -> bool {
    j["phase"] == "awaiting_approval"
}

async fn start(app: &TestApp, body: Value) -> Value {
    let (s, v) = app.post("/v1/ansible/jobs", body).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v
}

#[tokio::test]
async fn a_rejected_production_apply_never_runs() {
    let app = ansible_app(prod_config()).await;
    web(&app).await;
    let v = start(&app, json!({"vm_name": "prod-web", "playbook": "web"})).await;
    assert_eq!(keys(&v), ["job", "job_id", "ws_url"]);
    let id = v["job_id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("JOB-"));
    assert_eq!(v["ws_url"], json!(format!("/v1/ansible/jobs/{id}/stream")));
    assert_eq!(
        (
            v["job"]["target_kind"].clone(),
            v["job"]["kind"].clone(),
            v["job"]["check"].clone()
        ),
        (json!("production"), json!("run"), json!(false))
    );
    let j = wait_until(&app, &id, awaiting).await;
    assert_eq!(j["status"], "running");
    assert!(
        j["check_output"]
            .as_str()
            .expect("check output")
            .contains("PLAY [check]"),
        "{j}"
    );
    let apr = j["approval_id"].as_str().expect("approval").to_owned();
    let (_, a) = app.get(&format!("/v1/approvals/{apr}")).await;
    let a = &a["approval"];
    assert_eq!(a["kind"], "production_apply", "{a}");
    assert_eq!(
        a["summary"],
        "apply playbook web to production target prod-web"
    );
    assert!(
        a["details"]["check_output"]
            .as_str()
            .expect("shown")
            .contains("PLAY [check]")
    );
    assert_eq!(
        a["details"]["playbook_sha256"].as_str().map(str::len),
        Some(64)
    );
    assert!(
        a["details"]["playbook_yaml"]
            .as_str()
            .expect("yaml")
            .contains("ansible.builtin.apt")
    );
    // Only the check ran, against the target's hosts.
    let runs = app.runner.runs();
    assert_eq!(runs.len(), 1);
    assert!(runs[0].check && runs[0].diff);
    assert_eq!(
        runs[0].hosts,
        [
            (
                "10.0.0.5".to_owned(),
                "10.0.0.5".to_owned(),
                22,
                "deploy".to_owned()
            ),
            (
                "10.0.0.6_2222".to_owned(),
                "10.0.0.6".to_owned(),
                2222,
                "deploy".to_owned()
            ),
        ]
    );

    let (s, _) = app
        .post(
            &format!("/v1/approvals/{apr}/reject"),
            json!({"comment": "not today"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let j = wait_until(&app, &id, ended).await;
    assert_eq!(
        (j["status"].clone(), j["phase"].clone()),
        (json!("failed"), json!("done"))
    );
    assert_eq!(
        j["error"],
        json!(format!("approval {apr} rejected by test-admin: not today"))
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(app.runner.runs().len(), 1, "a rejected apply never runs");
}

#[tokio::test]
async fn an_approved_production_apply_runs_after_its_check() {
    let app = ansible_app(prod_config()).await;
    web(&app).await;
    let v = start(&app, json!({"vm_name": "prod-web", "playbook": "web"})).await;
    let id = v["job_id"].as_str().expect("id").to_owned();
    let apr = wait_until(&app, &id, awaiting).await["approval_id"]
        .as_str()
        .expect("approval")
        .to_owned();
    // An edit after the job started does not change what it runs.
    task(
        &app,
        "web",
        json!({"name": "later", "module": "command", "params": {"cmd": "true"}}),
    )
    .await;
    let (s, _) = app
        .post_empty(&format!("/v1/approvals/{apr}/approve"))
        .await;
    assert_eq!(s, StatusCode::OK);
    let j = wait_until(&app, &id, ended).await;
    assert_eq!(
        (j["status"].clone(), j["exit_code"].clone()),
        (json!("finished"), json!(0)),
        "{j}"
    );
    let runs = app.runner.runs();
    assert_eq!(
        runs.iter().map(|r| r.check).collect::<Vec<_>>(),
        [true, false],
        "check, then apply"
    );
    assert_eq!(runs[0].playbook, runs[1].playbook);
    assert!(
        !runs[1].playbook.contains("later"),
        "the job runs the playbook it was approved with"
    );
    let out = j["output"].as_str().expect("output");
    assert!(out.find("PLAY [check]") < out.find("PLAY [apply]"), "{out}");
    assert!(
        out.contains(&format!("approved by test-admin ({apr})")),
        "{out}"
    );

    let events = app
        .store
        .list_audit(&AuditFilter {
            kind: Some("ansible_job".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("audit");
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "created",
            "started",
            "awaiting_approval",
            "approved",
            "finished"
        ]
    );
    let fin = &events[4];
    assert_eq!(
        (fin.target.as_deref(), fin.outcome.as_str()),
        (Some(id.as_str()), "exit 0")
    );
    assert_eq!(
        fin.details["output_sha256"],
        json!(crate::support::hash::sha256_hex(out)),
        "the audit pins the output"
    );
    assert_eq!(events[0].actor, "test-admin");
}

#[tokio::test]
async fn an_expired_approval_never_runs_and_check_only_asks_nobody() {
    let mut c = prod_config();
    c.ansible.production_approval_timeout_secs = 1;
    let app = ansible_app(c).await;
    web(&app).await;
    let id = start(&app, json!({"vm_name": "prod-web", "playbook": "web"})).await["job_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let j = wait_until(&app, &id, ended).await;
    assert_eq!(j["status"], "failed");
    let err = j["error"].as_str().expect("error");
    assert!(
        err.starts_with("approval APR-") && err.contains("expired"),
        "{err}"
    );
    assert_eq!(app.runner.runs().len(), 1, "only the check ran");

    let v = start(
        &app,
        json!({"vm_name": "prod-web", "playbook": "web", "check": true}),
    )
    .await;
    let j = wait_until(&app, v["job_id"].as_str().expect("id"), ended).await;
    assert_eq!(
        (
            j["status"].clone(),
            j["approval_id"].clone(),
            j["check"].clone()
        ),
        (json!("finished"), Value::Null, json!(true)),
        "{j}"
    );
    let runs = app.runner.runs();
    assert_eq!(runs.len(), 2);
    assert!(runs[1].check);
    let (_, a) = app.get("/v1/approvals?status=pending").await;
    assert_eq!(a["total"], json!(0), "a check-only job asks no one: {a}");
}

async fn running_sandbox(app: &TestApp, agent: &str, name: &str) -> String {
    let v = app
        .create(json!({"source_vm_name": "debian-12", "agent_id": agent, "vm_name": name}))
        .await;
    v["sandbox"]["id"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn sandbox_jobs_run_at_once_through_a_loopback_tunnel() {
    let app = ansible_app(Config::default()).await;
    web(&app).await;
    let sb = running_sandbox(&app, "agent-7", "web-1").await;
    let v = start(&app, json!({"vm_name": sb, "playbook": "web"})).await;
    assert_eq!(v["job"]["target_kind"], "sandbox");
    let j = wait_until(&app, v["job_id"].as_str().expect("id"), ended).await;
    assert_eq!(
        (
            j["status"].clone(),
            j["phase"].clone(),
            j["approval_id"].clone()
        ),
        (json!("finished"), json!("done"), Value::Null),
        "{j}"
    );
    let runs = app.runner.runs();
    let (name, addr, port, user) = runs[0].hosts[0].clone();
    assert_eq!(
        (name.as_str(), addr.as_str(), user.as_str()),
        ("web-1", "127.0.0.1", "root")
    );
    assert!(port > 0);
    assert!(!runs[0].check);

    // While it runs, its row gets the output every half second.
    if let Ok(mut p) = app.runner.pause.lock() {
        *p = Some(Duration::from_millis(1500));
    }
    let v = start(&app, json!({"vm_name": sb, "playbook": "web"})).await;
    let slow = v["job_id"].as_str().expect("id").to_owned();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let row = app.store.get_job(&slow).await.expect("get").expect("job");
    assert_eq!(row.status, fluid_client::ansible::JobStatus::Running);
    assert!(row.output.contains("PLAY [apply]"), "{}", row.output);
    wait_until(&app, &slow, ended).await;
    if let Ok(mut p) = app.runner.pause.lock() {
        *p = None;
    }

    // By name, in check mode, and a failing run.
    app.runner
        .exit_code
        .store(2, std::sync::atomic::Ordering::SeqCst);
    let v = start(
        &app,
        json!({"vm_name": "web-1", "playbook": "web", "check": true}),
    )
    .await;
    let j = wait_until(&app, v["job_id"].as_str().expect("id"), ended).await;
    assert_eq!(
        (j["status"].clone(), j["exit_code"].clone()),
        (json!("failed"), json!(2))
    );
    assert_eq!(j["error"], "ansible-playbook exited with 2");
    assert!(app.runner.runs()[2].check);

    // An agent works only on its own sandboxes; an operator on none.
    let a9 = app
        .token("a9", fluid_client::governance::Role::Agent, Some("agent-9"))
        .await;
    let op = app
        .token("op", fluid_client::governance::Role::Operator, None)
        .await;
    for (token, says) in [(a9, "another agent"), (op, "needs role")] {
        let req = axum::http::Request::post("/v1/ansible/jobs")
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(axum::body::Body::from(
                json!({"vm_name": sb, "playbook": "web"}).to_string(),
            ))
            .expect("req");
        assert_error(app.send_with(req, false).await, StatusCode::FORBIDDEN, says);
    }
}

#[tokio::test]
async fn bad_job_requests_are_4xx_with_a_reason() {
    let app = ansible_app(prod_config()).await;
    web(&app).await;
    let sb = running_sandbox(&app, "agent-7", "web-1").await;
    for (body, status, says) in [
        (
            json!({"vm_name": "prod-web", "playbook": "nosuch"}),
            StatusCode::NOT_FOUND,
            "nosuch",
        ),
        (
            json!({"vm_name": "prod-web", "playbook": "a/b"}),
            StatusCode::BAD_REQUEST,
            "name",
        ),
        (
            json!({"vm_name": "nowhere", "playbook": "web"}),
            StatusCode::NOT_FOUND,
            "nowhere",
        ),
        (
            json!({"vm_name": "SBX-nosuch0000", "playbook": "web"}),
            StatusCode::NOT_FOUND,
            "SBX-nosuch0000",
        ),
        (
            json!({"vm_name": "SBX-!", "playbook": "web"}),
            StatusCode::BAD_REQUEST,
            "vm_name",
        ),
        (
            json!({"vm_name": "", "playbook": "web"}),
            StatusCode::BAD_REQUEST,
            "vm_name",
        ),
        (
            json!({"vm_name": sb, "playbook": "web", "tags": "x"}),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            json!({"playbook": "web"}),
            StatusCode::BAD_REQUEST,
            "vm_name",
        ),
    ] {
        assert_error(app.post("/v1/ansible/jobs", body).await, status, says);
    }
    let (s, _) = app
        .post(
            "/v1/ansible/playbooks",
            json!({"name": "dbs", "hosts": "db"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_error(
        app.post(
            "/v1/ansible/jobs",
            json!({"vm_name": "prod-web", "playbook": "dbs"}),
        )
        .await,
        StatusCode::CONFLICT,
        "hosts",
    );
    let (s, _) = app
        .post(&format!("/v1/sandboxes/{sb}/stop"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_error(
        app.post(
            "/v1/ansible/jobs",
            json!({"vm_name": sb, "playbook": "web"}),
        )
        .await,
        StatusCode::CONFLICT,
        "RUNNING",
    );
    assert_error(
        app.get("/v1/ansible/jobs/JOB-nosuch0000").await,
        StatusCode::NOT_FOUND,
        "not found",
    );
    assert_error(
        app.get("/v1/ansible/jobs/nope").await,
        StatusCode::BAD_REQUEST,
        "job id",
    );
    assert_error(
        app.get("/v1/ansible/jobs?status=done").await,
        StatusCode::BAD_REQUEST,
        "status",
    );
    let (s, v) = app.get("/v1/ansible/jobs?playbook=web").await;
    assert_eq!(
        (s, keys(&v)),
        (StatusCode::OK, vec!["jobs".to_owned(), "total".to_owned()])
    );
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame; `None` at the close.
async fn next_text(ws: &mut Ws) -> Option<String> {
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => Some(t.to_string()),
        Ok(Some(Ok(Message::Close(_)))) | Ok(None) => None,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn the_stream_sends_each_line_then_the_status() {
    let app = ansible_app(prod_config()).await;
    web(&app).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = app.admin_router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let created: Value = reqwest::Client::new()
        .post(format!("http://{addr}/v1/ansible/jobs"))
        .bearer_auth(&app.admin_token)
        .json(&json!({"vm_name": "prod-web", "playbook": "web"}))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    let id = created["job_id"].as_str().expect("id").to_owned();
    let url = created["ws_url"].as_str().expect("ws_url");
    assert_eq!(url, format!("ws://{addr}/v1/ansible/jobs/{id}/stream"));
    let apr = wait_until(&app, &id, awaiting).await["approval_id"]
        .as_str()
        .expect("approval")
        .to_owned();
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", app.admin_token)
            .parse()
            .expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade");
    let mut text = Vec::new();
    // What was printed before it connected comes first.
    while let Some(t) = next_text(&mut ws).await {
        let waiting = t.contains("waiting for approval");
        text.push(t);
        if waiting {
            break;
        }
    }
    assert!(text.iter().any(|t| t == "PLAY [check]"), "{text:?}");
    let (s, _) = app
        .post_empty(&format!("/v1/approvals/{apr}/approve"))
        .await;
    assert_eq!(s, StatusCode::OK);
    while let Some(t) = next_text(&mut ws).await {
        text.push(t);
    }
    assert!(text.iter().any(|t| t == "PLAY [apply]"), "{text:?}");
    let last: Value = serde_json::from_str(text.last().expect("frames")).expect("status frame");
    assert_eq!(
        last,
        json!({"status": "finished", "exit_code": 0, "error": null, "job_id": id})
    );

    // A finished job streams its stored output and status at once.
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", app.admin_token)
            .parse()
            .expect("header"),
    );
    let (ws2, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade");
    let frames: Vec<String> = ws2
        .filter_map(|m| async move {
            match m {
                Ok(Message::Text(t)) => Some(t.to_string()),
                _ => None,
            }
        })
        .collect()
        .await;
    assert_eq!(frames, text, "replayed from the record");
}

/// A production_apply approval as a job of `requester` (name, agent id, role) opens it.
async fn open_approval(
    app: &AnsibleApp,
    (name, agent_id, role): (&str, Option<&str>, &str),
    summary: &str,
) -> crate::store::ApprovalRecord {
    app.state
        .approvals
        .open(
            crate::governance::approvals::NewRequest {
                kind: fluid_client::governance::ApprovalKind::ProductionApply,
                requester: crate::governance::approvals::Requester {
                    name: name.into(),
                    agent_id: agent_id.map(str::to_owned),
                },
                sandbox_id: None,
                summary: summary.into(),
                details: json!({}),
                timeout: Duration::from_secs(600),
            },
            role,
        )
        .await
        .expect("approval")
}

/// What a controller that died left: an admin's production job of playbook `web`,
/// its check run done, waiting for `approval_id`.
fn left_waiting(approval_id: &str) -> JobRecord {
    let yaml = "- name: web\n  hosts: all\n  become: true\n  tasks: []\n".to_owned();
    JobRecord {
        id: "JOB-waiting000".into(),
        kind: "run".into(),
        playbook: "web".into(),
        vm_name: "prod-web".into(),
        target_kind: "production".into(),
        sandbox_id: None,
        check: false,
        status: fluid_client::ansible::JobStatus::Running,
        phase: "awaiting_approval".into(),
        approval_id: Some(approval_id.to_owned()),
        playbook_sha256: crate::support::hash::sha256_hex(&yaml),
        playbook_yaml: yaml,
        check_output: Some("PLAY [check]\n".into()),
        output: "PLAY [check]\n".into(),
        exit_code: None,
        error: None,
        verification: None,
        created_by: "test-admin".into(),
        agent_id: None,
        created_at: chrono::Utc::now(),
        started_at: Some(chrono::Utc::now()),
        finished_at: None,
    }
}

/// A second controller on `app`'s database and data directory, with a runner of its own.
fn restarted(
    app: &AnsibleApp,
) -> (
    super::AppState,
    std::sync::Arc<crate::ansible::jobs::runner::fake::FakeRunner>,
) {
    let mut c = prod_config();
    c.data_dir = app.data.path().to_owned();
    let runner = std::sync::Arc::new(crate::ansible::jobs::runner::fake::FakeRunner::default());
    let state = crate::build_state_with_runner(
        app.store.clone(),
        app.agents.clone(),
        &c,
        crate::testing::fake_agents::test_ca(),
        runner.clone(),
    )
    .expect("state");
    (state, runner)
}

/// An agent's production job that was waiting for the approval of its check run when
/// the controller stopped: the next controller waits for that same approval, runs the
/// check once it is given, then asks for the apply's approval as usual.
#[tokio::test]
async fn a_restarted_controller_resumes_a_job_waiting_for_its_check_approval() {
    let app: AnsibleApp = ansible_app(prod_config()).await;
    web(&app).await;
    let approval = open_approval(
        &app,
        ("bot", Some("agent-1"), "agent"),
        "run playbook web on production target prod-web in check mode",
    )
    .await;
    let waiting = JobRecord {
        id: "JOB-checkwait0".into(),
        phase: crate::ansible::jobs::production::PHASE_AWAITING_CHECK_APPROVAL.into(),
        check_output: None,
        output: String::new(),
        created_by: "bot".into(),
        agent_id: Some("agent-1".into()),
        ..left_waiting(&approval.id)
    };
    let e = crate::store::NewAuditEvent::system("ansible_job", "created", "pending");
    app.store.insert_job(&waiting, &e).await.expect("insert");

    let (state, runner) = restarted(&app);
    assert_eq!(state.jobs.resume().await.expect("resume"), 1);
    assert!(runner.runs().is_empty(), "nothing runs before the decision");
    let (s, _) = app
        .post_empty(&format!("/v1/approvals/{}/approve", approval.id))
        .await;
    assert_eq!(s, StatusCode::OK);
    // The check runs, then the job waits for the approval of its apply.
    let j = wait_until(&app, &waiting.id, |j| {
        j["phase"] == "awaiting_approval" && j["approval_id"] != json!(approval.id)
    })
    .await;
    let runs = runner.runs();
    assert_eq!(
        runs.iter().map(|r| r.check).collect::<Vec<_>>(),
        vec![true],
        "the check ran once, after its approval"
    );
    let apply = j["approval_id"]
        .as_str()
        .expect("apply approval")
        .to_owned();
    let (s, _) = app
        .post_empty(&format!("/v1/approvals/{apply}/approve"))
        .await;
    assert_eq!(s, StatusCode::OK);
    let j = wait_until(&app, &waiting.id, ended).await;
    assert_eq!(j["status"], "finished", "{j}");
    assert_eq!(
        runner.runs().iter().map(|r| r.check).collect::<Vec<_>>(),
        vec![true, false],
        "check, then the approved apply"
    );
    assert!(
        app.runner.runs().is_empty(),
        "the first controller ran nothing"
    );
}

#[tokio::test]
async fn a_restarted_controller_resumes_waiting_jobs_and_fails_interrupted_ones() {
    let app: AnsibleApp = ansible_app(prod_config()).await;
    web(&app).await;
    // What a controller that died left: a job waiting for its approval, and one that
    // was applying.
    let approval = open_approval(
        &app,
        ("test-admin", None, "admin"),
        "apply playbook web to production target prod-web",
    )
    .await;
    let base = left_waiting(&approval.id);
    let dead = JobRecord {
        id: "JOB-interrupt0".into(),
        phase: "apply".into(),
        approval_id: None,
        ..base.clone()
    };
    for j in [&base, &dead] {
        let e = crate::store::NewAuditEvent::system("ansible_job", "created", "pending");
        app.store.insert_job(j, &e).await.expect("insert");
    }

    // A new controller on the same database resumes them.
    let (state, runner) = restarted(&app);
    assert_eq!(state.jobs.resume().await.expect("resume"), 1);
    let j = job(&app, "JOB-interrupt0").await;
    assert_eq!(j["status"], "failed");
    assert_eq!(
        j["error"],
        "interrupted: the controller stopped while the job was in phase apply"
    );
    assert!(runner.runs().is_empty(), "nothing runs before the decision");
    let (s, _) = app
        .post_empty(&format!("/v1/approvals/{}/approve", approval.id))
        .await;
    assert_eq!(s, StatusCode::OK);
    let j = wait_until(&app, &base.id, ended).await;
    assert_eq!(j["status"], "finished", "{j}");
    let runs = runner.runs();
    assert_eq!(
        (runs.len(), runs[0].check),
        (1, false),
        "the approved apply ran once"
    );
    assert_eq!(runs[0].playbook, base.playbook_yaml);
    assert!(app.runner.runs().is_empty());
}
