//! Sandboxes' egress allow-lists, run against SQLite and PostgreSQL like
//! [`super::tests`].

use std::sync::Arc;

use fluid_client::types::SandboxState;

use super::tests::{beat, reservation};
use super::*;

macro_rules! both {
    ($($suite:ident),* $(,)?) => {$(
        mod $suite {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().expect("tmp");
                super::$suite(super::super::tests::sqlite(&dir).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(pg) = super::super::tests::pg().await else { return };
                super::$suite(pg.store.clone()).await;
                pg.cleanup().await;
            }
        }
    )*};
}

both!(
    egress_is_compare_and_set_and_audited,
    egress_of_a_hosts_settled_sandboxes
);

fn event(id: &str) -> NewAuditEvent {
    NewAuditEvent::system("network", "set", "stored")
        .sandbox(id)
        .details(serde_json::json!({"test": true}))
}

async fn egress_is_compare_and_set_and_audited(store: Arc<dyn Store>) {
    let s = &*store;
    s.upsert_host("h1", "h1:7443").await.expect("host");
    beat(s, "h1", 8, 8192, &["debian-12"]).await;
    let r = reservation(1, "h1", 1, 256);
    s.reserve(&r).await.expect("reserve");
    assert_eq!(
        s.get_egress(&r.id).await.expect("get").as_deref(),
        Some(EMPTY_EGRESS_JSON)
    );
    assert_eq!(s.get_egress("SBX-nosuch0000").await.expect("get"), None);

    let one = r#"{"allow":[{"domain":"a.example"}]}"#;
    let two = r#"{"allow":[{"domain":"b.example"}]}"#;
    let w = s
        .set_egress(&r.id, one, EMPTY_EGRESS_JSON, &event(&r.id))
        .await
        .expect("set");
    assert_eq!(w, EgressWrite::Written);
    assert_eq!(
        s.get_egress(&r.id).await.expect("get").as_deref(),
        Some(one)
    );
    // A writer that read the old text loses, and learns the current one.
    let w = s
        .set_egress(&r.id, two, EMPTY_EGRESS_JSON, &event(&r.id))
        .await
        .expect("set");
    assert_eq!(w, EgressWrite::Changed(one.to_owned()));
    assert_eq!(
        s.get_egress(&r.id).await.expect("get").as_deref(),
        Some(one)
    );
    let w = s
        .set_egress("SBX-nosuch0000", two, one, &event("SBX-nosuch0000"))
        .await
        .expect("set");
    assert_eq!(w, EgressWrite::NotFound);

    // Only the write that happened is in the trail.
    let events = s
        .list_audit(&AuditFilter {
            kind: Some("network".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("audit");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].sandbox_id.as_deref(), Some(r.id.as_str()));
    // The row itself is untouched otherwise.
    let row = s.get_sandbox(&r.id).await.expect("get").expect("row");
    assert_eq!(row.state, SandboxState::Created);
}

async fn egress_of_a_hosts_settled_sandboxes(store: Arc<dyn Store>) {
    let s = &*store;
    s.upsert_host("h1", "h1:7443").await.expect("host");
    beat(s, "h1", 8, 8192, &["debian-12"]).await;
    let mut ids = Vec::new();
    for (i, state) in [
        SandboxState::Running,
        SandboxState::Stopped,
        SandboxState::Starting,
        SandboxState::Destroyed,
    ]
    .into_iter()
    .enumerate()
    {
        let r = reservation(10 + i, "h1", 1, 256);
        s.reserve(&r).await.expect("reserve");
        s.update_sandbox(
            &r.id,
            &SandboxUpdate {
                state: Some(state),
                ..Default::default()
            },
            chrono::Utc::now(),
        )
        .await
        .expect("update");
        ids.push(r.id);
    }
    let got = s.egress_on_host("h1").await.expect("list");
    assert_eq!(
        got,
        vec![
            (ids[0].clone(), EMPTY_EGRESS_JSON.to_owned()),
            (ids[1].clone(), EMPTY_EGRESS_JSON.to_owned()),
        ]
    );
    assert!(s.egress_on_host("h2").await.expect("list").is_empty());
}
