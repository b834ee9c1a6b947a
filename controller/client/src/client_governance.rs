//! The client's calls of the human-in-the-loop API: API tokens, approvals
//! (`/v1/human/ask`, `/v1/approvals`), a sandbox's mode, the audit trail, and the
//! create that may wait for an over-commit approval. Shapes in [`crate::governance`].

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::{Method, StatusCode};

use super::{Client, ClientError};
use crate::governance::*;
use crate::percent::encode_component;
use crate::types::{CreateSandboxRequest, CreateSandboxResponse};

/// How long the controller waits for a decision on an ask without `timeout_secs`.
pub const DEFAULT_ASK_TIMEOUT_SECS: u64 = 300;

/// How much longer than the ask's own time-out the client waits for the answer.
pub const ASK_GRACE: Duration = Duration::from_secs(30);

/// What `POST /v1/sandboxes?wait=false` answered.
#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    /// `201`: the sandbox exists.
    Created(CreateSandboxResponse),
    /// `202`: no host has room; the create waits for a human to approve the over-commit.
    Pending(PendingCreateResponse),
}

/// The filters of `GET /v1/approvals`; `None` leaves one out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApprovalQuery {
    /// Only requests in this status; `None` for all of them (sent as `status=all`:
    /// without a status the controller lists the pending ones).
    pub status: Option<ApprovalStatus>,
    pub kind: Option<ApprovalKind>,
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

impl ApprovalQuery {
    /// The query string, without `?`.
    pub fn to_query(&self) -> String {
        let mut q = Query::default();
        q.push_opt(
            "status",
            Some(self.status.map_or("all", ApprovalStatus::as_str)),
        );
        q.push_opt("kind", self.kind.map(ApprovalKind::as_str));
        q.push_opt("limit", self.limit);
        q.push_opt("offset", self.offset);
        q.0
    }
}

/// The filters of `GET /v1/audit`; `None` leaves one out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub sandbox_id: Option<String>,
    /// A token name, or `controller`.
    pub actor: Option<String>,
    /// `api`, `state`, `approval`, `command`, `token`, `mode`, `network`.
    pub kind: Option<String>,
    /// Only events at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only events after this sequence number (paging: the last page's `next_after_seq`).
    pub after_seq: Option<i64>,
    /// At most this many events (the controller allows at most 1000).
    pub limit: Option<u32>,
}

impl AuditQuery {
    /// The query string, without `?` (empty without filters).
    pub fn to_query(&self) -> String {
        let mut q = Query::default();
        q.push_opt("sandbox_id", self.sandbox_id.as_deref());
        q.push_opt("actor", self.actor.as_deref());
        q.push_opt("kind", self.kind.as_deref());
        q.push_opt(
            "since",
            self.since
                .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
        );
        q.push_opt("after_seq", self.after_seq);
        q.push_opt("limit", self.limit);
        q.0
    }
}

/// A query string under construction: `key=value` pairs, values percent-encoded.
#[derive(Debug, Default)]
struct Query(String);

impl Query {
    fn push_opt(&mut self, key: &str, value: Option<impl ToString>) {
        if let Some(v) = value {
            if !self.0.is_empty() {
                self.0.push('&');
            }
            self.0.push_str(key);
            self.0.push('=');
            self.0.push_str(&encode_component(&v.to_string()));
        }
    }
}

/// `path?query`, or `path` when the query is empty.
fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    }
}

impl Client {
    /// `GET /v1/whoami`: the caller's token as the controller sees it.
    pub async fn whoami(&self) -> Result<WhoAmI, ClientError> {
        self.get("/v1/whoami").await
    }

    /// `GET /v1/roles`: what each role may do.
    pub async fn roles(&self) -> Result<crate::governance::RolesResponse, ClientError> {
        self.get("/v1/roles").await
    }

    /// `GET /v1/tokens` (admin).
    pub async fn list_tokens(&self) -> Result<ListTokensResponse, ClientError> {
        self.get("/v1/tokens").await
    }

    /// `POST /v1/tokens` (admin); the answer holds the secret, shown only this once.
    pub async fn create_token(
        &self,
        req: &CreateTokenRequest,
    ) -> Result<CreateTokenResponse, ClientError> {
        self.request(Method::POST, "/v1/tokens", Some(req)).await
    }

    /// `DELETE /v1/tokens/{id_or_name}` (admin): the revoked token.
    pub async fn revoke_token(&self, id_or_name: &str) -> Result<TokenInfo, ClientError> {
        let path = format!("/v1/tokens/{}", encode_component(id_or_name));
        self.request::<(), _>(Method::DELETE, &path, None).await
    }

    /// `POST /v1/human/ask`: blocks until a human decides or the request times out.
    /// The HTTP exchange may take the ask's `timeout_secs` (default
    /// [`DEFAULT_ASK_TIMEOUT_SECS`]) plus [`ASK_GRACE`].
    pub async fn ask(&self, req: &AskRequest) -> Result<AskResponse, ClientError> {
        let wait = Duration::from_secs(req.timeout_secs.unwrap_or(DEFAULT_ASK_TIMEOUT_SECS))
            .saturating_add(ASK_GRACE);
        self.send(Method::POST, "/v1/human/ask", Some(req), Some(wait))
            .await?
            .decode()
    }

    /// `GET /v1/approvals`, newest first.
    pub async fn list_approvals(
        &self,
        query: &ApprovalQuery,
    ) -> Result<ListApprovalsResponse, ClientError> {
        self.get(&with_query("/v1/approvals", &query.to_query()))
            .await
    }

    /// `GET /v1/approvals/{id}`.
    pub async fn get_approval(&self, id: &str) -> Result<ApprovalResponse, ClientError> {
        self.get(&format!("/v1/approvals/{}", encode_component(id)))
            .await
    }

    /// `POST /v1/approvals/{id}/approve` (operator, admin).
    pub async fn approve(
        &self,
        id: &str,
        req: &DecideRequest,
    ) -> Result<ApprovalResponse, ClientError> {
        self.decide(id, "approve", req).await
    }

    /// `POST /v1/approvals/{id}/reject` (operator, admin).
    pub async fn reject(
        &self,
        id: &str,
        req: &DecideRequest,
    ) -> Result<ApprovalResponse, ClientError> {
        self.decide(id, "reject", req).await
    }

    async fn decide(
        &self,
        id: &str,
        verb: &str,
        req: &DecideRequest,
    ) -> Result<ApprovalResponse, ClientError> {
        let path = format!("/v1/approvals/{}/{verb}", encode_component(id));
        self.request(Method::POST, &path, Some(req)).await
    }

    /// `GET /v1/sandboxes/{id}/mode`.
    pub async fn get_mode(&self, sandbox_id: &str) -> Result<ModeResponse, ClientError> {
        self.get(&format!(
            "/v1/sandboxes/{}/mode",
            encode_component(sandbox_id)
        ))
        .await
    }

    /// `PUT /v1/sandboxes/{id}/mode` (operator, admin).
    pub async fn set_mode(
        &self,
        sandbox_id: &str,
        mode: SandboxMode,
    ) -> Result<ModeResponse, ClientError> {
        let path = format!("/v1/sandboxes/{}/mode", encode_component(sandbox_id));
        self.request(Method::PUT, &path, Some(&SetModeRequest { mode }))
            .await
    }

    /// `GET /v1/audit`: one page of events, oldest first; pass the answer's
    /// `next_after_seq` as [`AuditQuery::after_seq`] to read on.
    pub async fn list_audit(&self, query: &AuditQuery) -> Result<ListAuditResponse, ClientError> {
        self.get(&with_query("/v1/audit", &query.to_query())).await
    }

    /// `POST /v1/sandboxes?wait=false`: like [`Client::create_sandbox`], but when no
    /// host has room the controller answers at once with the over-commit approval to
    /// decide ([`CreateOutcome::Pending`]) instead of holding the request until a
    /// human has decided.
    pub async fn create_sandbox_nowait(
        &self,
        req: &CreateSandboxRequest,
    ) -> Result<CreateOutcome, ClientError> {
        let answer = self
            .send(Method::POST, "/v1/sandboxes?wait=false", Some(req), None)
            .await?;
        if answer.status == StatusCode::ACCEPTED {
            answer.decode().map(CreateOutcome::Pending)
        } else {
            answer.decode().map(CreateOutcome::Created)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn approval_queries_are_encoded() {
        assert_eq!(ApprovalQuery::default().to_query(), "status=all");
        let q = ApprovalQuery {
            status: Some(ApprovalStatus::Pending),
            kind: Some(ApprovalKind::ProductionApply),
            limit: Some(50),
            offset: Some(100),
        };
        assert_eq!(
            q.to_query(),
            "status=pending&kind=production_apply&limit=50&offset=100"
        );
        assert_eq!(
            with_query("/v1/approvals", &q.to_query()),
            "/v1/approvals?status=pending&kind=production_apply&limit=50&offset=100"
        );
        assert_eq!(with_query("/v1/audit", ""), "/v1/audit");
    }

    #[test]
    fn audit_queries_are_encoded() {
        let since = Utc
            .with_ymd_and_hms(2025, 3, 1, 12, 0, 0)
            .single()
            .expect("valid time");
        let q = AuditQuery {
            sandbox_id: Some("SBX-1".into()),
            actor: Some("ci bot&co".into()),
            kind: Some("api".into()),
            since: Some(since),
            after_seq: Some(1000),
            limit: Some(1000),
        };
        assert_eq!(
            q.to_query(),
            "sandbox_id=SBX-1&actor=ci%20bot%26co&kind=api\
             &since=2025-03-01T12%3A00%3A00Z&after_seq=1000&limit=1000"
        );
        assert_eq!(
            AuditQuery {
                after_seq: Some(7),
                ..Default::default()
            }
            .to_query(),
            "after_seq=7"
        );
    }

    #[test]
    fn pending_creates_decode() {
        let body = serde_json::json!({
            "request_id": "APR-1",
            "sandbox_id": "SBX-1",
            "status": "pending",
            "approval": {
                "id": "APR-1",
                "kind": "overcommit",
                "requested_by": "ci",
                "summary": "over-commit host-a",
                "details": {},
                "status": "pending",
                "created_at": "2025-03-01T12:00:00Z",
                "expires_at": "2025-03-01T12:05:00Z"
            }
        });
        let answer = super::super::Answer {
            url: "http://x/v1/sandboxes?wait=false".into(),
            status: StatusCode::ACCEPTED,
            bytes: body.to_string().into_bytes(),
        };
        let p: PendingCreateResponse = answer.decode().expect("decodes");
        assert_eq!(p.request_id, "APR-1");
        assert_eq!(p.approval.kind, ApprovalKind::Overcommit);
    }
}
