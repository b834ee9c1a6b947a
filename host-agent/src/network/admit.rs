//! Which addresses a DNS answer may open for a sandbox.
//!
//! A domain entry is allowed at the addresses it resolves to, but the answer comes
//! from outside, and whoever controls the name controls the answer. An allowed name
//! that resolves to 127.0.0.1, to the bridge (the host, the other sandboxes) or to the
//! LAN must not open those. So an answer's addresses go into a sandbox's set only when
//! they are public:
//!
//! - never: the libvirt network's own subnet (the host and every sandbox on the
//!   bridge), `0.0.0.0/8`, loopback `127.0.0.0/8`, link-local `169.254.0.0/16` (cloud
//!   metadata), multicast `224.0.0.0/4`, reserved and broadcast `240.0.0.0/4`;
//! - unless `[network] resolved_private_allow` lists a network containing them: the
//!   private ranges `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`, CGNAT
//!   `100.64.0.0/10`, `192.0.0.0/24` and the benchmark range `198.18.0.0/15` (an
//!   internal mirror behind a private address is a real need; the operator names it).
//!
//! A CIDR entry of a policy is not affected: an operator who writes `10.1.2.3/32`
//! means it.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

const fn net(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> (Ipv4Addr, u8) {
    (Ipv4Addr::new(a, b, c, d), prefix)
}

/// Never opened by an answer, whatever the config says.
const NEVER: [(Ipv4Addr, u8); 5] = [
    net(0, 0, 0, 0, 8),
    net(127, 0, 0, 0, 8),
    net(169, 254, 0, 0, 16),
    net(224, 0, 0, 0, 4),
    net(240, 0, 0, 0, 4),
];

/// Opened by an answer only inside a `resolved_private_allow` network.
const PRIVATE: [(Ipv4Addr, u8); 6] = [
    net(10, 0, 0, 0, 8),
    net(172, 16, 0, 0, 12),
    net(192, 168, 0, 0, 16),
    net(100, 64, 0, 0, 10),
    net(192, 0, 0, 0, 24),
    net(198, 18, 0, 0, 15),
];

fn within(addr: Ipv4Addr, ranges: &[(Ipv4Addr, u8)]) -> bool {
    ranges
        .iter()
        .any(|(base, prefix)| Ipv4Net::new(*base, *prefix).is_ok_and(|n| n.contains(&addr)))
}

/// Whether an answer's `addr` may be admitted into a sandbox's allow set: not in the
/// host's `subnet`, not in a range that is never admitted, and either public or in one
/// of the `permitted` private networks.
pub fn admissible(addr: Ipv4Addr, subnet: Ipv4Net, permitted: &[Ipv4Net]) -> bool {
    if subnet.trunc().contains(&addr) || within(addr, &NEVER) {
        return false;
    }
    !within(addr, &PRIVATE) || permitted.iter().any(|p| p.contains(&addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    #[test]
    fn only_public_addresses_by_default() {
        let subnet: Ipv4Net = "192.168.122.1/24".parse().expect("net");
        for bad in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "192.168.122.1",
            "192.168.122.77",
            "10.99.71.2",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.169.254",
            "224.0.0.251",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "198.18.0.1",
        ] {
            assert!(
                !admissible(ip(bad), subnet, &[]),
                "{bad} must not be admitted"
            );
        }
        for good in [
            "93.184.216.34",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "8.8.8.8",
        ] {
            assert!(admissible(ip(good), subnet, &[]), "{good} is public");
        }
    }

    #[test]
    fn permitted_private_networks_but_never_the_host_subnet_or_loopback() {
        let subnet: Ipv4Net = "192.168.122.1/24".parse().expect("net");
        let permitted: Vec<Ipv4Net> = vec![
            "10.99.0.0/16".parse().expect("net"),
            "192.168.0.0/16".parse().expect("net"),
            "127.0.0.0/8".parse().expect("net"),
        ];
        assert!(admissible(ip("10.99.71.2"), subnet, &permitted));
        assert!(admissible(ip("192.168.1.5"), subnet, &permitted));
        assert!(!admissible(ip("10.98.0.1"), subnet, &permitted));
        assert!(
            !admissible(ip("192.168.122.5"), subnet, &permitted),
            "host subnet"
        );
        assert!(!admissible(ip("127.0.0.1"), subnet, &permitted), "loopback");
    }
}
