//! Interactive sessions ("attach"): a person's shell on a PTY in a running sandbox,
//! through the agent's Attach stream.
//!
//! [`AttachService::prepare`] does everything that can refuse before the HTTP upgrade
//! (parameters 400, unknown sandbox 404, not RUNNING 409, no agent key 503) and signs
//! the agent a certificate (`permit-pty`, principals `root` and the session's user,
//! both bound to the sandbox: `sbx:<id>:<user>`).
//! [`AttachService::run`] is transport-agnostic: it inserts the session's audit row
//! (kind `attach`, status `running`) and tells the sandbox's watchers, opens the
//! agent's stream with the person's input as its input, forwards the terminal's
//! output through a bounded channel (a slow reader slows the shell, a gone one is no
//! longer fed), keeps at most `output_cap` bytes of it — what the human saw — and at
//! the end completes the row (exit code, duration, output; `completed`, or `lost`
//! when the stream ended without an exit, or `failed` when it never opened) and tells
//! the watchers. Keystrokes are not checked by the policy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use fluid_client::types::CommandStarted;
use fluid_proto::model::{AttachOpen, SandboxId};
use futures::StreamExt as _;
use tokio::sync::{mpsc, oneshot};

use crate::agents::{AgentConnector, AgentTarget, AttachInput, AttachOutput};
use crate::error::ServiceError;
use crate::governance::auth::{Caller, Permission};
use crate::store::{CommandEnd, CommandRecord, CommandStatus, Store};
use crate::support::ids::new_id;
use crate::work::commands::{Capture, CommandService, Grant, LiveEvent, stored_text};

/// Frames buffered each way between a person and the agent.
pub const SESSION_BUFFER: usize = 64;
/// How long the agent has to end a session after the person hung up.
pub const HANGUP_GRACE: Duration = Duration::from_secs(10);

/// What a person asks for (query parameters of the attach route).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttachRequest {
    /// Unix user (default `root`).
    pub user: Option<String>,
    /// TERM (default `xterm-256color`).
    pub term: Option<String>,
    /// Terminal size (default 80x24; 1-1000 each).
    pub cols: Option<u32>,
    pub rows: Option<u32>,
}

/// A session checked and ready to open.
#[derive(Debug, Clone)]
pub struct PreparedSession {
    pub session_id: String,
    target: AgentTarget,
    open: AttachOpen,
    record: CommandRecord,
}

/// What the person receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOutput {
    /// Terminal bytes.
    Data(Vec<u8>),
    /// The end (always the last item).
    Exit {
        session_id: String,
        exit_code: i32,
        error: Option<String>,
    },
}

pub struct AttachService {
    commands: Arc<CommandService>,
    store: Arc<dyn Store>,
    agents: Arc<dyn AgentConnector>,
}

impl std::fmt::Debug for AttachService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachService").finish_non_exhaustive()
    }
}

/// The audit row's command text.
pub fn audit_command(user: &str) -> String {
    format!("attach (interactive shell as {user})")
}

fn millis_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl AttachService {
    pub fn new(
        commands: Arc<CommandService>,
        store: Arc<dyn Store>,
        agents: Arc<dyn AgentConnector>,
    ) -> Self {
        Self {
            commands,
            store,
            agents,
        }
    }

    /// Validates the request, checks the sandbox runs and signs the agent's
    /// certificate, for `caller` (`Work` on the sandbox). Nothing is recorded yet.
    pub async fn prepare(
        &self,
        caller: &Caller,
        id: &SandboxId,
        req: AttachRequest,
    ) -> Result<PreparedSession, ServiceError> {
        self.commands
            .authorized(caller, id, Permission::Work)
            .await?;
        let mut open = AttachOpen {
            sandbox_id: id.clone(),
            session_id: new_id("SES-"),
            user: req.user.unwrap_or_default(),
            cols: req.cols.unwrap_or(80),
            rows: req.rows.unwrap_or(24),
            term: req.term.unwrap_or_default(),
            ssh_certificate: "x".into(),
        }
        // The agent's own validation, at the edge; it also fills the defaults.
        .checked()
        .map_err(|e| {
            let field = match e.field {
                "size" => "cols/rows",
                f => f,
            };
            ServiceError::Invalid(format!("{field}: {}", e.reason))
        })?;
        let row = self.commands.sandbox(id).await?;
        let mut users = vec!["root".to_owned()];
        if open.user != "root" {
            users.push(open.user.clone());
        }
        let grant = Grant {
            id: &open.session_id,
            users: &users,
            permit_pty: true,
        };
        let access = self
            .commands
            .agent_access(&row, "interactive sessions", &grant)
            .await?;
        // A session's input cannot be replayed, so unlike exec it cannot retry after a
        // refused certificate: ask the agent for its current key first (a restarted
        // agent has a new one until the next heartbeat). One status call per session.
        self.commands.refresh_agent_key(&access.target).await;
        let access = self
            .commands
            .agent_access(&row, "interactive sessions", &grant)
            .await?;
        open.ssh_certificate = access.certificate;
        let record = CommandRecord {
            id: open.session_id.clone(),
            sandbox_id: row.id.clone(),
            agent_id: row.agent_id.clone(),
            kind: "attach".into(),
            command: audit_command(&open.user),
            user: open.user.clone(),
            workdir: None,
            env_json: serde_json::json!({ "TERM": open.term }).to_string(),
            status: CommandStatus::Running,
            stdout: String::new(),
            stderr: String::new(),
            exit_code: None,
            timed_out: false,
            truncated: false,
            error: None,
            started_at: Utc::now(),
            ended_at: None,
            duration_ms: None,
            output_expired: false,
        };
        Ok(PreparedSession {
            session_id: open.session_id.clone(),
            target: access.target,
            open,
            record,
        })
    }

    /// Runs a prepared session to its end: `input` is the person's stdin and resizes
    /// (closing it hangs up), `output` gets the terminal's bytes and then one
    /// [`SessionOutput::Exit`]. Returns the completed audit record.
    pub async fn run(
        &self,
        session: PreparedSession,
        input: mpsc::Receiver<AttachInput>,
        output: mpsc::Sender<SessionOutput>,
    ) -> CommandRecord {
        let began = Instant::now();
        let PreparedSession {
            session_id,
            target,
            open,
            mut record,
        } = session;
        record.started_at = Utc::now();
        if let Err(e) = self.store.insert_command(&record).await {
            tracing::error!(session = %session_id, error = %e, "recording a session's start");
            let _ = output
                .send(SessionOutput::Exit {
                    session_id,
                    exit_code: -1,
                    error: Some(format!("could not record the session: {e}")),
                })
                .await;
            record.status = CommandStatus::Failed;
            return record;
        }
        tracing::info!(sandbox = %record.sandbox_id, session = %session_id, user = %record.user, "interactive session opened");
        self.commands.hubs.publish(
            &record.sandbox_id,
            &LiveEvent::Started(CommandStarted {
                command_id: record.id.clone(),
                sandbox_id: record.sandbox_id.clone(),
                command: record.command.clone(),
                started_at: record.started_at,
            }),
        );

        // The person's input, telling us when it ends (the hang-up).
        let (hung_tx, mut hung_rx) = oneshot::channel::<()>();
        let input =
            futures::stream::unfold((input, Some(hung_tx)), |(mut rx, mut hung)| async move {
                match rx.recv().await {
                    Some(i) => Some((i, (rx, hung))),
                    None => {
                        if let Some(h) = hung.take() {
                            let _ = h.send(());
                        }
                        None
                    }
                }
            })
            .boxed();

        let mut capture =
            Capture::new(usize::try_from(self.commands.output_cap()).unwrap_or(usize::MAX));
        let mut out = Some(output.clone());
        let end: Result<(i32, Option<String>), (CommandStatus, String)> = match self
            .agents
            .attach(&target, open, input)
            .await
        {
            Err(e) => Err((CommandStatus::Failed, e.to_string())),
            Ok(mut stream) => {
                let mut hung = false;
                let mut deadline: Option<tokio::time::Instant> = None;
                loop {
                    tokio::select! {
                        item = stream.next() => match item {
                            Some(Ok(AttachOutput::Data(b))) => {
                                capture.push(&b);
                                if let Some(o) = &out
                                    && o.send(SessionOutput::Data(b)).await.is_err()
                                {
                                    // The person left; the hang-up ends the session.
                                    out = None;
                                }
                            }
                            Some(Ok(AttachOutput::Exit { exit_code, error })) => {
                                break Ok((exit_code, error));
                            }
                            Some(Err(e)) => break Err((CommandStatus::Lost, e.to_string())),
                            None => {
                                break Err((
                                    CommandStatus::Lost,
                                    "the agent's stream ended without an exit".to_owned(),
                                ));
                            }
                        },
                        r = &mut hung_rx, if !hung => {
                            hung = true;
                            if r.is_ok() {
                                deadline = Some(tokio::time::Instant::now() + HANGUP_GRACE);
                            }
                        }
                        () = sleep_until_some(deadline) => {
                            break Err((
                                CommandStatus::Lost,
                                format!("the agent did not end the session within {} s of the hang-up", HANGUP_GRACE.as_secs()),
                            ));
                        }
                    }
                }
            }
        };

        let mut e = CommandEnd {
            status: CommandStatus::Completed,
            stdout: stored_text(&capture.buf),
            stderr: String::new(),
            exit_code: None,
            timed_out: false,
            truncated: capture.truncated,
            error: None,
            ended_at: Utc::now(),
            duration_ms: Some(millis_since(began)),
        };
        match end {
            Ok((code, error)) => {
                e.exit_code = Some(code);
                e.error = error;
            }
            Err((status, why)) => {
                tracing::warn!(session = %session_id, %status, error = %why, "interactive session ended abnormally");
                e.status = status;
                e.error = Some(why);
            }
        }
        let done = match self.store.finish_command(&session_id, &e).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                tracing::warn!(session = %session_id, "session was no longer running in the store");
                crate::work::commands::local_end(record, e)
            }
            Err(se) => {
                tracing::error!(session = %session_id, error = %se, "recording a session's end");
                crate::work::commands::local_end(record, e)
            }
        };
        tracing::info!(session = %done.id, status = %done.status, exit_code = ?done.exit_code, "interactive session ended");
        self.commands
            .hubs
            .publish(&done.sandbox_id, &LiveEvent::Exit(Box::new(done.to_api())));
        let _ = output
            .send(SessionOutput::Exit {
                session_id: done.id.clone(),
                exit_code: done.exit_code.unwrap_or(-1),
                error: done.error.clone(),
            })
            .await;
        done
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
