//! Egress allow-lists, validated: what a sandbox may reach beyond the baseline.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

use super::{SandboxId, ValidationError};
use crate::pb;

/// Most entries one sandbox's allow-list may hold.
pub const EGRESS_RULES_MAX: usize = 256;
/// Longest domain name (RFC 1035).
pub const DOMAIN_MAX: usize = 253;

/// Where an allow-list entry points.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    /// A network (a bare address is a /32 or /128); host bits are cleared.
    Cidr(IpNet),
    /// A DNS name, lower case, without the trailing dot; the addresses it resolves to
    /// (through the agent's resolver) are allowed while their TTL lasts.
    Domain(String),
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cidr(n) => write!(f, "{n}"),
            Self::Domain(d) => f.write_str(d),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// One entry: a destination and, optionally, a protocol and port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EgressRule {
    pub destination: Destination,
    /// `None`: any protocol (and so any port).
    pub protocol: Option<Protocol>,
    /// `None`: any port of `protocol`.
    pub port: Option<u16>,
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.destination)?;
        match (self.protocol, self.port) {
            (Some(p), Some(port)) => write!(f, " {}/{port}", p.as_str()),
            (Some(p), None) => write!(f, " {}", p.as_str()),
            _ => Ok(()),
        }
    }
}

/// A sandbox's allow-list, sorted and without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct EgressPolicy {
    pub allow: Vec<EgressRule>,
}

impl EgressPolicy {
    /// The domains the policy names.
    pub fn domains(&self) -> impl Iterator<Item = &str> {
        self.allow.iter().filter_map(|r| match &r.destination {
            Destination::Domain(d) => Some(d.as_str()),
            Destination::Cidr(_) => None,
        })
    }
}

/// Parses a CIDR or a bare address; clears host bits.
pub fn parse_cidr(field: &'static str, s: &str) -> Result<IpNet, ValidationError> {
    let s = s.trim();
    let net = IpNet::from_str(s)
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| ValidationError::new(field, format!("{s:?} is not an address or CIDR")))?;
    Ok(net.trunc())
}

/// A DNS name: 1-253 characters, labels of 1-63 letters, digits and hyphens (not at
/// either end), at least two labels; returned in lower case without a trailing dot.
pub fn check_domain(field: &'static str, s: &str) -> Result<String, ValidationError> {
    let d = s.trim().trim_end_matches('.').to_ascii_lowercase();
    let labels_ok = d.split('.').all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if d.is_empty() || d.len() > DOMAIN_MAX || !labels_ok || !d.contains('.') {
        return Err(ValidationError::new(
            field,
            format!("{s:?} is not a domain name"),
        ));
    }
    if d.parse::<std::net::IpAddr>().is_ok() || d.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(ValidationError::new(
            field,
            format!("{s:?} is an address: give it as a cidr"),
        ));
    }
    Ok(d)
}

/// Parses `tcp` / `udp` / empty.
pub fn parse_protocol(field: &'static str, s: &str) -> Result<Option<Protocol>, ValidationError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" | "any" => Ok(None),
        "tcp" => Ok(Some(Protocol::Tcp)),
        "udp" => Ok(Some(Protocol::Udp)),
        other => Err(ValidationError::new(
            field,
            format!("{other:?} is not tcp or udp"),
        )),
    }
}

impl EgressRule {
    /// Checks the combination: a port needs a protocol.
    pub fn new(
        destination: Destination,
        protocol: Option<Protocol>,
        port: Option<u16>,
    ) -> Result<Self, ValidationError> {
        if port == Some(0) {
            return Err(ValidationError::new("port", "must be 1-65535"));
        }
        if port.is_some() && protocol.is_none() {
            return Err(ValidationError::new(
                "protocol",
                "a port needs a protocol (tcp or udp)",
            ));
        }
        Ok(Self {
            destination,
            protocol,
            port,
        })
    }
}

impl TryFrom<pb::EgressRule> for EgressRule {
    type Error = ValidationError;
    fn try_from(r: pb::EgressRule) -> Result<Self, Self::Error> {
        use pb::egress_rule::Destination as D;
        let destination = match r.destination {
            Some(D::Cidr(c)) => Destination::Cidr(parse_cidr("cidr", &c)?),
            Some(D::Domain(d)) => Destination::Domain(check_domain("domain", &d)?),
            None => {
                return Err(ValidationError::new(
                    "destination",
                    "cidr or domain is required",
                ));
            }
        };
        let port = match r.port {
            0 => None,
            p => Some(
                u16::try_from(p)
                    .map_err(|_| ValidationError::new("port", format!("{p} is not 1-65535")))?,
            ),
        };
        Self::new(destination, parse_protocol("protocol", &r.protocol)?, port)
    }
}

impl From<&EgressRule> for pb::EgressRule {
    fn from(r: &EgressRule) -> Self {
        use pb::egress_rule::Destination as D;
        Self {
            destination: Some(match &r.destination {
                Destination::Cidr(n) => D::Cidr(n.to_string()),
                Destination::Domain(d) => D::Domain(d.clone()),
            }),
            protocol: r
                .protocol
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
            port: r.port.map(u32::from).unwrap_or(0),
        }
    }
}

impl EgressPolicy {
    /// Validates, sorts and deduplicates entries.
    pub fn new(mut allow: Vec<EgressRule>) -> Result<Self, ValidationError> {
        allow.sort();
        allow.dedup();
        if allow.len() > EGRESS_RULES_MAX {
            return Err(ValidationError::new(
                "allow",
                format!("at most {EGRESS_RULES_MAX} entries"),
            ));
        }
        Ok(Self { allow })
    }
}

impl TryFrom<pb::EgressPolicy> for EgressPolicy {
    type Error = ValidationError;
    fn try_from(p: pb::EgressPolicy) -> Result<Self, Self::Error> {
        if p.allow.len() > EGRESS_RULES_MAX {
            return Err(ValidationError::new(
                "allow",
                format!("at most {EGRESS_RULES_MAX} entries"),
            ));
        }
        Self::new(
            p.allow
                .into_iter()
                .map(EgressRule::try_from)
                .collect::<Result<_, _>>()?,
        )
    }
}

impl From<&EgressPolicy> for pb::EgressPolicy {
    fn from(p: &EgressPolicy) -> Self {
        Self {
            allow: p.allow.iter().map(pb::EgressRule::from).collect(),
        }
    }
}

/// `SetEgressPolicy`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetEgressPolicy {
    pub sandbox_id: SandboxId,
    pub policy: EgressPolicy,
}

impl TryFrom<pb::SetEgressPolicyRequest> for SetEgressPolicy {
    type Error = ValidationError;
    fn try_from(r: pb::SetEgressPolicyRequest) -> Result<Self, Self::Error> {
        Ok(Self {
            sandbox_id: SandboxId::parse("sandbox_id", &r.sandbox_id)?,
            policy: EgressPolicy::try_from(r.policy.unwrap_or_default())?,
        })
    }
}

/// A sandbox's allow-list as its agent enforces it, and what each domain entry (the
/// sandbox's and the host's `always_allow`) resolves to now (`EgressPolicyState`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressState {
    pub policy: EgressPolicy,
    /// Each domain with its current addresses, by domain.
    pub resolved: Vec<(String, Vec<IpAddr>)>,
}

impl TryFrom<pb::EgressPolicyState> for EgressState {
    type Error = ValidationError;
    /// The answer's `sandbox_id` echoes the request's and is not kept.
    fn try_from(s: pb::EgressPolicyState) -> Result<Self, Self::Error> {
        let policy = EgressPolicy::try_from(s.policy.unwrap_or_default())?;
        let resolved = s
            .resolved
            .into_iter()
            .map(|r| {
                let addresses = r
                    .addresses
                    .iter()
                    .map(|a| {
                        a.parse().map_err(|_| {
                            ValidationError::new("resolved", format!("{a:?} is not an IP address"))
                        })
                    })
                    .collect::<Result<_, _>>()?;
                Ok((r.domain, addresses))
            })
            .collect::<Result<_, ValidationError>>()?;
        Ok(Self { policy, resolved })
    }
}

impl EgressState {
    /// The wire answer about `sandbox_id`'s allow-list.
    pub fn into_pb(self, sandbox_id: &SandboxId) -> pb::EgressPolicyState {
        pb::EgressPolicyState {
            sandbox_id: sandbox_id.to_string(),
            policy: Some(pb::EgressPolicy::from(&self.policy)),
            resolved: self
                .resolved
                .into_iter()
                .map(|(domain, addrs)| pb::ResolvedDomain {
                    domain,
                    addresses: addrs.iter().map(ToString::to_string).collect(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(dest: pb::egress_rule::Destination, protocol: &str, port: u32) -> pb::EgressRule {
        pb::EgressRule {
            destination: Some(dest),
            protocol: protocol.into(),
            port,
        }
    }

    #[test]
    fn cidrs_are_normalised() {
        assert_eq!(
            parse_cidr("c", "10.1.2.3/8").expect("ok").to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            parse_cidr("c", "10.1.2.3").expect("ok").to_string(),
            "10.1.2.3/32"
        );
        assert_eq!(
            parse_cidr("c", "2001:db8::1").expect("ok").to_string(),
            "2001:db8::1/128"
        );
        for bad in ["", "10.0.0.0/33", "nope", "10.0.0"] {
            assert!(parse_cidr("c", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn domains_are_checked() {
        assert_eq!(
            check_domain("d", "Deb.Debian.ORG.").expect("ok"),
            "deb.debian.org"
        );
        for bad in [
            "",
            "localhost",
            "-a.com",
            "a-.com",
            "a..com",
            "a b.com",
            "1.2.3.4",
            &"a".repeat(64),
        ] {
            assert!(check_domain("d", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rules_from_the_wire() {
        use pb::egress_rule::Destination as D;
        let r =
            EgressRule::try_from(rule(D::Domain("example.org".into()), "TCP", 443)).expect("ok");
        assert_eq!(r.to_string(), "example.org tcp/443");
        let r = EgressRule::try_from(rule(D::Cidr("10.0.0.0/24".into()), "", 0)).expect("ok");
        assert_eq!(r.to_string(), "10.0.0.0/24");
        assert!(EgressRule::try_from(rule(D::Cidr("10.0.0.0/24".into()), "", 80)).is_err());
        assert!(EgressRule::try_from(rule(D::Cidr("10.0.0.0/24".into()), "icmp", 0)).is_err());
        assert!(EgressRule::try_from(rule(D::Cidr("10.0.0.0/24".into()), "tcp", 70000)).is_err());
        assert!(EgressRule::try_from(pb::EgressRule::default()).is_err());
    }

    #[test]
    fn policies_are_sorted_deduplicated_and_bounded() {
        use pb::egress_rule::Destination as D;
        let p = EgressPolicy::try_from(pb::EgressPolicy {
            allow: vec![
                rule(D::Domain("b.example".into()), "tcp", 443),
                rule(D::Cidr("10.0.0.1".into()), "tcp", 80),
                rule(D::Domain("B.example".into()), "tcp", 443),
            ],
        })
        .expect("ok");
        assert_eq!(p.allow.len(), 2);
        assert_eq!(p.domains().collect::<Vec<_>>(), ["b.example"]);
        let many = pb::EgressPolicy {
            allow: (0..=EGRESS_RULES_MAX as u32)
                .map(|i| rule(D::Cidr(format!("10.0.{}.{}", i / 256, i % 256)), "", 0))
                .collect(),
        };
        assert!(EgressPolicy::try_from(many).is_err());
        let back = EgressPolicy::try_from(pb::EgressPolicy::from(&p)).expect("roundtrip");
        assert_eq!(back, p);
    }

    #[test]
    fn egress_states_cross_the_wire_and_back() {
        use pb::egress_rule::Destination as D;
        let id = SandboxId::parse("id", "SBX-0123abcd").expect("id");
        let state = EgressState {
            policy: EgressPolicy::try_from(pb::EgressPolicy {
                allow: vec![rule(D::Domain("a.example".into()), "tcp", 443)],
            })
            .expect("policy"),
            resolved: vec![(
                "a.example".into(),
                vec![[192, 0, 2, 1].into(), "2001:db8::1".parse().expect("v6")],
            )],
        };
        let wire = state.clone().into_pb(&id);
        assert_eq!(wire.sandbox_id, "SBX-0123abcd");
        assert_eq!(wire.resolved[0].addresses, ["192.0.2.1", "2001:db8::1"]);
        assert_eq!(EgressState::try_from(wire.clone()), Ok(state));
        let mut bad = wire;
        bad.resolved[0].addresses.push("nope".into());
        assert_eq!(
            EgressState::try_from(bad).expect_err("bad address").field,
            "resolved"
        );
    }
}
