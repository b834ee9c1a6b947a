//! Fork: a new sandbox whose disk is a snapshot of another sandbox on this host.
//!
//! The create path is the ordinary one (fresh id, name, MAC, domain uuid; cold boot);
//! only the overlay differs: instead of an empty overlay on the image, the snapshot's
//! disk is exported onto what the source's overlay is backed by: the image, or the
//! memory template the source was restored from (`qemu-img convert -l snapshot.name=…
//! -B <that>`, see [`crate::overlay::Overlays::create_from_snapshot`]; `convert -B`
//! copies only what the source's own overlay holds, so the base must be the source's). The fork has none of the
//! source's snapshots. Its guest keeps what the disk holds (machine-id, SSH host
//! keys); the hostname and trusted CAs are set again at boot from its own SMBIOS
//! strings.

use std::path::PathBuf;

use fluid_proto::model::{CreateSandbox, SnapshotRef};

use super::Sandboxes;
use crate::error::ServiceError;
use crate::hypervisor::Hypervisor;
use crate::images::ResolvedImage;
use crate::state::SandboxRecord;

impl<H: Hypervisor> Sandboxes<H> {
    /// Checks a fork request: the source sandbox is on this host, uses the same
    /// image, and has the snapshot. Returns the source's record.
    pub(super) async fn fork_source(
        &self,
        req: &CreateSandbox,
        from: &SnapshotRef,
    ) -> Result<SandboxRecord, ServiceError> {
        if from.name.is_reserved() {
            return Err(ServiceError::InvalidArgument(format!(
                "from_snapshot: {} is one of the agent's own snapshots",
                from.name
            )));
        }
        if from.sandbox_id == req.id {
            return Err(ServiceError::InvalidArgument(
                "from_snapshot: a sandbox cannot be forked from itself".to_owned(),
            ));
        }
        let source = self.store.get(&from.sandbox_id).await?.ok_or_else(|| {
            ServiceError::NotFound(format!(
                "from_snapshot: sandbox {} does not exist on this host",
                from.sandbox_id
            ))
        })?;
        if source.image != req.image {
            return Err(ServiceError::InvalidArgument(format!(
                "image {} differs from the image of sandbox {} ({}), which a fork of it must use",
                req.image, source.id, source.image
            )));
        }
        self.find_snapshot(&source, from.name.as_str()).await?;
        Ok(source)
    }

    /// The fork's overlay: the snapshot's disk on the source's base (the image, or the
    /// source's memory template, which the fork then shares: its name comes back).
    /// Holds the source's lock meanwhile, so the snapshot cannot be deleted or reverted
    /// under the copy.
    pub(super) async fn fork_overlay(
        &self,
        req: &CreateSandbox,
        source: &SandboxRecord,
        from: &SnapshotRef,
        image: &ResolvedImage,
    ) -> Result<(PathBuf, Option<String>), ServiceError> {
        let _source_guard = self.lock(&source.id).await;
        // Again under the lock: it may have gone while we waited.
        let source = self.record(&source.id).await.map_err(|_| {
            ServiceError::NotFound(format!(
                "from_snapshot: sandbox {} does not exist on this host",
                from.sandbox_id
            ))
        })?;
        self.find_snapshot(&source, from.name.as_str()).await?;
        let (base, base_format) = match &source.template {
            Some(t) => (self.templates.disk_of(t), "qcow2"),
            None => (image.backing.clone(), image.backing_format.as_str()),
        };
        if !tokio::fs::try_exists(&base).await.unwrap_or(false) {
            return Err(ServiceError::FailedPrecondition(format!(
                "from_snapshot: the disk sandbox {} is based on ({}) is missing",
                source.id,
                base.display()
            )));
        }
        let overlay = self
            .overlays
            .create_from_snapshot(
                &req.id,
                &source.overlay_path,
                from.name.as_str(),
                &base,
                base_format,
            )
            .await?;
        tracing::info!(
            id = %req.id, source = %source.id, snapshot = %from.name,
            "fork overlay made from a snapshot"
        );
        Ok((overlay, source.template.clone()))
    }
}
