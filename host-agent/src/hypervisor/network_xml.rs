//! Reads the bridge and the host's IPv4 address out of a libvirt network's XML
//! (`virNetworkGetXMLDesc`). The agent needs both: its nftables rules name the bridge's
//! address (DNS, DHCP) and its DNS proxy listens there.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Deserialize;

use super::{DhcpHost, HypervisorError, NetworkInfo};

#[derive(Debug, Deserialize)]
struct Network {
    name: Option<String>,
    bridge: Option<Bridge>,
    #[serde(default)]
    ip: Vec<Ip>,
}

#[derive(Debug, Deserialize)]
struct Bridge {
    #[serde(rename = "@name")]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Ip {
    #[serde(rename = "@family")]
    family: Option<String>,
    #[serde(rename = "@address")]
    address: Option<String>,
    #[serde(rename = "@netmask")]
    netmask: Option<String>,
    #[serde(rename = "@prefix")]
    prefix: Option<u8>,
    dhcp: Option<Dhcp>,
}

#[derive(Debug, Deserialize)]
struct Dhcp {
    #[serde(default)]
    range: Vec<Range>,
    #[serde(default)]
    host: Vec<Host>,
}

#[derive(Debug, Deserialize)]
struct Range {
    #[serde(rename = "@start")]
    start: Option<String>,
    #[serde(rename = "@end")]
    end: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Host {
    #[serde(rename = "@mac")]
    mac: Option<String>,
    #[serde(rename = "@ip")]
    ip: Option<String>,
}

impl Ip {
    /// The first IPv4 `<ip>`: an address plus a netmask or a prefix (default /24, as
    /// libvirt assumes for a class C address without either).
    fn ipv4(&self) -> Option<Ipv4Net> {
        if self.family.as_deref().is_some_and(|f| f != "ipv4") {
            return None;
        }
        let address: Ipv4Addr = self.address.as_deref()?.parse().ok()?;
        let prefix = match (&self.prefix, &self.netmask) {
            (Some(p), _) => *p,
            (None, Some(mask)) => {
                let mask: Ipv4Addr = mask.parse().ok()?;
                ipnet::ipv4_mask_to_prefix(mask).ok()?
            }
            (None, None) => 24,
        };
        Ipv4Net::new(address, prefix).ok()
    }
}

/// The bridge and IPv4 address of the network described by `xml`.
pub fn parse_network(xml: &str) -> Result<NetworkInfo, HypervisorError> {
    let net: Network = quick_xml::de::from_str(xml)
        .map_err(|e| HypervisorError::Failed(format!("network XML: {e}")))?;
    let name = net.name.unwrap_or_default();
    let bridge = net
        .bridge
        .and_then(|b| b.name)
        .filter(|b| !b.is_empty())
        .ok_or_else(|| HypervisorError::Failed(format!("network {name} has no bridge")))?;
    let v4 = net.ip.iter().find(|ip| ip.ipv4().is_some());
    let dhcp = v4.and_then(|ip| ip.dhcp.as_ref());
    let dhcp_range = dhcp.and_then(|d| {
        d.range.iter().find_map(|r| {
            let start: Ipv4Addr = r.start.as_deref()?.parse().ok()?;
            let end: Ipv4Addr = r.end.as_deref()?.parse().ok()?;
            (start <= end).then_some((start, end))
        })
    });
    let dhcp_hosts = dhcp
        .map(|d| {
            d.host
                .iter()
                .filter_map(|h| {
                    Some(DhcpHost {
                        mac: h.mac.as_deref()?.to_ascii_lowercase(),
                        ip: h.ip.as_deref()?.parse().ok()?,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(NetworkInfo {
        bridge,
        ipv4: v4.and_then(Ip::ipv4),
        dhcp_range,
        dhcp_hosts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libvirts_default_network() {
        let xml = r#"<network>
  <name>default</name>
  <uuid>0b8f4a0e-8a57-4b3c-9e3b-2b7f0c0d9a11</uuid>
  <forward mode='nat'><nat><port start='1024' end='65535'/></nat></forward>
  <bridge name='virbr0' stp='on' delay='0'/>
  <mac address='52:54:00:0a:0b:0c'/>
  <ip family='ipv6' address='fd00::1' prefix='64'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp>
  </ip>
</network>"#;
        let info = parse_network(xml).expect("parse");
        assert_eq!(info.bridge, "virbr0");
        assert_eq!(
            info.ipv4.map(|n| n.to_string()).as_deref(),
            Some("192.168.122.1/24")
        );
        assert_eq!(
            info.dhcp_range,
            Some((
                Ipv4Addr::new(192, 168, 122, 2),
                Ipv4Addr::new(192, 168, 122, 254)
            ))
        );
        assert!(info.dhcp_hosts.is_empty());
    }

    #[test]
    fn reads_static_dhcp_hosts() {
        let xml = r#"<network><name>default</name><bridge name='virbr0'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.122.2' end='192.168.122.254'/>
      <host mac='52:54:00:AA:00:01' ip='192.168.122.40'/>
      <host mac='52:54:00:aa:00:02' name='b' ip='192.168.122.41'/>
      <host name='no-mac' ip='192.168.122.42'/>
    </dhcp>
  </ip>
</network>"#;
        let info = parse_network(xml).expect("parse");
        assert_eq!(
            info.dhcp_hosts,
            vec![
                DhcpHost {
                    mac: "52:54:00:aa:00:01".into(),
                    ip: Ipv4Addr::new(192, 168, 122, 40)
                },
                DhcpHost {
                    mac: "52:54:00:aa:00:02".into(),
                    ip: Ipv4Addr::new(192, 168, 122, 41)
                },
            ]
        );
    }

    #[test]
    fn prefix_attribute_and_missing_pieces() {
        let xml = "<network><name>n</name><bridge name='br9'/><ip address='10.9.0.1' prefix='16'/></network>";
        let info = parse_network(xml).expect("parse");
        assert_eq!(
            info.ipv4.map(|n| n.to_string()).as_deref(),
            Some("10.9.0.1/16")
        );
        let no_ip =
            parse_network("<network><name>n</name><bridge name='br9'/></network>").expect("parse");
        assert_eq!(no_ip.ipv4, None);
        assert!(parse_network("<network><name>n</name></network>").is_err());
        assert!(parse_network("not xml").is_err());
    }
}
