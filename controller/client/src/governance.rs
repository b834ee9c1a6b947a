//! Request and response bodies of the human-in-the-loop API: API tokens and roles,
//! approvals (`/v1/human/ask`, `/v1/approvals`), a sandbox's read-only mode and the
//! audit trail (`/v1/audit`). All *new* except `/v1/human/ask`, whose shapes are
//! fluid-remote v1's. Requests reject unknown fields (the API answers 400).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a token may do. See ARCHITECTURE.md (Authentication) for the full table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Reads everything, decides approvals, manages hosts, flags sandboxes read-only,
    /// sets their egress allow-lists, stops and destroys sandboxes.
    Operator,
    /// Creates sandboxes for its own `agent_id` and works only on those; never decides.
    Agent,
    /// Non-destructive operations only (optionally scoped to one `agent_id`).
    Readonly,
}

impl Role {
    pub const ALL: [Role; 4] = [Self::Admin, Self::Operator, Self::Agent, Self::Readonly];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::Agent => "agent",
            Self::Readonly => "readonly",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An API token as listed (never the secret itself, which is shown once at creation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    /// `TOK-xxxxxxxx`.
    pub id: String,
    pub name: String,
    pub role: Role,
    /// The agent id the token is scoped to (always set for `agent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// `POST /v1/tokens` (admin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    pub name: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
}

/// The new token: `token` is shown only in this answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreateTokenResponse {
    pub token: String,
    pub info: TokenInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ListTokensResponse {
    pub tokens: Vec<TokenInfo>,
    pub total: u64,
}

/// `GET /v1/whoami`: the caller as the controller sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WhoAmI {
    pub token_id: String,
    pub name: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
}

/// One permission of a role, in `GET /v1/roles`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RolePermission {
    /// The permission's name (`Read`, `Work`, `Playbooks`, …).
    pub permission: String,
    /// What it covers, in one line.
    pub description: String,
    /// `all`, or `own agent` when a scoped token holds it only for its agent's
    /// sandboxes, playbooks, jobs and requests.
    pub scope: String,
}

/// A role, what it may do and its limits, in `GET /v1/roles`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RoleInfo {
    pub role: Role,
    /// Who the role is for, in one line.
    pub description: String,
    pub permissions: Vec<RolePermission>,
    /// Limits beyond the permissions (scoping, Ansible content, production jobs).
    pub limits: Vec<String>,
}

/// `GET /v1/roles`: the controller's role table (the one its checks use).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RolesResponse {
    pub roles: Vec<RoleInfo>,
}

/// The kinds of approval request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalKind {
    /// A question from `/v1/human/ask`.
    Custom,
    /// A create that finds no host with room.
    Overcommit,
    /// Network egress from a sandbox.
    Egress,
    /// Applying a playbook to a production target.
    ProductionApply,
}

impl ApprovalKind {
    pub const ALL: [ApprovalKind; 4] = [
        Self::Custom,
        Self::Overcommit,
        Self::Egress,
        Self::ProductionApply,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Custom => "custom",
            Self::Overcommit => "overcommit",
            Self::Egress => "egress",
            Self::ProductionApply => "production_apply",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Rejected,
    Expired,
}

impl ApprovalStatus {
    pub const ALL: [ApprovalStatus; 4] =
        [Self::Pending, Self::Approved, Self::Rejected, Self::Expired];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One request for a human decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Approval {
    /// `APR-xxxxxxxx`.
    pub id: String,
    pub kind: ApprovalKind,
    /// The name of the token that asked (or `controller` for a gate it opened).
    pub requested_by: String,
    /// The asker's agent id, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    pub summary: String,
    /// What a human needs to decide (kind-specific JSON).
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    pub status: ApprovalStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApprovalResponse {
    pub approval: Approval,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ListApprovalsResponse {
    pub approvals: Vec<Approval>,
    pub total: u64,
}

/// `POST /v1/approvals/{id}/approve|reject`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecideRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// `POST /v1/human/ask` (fluid-remote v1 shape; `sandbox_id` is *new*).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AskRequest {
    pub prompt: String,
    /// Free text or JSON shown to the human.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub context: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urgency: Option<String>,
    /// How long to wait for a decision (default 300, at most 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// *new*: the sandbox the question is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
}

/// The answer of a blocking ask (fluid-remote v1 shape; `status` and `reason` are *new*).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AskResponse {
    pub request_id: String,
    pub approved: bool,
    pub comment: Option<String>,
    pub approved_by: Option<String>,
    /// *new*: approved / rejected / expired.
    pub status: ApprovalStatus,
    /// *new*: why `approved` is false without a human's rejection (e.g. the time-out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `202` answer of a create that waits for an over-commit approval (`?wait=false`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PendingCreateResponse {
    /// The approval to decide (`APR-…`).
    pub request_id: String,
    /// The id the sandbox will have once approved.
    pub sandbox_id: String,
    pub status: ApprovalStatus,
    pub approval: Approval,
}

/// A sandbox's mode: `read-only` refuses every operation that changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SandboxMode {
    ReadWrite,
    ReadOnly,
}

impl SandboxMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadWrite => "read-write",
            Self::ReadOnly => "read-only",
        }
    }
}

/// `PUT /v1/sandboxes/{id}/mode` (operator, admin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetModeRequest {
    pub mode: SandboxMode,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModeResponse {
    pub sandbox_id: String,
    pub mode: SandboxMode,
}

/// One event of the append-only, hash-chained audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// When, in microseconds precision (what the hash covers).
    pub at: DateTime<Utc>,
    /// Token name, or `controller` for what the controller did on its own.
    pub actor: String,
    /// The actor's role, or `system`.
    pub role: String,
    /// `api` (a mutating call), `state` (a sandbox state change), `approval`
    /// (requested / decided / expired), `command`, `token`, `mode`, `network` (an
    /// allow-list change: `set` or `allow`).
    pub kind: String,
    /// What happened, e.g. `POST /v1/sandboxes/{id}/run` or `RUNNING`.
    pub action: String,
    /// What it happened to (a sandbox, approval, token or host id), if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    /// e.g. `201`, `403`, `approved`, `exit 0`.
    pub outcome: String,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    /// The previous event's hash (64 zeros for the first).
    pub prev_hash: String,
    /// SHA-256 over this event's fields and `prev_hash` (see [`crate::audit_chain`]).
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ListAuditResponse {
    pub events: Vec<AuditEvent>,
    /// Pass as `after_seq` to read on (absent at the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after_seq: Option<i64>,
}
