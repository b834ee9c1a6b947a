//! Allow-list entries written as text: the config's `[network] always_allow` lines.
//!
//! One entry is `<destination> [<protocol>[/<port>]]`: the destination is an address,
//! a CIDR or a domain name, e.g. `10.0.0.5/32 tcp/3142`, `deb.debian.org tcp/80`,
//! `192.168.1.0/24`, `2001:db8::/32 udp`. It is the same text an [`EgressRule`]
//! displays, so what the agent logs can be pasted back into the config.

use fluid_proto::model::{
    Destination, EgressRule, ValidationError, check_domain, parse_cidr, parse_protocol,
};

/// Why an entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowParseError {
    #[error("empty entry")]
    Empty,
    #[error("{0:?}: expected `<destination> [tcp|udp[/port]]`")]
    Shape(String),
    #[error("{0}")]
    Invalid(#[from] ValidationError),
}

/// True when `s` can only be meant as an address or CIDR (not a domain name).
fn looks_like_address(s: &str) -> bool {
    s.contains(':')
        || s.bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'/')
}

/// Parses one entry.
pub fn parse_rule(line: &str) -> Result<EgressRule, AllowParseError> {
    let mut words = line.split_whitespace();
    let dest = words.next().ok_or(AllowParseError::Empty)?;
    let proto_port = words.next();
    if words.next().is_some() {
        return Err(AllowParseError::Shape(line.to_owned()));
    }
    let destination = if looks_like_address(dest) {
        Destination::Cidr(parse_cidr("destination", dest)?)
    } else {
        Destination::Domain(check_domain("destination", dest)?)
    };
    let (protocol, port) = match proto_port {
        None => (None, None),
        Some(pp) => {
            let (proto, port) = match pp.split_once('/') {
                Some((proto, port)) => (proto, Some(port)),
                None => (pp, None),
            };
            let protocol = parse_protocol("protocol", proto)?;
            if protocol.is_none() {
                return Err(AllowParseError::Shape(line.to_owned()));
            }
            let port = port
                .map(|p| {
                    p.parse::<u16>()
                        .map_err(|_| ValidationError::new("port", format!("{p:?} is not 1-65535")))
                })
                .transpose()?;
            (protocol, port)
        }
    };
    Ok(EgressRule::new(destination, protocol, port)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_and_display_the_same_way() {
        for (line, shown) in [
            ("10.0.0.5/32 tcp/3142", "10.0.0.5/32 tcp/3142"),
            ("10.0.0.5 tcp/3142", "10.0.0.5/32 tcp/3142"),
            ("deb.debian.org tcp/80", "deb.debian.org tcp/80"),
            ("  Deb.Debian.ORG.   TCP/80 ", "deb.debian.org tcp/80"),
            ("192.168.1.7/24", "192.168.1.0/24"),
            ("2001:db8::1/32 udp", "2001:db8::/32 udp"),
            ("example.org udp/53", "example.org udp/53"),
        ] {
            let rule = parse_rule(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(rule.to_string(), shown, "{line}");
            assert_eq!(parse_rule(shown).expect("round trip"), rule);
        }
    }

    #[test]
    fn bad_entries_are_refused() {
        for line in [
            "",
            "   ",
            "10.0.0.0/33",
            "10.0.0",
            "localhost",
            "example.org icmp",
            "example.org tcp/0",
            "example.org tcp/65536",
            "example.org tcp/http",
            "example.org any/80",
            "example.org tcp 80",
            "example.org /80",
            "1.2.3.4.5",
        ] {
            assert!(parse_rule(line).is_err(), "{line:?} must be refused");
        }
        assert_eq!(parse_rule(""), Err(AllowParseError::Empty));
    }
}
