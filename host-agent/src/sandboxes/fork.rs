//! Fork: a new sandbox that starts as another sandbox on this host, from one of its
//! snapshots or as it runs now.
//!
//! The create path is the ordinary one (fresh id, name, MAC, address, domain uuid);
//! what differs is where the disk and the first running state come from:
//!
//! - **From a snapshot with memory** (`from_snapshot`, a snapshot taken while the
//!   source ran): the source's overlay is copied whole while no QEMU has it open (a
//!   running source is saved for the copy and resumed, as for a live fork), the copy
//!   keeps only that snapshot and its disk is set to it
//!   ([`crate::overlay::Overlays::copy_at_snapshot`]). The snapshot is redefined on
//!   the fork's domain with the fork's domain XML and reverted to: the fork resumes
//!   the snapshot's memory, takes its own identity as a template's clone does, and the
//!   snapshot is deleted from it ([`super::Provision::Snapshot`]).
//! - **From a disk-only snapshot**: the snapshot's disk is exported onto what
//!   the source's overlay is backed by: the image, or the memory template the source
//!   was restored from (`qemu-img convert -l snapshot.name=… -B <that>`, see
//!   [`crate::overlay::Overlays::create_from_snapshot`]; `convert -B` copies only what
//!   the source's own overlay holds, so the base must be the source's). The fork
//!   cold-boots that disk; its guest keeps what the disk holds (machine-id, SSH host
//!   keys), and the hostname and trusted CAs are set again at boot from its SMBIOS.
//! - **Live** (`fork_of_running`): the source is saved (libvirt's save image: memory and
//!   device state; the domain stops), its overlay is copied as it stands, and it is
//!   restored as it was: it pauses for the copy, then runs on with its processes and
//!   connections (its clock is stepped to now). The saved state is then the fork's: restored under the fork's own
//!   domain XML and given a new identity as a template's clone is
//!   ([`super::Provision::Fork`]).
//!
//! Either way the fork has none of the source's snapshots.

use std::path::PathBuf;
use std::time::Duration;

use fluid_proto::model::{CreateSandbox, SandboxId, SnapshotRef};
use tokio::time::Instant;

use super::Sandboxes;
use super::scratch::ScratchFile;
use crate::error::ServiceError;
use crate::hypervisor::{DomainState, Hypervisor};
use crate::images::ResolvedImage;
use crate::state::SandboxRecord;

const MIB: u64 = 1024 * 1024;

/// A fork's disk from a snapshot, and the snapshot's memory when it has some.
pub(super) struct SnapshotFork {
    pub overlay: PathBuf,
    /// The memory template the overlay is backed by (the source's), if any.
    pub template: Option<String>,
    /// The snapshot (its name and libvirt XML) the fork's domain reverts to; `None`:
    /// a disk-only snapshot, cold-booted.
    pub memory: Option<(String, String)>,
}

/// A live fork's disk and saved memory, made from its running source.
pub(super) struct LiveFork {
    pub overlay: PathBuf,
    /// The memory template the overlay is backed by (the source's), if any.
    pub template: Option<String>,
    /// The source's save image, to be restored as the fork.
    pub state: PathBuf,
}

impl<H: Hypervisor> Sandboxes<H> {
    /// Checks a fork request: the source sandbox is on this host, uses the same image,
    /// and has the snapshot (or, for a live fork, runs). Returns the source's record;
    /// `None` when `req` is not a fork.
    pub(super) async fn fork_source(
        &self,
        req: &CreateSandbox,
    ) -> Result<Option<SandboxRecord>, ServiceError> {
        let (field, source_id, snapshot) = match (&req.from_snapshot, &req.fork_of_running) {
            (Some(from), _) => ("from_snapshot", &from.sandbox_id, Some(&from.name)),
            (None, Some(id)) => ("fork_of_running", id, None),
            (None, None) => return Ok(None),
        };
        if let Some(name) = snapshot
            && name.is_reserved()
        {
            return Err(ServiceError::InvalidArgument(format!(
                "from_snapshot: {name} is one of the agent's own snapshots"
            )));
        }
        if *source_id == req.id {
            return Err(ServiceError::InvalidArgument(format!(
                "{field}: a sandbox cannot be forked from itself"
            )));
        }
        let source = self.store.get(source_id).await?.ok_or_else(|| {
            ServiceError::NotFound(format!(
                "{field}: sandbox {source_id} does not exist on this host"
            ))
        })?;
        if source.image != req.image {
            return Err(ServiceError::InvalidArgument(format!(
                "image {} differs from the image of sandbox {} ({}), which a fork of it must use",
                req.image, source.id, source.image
            )));
        }
        match snapshot {
            Some(name) => {
                self.find_snapshot(&source, name.as_str()).await?;
            }
            None => self.require_running(&source).await?,
        }
        Ok(Some(source))
    }

    /// The fork's overlay from a snapshot. With memory (and a fork that starts): a copy
    /// of the source's overlay holding only that snapshot, set to it, and the
    /// snapshot's XML. Disk-only: the snapshot's disk on the source's base (the image,
    /// or the source's memory template, which the fork then shares: its name comes
    /// back). Holds the source's lock meanwhile, so the snapshot cannot be deleted or
    /// reverted under the copy.
    pub(super) async fn fork_overlay(
        &self,
        req: &CreateSandbox,
        source: &SandboxRecord,
        from: &SnapshotRef,
        image: &ResolvedImage,
    ) -> Result<SnapshotFork, ServiceError> {
        let _source_guard = self.lock(&source.id).await;
        let source = self.fork_source_again(&source.id, "from_snapshot").await?;
        let name = from.name.as_str();
        let snapshot = self.find_snapshot(&source, name).await?;
        let (base, base_format) = self.fork_base(&source, image).await?;
        let state = self.hv.domain_state(&source.domain_uuid).await?;
        let resumable = matches!(state, DomainState::Running | DomainState::ShutOff);
        if snapshot.memory && req.start && resumable {
            let xml = self.hv.snapshot_xml(&source.domain_uuid, name).await?;
            let others: Vec<String> = self
                .domain_snapshots(&source)
                .await?
                .into_iter()
                .map(|s| s.name)
                .filter(|n| n != name)
                .collect();
            let room = self.copy_room(&source, "the snapshot's memory")?;
            let copy = self
                .overlays
                .copy_at_snapshot(&req.id, &source.overlay_path, name, &others);
            let overlay = if state == DomainState::Running {
                let saved = self
                    .config
                    .state_dir
                    .join("restore")
                    .join(format!("{}.source.save", req.id));
                let copied = self.with_source_saved(&source, &saved, copy).await;
                let _ = tokio::fs::remove_file(&saved).await;
                copied?
            } else {
                copy.await?
            };
            drop(room);
            tracing::info!(id = %req.id, source = %source.id, snapshot = name, "fork overlay copied with the snapshot's memory");
            return Ok(SnapshotFork {
                overlay,
                template: source.template.clone(),
                memory: Some((name.to_owned(), xml)),
            });
        }
        let overlay = self
            .overlays
            .create_from_snapshot(
                &req.id,
                &source.overlay_path,
                Some(name),
                &base,
                base_format,
            )
            .await?;
        tracing::info!(
            id = %req.id, source = %source.id, snapshot = name,
            "fork overlay made from a snapshot's disk"
        );
        Ok(SnapshotFork {
            overlay,
            template: source.template.clone(),
            memory: None,
        })
    }

    /// A live fork's disk and memory: the source is saved (it stops), its overlay is
    /// copied as it stands, and it is restored as it was. Holds the source's lock
    /// throughout.
    pub(super) async fn fork_running(
        &self,
        req: &CreateSandbox,
        source: &SandboxRecord,
        image: &ResolvedImage,
    ) -> Result<LiveFork, ServiceError> {
        let _source_guard = self.lock(&source.id).await;
        let source = self
            .fork_source_again(&source.id, "fork_of_running")
            .await?;
        self.require_running(&source).await?;
        let (base, base_format) = self.fork_base(&source, image).await?;
        let _room = self.copy_room(&source, "its memory and disk")?;
        let state = self.fork_state_path(&req.id);
        let copy = self.overlays.create_from_snapshot(
            &req.id,
            &source.overlay_path,
            None,
            &base,
            base_format,
        );
        let overlay = self.with_source_saved(&source, &state, copy).await?;
        Ok(LiveFork {
            overlay,
            template: source.template.clone(),
            state,
        })
    }

    /// Room for a fork's copy: the source's memory (a save image in `restore/`) and
    /// what its overlay holds now.
    fn copy_room(
        &self,
        source: &SandboxRecord,
        what: &str,
    ) -> Result<[super::room::Reservation; 2], ServiceError> {
        let overlay_bytes = std::fs::metadata(&source.overlay_path)
            .map(|m| m.len())
            .unwrap_or(0);
        let overlays = source.overlay_path.parent().unwrap_or(&source.overlay_path);
        Ok([
            self.room.reserve(
                &self.config.state_dir,
                source.memory_mb.saturating_mul(MIB),
                &format!("a fork of sandbox {}: {what}", source.id),
            )?,
            self.room.reserve(
                overlays,
                overlay_bytes,
                &format!("a copy of the disk of sandbox {} for its fork", source.id),
            )?,
        ])
    }

    /// Saves the running `source` into `state`, makes the fork's overlay with `copy`
    /// while the source's disk is closed and consistent, and restores the source from
    /// `state` (its clock stepped). If it cannot be restored, it is started from its
    /// disk (its memory is lost) and this fails. On success `state` is the caller's; on
    /// error it and the copy are gone.
    async fn with_source_saved(
        &self,
        source: &SandboxRecord,
        state: &std::path::Path,
        copy: impl std::future::Future<Output = Result<PathBuf, crate::overlay::OverlayError>>,
    ) -> Result<PathBuf, ServiceError> {
        if let Some(dir) = state.parent() {
            crate::overlay::ensure_dir(dir)
                .await
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
        }
        // Created by the agent first: libvirtd fills it and keeps the agent its owner.
        tokio::fs::write(state, b"")
            .await
            .map_err(|e| ServiceError::Internal(format!("{}: {e}", state.display())))?;
        let state_file = ScratchFile::new(state.to_owned());
        let paused = Instant::now();
        self.hv.save(&source.domain_uuid, state).await?;
        let copied = copy.await;
        if let Err(e) = self.hv.restore(state).await {
            tracing::error!(source = %source.id, "a fork's source was not resumed, starting it from its disk: {e}");
            let started = self.hv.start(&source.domain_uuid).await;
            if let Ok(overlay) = &copied {
                let _ = self.overlays.remove(overlay).await;
            }
            return Err(ServiceError::Internal(format!(
                "sandbox {} was saved for the fork but could not be resumed ({e}); it was \
                 started again from its disk{}",
                source.id,
                match started {
                    Ok(()) => String::new(),
                    Err(e) => format!(", which failed too: {e}"),
                }
            )));
        }
        let paused_ms = paused.elapsed().as_millis();
        self.step_clock(source).await;
        tracing::info!(source = %source.id, paused_ms, "a fork's source was saved, copied and resumed");
        let overlay = copied?;
        state_file.keep();
        Ok(overlay)
    }

    /// Steps a resumed guest's clock to now: it stood still while the guest was saved.
    /// Best-effort (a guest without its agent keeps its clock, a few seconds behind).
    async fn step_clock(&self, r: &SandboxRecord) {
        let argv = [
            "date".to_owned(),
            "-u".to_owned(),
            "-s".to_owned(),
            format!("@{}", crate::unix_now()),
        ];
        match self
            .hv
            .guest_exec(&r.domain_uuid, &argv, Duration::from_secs(10))
            .await
        {
            Ok(out) if out.exit_code == 0 => {}
            Ok(out) => {
                tracing::warn!(id = %r.id, "stepping the clock exited {}: {}", out.exit_code, out.stderr.trim())
            }
            Err(e) => tracing::warn!(id = %r.id, "stepping the clock: {e}"),
        }
    }

    /// Where a live fork's saved state waits for its restore.
    pub(super) fn fork_state_path(&self, id: &SandboxId) -> PathBuf {
        self.config
            .state_dir
            .join("restore")
            .join(format!("{id}.fork.save"))
    }

    /// The source's record again, under its lock: it may have gone while we waited.
    async fn fork_source_again(
        &self,
        id: &SandboxId,
        field: &str,
    ) -> Result<SandboxRecord, ServiceError> {
        self.record(id).await.map_err(|_| {
            ServiceError::NotFound(format!("{field}: sandbox {id} does not exist on this host"))
        })
    }

    /// What the source's overlay is backed by: its memory template's disk, or the image.
    async fn fork_base<'a>(
        &self,
        source: &SandboxRecord,
        image: &'a ResolvedImage,
    ) -> Result<(PathBuf, &'a str), ServiceError> {
        let (base, base_format) = match &source.template {
            Some(t) => (self.templates.disk_of(t), "qcow2"),
            None => (image.backing.clone(), image.backing_format.as_str()),
        };
        if !tokio::fs::try_exists(&base).await.unwrap_or(false) {
            return Err(ServiceError::FailedPrecondition(format!(
                "the disk sandbox {} is based on ({}) is missing",
                source.id,
                base.display()
            )));
        }
        Ok((base, base_format))
    }

    /// A live fork needs its source running.
    async fn require_running(&self, source: &SandboxRecord) -> Result<(), ServiceError> {
        match self.hv.domain_state(&source.domain_uuid).await? {
            DomainState::Running => Ok(()),
            other => Err(ServiceError::FailedPrecondition(format!(
                "sandbox {} is {}: only a running sandbox forks live; start it, or fork one \
                 of its snapshots",
                source.id,
                describe(&other)
            ))),
        }
    }
}

fn describe(s: &DomainState) -> String {
    match s {
        DomainState::Running => "running".into(),
        DomainState::ShutOff => "stopped".into(),
        DomainState::Paused => "paused".into(),
        DomainState::Crashed => "crashed".into(),
        DomainState::Other(o) => o.clone(),
    }
}

/// The snapshot name a fork request names, if any (for logs).
pub(super) fn fork_label(req: &CreateSandbox) -> Option<String> {
    match (&req.from_snapshot, &req.fork_of_running) {
        (Some(f), _) => Some(format!("{}/{}", f.sandbox_id, f.name)),
        (None, Some(id)) => Some(format!("{id} (running)")),
        (None, None) => None,
    }
}
