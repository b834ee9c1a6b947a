//! The sandbox life as the firewall sees it (fake hypervisor, fake kernel).

use std::time::Duration;

use fluid_proto::model::{EgressPolicy, ObservedState, StopSandbox, WaitForIp};

use super::*;
use crate::network::allow::parse_rule;
use crate::sandboxes::tests::{env, id, req};

fn policy(lines: &[&str]) -> EgressPolicy {
    EgressPolicy::new(lines.iter().map(|l| parse_rule(l).expect("rule")).collect()).expect("policy")
}

fn wait(sid: &str) -> WaitForIp {
    WaitForIp {
        id: id(sid),
        timeout_seconds: 1,
    }
}

#[tokio::test]
async fn a_sandbox_is_in_the_rules_from_create_to_destroy() {
    let e = env().await;
    let mut r = req("SBX-aaaaaaaa11", "a", true);
    r.egress = policy(&["203.0.113.0/24 tcp/443"]);
    let v = e.s.create(r).await.expect("create");
    let batch = e.nft.last_batch();
    assert!(batch.contains("\"fxaaaaaaaa11\""), "tap: {batch}");
    assert!(batch.contains(&v.record.mac), "mac: {batch}");
    assert!(
        batch.contains("203.0.113.0"),
        "policy from the create: {batch}"
    );
    let reserved = v.record.static_ip.expect("a reserved address").to_string();
    assert!(
        !batch.contains(&format!("\"{reserved}\"")),
        "no address before the lease is known"
    );
    assert_eq!(v.record.egress.allow.len(), 1);

    // wait_for_ip returns the lease only once the rules admit it.
    let ip = e.s.wait_for_ip(wait("SBX-aaaaaaaa11")).await.expect("ip");
    assert!(e.nft.last_batch().contains(&ip.to_string()));
    assert!(e.s.firewall.is_current());
    let rec =
        e.s.store
            .get(&id("SBX-aaaaaaaa11"))
            .await
            .expect("get")
            .expect("record");
    assert_eq!(rec.known_ip, Some(ip));

    // A stop withdraws the address.
    let stop = StopSandbox {
        id: id("SBX-aaaaaaaa11"),
        force: true,
        timeout_seconds: None,
    };
    assert_eq!(
        e.s.stop(stop).await.expect("stop").state,
        ObservedState::Stopped
    );
    assert!(!e.nft.last_batch().contains(&ip.to_string()));
    let rec =
        e.s.store
            .get(&id("SBX-aaaaaaaa11"))
            .await
            .expect("get")
            .expect("record");
    assert_eq!(rec.known_ip, None);

    assert!(e.s.destroy(&id("SBX-aaaaaaaa11")).await.expect("destroy"));
    let batch = e.nft.last_batch();
    assert!(!batch.contains("aaaaaaaa11"), "{batch}");
    assert!(!batch.contains(&v.record.mac), "{batch}");
}

#[tokio::test]
async fn no_rules_no_sandbox() {
    let e = env().await;
    e.nft.lock().fail = true;
    let err =
        e.s.create(req("SBX-aaaaaaaa", "a", true))
            .await
            .expect_err("refused");
    assert!(matches!(err, ServiceError::Unavailable(_)), "{err:?}");
    assert_eq!(e.hv.lock().defines, 0, "no domain without its rules");
    assert!(
        e.s.store
            .get(&id("SBX-aaaaaaaa"))
            .await
            .expect("get")
            .is_none()
    );
    assert!(!e.s.overlays.path_for(&id("SBX-aaaaaaaa")).exists());
    e.nft.lock().fail = false;
    e.s.create(req("SBX-aaaaaaaa", "a", true))
        .await
        .expect("create");
}

#[tokio::test]
async fn tap_name_clashes_are_refused() {
    let e = env().await;
    e.s.create(req("SBX-abcdefghij1", "a", false))
        .await
        .expect("create");
    let err =
        e.s.create(req("SBX-abcdefghij2", "b", false))
            .await
            .expect_err("same tap");
    assert!(matches!(err, ServiceError::AlreadyExists(_)), "{err:?}");
    assert!(err.to_string().contains("fxabcdefghij"), "{err}");
}

#[tokio::test]
async fn egress_policies_are_stored_applied_and_read_back() {
    let e = env().await;
    let err =
        e.s.set_egress_policy(SetEgressPolicy {
            sandbox_id: id("SBX-nothere1"),
            policy: EgressPolicy::default(),
        })
        .await
        .expect_err("unknown");
    assert!(matches!(err, ServiceError::NotFound(_)), "{err:?}");

    e.s.create(req("SBX-aaaaaaaa", "a", false))
        .await
        .expect("create");
    let set = SetEgressPolicy {
        sandbox_id: id("SBX-aaaaaaaa"),
        policy: policy(&["example.org tcp/443", "10.0.0.0/8"]),
    };
    let state = e.s.set_egress_policy(set.clone()).await.expect("set");
    assert_eq!(state.policy, set.policy);
    // Both the host's and the sandbox's domains are listed, nothing resolved yet.
    assert_eq!(
        state.resolved,
        vec![
            ("deb.debian.org".to_owned(), vec![]),
            ("example.org".to_owned(), vec![]),
        ]
    );
    let applied = e.nft.applied();
    assert!(e.nft.last_batch().contains("10.0.0.0"));
    // Setting it again changes nothing.
    e.s.set_egress_policy(set.clone()).await.expect("again");
    assert_eq!(e.nft.applied(), applied);
    let rec =
        e.s.store
            .get(&id("SBX-aaaaaaaa"))
            .await
            .expect("get")
            .expect("record");
    assert_eq!(rec.egress, set.policy);
    assert_eq!(
        e.s.egress_policy(&id("SBX-aaaaaaaa"))
            .await
            .expect("get")
            .policy,
        set.policy
    );
    // Empty again: sealed.
    e.s.set_egress_policy(SetEgressPolicy {
        sandbox_id: id("SBX-aaaaaaaa"),
        policy: EgressPolicy::default(),
    })
    .await
    .expect("clear");
    assert!(!e.nft.last_batch().contains("10.0.0.0"));
}

#[tokio::test]
async fn addresses_are_learned_from_leases_and_restored_at_start() {
    let e = env().await;
    let s = Arc::new(e.s);
    s.create(req("SBX-aaaaaaaa", "a", true))
        .await
        .expect("create");
    assert_eq!(s.learn_ips().await.expect("learn"), 1);
    assert_eq!(s.learn_ips().await.expect("learn"), 0);
    let ip = s.firewall.members()[0].2.expect("learned");
    assert!(e.nft.last_batch().contains(&ip.to_string()));
    // The record follows in the background.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let rec = s
            .store
            .get(&id("SBX-aaaaaaaa"))
            .await
            .expect("get")
            .expect("record");
        if rec.known_ip == Some(ip) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "known_ip not saved");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A restarted agent starts from the records.
    e.nft.delete_tables();
    s.firewall.load(&[]);
    s.restore_network().await.expect("restore");
    let batch = e.nft.last_batch();
    assert!(
        batch.contains(&ip.to_string()) && batch.contains("fxaaaaaaaa"),
        "{batch}"
    );
}

#[tokio::test]
async fn each_sandbox_gets_a_static_lease_from_create_to_destroy() {
    use crate::hypervisor::{DhcpHost, Hypervisor};
    let e = env().await;
    let a =
        e.s.create(req("SBX-aaaaaaaa21", "a", true))
            .await
            .expect("create a");
    let b =
        e.s.create(req("SBX-bbbbbbbb21", "b", true))
            .await
            .expect("create b");
    let (ip_a, ip_b) = (
        a.record.static_ip.expect("a reserved"),
        b.record.static_ip.expect("b reserved"),
    );
    assert_ne!(ip_a, ip_b);
    assert_eq!(
        e.hv.lock().dhcp_hosts,
        vec![
            DhcpHost {
                mac: a.record.mac.clone(),
                ip: ip_a
            },
            DhcpHost {
                mac: b.record.mac.clone(),
                ip: ip_b
            },
        ]
    );
    // Persisted in redb.
    let stored =
        e.s.store
            .get(&id("SBX-aaaaaaaa21"))
            .await
            .expect("get")
            .expect("record");
    assert_eq!(stored.static_ip, Some(ip_a));
    // The guest's DHCP gets the reserved address, and wait_for_ip returns it.
    assert_eq!(
        e.s.wait_for_ip(wait("SBX-aaaaaaaa21")).await.expect("ip"),
        ip_a
    );
    // A lease with another address for a's MAC (not what dnsmasq gives it) is ignored.
    {
        let mut st = e.hv.lock();
        st.leases.retain(|l| l.mac != b.record.mac);
        st.leases.push(crate::hypervisor::Lease {
            mac: b.record.mac.clone(),
            ip: ip_a,
        });
    }
    assert!(e.s.wait_for_ip(wait("SBX-bbbbbbbb21")).await.is_err());
    // An address in use is never picked again; destroy gives it back.
    e.s.destroy(&id("SBX-aaaaaaaa21")).await.expect("destroy");
    assert_eq!(
        e.hv.network_info("default").await.expect("info").dhcp_hosts,
        vec![DhcpHost {
            mac: b.record.mac.clone(),
            ip: ip_b
        }]
    );
}
