//! Snapshots of a sandbox: create, list, revert, delete.
//!
//! A snapshot is the hypervisor's internal snapshot of the sandbox's overlay (qcow2):
//! with the memory state while the sandbox runs, disk-only while it is shut off. The
//! hypervisor is the only record of which snapshots exist; the agent's own metadata
//! ([`SnapshotMeta`]: the guest `sync` outcome, the services the guest reported active,
//! the address and SSH host key at the time) is JSON in the snapshot's description.
//!
//! Before a live snapshot the agent runs `sync` in the guest (30 s) and
//! `systemctl list-units --type=service --state=active` (15 s) over its SSH connection:
//! the disk is later read out-of-band, so writes still in the guest's page cache would
//! be missed. Neither may fail the snapshot; their outcome is recorded.
//!
//! Names starting with `fluid-` are the agent's own (temporary snapshots of "now" for
//! a diff): callers cannot create, delete or see them. Every operation takes the
//! sandbox's lock.

use std::net::Ipv4Addr;
use std::time::Duration;

use fluid_proto::guest::{SERVICES_COMMAND, SYNC_COMMAND};
use fluid_proto::model::{Exec, ExecEvent, SandboxId, SnapshotName, SnapshotRef};
use serde::{Deserialize, Serialize};

use super::exec::known_host_key;
use super::room::Op;
use super::{SandboxView, Sandboxes};
use crate::error::ServiceError;
use crate::exec::backend::ExecTarget;
use crate::hypervisor::{DomainSnapshot, DomainState, Hypervisor, HypervisorError, RevertTo};
use crate::state::SandboxRecord;

/// Time allowed for `sync` in the guest before a live snapshot.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for listing the guest's active services.
pub const SERVICES_TIMEOUT: Duration = Duration::from_secs(15);
/// Output kept from one of those commands.
const GUEST_OUTPUT_CAP: u64 = 1024 * 1024;
const MIB: u64 = 1024 * 1024;
/// Room counted for a snapshot besides the guest's memory (qcow2 tables it copies).
const SNAPSHOT_METADATA_BYTES: u64 = 64 * MIB;

/// A snapshot request from a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateSnapshot {
    pub sandbox_id: SandboxId,
    pub name: SnapshotName,
    /// Refused while the sandbox runs (an internal snapshot of a running domain always
    /// includes its memory).
    pub disk_only: bool,
    /// For (re)connecting to the guest to run `sync` (see `Exec`); may be empty.
    pub ssh_certificate: String,
}

/// One snapshot as the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotView {
    pub sandbox_id: SandboxId,
    pub name: String,
    /// Memory state included (taken while running).
    pub memory: bool,
    /// `running`, `shutoff`, `paused`: the sandbox's state when it was taken.
    pub vm_state: String,
    pub created_at_unix: i64,
    /// `ok`, `skipped: …` or `failed: …`; empty for a snapshot the agent did not take.
    pub guest_sync: String,
    /// Services the guest reported active (live snapshots only; informative).
    pub active_services: Vec<String>,
}

/// The agent's metadata, stored as JSON in the snapshot's description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotMeta {
    /// Format marker: only descriptions with it are read as the agent's.
    pub fluid_snapshot: u32,
    pub guest_sync: String,
    #[serde(default)]
    pub active_services: Vec<String>,
    pub created_at: i64,
    /// The sandbox's address when it was taken (a memory snapshot resumes with it).
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// The guest's SSH host key as the agent knew it then (a revert restores it).
    #[serde(default)]
    pub ssh_host_key: Option<String>,
}

impl SnapshotMeta {
    const VERSION: u32 = 1;

    /// The agent's metadata of `s`, if it is the agent's.
    pub(crate) fn of(s: &DomainSnapshot) -> Option<Self> {
        serde_json::from_str::<Self>(&s.description)
            .ok()
            .filter(|m| m.fluid_snapshot == Self::VERSION)
    }
}

fn view(id: &SandboxId, s: &DomainSnapshot) -> SnapshotView {
    let meta = SnapshotMeta::of(s);
    SnapshotView {
        sandbox_id: id.clone(),
        name: s.name.clone(),
        memory: s.memory,
        vm_state: s.state.clone(),
        created_at_unix: meta
            .as_ref()
            .map(|m| m.created_at)
            .unwrap_or(s.creation_time),
        guest_sync: meta
            .as_ref()
            .map(|m| m.guest_sync.clone())
            .unwrap_or_default(),
        active_services: meta.map(|m| m.active_services).unwrap_or_default(),
    }
}

fn is_reserved(name: &str) -> bool {
    name.starts_with(fluid_proto::model::snapshot::RESERVED_PREFIX)
}

fn refuse_reserved(name: &SnapshotName) -> Result<(), ServiceError> {
    if name.is_reserved() {
        return Err(ServiceError::InvalidArgument(format!(
            "snapshot names starting with {:?} are reserved for the agent",
            fluid_proto::model::snapshot::RESERVED_PREFIX
        )));
    }
    Ok(())
}

/// The unit names (first column) of `systemctl list-units --plain --no-legend`.
pub(crate) fn parse_active_services(out: &str) -> Vec<String> {
    let mut units: Vec<String> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|u| u.ends_with(".service"))
        .map(str::to_owned)
        .collect();
    units.sort();
    units.dedup();
    units
}

/// What one guest command printed (or why it could not run).
pub(super) struct GuestOutput {
    pub(super) exit_code: i32,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    timed_out: bool,
    error: Option<String>,
}

impl<H: Hypervisor> Sandboxes<H> {
    /// Takes snapshot `req.name` of a sandbox (see the module docs). Repeating it
    /// returns the existing snapshot.
    #[tracing::instrument(name = "sandbox.snapshot", skip_all, fields(sandbox_id = %req.sandbox_id))]
    pub async fn create_snapshot(&self, req: CreateSnapshot) -> Result<SnapshotView, ServiceError> {
        refuse_reserved(&req.name)?;
        // Counted before the lock: requests queued behind a slow snapshot count too.
        let _slot = self.room.begin(&req.sandbox_id, Op::Snapshot)?;
        let _guard = self.lock(&req.sandbox_id).await;
        let r = self.record(&req.sandbox_id).await?;
        let existing = self.domain_snapshots(&r).await?;
        let max = self.room.config().max_snapshots_per_sandbox;
        let count = existing.iter().filter(|s| !is_reserved(&s.name)).count();
        let repeat = existing.iter().any(|s| s.name == req.name.as_str());
        if !repeat && count >= max as usize {
            return Err(ServiceError::FailedPrecondition(format!(
                "sandbox {} has {count} snapshots, the most allowed ([disk] \
                 max_snapshots_per_sandbox = {max}); delete one first",
                r.id
            )));
        }
        self.take_snapshot_locked(&r, req.name.as_str(), req.disk_only, &req.ssh_certificate)
            .await
    }

    /// The sandbox's snapshots, oldest first (without the agent's own).
    pub async fn list_snapshots(&self, id: &SandboxId) -> Result<Vec<SnapshotView>, ServiceError> {
        let r = self.record(id).await?;
        Ok(self
            .domain_snapshots(&r)
            .await?
            .iter()
            .filter(|s| !is_reserved(&s.name))
            .map(|s| view(id, s))
            .collect())
    }

    /// Deletes a snapshot; false when it did not exist.
    pub async fn delete_snapshot(&self, sref: &SnapshotRef) -> Result<bool, ServiceError> {
        refuse_reserved(&sref.name)?;
        let _guard = self.lock(&sref.sandbox_id).await;
        let r = self.record(&sref.sandbox_id).await?;
        self.delete_snapshot_locked(&r, sref.name.as_str()).await
    }

    /// Reverts a sandbox to a snapshot. With memory it resumes running where the
    /// snapshot was taken; disk-only it is left shut off, or booted when `start`.
    /// The SSH connection is dropped (the guest's TCP state went back in time); the
    /// network rules stay (same MAC, same lease).
    #[tracing::instrument(name = "sandbox.revert", skip_all, fields(sandbox_id = %sref.sandbox_id))]
    pub async fn revert_snapshot(
        &self,
        sref: &SnapshotRef,
        start: bool,
    ) -> Result<SandboxView, ServiceError> {
        refuse_reserved(&sref.name)?;
        let _guard = self.lock(&sref.sandbox_id).await;
        let r = self.record(&sref.sandbox_id).await?;
        if let Some(e) = &r.error {
            return Err(ServiceError::FailedPrecondition(format!(
                "sandbox {} cannot be reverted: {e}",
                r.id
            )));
        }
        let snap = self.find_snapshot(&r, sref.name.as_str()).await?;
        let before = self.state_of(&r).await?;
        let uuid = r.domain_uuid.as_str();
        let name = sref.name.as_str();
        if snap.memory {
            self.hv
                .snapshot_revert(uuid, name, RevertTo::AsTaken)
                .await?;
        } else if start && before == Some(DomainState::Running) {
            // Off first, so the old lease is gone before the guest asks for one (a
            // wait for the IP must not answer the stale lease).
            self.hv
                .snapshot_revert(uuid, name, RevertTo::AsTaken)
                .await?;
            self.release_leases(&r).await;
            self.withdraw_ip(&r).await;
            self.hv.start(uuid).await?;
        } else if start {
            self.hv
                .snapshot_revert(uuid, name, RevertTo::Running)
                .await?;
        } else {
            self.hv
                .snapshot_revert(uuid, name, RevertTo::AsTaken)
                .await?;
        }
        self.ssh.forget(&r.id);
        let after = self.state_of(&r).await?;
        self.after_revert(&r, &snap, after.as_ref()).await?;
        tracing::info!(
            id = %r.id, snapshot = name, memory = snap.memory, start,
            state = ?after, "sandbox reverted to a snapshot"
        );
        self.get(&r.id).await
    }

    /// The record and the network after a revert: the host key the disk has again, the
    /// started flag, and the address (gone when the domain is off; a resumed guest's
    /// own when no lease names it).
    async fn after_revert(
        &self,
        r: &SandboxRecord,
        snap: &DomainSnapshot,
        after: Option<&DomainState>,
    ) -> Result<(), ServiceError> {
        let meta = SnapshotMeta::of(snap);
        let mut current = self.record(&r.id).await?;
        current.ssh_host_key = meta.as_ref().and_then(|m| m.ssh_host_key.clone());
        let running = matches!(after, Some(DomainState::Running | DomainState::Paused));
        if running {
            current.started = true;
        }
        self.store.put(&current).await?;
        if !running {
            self.release_leases(&current).await;
            self.withdraw_ip(&current).await;
            return Ok(());
        }
        if !snap.memory {
            // Booted: the watcher admits the fresh lease.
            return Ok(());
        }
        let lease = super::dhcp::lease_of(&current, &self.leases().await);
        match (lease, meta.and_then(|m| m.ip)) {
            // A stopped sandbox's lease was released: the resumed guest still uses the
            // address it had, so that one is admitted until its lease shows up again.
            (None, Some(ip)) => {
                self.firewall.set_ip(&current.id, Some(ip));
                self.firewall.sync().await?;
                current.known_ip = Some(ip);
                current.last_ip = Some(ip);
                self.store.put(&current).await?;
                tracing::info!(id = %current.id, %ip, "the resumed guest's address admitted");
            }
            (Some(now), Some(then)) if now != then => tracing::warn!(
                id = %current.id, %now, %then,
                "the resumed guest uses its old address until it renews its DHCP lease"
            ),
            _ => {}
        }
        Ok(())
    }

    /// The domain's snapshots (the agent's own included).
    pub(crate) async fn domain_snapshots(
        &self,
        r: &SandboxRecord,
    ) -> Result<Vec<DomainSnapshot>, ServiceError> {
        match self.hv.snapshot_list(&r.domain_uuid).await {
            Ok(list) => Ok(list),
            Err(HypervisorError::NotFound(_)) => Err(ServiceError::FailedPrecondition(format!(
                "sandbox {}'s domain is missing",
                r.id
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// One snapshot; NOT_FOUND when it does not exist.
    pub(crate) async fn find_snapshot(
        &self,
        r: &SandboxRecord,
        name: &str,
    ) -> Result<DomainSnapshot, ServiceError> {
        self.domain_snapshots(r)
            .await?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| {
                ServiceError::NotFound(format!("sandbox {} has no snapshot named {name}", r.id))
            })
    }

    /// Deletes a snapshot (the caller holds the sandbox's lock); false when missing.
    pub(crate) async fn delete_snapshot_locked(
        &self,
        r: &SandboxRecord,
        name: &str,
    ) -> Result<bool, ServiceError> {
        match self.hv.snapshot_delete(&r.domain_uuid, name).await {
            Ok(()) => {
                tracing::info!(id = %r.id, snapshot = name, "snapshot deleted");
                Ok(true)
            }
            Err(HypervisorError::NoSnapshot(_)) => Ok(false),
            Err(HypervisorError::NotFound(_)) => Err(ServiceError::FailedPrecondition(format!(
                "sandbox {}'s domain is missing",
                r.id
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes snapshot `name` (any name, the agent's own included; the caller holds
    /// the sandbox's lock). An existing snapshot of that name is returned, unless it
    /// has memory and `disk_only` asks for none.
    pub(crate) async fn take_snapshot_locked(
        &self,
        r: &SandboxRecord,
        name: &str,
        disk_only: bool,
        certificate: &str,
    ) -> Result<SnapshotView, ServiceError> {
        if let Some(existing) = self
            .domain_snapshots(r)
            .await?
            .into_iter()
            .find(|s| s.name == name)
        {
            if disk_only && existing.memory {
                return Err(ServiceError::AlreadyExists(format!(
                    "sandbox {} already has a snapshot named {name}, with memory",
                    r.id
                )));
            }
            return Ok(view(&r.id, &existing));
        }
        if let Some(e) = &r.error {
            return Err(ServiceError::FailedPrecondition(format!(
                "sandbox {} cannot be snapshotted: {e}",
                r.id
            )));
        }
        let state = self.state_of(r).await?;
        let live = matches!(state, Some(DomainState::Running | DomainState::Paused));
        let (guest_sync, active_services, ip) = match state {
            Some(DomainState::Running) if disk_only => {
                return Err(ServiceError::FailedPrecondition(format!(
                    "sandbox {} is running: a disk-only snapshot needs it stopped (an \
                     internal snapshot of a running VM always includes its memory); stop \
                     it first, or take the snapshot with memory",
                    r.id
                )));
            }
            Some(DomainState::Running) => {
                let (sync, reached) = self.guest_sync(r, certificate).await;
                // A guest the sync could not reach is not tried again.
                let services = if reached {
                    self.guest_services(r, certificate).await
                } else {
                    Vec::new()
                };
                let ip = super::dhcp::lease_of(r, &self.leases().await);
                (sync, services, ip)
            }
            Some(DomainState::Paused) if disk_only => {
                return Err(ServiceError::FailedPrecondition(format!(
                    "sandbox {} is paused: a disk-only snapshot needs it stopped",
                    r.id
                )));
            }
            Some(DomainState::Paused) => ("skipped: paused".to_owned(), Vec::new(), r.known_ip),
            Some(DomainState::ShutOff | DomainState::Crashed) => {
                ("skipped: not running".to_owned(), Vec::new(), None)
            }
            Some(DomainState::Other(s)) => {
                return Err(ServiceError::FailedPrecondition(format!(
                    "sandbox {} is in state {s:?}",
                    r.id
                )));
            }
            None => {
                return Err(ServiceError::FailedPrecondition(format!(
                    "sandbox {}'s domain is missing",
                    r.id
                )));
            }
        };
        // The host key may have been learned by the sync's connection.
        let ssh_host_key = self.store.get(&r.id).await?.and_then(|c| c.ssh_host_key);
        let meta = SnapshotMeta {
            fluid_snapshot: SnapshotMeta::VERSION,
            guest_sync,
            active_services,
            created_at: crate::unix_now(),
            ip,
            ssh_host_key,
        };
        let description = serde_json::to_string(&meta)
            .map_err(|e| ServiceError::Internal(format!("encoding snapshot metadata: {e}")))?;
        // A live snapshot writes the guest's memory into the overlay; a disk-only one
        // copies some qcow2 tables.
        let memory = if live {
            r.memory_mb.saturating_mul(MIB)
        } else {
            0
        };
        let need = memory.saturating_add(SNAPSHOT_METADATA_BYTES);
        let overlays = r.overlay_path.parent().unwrap_or(&r.overlay_path);
        let _room = self.room.reserve(
            overlays,
            need,
            &format!(
                "snapshot {name} of sandbox {} (its memory and tables)",
                r.id
            ),
        )?;
        let t = tokio::time::Instant::now();
        self.hv
            .snapshot_create(&r.domain_uuid, name, &description)
            .await?;
        let taken = self.find_snapshot(r, name).await?;
        tracing::info!(
            id = %r.id, snapshot = name, memory = taken.memory,
            guest_sync = meta.guest_sync, snapshot_ms = t.elapsed().as_millis(),
            "snapshot taken"
        );
        Ok(view(&r.id, &taken))
    }

    /// Runs `sync` in the guest: `ok` or `failed: <why>`. Also says whether the guest was reached at all.
    async fn guest_sync(&self, r: &SandboxRecord, certificate: &str) -> (String, bool) {
        match self
            .guest_command(r, SYNC_COMMAND, SYNC_TIMEOUT, certificate)
            .await
        {
            Ok(o) if o.exit_code == 0 => ("ok".to_owned(), true),
            Ok(o) => (
                format!("failed: {}", describe_failure(&o, SYNC_TIMEOUT)),
                true,
            ),
            Err(e) => (format!("failed: {e}"), false),
        }
    }

    /// The services the guest reports active (empty when it cannot say).
    async fn guest_services(&self, r: &SandboxRecord, certificate: &str) -> Vec<String> {
        match self
            .guest_command(r, SERVICES_COMMAND, SERVICES_TIMEOUT, certificate)
            .await
        {
            Ok(o) if o.exit_code == 0 => parse_active_services(&String::from_utf8_lossy(&o.stdout)),
            Ok(o) => {
                tracing::info!(id = %r.id, "listing the guest's services: {}", describe_failure(&o, SERVICES_TIMEOUT));
                Vec::new()
            }
            Err(e) => {
                tracing::info!(id = %r.id, "listing the guest's services: {e}");
                Vec::new()
            }
        }
    }

    /// Runs one command as root in the guest (over the agent's SSH connection on a
    /// real host; the caller holds the sandbox's lock), within `timeout`.
    pub(super) async fn guest_command(
        &self,
        r: &SandboxRecord,
        command: &str,
        timeout: Duration,
        certificate: &str,
    ) -> Result<GuestOutput, String> {
        let ip = self.exec_target(r).await.map_err(|e| e.to_string())?;
        let known = known_host_key(r).map_err(|e| e.to_string())?;
        let secs = u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX);
        let exec = Exec {
            sandbox_id: r.id.clone(),
            command_id: format!("CMD-snap{:012x}", rand::random::<u64>() >> 16),
            command: command.to_owned(),
            user: "root".to_owned(),
            workdir: None,
            env: Vec::new(),
            timeout_seconds: Some(secs),
            output_cap_bytes: GUEST_OUTPUT_CAP,
            stdin: Vec::new(),
            ssh_certificate: certificate.to_owned(),
        };
        let target = ExecTarget {
            id: r.id.clone(),
            ip,
            known_host_key: known,
        };
        let attempt = async {
            let started = self
                .exec
                .start(target, exec, timeout, None)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(k) = &started.learned_host_key {
                self.remember_host_key_locked(&r.id, k).await;
            }
            Ok(collect(started.events).await)
        };
        // The connect has its own timeouts; this bounds the whole (kill included).
        tokio::time::timeout(timeout + Duration::from_secs(15), attempt)
            .await
            .map_err(|_| format!("no answer within {} s", timeout.as_secs()))?
    }

    /// Saves a host key learned on first use; the caller holds the sandbox's lock.
    async fn remember_host_key_locked(&self, id: &SandboxId, key: &russh::keys::PublicKey) {
        let Ok(line) = key.to_openssh() else { return };
        match self.store.get(id).await {
            Ok(Some(mut r)) if r.ssh_host_key.is_none() => {
                r.ssh_host_key = Some(line);
                if let Err(e) = self.store.put(&r).await {
                    tracing::warn!(id = %id, "saving the SSH host key: {e}");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(id = %id, "saving the SSH host key: {e}"),
        }
    }
}

/// Reads a command's events to its exit.
async fn collect(mut rx: tokio::sync::mpsc::Receiver<ExecEvent>) -> GuestOutput {
    let mut o = GuestOutput {
        exit_code: -1,
        stdout: Vec::new(),
        stderr: Vec::new(),
        timed_out: false,
        error: Some("the command's stream ended without an exit".to_owned()),
    };
    while let Some(e) = rx.recv().await {
        match e {
            ExecEvent::Started { .. } => {}
            ExecEvent::Stdout(b) => o.stdout.extend_from_slice(&b),
            ExecEvent::Stderr(b) => o.stderr.extend_from_slice(&b),
            ExecEvent::Exit(x) => {
                o.exit_code = x.exit_code;
                o.timed_out = x.timed_out;
                o.error = x.error;
                break;
            }
        }
    }
    o
}

/// Why a guest command did not succeed, in a few words.
pub(super) fn describe_failure(o: &GuestOutput, timeout: Duration) -> String {
    if o.timed_out {
        return format!("timed out after {} s", timeout.as_secs());
    }
    if let Some(e) = &o.error {
        return e.clone();
    }
    let stderr = String::from_utf8_lossy(&o.stderr);
    let stderr: String = stderr.trim().chars().take(200).collect();
    if stderr.is_empty() {
        format!("exit code {}", o.exit_code)
    } else {
        format!("exit code {}: {stderr}", o.exit_code)
    }
}

#[cfg(test)]
#[path = "snapshots_tests.rs"]
pub(crate) mod tests;
