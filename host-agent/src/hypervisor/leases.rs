//! DHCP leases of a libvirt network, read from the status file libvirt's lease helper
//! keeps for dnsmasq (`/var/lib/libvirt/dnsmasq/<bridge>.status`). It is the same
//! source `virsh net-dhcp-leases` reads; the `virt` crate does not bind
//! `virNetworkGetDHCPLeases`. Releasing a lease runs dnsmasq's `dhcp_release`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{HypervisorError, Lease};

/// Where libvirt's system instance keeps dnsmasq state.
pub const DNSMASQ_STATE_DIR: &str = "/var/lib/libvirt/dnsmasq";

pub fn status_file(dir: &Path, bridge: &str) -> PathBuf {
    dir.join(format!("{bridge}.status"))
}

#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(rename = "ip-address")]
    ip: String,
    #[serde(rename = "mac-address", default)]
    mac: Option<String>,
    #[serde(rename = "expiry-time", default)]
    expiry: i64,
}

/// Parses a status file's content: current IPv4 leases (expiry 0 = never expires).
pub fn parse_status(json: &str, now_unix: i64) -> Result<Vec<Lease>, HypervisorError> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let entries: Vec<Entry> = serde_json::from_str(json)
        .map_err(|e| HypervisorError::Failed(format!("lease status file: {e}")))?;
    Ok(entries
        .into_iter()
        .filter(|e| e.expiry == 0 || e.expiry > now_unix)
        .filter_map(|e| {
            let ip: Ipv4Addr = e.ip.parse().ok()?;
            Some(Lease {
                mac: e.mac?.to_ascii_lowercase(),
                ip,
            })
        })
        .collect())
}

/// Reads the leases of the network on `bridge`. A missing file means no leases yet.
pub async fn read(dir: &Path, bridge: &str) -> Result<Vec<Lease>, HypervisorError> {
    let path = status_file(dir, bridge);
    let json = match tokio::fs::read_to_string(&path).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(HypervisorError::Failed(format!(
                "reading {}: {e}",
                path.display()
            )));
        }
    };
    parse_status(&json, crate::unix_now())
}

/// `dhcp_release <bridge> <ip> <mac>`: dnsmasq forgets the lease (and libvirt's helper
/// drops it from the status file). Must run in the network namespace of the bridge.
pub async fn release(bridge: &str, lease: &Lease) -> Result<(), HypervisorError> {
    let out = tokio::process::Command::new("dhcp_release")
        .arg(bridge)
        .arg(lease.ip.to_string())
        .arg(&lease.mac)
        .output()
        .await
        .map_err(|e| HypervisorError::Failed(format!("running dhcp_release: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(HypervisorError::Failed(format!(
            "dhcp_release {bridge} {} {}: {} {}",
            lease.ip,
            lease.mac,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libvirt_status_files() {
        let json = r#"[
  {
    "ip-address": "192.168.122.50",
    "mac-address": "52:54:00:AA:bb:cc",
    "hostname": "guest",
    "client-id": "01:52:54:00:aa:bb:cc",
    "expiry-time": 2000
  },
  { "ip-address": "192.168.122.51", "mac-address": "52:54:00:00:00:01", "expiry-time": 10 },
  { "ip-address": "fd00::5", "mac-address": "52:54:00:00:00:02", "expiry-time": 0 },
  { "ip-address": "192.168.122.52", "mac-address": "52:54:00:00:00:03", "expiry-time": 0 },
  { "ip-address": "192.168.122.53", "iaid": "1", "expiry-time": 0 }
]"#;
        let leases = parse_status(json, 1000).expect("parse");
        assert_eq!(
            leases,
            vec![
                Lease {
                    mac: "52:54:00:aa:bb:cc".into(),
                    ip: Ipv4Addr::new(192, 168, 122, 50)
                },
                Lease {
                    mac: "52:54:00:00:00:03".into(),
                    ip: Ipv4Addr::new(192, 168, 122, 52)
                },
            ]
        );
        assert_eq!(parse_status("", 0).expect("empty"), vec![]);
        assert!(parse_status("{", 0).is_err());
    }
}
