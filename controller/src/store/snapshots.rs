//! Snapshots and diffs: a sandbox's snapshots as the controller promised them (the
//! qcow2 snapshot itself lives on the sandbox's host) and the diffs computed between
//! disk states, kept as the review record. Written once for both dialects like
//! [`super::egress`]; JSON is kept as text in both (PostgreSQL's `jsonb` cannot hold
//! the `\u0000` a text file may contain).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Executor};

use super::audit_rows::CommandRow;
use super::dialect::{Conn, Dialect, Field, Param, Row, RowsAffected as _};
use super::{CommandRecord, StoreError, rows};

/// One snapshot row (`SNP-…`); `(sandbox_id, name)` is unique.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    pub id: String,
    pub sandbox_id: String,
    pub name: String,
    /// `INTERNAL`.
    pub kind: String,
    /// `<host>:<sandbox id>@<name>`.
    pub r#ref: String,
    pub host_name: String,
    /// Memory state included.
    pub memory: bool,
    /// `{memory, vm_state, guest_sync, host, active_services}` as JSON text.
    pub meta_json: String,
    pub created_at: DateTime<Utc>,
}

impl SnapshotRecord {
    pub fn to_api(&self) -> fluid_client::snapshots::Snapshot {
        fluid_client::snapshots::Snapshot {
            id: self.id.clone(),
            sandbox_id: self.sandbox_id.clone(),
            name: self.name.clone(),
            kind: self.kind.clone(),
            r#ref: self.r#ref.clone(),
            created_at: self.created_at,
            meta_json: serde_json::from_str(&self.meta_json)
                .unwrap_or(serde_json::Value::Object(Default::default())),
        }
    }
}

/// One stored diff (`DIF-…`). The JSON columns are the REST shapes' text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffRecord {
    pub id: String,
    /// The sandbox the diff is about (listed under it).
    pub sandbox_id: String,
    /// A snapshot name, or `now`.
    pub from_snapshot: String,
    pub to_snapshot: String,
    /// [`fluid_client::snapshots::DiffJson`].
    pub diff_json: String,
    /// `[TextDiff]`.
    pub text_diffs_json: String,
    /// [`crate::sandboxes::diffs::DiffDetail`]: both sides' text of changed text files.
    pub detail_json: String,
    pub created_at: DateTime<Utc>,
}

pub(super) const INSERT_SNAPSHOT: &str = "INSERT INTO snapshots (id, sandbox_id, name, kind, ref, host_name, memory, \
     meta_json, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

macro_rules! snapshot_select {
    ($rest:literal) => {
        concat!(
            "SELECT id, sandbox_id, name, kind, ref, host_name, memory, meta_json, created_at \
             FROM snapshots ",
            $rest
        )
    };
}

pub(super) const GET_SNAPSHOT: &str = snapshot_select!("WHERE sandbox_id = $1 AND name = $2");
pub(super) const LIST_SNAPSHOTS: &str =
    snapshot_select!("WHERE sandbox_id = $1 ORDER BY created_at, id");
pub(super) const DELETE_SNAPSHOT: &str =
    "DELETE FROM snapshots WHERE sandbox_id = $1 AND name = $2";
pub(super) const DELETE_SANDBOX_SNAPSHOTS: &str = "DELETE FROM snapshots WHERE sandbox_id = $1";

pub(super) const INSERT_DIFF: &str = "INSERT INTO diffs (id, sandbox_id, from_snapshot, to_snapshot, diff_json, \
     text_diffs_json, detail_json, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

macro_rules! diff_select {
    ($rest:literal) => {
        concat!(
            "SELECT id, sandbox_id, from_snapshot, to_snapshot, diff_json, text_diffs_json, \
             detail_json, created_at FROM diffs ",
            $rest
        )
    };
}

pub(super) const GET_DIFF: &str = diff_select!("WHERE id = $1");
pub(super) const LIST_DIFFS: &str =
    diff_select!("WHERE sandbox_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3");
pub(super) const COUNT_DIFFS: &str = "SELECT COUNT(*) FROM diffs WHERE sandbox_id = $1";

/// Commands of a sandbox that started in `[$2, $3)`, oldest first.
pub(super) const COMMANDS_BETWEEN: &str = "SELECT id, sandbox_id, agent_id, kind, command, user_name, workdir, env_json, \
     status, stdout, stderr, exit_code, timed_out, truncated, error, started_at, ended_at, duration_ms, \
     output_expired \
     FROM commands WHERE sandbox_id = $1 AND started_at >= $2 AND started_at < $3 \
     ORDER BY started_at, id";

#[derive(Debug, sqlx::FromRow)]
pub(super) struct SnapshotRow {
    id: String,
    sandbox_id: String,
    name: String,
    kind: String,
    #[sqlx(rename = "ref")]
    r#ref: String,
    host_name: String,
    memory: bool,
    meta_json: String,
    created_at: DateTime<Utc>,
}

impl From<SnapshotRow> for SnapshotRecord {
    fn from(r: SnapshotRow) -> Self {
        Self {
            id: r.id,
            sandbox_id: r.sandbox_id,
            name: r.name,
            kind: r.kind,
            r#ref: r.r#ref,
            host_name: r.host_name,
            memory: r.memory,
            meta_json: r.meta_json,
            created_at: r.created_at,
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct DiffRow {
    id: String,
    sandbox_id: String,
    from_snapshot: String,
    to_snapshot: String,
    diff_json: String,
    text_diffs_json: String,
    detail_json: String,
    created_at: DateTime<Utc>,
}

impl From<DiffRow> for DiffRecord {
    fn from(r: DiffRow) -> Self {
        Self {
            id: r.id,
            sandbox_id: r.sandbox_id,
            from_snapshot: r.from_snapshot,
            to_snapshot: r.to_snapshot,
            diff_json: r.diff_json,
            text_diffs_json: r.text_diffs_json,
            detail_json: r.detail_json,
            created_at: r.created_at,
        }
    }
}

#[async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    /// Inserts a snapshot row; [`StoreError::Conflict`] (`snapshot <name>`) when the
    /// sandbox has one by that name.
    async fn insert_snapshot(&self, s: &SnapshotRecord) -> Result<(), StoreError>;
    async fn get_snapshot(
        &self,
        sandbox_id: &str,
        name: &str,
    ) -> Result<Option<SnapshotRecord>, StoreError>;
    /// A sandbox's snapshots, oldest first.
    async fn list_snapshots(&self, sandbox_id: &str) -> Result<Vec<SnapshotRecord>, StoreError>;
    /// `true` when there was one.
    async fn delete_snapshot(&self, sandbox_id: &str, name: &str) -> Result<bool, StoreError>;
    /// Deletes every snapshot row of a sandbox (it was destroyed); how many.
    async fn delete_sandbox_snapshots(&self, sandbox_id: &str) -> Result<u64, StoreError>;

    async fn insert_diff(&self, d: &DiffRecord) -> Result<(), StoreError>;
    async fn get_diff(&self, id: &str) -> Result<Option<DiffRecord>, StoreError>;
    /// A page of a sandbox's diffs, newest first, and their total.
    async fn list_diffs(
        &self,
        sandbox_id: &str,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<DiffRecord>, u64), StoreError>;

    /// The sandbox's commands that started at or after `from` and before `to`, oldest
    /// first (what ran between two snapshots).
    async fn commands_between(
        &self,
        sandbox_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<CommandRecord>, StoreError>;
}

#[async_trait]
impl<D> SnapshotStore for D
where
    D: Dialect,
    for<'c> &'c mut Conn<D>: Executor<'c, Database = D::Db>,
    usize: ColumnIndex<Row<D>>,
    for<'r> &'r str: ColumnIndex<Row<D>>,
    for<'q> &'q str: Param<'q, D::Db>,
    String: Field<D::Db>,
    i64: Field<D::Db>,
    bool: Field<D::Db>,
    DateTime<Utc>: Field<D::Db>,
{
    async fn insert_snapshot(&self, s: &SnapshotRecord) -> Result<(), StoreError> {
        sqlx::query(INSERT_SNAPSHOT)
            .bind(&s.id)
            .bind(&s.sandbox_id)
            .bind(&s.name)
            .bind(&s.kind)
            .bind(&s.r#ref)
            .bind(&s.host_name)
            .bind(s.memory)
            .bind(&s.meta_json)
            .bind(s.created_at)
            .execute(self.pool())
            .await
            .map_err(|e| rows::unique_or(e, || format!("snapshot {}", s.name)))?;
        Ok(())
    }

    async fn get_snapshot(
        &self,
        sandbox_id: &str,
        name: &str,
    ) -> Result<Option<SnapshotRecord>, StoreError> {
        let row: Option<SnapshotRow> = sqlx::query_as(GET_SNAPSHOT)
            .bind(sandbox_id)
            .bind(name)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(Into::into))
    }

    async fn list_snapshots(&self, sandbox_id: &str) -> Result<Vec<SnapshotRecord>, StoreError> {
        let rs: Vec<SnapshotRow> = sqlx::query_as(LIST_SNAPSHOTS)
            .bind(sandbox_id)
            .fetch_all(self.pool())
            .await?;
        Ok(rs.into_iter().map(Into::into).collect())
    }

    async fn delete_snapshot(&self, sandbox_id: &str, name: &str) -> Result<bool, StoreError> {
        let r = sqlx::query(DELETE_SNAPSHOT)
            .bind(sandbox_id)
            .bind(name)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected() > 0)
    }

    async fn delete_sandbox_snapshots(&self, sandbox_id: &str) -> Result<u64, StoreError> {
        let r = sqlx::query(DELETE_SANDBOX_SNAPSHOTS)
            .bind(sandbox_id)
            .execute(self.pool())
            .await?;
        Ok(r.rows_affected())
    }

    async fn insert_diff(&self, d: &DiffRecord) -> Result<(), StoreError> {
        sqlx::query(INSERT_DIFF)
            .bind(&d.id)
            .bind(&d.sandbox_id)
            .bind(&d.from_snapshot)
            .bind(&d.to_snapshot)
            .bind(&d.diff_json)
            .bind(&d.text_diffs_json)
            .bind(&d.detail_json)
            .bind(d.created_at)
            .execute(self.pool())
            .await
            .map_err(|e| rows::unique_or(e, || format!("diff {}", d.id)))?;
        Ok(())
    }

    async fn get_diff(&self, id: &str) -> Result<Option<DiffRecord>, StoreError> {
        let row: Option<DiffRow> = sqlx::query_as(GET_DIFF)
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(Into::into))
    }

    async fn list_diffs(
        &self,
        sandbox_id: &str,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<DiffRecord>, u64), StoreError> {
        let rs: Vec<DiffRow> = sqlx::query_as(LIST_DIFFS)
            .bind(sandbox_id)
            .bind(i64::from(limit))
            .bind(i64::try_from(offset).unwrap_or(i64::MAX))
            .fetch_all(self.pool())
            .await?;
        let (total,): (i64,) = sqlx::query_as(COUNT_DIFFS)
            .bind(sandbox_id)
            .fetch_one(self.pool())
            .await?;
        Ok((
            rs.into_iter().map(Into::into).collect(),
            total.max(0) as u64,
        ))
    }

    async fn commands_between(
        &self,
        sandbox_id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<CommandRecord>, StoreError> {
        let rs: Vec<CommandRow> = sqlx::query_as(COMMANDS_BETWEEN)
            .bind(sandbox_id)
            .bind(from)
            .bind(to)
            .fetch_all(self.pool())
            .await?;
        // SQLite compares the RFC 3339 text sqlx writes; its order is the
        // instants' order (tested on both dialects).
        rs.into_iter().map(CommandRecord::try_from).collect()
    }
}
