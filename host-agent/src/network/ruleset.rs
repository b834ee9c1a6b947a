//! The desired nftables state of this agent's two tables, built from its sandboxes.
//!
//! Pure: facts in, one JSON batch (`nftables::schema::Nftables`) out. The batch starts
//! with `add table; delete table; add table` for each family, so applying it replaces
//! whatever the tables held — whether or not they existed — in one kernel transaction:
//! there is never a moment with a sandbox unfiltered, and nothing of a removed sandbox
//! survives a rebuild.
//!
//! `bridge <table>` — layer 2, on the frames a sandbox's tap sends:
//!
//! ```text
//! set taps { type ifname }                      every tap of this agent
//! chain prerouting { filter hook prerouting priority -300 }
//!     iifname "fx…" jump tap_<id>                 one per sandbox
//! chain tap_<id>
//!     ether saddr != <its MAC> drop               no MAC spoofing
//!     ether type != { ip, arp } drop              no IPv6, no VLANs, nothing else
//!     arp saddr ether != <its MAC> drop
//!     arp saddr ip != { 0.0.0.0, <its IP> } drop  (only 0.0.0.0 while the IP is unknown)
//!     udp sport 68 udp dport 67 @th,288,48 <its MAC> accept   DHCP, its own chaddr only
//!     udp dport 67 drop                          any other DHCP (another's chaddr)
//!     ip saddr != <its IP> drop                   (all IPv4 while the IP is unknown)
//! chain forward { filter hook forward priority 0 }
//!     iifname @taps drop                          no layer 2 between sandboxes or
//!     oifname @taps drop                          with anyone else on the bridge
//! ```
//!
//! `inet <table>` — layer 3, keyed on the sandboxes' MACs (packets from the bridge
//! keep their Ethernet header, so `ether saddr` matches in these hooks):
//!
//! ```text
//! set macs { type ether_addr }   set ips { type ipv4_addr }   (this agent's sandboxes)
//! set d_<id>_<n> { type ipv4_addr; flags timeout }   addresses a domain entry resolved to
//! chain prerouting { nat hook prerouting priority dstnat - 1 }
//!     DNS (udp and tcp 53) from @macs to the bridge address or off the subnet
//!         → dnat to the agent's DNS proxy
//! chain input { filter hook input priority -1 }
//!     ether saddr @macs jump sandbox_to_host
//! chain sandbox_to_host       replies to the host's own connections (the agent's SSH),
//!                             DHCP, the DNS proxy; else drop
//! chain forward { filter hook forward priority -1 }
//!     ct direction reply ip daddr @ips jump replies   what comes back to a sandbox
//!     ip daddr @ips drop                          nobody opens (or keeps) a connection to a sandbox
//!     ether saddr @macs jump egress               what a sandbox sends, new or established
//! chain replies
//!     ip daddr <its IP> jump sbx_<id>             one per sandbox with a known IP
//!     drop
//! chain egress
//!     ip daddr 169.254.169.254 drop               cloud metadata, never
//!     ether saddr <MAC> jump sbx_<id>             one per sandbox
//!     drop
//! chain sbx_<id>              always_allow + the sandbox's policy, each `… accept`,
//!                             matched on the connection's original tuple
//!                             (`ct original ip daddr`, `ct original proto-dst`)
//! ```
//!
//! Revocation: there is no blanket `ct state established accept`. Every packet of a
//! sandbox's connection, in both directions and in every state, passes its allow-list
//! again, matched on the conntrack entry's *original* tuple (where the sandbox
//! connected to), which is the same for the request and its replies. So removing an
//! entry, or the expiry of a domain set's element (an address a DNS answer allowed),
//! cuts established connections at their next packet, in the kernel, with no
//! conntrack surgery and nothing the agent has to be running for. The conntrack entry
//! of a cut flow lingers until its own timeout, matching nothing. ICMP errors related
//! to an allowed connection (PMTU discovery) pass with it: each entry with a protocol
//! has a second rule for `meta l4proto icmp` + `ct original protocol`.
//!
//! At boot, before the agent runs, the package's `fluid-agent-boot-deny.service` loads
//! `table bridge fluid-boot` (see `deploy/nftables/boot-deny.nft`), which drops every
//! frame to or from an `fx*` tap; the agent's first full apply deletes it in the same
//! batch ([`remove_boot_table`]).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use fluid_proto::model::{Destination, EgressPolicy, EgressRule, SandboxId};
use ipnet::IpNet;
use nftables::expr::{Elem, Expression, MetaKey, NamedExpression};
use nftables::schema::{
    Chain, Element, NfCmd, NfListObject, NfObject, Nftables, Rule, Set, SetFlag, SetType,
    SetTypeValue, Table,
};
use nftables::stmt::Statement;
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::{NetworkSettings, id_suffix};
use expr::*;

mod expr;

/// The link-local address clouds serve instance metadata (and credentials) on.
pub const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// The `bridge` table the package's boot-time unit loads (`deploy/nftables/
/// boot-deny.nft`): every frame to or from an `fx*` tap is dropped until the agent has
/// applied its own tables. A `-` in the name: no agent's table (`[network] nft_table`
/// allows only letters, digits and `_`) can have it.
pub const BOOT_TABLE: &str = "fluid-boot";

/// The inet chain that sends what comes back to a sandbox to its allow-list.
pub const REPLIES_CHAIN: &str = "replies";

/// What the rules need to know about one sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxNet {
    pub id: SandboxId,
    /// The host side of its NIC (`super::tap_name` of its id, unless it was claimed
    /// from the warm pool).
    pub tap: String,
    /// Lower case, `52:54:00:…`.
    pub mac: String,
    /// Its DHCP lease, once learned; until then it may only do DHCP.
    pub ip: Option<Ipv4Addr>,
    pub policy: EgressPolicy,
    /// Per domain: addresses it resolved to and the seconds each stays allowed.
    pub resolved: BTreeMap<String, BTreeMap<Ipv4Addr, u32>>,
}

/// How many chains, named sets and rules one table holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub chains: usize,
    pub sets: usize,
    pub rules: usize,
}

/// The counts of both tables, for the drift check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    pub bridge: Counts,
    pub inet: Counts,
}

/// A batch to apply and the shape the tables have after it.
#[derive(Debug, Clone)]
pub struct Batch {
    pub nftables: Nftables<'static>,
    pub shape: Shape,
}

/// The domains a sandbox's sets are made for: the host's and the sandbox's domain
/// entries, sorted, once each. A domain's position is its set's number.
pub fn domains(always_allow: &[EgressRule], policy: &EgressPolicy) -> Vec<String> {
    let mut out: Vec<String> = always_allow
        .iter()
        .chain(&policy.allow)
        .filter_map(|r| match &r.destination {
            Destination::Domain(d) => Some(d.clone()),
            Destination::Cidr(_) => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The set holding the addresses of a sandbox's `index`-th domain.
pub fn domain_set(id: &SandboxId, index: usize) -> String {
    format!("d_{}_{index}", id_suffix(id))
}

/// The bridge chain that filters what a sandbox's tap sends.
pub fn tap_chain(id: &SandboxId) -> String {
    format!("tap_{}", id_suffix(id))
}

/// The inet chain holding a sandbox's allow-list.
pub fn egress_chain(id: &SandboxId) -> String {
    format!("sbx_{}", id_suffix(id))
}

/// A MAC as its first four bytes and its last two, big-endian (how nft compares raw
/// payload bits). `None` if it is not `xx:xx:xx:xx:xx:xx`.
pub fn mac_words(mac: &str) -> Option<(u32, u32)> {
    let bytes: Vec<u8> = mac
        .split(':')
        .map(|h| {
            (h.len() == 2)
                .then(|| u8::from_str_radix(h, 16).ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    let [a, b, c, d, e, f] = bytes.as_slice() else {
        return None;
    };
    Some((
        u32::from_be_bytes([*a, *b, *c, *d]),
        u32::from(u16::from_be_bytes([*e, *f])),
    ))
}

/// Collects the commands of one batch and counts what each table will hold.
struct Builder {
    table: String,
    objects: Vec<NfObject<'static>>,
    shape: Shape,
}

/// A base chain's type, hook and priority.
type Hook = (NfChainType, NfHook, i32);

impl Builder {
    fn new(table: &str) -> Self {
        Self {
            table: table.to_owned(),
            objects: Vec::new(),
            shape: Shape::default(),
        }
    }

    fn counts(&mut self, family: NfFamily) -> &mut Counts {
        match family {
            NfFamily::Bridge => &mut self.shape.bridge,
            _ => &mut self.shape.inet,
        }
    }

    fn cmd(&mut self, cmd: NfCmd<'static>) {
        self.objects.push(NfObject::CmdObject(cmd));
    }

    fn table_obj(&self, family: NfFamily) -> NfListObject<'static> {
        NfListObject::Table(Table {
            family,
            name: Cow::Owned(self.table.clone()),
            handle: None,
        })
    }

    /// `add table; delete table; add table`: an empty table, existing before or not.
    fn fresh_table(&mut self, family: NfFamily) {
        self.cmd(NfCmd::Add(self.table_obj(family)));
        self.cmd(NfCmd::Delete(self.table_obj(family)));
        self.cmd(NfCmd::Add(self.table_obj(family)));
    }

    fn set(&mut self, family: NfFamily, name: &str, kind: SetType, timeout: bool) {
        self.counts(family).sets += 1;
        let set = Set {
            family,
            table: Cow::Owned(self.table.clone()),
            name: Cow::Owned(name.to_owned()),
            handle: None,
            set_type: SetTypeValue::Single(kind),
            policy: None,
            flags: timeout.then(|| [SetFlag::Timeout].into_iter().collect()),
            elem: None,
            timeout: None,
            gc_interval: None,
            size: None,
            comment: None,
        };
        self.cmd(NfCmd::Add(NfListObject::Set(Box::new(set))));
    }

    fn elements(&mut self, family: NfFamily, set: &str, elem: Vec<Expression<'static>>) {
        if elem.is_empty() {
            return;
        }
        self.cmd(NfCmd::Add(NfListObject::Element(element(
            family,
            &self.table,
            set,
            elem,
        ))));
    }

    fn chain(&mut self, family: NfFamily, name: &str, hook: Option<Hook>) {
        self.counts(family).chains += 1;
        let chain = Chain {
            family,
            table: Cow::Owned(self.table.clone()),
            name: Cow::Owned(name.to_owned()),
            newname: None,
            handle: None,
            _type: hook.map(|h| h.0),
            hook: hook.map(|h| h.1),
            prio: hook.map(|h| h.2),
            dev: None,
            policy: hook.map(|_| NfChainPolicy::Accept),
        };
        self.cmd(NfCmd::Add(NfListObject::Chain(chain)));
    }

    fn rule(&mut self, family: NfFamily, chain: &str, expr: Vec<Statement<'static>>) {
        self.rule_with(family, chain, expr, None);
    }

    /// A rule with a comment (the sandbox id on per-sandbox rules, for people reading
    /// `nft list`).
    fn rule_with(
        &mut self,
        family: NfFamily,
        chain: &str,
        expr: Vec<Statement<'static>>,
        comment: Option<&str>,
    ) {
        self.counts(family).rules += 1;
        let rule = Rule {
            family,
            table: Cow::Owned(self.table.clone()),
            chain: Cow::Owned(chain.to_owned()),
            expr: Cow::Owned(expr),
            handle: None,
            index: None,
            comment: comment.map(|c| Cow::Owned(c.to_owned())),
        };
        self.cmd(NfCmd::Add(NfListObject::Rule(rule)));
    }

    fn finish(self) -> Batch {
        Batch {
            nftables: Nftables {
                objects: Cow::Owned(self.objects),
            },
            shape: self.shape,
        }
    }
}

fn element(
    family: NfFamily,
    table: &str,
    set: &str,
    elem: Vec<Expression<'static>>,
) -> Element<'static> {
    Element {
        family,
        table: Cow::Owned(table.to_owned()),
        name: Cow::Owned(set.to_owned()),
        elem: Cow::Owned(elem),
    }
}

/// A set element that expires after `seconds`.
fn timed(addr: Ipv4Addr, seconds: u32) -> Expression<'static> {
    Expression::Named(NamedExpression::Elem(Elem {
        val: Box::new(s(addr.to_string())),
        timeout: Some(seconds.max(1)),
        expires: None,
        comment: None,
        counter: None,
    }))
}

/// The rules that allow one entry (empty: a domain without a set), matched on the
/// connection's original tuple so that they hold for both directions and every state.
///
/// An entry with a protocol gets two rules: the connection's own packets (`meta l4proto
/// <p>`), and ICMP errors about it (`meta l4proto icmp`, `ct original protocol <p>`).
/// `ct original proto-dst` is typed by the `meta l4proto` before it (nft refuses it
/// otherwise); the port is compared as the same two bytes either way.
fn allow_rules(rule: &EgressRule, domain_set: Option<&str>) -> Vec<Vec<Statement<'static>>> {
    let (nfproto, icmp, dest) = match &rule.destination {
        Destination::Cidr(n @ IpNet::V4(_)) => {
            ("ipv4", "icmp", eq(ct_original("ip daddr"), net(*n)))
        }
        Destination::Cidr(n @ IpNet::V6(_)) => {
            ("ipv6", "ipv6-icmp", eq(ct_original("ip6 daddr"), net(*n)))
        }
        Destination::Domain(_) => match domain_set {
            Some(set) => ("ipv4", "icmp", eq(ct_original("ip daddr"), set_ref(set))),
            None => return Vec::new(),
        },
    };
    let head = || vec![eq(meta(MetaKey::Nfproto), s(nfproto)), dest.clone()];
    let Some(p) = rule.protocol else {
        let mut only = head();
        only.push(accept());
        return vec![only];
    };
    let port = rule
        .port
        .map(|port| eq(ct_original("proto-dst"), num(port)));
    let mut own = head();
    own.push(eq(meta(MetaKey::L4proto), s(p.as_str())));
    own.extend(port.clone());
    own.push(accept());
    let mut errors = head();
    errors.push(eq(meta(MetaKey::L4proto), s(icmp)));
    errors.push(eq(ct_original("protocol"), s(p.as_str())));
    errors.extend(port);
    errors.push(accept());
    vec![own, errors]
}

/// Appends `add table bridge fluid-boot; delete table bridge fluid-boot` to a full
/// batch: the boot-time deny goes in the same transaction that puts the agent's rules
/// in force (whether it was loaded or not: the `add` makes the `delete` safe).
pub fn remove_boot_table(batch: &mut Nftables<'static>) {
    let table = || {
        NfListObject::Table(Table {
            family: NfFamily::Bridge,
            name: Cow::Borrowed(BOOT_TABLE),
            handle: None,
        })
    };
    let objects = batch.objects.to_mut();
    objects.push(NfObject::CmdObject(NfCmd::Add(table())));
    objects.push(NfObject::CmdObject(NfCmd::Delete(table())));
}

/// The whole desired state of both tables, as one batch.
pub fn build(settings: &NetworkSettings, sandboxes: &[SandboxNet]) -> Batch {
    let mut b = Builder::new(&settings.table);
    bridge_table(&mut b, sandboxes);
    inet_table(&mut b, settings, sandboxes);
    b.finish()
}

fn bridge_table(b: &mut Builder, sandboxes: &[SandboxNet]) {
    let br = NfFamily::Bridge;
    b.fresh_table(br);
    b.set(br, "taps", SetType::Ifname, false);
    b.chain(
        br,
        "prerouting",
        Some((NfChainType::Filter, NfHook::Prerouting, -300)),
    );
    b.chain(
        br,
        "forward",
        Some((NfChainType::Filter, NfHook::Forward, 0)),
    );
    for sbx in sandboxes {
        b.chain(br, &tap_chain(&sbx.id), None);
    }
    b.elements(
        br,
        "taps",
        sandboxes.iter().map(|x| s(x.tap.clone())).collect(),
    );
    for sbx in sandboxes {
        b.rule_with(
            br,
            "prerouting",
            vec![
                eq(meta(MetaKey::Iifname), s(sbx.tap.clone())),
                jump(&tap_chain(&sbx.id)),
            ],
            Some(sbx.id.as_str()),
        );
    }
    b.rule(
        br,
        "forward",
        vec![eq(meta(MetaKey::Iifname), set_ref("taps")), drop_()],
    );
    b.rule(
        br,
        "forward",
        vec![eq(meta(MetaKey::Oifname), set_ref("taps")), drop_()],
    );
    for sbx in sandboxes {
        let chain = tap_chain(&sbx.id);
        let mac = || s(sbx.mac.clone());
        b.rule(
            br,
            &chain,
            vec![ne(payload("ether", "saddr"), mac()), drop_()],
        );
        b.rule(
            br,
            &chain,
            vec![
                ne(payload("ether", "type"), anon_set([s("ip"), s("arp")])),
                drop_(),
            ],
        );
        b.rule(
            br,
            &chain,
            vec![ne(payload("arp", "saddr ether"), mac()), drop_()],
        );
        let arp_ips = match sbx.ip {
            Some(ip) => anon_set([s("0.0.0.0"), s(ip.to_string())]),
            None => s("0.0.0.0"),
        };
        b.rule(
            br,
            &chain,
            vec![ne(payload("arp", "saddr ip"), arp_ips), drop_()],
        );
        // DHCP only for its own MAC: BOOTP's chaddr (28 bytes into BOOTP, after the
        // 8-byte UDP header: bits 288..336 of the transport header) must be the tap's
        // MAC. Anything else to the DHCP server port is dropped, whatever its source
        // address: a guest cannot ask for, renew or release another sandbox's lease,
        // nor walk the pool with random chaddrs.
        if let Some((high, low)) = mac_words(&sbx.mac) {
            b.rule(
                br,
                &chain,
                vec![
                    eq(payload("ip", "protocol"), s("udp")),
                    eq(payload("udp", "sport"), num(68)),
                    eq(payload("udp", "dport"), num(67)),
                    eq(raw_th(CHADDR_BITS, 32), Expression::Number(high)),
                    eq(raw_th(CHADDR_BITS + 32, 16), Expression::Number(low)),
                    accept(),
                ],
            );
        }
        b.rule(
            br,
            &chain,
            vec![
                eq(payload("ip", "protocol"), s("udp")),
                eq(payload("udp", "dport"), num(67)),
                drop_(),
            ],
        );
        match sbx.ip {
            Some(ip) => b.rule(
                br,
                &chain,
                vec![ne(payload("ip", "saddr"), s(ip.to_string())), drop_()],
            ),
            None => b.rule(
                br,
                &chain,
                vec![eq(payload("ether", "type"), s("ip")), drop_()],
            ),
        }
    }
}

fn inet_table(b: &mut Builder, settings: &NetworkSettings, sandboxes: &[SandboxNet]) {
    let inet = NfFamily::INet;
    let host = settings.host_ip();
    let subnet = IpNet::V4(settings.host.trunc());
    let dns = settings.dns_listen;
    b.fresh_table(inet);
    b.set(inet, "macs", SetType::EtherAddr, false);
    b.set(inet, "ips", SetType::Ipv4Addr, false);
    let domain_sets: Vec<Vec<(String, String)>> = sandboxes
        .iter()
        .map(|x| {
            domains(&settings.always_allow, &x.policy)
                .into_iter()
                .enumerate()
                .map(|(i, d)| (d, domain_set(&x.id, i)))
                .collect()
        })
        .collect();
    for sets in &domain_sets {
        for (_, set) in sets {
            b.set(inet, set, SetType::Ipv4Addr, true);
        }
    }
    let dstnat_1 = -101;
    b.chain(
        inet,
        "prerouting",
        Some((NfChainType::NAT, NfHook::Prerouting, dstnat_1)),
    );
    b.chain(
        inet,
        "input",
        Some((NfChainType::Filter, NfHook::Input, -1)),
    );
    b.chain(inet, "sandbox_to_host", None);
    b.chain(
        inet,
        "forward",
        Some((NfChainType::Filter, NfHook::Forward, -1)),
    );
    b.chain(inet, REPLIES_CHAIN, None);
    b.chain(inet, "egress", None);
    for sbx in sandboxes {
        b.chain(inet, &egress_chain(&sbx.id), None);
    }
    b.elements(
        inet,
        "macs",
        sandboxes.iter().map(|x| s(x.mac.clone())).collect(),
    );
    b.elements(
        inet,
        "ips",
        sandboxes
            .iter()
            .filter_map(|x| x.ip)
            .map(|ip| s(ip.to_string()))
            .collect(),
    );
    for (sbx, sets) in sandboxes.iter().zip(&domain_sets) {
        for (domain, set) in sets {
            let elems = sbx
                .resolved
                .get(domain)
                .map(|addrs| addrs.iter().map(|(a, secs)| timed(*a, *secs)).collect())
                .unwrap_or_default();
            b.elements(inet, set, elems);
        }
    }

    // DNS to the resolver DHCP hands out, or to any resolver off the subnet (a guest
    // with a resolver of its own), goes to the DNS proxy; DNS to a neighbour does not.
    let from_sandbox = || {
        vec![
            eq(meta(MetaKey::Nfproto), s("ipv4")),
            eq(payload("ether", "saddr"), set_ref("macs")),
        ]
    };
    for to in [
        eq(payload("ip", "daddr"), s(host.to_string())),
        ne(payload("ip", "daddr"), net(subnet)),
    ] {
        for proto in ["udp", "tcp"] {
            let mut expr = from_sandbox();
            expr.extend([
                to.clone(),
                eq(payload(proto, "dport"), num(53)),
                dnat_to(dns),
            ]);
            b.rule(inet, "prerouting", expr);
        }
    }

    b.rule(
        inet,
        "input",
        vec![
            eq(payload("ether", "saddr"), set_ref("macs")),
            jump("sandbox_to_host"),
        ],
    );
    // Replies to the host's own connections (the agent's SSH, its tunnels). What the
    // sandbox itself opens towards the host passes only below, in every state.
    b.rule(inet, "sandbox_to_host", vec![ct_reply(), accept()]);
    b.rule(
        inet,
        "sandbox_to_host",
        vec![
            eq(payload("udp", "sport"), num(68)),
            eq(payload("udp", "dport"), num(67)),
            accept(),
        ],
    );
    for proto in ["udp", "tcp"] {
        b.rule(
            inet,
            "sandbox_to_host",
            vec![
                eq(payload("ip", "daddr"), s(dns.ip().to_string())),
                eq(payload(proto, "dport"), num(dns.port())),
                accept(),
            ],
        );
    }
    b.rule(inet, "sandbox_to_host", vec![drop_()]);

    // No blanket `ct state established accept`: replies go through the allow-list of
    // the sandbox they return to, what a sandbox sends through its own, in every state.
    b.rule(
        inet,
        "forward",
        vec![
            ct_reply(),
            eq(payload("ip", "daddr"), set_ref("ips")),
            jump(REPLIES_CHAIN),
        ],
    );
    b.rule(
        inet,
        "forward",
        vec![eq(payload("ip", "daddr"), set_ref("ips")), drop_()],
    );
    b.rule(
        inet,
        "forward",
        vec![
            eq(payload("ether", "saddr"), set_ref("macs")),
            jump("egress"),
        ],
    );
    b.rule(
        inet,
        "egress",
        vec![
            eq(payload("ip", "daddr"), s(METADATA_V4.to_string())),
            drop_(),
        ],
    );
    for sbx in sandboxes {
        b.rule_with(
            inet,
            "egress",
            vec![
                eq(payload("ether", "saddr"), s(sbx.mac.clone())),
                jump(&egress_chain(&sbx.id)),
            ],
            Some(sbx.id.as_str()),
        );
    }
    b.rule(inet, "egress", vec![drop_()]);
    for sbx in sandboxes {
        if let Some(ip) = sbx.ip {
            b.rule_with(
                inet,
                REPLIES_CHAIN,
                vec![
                    eq(payload("ip", "daddr"), s(ip.to_string())),
                    jump(&egress_chain(&sbx.id)),
                ],
                Some(sbx.id.as_str()),
            );
        }
    }
    b.rule(inet, REPLIES_CHAIN, vec![drop_()]);
    for (sbx, sets) in sandboxes.iter().zip(&domain_sets) {
        let chain = egress_chain(&sbx.id);
        for rule in settings.always_allow.iter().chain(&sbx.policy.allow) {
            let set = match &rule.destination {
                Destination::Domain(d) => {
                    sets.iter().find(|(x, _)| x == d).map(|(_, s)| s.as_str())
                }
                Destination::Cidr(_) => None,
            };
            for expr in allow_rules(rule, set) {
                b.rule(inet, &chain, expr);
            }
        }
    }
}

/// Adds resolved addresses to a domain set, each for its seconds. An address already
/// there gets its new timeout (`add; delete; add` in one batch: a plain `add` keeps an
/// existing element's old timeout).
pub fn add_resolved(table: &str, set: &str, addrs: &[(Ipv4Addr, u32)]) -> Nftables<'static> {
    let inet = NfFamily::INet;
    let plain: Vec<Expression<'static>> = addrs.iter().map(|(a, _)| s(a.to_string())).collect();
    let timed_elems: Vec<Expression<'static>> =
        addrs.iter().map(|(a, secs)| timed(*a, *secs)).collect();
    let objects = vec![
        NfObject::CmdObject(NfCmd::Add(NfListObject::Element(element(
            inet,
            table,
            set,
            timed_elems.clone(),
        )))),
        NfObject::CmdObject(NfCmd::Delete(NfListObject::Element(element(
            inet, table, set, plain,
        )))),
        NfObject::CmdObject(NfCmd::Add(NfListObject::Element(element(
            inet,
            table,
            set,
            timed_elems,
        )))),
    ];
    Nftables {
        objects: Cow::Owned(objects),
    }
}

/// Counts the chains, named sets and rules in `nft -j list table …` output.
pub fn counts_of_listing(listing: &serde_json::Value) -> Counts {
    let mut c = Counts::default();
    let items = listing
        .get("nftables")
        .and_then(|v| v.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default();
    for item in items {
        if item.get("chain").is_some() {
            c.chains += 1;
        } else if item.get("set").is_some() {
            c.sets += 1;
        } else if item.get("rule").is_some() {
            c.rules += 1;
        }
    }
    c
}

#[cfg(test)]
mod tests;
