//! The batches the builder produces, one JSON command per line (insta snapshots), and
//! the properties every batch must have.

use fluid_proto::model::EgressPolicy;

use super::*;
use crate::network::allow::parse_rule;
use crate::network::tap_name;
use crate::network::test_settings;

mod isolation;
use isolation::assert_isolating;

fn id(s: &str) -> SandboxId {
    SandboxId::parse("id", s).expect("id")
}

fn policy(lines: &[&str]) -> EgressPolicy {
    EgressPolicy::new(lines.iter().map(|l| parse_rule(l).expect("rule")).collect()).expect("policy")
}

fn sealed(sid: &str, mac: &str) -> SandboxNet {
    SandboxNet {
        id: id(sid),
        tap: crate::network::tap_name(&id(sid)),
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
        tap: crate::network::tap_name(&id("SBX-abcdefgh12")),
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
    assert_isolating(&batch.nftables, &no_host_allow(), &[]);
    assert_eq!(
        batch.shape,
        Shape {
            bridge: Counts {
                chains: 2,
                sets: 1,
                rules: 2
            },
            inet: Counts {
                chains: 6,
                sets: 2,
                rules: 16
            },
        }
    );
}

#[test]
fn one_sealed_sandbox_before_its_ip_is_known() {
    let sandboxes = [sealed("SBX-0123abcd", "52:54:00:12:34:56")];
    let batch = build(&no_host_allow(), &sandboxes);
    insta::assert_snapshot!(lines(&batch.nftables));
    // Before its lease: only DHCP with its own chaddr, no IPv4, nothing to reply to.
    assert_isolating(&batch.nftables, &no_host_allow(), &sandboxes);
}

#[test]
fn one_sandbox_with_ip_policy_and_a_resolved_domain() {
    let sandboxes = [with_policy()];
    let batch = build(&no_host_allow(), &sandboxes);
    insta::assert_snapshot!(lines(&batch.nftables));
    assert_isolating(&batch.nftables, &no_host_allow(), &sandboxes);
}

#[test]
fn two_sandboxes_and_host_wide_entries() {
    let sandboxes = [with_policy(), sealed("SBX-zzzzzzzz99", "52:54:00:aa:bb:02")];
    let batch = build(&test_settings(), &sandboxes);
    insta::assert_snapshot!(lines(&batch.nftables));
    // Neither reaches the other: no bridging between taps, nothing to a sandbox's
    // address but replies; each only through its own allow-list.
    assert_isolating(&batch.nftables, &test_settings(), &sandboxes);
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
    // An incremental batch touches that one set's elements and nothing else (no rule,
    // chain or table: it cannot open anything but the address), and ends with the
    // address in the set with its fresh timeout.
    let objects: Vec<serde_json::Value> = batch
        .objects
        .iter()
        .map(|o| serde_json::to_value(o).expect("json"))
        .collect();
    for o in &objects {
        let (verb, body) = o
            .as_object()
            .and_then(|m| m.iter().next())
            .expect("one command");
        assert!(verb == "add" || verb == "delete", "{o}");
        let element = &body["element"];
        assert!(element.is_object(), "not an element: {o}");
        assert_eq!(
            (&element["family"], &element["table"], &element["name"]),
            (
                &serde_json::json!("inet"),
                &serde_json::json!("fluid_kvm_1"),
                &serde_json::json!("d_abcdefgh12_0")
            ),
            "{o}"
        );
    }
    let last = objects.last().expect("commands");
    assert_eq!(
        last["add"]["element"]["elem"][0]["elem"],
        serde_json::json!({"val": "192.0.2.1", "timeout": 300, "expires": null, "comment": null, "counter": null})
    );
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

/// The `expr` of every rule of `chain` in the `family` table, in order.
fn chain_rules(batch: &Nftables<'_>, family: &str, chain: &str) -> Vec<serde_json::Value> {
    batch
        .objects
        .iter()
        .map(|o| serde_json::to_value(o).expect("json"))
        .filter(|v| v["add"]["rule"]["family"] == family && v["add"]["rule"]["chain"] == chain)
        .map(|v| v["add"]["rule"]["expr"].clone())
        .collect()
}

fn has(rule: &serde_json::Value, needle: serde_json::Value) -> bool {
    rule.as_array().is_some_and(|stmts| stmts.contains(&needle))
}

fn ct_original(key: &str) -> serde_json::Value {
    serde_json::json!({"ct": {"key": key, "dir": "original"}})
}

fn reply() -> serde_json::Value {
    serde_json::json!({"match": {"op": "==", "left": {"ct": {"key": "direction"}}, "right": "reply"}})
}

/// Hole 5 of issue 12: an established connection must not outlive its allow-list
/// entry. Nothing accepts a packet for being part of a known connection alone.
#[test]
fn no_packet_passes_for_being_established() {
    let batch = build(
        &test_settings(),
        &[with_policy(), sealed("SBX-zzzzzzzz99", "52:54:00:aa:bb:02")],
    );
    let text = lines(&batch.nftables);
    assert!(!text.contains("established"), "{text}");
    assert!(!text.contains("related"), "{text}");
    // Every `accept` of the forward path is a sandbox's allow-list entry.
    for chain in ["forward", "egress", REPLIES_CHAIN] {
        for rule in chain_rules(&batch.nftables, "inet", chain) {
            assert!(
                !has(&rule, serde_json::json!({"accept": null})),
                "{chain}: {rule}"
            );
        }
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

#[test]
fn forward_sends_both_directions_through_the_allow_list() {
    let batch = build(&no_host_allow(), &[with_policy()]);
    let forward = chain_rules(&batch.nftables, "inet", "forward");
    assert_eq!(forward.len(), 3, "{forward:?}");
    // 1. What comes back to a sandbox goes to `replies` first.
    assert!(has(&forward[0], reply()), "{}", forward[0]);
    assert!(
        has(
            &forward[0],
            serde_json::json!({"jump": {"target": "replies"}})
        ),
        "{}",
        forward[0]
    );
    // 2. Anything else addressed to a sandbox is dropped, whatever its state.
    assert_eq!(
        forward[1],
        serde_json::json!([
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@ips"}},
            {"drop": null}
        ])
    );
    // 3. What a sandbox sends, new or not, goes through `egress`.
    assert!(has(
        &forward[2],
        serde_json::json!({"jump": {"target": "egress"}})
    ));
    // `replies` picks the sandbox by the address it was leased, and ends in a drop.
    let replies = chain_rules(&batch.nftables, "inet", REPLIES_CHAIN);
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert!(has(
        &replies[0],
        serde_json::json!({"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "192.168.122.10"}})
    ));
    assert!(has(
        &replies[0],
        serde_json::json!({"jump": {"target": "sbx_abcdefgh12"}})
    ));
    assert_eq!(replies[1], serde_json::json!([{"drop": null}]));
    // A sandbox without an address has no replies to receive.
    let sealed_only = build(
        &no_host_allow(),
        &[sealed("SBX-0123abcd", "52:54:00:12:34:56")],
    );
    assert_eq!(
        chain_rules(&sealed_only.nftables, "inet", REPLIES_CHAIN),
        [serde_json::json!([{"drop": null}])]
    );
}

#[test]
fn allow_rules_match_the_connection_not_the_packet() {
    let batch = build(&no_host_allow(), &[with_policy()]);
    let rules = chain_rules(&batch.nftables, "inet", "sbx_abcdefgh12");
    // Two entries with a protocol: each its own packets and ICMP errors about them.
    assert_eq!(rules.len(), 4, "{rules:?}");
    for rule in &rules {
        let text = rule.to_string();
        assert!(!text.contains("\"payload\""), "packet fields: {text}");
        assert!(
            has(
                rule,
                serde_json::json!({"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv4"}})
            ),
            "{text}"
        );
        assert!(
            has(
                rule,
                serde_json::json!({"match": {"op": "==", "left": ct_original("proto-dst"), "right": 443}})
            ),
            "{text}"
        );
        assert!(has(rule, serde_json::json!({"accept": null})), "{text}");
    }
    let cidr = serde_json::json!({"match": {"op": "==", "left": ct_original("ip daddr"),
        "right": {"prefix": {"addr": "203.0.113.0", "len": 24}}}});
    let domain = serde_json::json!({"match": {"op": "==", "left": ct_original("ip daddr"),
        "right": "@d_abcdefgh12_0"}});
    let l4 = |p: &str| serde_json::json!({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": p}});
    let ct_tcp =
        serde_json::json!({"match": {"op": "==", "left": ct_original("protocol"), "right": "tcp"}});
    assert!(has(&rules[0], cidr.clone()) && has(&rules[0], l4("tcp")));
    assert!(has(&rules[1], cidr) && has(&rules[1], l4("icmp")) && has(&rules[1], ct_tcp.clone()));
    // A domain's rule looks its set up: an expired element cuts the connection too.
    assert!(has(&rules[2], domain.clone()) && has(&rules[2], l4("tcp")));
    assert!(has(&rules[3], domain) && has(&rules[3], l4("icmp")) && has(&rules[3], ct_tcp));
    // The ICMP-error rule needs its `meta l4proto` before `ct original proto-dst`: nft
    // types the port by it (and refuses the rule without).
    let pos = |rule: &serde_json::Value, needle: &str| {
        rule.as_array()
            .and_then(|a| a.iter().position(|s| s.to_string().contains(needle)))
            .expect(needle)
    };
    for rule in &rules {
        assert!(pos(rule, "l4proto") < pos(rule, "proto-dst"), "{rule}");
    }
}

#[test]
fn entries_without_protocol_or_port_are_one_rule() {
    let sbx = SandboxNet {
        policy: policy(&["10.1.0.0/16", "2001:db8::/32 udp", "example.org tcp"]),
        ..with_policy()
    };
    let batch = build(&no_host_allow(), &[sbx]);
    let rules = chain_rules(&batch.nftables, "inet", "sbx_abcdefgh12");
    let texts: Vec<String> = rules.iter().map(ToString::to_string).collect();
    assert_eq!(rules.len(), 5, "{texts:#?}");
    assert!(!texts.iter().any(|t| t.contains("proto-dst")), "{texts:#?}");
    assert!(texts[0].contains("10.1.0.0") && !texts[0].contains("l4proto"));
    assert!(texts[1].contains("ipv6") && texts[1].contains("\"udp\""));
    assert!(texts[2].contains("ipv6-icmp") && texts[2].contains("\"udp\""));
    assert!(texts[3].contains("@d_abcdefgh12_0") && texts[3].contains("\"tcp\""));
    assert!(texts[4].contains("\"icmp\"") && texts[4].contains("@d_abcdefgh12_0"));
}

#[test]
fn the_sandbox_reaches_the_host_only_with_replies_dhcp_and_dns() {
    let batch = build(&no_host_allow(), &[with_policy()]);
    let rules = chain_rules(&batch.nftables, "inet", "sandbox_to_host");
    assert_eq!(rules.len(), 5, "{rules:?}");
    // Replies to the host's own connections (the agent's SSH) first; a connection the
    // sandbox opened to the host passes only the DHCP and DNS rules, in every state.
    assert_eq!(rules[0], serde_json::json!([reply(), {"accept": null}]));
    assert_eq!(rules[4], serde_json::json!([{"drop": null}]));
    assert!(!lines(&batch.nftables).contains("established"));
}

#[test]
fn the_boot_table_goes_in_the_same_batch() {
    let mut batch = build(&no_host_allow(), &[with_policy()]).nftables;
    let before = batch.objects.len();
    remove_boot_table(&mut batch);
    let tail: Vec<String> = batch.objects[before..]
        .iter()
        .map(|o| serde_json::to_string(o).expect("json"))
        .collect();
    assert_eq!(
        tail,
        [
            r#"{"add":{"table":{"family":"bridge","name":"fluid-boot"}}}"#,
            r#"{"delete":{"table":{"family":"bridge","name":"fluid-boot"}}}"#,
        ]
    );
}

/// The file the package loads at boot, its unit and the agent agree on the table, the
/// tap prefix and the path.
#[test]
fn the_shipped_boot_deny_matches_the_agent() {
    let nft = include_str!("../../../../deploy/nftables/boot-deny.nft");
    let unit = include_str!("../../../../deploy/systemd/fluid-agent-boot-deny.service");
    let cargo = include_str!("../../../Cargo.toml");
    assert!(
        nft.contains(&format!("table bridge {BOOT_TABLE} {{")),
        "{nft}"
    );
    assert!(
        nft.contains(&format!("delete table bridge {BOOT_TABLE}\n")),
        "{nft}"
    );
    let prefix = tap_name(&id("SBX-0123abcd"));
    assert!(prefix.starts_with("fx"));
    for hook in [
        "iifname \"fx*\" counter drop",
        "oifname \"fx*\" counter drop",
    ] {
        assert!(nft.contains(hook), "{hook}");
    }
    assert!(unit.contains("ExecStart=/usr/sbin/nft -f /usr/share/fluid-agent/boot-deny.nft"));
    for before in [
        "libvirtd.service",
        "libvirt-guests.service",
        "virtqemud.service",
    ] {
        assert!(
            unit.lines()
                .any(|l| l.starts_with("Before=") && l.contains(before)),
            "{before}"
        );
    }
    assert!(cargo.contains(
        r#"["../deploy/nftables/boot-deny.nft", "usr/share/fluid-agent/boot-deny.nft", "644"]"#
    ));
    assert!(cargo.contains(
        r#"{ unit-name = "fluid-agent-boot-deny", unit-scripts = "../deploy/systemd/", enable = true, start = false, restart-after-upgrade = false }"#
    ));
}
