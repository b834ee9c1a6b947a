//! The firewall against the fake kernel: when it applies, what it re-applies, and how
//! resolved addresses get in.

use std::net::IpAddr;

use super::*;
use crate::network::allow::parse_rule;
use crate::network::nft::recording::RecordingNft;
use crate::network::test_settings;
use crate::state::test_record;

fn setup() -> (Firewall, Arc<RecordingNft>) {
    let nft = Arc::new(RecordingNft::default());
    (Firewall::new(test_settings(), nft.clone()), nft)
}

fn record(sid: &str, mac: &str, allow: &[&str]) -> SandboxRecord {
    let mut r = test_record(sid, sid);
    r.mac = mac.into();
    r.egress = EgressPolicy::new(allow.iter().map(|l| parse_rule(l).expect("rule")).collect())
        .expect("policy");
    r
}

const IP: Ipv4Addr = Ipv4Addr::new(192, 168, 122, 10);

fn addr(s: &str) -> IpAddr {
    s.parse().expect("address")
}

#[tokio::test]
async fn applies_only_what_changed() {
    let (fw, nft) = setup();
    let r = record("SBX-aaaaaaaa", "52:54:00:00:00:0a", &[]);
    fw.upsert(&r);
    assert!(!fw.is_current());
    fw.sync().await.expect("sync");
    assert!(fw.is_current());
    assert_eq!(nft.applied(), 1);
    fw.upsert(&r);
    fw.sync().await.expect("nothing to do");
    assert_eq!(nft.applied(), 1);
    assert!(fw.set_ip(&r.id, Some(IP)));
    assert!(!fw.set_ip(&r.id, Some(IP)));
    fw.sync().await.expect("sync");
    assert_eq!(nft.applied(), 2);
    assert!(nft.last_batch().contains("192.168.122.10"));
    assert!(fw.remove(&r.id));
    assert!(!fw.remove(&r.id));
    fw.sync().await.expect("sync");
    assert!(!nft.last_batch().contains("aaaaaaaa"));
}

#[tokio::test]
async fn a_failed_apply_is_retried_by_the_check() {
    let (fw, nft) = setup();
    fw.upsert(&record("SBX-aaaaaaaa", "52:54:00:00:00:0a", &[]));
    nft.lock().fail = true;
    let e = fw.sync().await.expect_err("refused");
    assert!(e.to_string().contains("refused"), "{e}");
    assert!(!fw.is_current());
    nft.lock().fail = false;
    assert!(fw.check().await.expect("check"), "re-applied");
    assert!(fw.is_current());
    assert!(!fw.check().await.expect("check"), "nothing to do");
}

#[tokio::test]
async fn deleted_or_changed_tables_are_restored() {
    let (fw, nft) = setup();
    fw.upsert(&record("SBX-aaaaaaaa", "52:54:00:00:00:0a", &[]));
    fw.apply().await.expect("apply");
    assert!(!fw.check().await.expect("check"));
    nft.delete_tables();
    assert!(fw.check().await.expect("check"), "missing tables");
    assert!(!fw.check().await.expect("check"));
    // Someone adds a chain to our inet table.
    nft.lock()
        .tables
        .entry(("inet".into(), "fluid_kvm_1".into()))
        .or_default()
        .push(serde_json::json!({"chain": {"name": "intruder"}}));
    assert!(fw.check().await.expect("check"), "changed table");
    assert!(!fw.check().await.expect("check"));
}

#[tokio::test]
async fn resolved_addresses_of_allowed_domains_get_in() {
    let (fw, nft) = setup();
    let r = record(
        "SBX-aaaaaaaa",
        "52:54:00:00:00:0a",
        &["example.org tcp/443", "10.1.0.0/16"],
    );
    fw.upsert(&r);
    fw.set_ip(&r.id, Some(IP));
    fw.sync().await.expect("sync");
    let applied = nft.applied();
    let ttl = Duration::from_secs(5);
    // Not the sandbox's domain, not a sandbox, no IPv4 address: nothing to add.
    for (client, name, addrs) in [
        (IP, "other.org", vec![addr("192.0.2.1")]),
        (
            Ipv4Addr::new(192, 168, 122, 99),
            "example.org",
            vec![addr("192.0.2.1")],
        ),
        (IP, "example.org", vec![addr("2001:db8::1")]),
    ] {
        assert!(
            !fw.allow_resolved(client, name, &addrs, ttl)
                .await
                .expect("ok")
        );
    }
    assert_eq!(nft.applied(), applied);
    // The sandbox's domain, any case, trailing dot: an incremental batch.
    let added = fw
        .allow_resolved(
            IP,
            "Example.ORG.",
            &[addr("192.0.2.1"), addr("2001:db8::1")],
            ttl,
        )
        .await
        .expect("ok");
    assert!(added);
    assert_eq!(nft.applied(), applied + 1);
    let batch = nft.last_batch();
    // example.org sorts after the host's deb.debian.org: set 1. TTL 5 s → 30 s.
    assert!(batch.contains(r#""name":"d_aaaaaaaa_1""#), "{batch}");
    assert!(batch.contains(r#""timeout":30"#), "{batch}");
    assert!(
        !batch.contains("delete\":{\"table"),
        "not a rebuild: {batch}"
    );
    // The host-wide domain works too.
    assert!(
        fw.allow_resolved(IP, "deb.debian.org", &[addr("192.0.2.9")], ttl)
            .await
            .expect("ok")
    );
    assert_eq!(
        fw.resolved(&r.id),
        vec![
            (
                "deb.debian.org".to_owned(),
                vec![Ipv4Addr::new(192, 0, 2, 9)]
            ),
            ("example.org".to_owned(), vec![Ipv4Addr::new(192, 0, 2, 1)]),
        ]
    );
    // A rebuild keeps them.
    fw.apply().await.expect("apply");
    let rebuilt = nft.last_batch();
    assert!(
        rebuilt.contains("192.0.2.1") && rebuilt.contains("192.0.2.9"),
        "{rebuilt}"
    );
    // A policy without the domain drops its addresses.
    let mut changed = r.clone();
    changed.egress = EgressPolicy::default();
    fw.upsert(&changed);
    fw.sync().await.expect("sync");
    let rebuilt = nft.last_batch();
    assert!(!rebuilt.contains("192.0.2.1"), "{rebuilt}");
    assert!(rebuilt.contains("192.0.2.9"), "{rebuilt}");
}

#[tokio::test]
async fn a_failed_incremental_add_falls_back_to_a_rebuild() {
    let (fw, nft) = setup();
    let r = record("SBX-aaaaaaaa", "52:54:00:00:00:0a", &["example.org"]);
    fw.upsert(&r);
    fw.set_ip(&r.id, Some(IP));
    // The last apply failed: the tables are behind, so the add is a rebuild.
    nft.lock().fail = true;
    assert!(fw.sync().await.is_err());
    nft.lock().fail = false;
    assert!(
        fw.allow_resolved(
            IP,
            "example.org",
            &[addr("192.0.2.1")],
            Duration::from_secs(60)
        )
        .await
        .expect("ok")
    );
    assert!(fw.is_current());
    let batch = nft.last_batch();
    assert!(
        batch.contains("delete\":{\"table") && batch.contains("192.0.2.1"),
        "{batch}"
    );
}

#[tokio::test]
async fn a_disabled_firewall_never_runs_nft() {
    let fw = Firewall::disabled();
    let r = record("SBX-aaaaaaaa", "52:54:00:00:00:0a", &["example.org"]);
    fw.upsert(&r);
    fw.set_ip(&r.id, Some(IP));
    fw.sync().await.expect("sync");
    fw.apply().await.expect("apply");
    assert!(fw.is_current());
    assert!(!fw.check().await.expect("check"));
    assert!(
        !fw.allow_resolved(
            IP,
            "example.org",
            &[addr("192.0.2.1")],
            Duration::from_secs(60)
        )
        .await
        .expect("ok")
    );
}

#[tokio::test]
async fn the_dns_sink_reaches_the_firewall() {
    use crate::network::dns::ResolvedSink;
    let (fw, nft) = setup();
    let r = record("SBX-aaaaaaaa", "52:54:00:00:00:0a", &["example.org"]);
    fw.upsert(&r);
    fw.set_ip(&r.id, Some(IP));
    fw.sync().await.expect("sync");
    let sink: Arc<dyn ResolvedSink> = Arc::new(fw);
    sink.allow_resolved(
        IP,
        "example.org",
        &[addr("192.0.2.1")],
        Duration::from_secs(1),
    )
    .await
    .expect("ok");
    assert!(nft.last_batch().contains("192.0.2.1"));
}

#[tokio::test]
async fn only_the_sandboxs_own_and_the_hosts_names_may_be_resolved() {
    let (fw, _nft) = setup();
    let a = record(
        "SBX-aaaaaaaa",
        "52:54:00:00:00:0a",
        &["example.org tcp/443"],
    );
    let b = record("SBX-bbbbbbbb", "52:54:00:00:00:0b", &["other.org"]);
    fw.upsert(&a);
    fw.upsert(&b);
    fw.set_ip(&a.id, Some(IP));
    assert!(fw.may_resolve(IP, "example.org"));
    assert!(fw.may_resolve(IP, "Example.ORG."));
    assert!(
        fw.may_resolve(IP, "deb.debian.org"),
        "the host's always_allow"
    );
    assert!(!fw.may_resolve(IP, "other.org"), "b's name, not a's");
    assert!(!fw.may_resolve(IP, "www.example.org"), "exact names only");
    assert!(!fw.may_resolve(IP, "x.attacker.test"));
    // b has no address yet; an unknown client resolves nothing.
    assert!(!fw.may_resolve(Ipv4Addr::new(192, 168, 122, 99), "other.org"));
    assert!(!Firewall::disabled().may_resolve(IP, "example.org"));
}

#[tokio::test]
async fn answers_never_open_private_loopback_or_host_subnet_addresses() {
    let (fw, nft) = setup();
    let r = record("SBX-aaaaaaaa", "52:54:00:00:00:0a", &["example.org"]);
    fw.upsert(&r);
    fw.set_ip(&r.id, Some(IP));
    fw.sync().await.expect("sync");
    let applied = nft.applied();
    let ttl = Duration::from_secs(60);
    for bad in [
        "127.0.0.1",
        "192.168.122.1",
        "192.168.122.11",
        "10.0.0.5",
        "169.254.169.254",
        "100.64.1.1",
        "224.0.0.1",
        "255.255.255.255",
        "0.0.0.0",
    ] {
        assert!(
            !fw.allow_resolved(IP, "example.org", &[addr(bad)], ttl)
                .await
                .expect("ok"),
            "{bad} admitted"
        );
    }
    assert_eq!(nft.applied(), applied, "nothing applied");
    // A mixed answer: only the public address gets in.
    assert!(
        fw.allow_resolved(
            IP,
            "example.org",
            &[addr("127.0.0.1"), addr("192.0.2.1")],
            ttl
        )
        .await
        .expect("ok")
    );
    let batch = nft.last_batch();
    assert!(
        batch.contains("192.0.2.1") && !batch.contains("127.0.0.1"),
        "{batch}"
    );

    // A private network the operator permits is admitted; the host subnet never.
    let nft = Arc::new(RecordingNft::default());
    let settings = NetworkSettings {
        resolved_private_allow: vec![
            "10.99.0.0/16".parse().expect("net"),
            "192.168.0.0/16".parse().expect("net"),
        ],
        ..test_settings()
    };
    let fw = Firewall::new(settings, nft.clone());
    fw.upsert(&r);
    fw.set_ip(&r.id, Some(IP));
    fw.sync().await.expect("sync");
    assert!(
        fw.allow_resolved(IP, "example.org", &[addr("10.99.71.2")], ttl)
            .await
            .expect("ok")
    );
    assert!(
        !fw.allow_resolved(IP, "example.org", &[addr("192.168.122.1")], ttl)
            .await
            .expect("ok")
    );
}

#[tokio::test]
async fn the_first_apply_removes_the_boot_deny_and_only_the_first() {
    let (fw, nft) = setup();
    let boot = ("bridge".to_owned(), ruleset::BOOT_TABLE.to_owned());
    // After a reboot the package's unit has loaded its table before the agent starts.
    let boot_deny = || vec![serde_json::json!({"chain": {"name": "prerouting"}})];
    nft.lock().tables.insert(boot.clone(), boot_deny());
    fw.upsert(&record("SBX-aaaaaaaa", "52:54:00:00:00:0a", &[]));
    // An apply that fails leaves it: the sandboxes stay cut off, not unfiltered.
    nft.lock().fail = true;
    fw.apply().await.expect_err("refused");
    assert!(nft.lock().tables.contains_key(&boot));
    nft.lock().fail = false;
    fw.apply().await.expect("apply");
    assert!(
        !nft.lock().tables.contains_key(&boot),
        "the boot table is gone"
    );
    let batch = nft.last_batch();
    // Gone in the batch that applied the agent's tables, after them.
    let agent_tables = batch.find(r#""name":"fluid_kvm_1""#).expect("own tables");
    let boot_delete = batch
        .find(r#"{"delete":{"table":{"family":"bridge","name":"fluid-boot"}}}"#)
        .expect("boot table deleted");
    assert!(agent_tables < boot_delete);
    // Later applies leave the table alone (someone who loads it again means it).
    nft.lock().tables.insert(boot.clone(), boot_deny());
    fw.apply().await.expect("apply");
    assert!(!nft.last_batch().contains("fluid-boot"));
    assert!(nft.lock().tables.contains_key(&boot));
}

#[tokio::test]
async fn resolved_addresses_stay_at_least_resolved_min() {
    let nft = Arc::new(RecordingNft::default());
    let settings = NetworkSettings {
        resolved_min: Duration::from_secs(3),
        ..test_settings()
    };
    let fw = Firewall::new(settings, nft.clone());
    let r = record("SBX-aaaaaaaa", "52:54:00:00:00:0a", &["example.org tcp/80"]);
    fw.upsert(&r);
    fw.set_ip(&r.id, Some(IP));
    fw.sync().await.expect("sync");
    for (ttl, timeout) in [(1, 3), (7, 7)] {
        assert!(
            fw.allow_resolved(
                IP,
                "example.org",
                &[addr("192.0.2.1")],
                Duration::from_secs(ttl)
            )
            .await
            .expect("ok")
        );
        let batch = nft.last_batch();
        assert!(
            batch.contains(&format!(r#""timeout":{timeout}"#)),
            "{batch}"
        );
    }
}
