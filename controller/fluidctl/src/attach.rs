//! `fluidctl attach`: an interactive shell in a sandbox over the controller's attach
//! WebSocket (`GET /v1/sandboxes/{id}/attach`).
//!
//! Frames: binary frames we send are stdin bytes, a text frame
//! `{"resize":{"cols":N,"rows":M}}` resizes the remote terminal; binary frames we get
//! are terminal output, and the last text frame is `{"exit":{…}}` before the close.
//!
//! With a terminal on stdin it is put in raw mode for the session (restored by a guard
//! on every way out, panics included), window changes are sent as resizes, and Ctrl-]
//! detaches. Without one (a pipe) the terminal settings are left alone and the bytes
//! are forwarded as they are; at the end of the input a Ctrl-D (EOT) is sent, which the
//! remote terminal turns into end-of-file for the shell.

use std::io::{IsTerminal as _, Read as _, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use fluid_client::types::{AttachControl, AttachEvent, AttachExit, ErrorBody, TerminalSize};
use fluid_client::{ClientError, encode_component};
use futures::{Sink, SinkExt as _, Stream, StreamExt as _};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::Ctx;
use crate::render;
use crate::sandboxes::check_id;

/// Ctrl-]: detaches (like telnet's escape).
pub const DETACH_BYTE: u8 = 0x1d;
/// Ctrl-D: end of input for a shell reading a terminal in canonical mode.
const EOT: u8 = 0x04;
/// The terminal size when none can be found (no terminal, no `COLUMNS` / `LINES`).
const DEFAULT_SIZE: TerminalSize = TerminalSize { cols: 80, rows: 24 };
/// The largest size the controller accepts, per dimension.
const MAX_DIMENSION: u32 = 1000;
/// How long to wait, after detaching, for the controller's exit frame and close.
const DETACH_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  fluidctl attach SBX-1a2b3c4d
  fluidctl attach SBX-1a2b3c4d --user ubuntu
  printf 'make test\\nexit $?\\n' | fluidctl attach SBX-1a2b3c4d

Opens a login shell on a terminal in the sandbox, sized like yours and with your \
$TERM. Exit the shell or press Ctrl-] to detach; fluidctl exits with the shell's exit \
status (0 after a detach). With stdin not a terminal, the input is forwarded as it is \
(no raw mode, no Ctrl-] escape) and a Ctrl-D is sent at its end. The session is \
recorded in the sandbox's commands (kind attach). Needs an http:// --url (ws://).")]
pub struct AttachArgs {
    /// Sandbox id (`SBX-…`).
    pub sandbox: String,
    /// Unix user to log in as [default: root].
    #[arg(long, short = 'u', value_name = "USER", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub user: Option<String>,
}

/// The attach URL: the client's (`ws://…/attach?cols=&rows=`) plus `user` and `term`
/// when given (the controller defaults to root and xterm-256color).
pub fn attach_url(
    base: &str,
    sandbox_id: &str,
    size: TerminalSize,
    user: Option<&str>,
    term: Option<&str>,
) -> String {
    let mut url = fluid_client::attach_url(base, sandbox_id, size.cols, size.rows);
    if let Some(u) = user {
        url.push_str("&user=");
        url.push_str(&encode_component(u));
    }
    if let Some(t) = term.map(str::trim).filter(|t| !t.is_empty()) {
        url.push_str("&term=");
        url.push_str(&encode_component(t));
    }
    url
}

/// Clamps a size into what the controller accepts (1 to 1000 per dimension); zero, as
/// some terminals report before they are drawn, is not a size.
fn clamp_size(cols: u32, rows: u32) -> Option<TerminalSize> {
    (cols > 0 && rows > 0).then(|| TerminalSize {
        cols: cols.min(MAX_DIMENSION),
        rows: rows.min(MAX_DIMENSION),
    })
}

/// A size from `COLUMNS` / `LINES` (as shells export them), when both are numbers.
pub fn size_from_env(columns: Option<&str>, lines: Option<&str>) -> Option<TerminalSize> {
    let cols = columns?.trim().parse().ok()?;
    let rows = lines?.trim().parse().ok()?;
    clamp_size(cols, rows)
}

/// The local terminal's size: `TIOCGWINSZ` on stdout, else stdin, when one is a
/// terminal; else `COLUMNS` / `LINES`; else 80×24.
pub fn terminal_size() -> TerminalSize {
    let from_tty = if std::io::stdout().is_terminal() {
        rustix::termios::tcgetwinsize(std::io::stdout()).ok()
    } else if std::io::stdin().is_terminal() {
        rustix::termios::tcgetwinsize(std::io::stdin()).ok()
    } else {
        None
    };
    from_tty
        .and_then(|w| clamp_size(u32::from(w.ws_col), u32::from(w.ws_row)))
        .or_else(|| {
            size_from_env(
                std::env::var("COLUMNS").ok().as_deref(),
                std::env::var("LINES").ok().as_deref(),
            )
        })
        .unwrap_or(DEFAULT_SIZE)
}

/// Puts stdin's terminal in raw mode and restores the saved settings when dropped
/// (on return, on error and while unwinding from a panic).
struct RawMode {
    saved: rustix::termios::Termios,
}

impl RawMode {
    fn enter() -> anyhow::Result<Self> {
        use rustix::termios::{OptionalActions, tcgetattr, tcsetattr};
        let saved = tcgetattr(std::io::stdin()).context("cannot read the terminal settings")?;
        let mut raw = saved.clone();
        raw.make_raw();
        tcsetattr(std::io::stdin(), OptionalActions::Now, &raw)
            .context("cannot put the terminal in raw mode")?;
        Ok(Self { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // Nothing better to do if this fails; `reset` mends the terminal.
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
    }
}

/// Splits an input chunk at the first Ctrl-]: the bytes to send before it and whether
/// it was there (the rest of the chunk is dropped with the session).
pub fn split_at_detach(chunk: &[u8]) -> (&[u8], bool) {
    match chunk.iter().position(|b| *b == DETACH_BYTE) {
        Some(i) => (&chunk[..i], true),
        None => (chunk, false),
    }
}

/// The text frame that resizes the remote terminal.
pub fn resize_frame(size: TerminalSize) -> String {
    // A struct of two numbers always serialises.
    serde_json::to_string(&AttachControl::Resize(size)).unwrap_or_default()
}

/// What a text frame from the controller says: `Some` for the exit frame, `None` for
/// anything else (ignored, as frames a newer controller may add).
pub fn parse_event(text: &str) -> Option<AttachExit> {
    match serde_json::from_str::<AttachEvent>(text) {
        Ok(AttachEvent::Exit(e)) => Some(e),
        Err(_) => None,
    }
}

/// Something for the session to send.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    /// Bytes read from stdin.
    Stdin(Vec<u8>),
    /// The end of stdin.
    Eof,
    /// The local window changed size.
    Resize(TerminalSize),
}

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// The shell ended; the controller sent its exit frame.
    Exited(AttachExit),
    /// We detached (Ctrl-]); the exit frame, if it came within [`DETACH_GRACE`].
    Detached(Option<AttachExit>),
}

/// Runs a session over a connected socket until the exit frame and close, or a detach.
/// `detach_key`: whether Ctrl-] detaches and the end of input detaches (a terminal)
/// rather than sending Ctrl-D (a pipe). Output goes to `out` as it comes.
pub async fn session<S, W>(
    ws: S,
    mut input: mpsc::Receiver<Input>,
    detach_key: bool,
    out: &mut W,
) -> anyhow::Result<Ending>
where
    S: Stream<Item = Result<Message, tungstenite::Error>>
        + Sink<Message, Error = tungstenite::Error>
        + Unpin,
    W: Write,
{
    let (mut sink, mut frames) = ws.split();
    let mut exit: Option<AttachExit> = None;
    let mut input_open = true;
    let mut detached = false;
    // Armed on detach.
    let grace = tokio::time::sleep(DETACH_GRACE);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            frame = frames.next() => match frame {
                None | Some(Ok(Message::Close(_))) => break,
                Some(Ok(Message::Binary(b))) => {
                    // A closed stdout is not worth ending the shell for.
                    let _ = out.write_all(&b).and_then(|()| out.flush());
                }
                Some(Ok(Message::Text(t))) => {
                    if let Some(e) = parse_event(t.as_str()) {
                        exit = Some(e);
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(e)) => {
                    // A socket dropped right after the exit frame or a detach is the end
                    // we expected anyway.
                    if exit.is_some() || detached {
                        break;
                    }
                    return Err(anyhow::Error::new(e)
                        .context("the connection to the controller broke"));
                }
            },
            next = input.recv(), if input_open => {
                let mut send: Vec<Message> = Vec::new();
                let mut detach = false;
                match next {
                    Some(Input::Stdin(bytes)) => {
                        let (fwd, hit) = if detach_key {
                            split_at_detach(&bytes)
                        } else {
                            (&bytes[..], false)
                        };
                        if !fwd.is_empty() {
                            send.push(Message::binary(fwd.to_vec()));
                        }
                        detach = hit;
                    }
                    Some(Input::Eof) | None if detach_key => detach = true,
                    Some(Input::Eof) | None => {
                        send.push(Message::binary(vec![EOT]));
                        input_open = false;
                    }
                    Some(Input::Resize(size)) => send.push(Message::text(resize_frame(size))),
                }
                for m in send {
                    if sink.send(m).await.is_err() {
                        // The read side says why (usually the close that follows).
                        input_open = false;
                        break;
                    }
                }
                if detach {
                    detached = true;
                    input_open = false;
                    // Closing hangs the shell up; the controller then sends its exit frame.
                    let _ = sink.close().await;
                    grace.as_mut().reset(tokio::time::Instant::now() + DETACH_GRACE);
                }
            },
            () = &mut grace, if detached => break,
        }
    }
    if detached {
        return Ok(Ending::Detached(exit));
    }
    exit.map(Ending::Exited).ok_or_else(|| {
        anyhow::anyhow!("the controller closed the connection before the session ended")
    })
}

/// The exit status for an ending, and what to say on stderr.
pub fn outcome(sandbox: &str, ending: &Ending) -> (ExitCode, Vec<String>) {
    match ending {
        Ending::Exited(e) => {
            let why = e
                .error
                .as_deref()
                .map(render::one_line)
                .filter(|e| !e.is_empty());
            match u8::try_from(e.exit_code) {
                Ok(code) => (
                    ExitCode::from(code),
                    why.map(|w| format!("warning: {w}")).into_iter().collect(),
                ),
                Err(_) => {
                    let why = why.map_or_else(String::new, |w| format!(": {w}"));
                    (
                        ExitCode::FAILURE,
                        vec![format!(
                            "error: the session in {sandbox} ended without an exit status{why}"
                        )],
                    )
                }
            }
        }
        Ending::Detached(e) => {
            let session = e
                .as_ref()
                .map(|e| e.session_id.as_str())
                .filter(|s| !s.is_empty())
                .map_or_else(String::new, |s| format!(" (session {s})"));
            (
                ExitCode::SUCCESS,
                vec![format!("[detached from {sandbox}{session}]")],
            )
        }
    }
}

/// An HTTP answer instead of the upgrade: the controller's JSON error, shown like any
/// other API error.
fn refused(status: tungstenite::http::StatusCode, body: Option<&[u8]>) -> anyhow::Error {
    let bytes = body.unwrap_or_default();
    let body = serde_json::from_slice::<ErrorBody>(bytes).unwrap_or_else(|_| ErrorBody {
        error: String::from_utf8_lossy(bytes).trim().to_owned(),
        code: status.as_u16(),
        details: String::new(),
    });
    anyhow::Error::new(ClientError::Api { status, body })
}

/// Opens the WebSocket, with the bearer token when there is one.
async fn connect(
    url: &str,
    token: Option<&str>,
    base: &str,
) -> anyhow::Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
> {
    if url.starts_with("wss://") {
        anyhow::bail!(
            "attach over https:// (wss://) is not supported by this fluidctl; use an http:// --url"
        );
    }
    let mut req = url
        .into_client_request()
        .with_context(|| format!("`{url}` is not a valid attach URL"))?;
    if let Some(t) = token {
        let value = HeaderValue::from_str(&format!("Bearer {t}"))
            .context("the token cannot be sent in an HTTP header")?;
        req.headers_mut().insert(header::AUTHORIZATION, value);
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => Err(refused(resp.status(), resp.body().as_deref())),
        // tungstenite's texts already include their source; no chain to repeat.
        Err(tungstenite::Error::Io(e)) => Err(anyhow::anyhow!(
            "the controller is unreachable at {base}: {e}"
        )),
        Err(e) => Err(anyhow::anyhow!(
            "the WebSocket handshake with {base} failed: {e}"
        )),
    }
}

/// Reads stdin on a thread of its own (a blocking read cannot be cancelled, and tokio's
/// stdin would hold up the runtime's shutdown until the next key press).
fn spawn_stdin_reader(tx: mpsc::Sender<Input>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 8192];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.blocking_send(Input::Eof);
                    return;
                }
                Ok(n) => {
                    if tx.blocking_send(Input::Stdin(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
}

pub async fn run(ctx: &Ctx, args: AttachArgs) -> anyhow::Result<ExitCode> {
    let id = check_id(&args.sandbox)?;
    if ctx.json {
        anyhow::bail!("attach is interactive; --json does not apply to it");
    }
    let tty = std::io::stdin().is_terminal();
    let term = std::env::var("TERM").ok();
    let url = attach_url(
        ctx.client.base_url(),
        id,
        terminal_size(),
        args.user.as_deref(),
        term.as_deref(),
    );
    let ws = connect(&url, ctx.token.as_deref(), &ctx.url)
        .await
        .with_context(|| format!("cannot attach to {id}"))?;
    let user = args.user.as_deref().unwrap_or("root");
    if tty {
        eprintln!("[attached to {id} as {user} — exit the shell or press Ctrl-] to detach]");
    } else {
        eprintln!("[attached to {id} as {user} — forwarding stdin]");
    }

    let (tx, rx) = mpsc::channel(64);
    // Raw mode from here on; the guard restores the terminal however this returns.
    let raw = if tty { Some(RawMode::enter()?) } else { None };
    let winch = if tty {
        let tx = tx.clone();
        let mut sig = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
            .context("cannot watch for window size changes")?;
        Some(tokio::spawn(async move {
            while sig.recv().await.is_some() {
                if tx.send(Input::Resize(terminal_size())).await.is_err() {
                    return;
                }
            }
        }))
    } else {
        None
    };
    spawn_stdin_reader(tx);

    let ending = session(ws, rx, tty, &mut std::io::stdout()).await;
    if let Some(w) = winch {
        w.abort();
    }
    drop(raw);
    if tty {
        // The remote shell may leave the cursor anywhere; start our lines on their own.
        eprintln!();
    }
    let (code, notes) = outcome(id, &ending.with_context(|| format!("attached to {id}"))?);
    for n in notes {
        eprintln!("{n}");
    }
    Ok(code)
}

#[cfg(test)]
mod tests;
