//! The [`PlaybookStore`] implementation, written once for every [`Dialect`]; the SQL is
//! in [`super::playbook_rows`].
//!
//! Every write to a playbook's tasks first touches the playbook row (`updated_at`),
//! which locks it in PostgreSQL (and SQLite's `BEGIN IMMEDIATE` locks the database),
//! so concurrent changes to one playbook serialise and positions stay consistent.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fluid_client::ansible::Verification;
use sqlx::{ColumnIndex, Executor};

use super::dialect::{Conn, Dialect, Field, Param, Row};
use super::playbook_rows as pr;
use super::playbooks::{
    JobFilter, JobRecord, JobUpdate, PlaybookRecord, PlaybookStore, TaskRecord, TaskWrite,
};
use super::trust::NewAuditEvent;
use super::trust_impl::append_in_tx;
use super::{StoreError, rows};

#[async_trait]
impl<D> PlaybookStore for D
where
    D: Dialect,
    for<'c> &'c mut Conn<D>: Executor<'c, Database = D::Db>,
    usize: ColumnIndex<Row<D>>,
    for<'r> &'r str: ColumnIndex<Row<D>>,
    for<'q> &'q str: Param<'q, D::Db>,
    for<'q> Option<&'q str>: Param<'q, D::Db>,
    String: Field<D::Db>,
    Option<String>: Field<D::Db>,
    i64: Field<D::Db>,
    Option<i32>: Field<D::Db>,
    bool: Field<D::Db>,
    DateTime<Utc>: Field<D::Db>,
    Option<DateTime<Utc>>: Field<D::Db>,
{
    async fn create_playbook(
        &self,
        p: &PlaybookRecord,
        tasks: &[TaskRecord],
    ) -> Result<(), StoreError> {
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

    async fn get_playbook(&self, name: &str) -> Result<Option<PlaybookRecord>, StoreError> {
        let row: Option<pr::PlaybookRow> = sqlx::query_as(pr::GET_PLAYBOOK)
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        row.map(TryInto::try_into).transpose()
    }

    async fn list_playbooks(
        &self,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<PlaybookRecord>, u64), StoreError> {
        let rs: Vec<pr::PlaybookRow> = sqlx::query_as(pr::LIST_PLAYBOOKS)
            .bind(i64::from(limit))
            .bind(i64::try_from(offset).unwrap_or(i64::MAX))
            .fetch_all(self.pool())
            .await?;
        let (total,): (i64,) = sqlx::query_as(pr::COUNT_PLAYBOOKS)
            .fetch_one(self.pool())
            .await?;
        Ok((pr::playbooks(rs)?, total.max(0) as u64))
    }

    async fn delete_playbook(&self, name: &str) -> Result<bool, StoreError> {
        let row: Option<(String,)> = sqlx::query_as(pr::DELETE_PLAYBOOK)
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.is_some())
    }

    async fn set_playbook_verification(
        &self,
        name: &str,
        v: &Verification,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let row: Option<(String,)> = sqlx::query_as(pr::SET_VERIFICATION)
            .bind(name)
            .bind(pr::json_text(v)?)
            .bind(now)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.is_some())
    }

    async fn list_tasks(&self, playbook_id: &str) -> Result<Vec<TaskRecord>, StoreError> {
        let rs: Vec<pr::TaskRow> = sqlx::query_as(pr::LIST_TASKS)
            .bind(playbook_id)
            .fetch_all(self.pool())
            .await?;
        pr::tasks(rs)
    }

    async fn add_task(&self, t: &TaskRecord, now: DateTime<Utc>) -> Result<TaskWrite, StoreError> {
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
        t: &TaskRecord,
        now: DateTime<Utc>,
    ) -> Result<TaskWrite, StoreError> {
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
    ) -> Result<TaskWrite, StoreError> {
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
        let rec: TaskRecord = row.try_into()?;
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

    async fn insert_job(&self, j: &JobRecord, audit: &NewAuditEvent) -> Result<(), StoreError> {
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
        append_in_tx::<D>(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_job(&self, id: &str) -> Result<Option<JobRecord>, StoreError> {
        let row: Option<pr::JobRow> = sqlx::query_as(pr::GET_JOB)
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.map(TryInto::try_into).transpose()
    }

    async fn list_jobs(&self, f: &JobFilter) -> Result<(Vec<JobRecord>, u64), StoreError> {
        let status = f.status.map(|s| s.as_str());
        let rs: Vec<pr::JobRow> = sqlx::query_as(pr::LIST_JOBS)
            .bind(&f.playbook)
            .bind(status)
            .bind(&f.agent_id)
            .bind(i64::from(f.limit))
            .bind(i64::try_from(f.offset).unwrap_or(i64::MAX))
            .fetch_all(self.pool())
            .await?;
        let (total,): (i64,) = sqlx::query_as(pr::COUNT_JOBS)
            .bind(&f.playbook)
            .bind(status)
            .bind(&f.agent_id)
            .fetch_one(self.pool())
            .await?;
        Ok((pr::jobs(rs)?, total.max(0) as u64))
    }

    async fn update_job(
        &self,
        id: &str,
        u: &JobUpdate,
        audit: Option<&NewAuditEvent>,
    ) -> Result<Option<JobRecord>, StoreError> {
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
            append_in_tx::<D>(&mut tx, e).await?;
        }
        tx.commit().await?;
        Ok(Some(row.try_into()?))
    }

    async fn unfinished_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        let rs: Vec<pr::JobRow> = sqlx::query_as(pr::UNFINISHED_JOBS)
            .fetch_all(self.pool())
            .await?;
        pr::jobs(rs)
    }
}
