//! The task that owns one agent Exec stream: forwards its events, keeps the capped
//! output, and completes the command's audit row at its end.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use futures::StreamExt as _;
use tokio::sync::{mpsc, oneshot};

use super::{Capture, Hubs, LiveEvent, Outcome, RunningSlot, stored_text};
use crate::agents::{ExecEvent, ExecStream};
use crate::metrics::{ExecOutcome, Metrics};
use crate::store::{CommandEnd, CommandRecord, CommandStatus, Store};
use fluid_client::types::CommandStarted;

/// The task that owns one Exec stream.
pub(super) struct Drive {
    /// The command's place among its sandbox's running ones, freed at its end.
    pub(super) _slot: RunningSlot,
    pub(super) store: Arc<dyn Store>,
    pub(super) hubs: Arc<Hubs>,
    pub(super) cap: usize,
    pub(super) audit_stdout: bool,
    pub(super) kind: &'static str,
    pub(super) metrics: Arc<Metrics>,
}

impl Drive {
    pub(super) async fn run(
        self,
        mut stream: ExecStream,
        rec: CommandRecord,
        tx: mpsc::Sender<LiveEvent>,
        done: oneshot::Sender<Outcome>,
    ) {
        let began = Instant::now();
        let mut tx = Some(tx);
        let mut out = Capture::new(self.cap);
        let mut err = Capture::new(self.cap);
        let end = loop {
            let ev = match stream.next().await {
                Some(Ok(ExecEvent::Started { .. })) => LiveEvent::Started(CommandStarted {
                    command_id: rec.id.clone(),
                    sandbox_id: rec.sandbox_id.clone(),
                    command: rec.command.clone(),
                    started_at: rec.started_at,
                }),
                Some(Ok(ExecEvent::Stdout(b))) => {
                    let kept = out.push(&b);
                    if kept.is_empty() {
                        continue;
                    }
                    LiveEvent::Output {
                        command_id: rec.id.clone(),
                        stderr: false,
                        data: Arc::from(kept),
                    }
                }
                Some(Ok(ExecEvent::Stderr(b))) => {
                    let kept = err.push(&b);
                    if kept.is_empty() {
                        continue;
                    }
                    LiveEvent::Output {
                        command_id: rec.id.clone(),
                        stderr: true,
                        data: Arc::from(kept),
                    }
                }
                Some(Ok(ExecEvent::Exit(x))) => break Ok(x),
                Some(Err(e)) => break Err(e.to_string()),
                None => break Err("the agent's stream ended without an exit".to_owned()),
            };
            self.emit(&mut tx, &rec.sandbox_id, ev).await;
        };
        drop(stream);
        let mut e = CommandEnd {
            status: CommandStatus::Completed,
            stdout: if self.audit_stdout {
                stored_text(&out.buf)
            } else {
                String::new()
            },
            stderr: stored_text(&err.buf),
            exit_code: None,
            timed_out: false,
            truncated: out.truncated || err.truncated,
            error: None,
            ended_at: Utc::now(),
            duration_ms: Some(u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX)),
        };
        match end {
            Ok(x) => {
                if x.error.is_some() && x.exit_code < 0 && !x.timed_out {
                    e.status = CommandStatus::Failed;
                }
                e.exit_code = Some(x.exit_code);
                e.timed_out = x.timed_out;
                e.truncated |= x.stdout_truncated || x.stderr_truncated;
                e.error = x.error;
                if x.duration_ms > 0 {
                    e.duration_ms = Some(x.duration_ms);
                }
            }
            Err(why) => {
                tracing::warn!(command = %rec.id, error = %why, "command lost");
                e.status = CommandStatus::Lost;
                e.error = Some(why);
            }
        }
        let record = match self.store.finish_command(&rec.id, &e).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                tracing::warn!(command = %rec.id, "command was no longer running in the store");
                local_end(rec, e)
            }
            Err(se) => {
                tracing::error!(command = %rec.id, error = %se, "recording a command's end");
                local_end(rec, e)
            }
        };
        tracing::info!(command = %record.id, status = %record.status, exit_code = ?record.exit_code, "command ended");
        self.metrics
            .command_finished(self.kind, outcome(&record), Some(began.elapsed()));
        let exit = LiveEvent::Exit(Box::new(record.to_api()));
        self.emit(&mut tx, &record.sandbox_id, exit).await;
        let _ = done.send(Outcome {
            record,
            stdout: out.buf,
            stderr: err.buf,
        });
    }

    async fn emit(
        &self,
        tx: &mut Option<mpsc::Sender<LiveEvent>>,
        sandbox_id: &str,
        ev: LiveEvent,
    ) {
        self.hubs.publish(sandbox_id, &ev);
        if let Some(t) = tx
            && t.send(ev).await.is_err()
        {
            // The requester left; the command goes on.
            *tx = None;
        }
    }
}

/// How a finished command's record reads as a metric outcome.
fn outcome(r: &CommandRecord) -> ExecOutcome {
    match r.status {
        CommandStatus::Completed if r.timed_out => ExecOutcome::TimedOut,
        CommandStatus::Completed if r.exit_code == Some(0) => ExecOutcome::Ok,
        CommandStatus::Completed => ExecOutcome::NonZero,
        CommandStatus::Lost => ExecOutcome::Lost,
        _ => ExecOutcome::Failed,
    }
}

pub(crate) fn local_end(mut rec: CommandRecord, e: CommandEnd) -> CommandRecord {
    rec.status = e.status;
    rec.stdout = e.stdout;
    rec.stderr = e.stderr;
    rec.exit_code = e.exit_code;
    rec.timed_out = e.timed_out;
    rec.truncated = e.truncated;
    rec.error = e.error;
    rec.ended_at = Some(e.ended_at);
    rec.duration_ms = e.duration_ms;
    rec
}
