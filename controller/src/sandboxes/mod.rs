//! The sandbox service: what the REST handlers call. Validates requests, asks the
//! scheduler for a reservation, drives the agent, and records each transition in the
//! store. The state machine's refusals are explicit (`start` of a destroyed sandbox is a
//! conflict, not a silent no-op).

pub mod diffs;
pub mod janitor;
pub mod overcommit;
pub mod snapshots;

use std::sync::Arc;

use chrono::Utc;
use fluid_client::governance::SandboxMode;
use fluid_client::types::{
    CreateSandboxRequest, CreateSandboxResponse, DestroySandboxResponse, GetSandboxResponse,
    HostState, ListSandboxesResponse, SandboxIpResponse, SandboxState, StartSandboxResponse,
    StopSandboxResponse,
};
use fluid_proto::model::{
    CreateSandbox, EgressPolicy, Name, SandboxId, SandboxInfo, check_cpus, check_memory_mb,
};

use crate::agents::locate;
use crate::agents::{AgentConnector, AgentError, AgentTarget};
use crate::agents::{api_start_path, observed_state};
use crate::error::ServiceError;
use crate::governance::auth::{self, Caller, Permission};
use crate::governance::quotas::{CreateRate, QuotasConfig};
use crate::metrics::Metrics;
use crate::sandboxes::overcommit::{CreateOutcome, OvercommitGate};
use crate::scheduler::{self, Placement, ScheduleError};
use crate::store::{NewAuditEvent, SandboxFilter, SandboxRecord, SandboxUpdate, Store};
use crate::support::ids::{LegacyJobId, check_agent_id, new_id};

/// Longest TTL a sandbox may ask for (30 days).
pub const TTL_MAX_SECONDS: i64 = 30 * 24 * 3600;
/// Commands `GET /v1/sandboxes/{id}?include_commands=true` returns (the newest).
pub const INCLUDED_COMMANDS: u32 = 100;

/// A validated create request with its ids fixed, not yet placed.
///
/// [`SandboxService::prepare`] leaves `pin_host` empty and `create.from_snapshot`
/// unset; a caller sets them before [`SandboxService::place`]:
/// - `pin_host`: place the sandbox on this host only (a fork: the snapshot it starts
///   from lives there; a verify sandbox beside the one it is compared with). The host
///   must still pass every check (online, image, room) and capacity is still reserved;
///   when it does not fit the create is a 409 naming why, never another host.
/// - `create.from_snapshot`: the agent starts the new sandbox's disk from that snapshot
///   (of a sandbox on the same host, so set `pin_host` to the snapshot's host).
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedCreate {
    pub placement: Placement,
    pub create: CreateSandbox,
    pub wait_for_ip: bool,
    /// Place on this host only (see above).
    pub pin_host: Option<String>,
}

/// What the service needs from the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxSettings {
    pub default_cpu: u32,
    pub default_memory_mb: u64,
    pub cpu_overcommit_ratio: f64,
    pub wait_for_ip_timeout_secs: u32,
    /// OpenSSH public keys of the user CAs every new sandbox trusts.
    pub ssh_user_ca_keys: Vec<String>,
}

pub struct SandboxService {
    store: Arc<dyn Store>,
    agents: Arc<dyn AgentConnector>,
    settings: SandboxSettings,
    metrics: Arc<Metrics>,
    /// The over-commit step of a create that finds no room (`None`: a 409).
    overcommit: Option<Arc<OvercommitGate>>,
    /// `[quotas]`: sandboxes per agent, creates per second per token.
    quotas: QuotasConfig,
    create_rate: CreateRate,
}

impl std::fmt::Debug for SandboxService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxService")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl SandboxService {
    pub fn new(
        store: Arc<dyn Store>,
        agents: Arc<dyn AgentConnector>,
        settings: SandboxSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            agents,
            settings,
            metrics,
            overcommit: None,
            create_rate: CreateRate::new(QuotasConfig::default().creates_per_second_per_token),
            quotas: QuotasConfig::default(),
        }
    }

    /// The service with `[quotas]`.
    pub fn with_quotas(mut self, quotas: QuotasConfig) -> Self {
        self.create_rate = CreateRate::new(quotas.creates_per_second_per_token);
        self.quotas = quotas;
        self
    }

    /// `[quotas]`.
    pub fn quotas(&self) -> &QuotasConfig {
        &self.quotas
    }

    /// `[quotas] creates_per_second_per_token`: one more create (or fork) for `caller`,
    /// or a 429 saying when to retry.
    pub fn take_create(&self, caller: &Caller) -> Result<(), ServiceError> {
        self.create_rate
            .take(&caller.token_id)
            .map_err(|retry_after_secs| ServiceError::Busy {
                message: format!(
                    "token {:?} starts at most {} creates a second (quotas.creates_per_second_per_token); retry after {retry_after_secs} s",
                    caller.name, self.quotas.creates_per_second_per_token
                ),
                retry_after_secs,
            })
    }

    /// Creates that find no room ask a human through `gate` instead of failing.
    pub fn with_overcommit(mut self, gate: Arc<OvercommitGate>) -> Self {
        self.overcommit = Some(gate);
        self
    }

    async fn row(&self, id: &SandboxId) -> Result<SandboxRecord, ServiceError> {
        self.store
            .get_sandbox(id.as_str())
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("sandbox {id} not found")))
    }

    /// Sets the sandbox's mode (read-only or read-write) as `caller` (`SetMode`), with
    /// an audit event of kind `mode`.
    pub async fn set_mode(
        &self,
        caller: &Caller,
        id: &SandboxId,
        mode: SandboxMode,
    ) -> Result<SandboxRecord, ServiceError> {
        auth::authorized_sandbox(&*self.store, caller, id, Permission::SetMode).await?;
        let read_only = mode == SandboxMode::ReadOnly;
        let sb = self
            .store
            .set_sandbox_read_only(id.as_str(), read_only, Utc::now())
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("sandbox {id} not found")))?;
        let event = NewAuditEvent::system("mode", mode.as_str(), mode.as_str())
            .sandbox(sb.id.clone())
            .by(&caller.name, caller.role.as_str());
        if let Err(e) = self.store.append_audit(&event).await {
            tracing::error!(error = %e, "appending a mode audit event");
        }
        Ok(sb)
    }

    /// The agent that runs `row`, with whether its host is currently online.
    async fn target(&self, row: &SandboxRecord) -> Result<(AgentTarget, bool), ServiceError> {
        let host = locate::host_of(&*self.store, row).await?;
        Ok((AgentTarget::from(&host), host.state == HostState::Online))
    }

    async fn update(
        &self,
        id: &str,
        u: SandboxUpdate,
    ) -> Result<Option<SandboxRecord>, ServiceError> {
        Ok(self.store.update_sandbox(id, &u, Utc::now()).await?)
    }

    async fn update_existing(
        &self,
        id: &str,
        u: SandboxUpdate,
    ) -> Result<SandboxRecord, ServiceError> {
        self.update(id, u)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("sandbox {id} not found")))
    }

    /// Creates a sandbox: prepare (validate, fix ids) → place (reserve a host) →
    /// launch (the agent defines and boots it). When placement finds no room and the
    /// over-commit step is on, a human decides instead of a 409 (with `wait`, this
    /// blocks until they do).
    pub async fn create(
        self: &Arc<Self>,
        caller: &Caller,
        req: CreateSandboxRequest,
        wait: bool,
    ) -> Result<CreateOutcome, ServiceError> {
        auth::check(caller, Permission::CreateSandbox)?;
        auth::check_owner(
            caller,
            &req.agent_id,
            &format!("agent_id {:?}", req.agent_id),
        )?;
        let prepared = self.prepare(&req, None)?;
        self.take_create(caller)?;
        match self.place(&prepared).await {
            Ok(row) => Ok(CreateOutcome::Created(self.launch(prepared, row).await?)),
            Err(ServiceError::Schedule(ScheduleError::NoCapacity(why))) => match &self.overcommit {
                Some(gate) => gate.ask(self, caller, req, prepared, why, wait).await,
                None => Err(ScheduleError::NoCapacity(why).into()),
            },
            Err(e) => Err(e),
        }
    }

    /// At start: resumes over-commit creates still waiting for a human, and performs
    /// approved ones whose sandbox was never created.
    pub async fn resume_overcommits(self: &Arc<Self>) -> Result<usize, ServiceError> {
        match &self.overcommit {
            Some(gate) => gate.resume(self).await,
            None => Ok(0),
        }
    }

    /// Validates a create request and fixes its ids (`id`, or a new one) without
    /// reserving anything.
    pub fn prepare(
        &self,
        req: &CreateSandboxRequest,
        id: Option<SandboxId>,
    ) -> Result<PreparedCreate, ServiceError> {
        let image = Name::parse("source_vm_name", &req.source_vm_name)?;
        check_agent_id(&req.agent_id)?;
        let cpus = check_cpus("cpu", req.cpu.unwrap_or(self.settings.default_cpu))?;
        let memory_mb = check_memory_mb(
            "memory_mb",
            req.memory_mb.unwrap_or(self.settings.default_memory_mb),
        )?;
        if let Some(ttl) = req.ttl_seconds
            && !(1..=TTL_MAX_SECONDS).contains(&ttl)
        {
            return Err(ServiceError::Invalid(format!(
                "ttl_seconds: {ttl} is out of range (1-{TTL_MAX_SECONDS})"
            )));
        }
        let auto_start = req.auto_start.unwrap_or(true);
        let wait_for_ip = req.wait_for_ip.unwrap_or(false);
        if wait_for_ip && !auto_start {
            return Err(ServiceError::Invalid(
                "wait_for_ip: needs auto_start (a stopped VM gets no address)".into(),
            ));
        }
        let id = match id {
            Some(id) => id,
            None => SandboxId::parse("id", &new_id(SandboxId::PREFIX))?,
        };
        let name = match &req.vm_name {
            Some(n) => Name::parse("vm_name", n)?,
            None => Name::parse("vm_name", &format!("sbx-{}", &id.as_str()[4..]))?,
        };
        let placement = Placement {
            id: id.to_string(),
            legacy_job_id: LegacyJobId::generate(),
            agent_id: req.agent_id.clone(),
            name: name.to_string(),
            image: image.to_string(),
            cpus,
            memory_mb,
            ttl_seconds: req.ttl_seconds,
            max_owned: Some(self.quotas.sandboxes_per_agent),
        };
        Ok(PreparedCreate {
            placement,
            create: CreateSandbox {
                id,
                name,
                image,
                cpus,
                memory_mb,
                start: auto_start,
                ssh_user_ca_keys: self.settings.ssh_user_ca_keys.clone(),
                egress: EgressPolicy::default(),
                from_snapshot: None,
                fork_of_running: None,
            },
            wait_for_ip,
            pin_host: None,
        })
    }

    /// Reserves room for a prepared create on the best host that has it (on its
    /// `pin_host` only, when set).
    pub async fn place(&self, p: &PreparedCreate) -> Result<SandboxRecord, ServiceError> {
        let ratio = self.settings.cpu_overcommit_ratio;
        Ok(match &p.pin_host {
            Some(host) => {
                scheduler::place_on(&*self.store, &p.placement, host, ratio, Utc::now()).await?
            }
            None => scheduler::place(&*self.store, &p.placement, ratio, Utc::now()).await?,
        })
    }

    /// The vCPU over-commit ratio the scheduler applies.
    pub fn cpu_overcommit_ratio(&self) -> f64 {
        self.settings.cpu_overcommit_ratio
    }

    /// Asks the agent to create (and start) a reserved sandbox, recording each step;
    /// its duration goes into `fluid_sandbox_create_duration_seconds`.
    #[tracing::instrument(name = "sandbox.create", skip_all, fields(sandbox_id = %row.id))]
    pub async fn launch(
        &self,
        p: PreparedCreate,
        row: SandboxRecord,
    ) -> Result<CreateSandboxResponse, ServiceError> {
        let started = std::time::Instant::now();
        let r = self.launch_timed(p, row).await;
        self.metrics.sandbox_created(r.is_ok(), started.elapsed());
        r
    }

    async fn launch_timed(
        &self,
        p: PreparedCreate,
        row: SandboxRecord,
    ) -> Result<CreateSandboxResponse, ServiceError> {
        let PreparedCreate {
            mut create,
            wait_for_ip,
            ..
        } = p;
        let id = create.id.clone();
        // The allow-list in force from the first packet: what is stored by now.
        if let Some(text) = self.store.get_egress(id.as_str()).await? {
            match crate::network::egress::policy_from_json(&text) {
                Ok(egress) => create.egress = egress,
                Err(e) => {
                    tracing::warn!(sandbox = %id, error = %e, "stored allow-list unreadable; creating sealed")
                }
            }
        }
        let (target, _) = self.target(&row).await?;
        tracing::info!(sandbox = %id, host = %target.name, image = %create.image, "sandbox placed");
        if create.start {
            self.update(
                id.as_str(),
                SandboxUpdate {
                    state: Some(SandboxState::Starting),
                    ..Default::default()
                },
            )
            .await?;
        }
        let info = match self.agents.create_sandbox(&target, &create).await {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(sandbox = %id, host = %target.name, error = %e, "create failed");
                if let Err(d) = self.agents.destroy_sandbox(&target, &id).await {
                    tracing::warn!(sandbox = %id, error = %d, "cleanup after failed create");
                }
                self.update(
                    id.as_str(),
                    SandboxUpdate {
                        state: Some(SandboxState::Error),
                        error: Some(Some(e.to_string())),
                        ..Default::default()
                    },
                )
                .await?;
                return Err(e.into());
            }
        };
        let mut row = self.record_observation(id.as_str(), &info).await?;
        let mut ip_address = row.ip_address.clone();
        if wait_for_ip && row.state == SandboxState::Running && ip_address.is_none() {
            match self.wait_ip(&target, &id).await {
                Ok(Some(r)) => {
                    ip_address = r.ip_address.clone();
                    row = r;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(sandbox = %id, error = %e, "no IP address after create");
                }
            }
        }
        Ok(CreateSandboxResponse {
            sandbox: row.to_api(),
            ip_address,
        })
    }

    /// Writes what the agent reported about a sandbox it just acted on.
    async fn record_observation(
        &self,
        id: &str,
        info: &SandboxInfo,
    ) -> Result<SandboxRecord, ServiceError> {
        let state = observed_state(info.state);
        self.update_existing(
            id,
            SandboxUpdate {
                state: Some(state),
                ip_address: Some(info.ip_address.map(|ip| ip.to_string())),
                network: (!info.network.is_empty()).then(|| info.network.clone()),
                error: Some(if state == SandboxState::Error {
                    Some(
                        info.error
                            .clone()
                            .unwrap_or_else(|| "agent reports an error".into()),
                    )
                } else {
                    None
                }),
                start_path: info.start_path.map(api_start_path),
                expect_state: None,
            },
        )
        .await
    }

    /// Waits for the agent to report a lease, then stores it.
    async fn wait_ip(
        &self,
        target: &AgentTarget,
        id: &SandboxId,
    ) -> Result<Option<SandboxRecord>, ServiceError> {
        let ip = self
            .agents
            .wait_for_ip(target, id, self.settings.wait_for_ip_timeout_secs)
            .await?;
        let Some(ip) = ip else {
            return Ok(None);
        };
        Ok(Some(
            self.update_existing(
                id.as_str(),
                SandboxUpdate {
                    ip_address: Some(Some(ip.to_string())),
                    ..Default::default()
                },
            )
            .await?,
        ))
    }

    /// The sandboxes `caller` may read that match `f`: a scoped caller's own agent's
    /// (asking for another agent's is a 403).
    pub async fn list(
        &self,
        caller: &Caller,
        mut f: SandboxFilter,
    ) -> Result<ListSandboxesResponse, ServiceError> {
        auth::check(caller, Permission::Read)?;
        if let Some(own) = caller.scope() {
            if let Some(asked) = &f.agent_id {
                auth::check_owner(caller, asked, &format!("agent_id {asked:?}"))?;
            }
            f.agent_id = Some(own.to_owned());
        }
        let (rows, total) = self.store.list_sandboxes(&f).await?;
        Ok(ListSandboxesResponse {
            sandboxes: rows.iter().map(SandboxRecord::to_api).collect(),
            total,
        })
    }

    pub async fn get(
        &self,
        caller: &Caller,
        id: &SandboxId,
        include_commands: bool,
    ) -> Result<GetSandboxResponse, ServiceError> {
        let row = auth::authorized_sandbox(&*self.store, caller, id, Permission::Read).await?;
        let commands = if include_commands {
            let (rows, _) = self
                .store
                .list_commands(id.as_str(), INCLUDED_COMMANDS, 0)
                .await?;
            Some(
                rows.iter()
                    .map(crate::store::CommandRecord::to_api)
                    .collect(),
            )
        } else {
            None
        };
        Ok(GetSandboxResponse {
            sandbox: row.to_api(),
            commands,
        })
    }

    #[tracing::instrument(name = "sandbox.start", skip_all, fields(sandbox_id = %id))]
    pub async fn start(
        &self,
        caller: &Caller,
        id: &SandboxId,
        wait_for_ip: bool,
    ) -> Result<StartSandboxResponse, ServiceError> {
        let row = auth::authorized_sandbox(&*self.store, caller, id, Permission::Control).await?;
        if row.state == SandboxState::Destroyed {
            return Err(ServiceError::Conflict(format!(
                "sandbox {id} is destroyed and cannot be started"
            )));
        }
        let (target, _) = self.target(&row).await?;
        let info = self.agents.start_sandbox(&target, id).await?;
        let mut row = self.record_observation(id.as_str(), &info).await?;
        if wait_for_ip
            && row.ip_address.is_none()
            && row.state == SandboxState::Running
            && let Some(r) = self.wait_ip(&target, id).await?
        {
            row = r;
        }
        Ok(StartSandboxResponse {
            ip_address: row.ip_address,
        })
    }

    #[tracing::instrument(name = "sandbox.stop", skip_all, fields(sandbox_id = %id))]
    pub async fn stop(
        &self,
        caller: &Caller,
        id: &SandboxId,
    ) -> Result<StopSandboxResponse, ServiceError> {
        let row = auth::authorized_sandbox(&*self.store, caller, id, Permission::Control).await?;
        match row.state {
            SandboxState::Destroyed => {
                return Err(ServiceError::Conflict(format!(
                    "sandbox {id} is destroyed and cannot be stopped"
                )));
            }
            SandboxState::Stopped => {
                return Ok(StopSandboxResponse {
                    sandbox: row.to_api(),
                });
            }
            _ => {}
        }
        let (target, _) = self.target(&row).await?;
        let info = self.agents.stop_sandbox(&target, id, false).await?;
        let mut row = self.record_observation(id.as_str(), &info).await?;
        if row.state == SandboxState::Stopped && row.ip_address.is_some() {
            row = self
                .update_existing(
                    id.as_str(),
                    SandboxUpdate {
                        ip_address: Some(None),
                        ..Default::default()
                    },
                )
                .await?;
        }
        Ok(StopSandboxResponse {
            sandbox: row.to_api(),
        })
    }

    /// Destroys the sandbox as `caller` (`Control`): see [`Self::destroy_row`].
    pub async fn destroy(
        &self,
        caller: &Caller,
        id: &SandboxId,
    ) -> Result<DestroySandboxResponse, ServiceError> {
        let row = auth::authorized_sandbox(&*self.store, caller, id, Permission::Control);
        self.destroy_row(id, row.await?).await
    }

    /// Destroys the sandbox for the controller itself (a TTL, a job's or a verify's
    /// clean-up): no caller to check. See [`Self::destroy_row`].
    pub async fn destroy_unchecked(
        &self,
        id: &SandboxId,
    ) -> Result<DestroySandboxResponse, ServiceError> {
        self.destroy_row(id, self.row(id).await?).await
    }

    /// Destroys the sandbox on its host and marks it DESTROYED (the row stays). When its
    /// host is offline or gone, the row is marked at once and the reconciler removes the
    /// orphan when the host comes back.
    #[tracing::instrument(name = "sandbox.destroy", skip_all, fields(sandbox_id = %id))]
    async fn destroy_row(
        &self,
        id: &SandboxId,
        row: SandboxRecord,
    ) -> Result<DestroySandboxResponse, ServiceError> {
        let body = |r: &SandboxRecord| DestroySandboxResponse {
            state: SandboxState::Destroyed,
            base_image: r.image.clone(),
            sandbox_name: r.name.clone(),
            ttl_seconds: r.ttl_seconds,
        };
        if row.state == SandboxState::Destroyed {
            return Ok(body(&row));
        }
        match self.target(&row).await {
            Ok((target, true)) => match self.agents.destroy_sandbox(&target, id).await {
                Ok(_) | Err(AgentError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            },
            Ok((target, false)) => {
                tracing::warn!(sandbox = %id, host = %target.name, "host not online; the reconciler will remove the domain");
            }
            Err(ServiceError::Conflict(why)) => {
                tracing::warn!(sandbox = %id, %why, "destroying a sandbox without a host");
            }
            Err(e) => return Err(e),
        }
        let row = self
            .update_existing(
                id.as_str(),
                SandboxUpdate {
                    state: Some(SandboxState::Destroyed),
                    ip_address: Some(None),
                    ..Default::default()
                },
            )
            .await?;
        // Its snapshots went with its domain and overlay (the reconciler removes an
        // orphan's when the host was offline).
        match self.store.delete_sandbox_snapshots(id.as_str()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(sandbox = %id, snapshots = n, "snapshot records removed"),
            Err(e) => tracing::warn!(sandbox = %id, error = %e, "removing snapshot records"),
        }
        tracing::info!(sandbox = %id, "sandbox destroyed");
        Ok(body(&row))
    }

    pub async fn ip(
        &self,
        caller: &Caller,
        id: &SandboxId,
    ) -> Result<SandboxIpResponse, ServiceError> {
        let row = auth::authorized_sandbox(&*self.store, caller, id, Permission::Read).await?;
        if row.state == SandboxState::Destroyed {
            return Err(ServiceError::Conflict(format!("sandbox {id} is destroyed")));
        }
        let (target, _) = self.target(&row).await?;
        let info = self.agents.get_sandbox(&target, id).await?;
        let ip = info.ip_address.map(|ip| ip.to_string());
        if ip != row.ip_address {
            self.update(
                id.as_str(),
                SandboxUpdate {
                    ip_address: Some(ip.clone()),
                    ..Default::default()
                },
            )
            .await?;
        }
        Ok(SandboxIpResponse { ip_address: ip })
    }
}
