//! What every full batch must say, whatever its sandboxes. The snapshots freeze the
//! batch's text; these checks say why it isolates, read from its JSON (the nftables
//! crate's objects), so a snapshot accepted by mistake cannot open a hole unnoticed:
//!
//! - layer 2: nothing is bridged from or to a tap; each tap's frames carry its own MAC
//!   (checked first), its DHCP requests its own `chaddr` (the accept comes right before
//!   the drop of every other request), and IPv4 only from its lease;
//! - the host: a sandbox reaches it only with replies, DHCP and DNS to the proxy;
//!   anything else ends in a drop;
//! - forwarding: replies to a sandbox are checked again against its allow-list;
//!   anything else addressed to a sandbox (another sandbox's too) is dropped before any
//!   allow-list is consulted; what a sandbox sends goes through `egress`, which drops
//!   cloud metadata first and everything unlisted last;
//! - allow-lists accept by the connection's original destination, never by state.

use crate::network::tap_name;
use serde_json::{Value, json};

use super::super::*;

/// The batch's commands as JSON.
fn objects(batch: &Nftables<'_>) -> Vec<Value> {
    batch
        .objects
        .iter()
        .map(|o| serde_json::to_value(o).expect("json"))
        .collect()
}

/// The statements of every rule of `chain` in the `family` table, in order.
fn rules(objects: &[Value], family: &str, chain: &str) -> Vec<Vec<Value>> {
    objects
        .iter()
        .filter(|v| v["add"]["rule"]["family"] == family && v["add"]["rule"]["chain"] == chain)
        .map(|v| {
            v["add"]["rule"]["expr"]
                .as_array()
                .expect("a rule's expr is a list")
                .clone()
        })
        .collect()
}

/// Every element added to set `name` of the `family` table.
fn elements(objects: &[Value], family: &str, name: &str) -> Vec<Value> {
    objects
        .iter()
        .filter(|v| v["add"]["element"]["family"] == family && v["add"]["element"]["name"] == name)
        .flat_map(|v| {
            v["add"]["element"]["elem"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

fn m(left: Value, op: &str, right: Value) -> Value {
    json!({"match": {"left": left, "op": op, "right": right}})
}

fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn jump(target: &str) -> Value {
    json!({"jump": {"target": target}})
}

fn drop_() -> Value {
    json!({"drop": null})
}

fn accept() -> Value {
    json!({"accept": null})
}

/// The rule's last statement: its verdict.
fn verdict(rule: &[Value]) -> &Value {
    rule.last().expect("a rule has statements")
}

fn reply() -> Value {
    m(json!({"ct": {"key": "direction"}}), "==", json!("reply"))
}

/// Checks a full batch of `settings` and `sandboxes` (see the module's text).
pub(super) fn assert_isolating(
    batch: &Nftables<'_>,
    settings: &NetworkSettings,
    sandboxes: &[SandboxNet],
) {
    let o = objects(batch);
    layer_2(&o, sandboxes);
    to_the_host(&o, settings, sandboxes);
    forwarding(&o, sandboxes);
    allow_lists(&o, sandboxes);
}

fn layer_2(o: &[Value], sandboxes: &[SandboxNet]) {
    let mut taps: Vec<Value> = sandboxes.iter().map(|s| json!(tap_name(&s.id))).collect();
    taps.sort_by_key(ToString::to_string);
    let mut got = elements(o, "bridge", "taps");
    got.sort_by_key(ToString::to_string);
    assert_eq!(got, taps, "@taps holds every sandbox's tap");
    // No frame is bridged from a tap or to one: sandboxes never meet at layer 2.
    assert_eq!(
        rules(o, "bridge", "forward"),
        [
            vec![m(meta("iifname"), "==", json!("@taps")), drop_()],
            vec![m(meta("oifname"), "==", json!("@taps")), drop_()],
        ],
        "bridge forward"
    );
    let prerouting = rules(o, "bridge", "prerouting");
    assert_eq!(prerouting.len(), sandboxes.len(), "{prerouting:?}");
    for s in sandboxes {
        let chain = tap_chain(&s.id);
        assert!(
            prerouting.contains(&vec![
                m(meta("iifname"), "==", json!(tap_name(&s.id))),
                jump(&chain)
            ]),
            "{chain} is not where {}'s frames go: {prerouting:?}",
            s.id
        );
        let r = rules(o, "bridge", &chain);
        // The source MAC first: a spoofed frame passes nothing below.
        assert_eq!(
            r[0],
            [m(payload("ether", "saddr"), "!=", json!(s.mac)), drop_()],
            "{chain}"
        );
        // One accept: its own DHCP requests (chaddr = its MAC), right before the drop
        // of every other DHCP request; every other rule drops.
        let accepts: Vec<usize> = (0..r.len())
            .filter(|&i| *verdict(&r[i]) == accept())
            .collect();
        assert_eq!(accepts.len(), 1, "{chain}: {r:?}");
        let dhcp = accepts[0];
        let (hi, lo) = mac_words(&s.mac).expect("mac");
        let chaddr = |offset: u32, len: u32, word: u32| {
            m(
                json!({"payload": {"base": "th", "offset": offset, "len": len}}),
                "==",
                json!(word),
            )
        };
        assert!(
            dhcp > 0,
            "{chain}: the DHCP accept comes after the MAC check"
        );
        assert!(
            r[dhcp].contains(&chaddr(288, 32, hi)),
            "{chain}: {:?}",
            r[dhcp]
        );
        assert!(
            r[dhcp].contains(&chaddr(320, 16, lo)),
            "{chain}: {:?}",
            r[dhcp]
        );
        assert!(r[dhcp].contains(&m(payload("udp", "dport"), "==", json!(67))));
        let next = &r[dhcp + 1];
        assert!(
            next.contains(&m(payload("udp", "dport"), "==", json!(67)))
                && *verdict(next) == drop_(),
            "{chain}: after the chaddr accept, other DHCP requests drop: {next:?}"
        );
        for (i, rule) in r.iter().enumerate().filter(|(i, _)| *i != dhcp) {
            assert_eq!(*verdict(rule), drop_(), "{chain} rule {i}: {rule:?}");
        }
        // IPv4 only from its lease; none at all before it has one.
        let last = r.last().expect("rules");
        match s.ip {
            Some(ip) => assert_eq!(
                *last,
                [
                    m(payload("ip", "saddr"), "!=", json!(ip.to_string())),
                    drop_()
                ],
                "{chain}"
            ),
            None => assert_eq!(
                *last,
                [m(payload("ether", "type"), "==", json!("ip")), drop_()],
                "{chain}"
            ),
        }
    }
}

fn to_the_host(o: &[Value], settings: &NetworkSettings, sandboxes: &[SandboxNet]) {
    let mut macs: Vec<Value> = sandboxes.iter().map(|s| json!(s.mac)).collect();
    macs.sort_by_key(ToString::to_string);
    let mut got = elements(o, "inet", "macs");
    got.sort_by_key(ToString::to_string);
    assert_eq!(got, macs, "@macs holds every sandbox's MAC");
    assert_eq!(
        rules(o, "inet", "input"),
        [vec![
            m(payload("ether", "saddr"), "==", json!("@macs")),
            jump("sandbox_to_host")
        ]],
        "everything a sandbox sends the host goes through sandbox_to_host"
    );
    let gw = json!(settings.host_ip().to_string());
    let dns = json!(settings.dns_listen.port());
    let r = rules(o, "inet", "sandbox_to_host");
    assert_eq!(
        r.last(),
        Some(&vec![drop_()]),
        "sandbox_to_host ends in a drop"
    );
    let allowed = [
        vec![reply(), accept()],
        vec![
            m(payload("udp", "sport"), "==", json!(68)),
            m(payload("udp", "dport"), "==", json!(67)),
            accept(),
        ],
        vec![
            m(payload("ip", "daddr"), "==", gw.clone()),
            m(payload("udp", "dport"), "==", dns.clone()),
            accept(),
        ],
        vec![
            m(payload("ip", "daddr"), "==", gw),
            m(payload("tcp", "dport"), "==", dns),
            accept(),
        ],
    ];
    for rule in &r[..r.len() - 1] {
        assert!(
            allowed.contains(rule),
            "sandbox_to_host lets more in: {rule:?}"
        );
    }
    // The sandboxes' DNS (and only theirs) goes to the proxy.
    for rule in rules(o, "inet", "prerouting") {
        assert!(
            rule.contains(&m(payload("ether", "saddr"), "==", json!("@macs"))),
            "{rule:?}"
        );
        assert_eq!(
            verdict(&rule)["dnat"]["port"],
            json!(settings.dns_listen.port()),
            "{rule:?}"
        );
    }
}

fn forwarding(o: &[Value], sandboxes: &[SandboxNet]) {
    let ips: Vec<Value> = sandboxes
        .iter()
        .filter_map(|s| s.ip.map(|ip| json!(ip.to_string())))
        .collect();
    let mut got = elements(o, "inet", "ips");
    got.sort_by_key(ToString::to_string);
    let mut want = ips.clone();
    want.sort_by_key(ToString::to_string);
    assert_eq!(got, want, "@ips holds every leased address");
    let to_sandbox = m(payload("ip", "daddr"), "==", json!("@ips"));
    assert_eq!(
        rules(o, "inet", "forward"),
        [
            // A reply to a sandbox is checked again against its allow-list,
            vec![reply(), to_sandbox.clone(), jump(REPLIES_CHAIN)],
            // anything else to a sandbox (from another one too) is dropped before any
            // allow-list is read,
            vec![to_sandbox, drop_()],
            // and what a sandbox sends goes through egress.
            vec![
                m(payload("ether", "saddr"), "==", json!("@macs")),
                jump("egress")
            ],
        ],
        "inet forward"
    );
    let egress = rules(o, "inet", "egress");
    assert_eq!(
        egress.first(),
        Some(&vec![
            m(payload("ip", "daddr"), "==", json!(METADATA_V4.to_string())),
            drop_()
        ]),
        "cloud metadata is dropped before any allow-list"
    );
    assert_eq!(egress.last(), Some(&vec![drop_()]), "egress ends in a drop");
    assert_eq!(egress.len(), sandboxes.len() + 2, "{egress:?}");
    for s in sandboxes {
        assert!(
            egress.contains(&vec![
                m(payload("ether", "saddr"), "==", json!(s.mac)),
                jump(&egress_chain(&s.id))
            ]),
            "{}'s packets go to its own allow-list: {egress:?}",
            s.id
        );
    }
    let replies = rules(o, "inet", REPLIES_CHAIN);
    assert_eq!(
        replies.last(),
        Some(&vec![drop_()]),
        "replies end in a drop"
    );
    assert_eq!(replies.len(), ips.len() + 1, "{replies:?}");
    for s in sandboxes {
        if let Some(ip) = s.ip {
            assert!(
                replies.contains(&vec![
                    m(payload("ip", "daddr"), "==", json!(ip.to_string())),
                    jump(&egress_chain(&s.id))
                ]),
                "replies to {ip} are checked against {}'s allow-list",
                s.id
            );
        }
    }
}

fn allow_lists(o: &[Value], sandboxes: &[SandboxNet]) {
    for s in sandboxes {
        let chain = egress_chain(&s.id);
        for rule in rules(o, "inet", &chain) {
            assert_eq!(*verdict(&rule), accept(), "{chain}: {rule:?}");
            // By the connection's original destination: a reply matches the entry its
            // connection was opened by, and nothing else.
            assert!(
                rule.iter().any(|st| {
                    let left = &st["match"]["left"]["ct"];
                    left["dir"] == "original"
                        && (left["key"] == "ip daddr" || left["key"] == "ip6 daddr")
                }),
                "{chain}: {rule:?}"
            );
        }
    }
    // No rule anywhere passes a packet for its connection's state.
    for v in o {
        let text = v.to_string();
        assert!(!text.contains(r#""key":"state""#), "{text}");
    }
}
