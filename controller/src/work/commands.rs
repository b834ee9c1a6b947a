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
//!
//! Limits ([`CommandsConfig`], `[commands]`): a command without a timeout gets the
//! default one; past `max_concurrent_per_sandbox` commands running in one sandbox, one
//! more is refused with 429 and `Retry-After` before any audit row or agent call (the
//! agent's own per-sandbox ceiling is a 429 too). A failed command's error (response
//! and audit row) is the agent's words for the cause.

mod drive;
mod limits;

use drive::Drive;
pub(crate) use drive::local_end;
pub use limits::{CommandsConfig, Full, Running, RunningSlot};

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use fluid_client::types::{Command, CommandStarted, RunCommandRequest, SandboxState};
use fluid_proto::ValidationError;
use fluid_proto::model::{Exec, SandboxId};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::agents::locate;
use crate::agents::{AgentConnector, AgentError, AgentTarget};
use crate::error::{ServiceError, page_limit};
use crate::governance::auth::{self, Caller, Permission};
use crate::metrics::{ExecOutcome, Metrics};
use crate::store::{CommandEnd, CommandRecord, CommandStatus, SandboxRecord, Store};
use crate::support::ids::new_id;
use crate::work::policy::Policy;
use crate::work::ssh_ca::{CertSpec, SignedCert, SshCa, sandbox_principal};

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
    /// the sandbox ([`crate::work::ssh_ca::sandbox_principal`]), never as a bare user name, so
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
    limits: CommandsConfig,
    /// `[quotas] commands_per_agent`.
    commands_per_agent: u32,
    running: Arc<Running>,
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
            limits: CommandsConfig::default(),
            commands_per_agent: crate::governance::quotas::QuotasConfig::default()
                .commands_per_agent,
            running: Arc::new(Running::default()),
        }
    }

    /// The same service with `[quotas] commands_per_agent`.
    pub fn with_commands_per_agent(mut self, limit: u32) -> Self {
        self.commands_per_agent = limit;
        self
    }

    /// The same service with `[commands]` limits.
    pub fn with_limits(mut self, limits: CommandsConfig) -> Self {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> &CommandsConfig {
        &self.limits
    }

    /// Commands of a sandbox running now through this controller.
    pub fn running(&self, sandbox_id: &str) -> usize {
        self.running.count(sandbox_id)
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

    /// The sandbox `id`, once `caller` may do `p` on it ([`auth::authorized_sandbox`]).
    pub async fn authorized(
        &self,
        caller: &Caller,
        id: &SandboxId,
        p: Permission,
    ) -> Result<SandboxRecord, ServiceError> {
        auth::authorized_sandbox(&*self.store, caller, id, p).await
    }

    /// The live activity of every command on the sandbox, for `caller` (`Read`);
    /// `None` when its hub cannot be had.
    pub async fn watch(
        &self,
        caller: &Caller,
        id: &SandboxId,
    ) -> Result<Option<broadcast::Receiver<LiveEvent>>, ServiceError> {
        self.authorized(caller, id, Permission::Read).await?;
        Ok(self.hubs.subscribe(id.as_str()))
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
        if spec.timeout_seconds > self.limits.max_timeout_secs {
            return Err(ServiceError::Invalid(format!(
                "timeout_sec: at most {} s (commands.max_timeout_secs)",
                self.limits.max_timeout_secs
            )));
        }
        self.check_spec(&spec)?;
        Ok(spec)
    }

    /// The agent's own validation of a spec, at the edge (400 naming the field).
    pub fn check_spec(&self, spec: &ExecSpec) -> Result<(), ServiceError> {
        self.exec_for("SBX-00000000", "CMD-0000000000", spec, "x".into())?;
        Ok(())
    }

    /// The Exec of `spec`, checked by the agent's own validation (400 naming the field).
    fn exec_for(
        &self,
        sandbox_id: &str,
        command_id: &str,
        spec: &ExecSpec,
        ssh_certificate: String,
    ) -> Result<Exec, ServiceError> {
        Exec {
            sandbox_id: SandboxId::parse("sandbox_id", sandbox_id).map_err(rest_field)?,
            command_id: command_id.to_owned(),
            command: spec.command.clone(),
            user: spec.user.clone(),
            workdir: spec.workdir.clone(),
            env: spec.env.clone().into_iter().collect(),
            timeout_seconds: (spec.timeout_seconds > 0).then_some(spec.timeout_seconds),
            output_cap_bytes: spec.output_cap,
            stdin: spec.stdin.clone(),
            ssh_certificate,
        }
        .checked()
        .map_err(rest_field)
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
        }
    }

    /// Records a refusal (status `denied`, no agent call) and answers 403.
    pub async fn deny(&self, row: &SandboxRecord, spec: &ExecSpec, reason: String) -> ServiceError {
        let mut rec = self.record(row, &new_id("CMD-"), spec);
        rec.status = CommandStatus::Denied;
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

    /// Runs a command as `caller` (`Work` on the sandbox): the request is validated
    /// ([`Self::spec_from_request`]; `stdin`, when given, replaces the request's and is
    /// checked again), then the policy, then [`Self::start`].
    pub async fn run(
        &self,
        caller: &Caller,
        id: &SandboxId,
        req: RunCommandRequest,
        stdin: Option<Vec<u8>>,
    ) -> Result<RunHandle, ServiceError> {
        let row = self.authorized(caller, id, Permission::Work).await?;
        let mut spec = self.spec_from_request(req)?;
        if let Some(stdin) = stdin {
            spec.stdin = stdin;
            self.check_spec(&spec)?;
        }
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
        let host = locate::host_of(&*self.store, row).await?;
        let host_name = host.name.as_str();
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
            target: AgentTarget::from(&host),
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
        let Ok(Some(host)) = self.store.get_host(&target.name).await else {
            return;
        };
        let beat = crate::store::Beat {
            cpus_total: status.status.cpus_total,
            memory_mb_total: status.status.memory_mb_total,
            images: host.images,
            agent_version: status.status.agent_version,
            ssh_public_key: status.ssh_public_key,
            pools: status.status.pools,
            simulated: status.status.simulated,
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
        mut spec: ExecSpec,
    ) -> Result<RunHandle, ServiceError> {
        spec.timeout_seconds = self.limits.timeout_for(spec.timeout_seconds);
        let slot = self
            .running
            .try_take(
                &row.id,
                self.limits.max_concurrent_per_sandbox,
                &row.agent_id,
                self.commands_per_agent,
            )
            .map_err(|full| ServiceError::Busy {
                message: match full {
                    Full::Sandbox(n) => format!(
                        "sandbox {} already runs {n} commands, the limit \
                         (commands.max_concurrent_per_sandbox); retry when one has ended",
                        row.id
                    ),
                    Full::Owner(n) => format!(
                        "agent {:?} already runs {n} commands in its sandboxes, its quota \
                         (quotas.commands_per_agent); retry when one has ended",
                        row.agent_id
                    ),
                },
                retry_after_secs: self.limits.retry_after_secs,
            })?;
        let id = new_id("CMD-");
        tracing::Span::current().record("command_id", id.as_str());
        let users = ["root".to_owned()];
        let grant = Grant {
            id: &id,
            users: &users,
            permit_pty: false,
        };
        let access = self.agent_access(row, "commands", &grant).await?;
        let mut exec = self.exec_for(&row.id, &id, &spec, access.certificate)?;
        let rec = self.record(row, &id, &spec);
        self.store.insert_command(&rec).await?;
        let mut result = self.agents.exec(&access.target, exec.clone()).await;
        if let Err(e) = &result
            && is_stale_agent_key(e)
        {
            // The agent restarted with a new key since its last heartbeat: learn the
            // new key now and sign for it, rather than fail until the next beat.
            tracing::info!(host = %access.target.name, "agent key changed; refreshing it");
            self.refresh_agent_key(&access.target).await;
            if let Ok(fresh) = self.agent_access(row, "commands", &grant).await {
                exec.ssh_certificate = fresh.certificate;
                result = self.agents.exec(&fresh.target, exec).await;
            }
        }
        let stream = match result {
            Ok(s) => s,
            Err(e) => {
                // The agent's ceiling of commands at once: not run, not failed.
                let busy = matches!(e, AgentError::Busy { .. });
                let end = CommandEnd {
                    status: if busy {
                        CommandStatus::Denied
                    } else {
                        CommandStatus::Failed
                    },
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
                let outcome = if busy {
                    ExecOutcome::Denied
                } else {
                    ExecOutcome::Failed
                };
                self.metrics.command_finished(spec.kind, outcome, None);
                if busy {
                    return Err(ServiceError::Busy {
                        message: e.to_string(),
                        retry_after_secs: self.limits.retry_after_secs,
                    });
                }
                return Err(e.into());
            }
        };
        let (tx, rx) = mpsc::channel(RUN_BUFFER);
        let (done_tx, done_rx) = oneshot::channel();
        let task = Drive {
            _slot: slot,
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

    /// A page of the sandbox's commands, for `caller` (`Read`).
    pub async fn list(
        &self,
        caller: &Caller,
        id: &SandboxId,
        limit: Option<u32>,
        offset: Option<u64>,
    ) -> Result<(Vec<Command>, u64), ServiceError> {
        self.authorized(caller, id, Permission::Read).await?;
        let (limit, offset) = (page_limit(limit)?, offset.unwrap_or(0));
        let (rows, total) = self.store.list_commands(id.as_str(), limit, offset).await?;
        Ok((rows.iter().map(CommandRecord::to_api).collect(), total))
    }
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
