//! One suite, run against SQLite (a temp file) and PostgreSQL (a private schema in
//! `FLUID_TEST_DATABASE_URL`; without it the PostgreSQL runs skip on a developer's
//! machine and fail under CI, see `fluid_prereq`).

use std::str::FromStr as _;
use std::sync::Arc;

use chrono::Utc;
use fluid_client::types::{HostState, SandboxState, StartPath};
use sqlx::postgres::{PgConnectOptions, PgPool};

use super::*;

pub(crate) async fn sqlite(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    Arc::new(
        SqliteStore::open_file(&dir.path().join("fluid.db"))
            .await
            .expect("open sqlite"),
    )
}

pub(crate) struct TestPg {
    pub store: Arc<dyn Store>,
    pub admin: PgPool,
    pub schema: String,
    /// Connection options of `store` (the URL with the private schema as search path).
    pub opts: PgConnectOptions,
}

impl TestPg {
    pub async fn cleanup(self) {
        self.store.close().await;
        let drop = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema);
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(&self.admin)
            .await
        {
            eprintln!("notice: dropping test schema {}: {e}", self.schema);
        }
        self.admin.close().await;
    }
}

/// A store in a fresh schema of the test PostgreSQL, or `None` (with a notice).
pub(crate) async fn pg() -> Option<TestPg> {
    let url = std::env::var("FLUID_TEST_DATABASE_URL");
    if !fluid_prereq::available(
        "postgres",
        url.is_ok(),
        "FLUID_TEST_DATABASE_URL is unset: the PostgreSQL run of this store suite did not run",
    ) {
        return None;
    }
    let url = url.unwrap_or_default();
    let admin = PgPool::connect(&url)
        .await
        .expect("connect to FLUID_TEST_DATABASE_URL");
    // new_id yields lowercase letters and digits only: safe as an identifier.
    let schema = crate::support::ids::new_id("fluid_test_");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .expect("create schema");
    let opts = PgConnectOptions::from_str(&url)
        .expect("url")
        .options([("search_path", schema.as_str())]);
    let store = PgStore::connect_with(opts.clone())
        .await
        .expect("open pg store");
    Some(TestPg {
        store: Arc::new(store),
        admin,
        schema,
        opts,
    })
}

macro_rules! both {
    ($($suite:ident),* $(,)?) => {$(
        mod $suite {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let dir = tempfile::tempdir().expect("tmp");
                super::$suite(super::sqlite(&dir).await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(pg) = super::pg().await else { return };
                super::$suite(pg.store.clone()).await;
                pg.cleanup().await;
            }
        }
    )*};
}

both!(
    hosts_lifecycle,
    reservations_check_room_and_names,
    list_filters_and_updates,
    concurrent_reservations_never_overbook,
    commands_and_certificates,
    start_path_round_trip,
);

pub(crate) async fn beat(store: &dyn Store, name: &str, cpus: u32, mem: u64, images: &[&str]) {
    store
        .record_beat(
            name,
            &Beat {
                cpus_total: cpus,
                memory_mb_total: mem,
                images: images.iter().map(|s| s.to_string()).collect(),
                agent_version: "0.1.0".into(),
                ssh_public_key: None,
                pools: vec![],
                simulated: false,
                at: Utc::now(),
            },
        )
        .await
        .expect("beat");
}

pub(crate) fn reservation(i: usize, host: &str, cpus: u32, mem: u64) -> Reservation {
    Reservation {
        id: format!("SBX-t{i:09}"),
        legacy_job_id: format!("JOB-t{i:09}").into(),
        agent_id: if i.is_multiple_of(2) { "even" } else { "odd" }.into(),
        name: format!("vm-{i}"),
        image: "debian-12".into(),
        ttl_seconds: i.is_multiple_of(3).then_some(60),
        host_name: host.into(),
        cpus,
        memory_mb: mem,
        cpu_overcommit_ratio: 4.0,
        allow_overcommit: false,
        max_owned: None,
        now: Utc::now(),
    }
}

async fn host(store: &dyn Store, name: &str) -> HostRecord {
    store
        .get_host(name)
        .await
        .expect("get host")
        .expect("host exists")
}

async fn hosts_lifecycle(store: Arc<dyn Store>) {
    let s = &*store;
    s.ping().await.expect("ping");
    s.upsert_host("h1", "h1:7443").await.expect("upsert");
    s.upsert_host("h1", "h1.lab:7443")
        .await
        .expect("upsert again");
    let err = s
        .insert_host("h1", "x:1", Utc::now())
        .await
        .expect_err("dup");
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    let h0 = s
        .insert_host("h0", "h0:7443", Utc::now())
        .await
        .expect("insert");
    assert_eq!(h0.state, HostState::Unknown);
    assert!(h0.images.is_empty() && h0.last_seen.is_none());

    let names: Vec<String> = s
        .list_hosts()
        .await
        .expect("list")
        .into_iter()
        .map(|h| h.name)
        .collect();
    assert_eq!(names, ["h0", "h1"]);
    let h1 = s.get_host("h1").await.expect("get").expect("h1 exists");
    assert_eq!(h1.address, "h1.lab:7443");
    assert!(s.get_host("h9").await.expect("get").is_none());
    let h1 = host(s, "h1").await;
    assert_eq!(
        (h1.address.as_str(), h1.state),
        ("h1.lab:7443", HostState::Unknown)
    );

    beat(s, "h1", 8, 16384, &["debian-12", "ubuntu"]).await;
    let h1 = host(s, "h1").await;
    assert_eq!(h1.state, HostState::Online);
    assert_eq!((h1.cpus_total, h1.memory_mb_total), (8, 16384));
    assert_eq!(h1.images, ["debian-12", "ubuntu"]);
    assert!(h1.last_seen.is_some());

    for i in 1..=3 {
        s.record_missed_beat("h1", "connection refused", 3)
            .await
            .expect("miss");
        let h = host(s, "h1").await;
        assert_eq!(h.missed_beats, i);
        let want = if i < 3 {
            HostState::Online
        } else {
            HostState::Offline
        };
        assert_eq!(h.state, want, "after {i} missed beats");
        assert_eq!(h.last_error.as_deref(), Some("connection refused"));
    }
    beat(s, "h1", 8, 16384, &["debian-12"]).await;
    let h1 = host(s, "h1").await;
    assert_eq!(
        (h1.state, h1.missed_beats, h1.last_error),
        (HostState::Online, 0, None)
    );
}

async fn reservations_check_room_and_names(store: Arc<dyn Store>) {
    let s = &*store;
    s.upsert_host("h1", "h1:7443").await.expect("host");
    // Not yet online: no reservation.
    let e = s
        .reserve(&reservation(0, "h1", 1, 512))
        .await
        .expect_err("unknown state");
    assert!(matches!(e, ReserveError::NoRoom(_)), "{e}");
    beat(s, "h1", 1, 1024, &["debian-12"]).await;

    let r0 = s
        .reserve(&reservation(0, "h1", 1, 512))
        .await
        .expect("fits");
    assert_eq!(r0.state, SandboxState::Created);
    assert_eq!(r0.host_name.as_deref(), Some("h1"));
    assert_eq!((r0.cpus, r0.memory_mb, r0.ttl_seconds), (1, 512, Some(60)));

    let mut dup = reservation(1, "h1", 1, 128);
    dup.name = r0.name.clone();
    let e = s.reserve(&dup).await.expect_err("dup name");
    assert!(matches!(e, ReserveError::DuplicateName(_)), "{e}");

    let e = s
        .reserve(&reservation(2, "h1", 1, 1024))
        .await
        .expect_err("memory");
    assert!(e.to_string().contains("512 MiB memory free < 1024"), "{e}");
    // 1 CPU × 4.0 = 4 vCPUs.
    let e = s
        .reserve(&reservation(3, "h1", 4, 128))
        .await
        .expect_err("cpus");
    assert!(e.to_string().contains("vCPUs"), "{e}");
    let e = s
        .reserve(&reservation(4, "nope", 1, 128))
        .await
        .expect_err("no host");
    assert!(matches!(e, ReserveError::NoRoom(_)), "{e}");

    let usage = s.host_usage().await.expect("usage");
    assert_eq!(
        usage["h1"],
        HostUsage {
            cpus: 1,
            memory_mb: 512,
            sandboxes: 1
        }
    );

    // A destroyed sandbox frees its name and its resources.
    s.update_sandbox(
        &r0.id,
        &SandboxUpdate {
            state: Some(SandboxState::Destroyed),
            ..Default::default()
        },
        Utc::now(),
    )
    .await
    .expect("update")
    .expect("row");
    let mut again = reservation(5, "h1", 1, 1024);
    again.name = r0.name.clone();
    s.reserve(&again)
        .await
        .expect("name and room are free again");

    s.record_missed_beat("h1", "down", 1)
        .await
        .expect("offline");
    let e = s
        .reserve(&reservation(6, "h1", 1, 128))
        .await
        .expect_err("offline");
    assert!(e.to_string().contains("offline"), "{e}");
}

async fn start_path_round_trip(store: Arc<dyn Store>) {
    let s = &*store;
    s.upsert_host("h1", "h1:7443").await.expect("host");
    beat(s, "h1", 64, 1 << 20, &["debian-12"]).await;
    let id = s
        .reserve(&reservation(1, "h1", 1, 128))
        .await
        .expect("reserve")
        .id;
    let get = async || s.get_sandbox(&id).await.expect("get").expect("row");
    assert_eq!(get().await.start_path, None, "unknown until reported");
    assert_eq!(api_start_path(&get().await), None, "absent from the API");
    let update = async |u: SandboxUpdate| {
        s.update_sandbox(&id, &u, Utc::now())
            .await
            .expect("update")
            .expect("row")
    };
    // Without a change of state (one statement) and with one (the audited path).
    let up = update(SandboxUpdate {
        start_path: Some(StartPath::Restore),
        ..Default::default()
    })
    .await;
    assert_eq!(up.start_path, Some(StartPath::Restore));
    let up = update(SandboxUpdate {
        state: Some(SandboxState::Running),
        start_path: Some(StartPath::Pool),
        ..Default::default()
    })
    .await;
    assert_eq!(
        (up.state, up.start_path),
        (SandboxState::Running, Some(StartPath::Pool))
    );
    // Updates that do not name it leave it.
    let up = update(SandboxUpdate {
        state: Some(SandboxState::Stopped),
        ip_address: Some(None),
        ..Default::default()
    })
    .await;
    assert_eq!(up.start_path, Some(StartPath::Pool));
    let read = get().await;
    assert_eq!(read.start_path, Some(StartPath::Pool));
    assert_eq!(api_start_path(&read), Some(serde_json::json!("pool")));
    let (rows, _) = s
        .list_sandboxes(&SandboxFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(rows[0].start_path, Some(StartPath::Pool));
    let on_host = s.sandboxes_on_host("h1").await.expect("on host");
    assert_eq!(on_host[0].start_path, Some(StartPath::Pool));
}

/// The `start_path` of `r`'s REST JSON, if it has the key.
fn api_start_path(r: &SandboxRecord) -> Option<serde_json::Value> {
    let v = serde_json::to_value(r.to_api()).expect("json");
    v.get("start_path").cloned()
}

async fn list_filters_and_updates(store: Arc<dyn Store>) {
    let s = &*store;
    s.upsert_host("h1", "h1:7443").await.expect("host");
    beat(s, "h1", 64, 1 << 20, &["debian-12"]).await;
    let before = Utc::now();
    for i in 0..7 {
        s.reserve(&reservation(i, "h1", 1, 128))
            .await
            .expect("reserve");
    }
    let all = SandboxFilter {
        limit: 100,
        ..Default::default()
    };
    let (rows, total) = s.list_sandboxes(&all).await.expect("list");
    assert_eq!((rows.len(), total), (7, 7));
    // Newest first.
    assert!(rows.windows(2).all(|w| w[0].created_at >= w[1].created_at));
    let r = &rows[0];
    assert!((r.created_at - before).num_seconds().abs() < 60);

    let (rows, total) = s
        .list_sandboxes(&SandboxFilter {
            agent_id: Some("even".into()),
            limit: 2,
            offset: 1,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!((rows.len(), total), (2, 4));
    assert!(rows.iter().all(|r| r.agent_id == "even"));

    let (rows, total) = s
        .list_sandboxes(&SandboxFilter {
            name: Some("vm-3".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!((rows.len(), total), (1, 1));
    let id = rows[0].id.clone();

    let up = s
        .update_sandbox(
            &id,
            &SandboxUpdate {
                state: Some(SandboxState::Running),
                ip_address: Some(Some("192.168.122.10".into())),
                network: Some("default".into()),
                ..Default::default()
            },
            Utc::now(),
        )
        .await
        .expect("update")
        .expect("row");
    assert_eq!(up.state, SandboxState::Running);
    assert_eq!(up.ip_address.as_deref(), Some("192.168.122.10"));
    assert_eq!(up.network, "default");
    assert!(up.updated_at >= up.created_at);

    // Compare-and-set: a stale expectation changes nothing.
    let stale = s
        .update_sandbox(
            &id,
            &SandboxUpdate {
                state: Some(SandboxState::Error),
                expect_state: Some(SandboxState::Stopped),
                ..Default::default()
            },
            Utc::now(),
        )
        .await
        .expect("update");
    assert!(stale.is_none());
    let (running, _) = s
        .list_sandboxes(&SandboxFilter {
            state: Some(SandboxState::Running),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(running.len(), 1);
    // Leaving fields alone, clearing the IP.
    let cleared = s
        .update_sandbox(
            &id,
            &SandboxUpdate {
                ip_address: Some(None),
                ..Default::default()
            },
            Utc::now(),
        )
        .await
        .expect("update")
        .expect("row");
    assert_eq!(
        (cleared.state, cleared.ip_address),
        (SandboxState::Running, None)
    );

    assert!(
        s.get_sandbox("SBX-missing000")
            .await
            .expect("get")
            .is_none()
    );
    assert_eq!(s.get_sandbox(&id).await.expect("get").expect("row").id, id);
    assert_eq!(s.sandboxes_on_host("h1").await.expect("on host").len(), 7);
    // i = 0, 3, 6 have a TTL.
    assert_eq!(s.sandboxes_with_ttl().await.expect("ttl").len(), 3);
}

async fn concurrent_reservations_never_overbook(store: Arc<dyn Store>) {
    store.upsert_host("h1", "h1:7443").await.expect("host");
    // Room for exactly 10 sandboxes of 512 MiB.
    beat(&*store, "h1", 64, 5120, &["debian-12"]).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.reserve(&reservation(i, "h1", 1, 512)).await
        }));
    }
    let (mut ok, mut full) = (0, 0);
    for t in tasks {
        match t.await.expect("join") {
            Ok(_) => ok += 1,
            Err(ReserveError::NoRoom(_)) => full += 1,
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!((ok, full), (10, 40));
    let usage = store.host_usage().await.expect("usage");
    assert_eq!(
        usage["h1"],
        HostUsage {
            cpus: 10,
            memory_mb: 5120,
            sandboxes: 10
        }
    );
}

/// A background loop runs on one replica at a time. Two replicas are two stores with
/// their own pools on one database: while the first holds a loop's lock the second is
/// refused it, other loops stay free, and the lock passes on once released.
mod loop_locks {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_replicas_exclude_each_other() {
        let Some(pg) = pg().await else { return };
        let replica_a = pg.store.clone();
        let replica_b = PgStore::connect_with(pg.opts.clone())
            .await
            .expect("second replica");

        let held = replica_a
            .try_lock_loop(LoopKey::Janitor)
            .await
            .expect("lock")
            .expect("replica A takes the free janitor lock");
        assert!(
            replica_b
                .try_lock_loop(LoopKey::Janitor)
                .await
                .expect("lock")
                .is_none(),
            "replica B took the janitor lock while replica A held it"
        );
        let other = replica_b
            .try_lock_loop(LoopKey::Heartbeat)
            .await
            .expect("lock");
        assert!(other.is_some(), "another loop's lock must stay free");

        held.release().await;
        assert!(
            replica_b
                .try_lock_loop(LoopKey::Janitor)
                .await
                .expect("lock")
                .is_some(),
            "the janitor lock did not pass to replica B once released"
        );
        drop(other);
        replica_b.close().await;
        pg.cleanup().await;
    }

    /// SQLite is the embedded, single-process store: its loops always run.
    #[tokio::test]
    async fn sqlite_always_grants() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = sqlite(&dir).await;
        let first = store.try_lock_loop(LoopKey::Janitor).await.expect("lock");
        let second = store.try_lock_loop(LoopKey::Janitor).await.expect("lock");
        assert!(first.is_some() && second.is_some());
    }
}

async fn commands_and_certificates(store: Arc<dyn Store>) {
    store.upsert_host("h1", "h1:7443").await.expect("host");
    beat(&*store, "h1", 8, 8192, &["debian-12"]).await;
    store
        .record_beat(
            "h1",
            &Beat {
                cpus_total: 8,
                memory_mb_total: 8192,
                images: vec!["debian-12".into()],
                agent_version: "0.1.0".into(),
                ssh_public_key: Some("ssh-ed25519 AAAAkey agent".into()),
                pools: vec![],
                simulated: false,
                at: Utc::now(),
            },
        )
        .await
        .expect("beat");
    assert_eq!(
        host(&*store, "h1").await.ssh_public_key.as_deref(),
        Some("ssh-ed25519 AAAAkey agent")
    );
    let sbx = store
        .reserve(&reservation(1, "h1", 1, 512))
        .await
        .expect("reserve");
    let now = Utc::now();
    let mut rec = CommandRecord {
        id: "CMD-aaaaaaaaaa".into(),
        sandbox_id: sbx.id.clone(),
        agent_id: sbx.agent_id.clone(),
        kind: "command".into(),
        command: "echo hi".into(),
        user: "root".into(),
        workdir: Some("/tmp".into()),
        env_json: "{}".into(),
        status: CommandStatus::Running,
        stdout: String::new(),
        stderr: String::new(),
        exit_code: None,
        timed_out: false,
        truncated: false,
        error: None,
        started_at: now,
        ended_at: None,
        duration_ms: None,
        output_expired: false,
    };
    store.insert_command(&rec).await.expect("insert");
    let end = CommandEnd {
        status: CommandStatus::Completed,
        stdout: "hi\n".into(),
        stderr: String::new(),
        exit_code: Some(0),
        timed_out: false,
        truncated: true,
        error: None,
        ended_at: Utc::now(),
        duration_ms: Some(12),
    };
    let done = store
        .finish_command(&rec.id, &end)
        .await
        .expect("finish")
        .expect("was running");
    assert_eq!(done.stdout, "hi\n");
    assert_eq!(done.exit_code, Some(0));
    assert!(done.truncated);
    assert_eq!(done.duration_ms, Some(12));
    assert!(
        store
            .finish_command(&rec.id, &end)
            .await
            .expect("again")
            .is_none(),
        "only a running command completes"
    );
    rec.id = "CMD-bbbbbbbbbb".into();
    rec.started_at = now + chrono::Duration::seconds(1);
    store.insert_command(&rec).await.expect("insert 2");
    assert_eq!(
        store
            .interrupt_running_commands(Utc::now())
            .await
            .expect("interrupt"),
        1
    );
    let c = store
        .get_command(&rec.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(c.status, CommandStatus::Interrupted);
    assert!(c.ended_at.is_some());
    let (page, total) = store.list_commands(&sbx.id, 1, 0).await.expect("list");
    assert_eq!(total, 2);
    assert_eq!(page[0].id, "CMD-bbbbbbbbbb", "newest first");
    let (page, _) = store.list_commands(&sbx.id, 10, 1).await.expect("list");
    assert_eq!(page[0].id, "CMD-aaaaaaaaaa");

    let cert = CertRecord {
        id: "CRT-aaaaaaaaaa".into(),
        sandbox_id: sbx.id.clone(),
        user_id: "alice".into(),
        public_key: "ssh-ed25519 AAAAuser".into(),
        principals: vec!["root".into()],
        serial: u64::MAX >> 1,
        valid_after: now,
        valid_until: now + chrono::Duration::minutes(5),
        created_at: now,
        revoked_at: None,
    };
    store.insert_certificate(&cert).await.expect("insert cert");
    let got = store
        .get_certificate(&cert.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(got.serial, cert.serial);
    assert_eq!(got.principals, cert.principals);
    assert!(store.revoked_keys(&sbx.id).await.expect("keys").is_empty());
    let r = store
        .revoke_certificate(&cert.id, Utc::now())
        .await
        .expect("revoke")
        .expect("exists");
    assert!(r.revoked_at.is_some());
    assert_eq!(
        store.revoked_keys(&sbx.id).await.expect("keys"),
        vec!["ssh-ed25519 AAAAuser".to_owned()]
    );
    assert!(
        store
            .revoke_certificate("CRT-none", Utc::now())
            .await
            .expect("revoke")
            .is_none()
    );
    let (all, total) = store.list_certificates(10, 0).await.expect("list");
    assert_eq!((all.len(), total), (1, 1));
}
