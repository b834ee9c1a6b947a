//! Ansible over REST as an untrusted writer: an agent token's content that would run
//! on the controller is refused naming the field, playbooks belong to their creator's
//! agent, and `GET /v1/roles` serves the role table.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use fluid_client::governance::Role;
use serde_json::{Value, json};

use super::tests::TestApp;
use super::tests_ansible::ansible_app;
use crate::config::Config;

async fn as_token(
    app: &TestApp,
    token: &str,
    method: &str,
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

#[tokio::test]
async fn agent_content_that_runs_on_the_controller_is_refused() {
    let app = ansible_app(super::tests_ansible_jobs::prod_config()).await;
    let a = app.token("a", Role::Agent, Some("agent-a")).await;
    let (s, v) = as_token(
        &app,
        &a,
        "POST",
        "/v1/ansible/playbooks",
        Some(json!({"name": "mine"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["playbook"]["owner_agent_id"], "agent-a");
    for (task, field) in [
        (
            json!({"name": "x", "module": "shell", "params": {"cmd": "id"}, "options": {"delegate_to": "localhost"}}),
            "options.delegate_to",
        ),
        (
            json!({"name": "x", "module": "ping", "options": {"when": "lookup('pipe','id')"}}),
            "options.when",
        ),
        (
            json!({"name": "x", "module": "shell", "params": {"cmd": "id"}, "options": {"check_mode": false}}),
            "options.check_mode",
        ),
        (
            json!({"name": "{{ lookup('file','/etc/fluid/pki/controller.key') }}", "module": "ping"}),
            "name",
        ),
        (
            json!({"name": "x", "module": "fetch", "params": {"src": "/etc/shadow", "dest": "/tmp"}}),
            "module",
        ),
    ] {
        let (s, v) = as_token(
            &app,
            &a,
            "POST",
            "/v1/ansible/playbooks/mine/tasks",
            Some(task),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        let msg = v["error"].as_str().expect("error");
        assert!(msg.starts_with(&format!("{field}:")), "{msg}");
    }
    // An admin is trusted with templates and delegation.
    let (s, v) = app
        .post(
            "/v1/ansible/playbooks/mine/tasks",
            json!({"name": "{{ inventory_hostname }}", "module": "shell", "params": {"cmd": "id"}, "options": {"delegate_to": "localhost"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // ... but that content never runs on an agent's behalf: its job re-checks the whole.
    let (s, v) = as_token(
        &app,
        &a,
        "POST",
        "/v1/ansible/jobs",
        Some(json!({"vm_name": "prod-web", "playbook": "mine", "check": true})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]
            .as_str()
            .expect("error")
            .starts_with("tasks[0].name:"),
        "{v}"
    );
    assert!(app.runner.runs().is_empty());
}

#[tokio::test]
async fn playbooks_belong_to_their_agent() {
    let app = ansible_app(Config::default()).await;
    let a = app.token("a", Role::Agent, Some("agent-a")).await;
    let b = app.token("b", Role::Agent, Some("agent-b")).await;
    let op = app.token("op", Role::Operator, None).await;
    let (s, _) = as_token(
        &app,
        &a,
        "POST",
        "/v1/ansible/playbooks",
        Some(json!({"name": "pa"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = as_token(
        &app,
        &a,
        "POST",
        "/v1/ansible/playbooks/pa/tasks",
        Some(json!({"name": "p", "module": "ping"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let task = v["task"]["id"].as_str().expect("id").to_owned();
    for (m, uri, body) in [
        ("GET", "/v1/ansible/playbooks/pa".to_owned(), None),
        ("GET", "/v1/ansible/playbooks/pa/export".to_owned(), None),
        (
            "POST",
            "/v1/ansible/playbooks/pa/tasks".to_owned(),
            Some(json!({"name": "p", "module": "ping"})),
        ),
        (
            "PUT",
            format!("/v1/ansible/playbooks/pa/tasks/{task}"),
            Some(json!({"name": "q"})),
        ),
        (
            "DELETE",
            format!("/v1/ansible/playbooks/pa/tasks/{task}"),
            None,
        ),
        ("DELETE", "/v1/ansible/playbooks/pa".to_owned(), None),
    ] {
        let (s, v) = as_token(&app, &b, m, &uri, body).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{m} {uri}: {v}");
        assert!(
            v["error"]
                .as_str()
                .expect("error")
                .contains("another agent"),
            "{v}"
        );
    }
    let (_, v) = as_token(&app, &b, "GET", "/v1/ansible/playbooks", None).await;
    assert_eq!(v["total"], 0, "{v}");
    let (_, v) = as_token(&app, &a, "GET", "/v1/ansible/playbooks", None).await;
    assert_eq!(v["total"], 1, "{v}");
    let (s, _) = as_token(&app, &op, "GET", "/v1/ansible/playbooks/pa", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = as_token(
        &app,
        &op,
        "POST",
        "/v1/ansible/playbooks",
        Some(json!({"name": "po"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = as_token(&app, &a, "GET", "/v1/ansible/playbooks/po", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn roles_are_served_to_every_caller() {
    let app = ansible_app(Config::default()).await;
    let r = app.token("r", Role::Readonly, Some("agent-a")).await;
    let (s, v) = as_token(&app, &r, "GET", "/v1/roles", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let roles: Vec<&str> = v["roles"]
        .as_array()
        .expect("roles")
        .iter()
        .map(|r| r["role"].as_str().expect("role"))
        .collect();
    assert_eq!(roles, ["admin", "operator", "agent", "readonly"]);
    assert!(v["roles"][2]["limits"].to_string().contains("delegate_to"));
    let (s, _) = as_token(&app, "fluid_nope", "GET", "/v1/roles", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}
