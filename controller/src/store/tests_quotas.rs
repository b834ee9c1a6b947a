//! `[quotas] sandboxes_per_agent` in the reservation, run against SQLite and
//! PostgreSQL like [`super::tests`]: concurrent creates of one owner never pass its
//! quota, other owners are not counted against it, and a destroyed sandbox frees its
//! place.

use std::collections::HashMap;
use std::sync::Arc;

use fluid_client::types::SandboxState;

use super::tests::{beat, reservation};
use super::tests_trust::{Raw, both};
use super::*;

both!(concurrent_reservations_keep_an_owners_quota);

async fn concurrent_reservations_keep_an_owners_quota(store: Arc<dyn Store>, _raw: &Raw) {
    store.upsert_host("h1", "h1:7443").await.expect("host");
    store.upsert_host("h2", "h2:7443").await.expect("host");
    for h in ["h1", "h2"] {
        beat(&*store, h, 64, 65536, &["debian-12"]).await;
    }
    // 40 creates at once on two hosts, owners "even" and "odd" (20 each), 3 each allowed.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let host = if i % 4 < 2 { "h1" } else { "h2" };
            let r = Reservation {
                max_owned: Some(3),
                ..reservation(i, host, 1, 256)
            };
            (r.agent_id.clone(), store.reserve(&r).await)
        }));
    }
    let mut ok: HashMap<String, usize> = HashMap::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.expect("join") {
            (owner, Ok(_)) => *ok.entry(owner).or_default() += 1,
            (_, Err(ReserveError::Quota(m))) => {
                assert!(m.contains("quotas.sandboxes_per_agent = 3"), "{m}");
                refused += 1;
            }
            (_, Err(e)) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!((ok["even"], ok["odd"], refused), (3, 3, 34));
    // A destroyed sandbox frees its owner's place.
    let (mine, _) = store
        .list_sandboxes(&SandboxFilter {
            agent_id: Some("even".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("list");
    store
        .update_sandbox(
            &mine[0].id,
            &SandboxUpdate {
                state: Some(SandboxState::Destroyed),
                ..Default::default()
            },
            chrono::Utc::now(),
        )
        .await
        .expect("destroy");
    let again = Reservation {
        max_owned: Some(3),
        ..reservation(100, "h1", 1, 256)
    };
    store.reserve(&again).await.expect("a place again");
    let over = Reservation {
        max_owned: Some(3),
        ..reservation(102, "h1", 1, 256)
    };
    assert!(matches!(
        store.reserve(&over).await,
        Err(ReserveError::Quota(_))
    ));
}

/// SQLite's audited writes commit on their own one-connection pool and reads go to the
/// shared pool: a reservation is seen by the very next read (the scheduler's usage),
/// also while heartbeats write on the shared pool beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reads_see_the_writer_pools_commits_at_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let store: Arc<dyn Store> = super::tests::sqlite(&dir).await;
    store.upsert_host("h1", "h1:7443").await.expect("host");
    beat(&*store, "h1", 100_000, 1 << 30, &["debian-12"]).await;
    let bg = store.clone();
    let beats = tokio::spawn(async move {
        for _ in 0..1000 {
            beat(&*bg, "h1", 100_000, 1 << 30, &["debian-12"]).await;
        }
    });
    for i in 0..500 {
        store
            .reserve(&reservation(i, "h1", 1, 1))
            .await
            .expect("reserve");
        let u = store.host_usage().await.expect("usage");
        assert_eq!(u["h1"].sandboxes, i as u64 + 1, "stale read after {i}");
    }
    beats.abort();
}
