//! Egress requests: an agent asks for one more allow-list entry for its sandbox
//! (`POST /v1/sandboxes/{id}/network/requests`), and a human decides.
//!
//! The request is an `egress` approval whose details hold the sandbox, the entry, the
//! reason and the allow-list when it was asked. Approved: the entry is added to the
//! stored list (compare-and-set, with a `network` audit event of action `allow` whose
//! target is the approval) and pushed to the agent. Rejected or expired: nothing
//! changes, and the answer says why (200 with `approved: false`, like an ask).
//!
//! Like the over-commit gate, the continuation is a spawned task: it completes whether
//! or not the client is still connected (`?wait=false` answers 202 at once), and a
//! controller that restarts resumes pending requests and applies approved ones whose
//! `allow` event is missing ([`EgressGate::resume`]); adding an entry twice changes
//! nothing.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fluid_client::governance::{ApprovalKind, ApprovalStatus};
use fluid_client::network::{EGRESS_RULES_MAX, EgressRequest, EgressResponse, EgressRuleBody};
use fluid_client::types::SandboxState;
use fluid_proto::model::Protocol;
use fluid_proto::model::{
    Destination, EgressPolicy, EgressRule, check_domain, parse_cidr, parse_protocol,
};
use serde::{Deserialize, Serialize};

use crate::error::ServiceError;
use crate::governance::approvals::{ApprovalService, NewRequest, Requester, refusal_reason};
use crate::governance::auth::{self, Caller, Permission};
use crate::network::egress::{Change, EgressService, bodies_of, body_of, rule_from_body, view};
use crate::store::{ApprovalFilter, ApprovalRecord, AuditFilter, Store};

/// Longest reason.
pub const REASON_MAX: usize = 1024;
/// Approved requests younger than this are checked at start for a missing `allow`.
pub const RESUME_WINDOW: chrono::Duration = chrono::Duration::days(1);

/// What an egress approval stores: enough to apply it later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressDetails {
    pub sandbox_id: String,
    pub rule: EgressRuleBody,
    pub reason: String,
    /// The allow-list when it was asked.
    pub allow: Vec<EgressRuleBody>,
}

/// The result of an egress request.
#[derive(Debug)]
pub enum RequestOutcome {
    Decided(EgressResponse),
    /// Waiting for a human (`?wait=false`).
    Pending(ApprovalRecord),
}

/// A destination as an agent gives it: a CIDR or address, else a domain name.
pub fn parse_destination(s: &str) -> Result<Destination, ServiceError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(ServiceError::Invalid(
            "destination: required (a CIDR, an address or a domain name)".into(),
        ));
    }
    let looks_numeric =
        s.contains('/') || s.contains(':') || s.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    Ok(if looks_numeric {
        Destination::Cidr(parse_cidr("destination", s)?)
    } else {
        Destination::Domain(check_domain("destination", s)?)
    })
}

/// The entry a request asks for: `tcp` when a port comes without a protocol.
pub fn rule_of(req: &EgressRequest) -> Result<EgressRule, ServiceError> {
    let destination = parse_destination(&req.destination)?;
    let protocol = match &req.protocol {
        Some(p) => parse_protocol("protocol", p)?,
        None => req.port.map(|_| Protocol::Tcp),
    };
    Ok(EgressRule::new(destination, protocol, req.port)?)
}

fn check_reason(r: &str) -> Result<String, ServiceError> {
    let r = r.trim();
    if r.is_empty() || r.len() > REASON_MAX || r.chars().any(char::is_control) {
        return Err(ServiceError::Invalid(format!(
            "reason: 1-{REASON_MAX} bytes of text on one line"
        )));
    }
    Ok(r.to_owned())
}

pub struct EgressGate {
    store: Arc<dyn Store>,
    egress: Arc<EgressService>,
    approvals: Arc<ApprovalService>,
    timeout: Duration,
}

impl std::fmt::Debug for EgressGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressGate")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl EgressGate {
    pub fn new(
        store: Arc<dyn Store>,
        egress: Arc<EgressService>,
        approvals: Arc<ApprovalService>,
        timeout: Duration,
    ) -> Self {
        Self {
            store,
            egress,
            approvals,
            timeout,
        }
    }

    /// Opens an `egress` approval for one entry on sandbox `id` and, with `wait`,
    /// blocks until it is decided. `caller` needs `Ask`, then `Read` on the sandbox
    /// (checked before `id` is parsed, then the sandbox).
    pub async fn request(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        req: &EgressRequest,
        wait: bool,
    ) -> Result<RequestOutcome, ServiceError> {
        auth::check(caller, Permission::Ask)?;
        let id = crate::error::parse_id(id)?;
        let sb = &auth::authorized_sandbox(&*self.store, caller, &id, Permission::Read).await?;
        let rule = rule_of(req)?;
        let reason = check_reason(&req.reason)?;
        if sb.state == SandboxState::Destroyed {
            return Err(ServiceError::Conflict(format!(
                "sandbox {} is destroyed",
                sb.id
            )));
        }
        let (_, current) = self.egress.stored(&sb.id).await?;
        let body = body_of(&rule);
        if current.allow.contains(&rule) {
            return Err(ServiceError::Conflict(format!(
                "{body} is already allowed for {}; nothing to ask",
                sb.id
            )));
        }
        if current.allow.len() >= EGRESS_RULES_MAX {
            return Err(ServiceError::Conflict(format!(
                "the allow-list of {} is full ({EGRESS_RULES_MAX} entries); an operator must remove one first",
                sb.id
            )));
        }
        let details = EgressDetails {
            sandbox_id: sb.id.clone(),
            rule: body.clone(),
            reason: reason.clone(),
            allow: bodies_of(&current),
        };
        let approval = self
            .approvals
            .open(
                NewRequest {
                    kind: ApprovalKind::Egress,
                    requester: Requester::from(caller),
                    sandbox_id: Some(sb.id.clone()),
                    summary: format!("{} wants {body}: {reason}", sb.id),
                    details: serde_json::to_value(&details)
                        .map_err(|e| ServiceError::Invalid(e.to_string()))?,
                    timeout: self.timeout,
                },
                caller.role.as_str(),
            )
            .await?;
        let this = self.clone();
        let id = approval.id.clone();
        let sandbox_id = sb.id.clone();
        let task = tokio::spawn(async move { this.finish(&id, &sandbox_id, &rule).await });
        if !wait {
            return Ok(RequestOutcome::Pending(approval));
        }
        task.await
            .map_err(|e| ServiceError::Unavailable(format!("the egress request failed: {e}")))?
            .map(RequestOutcome::Decided)
    }

    /// Waits for the decision on `approval_id`, then applies (or not) the entry.
    async fn finish(
        &self,
        approval_id: &str,
        sandbox_id: &str,
        rule: &EgressRule,
    ) -> Result<EgressResponse, ServiceError> {
        let fin = self.approvals.wait(approval_id).await?;
        let mut answer = EgressResponse {
            request_id: fin.id.clone(),
            approved: fin.status == ApprovalStatus::Approved,
            status: fin.status,
            comment: fin.comment.clone(),
            approved_by: fin.decided_by.clone(),
            reason: refusal_reason(&fin),
            network: None,
        };
        if !answer.approved {
            tracing::info!(approval = %approval_id, sandbox = %sandbox_id, why = ?answer.reason, "egress request refused");
            return Ok(answer);
        }
        answer.network = Some(self.apply(&fin, sandbox_id, rule).await?);
        Ok(answer)
    }

    /// Adds an approved entry to the stored list (idempotently) and pushes the list;
    /// a push that fails is logged (the reconciler pushes it later) and the answer
    /// says `applied` is unknown.
    async fn apply(
        &self,
        rec: &ApprovalRecord,
        sandbox_id: &str,
        rule: &EgressRule,
    ) -> Result<fluid_client::network::NetworkPolicy, ServiceError> {
        let who = Change {
            actor: "controller".into(),
            role: "system".into(),
            action: "allow",
            approval_id: Some(rec.id.clone()),
        };
        let new = self
            .egress
            .change(sandbox_id, &who, |old| {
                let mut allow = old.allow.clone();
                allow.push(rule.clone());
                Ok(EgressPolicy::new(allow)?)
            })
            .await?;
        tracing::info!(approval = %rec.id, sandbox = %sandbox_id, rule = %rule, by = ?rec.decided_by, "egress allowed");
        let sb = self
            .store
            .get_sandbox(sandbox_id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("sandbox {sandbox_id} not found")))?;
        Ok(match self.egress.push(&sb).await {
            Ok(Some((pushed, state))) => view(sandbox_id, &pushed, Some(&state)),
            Ok(None) => view(sandbox_id, &new, None),
            Err(e) => {
                tracing::warn!(sandbox = %sandbox_id, error = %e, "approved egress not pushed yet");
                view(sandbox_id, &new, None)
            }
        })
    }

    /// At start: resumes the waits of pending egress requests, and applies approved
    /// ones (decided within [`RESUME_WINDOW`]) that have no `allow` event yet.
    pub async fn resume(self: &Arc<Self>) -> Result<usize, ServiceError> {
        let mut resumed = 0;
        for status in [ApprovalStatus::Pending, ApprovalStatus::Approved] {
            let (rows, _) = self
                .store
                .list_approvals(&ApprovalFilter {
                    status: Some(status),
                    agent_id: None,
                    kind: Some(ApprovalKind::Egress),
                    limit: 1000,
                    offset: 0,
                })
                .await?;
            for a in rows {
                let Some((sandbox_id, rule)) = details_of(&a) else {
                    tracing::warn!(approval = %a.id, "egress request without readable details");
                    continue;
                };
                if status == ApprovalStatus::Approved && !self.unapplied(&a, &sandbox_id).await? {
                    continue;
                }
                let this = self.clone();
                tokio::spawn(async move {
                    let r = if a.status == ApprovalStatus::Pending {
                        this.finish(&a.id, &sandbox_id, &rule).await.map(|_| ())
                    } else {
                        this.apply(&a, &sandbox_id, &rule).await.map(|_| ())
                    };
                    if let Err(e) = r {
                        tracing::warn!(approval = %a.id, error = %e, "resumed egress request");
                    }
                });
                resumed += 1;
            }
        }
        Ok(resumed)
    }

    /// An approved request, decided recently, whose `allow` event is not in the trail.
    async fn unapplied(&self, a: &ApprovalRecord, sandbox_id: &str) -> Result<bool, ServiceError> {
        let Some(decided) = a.decided_at else {
            return Ok(false);
        };
        if Utc::now() - decided > RESUME_WINDOW {
            return Ok(false);
        }
        let events = self
            .store
            .list_audit(&AuditFilter {
                sandbox_id: Some(sandbox_id.to_owned()),
                kind: Some("network".into()),
                since: Some(decided),
                limit: 1000,
                ..Default::default()
            })
            .await?;
        Ok(!events
            .iter()
            .any(|e| e.action == "allow" && e.target.as_deref() == Some(a.id.as_str())))
    }
}

fn details_of(a: &ApprovalRecord) -> Option<(String, EgressRule)> {
    let d: EgressDetails = serde_json::from_value(a.details.clone()).ok()?;
    let rule = rule_from_body(&d.rule).ok()?;
    Some((d.sandbox_id, rule))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(dest: &str, port: Option<u16>, protocol: Option<&str>) -> EgressRequest {
        EgressRequest {
            destination: dest.into(),
            port,
            protocol: protocol.map(str::to_owned),
            reason: "r".into(),
        }
    }

    #[test]
    fn requests_become_entries() {
        let r = rule_of(&req("Deb.Debian.org", Some(443), None)).expect("valid");
        assert_eq!(r.to_string(), "deb.debian.org tcp/443");
        let r = rule_of(&req("10.0.0.7", Some(53), Some("UDP"))).expect("valid");
        assert_eq!(r.to_string(), "10.0.0.7/32 udp/53");
        let r = rule_of(&req("2001:db8::/48", None, None)).expect("valid");
        assert_eq!(r.to_string(), "2001:db8::/48");
        for (bad, says) in [
            (req("", None, None), "destination"),
            (req("1.2.3", None, None), "destination"),
            (req("no_underscores.example", None, None), "destination"),
            (req("a.example", Some(80), Some("any")), "protocol"),
            (req("a.example", None, Some("icmp")), "protocol"),
            (req("a.example", Some(0), None), "port"),
        ] {
            let e = rule_of(&bad).expect_err("invalid");
            assert!(e.to_string().contains(says), "{bad:?}: {e}");
        }
        assert!(check_reason("  ").is_err());
        assert!(check_reason("a\nb").is_err());
        assert_eq!(check_reason(" apt mirror ").expect("ok"), "apt mirror");
    }
}
