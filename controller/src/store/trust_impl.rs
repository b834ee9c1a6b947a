//! The [`TrustStore`] implementation, written once for every [`Dialect`], and
//! [`append_in_tx`], with which every store method that changes something appends its
//! audit event in its own transaction.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fluid_client::audit_chain::GENESIS;
use fluid_client::governance::{ApprovalStatus, AuditEvent};
use sqlx::types::Json;
use sqlx::{ColumnIndex, Executor};

use super::dialect::{Conn, Dialect, Field, Param, Row, Tx};
use super::rows::{self, SandboxRow};
use super::trust::{
    ApprovalFilter, ApprovalRecord, AuditFilter, Decided, NewAuditEvent, TokenRecord, TrustStore,
};
use super::trust_rows::{self, ApprovalRow, AuditRow, TokenRow};
use super::{SandboxRecord, StoreError};

/// Appends `e` to the audit chain inside `tx` (begun by `begin_chain`): takes
/// the chain's lock, reads its head, inserts the event that follows it. The
/// event is stored when `tx` commits.
pub(super) async fn append_in_tx<D>(
    tx: &mut Tx<D>,
    e: &NewAuditEvent,
) -> Result<AuditEvent, StoreError>
where
    D: Dialect,
    for<'c> &'c mut Conn<D>: Executor<'c, Database = D::Db>,
    usize: ColumnIndex<Row<D>>,
    String: Field<D::Db>,
    Option<String>: Field<D::Db>,
    i64: Field<D::Db>,
    DateTime<Utc>: Field<D::Db>,
{
    D::lock_chain(tx).await?;
    let head: Option<(i64, String)> = sqlx::query_as(trust_rows::LAST_AUDIT)
        .fetch_optional(&mut **tx)
        .await?;
    let (seq, hash) = head.unwrap_or_else(|| (0, GENESIS.to_owned()));
    let ev = e.chain(seq, &hash);
    sqlx::query(trust_rows::INSERT_AUDIT)
        .bind(ev.seq)
        .bind(ev.at)
        .bind(&ev.actor)
        .bind(&ev.role)
        .bind(&ev.kind)
        .bind(&ev.action)
        .bind(&ev.target)
        .bind(&ev.sandbox_id)
        .bind(&ev.outcome)
        .bind(ev.details.to_string())
        .bind(&ev.prev_hash)
        .bind(&ev.hash)
        .execute(&mut **tx)
        .await?;
    Ok(ev)
}

#[async_trait]
impl<D> TrustStore for D
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
    Option<i64>: Field<D::Db>,
    bool: Field<D::Db>,
    DateTime<Utc>: Field<D::Db>,
    Option<DateTime<Utc>>: Field<D::Db>,
    Json<serde_json::Value>: Field<D::Db>,
    for<'q> Json<&'q serde_json::Value>: Param<'q, D::Db>,
{
    async fn insert_token(&self, t: &TokenRecord, secret_sha256: &str) -> Result<(), StoreError> {
        sqlx::query(trust_rows::INSERT_TOKEN)
            .bind(&t.id)
            .bind(&t.name)
            .bind(t.role.as_str())
            .bind(&t.agent_id)
            .bind(secret_sha256)
            .bind(t.created_at)
            .bind(t.revoked_at)
            .execute(self.pool())
            .await
            .map_err(|e| rows::unique_or(e, || format!("token {:?}", t.name)))?;
        Ok(())
    }

    async fn token_by_hash(&self, secret_sha256: &str) -> Result<Option<TokenRecord>, StoreError> {
        let row: Option<TokenRow> = sqlx::query_as(trust_rows::TOKEN_BY_HASH)
            .bind(secret_sha256)
            .fetch_optional(self.pool())
            .await?;
        row.map(TokenRecord::try_from).transpose()
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let rs: Vec<TokenRow> = sqlx::query_as(trust_rows::LIST_TOKENS)
            .fetch_all(self.pool())
            .await?;
        rs.into_iter().map(TokenRecord::try_from).collect()
    }

    async fn revoke_token(
        &self,
        id_or_name: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<TokenRecord>, StoreError> {
        let row: Option<TokenRow> = sqlx::query_as(trust_rows::REVOKE_TOKEN)
            .bind(id_or_name)
            .bind(now)
            .fetch_optional(self.pool())
            .await?;
        row.map(TokenRecord::try_from).transpose()
    }

    async fn insert_approval(&self, a: &ApprovalRecord) -> Result<(), StoreError> {
        sqlx::query(trust_rows::INSERT_APPROVAL)
            .bind(&a.id)
            .bind(a.kind.as_str())
            .bind(&a.requested_by)
            .bind(&a.agent_id)
            .bind(&a.sandbox_id)
            .bind(&a.summary)
            .bind(Json(&a.details))
            .bind(a.status.as_str())
            .bind(&a.decided_by)
            .bind(&a.comment)
            .bind(a.created_at)
            .bind(a.decided_at)
            .bind(a.expires_at)
            .execute(self.pool())
            .await
            .map_err(|e| rows::unique_or(e, || format!("approval {}", a.id)))?;
        Ok(())
    }

    async fn get_approval(&self, id: &str) -> Result<Option<ApprovalRecord>, StoreError> {
        let row: Option<ApprovalRow> = sqlx::query_as(trust_rows::GET_APPROVAL)
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.map(ApprovalRecord::try_from).transpose()
    }

    async fn list_approvals(
        &self,
        f: &ApprovalFilter,
    ) -> Result<(Vec<ApprovalRecord>, u64), StoreError> {
        let status = f.status.map(|s| s.as_str());
        let kind = f.kind.map(|k| k.as_str());
        let rs: Vec<ApprovalRow> = sqlx::query_as(trust_rows::LIST_APPROVALS)
            .bind(status)
            .bind(&f.agent_id)
            .bind(kind)
            .bind(i64::from(f.limit))
            .bind(i64::try_from(f.offset).unwrap_or(i64::MAX))
            .fetch_all(self.pool())
            .await?;
        let (total,): (i64,) = sqlx::query_as(trust_rows::COUNT_APPROVALS)
            .bind(status)
            .bind(&f.agent_id)
            .bind(kind)
            .fetch_one(self.pool())
            .await?;
        Ok((trust_rows::approvals(rs)?, total.max(0) as u64))
    }

    async fn decide_approval(
        &self,
        id: &str,
        status: ApprovalStatus,
        decided_by: Option<&str>,
        comment: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Decided, StoreError> {
        if status == ApprovalStatus::Pending {
            return Err(StoreError::Db(format!(
                "approval {id}: a decision cannot be `pending`"
            )));
        }
        let row: Option<ApprovalRow> = sqlx::query_as(trust_rows::DECIDE_APPROVAL)
            .bind(id)
            .bind(status.as_str())
            .bind(decided_by)
            .bind(comment)
            .bind(now)
            .fetch_optional(self.pool())
            .await?;
        if let Some(row) = row {
            return Ok(Decided::Now(row.try_into()?));
        }
        Ok(match self.get_approval(id).await? {
            Some(rec) => Decided::Already(rec),
            None => Decided::NotFound,
        })
    }

    async fn overdue_approvals(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<ApprovalRecord>, StoreError> {
        let rs: Vec<ApprovalRow> = sqlx::query_as(trust_rows::OVERDUE_APPROVALS)
            .bind(now)
            .fetch_all(self.pool())
            .await?;
        trust_rows::approvals(rs)
    }

    async fn append_audit(&self, e: &NewAuditEvent) -> Result<AuditEvent, StoreError> {
        let mut tx = self.begin_chain().await?;
        let ev = append_in_tx::<D>(&mut tx, e).await?;
        tx.commit().await?;
        Ok(ev)
    }

    async fn list_audit(&self, f: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError> {
        let rs: Vec<AuditRow> = sqlx::query_as(trust_rows::LIST_AUDIT)
            .bind(&f.sandbox_id)
            .bind(&f.actor)
            .bind(&f.kind)
            .bind(f.since)
            .bind(f.after_seq)
            .bind(i64::from(f.limit))
            .fetch_all(self.pool())
            .await?;
        Ok(rs.into_iter().map(AuditEvent::from).collect())
    }

    async fn set_sandbox_read_only(
        &self,
        id: &str,
        read_only: bool,
        now: DateTime<Utc>,
    ) -> Result<Option<SandboxRecord>, StoreError> {
        let row: Option<SandboxRow> = sqlx::query_as(trust_rows::SET_READ_ONLY)
            .bind(id)
            .bind(read_only)
            .bind(now)
            .fetch_optional(self.pool())
            .await?;
        row.map(SandboxRecord::try_from).transpose()
    }
}
