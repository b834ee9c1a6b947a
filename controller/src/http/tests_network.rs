//! A sandbox's network egress through the REST API: the allow-list (GET/PUT), the
//! requests agents make for more and the humans who decide them, with a fake agent.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use fluid_client::governance::{ApprovalKind, AuditEvent, Role};
use fluid_client::network::NETWORK_BASELINE;
use serde_json::{Value, json};

use super::tests::{TestApp, app, assert_error};
use crate::governance::approvals::{NewRequest, Requester};
use crate::network::requests::EgressDetails;
use crate::store::AuditFilter;

async fn call(
    app: &TestApp,
    token: Option<&str>,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .expect("request");
    app.send(req).await
}

async fn put(app: &TestApp, token: Option<&str>, id: &str, body: Value) -> (StatusCode, Value) {
    let uri = format!("/v1/sandboxes/{id}/network");
    call(app, token, Method::PUT, &uri, Some(body)).await
}

async fn sandbox(app: &TestApp) -> String {
    let v = app
        .create(json!({"source_vm_name": "debian-12", "agent_id": "agent-7"}))
        .await;
    v["sandbox"]["id"].as_str().expect("id").to_owned()
}

/// The fake agent's policy for `id`, as `Display` strings.
fn enforced(app: &TestApp, id: &str) -> Vec<String> {
    app.agents
        .egress_of(id)
        .map(|p| p.allow.iter().map(ToString::to_string).collect())
        .unwrap_or_default()
}

async fn network_events(app: &TestApp, id: &str) -> Vec<AuditEvent> {
    app.store
        .list_audit(&AuditFilter {
            sandbox_id: Some(id.to_owned()),
            kind: Some("network".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("audit")
}

async fn wait_pending(app: &TestApp) -> String {
    for _ in 0..200 {
        let (_, v) = app.get("/v1/approvals?status=pending&kind=egress").await;
        if let Some(id) = v["approvals"][0]["id"].as_str() {
            return id.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no pending egress request");
}

#[tokio::test]
async fn the_allow_list_is_read_replaced_and_pushed_to_the_agent() {
    let app = app().await;
    let id = sandbox(&app).await;
    assert_eq!(enforced(&app, &id), Vec::<String>::new(), "created sealed");
    let (s, v) = app.get(&format!("/v1/sandboxes/{id}/network")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"network": {"sandbox_id": id, "allow": [], "resolved": [], "applied": true,
            "baseline": NETWORK_BASELINE}})
    );

    let (s, v) = put(
        &app,
        None,
        &id,
        json!({"allow": [
            {"domain": "Deb.Debian.org.", "protocol": "tcp", "port": 443},
            {"cidr": "10.9.8.7/16"},
            {"cidr": "2001:db8::1", "protocol": "udp", "port": 53},
        ]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let allow = json!([
        {"cidr": "10.9.0.0/16"},
        {"cidr": "2001:db8::1/128", "protocol": "udp", "port": 53},
        {"domain": "deb.debian.org", "protocol": "tcp", "port": 443},
    ]);
    assert_eq!(v["network"]["allow"], allow, "normalised and sorted: {v}");
    assert_eq!(v["network"]["applied"], true);
    assert_eq!(
        enforced(&app, &id),
        [
            "10.9.0.0/16",
            "2001:db8::1/128 udp/53",
            "deb.debian.org tcp/443"
        ]
    );
    let (_, v) = app.get(&format!("/v1/sandboxes/{id}/network")).await;
    assert_eq!(v["network"]["allow"], allow);
    assert_eq!(
        v["network"]["resolved"],
        json!([{"domain": "deb.debian.org", "addresses": ["192.0.2.7"]}])
    );

    // The trail has the change with the old and new lists, beside the API call.
    let events = network_events(&app, &id).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!((e.action.as_str(), e.actor.as_str()), ("set", "test-admin"));
    assert_eq!(e.details["old"], json!([]));
    assert_eq!(e.details["new"], allow);

    // Emptying it seals the sandbox again.
    let (s, v) = put(&app, None, &id, json!({"allow": []})).await;
    assert_eq!(
        (s, v["network"]["allow"].clone()),
        (StatusCode::OK, json!([]))
    );
    assert!(enforced(&app, &id).is_empty());
}

#[tokio::test]
async fn bad_allow_lists_are_400_and_change_nothing() {
    let app = app().await;
    let id = sandbox(&app).await;
    let many: Vec<Value> = (0..257)
        .map(|i| json!({"cidr": format!("10.0.{}.{}", i / 256, i % 256)}))
        .collect();
    for (body, mentions) in [
        (
            json!({"allow": [{"cidr": "10.0.0.0/33"}]}),
            "allow[0]: cidr",
        ),
        (
            json!({"allow": [{"cidr": "999.1.1.1"}]}),
            "not an address or CIDR",
        ),
        (
            json!({"allow": [{"domain": "-bad.example"}]}),
            "not a domain name",
        ),
        (
            json!({"allow": [{"domain": "10.1.2.3"}]}),
            "give it as a cidr",
        ),
        (
            json!({"allow": [{"cidr": "10.0.0.1", "port": 22}]}),
            "a port needs a protocol",
        ),
        (
            json!({"allow": [{"cidr": "10.0.0.1", "domain": "a.example"}]}),
            "not both",
        ),
        (json!({"allow": [{}]}), "needs a cidr or a domain"),
        (
            json!({"allow": [{"cidr": "10.0.0.1", "protocol": "icmp"}]}),
            "unknown variant",
        ),
        (
            json!({"allow": [{"cidr": "10.0.0.1", "protocol": "tcp", "port": 70000}]}),
            "u16",
        ),
        (
            json!({"allow": [{"cidr": "10.0.0.1", "host": "x"}]}),
            "unknown field",
        ),
        (json!({"allow": [], "extra": 1}), "unknown field"),
        (json!({}), "missing field"),
        (json!({"allow": many}), "at most 256"),
    ] {
        let got = put(&app, None, &id, body.clone()).await;
        assert_error(got, StatusCode::BAD_REQUEST, mentions);
    }
    assert!(network_events(&app, &id).await.is_empty());
    let got = put(&app, None, "SBX-nosuch0000", json!({"allow": []})).await;
    assert_error(got, StatusCode::NOT_FOUND, "not found");
}

#[tokio::test]
async fn only_operators_and_admins_set_it_and_an_agent_down_keeps_the_intent() {
    let app = app().await;
    let id = sandbox(&app).await;
    let agent = app.token("bot", Role::Agent, Some("agent-7")).await;
    let ro = app.token("viewer", Role::Readonly, None).await;
    let op = app.token("alice", Role::Operator, None).await;
    let body = json!({"allow": [{"domain": "pypi.org", "protocol": "tcp", "port": 443}]});
    for token in [&agent, &ro] {
        let got = put(&app, Some(token), &id, body.clone()).await;
        assert_error(got, StatusCode::FORBIDDEN, "needs role admin or operator");
    }
    assert!(enforced(&app, &id).is_empty());
    // Everyone who reads the sandbox reads its allow-list.
    for token in [&agent, &ro] {
        let uri = format!("/v1/sandboxes/{id}/network");
        let (s, v) = call(&app, Some(token), Method::GET, &uri, None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let (s, v) = put(&app, Some(&op), &id, body.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(enforced(&app, &id), ["pypi.org tcp/443"]);
    let events = network_events(&app, &id).await;
    assert_eq!(
        (
            events.len(),
            events[0].actor.as_str(),
            events[0].role.as_str()
        ),
        (1, "alice", "operator")
    );

    // The agent is down: 503, but the intent is stored (and GET still answers).
    app.agents.down.lock().expect("lock").insert("kvm-1".into());
    let got = put(&app, Some(&op), &id, json!({"allow": []})).await;
    assert_error(
        got,
        StatusCode::SERVICE_UNAVAILABLE,
        "pushed when the agent is back",
    );
    assert_eq!(enforced(&app, &id), ["pypi.org tcp/443"], "not pushed");
    let (s, v) = app.get(&format!("/v1/sandboxes/{id}/network")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["network"]["allow"], json!([]));
    assert!(v["network"].get("resolved").is_none() && v["network"].get("applied").is_none());
}

#[tokio::test]
async fn an_egress_request_blocks_until_an_operator_approves_it() {
    let app = Arc::new(app().await);
    let id = sandbox(&app).await;
    let agent = app.token("bot", Role::Agent, Some("agent-7")).await;
    let op = app.token("alice", Role::Operator, None).await;
    let asker = {
        let (app, id, agent) = (app.clone(), id.clone(), agent.clone());
        tokio::spawn(async move {
            let uri = format!("/v1/sandboxes/{id}/network/requests");
            let body =
                json!({"destination": "deb.debian.org", "port": 443, "reason": "apt mirror"});
            call(&app, Some(&agent), Method::POST, &uri, Some(body)).await
        })
    };
    let apr = wait_pending(&app).await;
    let (_, v) = app.get(&format!("/v1/approvals/{apr}")).await;
    let a = &v["approval"];
    assert_eq!(a["kind"], "egress");
    assert_eq!(a["requested_by"], "bot");
    assert_eq!(a["sandbox_id"], json!(id));
    assert_eq!(
        a["summary"],
        format!("{id} wants tcp/443 to deb.debian.org: apt mirror")
    );
    assert_eq!(
        a["details"],
        json!({"sandbox_id": id, "reason": "apt mirror", "allow": [],
            "rule": {"domain": "deb.debian.org", "protocol": "tcp", "port": 443}})
    );
    let uri = format!("/v1/approvals/{apr}/approve");
    let (s, v) = call(
        &app,
        Some(&op),
        Method::POST,
        &uri,
        Some(json!({"comment": "ok"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = asker.await.expect("asker");
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (
            &v["request_id"],
            &v["approved"],
            &v["status"],
            &v["approved_by"],
            &v["comment"]
        ),
        (
            &json!(apr),
            &json!(true),
            &json!("approved"),
            &json!("alice"),
            &json!("ok")
        )
    );
    assert_eq!(
        v["network"]["allow"],
        json!([{"domain": "deb.debian.org", "protocol": "tcp", "port": 443}])
    );
    assert_eq!(v["network"]["applied"], true);
    assert_eq!(enforced(&app, &id), ["deb.debian.org tcp/443"]);
    let events = network_events(&app, &id).await;
    let allow = events
        .iter()
        .find(|e| e.action == "allow")
        .expect("allow event");
    assert_eq!(allow.target.as_deref(), Some(apr.as_str()));
    assert_eq!(allow.details["approval_id"], json!(apr));
    assert_eq!(allow.details["old"], json!([]));

    // Asking again for what is allowed is a conflict, not a question for a human.
    let uri = format!("/v1/sandboxes/{id}/network/requests");
    let body =
        json!({"destination": "DEB.debian.org", "port": 443, "protocol": "tcp", "reason": "again"});
    let got = call(&app, Some(&agent), Method::POST, &uri, Some(body)).await;
    assert_error(got, StatusCode::CONFLICT, "already allowed");
}

#[tokio::test]
async fn a_rejected_request_changes_nothing_and_wait_false_answers_202() {
    let app = Arc::new(app().await);
    let id = sandbox(&app).await;
    let sets = app.agents.egress_sets.load(Ordering::SeqCst);
    let asker = {
        let (app, id) = (app.clone(), id.clone());
        tokio::spawn(async move {
            app.post(
                &format!("/v1/sandboxes/{id}/network/requests"),
                json!({"destination": "203.0.113.9", "reason": "exfiltrate"}),
            )
            .await
        })
    };
    let apr = wait_pending(&app).await;
    app.post(
        &format!("/v1/approvals/{apr}/reject"),
        json!({"comment": "no"}),
    )
    .await;
    let (s, v) = asker.await.expect("asker");
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["approved"], false);
    assert_eq!(v["status"], "rejected");
    assert_eq!(v["reason"], "rejected by test-admin: no");
    assert!(v.get("network").is_none(), "{v}");
    assert!(enforced(&app, &id).is_empty());
    assert_eq!(app.agents.egress_sets.load(Ordering::SeqCst), sets);
    assert!(network_events(&app, &id).await.is_empty());

    // wait=false: 202 at once; the approval is applied with nobody waiting.
    let (s, v) = app
        .post(
            &format!("/v1/sandboxes/{id}/network/requests?wait=false"),
            json!({"destination": "10.20.0.0/16", "protocol": "udp", "reason": "dns lab"}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["status"], "pending");
    assert_eq!(v["approval"]["kind"], "egress");
    let apr = v["request_id"].as_str().expect("id").to_owned();
    app.post(&format!("/v1/approvals/{apr}/approve"), json!({}))
        .await;
    for _ in 0..200 {
        if !enforced(&app, &id).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(enforced(&app, &id), ["10.20.0.0/16 udp"]);
}

#[tokio::test]
async fn requests_are_for_own_sandboxes_and_validated() {
    let app = app().await;
    let id = sandbox(&app).await;
    let other = app.token("a9", Role::Agent, Some("agent-9")).await;
    let ro = app.token("viewer", Role::Readonly, None).await;
    let uri = format!("/v1/sandboxes/{id}/network/requests?wait=false");
    let body = json!({"destination": "a.example", "reason": "r"});
    let got = call(&app, Some(&other), Method::POST, &uri, Some(body.clone())).await;
    assert_error(got, StatusCode::FORBIDDEN, "belongs to another agent");
    let got = call(&app, Some(&ro), Method::POST, &uri, Some(body)).await;
    assert_error(got, StatusCode::FORBIDDEN, "needs role");
    for (body, mentions) in [
        (json!({"destination": "", "reason": "r"}), "destination"),
        (
            json!({"destination": "a_b.example", "reason": "r"}),
            "not a domain name",
        ),
        (
            json!({"destination": "10.0.0.0/99", "reason": "r"}),
            "not an address or CIDR",
        ),
        (
            json!({"destination": "a.example", "port": 80, "protocol": "any", "reason": "r"}),
            "a port needs a protocol",
        ),
        (
            json!({"destination": "a.example", "protocol": "sctp", "reason": "r"}),
            "not tcp or udp",
        ),
        (json!({"destination": "a.example", "reason": " "}), "reason"),
        (
            json!({"destination": "a.example"}),
            "missing field `reason`",
        ),
        (
            json!({"destination": "a.example", "reason": "r", "ttl": 5}),
            "unknown field",
        ),
    ] {
        let got = app.post(&uri, body.clone()).await;
        assert_error(got, StatusCode::BAD_REQUEST, mentions);
    }
    let (_, v) = app.get("/v1/approvals?status=all&kind=egress").await;
    assert_eq!(v["total"], 0, "nothing was asked: {v}");
    app.delete(&format!("/v1/sandboxes/{id}")).await;
    let got = app
        .post(&uri, json!({"destination": "a.example", "reason": "r"}))
        .await;
    assert_error(got, StatusCode::CONFLICT, "destroyed");
}

#[tokio::test]
async fn approved_requests_are_applied_once_after_a_restart() {
    let app = app().await;
    let id = sandbox(&app).await;
    // A request approved while no controller was there to apply it.
    let details = EgressDetails {
        sandbox_id: id.clone(),
        rule: fluid_client::network::EgressRuleBody::for_destination("crates.io", None, None),
        reason: "cargo".into(),
        allow: Vec::new(),
    };
    let rec = app
        .state
        .approvals
        .open(
            NewRequest {
                kind: ApprovalKind::Egress,
                requester: Requester {
                    name: "bot".into(),
                    agent_id: Some("agent-7".into()),
                },
                sandbox_id: Some(id.clone()),
                summary: "crates.io".into(),
                details: serde_json::to_value(&details).expect("json"),
                timeout: Duration::from_secs(600),
            },
            "agent",
        )
        .await
        .expect("open");
    let admin = app
        .state
        .auth
        .authenticate(Some(&app.admin_token))
        .await
        .expect("admin");
    app.state
        .approvals
        .decide(&admin, &rec.id, true, None)
        .await
        .expect("approve");
    assert_eq!(app.state.egress_gate.resume().await.expect("resume"), 1);
    for _ in 0..200 {
        if !enforced(&app, &id).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(enforced(&app, &id), ["crates.io"]);
    // Applied once: a second start finds its `allow` event, even after the entry is
    // removed by an operator.
    put(&app, None, &id, json!({"allow": []})).await;
    assert_eq!(app.state.egress_gate.resume().await.expect("resume"), 0);
    let events = network_events(&app, &id).await;
    assert_eq!(events.iter().filter(|e| e.action == "allow").count(), 1);
}

#[tokio::test]
async fn the_openapi_document_has_the_network_routes() {
    let app = app().await;
    let (s, doc) = app.get("/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    let paths = &doc["paths"];
    assert!(paths["/v1/sandboxes/{id}/network"]["get"].is_object());
    assert!(paths["/v1/sandboxes/{id}/network"]["put"].is_object());
    assert!(paths["/v1/sandboxes/{id}/network/requests"]["post"].is_object());
    for schema in [
        "NetworkPolicy",
        "EgressRuleBody",
        "PutNetworkRequest",
        "EgressRequest",
        "EgressResponse",
        "PendingEgressResponse",
    ] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
    // Every reference resolves.
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r.clone());
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for r in all {
        let name = r.trim_start_matches("#/components/schemas/");
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "{r} dangles"
        );
    }
}

#[tokio::test]
async fn the_typed_client_speaks_the_network_api() {
    use fluid_client::network::{EgressProtocol, EgressRequest, EgressRuleBody, PutNetworkRequest};
    use fluid_client::{Client, client::EgressOutcome};

    let app = app().await;
    let id = sandbox(&app).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = app.router.clone();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let client = Client::new(&format!("http://{addr}"))
        .expect("client")
        .with_token(Some(app.admin_token.clone()));

    let rule = EgressRuleBody::for_destination("a.example", Some(EgressProtocol::Tcp), Some(443));
    let put = client
        .put_network(
            &id,
            &PutNetworkRequest {
                allow: vec![rule.clone()],
            },
        )
        .await
        .expect("put");
    assert_eq!(put.network.allow, std::slice::from_ref(&rule));
    let got = client.get_network(&id).await.expect("get");
    assert_eq!(got.network.applied, Some(true));
    let req = EgressRequest {
        destination: "b.example".into(),
        port: None,
        protocol: Some("udp".into()),
        reason: "typed".into(),
    };
    let EgressOutcome::Pending(p) = client.request_egress_nowait(&id, &req).await.expect("ask")
    else {
        panic!("expected 202")
    };
    let blocking = {
        let req = EgressRequest {
            destination: "c.example".into(),
            ..req.clone()
        };
        let (client, id) = (client.clone(), id.clone());
        tokio::spawn(async move {
            client
                .request_egress(&id, &req, Some(Duration::from_secs(5)))
                .await
        })
    };
    client
        .approve(&p.request_id, &Default::default())
        .await
        .expect("approve");
    let second = loop {
        let (_, v) = app.get("/v1/approvals?status=pending&kind=egress").await;
        if let Some(a) = v["approvals"][0]["id"].as_str() {
            break a.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    client
        .reject(&second, &Default::default())
        .await
        .expect("reject");
    let answer = blocking.await.expect("task").expect("answer");
    assert!(!answer.approved, "{answer:?}");
    assert_eq!(answer.status.as_str(), "rejected");
    let mut allow = Vec::new();
    for _ in 0..200 {
        allow = client.get_network(&id).await.expect("get").network.allow;
        if allow.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(allow[0], rule);
    assert_eq!(allow[1].to_string(), "udp to b.example");
    let e = client
        .put_network("SBX-nosuch0000", &PutNetworkRequest::default())
        .await
        .expect_err("404");
    assert_eq!(e.status(), Some(reqwest::StatusCode::NOT_FOUND));
}
