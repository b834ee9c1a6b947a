//! Ansible playbooks, their tasks, and the jobs that run them.
//!
//! A playbook and its tasks are intent the user edits (or the controller generated
//! from a sandbox's diff); the YAML file under the data dir is rendered from them.
//! A job is a record of one run: what it ran (the playbook's YAML, fixed when the job
//! was created, with its SHA-256), against what, the approval it waited for, and its
//! capped output. Job transitions are compare-and-set on the status and may append an
//! audit event in the same transaction, like commands. Written once for both dialects
//! ([`super::playbooks_impl`], with the SQL in [`super::playbook_rows`]).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fluid_client::ansible::{JobStatus, Playbook, PlaybookSource, Task, Verification};

use super::StoreError;
use super::trust::NewAuditEvent;

/// A playbook row.
#[derive(Debug, Clone, PartialEq)]
pub struct PlaybookRecord {
    /// `PBK-…`.
    pub id: String,
    /// Unique.
    pub name: String,
    pub hosts: String,
    pub r#become: bool,
    pub source: Option<PlaybookSource>,
    pub verification: Option<Verification>,
    /// The agent id of the token that created it (`None`: an operator or admin).
    pub owner_agent_id: Option<String>,
    /// The creating token's name.
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl PlaybookRecord {
    /// The API shape, with where its YAML file lives.
    pub fn to_api(&self, file_path: String) -> Playbook {
        Playbook {
            id: self.id.clone(),
            name: self.name.clone(),
            hosts: self.hosts.clone(),
            r#become: self.r#become,
            file_path,
            created_at: self.created_at,
            updated_at: self.updated_at,
            source: self.source.clone(),
            verification: self.verification.clone(),
            owner_agent_id: self.owner_agent_id.clone(),
            created_by: self.created_by.clone(),
        }
    }
}

/// A task row (or a handler, with `handler`).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    /// `TSK-…`.
    pub id: String,
    pub playbook_id: String,
    /// 0-based place among the playbook's tasks and handlers.
    pub position: i64,
    pub name: String,
    pub module: String,
    /// The module's arguments (a JSON object, or a string for free-form modules).
    pub params: serde_json::Value,
    /// Task keywords beside the module (`notify`, `tags`, `when`, …): an object.
    pub options: serde_json::Value,
    pub handler: bool,
    pub created_at: DateTime<Utc>,
}

impl TaskRecord {
    pub fn to_api(&self) -> Task {
        Task {
            id: self.id.clone(),
            playbook_id: self.playbook_id.clone(),
            position: self.position,
            name: self.name.clone(),
            module: self.module.clone(),
            params: self.params.clone(),
            created_at: self.created_at,
            options: self.options.clone(),
            handler: self.handler,
        }
    }
}

/// A job row.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    /// `JOB-…`.
    pub id: String,
    /// `run` or `verify`.
    pub kind: String,
    pub playbook: String,
    pub vm_name: String,
    /// `sandbox` or `production`.
    pub target_kind: String,
    /// The sandbox it runs against (a verify's fresh sandbox, once created).
    pub sandbox_id: Option<String>,
    pub check: bool,
    pub status: JobStatus,
    /// `check`, `awaiting_approval`, `apply`, `verify`, `done`.
    pub phase: String,
    pub approval_id: Option<String>,
    /// The playbook as this job runs it.
    pub playbook_yaml: String,
    pub playbook_sha256: String,
    pub check_output: Option<String>,
    pub output: String,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub verification: Option<Verification>,
    pub created_by: String,
    /// The agent id the creator's token is scoped to.
    pub agent_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl JobRecord {
    pub fn to_api(&self) -> fluid_client::ansible::Job {
        fluid_client::ansible::Job {
            id: self.id.clone(),
            kind: self.kind.clone(),
            playbook: self.playbook.clone(),
            vm_name: self.vm_name.clone(),
            target_kind: self.target_kind.clone(),
            check: self.check,
            status: self.status,
            phase: self.phase.clone(),
            approval_id: self.approval_id.clone(),
            check_output: self.check_output.clone(),
            output: self.output.clone(),
            exit_code: self.exit_code,
            error: self.error.clone(),
            verification: self.verification.clone(),
            created_by: self.created_by.clone(),
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
        }
    }
}

/// A change to a job row; `None` fields are left as they are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobUpdate {
    pub status: Option<JobStatus>,
    pub phase: Option<String>,
    pub sandbox_id: Option<String>,
    pub approval_id: Option<String>,
    pub check_output: Option<String>,
    pub output: Option<String>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub verification: Option<Verification>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Apply only while the job has this status (compare-and-set).
    pub expect_status: Option<JobStatus>,
    /// Apply only while the job is in this phase (compare-and-set).
    pub expect_phase: Option<String>,
}

/// `GET /v1/ansible/jobs` filters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub playbook: Option<String>,
    pub status: Option<JobStatus>,
    /// Only jobs created by callers scoped to this agent id.
    pub agent_id: Option<String>,
    pub limit: u32,
    pub offset: u64,
}

/// What a task change to a playbook did.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskWrite {
    Done(TaskRecord),
    NoPlaybook,
    NoTask,
}

#[async_trait]
pub trait PlaybookStore: Send + Sync + 'static {
    /// Inserts a playbook and its tasks in one transaction; [`StoreError::Conflict`]
    /// when the name is taken.
    async fn create_playbook(
        &self,
        p: &PlaybookRecord,
        tasks: &[TaskRecord],
    ) -> Result<(), StoreError>;
    async fn get_playbook(&self, name: &str) -> Result<Option<PlaybookRecord>, StoreError>;
    /// A page of playbooks by name, and their total.
    async fn list_playbooks(
        &self,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<PlaybookRecord>, u64), StoreError>;
    /// Deletes a playbook and its tasks; `false` when unknown.
    async fn delete_playbook(&self, name: &str) -> Result<bool, StoreError>;
    /// Stores a playbook's last verification; `false` when unknown.
    async fn set_playbook_verification(
        &self,
        name: &str,
        v: &Verification,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// The playbook's tasks and handlers, by position.
    async fn list_tasks(&self, playbook_id: &str) -> Result<Vec<TaskRecord>, StoreError>;
    /// Appends a task (its `position` is set to the next free one) and touches the
    /// playbook.
    async fn add_task(&self, t: &TaskRecord, now: DateTime<Utc>) -> Result<TaskWrite, StoreError>;
    /// Replaces a task's name, module, params and options; touches the playbook.
    async fn update_task(
        &self,
        t: &TaskRecord,
        now: DateTime<Utc>,
    ) -> Result<TaskWrite, StoreError>;
    /// Deletes a task, closing the gap in positions; touches the playbook.
    async fn delete_task(
        &self,
        playbook_id: &str,
        task_id: &str,
        now: DateTime<Utc>,
    ) -> Result<TaskWrite, StoreError>;
    /// Sets positions to the order of `task_ids`, which must name every task of the
    /// playbook exactly once (`Ok(false)` otherwise, and nothing changes).
    async fn reorder_tasks(
        &self,
        playbook_id: &str,
        task_ids: &[String],
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Inserts a job and appends its `created` audit event in the same transaction.
    async fn insert_job(&self, j: &JobRecord, audit: &NewAuditEvent) -> Result<(), StoreError>;
    async fn get_job(&self, id: &str) -> Result<Option<JobRecord>, StoreError>;
    /// A page of jobs, newest first, and the total matching the filter.
    async fn list_jobs(&self, f: &JobFilter) -> Result<(Vec<JobRecord>, u64), StoreError>;
    /// Applies `u` (when `expect_status` matches), appending `audit` in the same
    /// transaction; `None` when the job is unknown or the status did not match.
    async fn update_job(
        &self,
        id: &str,
        u: &JobUpdate,
        audit: Option<&NewAuditEvent>,
    ) -> Result<Option<JobRecord>, StoreError>;
    /// Jobs not finished or failed (the ones a restarted controller must settle).
    async fn unfinished_jobs(&self) -> Result<Vec<JobRecord>, StoreError>;
}
