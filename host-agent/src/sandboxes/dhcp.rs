//! Static DHCP leases: the address of a sandbox is the agent's choice, not the guest's.
//!
//! libvirt's dnsmasq serves DHCP on the bridge, and a dynamic lease belongs to
//! whoever asks for it: a guest could ask with another sandbox's MAC (the bridge table
//! now refuses a `chaddr` that is not the tap's MAC), move a lease, or walk the pool.
//! So at create the agent picks a free address of the network's DHCP range and adds
//! a static host entry `<host mac=… ip=…/>` to the network (live and persistent)
//! before the domain exists; destroy removes it. dnsmasq then gives that MAC that
//! address only, and that address to nobody else. The address is kept in the record
//! (`static_ip`, redb); a lease only counts for the sandbox when it carries it.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use super::Sandboxes;
use crate::error::ServiceError;
use crate::hypervisor::{DhcpHost, Hypervisor, HypervisorError, Lease};
use crate::state::SandboxRecord;

/// Attempts at reserving an address (another agent sharing the network may take the
/// one we picked between our read and our add).
const ATTEMPTS: usize = 8;

/// The lowest address of `first..=last` that is not `taken` (nor the host's), from a
/// random starting point so that agents sharing a network rarely pick the same one.
pub(crate) fn pick_free(
    first: Ipv4Addr,
    last: Ipv4Addr,
    taken: &HashSet<Ipv4Addr>,
    start: u32,
) -> Option<Ipv4Addr> {
    let (lo, hi) = (u32::from(first), u32::from(last));
    if hi < lo {
        return None;
    }
    let size = hi - lo + 1;
    (0..size)
        .map(|i| Ipv4Addr::from(lo + (start.wrapping_add(i) % size)))
        .find(|ip| !taken.contains(ip))
}

impl<H: Hypervisor> Sandboxes<H> {
    /// Reserves an address for `mac` in the network: a static host entry for a free
    /// address of its DHCP range. `Ok(None)` when the network has no IPv4 DHCP range
    /// (the sandbox then gets a dynamic lease, as before).
    pub(super) async fn reserve_ip(
        &self,
        mac: &str,
        records: &[SandboxRecord],
    ) -> Result<Option<Ipv4Addr>, ServiceError> {
        let network = self.config.network.name.as_str();
        let mut tried: HashSet<Ipv4Addr> = HashSet::new();
        let mut last_error = None;
        for _ in 0..ATTEMPTS {
            let info = self.hv.network_info(network).await?;
            let Some((first, last)) = info.dhcp_range else {
                tracing::warn!(
                    network,
                    "the network has no DHCP range; sandboxes get dynamic leases"
                );
                return Ok(None);
            };
            let leases = self.hv.leases(network).await?;
            let mut taken: HashSet<Ipv4Addr> = tried.clone();
            taken.extend(info.dhcp_hosts.iter().map(|h| h.ip));
            taken.extend(leases.iter().map(|l| l.ip));
            taken.extend(records.iter().filter_map(|r| r.static_ip));
            taken.extend(info.ipv4.map(|n| n.addr()));
            let Some(ip) = pick_free(first, last, &taken, rand::random()) else {
                return Err(ServiceError::FailedPrecondition(format!(
                    "the DHCP range {first}-{last} of network {network} has no free address"
                )));
            };
            let host = DhcpHost {
                mac: mac.to_owned(),
                ip,
            };
            match self.hv.add_dhcp_host(network, &host).await {
                Ok(()) => {
                    tracing::debug!(mac, %ip, "static DHCP lease reserved");
                    return Ok(Some(ip));
                }
                Err(HypervisorError::Failed(e)) => {
                    tracing::debug!(mac, %ip, "reserving the address failed ({e}); trying another");
                    tried.insert(ip);
                    last_error = Some(e);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Internal(format!(
            "could not reserve a DHCP address in network {network}: {}",
            last_error.unwrap_or_default()
        )))
    }

    /// Removes the sandbox's static host entry (best effort: logged).
    pub(super) async fn unreserve_ip(&self, r: &SandboxRecord) {
        let Some(ip) = r.static_ip else {
            return;
        };
        let host = DhcpHost {
            mac: r.mac.clone(),
            ip,
        };
        if let Err(e) = self.hv.remove_dhcp_host(r.network.as_str(), &host).await {
            tracing::warn!(id = %r.id, %ip, "removing the static DHCP lease: {e}");
        }
    }

    /// Puts the sandbox's static host entry back if the network lost it (the network
    /// was redefined); before a start, so the guest's DHCP finds it.
    pub(super) async fn ensure_reserved(&self, r: &SandboxRecord) -> Result<(), ServiceError> {
        let Some(ip) = r.static_ip else {
            return Ok(());
        };
        let host = DhcpHost {
            mac: r.mac.clone(),
            ip,
        };
        let info = self.hv.network_info(r.network.as_str()).await?;
        if !info.dhcp_hosts.contains(&host) {
            tracing::warn!(id = %r.id, %ip, "the static DHCP lease was missing; adding it again");
            self.hv.add_dhcp_host(r.network.as_str(), &host).await?;
        }
        Ok(())
    }
}

/// The lease that counts for `r`: its MAC's, and with its reserved address when it has
/// one (anything else is not the sandbox's address).
pub(crate) fn lease_of(r: &SandboxRecord, leases: &[Lease]) -> Option<Ipv4Addr> {
    leases
        .iter()
        .find(|l| l.mac == r.mac && r.static_ip.is_none_or(|ip| ip == l.ip))
        .map(|l| l.ip)
}

/// The sandbox's address now: its lease ([`lease_of`]), or, when the agent reserved
/// its address and already learned it (`known_ip`), that address even if dnsmasq's
/// lease record went away (a guest can make dnsmasq drop another client's lease
/// record with a forged client identifier; the address stays reserved for the MAC).
pub(crate) fn address_of(r: &SandboxRecord, leases: &[Lease]) -> Option<Ipv4Addr> {
    lease_of(r, leases).or_else(|| r.static_ip.filter(|ip| r.known_ip == Some(*ip)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    #[test]
    fn picks_a_free_address_and_wraps_around() {
        let taken: HashSet<Ipv4Addr> = [ip("10.0.0.2"), ip("10.0.0.3")].into_iter().collect();
        assert_eq!(
            pick_free(ip("10.0.0.2"), ip("10.0.0.5"), &taken, 0),
            Some(ip("10.0.0.4"))
        );
        assert_eq!(
            pick_free(ip("10.0.0.2"), ip("10.0.0.5"), &taken, 3),
            Some(ip("10.0.0.5"))
        );
        // From the top it wraps to the first free one.
        let taken: HashSet<Ipv4Addr> = [ip("10.0.0.5"), ip("10.0.0.2")].into_iter().collect();
        assert_eq!(
            pick_free(ip("10.0.0.2"), ip("10.0.0.5"), &taken, 3),
            Some(ip("10.0.0.3"))
        );
        let all: HashSet<Ipv4Addr> = (2..=5).map(|i| Ipv4Addr::new(10, 0, 0, i)).collect();
        assert_eq!(pick_free(ip("10.0.0.2"), ip("10.0.0.5"), &all, 7), None);
        assert_eq!(
            pick_free(ip("10.0.0.5"), ip("10.0.0.2"), &HashSet::new(), 0),
            None
        );
    }

    #[test]
    fn only_a_lease_with_the_reserved_address_counts() {
        let mut r = crate::state::test_record("SBX-aaaaaaaa", "a");
        let leases = vec![
            Lease {
                mac: "52:54:00:00:00:02".into(),
                ip: ip("192.168.122.7"),
            },
            Lease {
                mac: r.mac.clone(),
                ip: ip("192.168.122.8"),
            },
        ];
        assert_eq!(lease_of(&r, &leases), Some(ip("192.168.122.8")));
        r.static_ip = Some(ip("192.168.122.9"));
        assert_eq!(lease_of(&r, &leases), None);
        r.static_ip = Some(ip("192.168.122.8"));
        assert_eq!(lease_of(&r, &leases), Some(ip("192.168.122.8")));
    }
}
