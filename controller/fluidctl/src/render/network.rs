//! Rendering of a sandbox's network egress: its allow-list (with what the domains
//! resolve to) and the outcome of an egress request. Pure, like the rest of [`super`].

use fluid_client::governance::ApprovalStatus;
use fluid_client::network::{EgressResponse, EgressRuleBody, NetworkPolicy};

use super::{NONE, key_values, one_line, table};

/// `tcp`, `udp` or `any`.
fn protocol(r: &EgressRuleBody) -> &'static str {
    r.protocol.map_or("any", |p| p.as_str())
}

/// `DESTINATION PROTOCOL PORT`, then the resolved addresses and the baseline, and a
/// note when the agent does not enforce the list (or did not answer).
pub fn network_view(n: &NetworkPolicy) -> String {
    let mut out = if n.allow.is_empty() {
        "No egress allowed beyond the baseline.".to_owned()
    } else {
        let rows = n
            .allow
            .iter()
            .map(|r| {
                vec![
                    r.destination().to_owned(),
                    protocol(r).to_owned(),
                    r.port.map_or_else(|| NONE.to_owned(), |p| p.to_string()),
                ]
            })
            .collect();
        table(&["DESTINATION", "PROTOCOL", "PORT"], rows)
    };
    let mut fields = vec![("BASELINE", one_line(&n.baseline))];
    if let Some(resolved) = n.resolved.as_ref().filter(|r| !r.is_empty()) {
        for r in resolved {
            let addrs = if r.addresses.is_empty() {
                "(no addresses)".to_owned()
            } else {
                r.addresses.join(", ")
            };
            fields.push(("RESOLVED", format!("{} → {addrs}", r.domain)));
        }
    }
    match n.applied {
        Some(true) => {}
        Some(false) => fields.push((
            "NOTE",
            "the agent enforces a different list; the controller pushes this one".into(),
        )),
        None => fields.push((
            "NOTE",
            "the agent did not answer: enforcement unknown".into(),
        )),
    }
    out.push_str("\n\n");
    out.push_str(&key_values(&fields));
    out
}

/// `approved by alice (APR-1): tcp/443 to a.example`, `rejected by bob (APR-1): why`,
/// `expired (APR-1): expired: …`.
pub fn egress_outcome(r: &EgressResponse, rule: &EgressRuleBody) -> String {
    let who = r
        .approved_by
        .as_deref()
        .filter(|s| !s.is_empty())
        .map_or_else(String::new, |b| format!(" by {b}"));
    let mut out = match r.status {
        ApprovalStatus::Approved | ApprovalStatus::Rejected => {
            format!("{}{who} ({})", r.status.as_str(), r.request_id)
        }
        ApprovalStatus::Expired => format!("expired ({})", r.request_id),
        ApprovalStatus::Pending => format!("pending ({})", r.request_id),
    };
    let mut notes = Vec::new();
    if r.approved {
        notes.push(format!("{rule} is allowed"));
    }
    notes.extend(
        [r.comment.as_deref(), r.reason.as_deref()]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .map(one_line),
    );
    for n in notes {
        out.push_str(": ");
        out.push_str(&n);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fluid_client::network::{EgressProtocol, NETWORK_BASELINE, ResolvedDomain};

    fn policy(allow: Vec<EgressRuleBody>, applied: Option<bool>) -> NetworkPolicy {
        NetworkPolicy {
            sandbox_id: "SBX-1".into(),
            allow,
            resolved: applied.map(|_| {
                vec![ResolvedDomain {
                    domain: "deb.debian.org".into(),
                    addresses: vec!["192.0.2.1".into(), "2001:db8::1".into()],
                }]
            }),
            applied,
            baseline: NETWORK_BASELINE.into(),
        }
    }

    #[test]
    fn allow_lists_render_as_a_table() {
        let n = policy(
            vec![
                EgressRuleBody::for_destination("10.0.0.0/8", None, None),
                EgressRuleBody::for_destination(
                    "deb.debian.org",
                    Some(EgressProtocol::Tcp),
                    Some(443),
                ),
            ],
            Some(true),
        );
        let out = network_view(&n);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "DESTINATION     PROTOCOL  PORT");
        assert_eq!(lines[1], "10.0.0.0/8      any       -");
        assert_eq!(lines[2], "deb.debian.org  tcp       443");
        assert!(
            out.contains("RESOLVED: deb.debian.org → 192.0.2.1, 2001:db8::1"),
            "{out}"
        );
        assert!(out.contains("BASELINE: deny by default"), "{out}");
        assert!(!out.contains("NOTE"), "{out}");
        let out = network_view(&policy(Vec::new(), None));
        assert!(
            out.starts_with("No egress allowed beyond the baseline."),
            "{out}"
        );
        assert!(out.contains("NOTE:     the agent did not answer"), "{out}");
        let out = network_view(&policy(Vec::new(), Some(false)));
        assert!(out.contains("enforces a different list"), "{out}");
    }

    #[test]
    fn outcomes_say_who_and_why() {
        let rule =
            EgressRuleBody::for_destination("a.example", Some(EgressProtocol::Tcp), Some(443));
        let mut r = EgressResponse {
            request_id: "APR-1".into(),
            approved: true,
            status: ApprovalStatus::Approved,
            comment: Some("ok".into()),
            approved_by: Some("alice".into()),
            reason: None,
            network: None,
        };
        assert_eq!(
            egress_outcome(&r, &rule),
            "approved by alice (APR-1): tcp/443 to a.example is allowed: ok"
        );
        r.approved = false;
        r.status = ApprovalStatus::Expired;
        r.approved_by = None;
        r.comment = None;
        r.reason = Some("expired: no decision within 900 s".into());
        assert_eq!(
            egress_outcome(&r, &rule),
            "expired (APR-1): expired: no decision within 900 s"
        );
    }
}
