//! The trust tables (API tokens, approvals, the audit chain), run against SQLite and
//! PostgreSQL like [`super::tests`]. Each case also gets raw SQL on the same database,
//! past the store, to play a hand edit. The audit events the store writes itself are
//! in [`super::tests_trust_events`].

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone as _, Utc};
use fluid_client::audit_chain::{ChainBreak, ChainVerifier, GENESIS, truncate_to_micros};
use fluid_client::governance::{ApprovalKind, ApprovalStatus, AuditEvent, Role};
use sha2::{Digest as _, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use sqlx::{AssertSqlSafe, PgPool};

use super::tests::beat;
use super::*;

/// SQL on a store's database, bypassing the store.
pub(super) enum Raw {
    Sqlite(SqlitePool),
    Pg { pool: PgPool, schema: String },
}

impl Raw {
    pub(super) async fn sqlite(dir: &tempfile::TempDir) -> Self {
        let opts = SqliteConnectOptions::new()
            .filename(dir.path().join("fluid.db"))
            .busy_timeout(std::time::Duration::from_secs(15));
        Self::Sqlite(SqlitePool::connect_with(opts).await.expect("raw sqlite"))
    }

    /// `audit_events`, qualified with the test schema on PostgreSQL.
    pub(super) fn audit_table(&self) -> String {
        match self {
            Self::Sqlite(_) => "audit_events".into(),
            Self::Pg { schema, .. } => format!("{schema}.audit_events"),
        }
    }

    pub(super) async fn exec(&self, sql: String) -> Result<u64, sqlx::Error> {
        Ok(match self {
            Self::Sqlite(pool) => {
                let q = sqlx::query(AssertSqlSafe(sql));
                q.execute(pool).await?.rows_affected()
            }
            Self::Pg { pool, .. } => {
                let q = sqlx::query(AssertSqlSafe(sql));
                q.execute(pool).await?.rows_affected()
            }
        })
    }

    pub(super) async fn drop_trigger(&self, name: &str) {
        let sql = match self {
            Self::Sqlite(_) => format!("DROP TRIGGER {name}"),
            Self::Pg { .. } => format!("DROP TRIGGER {name} ON {}", self.audit_table()),
        };
        self.exec(sql).await.expect("drop trigger");
    }

    pub(super) async fn close(self) {
        match self {
            Self::Sqlite(pool) => pool.close().await,
            Self::Pg { .. } => {}
        }
    }
}

macro_rules! both {
    ($($suite:ident),* $(,)?) => {$(
        mod $suite {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().expect("tmp");
                let store = super::super::tests::sqlite(&dir).await;
                let raw = super::Raw::sqlite(&dir).await;
                super::$suite(store, &raw).await;
                raw.close().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(pg) = super::super::tests::pg().await else { return };
                let raw = super::Raw::Pg {
                    pool: pg.admin.clone(),
                    schema: pg.schema.clone(),
                };
                super::$suite(pg.store.clone(), &raw).await;
                pg.cleanup().await;
            }
        }
    )*};
}
pub(super) use both;

both!(
    tokens,
    approvals,
    concurrent_appends_chain_without_gaps,
    audit_filters,
    audit_is_append_only_and_edits_show,
);

/// A timestamp both dialects store exactly.
pub(super) fn micros(at: DateTime<Utc>) -> DateTime<Utc> {
    truncate_to_micros(at)
}

pub(super) fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

pub(super) fn verify(events: &[AuditEvent]) -> Result<u64, ChainBreak> {
    let mut v = ChainVerifier::default();
    for e in events {
        v.push(e)?;
    }
    Ok(v.checked())
}

pub(super) async fn all_audit(s: &dyn Store) -> Vec<AuditEvent> {
    audit(
        s,
        AuditFilter {
            limit: 10_000,
            ..Default::default()
        },
    )
    .await
}

pub(super) async fn audit(s: &dyn Store, f: AuditFilter) -> Vec<AuditEvent> {
    s.list_audit(&f).await.expect("list audit")
}

pub(super) async fn online_host(s: &dyn Store, cpus: u32, mem: u64) {
    s.upsert_host("h1", "h1:7443").await.expect("host");
    beat(s, "h1", cpus, mem, &["debian-12"]).await;
}

async fn tokens(store: Arc<dyn Store>, _raw: &Raw) {
    let s = &*store;
    let t0 = micros(Utc::now());
    let alice = TokenRecord {
        id: "TOK-aaaaaaaa".into(),
        name: "alice".into(),
        role: Role::Admin,
        agent_id: None,
        created_at: t0,
        revoked_at: None,
    };
    let bot = TokenRecord {
        id: "TOK-bbbbbbbb".into(),
        name: "bot".into(),
        role: Role::Agent,
        agent_id: Some("agent-7".into()),
        created_at: t0 + Duration::seconds(1),
        revoked_at: None,
    };
    s.insert_token(&alice, "hash-a").await.expect("insert");
    s.insert_token(&bot, "hash-b").await.expect("insert");
    let dup = TokenRecord {
        id: "TOK-cccccccc".into(),
        ..alice.clone()
    };
    let e = s.insert_token(&dup, "hash-c").await.expect_err("name");
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");

    assert_eq!(
        s.token_by_hash("hash-a").await.expect("by hash"),
        Some(alice.clone())
    );
    assert_eq!(
        s.token_by_hash("hash-b").await.expect("by hash"),
        Some(bot.clone())
    );
    assert_eq!(s.token_by_hash("nope").await.expect("by hash"), None);
    assert_eq!(
        s.list_tokens().await.expect("list"),
        vec![alice.clone(), bot.clone()],
        "oldest first"
    );

    let t1 = micros(Utc::now());
    let r = s
        .revoke_token(&alice.id, t1)
        .await
        .expect("revoke")
        .expect("by id");
    assert_eq!(r.revoked_at, Some(t1));
    let again = s
        .revoke_token("alice", t1 + Duration::seconds(5))
        .await
        .expect("revoke")
        .expect("by name");
    assert_eq!(again.revoked_at, Some(t1), "the first revocation stays");
    let b = s
        .revoke_token("bot", t1)
        .await
        .expect("revoke")
        .expect("by name");
    assert_eq!((b.id.as_str(), b.revoked_at), ("TOK-bbbbbbbb", Some(t1)));
    assert!(
        s.revoke_token("nobody", t1)
            .await
            .expect("revoke")
            .is_none()
    );
    let got = s
        .token_by_hash("hash-a")
        .await
        .expect("by hash")
        .expect("revoked ones too");
    assert_eq!(got.revoked_at, Some(t1));
}

fn approval(id: &str, kind: ApprovalKind, agent: &str, created: DateTime<Utc>) -> ApprovalRecord {
    ApprovalRecord {
        id: id.into(),
        kind,
        requested_by: format!("token-{agent}"),
        agent_id: Some(agent.into()),
        sandbox_id: Some("SBX-notyet0001".into()),
        summary: format!("{} please", kind.as_str()),
        details: serde_json::json!({"z": 1, "a": {"list": [1, 2.5, "x"]}, "note": "für"}),
        status: ApprovalStatus::Pending,
        decided_by: None,
        comment: None,
        created_at: created,
        decided_at: None,
        expires_at: created + Duration::minutes(5),
    }
}

async fn approvals(store: Arc<dyn Store>, _raw: &Raw) {
    let s = &*store;
    let t0 = micros(Utc::now());
    let a1 = approval("APR-00000001", ApprovalKind::Custom, "a", t0);
    let mut a2 = approval(
        "APR-00000002",
        ApprovalKind::Overcommit,
        "b",
        t0 + Duration::seconds(1),
    );
    a2.expires_at = t0 - Duration::seconds(1);
    a2.agent_id = None;
    let a3 = approval(
        "APR-00000003",
        ApprovalKind::Egress,
        "a",
        t0 + Duration::seconds(2),
    );
    for a in [&a1, &a2, &a3] {
        s.insert_approval(a).await.expect("insert");
    }
    let e = s.insert_approval(&a1).await.expect_err("dup");
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    assert_eq!(s.get_approval(&a1.id).await.expect("get"), Some(a1.clone()));
    assert_eq!(s.get_approval("APR-missing").await.expect("get"), None);

    let list = |f: ApprovalFilter| async move { s.list_approvals(&f).await.expect("list") };
    let ids = |rs: &[ApprovalRecord]| rs.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
    let (rs, total) = list(ApprovalFilter {
        limit: 10,
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&rs), ["APR-00000003", "APR-00000002", "APR-00000001"]);
    assert_eq!(total, 3);
    let (rs, total) = list(ApprovalFilter {
        agent_id: Some("a".into()),
        limit: 10,
        ..Default::default()
    })
    .await;
    assert_eq!((ids(&rs), total), (vec![a3.id.clone(), a1.id.clone()], 2));
    let (rs, total) = list(ApprovalFilter {
        status: Some(ApprovalStatus::Pending),
        kind: Some(ApprovalKind::Overcommit),
        limit: 10,
        ..Default::default()
    })
    .await;
    assert_eq!((ids(&rs), total), (vec![a2.id.clone()], 1));
    let (rs, total) = list(ApprovalFilter {
        limit: 1,
        offset: 1,
        ..Default::default()
    })
    .await;
    assert_eq!((ids(&rs), total), (vec![a2.id.clone()], 3));

    let now = micros(Utc::now());
    assert_eq!(
        ids(&s.overdue_approvals(now).await.expect("overdue")),
        [a2.id.clone()]
    );

    let d = s
        .decide_approval(
            &a1.id,
            ApprovalStatus::Approved,
            Some("bob"),
            Some("ok"),
            now,
        )
        .await
        .expect("decide");
    let Decided::Now(rec) = d else {
        panic!("first decision: {d:?}")
    };
    assert_eq!(rec.status, ApprovalStatus::Approved);
    assert_eq!(
        (
            rec.decided_by.as_deref(),
            rec.comment.as_deref(),
            rec.decided_at
        ),
        (Some("bob"), Some("ok"), Some(now))
    );
    assert_eq!(rec.details, a1.details);
    let d = s
        .decide_approval(&a1.id, ApprovalStatus::Rejected, Some("eve"), None, now)
        .await
        .expect("decide");
    assert_eq!(
        d,
        Decided::Already(rec.clone()),
        "a second decision changes nothing"
    );
    let d = s
        .decide_approval(
            "APR-missing",
            ApprovalStatus::Approved,
            Some("bob"),
            None,
            now,
        )
        .await
        .expect("decide");
    assert_eq!(d, Decided::NotFound);
    s.decide_approval(&a1.id, ApprovalStatus::Pending, None, None, now)
        .await
        .expect_err("pending is no decision");

    let d = s
        .decide_approval(&a2.id, ApprovalStatus::Expired, None, None, now)
        .await
        .expect("expire");
    assert!(
        matches!(&d, Decided::Now(r) if r.status == ApprovalStatus::Expired && r.decided_by.is_none()),
        "{d:?}"
    );
    assert!(s.overdue_approvals(now).await.expect("overdue").is_empty());
    let (rs, total) = list(ApprovalFilter {
        status: Some(ApprovalStatus::Pending),
        limit: 10,
        ..Default::default()
    })
    .await;
    assert_eq!((ids(&rs), total), (vec![a3.id.clone()], 1));
}

fn event(actor: &str, kind: &str, n: usize) -> NewAuditEvent {
    NewAuditEvent {
        actor: actor.into(),
        role: "operator".into(),
        ..NewAuditEvent::system(kind, format!("POST /v1/thing/{n}"), "200")
    }
    .target(format!("T-{n}"))
    .details(serde_json::json!({"n": n, "b": [true, null], "a": "ünïcødé \"quoted\""}))
}

async fn concurrent_appends_chain_without_gaps(store: Arc<dyn Store>, _raw: &Raw) {
    let mut tasks = Vec::new();
    for t in 0..5 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..10 {
                let e = event(&format!("actor-{t}"), "api", t * 10 + i);
                out.push(store.append_audit(&e).await.expect("append"));
            }
            out
        }));
    }
    let mut appended = Vec::new();
    for t in tasks {
        appended.extend(t.await.expect("join"));
    }
    appended.sort_by_key(|e| e.seq);
    let stored = all_audit(&*store).await;
    assert_eq!(
        stored.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=50).collect::<Vec<_>>()
    );
    assert_eq!(stored[0].prev_hash, GENESIS);
    assert_eq!(verify(&stored), Ok(50));
    // What append returned is what is read back, timestamps to the microsecond.
    assert_eq!(appended, stored);

    // A timestamp with nanoseconds is stored truncated to microseconds, exactly.
    let at = Utc
        .timestamp_opt(1_700_000_000, 123_456_789)
        .single()
        .expect("valid");
    let e = NewAuditEvent {
        at,
        ..event("nanos", "api", 99)
    };
    let ev = store.append_audit(&e).await.expect("append");
    assert_eq!(ev.at.timestamp_subsec_nanos(), 123_456_000);
    let back = audit(
        &*store,
        AuditFilter {
            after_seq: Some(50),
            limit: 10,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(back, vec![ev]);
    assert_eq!(verify(&all_audit(&*store).await), Ok(51));
}

async fn audit_filters(store: Arc<dyn Store>, _raw: &Raw) {
    let s = &*store;
    let t0 = micros(Utc::now()) - Duration::hours(1);
    for i in 0..6 {
        let e = NewAuditEvent {
            at: t0 + Duration::seconds(i as i64),
            ..event(if i % 2 == 0 { "alice" } else { "bob" }, "api", i)
        };
        let e = if i < 3 {
            e.sandbox(format!("SBX-{i:010}"))
        } else {
            e
        };
        let e = if i == 5 {
            NewAuditEvent {
                kind: "token".into(),
                ..e
            }
        } else {
            e
        };
        s.append_audit(&e).await.expect("append");
    }
    let seqs = |f: AuditFilter| async move {
        audit(s, AuditFilter { limit: 100, ..f })
            .await
            .into_iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>()
    };
    assert_eq!(seqs(AuditFilter::default()).await, [1, 2, 3, 4, 5, 6]);
    assert_eq!(
        seqs(AuditFilter {
            sandbox_id: Some("SBX-0000000001".into()),
            ..Default::default()
        })
        .await,
        [2]
    );
    assert_eq!(
        seqs(AuditFilter {
            actor: Some("alice".into()),
            ..Default::default()
        })
        .await,
        [1, 3, 5]
    );
    assert_eq!(
        seqs(AuditFilter {
            kind: Some("token".into()),
            ..Default::default()
        })
        .await,
        [6]
    );
    assert_eq!(
        seqs(AuditFilter {
            since: Some(t0 + Duration::seconds(4)),
            ..Default::default()
        })
        .await,
        [5, 6],
        "since is inclusive"
    );
    assert_eq!(
        seqs(AuditFilter {
            since: Some(t0 + Duration::milliseconds(3500)),
            actor: Some("bob".into()),
            ..Default::default()
        })
        .await,
        [6]
    );
    assert_eq!(
        seqs(AuditFilter {
            after_seq: Some(2),
            ..Default::default()
        })
        .await,
        [3, 4, 5, 6]
    );
    let page = audit(
        s,
        AuditFilter {
            after_seq: Some(2),
            limit: 2,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4]);
    assert_eq!(page[0].at, t0 + Duration::seconds(2));
}

async fn audit_is_append_only_and_edits_show(store: Arc<dyn Store>, raw: &Raw) {
    for i in 0..4 {
        store
            .append_audit(&event("alice", "api", i))
            .await
            .expect("append");
    }
    let table = raw.audit_table();
    let e = raw
        .exec(format!(
            "UPDATE {table} SET outcome = 'tampered' WHERE seq = 2"
        ))
        .await
        .expect_err("update refused");
    assert!(e.to_string().contains("append-only"), "{e}");
    let e = raw
        .exec(format!("DELETE FROM {table} WHERE seq = 3"))
        .await
        .expect_err("delete refused");
    assert!(e.to_string().contains("append-only"), "{e}");
    if matches!(raw, Raw::Pg { .. }) {
        let e = raw
            .exec(format!("TRUNCATE {table}"))
            .await
            .expect_err("truncate refused");
        assert!(e.to_string().contains("append-only"), "{e}");
    }
    assert_eq!(verify(&all_audit(&*store).await), Ok(4));

    // Someone gets past the database: the chain shows where.
    raw.drop_trigger("audit_events_no_delete").await;
    let n = raw
        .exec(format!("DELETE FROM {table} WHERE seq = 3"))
        .await
        .expect("hand delete");
    assert_eq!(n, 1);
    let events = all_audit(&*store).await;
    assert_eq!(
        verify(&events),
        Err(ChainBreak::Gap {
            seq: 4,
            prev_seq: 2
        })
    );

    raw.drop_trigger("audit_events_no_update").await;
    raw.exec(format!(
        "UPDATE {table} SET outcome = 'tampered' WHERE seq = 2"
    ))
    .await
    .expect("hand edit");
    let events = all_audit(&*store).await;
    assert_eq!(events[1].outcome, "tampered");
    assert_eq!(verify(&events), Err(ChainBreak::HashMismatch { seq: 2 }));
    // Details edited into something that is not JSON still read, and still show.
    raw.exec(format!(
        "UPDATE {table} SET details = '{{oops' WHERE seq = 1"
    ))
    .await
    .expect("hand edit");
    let events = all_audit(&*store).await;
    assert_eq!(events[0].details, serde_json::json!("{oops"));
    assert_eq!(verify(&events).map_err(|b| b.seq()), Err(1));
}
