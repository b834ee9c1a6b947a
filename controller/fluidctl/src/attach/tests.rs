use super::*;
use crate::{Cli, Command};
use clap::Parser;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

fn try_parse(args: &[&str]) -> Result<Cli, clap::Error> {
    let mut full = vec!["fluidctl"];
    full.extend_from_slice(args);
    Cli::try_parse_from(full)
}

#[test]
fn attach_parses() {
    let cli = try_parse(&["attach", "SBX-1"]).expect("parses");
    let Command::Attach(a) = cli.command else {
        panic!("attach")
    };
    assert_eq!(a.sandbox, "SBX-1");
    assert_eq!(a.user, None);
    let cli = try_parse(&["attach", "SBX-1", "--user", "ubuntu"]).expect("parses");
    assert!(matches!(cli.command, Command::Attach(a) if a.user.as_deref() == Some("ubuntu")));
    let cli = try_parse(&["attach", "-u", "bob", "SBX-1"]).expect("parses");
    assert!(matches!(cli.command, Command::Attach(a) if a.user.as_deref() == Some("bob")));
    use clap::error::ErrorKind;
    let kind = |args: &[&str]| try_parse(args).map(|_| ()).expect_err("rejected").kind();
    assert_eq!(kind(&["attach"]), ErrorKind::MissingRequiredArgument);
    assert_eq!(
        kind(&["attach", "SBX-1", "--user", ""]),
        ErrorKind::InvalidValue
    );
    assert_eq!(
        kind(&["attach", "SBX-1", "extra"]),
        ErrorKind::UnknownArgument
    );
}

#[test]
fn urls_carry_user_and_term_encoded() {
    let size = TerminalSize {
        cols: 132,
        rows: 43,
    };
    assert_eq!(
        attach_url("http://ctl:8080", "SBX-1", size, None, None),
        "ws://ctl:8080/v1/sandboxes/SBX-1/attach?cols=132&rows=43"
    );
    assert_eq!(
        attach_url(
            "http://ctl:8080/",
            "SBX-1",
            size,
            Some("dev user&x=1"),
            Some("xterm-256color")
        ),
        "ws://ctl:8080/v1/sandboxes/SBX-1/attach?cols=132&rows=43&user=dev%20user%26x%3D1&term=xterm-256color"
    );
    assert_eq!(
        attach_url("https://f.example", "SBX-1", size, None, Some("  ")),
        "wss://f.example/v1/sandboxes/SBX-1/attach?cols=132&rows=43"
    );
    assert_eq!(encode_component("a.b_c~d-9"), "a.b_c~d-9");
    assert_eq!(encode_component("é/+"), "%C3%A9%2F%2B");
}

#[test]
fn sizes() {
    assert_eq!(
        size_from_env(Some("100"), Some(" 30 ")),
        Some(TerminalSize {
            cols: 100,
            rows: 30
        })
    );
    assert_eq!(
        size_from_env(Some("5000"), Some("1")),
        Some(TerminalSize {
            cols: 1000,
            rows: 1
        })
    );
    assert_eq!(size_from_env(Some("0"), Some("24")), None);
    assert_eq!(size_from_env(Some("wide"), Some("24")), None);
    assert_eq!(size_from_env(None, Some("24")), None);
}

#[test]
fn frames_decode_and_encode() {
    let e = parse_event(r#"{"exit":{"exit_code":3,"error":null,"session_id":"SES-a1b2c3d4e5"}}"#)
        .expect("exit");
    assert_eq!(e.exit_code, 3);
    assert_eq!(e.session_id, "SES-a1b2c3d4e5");
    let e = parse_event(r#"{"exit":{"exit_code":-1,"error":"agent lost"}}"#).expect("exit");
    assert_eq!(e.error.as_deref(), Some("agent lost"));
    assert_eq!(e.session_id, "");
    assert_eq!(parse_event(r#"{"hello":1}"#), None);
    assert_eq!(parse_event("not json"), None);
    assert_eq!(
        resize_frame(TerminalSize {
            cols: 120,
            rows: 40
        }),
        r#"{"resize":{"cols":120,"rows":40}}"#
    );
}

#[test]
fn ctrl_close_bracket_detaches() {
    assert_eq!(split_at_detach(b"ls -l\r"), (&b"ls -l\r"[..], false));
    assert_eq!(split_at_detach(b"ab\x1dcd"), (&b"ab"[..], true));
    assert_eq!(split_at_detach(b"\x1d"), (&b""[..], true));
    assert_eq!(split_at_detach(b""), (&b""[..], false));
    // Other control bytes (Ctrl-C, Ctrl-D, escape sequences) go to the shell.
    assert_eq!(
        split_at_detach(b"\x03\x04\x1b[A"),
        (&b"\x03\x04\x1b[A"[..], false)
    );
}

fn exit(code: i32, error: Option<&str>) -> AttachExit {
    AttachExit {
        exit_code: code,
        error: error.map(str::to_owned),
        session_id: "SES-1".to_owned(),
    }
}

#[test]
fn exit_statuses() {
    let (code, notes) = outcome("SBX-1", &Ending::Exited(exit(0, None)));
    assert_eq!(code, ExitCode::SUCCESS);
    assert!(notes.is_empty());
    assert_eq!(
        outcome("SBX-1", &Ending::Exited(exit(3, None))).0,
        ExitCode::from(3)
    );
    let (code, notes) = outcome("SBX-1", &Ending::Exited(exit(-1, Some("host\nlost"))));
    assert_eq!(code, ExitCode::FAILURE);
    assert_eq!(
        notes,
        ["error: the session in SBX-1 ended without an exit status: host lost"]
    );
    let (code, notes) = outcome("SBX-1", &Ending::Detached(Some(exit(-1, None))));
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(notes, ["[detached from SBX-1 (session SES-1)]"]);
    assert_eq!(
        outcome("SBX-1", &Ending::Detached(None)).1,
        ["[detached from SBX-1]"]
    );
}

#[test]
fn refusals_read_like_api_errors() {
    let e = refused(
        tungstenite::http::StatusCode::CONFLICT,
        Some(br#"{"error":"sandbox SBX-1 is not RUNNING","code":409,"details":"state STOPPED"}"#),
    )
    .context("cannot attach to SBX-1");
    assert_eq!(
        render::error_message(&e, "http://ctl"),
        "cannot attach to SBX-1: sandbox SBX-1 is not RUNNING: state STOPPED (HTTP 409)"
    );
    let e = refused(tungstenite::http::StatusCode::BAD_GATEWAY, None);
    assert_eq!(
        render::error_message(&e, "http://ctl"),
        "Bad Gateway (HTTP 502)"
    );
}

/// A one-connection WebSocket server: records the request line and Authorization,
/// then runs `script` on the socket.
// The handshake callback's `Result<Response, ErrorResponse>` is tungstenite's.
#[allow(clippy::result_large_err)]
async fn serve<F, Fut>(script: F) -> (String, tokio::task::JoinHandle<(String, Vec<Message>)>)
where
    F: FnOnce(tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Vec<Message>> + Send,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.expect("accept");
        let mut seen = String::new();
        let ws = tokio_tungstenite::accept_hdr_async(sock, |req: &Request, resp: Response| {
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            seen = format!("{} {auth}", req.uri());
            Ok(resp)
        })
        .await
        .expect("handshake");
        let got = script(ws).await;
        (seen, got)
    });
    (format!("http://{addr}"), task)
}

#[tokio::test]
async fn a_piped_session_runs_to_the_shells_exit() {
    let (base, server) = serve(|mut ws| async move {
        let mut got = Vec::new();
        // Echo input until the EOT that ends it, then report the exit.
        while let Some(Ok(m)) = ws.next().await {
            let eot = m == Message::binary(vec![EOT]);
            if let Message::Binary(b) = &m {
                ws.send(Message::binary(b.to_vec())).await.expect("echo");
            }
            got.push(m);
            if eot {
                break;
            }
        }
        let exit = r#"{"exit":{"exit_code":3,"error":null,"session_id":"SES-9"}}"#;
        ws.send(Message::text(exit)).await.expect("exit");
        ws.close(None).await.expect("close");
        while ws.next().await.is_some() {}
        got
    })
    .await;
    let url = attach_url(&base, "SBX-1", DEFAULT_SIZE, Some("bob"), Some("dumb"));
    let ws = connect(&url, Some("t0k"), &base).await.expect("connects");
    let (tx, rx) = mpsc::channel(8);
    tx.send(Input::Stdin(b"echo hi\n\x1d".to_vec()))
        .await
        .expect("send");
    tx.send(Input::Eof).await.expect("send");
    let mut out = Vec::new();
    let ending = session(ws, rx, false, &mut out).await.expect("session");
    assert_eq!(ending, Ending::Exited(exit(3, None)).with_session("SES-9"));
    // A pipe forwards Ctrl-] as a byte like any other.
    assert_eq!(out, b"echo hi\n\x1d\x04");
    let (seen, got) = server.await.expect("server");
    assert_eq!(
        seen,
        "/v1/sandboxes/SBX-1/attach?cols=80&rows=24&user=bob&term=dumb Bearer t0k"
    );
    assert_eq!(
        got,
        [
            Message::binary(b"echo hi\n\x1d".to_vec()),
            Message::binary(vec![EOT])
        ]
    );
}

#[tokio::test]
async fn ctrl_close_bracket_closes_the_socket() {
    let (base, server) = serve(|mut ws| async move {
        let mut got = Vec::new();
        while let Some(Ok(m)) = ws.next().await {
            let close = matches!(m, Message::Close(_));
            got.push(m);
            if close {
                break;
            }
        }
        let exit = r#"{"exit":{"exit_code":-1,"error":"hung up","session_id":"SES-7"}}"#;
        // The close handshake may already be done; the client copes either way.
        let _ = ws.send(Message::text(exit)).await;
        let _ = ws.close(None).await;
        got
    })
    .await;
    let ws = connect(
        &attach_url(&base, "SBX-1", DEFAULT_SIZE, None, None),
        None,
        &base,
    )
    .await
    .expect("connects");
    let (tx, rx) = mpsc::channel(8);
    let size = TerminalSize { cols: 90, rows: 30 };
    tx.send(Input::Resize(size)).await.expect("send");
    tx.send(Input::Stdin(b"ls\x1dnot sent".to_vec()))
        .await
        .expect("send");
    let ending = tokio::time::timeout(
        Duration::from_secs(10),
        session(ws, rx, true, &mut Vec::new()),
    )
    .await
    .expect("ends")
    .expect("session");
    assert!(matches!(ending, Ending::Detached(_)), "{ending:?}");
    let (seen, got) = server.await.expect("server");
    assert_eq!(seen, "/v1/sandboxes/SBX-1/attach?cols=80&rows=24 -");
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0], Message::text(resize_frame(size)));
    assert_eq!(got[1], Message::binary(b"ls".to_vec()));
    assert!(matches!(got[2], Message::Close(_)));
}

#[tokio::test]
async fn refusals_and_dead_ends() {
    // An HTTP error instead of the upgrade.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut sock, _) = listener.accept().await.expect("accept");
        let mut buf = vec![0u8; 4096];
        let _ = sock.read(&mut buf).await;
        let body = r#"{"error":"sandbox SBX-1 not found","code":404,"details":""}"#;
        let resp = format!(
            "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        sock.write_all(resp.as_bytes()).await.expect("write");
    });
    let url = attach_url(&base, "SBX-1", DEFAULT_SIZE, None, None);
    let e = connect(&url, None, &base)
        .await
        .map(|_| ())
        .expect_err("refused");
    assert_eq!(
        render::error_message(&e, &base),
        "sandbox SBX-1 not found (HTTP 404)"
    );
    server.await.expect("server");
    // wss:// is refused before any connection.
    let e = connect(
        "wss://f.example/v1/sandboxes/SBX-1/attach",
        None,
        "https://f.example",
    )
    .await
    .map(|_| ())
    .expect_err("no TLS");
    assert!(e.to_string().contains("http://"), "{e}");
    // A close without the exit frame is an error.
    let (base, server) = serve(|mut ws| async move {
        let _ = ws.close(None).await;
        Vec::new()
    })
    .await;
    let ws = connect(
        &attach_url(&base, "SBX-1", DEFAULT_SIZE, None, None),
        None,
        &base,
    )
    .await
    .expect("connects");
    let (_tx, rx) = mpsc::channel(8);
    let e = session(ws, rx, false, &mut Vec::new())
        .await
        .expect_err("no exit frame");
    assert!(e.to_string().contains("before the session ended"), "{e}");
    server.await.expect("server");
}

impl Ending {
    fn with_session(self, id: &str) -> Self {
        match self {
            Self::Exited(mut e) => {
                e.session_id = id.to_owned();
                Self::Exited(e)
            }
            other => other,
        }
    }
}
