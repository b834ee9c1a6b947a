//! What heartbeats report beside capacity, run against SQLite and PostgreSQL like
//! [`super::tests`]: the warm pool (column `pools`: what a beat stores is what the host
//! reads back, and a value the store cannot read is no pool rather than an error) and
//! whether the host is simulated.

use std::sync::Arc;

use chrono::Utc;
use fluid_proto::model::PoolStatus;

use super::tests_trust::{Raw, both};
use super::*;

both!(
    pools_round_trip,
    unreadable_pools_read_as_none,
    a_simulated_host_is_read_back_as_one
);

fn beat_with(pools: Vec<PoolStatus>) -> Beat {
    Beat {
        cpus_total: 8,
        memory_mb_total: 16384,
        images: vec!["debian-12".into(), "ubuntu".into()],
        agent_version: "0.1.0".into(),
        ssh_public_key: None,
        pools,
        simulated: false,
        at: Utc::now(),
    }
}

async fn get(s: &dyn Store) -> HostRecord {
    s.get_host("h1").await.expect("get").expect("h1 exists")
}

async fn pools_round_trip(store: Arc<dyn Store>, _raw: &Raw) {
    let s = &*store;
    s.upsert_host("h1", "h1:7443").await.expect("host");
    assert!(get(s).await.pools.is_empty(), "none before a beat");
    let pools = vec![
        PoolStatus {
            image: "debian-12".into(),
            cpus: 1,
            memory_mb: 512,
            size: 2,
            ready: 1,
            filling: 1,
            hits: 7,
            misses: u64::MAX,
        },
        PoolStatus {
            image: "ubuntu".into(),
            cpus: 4,
            memory_mb: 8192,
            size: 1,
            ready: 0,
            filling: 0,
            hits: 0,
            misses: 0,
        },
    ];
    s.record_beat("h1", &beat_with(pools.clone()))
        .await
        .expect("beat");
    assert_eq!(get(s).await.pools, pools);
    let listed = s.list_hosts().await.expect("list");
    assert_eq!(listed[0].pools, pools);
    // A beat without a pool clears it.
    s.record_beat("h1", &beat_with(vec![])).await.expect("beat");
    assert!(get(s).await.pools.is_empty());
    assert!(s.list_hosts().await.expect("list")[0].pools.is_empty());
}

async fn a_simulated_host_is_read_back_as_one(store: Arc<dyn Store>, _raw: &Raw) {
    let s = &*store;
    s.upsert_host("h1", "h1:7443").await.expect("host");
    assert!(
        !get(s).await.simulated,
        "a host is real until a beat says otherwise"
    );
    let simulated = Beat {
        simulated: true,
        ..beat_with(vec![])
    };
    s.record_beat("h1", &simulated).await.expect("beat");
    assert!(get(s).await.simulated);
    assert!(s.list_hosts().await.expect("list")[0].simulated);
    s.record_beat("h1", &beat_with(vec![])).await.expect("beat");
    assert!(!get(s).await.simulated, "each beat says it again");
}

async fn unreadable_pools_read_as_none(store: Arc<dyn Store>, raw: &Raw) {
    let s = &*store;
    s.upsert_host("h1", "h1:7443").await.expect("host");
    s.record_beat("h1", &beat_with(vec![])).await.expect("beat");
    let table = match raw {
        Raw::Sqlite(_) => "hosts".to_owned(),
        Raw::Pg { schema, .. } => format!("{schema}.hosts"),
    };
    for bad in ["not json", r#"{"image": 1}"#, r#"[{"image": "x"}]"#, "null"] {
        let n = raw
            .exec(format!(
                "UPDATE {table} SET pools = '{bad}' WHERE name = 'h1'"
            ))
            .await
            .expect("hand edit");
        assert_eq!(n, 1);
        assert!(get(s).await.pools.is_empty(), "{bad}");
        let listed = s.list_hosts().await.expect("a bad value fails no listing");
        assert!(listed[0].pools.is_empty(), "{bad}");
    }
}
