//! Diffs and file reads of disk states over REST (and the typed client), against a
//! SQLite store and the fake agents: the happy paths, and every bad input a 4xx.

use axum::http::StatusCode;
use fluid_proto::pb;
use serde_json::{Value, json};

use super::tests::{app, assert_error};
use super::tests_snapshots::{keys, running, snap};
use crate::sandboxes::diffs::DiskSide;

#[tokio::test]
async fn diffs_carry_files_packages_services_commands_and_text() {
    let app = app().await;
    let id = running(&app).await;
    app.agents
        .set_diff(crate::sandboxes::diffs::convert::tests::nginx_diff());
    let run = |cmd: &str| {
        let app = &app;
        let uri = format!("/v1/sandboxes/{id}/run");
        let body = json!({"command": cmd});
        async move {
            let (s, v) = app.post(&uri, body).await;
            assert_eq!(s, StatusCode::OK, "{v}");
        }
    };
    run("echo before A").await;
    snap(&app, &id, "a").await;
    run("apt-get install -y nginx").await;
    run("rm /etc/motd").await;
    snap(&app, &id, "b").await;
    run("echo after B").await;

    let (s, v) = app
        .post(
            &format!("/v1/sandboxes/{id}/diff"),
            json!({"from_snapshot": "a", "to_snapshot": "b"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let d = &v["diff"];
    assert_eq!(
        keys(d),
        [
            "created_at",
            "diff_json",
            "from_snapshot",
            "id",
            "sandbox_id",
            "text_diffs",
            "to_snapshot"
        ]
    );
    assert!(d["id"].as_str().expect("id").starts_with("DIF-"));
    assert_eq!(
        (d["from_snapshot"].clone(), d["to_snapshot"].clone()),
        (json!("a"), json!("b"))
    );
    let j = &d["diff_json"];
    assert_eq!(j["files_added"][0]["path"], "/etc/nginx/conf.d/site.conf");
    assert_eq!(j["files_added"][0]["mode"], "0644");
    assert_eq!(j["files_added"][0]["owner"], "root");
    assert_eq!(j["files_removed"][0]["path"], "/etc/motd");
    assert_eq!(j["files_modified"][0]["previous"]["mode"], "0644");
    assert_eq!(
        j["packages_added"][1],
        json!({"name": "nginx", "version": "1.22.1-9", "auto_installed": false})
    );
    assert_eq!(j["services_changed"][0]["name"], "nginx.service");
    assert_eq!(j["services_changed"][0]["enabled"], true);
    let cmds: Vec<&str> = j["commands_run"]
        .as_array()
        .expect("commands")
        .iter()
        .map(|c| c["cmd"].as_str().expect("cmd"))
        .collect();
    assert_eq!(cmds, ["apt-get install -y nginx", "rm /etc/motd"]);
    assert_eq!(j["commands_run"][0]["exit_code"], 0);
    assert!(
        j["commands_run"][0]["id"]
            .as_str()
            .expect("id")
            .starts_with("CMD-")
    );
    assert_eq!(d["text_diffs"][0]["path"], "/etc/motd");
    assert!(
        d["text_diffs"][0]["unified"]
            .as_str()
            .expect("text")
            .starts_with("--- a/etc/motd\n+++ b/etc/motd\n"),
        "{d}"
    );

    // What the agent was asked: both states, the configured paths and limit.
    let req = app.agents.snap.diff_requests.lock().expect("lock")[0].clone();
    let side = |s: Option<pb::DiskState>| s.map(|d| d.snapshot).unwrap_or_default();
    assert_eq!(
        (side(req.from), side(req.to)),
        ("a".to_owned(), "b".to_owned())
    );
    assert!(req.volatile_paths.iter().any(|p| p == "/var/lib/apt/lists"));
    assert_eq!(req.metadata_only_paths, ["/var/log"]);
    assert_eq!(req.text_limit_bytes, 256 * 1024);

    // To now (the default): commands up to now count.
    let (s, v) = app
        .post(
            &format!("/v1/sandboxes/{id}/diff"),
            json!({"from_snapshot": "b"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["diff"]["to_snapshot"], "now");
    assert_eq!(
        v["diff"]["diff_json"]["commands_run"][0]["cmd"],
        "echo after B"
    );
    let now_id = v["diff"]["id"].as_str().expect("id").to_owned();

    // Stored: listed newest first, and read back the same.
    let (s, list) = app.get(&format!("/v1/sandboxes/{id}/diffs")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(keys(&list), ["diffs", "total"]);
    assert_eq!(list["total"], 2);
    assert_eq!(list["diffs"][0]["id"], now_id.as_str());
    let (s, got) = app.get(&format!("/v1/sandboxes/{id}/diffs/{now_id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["diff"], v["diff"]);
    let (_, page) = app
        .get(&format!("/v1/sandboxes/{id}/diffs?limit=1&offset=1"))
        .await;
    assert_eq!(page["diffs"][0]["to_snapshot"], "b");
    // The stored detail keeps both texts for playbook generation.
    let stored = app.state.diffs.get(&now_id).await.expect("stored");
    assert_eq!(
        stored.detail.texts["/etc/motd"].before.as_deref(),
        Some("hello\n")
    );
}

#[tokio::test]
async fn bad_diff_requests_are_4xx_with_a_reason() {
    let app = app().await;
    let id = running(&app).await;
    snap(&app, &id, "a").await;
    let diff = |body: Value| {
        let app = &app;
        let uri = format!("/v1/sandboxes/{id}/diff");
        async move { app.post(&uri, body).await }
    };
    assert_error(
        diff(json!({"from_snapshot": "a", "to_snapshot": "a"})).await,
        StatusCode::BAD_REQUEST,
        "a snapshot compared with itself",
    );
    assert_error(
        diff(json!({"from_snapshot": "now"})).await,
        StatusCode::BAD_REQUEST,
        "compared with itself",
    );
    assert_error(
        diff(json!({"from_snapshot": "nope"})).await,
        StatusCode::NOT_FOUND,
        "snapshot nope",
    );
    assert_error(
        diff(json!({"from_snapshot": "a", "to_snapshot": "gone"})).await,
        StatusCode::NOT_FOUND,
        "snapshot gone",
    );
    assert_error(
        diff(json!({"from_snapshot": "../a"})).await,
        StatusCode::BAD_REQUEST,
        "from_snapshot",
    );
    assert_error(
        diff(json!({"to_snapshot": "a"})).await,
        StatusCode::BAD_REQUEST,
        "from_snapshot",
    );
    assert_error(
        diff(json!({"from_snapshot": "a", "extra": 1})).await,
        StatusCode::BAD_REQUEST,
        "unknown field",
    );
    assert_error(
        app.post(
            "/v1/sandboxes/SBX-nosuch0000/diff",
            json!({"from_snapshot": "a"}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "sandbox SBX-nosuch0000",
    );
    assert_error(
        app.get(&format!("/v1/sandboxes/{id}/diffs/DIF-nosuch0000"))
            .await,
        StatusCode::NOT_FOUND,
        "diff DIF-nosuch0000 not found",
    );
    assert_error(
        app.get(&format!("/v1/sandboxes/{id}/diffs/nope!")).await,
        StatusCode::BAD_REQUEST,
        "not a diff id",
    );
    assert_error(
        app.get(&format!("/v1/sandboxes/{id}/diffs?limit=0")).await,
        StatusCode::BAD_REQUEST,
        "limit",
    );
    // A diff of one sandbox is not found under another.
    let (_, v) = diff(json!({"from_snapshot": "a"})).await;
    let did = v["diff"]["id"].as_str().expect("id").to_owned();
    let other = running(&app).await;
    assert_error(
        app.get(&format!("/v1/sandboxes/{other}/diffs/{did}")).await,
        StatusCode::NOT_FOUND,
        "not found",
    );
}

#[tokio::test]
async fn files_of_disk_states_are_read_whole_within_a_cap() {
    let app = app().await;
    let id = running(&app).await;
    snap(&app, &id, "a").await;
    let meta = pb::FileMeta {
        kind: pb::FileKind::Regular as i32,
        mode: 0o755,
        owner: "root".into(),
        group: "root".into(),
        size: 4,
        ..Default::default()
    };
    app.agents
        .snap
        .files
        .lock()
        .expect("lock")
        .insert("/usr/local/bin/tool".into(), (meta, b"\x7fELF".to_vec()));
    let sid = crate::error::parse_id(&id).expect("id");
    let side = DiskSide::parse(&sid, "snapshot", "a").expect("side");
    let (m, data) = app
        .state
        .diffs
        .read_file(&side, "/usr/local/bin/tool", 0)
        .await
        .expect("read");
    assert_eq!(
        (m.mode.as_str(), m.kind.as_str(), data),
        ("0755", "file", b"\x7fELF".to_vec())
    );
    let now = DiskSide::parse(&sid, "snapshot", "now").expect("now");
    assert!(
        app.state
            .diffs
            .read_file(&now, "/usr/local/bin/tool", 0)
            .await
            .is_ok()
    );
    let e = app
        .state
        .diffs
        .read_file(&side, "/usr/local/bin/tool", 2)
        .await
        .expect_err("too large");
    assert!(
        matches!(e, crate::error::ServiceError::Unprocessable(_)),
        "{e}"
    );
    let e = app
        .state
        .diffs
        .read_file(&side, "/nope", 0)
        .await
        .expect_err("missing");
    assert!(matches!(e, crate::error::ServiceError::NotFound(_)), "{e}");
    let e = app
        .state
        .diffs
        .read_file(&side, "etc/x", 0)
        .await
        .expect_err("relative");
    assert!(matches!(e, crate::error::ServiceError::Invalid(_)), "{e}");
    let gone = DiskSide::parse(&sid, "snapshot", "gone").expect("side");
    let e = app
        .state
        .diffs
        .read_file(&gone, "/x", 0)
        .await
        .expect_err("no snapshot");
    assert!(e.to_string().contains("snapshot gone"), "{e}");
}

#[tokio::test]
async fn the_typed_client_speaks_the_snapshot_api() {
    use fluid_client::Client;
    use fluid_client::snapshots::{CreateSnapshotRequest, DiffRequest, ForkRequest};

    let app = app().await;
    let id = running(&app).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = app.router.clone();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let client = Client::new(&format!("http://{addr}"))
        .expect("client")
        .with_token(Some(app.admin_token.clone()));

    for name in ["a", "b"] {
        let req = CreateSnapshotRequest {
            name: name.into(),
            ..Default::default()
        };
        let s = client.create_snapshot(&id, &req).await.expect("create");
        assert_eq!(s.snapshot.name, name);
    }
    let list = client.list_snapshots(&id).await.expect("list");
    assert_eq!(list.total, 2);
    let r = client.restore_snapshot(&id, "a").await.expect("restore");
    assert_eq!(r.snapshot.name, "a");
    let d = client
        .diff_sandbox(
            &id,
            &DiffRequest {
                from_snapshot: "a".into(),
                to_snapshot: Some("b".into()),
            },
        )
        .await
        .expect("diff");
    let got = client.get_diff(&id, &d.diff.id).await.expect("get");
    assert_eq!(got.diff, d.diff);
    let diffs = client.list_diffs(&id, Some(1), None).await.expect("list");
    assert_eq!((diffs.total, diffs.diffs.len()), (1, 1));
    let f = client
        .fork_sandbox(
            &id,
            &ForkRequest {
                snapshot: Some("b".into()),
                ..Default::default()
            },
        )
        .await
        .expect("fork");
    assert_eq!(f.sandbox.host_name.as_deref(), Some("kvm-1"));
    client.delete_snapshot(&id, "b").await.expect("delete");
    let e = client.delete_snapshot(&id, "b").await.expect_err("gone");
    assert_eq!(e.status(), Some(reqwest::StatusCode::NOT_FOUND));
    let e = client
        .restore_snapshot("SBX-nosuch0000", "a")
        .await
        .expect_err("404");
    assert_eq!(e.status(), Some(reqwest::StatusCode::NOT_FOUND));
}
