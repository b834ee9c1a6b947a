//! A sandbox's network egress allow-list: what it may reach beyond the agent's baseline
//! (DHCP, DNS through the agent's resolver, the management SSH path).
//!
//! The controller's copy is the intent: stored in the sandbox's row (as the REST
//! entries' JSON, normalised and sorted), changed by compare-and-set with its `network`
//! audit event in the same transaction, then pushed to the sandbox's agent
//! (`SetEgressPolicy`), which enforces it. A create carries the stored list in
//! `CreateSandbox.egress`, so a sandbox is never open before its first packet. An agent
//! that was down, or lost its state, gets the intent again from the reconciler, which
//! compares each settled sandbox's list with the agent's (`GetEgressPolicy`).
//!
//! Operators replace the list ([`EgressService::put`]); agents ask for one more entry
//! through a human approval ([`crate::network::requests`]).

use std::sync::Arc;
use std::time::Duration;

use fluid_client::network::{
    EGRESS_RULES_MAX, EgressProtocol, EgressRuleBody, NETWORK_BASELINE, NetworkPolicy,
    PutNetworkRequest, ResolvedDomain,
};
use fluid_client::types::SandboxState;
use fluid_proto::ValidationError;
use fluid_proto::model::{
    Destination, EgressPolicy, EgressRule, Protocol, SandboxId, check_domain, parse_cidr,
};

use crate::agents::locate::{self, Unreachable};
use crate::agents::{AgentConnector, AgentError, AgentTarget, EgressState};
use crate::error::ServiceError;
use crate::governance::auth::{self, Caller, Permission};
use crate::store::{EgressWrite, NewAuditEvent, SandboxRecord, Store, StoreError};

/// How long `GET …/network` waits for the agent's view before answering without it.
pub const AGENT_PEEK: Duration = Duration::from_secs(5);
/// Compare-and-set attempts before a change gives up (only concurrent writers retry).
const WRITE_ATTEMPTS: usize = 8;

fn protocol_of(p: EgressProtocol) -> Protocol {
    match p {
        EgressProtocol::Tcp => Protocol::Tcp,
        EgressProtocol::Udp => Protocol::Udp,
    }
}

/// One REST entry, validated: exactly one of `cidr` / `domain`, a port only with a
/// protocol.
pub fn rule_from_body(b: &EgressRuleBody) -> Result<EgressRule, ValidationError> {
    let destination = match (&b.cidr, &b.domain) {
        (Some(c), None) => Destination::Cidr(parse_cidr("cidr", c)?),
        (None, Some(d)) => Destination::Domain(check_domain("domain", d)?),
        (Some(_), Some(_)) => {
            return Err(ValidationError::new(
                "cidr",
                "give either cidr or domain, not both",
            ));
        }
        (None, None) => {
            return Err(ValidationError::new(
                "cidr",
                "an entry needs a cidr or a domain",
            ));
        }
    };
    EgressRule::new(destination, b.protocol.map(protocol_of), b.port)
}

/// A rule as the REST API shows it.
pub fn body_of(r: &EgressRule) -> EgressRuleBody {
    let (cidr, domain) = match &r.destination {
        Destination::Cidr(n) => (Some(n.to_string()), None),
        Destination::Domain(d) => (None, Some(d.clone())),
    };
    EgressRuleBody {
        cidr,
        domain,
        protocol: r.protocol.map(|p| match p {
            Protocol::Tcp => EgressProtocol::Tcp,
            Protocol::Udp => EgressProtocol::Udp,
        }),
        port: r.port,
    }
}

/// An allow-list from REST entries (at most [`EGRESS_RULES_MAX`]); a bad entry is named
/// by its index.
pub fn policy_from_bodies(bodies: &[EgressRuleBody]) -> Result<EgressPolicy, ServiceError> {
    if bodies.len() > EGRESS_RULES_MAX {
        return Err(ServiceError::Invalid(format!(
            "allow: at most {EGRESS_RULES_MAX} entries ({} given)",
            bodies.len()
        )));
    }
    let rules = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| {
            rule_from_body(b).map_err(|e| ServiceError::Invalid(format!("allow[{i}]: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(EgressPolicy::new(rules)?)
}

pub fn bodies_of(p: &EgressPolicy) -> Vec<EgressRuleBody> {
    p.allow.iter().map(body_of).collect()
}

/// The stored text of an allow-list (`{"allow":[]}` when empty).
pub fn policy_json(p: &EgressPolicy) -> String {
    serde_json::to_string(&PutNetworkRequest {
        allow: bodies_of(p),
    })
    .unwrap_or_else(|_| crate::store::EMPTY_EGRESS_JSON.to_owned())
}

/// An allow-list from its stored text.
pub fn policy_from_json(text: &str) -> Result<EgressPolicy, StoreError> {
    let req: PutNetworkRequest =
        serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("egress_json: {e}")))?;
    policy_from_bodies(&req.allow).map_err(|e| StoreError::Corrupt(format!("egress_json: {e}")))
}

/// A policy as the REST API answers it; `state` is the agent's view, when it gave one.
pub fn view(sandbox_id: &str, p: &EgressPolicy, state: Option<&EgressState>) -> NetworkPolicy {
    NetworkPolicy {
        sandbox_id: sandbox_id.to_owned(),
        allow: bodies_of(p),
        resolved: state.map(|s| {
            s.resolved
                .iter()
                .map(|(domain, addrs)| ResolvedDomain {
                    domain: domain.clone(),
                    addresses: addrs.iter().map(ToString::to_string).collect(),
                })
                .collect()
        }),
        applied: state.map(|s| s.policy == *p),
        baseline: NETWORK_BASELINE.to_owned(),
    }
}

/// Who changes an allow-list, and why, for its audit event.
#[derive(Debug, Clone)]
pub struct Change {
    pub actor: String,
    pub role: String,
    /// `set` (an operator's PUT) or `allow` (an approved request).
    pub action: &'static str,
    /// The approval that allowed it.
    pub approval_id: Option<String>,
}

impl Change {
    pub fn by(caller: &Caller) -> Self {
        Self {
            actor: caller.name.clone(),
            role: caller.role.as_str().to_owned(),
            action: "set",
            approval_id: None,
        }
    }
}

pub struct EgressService {
    store: Arc<dyn Store>,
    agents: Arc<dyn AgentConnector>,
}

impl std::fmt::Debug for EgressService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EgressService")
    }
}

impl EgressService {
    pub fn new(store: Arc<dyn Store>, agents: Arc<dyn AgentConnector>) -> Self {
        Self { store, agents }
    }

    /// The stored allow-list (its text and the policy).
    pub async fn stored(&self, id: &str) -> Result<(String, EgressPolicy), ServiceError> {
        let text = self
            .store
            .get_egress(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("sandbox {id} not found")))?;
        let p = policy_from_json(&text)?;
        Ok((text, p))
    }

    /// The sandbox's agent, when its host is registered and online.
    async fn online_target(&self, sb: &SandboxRecord) -> Result<Option<AgentTarget>, StoreError> {
        match locate::agent_of(&*self.store, sb).await {
            Ok(t) => Ok(Some(t)),
            Err(Unreachable::Store(e)) => Err(e),
            Err(_) => Ok(None),
        }
    }

    /// The stored allow-list, with the agent's view when it answers within
    /// [`AGENT_PEEK`] (never an error because the agent is down), for `caller` (`Read`
    /// on the sandbox).
    pub async fn get(
        &self,
        caller: &Caller,
        id: &SandboxId,
    ) -> Result<NetworkPolicy, ServiceError> {
        let sb = &auth::authorized_sandbox(&*self.store, caller, id, Permission::Read).await?;
        let (_, p) = self.stored(&sb.id).await?;
        let mut state = None;
        if sb.is_live()
            && let Some(t) = self.online_target(sb).await?
        {
            let id = SandboxId::parse("id", &sb.id)?;
            match tokio::time::timeout(AGENT_PEEK, self.agents.get_egress_policy(&t, &id)).await {
                Ok(Ok(s)) => state = Some(s),
                Ok(Err(e)) => tracing::debug!(sandbox = %sb.id, error = %e, "no egress view"),
                Err(_) => tracing::debug!(sandbox = %sb.id, "the agent's egress view timed out"),
            }
        }
        Ok(view(&sb.id, &p, state.as_ref()))
    }

    /// Replaces the allow-list: stored (and audited) first, then pushed to the agent.
    /// The agent unreachable is a 503, but the intent stays and is pushed later.
    /// `caller` needs `ManageNetwork` on the sandbox.
    pub async fn put(
        &self,
        caller: &Caller,
        id: &SandboxId,
        allow: &[EgressRuleBody],
    ) -> Result<NetworkPolicy, ServiceError> {
        let sb =
            &auth::authorized_sandbox(&*self.store, caller, id, Permission::ManageNetwork).await?;
        let new = policy_from_bodies(allow)?;
        if sb.state == SandboxState::Destroyed {
            return Err(ServiceError::Conflict(format!(
                "sandbox {} is destroyed",
                sb.id
            )));
        }
        self.change(&sb.id, &Change::by(caller), |_| Ok(new.clone()))
            .await?;
        Ok(match self.push(sb).await? {
            Some((pushed, state)) => view(&sb.id, &pushed, Some(&state)),
            None => view(&sb.id, &new, None),
        })
    }

    /// Applies `f` to the stored allow-list by compare-and-set (retried when another
    /// writer came first), appending the `network` audit event with the old and new
    /// lists in the same transaction. Returns the new policy.
    pub async fn change(
        &self,
        id: &str,
        who: &Change,
        f: impl Fn(&EgressPolicy) -> Result<EgressPolicy, ServiceError>,
    ) -> Result<EgressPolicy, ServiceError> {
        let (mut text, mut old) = self.stored(id).await?;
        for _ in 0..WRITE_ATTEMPTS {
            let new = f(&old)?;
            let mut e = NewAuditEvent::system("network", who.action, "stored");
            if let Some(a) = &who.approval_id {
                e = e.target(a.clone());
            }
            e = e
                .sandbox(id)
                .details(serde_json::json!({
                    "old": bodies_of(&old),
                    "new": bodies_of(&new),
                    "approval_id": who.approval_id,
                }))
                .by(&who.actor, &who.role);
            match self
                .store
                .set_egress(id, &policy_json(&new), &text, &e)
                .await?
            {
                EgressWrite::Written => {
                    tracing::info!(sandbox = %id, by = %who.actor, action = who.action, entries = new.allow.len(), "egress allow-list changed");
                    return Ok(new);
                }
                EgressWrite::Changed(now) => {
                    old = policy_from_json(&now)?;
                    text = now;
                }
                EgressWrite::NotFound => {
                    return Err(ServiceError::NotFound(format!("sandbox {id} not found")));
                }
            }
        }
        Err(ServiceError::Conflict(format!(
            "the allow-list of {id} kept changing; try again"
        )))
    }

    /// Sends the stored allow-list to the sandbox's agent (see [`push_stored`]): what
    /// it pushed and what the agent enforces now. `Ok(None)`: nothing to send to (a
    /// create in flight, which carries the stored list itself, or a sandbox that is no
    /// longer live).
    pub async fn push(
        &self,
        sb: &SandboxRecord,
    ) -> Result<Option<(EgressPolicy, EgressState)>, ServiceError> {
        let later = "the allow-list is stored and is pushed when the agent is back";
        if !sb.is_live() {
            return Ok(None);
        }
        let Some(t) = self.online_target(sb).await? else {
            return Err(ServiceError::Unavailable(format!(
                "host {} of sandbox {} is not online; {later}",
                sb.host_name.as_deref().unwrap_or("-"),
                sb.id
            )));
        };
        let id = SandboxId::parse("id", &sb.id)?;
        match push_stored(&*self.store, &*self.agents, &t, &id).await {
            Ok(pushed) => Ok(Some(pushed)),
            Err(ServiceError::Agent(AgentError::NotFound { .. }))
                if matches!(sb.state, SandboxState::Created | SandboxState::Starting) =>
            {
                Ok(None)
            }
            Err(ServiceError::Agent(
                e @ (AgentError::Unavailable { .. } | AgentError::Timeout { .. }),
            )) => Err(ServiceError::Unavailable(format!("{e}; {later}"))),
            Err(e) => Err(e),
        }
    }
}

/// Pushes the sandbox's stored allow-list to its agent, re-reading the store after
/// each push and pushing again when it changed meanwhile: of concurrent changes, whose
/// pushes may arrive in any order, the newest is pushed last.
pub async fn push_stored(
    store: &dyn Store,
    agents: &dyn AgentConnector,
    t: &AgentTarget,
    id: &SandboxId,
) -> Result<(EgressPolicy, EgressState), ServiceError> {
    let read = || async {
        store
            .get_egress(id.as_str())
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("sandbox {id} not found")))
    };
    let mut text = read().await?;
    for _ in 0..WRITE_ATTEMPTS {
        let p = policy_from_json(&text)?;
        let state = agents.set_egress_policy(t, id, &p).await?;
        let now = read().await?;
        if now == text {
            return Ok((p, state));
        }
        text = now;
    }
    Err(ServiceError::Conflict(format!(
        "the allow-list of {id} kept changing; the reconciler pushes it"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: serde_json::Value) -> EgressRuleBody {
        serde_json::from_value(json).expect("body")
    }

    #[test]
    fn entries_are_validated_with_their_index() {
        let ok = policy_from_bodies(&[
            body(serde_json::json!({"domain": "B.Example.", "protocol": "tcp", "port": 443})),
            body(serde_json::json!({"cidr": "10.1.2.3/8"})),
        ])
        .expect("valid");
        assert_eq!(
            serde_json::to_value(bodies_of(&ok)).expect("json"),
            serde_json::json!([
                {"cidr": "10.0.0.0/8"},
                {"domain": "b.example", "protocol": "tcp", "port": 443},
            ])
        );
        for (b, says) in [
            (serde_json::json!({"cidr": "10.0.0.0/33"}), "allow[0]: cidr"),
            (serde_json::json!({"domain": "nodot"}), "allow[0]: domain"),
            (
                serde_json::json!({"cidr": "10.0.0.1", "port": 22}),
                "needs a protocol",
            ),
            (
                serde_json::json!({"cidr": "10.0.0.1", "domain": "a.example"}),
                "not both",
            ),
            (
                serde_json::json!({"protocol": "tcp"}),
                "needs a cidr or a domain",
            ),
            (
                serde_json::json!({"cidr": "10.0.0.1", "protocol": "udp", "port": 0}),
                "1-65535",
            ),
        ] {
            let e = policy_from_bodies(&[body(b.clone())]).expect_err("invalid");
            assert!(e.to_string().contains(says), "{b}: {e}");
        }
        let many: Vec<_> = (0..=EGRESS_RULES_MAX)
            .map(|i| {
                EgressRuleBody::for_destination(
                    &format!("10.1.{}.{}", i / 256, i % 256),
                    None,
                    None,
                )
            })
            .collect();
        let e = policy_from_bodies(&many).expect_err("too many");
        assert!(e.to_string().contains("at most 256"), "{e}");
    }

    #[test]
    fn stored_text_round_trips() {
        assert_eq!(
            policy_json(&EgressPolicy::default()),
            crate::store::EMPTY_EGRESS_JSON
        );
        let p = policy_from_bodies(&[EgressRuleBody::for_destination(
            "deb.debian.org",
            Some(EgressProtocol::Tcp),
            Some(443),
        )])
        .expect("valid");
        assert_eq!(policy_from_json(&policy_json(&p)).expect("parses"), p);
        assert!(matches!(
            policy_from_json("{\"allow\":[{\"cidr\":\"x\"}]}"),
            Err(StoreError::Corrupt(_))
        ));
    }
}
