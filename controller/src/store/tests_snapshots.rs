//! Snapshots and diffs, run against SQLite and PostgreSQL like [`super::tests`].

use std::sync::Arc;

use chrono::{Duration, Utc};

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
    snapshots_are_unique_per_sandbox,
    diffs_are_stored_and_paged,
    commands_between_two_instants
);

fn snapshot(sandbox: &str, name: &str, at: chrono::DateTime<Utc>) -> SnapshotRecord {
    SnapshotRecord {
        id: crate::support::ids::new_id("SNP-"),
        sandbox_id: sandbox.into(),
        name: name.into(),
        kind: "INTERNAL".into(),
        r#ref: format!("h1:{sandbox}@{name}"),
        host_name: "h1".into(),
        memory: true,
        meta_json: r#"{"memory":true,"text":"a\u0000b"}"#.into(),
        created_at: at,
    }
}

async fn two_sandboxes(s: &dyn Store) -> (String, String) {
    s.upsert_host("h1", "h1:7443").await.expect("host");
    beat(s, "h1", 8, 8192, &["debian-12"]).await;
    let a = reservation(1, "h1", 1, 256);
    let b = reservation(2, "h1", 1, 256);
    s.reserve(&a).await.expect("reserve");
    s.reserve(&b).await.expect("reserve");
    (a.id, b.id)
}

async fn snapshots_are_unique_per_sandbox(store: Arc<dyn Store>) {
    let s = &*store;
    let (a, b) = two_sandboxes(s).await;
    let t0 = Utc::now() - Duration::seconds(10);
    let first = snapshot(&a, "before", t0);
    s.insert_snapshot(&first).await.expect("insert");
    s.insert_snapshot(&snapshot(&a, "after", t0 + Duration::seconds(5)))
        .await
        .expect("insert");
    // Same name, other sandbox: fine. Same name, same sandbox: a conflict naming it.
    s.insert_snapshot(&snapshot(&b, "before", t0))
        .await
        .expect("other sandbox");
    let e = s
        .insert_snapshot(&snapshot(&a, "before", t0))
        .await
        .expect_err("duplicate");
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    assert_eq!(e.to_string(), "snapshot before already exists");

    let got = s
        .get_snapshot(&a, "before")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got.id, first.id);
    assert_eq!(got.meta_json, first.meta_json);
    assert!(got.memory);
    assert_eq!(
        got.created_at.timestamp_micros(),
        first.created_at.timestamp_micros()
    );
    assert_eq!(got.to_api().meta_json["memory"], true);
    assert!(s.get_snapshot(&a, "nope").await.expect("get").is_none());

    let names: Vec<String> = s
        .list_snapshots(&a)
        .await
        .expect("list")
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["before", "after"], "oldest first");

    assert!(s.delete_snapshot(&a, "after").await.expect("delete"));
    assert!(!s.delete_snapshot(&a, "after").await.expect("again"));
    assert_eq!(s.delete_sandbox_snapshots(&a).await.expect("all"), 1);
    assert!(s.list_snapshots(&a).await.expect("list").is_empty());
    assert_eq!(s.list_snapshots(&b).await.expect("list").len(), 1);
}

async fn diffs_are_stored_and_paged(store: Arc<dyn Store>) {
    let s = &*store;
    let (a, b) = two_sandboxes(s).await;
    let t0 = Utc::now();
    for i in 0..3 {
        s.insert_diff(&DiffRecord {
            id: format!("DIF-{i:010}"),
            sandbox_id: a.clone(),
            from_snapshot: "before".into(),
            to_snapshot: if i == 0 {
                "now".into()
            } else {
                format!("s{i}")
            },
            diff_json: r#"{"files_added":[]}"#.into(),
            text_diffs_json: r#"[{"path":"/x","unified":"\u0000"}]"#.into(),
            detail_json: "{}".into(),
            created_at: t0 + Duration::seconds(i),
        })
        .await
        .expect("insert");
    }
    let got = s
        .get_diff("DIF-0000000000")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got.to_snapshot, "now");
    assert_eq!(got.text_diffs_json, r#"[{"path":"/x","unified":"\u0000"}]"#);
    assert!(s.get_diff("DIF-nosuch").await.expect("get").is_none());
    let (page, total) = s.list_diffs(&a, 2, 0).await.expect("list");
    assert_eq!(total, 3);
    let ids: Vec<&str> = page.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["DIF-0000000002", "DIF-0000000001"], "newest first");
    let (page, _) = s.list_diffs(&a, 2, 2).await.expect("list");
    assert_eq!(page.len(), 1);
    assert_eq!(s.list_diffs(&b, 10, 0).await.expect("list").1, 0);
    let dup = s.insert_diff(&got).await.expect_err("same id");
    assert!(matches!(dup, StoreError::Conflict(_)), "{dup}");
}

fn command(sandbox: &str, i: i64, at: chrono::DateTime<Utc>) -> CommandRecord {
    CommandRecord {
        id: format!("CMD-{i:010}"),
        sandbox_id: sandbox.into(),
        agent_id: "a".into(),
        kind: "command".into(),
        command: format!("echo {i}"),
        user: "root".into(),
        workdir: None,
        env_json: "{}".into(),
        status: CommandStatus::Completed,
        stdout: String::new(),
        stderr: String::new(),
        exit_code: Some(0),
        timed_out: false,
        truncated: false,
        error: None,
        started_at: at,
        ended_at: Some(at),
        duration_ms: Some(1),
        output_expired: false,
    }
}

async fn commands_between_two_instants(store: Arc<dyn Store>) {
    let s = &*store;
    let (a, b) = two_sandboxes(s).await;
    // Microseconds: what PostgreSQL keeps.
    let t0 = fluid_client::audit_chain::truncate_to_micros(Utc::now() - Duration::seconds(100));
    // Sub-second offsets and whole seconds, to catch text ordering (SQLite).
    let offsets_ms = [0, 500, 1000, 1500, 2000, 2001, 2999, 3000];
    for (i, ms) in offsets_ms.iter().enumerate() {
        let at = t0 + Duration::milliseconds(*ms) + Duration::microseconds(7);
        s.insert_command(&command(&a, i as i64, at))
            .await
            .expect("insert");
    }
    s.insert_command(&command(&b, 99, t0 + Duration::milliseconds(1500)))
        .await
        .expect("other sandbox");
    let from = t0 + Duration::milliseconds(1000);
    let to = t0 + Duration::milliseconds(2999) + Duration::microseconds(7);
    let got: Vec<String> = s
        .commands_between(&a, from, to)
        .await
        .expect("between")
        .into_iter()
        .map(|c| c.command)
        .collect();
    assert_eq!(got, ["echo 2", "echo 3", "echo 4", "echo 5"]);
    assert!(
        s.commands_between(&a, to, from)
            .await
            .expect("empty window")
            .is_empty()
    );
}
