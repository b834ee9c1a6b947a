//! The `[network]` table of the agent's configuration, as written and validated.
//!
//! `network` used to be the libvirt network's name (`network = "default"`); that form
//! still parses. The table form names it `name` and adds the isolation settings.

use std::net::SocketAddr;
use std::time::Duration;

use fluid_proto::model::Name;
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::{ConfigError, NetworkConfig, invalid};
use crate::network::allow::parse_rule;
use crate::network::firewall::{RESOLVED_MAX, RESOLVED_MIN};

/// `network = "<libvirt network>"` or a `[network]` table.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(super) enum RawNetworkField {
    Name(String),
    Table(Box<RawNetwork>),
}

impl Default for RawNetworkField {
    fn default() -> Self {
        Self::Table(Box::default())
    }
}

/// Hand-written so a mistake inside the table is reported as such (an untagged enum
/// would only say that nothing matched).
impl<'de> Deserialize<'de> for RawNetworkField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawNetworkField;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a libvirt network name or a [network] table")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(RawNetworkField::Name(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                RawNetwork::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|t| RawNetworkField::Table(Box::new(t)))
            }
        }
        d.deserialize_any(V)
    }
}

/// Absent keys stay absent when serialised, so figment merges the file and the
/// environment into the defaults key by key.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetwork {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    enforce: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nft_table: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bridge: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dns_listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dns_upstream: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    always_allow: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resolved_private_allow: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dns_max_in_flight_per_sandbox: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dns_max_tcp_per_sandbox: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resolved_min_secs: Option<u64>,
}

/// `fluid_` + the host name with anything but ASCII letters and digits as `_`.
pub fn default_nft_table(host_name: &Name) -> String {
    let host: String = host_name
        .as_str()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("fluid_{host}")
}

/// An nftables identifier that also works unquoted on the `nft` command line.
fn check_nft_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 64
}

/// A Linux interface name: 1-15 bytes, no `/`, `:` or whitespace.
fn check_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

impl RawNetworkField {
    pub(super) fn validate(self, host_name: &Name) -> Result<NetworkConfig, ConfigError> {
        let (raw, name_field) = match self {
            RawNetworkField::Name(name) => (
                RawNetwork {
                    name: Some(name),
                    ..RawNetwork::default()
                },
                "network",
            ),
            RawNetworkField::Table(t) => (*t, "network.name"),
        };
        let name = raw.name.as_deref().unwrap_or("default");
        let name = Name::parse("network", name).map_err(|e| invalid(name_field, e.reason))?;
        let nft_table = match raw.nft_table {
            Some(t) if check_nft_name(&t) => t,
            Some(t) => {
                return Err(invalid(
                    "network.nft_table",
                    format!("{t:?} must be a letter then up to 63 letters, digits or '_'"),
                ));
            }
            None => default_nft_table(host_name),
        };
        if let Some(b) = &raw.bridge
            && !check_ifname(b)
        {
            return Err(invalid(
                "network.bridge",
                format!("{b:?} is not an interface name"),
            ));
        }
        let dns_listen = match raw.dns_listen {
            None => None,
            Some(SocketAddr::V4(a)) if a.port() != 0 && !a.ip().is_unspecified() => Some(a),
            Some(a) => {
                return Err(invalid(
                    "network.dns_listen",
                    format!(
                        "{a} must be an IPv4 address with a port (sandboxes' DNS is redirected there)"
                    ),
                ));
            }
        };
        if let Some(u) = raw.dns_upstream
            && (u.port() == 0 || u.ip().is_unspecified())
        {
            return Err(invalid(
                "network.dns_upstream",
                format!("{u} must be an address with a port"),
            ));
        }
        let always_allow = raw
            .always_allow
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, line)| {
                parse_rule(line)
                    .map_err(|e| invalid(format!("network.always_allow[{i}]"), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let resolved_private_allow = raw
            .resolved_private_allow
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, n)| {
                n.trim()
                    .parse::<ipnet::Ipv4Net>()
                    .map(|n| n.trunc())
                    .map_err(|_| {
                        invalid(
                            format!("network.resolved_private_allow[{i}]"),
                            format!("{n:?} is not an IPv4 network (a.b.c.d/len)"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let cap = |field: &str, v: Option<usize>, default: usize| match v {
            None => Ok(default),
            Some(n) if (1..=4096).contains(&n) => Ok(n),
            Some(n) => Err(invalid(
                format!("network.{field}"),
                format!("{n} must be 1-4096"),
            )),
        };
        let defaults = crate::network::dns::SandboxCaps::default();
        let dns_max_in_flight_per_sandbox = cap(
            "dns_max_in_flight_per_sandbox",
            raw.dns_max_in_flight_per_sandbox,
            defaults.in_flight,
        )?;
        let dns_max_tcp_per_sandbox = cap(
            "dns_max_tcp_per_sandbox",
            raw.dns_max_tcp_per_sandbox,
            defaults.tcp_connections,
        )?;
        let resolved_min = match raw.resolved_min_secs {
            None => RESOLVED_MIN,
            Some(s) if (1..=RESOLVED_MAX.as_secs()).contains(&s) => Duration::from_secs(s),
            Some(s) => {
                return Err(invalid(
                    "network.resolved_min_secs",
                    format!("{s} must be 1-{} (seconds)", RESOLVED_MAX.as_secs()),
                ));
            }
        };
        Ok(NetworkConfig {
            resolved_private_allow,
            dns_max_in_flight_per_sandbox,
            dns_max_tcp_per_sandbox,
            name,
            enforce: raw.enforce.unwrap_or(true),
            nft_table,
            bridge: raw.bridge,
            dns_listen,
            dns_upstream: raw.dns_upstream,
            always_allow,
            resolved_min,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::AgentConfig;

    const TLS: &str = "[tls]\nca_cert = '/a'\ncert = '/b'\nkey = '/c'\n";

    fn parse(extra: &str) -> Result<AgentConfig, String> {
        AgentConfig::from_toml(&format!("host_name = 'kvm-1.example'\n{extra}\n{TLS}"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_old_string_form_still_names_the_libvirt_network() {
        let c = parse("network = 'sandboxes'").expect("valid");
        assert_eq!(c.network.name.as_str(), "sandboxes");
        assert!(c.network.enforce);
        assert_eq!(c.network.nft_table, "fluid_kvm_1_example");
        assert_eq!(
            c.network.resolved_min,
            crate::network::firewall::RESOLVED_MIN
        );
    }

    #[test]
    fn the_table_form() {
        let toml = r#"
[network]
name = "sandboxes"
enforce = false
nft_table = "fluid_custom"
bridge = "virbr7"
dns_listen = "192.168.7.1:5300"
dns_upstream = "192.168.7.1:53"
always_allow = ["10.0.0.5/32 tcp/3142", "Deb.Debian.org. tcp/80", "192.168.1.0/24"]
resolved_min_secs = 5
"#;
        let c = AgentConfig::from_toml(&format!("host_name = 'h'\n{TLS}{toml}")).expect("valid");
        let n = &c.network;
        assert_eq!(n.name.as_str(), "sandboxes");
        assert!(!n.enforce);
        assert_eq!(n.nft_table, "fluid_custom");
        assert_eq!(n.bridge.as_deref(), Some("virbr7"));
        assert_eq!(
            n.dns_listen.map(|a| a.to_string()).as_deref(),
            Some("192.168.7.1:5300")
        );
        assert_eq!(
            n.dns_upstream.map(|a| a.to_string()).as_deref(),
            Some("192.168.7.1:53")
        );
        assert_eq!(n.resolved_min.as_secs(), 5);
        let rules: Vec<String> = n.always_allow.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            rules,
            [
                "10.0.0.5/32 tcp/3142",
                "deb.debian.org tcp/80",
                "192.168.1.0/24"
            ]
        );
    }

    #[test]
    fn bad_network_values_name_their_field() {
        let cases = [
            ("[network]\nname = '../x'", "network.name"),
            ("network = '../x'", "network"),
            ("[network]\nnft_table = 'bad-name'", "network.nft_table"),
            ("[network]\nbridge = 'a/b'", "network.bridge"),
            ("[network]\ndns_listen = '[::1]:53'", "network.dns_listen"),
            ("[network]\ndns_listen = '10.0.0.1:0'", "network.dns_listen"),
            (
                "[network]\ndns_upstream = '0.0.0.0:53'",
                "network.dns_upstream",
            ),
            (
                "[network]\nalways_allow = ['ok.example', 'nope nope']",
                "network.always_allow[1]",
            ),
            (
                "[network]\nresolved_min_secs = 0",
                "network.resolved_min_secs",
            ),
            (
                "[network]\nresolved_min_secs = 86401",
                "network.resolved_min_secs",
            ),
            ("[network]\nbogus = 1", "bogus"),
            ("[network]\nenforce = 'yes'", "enforce"),
        ];
        for (toml, field) in cases {
            let e = parse(toml).expect_err(toml);
            assert!(e.contains(field), "{toml}: {e}");
        }
    }
}
