//! The small constructors the ruleset is written with: nftables JSON expressions and
//! statements, by what they mean (`eq`, `jump`, `ct_original`, `raw_th`, …).

use std::borrow::Cow;
use std::net::SocketAddrV4;

use ipnet::IpNet;
use nftables::expr::{
    CT, CTDir, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadBase, PayloadField,
    PayloadRaw, Prefix, SetItem,
};
use nftables::stmt::{JumpTarget, Match, NAT, NATFamily, Operator, Statement};

pub(super) fn s(v: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(v.into()))
}

pub(super) fn num(v: u16) -> Expression<'static> {
    Expression::Number(u32::from(v))
}

pub(super) fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

/// Where BOOTP's `chaddr` starts in the transport header, in bits: the UDP header (8
/// bytes), then op, htype, hlen, hops (4), xid (4), secs, flags (4), ciaddr, yiaddr,
/// siaddr, giaddr (16) = 36 bytes.
pub const CHADDR_BITS: u32 = 36 * 8;

/// `@th,<offset>,<len>`: raw bits of the transport header.
pub(super) fn raw_th(offset: u32, len: u32) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadRaw(PayloadRaw {
        base: PayloadBase::TH,
        offset,
        len,
    })))
}

pub(super) fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

pub(super) fn anon_set(
    items: impl IntoIterator<Item = Expression<'static>>,
) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        items.into_iter().map(SetItem::Element).collect(),
    ))
}

pub(super) fn set_ref(name: &str) -> Expression<'static> {
    s(format!("@{name}"))
}

/// A network as nft wants it: a plain address for a host route, else a prefix.
pub(super) fn net(n: IpNet) -> Expression<'static> {
    if n.prefix_len() == n.max_prefix_len() {
        s(n.addr().to_string())
    } else {
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(s(n.network().to_string())),
            len: u32::from(n.prefix_len()),
        }))
    }
}

pub(super) fn cmp(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

pub(super) fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    cmp(left, Operator::EQ, right)
}

pub(super) fn ne(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    cmp(left, Operator::NEQ, right)
}

pub(super) fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

pub(super) fn drop_() -> Statement<'static> {
    Statement::Drop(None)
}

pub(super) fn jump(target: &str) -> Statement<'static> {
    Statement::Jump(JumpTarget {
        target: Cow::Owned(target.to_owned()),
    })
}

/// `ct original <key>`: the connection's original direction (where the sandbox
/// connected to). Addresses are keyed `ip daddr` / `ip6 daddr`, as `nft -j` lists them
/// (with a `family` instead, nft refuses a set lookup: "specify either ip or ip6").
pub(super) fn ct_original(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: Cow::Borrowed(key),
        family: None,
        dir: Some(CTDir::Original),
    }))
}

/// `ct direction reply`: a packet travelling against its connection's first packet
/// (a reply, or an ICMP error about the connection).
pub(super) fn ct_reply() -> Statement<'static> {
    eq(
        Expression::Named(NamedExpression::CT(CT {
            key: Cow::Borrowed("direction"),
            family: None,
            dir: None,
        })),
        s("reply"),
    )
}

pub(super) fn dnat_to(to: SocketAddrV4) -> Statement<'static> {
    Statement::DNAT(Some(NAT {
        addr: Some(s(to.ip().to_string())),
        family: Some(NATFamily::IP),
        port: Some(num(to.port())),
        flags: None,
    }))
}
