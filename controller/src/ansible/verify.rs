//! Proof that a generated playbook is right: `POST /v1/ansible/playbooks/{name}/verify`.
//!
//! A job of kind `verify`: (1) a fresh sandbox of the source's golden image, on the
//! source's host (a diff reads both disk states on one host), with the source's
//! egress allow-list (so apt reaches the same mirror); it starts from the disk state
//! of the playbook's `from_snapshot` when that snapshot still exists (the playbook is
//! the change from there on; what happened before it, such as apt sources, is not its
//! job), booted fresh, else from the bare image; (2) the playbook applied to it
//! over SSH like any sandbox job; (3) a diff from the source sandbox at the playbook's
//! `to_snapshot` to the fresh sandbox now: every file, package and service that differs
//! is a [`Difference`](fluid_client::ansible::Difference), except the paths of
//! `[verify] ignore_paths` (identity every sandbox gets at first boot; what they were
//! is printed in the job's output). "Reproduces" means no difference. The result is
//! stored on the job and on the playbook. (4) The fresh sandbox is destroyed at the
//! end, whatever happened.

mod differences;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fluid_client::ansible::{PlaybookSource, Verification};
use fluid_client::types::{CreateSandboxRequest, SandboxState};
use fluid_proto::model::{SandboxId, SnapshotName, SnapshotRef};

pub use differences::{describe, differences, is_ignored};

use crate::ansible::jobs::{JobEnd, JobService, KIND_VERIFY, PHASE_VERIFY, TARGET_SANDBOX};
use crate::ansible::playbooks::PlaybookService;
use crate::error::ServiceError;
use crate::governance::auth::{self, Caller, Permission};
use crate::network::egress::{Change, EgressService};
use crate::sandboxes::SandboxService;
use crate::sandboxes::diffs::{DiffService, DiffSpec, DiskSide};
use crate::store::{JobRecord, JobUpdate, SandboxRecord, Store};

/// The agent id verify sandboxes are created for.
pub const VERIFY_AGENT_ID: &str = "fluid-verify";
/// How long the fresh sandbox's sshd may take to answer.
pub const SSH_WAIT: Duration = Duration::from_secs(300);

pub struct Verifier {
    store: Arc<dyn Store>,
    sandboxes: Arc<SandboxService>,
    egress: Arc<EgressService>,
    diffs: Arc<DiffService>,
    playbooks: Arc<PlaybookService>,
    jobs: Arc<JobService>,
    ignore: Vec<String>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("ignore", &self.ignore)
            .finish_non_exhaustive()
    }
}

/// The services a [`Verifier`] drives.
#[derive(Clone)]
pub struct VerifyDeps {
    pub store: Arc<dyn Store>,
    pub sandboxes: Arc<SandboxService>,
    pub egress: Arc<EgressService>,
    pub diffs: Arc<DiffService>,
    pub playbooks: Arc<PlaybookService>,
    pub jobs: Arc<JobService>,
}

impl Verifier {
    pub fn new(deps: VerifyDeps, ignore: Vec<String>) -> Self {
        Self {
            store: deps.store,
            sandboxes: deps.sandboxes,
            egress: deps.egress,
            diffs: deps.diffs,
            playbooks: deps.playbooks,
            jobs: deps.jobs,
            ignore,
        }
    }

    /// Starts verifying the playbook `name`: checks, records the job and runs it in
    /// its own task (the handle ends with the job).
    pub async fn start(
        self: &Arc<Self>,
        caller: &Caller,
        name: &str,
    ) -> Result<(JobRecord, tokio::task::JoinHandle<()>), ServiceError> {
        auth::check(caller, Permission::Playbooks)?;
        let s = self.playbooks.stored_for(caller, name).await?;
        let source = s.playbook.source.clone().ok_or_else(|| {
            ServiceError::Invalid(format!(
                "playbook {name:?} was not generated from a sandbox: there is nothing to verify it against"
            ))
        })?;
        let src = self
            .store
            .get_sandbox(&source.sandbox_id)
            .await?
            .ok_or_else(|| {
                ServiceError::NotFound(format!(
                    "sandbox {} (the playbook's source) not found",
                    source.sandbox_id
                ))
            })?;
        auth::check_sandbox(caller, Permission::Read, &src)?;
        if src.state == SandboxState::Destroyed {
            return Err(ServiceError::Conflict(format!(
                "sandbox {} (the playbook's source) is destroyed: its disk and snapshots are gone",
                src.id
            )));
        }
        crate::ansible::jobs::check_runnable_hosts(&s.playbook.name, &s.playbook.hosts)?;
        let yaml = s.yaml()?;
        let job = self.jobs.new_job(
            caller,
            KIND_VERIFY,
            &s.playbook.name,
            &src.id,
            TARGET_SANDBOX,
            None,
            false,
            PHASE_VERIFY,
            yaml,
        );
        self.jobs.insert(&job, caller).await?;
        let this = self.clone();
        let j = job.clone();
        let task = tokio::spawn(async move { this.run(j, source, src).await });
        Ok((job, task))
    }

    async fn run(&self, job: JobRecord, source: PlaybookSource, src: SandboxRecord) {
        let flusher = self.jobs.spawn_flusher(&job);
        let mut fresh = None;
        let end = match self.jobs.start(&job, PHASE_VERIFY).await {
            Ok(()) => self.steps(&job, &source, &src, &mut fresh).await,
            Err(e) => JobEnd::failed(e.to_string()),
        };
        if let Some(id) = fresh {
            self.jobs.say(
                &job.id,
                &format!("=== destroying the verify sandbox {id} ==="),
            );
            if let Err(e) = self.sandboxes.destroy_unchecked(&id).await {
                tracing::warn!(job = %job.id, sandbox = %id, error = %e, "destroying a verify sandbox");
                self.jobs.say(
                    &job.id,
                    &format!("destroying {id} failed ({e}); the reconciler or its TTL removes it"),
                );
            }
        }
        drop(flusher);
        self.jobs.settle(&job, end).await;
    }

    async fn steps(
        &self,
        job: &JobRecord,
        source: &PlaybookSource,
        src: &SandboxRecord,
        fresh: &mut Option<SandboxId>,
    ) -> JobEnd {
        let say = |line: String| self.jobs.say(&job.id, &line);
        say(format!(
            "=== creating a sandbox of {} on host {} ===",
            source.base_image,
            src.host_name.as_deref().unwrap_or("-")
        ));
        let sb = match self.create_sandbox(job, source, src, fresh).await {
            Ok(sb) => sb,
            Err(e) => return JobEnd::failed(format!("creating the verify sandbox: {e}")),
        };
        say(format!("=== waiting for sshd on {} ===", sb.id));
        if let Err(e) = self.jobs.wait_for_ssh(&sb, SSH_WAIT).await {
            return JobEnd::failed(e.to_string());
        }
        say(format!("=== ansible-playbook on {} ===", sb.id));
        let run = self.jobs.run_on_sandbox(job, &sb, false).await;
        let mut end = JobEnd::of_run(&run);
        if run.is_err() {
            return end;
        }
        say(format!(
            "=== diff: {} at {} (expected) against {} now (actual) ===",
            src.id, source.to_snapshot, sb.id
        ));
        let (Ok(src_id), Ok(fresh_id)) = (
            SandboxId::parse("sandbox_id", &src.id),
            SandboxId::parse("sandbox_id", &sb.id),
        ) else {
            return JobEnd::failed("invalid sandbox id");
        };
        let from = match DiskSide::parse(&src_id, "to_snapshot", &source.to_snapshot) {
            Ok(f) => f,
            Err(e) => return JobEnd::failed(e.to_string()),
        };
        let spec = DiffSpec {
            owner: src_id,
            from,
            to: DiskSide {
                sandbox_id: fresh_id,
                snapshot: None,
            },
            commands: false,
            store: false,
        };
        let diff = match self.diffs.diff(spec).await {
            Ok(d) => d,
            Err(e) => return JobEnd::failed(format!("diffing the result: {e}")),
        };
        let (found, ignored) = differences(&diff.diff.diff_json, &self.ignore);
        if !ignored.is_empty() {
            say(format!(
                "ignored (identity of each sandbox, [verify] ignore_paths): {}",
                ignored.join(", ")
            ));
        }
        for d in &found {
            say(format!(
                "difference: {} {}: expected {}, actual {}",
                d.what, d.name, d.expected, d.actual
            ));
        }
        let v = Verification {
            reproduces: found.is_empty(),
            differences: found,
            job_id: job.id.clone(),
            verify_sandbox_id: sb.id.clone(),
            verified_at: Utc::now(),
        };
        say(format!(
            "reproduces: {} ({} difference(s))",
            if v.reproduces { "yes" } else { "no" },
            v.differences.len()
        ));
        if let Err(e) = self.playbooks.set_verification(&job.playbook, &v).await {
            tracing::warn!(job = %job.id, error = %e, "storing a playbook's verification");
        }
        end.verification = Some(v);
        end
    }

    /// The source's `from_snapshot`, when it still exists.
    async fn starting_point(
        &self,
        source: &PlaybookSource,
        src: &SandboxRecord,
    ) -> Result<Option<SnapshotRef>, ServiceError> {
        let Ok(name) = SnapshotName::parse("from_snapshot", &source.from_snapshot) else {
            return Ok(None);
        };
        if self
            .store
            .get_snapshot(&src.id, name.as_str())
            .await?
            .is_none()
        {
            return Ok(None);
        }
        let sandbox_id =
            SandboxId::parse("id", &src.id).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        Ok(Some(SnapshotRef { sandbox_id, name }))
    }

    /// The fresh sandbox: the source's image, host, size and egress allow-list.
    async fn create_sandbox(
        &self,
        job: &JobRecord,
        source: &PlaybookSource,
        src: &SandboxRecord,
        fresh: &mut Option<SandboxId>,
    ) -> Result<SandboxRecord, ServiceError> {
        let ttl = self.jobs.settings().job_timeout.as_secs() + SSH_WAIT.as_secs() + 3600;
        let req = CreateSandboxRequest {
            source_vm_name: source.base_image.clone(),
            agent_id: VERIFY_AGENT_ID.into(),
            vm_name: Some(format!("verify-{}", job.id.trim_start_matches("JOB-"))),
            cpu: Some(src.cpus),
            memory_mb: Some(src.memory_mb),
            // A safety net: the janitor removes it should this controller die.
            ttl_seconds: Some(i64::try_from(ttl).unwrap_or(i64::MAX)),
            auto_start: Some(true),
            wait_for_ip: Some(true),
        };
        let mut prepared = self.sandboxes.prepare(&req, None)?;
        prepared.pin_host = src.host_name.clone();
        // The playbook is the change from `from_snapshot` on: it is proven on the
        // source's disk as it was then (a fork of that snapshot, booted fresh), so what
        // happened before — apt sources, say — is not counted against it. Without the
        // snapshot, it starts from the bare image.
        if let Some(start) = self.starting_point(source, src).await? {
            self.jobs.say(
                &job.id,
                &format!("starting from {}@{} (disk state)", src.id, start.name),
            );
            prepared.create.from_snapshot = Some(start);
        }
        let row = self.sandboxes.place(&prepared).await?;
        let id =
            SandboxId::parse("id", &row.id).map_err(|e| ServiceError::Invalid(e.to_string()))?;
        *fresh = Some(id.clone());
        self.jobs
            .update(
                job,
                JobUpdate {
                    sandbox_id: Some(row.id.clone()),
                    ..Default::default()
                },
                None,
            )
            .await?;
        let (_, policy) = self.egress.stored(&src.id).await?;
        if !policy.allow.is_empty() {
            let who = Change {
                actor: "controller".into(),
                role: "system".into(),
                action: "set",
                approval_id: None,
            };
            self.egress
                .change(&row.id, &who, |_| Ok(policy.clone()))
                .await?;
        }
        let created = self.sandboxes.launch(prepared, row).await?;
        if created.sandbox.state != SandboxState::Running {
            return Err(ServiceError::Conflict(format!(
                "sandbox {} is {}, not RUNNING",
                created.sandbox.id, created.sandbox.state
            )));
        }
        self.store
            .get_sandbox(id.as_str())
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("sandbox {id} vanished")))
    }
}
