//! Interactive sessions over a real WebSocket (the router on 127.0.0.1:0), with the
//! fake agent's toy shell.

use std::time::Duration;

use axum::http::StatusCode;
use futures::{SinkExt as _, StreamExt as _};
use russh::keys::ssh_key::Certificate;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::tests::{TestApp, app, app_with, assert_error};
use crate::agents::AttachInput;
use crate::config::Config;
use crate::work::commands::LiveEvent;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn running(app: &TestApp) -> String {
    let v = app
        .create(json!({"source_vm_name": "debian-12", "agent_id": "agent-7"}))
        .await;
    v["sandbox"]["id"].as_str().expect("id").to_owned()
}

/// Serves the app's router on a real port; returns its base `ws://` URL.
async fn listen(app: &TestApp) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = app.admin_router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("ws://{addr}")
}

async fn connect(url: &str) -> Ws {
    let (ws, resp) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

/// The next frame, with a deadline.
async fn next(ws: &mut Ws) -> Message {
    tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("a frame in time")
        .expect("open")
        .expect("frame")
}

async fn binary(ws: &mut Ws) -> Vec<u8> {
    match next(ws).await {
        Message::Binary(b) => b.to_vec(),
        other => panic!("not binary: {other:?}"),
    }
}

async fn wait_for_status(app: &TestApp, id: &str, want: &str) -> crate::store::CommandRecord {
    for _ in 0..250 {
        if let Some(c) = app.store.get_command(id).await.expect("store")
            && c.status.as_str() == want
        {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("session {id} never became {want}");
}

#[tokio::test]
async fn a_session_bridges_both_ways_and_is_audited() {
    let app = app().await;
    let id = running(&app).await;
    let mut watch = app
        .state
        .commands
        .hubs
        .subscribe(&id)
        .expect("hub subscription");
    let base = listen(&app).await;
    let mut ws = connect(&format!("{base}/v1/sandboxes/{id}/attach?cols=100&rows=30")).await;

    assert_eq!(binary(&mut ws).await, b"welcome root\r\n");
    ws.send(Message::Binary(b"ls\n".to_vec().into()))
        .await
        .expect("stdin");
    assert_eq!(binary(&mut ws).await, b"ls\n");
    ws.send(Message::Text(
        json!({"resize": {"cols": 120, "rows": 40}})
            .to_string()
            .into(),
    ))
    .await
    .expect("resize");
    assert_eq!(binary(&mut ws).await, b"[120x40]");
    // Junk text frames are ignored.
    ws.send(Message::Text("{\"nonsense\":1}".into()))
        .await
        .expect("junk");
    ws.send(Message::Binary(b"exit\n".to_vec().into()))
        .await
        .expect("exit");
    let end: Value = match next(&mut ws).await {
        Message::Text(t) => serde_json::from_str(t.as_str()).expect("json"),
        other => panic!("not the exit frame: {other:?}"),
    };
    assert_eq!(end["exit"]["exit_code"], 0, "{end}");
    assert!(end["exit"]["error"].is_null(), "{end}");
    let session = end["exit"]["session_id"]
        .as_str()
        .expect("session id")
        .to_owned();
    assert!(session.starts_with("SES-"), "{session}");
    assert!(matches!(next(&mut ws).await, Message::Close(_)));

    let opens = app.agents.attaches.lock().expect("lock").clone();
    assert_eq!(opens.len(), 1);
    let open = &opens[0];
    assert_eq!(
        (open.sandbox_id.as_str(), open.session_id.as_str()),
        (id.as_str(), session.as_str())
    );
    assert_eq!(
        (open.user.as_str(), open.term.as_str()),
        ("root", "xterm-256color")
    );
    let size = open.size.expect("size");
    assert_eq!((size.cols, size.rows), (100, 30));
    let cert = Certificate::from_openssh(&open.ssh_certificate).expect("certificate");
    // Bound to the sandbox: no other sandbox's sshd accepts it.
    assert_eq!(cert.valid_principals(), [format!("sbx:{id}:root")]);
    assert!(
        cert.extensions().contains_key("permit-pty"),
        "a PTY needs permit-pty"
    );
    let inputs = app.agents.attach_inputs.lock().expect("lock").clone();
    assert_eq!(
        inputs,
        [
            AttachInput::Stdin(b"ls\n".to_vec()),
            AttachInput::Resize {
                cols: 120,
                rows: 40
            },
            AttachInput::Stdin(b"exit\n".to_vec()),
        ]
    );

    let rec = wait_for_status(&app, &session, "completed").await;
    assert_eq!(rec.kind, "attach");
    assert_eq!(rec.command, "attach (interactive shell as root)");
    assert_eq!(rec.exit_code, Some(0));
    assert_eq!(
        rec.stdout, "welcome root\r\nls\n[120x40]",
        "what the human saw"
    );
    assert!(rec.duration_ms.is_some() && rec.ended_at.is_some());
    let (s, v) = app.get(&format!("/v1/sandboxes/{id}/commands")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["commands"][0]["kind"], "attach", "{v}");

    let LiveEvent::Started(started) = watch.recv().await.expect("started") else {
        panic!("the watcher's first event is not the start");
    };
    assert_eq!(started.command_id, session);
    let LiveEvent::Exit(done) = watch.recv().await.expect("exit") else {
        panic!("the watcher's second event is not the end");
    };
    assert_eq!(
        (done.id.as_str(), done.status.as_str()),
        (session.as_str(), "completed")
    );
}

#[tokio::test]
async fn a_hang_up_ends_the_session_and_the_output_is_capped() {
    let config = Config {
        output_cap_bytes: 8,
        ..Config::default()
    };
    let app = app_with(config).await;
    let id = running(&app).await;
    let base = listen(&app).await;
    let mut ws = connect(&format!(
        "{base}/v1/sandboxes/{id}/attach?user=dev&term=vt100"
    ))
    .await;
    assert_eq!(binary(&mut ws).await, b"welcome dev\r\n");
    ws.close(None).await.expect("close");
    drop(ws);

    let session = {
        let opens = app.agents.attaches.lock().expect("lock");
        let open = opens.first().expect("opened");
        assert_eq!((open.user.as_str(), open.term.as_str()), ("dev", "vt100"));
        let size = open.size.expect("size");
        assert_eq!((size.cols, size.rows), (80, 24), "defaults");
        let cert = Certificate::from_openssh(&open.ssh_certificate).expect("certificate");
        assert_eq!(
            cert.valid_principals(),
            [format!("sbx:{id}:root"), format!("sbx:{id}:dev")]
        );
        open.session_id.clone()
    };
    let rec = wait_for_status(&app, &session, "completed").await;
    assert_eq!(rec.command, "attach (interactive shell as dev)");
    assert_eq!(rec.exit_code, Some(-1));
    assert_eq!(rec.error.as_deref(), Some("hung up"));
    assert_eq!(rec.stdout, "welcome ");
    assert!(rec.truncated);
}

#[tokio::test]
async fn refusals_come_before_the_upgrade() {
    let app = app().await;
    let id = running(&app).await;
    for (query, mentions) in [
        ("cols=0", "cols/rows"),
        ("rows=1001", "cols/rows"),
        ("cols=abc", "invalid query"),
        ("user=A", "user"),
        ("term=x%3By", "term"),
    ] {
        assert_error(
            app.get(&format!("/v1/sandboxes/{id}/attach?{query}")).await,
            StatusCode::BAD_REQUEST,
            mentions,
        );
    }
    assert_error(
        app.get("/v1/sandboxes/junk/attach").await,
        StatusCode::BAD_REQUEST,
        "id",
    );
    assert_error(
        app.get("/v1/sandboxes/SBX-nosuch000/attach").await,
        StatusCode::NOT_FOUND,
        "not found",
    );
    // Valid, but not a WebSocket request.
    let (s, v) = app.get(&format!("/v1/sandboxes/{id}/attach")).await;
    assert!(s.is_client_error(), "{s} {v}");
    assert_eq!(v["code"], s.as_u16(), "{v}");

    let (s, v) = app.post_empty(&format!("/v1/sandboxes/{id}/stop")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_error(
        app.get(&format!("/v1/sandboxes/{id}/attach?cols=80&rows=24"))
            .await,
        StatusCode::CONFLICT,
        "RUNNING",
    );
    // Over a real socket the refusal is the HTTP answer: no upgrade.
    let base = listen(&app).await;
    let err = tokio_tungstenite::connect_async(format!("{base}/v1/sandboxes/{id}/attach"))
        .await
        .expect_err("no upgrade");
    let tokio_tungstenite::tungstenite::Error::Http(resp) = err else {
        panic!("not an HTTP refusal: {err:?}");
    };
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert!(app.agents.attaches.lock().expect("lock").is_empty());
    let (_, v) = app.get(&format!("/v1/sandboxes/{id}/commands")).await;
    assert_eq!(v["total"], 0, "nothing is audited for a refusal: {v}");
}
