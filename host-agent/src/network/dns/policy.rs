//! What the proxy asks upstream at all, and how much of it one sandbox may use.
//!
//! The proxy is not a resolver for sandboxes in general: it answers only the names a
//! sandbox's policy (or the host's `always_allow`) names, and only with the record
//! types a connection needs. Everything else is REFUSED by the proxy itself, so no
//! query leaves the host for it: a sealed sandbox cannot tunnel data out through
//! `<data>.attacker.example`, nor learn a neighbour's address from the host's resolver.
//!
//! Per-sandbox caps keep one sandbox from holding every query slot or TCP connection
//! of the proxy (which would deny DNS to the others).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use hickory_proto::rr::{DNSClass, RecordType};

/// The record types a sandbox may ask for an allowed name: addresses (IPv4 and IPv6;
/// glibc asks both at once) and CNAME. TXT, MX, ANY, SRV, NULL, HTTPS, … carry data
/// (a tunnel's usual carriers) and no connection needs them: REFUSED.
pub fn allowed_type(qtype: RecordType, qclass: DNSClass) -> bool {
    qclass == DNSClass::IN && matches!(qtype, RecordType::A | RecordType::AAAA | RecordType::CNAME)
}

/// Per-sandbox limits of the proxy (`[network] dns_max_in_flight_per_sandbox`,
/// `dns_max_tcp_per_sandbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxCaps {
    /// Queries of one sandbox (by source address) being answered at once; beyond
    /// that its UDP queries are dropped (the client retries).
    pub in_flight: usize,
    /// TCP connections one sandbox may hold open; beyond that new ones are closed.
    pub tcp_connections: usize,
}

impl Default for SandboxCaps {
    fn default() -> Self {
        Self {
            in_flight: 32,
            tcp_connections: 4,
        }
    }
}

/// Counts what each client holds; a [`ClientPermit`] gives its unit back on drop.
#[derive(Debug, Default)]
pub struct PerClient {
    held: Mutex<HashMap<IpAddr, usize>>,
}

impl PerClient {
    /// One unit for `client` if it holds fewer than `max`.
    pub fn try_acquire(self: &Arc<Self>, client: IpAddr, max: usize) -> Option<ClientPermit> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(client).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ClientPermit {
            owner: Arc::clone(self),
            client,
        })
    }

    #[cfg(test)]
    pub fn held(&self, client: IpAddr) -> usize {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(&client).copied().unwrap_or(0)
    }
}

/// One unit a client holds (a query in flight or a TCP connection).
#[derive(Debug)]
pub struct ClientPermit {
    owner: Arc<PerClient>,
    client: IpAddr,
}

impl Drop for ClientPermit {
    fn drop(&mut self) {
        let mut held = self.owner.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_address_and_cname_queries_of_class_in() {
        for t in [RecordType::A, RecordType::AAAA, RecordType::CNAME] {
            assert!(allowed_type(t, DNSClass::IN), "{t}");
            assert!(!allowed_type(t, DNSClass::CH), "{t} CH");
        }
        for t in [
            RecordType::TXT,
            RecordType::ANY,
            RecordType::MX,
            RecordType::NULL,
            RecordType::SRV,
            RecordType::HTTPS,
            RecordType::PTR,
            RecordType::AXFR,
        ] {
            assert!(!allowed_type(t, DNSClass::IN), "{t}");
        }
    }

    #[test]
    fn permits_are_counted_per_client_and_given_back() {
        let per = Arc::new(PerClient::default());
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = per.try_acquire(a, 2).expect("1");
        let second = per.try_acquire(a, 2).expect("2");
        assert!(per.try_acquire(a, 2).is_none(), "a is at its cap");
        assert!(per.try_acquire(b, 2).is_some(), "b is not limited by a");
        drop(first);
        assert_eq!(per.held(a), 1);
        let _third = per.try_acquire(a, 2).expect("a slot came back");
        drop(second);
        assert_eq!(per.held(b), 0);
    }
}
