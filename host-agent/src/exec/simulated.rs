//! The guests of a simulated host (`[simulated]`, control-plane scale tests): an
//! [`ExecBackend`] that answers commands in memory, never on a real host.
//!
//! - The controller's files scripts (`fluid_proto::guest::files`: read, write, create)
//!   work on an in-memory file system per sandbox, with the scripts' output and exit
//!   statuses, and their `policy.denied_paths` check (`FLUID_DENIED`).
//! - Any other command prints `output_bytes` of synthetic lines on stdout, paced at
//!   `output_bytes_per_sec` and lasting at least `exec_time`, and exits 0; one in
//!   `failure_rate` exits 1 with a line on stderr. The request's timeout and output cap
//!   hold as on a real guest.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fluid_proto::guest::files::{CREATE_SH, DENIED_EXIT, READ_SH, WRITE_SH, guarded};
use fluid_proto::model::{Exec, ExecEvent, ExecExit, SandboxId};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::backend::{ExecBackend, ExecStarted, ExecTarget};
use super::run::{OutputCap, QUEUE_DEPTH, Stream, unix_ms};
use crate::error::ServiceError;

/// Bytes a simulated guest keeps in its files (all of a sandbox's files together).
const FILES_CAP: usize = 16 << 20;
/// Size of one synthetic output chunk.
const CHUNK: usize = 4096;

/// How the simulated guests run commands.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecProfile {
    /// The shortest run of a command.
    pub exec_time: Duration,
    /// Synthetic output per command (stdout).
    pub output_bytes: u64,
    /// Pace of that output.
    pub output_bytes_per_sec: u64,
    /// The share (0..=1) of commands that fail (exit 1).
    pub failure_rate: f64,
}

impl Default for ExecProfile {
    fn default() -> Self {
        Self {
            exec_time: Duration::from_millis(200),
            output_bytes: 16 << 10,
            output_bytes_per_sec: 64 << 10,
            failure_rate: 0.0,
        }
    }
}

/// A simulated file.
#[derive(Debug, Clone)]
struct SimFile {
    content: Vec<u8>,
}

/// The guests of one simulated host.
#[derive(Debug, Default)]
pub struct SimulatedGuests {
    profile: ExecProfile,
    /// Per sandbox: its files by absolute path.
    files: Mutex<HashMap<SandboxId, HashMap<String, SimFile>>>,
}

/// What a command does in a simulated guest.
enum Work {
    /// A files script's answer, at once.
    Answer {
        code: i32,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
    /// Synthetic output for a while.
    Synthetic { fail: bool },
}

impl SimulatedGuests {
    pub fn new(profile: ExecProfile) -> Self {
        Self {
            profile,
            files: Mutex::default(),
        }
    }

    fn env<'a>(req: &'a Exec, name: &str) -> Option<&'a str> {
        req.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// What `req` does: a files script runs here and now.
    fn work(&self, req: &Exec) -> Work {
        let op = [
            (READ_SH, Op::Read),
            (WRITE_SH, Op::Write),
            (CREATE_SH, Op::Create),
        ]
        .into_iter()
        .find(|(script, _)| req.command == guarded(script))
        .map(|(_, op)| op);
        match op {
            Some(op) => self.files_script(req, op),
            None => Work::Synthetic {
                fail: self.profile.failure_rate > 0.0
                    && rand::random::<f64>() < self.profile.failure_rate,
            },
        }
    }

    fn files_script(&self, req: &Exec, op: Op) -> Work {
        let answer = |code: i32, stdout: Vec<u8>, stderr: String| Work::Answer {
            code,
            stdout,
            stderr: stderr.into_bytes(),
        };
        let path = Self::env(req, "FLUID_PATH").unwrap_or_default().to_owned();
        if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
            return answer(3, Vec::new(), format!("{path}: no such file\n"));
        }
        let denied = Self::env(req, "FLUID_DENIED").unwrap_or_default();
        if let Some(e) = denied
            .lines()
            .filter(|e| !e.is_empty())
            .find(|e| *e == "/" || path == *e || path.starts_with(&format!("{e}/")))
        {
            return answer(
                DENIED_EXIT,
                Vec::new(),
                format!(
                    "{path} resolves to {path}, which is under policy.denied_paths entry {e}\n"
                ),
            );
        }
        let mut all = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let files = all.entry(req.sandbox_id.clone()).or_default();
        match op {
            Op::Read => {
                let Some(f) = files.get(&path) else {
                    return answer(3, Vec::new(), format!("{path}: no such file\n"));
                };
                let number = |name| {
                    Self::env(req, name)
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0)
                };
                let (offset, limit) = (number("FLUID_OFFSET"), number("FLUID_LIMIT"));
                let start = offset.min(f.content.len());
                let end = start.saturating_add(limit).min(f.content.len());
                let mut out = format!("{}\n", f.content.len()).into_bytes();
                out.extend_from_slice(&f.content[start..end]);
                answer(0, out, String::new())
            }
            Op::Write | Op::Create => {
                if op == Op::Create && files.contains_key(&path) {
                    return answer(5, Vec::new(), format!("{path}: already exists\n"));
                }
                let held: usize = files
                    .iter()
                    .filter(|(p, _)| **p != path)
                    .map(|(_, f)| f.content.len())
                    .sum();
                if held + req.stdin.len() > FILES_CAP {
                    return answer(1, Vec::new(), format!("{path}: No space left on device\n"));
                }
                let size = req.stdin.len();
                files.insert(
                    path,
                    SimFile {
                        content: req.stdin.clone(),
                    },
                );
                answer(0, format!("{size}\n").into_bytes(), String::new())
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Write,
    Create,
}

#[async_trait]
impl ExecBackend for SimulatedGuests {
    async fn start(
        &self,
        _target: ExecTarget,
        req: Exec,
        timeout: Duration,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<ExecStarted, ServiceError> {
        let work = self.work(&req);
        let profile = self.profile.clone();
        let (tx, events) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(async move {
            run(work, &profile, req.output_cap_bytes, timeout, tx).await;
            drop(permit);
        });
        Ok(ExecStarted {
            events,
            learned_host_key: None,
        })
    }

    fn forget(&self, id: &SandboxId) {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

/// Streams one command's events into `tx`; a receiver that goes away stops nothing
/// (the command runs to its end, as on a real guest).
async fn run(
    work: Work,
    profile: &ExecProfile,
    cap: u64,
    timeout: Duration,
    tx: mpsc::Sender<ExecEvent>,
) {
    let started = Instant::now();
    let send = |e: ExecEvent| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(e).await;
        }
    };
    send(ExecEvent::Started {
        at_unix_ms: unix_ms(),
    })
    .await;
    let mut cap = OutputCap::new(cap);
    let mut chunk = |s: Stream, bytes: &[u8]| {
        let n = cap.admit(s, bytes.len());
        (n > 0).then(|| bytes[..n].to_vec())
    };
    let mut exit = ExecExit::default();
    match work {
        Work::Answer {
            code,
            stdout,
            stderr,
        } => {
            if let Some(b) = chunk(Stream::Stdout, &stdout) {
                send(ExecEvent::Stdout(b)).await;
            }
            if let Some(b) = chunk(Stream::Stderr, &stderr) {
                send(ExecEvent::Stderr(b)).await;
            }
            exit.exit_code = code;
        }
        Work::Synthetic { fail } => {
            let total = usize::try_from(profile.output_bytes).unwrap_or(usize::MAX);
            let rate = profile.output_bytes_per_sec.max(1) as f64;
            let deadline = started + timeout;
            let mut sent = 0usize;
            let mut line = 0u64;
            // Numbered lines, cut into chunks of CHUNK bytes (a line may span two).
            let mut text: Vec<u8> = Vec::with_capacity(2 * CHUNK);
            while sent < total {
                let want = CHUNK.min(total - sent);
                while text.len() < want {
                    line += 1;
                    text.extend_from_slice(format!("simulated output line {line}\n").as_bytes());
                }
                let rest = text.split_off(want);
                let buf = std::mem::replace(&mut text, rest);
                sent += buf.len();
                // Paced: this chunk is due when the bytes before it have had their time.
                let due = started + Duration::from_secs_f64(sent as f64 / rate);
                if due > deadline {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                if let Some(b) = chunk(Stream::Stdout, &buf) {
                    send(ExecEvent::Stdout(b)).await;
                }
            }
            let end = (started + profile.exec_time).max(Instant::now());
            if end > deadline || sent < total {
                tokio::time::sleep_until(deadline.into()).await;
                exit.exit_code = -1;
                exit.timed_out = true;
                exit.error = Some(format!(
                    "timed out after {} s; the simulated command was stopped",
                    timeout.as_secs()
                ));
            } else {
                tokio::time::sleep_until(end.into()).await;
                if fail {
                    if let Some(b) = chunk(Stream::Stderr, b"simulated failure\n") {
                        send(ExecEvent::Stderr(b)).await;
                    }
                    exit.exit_code = 1;
                }
            }
        }
    }
    exit.stdout_truncated = cap.truncated(Stream::Stdout);
    exit.stderr_truncated = cap.truncated(Stream::Stderr);
    exit.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    send(ExecEvent::Exit(exit)).await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::Semaphore;

    use super::*;

    fn exec(command: &str, env: &[(&str, &str)], stdin: &[u8]) -> Exec {
        Exec {
            sandbox_id: SandboxId::parse("id", "SBX-0000000a").expect("id"),
            command_id: "CMD-00000001".into(),
            command: command.into(),
            user: "root".into(),
            workdir: None,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            timeout_seconds: None,
            output_cap_bytes: 1 << 20,
            stdin: stdin.to_vec(),
            ssh_certificate: String::new(),
        }
    }

    /// Runs `req` to its end: (exit, stdout, stderr, output events).
    async fn run_to_end(
        g: &SimulatedGuests,
        req: Exec,
        timeout: Duration,
    ) -> (ExecExit, Vec<u8>, Vec<u8>, usize) {
        let target = ExecTarget {
            id: req.sandbox_id.clone(),
            ip: std::net::Ipv4Addr::LOCALHOST,
            known_host_key: None,
        };
        let permit = Arc::new(Semaphore::new(1))
            .try_acquire_owned()
            .expect("permit");
        let mut started = g
            .start(target, req, timeout, Some(permit))
            .await
            .expect("start");
        let (mut out, mut err, mut chunks) = (Vec::new(), Vec::new(), 0);
        assert!(matches!(
            started.events.recv().await,
            Some(ExecEvent::Started { .. })
        ));
        while let Some(e) = started.events.recv().await {
            match e {
                ExecEvent::Stdout(b) => {
                    chunks += 1;
                    out.extend(b);
                }
                ExecEvent::Stderr(b) => err.extend(b),
                ExecEvent::Exit(x) => {
                    assert!(
                        started.events.recv().await.is_none(),
                        "exit is the last event"
                    );
                    return (x, out, err, chunks);
                }
                ExecEvent::Started { .. } => panic!("started twice"),
            }
        }
        panic!("no exit event");
    }

    const LONG: Duration = Duration::from_secs(600);

    #[tokio::test]
    async fn files_written_are_read_back_and_create_refuses_an_existing_one() {
        let g = SimulatedGuests::new(ExecProfile::default());
        let write = exec(
            &guarded(WRITE_SH),
            &[("FLUID_PATH", "/etc/app.conf")],
            b"hello world",
        );
        let (x, out, _, _) = run_to_end(&g, write, LONG).await;
        assert_eq!((x.exit_code, out.as_slice()), (0, b"11\n".as_slice()));
        let read = exec(
            &guarded(READ_SH),
            &[
                ("FLUID_PATH", "/etc/app.conf"),
                ("FLUID_OFFSET", "6"),
                ("FLUID_LIMIT", "3"),
            ],
            b"",
        );
        let (x, out, _, _) = run_to_end(&g, read, LONG).await;
        assert_eq!((x.exit_code, out.as_slice()), (0, b"11\nwor".as_slice()));
        let create = exec(
            &guarded(CREATE_SH),
            &[("FLUID_PATH", "/etc/app.conf")],
            b"again",
        );
        let (x, _, err, _) = run_to_end(&g, create, LONG).await;
        assert_eq!(x.exit_code, 5, "{}", String::from_utf8_lossy(&err));
        let missing = exec(&guarded(READ_SH), &[("FLUID_PATH", "/nope")], b"");
        assert_eq!(run_to_end(&g, missing, LONG).await.0.exit_code, 3);
        let denied = exec(
            &guarded(READ_SH),
            &[
                ("FLUID_PATH", "/etc/shadow"),
                ("FLUID_DENIED", "/root\n/etc/shadow"),
            ],
            b"",
        );
        let (x, _, err, _) = run_to_end(&g, denied, LONG).await;
        assert_eq!(x.exit_code, DENIED_EXIT);
        assert!(String::from_utf8_lossy(&err).contains("policy.denied_paths entry /etc/shadow"));
        // A destroyed sandbox's files are gone with it.
        g.forget(&SandboxId::parse("id", "SBX-0000000a").expect("id"));
        let read = exec(&guarded(READ_SH), &[("FLUID_PATH", "/etc/app.conf")], b"");
        assert_eq!(run_to_end(&g, read, LONG).await.0.exit_code, 3);
    }

    #[tokio::test]
    async fn a_command_streams_its_synthetic_output_in_chunks_within_its_cap() {
        let g = SimulatedGuests::new(ExecProfile {
            exec_time: Duration::ZERO,
            output_bytes: 3 * CHUNK as u64 + 10,
            output_bytes_per_sec: 1 << 30,
            failure_rate: 0.0,
        });
        let (x, out, _, chunks) = run_to_end(&g, exec("make", &[], b""), LONG).await;
        assert_eq!(x.exit_code, 0);
        assert_eq!(out.len(), 3 * CHUNK + 10);
        assert_eq!(chunks, 4);
        assert!(out.starts_with(b"simulated output line 1\n"));
        assert!(!x.stdout_truncated);
        let mut capped = exec("make", &[], b"");
        capped.output_cap_bytes = 100;
        let (x, out, _, _) = run_to_end(&g, capped, LONG).await;
        assert_eq!(out.len(), 100);
        assert!(x.stdout_truncated && x.exit_code == 0);
    }

    #[tokio::test]
    async fn a_command_slower_than_its_timeout_is_stopped_as_timed_out() {
        let g = SimulatedGuests::new(ExecProfile {
            exec_time: Duration::from_millis(1500),
            ..ExecProfile::default()
        });
        let (x, _, _, _) = run_to_end(&g, exec("build", &[], b""), Duration::from_secs(1)).await;
        assert!(x.timed_out && x.exit_code == -1, "{x:?}");
        assert!(
            x.error
                .as_deref()
                .is_some_and(|e| e.contains("timed out after 1 s"))
        );
        assert!((1000..1500).contains(&x.duration_ms), "{x:?}");
        let (x, _, _, _) = run_to_end(&g, exec("build", &[], b""), Duration::from_secs(5)).await;
        assert!(!x.timed_out && x.exit_code == 0, "{x:?}");
        assert!(x.duration_ms >= 1500, "{x:?}");
    }

    #[tokio::test]
    async fn at_a_failure_rate_of_one_every_command_fails() {
        let g = SimulatedGuests::new(ExecProfile {
            exec_time: Duration::ZERO,
            output_bytes: 0,
            failure_rate: 1.0,
            ..ExecProfile::default()
        });
        let (x, _, err, _) = run_to_end(&g, exec("true", &[], b""), LONG).await;
        assert_eq!(x.exit_code, 1);
        assert_eq!(err, b"simulated failure\n");
    }
}
