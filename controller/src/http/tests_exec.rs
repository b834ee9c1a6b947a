//! Commands, files and access against a SQLite store and the fake agent.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use futures::StreamExt as _;
use russh::keys::ssh_key::{Certificate, HashAlg};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::tests::{TestApp, app, app_with, assert_error};
use crate::agents::ExecEvent;
use crate::config::Config;
use crate::testing::fake_agents::{events, exit};

async fn running(app: &TestApp) -> String {
    let v = app
        .create(json!({"source_vm_name": "debian-12", "agent_id": "agent-7"}))
        .await;
    v["sandbox"]["id"].as_str().expect("id").to_owned()
}

fn sse_request(uri: &str, body: Value) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("req")
}

/// `(event, data)` pairs of an SSE body.
fn parse_sse(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter_map(fluid_client::client::parse_sse)
        .map(|e| (e.event, e.data))
        .collect()
}

async fn wait_for_status(app: &TestApp, id: &str, want: &str) -> crate::store::CommandRecord {
    for _ in 0..200 {
        if let Some(c) = app.store.get_command(id).await.expect("store")
            && c.status.as_str() == want
        {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("command {id} never became {want}");
}

#[tokio::test]
async fn run_answers_the_record_and_audits_it() {
    let app = app().await;
    let id = running(&app).await;
    assert!(
        !app.agents.last_ca_keys.lock().expect("lock").is_empty(),
        "create passes the CA key"
    );
    let (s, v) = app
        .post(
            &format!("/v1/sandboxes/{id}/run"),
            json!({"command": "echo hi", "env": {"API_TOKEN": "s3cret", "HOME": "/root"}, "timeout_sec": 30}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let c = &v["command"];
    for k in [
        "id",
        "sandbox_id",
        "command",
        "env_json",
        "stdout",
        "stderr",
        "exit_code",
        "started_at",
        "ended_at",
        "truncated",
        "timed_out",
    ] {
        assert!(c.get(k).is_some(), "{k} missing: {c}");
    }
    assert!(c["id"].as_str().expect("id").starts_with("CMD-"));
    assert_eq!(c["stdout"], "ran: echo hi\n");
    assert_eq!(c["exit_code"], 0);
    assert_eq!(c["status"], "completed");
    assert_eq!(c["agent_id"], "agent-7");
    let env: Value = serde_json::from_str(c["env_json"].as_str().expect("env")).expect("json");
    assert_eq!(env, json!({"API_TOKEN": "***", "HOME": "/root"}));
    // The agent got a certificate for its key, signed by the CA, for root on this
    // sandbox only (no bare `root` principal: that would open every sandbox).
    let req = app.agents.execs.lock().expect("lock")[0].clone();
    let cert = Certificate::from_openssh(&req.ssh_certificate).expect("cert");
    assert_eq!(cert.valid_principals(), [format!("sbx:{id}:root")]);
    assert!(cert.extensions().is_empty());
    let (_, ca) = app.get("/v1/access/ca-pubkey").await;
    let ca_fp = crate::work::ssh_ca::parse_public_key(ca["public_key"].as_str().expect("key"))
        .expect("ca")
        .fingerprint(HashAlg::Sha256);
    cert.validate([&ca_fp]).expect("signed by the CA");
    assert_eq!(req.output_cap_bytes, 1024 * 1024);
    // Listed, and included in the sandbox.
    let (s, v) = app.get(&format!("/v1/sandboxes/{id}/commands")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["total"], 1);
    let (_, v) = app
        .get(&format!("/v1/sandboxes/{id}?include_commands=true"))
        .await;
    assert_eq!(v["commands"][0]["command"], "echo hi");
    // The /command alias.
    let (s, _) = app
        .post(
            &format!("/v1/sandboxes/{id}/command"),
            json!({"command": "true"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    // The agent's certificate is reused while it is fresh, not signed per command.
    let execs = app.agents.execs.lock().expect("lock").clone();
    assert_eq!(execs.len(), 2);
    assert_eq!(execs[0].ssh_certificate, execs[1].ssh_certificate);
    // Another sandbox on the same host gets a certificate of its own, naming it.
    let other = running(&app).await;
    assert_ne!(other, id);
    let (s, _) = app
        .post(
            &format!("/v1/sandboxes/{other}/run"),
            json!({"command": "true"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let execs = app.agents.execs.lock().expect("lock").clone();
    let last = execs.last().expect("exec");
    assert_eq!(last.sandbox_id, other);
    assert_ne!(last.ssh_certificate, execs[0].ssh_certificate);
    let cert = Certificate::from_openssh(&last.ssh_certificate).expect("cert");
    assert_eq!(cert.valid_principals(), [format!("sbx:{other}:root")]);
}

#[tokio::test]
async fn bad_runs_are_refused() {
    let app = app().await;
    let id = running(&app).await;
    let uri = format!("/v1/sandboxes/{id}/run");
    for (body, field) in [
        (json!({"command": "x", "env": {"A;B": "1"}}), "env"),
        (
            json!({"command": "x", "timeout_sec": 100000}),
            "timeout_sec",
        ),
        (json!({"command": "x", "user": "Root"}), "user"),
        (json!({"command": "x", "workdir": "tmp"}), "workdir"),
        (json!({"command": " "}), "command"),
        (json!({"command": "x", "bogus": 1}), "bogus"),
    ] {
        assert_error(app.post(&uri, body).await, StatusCode::BAD_REQUEST, field);
    }
    assert!(app.agents.execs.lock().expect("lock").is_empty());
    let (s, _) = app.post_empty(&format!("/v1/sandboxes/{id}/stop")).await;
    assert_eq!(s, StatusCode::OK);
    assert_error(
        app.post(&uri, json!({"command": "ls"})).await,
        StatusCode::CONFLICT,
        "RUNNING",
    );
    assert_error(
        app.post("/v1/sandboxes/SBX-00000000/run", json!({"command": "ls"}))
            .await,
        StatusCode::NOT_FOUND,
        "not found",
    );
}

#[tokio::test]
async fn policy_refusals_are_403_and_audited() {
    let mut config = Config::default();
    config.policy.command_deny = vec![r"\brm\s+-rf\b".into()];
    let app = app_with(config).await;
    let id = running(&app).await;
    assert_error(
        app.post(
            &format!("/v1/sandboxes/{id}/run"),
            json!({"command": "rm -rf /"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "command_deny",
    );
    assert!(app.agents.execs.lock().expect("lock").is_empty());
    let (_, v) = app.get(&format!("/v1/sandboxes/{id}/commands")).await;
    assert_eq!(v["total"], 1);
    assert_eq!(v["commands"][0]["status"], "denied");
    assert_eq!(v["commands"][0]["command"], "rm -rf /");
}

#[tokio::test]
async fn streamed_runs_send_events_in_order() {
    let app = app().await;
    let id = running(&app).await;
    app.agents.script_exec(|_| {
        events(vec![
            ExecEvent::Started { at_unix_ms: 1 },
            ExecEvent::Stdout(b"one\n".to_vec()),
            ExecEvent::Stderr(b"warn\n".to_vec()),
            ExecEvent::Stdout(vec![0xff, 0xfe]),
            exit(3),
        ])
    });
    let resp = app
        .admin_router()
        .oneshot(sse_request(
            &format!("/v1/sandboxes/{id}/run?stream=true"),
            json!({"command": "x"}),
        ))
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .expect("ct")
            .starts_with("text/event-stream")
    );
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("body");
    let evs = parse_sse(&String::from_utf8_lossy(&bytes));
    let names: Vec<&str> = evs.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names, ["started", "stdout", "stderr", "stdout", "exit"]);
    assert_eq!(evs[1].1["data"], "one\n");
    assert_eq!(evs[1].1["encoding"], "utf-8");
    assert_eq!(evs[3].1["encoding"], "base64");
    assert_eq!(evs[3].1["data"], "//4=");
    assert_eq!(evs[4].1["command"]["exit_code"], 3);
    assert_eq!(evs[4].1["command"]["stdout"], "one\n\u{FFFD}\u{FFFD}");
}

#[tokio::test]
async fn a_client_that_leaves_does_not_cancel_the_command() {
    let app = app().await;
    let id = running(&app).await;
    let gate = Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    app.agents.script_exec(move |_| {
        let g = g.clone();
        futures::stream::iter(vec![
            Ok(ExecEvent::Started { at_unix_ms: 1 }),
            Ok(ExecEvent::Stdout(b"partial\n".to_vec())),
        ])
        .chain(futures::stream::once(async move {
            g.notified().await;
            Ok(ExecEvent::Stdout(b"after\n".to_vec()))
        }))
        .chain(futures::stream::iter(vec![Ok(exit(7))]))
        .boxed()
    });
    let resp = app
        .admin_router()
        .oneshot(sse_request(
            &format!("/v1/sandboxes/{id}/run?stream=true"),
            json!({"command": "long"}),
        ))
        .await
        .expect("infallible");
    let mut body = resp.into_body().into_data_stream();
    let first = body.next().await.expect("a frame").expect("bytes");
    assert!(String::from_utf8_lossy(&first).contains("started"));
    drop(body);
    let cmd_id = app.store.list_commands(&id, 10, 0).await.expect("list").0[0]
        .id
        .clone();
    gate.notify_one();
    let c = wait_for_status(&app, &cmd_id, "completed").await;
    assert_eq!(c.exit_code, Some(7));
    assert_eq!(c.stdout, "partial\nafter\n");
}

#[tokio::test]
async fn output_is_capped_and_memory_stays_bounded() {
    let config = Config {
        output_cap_bytes: 64 * 1024,
        ..Config::default()
    };
    let app = app_with(config).await;
    let id = running(&app).await;
    // 256 MiB in 64 KiB chunks, produced lazily: a controller that kept the output
    // would grow by at least that much.
    const CHUNKS: usize = 4096;
    app.agents.script_exec(|_| {
        futures::stream::iter(0..CHUNKS)
            .map(|_| Ok(ExecEvent::Stdout(vec![b'x'; 64 * 1024])))
            .chain(futures::stream::iter(vec![Ok(exit(0))]))
            .boxed()
    });
    // The process's resident memory, sampled while the output streams through.
    let baseline = resident_bytes();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(baseline));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(resident_bytes(), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        })
    };
    let (s, v) = app
        .post(
            &format!("/v1/sandboxes/{id}/run"),
            json!({"command": "yes"}),
        )
        .await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.join().expect("sampler");
    let growth = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(baseline);
    // 256 MiB went through; what stayed resident is the cap plus the bounded queue and
    // whatever the other tests of this binary allocate meanwhile.
    assert!(
        growth < 64 * 1024 * 1024,
        "resident memory grew by {} MiB while 256 MiB of output streamed",
        growth / (1024 * 1024)
    );
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["command"]["truncated"], true);
    assert_eq!(
        v["command"]["stdout"].as_str().expect("stdout").len(),
        64 * 1024
    );
    assert_eq!(
        app.agents.execs.lock().expect("lock")[0].output_cap_bytes,
        64 * 1024
    );
}

#[tokio::test]
async fn a_broken_stream_is_recorded_as_lost() {
    let app = app().await;
    let id = running(&app).await;
    app.agents
        .script_exec(|_| events(vec![ExecEvent::Started { at_unix_ms: 1 }]));
    let (s, v) = app
        .post(&format!("/v1/sandboxes/{id}/run"), json!({"command": "x"}))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["command"]["status"], "lost");
    assert_eq!(v["command"]["exit_code"], -1);
    assert!(
        v["command"]["error"]
            .as_str()
            .expect("error")
            .contains("without an exit")
    );
}

#[tokio::test]
async fn files_round_trip_and_paths_are_checked() {
    let app = app().await;
    let id = running(&app).await;
    let base = format!("/v1/sandboxes/{id}/files");
    let (s, v) = app
        .post(
            &format!("{base}/write"),
            json!({"path": "/tmp/a.txt", "content": "hello world", "mode": "0600"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"path": "/tmp/a.txt", "size": 11}));
    let (_, v) = app
        .post(
            &format!("{base}/read"),
            json!({"path": "/tmp/a.txt", "offset": 6, "limit": 3}),
        )
        .await;
    assert_eq!(
        v,
        json!({"path": "/tmp/a.txt", "content": "wor", "size": 11, "truncated": true, "encoding": "utf-8"})
    );
    let (s, _) = app
        .post(
            &format!("{base}/write"),
            json!({"path": "/tmp/b.bin", "content": "AP+A", "encoding": "base64"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(app.agents.file("/tmp/b.bin"), Some(vec![0x00, 0xff, 0x80]));
    let (_, v) = app
        .post(&format!("{base}/read"), json!({"path": "/tmp/b.bin"}))
        .await;
    assert_eq!(v["encoding"], "base64");
    assert_eq!(v["content"], "AP+A");
    assert_eq!(v["truncated"], false);
    for bad in ["tmp/a", "/tmp/../etc/passwd", "/tmp/a\u{0}b", "/tmp//a"] {
        assert_error(
            app.post(&format!("{base}/read"), json!({"path": bad}))
                .await,
            StatusCode::BAD_REQUEST,
            "path",
        );
    }
    assert_error(
        app.post(&format!("{base}/read"), json!({"path": "/nope"}))
            .await,
        StatusCode::NOT_FOUND,
        "No such file",
    );
    let execs_before = app.agents.execs.lock().expect("lock").len();
    assert_error(
        app.post(
            &format!("{base}/write"),
            json!({"path": "/etc/shadow", "content": "x"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "denied_paths",
    );
    assert_eq!(app.agents.execs.lock().expect("lock").len(), execs_before);
    let (_, v) = app.get(&format!("/v1/sandboxes/{id}/commands")).await;
    assert_eq!(v["commands"][0]["status"], "denied");
    assert_eq!(v["commands"][0]["kind"], "file_write");
    assert_error(
        app.post(
            &format!("{base}/write"),
            json!({"path": "/tmp/x", "content": "!!", "encoding": "base64"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "base64",
    );
}

#[tokio::test]
async fn edits_need_exactly_one_match() {
    let app = app().await;
    let id = running(&app).await;
    let uri = format!("/v1/sandboxes/{id}/files/edit");
    app.agents
        .put_file("/etc/app.conf", b"port = 80\nhost = a\nhost = b\n");
    let (s, v) = app
        .post(
            &uri,
            json!({"path": "/etc/app.conf", "old_str": "port = 80", "new_str": "port = 8080"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v, json!({"path": "/etc/app.conf", "replaced": 1}));
    assert_eq!(
        app.agents.file("/etc/app.conf").expect("file"),
        b"port = 8080\nhost = a\nhost = b\n"
    );
    assert_error(
        app.post(
            &uri,
            json!({"path": "/etc/app.conf", "old_str": "host = ", "new_str": "h"}),
        )
        .await,
        StatusCode::CONFLICT,
        "more than once",
    );
    assert_error(
        app.post(
            &uri,
            json!({"path": "/etc/app.conf", "old_str": "absent", "new_str": "h"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "does not occur",
    );
    let (s, v) = app
        .post(
            &uri,
            json!({"path": "/etc/new.conf", "old_str": "", "new_str": "fresh"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["replaced"], 0);
    assert_eq!(app.agents.file("/etc/new.conf").expect("file"), b"fresh");
    assert_error(
        app.post(
            &uri,
            json!({"path": "/etc/new.conf", "old_str": "", "new_str": "again"}),
        )
        .await,
        StatusCode::CONFLICT,
        "exists",
    );
}

#[tokio::test]
async fn access_certificates_are_issued_listed_and_revoked() {
    let app = app().await;
    let id = running(&app).await;
    let user_key = crate::testing::fake_agents::test_ca()
        .public_key()
        .to_owned();
    // No IP yet.
    assert_error(
        app.post(
            "/v1/access/request",
            json!({"sandbox_id": id, "user_id": "alice", "public_key": user_key}),
        )
        .await,
        StatusCode::CONFLICT,
        "IP",
    );
    let v = app
        .create(json!({"source_vm_name": "debian-12", "agent_id": "a", "wait_for_ip": true}))
        .await;
    let id = v["sandbox"]["id"].as_str().expect("id").to_owned();
    let (s, v) = app
        .post(
            "/v1/access/request",
            json!({"sandbox_id": id, "user_id": "alice", "public_key": user_key, "ttl_minutes": 2}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["ssh_port"], 22);
    assert_eq!(v["username"], "root");
    assert_eq!(v["ttl_seconds"], 120);
    assert_eq!(v["vm_ip_address"], "192.168.122.10");
    let cert = Certificate::from_openssh(v["certificate"].as_str().expect("cert")).expect("cert");
    // For root on this sandbox only.
    assert_eq!(cert.valid_principals(), [format!("sbx:{id}:root")]);
    assert!(
        v["instructions"]
            .as_str()
            .expect("text")
            .contains(&format!("on sandbox {id} only"))
    );
    let ext: Vec<&String> = cert.extensions().keys().collect();
    assert_eq!(ext, ["permit-pty"]);
    let cert_id = v["certificate_id"].as_str().expect("id").to_owned();
    for (body, field) in [
        (
            json!({"sandbox_id": id, "user_id": "a", "public_key": user_key, "ttl_minutes": 11}),
            "ttl_minutes",
        ),
        (
            json!({"sandbox_id": id, "user_id": "a", "public_key": "ssh-ed25519 AAAA"}),
            "public_key",
        ),
        (
            json!({"sandbox_id": id, "user_id": "", "public_key": user_key}),
            "user_id",
        ),
        (
            json!({"sandbox_id": id, "user_id": "a", "public_key": user_key, "username": "a;b"}),
            "username",
        ),
    ] {
        assert_error(
            app.post("/v1/access/request", body).await,
            StatusCode::BAD_REQUEST,
            field,
        );
    }
    let (_, v) = app.get("/v1/access/certificates").await;
    assert_eq!(v["total"], 1);
    let (s, v) = app.get(&format!("/v1/access/certificate/{cert_id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["certificate"]["revoked_at"].is_null());
    let (s, v) = app
        .delete(&format!("/v1/access/certificate/{cert_id}"))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["certificate"]["revoked_at"].is_string());
    assert_eq!(v["revocation_applied"], true);
    let revoked = app
        .agents
        .file("/etc/ssh/fluid_revoked_keys")
        .expect("revoked keys written");
    assert_eq!(String::from_utf8_lossy(&revoked).trim(), user_key.trim());
    let (s, _) = app.get("/v1/access/certificate/CRT-nope").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn ssh_keys_are_added_and_checked() {
    let app = app().await;
    let id = running(&app).await;
    let key = crate::testing::fake_agents::test_ca()
        .public_key()
        .to_owned();
    let uri = format!("/v1/sandboxes/{id}/sshkey");
    let (s, _) = app
        .post(&uri, json!({"public_key": key, "username": "dev"}))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let keys = app
        .agents
        .file("/home/dev/.ssh/authorized_keys")
        .expect("written");
    assert!(String::from_utf8_lossy(&keys).contains(key.trim()));
    assert_error(
        app.post(&uri, json!({"public_key": "nope", "username": "dev"}))
            .await,
        StatusCode::BAD_REQUEST,
        "public_key",
    );
    assert_error(
        app.post(&uri, json!({"public_key": key, "username": "x y"}))
            .await,
        StatusCode::BAD_REQUEST,
        "username",
    );
}

#[tokio::test]
async fn watchers_see_live_activity() {
    let app = app().await;
    let id = running(&app).await;
    let resp = app
        .admin_router()
        .oneshot(
            Request::get(format!("/v1/sandboxes/{id}/stream"))
                .body(Body::empty())
                .expect("req"),
        )
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body().into_data_stream();
    let (s, _) = app
        .post(
            &format!("/v1/sandboxes/{id}/run"),
            json!({"command": "date"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let mut text = String::new();
    while !text.contains("event: exit") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("activity in time")
            .expect("frame")
            .expect("bytes");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let names: Vec<String> = parse_sse(&text).into_iter().map(|(e, _)| e).collect();
    assert_eq!(names, ["started", "stdout", "exit"]);
}

/// This process's resident set size, from `/proc/self/statm`.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages in /proc/self/statm");
    pages * 4096
}
