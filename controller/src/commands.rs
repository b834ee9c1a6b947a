//! Commands in sandboxes: validation, policy, the audit record, and the task that owns
//! each agent Exec stream.
//!
//! A command's audit row is inserted (status `running`) before the agent is called. A
//! spawned task then reads the agent's stream to the end, keeps at most `output_cap`
//! bytes of each output stream, forwards events to the requester (a bounded channel:
//! a slow reader slows the command's output, a gone one is simply no longer fed) and to
//! the sandbox's watchers (a bounded broadcast: a slow watcher lags, never grows
//! memory), and completes the row when the exit arrives — whether or not anyone is
//! still listening. A stream that breaks without an exit completes the row as `lost`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use fluid_client::types::{Command, CommandStarted, RunCommandRequest, SandboxState};
use fluid_proto::ValidationError;
use fluid_proto::model::{Exec, SandboxId};
use fluid_proto::pb;
use futures::StreamExt as _;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::agents::{AgentConnector, AgentError, AgentTarget, ExecEvent, ExecStream};
use crate::metrics::{ExecOutcome, Metrics};
use crate::policy::Policy;
use crate::sandboxes::{ServiceError, new_id};
use crate::ssh_ca::{CertSpec, SignedCert, SshCa, sandbox_principal};
use crate::store::{CommandEnd, CommandRecord, SandboxRecord, Store};

/// Lifetime of the certificate given to the agent with each Exec.
pub const AGENT_CERT_TTL: Duration = Duration::from_secs(300);
/// Events buffered for one requester.
const RUN_BUFFER: usize = 64;
/// Events buffered per sandbox for watchers (then the slowest lags).
pub const HUB_CAPACITY: usize = 256;
/// Substrings of environment names whose values the audit hides.
const SECRET_NAME_PARTS: [&str; 7] = [
    "token",
    "secret",
    "password",
    "passwd",
    "key",
    "credential",
    "auth",
];

/// Live activity of a command.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    Started(CommandStarted),
    Output {
        command_id: String,
        stderr: bool,
        data: Arc<[u8]>,
    },
    Exit(Box<Command>),
}

/// Per-sandbox broadcast of live activity, for watchers.
#[derive(Debug, Default)]
pub struct Hubs {
    map: Mutex<HashMap<String, broadcast::Sender<LiveEvent>>>,
}

impl Hubs {
    pub fn subscribe(&self, sandbox_id: &str) -> Option<broadcast::Receiver<LiveEvent>> {
        let mut m = self.map.lock().ok()?;
        Some(
            m.entry(sandbox_id.to_owned())
                .or_insert_with(|| broadcast::channel(HUB_CAPACITY).0)
                .subscribe(),
        )
    }

    pub(crate) fn publish(&self, sandbox_id: &str, ev: &LiveEvent) {
        let Ok(mut m) = self.map.lock() else { return };
        if let Some(tx) = m.get(sandbox_id)
            && tx.send(ev.clone()).is_err()
        {
            // Nobody watches any more.
            m.remove(sandbox_id);
        }
    }
}

/// What to run, and how to audit it.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// `command`, `file_read`, `file_write`, `file_edit`, `sshkey`, `revoke`.
    pub kind: &'static str,
    /// What `/bin/sh -c` runs.
    pub command: String,
    /// What the audit row shows.
    pub audit_command: String,
    pub user: String,
    pub workdir: Option<String>,
    pub env: BTreeMap<String, String>,
    pub timeout_seconds: u32,
    pub stdin: Vec<u8>,
    pub output_cap: u64,
    /// Store stdout in the audit row (file reads do not: it is the file).
    pub audit_stdout: bool,
}

/// What the agent's certificate for one operation allows.
/// What an agent certificate is cached under.
type CertKey = (String, String, Vec<String>, bool);

/// Whether the agent refused a certificate because it was signed for another key
/// (the agent restarted since the controller last learned its key).
pub fn is_stale_agent_key(e: &AgentError) -> bool {
    matches!(e, AgentError::Failed { message, .. } | AgentError::Refused { message, .. }
        if message.contains("not a certificate for this agent's key"))
}

/// A cached agent certificate is reused while it has at least this long to live.
const AGENT_CERT_MIN_LEFT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy)]
pub struct Grant<'a> {
    /// The command or session id (goes into the certificate's key id).
    pub id: &'a str,
    /// Unix users the agent may log in as. The certificate names each of them bound to
    /// the sandbox ([`crate::ssh_ca::sandbox_principal`]), never as a bare user name, so
    /// it opens that sandbox only.
    pub users: &'a [String],
    pub permit_pty: bool,
}

/// A sandbox's agent and a certificate for its exec key.
#[derive(Debug, Clone)]
pub struct AgentAccess {
    pub target: AgentTarget,
    pub certificate: String,
}

/// A finished run: the audit record and the raw output (each at most the cap).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub record: CommandRecord,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// A command started: its id, its live events, and its outcome.
#[derive(Debug)]
pub struct RunHandle {
    pub id: String,
    pub events: mpsc::Receiver<LiveEvent>,
    done: oneshot::Receiver<Outcome>,
}

impl RunHandle {
    /// The live events (the outcome is then only in the store).
    pub fn into_events(self) -> mpsc::Receiver<LiveEvent> {
        self.events
    }

    /// Waits for the end (discarding live events).
    pub async fn finish(self) -> Result<Outcome, ServiceError> {
        drop(self.events);
        self.done
            .await
            .map_err(|_| ServiceError::Unavailable(format!("command {} was abandoned", self.id)))
    }
}

/// `value` with secret-looking names redacted, as a JSON object.
pub fn redacted_env_json(env: &BTreeMap<String, String>) -> String {
    let shown: BTreeMap<&str, &str> = env
        .iter()
        .map(|(k, v)| {
            let lower = k.to_ascii_lowercase();
            let secret = SECRET_NAME_PARTS.iter().any(|p| lower.contains(p));
            (k.as_str(), if secret { "***" } else { v.as_str() })
        })
        .collect();
    serde_json::to_string(&shown).unwrap_or_else(|_| "{}".into())
}

/// Output bytes as stored text: invalid UTF-8 replaced, NUL (which PostgreSQL text
/// refuses) replaced too.
pub fn stored_text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).replace('\0', "\u{FFFD}")
}

/// Keeps the first `cap` bytes of a stream.
pub(crate) struct Capture {
    pub(crate) buf: Vec<u8>,
    cap: usize,
    pub(crate) truncated: bool,
}

impl Capture {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            buf: Vec::new(),
            cap,
            truncated: false,
        }
    }

    /// Keeps what fits; returns the part kept.
    pub(crate) fn push<'a>(&mut self, b: &'a [u8]) -> &'a [u8] {
        let take = self.cap.saturating_sub(self.buf.len()).min(b.len());
        if take < b.len() {
            self.truncated = true;
        }
        self.buf.extend_from_slice(&b[..take]);
        &b[..take]
    }
}

fn rest_field(e: ValidationError) -> ServiceError {
    let field = match e.field {
        "timeout_seconds" => "timeout_sec",
        f => f,
    };
    ServiceError::Invalid(format!("{field}: {}", e.reason))
}

pub struct CommandService {
    store: Arc<dyn Store>,
    agents: Arc<dyn AgentConnector>,
    ca: Arc<SshCa>,
    /// Agent certificates still worth reusing, by (host, agent key, principals, pty);
    /// the principals name the sandbox, so each sandbox has its own. Signing one per
    /// command would put the CA on every exec's hot path for nothing: the certificate
    /// only authenticates the agent's connection to the sandbox.
    certs: std::sync::Mutex<HashMap<CertKey, SignedCert>>,
    policy: Arc<Policy>,
    output_cap: u64,
    pub hubs: Arc<Hubs>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for CommandService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandService")
            .field("output_cap", &self.output_cap)
            .finish_non_exhaustive()
    }
}

impl CommandService {
    pub fn new(
        store: Arc<dyn Store>,
        agents: Arc<dyn AgentConnector>,
        ca: Arc<SshCa>,
        policy: Arc<Policy>,
        output_cap: u64,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            agents,
            ca,
            certs: std::sync::Mutex::new(HashMap::new()),
            policy,
            output_cap,
            hubs: Arc::new(Hubs::default()),
            metrics,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn output_cap(&self) -> u64 {
        self.output_cap
    }

    /// The sandbox's row; 404 when unknown.
    pub async fn sandbox(&self, id: &SandboxId) -> Result<SandboxRecord, ServiceError> {
        self.store
            .get_sandbox(id.as_str())
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("sandbox {id} not found")))
    }

    /// Validates a REST run request into a spec (400 naming the field).
    pub fn spec_from_request(&self, req: RunCommandRequest) -> Result<ExecSpec, ServiceError> {
        let spec = ExecSpec {
            kind: "command",
            audit_command: req.command.clone(),
            command: req.command,
            user: req.user.unwrap_or_else(|| "root".into()),
            workdir: req.workdir,
            env: req.env.unwrap_or_default(),
            timeout_seconds: req.timeout_sec.unwrap_or(0),
            stdin: req.stdin.map(String::into_bytes).unwrap_or_default(),
            output_cap: self.output_cap,
            audit_stdout: true,
        };
        self.check_spec(&spec)?;
        Ok(spec)
    }

    /// The agent's own validation of a spec, at the edge (400 naming the field).
    pub fn check_spec(&self, spec: &ExecSpec) -> Result<(), ServiceError> {
        Exec::try_from(self.request_for("SBX-00000000", "CMD-0000000000", spec, "x".into()))
            .map_err(rest_field)?;
        Ok(())
    }

    fn request_for(
        &self,
        sandbox_id: &str,
        command_id: &str,
        spec: &ExecSpec,
        ssh_certificate: String,
    ) -> pb::ExecRequest {
        pb::ExecRequest {
            sandbox_id: sandbox_id.to_owned(),
            command_id: command_id.to_owned(),
            command: spec.command.clone(),
            user: spec.user.clone(),
            workdir: spec.workdir.clone().unwrap_or_default(),
            env: spec.env.clone().into_iter().collect(),
            timeout_seconds: spec.timeout_seconds,
            output_cap_bytes: spec.output_cap,
            stdin: spec.stdin.clone(),
            ssh_certificate,
        }
    }

    fn record(&self, row: &SandboxRecord, id: &str, spec: &ExecSpec) -> CommandRecord {
        CommandRecord {
            id: id.to_owned(),
            sandbox_id: row.id.clone(),
            agent_id: row.agent_id.clone(),
            kind: spec.kind.to_owned(),
            command: spec.audit_command.clone(),
            user: spec.user.clone(),
            workdir: spec.workdir.clone(),
            env_json: redacted_env_json(&spec.env),
            status: "running".into(),
            stdout: String::new(),
            stderr: String::new(),
            exit_code: None,
            timed_out: false,
            truncated: false,
            error: None,
            started_at: Utc::now(),
            ended_at: None,
            duration_ms: None,
        }
    }

    /// Records a refusal (status `denied`, no agent call) and answers 403.
    pub async fn deny(&self, row: &SandboxRecord, spec: &ExecSpec, reason: String) -> ServiceError {
        let mut rec = self.record(row, &new_id("CMD-"), spec);
        rec.status = "denied".into();
        rec.ended_at = Some(rec.started_at);
        rec.duration_ms = Some(0);
        rec.error = Some(reason.clone());
        if let Err(e) = self.store.insert_command(&rec).await {
            return e.into();
        }
        self.metrics
            .command_finished(spec.kind, ExecOutcome::Denied, None);
        tracing::warn!(sandbox = %row.id, command = %rec.id, %reason, "command denied");
        ServiceError::Forbidden(reason)
    }

    /// Runs a REST command: policy, then [`Self::start`].
    pub async fn run(&self, id: &SandboxId, spec: ExecSpec) -> Result<RunHandle, ServiceError> {
        let row = self.sandbox(id).await?;
        if let Err(reason) = self.policy.check_command(&spec.command) {
            return Err(self.deny(&row, &spec, reason).await);
        }
        self.start(&row, spec).await
    }

    /// Where the sandbox's agent is, with a certificate for the agent's exec key: checks
    /// the sandbox runs (409 naming `what`), finds its host and signs (503 while the
    /// host has not reported its key).
    pub async fn agent_access(
        &self,
        row: &SandboxRecord,
        what: &str,
        grant: &Grant<'_>,
    ) -> Result<AgentAccess, ServiceError> {
        self.agent_access_for(row, &[row.id.as_str()], what, grant)
            .await
    }

    /// [`Self::agent_access`] with a certificate valid on each of `sandboxes` (all on
    /// `row`'s host; a diff may `sync` two running sandboxes).
    pub async fn agent_access_for(
        &self,
        row: &SandboxRecord,
        sandboxes: &[&str],
        what: &str,
        grant: &Grant<'_>,
    ) -> Result<AgentAccess, ServiceError> {
        if row.state != SandboxState::Running {
            return Err(ServiceError::Conflict(format!(
                "sandbox {} is {}; {what} need a RUNNING sandbox",
                row.id, row.state
            )));
        }
        let host_name = row.host_name.as_deref().ok_or_else(|| {
            ServiceError::Conflict(format!("sandbox {} was never placed on a host", row.id))
        })?;
        let host = self
            .store
            .list_hosts()
            .await?
            .into_iter()
            .find(|h| h.name == host_name)
            .ok_or_else(|| ServiceError::Conflict(format!("host {host_name} is gone")))?;
        let agent_key = host.ssh_public_key.as_deref().ok_or_else(|| {
            ServiceError::Unavailable(format!(
                "host {host_name} has not reported an SSH key for exec yet"
            ))
        })?;
        let principals: Vec<String> = sandboxes
            .iter()
            .flat_map(|sb| grant.users.iter().map(|u| sandbox_principal(sb, u)))
            .collect();
        let certificate = self.agent_certificate(host_name, agent_key, &principals, grant)?;
        Ok(AgentAccess {
            target: AgentTarget {
                name: host.name,
                address: host.address,
            },
            certificate,
        })
    }

    /// Asks the agent for its current SSH key and stores it (the rest of the host's
    /// record is left as the last heartbeat wrote it).
    pub async fn refresh_agent_key(&self, target: &AgentTarget) {
        let status = match self.agents.status(target).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(host = %target.name, error = %e, "refreshing the agent's key");
                return;
            }
        };
        let Ok(hosts) = self.store.list_hosts().await else {
            return;
        };
        let Some(host) = hosts.into_iter().find(|h| h.name == target.name) else {
            return;
        };
        let beat = crate::store::Beat {
            cpus_total: status.status.cpus_total,
            memory_mb_total: status.status.memory_mb_total,
            images: host.images,
            agent_version: status.status.agent_version,
            ssh_public_key: status.ssh_public_key,
            at: Utc::now(),
        };
        if let Err(e) = self.store.record_beat(&target.name, &beat).await {
            tracing::warn!(host = %target.name, error = %e, "storing the agent's new key");
        }
    }

    /// A certificate for the agent's key: a cached one while it has more than
    /// [`AGENT_CERT_MIN_LEFT`] to live, else a freshly signed one.
    fn agent_certificate(
        &self,
        host_name: &str,
        agent_key: &str,
        principals: &[String],
        grant: &Grant<'_>,
    ) -> Result<String, ServiceError> {
        let key: CertKey = (
            host_name.to_owned(),
            agent_key.to_owned(),
            principals.to_vec(),
            grant.permit_pty,
        );
        let fresh_enough = |c: &SignedCert| {
            (c.valid_before - Utc::now())
                .to_std()
                .is_ok_and(|left| left > AGENT_CERT_MIN_LEFT)
        };
        if let Ok(cache) = self.certs.lock()
            && let Some(c) = cache.get(&key).filter(|c| fresh_enough(c))
        {
            return Ok(c.openssh.clone());
        }
        let cert = self
            .ca
            .sign(&CertSpec {
                public_key: agent_key,
                principals,
                ttl: AGENT_CERT_TTL,
                key_id: &format!("fluid-agent:{host_name}:{}", grant.id),
                permit_pty: grant.permit_pty,
            })
            .map_err(|e| {
                ServiceError::Unavailable(format!("signing the agent's certificate: {e}"))
            })?;
        let openssh = cert.openssh.clone();
        if let Ok(mut cache) = self.certs.lock() {
            cache.retain(|_, c| fresh_enough(c));
            cache.insert(key, cert);
        }
        Ok(openssh)
    }

    /// Starts `spec` in the sandbox: checks it runs, signs the agent a certificate,
    /// inserts the audit row, opens the Exec stream and spawns the task that owns it.
    #[tracing::instrument(name = "command", skip_all,
        fields(sandbox_id = %row.id, command_id = tracing::field::Empty, kind = spec.kind))]
    pub async fn start(
        &self,
        row: &SandboxRecord,
        spec: ExecSpec,
    ) -> Result<RunHandle, ServiceError> {
        let id = new_id("CMD-");
        tracing::Span::current().record("command_id", id.as_str());
        let users = ["root".to_owned()];
        let grant = Grant {
            id: &id,
            users: &users,
            permit_pty: false,
        };
        let access = self.agent_access(row, "commands", &grant).await?;
        let mut req = self.request_for(&row.id, &id, &spec, access.certificate);
        Exec::try_from(req.clone()).map_err(rest_field)?;
        let rec = self.record(row, &id, &spec);
        self.store.insert_command(&rec).await?;
        let mut result = self.agents.exec(&access.target, req.clone()).await;
        if let Err(e) = &result
            && is_stale_agent_key(e)
        {
            // The agent restarted with a new key since its last heartbeat: learn the
            // new key now and sign for it, rather than fail until the next beat.
            tracing::info!(host = %access.target.name, "agent key changed; refreshing it");
            self.refresh_agent_key(&access.target).await;
            if let Ok(fresh) = self.agent_access(row, "commands", &grant).await {
                req.ssh_certificate = fresh.certificate;
                result = self.agents.exec(&fresh.target, req).await;
            }
        }
        let stream = match result {
            Ok(s) => s,
            Err(e) => {
                let end = CommandEnd {
                    status: "failed".into(),
                    stdout: String::new(),
                    stderr: String::new(),
                    exit_code: None,
                    timed_out: false,
                    truncated: false,
                    error: Some(e.to_string()),
                    ended_at: Utc::now(),
                    duration_ms: Some(0),
                };
                if let Err(se) = self.store.finish_command(&id, &end).await {
                    tracing::error!(command = %id, error = %se, "recording a failed exec");
                }
                self.metrics
                    .command_finished(spec.kind, ExecOutcome::Failed, None);
                return Err(e.into());
            }
        };
        let (tx, rx) = mpsc::channel(RUN_BUFFER);
        let (done_tx, done_rx) = oneshot::channel();
        let task = Drive {
            store: self.store.clone(),
            hubs: self.hubs.clone(),
            cap: usize::try_from(spec.output_cap).unwrap_or(usize::MAX),
            audit_stdout: spec.audit_stdout,
            kind: spec.kind,
            metrics: self.metrics.clone(),
        };
        tracing::info!(sandbox = %row.id, command = %id, kind = spec.kind, "command started");
        // The task stays in this command's span (its log lines carry the sandbox id).
        tokio::spawn(tracing::Instrument::in_current_span(
            task.run(stream, rec, tx, done_tx),
        ));
        Ok(RunHandle {
            id,
            events: rx,
            done: done_rx,
        })
    }

    pub async fn list(
        &self,
        id: &SandboxId,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<Command>, u64), ServiceError> {
        self.sandbox(id).await?;
        let (rows, total) = self.store.list_commands(id.as_str(), limit, offset).await?;
        Ok((rows.iter().map(CommandRecord::to_api).collect(), total))
    }
}

/// The task that owns one Exec stream.
struct Drive {
    store: Arc<dyn Store>,
    hubs: Arc<Hubs>,
    cap: usize,
    audit_stdout: bool,
    kind: &'static str,
    metrics: Arc<Metrics>,
}

impl Drive {
    async fn run(
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
            status: "completed".into(),
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
                    e.status = "failed".into();
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
                e.status = "lost".into();
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
    match r.status.as_str() {
        "completed" if r.timed_out => ExecOutcome::TimedOut,
        "completed" if r.exit_code == Some(0) => ExecOutcome::Ok,
        "completed" => ExecOutcome::NonZero,
        "lost" => ExecOutcome::Lost,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        let env: BTreeMap<String, String> = [
            ("GITHUB_TOKEN", "t"),
            ("db_password", "p"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("API_KEY", "k"),
            ("Authorization", "a"),
            ("MY_CREDENTIALS", "c"),
            ("PASSWD", "x"),
            ("HOME", "/root"),
            ("LANG", "C"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let v: serde_json::Value = serde_json::from_str(&redacted_env_json(&env)).expect("json");
        for k in [
            "GITHUB_TOKEN",
            "db_password",
            "AWS_SECRET_ACCESS_KEY",
            "API_KEY",
            "Authorization",
            "MY_CREDENTIALS",
            "PASSWD",
        ] {
            assert_eq!(v[k], "***", "{k}");
        }
        assert_eq!(v["HOME"], "/root");
        assert_eq!(v["LANG"], "C");
    }

    #[test]
    fn capture_keeps_the_cap() {
        let mut c = Capture::new(5);
        assert_eq!(c.push(b"abc"), b"abc");
        assert_eq!(c.push(b"defg"), b"de");
        assert_eq!(c.push(b"h"), b"");
        assert_eq!(c.buf, b"abcde");
        assert!(c.truncated);
        assert_eq!(stored_text(b"a\0\xffb"), "a\u{FFFD}\u{FFFD}b");
    }
}
