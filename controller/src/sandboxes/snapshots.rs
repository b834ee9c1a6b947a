//! Snapshots of sandboxes, restore and fork.
//!
//! A snapshot is a qcow2 internal snapshot of the sandbox's overlay, held by its host's
//! agent; the controller keeps a row per snapshot (`SNP-…`, unique name per sandbox)
//! with where it lives (`ref` = `<host>:<sandbox>@<name>`). A create calls the agent
//! first, then inserts the row: the agent's create is idempotent by name, so a retry
//! after a crash between the two is safe. A running sandbox is snapshotted with its
//! memory (the agent `sync`s the guest first); a stopped one disk-only.
//!
//! Restore reverts the sandbox and records the state the agent reports with a
//! compare-and-set (so the audit gets its `state` event). Fork creates a new sandbox
//! on the snapshot's host whose disk starts as the snapshot's, with the source's image
//! and egress allow-list. Destroying a sandbox removes its snapshot rows (the agent's
//! snapshots go with its overlay).

use std::sync::Arc;

use chrono::Utc;
use fluid_client::audit_chain::truncate_to_micros;
use fluid_client::snapshots::{CreateSnapshotRequest, ForkRequest, NOW, Snapshot, SnapshotList};
use fluid_client::types::{CreateSandboxRequest, CreateSandboxResponse, SandboxState};
use fluid_proto::model::{SandboxId, SnapshotName, SnapshotRef};

use crate::agents::locate;
use crate::agents::{AgentConnector, AgentError, AgentTarget};
use crate::agents::{api_start_path, observed_state};
use crate::error::ServiceError;
use crate::governance::auth::{self, Caller, Permission};
use crate::sandboxes::SandboxService;
use crate::store::{
    EMPTY_EGRESS_JSON, EgressWrite, NewAuditEvent, SandboxRecord, SandboxUpdate, SnapshotRecord,
    Store, StoreError,
};
use crate::support::ids::new_id;
use crate::work::commands::{CommandService, Grant};

/// The only kind fluid takes.
pub const KIND_INTERNAL: &str = "INTERNAL";

/// Why `external: true` is refused.
pub const EXTERNAL_REFUSED: &str = "external snapshots are not supported: libvirt on these hosts cannot revert them; omit external for an internal snapshot";

/// `<host>:<sandbox id>@<name>`.
pub fn snapshot_ref(host: &str, sandbox_id: &str, name: &str) -> String {
    format!("{host}:{sandbox_id}@{name}")
}

/// A name a user may give a new snapshot: a valid name, not the agent's (`fluid-…`)
/// and not `now` (which names the disk now in a diff).
pub fn check_new_name(s: &str) -> Result<SnapshotName, ServiceError> {
    let name = SnapshotName::parse("name", s)?;
    if name.is_reserved() {
        return Err(ServiceError::Invalid(format!(
            "name: {s:?}: names starting \"{}\" are reserved for the agent",
            fluid_proto::model::snapshot::RESERVED_PREFIX
        )));
    }
    if s == NOW {
        return Err(ServiceError::Invalid(
            "name: \"now\" stands for the sandbox's disk now in a diff; choose another name".into(),
        ));
    }
    Ok(name)
}

/// A sandbox's snapshot row; 404 naming it when there is none.
pub(crate) async fn snapshot_row(
    store: &dyn Store,
    sandbox_id: &str,
    name: &SnapshotName,
) -> Result<SnapshotRecord, ServiceError> {
    store
        .get_snapshot(sandbox_id, name.as_str())
        .await?
        .ok_or_else(|| {
            ServiceError::NotFound(format!("snapshot {name} of sandbox {sandbox_id} not found"))
        })
}

/// A certificate for the agent's exec key when `sb` runs, so the agent can reach the
/// guest (to `sync` it before reading its disk); empty otherwise, or when none can be
/// signed yet (the agent then says in `guest_sync` why it could not).
pub(crate) async fn guest_certificate(
    commands: &CommandService,
    sb: &SandboxRecord,
    what: &str,
) -> String {
    guest_certificate_for(commands, &[sb], what).await
}

/// [`guest_certificate`] valid on each running sandbox of `sbs` (the certificate names
/// every one of them; all are on one host).
pub(crate) async fn guest_certificate_for(
    commands: &CommandService,
    sbs: &[&SandboxRecord],
    what: &str,
) -> String {
    let running: Vec<&SandboxRecord> = sbs
        .iter()
        .copied()
        .filter(|s| s.state == SandboxState::Running)
        .collect();
    let Some(sb) = running.first().copied() else {
        return String::new();
    };
    let mut ids: Vec<&str> = running.iter().map(|s| s.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let users = ["root".to_owned()];
    let grant = Grant {
        id: what,
        users: &users,
        permit_pty: false,
    };
    match commands.agent_access_for(sb, &ids, what, &grant).await {
        Ok(a) => a.certificate,
        Err(e) => {
            tracing::warn!(sandbox = %sb.id, error = %e, "no agent certificate for {what}");
            String::new()
        }
    }
}

/// The agent id a fork gets: the request's, else the source's.
/// Where a live fork of `source` runs: its host, while it runs there.
fn live_fork_host(source: &SandboxRecord) -> Result<String, ServiceError> {
    if source.state != SandboxState::Running {
        return Err(ServiceError::Conflict(format!(
            "sandbox {} is {}: only a running sandbox forks live; start it, or fork one of \
             its snapshots (\"snapshot\")",
            source.id,
            source.state.as_str()
        )));
    }
    source
        .host_name
        .clone()
        .ok_or_else(|| ServiceError::Conflict(format!("sandbox {} has no host yet", source.id)))
}

pub fn fork_agent_id<'a>(source: &'a SandboxRecord, req: &'a ForkRequest) -> &'a str {
    req.agent_id.as_deref().unwrap_or(&source.agent_id)
}

pub struct SnapshotService {
    store: Arc<dyn Store>,
    agents: Arc<dyn AgentConnector>,
    commands: Arc<CommandService>,
    sandboxes: Arc<SandboxService>,
}

impl std::fmt::Debug for SnapshotService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotService")
    }
}

fn sandbox_id(sb: &SandboxRecord) -> Result<SandboxId, ServiceError> {
    Ok(SandboxId::parse("id", &sb.id)?)
}

fn settled(sb: &SandboxRecord, what: &str) -> Result<(), ServiceError> {
    match sb.state {
        SandboxState::Running | SandboxState::Stopped => Ok(()),
        s => Err(ServiceError::Conflict(format!(
            "sandbox {} is {s}: {what} needs it RUNNING or STOPPED",
            sb.id
        ))),
    }
}

impl SnapshotService {
    pub fn new(
        store: Arc<dyn Store>,
        agents: Arc<dyn AgentConnector>,
        commands: Arc<CommandService>,
        sandboxes: Arc<SandboxService>,
    ) -> Self {
        Self {
            store,
            agents,
            commands,
            sandboxes,
        }
    }

    async fn target(&self, sb: &SandboxRecord) -> Result<AgentTarget, ServiceError> {
        Ok(locate::agent_of(&*self.store, sb).await?)
    }

    /// Takes a snapshot: with memory when the sandbox runs (`memory: false` then is a
    /// 409), disk-only when it is stopped. `caller` needs `Work` on the sandbox.
    pub async fn create(
        &self,
        caller: &Caller,
        id: &SandboxId,
        req: &CreateSnapshotRequest,
    ) -> Result<Snapshot, ServiceError> {
        let sb = &auth::authorized_sandbox(&*self.store, caller, id, Permission::Work).await?;
        let name = check_new_name(&req.name)?;
        if req.external == Some(true) {
            return Err(ServiceError::Invalid(EXTERNAL_REFUSED.into()));
        }
        settled(sb, "a snapshot")?;
        let running = sb.state == SandboxState::Running;
        match (running, req.memory) {
            (true, Some(false)) => {
                return Err(ServiceError::Conflict(format!(
                    "sandbox {} is running: libvirt cannot take a disk-only internal snapshot of a running VM; stop it first, or omit memory",
                    sb.id
                )));
            }
            (false, Some(true)) => {
                return Err(ServiceError::Conflict(format!(
                    "sandbox {} is stopped: it has no memory to snapshot; start it first, or omit memory",
                    sb.id
                )));
            }
            _ => {}
        }
        if self
            .store
            .get_snapshot(&sb.id, name.as_str())
            .await?
            .is_some()
        {
            return Err(ServiceError::Conflict(format!(
                "snapshot {name} already exists"
            )));
        }
        let quotas = self.sandboxes.quotas();
        let held = self.store.list_snapshots(&sb.id).await?.len();
        if held >= quotas.snapshots_per_sandbox as usize {
            return Err(ServiceError::Busy {
                message: format!(
                    "sandbox {} keeps {held} snapshots, its quota (quotas.snapshots_per_sandbox = {}); delete one first",
                    sb.id, quotas.snapshots_per_sandbox
                ),
                retry_after_secs: quotas.retry_after_secs,
            });
        }
        let target = self.target(sb).await?;
        let id = sandbox_id(sb)?;
        // Commands started before this instant ran before the snapshot (a diff's
        // commands_run uses it).
        let created_at = truncate_to_micros(Utc::now());
        let cert = guest_certificate(&self.commands, sb, "snapshot").await;
        let taken = self
            .agents
            .create_snapshot(&target, &id, &name, !running, &cert)
            .await?;
        let rec = SnapshotRecord {
            id: new_id("SNP-"),
            sandbox_id: sb.id.clone(),
            name: name.to_string(),
            kind: KIND_INTERNAL.into(),
            r#ref: snapshot_ref(&target.name, &sb.id, name.as_str()),
            host_name: target.name.clone(),
            memory: taken.memory,
            meta_json: serde_json::json!({
                "memory": taken.memory,
                "vm_state": taken.vm_state,
                "guest_sync": taken.guest_sync,
                "host": target.name,
                "active_services": taken.active_services,
            })
            .to_string(),
            created_at,
        };
        match self.store.insert_snapshot(&rec).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(ServiceError::Conflict(format!(
                    "snapshot {name} already exists"
                )));
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(sandbox = %sb.id, snapshot = %name, memory = taken.memory, guest_sync = %taken.guest_sync, "snapshot taken");
        Ok(rec.to_api())
    }

    /// The sandbox's snapshots, oldest first, for `caller` (`Read`).
    pub async fn list(
        &self,
        caller: &Caller,
        id: &SandboxId,
    ) -> Result<SnapshotList, ServiceError> {
        let sb = auth::authorized_sandbox(&*self.store, caller, id, Permission::Read).await?;
        let snapshots: Vec<Snapshot> = self
            .store
            .list_snapshots(&sb.id)
            .await?
            .iter()
            .map(SnapshotRecord::to_api)
            .collect();
        Ok(SnapshotList {
            total: snapshots.len() as u64,
            snapshots,
        })
    }

    /// Reverts the sandbox to a snapshot. A running sandbox runs again afterwards (a
    /// disk-only snapshot is booted); a stopped one stays stopped unless the snapshot
    /// has memory. `caller` needs `Work` on the sandbox.
    pub async fn restore(
        &self,
        caller: &Caller,
        id: &SandboxId,
        name: &str,
    ) -> Result<Snapshot, ServiceError> {
        let sb = &auth::authorized_sandbox(&*self.store, caller, id, Permission::Work).await?;
        let name = SnapshotName::parse("name", name)?;
        let snap = snapshot_row(&*self.store, &sb.id, &name).await?;
        settled(sb, "a restore")?;
        let target = self.target(sb).await?;
        let r = SnapshotRef {
            sandbox_id: sandbox_id(sb)?,
            name: name.clone(),
        };
        let start = sb.state == SandboxState::Running;
        let info = self.agents.revert_snapshot(&target, &r, start).await?;
        let state = observed_state(info.state);
        let u = SandboxUpdate {
            state: Some(state),
            ip_address: Some(info.ip_address.map(|ip| ip.to_string())),
            network: None,
            error: Some((state == SandboxState::Error).then(|| {
                info.error
                    .clone()
                    .unwrap_or_else(|| "agent reports an error".into())
            })),
            start_path: info.start_path.map(api_start_path),
            expect_state: Some(sb.state),
        };
        if self
            .store
            .update_sandbox(&sb.id, &u, Utc::now())
            .await?
            .is_none()
        {
            tracing::warn!(sandbox = %sb.id, "state changed during the restore; the reconciler records the agent's");
        }
        tracing::info!(sandbox = %sb.id, snapshot = %name, state = %state, "snapshot restored");
        Ok(snap.to_api())
    }

    /// Deletes a snapshot on its host, then its row, for `caller` (`Work`).
    pub async fn delete(
        &self,
        caller: &Caller,
        id: &SandboxId,
        name: &str,
    ) -> Result<(), ServiceError> {
        let sb = &auth::authorized_sandbox(&*self.store, caller, id, Permission::Work).await?;
        let name = SnapshotName::parse("name", name)?;
        snapshot_row(&*self.store, &sb.id, &name).await?;
        let target = self.target(sb).await?;
        let r = SnapshotRef {
            sandbox_id: sandbox_id(sb)?,
            name: name.clone(),
        };
        match self.agents.delete_snapshot(&target, &r).await {
            Ok(_) | Err(AgentError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.store.delete_snapshot(&sb.id, name.as_str()).await?;
        tracing::info!(sandbox = %sb.id, snapshot = %name, "snapshot deleted");
        Ok(())
    }

    /// A new sandbox whose disk starts as `source`'s snapshot: on the snapshot's host,
    /// with the source's image and egress allow-list, the source's agent id, vCPUs and
    /// memory unless the request says otherwise. It boots fresh (disk state only).
    /// `caller` needs `Read` on the source and `CreateSandbox` for the new one's agent.
    pub async fn fork(
        &self,
        caller: &Caller,
        id: &SandboxId,
        req: &ForkRequest,
    ) -> Result<CreateSandboxResponse, ServiceError> {
        let source = &auth::authorized_sandbox(&*self.store, caller, id, Permission::Read).await?;
        auth::check(caller, Permission::CreateSandbox)?;
        let agent_id = fork_agent_id(source, req);
        auth::check_owner(caller, agent_id, &format!("agent_id {agent_id:?}"))?;
        // From a named snapshot (its disk, on its host), or live (the source as it runs).
        let (host, snapshot) = match &req.snapshot {
            Some(name) => {
                let name = SnapshotName::parse("snapshot", name)?;
                let snap = snapshot_row(&*self.store, &source.id, &name).await?;
                (snap.host_name, Some(name))
            }
            None => (live_fork_host(source)?, None),
        };
        let create = CreateSandboxRequest {
            source_vm_name: source.image.clone(),
            agent_id: fork_agent_id(source, req).to_owned(),
            vm_name: req.vm_name.clone(),
            cpu: Some(req.cpu.unwrap_or(source.cpus)),
            memory_mb: Some(req.memory_mb.unwrap_or(source.memory_mb)),
            ttl_seconds: req.ttl_seconds,
            auto_start: Some(true),
            wait_for_ip: req.wait_for_ip,
        };
        let mut prepared = self.sandboxes.prepare(&create, None)?;
        prepared.pin_host = Some(host);
        match &snapshot {
            Some(name) => {
                prepared.create.from_snapshot = Some(SnapshotRef {
                    sandbox_id: sandbox_id(source)?,
                    name: name.clone(),
                });
            }
            None => prepared.create.fork_of_running = Some(sandbox_id(source)?),
        }
        self.sandboxes.take_create(caller)?;
        let row = self.sandboxes.place(&prepared).await?;
        if let Err(e) = self.copy_egress(source, &row.id, snapshot.as_ref()).await {
            let u = SandboxUpdate {
                state: Some(SandboxState::Error),
                error: Some(Some(format!("copying the source's allow-list: {e}"))),
                ..Default::default()
            };
            if let Err(se) = self.store.update_sandbox(&row.id, &u, Utc::now()).await {
                tracing::error!(sandbox = %row.id, error = %se, "recording a failed fork");
            }
            return Err(e);
        }
        tracing::info!(sandbox = %row.id, source = %source.id, snapshot = snapshot.as_ref().map_or("(live)", SnapshotName::as_str), "forking");
        self.sandboxes.launch(prepared, row).await
    }

    /// Gives the fork the source's allow-list (stored, with its `network` audit event,
    /// before the create that carries it to the agent).
    async fn copy_egress(
        &self,
        source: &SandboxRecord,
        fork_id: &str,
        snapshot: Option<&SnapshotName>,
    ) -> Result<(), ServiceError> {
        let text = self
            .store
            .get_egress(&source.id)
            .await?
            .unwrap_or_else(|| EMPTY_EGRESS_JSON.to_owned());
        let policy = crate::network::egress::policy_from_json(&text)?;
        if policy.allow.is_empty() {
            return Ok(());
        }
        let e = NewAuditEvent::system("network", "fork", "stored")
            .sandbox(fork_id)
            .details(serde_json::json!({
                "old": [],
                "new": crate::network::egress::bodies_of(&policy),
                "from_sandbox": source.id,
                "snapshot": snapshot.map(SnapshotName::as_str),
            }));
        match self
            .store
            .set_egress(
                fork_id,
                &crate::network::egress::policy_json(&policy),
                EMPTY_EGRESS_JSON,
                &e,
            )
            .await?
        {
            EgressWrite::Written => Ok(()),
            EgressWrite::Changed(_) => Err(ServiceError::Conflict(format!(
                "the allow-list of {fork_id} changed while it was being created"
            ))),
            EgressWrite::NotFound => Err(ServiceError::NotFound(format!(
                "sandbox {fork_id} not found"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_names_are_checked() {
        assert!(check_new_name("before-nginx").is_ok());
        for (bad, says) in [
            ("", "must not be empty"),
            ("a/b", "not a snapshot name"),
            ("..", "not a snapshot name"),
            ("fluid-now-1", "reserved"),
            ("now", "disk now"),
        ] {
            let e = check_new_name(bad).expect_err(bad);
            assert!(e.to_string().contains(says), "{bad:?}: {e}");
        }
        let long = "x".repeat(64);
        assert!(check_new_name(&long).is_err());
        assert_eq!(snapshot_ref("kvm-1", "SBX-1", "a"), "kvm-1:SBX-1@a");
    }
}
