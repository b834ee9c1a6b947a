//! One command on one channel of a sandbox's connection.
//!
//! [`start`] opens the channel and sends the exec request (failures there are errors
//! before any event), then a task streams events into a bounded queue: `Started`,
//! output chunks as they arrive (each stream forwarded up to the cap, the rest read
//! and dropped), then exactly one `Exit`. Memory stays bounded: output is never
//! collected, and a slow reader of the queue slows the channel down (backpressure).
//! If the reader goes away the command still runs to its end (or timeout); its output
//! is drained and dropped.
//!
//! The timeout runs in its own task, so it fires even while the queue is full: it
//! kills the command's cgroup (everything it started) over another channel
//! ([`wrapper::kill_script`]), which the pool opens wherever there is room. When the
//! connection is lost before the command's end, the cgroup is killed the same way (best
//! effort), so the command's fate is known. The exit's error names the cause: a
//! timeout and what was killed, a lost connection, a refusal by sshd.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fluid_proto::guest::wrapper::{self, Killed};
use fluid_proto::model::{ExecEvent, ExecExit, SandboxId};
use russh::keys::PublicKey;
use russh::{ChannelMsg, Sig};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::ExecError;
use super::pool::{Opened, Slot, SshPool};

/// Events queued per command before the channel is slowed down.
pub const QUEUE_DEPTH: usize = 16;
/// How long after the kill the channel may take to close.
const AFTER_KILL: Duration = Duration::from_secs(10);
/// How long the kill itself may take (a reconnect included, after a lost connection).
const KILL_TIMEOUT: Duration = Duration::from_secs(30);

/// What to run.
#[derive(Debug, Clone)]
pub struct Command {
    pub command_id: String,
    /// The wrapper script ([`wrapper::build`]).
    pub script: String,
    pub stdin: Vec<u8>,
    pub timeout: Option<Duration>,
    pub output_cap_bytes: u64,
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Per-stream output caps: how much of each chunk may still be forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputCap {
    cap: u64,
    forwarded: [u64; 2],
    truncated: [bool; 2],
}

impl OutputCap {
    pub fn new(cap: u64) -> Self {
        Self {
            cap,
            forwarded: [0; 2],
            truncated: [false; 2],
        }
    }

    fn index(s: Stream) -> usize {
        match s {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }

    /// How many leading bytes of a `len`-byte chunk to forward; the rest is dropped
    /// and the stream marked truncated.
    pub fn admit(&mut self, s: Stream, len: usize) -> usize {
        let i = Self::index(s);
        let room = self.cap.saturating_sub(self.forwarded[i]);
        let len64 = u64::try_from(len).unwrap_or(u64::MAX);
        let take = room.min(len64);
        if take < len64 {
            self.truncated[i] = true;
        }
        self.forwarded[i] += take;
        // take ≤ len, so it fits in usize.
        usize::try_from(take).unwrap_or(len)
    }

    pub fn truncated(&self, s: Stream) -> bool {
        self.truncated[Self::index(s)]
    }
}

/// The exit code for what the channel reported: the status, a signal as 128+n, or -1.
pub fn exit_code(status: Option<u32>, signal: Option<&Sig>) -> i32 {
    if let Some(s) = status {
        return i32::try_from(s).unwrap_or(-1);
    }
    let n = match signal {
        Some(Sig::HUP) => 1,
        Some(Sig::INT) => 2,
        Some(Sig::QUIT) => 3,
        Some(Sig::ILL) => 4,
        Some(Sig::ABRT) => 6,
        Some(Sig::FPE) => 8,
        Some(Sig::KILL) => 9,
        Some(Sig::USR1) => 10,
        Some(Sig::SEGV) => 11,
        Some(Sig::PIPE) => 13,
        Some(Sig::ALRM) => 14,
        Some(Sig::TERM) => 15,
        _ => return -1,
    };
    128 + n
}

/// Milliseconds since the Unix epoch (a command's `Started` event).
pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Sends events while the reader is there; afterwards drops them.
struct Sink {
    tx: mpsc::Sender<ExecEvent>,
    gone: bool,
}

impl Sink {
    async fn send(&mut self, e: ExecEvent) {
        if !self.gone && self.tx.send(e).await.is_err() {
            self.gone = true;
        }
    }
}

/// Opens more channels to a command's sandbox (for its kill).
#[derive(Clone)]
pub struct Reopen {
    pub pool: Arc<SshPool>,
    pub id: SandboxId,
    pub ip: Ipv4Addr,
    pub known: Option<PublicKey>,
    pub certificate: String,
}

impl std::fmt::Debug for Reopen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reopen")
            .field("id", &self.id)
            .field("ip", &self.ip)
            .finish_non_exhaustive()
    }
}

impl Reopen {
    pub async fn open(&self) -> Result<Opened, ExecError> {
        self.pool
            .open_channel(&self.id, self.ip, self.known.clone(), &self.certificate)
            .await
    }
}

/// Starts `cmd` on the `opened` channel and returns its event stream. `hold` (a
/// concurrency permit, say) is kept until the command's end.
pub async fn start<G: Send + 'static>(
    opened: Opened,
    cmd: Command,
    reopen: Reopen,
    hold: G,
) -> Result<mpsc::Receiver<ExecEvent>, ExecError> {
    let Opened { channel, slot, .. } = opened;
    channel
        .exec(true, cmd.script.as_bytes())
        .await
        .map_err(|e| {
            ExecError::Unreachable(format!(
                "sandbox {}: connection to the guest lost while starting the command: {e}",
                reopen.id
            ))
        })?;
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    tokio::spawn(async move {
        drive(slot, channel, cmd, reopen, tx).await;
        drop(hold);
    });
    Ok(rx)
}

/// What a kill did, in words.
fn killed_words(k: Killed, command_id: &str) -> String {
    match k {
        Killed::Cgroup => format!(
            "killed its cgroup {} with everything it started",
            wrapper::cgroup_dir(wrapper::CGROUP_ROOT, command_id)
        ),
        Killed::Group => "killed its process group (the guest has no cgroup v2)".to_owned(),
        Killed::Nothing => "nothing was left to kill".to_owned(),
    }
}

async fn drive(
    slot: Slot,
    channel: russh::Channel<russh::client::Msg>,
    cmd: Command,
    reopen: Reopen,
    tx: mpsc::Sender<ExecEvent>,
) {
    let started = Instant::now();
    let mut sink = Sink { tx, gone: false };
    sink.send(ExecEvent::Started {
        at_unix_ms: unix_ms(),
    })
    .await;
    let (mut read, write) = channel.split();

    // Standard input, then EOF, written beside the reading (a command may fill its
    // output before it reads all its input).
    let stdin = cmd.stdin;
    let writer = tokio::spawn(async move {
        if !stdin.is_empty() {
            write.data(stdin.as_slice()).await?;
        }
        write.eof().await
    });

    let timed_out = Arc::new(AtomicBool::new(false));
    let (killed_tx, mut killed_rx) = oneshot::channel::<String>();
    let killer = cmd.timeout.map(|t| {
        let reopen = reopen.clone();
        let timed_out = timed_out.clone();
        let command_id = cmd.command_id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(t).await;
            timed_out.store(true, Ordering::SeqCst);
            tracing::info!(
                command_id,
                timeout_s = t.as_secs(),
                "command timed out; killing its cgroup"
            );
            let what = match kill(&reopen, &command_id).await {
                Ok(k) => killed_words(k, &command_id),
                Err(e) => format!("the kill failed: {e}"),
            };
            let _ = killed_tx.send(format!("timed out after {} s; {what}", t.as_secs()));
        })
    });

    let mut cap = OutputCap::new(cmd.output_cap_bytes);
    let mut status: Option<u32> = None;
    let mut signal: Option<Sig> = None;
    let mut error: Option<String> = None;
    let mut refused = false;
    let mut give_up_at: Option<Instant> = None;
    let mut kill_reported = false;
    let mut gone = false;
    loop {
        let msg = tokio::select! {
            m = read.wait() => m,
            k = &mut killed_rx, if !kill_reported => {
                kill_reported = true;
                if let Ok(what) = k {
                    error = Some(what);
                }
                give_up_at = Some(Instant::now() + AFTER_KILL);
                continue;
            }
            () = sleep_until_opt(give_up_at) => {
                error.get_or_insert_with(|| "the command's channel did not close after the kill".to_owned());
                break;
            }
        };
        match msg {
            Some(ChannelMsg::Data { data }) => {
                let n = cap.admit(Stream::Stdout, data.len());
                if n > 0 {
                    sink.send(ExecEvent::Stdout(data[..n].to_vec())).await;
                }
            }
            Some(ChannelMsg::ExtendedData { data, ext }) => {
                if ext == 1 {
                    let n = cap.admit(Stream::Stderr, data.len());
                    if n > 0 {
                        sink.send(ExecEvent::Stderr(data[..n].to_vec())).await;
                    }
                }
            }
            Some(ChannelMsg::ExitStatus { exit_status }) => status = Some(exit_status),
            Some(ChannelMsg::ExitSignal { signal_name, .. }) => signal = Some(signal_name),
            Some(ChannelMsg::Failure) => refused = true,
            Some(ChannelMsg::Close) => break,
            None => {
                // The connection's session ended under the channel.
                gone = true;
                break;
            }
            Some(_) => {}
        }
    }
    writer.abort();
    let timed_out = timed_out.load(Ordering::SeqCst);
    if timed_out && !kill_reported {
        // The channel closed (the kill took effect) before the killer reported.
        if let Ok(Ok(what)) = tokio::time::timeout(KILL_TIMEOUT, &mut killed_rx).await {
            error = Some(what);
        }
    }
    if let Some(k) = killer {
        k.abort();
    }
    if error.is_none() && status.is_none() && signal.is_none() && !timed_out {
        error = Some(if refused {
            "sshd refused to run the command (exec request denied)".to_owned()
        } else if gone || slot.conn.is_closed() {
            // Its fate would be unknown: kill what may still run, then say so.
            let after = match kill(&reopen, &cmd.command_id).await {
                Ok(k) => killed_words(k, &cmd.command_id),
                Err(e) => format!("it may still be running in the guest (the kill failed: {e})"),
            };
            format!(
                "connection to the guest lost before the command ended (no exit status); {after}"
            )
        } else {
            "the SSH channel closed without an exit status (the guest's sshd ended the session)"
                .to_owned()
        });
    }
    drop(slot);
    let exit = ExecExit {
        exit_code: exit_code(status, signal.as_ref()),
        timed_out,
        stdout_truncated: cap.truncated(Stream::Stdout),
        stderr_truncated: cap.truncated(Stream::Stderr),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        error,
    };
    tracing::info!(
        command_id = cmd.command_id,
        exit_code = exit.exit_code,
        timed_out,
        duration_ms = exit.duration_ms,
        client_gone = sink.gone,
        error = exit.error.as_deref().unwrap_or(""),
        "command finished"
    );
    sink.send(ExecEvent::Exit(exit)).await;
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Kills the command's cgroup (and process group) over another channel and waits for
/// that to end.
async fn kill(reopen: &Reopen, command_id: &str) -> Result<Killed, String> {
    let attempt = async {
        let Opened {
            mut channel, slot, ..
        } = reopen.open().await.map_err(|e| e.to_string())?;
        channel
            .exec(true, wrapper::kill_script(command_id).as_bytes())
            .await
            .map_err(|e| format!("starting the kill: {e}"))?;
        let mut status = None;
        let mut out = Vec::new();
        while let Some(m) = channel.wait().await {
            match m {
                ChannelMsg::Data { data } if out.len() < 256 => out.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        drop(slot);
        let out = String::from_utf8_lossy(&out);
        match (status, Killed::parse(&out)) {
            (Some(0), Some(k)) => Ok(k),
            (other, _) => Err(format!(
                "the kill script ended with {other:?}, printing {:?}",
                out.trim()
            )),
        }
    };
    tokio::time::timeout(KILL_TIMEOUT, attempt)
        .await
        .map_err(|_| format!("no answer within {} s", KILL_TIMEOUT.as_secs()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_are_per_stream_and_cut_inside_a_chunk() {
        let mut c = OutputCap::new(10);
        assert_eq!(c.admit(Stream::Stdout, 4), 4);
        assert_eq!(c.admit(Stream::Stdout, 4), 4);
        assert!(!c.truncated(Stream::Stdout));
        assert_eq!(c.admit(Stream::Stdout, 4), 2);
        assert!(c.truncated(Stream::Stdout));
        assert_eq!(c.admit(Stream::Stdout, 100), 0);
        // Stderr has its own budget.
        assert!(!c.truncated(Stream::Stderr));
        assert_eq!(c.admit(Stream::Stderr, 10), 10);
        assert!(!c.truncated(Stream::Stderr));
        assert_eq!(c.admit(Stream::Stderr, 0), 0);
        assert!(
            !c.truncated(Stream::Stderr),
            "an empty chunk truncates nothing"
        );
        assert_eq!(c.admit(Stream::Stderr, 1), 0);
        assert!(c.truncated(Stream::Stderr));
    }

    #[test]
    fn output_exactly_at_the_cap_is_not_truncated() {
        let mut c = OutputCap::new(8);
        assert_eq!(c.admit(Stream::Stdout, 8), 8);
        assert!(!c.truncated(Stream::Stdout));
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(Some(3), None), 3);
        assert_eq!(exit_code(Some(0), Some(&Sig::KILL)), 0);
        assert_eq!(exit_code(None, Some(&Sig::KILL)), 137);
        assert_eq!(exit_code(None, Some(&Sig::Custom("XCPU".into()))), -1);
        assert_eq!(exit_code(None, None), -1);
    }
}
