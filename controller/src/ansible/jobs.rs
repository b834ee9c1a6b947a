//! Ansible jobs: one playbook run against a sandbox or a production target.
//!
//! A job is a row (`pending` → `running` → `finished` | `failed`) created with the
//! playbook's YAML fixed in it (and its SHA-256), so what a human approves is exactly
//! what runs, whatever happens to the playbook meanwhile. It runs in a spawned task: a
//! client that disconnects cancels nothing. Its output is kept in memory, written to
//! the row every [`FLUSH_EVERY`] and broadcast to WebSocket watchers ([`live`]).
//! Creation, start, the approval, its decision and the end (with the exit code and the
//! SHA-256 of the output) are audit events (kind `ansible_job`).
//!
//! - A **sandbox** target (a sandbox id or name; needs `Work` on it) runs at once,
//!   through a loopback listener bridged to the sandbox's SSH port by its agent
//!   ([`tunnel`]), as root with a fresh key and a short-lived certificate ([`access`]).
//! - A **production** target (`[[ansible.targets]]` in the config) first runs with
//!   `--check --diff`; that output goes into a `production_apply` approval, and the
//!   playbook runs for real only once a human approves ([`production`]). A rejected or
//!   expired approval never runs. `check: true` stops after the check run.
//!
//! A controller that restarts resumes jobs waiting for their approval and marks the
//! others failed (`interrupted`); see [`JobService::resume`].

pub mod access;
pub mod live;
pub mod production;
mod run;
pub mod runner;
mod sandbox;
pub mod tunnel;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fluid_client::ansible::{CreateJobRequest, JobStatus, Verification};
use fluid_client::types::SandboxState;
use fluid_proto::model::SandboxId;

use crate::agents::AgentConnector;
use crate::ansible::playbooks::PlaybookService;
use crate::config::{AnsibleTarget, Config};
use crate::error::ServiceError;
use crate::governance::approvals::ApprovalService;
use crate::governance::auth::{self, Caller, Permission};
use crate::sandboxes::SandboxService;
use crate::store::{
    JobFilter, JobRecord, JobUpdate, NewAuditEvent, SandboxFilter, SandboxRecord, Store,
};
use crate::support::hash::sha256_hex;
use crate::support::ids::JobId;
use crate::work::ssh_ca::SshCa;
use live::{JobEvent, JobHubs};
use production::PHASE_AWAITING_CHECK_APPROVAL;
use runner::PlaybookRunner;

/// How often a running job's output is written to its row.
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// Job kinds.
pub const KIND_RUN: &str = "run";
pub const KIND_VERIFY: &str = "verify";
/// Target kinds.
pub const TARGET_SANDBOX: &str = "sandbox";
pub const TARGET_PRODUCTION: &str = "production";
/// Phases.
pub const PHASE_CHECK: &str = "check";
pub const PHASE_AWAITING_APPROVAL: &str = "awaiting_approval";
pub const PHASE_APPLY: &str = "apply";
pub const PHASE_VERIFY: &str = "verify";
pub const PHASE_DONE: &str = "done";

/// What jobs need from the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSettings {
    /// As configured; resolved when a run starts ([`runner::resolve_ansible_playbook`]).
    pub ansible_playbook: String,
    pub targets: Vec<AnsibleTarget>,
    pub job_timeout: Duration,
    pub approval_timeout: Duration,
    /// Private working directories of runs (`<data_dir>/jobs`).
    pub work_dir: PathBuf,
    /// Generated artefacts (`<data_dir>/artifacts`): a confined run sees those its
    /// playbook names.
    pub artefact_dir: PathBuf,
}

impl JobSettings {
    pub fn from_config(c: &Config) -> Self {
        Self {
            ansible_playbook: c.ansible.ansible_playbook.clone(),
            targets: c.ansible.targets.clone(),
            job_timeout: Duration::from_secs(c.ansible.job_timeout_secs),
            approval_timeout: Duration::from_secs(c.ansible.production_approval_timeout_secs),
            work_dir: c.data_dir.join("jobs"),
            artefact_dir: c.data_dir.join("artifacts"),
        }
    }
}

/// What a job runs against.
#[derive(Debug, Clone)]
pub enum Target {
    Production(AnsibleTarget),
    Sandbox(SandboxRecord),
}

/// How a job ended.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobEnd {
    pub failed: bool,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub verification: Option<Verification>,
}

impl JobEnd {
    pub fn failed(error: impl Into<String>) -> Self {
        Self {
            failed: true,
            error: Some(error.into()),
            ..Default::default()
        }
    }

    /// The end of a run: finished with exit 0, failed otherwise.
    pub fn of_run(r: &Result<fluid_ansible::RunOutcome, ServiceError>) -> Self {
        match r {
            Ok(o) if o.timed_out => Self {
                failed: true,
                exit_code: o.exit_code,
                error: Some("ansible-playbook timed out".into()),
                verification: None,
            },
            Ok(o) if o.success() => Self {
                exit_code: o.exit_code,
                ..Default::default()
            },
            Ok(o) => Self {
                failed: true,
                exit_code: o.exit_code,
                error: Some(match o.exit_code {
                    Some(c) => format!("ansible-playbook exited with {c}"),
                    None => "ansible-playbook was killed by a signal".into(),
                }),
                verification: None,
            },
            Err(e) => Self::failed(e.to_string()),
        }
    }
}

/// A job puts its target's hosts in the inventory's `all` group only: a play for any
/// other pattern would match nothing and "succeed" without doing anything.
pub fn check_runnable_hosts(playbook: &str, hosts: &str) -> Result<(), ServiceError> {
    if matches!(hosts.trim(), "all" | "*") {
        return Ok(());
    }
    Err(ServiceError::Conflict(format!(
        "playbook {playbook:?} is for hosts {hosts:?}, but a job runs it on its target's \
         hosts as the group `all`: set the playbook's hosts to all"
    )))
}

pub struct JobService {
    store: Arc<dyn Store>,
    agents: Arc<dyn AgentConnector>,
    approvals: Arc<ApprovalService>,
    playbooks: Arc<PlaybookService>,
    sandboxes: Arc<SandboxService>,
    ca: Arc<SshCa>,
    runner: Arc<dyn PlaybookRunner>,
    settings: JobSettings,
    hubs: Arc<JobHubs>,
}

impl std::fmt::Debug for JobService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobService")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The services a [`JobService`] drives.
#[derive(Clone)]
pub struct JobDeps {
    pub store: Arc<dyn Store>,
    pub agents: Arc<dyn AgentConnector>,
    pub approvals: Arc<ApprovalService>,
    pub playbooks: Arc<PlaybookService>,
    pub sandboxes: Arc<SandboxService>,
    pub ca: Arc<SshCa>,
}

fn audit(job: &JobRecord, action: &str, outcome: impl Into<String>) -> NewAuditEvent {
    let mut e = NewAuditEvent::system("ansible_job", action, outcome).target(job.id.clone());
    if job.target_kind == TARGET_SANDBOX
        && let Some(sb) = &job.sandbox_id
    {
        e.sandbox_id = Some(sb.clone());
    }
    e
}

impl JobService {
    pub fn new(deps: JobDeps, runner: Arc<dyn PlaybookRunner>, settings: JobSettings) -> Self {
        Self {
            store: deps.store,
            agents: deps.agents,
            approvals: deps.approvals,
            playbooks: deps.playbooks,
            sandboxes: deps.sandboxes,
            ca: deps.ca,
            runner,
            settings,
            hubs: Arc::default(),
        }
    }

    pub fn settings(&self) -> &JobSettings {
        &self.settings
    }

    pub fn runner(&self) -> &Arc<dyn PlaybookRunner> {
        &self.runner
    }

    /// Starts a job (`POST /v1/ansible/jobs`): checks, records it, and runs it in its
    /// own task.
    pub async fn create(
        self: &Arc<Self>,
        caller: &Caller,
        req: &CreateJobRequest,
    ) -> Result<JobRecord, ServiceError> {
        auth::check(caller, Permission::Playbooks)?;
        let vm = req.vm_name.trim();
        if vm.is_empty() || vm.len() > 256 || vm.chars().any(char::is_control) {
            return Err(ServiceError::Invalid(
                "vm_name: a sandbox id or name, or a production target".into(),
            ));
        }
        // The target first: a caller who may not work in the sandbox learns nothing
        // about playbooks.
        let target = self.resolve(caller, vm).await?;
        let stored = self
            .playbooks
            .stored_for(caller, req.playbook.trim())
            .await?;
        check_runnable_hosts(&stored.playbook.name, &stored.playbook.hosts)?;
        // Untrusted callers' playbooks are checked whole again: content stored before
        // these rules, or written into the playbook by someone else, never runs on
        // their behalf unchecked.
        self.playbooks.check_content(caller, &stored.doc())?;
        let yaml = stored.yaml()?;
        if matches!(target, Target::Production(_)) {
            production::check_approvable(&yaml)?;
        }
        let (kind, phase, sandbox_id) = match &target {
            Target::Production(_) => (TARGET_PRODUCTION, PHASE_CHECK, None),
            Target::Sandbox(sb) => (
                TARGET_SANDBOX,
                if req.check { PHASE_CHECK } else { PHASE_APPLY },
                Some(sb.id.clone()),
            ),
        };
        let job = self.new_job(
            caller,
            KIND_RUN,
            &stored.playbook.name,
            vm,
            kind,
            sandbox_id,
            req.check,
            phase,
            yaml,
        );
        self.insert(&job, caller).await?;
        let this = self.clone();
        let (j, role) = (job.clone(), caller.role.as_str().to_owned());
        tokio::spawn(async move { this.drive(j, target, role).await });
        Ok(job)
    }

    /// A new job's record (`pending`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new_job(
        &self,
        caller: &Caller,
        kind: &str,
        playbook: &str,
        vm_name: &str,
        target_kind: &str,
        sandbox_id: Option<String>,
        check: bool,
        phase: &str,
        yaml: String,
    ) -> JobRecord {
        JobRecord {
            id: JobId::generate().into(),
            kind: kind.into(),
            playbook: playbook.into(),
            vm_name: vm_name.into(),
            target_kind: target_kind.into(),
            sandbox_id,
            check,
            status: JobStatus::Pending,
            phase: phase.into(),
            approval_id: None,
            playbook_sha256: sha256_hex(&yaml),
            playbook_yaml: yaml,
            check_output: None,
            output: String::new(),
            exit_code: None,
            error: None,
            verification: None,
            created_by: caller.name.clone(),
            agent_id: caller.scope().map(str::to_owned),
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
        }
    }

    /// Stores a new job with its `created` event.
    pub(crate) async fn insert(
        &self,
        job: &JobRecord,
        caller: &Caller,
    ) -> Result<(), ServiceError> {
        let e = audit(job, "created", "pending")
            .details(serde_json::json!({
                "kind": job.kind,
                "playbook": job.playbook,
                "playbook_sha256": job.playbook_sha256,
                "vm_name": job.vm_name,
                "target_kind": job.target_kind,
                "check": job.check,
            }))
            .by(&caller.name, caller.role.as_str());
        self.store.insert_job(job, &e).await?;
        tracing::info!(job = %job.id, kind = %job.kind, playbook = %job.playbook, target = %job.vm_name, "ansible job created");
        Ok(())
    }

    /// What `vm_name` names: a configured production target, else a sandbox (by id or
    /// by the name of a live one) the caller may work in, which must be RUNNING.
    async fn resolve(&self, caller: &Caller, vm: &str) -> Result<Target, ServiceError> {
        if let Some(t) = self.settings.targets.iter().find(|t| t.name == vm) {
            return Ok(Target::Production(t.clone()));
        }
        let sb = if vm.starts_with(SandboxId::PREFIX) {
            let id = SandboxId::parse("vm_name", vm)
                .map_err(|e| ServiceError::Invalid(e.to_string()))?;
            self.store.get_sandbox(id.as_str()).await?
        } else {
            let (rows, _) = self
                .store
                .list_sandboxes(&SandboxFilter {
                    name: Some(vm.to_owned()),
                    limit: 100,
                    ..Default::default()
                })
                .await?;
            rows.into_iter().find(SandboxRecord::is_live)
        };
        let sb = sb.ok_or_else(|| {
            ServiceError::NotFound(format!(
                "vm_name: no production target or sandbox named {vm:?}"
            ))
        })?;
        auth::check_sandbox(caller, Permission::Work, &sb)?;
        if sb.state != SandboxState::Running {
            return Err(ServiceError::Conflict(format!(
                "sandbox {} is {}; a job needs it RUNNING",
                sb.id, sb.state
            )));
        }
        Ok(Target::Sandbox(sb))
    }

    /// A job the caller may see (a scoped caller: only its agent's).
    pub async fn get(&self, caller: &Caller, id: &JobId) -> Result<JobRecord, ServiceError> {
        auth::check(caller, Permission::Read)?;
        self.load(caller, id.as_str()).await
    }

    /// `job` as it is now.
    pub async fn reload(
        &self,
        caller: &Caller,
        job: &JobRecord,
    ) -> Result<JobRecord, ServiceError> {
        self.load(caller, &job.id).await
    }

    async fn load(&self, caller: &Caller, id: &str) -> Result<JobRecord, ServiceError> {
        let job = self
            .store
            .get_job(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("job {id} not found")))?;
        if caller.scope().is_some() {
            auth::check_owner(
                caller,
                job.agent_id.as_deref().unwrap_or_default(),
                &format!("job {id}"),
            )?;
        }
        Ok(self.with_live_output(job))
    }

    /// A running job's row has its output as of the last flush; the live one is newer.
    fn with_live_output(&self, mut job: JobRecord) -> JobRecord {
        if !job.status.is_final()
            && let Some((out, _)) = self.hubs.output(&job.id)
        {
            job.output = out;
        }
        job
    }

    pub async fn list(
        &self,
        caller: &Caller,
        mut f: JobFilter,
    ) -> Result<(Vec<JobRecord>, u64), ServiceError> {
        auth::check(caller, Permission::Read)?;
        if let Some(own) = caller.scope() {
            f.agent_id = Some(own.to_owned());
        }
        let (rows, total) = self.store.list_jobs(&f).await?;
        Ok((
            rows.into_iter().map(|j| self.with_live_output(j)).collect(),
            total,
        ))
    }

    /// The output so far and a receiver of what follows, for a watcher; `None` when
    /// the job does not run on this controller (it ended, or another replica runs it).
    pub fn subscribe(
        &self,
        id: &str,
    ) -> Option<(String, tokio::sync::broadcast::Receiver<JobEvent>)> {
        self.hubs.subscribe(id)
    }

    async fn drive(self: Arc<Self>, job: JobRecord, target: Target, role: String) {
        let flusher = self.spawn_flusher(&job);
        let end = match &target {
            Target::Production(t) => self.drive_production(&job, t, &role).await,
            Target::Sandbox(sb) => Some(self.drive_sandbox(&job, sb).await),
        };
        drop(flusher);
        match end {
            Some(end) => self.settle(&job, end).await,
            None => self.hubs.forget(&job.id),
        }
    }

    /// Marks a job running (with its `started` event) and starts keeping its output.
    pub(crate) async fn start(&self, job: &JobRecord, phase: &str) -> Result<(), ServiceError> {
        self.hubs.open(&job.id, job.output.clone());
        let e = audit(job, "started", "running").details(serde_json::json!({"phase": phase}));
        self.store
            .update_job(
                &job.id,
                &JobUpdate {
                    status: Some(JobStatus::Running),
                    phase: Some(phase.into()),
                    started_at: Some(Utc::now()),
                    expect_status: Some(JobStatus::Pending),
                    ..Default::default()
                },
                Some(&e),
            )
            .await?
            .ok_or_else(|| {
                ServiceError::Conflict(format!("job {} is no longer pending", job.id))
            })?;
        Ok(())
    }

    /// One line of a job's output.
    pub(crate) fn say(&self, job_id: &str, line: &str) {
        self.hubs.push(job_id, line);
    }

    /// Updates a running job (phase, approval, sandbox, …) with the output so far;
    /// `false` when it was not applied (the job is no longer running, or not in
    /// `u.expect_phase`).
    pub(crate) async fn update(
        &self,
        job: &JobRecord,
        mut u: JobUpdate,
        e: Option<NewAuditEvent>,
    ) -> Result<bool, ServiceError> {
        u.output = self.hubs.output(&job.id).map(|(o, _)| o);
        u.expect_status = Some(JobStatus::Running);
        Ok(self
            .store
            .update_job(&job.id, &u, e.as_ref())
            .await?
            .is_some())
    }

    /// Writes the output to the row every [`FLUSH_EVERY`] while it changes; stops when
    /// the returned guard is dropped.
    pub(crate) fn spawn_flusher(&self, job: &JobRecord) -> FlushGuard {
        let (store, hubs, id) = (self.store.clone(), self.hubs.clone(), job.id.clone());
        FlushGuard(tokio::spawn(async move {
            let mut written = None;
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            loop {
                tick.tick().await;
                // Not started yet (or already ended): nothing to write.
                let Some((output, version)) = hubs.output(&id) else {
                    continue;
                };
                if written == Some(version) {
                    continue;
                }
                let u = JobUpdate {
                    output: Some(output),
                    expect_status: Some(JobStatus::Running),
                    ..Default::default()
                };
                match store.update_job(&id, &u, None).await {
                    Ok(_) => written = Some(version),
                    Err(e) => tracing::warn!(job = %id, error = %e, "writing a job's output"),
                }
            }
        }))
    }

    /// Ends a job: its final row and `finished` event in one transaction, then tells
    /// its watchers.
    pub(crate) async fn settle(&self, job: &JobRecord, end: JobEnd) {
        let output = self
            .hubs
            .output(&job.id)
            .map(|(o, _)| o)
            .unwrap_or_else(|| job.output.clone());
        let status = if end.failed {
            JobStatus::Failed
        } else {
            JobStatus::Finished
        };
        let outcome = match (end.exit_code, &end.error) {
            (Some(c), _) => format!("exit {c}"),
            (None, Some(_)) => "failed".to_owned(),
            (None, None) => status.as_str().to_owned(),
        };
        let e = audit(job, "finished", outcome).details(serde_json::json!({
            "status": status.as_str(),
            "exit_code": end.exit_code,
            "error": end.error,
            "playbook": job.playbook,
            "playbook_sha256": job.playbook_sha256,
            "output_sha256": sha256_hex(&output),
            "reproduces": end.verification.as_ref().map(|v| v.reproduces),
        }));
        let u = JobUpdate {
            status: Some(status),
            phase: Some(PHASE_DONE.into()),
            output: Some(output),
            exit_code: end.exit_code,
            error: end.error.clone(),
            verification: end.verification.clone(),
            finished_at: Some(Utc::now()),
            ..Default::default()
        };
        match self.store.update_job(&job.id, &u, Some(&e)).await {
            Ok(Some(_)) => {}
            Ok(None) => tracing::warn!(job = %job.id, "job vanished before it ended"),
            Err(err) => tracing::error!(job = %job.id, error = %err, "recording a job's end"),
        }
        tracing::info!(job = %job.id, status = status.as_str(), exit_code = ?end.exit_code, error = ?end.error, "ansible job ended");
        self.hubs.close(
            &job.id,
            JobEvent::End {
                status,
                exit_code: end.exit_code,
                error: end.error,
            },
        );
    }

    /// At start: resumes production jobs waiting for their approval; marks every other
    /// unfinished job failed (the run it was in died with the previous process) and
    /// destroys the sandbox of an interrupted verify.
    pub async fn resume(self: &Arc<Self>) -> Result<usize, ServiceError> {
        let mut resumed = 0;
        for job in self.store.unfinished_jobs().await? {
            let target = self
                .settings
                .targets
                .iter()
                .find(|t| t.name == job.vm_name && job.target_kind == TARGET_PRODUCTION)
                .cloned();
            let waiting = [PHASE_AWAITING_APPROVAL, PHASE_AWAITING_CHECK_APPROVAL];
            if waiting.contains(&job.phase.as_str())
                && let (Some(approval_id), Some(t)) = (job.approval_id.clone(), target)
            {
                self.hubs.open(&job.id, job.output.clone());
                let this = self.clone();
                tokio::spawn(async move {
                    let flusher = this.spawn_flusher(&job);
                    let end = if job.phase == PHASE_AWAITING_CHECK_APPROVAL {
                        this.resume_production_check(&job, &t, &approval_id).await
                    } else {
                        this.await_and_apply(&job, &t, &approval_id).await
                    };
                    drop(flusher);
                    match end {
                        Some(end) => this.settle(&job, end).await,
                        None => this.hubs.forget(&job.id),
                    }
                });
                resumed += 1;
                continue;
            }
            if job.kind == KIND_VERIFY
                && let Some(sb) = &job.sandbox_id
                && let Ok(id) = SandboxId::parse("sandbox_id", sb)
                && let Err(e) = self.sandboxes.destroy_unchecked(&id).await
            {
                tracing::warn!(job = %job.id, sandbox = %sb, error = %e, "destroying an interrupted verify's sandbox");
            }
            self.settle(
                &job,
                JobEnd::failed(format!(
                    "interrupted: the controller stopped while the job was in phase {}",
                    job.phase
                )),
            )
            .await;
        }
        Ok(resumed)
    }
}

/// Stops a job's output flusher when dropped.
#[derive(Debug)]
pub(crate) struct FlushGuard(tokio::task::JoinHandle<()>);

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}
