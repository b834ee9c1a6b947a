//! SQL and row shapes of playbooks, tasks and Ansible jobs, shared by both dialects
//! like [`super::rows`]; the [`PlaybookStore`](super::playbooks::PlaybookStore)
//! implementation that runs them is [`super::playbooks_impl`].

use chrono::{DateTime, Utc};
use fluid_client::ansible::{JobStatus, PlaybookSource, Verification};

use super::StoreError;
use super::playbooks::{JobRecord, PlaybookRecord, TaskRecord};

macro_rules! playbook_columns {
    () => {
        "id, name, hosts, become, source_json, verification_json, created_at, updated_at, \
         owner_agent_id, created_by"
    };
}

macro_rules! task_columns {
    () => {
        "id, playbook_id, position, name, module, params_json, options_json, handler, created_at"
    };
}

macro_rules! job_columns {
    () => {
        "id, kind, playbook, vm_name, target_kind, sandbox_id, check_mode, status, phase, \
         approval_id, playbook_yaml, playbook_sha256, check_output, output, exit_code, error, \
         verification_json, created_by, agent_id, created_at, started_at, finished_at"
    };
}

pub(super) const INSERT_PLAYBOOK: &str = concat!(
    "INSERT INTO playbooks (",
    playbook_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
);

pub(super) const GET_PLAYBOOK: &str = concat!(
    "SELECT ",
    playbook_columns!(),
    " FROM playbooks WHERE name = $1"
);

pub(super) const LIST_PLAYBOOKS: &str = concat!(
    "SELECT ",
    playbook_columns!(),
    " FROM playbooks ORDER BY name LIMIT $1 OFFSET $2"
);

pub(super) const COUNT_PLAYBOOKS: &str = "SELECT COUNT(*) FROM playbooks";

pub(super) const DELETE_PLAYBOOK: &str = "DELETE FROM playbooks WHERE name = $1 RETURNING id";

pub(super) const SET_VERIFICATION: &str =
    "UPDATE playbooks SET verification_json = $2, updated_at = $3 WHERE name = $1 RETURNING id";

/// Locks the playbook row for a change to its tasks.
pub(super) const TOUCH_PLAYBOOK: &str =
    "UPDATE playbooks SET updated_at = $2 WHERE id = $1 RETURNING id";

pub(super) const INSERT_TASK: &str = concat!(
    "INSERT INTO playbook_tasks (",
    task_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
);

pub(super) const APPEND_TASK: &str = concat!(
    "INSERT INTO playbook_tasks (",
    task_columns!(),
    ") VALUES ($1, $2, (SELECT COALESCE(MAX(position), -1) + 1 FROM playbook_tasks WHERE playbook_id = $2), \
     $3, $4, $5, $6, $7, $8) RETURNING ",
    task_columns!()
);

pub(super) const LIST_TASKS: &str = concat!(
    "SELECT ",
    task_columns!(),
    " FROM playbook_tasks WHERE playbook_id = $1 ORDER BY position, created_at, id"
);

pub(super) const UPDATE_TASK: &str = concat!(
    "UPDATE playbook_tasks SET name = $3, module = $4, params_json = $5, options_json = $6 \
     WHERE playbook_id = $1 AND id = $2 RETURNING ",
    task_columns!()
);

pub(super) const DELETE_TASK: &str = concat!(
    "DELETE FROM playbook_tasks WHERE playbook_id = $1 AND id = $2 RETURNING ",
    task_columns!()
);

pub(super) const CLOSE_GAP: &str = "UPDATE playbook_tasks SET position = position - 1 \
     WHERE playbook_id = $1 AND position > $2";

pub(super) const TASK_IDS: &str = "SELECT id FROM playbook_tasks WHERE playbook_id = $1";

pub(super) const SET_POSITION: &str =
    "UPDATE playbook_tasks SET position = $3 WHERE playbook_id = $1 AND id = $2";

pub(super) const INSERT_JOB: &str = concat!(
    "INSERT INTO ansible_jobs (",
    job_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
     $19, $20, $21, $22)"
);

pub(super) const GET_JOB: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM ansible_jobs WHERE id = $1"
);

pub(super) const LIST_JOBS: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM ansible_jobs WHERE ($1 IS NULL OR playbook = $1) AND ($2 IS NULL OR status = $2) \
     AND ($3 IS NULL OR agent_id = $3) ORDER BY created_at DESC, id DESC LIMIT $4 OFFSET $5"
);

pub(super) const COUNT_JOBS: &str = "SELECT COUNT(*) FROM ansible_jobs \
     WHERE ($1 IS NULL OR playbook = $1) AND ($2 IS NULL OR status = $2) \
     AND ($3 IS NULL OR agent_id = $3)";

pub(super) const UPDATE_JOB: &str = concat!(
    "UPDATE ansible_jobs SET status = COALESCE($2, status), phase = COALESCE($3, phase), \
     sandbox_id = COALESCE($4, sandbox_id), approval_id = COALESCE($5, approval_id), \
     check_output = COALESCE($6, check_output), output = COALESCE($7, output), \
     exit_code = COALESCE($8, exit_code), error = COALESCE($9, error), \
     verification_json = COALESCE($10, verification_json), started_at = COALESCE($11, started_at), \
     finished_at = COALESCE($12, finished_at) \
     WHERE id = $1 AND ($13 IS NULL OR status = $13) AND ($14 IS NULL OR phase = $14) RETURNING ",
    job_columns!()
);

pub(super) const UNFINISHED_JOBS: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM ansible_jobs WHERE status IN ('pending', 'running') ORDER BY created_at, id"
);

#[derive(Debug, sqlx::FromRow)]
pub(super) struct PlaybookRow {
    id: String,
    name: String,
    hosts: String,
    #[sqlx(rename = "become")]
    become_: bool,
    source_json: Option<String>,
    verification_json: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    owner_agent_id: Option<String>,
    created_by: Option<String>,
}

fn parse_json<T: serde::de::DeserializeOwned>(
    what: &str,
    text: Option<&str>,
) -> Result<Option<T>, StoreError> {
    text.map(|t| serde_json::from_str(t).map_err(|e| StoreError::Corrupt(format!("{what}: {e}"))))
        .transpose()
}

/// JSON text of a value for a text column.
pub(super) fn json_text<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Db(format!("encoding JSON: {e}")))
}

pub(super) fn opt_json_text<T: serde::Serialize>(
    v: Option<&T>,
) -> Result<Option<String>, StoreError> {
    v.map(json_text).transpose()
}

impl TryFrom<PlaybookRow> for PlaybookRecord {
    type Error = StoreError;
    fn try_from(r: PlaybookRow) -> Result<Self, StoreError> {
        let source: Option<PlaybookSource> = parse_json(
            &format!("playbook {} source", r.id),
            r.source_json.as_deref(),
        )?;
        let verification: Option<Verification> = parse_json(
            &format!("playbook {} verification", r.id),
            r.verification_json.as_deref(),
        )?;
        Ok(Self {
            id: r.id,
            name: r.name,
            hosts: r.hosts,
            r#become: r.become_,
            source,
            verification,
            owner_agent_id: r.owner_agent_id,
            created_by: r.created_by,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

pub(super) fn playbooks(rows: Vec<PlaybookRow>) -> Result<Vec<PlaybookRecord>, StoreError> {
    rows.into_iter().map(PlaybookRecord::try_from).collect()
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct TaskRow {
    id: String,
    playbook_id: String,
    position: i64,
    name: String,
    module: String,
    params_json: String,
    options_json: String,
    handler: bool,
    created_at: DateTime<Utc>,
}

impl TryFrom<TaskRow> for TaskRecord {
    type Error = StoreError;
    fn try_from(r: TaskRow) -> Result<Self, StoreError> {
        let what = |f: &str| format!("task {} {f}", r.id);
        let params = parse_json(&what("params"), Some(&r.params_json))?.unwrap_or_default();
        let options = parse_json(&what("options"), Some(&r.options_json))?.unwrap_or_default();
        Ok(Self {
            id: r.id,
            playbook_id: r.playbook_id,
            position: r.position,
            name: r.name,
            module: r.module,
            params,
            options,
            handler: r.handler,
            created_at: r.created_at,
        })
    }
}

pub(super) fn tasks(rows: Vec<TaskRow>) -> Result<Vec<TaskRecord>, StoreError> {
    rows.into_iter().map(TaskRecord::try_from).collect()
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct JobRow {
    id: String,
    kind: String,
    playbook: String,
    vm_name: String,
    target_kind: String,
    sandbox_id: Option<String>,
    check_mode: bool,
    status: String,
    phase: String,
    approval_id: Option<String>,
    playbook_yaml: String,
    playbook_sha256: String,
    check_output: Option<String>,
    output: String,
    exit_code: Option<i32>,
    error: Option<String>,
    verification_json: Option<String>,
    created_by: String,
    agent_id: Option<String>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

impl TryFrom<JobRow> for JobRecord {
    type Error = StoreError;
    fn try_from(r: JobRow) -> Result<Self, StoreError> {
        let status = JobStatus::parse(&r.status)
            .ok_or_else(|| StoreError::Corrupt(format!("job {}: status {:?}", r.id, r.status)))?;
        let verification = parse_json(
            &format!("job {} verification", r.id),
            r.verification_json.as_deref(),
        )?;
        Ok(Self {
            id: r.id,
            kind: r.kind,
            playbook: r.playbook,
            vm_name: r.vm_name,
            target_kind: r.target_kind,
            sandbox_id: r.sandbox_id,
            check: r.check_mode,
            status,
            phase: r.phase,
            approval_id: r.approval_id,
            playbook_yaml: r.playbook_yaml,
            playbook_sha256: r.playbook_sha256,
            check_output: r.check_output,
            output: r.output,
            exit_code: r.exit_code,
            error: r.error,
            verification,
            created_by: r.created_by,
            agent_id: r.agent_id,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
        })
    }
}

pub(super) fn jobs(rows: Vec<JobRow>) -> Result<Vec<JobRecord>, StoreError> {
    rows.into_iter().map(JobRecord::try_from).collect()
}
