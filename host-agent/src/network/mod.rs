//! Sandbox network isolation, enforced on the host, outside the VM.
//!
//! Every sandbox is sealed from its first packet: its tap may only send frames with
//! its own MAC and (once its DHCP lease is known) its own IPv4 address; it reaches the
//! host only for DHCP and the agent's DNS proxy; it reaches nothing else — not the
//! other sandboxes, not the host's services, not the cloud metadata address — except
//! the destinations its egress allow-list and the host's `always_allow` name. Domain
//! entries become addresses when the sandbox resolves them through the DNS proxy
//! ([`dns`]), which reports every answer before the sandbox sees it.
//!
//! - [`allow`]: allow-list entries as text (the config's `always_allow`).
//! - [`ruleset`]: the desired nftables state of this agent's two tables, built from
//!   the sandboxes (pure; unit-tested on its JSON).
//! - [`nft`]: the backend that applies a batch (the `nft` binary, JSON).
//! - [`firewall`]: what is in force: the sandboxes' network facts in memory, full
//!   rebuilds as one atomic batch, incremental adds of resolved addresses, drift checks.
//! - [`watch`]: the background loops (IP learning from leases, drift check).
//! - [`dns`]: the DNS proxy (answers only names the sandbox may reach).
//! - [`admit`]: which addresses from a DNS answer may be admitted (public ones).
//!
//! Several agents may share one libvirt network: each owns only its tables (named
//! after its host) and its rules only match its own sandboxes' taps and MACs.

pub mod admit;
pub mod allow;
pub mod dns;
pub mod firewall;
pub mod nft;
pub mod ruleset;
pub mod watch;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use fluid_proto::model::{EgressRule, SandboxId};
use ipnet::Ipv4Net;

use crate::config::NetworkConfig;
use crate::hypervisor::NetworkInfo;

pub use firewall::{Firewall, FirewallError};

/// Longest Linux interface name.
const IFNAME_MAX: usize = 15;

/// The id without its `SBX-` prefix; names this sandbox's chains and sets.
pub fn id_suffix(id: &SandboxId) -> &str {
    let s = id.as_str();
    s.strip_prefix(SandboxId::PREFIX).unwrap_or(s)
}

/// The sandbox's tap device: `fx` + the first 10 characters after `SBX-` (an interface
/// name has at most 15 bytes). Fixed in the domain XML, so rules can name it before
/// the domain starts.
pub fn tap_name(id: &SandboxId) -> String {
    let suffix: String = id_suffix(id).chars().take(IFNAME_MAX - 5).collect();
    format!("fx{suffix}")
}

/// The isolation settings in force: the config with libvirt's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSettings {
    /// Name of this agent's `bridge` and `inet` tables.
    pub table: String,
    /// The libvirt network's bridge.
    pub bridge: String,
    /// The host's address on the bridge with the network's prefix: sandboxes' gateway
    /// and resolver, and their subnet.
    pub host: Ipv4Net,
    /// Where the DNS proxy listens; sandboxes' DNS is DNAT-ed there.
    pub dns_listen: SocketAddrV4,
    /// Where the DNS proxy forwards.
    pub dns_upstream: SocketAddr,
    /// Destinations every sandbox may reach.
    pub always_allow: Vec<EgressRule>,
    /// Private networks DNS answers may open ([`admit`]).
    pub resolved_private_allow: Vec<Ipv4Net>,
    /// The DNS proxy's per-sandbox caps.
    pub dns_caps: dns::SandboxCaps,
    /// How long an address a DNS answer allowed stays allowed at least, whatever the
    /// answer's TTL (`[network] resolved_min_secs`).
    pub resolved_min: Duration,
}

impl NetworkSettings {
    /// Fills in what the config leaves to libvirt (bridge, addresses).
    pub fn resolve(config: &NetworkConfig, info: &NetworkInfo) -> Result<Self, FirewallError> {
        let host = info.ipv4.ok_or_else(|| {
            FirewallError::Settings(format!(
                "libvirt network {} has no IPv4 address; sandboxes cannot be isolated on it",
                config.name
            ))
        })?;
        let bridge = config.bridge.clone().unwrap_or_else(|| info.bridge.clone());
        Ok(Self {
            table: config.nft_table.clone(),
            bridge,
            host,
            dns_listen: config
                .dns_listen
                .unwrap_or_else(|| SocketAddrV4::new(host.addr(), 5353)),
            dns_upstream: config
                .dns_upstream
                .unwrap_or_else(|| SocketAddr::from((host.addr(), 53))),
            always_allow: config.always_allow.clone(),
            resolved_private_allow: config.resolved_private_allow.clone(),
            dns_caps: dns::SandboxCaps {
                in_flight: config.dns_max_in_flight_per_sandbox,
                tcp_connections: config.dns_max_tcp_per_sandbox,
            },
            resolved_min: config.resolved_min,
        })
    }

    /// The host's address on the bridge.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host.addr()
    }
}

#[cfg(test)]
pub(crate) fn test_settings() -> NetworkSettings {
    NetworkSettings {
        table: "fluid_kvm_1".into(),
        bridge: "virbr0".into(),
        host: Ipv4Net::new(Ipv4Addr::new(192, 168, 122, 1), 24).expect("net"),
        dns_listen: SocketAddrV4::new(Ipv4Addr::new(192, 168, 122, 1), 5353),
        dns_upstream: SocketAddr::from(([192, 168, 122, 1], 53)),
        always_allow: vec![
            allow::parse_rule("10.0.0.5/32 tcp/3142").expect("rule"),
            allow::parse_rule("deb.debian.org tcp/80").expect("rule"),
        ],
        resolved_private_allow: Vec::new(),
        dns_caps: dns::SandboxCaps::default(),
        resolved_min: firewall::RESOLVED_MIN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SandboxId {
        SandboxId::parse("id", s).expect("id")
    }

    #[test]
    fn tap_names_fit_an_interface_name() {
        assert_eq!(tap_name(&id("SBX-0123abcd")), "fx0123abcd");
        assert_eq!(tap_name(&id("SBX-abcdefghij")), "fxabcdefghij");
        let long = tap_name(&id("SBX-abcdefghijklmnopqrstuvwxyz012345"));
        assert_eq!(long, "fxabcdefghij");
        assert!(long.len() <= IFNAME_MAX);
        assert_eq!(id_suffix(&id("SBX-abcdefghijk")), "abcdefghijk");
    }

    #[test]
    fn settings_default_to_the_bridge_address() {
        let config = crate::AgentConfig::from_toml(
            "host_name = 'kvm-1'\n[tls]\nca_cert='/a'\ncert='/b'\nkey='/c'\n",
        )
        .expect("config");
        let info = NetworkInfo {
            bridge: "virbr0".into(),
            ipv4: Some("192.168.122.1/24".parse().expect("net")),
            dhcp_range: None,
            dhcp_hosts: Vec::new(),
        };
        let s = NetworkSettings::resolve(&config.network, &info).expect("settings");
        assert_eq!(s.table, "fluid_kvm_1");
        assert_eq!(s.bridge, "virbr0");
        assert_eq!(s.dns_listen.to_string(), "192.168.122.1:5353");
        assert_eq!(s.dns_upstream.to_string(), "192.168.122.1:53");
        let no_ip = NetworkInfo {
            bridge: "virbr0".into(),
            ipv4: None,
            dhcp_range: None,
            dhcp_hosts: Vec::new(),
        };
        assert!(NetworkSettings::resolve(&config.network, &no_ip).is_err());
    }
}
