//! Room for disk-heavy operations (issue 12, hole 7): free space checked before an
//! export or a snapshot writes anything, and caps on how many run at once.
//!
//! Free space: `statvfs` of the directory written to, less what operations in
//! progress on that file system have been promised ([`Room::reserve`]), must cover the
//! operation's worst case plus the reserve kept free (`[disk] min_free_mb`, or
//! `min_free_percent` of the file system, whichever is larger). Short: the operation
//! is refused before it starts (`InsufficientStorage`: RESOURCE_EXHAUSTED, HTTP 507).
//!
//! Caps: per sandbox and kind of operation ([`Room::begin`]; past it `Busy`:
//! RESOURCE_EXHAUSTED, HTTP 429), and the host's inspection slots (a semaphore in
//! `Sandboxes`, waited for a bounded time).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex};

use fluid_proto::model::SandboxId;

use crate::config::DiskConfig;
use crate::error::ServiceError;

const MIB: u64 = 1024 * 1024;

/// A kind of operation capped per sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Op {
    /// A diff or a file read (exports).
    Inspection,
    /// A snapshot being taken.
    Snapshot,
}

impl Op {
    fn describe(self) -> &'static str {
        match self {
            Op::Inspection => "disk inspections (diffs, file reads)",
            Op::Snapshot => "snapshots being taken",
        }
    }
}

#[derive(Debug, Default)]
struct Ledger {
    /// Bytes promised to operations in progress, by file system (`st_dev`).
    promised: HashMap<u64, u64>,
    /// Operations in progress by sandbox and kind.
    running: HashMap<(SandboxId, Op), u32>,
}

/// The free-space ledger and per-sandbox counters of one agent.
#[derive(Debug)]
pub(crate) struct Room {
    config: DiskConfig,
    ledger: Arc<Mutex<Ledger>>,
}

/// Bytes promised to one operation; given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    ledger: Arc<Mutex<Ledger>>,
    dev: u64,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut l = self.ledger.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = l.promised.get_mut(&self.dev) {
            *p = p.saturating_sub(self.bytes);
            if *p == 0 {
                l.promised.remove(&self.dev);
            }
        }
    }
}

/// One operation counted against its sandbox's cap; uncounted when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    ledger: Arc<Mutex<Ledger>>,
    key: (SandboxId, Op),
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut l = self.ledger.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = l.running.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                l.running.remove(&self.key);
            }
        }
    }
}

/// A file system's size and what an unprivileged writer may still use, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Space {
    pub total: u64,
    pub available: u64,
}

/// `statvfs` of the file system holding `dir` (or its nearest existing ancestor: the
/// directory may be made later), and its device number.
fn space_of(dir: &Path) -> Result<(Space, u64), ServiceError> {
    let io = |e: &dyn std::fmt::Display| {
        ServiceError::Internal(format!("free space of {}: {e}", dir.display()))
    };
    let dir = dir
        .ancestors()
        .find(|d| d.exists())
        .ok_or_else(|| io(&"no such directory"))?;
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| io(&e))?;
    let dev = std::fs::metadata(dir).map_err(|e| io(&e))?.dev();
    let frag = st.fragment_size();
    Ok((
        Space {
            total: st.blocks().saturating_mul(frag),
            available: st.blocks_available().saturating_mul(frag),
        },
        dev,
    ))
}

fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(MIB)
}

impl Room {
    pub(crate) fn new(config: DiskConfig) -> Self {
        Self {
            config,
            ledger: Arc::default(),
        }
    }

    pub(crate) fn config(&self) -> &DiskConfig {
        &self.config
    }

    /// Bytes kept free on a file system of `total` bytes.
    fn kept_free(&self, total: u64) -> u64 {
        let share = total / 100 * u64::from(self.config.min_free_percent);
        share.max(self.config.min_free_mb.saturating_mul(MIB))
    }

    /// Promises `need` bytes on `dir`'s file system to `what`, or refuses it
    /// (`InsufficientStorage`, naming the figures) when the file system cannot take it
    /// on top of what is already promised and the reserve.
    pub(crate) fn reserve(
        &self,
        dir: &Path,
        need: u64,
        what: &str,
    ) -> Result<Reservation, ServiceError> {
        let (space, dev) = space_of(dir)?;
        let kept = self.kept_free(space.total);
        let mut l = self.ledger.lock().unwrap_or_else(|e| e.into_inner());
        let promised = l.promised.get(&dev).copied().unwrap_or(0);
        let wanted = need.saturating_add(promised).saturating_add(kept);
        if wanted > space.available {
            return Err(ServiceError::InsufficientStorage(format!(
                "not enough disk space on host for {what}: it needs up to {} MiB in {}, \
                 where {} MiB are free, {} MiB are kept free ([disk] min_free_mb / \
                 min_free_percent) and {} MiB are promised to operations in progress; \
                 nothing was written. Free space on the host, delete snapshots, or retry \
                 later",
                mib(need),
                dir.display(),
                space.available / MIB,
                mib(kept),
                mib(promised),
            )));
        }
        *l.promised.entry(dev).or_insert(0) += need;
        Ok(Reservation {
            ledger: self.ledger.clone(),
            dev,
            bytes: need,
        })
    }

    /// Counts one `op` against `id`'s cap, or refuses it (`Busy`) at the cap.
    pub(crate) fn begin(&self, id: &SandboxId, op: Op) -> Result<Slot, ServiceError> {
        let cap = match op {
            Op::Inspection => self.config.max_inspections_per_sandbox,
            Op::Snapshot => self.config.max_snapshot_jobs_per_sandbox,
        };
        let mut l = self.ledger.lock().unwrap_or_else(|e| e.into_inner());
        let n = l.running.entry((id.clone(), op)).or_insert(0);
        if *n >= cap {
            return Err(ServiceError::Busy(format!(
                "sandbox {id} is at its cap of {n} {} in progress ([disk] \
                 max_{}_per_sandbox); retry when one is done",
                op.describe(),
                match op {
                    Op::Inspection => "inspections",
                    Op::Snapshot => "snapshot_jobs",
                },
            )));
        }
        *n += 1;
        Ok(Slot {
            ledger: self.ledger.clone(),
            key: (id.clone(), op),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(min_free_mb: u64, percent: u8) -> Room {
        Room::new(DiskConfig {
            min_free_mb,
            min_free_percent: percent,
            ..DiskConfig::default()
        })
    }

    #[test]
    fn reservations_add_up_and_are_given_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (space, dev) = space_of(dir.path()).expect("statvfs");
        let r = room(0, 0);
        // Half of what is free, twice: the second does not fit on top of the first.
        let half = space.available / 2 + MIB;
        let first = r.reserve(dir.path(), half, "a test").expect("fits");
        let err = r
            .reserve(dir.path(), half, "a second test")
            .expect_err("over");
        assert!(
            matches!(err, ServiceError::InsufficientStorage(_)),
            "{err:?}"
        );
        let m = err.to_string();
        assert!(m.contains("a second test") && m.contains("promised"), "{m}");
        drop(first);
        assert!(!r.ledger.lock().expect("lock").promised.contains_key(&dev));
        let again = r.reserve(dir.path(), half, "a test").expect("fits again");
        drop(again);
    }

    #[test]
    fn the_reserve_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (space, _) = space_of(dir.path()).expect("statvfs");
        // All but the reserve is free: 1 byte is refused with a reserve of everything.
        let r = room(space.available / MIB + 1, 0);
        assert!(matches!(
            r.reserve(dir.path(), 1, "x"),
            Err(ServiceError::InsufficientStorage(_))
        ));
        // The larger of the two reserves.
        assert_eq!(room(0, 10).kept_free(1000 * MIB), 100 * MIB);
        assert_eq!(room(200, 10).kept_free(1000 * MIB), 200 * MIB);
        assert!(room(0, 0).reserve(dir.path(), 1, "x").is_ok());
    }

    #[test]
    fn per_sandbox_caps() {
        let r = Room::new(DiskConfig {
            max_inspections_per_sandbox: 2,
            max_snapshot_jobs_per_sandbox: 1,
            ..DiskConfig::default()
        });
        let a = SandboxId::parse("id", "SBX-aaaaaaaa").expect("id");
        let b = SandboxId::parse("id", "SBX-bbbbbbbb").expect("id");
        let i1 = r.begin(&a, Op::Inspection).expect("1");
        let _i2 = r.begin(&a, Op::Inspection).expect("2");
        let err = r.begin(&a, Op::Inspection).expect_err("at the cap");
        assert!(matches!(err, ServiceError::Busy(_)), "{err:?}");
        assert!(
            err.to_string().contains("max_inspections_per_sandbox"),
            "{err}"
        );
        // Other kinds and other sandboxes have their own counts.
        let _s = r.begin(&a, Op::Snapshot).expect("a snapshot");
        assert!(r.begin(&a, Op::Snapshot).is_err());
        let _o = r.begin(&b, Op::Inspection).expect("another sandbox");
        drop(i1);
        let _i3 = r.begin(&a, Op::Inspection).expect("a slot was given back");
    }
}
