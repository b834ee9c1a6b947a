//! Bodies of a sandbox's network egress API (*new*): the allow-list an operator sets
//! (`GET|PUT /v1/sandboxes/{id}/network`) and the requests an agent makes for one more
//! destination, which a human approves (`POST /v1/sandboxes/{id}/network/requests`).
//! Requests reject unknown fields (the API answers 400).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::governance::{Approval, ApprovalStatus};

/// What every sandbox may reach whatever its allow-list says.
pub const NETWORK_BASELINE: &str =
    "deny by default; DHCP, DNS through the agent's resolver and the management SSH path only";

/// Most entries one allow-list may hold.
pub const EGRESS_RULES_MAX: usize = 256;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum EgressProtocol {
    Tcp,
    Udp,
}

impl EgressProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }

    /// `tcp` / `udp`, in any case.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tcp" => Some(Self::Tcp),
            "udp" => Some(Self::Udp),
            _ => None,
        }
    }
}

/// One allow-list entry: exactly one of `cidr` (an address or network, IPv4 or IPv6)
/// and `domain`; optionally a protocol, and a port of that protocol. The controller
/// answers entries normalised (host bits cleared, `/32` or `/128` on a bare address,
/// domains in lower case) and sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressRuleBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Absent: any protocol (and then no port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<EgressProtocol>,
    /// Absent: any port of `protocol`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl EgressRuleBody {
    /// An entry for `destination`: a CIDR when it is an address or has a `/`, else a
    /// domain (the controller validates either).
    pub fn for_destination(
        destination: &str,
        protocol: Option<EgressProtocol>,
        port: Option<u16>,
    ) -> Self {
        let d = destination.trim();
        let is_cidr = d.contains('/') || d.parse::<std::net::IpAddr>().is_ok();
        Self {
            cidr: is_cidr.then(|| d.to_owned()),
            domain: (!is_cidr).then(|| d.to_owned()),
            protocol,
            port,
        }
    }

    /// The destination as given (`cidr` or `domain`).
    pub fn destination(&self) -> &str {
        self.cidr
            .as_deref()
            .or(self.domain.as_deref())
            .unwrap_or_default()
    }

    /// The form the controller stores: a bare address gets `/32` or `/128`, a domain is
    /// lower case without a trailing dot (host bits are left as they are).
    pub fn normalized(&self) -> Self {
        let mut out = self.clone();
        if let Some(c) = &self.cidr {
            let c = c.trim();
            out.cidr = Some(match c.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(a)) => format!("{a}/32"),
                Ok(std::net::IpAddr::V6(a)) => format!("{a}/128"),
                Err(_) => c.to_owned(),
            });
        }
        if let Some(d) = &self.domain {
            out.domain = Some(d.trim().trim_end_matches('.').to_ascii_lowercase());
        }
        out
    }

    /// `tcp/443`, `udp`, or `any`.
    pub fn service(&self) -> String {
        match (self.protocol, self.port) {
            (Some(p), Some(port)) => format!("{}/{port}", p.as_str()),
            (Some(p), None) => p.as_str().to_owned(),
            (None, Some(port)) => format!("any/{port}"),
            (None, None) => "any".to_owned(),
        }
    }
}

impl std::fmt::Display for EgressRuleBody {
    /// `tcp/443 to deb.debian.org`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} to {}", self.service(), self.destination())
    }
}

/// The addresses a domain entry resolves to on the sandbox's host now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ResolvedDomain {
    pub domain: String,
    pub addresses: Vec<String>,
}

/// A sandbox's egress policy: what it may reach beyond the baseline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetworkPolicy {
    pub sandbox_id: String,
    /// The allow-list the controller holds (the intent), sorted.
    pub allow: Vec<EgressRuleBody>,
    /// What the domain entries resolve to, when the sandbox's agent answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved: Option<Vec<ResolvedDomain>>,
    /// Whether the agent enforces exactly `allow` now; absent when it was not asked or
    /// did not answer (the controller pushes the intent again when it is back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<bool>,
    /// What is allowed whatever `allow` says.
    pub baseline: String,
}

/// `GET|PUT /v1/sandboxes/{id}/network`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NetworkPolicyResponse {
    pub network: NetworkPolicy,
}

/// `PUT /v1/sandboxes/{id}/network` (operator, admin): replaces the allow-list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutNetworkRequest {
    /// At most 256 entries.
    pub allow: Vec<EgressRuleBody>,
}

/// `POST /v1/sandboxes/{id}/network/requests`: asks a human to allow one destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressRequest {
    /// A CIDR, an address or a domain name.
    pub destination: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `tcp` or `udp`; `tcp` when a port is given without it, any protocol otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Why, for the human who decides.
    pub reason: String,
}

/// The answer of a blocking egress request (like `/v1/human/ask`'s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EgressResponse {
    pub request_id: String,
    pub approved: bool,
    /// approved / rejected / expired.
    pub status: ApprovalStatus,
    pub comment: Option<String>,
    pub approved_by: Option<String>,
    /// Why `approved` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The policy with the new entry, when approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkPolicy>,
}

/// `202` answer of an egress request with `?wait=false`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PendingEgressResponse {
    /// The approval to decide (`APR-…`).
    pub request_id: String,
    pub status: ApprovalStatus,
    pub approval: Approval,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_become_cidrs_or_domains() {
        let r = EgressRuleBody::for_destination("10.0.0.1", Some(EgressProtocol::Tcp), Some(80));
        assert_eq!(r.cidr.as_deref(), Some("10.0.0.1"));
        assert_eq!(r.normalized().cidr.as_deref(), Some("10.0.0.1/32"));
        assert_eq!(r.to_string(), "tcp/80 to 10.0.0.1");
        let r = EgressRuleBody::for_destination("2001:db8::/32", None, None);
        assert_eq!(r.cidr.as_deref(), Some("2001:db8::/32"));
        assert_eq!(r.to_string(), "any to 2001:db8::/32");
        let r = EgressRuleBody::for_destination("Deb.Debian.org.", Some(EgressProtocol::Udp), None);
        assert_eq!(r.normalized().domain.as_deref(), Some("deb.debian.org"));
        assert_eq!(r.service(), "udp");
    }

    #[test]
    fn bodies_are_strict_and_compact() {
        let r: EgressRuleBody =
            serde_json::from_str(r#"{"domain":"a.example","protocol":"tcp","port":443}"#)
                .expect("parses");
        assert_eq!(
            serde_json::to_value(&r).expect("json"),
            serde_json::json!({"domain": "a.example", "protocol": "tcp", "port": 443})
        );
        assert!(serde_json::from_str::<EgressRuleBody>(r#"{"host":"x"}"#).is_err());
        assert!(serde_json::from_str::<EgressRuleBody>(r#"{"cidr":"x","port":70000}"#).is_err());
        assert!(
            serde_json::from_str::<EgressRuleBody>(r#"{"cidr":"x","protocol":"icmp"}"#).is_err()
        );
        assert!(
            serde_json::from_str::<EgressRequest>(r#"{"destination":"x","reason":"y","z":1}"#)
                .is_err()
        );
        assert_eq!(EgressProtocol::parse(" UDP"), Some(EgressProtocol::Udp));
    }
}
