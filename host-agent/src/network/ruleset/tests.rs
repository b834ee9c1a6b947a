//! The batches the builder produces, one JSON command per line (insta snapshots), and
//! the properties every batch must have.

use fluid_proto::model::EgressPolicy;

use super::*;
use crate::network::allow::parse_rule;
use crate::network::test_settings;

fn id(s: &str) -> SandboxId {
    SandboxId::parse("id", s).expect("id")
}

fn policy(lines: &[&str]) -> EgressPolicy {
    EgressPolicy::new(lines.iter().map(|l| parse_rule(l).expect("rule")).collect()).expect("policy")
}

fn sealed(sid: &str, mac: &str) -> SandboxNet {
    SandboxNet {
        id: id(sid),
        mac: mac.into(),
        ip: None,
        policy: EgressPolicy::default(),
        resolved: BTreeMap::new(),
    }
}

/// One sandbox with an address, a CIDR and a domain entry, and one resolved address.
fn with_policy() -> SandboxNet {
    let mut resolved = BTreeMap::new();
    resolved.insert(
        "example.org".to_owned(),
        BTreeMap::from([(Ipv4Addr::new(93, 184, 215, 14), 120)]),
    );
    SandboxNet {
        id: id("SBX-abcdefgh12"),
        mac: "52:54:00:aa:bb:01".into(),
        ip: Some(Ipv4Addr::new(192, 168, 122, 10)),
        policy: policy(&["203.0.113.0/24 tcp/443", "example.org tcp/443"]),
        resolved,
    }
}

/// One command per line: readable diffs.
fn lines(batch: &Nftables<'_>) -> String {
    batch
        .objects
        .iter()
        .map(|o| serde_json::to_string(o).expect("json"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn no_host_allow() -> NetworkSettings {
    NetworkSettings {
        always_allow: Vec::new(),
        ..test_settings()
    }
}

#[test]
fn no_sandboxes() {
    let batch = build(&no_host_allow(), &[]);
    insta::assert_snapshot!(lines(&batch.nftables));
    assert_eq!(
        batch.shape,
        Shape {
            bridge: Counts {
                chains: 2,
                sets: 1,
                rules: 2
            },
            inet: Counts {
                chains: 5,
                sets: 2,
                rules: 15
            },
        }
    );
}

#[test]
fn one_sealed_sandbox_before_its_ip_is_known() {
    let batch = build(
        &no_host_allow(),
        &[sealed("SBX-0123abcd", "52:54:00:12:34:56")],
    );
    insta::assert_snapshot!(lines(&batch.nftables));
}

#[test]
fn one_sandbox_with_ip_policy_and_a_resolved_domain() {
    let batch = build(&no_host_allow(), &[with_policy()]);
    insta::assert_snapshot!(lines(&batch.nftables));
}

#[test]
fn two_sandboxes_and_host_wide_entries() {
    let batch = build(
        &test_settings(),
        &[with_policy(), sealed("SBX-zzzzzzzz99", "52:54:00:aa:bb:02")],
    );
    insta::assert_snapshot!(lines(&batch.nftables));
    // Both get the host's entries; the domain sets are per sandbox.
    let text = lines(&batch.nftables);
    assert!(text.contains("\"d_abcdefgh12_0\""), "deb.debian.org");
    assert!(text.contains("\"d_abcdefgh12_1\""), "example.org");
    assert!(text.contains("\"d_zzzzzzzz99_0\""), "deb.debian.org");
    assert!(!text.contains("d_zzzzzzzz99_1"));
}

#[test]
fn a_removed_sandbox_leaves_nothing_behind() {
    let both = build(
        &test_settings(),
        &[with_policy(), sealed("SBX-zzzzzzzz99", "52:54:00:aa:bb:02")],
    );
    let one = build(
        &test_settings(),
        &[sealed("SBX-zzzzzzzz99", "52:54:00:aa:bb:02")],
    );
    let text = lines(&one.nftables);
    for gone in [
        "abcdefgh12",
        "52:54:00:aa:bb:01",
        "192.168.122.10",
        "93.184.215.14",
    ] {
        assert!(!text.contains(gone), "{gone} is still in the batch");
    }
    assert!(one.shape.bridge.chains < both.shape.bridge.chains);
    assert!(one.shape.inet.sets < both.shape.inet.sets);
}

#[test]
fn every_batch_starts_by_replacing_both_tables() {
    let batch = build(&test_settings(), &[with_policy()]);
    let first: Vec<String> = batch.nftables.objects[..3]
        .iter()
        .map(|o| serde_json::to_string(o).expect("json"))
        .collect();
    assert_eq!(
        first,
        [
            r#"{"add":{"table":{"family":"bridge","name":"fluid_kvm_1"}}}"#,
            r#"{"delete":{"table":{"family":"bridge","name":"fluid_kvm_1"}}}"#,
            r#"{"add":{"table":{"family":"bridge","name":"fluid_kvm_1"}}}"#,
        ]
    );
    let text = lines(&batch.nftables);
    assert_eq!(
        text.matches(r#"{"delete":{"table":{"family":"inet","name":"fluid_kvm_1"}}}"#)
            .count(),
        1
    );
}

#[test]
fn the_shape_matches_the_commands() {
    let batch = build(
        &test_settings(),
        &[with_policy(), sealed("SBX-zzzzzzzz99", "52:54:00:aa:bb:02")],
    );
    let count = |family: &str, kind: &str| {
        batch
            .nftables
            .objects
            .iter()
            .map(|o| serde_json::to_value(o).expect("json"))
            .filter(|v| v["add"][kind]["family"] == family)
            .count()
    };
    for (family, c) in [("bridge", batch.shape.bridge), ("inet", batch.shape.inet)] {
        assert_eq!(count(family, "chain"), c.chains, "{family}");
        assert_eq!(count(family, "set"), c.sets, "{family}");
        assert_eq!(count(family, "rule"), c.rules, "{family}");
    }
}

#[test]
fn domains_are_sorted_and_unique() {
    let host = vec![parse_rule("b.example tcp/80").expect("rule")];
    let p = policy(&["c.example", "b.example tcp/443", "10.0.0.0/8"]);
    assert_eq!(domains(&host, &p), ["b.example", "c.example"]);
    assert_eq!(domain_set(&id("SBX-abcdefgh12"), 1), "d_abcdefgh12_1");
}

#[test]
fn resolved_addresses_are_added_with_a_fresh_timeout() {
    let batch = add_resolved(
        "fluid_kvm_1",
        "d_abcdefgh12_0",
        &[(Ipv4Addr::new(192, 0, 2, 1), 300)],
    );
    insta::assert_snapshot!(lines(&batch));
}

#[test]
fn listings_are_counted() {
    let listing = serde_json::json!({"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "inet", "name": "t"}},
        {"set": {"name": "macs"}},
        {"chain": {"name": "input"}},
        {"chain": {"name": "forward"}},
        {"rule": {"chain": "input"}},
    ]});
    assert_eq!(
        counts_of_listing(&listing),
        Counts {
            chains: 2,
            sets: 1,
            rules: 1
        }
    );
    assert_eq!(counts_of_listing(&serde_json::json!({})), Counts::default());
}

#[test]
fn macs_become_the_two_words_nft_compares() {
    assert_eq!(mac_words("52:54:00:aa:bb:cc"), Some((0x5254_00aa, 0xbbcc)));
    assert_eq!(mac_words("52:54:00:AA:BB:01"), Some((0x5254_00aa, 0xbb01)));
    for bad in [
        "",
        "52:54:00:aa:bb",
        "52:54:00:aa:bb:cc:dd",
        "52:54:00:aa:bb:zz",
        "525400aabbcc",
        "5:54:00:aa:bb:cc",
    ] {
        assert_eq!(mac_words(bad), None, "{bad}");
    }
}

#[test]
fn dhcp_passes_only_with_the_taps_own_chaddr() {
    let batch = build(
        &no_host_allow(),
        &[sealed("SBX-0123abcd", "52:54:00:12:34:56")],
    );
    let text = lines(&batch.nftables);
    let chain: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(r#""chain":"tap_0123abcd""#) && l.contains(r#""rule""#))
        .collect();
    let dhcp = chain
        .iter()
        .position(|l| l.contains(r#""base":"th","offset":288,"len":32"#))
        .expect("a chaddr rule");
    let rule = chain[dhcp];
    assert!(
        rule.contains(&format!(r#""right":{}"#, 0x5254_0012_u32)),
        "{rule}"
    );
    assert!(
        rule.contains(r#""base":"th","offset":320,"len":16"#),
        "{rule}"
    );
    assert!(rule.contains(&format!(r#""right":{}"#, 0x3456)), "{rule}");
    assert!(rule.contains(r#""accept":null"#), "{rule}");
    // Right after it: every other DHCP request is dropped.
    let next = chain[dhcp + 1];
    assert!(
        next.contains(r#""dport""#) && next.contains("67") && next.contains(r#""drop":null"#),
        "{next}"
    );
}
