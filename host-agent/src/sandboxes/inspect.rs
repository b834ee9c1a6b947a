//! Diffs of two disk states, and one file of a disk state, read out-of-band from the
//! images with `fluid_inspect` (never through a program in the guest).
//!
//! A disk state is a snapshot of a sandbox on this host, or its disk "now": then a
//! temporary snapshot `fluid-now-<10 random letters>` is taken (with memory while the
//! sandbox runs, after a `sync` in the guest, as any snapshot) and always deleted once
//! exported. Each side is exported with `qemu-img convert` to a raw file in
//! `<state_dir>/scratch` (0700), under the sandbox's lock (so the snapshot cannot go
//! away under the copy), then opened and compared on the blocking pool. The raw files
//! are removed afterwards in every case; the agent clears `scratch` and its temporary
//! snapshots at start, in case it died in between.
//!
//! Each operation runs in its own task, so a caller that goes away does not leave a
//! temporary snapshot or raw file behind. At most `[disk] max_inspections_per_sandbox`
//! run at once per sandbox (past it: `Busy`, 429) and `[disk] max_inspections` on the
//! host (waited for up to `inspection_queue_seconds`, then `Busy`).
//!
//! Before anything is written, the room for it is promised ([`super::room`]): an
//! export needs what `qemu-img measure` reports the disk state has allocated (the raw
//! file is sparse: unallocated and zero areas are not written), a temporary snapshot
//! of a running sandbox about its memory. Short of space, the operation is refused
//! (`InsufficientStorage`, 507) with nothing written. A "now" side is measured before
//! its temporary snapshot is taken (a copy that cannot fit costs no snapshot), then
//! again exactly once it exists.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fluid_inspect::{DiffOptions, DiskImage, FileMeta, InspectError, SnapshotDiff};
use fluid_proto::model::{DiskState, SandboxId};
use rand::Rng as _;

use super::Sandboxes;
use super::room::{Op, Reservation, Slot};
use super::scratch::ScratchFile;
use crate::error::ServiceError;
use crate::hypervisor::Hypervisor;
use crate::state::SandboxRecord;

/// The largest text limit a diff may ask for.
pub const TEXT_LIMIT_MAX: u64 = 1024 * 1024;
/// The largest file a read may ask for, and the default.
pub const READ_MAX: u64 = 256 * 1024 * 1024;
pub const READ_DEFAULT: u64 = 64 * 1024 * 1024;
/// Temporary snapshots of "now" are named this plus 10 random lowercase letters.
pub const TEMP_PREFIX: &str = "fluid-now-";

/// A diff request, validated (text limit within [`TEXT_LIMIT_MAX`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffRequest {
    pub from: DiskState,
    pub to: DiskState,
    /// Empty: the default list ([`DiffOptions::default_volatile`]).
    pub volatile_paths: Vec<String>,
    /// Empty: the default list ([`DiffOptions::default_metadata_only`]).
    pub metadata_only_paths: Vec<String>,
    /// 0: the default (256 KiB).
    pub text_limit_bytes: u64,
    /// For the `sync` before a temporary snapshot of a running sandbox.
    pub ssh_certificate: String,
}

/// A file read request, validated (`max_bytes` within [`READ_MAX`]; the path is
/// checked by `fluid_inspect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadFileRequest {
    pub state: DiskState,
    pub path: String,
    /// 0: [`READ_DEFAULT`].
    pub max_bytes: u64,
    pub ssh_certificate: String,
}

impl From<InspectError> for ServiceError {
    fn from(e: InspectError) -> Self {
        let m = e.to_string();
        match e {
            InspectError::NotFound(_) => Self::NotFound(m),
            InspectError::TooLarge { .. } => Self::OutOfRange(m),
            InspectError::InvalidPath { .. } | InspectError::InvalidSnapshotName(_) => {
                Self::InvalidArgument(m)
            }
            InspectError::NotAFile(_) | InspectError::Unsupported(_) | InspectError::Corrupt(_) => {
                Self::FailedPrecondition(m)
            }
            InspectError::Io(_) | InspectError::QemuImg(_) => Self::Internal(m),
        }
    }
}

/// One side, exported.
struct Exported {
    file: ScratchFile,
    /// The services the guest reported active, when this side has memory state.
    live_services: Option<Vec<String>>,
    /// The scratch space promised to the file (given back after it is removed).
    _room: Reservation,
}

fn temp_snapshot_name() -> String {
    let mut rng = rand::rng();
    let tail: String = (0..10)
        .map(|_| char::from(rng.random_range(b'a'..=b'z')))
        .collect();
    format!("{TEMP_PREFIX}{tail}")
}

/// `active`/`inactive` per the side's live services; empty when not known.
fn activity(live: Option<&[String]>, unit: &str) -> String {
    match live {
        Some(l) if l.iter().any(|s| s == unit) => "active".to_owned(),
        Some(_) => "inactive".to_owned(),
        None => String::new(),
    }
}

fn join_error(e: tokio::task::JoinError) -> ServiceError {
    ServiceError::Internal(format!("the disk inspection task failed: {e}"))
}

impl<H: Hypervisor> Sandboxes<H> {
    /// The scratch directory for exported images.
    pub(crate) fn scratch_dir(&self) -> PathBuf {
        self.config.state_dir.join("scratch")
    }

    /// At start: an empty scratch directory (0700), and no temporary snapshot left by
    /// an agent that died during a diff. Best effort beyond the directory itself.
    pub async fn clear_leftovers(&self) -> Result<(), ServiceError> {
        let dir = self.scratch_dir();
        let io = |e: std::io::Error| {
            ServiceError::Internal(format!("scratch directory {}: {e}", dir.display()))
        };
        tokio::fs::create_dir_all(&dir).await.map_err(io)?;
        tokio::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .await
            .map_err(io)?;
        let mut entries = tokio::fs::read_dir(&dir).await.map_err(io)?;
        while let Some(entry) = entries.next_entry().await.map_err(io)? {
            tracing::warn!(path = %entry.path().display(), "removing a leftover scratch file");
            if let Err(e) = tokio::fs::remove_file(entry.path()).await {
                tracing::warn!(path = %entry.path().display(), "removing a scratch file: {e}");
            }
        }
        for r in self.store.list().await? {
            let _guard = self.lock(&r.id).await;
            let Ok(snapshots) = self.hv.snapshot_list(&r.domain_uuid).await else {
                continue;
            };
            for s in snapshots.iter().filter(|s| s.name.starts_with(TEMP_PREFIX)) {
                tracing::warn!(id = %r.id, snapshot = s.name, "removing a leftover temporary snapshot");
                if let Err(e) = self.delete_snapshot_locked(&r, &s.name).await {
                    tracing::warn!(id = %r.id, snapshot = s.name, "{e}");
                }
            }
        }
        Ok(())
    }

    /// Compares two disk states (see the module docs).
    pub async fn diff(self: &Arc<Self>, req: DiffRequest) -> Result<SnapshotDiff, ServiceError> {
        let this = self.clone();
        // In the caller's span: the export and comparison stay in its trace.
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            this.diff_owned(req).await
        }))
        .await
        .map_err(join_error)?
    }

    async fn diff_owned(&self, req: DiffRequest) -> Result<SnapshotDiff, ServiceError> {
        if req.from == req.to {
            return Err(ServiceError::InvalidArgument(
                "from and to are the same disk state".to_owned(),
            ));
        }
        if req.text_limit_bytes > TEXT_LIMIT_MAX {
            return Err(ServiceError::InvalidArgument(format!(
                "text_limit_bytes: at most {TEXT_LIMIT_MAX}"
            )));
        }
        let started = tokio::time::Instant::now();
        // Both sandboxes must be here before anything is exported.
        self.record(&req.from.sandbox_id).await?;
        self.record(&req.to.sandbox_id).await?;
        let _slots = self.inspection_slots(&[&req.from.sandbox_id, &req.to.sandbox_id])?;
        let _slot = self.host_inspection_slot().await?;
        let from = self.export_side(&req.from, &req.ssh_certificate).await?;
        let to = self.export_side(&req.to, &req.ssh_certificate).await?;
        let opts = DiffOptions {
            volatile_paths: if req.volatile_paths.is_empty() {
                DiffOptions::default_volatile()
            } else {
                req.volatile_paths
            },
            metadata_only_paths: if req.metadata_only_paths.is_empty() {
                DiffOptions::default_metadata_only()
            } else {
                req.metadata_only_paths
            },
            text_limit_bytes: req.text_limit_bytes,
        };
        let (from_path, to_path) = (from.file.path().to_owned(), to.file.path().to_owned());
        let mut diff = tokio::task::spawn_blocking(move || {
            let a = DiskImage::open(&from_path)?;
            let b = DiskImage::open(&to_path)?;
            let ma = fluid_inspect::manifest(&a, &opts)?;
            let mb = fluid_inspect::manifest(&b, &opts)?;
            fluid_inspect::diff((&a, &ma), (&b, &mb), &opts)
        })
        .await
        .map_err(join_error)??;
        for s in &mut diff.services {
            s.before_active = activity(from.live_services.as_deref(), &s.name);
            s.after_active = activity(to.live_services.as_deref(), &s.name);
        }
        diff.elapsed_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
        tracing::info!(
            from = %req.from.sandbox_id, from_snapshot = ?req.from.snapshot,
            to = %req.to.sandbox_id, to_snapshot = ?req.to.snapshot,
            files = diff.files.len(), packages = diff.packages.len(),
            services = diff.services.len(), elapsed_ms = diff.elapsed_ms, "disk states compared"
        );
        Ok(diff)
    }

    /// One file of a disk state: its metadata and content (see the module docs).
    pub async fn read_snapshot_file(
        self: &Arc<Self>,
        req: ReadFileRequest,
    ) -> Result<(FileMeta, Vec<u8>), ServiceError> {
        let this = self.clone();
        tokio::spawn(async move { this.read_file_owned(req).await })
            .await
            .map_err(join_error)?
    }

    async fn read_file_owned(
        &self,
        req: ReadFileRequest,
    ) -> Result<(FileMeta, Vec<u8>), ServiceError> {
        if req.max_bytes > READ_MAX {
            return Err(ServiceError::InvalidArgument(format!(
                "max_bytes: at most {READ_MAX}"
            )));
        }
        // A bad path is refused before anything is exported.
        fluid_inspect::validate_path(&req.path)?;
        self.record(&req.state.sandbox_id).await?;
        let _slots = self.inspection_slots(&[&req.state.sandbox_id])?;
        let _slot = self.host_inspection_slot().await?;
        let side = self.export_side(&req.state, &req.ssh_certificate).await?;
        let path = side.file.path().to_owned();
        let max = if req.max_bytes == 0 {
            READ_DEFAULT
        } else {
            req.max_bytes
        };
        let file = req.path.clone();
        let (meta, data) = tokio::task::spawn_blocking(move || {
            let img = DiskImage::open(&path)?;
            fluid_inspect::read_file(&img, &file, max)
        })
        .await
        .map_err(join_error)??;
        drop(side);
        Ok((meta, data))
    }

    /// One inspection counted against each sandbox's cap (`Busy` past it).
    fn inspection_slots(&self, ids: &[&SandboxId]) -> Result<Vec<Slot>, ServiceError> {
        let mut slots = Vec::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            if ids[..i].contains(id) {
                continue;
            }
            slots.push(self.room.begin(id, Op::Inspection)?);
        }
        Ok(slots)
    }

    /// One of the host's inspection slots, waited for a bounded time (`Busy` after).
    async fn host_inspection_slot(
        &self,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, ServiceError> {
        let wait = Duration::from_secs(u64::from(self.room.config().inspection_queue_seconds));
        match tokio::time::timeout(wait, self.inspect_slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(e)) => Err(ServiceError::Internal(format!("inspection slots: {e}"))),
            Err(_) => Err(ServiceError::Busy(format!(
                "this host already runs {} disk inspections (diffs, file reads) and none \
                 ended within {} s ([disk] max_inspections, inspection_queue_seconds); \
                 retry later",
                self.room.config().max_inspections,
                wait.as_secs()
            ))),
        }
    }

    /// Promises the scratch space for exporting `snapshot` (None: the current state,
    /// an estimate) of `r`.
    async fn export_room(
        &self,
        r: &SandboxRecord,
        snapshot: Option<&str>,
        what: &str,
    ) -> Result<Reservation, ServiceError> {
        let need = fluid_inspect::export_size(&r.overlay_path, snapshot).await?;
        self.room.reserve(
            &self.scratch_dir(),
            need,
            &format!("exporting {what} of sandbox {} (a diff or file read)", r.id),
        )
    }

    /// Exports one disk state to a scratch file, under the sandbox's lock.
    async fn export_side(
        &self,
        side: &DiskState,
        certificate: &str,
    ) -> Result<Exported, ServiceError> {
        let file = ScratchFile::new(
            self.scratch_dir()
                .join(format!("{}.raw", uuid::Uuid::new_v4())),
        );
        let _guard = self.lock(&side.sandbox_id).await;
        let r = self.record(&side.sandbox_id).await?;
        let t = tokio::time::Instant::now();
        let (live_services, room) = match &side.snapshot {
            Some(name) => {
                let snap = self.find_snapshot(&r, name.as_str()).await?;
                let room = self
                    .export_room(&r, Some(name.as_str()), &format!("snapshot {name}"))
                    .await?;
                export(&r.overlay_path, name.as_str(), file.path()).await?;
                let live = super::snapshots::SnapshotMeta::of(&snap)
                    .filter(|_| snap.memory)
                    .map(|m| m.active_services);
                (live, room)
            }
            None => {
                // Refused before a temporary snapshot is taken when even the current
                // state's copy cannot fit.
                let estimate = self.export_room(&r, None, "the current disk state").await?;
                let temp = temp_snapshot_name();
                let taken = self
                    .take_snapshot_locked(&r, &temp, false, certificate)
                    .await;
                let mut room = None;
                let exported = match &taken {
                    Ok(_) => {
                        drop(estimate);
                        match self
                            .export_room(&r, Some(&temp), "the current disk state")
                            .await
                        {
                            Ok(exact) => {
                                room = Some(exact);
                                export(&r.overlay_path, &temp, file.path()).await
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Err(_) => Ok(()),
                };
                // Always, whatever failed (a create may fail after the snapshot exists).
                if let Err(e) = self.delete_snapshot_locked(&r, &temp).await {
                    tracing::warn!(id = %r.id, snapshot = temp, "deleting the temporary snapshot: {e}");
                }
                let taken = taken?;
                exported?;
                let room = room.ok_or_else(|| {
                    ServiceError::Internal("the export's space was not promised".to_owned())
                })?;
                (taken.memory.then_some(taken.active_services), room)
            }
        };
        tracing::info!(
            id = %r.id, snapshot = ?side.snapshot, export_ms = t.elapsed().as_millis(),
            "disk state exported"
        );
        Ok(Exported {
            file,
            // An empty list means the guest did not say, not that nothing ran.
            live_services: live_services.filter(|l| !l.is_empty()),
            _room: room,
        })
    }
}

async fn export(overlay: &Path, snapshot: &str, dest: &Path) -> Result<(), ServiceError> {
    fluid_inspect::export_raw(overlay, Some(snapshot), dest).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_are_reserved_and_valid() {
        let n = temp_snapshot_name();
        assert_eq!(n.len(), TEMP_PREFIX.len() + 10);
        assert!(
            n[TEMP_PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_lowercase())
        );
        let parsed = fluid_proto::model::SnapshotName::parse("n", &n).expect("a valid name");
        assert!(parsed.is_reserved());
        assert_ne!(n, temp_snapshot_name());
    }

    #[test]
    fn activity_is_known_only_for_live_sides() {
        let live = vec!["nginx.service".to_owned()];
        assert_eq!(activity(Some(&live), "nginx.service"), "active");
        assert_eq!(activity(Some(&live), "ssh.service"), "inactive");
        assert_eq!(activity(None, "nginx.service"), "");
    }

    #[test]
    fn inspect_errors_map_to_statuses() {
        let code = |e: InspectError| tonic::Status::from(ServiceError::from(e)).code();
        assert_eq!(
            code(InspectError::NotFound("/x".into())),
            tonic::Code::NotFound
        );
        assert_eq!(
            code(InspectError::TooLarge {
                path: "/x".into(),
                size: 2,
                max: 1
            }),
            tonic::Code::OutOfRange
        );
        assert_eq!(
            code(InspectError::InvalidPath {
                path: "x".into(),
                reason: "relative"
            }),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            code(InspectError::NotAFile("/etc".into())),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(
            code(InspectError::QemuImg("x".into())),
            tonic::Code::Internal
        );
    }
}
