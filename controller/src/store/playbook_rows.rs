//! SQL and row shapes of playbooks, tasks and Ansible jobs, shared by both dialects
//! like [`super::rows`], and the [`PlaybookStore`](super::playbooks::PlaybookStore)
//! implementation written once for both (instantiated per dialect by
//! [`playbook_store`]).
//!
//! Every write to a playbook's tasks first touches the playbook row (`updated_at`),
//! which locks it in PostgreSQL (and SQLite's `BEGIN IMMEDIATE` locks the database),
//! so concurrent changes to one playbook serialise and positions stay consistent.

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

/// Implements [`PlaybookStore`](super::playbooks::PlaybookStore) for `$store` (a
/// struct with a `pool` field and the `begin_chain` / `append_in_tx` items of
/// [`super::trust_shared`]).
macro_rules! playbook_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::playbooks::PlaybookStore for $store {
            async fn create_playbook(
                &self,
                p: &$crate::store::playbooks::PlaybookRecord,
                tasks: &[$crate::store::playbooks::TaskRecord],
            ) -> Result<(), StoreError> {
                use $crate::store::playbook_rows as pr;
                let mut tx = self.begin_chain().await?;
                sqlx::query(pr::INSERT_PLAYBOOK)
                    .bind(&p.id)
                    .bind(&p.name)
                    .bind(&p.hosts)
                    .bind(p.r#become)
                    .bind(pr::opt_json_text(p.source.as_ref())?)
                    .bind(pr::opt_json_text(p.verification.as_ref())?)
                    .bind(p.created_at)
                    .bind(p.updated_at)
                    .bind(&p.owner_agent_id)
                    .bind(&p.created_by)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| rows::unique_or(e, || format!("playbook {:?}", p.name)))?;
                for t in tasks {
                    sqlx::query(pr::INSERT_TASK)
                        .bind(&t.id)
                        .bind(&p.id)
                        .bind(t.position)
                        .bind(&t.name)
                        .bind(&t.module)
                        .bind(pr::json_text(&t.params)?)
                        .bind(pr::json_text(&t.options)?)
                        .bind(t.handler)
                        .bind(t.created_at)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| rows::unique_or(e, || format!("task {}", t.id)))?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn get_playbook(
                &self,
                name: &str,
            ) -> Result<Option<$crate::store::playbooks::PlaybookRecord>, StoreError> {
                use $crate::store::playbook_rows as pr;
                let row: Option<pr::PlaybookRow> = sqlx::query_as(pr::GET_PLAYBOOK)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(TryInto::try_into).transpose()
            }

            async fn list_playbooks(
                &self,
                limit: u32,
                offset: u64,
            ) -> Result<(Vec<$crate::store::playbooks::PlaybookRecord>, u64), StoreError> {
                use $crate::store::playbook_rows as pr;
                let rs: Vec<pr::PlaybookRow> = sqlx::query_as(pr::LIST_PLAYBOOKS)
                    .bind(i64::from(limit))
                    .bind(i64::try_from(offset).unwrap_or(i64::MAX))
                    .fetch_all(&self.pool)
                    .await?;
                let (total,): (i64,) = sqlx::query_as(pr::COUNT_PLAYBOOKS)
                    .fetch_one(&self.pool)
                    .await?;
                Ok((pr::playbooks(rs)?, total.max(0) as u64))
            }

            async fn delete_playbook(&self, name: &str) -> Result<bool, StoreError> {
                let row: Option<(String,)> =
                    sqlx::query_as($crate::store::playbook_rows::DELETE_PLAYBOOK)
                        .bind(name)
                        .fetch_optional(&self.pool)
                        .await?;
                Ok(row.is_some())
            }

            async fn set_playbook_verification(
                &self,
                name: &str,
                v: &fluid_client::ansible::Verification,
                now: DateTime<Utc>,
            ) -> Result<bool, StoreError> {
                use $crate::store::playbook_rows as pr;
                let row: Option<(String,)> = sqlx::query_as(pr::SET_VERIFICATION)
                    .bind(name)
                    .bind(pr::json_text(v)?)
                    .bind(now)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.is_some())
            }

            async fn list_tasks(
                &self,
                playbook_id: &str,
            ) -> Result<Vec<$crate::store::playbooks::TaskRecord>, StoreError> {
                use $crate::store::playbook_rows as pr;
                let rs: Vec<pr::TaskRow> = sqlx::query_as(pr::LIST_TASKS)
                    .bind(playbook_id)
                    .fetch_all(&self.pool)
                    .await?;
                pr::tasks(rs)
            }

            async fn add_task(
                &self,
                t: &$crate::store::playbooks::TaskRecord,
                now: DateTime<Utc>,
            ) -> Result<$crate::store::playbooks::TaskWrite, StoreError> {
                use $crate::store::playbook_rows as pr;
                use $crate::store::playbooks::TaskWrite;
                let mut tx = self.begin_chain().await?;
                let touched: Option<(String,)> = sqlx::query_as(pr::TOUCH_PLAYBOOK)
                    .bind(&t.playbook_id)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?;
                if touched.is_none() {
                    tx.rollback().await?;
                    return Ok(TaskWrite::NoPlaybook);
                }
                let row: pr::TaskRow = sqlx::query_as(pr::APPEND_TASK)
                    .bind(&t.id)
                    .bind(&t.playbook_id)
                    .bind(&t.name)
                    .bind(&t.module)
                    .bind(pr::json_text(&t.params)?)
                    .bind(pr::json_text(&t.options)?)
                    .bind(t.handler)
                    .bind(t.created_at)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| rows::unique_or(e, || format!("task {}", t.id)))?;
                tx.commit().await?;
                Ok(TaskWrite::Done(row.try_into()?))
            }

            async fn update_task(
                &self,
                t: &$crate::store::playbooks::TaskRecord,
                now: DateTime<Utc>,
            ) -> Result<$crate::store::playbooks::TaskWrite, StoreError> {
                use $crate::store::playbook_rows as pr;
                use $crate::store::playbooks::TaskWrite;
                let mut tx = self.begin_chain().await?;
                let touched: Option<(String,)> = sqlx::query_as(pr::TOUCH_PLAYBOOK)
                    .bind(&t.playbook_id)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?;
                if touched.is_none() {
                    tx.rollback().await?;
                    return Ok(TaskWrite::NoPlaybook);
                }
                let row: Option<pr::TaskRow> = sqlx::query_as(pr::UPDATE_TASK)
                    .bind(&t.playbook_id)
                    .bind(&t.id)
                    .bind(&t.name)
                    .bind(&t.module)
                    .bind(pr::json_text(&t.params)?)
                    .bind(pr::json_text(&t.options)?)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = row else {
                    tx.rollback().await?;
                    return Ok(TaskWrite::NoTask);
                };
                tx.commit().await?;
                Ok(TaskWrite::Done(row.try_into()?))
            }

            async fn delete_task(
                &self,
                playbook_id: &str,
                task_id: &str,
                now: DateTime<Utc>,
            ) -> Result<$crate::store::playbooks::TaskWrite, StoreError> {
                use $crate::store::playbook_rows as pr;
                use $crate::store::playbooks::TaskWrite;
                let mut tx = self.begin_chain().await?;
                let touched: Option<(String,)> = sqlx::query_as(pr::TOUCH_PLAYBOOK)
                    .bind(playbook_id)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?;
                if touched.is_none() {
                    tx.rollback().await?;
                    return Ok(TaskWrite::NoPlaybook);
                }
                let row: Option<pr::TaskRow> = sqlx::query_as(pr::DELETE_TASK)
                    .bind(playbook_id)
                    .bind(task_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = row else {
                    tx.rollback().await?;
                    return Ok(TaskWrite::NoTask);
                };
                let rec: $crate::store::playbooks::TaskRecord = row.try_into()?;
                sqlx::query(pr::CLOSE_GAP)
                    .bind(playbook_id)
                    .bind(rec.position)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(TaskWrite::Done(rec))
            }

            async fn reorder_tasks(
                &self,
                playbook_id: &str,
                task_ids: &[String],
                now: DateTime<Utc>,
            ) -> Result<bool, StoreError> {
                use $crate::store::playbook_rows as pr;
                let mut tx = self.begin_chain().await?;
                let touched: Option<(String,)> = sqlx::query_as(pr::TOUCH_PLAYBOOK)
                    .bind(playbook_id)
                    .bind(now)
                    .fetch_optional(&mut *tx)
                    .await?;
                let have: Vec<(String,)> = sqlx::query_as(pr::TASK_IDS)
                    .bind(playbook_id)
                    .fetch_all(&mut *tx)
                    .await?;
                let mut have: Vec<&str> = have.iter().map(|(id,)| id.as_str()).collect();
                have.sort_unstable();
                let mut want: Vec<&str> = task_ids.iter().map(String::as_str).collect();
                want.sort_unstable();
                if touched.is_none() || have != want {
                    tx.rollback().await?;
                    return Ok(false);
                }
                for (pos, id) in task_ids.iter().enumerate() {
                    sqlx::query(pr::SET_POSITION)
                        .bind(playbook_id)
                        .bind(id)
                        .bind(i64::try_from(pos).unwrap_or(i64::MAX))
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn insert_job(
                &self,
                j: &$crate::store::playbooks::JobRecord,
                audit: &NewAuditEvent,
            ) -> Result<(), StoreError> {
                use $crate::store::playbook_rows as pr;
                let mut tx = self.begin_chain().await?;
                sqlx::query(pr::INSERT_JOB)
                    .bind(&j.id)
                    .bind(&j.kind)
                    .bind(&j.playbook)
                    .bind(&j.vm_name)
                    .bind(&j.target_kind)
                    .bind(&j.sandbox_id)
                    .bind(j.check)
                    .bind(j.status.as_str())
                    .bind(&j.phase)
                    .bind(&j.approval_id)
                    .bind(&j.playbook_yaml)
                    .bind(&j.playbook_sha256)
                    .bind(&j.check_output)
                    .bind(&j.output)
                    .bind(j.exit_code)
                    .bind(&j.error)
                    .bind(pr::opt_json_text(j.verification.as_ref())?)
                    .bind(&j.created_by)
                    .bind(&j.agent_id)
                    .bind(j.created_at)
                    .bind(j.started_at)
                    .bind(j.finished_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| rows::unique_or(e, || format!("job {}", j.id)))?;
                Self::append_in_tx(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn get_job(
                &self,
                id: &str,
            ) -> Result<Option<$crate::store::playbooks::JobRecord>, StoreError> {
                use $crate::store::playbook_rows as pr;
                let row: Option<pr::JobRow> = sqlx::query_as(pr::GET_JOB)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(TryInto::try_into).transpose()
            }

            async fn list_jobs(
                &self,
                f: &$crate::store::playbooks::JobFilter,
            ) -> Result<(Vec<$crate::store::playbooks::JobRecord>, u64), StoreError> {
                use $crate::store::playbook_rows as pr;
                let status = f.status.map(|s| s.as_str());
                let rs: Vec<pr::JobRow> = sqlx::query_as(pr::LIST_JOBS)
                    .bind(&f.playbook)
                    .bind(status)
                    .bind(&f.agent_id)
                    .bind(i64::from(f.limit))
                    .bind(i64::try_from(f.offset).unwrap_or(i64::MAX))
                    .fetch_all(&self.pool)
                    .await?;
                let (total,): (i64,) = sqlx::query_as(pr::COUNT_JOBS)
                    .bind(&f.playbook)
                    .bind(status)
                    .bind(&f.agent_id)
                    .fetch_one(&self.pool)
                    .await?;
                Ok((pr::jobs(rs)?, total.max(0) as u64))
            }

            async fn update_job(
                &self,
                id: &str,
                u: &$crate::store::playbooks::JobUpdate,
                audit: Option<&NewAuditEvent>,
            ) -> Result<Option<$crate::store::playbooks::JobRecord>, StoreError> {
                use $crate::store::playbook_rows as pr;
                let mut tx = self.begin_chain().await?;
                let row: Option<pr::JobRow> = sqlx::query_as(pr::UPDATE_JOB)
                    .bind(id)
                    .bind(u.status.map(|s| s.as_str()))
                    .bind(&u.phase)
                    .bind(&u.sandbox_id)
                    .bind(&u.approval_id)
                    .bind(&u.check_output)
                    .bind(&u.output)
                    .bind(u.exit_code)
                    .bind(&u.error)
                    .bind(pr::opt_json_text(u.verification.as_ref())?)
                    .bind(u.started_at)
                    .bind(u.finished_at)
                    .bind(u.expect_status.map(|s| s.as_str()))
                    .bind(&u.expect_phase)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = row else {
                    tx.rollback().await?;
                    return Ok(None);
                };
                if let Some(e) = audit {
                    Self::append_in_tx(&mut tx, e).await?;
                }
                tx.commit().await?;
                Ok(Some(row.try_into()?))
            }

            async fn unfinished_jobs(
                &self,
            ) -> Result<Vec<$crate::store::playbooks::JobRecord>, StoreError> {
                use $crate::store::playbook_rows as pr;
                let rs: Vec<pr::JobRow> = sqlx::query_as(pr::UNFINISHED_JOBS)
                    .fetch_all(&self.pool)
                    .await?;
                pr::jobs(rs)
            }
        }
    };
}

pub(crate) use playbook_store;
