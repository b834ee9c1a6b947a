//! Interactive shells on a PTY, one channel of a sandbox's connection each.
//!
//! [`open`] opens a channel, asks for a pseudo-terminal (`pty-req` with the client's
//! TERM and size) and then for root a login shell (`shell`), for another user
//! `exec runuser -l USER` (`fluid_proto::guest::login_command`). Both requests wait
//! for the guest's answer, so a refusal (a certificate without `permit-pty`, say) is an
//! error before any output. Then a task pumps the session:
//!
//! - input ([`ShellInput`]): stdin bytes become channel data, resizes `window-change`
//!   requests. A separate writer task does this, so a shell that does not read its
//!   input never stops its output.
//! - output ([`ShellOutput`]): channel data (and extended data) as it comes, into a
//!   bounded queue: a slow reader slows the channel (SSH window), nothing is buffered
//!   without bound. Then exactly one `Exit`: the shell's status (a signal as 128+n),
//!   or -1 with an error when the channel ended without one.
//!
//! Hanging up: when the input sender is dropped (the client's input stream ended) or
//! the output receiver is dropped (the client went away), the channel is closed; sshd
//! closes the terminal and the shell gets SIGHUP.

use std::sync::Arc;
use std::time::Duration;

use fluid_proto::guest::login_command;
use russh::client::Msg;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Sig};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::ExecError;
use super::pool::Slot;
use super::run::exit_code;

/// Messages queued each way before the other side is slowed down.
pub const QUEUE_DEPTH: usize = 16;
/// How long the guest may take to answer the `pty-req` and `shell`/`exec` requests.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the channel may take to close after a hang-up or after the exit status.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The session to open (from a validated `AttachOpen`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellSpec {
    pub session_id: String,
    /// `root`, or a validated user name (`[a-z_][a-z0-9_-]*`).
    pub user: String,
    /// A validated terminal type.
    pub term: String,
    pub cols: u32,
    pub rows: u32,
}

/// What the client sends after opening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellInput {
    Stdin(Vec<u8>),
    Resize { cols: u32, rows: u32 },
}

/// What the session produces: terminal bytes, then exactly one `Exit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellOutput {
    Data(Vec<u8>),
    Exit {
        /// -1 when the shell had no exit status (hung up, connection lost).
        exit_code: i32,
        error: Option<String>,
    },
}

/// A running session. Dropping `input` hangs up; so does dropping `output`.
#[derive(Debug)]
pub struct Shell {
    pub input: mpsc::Sender<ShellInput>,
    pub output: mpsc::Receiver<ShellOutput>,
}

/// Opens a shell for `spec` on `channel` (its place on its connection: `slot`). With
/// `dedicated`, the connection belongs to this session and is disconnected when it ends.
pub async fn open(
    slot: Slot,
    channel: russh::Channel<Msg>,
    spec: &ShellSpec,
    dedicated: bool,
) -> Result<Shell, ExecError> {
    let (mut read, write) = channel.split();
    let mut early = Vec::new();
    let started = async {
        write
            .request_pty(true, &spec.term, spec.cols, spec.rows, 0, 0, &[])
            .await
            .map_err(|e| ExecError::Unreachable(format!("requesting a terminal: {e}")))?;
        await_reply(
            &mut read,
            &mut early,
            "a terminal (pty-req; does the certificate have permit-pty?)",
        )
        .await?;
        match login_command(&spec.user) {
            None => write.request_shell(true).await,
            Some(cmd) => write.exec(true, cmd).await,
        }
        .map_err(|e| ExecError::Unreachable(format!("starting the shell: {e}")))?;
        await_reply(&mut read, &mut early, "the shell").await
    }
    .await;
    if let Err(e) = started {
        let _ = write.close().await;
        if dedicated {
            super::pool::close_in_background(slot.conn.clone());
        }
        return Err(e);
    }
    let (in_tx, in_rx) = mpsc::channel(QUEUE_DEPTH);
    let (out_tx, out_rx) = mpsc::channel(QUEUE_DEPTH);
    tracing::info!(
        session_id = spec.session_id,
        user = spec.user,
        term = spec.term,
        cols = spec.cols,
        rows = spec.rows,
        dedicated,
        "shell started"
    );
    tokio::spawn(pump(Pump {
        slot,
        dedicated,
        session_id: spec.session_id.clone(),
        read,
        write: Arc::new(write),
        input: in_rx,
        output: out_tx,
        early,
    }));
    Ok(Shell {
        input: in_tx,
        output: out_rx,
    })
}

/// Waits for the answer to a request; data that arrives meanwhile is kept in `early`.
async fn await_reply(
    read: &mut ChannelReadHalf,
    early: &mut Vec<u8>,
    what: &str,
) -> Result<(), ExecError> {
    let wait = async {
        loop {
            match read.wait().await {
                Some(ChannelMsg::Success) => return Ok(()),
                Some(ChannelMsg::Failure) => {
                    return Err(ExecError::Refused(format!(
                        "the guest's sshd refused {what}"
                    )));
                }
                Some(ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. }) => {
                    early.extend_from_slice(&data);
                }
                Some(ChannelMsg::Close | ChannelMsg::Eof) | None => {
                    return Err(ExecError::Unreachable(format!(
                        "the SSH channel closed while asking for {what}"
                    )));
                }
                Some(_) => {}
            }
        }
    };
    tokio::time::timeout(REPLY_TIMEOUT, wait)
        .await
        .map_err(|_| {
            ExecError::Unreachable(format!(
                "no answer within {} s when asking for {what}",
                REPLY_TIMEOUT.as_secs()
            ))
        })?
}

struct Pump {
    slot: Slot,
    dedicated: bool,
    session_id: String,
    read: ChannelReadHalf,
    write: Arc<ChannelWriteHalf<Msg>>,
    input: mpsc::Receiver<ShellInput>,
    output: mpsc::Sender<ShellOutput>,
    early: Vec<u8>,
}

/// Writes input to the channel until the input ends (then hangs up) or the channel
/// is gone. Returns whether it hung up.
async fn write_input(
    write: Arc<ChannelWriteHalf<Msg>>,
    mut input: mpsc::Receiver<ShellInput>,
) -> bool {
    while let Some(i) = input.recv().await {
        let r = match i {
            ShellInput::Stdin(b) => write.data(b.as_slice()).await,
            ShellInput::Resize { cols, rows } => write.window_change(cols, rows, 0, 0).await,
        };
        if r.is_err() {
            return false;
        }
    }
    let _ = write.close().await;
    true
}

async fn pump(p: Pump) {
    let Pump {
        slot,
        dedicated,
        session_id,
        mut read,
        write,
        input,
        output,
        early,
    } = p;
    let started = Instant::now();
    let mut writer = tokio::spawn(write_input(write.clone(), input));
    let mut writer_done = false;
    let mut client_gone = false;
    let mut hung_up = false;
    let mut status: Option<u32> = None;
    let mut signal: Option<Sig> = None;
    let mut deadline: Option<Instant> = None;
    let mut error: Option<String> = None;
    let mut closed = false;
    if !early.is_empty() && output.send(ShellOutput::Data(early)).await.is_err() {
        client_gone = true;
    }
    if client_gone {
        hung_up = true;
        let _ = write.close().await;
        deadline = Some(Instant::now() + CLOSE_TIMEOUT);
    }
    loop {
        let msg = tokio::select! {
            m = read.wait() => m,
            w = &mut writer, if !writer_done => {
                writer_done = true;
                if w.unwrap_or(false) {
                    hung_up = true;
                    deadline.get_or_insert(Instant::now() + CLOSE_TIMEOUT);
                }
                continue;
            }
            () = sleep_until_opt(deadline) => {
                if status.is_none() && signal.is_none() && !hung_up {
                    error = Some("the shell's channel did not close".to_owned());
                }
                break;
            }
        };
        match msg {
            Some(ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. }) => {
                if !client_gone && output.send(ShellOutput::Data(data.to_vec())).await.is_err() {
                    // The client went away: hang up, drain until the channel closes.
                    client_gone = true;
                    hung_up = true;
                    let _ = write.close().await;
                    deadline.get_or_insert(Instant::now() + CLOSE_TIMEOUT);
                }
            }
            Some(ChannelMsg::ExitStatus { exit_status }) => {
                status = Some(exit_status);
                deadline.get_or_insert(Instant::now() + CLOSE_TIMEOUT);
            }
            Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                signal = Some(signal_name);
                deadline.get_or_insert(Instant::now() + CLOSE_TIMEOUT);
            }
            Some(ChannelMsg::Close) => {
                closed = true;
                break;
            }
            None => break,
            Some(_) => {}
        }
    }
    writer.abort();
    if !closed {
        let _ = write.close().await;
    }
    if error.is_none() && status.is_none() && signal.is_none() {
        error = Some(if hung_up {
            "hung up: the session's input ended".to_owned()
        } else {
            "the shell's end is unknown: the SSH channel closed without an exit status (connection lost?)".to_owned()
        });
    }
    let exit_code = exit_code(status, signal.as_ref());
    tracing::info!(
        session_id,
        exit_code,
        hung_up,
        client_gone,
        duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        error = error.as_deref().unwrap_or(""),
        "shell ended"
    );
    if !client_gone {
        let _ = output.send(ShellOutput::Exit { exit_code, error }).await;
    }
    if dedicated {
        super::pool::close_in_background(slot.conn.clone());
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
