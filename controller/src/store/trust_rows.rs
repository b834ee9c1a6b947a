//! SQL and row shapes of the trust tables (API tokens, approvals, the audit trail),
//! shared by both dialects like [`super::rows`], and the audit events the store writes
//! on its own (sandbox state changes, commands).

use chrono::{DateTime, Utc};
use fluid_client::governance::{ApprovalKind, ApprovalStatus, AuditEvent, Role};
use fluid_client::types::SandboxState;
use sha2::{Digest as _, Sha256};
use sqlx::types::Json;

use super::rows::sandbox_columns;
use super::trust::{ApprovalRecord, NewAuditEvent, TokenRecord};
use super::{CommandRecord, Reservation, SandboxRecord, StoreError};

macro_rules! token_columns {
    () => {
        "id, name, role, agent_id, created_at, revoked_at"
    };
}

pub(super) const INSERT_TOKEN: &str = "INSERT INTO api_tokens (id, name, role, agent_id, secret_sha256, created_at, revoked_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7)";

pub(super) const TOKEN_BY_HASH: &str = concat!(
    "SELECT ",
    token_columns!(),
    " FROM api_tokens WHERE secret_sha256 = $1"
);

pub(super) const LIST_TOKENS: &str = concat!(
    "SELECT ",
    token_columns!(),
    " FROM api_tokens ORDER BY created_at, id"
);

/// By id or by name; an id wins should a name look like another token's id.
pub(super) const REVOKE_TOKEN: &str = concat!(
    "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE id = \
     (SELECT id FROM api_tokens WHERE id = $1 OR name = $1 \
      ORDER BY CASE WHEN id = $1 THEN 0 ELSE 1 END LIMIT 1) RETURNING ",
    token_columns!()
);

macro_rules! approval_columns {
    () => {
        "id, kind, requested_by, agent_id, sandbox_id, summary, details, status, decided_by, \
         comment, created_at, decided_at, expires_at"
    };
}

pub(super) const INSERT_APPROVAL: &str = concat!(
    "INSERT INTO approvals (",
    approval_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
);

pub(super) const GET_APPROVAL: &str = concat!(
    "SELECT ",
    approval_columns!(),
    " FROM approvals WHERE id = $1"
);

pub(super) const LIST_APPROVALS: &str = concat!(
    "SELECT ",
    approval_columns!(),
    " FROM approvals WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR agent_id = $2) \
     AND ($3 IS NULL OR kind = $3) ORDER BY created_at DESC, id DESC LIMIT $4 OFFSET $5"
);

pub(super) const COUNT_APPROVALS: &str = "SELECT COUNT(*) FROM approvals WHERE ($1 IS NULL OR status = $1) \
     AND ($2 IS NULL OR agent_id = $2) AND ($3 IS NULL OR kind = $3)";

/// Compare-and-set from `pending`.
pub(super) const DECIDE_APPROVAL: &str = concat!(
    "UPDATE approvals SET status = $2, decided_by = $3, comment = $4, decided_at = $5 \
     WHERE id = $1 AND status = 'pending' RETURNING ",
    approval_columns!()
);

pub(super) const OVERDUE_APPROVALS: &str = concat!(
    "SELECT ",
    approval_columns!(),
    " FROM approvals WHERE status = 'pending' AND expires_at <= $1 ORDER BY expires_at, id"
);

macro_rules! audit_columns {
    () => {
        "seq, at, actor, role, kind, action, target, sandbox_id, outcome, details, prev_hash, hash"
    };
}

/// The chain's head; read under the chain lock.
pub(super) const LAST_AUDIT: &str = "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1";

pub(super) const INSERT_AUDIT: &str = concat!(
    "INSERT INTO audit_events (",
    audit_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
);

pub(super) const LIST_AUDIT: &str = concat!(
    "SELECT ",
    audit_columns!(),
    " FROM audit_events WHERE ($1 IS NULL OR sandbox_id = $1) AND ($2 IS NULL OR actor = $2) \
     AND ($3 IS NULL OR kind = $3) AND ($4 IS NULL OR at >= $4) AND ($5 IS NULL OR seq > $5) \
     ORDER BY seq LIMIT $6"
);

pub(super) const SET_READ_ONLY: &str = concat!(
    "UPDATE sandboxes SET read_only = $2, updated_at = $3 WHERE id = $1 RETURNING ",
    sandbox_columns!()
);

/// A sandbox's state before an update (SQLite: under the write lock `BEGIN IMMEDIATE`
/// took).
pub(super) const SANDBOX_STATE: &str = "SELECT state FROM sandboxes WHERE id = $1";

/// PostgreSQL: the same, locking the row until the transaction ends.
pub(super) const SANDBOX_STATE_FOR_UPDATE: &str =
    "SELECT state FROM sandboxes WHERE id = $1 FOR UPDATE";

#[derive(Debug, sqlx::FromRow)]
pub(super) struct TokenRow {
    id: String,
    name: String,
    role: String,
    agent_id: Option<String>,
    created_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
}

impl TryFrom<TokenRow> for TokenRecord {
    type Error = StoreError;
    fn try_from(r: TokenRow) -> Result<Self, StoreError> {
        let role = Role::parse(&r.role)
            .ok_or_else(|| StoreError::Corrupt(format!("token {}: role {:?}", r.id, r.role)))?;
        Ok(Self {
            id: r.id,
            name: r.name,
            role,
            agent_id: r.agent_id,
            created_at: r.created_at,
            revoked_at: r.revoked_at,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct ApprovalRow {
    id: String,
    kind: String,
    requested_by: String,
    agent_id: Option<String>,
    sandbox_id: Option<String>,
    summary: String,
    details: Json<serde_json::Value>,
    status: String,
    decided_by: Option<String>,
    comment: Option<String>,
    created_at: DateTime<Utc>,
    decided_at: Option<DateTime<Utc>>,
    expires_at: DateTime<Utc>,
}

impl TryFrom<ApprovalRow> for ApprovalRecord {
    type Error = StoreError;
    fn try_from(r: ApprovalRow) -> Result<Self, StoreError> {
        let kind = ApprovalKind::parse(&r.kind)
            .ok_or_else(|| StoreError::Corrupt(format!("approval {}: kind {:?}", r.id, r.kind)))?;
        let status = ApprovalStatus::parse(&r.status).ok_or_else(|| {
            StoreError::Corrupt(format!("approval {}: status {:?}", r.id, r.status))
        })?;
        Ok(Self {
            id: r.id,
            kind,
            requested_by: r.requested_by,
            agent_id: r.agent_id,
            sandbox_id: r.sandbox_id,
            summary: r.summary,
            details: r.details.0,
            status,
            decided_by: r.decided_by,
            comment: r.comment,
            created_at: r.created_at,
            decided_at: r.decided_at,
            expires_at: r.expires_at,
        })
    }
}

pub(super) fn approvals(rows: Vec<ApprovalRow>) -> Result<Vec<ApprovalRecord>, StoreError> {
    rows.into_iter().map(ApprovalRecord::try_from).collect()
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct AuditRow {
    seq: i64,
    at: DateTime<Utc>,
    actor: String,
    role: String,
    kind: String,
    action: String,
    target: Option<String>,
    sandbox_id: Option<String>,
    outcome: String,
    details: String,
    prev_hash: String,
    hash: String,
}

impl From<AuditRow> for AuditEvent {
    /// `details` that are not JSON (a hand edit) come back as a JSON string of the text,
    /// so the trail still reads and its verification names the event.
    fn from(r: AuditRow) -> Self {
        let details = serde_json::from_str(&r.details).unwrap_or_else(|e| {
            tracing::warn!(seq = r.seq, error = %e, "audit event details are not JSON");
            serde_json::Value::String(r.details.clone())
        });
        Self {
            seq: r.seq,
            at: r.at,
            actor: r.actor,
            role: r.role,
            kind: r.kind,
            action: r.action,
            target: r.target,
            sandbox_id: r.sandbox_id,
            outcome: r.outcome,
            details,
            prev_hash: r.prev_hash,
            hash: r.hash,
        }
    }
}

/// The longest `action` of a command's audit event, in characters.
pub(super) const COMMAND_ACTION_MAX: usize = 512;

/// The event of a new sandbox (`reserve`).
pub(super) fn created_event(r: &Reservation) -> NewAuditEvent {
    let created = SandboxState::Created.as_str();
    NewAuditEvent::system("state", created, created)
        .sandbox(r.id.clone())
        .details(serde_json::json!({
            "host": r.host_name,
            "cpu": r.cpus,
            "memory_mb": r.memory_mb,
            "agent_id": r.agent_id,
            "allow_overcommit": r.allow_overcommit,
        }))
}

/// The event of a sandbox's state change from `from` to `row.state`.
pub(super) fn state_event(from: SandboxState, row: &SandboxRecord) -> NewAuditEvent {
    let to = row.state.as_str();
    NewAuditEvent::system("state", to, to)
        .sandbox(row.id.clone())
        .details(serde_json::json!({
            "from": from.as_str(),
            "to": to,
            "error": row.error,
        }))
}

/// The event of a command that ended (or was refused): what ran, how it ended, and
/// the SHA-256 of the output as stored.
pub(super) fn command_event(c: &CommandRecord) -> NewAuditEvent {
    let outcome = match c.exit_code {
        Some(code) => format!("exit {code}"),
        None => c.status.as_str().to_owned(),
    };
    let action: String = c.command.chars().take(COMMAND_ACTION_MAX).collect();
    NewAuditEvent::system("command", action, outcome)
        .target(c.id.clone())
        .sandbox(c.sandbox_id.clone())
        .details(serde_json::json!({
            "command_id": c.id,
            "kind": c.kind,
            "user": c.user,
            "status": c.status,
            "exit_code": c.exit_code,
            "timed_out": c.timed_out,
            "truncated": c.truncated,
            "duration_ms": c.duration_ms,
            "stdout_sha256": sha256_hex(&c.stdout),
            "stderr_sha256": sha256_hex(&c.stderr),
        }))
}

pub(super) fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// A sandbox state as stored.
pub(super) fn parse_state(id: &str, s: &str) -> Result<SandboxState, StoreError> {
    SandboxState::parse(s).ok_or_else(|| StoreError::Corrupt(format!("sandbox {id}: state {s:?}")))
}
