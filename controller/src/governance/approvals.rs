//! Human approvals: one request type for every gate (a question from `/v1/human/ask`,
//! an over-commit, egress, a production apply).
//!
//! A request is a row (`pending` until decided or expired) — the waiting side holds no
//! state another replica could not rebuild. Waiters wake at once on a decision made by
//! this replica (a broadcast of decided ids) and poll the store every
//! [`POLL_INTERVAL`] for one made elsewhere. A decision is a compare-and-set from
//! `pending`, so two humans cannot both decide, and an expired request cannot be
//! approved afterwards. Every request, decision and expiry is an audit event, and each
//! new request and decision is sent to the webhook when one is configured.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fluid_client::governance::{ApprovalKind, ApprovalStatus, AskRequest};
use tokio::sync::broadcast;

use crate::error::ServiceError;
use crate::governance::auth::{self, Caller, Permission};
use crate::governance::webhook::Webhook;
use crate::store::{ApprovalFilter, ApprovalRecord, Decided, NewAuditEvent, Store, StoreError};
use crate::support::ids::ApprovalId;

/// How often a waiter re-reads its request (decisions made on another replica).
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Longest summary.
pub const SUMMARY_MAX: usize = 4096;
/// Longest comment.
pub const COMMENT_MAX: usize = 4096;
/// `timeout_secs` when an ask gives none.
pub const ASK_DEFAULT_TIMEOUT_SECS: u64 = 300;
/// Longest a blocking ask may wait.
pub const ASK_MAX_TIMEOUT_SECS: u64 = 3600;
/// Longest `action_type` / `urgency` of an ask.
const LABEL_MAX: usize = 64;

/// An ask's optional label (`action_type`, `urgency`): short and printable.
fn label(field: &str, v: Option<String>) -> Result<Option<String>, ServiceError> {
    match v {
        Some(s) if s.len() > LABEL_MAX || s.chars().any(char::is_control) => Err(
            ServiceError::Invalid(format!("{field}: at most {LABEL_MAX} printable characters")),
        ),
        v => Ok(v.filter(|s| !s.is_empty())),
    }
}
/// Largest `details` document (compact JSON).
pub const DETAILS_MAX: usize = 64 * 1024;
/// Largest `details` of a request the controller opens itself (a `production_apply`
/// shows a whole playbook).
pub const INTERNAL_DETAILS_MAX: usize = 1024 * 1024;

/// Who asked, as recorded on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    pub name: String,
    pub agent_id: Option<String>,
}

impl From<&Caller> for Requester {
    fn from(c: &Caller) -> Self {
        Self {
            name: c.name.clone(),
            agent_id: c.agent_id.clone(),
        }
    }
}

/// A request to open.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRequest {
    pub kind: ApprovalKind,
    pub requester: Requester,
    pub sandbox_id: Option<String>,
    pub summary: String,
    pub details: serde_json::Value,
    pub timeout: Duration,
}

pub struct ApprovalService {
    store: Arc<dyn Store>,
    decided: broadcast::Sender<String>,
    webhook: Option<Webhook>,
}

impl std::fmt::Debug for ApprovalService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApprovalService")
            .field("webhook", &self.webhook)
            .finish_non_exhaustive()
    }
}

fn audit_of(a: &ApprovalRecord, actor: &str, role: &str, action: &str) -> NewAuditEvent {
    let mut e = NewAuditEvent::system("approval", action, a.status.as_str())
        .target(a.id.clone())
        .details(serde_json::json!({
            "kind": a.kind.as_str(),
            "summary": a.summary,
            "requested_by": a.requested_by,
            "agent_id": a.agent_id,
            "decided_by": a.decided_by,
            "comment": a.comment,
            "details": a.details,
        }));
    e.sandbox_id.clone_from(&a.sandbox_id);
    e.by(actor, role)
}

impl ApprovalService {
    pub fn new(store: Arc<dyn Store>, webhook: Option<Webhook>) -> Self {
        let (decided, _) = broadcast::channel(1024);
        Self {
            store,
            decided,
            webhook,
        }
    }

    async fn audit(&self, e: NewAuditEvent) {
        if let Err(err) = self.store.append_audit(&e).await {
            tracing::error!(error = %err, action = %e.action, "appending an approval audit event");
        }
    }

    /// Opens a request: stored, audited, sent to the webhook.
    pub async fn open(&self, req: NewRequest, role: &str) -> Result<ApprovalRecord, ServiceError> {
        let summary = req.summary.trim();
        if summary.is_empty() || summary.len() > SUMMARY_MAX {
            return Err(ServiceError::Invalid(format!(
                "prompt: 1-{SUMMARY_MAX} bytes of text"
            )));
        }
        let max = if req.kind == ApprovalKind::Custom {
            DETAILS_MAX
        } else {
            INTERNAL_DETAILS_MAX
        };
        if req.details.to_string().len() > max {
            return Err(ServiceError::Invalid(format!(
                "context: at most {max} bytes of JSON"
            )));
        }
        let now = Utc::now();
        let rec = ApprovalRecord {
            id: ApprovalId::generate().into(),
            kind: req.kind,
            requested_by: req.requester.name.clone(),
            agent_id: req.requester.agent_id.clone(),
            sandbox_id: req.sandbox_id,
            summary: summary.to_owned(),
            details: req.details,
            status: ApprovalStatus::Pending,
            decided_by: None,
            comment: None,
            created_at: now,
            decided_at: None,
            expires_at: now
                + chrono::Duration::from_std(req.timeout).unwrap_or(chrono::Duration::MAX),
        };
        self.store.insert_approval(&rec).await?;
        tracing::info!(approval = %rec.id, kind = rec.kind.as_str(), by = %rec.requested_by, "approval requested");
        self.audit(audit_of(&rec, &req.requester.name, role, "requested"))
            .await;
        if let Some(w) = &self.webhook {
            w.notify("approval.requested", &rec.to_api());
        }
        Ok(rec)
    }

    /// Opens a `custom` request (`POST /v1/human/ask`) for `caller`: `Ask`, and `Read`
    /// on the sandbox it names. The caller waits with [`Self::wait`].
    pub async fn ask(
        &self,
        caller: &Caller,
        req: AskRequest,
    ) -> Result<ApprovalRecord, ServiceError> {
        auth::check(caller, Permission::Ask)?;
        let timeout = req.timeout_secs.unwrap_or(ASK_DEFAULT_TIMEOUT_SECS);
        if !(1..=ASK_MAX_TIMEOUT_SECS).contains(&timeout) {
            return Err(ServiceError::Invalid(format!(
                "timeout_secs: {timeout} is out of range (1-{ASK_MAX_TIMEOUT_SECS})"
            )));
        }
        let action_type = label("action_type", req.action_type)?;
        let urgency = label("urgency", req.urgency)?;
        let sandbox_id = match &req.sandbox_id {
            Some(s) => {
                let id = crate::error::parse_id(s)?;
                let sb = auth::authorized_sandbox(&*self.store, caller, &id, Permission::Read);
                Some(sb.await?.id)
            }
            None => None,
        };
        let request = NewRequest {
            kind: ApprovalKind::Custom,
            requester: Requester::from(caller),
            sandbox_id,
            summary: req.prompt,
            details: serde_json::json!({
                "context": req.context,
                "action_type": action_type,
                "urgency": urgency,
            }),
            timeout: Duration::from_secs(timeout),
        };
        self.open(request, caller.role.as_str()).await
    }

    pub async fn get(&self, id: &ApprovalId) -> Result<ApprovalRecord, ServiceError> {
        self.load(id.as_str()).await
    }

    /// A request by the id its record holds.
    async fn load(&self, id: &str) -> Result<ApprovalRecord, ServiceError> {
        self.store
            .get_approval(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("approval {id} not found")))
    }

    /// A request the caller may see (`Read`; its own, when the caller is scoped).
    pub async fn get_for(
        &self,
        caller: &Caller,
        id: &ApprovalId,
    ) -> Result<ApprovalRecord, ServiceError> {
        auth::check(caller, Permission::Read)?;
        let rec = self.get(id).await?;
        if caller.scope().is_some() {
            auth::check_owner(
                caller,
                rec.agent_id.as_deref().unwrap_or_default(),
                &format!("approval {id}"),
            )
            .map_err(|e| ServiceError::Forbidden(e.to_string()))?;
        }
        Ok(rec)
    }

    pub async fn list(
        &self,
        caller: &Caller,
        mut filter: ApprovalFilter,
    ) -> Result<(Vec<ApprovalRecord>, u64), ServiceError> {
        auth::check(caller, Permission::Read)?;
        if let Some(own) = caller.scope() {
            filter.agent_id = Some(own.to_owned());
        }
        Ok(self.store.list_approvals(&filter).await?)
    }

    /// Approves or rejects a pending request (operator or admin: `Decide`, checked
    /// before the id is parsed).
    pub async fn decide(
        &self,
        caller: &Caller,
        id: &str,
        approve: bool,
        comment: Option<String>,
    ) -> Result<ApprovalRecord, ServiceError> {
        auth::check(caller, Permission::Decide)
            .map_err(|e| ServiceError::Forbidden(e.to_string()))?;
        let id = ApprovalId::parse("id", id)?;
        let comment = comment
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty());
        if comment.as_ref().is_some_and(|c| c.len() > COMMENT_MAX) {
            return Err(ServiceError::Invalid(format!(
                "comment: at most {COMMENT_MAX} bytes"
            )));
        }
        let status = if approve {
            ApprovalStatus::Approved
        } else {
            ApprovalStatus::Rejected
        };
        match self
            .store
            .decide_approval(
                id.as_str(),
                status,
                Some(&caller.name),
                comment.as_deref(),
                Utc::now(),
            )
            .await?
        {
            Decided::Now(rec) => {
                tracing::info!(approval = %id, status = status.as_str(), by = %caller.name, "approval decided");
                self.finished(&rec, &caller.name, caller.role.as_str(), "decided")
                    .await;
                Ok(rec)
            }
            Decided::Already(rec) => Err(ServiceError::Conflict(format!(
                "approval {id} is already {}{}",
                rec.status.as_str(),
                rec.decided_by
                    .as_deref()
                    .map(|b| format!(" (by {b})"))
                    .unwrap_or_default()
            ))),
            Decided::NotFound => Err(ServiceError::NotFound(format!("approval {id} not found"))),
        }
    }

    async fn finished(&self, rec: &ApprovalRecord, actor: &str, role: &str, action: &str) {
        // Nobody listening is fine.
        let _ = self.decided.send(rec.id.clone());
        self.audit(audit_of(rec, actor, role, action)).await;
        if let Some(w) = &self.webhook {
            w.notify("approval.decided", &rec.to_api());
        }
    }

    /// Expires a pending request (compare-and-set); the record as it ends up.
    pub async fn expire(&self, id: &str) -> Result<ApprovalRecord, ServiceError> {
        match self
            .store
            .decide_approval(id, ApprovalStatus::Expired, None, None, Utc::now())
            .await?
        {
            Decided::Now(rec) => {
                tracing::info!(approval = %id, "approval expired");
                self.finished(&rec, "controller", "system", "expired").await;
                Ok(rec)
            }
            Decided::Already(rec) => Ok(rec),
            Decided::NotFound => Err(ServiceError::NotFound(format!("approval {id} not found"))),
        }
    }

    /// Waits until the request is decided, or expires it at `expires_at`; the final
    /// record. Dropping the future (a client that went away) leaves the request
    /// pending: it can still be decided, and expires on its own.
    pub async fn wait(&self, id: &str) -> Result<ApprovalRecord, ServiceError> {
        let mut decided = self.decided.subscribe();
        loop {
            let rec = self.load(id).await?;
            if rec.status != ApprovalStatus::Pending {
                return Ok(rec);
            }
            let left = until(rec.expires_at);
            if left.is_zero() {
                return self.expire(id).await;
            }
            let nap = left.min(POLL_INTERVAL);
            tokio::select! {
                r = decided.recv() => match r {
                    Ok(d) if d != id => continue,
                    _ => {}
                },
                () = tokio::time::sleep(nap) => {}
            }
        }
    }

    /// Expires every overdue pending request (the janitor calls this, so a request
    /// nobody waits on still ends).
    pub async fn expire_overdue(&self) -> Result<usize, StoreError> {
        let overdue = self.store.overdue_approvals(Utc::now()).await?;
        let mut n = 0;
        for a in overdue {
            match self.expire(&a.id).await {
                Ok(_) => n += 1,
                Err(e) => tracing::warn!(approval = %a.id, error = %e, "expiring an approval"),
            }
        }
        Ok(n)
    }
}

fn until(at: DateTime<Utc>) -> Duration {
    (at - Utc::now()).to_std().unwrap_or(Duration::ZERO)
}

/// The reason a request ended without approval, for answers like the ask's.
pub fn refusal_reason(rec: &ApprovalRecord) -> Option<String> {
    match rec.status {
        ApprovalStatus::Approved | ApprovalStatus::Pending => None,
        ApprovalStatus::Rejected => Some(format!(
            "rejected by {}{}",
            rec.decided_by.as_deref().unwrap_or("a human"),
            rec.comment
                .as_deref()
                .map(|c| format!(": {c}"))
                .unwrap_or_default()
        )),
        ApprovalStatus::Expired => Some(format!(
            "expired: no decision within {} s",
            (rec.expires_at - rec.created_at).num_seconds()
        )),
    }
}
