//! Tests of the agent client (`agents.rs`).

use super::*;

#[test]
fn addresses_are_checked() {
    assert_eq!(check_address("kvm-1.lab:7443"), Ok("kvm-1.lab"));
    assert_eq!(check_address("10.0.0.5:7443"), Ok("10.0.0.5"));
    assert_eq!(check_address("[::1]:7443"), Ok("[::1]"));
    for bad in [
        "",
        "host",
        "host:",
        ":80",
        "host:0",
        "host:99999",
        "a b:80",
        "h/x:80",
        "::1:80",
        "[h]:80",
        "-h:80",
    ] {
        assert!(check_address(bad).is_err(), "{bad}");
    }
}

#[test]
fn status_codes_map_to_kinds() {
    let e = AgentError::from_status("h", &tonic::Status::not_found("x"));
    assert!(matches!(e, AgentError::NotFound { .. }));
    let e = AgentError::from_status("h", &tonic::Status::unavailable("x"));
    assert!(matches!(e, AgentError::Unavailable { .. }));
    let e = AgentError::from_status("h", &tonic::Status::failed_precondition("x"));
    assert!(matches!(e, AgentError::Refused { .. }));
    let e = AgentError::from_status("h", &tonic::Status::internal("x"));
    assert!(matches!(e, AgentError::Failed { .. }));
    let e = AgentError::from_status("h", &tonic::Status::resource_exhausted("x"));
    assert!(matches!(e, AgentError::Busy { .. }));
}

#[test]
fn exhausted_resources_map_to_507_and_429() {
    use axum::http::StatusCode;
    let exhausted = |what: Option<&'static str>| {
        let mut md = tonic::metadata::MetadataMap::new();
        if let Some(w) = what {
            md.insert(
                EXHAUSTED_KEY,
                tonic::metadata::MetadataValue::from_static(w),
            );
        }
        let s = tonic::Status::with_metadata(Code::ResourceExhausted, "no room", md);
        AgentError::from_status("h", &s)
    };
    let e = exhausted(Some("storage"));
    assert!(matches!(e, AgentError::InsufficientStorage { .. }), "{e:?}");
    let api = crate::http::error::ApiError::from(e);
    assert_eq!(api.status, StatusCode::INSUFFICIENT_STORAGE);
    assert!(api.error.contains("no room"), "{}", api.error);
    let e = exhausted(Some("busy"));
    assert!(matches!(e, AgentError::Busy { .. }), "{e:?}");
    assert_eq!(
        crate::http::error::ApiError::from(e).status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Unmarked (tunnels or commands at the agent's cap): busy too, 429.
    assert!(matches!(exhausted(None), AgentError::Busy { .. }));
}

#[test]
fn egress_replies_are_validated() {
    let ok = pb::EgressPolicyState {
        sandbox_id: "SBX-1".into(),
        policy: Some(pb::EgressPolicy {
            allow: vec![pb::EgressRule {
                destination: Some(pb::egress_rule::Destination::Domain("a.example".into())),
                protocol: "tcp".into(),
                port: 443,
            }],
        }),
        resolved: vec![pb::ResolvedDomain {
            domain: "a.example".into(),
            addresses: vec!["192.0.2.1".into(), "2001:db8::1".into()],
        }],
    };
    let s = egress_reply("h", ok.clone()).expect("valid");
    assert_eq!(s.policy.allow.len(), 1);
    assert_eq!(s.resolved[0].1.len(), 2);
    let mut bad = ok;
    bad.resolved[0].addresses.push("nope".into());
    assert!(matches!(
        egress_reply("h", bad),
        Err(AgentError::Failed { .. })
    ));
}
