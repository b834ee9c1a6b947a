//! Where a create request becomes a placement decision.
//!
//! Filter hosts (online, has the image, enough free memory, vCPUs within the over-commit
//! ratio), weigh the rest (a ready warm-pool member of the sandbox's image and shape
//! first; then most free memory; then fewer sandboxes; then name), and reserve on the
//! best one through the store's atomic [`Store::reserve`] before anything is sent to an
//! agent. A reservation that loses a race moves on to the next candidate. When nothing
//! fits, the error names what is short on each host.
//!
//! A host's warm pool, as its last heartbeat reported it, holds resources that are not
//! sandboxes: its ready and filling members count as used ([`pooled`]), except one
//! ready member of the placement's image and shape, which the create claims and so
//! needs no new room. [`Store::reserve`] re-checks room from the sandbox rows only: it
//! guards against two creates racing, not against the pool.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use fluid_client::types::HostState;
use fluid_proto::model::PoolStatus;

use crate::store::{
    HostRecord, HostUsage, Reservation, ReserveError, SandboxRecord, Store, StoreError, check_room,
    free_memory,
};
use crate::support::ids::LegacyJobId;

/// What a sandbox needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub id: String,
    pub legacy_job_id: LegacyJobId,
    pub agent_id: String,
    pub name: String,
    pub image: String,
    pub cpus: u32,
    pub memory_mb: u64,
    pub ttl_seconds: Option<i64>,
    /// `[quotas] sandboxes_per_agent`: the live sandboxes `agent_id` may own, this one
    /// included (`None`: no limit).
    pub max_owned: Option<u32>,
}

impl Placement {
    /// The reservation of this placement on `host`; `allow_overcommit` skips the
    /// capacity check (a human approved the over-commit).
    pub fn reservation(
        &self,
        host: &str,
        ratio: f64,
        now: DateTime<Utc>,
        allow_overcommit: bool,
    ) -> Reservation {
        Reservation {
            id: self.id.clone(),
            legacy_job_id: self.legacy_job_id.clone(),
            agent_id: self.agent_id.clone(),
            name: self.name.clone(),
            image: self.image.clone(),
            ttl_seconds: self.ttl_seconds,
            host_name: host.to_owned(),
            cpus: self.cpus,
            memory_mb: self.memory_mb,
            cpu_overcommit_ratio: ratio,
            now,
            allow_overcommit,
            max_owned: self.max_owned,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// No host offers the image (400: the request names something that does not exist).
    #[error("{0}")]
    UnknownImage(String),
    /// Hosts exist but none can take the sandbox now (409).
    #[error("no host can take the sandbox: {0}")]
    NoCapacity(String),
    #[error("a live sandbox named {0:?} already exists")]
    DuplicateName(String),
    /// The owner holds its quota of sandboxes (429).
    #[error("{message}")]
    Quota {
        message: String,
        retry_after_secs: u32,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Seconds a create refused by `[quotas] sandboxes_per_agent` is told to wait (one of
/// the owner's sandboxes must go first).
pub const QUOTA_RETRY_AFTER_SECS: u32 = 10;

/// The error of a reservation refused by the owner's quota.
pub fn quota(message: String) -> ScheduleError {
    ScheduleError::Quota {
        message,
        retry_after_secs: QUOTA_RETRY_AFTER_SECS,
    }
}

/// `pool` is of `p`'s image and shape.
fn same_shape(pool: &PoolStatus, p: &Placement) -> bool {
    pool.image == p.image && pool.cpus == p.cpus && pool.memory_mb == p.memory_mb
}

/// `host`'s warm pool has a ready member `p` would be handed.
pub fn has_warm(host: &HostRecord, p: &Placement) -> bool {
    host.pools
        .iter()
        .any(|pool| pool.ready > 0 && same_shape(pool, p))
}

/// What `host`'s warm pool holds against `p`: the vCPUs and memory of its ready and
/// filling members, less one ready member of `p`'s image and shape (the create claims
/// it). `sandboxes` stays 0: members are not sandboxes.
pub fn pooled(host: &HostRecord, p: &Placement) -> HostUsage {
    let mut claimed = false;
    let mut held = HostUsage::default();
    for pool in &host.pools {
        let mut members = u64::from(pool.ready) + u64::from(pool.filling);
        if !claimed && pool.ready > 0 && same_shape(pool, p) {
            claimed = true;
            members -= 1;
        }
        held.cpus = held
            .cpus
            .saturating_add(members.saturating_mul(u64::from(pool.cpus)));
        held.memory_mb = held
            .memory_mb
            .saturating_add(members.saturating_mul(pool.memory_mb));
    }
    held
}

/// `usage` (the host's sandboxes) plus what its warm pool holds against `p`.
pub fn usage_with_pool(host: &HostRecord, usage: HostUsage, p: &Placement) -> HostUsage {
    with_pool(usage, pooled(host, p))
}

fn with_pool(usage: HostUsage, pool: HostUsage) -> HostUsage {
    HostUsage {
        cpus: usage.cpus.saturating_add(pool.cpus),
        memory_mb: usage.memory_mb.saturating_add(pool.memory_mb),
        sandboxes: usage.sandboxes,
    }
}

/// Why `host` cannot take `p`, or `None` when it can. `usage` is what its sandboxes
/// hold; its warm pool is added here ([`pooled`]).
pub fn reject_reason(
    host: &HostRecord,
    usage: HostUsage,
    p: &Placement,
    ratio: f64,
) -> Option<String> {
    match host.state {
        HostState::Online => {}
        HostState::Offline => return Some("offline".into()),
        HostState::Unknown => return Some("not yet heard from".into()),
    }
    if !host.images.iter().any(|i| i == &p.image) {
        return Some(format!("no image {:?}", p.image));
    }
    let pool = pooled(host, p);
    check_room(host, with_pool(usage, pool), p.cpus, p.memory_mb, ratio)
        .map_err(|why| {
            if pool == HostUsage::default() {
                why
            } else {
                format!(
                    "{why} (the warm pool holds {} vCPUs, {} MiB)",
                    pool.cpus, pool.memory_mb
                )
            }
        })
        .err()
}

/// Hosts that can take `p`, best first (warm pool, free memory with the pool counted,
/// fewer sandboxes, name); or, when none can, why not (per host).
pub fn rank<'a>(
    hosts: &'a [HostRecord],
    usage: &HashMap<String, HostUsage>,
    p: &Placement,
    ratio: f64,
) -> Result<Vec<&'a HostRecord>, Vec<(String, String)>> {
    let mut fits = Vec::new();
    let mut reasons = Vec::new();
    for h in hosts {
        let u = usage.get(&h.name).copied().unwrap_or_default();
        match reject_reason(h, u, p, ratio) {
            None => fits.push((h, usage_with_pool(h, u, p), has_warm(h, p))),
            Some(r) => reasons.push((h.name.clone(), r)),
        }
    }
    if fits.is_empty() {
        return Err(reasons);
    }
    fits.sort_by(|(a, ua, warm_a), (b, ub, warm_b)| {
        warm_b
            .cmp(warm_a)
            .then(free_memory(b, *ub).cmp(&free_memory(a, *ua)))
            .then(ua.sandboxes.cmp(&ub.sandboxes))
            .then(a.name.cmp(&b.name))
    });
    Ok(fits.into_iter().map(|(h, _, _)| h).collect())
}

fn explain(reasons: &[(String, String)]) -> String {
    reasons
        .iter()
        .map(|(h, r)| format!("{h}: {r}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Chooses a host for `p` and reserves it; returns the inserted (CREATED) row.
pub async fn place(
    store: &dyn Store,
    p: &Placement,
    ratio: f64,
    now: DateTime<Utc>,
) -> Result<SandboxRecord, ScheduleError> {
    let hosts = store.list_hosts().await?;
    if hosts.is_empty() {
        return Err(ScheduleError::NoCapacity("no hosts are registered".into()));
    }
    let all_reported = hosts.iter().all(|h| h.last_seen.is_some());
    if all_reported && !hosts.iter().any(|h| h.images.contains(&p.image)) {
        let mut known: Vec<&str> = hosts
            .iter()
            .flat_map(|h| h.images.iter().map(String::as_str))
            .collect();
        known.sort_unstable();
        known.dedup();
        return Err(ScheduleError::UnknownImage(format!(
            "no host has image {:?} (known images: {})",
            p.image,
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        )));
    }
    let usage = store.host_usage().await?;
    let candidates = rank(&hosts, &usage, p, ratio)
        .map_err(|reasons| ScheduleError::NoCapacity(explain(&reasons)))?;
    let mut lost = Vec::new();
    for host in candidates {
        let r = p.reservation(&host.name, ratio, now, false);
        match store.reserve(&r).await {
            Ok(row) => return Ok(row),
            Err(ReserveError::NoRoom(why)) => {
                tracing::debug!(host = %host.name, %why, "reservation lost, trying the next host");
                lost.push((host.name.clone(), why));
            }
            Err(ReserveError::DuplicateName(n)) => return Err(ScheduleError::DuplicateName(n)),
            Err(ReserveError::Quota(m)) => return Err(quota(m)),
            Err(ReserveError::Store(e)) => return Err(e.into()),
        }
    }
    Err(ScheduleError::NoCapacity(explain(&lost)))
}

/// Reserves `p` on `host` and nowhere else (a fork: its snapshot lives there): the
/// same checks as [`place`] on that one host (its warm pool counted); when it fails
/// them, a [`ScheduleError::NoCapacity`] naming why.
pub async fn place_on(
    store: &dyn Store,
    p: &Placement,
    host: &str,
    ratio: f64,
    now: DateTime<Utc>,
) -> Result<SandboxRecord, ScheduleError> {
    let pinned = |why: String| {
        ScheduleError::NoCapacity(format!("{host}: {why} (the sandbox must run on {host})"))
    };
    let h = store
        .get_host(host)
        .await?
        .ok_or_else(|| pinned("not registered".into()))?;
    let usage = store.host_usage().await?;
    let u = usage.get(host).copied().unwrap_or_default();
    if let Some(why) = reject_reason(&h, u, p, ratio) {
        return Err(pinned(why));
    }
    match store.reserve(&p.reservation(host, ratio, now, false)).await {
        Ok(row) => Ok(row),
        Err(ReserveError::NoRoom(why)) => Err(pinned(why)),
        Err(ReserveError::DuplicateName(n)) => Err(ScheduleError::DuplicateName(n)),
        Err(ReserveError::Quota(m)) => Err(quota(m)),
        Err(ReserveError::Store(e)) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::{Beat, SqliteStore};

    fn host(name: &str, state: HostState, cpus: u32, mem: u64, images: &[&str]) -> HostRecord {
        HostRecord {
            name: name.into(),
            address: format!("{name}:7443"),
            state,
            cpus_total: cpus,
            memory_mb_total: mem,
            images: images.iter().map(|s| s.to_string()).collect(),
            agent_version: Some("t".into()),
            last_seen: Some(Utc::now()),
            missed_beats: 0,
            last_error: None,
            ssh_public_key: None,
            pools: vec![],
            simulated: false,
        }
    }

    /// A warm pool shape of `image` with `ready` and `filling` members.
    fn pool(image: &str, cpus: u32, mem: u64, ready: u32, filling: u32) -> PoolStatus {
        PoolStatus {
            image: image.into(),
            cpus,
            memory_mb: mem,
            size: ready + filling,
            ready,
            filling,
            hits: 0,
            misses: 0,
        }
    }

    fn placement(i: usize, image: &str, cpus: u32, mem: u64) -> Placement {
        Placement {
            id: format!("SBX-test{i:06}"),
            legacy_job_id: format!("JOB-test{i:06}").into(),
            agent_id: "agent".into(),
            name: format!("vm-{i}"),
            image: image.into(),
            cpus,
            memory_mb: mem,
            ttl_seconds: None,
            max_owned: None,
        }
    }

    #[test]
    fn filters_name_what_is_short() {
        let hosts = vec![
            host("host-a", HostState::Online, 4, 256, &["debian-12"]),
            host("host-b", HostState::Offline, 4, 8192, &["debian-12"]),
            host("host-c", HostState::Online, 4, 8192, &["ubuntu"]),
            host("host-d", HostState::Online, 1, 8192, &["debian-12"]),
            host("host-e", HostState::Unknown, 1, 8192, &[]),
        ];
        let mut usage = HashMap::new();
        usage.insert(
            "host-d".to_owned(),
            HostUsage {
                cpus: 4,
                memory_mb: 0,
                sandboxes: 4,
            },
        );
        let reasons = rank(&hosts, &usage, &placement(0, "debian-12", 1, 512), 4.0)
            .expect_err("nothing fits");
        let text = explain(&reasons);
        assert_eq!(
            text,
            "host-a: 256 MiB memory free < 512 requested; host-b: offline; \
             host-c: no image \"debian-12\"; \
             host-d: 0 vCPUs free (over-commit 4) < 1 requested; host-e: not yet heard from"
        );
    }

    #[test]
    fn weighs_by_free_memory_then_count_then_name() {
        let hosts = vec![
            host("c", HostState::Online, 4, 4096, &["img"]),
            host("b", HostState::Online, 4, 8192, &["img"]),
            host("a", HostState::Online, 4, 8192, &["img"]),
            host("z", HostState::Online, 4, 16384, &["img"]),
        ];
        let mut usage = HashMap::new();
        // z has the most memory but most of it is reserved.
        usage.insert(
            "z".to_owned(),
            HostUsage {
                cpus: 1,
                memory_mb: 12288,
                sandboxes: 1,
            },
        );
        usage.insert(
            "a".to_owned(),
            HostUsage {
                cpus: 0,
                memory_mb: 0,
                sandboxes: 1,
            },
        );
        let order: Vec<&str> = rank(&hosts, &usage, &placement(0, "img", 1, 512), 4.0)
            .expect("fits")
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        assert_eq!(order, ["b", "a", "c", "z"]);
    }

    #[test]
    fn a_ready_warm_member_outranks_more_free_memory() {
        let mut warm = host("warm", HostState::Online, 4, 4096, &["img"]);
        warm.pools = vec![pool("img", 1, 512, 1, 0)];
        let hosts = vec![host("big", HostState::Online, 4, 16384, &["img"]), warm];
        let usage = HashMap::new();
        let order = |p: &Placement| -> Vec<String> {
            rank(&hosts, &usage, p, 4.0)
                .expect("fits")
                .iter()
                .map(|h| h.name.clone())
                .collect()
        };
        assert_eq!(order(&placement(0, "img", 1, 512)), ["warm", "big"]);
        // Another shape, or another image: the pool is only what it holds.
        assert_eq!(order(&placement(1, "img", 2, 512)), ["big", "warm"]);
        assert_eq!(order(&placement(2, "img", 1, 1024)), ["big", "warm"]);
    }

    #[test]
    fn a_filling_member_is_not_warm() {
        let mut filling = host("filling", HostState::Online, 4, 8192, &["img"]);
        filling.pools = vec![pool("img", 1, 512, 0, 1)];
        let hosts = vec![filling, host("plain", HostState::Online, 4, 8192, &["img"])];
        let order: Vec<&str> = rank(&hosts, &HashMap::new(), &placement(0, "img", 1, 512), 4.0)
            .expect("fits")
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        // Not warm, and its filling member holds 512 MiB: the other host has more free.
        assert_eq!(order, ["plain", "filling"]);
    }

    #[test]
    fn pooled_members_can_leave_no_room() {
        let mut h = host("h", HostState::Online, 4, 2048, &["img", "other"]);
        let p = placement(0, "img", 1, 1024);
        assert_eq!(reject_reason(&h, HostUsage::default(), &p, 4.0), None);
        h.pools = vec![pool("img", 1, 512, 2, 1)];
        assert_eq!(
            reject_reason(&h, HostUsage::default(), &p, 4.0).as_deref(),
            Some("512 MiB memory free < 1024 requested (the warm pool holds 3 vCPUs, 1536 MiB)")
        );
        // vCPUs too: 4 × 1.0 = 4, 3 held by the pool.
        h.pools = vec![pool("other", 1, 64, 3, 0)];
        let p = placement(1, "img", 2, 256);
        assert_eq!(
            reject_reason(&h, HostUsage::default(), &p, 1.0).as_deref(),
            Some(
                "1 vCPUs free (over-commit 1) < 2 requested (the warm pool holds 3 vCPUs, 192 MiB)"
            )
        );
        let reasons = rank(&[h], &HashMap::new(), &p, 1.0).expect_err("no room");
        assert!(reasons[0].1.contains("warm pool"), "{reasons:?}");
    }

    #[test]
    fn a_matching_ready_member_needs_no_new_room() {
        let mut h = host("h", HostState::Online, 4, 1024, &["img"]);
        h.pools = vec![pool("img", 1, 512, 2, 0)];
        let p = placement(0, "img", 1, 512);
        // Two members hold all 1024 MiB, but the create claims one of them.
        assert_eq!(
            pooled(&h, &p),
            HostUsage {
                cpus: 1,
                memory_mb: 512,
                sandboxes: 0
            }
        );
        assert_eq!(reject_reason(&h, HostUsage::default(), &p, 4.0), None);
        // A smaller sandbox of another shape claims nothing: no room.
        let other = placement(1, "img", 1, 256);
        assert_eq!(pooled(&h, &other).memory_mb, 1024);
        assert!(reject_reason(&h, HostUsage::default(), &other, 4.0).is_some());
        // Members still filling cannot be claimed.
        h.pools = vec![pool("img", 1, 512, 0, 2)];
        assert!(reject_reason(&h, HostUsage::default(), &p, 4.0).is_some());
    }

    async fn store_with_host(dir: &tempfile::TempDir, cpus: u32, mem: u64) -> Arc<SqliteStore> {
        let store = SqliteStore::open_file(&dir.path().join("t.db"))
            .await
            .expect("open");
        store.upsert_host("h1", "h1:7443").await.expect("host");
        beat(&store, cpus, mem, vec![]).await;
        Arc::new(store)
    }

    async fn beat(store: &SqliteStore, cpus: u32, mem: u64, pools: Vec<PoolStatus>) {
        store
            .record_beat(
                "h1",
                &Beat {
                    cpus_total: cpus,
                    memory_mb_total: mem,
                    images: vec!["img".into()],
                    agent_version: "t".into(),
                    ssh_public_key: None,
                    pools,
                    simulated: false,
                    at: Utc::now(),
                },
            )
            .await
            .expect("beat");
    }

    #[tokio::test]
    async fn a_pinned_placement_counts_the_pool() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = store_with_host(&dir, 4, 2048).await;
        beat(&store, 4, 2048, vec![pool("img", 1, 512, 2, 1)]).await;
        let e = place_on(
            &*store,
            &placement(0, "img", 1, 1024),
            "h1",
            4.0,
            Utc::now(),
        )
        .await
        .expect_err("the pool holds 1536 MiB");
        assert!(
            e.to_string()
                .contains("h1: 512 MiB memory free < 1024 requested (the warm pool holds"),
            "{e}"
        );
        // Its own shape claims a ready member: 1024 MiB held, 1024 free.
        let row = place_on(&*store, &placement(1, "img", 1, 512), "h1", 4.0, Utc::now())
            .await
            .expect("a ready member is claimed");
        assert_eq!(row.host_name.as_deref(), Some("h1"));
    }

    #[tokio::test]
    async fn a_pinned_placement_uses_that_host_or_says_why_not() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = store_with_host(&dir, 4, 1024).await;
        let row = place_on(&*store, &placement(0, "img", 1, 512), "h1", 4.0, Utc::now())
            .await
            .expect("fits");
        assert_eq!(row.host_name.as_deref(), Some("h1"));
        let e = place_on(
            &*store,
            &placement(1, "img", 1, 1024),
            "h1",
            4.0,
            Utc::now(),
        )
        .await
        .expect_err("full");
        assert!(matches!(e, ScheduleError::NoCapacity(_)), "{e}");
        assert!(e.to_string().contains("h1: 512 MiB memory free"), "{e}");
        let e = place_on(&*store, &placement(2, "img", 1, 64), "h9", 4.0, Utc::now())
            .await
            .expect_err("unknown host");
        assert!(e.to_string().contains("h9: not registered"), "{e}");
        let e = place_on(
            &*store,
            &placement(3, "other", 1, 64),
            "h1",
            4.0,
            Utc::now(),
        )
        .await
        .expect_err("no image");
        assert!(e.to_string().contains("no image"), "{e}");
    }

    #[tokio::test]
    async fn unknown_image_everywhere_is_its_own_error() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = store_with_host(&dir, 4, 4096).await;
        let e = place(&*store, &placement(0, "nope", 1, 512), 4.0, Utc::now())
            .await
            .expect_err("unknown");
        assert!(matches!(e, ScheduleError::UnknownImage(_)), "{e}");
        assert!(e.to_string().contains("known images: img"), "{e}");
    }

    #[tokio::test]
    async fn concurrent_creates_never_overbook() {
        let dir = tempfile::tempdir().expect("tmp");
        // Room for exactly 10 sandboxes of 512 MiB.
        let store = store_with_host(&dir, 64, 5120).await;
        let mut tasks = Vec::new();
        for i in 0..50 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                place(&*store, &placement(i, "img", 1, 512), 4.0, Utc::now()).await
            }));
        }
        let mut ok = 0;
        let mut full = 0;
        for t in tasks {
            match t.await.expect("join") {
                Ok(_) => ok += 1,
                Err(ScheduleError::NoCapacity(_)) => full += 1,
                Err(e) => panic!("unexpected: {e}"),
            }
        }
        assert_eq!((ok, full), (10, 40));
        let usage = store.host_usage().await.expect("usage");
        assert_eq!(usage["h1"].memory_mb, 5120);
        assert_eq!(usage["h1"].sandboxes, 10);
    }
}
