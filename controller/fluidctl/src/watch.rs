//! `fluidctl watch`: follow a sandbox's live activity.

use std::collections::HashMap;
use std::io::Write as _;

use chrono::{DateTime, TimeZone, Utc};
use clap::Args;
use fluid_client::client::SseEvent;
use fluid_client::types::{CommandStarted, OutputChunk, RunCommandResponse};

use crate::sandboxes::check_id;
use crate::{Ctx, encoding, render};

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Sandbox id (`SBX-…`).
    pub sandbox: String,
}

/// Where a rendered line goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    Stdout,
    Stderr,
}

/// Turns events into lines. Output chunks are cut anywhere, so partial lines wait per
/// command and stream until their newline or the command's exit.
#[derive(Debug)]
pub struct Watcher<Tz> {
    tz: Tz,
    partial: HashMap<(String, bool), Vec<u8>>,
}

impl<Tz: TimeZone> Watcher<Tz>
where
    Tz::Offset: std::fmt::Display,
{
    pub fn new(tz: Tz) -> Self {
        Self {
            tz,
            partial: HashMap::new(),
        }
    }

    fn flush(&mut self, command_id: &str, out: &mut Vec<(Out, String)>) {
        for stderr in [false, true] {
            if let Some(rest) = self.partial.remove(&(command_id.to_owned(), stderr))
                && !rest.is_empty()
            {
                out.push((
                    if stderr { Out::Stderr } else { Out::Stdout },
                    render::watch_output(command_id, &String::from_utf8_lossy(&rest)),
                ));
            }
        }
    }

    pub fn handle(&mut self, ev: &SseEvent, now: DateTime<Utc>) -> Vec<(Out, String)> {
        let mut out = Vec::new();
        match ev.event.as_str() {
            "started" => match serde_json::from_value::<CommandStarted>(ev.data.clone()) {
                Ok(s) => out.push((Out::Stdout, render::watch_started(&s, &self.tz))),
                Err(e) => out.push((
                    Out::Stderr,
                    format!("warning: malformed started event: {e}"),
                )),
            },
            name @ ("stdout" | "stderr") => {
                let stderr = name == "stderr";
                let chunk = match serde_json::from_value::<OutputChunk>(ev.data.clone()) {
                    Ok(c) => c,
                    Err(e) => {
                        out.push((Out::Stderr, format!("warning: malformed {name} event: {e}")));
                        return out;
                    }
                };
                let bytes = match encoding::decode(&chunk.data, &chunk.encoding) {
                    Ok(b) => b,
                    Err(e) => {
                        out.push((Out::Stderr, format!("warning: {e:#}")));
                        return out;
                    }
                };
                let buf = self
                    .partial
                    .entry((chunk.command_id.clone(), stderr))
                    .or_default();
                buf.extend_from_slice(&bytes);
                while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=nl).collect();
                    let text = String::from_utf8_lossy(&line[..nl]);
                    let text = text.strip_suffix('\r').unwrap_or(&text);
                    out.push((
                        if stderr { Out::Stderr } else { Out::Stdout },
                        render::watch_output(&chunk.command_id, text),
                    ));
                }
            }
            "exit" => match serde_json::from_value::<RunCommandResponse>(ev.data.clone()) {
                Ok(r) => {
                    self.flush(&r.command.id, &mut out);
                    out.push((Out::Stdout, render::watch_exit(&r.command, &self.tz)));
                }
                Err(e) => out.push((Out::Stderr, format!("warning: malformed exit event: {e}"))),
            },
            "lagged" => {
                let skipped = ev.data["skipped"].as_u64().unwrap_or(0);
                out.push((Out::Stderr, render::watch_lagged(skipped, now, &self.tz)));
            }
            _ => {}
        }
        out
    }
}

fn print(lines: Vec<(Out, String)>) {
    for (to, line) in lines {
        // A closed pipe is not worth a panic; the next write fails the same way.
        let _ = match to {
            Out::Stdout => {
                let mut o = std::io::stdout().lock();
                writeln!(o, "{line}").and_then(|()| o.flush())
            }
            Out::Stderr => writeln!(std::io::stderr().lock(), "{line}"),
        };
    }
}

pub async fn run(ctx: &Ctx, args: WatchArgs) -> anyhow::Result<()> {
    let id = check_id(&args.sandbox)?;
    let json = ctx.json;
    let mut watcher = Watcher::new(chrono::Local);
    if !json {
        eprintln!("watching {id} (Ctrl-C to stop)");
    }
    let follow = ctx.client.watch_sandbox(id, |ev| {
        if json {
            let line = serde_json::json!({ "event": ev.event, "data": ev.data });
            print(vec![(Out::Stdout, line.to_string())]);
        } else {
            print(watcher.handle(ev, Utc::now()));
        }
    });
    tokio::select! {
        res = follow => {
            res?;
            if !json {
                eprintln!("the controller closed the stream");
            }
        }
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::Parser;
    use serde_json::json;

    fn ev(event: &str, data: serde_json::Value) -> SseEvent {
        SseEvent {
            event: event.to_owned(),
            data,
        }
    }

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 3, 1, 12, 0, 0)
            .single()
            .expect("valid time")
    }

    #[test]
    fn watch_parses() {
        let cli = Cli::try_parse_from(["fluidctl", "watch", "SBX-1"]).expect("parses");
        assert!(matches!(cli.command, Command::Watch(a) if a.sandbox == "SBX-1"));
        assert!(Cli::try_parse_from(["fluidctl", "watch"]).is_err());
    }

    #[test]
    fn a_command_from_start_to_exit() {
        let mut w = Watcher::new(Utc);
        let id = "CMD-a1b2c3d4e5";
        let out = w.handle(
            &ev(
                "started",
                json!({"command_id": id, "sandbox_id": "SBX-1", "command": "make", "started_at": "2025-03-01T12:00:00Z"}),
            ),
            t0(),
        );
        assert_eq!(
            out,
            [(Out::Stdout, "[12:00:00] a1b2c3d4 $ make".to_owned())]
        );
        let chunk = |event: &str, data: &str, enc: &str| {
            ev(
                event,
                json!({"command_id": id, "data": data, "encoding": enc}),
            )
        };
        assert!(w.handle(&chunk("stdout", "hel", "utf-8"), t0()).is_empty());
        assert_eq!(
            w.handle(&chunk("stdout", "lo\r\nwor", "utf-8"), t0()),
            [(Out::Stdout, "a1b2c3d4 | hello".to_owned())]
        );
        // base64 chunks (not UTF-8) are decoded and shown lossily.
        assert_eq!(
            w.handle(&chunk("stderr", "/wo=", "base64"), t0()),
            [(Out::Stderr, "a1b2c3d4 | \u{fffd}".to_owned())]
        );
        assert_eq!(
            w.handle(&chunk("stderr", "!!", "base64"), t0())[0].0,
            Out::Stderr
        );
        let exit = json!({"command": {
            "id": id, "sandbox_id": "SBX-1", "command": "make", "env_json": "{}",
            "stdout": "", "stderr": "", "exit_code": 2,
            "started_at": "2025-03-01T12:00:00Z", "ended_at": "2025-03-01T12:00:01Z",
            "duration_ms": 1000, "status": "failed"
        }});
        let out = w.handle(&ev("exit", exit), t0());
        assert_eq!(
            out,
            [
                (Out::Stdout, "a1b2c3d4 | wor".to_owned()),
                (
                    Out::Stdout,
                    "[12:00:01] a1b2c3d4 exit 2 (1.0s, failed)".to_owned()
                ),
            ]
        );
        assert!(w.partial.is_empty());
    }

    #[test]
    fn lagged_and_unknown_events() {
        let mut w = Watcher::new(Utc);
        assert_eq!(
            w.handle(&ev("lagged", json!({"skipped": 3})), t0()),
            [(
                Out::Stderr,
                "[12:00:00] (fell behind: 3 events skipped)".to_owned()
            )]
        );
        assert!(w.handle(&ev("message", json!("hi")), t0()).is_empty());
        let out = w.handle(&ev("started", json!({"nope": 1})), t0());
        assert_eq!(out[0].0, Out::Stderr);
    }
}

/// The streaming commands against a one-shot fake controller on a local socket.
#[cfg(test)]
mod http_tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// Serves one request with `body` as an SSE answer; returns the base URL and the
    /// request line it received.
    async fn serve_once(body: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.expect("accept");
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            let head =
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";
            sock.write_all(head.as_bytes()).await.expect("write");
            // Split mid-event, as a network would.
            let (a, b) = body.split_at(body.len() / 2);
            sock.write_all(a.as_bytes()).await.expect("write");
            sock.flush().await.expect("flush");
            sock.write_all(b.as_bytes()).await.expect("write");
            let _ = sock.shutdown().await;
            String::from_utf8_lossy(&req)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned()
        });
        (format!("http://{addr}"), task)
    }

    #[tokio::test]
    async fn watch_sandbox_follows_until_closed() {
        let (url, server) = serve_once(
            ": keep-alive\n\n\
             event: started\ndata: {\"command_id\":\"CMD-1\",\"sandbox_id\":\"SBX-1\",\"command\":\"ls\",\"started_at\":\"2025-03-01T12:00:00Z\"}\n\n\
             event: stdout\ndata: {\"command_id\":\"CMD-1\",\"data\":\"a\\n\",\"encoding\":\"utf-8\"}\n\n\
             event: lagged\ndata: {\"skipped\":2}\n\n",
        )
        .await;
        let client = fluid_client::Client::new(&url).expect("client");
        let mut names = Vec::new();
        client
            .watch_sandbox("SBX-1", |ev| names.push(ev.event.clone()))
            .await
            .expect("stream ends cleanly");
        assert_eq!(names, ["started", "stdout", "lagged"]);
        assert_eq!(
            server.await.expect("server"),
            "GET /v1/sandboxes/SBX-1/stream HTTP/1.1"
        );
    }

    #[tokio::test]
    async fn run_exits_with_the_commands_status() {
        let (url, server) = serve_once(
            "event: stdout\ndata: {\"command_id\":\"CMD-1\",\"data\":\"\",\"encoding\":\"utf-8\"}\n\n\
             event: exit\ndata: {\"command\":{\"id\":\"CMD-1\",\"sandbox_id\":\"SBX-1\",\"command\":\"false\",\
             \"env_json\":\"{}\",\"stdout\":\"\",\"stderr\":\"\",\"exit_code\":3,\
             \"started_at\":\"2025-03-01T12:00:00Z\",\"ended_at\":\"2025-03-01T12:00:01Z\"}}\n\n",
        )
        .await;
        let ctx = crate::Ctx {
            client: fluid_client::Client::new(&url).expect("client"),
            url,
            json: false,
            token: None,
        };
        let args = crate::exec::RunArgs {
            sandbox: "SBX-1".to_owned(),
            user: None,
            workdir: None,
            env: Vec::new(),
            timeout: None,
            no_stream: false,
            command: vec!["false".to_owned()],
        };
        let code = crate::exec::run(&ctx, args).await.expect("ran");
        assert_eq!(code, std::process::ExitCode::from(3));
        assert_eq!(
            server.await.expect("server"),
            "POST /v1/sandboxes/SBX-1/run?stream=true HTTP/1.1"
        );
    }
}
