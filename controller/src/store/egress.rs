//! A sandbox's egress allow-list: intent, stored in its row (`egress_json`, the JSON
//! text of `{"allow": [...]}` in the REST API's entry shape). Written once for both
//! dialects like [`super::trust_impl`]; every change appends its `network` audit event
//! in the same transaction, and is a compare-and-set on the text it replaces, so two
//! concurrent changes (an operator's PUT, an approved request) cannot lose each other.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Executor};

use super::StoreError;
use super::dialect::{Conn, Dialect, Field, Param, Row};
use super::trust::NewAuditEvent;
use super::trust_impl::append_in_tx;

/// The allow-list of a sandbox nobody has set one for.
pub const EMPTY_EGRESS_JSON: &str = r#"{"allow":[]}"#;

/// What [`EgressStore::set_egress`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressWrite {
    Written,
    /// The stored text was no longer the expected one: here is what it is.
    Changed(String),
    NotFound,
}

pub(super) const GET_EGRESS: &str = "SELECT egress_json FROM sandboxes WHERE id = $1";

pub(super) const SET_EGRESS: &str =
    "UPDATE sandboxes SET egress_json = $2 WHERE id = $1 AND egress_json = $3 RETURNING id";

pub(super) const EGRESS_ON_HOST: &str = "SELECT id, egress_json FROM sandboxes \
     WHERE host_name = $1 AND state IN ('RUNNING', 'STOPPED') ORDER BY id";

#[async_trait]
pub trait EgressStore: Send + Sync + 'static {
    /// The sandbox's allow-list (JSON text); `None` when the sandbox does not exist.
    async fn get_egress(&self, id: &str) -> Result<Option<String>, StoreError>;
    /// Replaces the allow-list when it still is `expect` (compare-and-set on the text),
    /// appending `audit` in the same transaction.
    async fn set_egress(
        &self,
        id: &str,
        egress_json: &str,
        expect: &str,
        audit: &NewAuditEvent,
    ) -> Result<EgressWrite, StoreError>;
    /// `(id, allow-list)` of the host's RUNNING and STOPPED sandboxes (the ones whose
    /// agent should enforce it now).
    async fn egress_on_host(&self, host: &str) -> Result<Vec<(String, String)>, StoreError>;
}

#[async_trait]
impl<D> EgressStore for D
where
    D: Dialect,
    for<'c> &'c mut Conn<D>: Executor<'c, Database = D::Db>,
    usize: ColumnIndex<Row<D>>,
    for<'q> &'q str: Param<'q, D::Db>,
    String: Field<D::Db>,
    // For the audit event (`append_in_tx`).
    Option<String>: Field<D::Db>,
    i64: Field<D::Db>,
    DateTime<Utc>: Field<D::Db>,
{
    async fn get_egress(&self, id: &str) -> Result<Option<String>, StoreError> {
        let row: Option<(String,)> = sqlx::query_as(GET_EGRESS)
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        Ok(row.map(|(j,)| j))
    }

    async fn set_egress(
        &self,
        id: &str,
        egress_json: &str,
        expect: &str,
        audit: &NewAuditEvent,
    ) -> Result<EgressWrite, StoreError> {
        let mut tx = self.begin_chain().await?;
        let done: Option<(String,)> = sqlx::query_as(SET_EGRESS)
            .bind(id)
            .bind(egress_json)
            .bind(expect)
            .fetch_optional(&mut *tx)
            .await?;
        if done.is_none() {
            let now: Option<(String,)> = sqlx::query_as(GET_EGRESS)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            tx.rollback().await?;
            return Ok(match now {
                Some((j,)) => EgressWrite::Changed(j),
                None => EgressWrite::NotFound,
            });
        }
        append_in_tx::<D>(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(EgressWrite::Written)
    }

    async fn egress_on_host(&self, host: &str) -> Result<Vec<(String, String)>, StoreError> {
        Ok(sqlx::query_as(EGRESS_ON_HOST)
            .bind(host)
            .fetch_all(self.pool())
            .await?)
    }
}
