//! What the human-in-the-loop needs stored: API tokens (hashes only), approval
//! requests, and the append-only, hash-chained audit trail.
//!
//! The chain is appended under one lock per database (SQLite: `BEGIN IMMEDIATE`;
//! PostgreSQL: a transaction-scoped advisory lock), so every event's `seq` is the last
//! one's plus one and its `prev_hash` is the last one's hash. The database refuses
//! `UPDATE` and `DELETE` on `audit_events` (triggers); the chain shows it when someone
//! gets past them.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fluid_client::audit_chain::{HashInput, event_hash, truncate_to_micros};
use fluid_client::governance::{
    Approval, ApprovalKind, ApprovalStatus, AuditEvent, Role, TokenInfo,
};

use super::StoreError;

/// An API token's record. The secret is never stored, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// `TOK-xxxxxxxx`.
    pub id: String,
    /// Unique among all tokens (also revoked ones).
    pub name: String,
    pub role: Role,
    pub agent_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl TokenRecord {
    pub fn to_api(&self) -> TokenInfo {
        TokenInfo {
            id: self.id.clone(),
            name: self.name.clone(),
            role: self.role,
            agent_id: self.agent_id.clone(),
            created_at: self.created_at,
            revoked_at: self.revoked_at,
        }
    }
}

/// One approval request.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalRecord {
    /// `APR-xxxxxxxx`.
    pub id: String,
    pub kind: ApprovalKind,
    pub requested_by: String,
    pub agent_id: Option<String>,
    pub sandbox_id: Option<String>,
    pub summary: String,
    pub details: serde_json::Value,
    pub status: ApprovalStatus,
    pub decided_by: Option<String>,
    pub comment: Option<String>,
    pub created_at: DateTime<Utc>,
    pub decided_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
}

impl ApprovalRecord {
    pub fn to_api(&self) -> Approval {
        Approval {
            id: self.id.clone(),
            kind: self.kind,
            requested_by: self.requested_by.clone(),
            agent_id: self.agent_id.clone(),
            sandbox_id: self.sandbox_id.clone(),
            summary: self.summary.clone(),
            details: self.details.clone(),
            status: self.status,
            decided_by: self.decided_by.clone(),
            comment: self.comment.clone(),
            created_at: self.created_at,
            decided_at: self.decided_at,
            expires_at: self.expires_at,
        }
    }
}

/// `GET /v1/approvals` filters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApprovalFilter {
    pub status: Option<ApprovalStatus>,
    /// Only requests whose `agent_id` is this (a scoped token's view).
    pub agent_id: Option<String>,
    pub kind: Option<ApprovalKind>,
    pub limit: u32,
    pub offset: u64,
}

/// The result of deciding (or expiring) a request: compare-and-set from `pending`.
#[derive(Debug, Clone, PartialEq)]
pub enum Decided {
    /// It was pending and now has the new status.
    Now(ApprovalRecord),
    /// It had already been decided (or had expired): the record as it is.
    Already(ApprovalRecord),
    NotFound,
}

/// An event to append to the audit trail; the store gives it `seq`, `prev_hash` and
/// `hash`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEvent {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub role: String,
    pub kind: String,
    pub action: String,
    pub target: Option<String>,
    pub sandbox_id: Option<String>,
    pub outcome: String,
    pub details: serde_json::Value,
}

impl NewAuditEvent {
    /// An event of something the controller did on its own (actor `controller`, role
    /// `system`).
    pub fn system(kind: &str, action: impl Into<String>, outcome: impl Into<String>) -> Self {
        Self {
            at: Utc::now(),
            actor: "controller".into(),
            role: "system".into(),
            kind: kind.into(),
            action: action.into(),
            target: None,
            sandbox_id: None,
            outcome: outcome.into(),
            details: serde_json::Value::Object(Default::default()),
        }
    }

    /// Names who did it (instead of `controller` / `system`).
    pub fn by(mut self, actor: &str, role: &str) -> Self {
        actor.clone_into(&mut self.actor);
        role.clone_into(&mut self.role);
        self
    }

    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    pub fn sandbox(mut self, sandbox_id: impl Into<String>) -> Self {
        let id = sandbox_id.into();
        if self.target.is_none() {
            self.target = Some(id.clone());
        }
        self.sandbox_id = Some(id);
        self
    }

    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }

    /// The stored event that follows `(prev_seq, prev_hash)`: `at` truncated to
    /// microseconds, `details` as compact JSON text, hashed.
    pub fn chain(&self, prev_seq: i64, prev_hash: &str) -> AuditEvent {
        let at = truncate_to_micros(self.at);
        let details_text = self.details.to_string();
        // The hash covers the text a reader gets back (parse → print is stable).
        let details: serde_json::Value =
            serde_json::from_str(&details_text).unwrap_or(serde_json::Value::Null);
        let details_text = details.to_string();
        let mut e = AuditEvent {
            seq: prev_seq + 1,
            at,
            actor: self.actor.clone(),
            role: self.role.clone(),
            kind: self.kind.clone(),
            action: self.action.clone(),
            target: self.target.clone(),
            sandbox_id: self.sandbox_id.clone(),
            outcome: self.outcome.clone(),
            details,
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
        };
        e.hash = event_hash(&HashInput::of(&e, &details_text));
        e
    }
}

/// `GET /v1/audit` filters. Events come oldest first (chain order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub sandbox_id: Option<String>,
    pub actor: Option<String>,
    pub kind: Option<String>,
    pub since: Option<DateTime<Utc>>,
    /// Only events with `seq` greater than this (paging).
    pub after_seq: Option<i64>,
    pub limit: u32,
}

#[async_trait]
pub trait TrustStore: Send + Sync + 'static {
    /// Stores a token's record and the SHA-256 (hex) of its secret;
    /// [`StoreError::Conflict`] when the name is taken.
    async fn insert_token(&self, t: &TokenRecord, secret_sha256: &str) -> Result<(), StoreError>;
    /// The token whose secret hashes to `secret_sha256` (revoked ones too).
    async fn token_by_hash(&self, secret_sha256: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// All tokens, oldest first.
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Sets `revoked_at` on the token with this id or name (kept if already set);
    /// `None` when unknown.
    async fn revoke_token(
        &self,
        id_or_name: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<TokenRecord>, StoreError>;

    async fn insert_approval(&self, a: &ApprovalRecord) -> Result<(), StoreError>;
    async fn get_approval(&self, id: &str) -> Result<Option<ApprovalRecord>, StoreError>;
    /// A page of requests, newest first, and the total matching the filter.
    async fn list_approvals(
        &self,
        f: &ApprovalFilter,
    ) -> Result<(Vec<ApprovalRecord>, u64), StoreError>;
    /// Compare-and-set `pending` → `status` (approved, rejected or expired).
    async fn decide_approval(
        &self,
        id: &str,
        status: ApprovalStatus,
        decided_by: Option<&str>,
        comment: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Decided, StoreError>;
    /// Pending requests whose `expires_at` has passed.
    async fn overdue_approvals(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<ApprovalRecord>, StoreError>;

    /// Appends one event to the chain.
    async fn append_audit(&self, e: &NewAuditEvent) -> Result<AuditEvent, StoreError>;
    async fn list_audit(&self, f: &AuditFilter) -> Result<Vec<AuditEvent>, StoreError>;

    /// Sets a sandbox's read-only flag; `None` when the sandbox does not exist.
    async fn set_sandbox_read_only(
        &self,
        id: &str,
        read_only: bool,
        now: DateTime<Utc>,
    ) -> Result<Option<super::SandboxRecord>, StoreError>;
}
