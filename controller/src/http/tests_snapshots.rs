//! Snapshots, restore, fork and diffs over REST, against a SQLite store and the fake
//! agents: the happy paths, and every bad input a 4xx that says what is wrong.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use fluid_client::governance::Role;
use fluid_proto::pb;
use futures::StreamExt as _;
use serde_json::{Value, json};

use super::tests::{TestApp, app, assert_error};
use crate::store::AuditFilter;

const SNAPSHOT_KEYS: [&str; 7] = [
    "created_at",
    "id",
    "kind",
    "meta_json",
    "name",
    "ref",
    "sandbox_id",
];

pub(super) async fn running(app: &TestApp) -> String {
    let v = app
        .create(json!({"source_vm_name": "debian-12", "agent_id": "agent-7"}))
        .await;
    v["sandbox"]["id"].as_str().expect("id").to_owned()
}

pub(super) async fn snap(app: &TestApp, id: &str, name: &str) -> Value {
    let (s, v) = app
        .post(
            &format!("/v1/sandboxes/{id}/snapshots"),
            json!({"name": name}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["snapshot"].clone()
}

async fn state_of(app: &TestApp, id: &str) -> Value {
    let (_, v) = app.get(&format!("/v1/sandboxes/{id}")).await;
    v["sandbox"]["state"].clone()
}

pub(super) fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    k.sort();
    k
}

#[tokio::test]
async fn snapshots_are_taken_listed_restored_and_deleted() {
    let app = app().await;
    let id = running(&app).await;

    let before = snap(&app, &id, "before").await;
    assert_eq!(keys(&before), SNAPSHOT_KEYS, "{before}");
    assert!(before["id"].as_str().expect("id").starts_with("SNP-"));
    assert_eq!(before["kind"], "INTERNAL");
    assert_eq!(before["ref"], format!("kvm-1:{id}@before"));
    assert_eq!(before["sandbox_id"], id.as_str());
    let meta = &before["meta_json"];
    assert_eq!(
        (
            meta["memory"].clone(),
            meta["vm_state"].clone(),
            meta["host"].clone()
        ),
        (json!(true), json!("running"), json!("kvm-1")),
        "{meta}"
    );
    assert_eq!(meta["guest_sync"], "ok");
    assert_eq!(meta["active_services"], json!(["ssh.service"]));

    // The README path is the same.
    let (s, v) = app
        .post(
            &format!("/v1/sandboxes/{id}/snapshot"),
            json!({"name": "after", "memory": true}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, list) = app.get(&format!("/v1/sandboxes/{id}/snapshots")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(keys(&list), ["snapshots", "total"]);
    assert_eq!(list["total"], 2);
    assert_eq!(list["snapshots"][0]["name"], "before", "oldest first");
    assert_eq!(list["snapshots"][1]["name"], "after");
    assert_eq!(app.agents.snapshot_names(&id), ["before", "after"]);

    // Restore: the sandbox runs again.
    let (s, v) = app
        .post_empty(&format!("/v1/sandboxes/{id}/snapshots/before/restore"))
        .await;
    assert_eq!(
        (s, v["snapshot"]["name"].clone()),
        (StatusCode::OK, json!("before")),
        "{v}"
    );
    let reverts = app.agents.snap.reverts.lock().expect("lock").clone();
    assert_eq!(reverts.len(), 1);
    assert_eq!((reverts[0].0.name.as_str(), reverts[0].1), ("before", true));
    assert_eq!(state_of(&app, &id).await, "RUNNING");

    // Stopped: a disk-only snapshot; restoring the memory one starts it, and the
    // audit trail has that state change.
    let (s, v) = app.post_empty(&format!("/v1/sandboxes/{id}/stop")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let cold = snap(&app, &id, "cold").await;
    assert_eq!(cold["meta_json"]["memory"], false);
    assert_eq!(cold["meta_json"]["vm_state"], "shutoff");
    let (s, _) = app
        .post_empty(&format!("/v1/sandboxes/{id}/snapshots/cold/restore"))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(state_of(&app, &id).await, "STOPPED");
    let (s, _) = app
        .post_empty(&format!("/v1/sandboxes/{id}/snapshots/before/restore"))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(state_of(&app, &id).await, "RUNNING");
    let events = app
        .store
        .list_audit(&AuditFilter {
            sandbox_id: Some(id.clone()),
            kind: Some("state".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("audit");
    let last = events.last().expect("a state event");
    assert_eq!(
        (last.details["from"].clone(), last.details["to"].clone()),
        (json!("STOPPED"), json!("RUNNING"))
    );

    // Delete: on the host and here; a second time it is unknown.
    let (s, v) = app
        .delete(&format!("/v1/sandboxes/{id}/snapshots/after"))
        .await;
    assert_eq!((s, v), (StatusCode::NO_CONTENT, Value::Null));
    assert_eq!(app.agents.snapshot_names(&id), ["before", "cold"]);
    assert_error(
        app.delete(&format!("/v1/sandboxes/{id}/snapshots/after"))
            .await,
        StatusCode::NOT_FOUND,
        "snapshot after",
    );

    // Destroying the sandbox removes its snapshot records.
    let (s, _) = app.delete(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        app.store
            .list_snapshots(&id)
            .await
            .expect("list")
            .is_empty()
    );
    let (_, list) = app.get(&format!("/v1/sandboxes/{id}/snapshots")).await;
    assert_eq!(list["total"], 0);
}

#[tokio::test]
async fn bad_snapshot_requests_are_4xx_with_a_reason() {
    let app = app().await;
    let id = running(&app).await;
    snap(&app, &id, "before").await;
    let create = |body: Value| {
        let app = &app;
        let id = id.clone();
        async move {
            app.post(&format!("/v1/sandboxes/{id}/snapshots"), body)
                .await
        }
    };
    assert_error(
        create(json!({"name": "before"})).await,
        StatusCode::CONFLICT,
        "snapshot before already exists",
    );
    let long = "x".repeat(64);
    for (name, says) in [
        ("a/b", "not a snapshot name"),
        ("..", "not a snapshot name"),
        ("", "must not be empty"),
        (long.as_str(), "at most 63"),
        ("fluid-tmp", "reserved"),
        ("now", "disk now"),
    ] {
        assert_error(
            create(json!({"name": name})).await,
            StatusCode::BAD_REQUEST,
            says,
        );
    }
    assert_error(
        create(json!({"name": "ext", "external": true})).await,
        StatusCode::BAD_REQUEST,
        "external snapshots are not supported",
    );
    assert_error(
        create(json!({"name": "x", "colour": "red"})).await,
        StatusCode::BAD_REQUEST,
        "unknown field",
    );
    assert_error(
        create(json!({"name": "disk", "memory": false})).await,
        StatusCode::CONFLICT,
        "stop it first",
    );
    assert_error(
        app.post(
            "/v1/sandboxes/SBX-nosuch0000/snapshots",
            json!({"name": "a"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "sandbox SBX-nosuch0000 not found",
    );
    assert_error(
        app.get("/v1/sandboxes/SBX-nosuch0000/snapshots").await,
        StatusCode::NOT_FOUND,
        "not found",
    );
    assert_error(
        app.post("/v1/sandboxes/nope/snapshots", json!({"name": "a"}))
            .await,
        StatusCode::BAD_REQUEST,
        "not a sandbox id",
    );
    assert_error(
        app.post_empty(&format!("/v1/sandboxes/{id}/snapshots/nope/restore"))
            .await,
        StatusCode::NOT_FOUND,
        "snapshot nope",
    );
    assert_error(
        app.post_empty(&format!("/v1/sandboxes/{id}/snapshots/a..b/restore"))
            .await,
        StatusCode::BAD_REQUEST,
        "not a snapshot name",
    );
    assert_error(
        app.delete(&format!("/v1/sandboxes/{id}/snapshots/nope"))
            .await,
        StatusCode::NOT_FOUND,
        "snapshot nope",
    );
    // Only RUNNING and STOPPED sandboxes.
    app.post(
        &format!("/v1/sandboxes/{id}/snapshots"),
        json!({"name": "x"}),
    )
    .await;
    let (s, _) = app.delete(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_error(
        create(json!({"name": "late"})).await,
        StatusCode::CONFLICT,
        "needs it RUNNING or STOPPED",
    );
}

#[tokio::test]
async fn a_read_only_sandbox_keeps_its_snapshots_readable_only() {
    let app = app().await;
    let id = running(&app).await;
    snap(&app, &id, "before").await;
    let (s, v) = app
        .send(
            Request::put(format!("/v1/sandboxes/{id}/mode"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(json!({"mode": "read-only"}).to_string()))
                .expect("req"),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for got in [
        app.post(
            &format!("/v1/sandboxes/{id}/snapshots"),
            json!({"name": "b"}),
        )
        .await,
        app.post_empty(&format!("/v1/sandboxes/{id}/snapshots/before/restore"))
            .await,
        app.delete(&format!("/v1/sandboxes/{id}/snapshots/before"))
            .await,
    ] {
        assert_error(got, StatusCode::FORBIDDEN, "read-only");
    }
    let (s, _) = app.get(&format!("/v1/sandboxes/{id}/snapshots")).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = app
        .post(
            &format!("/v1/sandboxes/{id}/diff"),
            json!({"from_snapshot": "before"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn a_fork_runs_on_the_snapshots_host_with_the_sources_egress() {
    let app = app().await;
    let id = running(&app).await;
    let (s, v) = app
        .send(
            Request::put(format!("/v1/sandboxes/{id}/network"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(
                    json!({"allow": [{"domain": "deb.debian.org", "protocol": "tcp", "port": 443}]})
                        .to_string(),
                ))
                .expect("req"),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    snap(&app, &id, "b").await;
    // A second host with more room: the fork still goes where the snapshot is.
    second_host(&app).await;

    let (s, v) = app
        .post(
            &format!("/v1/sandboxes/{id}/fork"),
            json!({"snapshot": "b", "vm_name": "fork-1", "wait_for_ip": true}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let fork = &v["sandbox"];
    let fid = fork["id"].as_str().expect("id").to_owned();
    assert_ne!(fid, id);
    assert_eq!(
        (
            fork["host_name"].clone(),
            fork["base_image"].clone(),
            fork["agent_id"].clone(),
            fork["sandbox_name"].clone(),
            fork["state"].clone(),
        ),
        (
            json!("kvm-1"),
            json!("debian-12"),
            json!("agent-7"),
            json!("fork-1"),
            json!("RUNNING")
        )
    );
    assert_eq!(v["ip_address"], "192.168.122.10");
    let forks = app.agents.snap.forks.lock().expect("lock").clone();
    assert_eq!(forks.len(), 1);
    assert_eq!(
        (
            forks[0].0.as_str(),
            forks[0].1.sandbox_id.as_str(),
            forks[0].1.name.as_str()
        ),
        (fid.as_str(), id.as_str(), "b")
    );
    let egress = app.agents.egress_of(&fid).expect("egress");
    assert_eq!(
        egress.allow.len(),
        1,
        "the fork's first packet is governed by the source's list"
    );
    assert_eq!(
        app.store.get_egress(&fid).await.expect("get"),
        app.store.get_egress(&id).await.expect("get"),
        "stored as intent (the reconciler keeps it)"
    );

    assert_error(
        app.post(
            &format!("/v1/sandboxes/{id}/fork"),
            json!({"snapshot": "nope"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "snapshot nope",
    );
    assert_error(
        app.post(
            &format!("/v1/sandboxes/{id}/fork"),
            json!({"snapshot": "b", "memory_mb": 8000}),
        )
        .await,
        StatusCode::CONFLICT,
        "must run on kvm-1",
    );
    assert_error(
        app.post(
            &format!("/v1/sandboxes/{id}/fork"),
            json!({"snapshot": "b", "x": 1}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "unknown field",
    );
    assert_error(
        app.post(
            "/v1/sandboxes/SBX-nosuch0000/fork",
            json!({"snapshot": "b"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "sandbox SBX-nosuch0000",
    );
    // An agent forks only into its own agent id.
    let a7 = app.token("a7", Role::Agent, Some("agent-7")).await;
    let as_a7 = |body: Value| {
        Request::post(format!("/v1/sandboxes/{id}/fork"))
            .header(header::AUTHORIZATION, format!("Bearer {a7}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .expect("req")
    };
    assert_error(
        app.send(as_a7(json!({"snapshot": "b", "agent_id": "agent-9"})))
            .await,
        StatusCode::FORBIDDEN,
        "scoped to agent",
    );
    let (s, v) = app.send(as_a7(json!({"snapshot": "b"}))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

#[tokio::test]
async fn a_tunnel_carries_bytes_both_ways() {
    use crate::agents::{AgentTarget, SnapshotAgent as _};
    let app = app().await;
    let id = running(&app).await;
    let t = AgentTarget {
        name: "kvm-1".into(),
        address: "kvm-1.lab:7443".into(),
    };
    let input = futures::stream::iter(vec![b"SSH-2.0-x\r\n".to_vec(), b"more".to_vec()]).boxed();
    let open = pb::TunnelOpen {
        sandbox_id: id.clone(),
        port: 22,
    };
    let out: Vec<Vec<u8>> = app
        .agents
        .tunnel(&t, open, input)
        .await
        .expect("open")
        .map(|r| r.expect("data"))
        .collect()
        .await;
    assert_eq!(out.concat(), b"SSH-2.0-x\r\nmore");
    let bad = pb::TunnelOpen {
        sandbox_id: id,
        port: 80,
    };
    let e = app
        .agents
        .tunnel(&t, bad, futures::stream::empty().boxed())
        .await
        .err()
        .expect("refused");
    assert!(e.to_string().contains("only 22"), "{e}");
}

#[tokio::test]
async fn the_openapi_document_has_the_snapshot_routes() {
    let app = app().await;
    let (s, doc) = app.get("/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    for p in [
        "/v1/sandboxes/{id}/snapshot",
        "/v1/sandboxes/{id}/snapshots",
        "/v1/sandboxes/{id}/snapshots/{name}",
        "/v1/sandboxes/{id}/snapshots/{name}/restore",
        "/v1/sandboxes/{id}/fork",
        "/v1/sandboxes/{id}/diff",
        "/v1/sandboxes/{id}/diffs",
        "/v1/sandboxes/{id}/diffs/{diff_id}",
    ] {
        assert!(
            doc["paths"][p].is_object(),
            "{p} missing from the OpenAPI document"
        );
    }
    for schema in ["Snapshot", "DiffJson", "FileEntry", "ForkRequest"] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
}

/// A restore reverts the guest's disk, and with it the revoked-keys file: the
/// controller writes its list again before answering, and after a start (a
/// revocation made while the sandbox was stopped never reached it).
#[tokio::test]
async fn a_restore_and_a_start_write_the_revoked_keys_again() {
    let app = app().await;
    let v = app
        .create(json!({"source_vm_name": "debian-12", "agent_id": "agent-7", "wait_for_ip": true}))
        .await;
    let id = v["sandbox"]["id"].as_str().expect("id").to_owned();
    snap(&app, &id, "clean").await;
    let execs = |app: &TestApp| app.agents.execs.lock().expect("lock").len();
    // Nothing revoked: a restore runs nothing in the guest.
    let before = execs(&app);
    let (s, _) = app
        .post_empty(&format!("/v1/sandboxes/{id}/snapshots/clean/restore"))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(execs(&app), before);

    let user_key = crate::testing::fake_agents::test_ca()
        .public_key()
        .to_owned();
    let (s, v) = app
        .post(
            "/v1/access/request",
            json!({"sandbox_id": id, "user_id": "alice", "public_key": user_key}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let cert_id = v["certificate_id"].as_str().expect("id").to_owned();
    let (s, v) = app
        .delete(&format!("/v1/access/certificate/{cert_id}"))
        .await;
    assert_eq!(
        (s, v["revocation_applied"].clone()),
        (StatusCode::OK, json!(true))
    );
    let revoked = |app: &TestApp| {
        String::from_utf8_lossy(
            &app.agents
                .file("/etc/ssh/fluid_revoked_keys")
                .unwrap_or_default(),
        )
        .trim()
        .to_owned()
    };
    assert_eq!(revoked(&app), user_key.trim());

    // The snapshot predates the revocation: restoring it empties the file.
    app.agents.put_file("/etc/ssh/fluid_revoked_keys", b"");
    let (s, _) = app
        .post_empty(&format!("/v1/sandboxes/{id}/snapshots/clean/restore"))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        revoked(&app),
        user_key.trim(),
        "written again before the answer"
    );

    // Stopped, then started: written again in the background.
    let (s, _) = app.post_empty(&format!("/v1/sandboxes/{id}/stop")).await;
    assert_eq!(s, StatusCode::OK);
    app.agents.put_file("/etc/ssh/fluid_revoked_keys", b"");
    let (s, v) = app.post_empty(&format!("/v1/sandboxes/{id}/start")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while revoked(&app) != user_key.trim() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "revoked keys not written after the start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A second host, with more room than the first, online.
async fn second_host(app: &TestApp) {
    app.store
        .upsert_host("kvm-2", "kvm-2.lab:7443")
        .await
        .expect("host");
    app.state.hosts.beat_all().await.expect("beat");
}

#[tokio::test]
async fn a_live_fork_without_a_snapshot_runs_on_the_sources_host_while_it_runs() {
    let app = app().await;
    let id = running(&app).await;
    second_host(&app).await;
    let (s, v) = app
        .post(
            &format!("/v1/sandboxes/{id}/fork"),
            json!({"vm_name": "live-1"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let fid = v["sandbox"]["id"].as_str().expect("id").to_owned();
    assert_eq!(v["sandbox"]["host_name"], "kvm-1", "{v}");
    let live = app.agents.snap.live_forks.lock().expect("lock").clone();
    assert_eq!(
        live.iter()
            .map(|(f, s)| (f.as_str(), s.as_str()))
            .collect::<Vec<_>>(),
        vec![(fid.as_str(), id.as_str())]
    );
    assert!(app.agents.snap.forks.lock().expect("lock").is_empty());

    // Another tenant's agent token cannot fork it (nor pause it for the copy).
    let a9 = app.token("a9", Role::Agent, Some("agent-9")).await;
    let (s, v) = app
        .send(
            Request::post(format!("/v1/sandboxes/{id}/fork"))
                .header(header::AUTHORIZATION, format!("Bearer {a9}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(json!({"agent_id": "agent-9"}).to_string()))
                .expect("req"),
        )
        .await;
    assert!(
        s == StatusCode::FORBIDDEN || s == StatusCode::NOT_FOUND,
        "{s} {v}"
    );
    assert_eq!(app.agents.snap.live_forks.lock().expect("lock").len(), 1);

    // A stopped sandbox has no memory to fork.
    let (s, v) = app
        .post(&format!("/v1/sandboxes/{id}/stop"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_error(
        app.post(&format!("/v1/sandboxes/{id}/fork"), json!({}))
            .await,
        StatusCode::CONFLICT,
        "only a running sandbox forks live",
    );
}
