//! The sandbox service: create, start, stop, destroy, inspect the sandboxes on this
//! host. Generic over the [`Hypervisor`] so it never names libvirt.
//!
//! Every operation is idempotent by sandbox id (the controller may retry anything) and
//! operations on one id are serialised by a per-id async mutex. `wait_for_ip` does not
//! hold that lock while it waits, so a destroy is never blocked behind it.
//!
//! Snapshots, revert and fork live in [`snapshots`] and `fork`; diffs and file reads
//! of disk states (read out-of-band with `fluid_inspect`) in `inspect`; the Tunnel
//! RPC's connection to a guest's sshd in `tunnel`.
//!
//! The sandbox's network rules ([`Firewall`]) move with its life: a create puts the
//! sandbox in the rules (sealed) before its domain exists, an address is admitted only
//! once its lease is known (and `wait_for_ip` returns it only after that), a stop
//! withdraws the address, a destroy removes every rule of it. The address itself is a
//! static DHCP lease the agent reserves at create and removes at destroy ([`dhcp`]).

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fluid_proto::model::{CreateSandbox, ObservedState, SandboxId, StopSandbox, WaitForIp};
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

use crate::config::AgentConfig;
use crate::error::ServiceError;
use crate::exec::AgentKey;
use crate::exec::backend::{ExecBackend, SshExec};
use crate::exec::pool::SshPool;
use crate::hypervisor::{
    DomainSpec, DomainState, Hypervisor, HypervisorError, Lease, OwnedDomain, random_mac,
};
use crate::images;
use crate::network::{Firewall, tap_name};
use crate::overlay::{self, Overlays};
use crate::state::{SandboxRecord, StateStore};
use crate::templates::Templates;
pub use capacity::Capacity;
pub use provision::Provision;

/// How often leases and domain states are polled while waiting.
const POLL: Duration = Duration::from_millis(500);
/// How often a graceful stop repeats its ACPI request (early requests are lost while a
/// guest is still booting).
const SHUTDOWN_RESEND: Duration = Duration::from_secs(5);

/// A sandbox as observed now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxView {
    pub record: SandboxRecord,
    pub state: ObservedState,
    /// The current DHCP lease, while the domain is running.
    pub ip: Option<Ipv4Addr>,
    pub error: Option<String>,
}

/// The sandbox service.
pub struct Sandboxes<H> {
    pub(crate) hv: Arc<H>,
    pub(crate) store: StateStore,
    pub(crate) overlays: Overlays,
    pub(crate) config: AgentConfig,
    locks: Mutex<HashMap<SandboxId, Arc<tokio::sync::Mutex<()>>>>,
    poll: Duration,
    /// SSH connections to the sandboxes (exec, shells, the warm pool's members).
    pub(crate) ssh: Arc<SshPool>,
    /// How commands reach the guests: over `ssh`, or simulated.
    pub(crate) exec: Arc<dyn ExecBackend>,
    /// Per sandbox: its commands running at once (`exec.max_concurrent_per_sandbox`).
    pub(crate) exec_slots: Mutex<HashMap<SandboxId, Arc<tokio::sync::Semaphore>>>,
    /// The sandboxes' network rules.
    pub(crate) firewall: Arc<Firewall>,
    /// Diffs and file reads at once on this host (each holds two exported disk images).
    pub(crate) inspect_slots: Arc<tokio::sync::Semaphore>,
    /// Free space promised to exports and snapshots, per-sandbox caps.
    pub(crate) room: room::Room,
    /// Open tunnels.
    pub(crate) tunnels: Arc<tokio::sync::Semaphore>,
    /// The memory templates sandboxes are restored from.
    pub(crate) templates: Arc<Templates>,
    /// Sandboxes restored ahead of time, handed out on create.
    pub(crate) warm: warm::WarmPool,
}

impl<H> std::fmt::Debug for Sandboxes<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandboxes")
            .field("host_name", &self.config.host_name)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> i64 {
    crate::unix_now()
}

impl<H: Hypervisor> Sandboxes<H> {
    /// The service; `key` is the agent's SSH key for exec ([`AgentKey::generate`]),
    /// `firewall` isolates its sandboxes.
    pub fn new(
        config: AgentConfig,
        hv: Arc<H>,
        store: StateStore,
        key: AgentKey,
        firewall: Arc<Firewall>,
    ) -> Self {
        let disk = config.disk;
        let (config_templates, state_dir) = (config.templates.clone(), config.state_dir.clone());
        let pool_shapes = config.pool.shapes.clone();
        let ssh = Arc::new(SshPool::new(
            key,
            config.exec.channels_per_connection as usize,
        ));
        Self {
            exec: Arc::new(SshExec(ssh.clone())),
            ssh,
            exec_slots: Mutex::new(HashMap::new()),
            firewall,
            hv,
            store,
            overlays: Overlays::new(config.overlay_dir()),
            config,
            locks: Mutex::new(HashMap::new()),
            poll: POLL,
            inspect_slots: Arc::new(tokio::sync::Semaphore::new(disk.max_inspections as usize)),
            room: room::Room::new(disk),
            tunnels: Arc::new(tokio::sync::Semaphore::new(tunnel::MAX_TUNNELS)),
            templates: Arc::new(Templates::new(config_templates, &state_dir)),
            warm: warm::WarmPool::new(&pool_shapes),
        }
    }

    /// The service with commands answered by `exec` instead of SSH (a simulated host).
    pub fn with_exec_backend(mut self, exec: Arc<dyn ExecBackend>) -> Self {
        self.exec = exec;
        self
    }

    /// The service with overlays written by `tool` instead of qemu-img (a simulated host).
    pub fn with_image_tool(mut self, tool: Arc<dyn overlay::ImageTool>) -> Self {
        self.overlays = Overlays::with_tool(self.config.overlay_dir(), tool);
        self
    }

    #[cfg(test)]
    pub(crate) fn with_poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// The agent's SSH public key (OpenSSH line), for certificates.
    /// The memory templates of this host.
    pub fn templates(&self) -> &Templates {
        &self.templates
    }

    pub fn ssh_public_key(&self) -> &str {
        self.ssh.key().public_openssh()
    }

    pub(crate) async fn lock(&self, id: &SandboxId) -> OwnedMutexGuard<()> {
        let m = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(id.clone()).or_default().clone()
        };
        m.lock_owned().await
    }

    /// Drops the lock entry of a destroyed sandbox unless someone else waits on it.
    fn forget_lock(&self, id: &SandboxId) {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        // One reference in the map, one in the caller's guard.
        if locks.get(id).is_some_and(|m| Arc::strong_count(m) <= 2) {
            locks.remove(id);
        }
    }

    pub(crate) fn console_log(&self, id: &SandboxId) -> std::path::PathBuf {
        self.config.console_dir().join(format!("{id}.log"))
    }

    /// The domain definition a record stands for.
    pub(crate) fn spec_for(&self, r: &SandboxRecord) -> DomainSpec {
        DomainSpec {
            id: r.id.clone(),
            name: r.name.clone(),
            hostname: r.sandbox_name().clone(),
            uuid: r.domain_uuid.clone(),
            agent: self.config.host_name.clone(),
            image: r.image.clone(),
            virt_type: self.config.virt_type,
            cpus: r.cpus,
            memory_mb: r.memory_mb,
            boot: r.boot.clone(),
            overlay: r.overlay_path.clone(),
            network: r.network.clone(),
            mac: r.mac.clone(),
            tap: r.tap(),
            console_log: self.console_log(&r.id),
            ssh_user_ca_keys: r.ssh_user_ca_keys.clone(),
            link_down: false,
        }
    }

    pub(crate) async fn record(&self, id: &SandboxId) -> Result<SandboxRecord, ServiceError> {
        self.store.get(id).await?.ok_or_else(|| {
            ServiceError::NotFound(format!("sandbox {id} does not exist on this host"))
        })
    }

    /// The domain's state; `None` when it is missing.
    pub(crate) async fn state_of(
        &self,
        r: &SandboxRecord,
    ) -> Result<Option<DomainState>, ServiceError> {
        match self.hv.domain_state(&r.domain_uuid).await {
            Ok(s) => Ok(Some(s)),
            Err(HypervisorError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn observe(r: SandboxRecord, domain: Option<&DomainState>, leases: &[Lease]) -> SandboxView {
        let lease_ip = || dhcp::address_of(&r, leases);
        let (state, ip, error) = match (&r.error, domain) {
            (Some(e), _) => (ObservedState::Error, None, Some(e.clone())),
            (None, None) => (
                ObservedState::Error,
                None,
                Some("the domain is missing".to_owned()),
            ),
            (None, Some(DomainState::Running)) => (ObservedState::Running, lease_ip(), None),
            (None, Some(DomainState::Paused)) => (ObservedState::Paused, lease_ip(), None),
            (None, Some(DomainState::ShutOff)) if r.started => (ObservedState::Stopped, None, None),
            (None, Some(DomainState::ShutOff)) => (ObservedState::Created, None, None),
            (None, Some(DomainState::Crashed)) => (
                ObservedState::Error,
                None,
                Some("the domain crashed".to_owned()),
            ),
            (None, Some(DomainState::Other(s))) => (
                ObservedState::Error,
                None,
                Some(format!("the domain is in state {s:?}")),
            ),
        };
        SandboxView {
            record: r,
            state,
            ip,
            error,
        }
    }

    pub(crate) async fn leases(&self) -> Vec<Lease> {
        // Leases are a hint; a sandbox is still reported when they cannot be read.
        match self.hv.leases(self.config.network.name.as_str()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("reading DHCP leases: {e}");
                Vec::new()
            }
        }
    }

    async fn view(&self, r: SandboxRecord) -> Result<SandboxView, ServiceError> {
        let state = self.state_of(&r).await?;
        let leases = self.leases().await;
        Ok(Self::observe(r, state.as_ref(), &leases))
    }

    pub async fn get(&self, id: &SandboxId) -> Result<SandboxView, ServiceError> {
        let r = self.record(id).await?;
        self.view(r).await
    }

    /// The warm pool's shapes: sizes, members ready, hits and misses.
    pub fn pool_stats(&self) -> Vec<fluid_proto::model::PoolStatus> {
        self.warm.stats()
    }

    /// Every sandbox this agent owns, with its observed state (warm pool members are
    /// the agent's own, not sandboxes yet: not listed).
    pub async fn list(&self) -> Result<Vec<SandboxView>, ServiceError> {
        let mut records = self.store.list().await?;
        records.retain(|r| !r.pooled);
        let domains: HashMap<String, OwnedDomain> = self
            .hv
            .list_owned()
            .await?
            .into_iter()
            .map(|d| (d.uuid.clone(), d))
            .collect();
        let leases = self.leases().await;
        Ok(records
            .into_iter()
            .map(|r| {
                let state = domains.get(&r.domain_uuid).map(|d| &d.state);
                Self::observe(r, state, &leases)
            })
            .collect())
    }

    /// Creates the overlay and the domain; starts it when asked. Repeating a create
    /// with the same id returns the existing sandbox (started if asked).
    #[tracing::instrument(name = "sandbox.create", skip_all, fields(sandbox_id = %req.id))]
    pub async fn create(&self, req: CreateSandbox) -> Result<SandboxView, ServiceError> {
        self.create_as(req, false).await
    }

    /// A warm pool member: created as any sandbox, marked `pooled`.
    pub(super) async fn create_member(
        &self,
        req: CreateSandbox,
    ) -> Result<SandboxView, ServiceError> {
        self.create_as(req, true).await
    }

    async fn create_as(
        &self,
        req: CreateSandbox,
        pooled: bool,
    ) -> Result<SandboxView, ServiceError> {
        let _guard = self.lock(&req.id).await;
        if let Some(existing) = self.store.get(&req.id).await? {
            if existing.name != req.name
                || existing.image != req.image
                || existing.egress != req.egress
            {
                tracing::warn!(id = %req.id, "create repeated with a different name, image or egress policy; returning the existing sandbox");
            }
            // The rules of a sandbox whose first create failed half-way are put right.
            self.firewall.upsert(&existing);
            self.firewall.sync().await?;
            if req.start {
                self.start_locked(&existing).await?;
            }
            return self.get(&req.id).await;
        }
        let records = self.store.list().await?;
        if let Some(other) = records
            .iter()
            .find(|r| r.name == req.name || *r.sandbox_name() == req.name)
        {
            return Err(ServiceError::AlreadyExists(format!(
                "sandbox {} already uses the name {}",
                other.id, req.name
            )));
        }
        // Tap names keep 10 characters of the id; two ids sharing them cannot coexist.
        if let Some(other) = records.iter().find(|r| r.tap() == tap_name(&req.id)) {
            return Err(ServiceError::AlreadyExists(format!(
                "sandbox {} already uses the network device {}",
                other.id,
                tap_name(&req.id)
            )));
        }
        if self.hv.name_in_use(req.name.as_str()).await? {
            return Err(ServiceError::AlreadyExists(format!(
                "a libvirt domain named {} already exists on this host",
                req.name
            )));
        }
        let image_config = self.config.image(&req.image).ok_or_else(|| {
            ServiceError::NotFound(format!(
                "image {} is not configured on this host",
                req.image
            ))
        })?;
        if !pooled && let Some(claimed) = self.claim(&req).await? {
            return Ok(claimed);
        }
        let fork_source = self.fork_source(&req).await?;
        let image = images::resolve(self.hv.as_ref(), image_config).await?;

        let used_macs: Vec<&str> = records.iter().map(|r| r.mac.as_str()).collect();
        let mac = loop {
            let mac = random_mac();
            if !used_macs.contains(&mac.as_str()) {
                break mac;
            }
        };
        let started_at = Instant::now();
        // The address is the agent's: a static DHCP lease, before the domain exists.
        let static_ip = self.reserve_ip(&mac, &records).await?;
        let (provision, missing) = self.provision_for(&req, &image, static_ip).await;
        // The overlay, and the memory template it is backed by (if any).
        let (overlay_path, template, provision) = match (&fork_source, &req.from_snapshot) {
            (Some(source), Some(from)) => {
                let fork = self.fork_overlay(&req, source, from, &image).await?;
                let provision = match fork.memory {
                    Some((name, xml)) => Provision::Snapshot { name, xml },
                    None => provision,
                };
                (fork.overlay, fork.template, provision)
            }
            (Some(source), None) => {
                let live = self.fork_running(&req, source, &image).await?;
                let state = live.state;
                (live.overlay, live.template, Provision::Fork { state })
            }
            (None, _) => match provision {
                Provision::Restore(t) => (
                    self.overlays.create(&req.id, &t.disk(), "qcow2").await?,
                    Some(t.name.clone()),
                    Provision::Restore(t),
                ),
                other => (
                    self.overlays
                        .create(&req.id, &image.backing, &image.backing_format)
                        .await?,
                    None,
                    other,
                ),
            },
        };
        let overlay_ms = started_at.elapsed().as_millis();
        let record = SandboxRecord {
            id: req.id.clone(),
            name: req.name.clone(),
            image: req.image.clone(),
            cpus: req.cpus,
            memory_mb: req.memory_mb,
            mac,
            domain_uuid: uuid::Uuid::new_v4().to_string(),
            overlay_path,
            network: self.config.network.name.clone(),
            boot: image.boot.clone(),
            created_at_unix: unix_now(),
            started: false,
            last_ip: None,
            error: None,
            ssh_user_ca_keys: req.ssh_user_ca_keys.clone(),
            ssh_host_key: None,
            egress: req.egress.clone(),
            known_ip: None,
            static_ip,
            template,
            start_path: None,
            pooled,
            tap: None,
            hostname: None,
        };
        // The record goes first: after a crash, reconcile finds something to clean.
        if let Err(e) = self.store.put(&record).await {
            self.undo_create(&record, false).await;
            return Err(e.into());
        }
        // Then the rules: the sandbox is sealed before its domain exists.
        self.firewall.upsert(&record);
        if let Err(e) = self.firewall.sync().await {
            self.undo_create(&record, false).await;
            return Err(e.into());
        }
        if let Err(e) = self.hv.define(&self.spec_for(&record)).await {
            self.undo_create(&record, false).await;
            return Err(e.into());
        }
        let define_ms = started_at.elapsed().as_millis() - overlay_ms;
        let mut start_path = None;
        if req.start {
            match self.provision(&provision, &record).await {
                Ok(path) => start_path = Some(path),
                Err(e) => {
                    self.undo_create(&record, true).await;
                    return Err(e);
                }
            }
            self.mark_started(&record, start_path).await?;
        }
        if let Provision::Fork { state } = &provision {
            // Used by the start, or not at all.
            let _ = tokio::fs::remove_file(state).await;
        }
        if let Some(missing) = missing {
            self.build_later(missing);
        }
        tracing::info!(
            id = %record.id, name = %record.name, image = %record.image, start_path,
            overlay_ms, define_ms, total_ms = started_at.elapsed().as_millis(),
            started = req.start, forked_from = ?fork::fork_label(&req),
            "sandbox created"
        );
        self.get(&req.id).await
    }

    /// Best-effort removal of what a failed create made.
    async fn undo_create(&self, r: &SandboxRecord, defined: bool) {
        if defined {
            if let Err(e) = self.hv.power_off(&r.domain_uuid).await {
                tracing::warn!(id = %r.id, "undo create: power off: {e}");
            }
            if let Err(e) = self.hv.undefine(&r.domain_uuid).await {
                tracing::warn!(id = %r.id, "undo create: undefine: {e}");
            }
        }
        if let Err(e) = self.overlays.remove(&r.overlay_path).await {
            tracing::warn!(id = %r.id, "undo create: {e}");
        }
        // A live fork's saved state, if it was not restored.
        let _ = tokio::fs::remove_file(self.fork_state_path(&r.id)).await;
        if let Err(e) = self.store.remove(&r.id).await {
            tracing::warn!(id = %r.id, "undo create: {e}");
        }
        self.unreserve_ip(r).await;
        if self.firewall.remove(&r.id)
            && let Err(e) = self.firewall.sync().await
        {
            tracing::warn!(id = %r.id, "undo create: {e}");
        }
    }

    /// Records that the sandbox has run (and, at its first start, how it started).
    async fn mark_started(
        &self,
        r: &SandboxRecord,
        path: Option<&'static str>,
    ) -> Result<(), ServiceError> {
        // The stored record: a restore has written the host key and address into it.
        let mut current = self.store.get(&r.id).await?.unwrap_or_else(|| r.clone());
        if !current.started || (path.is_some() && current.start_path.is_none()) {
            current.started = true;
            if current.start_path.is_none() {
                current.start_path = path.map(str::to_owned);
            }
            self.store.put(&current).await?;
        }
        Ok(())
    }

    #[tracing::instrument(name = "sandbox.start", skip_all, fields(sandbox_id = %id))]
    pub async fn start(&self, id: &SandboxId) -> Result<SandboxView, ServiceError> {
        let _guard = self.lock(id).await;
        let r = self.record(id).await?;
        self.start_locked(&r).await?;
        self.get(id).await
    }

    async fn start_locked(&self, r: &SandboxRecord) -> Result<(), ServiceError> {
        if let Some(e) = &r.error {
            return Err(ServiceError::FailedPrecondition(format!(
                "sandbox {} cannot start: {e}",
                r.id
            )));
        }
        match self.state_of(r).await? {
            Some(DomainState::Running) => {}
            Some(DomainState::ShutOff | DomainState::Crashed) => {
                self.ensure_reserved(r).await?;
                self.hv.start(&r.domain_uuid).await?;
                self.mark_started(r, Some("boot")).await?;
                tracing::info!(id = %r.id, "sandbox started");
            }
            Some(DomainState::Paused) => {
                return Err(ServiceError::FailedPrecondition(format!(
                    "sandbox {} is paused",
                    r.id
                )));
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
        }
        Ok(())
    }

    /// Graceful shutdown, then power off after the timeout; `force` powers off at once.
    #[tracing::instrument(name = "sandbox.stop", skip_all, fields(sandbox_id = %req.id))]
    pub async fn stop(&self, req: StopSandbox) -> Result<SandboxView, ServiceError> {
        let _guard = self.lock(&req.id).await;
        let r = self.record(&req.id).await?;
        let uuid = r.domain_uuid.as_str();
        match self.state_of(&r).await? {
            None => {
                return Err(ServiceError::FailedPrecondition(format!(
                    "sandbox {}'s domain is missing",
                    r.id
                )));
            }
            Some(DomainState::ShutOff) => return self.get(&req.id).await,
            Some(DomainState::Running) if !req.force => {
                let timeout = Duration::from_secs(u64::from(
                    req.timeout_seconds
                        .unwrap_or(self.config.stop_timeout_seconds),
                ));
                if !self.shutdown_gracefully(uuid, timeout).await? {
                    tracing::info!(id = %r.id, ?timeout, "guest did not shut down in time; powering off");
                    self.hv.power_off(uuid).await?;
                }
            }
            Some(_) => self.hv.power_off(uuid).await?,
        }
        self.ssh.forget(&r.id);
        // A stopped guest holds no address; without this, a wait for the IP after the
        // next start would return the old lease before the guest is up.
        self.release_leases(&r).await;
        self.withdraw_ip(&r).await;
        tracing::info!(id = %r.id, force = req.force, "sandbox stopped");
        self.get(&req.id).await
    }

    /// True when the guest shut down within `timeout`.
    async fn shutdown_gracefully(
        &self,
        uuid: &str,
        timeout: Duration,
    ) -> Result<bool, ServiceError> {
        let deadline = Instant::now() + timeout;
        let mut next_request = Instant::now();
        loop {
            if Instant::now() >= next_request {
                self.hv.shutdown(uuid).await?;
                next_request = Instant::now() + SHUTDOWN_RESEND;
            }
            tokio::time::sleep(self.poll).await;
            match self.hv.domain_state(uuid).await {
                Ok(DomainState::ShutOff) => return Ok(true),
                Ok(_) => {}
                Err(HypervisorError::NotFound(m)) => {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "the domain vanished while stopping: {m}"
                    )));
                }
                Err(e) => return Err(e.into()),
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
        }
    }

    /// Removes domain, lease, overlay, console log and record. True if anything existed.
    #[tracing::instrument(name = "sandbox.destroy", skip_all, fields(sandbox_id = %id))]
    pub async fn destroy(&self, id: &SandboxId) -> Result<bool, ServiceError> {
        let guard = self.lock(id).await;
        let record = self.store.get(id).await?;
        // Domains marked with this id: the record's, and any left by a lost record.
        let domains: Vec<OwnedDomain> = self
            .hv
            .list_owned()
            .await?
            .into_iter()
            .filter(|d| {
                d.meta.id == id.as_str() || record.as_ref().is_some_and(|r| r.domain_uuid == d.uuid)
            })
            .collect();
        let existed = record.is_some() || !domains.is_empty();
        self.ssh.forget(id);
        self.exec.forget(id);
        self.forget_exec_slots(id);
        for d in &domains {
            remove_domain(self.hv.as_ref(), &d.uuid).await?;
        }
        // The domain is gone: now none of its rules may stay. A failed apply is
        // retried by the firewall's periodic check; it must not fail the destroy.
        if self.firewall.remove(id)
            && let Err(e) = self.firewall.sync().await
        {
            tracing::warn!(id = %id, "removing the sandbox's network rules: {e}");
        }
        if let Some(r) = &record {
            self.release_leases(r).await;
            self.unreserve_ip(r).await;
            self.overlays.remove(&r.overlay_path).await?;
        }
        self.overlays.remove(&self.overlays.path_for(id)).await?;
        overlay::remove_file(&self.console_log(id)).await?;
        self.store.remove(id).await?;
        drop(guard);
        self.forget_lock(id);
        if existed {
            tracing::info!(id = %id, "sandbox destroyed");
        }
        Ok(existed)
    }

    /// Releases the DHCP leases of a sandbox's MAC (best effort: a lease left behind
    /// expires on its own, and must not fail a stop or destroy).
    async fn release_leases(&self, r: &SandboxRecord) {
        for lease in self.leases().await.iter().filter(|l| l.mac == r.mac) {
            match self.hv.release_lease(r.network.as_str(), lease).await {
                Ok(()) => tracing::debug!(id = %r.id, ip = %lease.ip, "DHCP lease released"),
                Err(e) => {
                    tracing::warn!(id = %r.id, ip = %lease.ip, "releasing the DHCP lease: {e}")
                }
            }
        }
    }

    /// Polls the network's leases until the sandbox has an IPv4 address.
    #[tracing::instrument(name = "sandbox.wait_for_ip", skip_all, fields(sandbox_id = %req.id))]
    pub async fn wait_for_ip(&self, req: WaitForIp) -> Result<Ipv4Addr, ServiceError> {
        let r = self.record(&req.id).await?;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(u64::from(req.timeout_seconds));
        loop {
            match self.state_of(&r).await? {
                Some(DomainState::Running | DomainState::Paused) => {}
                None => {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "sandbox {}'s domain is missing",
                        r.id
                    )));
                }
                Some(_) => {
                    return Err(ServiceError::FailedPrecondition(format!(
                        "sandbox {} is not running",
                        r.id
                    )));
                }
            }
            // Its lease, or the reserved address a restore has given it (`known_ip`).
            if let Some(ip) = dhcp::address_of(&r, &self.hv.leases(r.network.as_str()).await?) {
                // Not before the rules admit it: the caller's first SSH must get through.
                self.admit_ip(&r.id, ip).await?;
                tracing::info!(id = %r.id, %ip, waited_ms = started.elapsed().as_millis(), "sandbox has an address");
                self.remember_ip(&r.id, ip).await;
                return Ok(ip);
            }
            if Instant::now() + self.poll > deadline {
                return Err(ServiceError::DeadlineExceeded(format!(
                    "sandbox {} has no DHCP lease after {} s",
                    r.id, req.timeout_seconds
                )));
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    async fn remember_ip(&self, id: &SandboxId, ip: Ipv4Addr) {
        let _guard = self.lock(id).await;
        match self.store.get(id).await {
            Ok(Some(mut r)) if r.last_ip != Some(ip) || r.known_ip != Some(ip) => {
                r.last_ip = Some(ip);
                r.known_ip = Some(ip);
                if let Err(e) = self.store.put(&r).await {
                    tracing::warn!(id = %id, "saving the IP address: {e}");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(id = %id, "saving the IP address: {e}"),
        }
    }
}

/// Powers a domain off and undefines it; a missing domain is fine.
pub(crate) async fn remove_domain<H: Hypervisor>(hv: &H, uuid: &str) -> Result<(), ServiceError> {
    match hv.power_off(uuid).await {
        Ok(()) | Err(HypervisorError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    match hv.undefine(uuid).await {
        Ok(()) | Err(HypervisorError::NotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

mod attach;
mod capacity;
mod dhcp;
mod egress;
mod exec;
mod fork;
#[cfg(test)]
mod fork_tests;
pub mod inspect;
mod provision;
#[cfg(test)]
mod provision_tests;
mod room;
#[cfg(test)]
mod room_tests;
mod scratch;
pub mod snapshots;
#[cfg(test)]
pub(crate) mod tests;
pub mod tunnel;
pub mod warm;
