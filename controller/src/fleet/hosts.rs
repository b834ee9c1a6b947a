//! The host registry and its heartbeat. Hosts are added by configuration or
//! `POST /v1/hosts`; the heartbeat polls every agent's status and images, records the
//! capacity it reports (and its warm pool, per image and shape), and marks a host
//! OFFLINE after enough missed beats (a new host is UNKNOWN until its first beat).

use std::sync::Arc;

use chrono::Utc;
use fluid_client::types::{
    AddHostRequest, Host, HostError, HostPool, HostResponse, ListHostsResponse, ListVmsResponse, Vm,
};
use fluid_proto::model::{Name, PoolStatus};
use futures::future::join_all;

use crate::agents::{AgentConnector, AgentTarget};
use crate::error::ServiceError;
use crate::governance::auth::{self, Caller, Permission};
use crate::store::{Beat, HostRecord, HostUsage, Store, StoreError, free_cpus, free_memory};
use crate::support::addr::check_address;

/// A pool shape as the API shows it.
fn pool_to_api(p: PoolStatus) -> HostPool {
    HostPool {
        image: p.image,
        cpus: p.cpus,
        memory_mb: p.memory_mb,
        size: p.size,
        ready: p.ready,
        filling: p.filling,
        hits: p.hits,
        misses: p.misses,
    }
}

pub struct HostService {
    store: Arc<dyn Store>,
    agents: Arc<dyn AgentConnector>,
    cpu_overcommit_ratio: f64,
    offline_after_missed_beats: u32,
}

impl std::fmt::Debug for HostService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostService").finish_non_exhaustive()
    }
}

impl HostService {
    pub fn new(
        store: Arc<dyn Store>,
        agents: Arc<dyn AgentConnector>,
        cpu_overcommit_ratio: f64,
        offline_after_missed_beats: u32,
    ) -> Self {
        Self {
            store,
            agents,
            cpu_overcommit_ratio,
            offline_after_missed_beats,
        }
    }

    fn to_api(&self, h: HostRecord, u: HostUsage) -> Host {
        Host {
            cpus_free: free_cpus(&h, u, self.cpu_overcommit_ratio),
            memory_mb_free: free_memory(&h, u),
            sandboxes: u.sandboxes,
            name: h.name,
            address: h.address,
            state: h.state,
            cpus_total: h.cpus_total,
            memory_mb_total: h.memory_mb_total,
            last_seen: h.last_seen,
            images: h.images,
            agent_version: h.agent_version,
            last_error: h.last_error,
            pools: h.pools.into_iter().map(pool_to_api).collect(),
            simulated: h.simulated,
        }
    }

    /// The hosts as recorded, once the store has answered a ping (`/v1/health`).
    pub async fn health(&self) -> Result<Vec<HostRecord>, StoreError> {
        self.store.ping().await?;
        self.store.list_hosts().await
    }

    /// `GET /metrics`: the fleet gauges of `metrics` refreshed, then all of it as
    /// OpenMetrics text. `caller` needs `ReadFleet` (`None`: `[metrics] public`). A
    /// store that fails does not fail the scrape: the gauges keep their last values
    /// and `fluid_metrics_scrape_errors_total` goes up.
    pub async fn scrape(
        &self,
        caller: Option<&Caller>,
        metrics: &crate::metrics::Metrics,
    ) -> Result<String, ServiceError> {
        if let Some(caller) = caller {
            auth::check(caller, Permission::ReadFleet)?;
        }
        match self.hosts().await {
            Ok(list) => {
                if let Err(e) = metrics.refresh(&*self.store, &list.hosts).await {
                    tracing::warn!(error = %e, "metrics: the fleet gauges could not be read");
                }
            }
            Err(e) => {
                metrics.scrape_failed();
                tracing::warn!(error = %e, "metrics: the hosts could not be listed");
            }
        }
        Ok(metrics.encode())
    }

    /// The hosts, for `caller` (`Read`).
    pub async fn list(&self, caller: &Caller) -> Result<ListHostsResponse, ServiceError> {
        auth::check(caller, Permission::Read)?;
        self.hosts().await
    }

    async fn hosts(&self) -> Result<ListHostsResponse, ServiceError> {
        let hosts = self.store.list_hosts().await?;
        let usage = self.store.host_usage().await?;
        Ok(ListHostsResponse {
            hosts: hosts
                .into_iter()
                .map(|h| {
                    let u = usage.get(&h.name).copied().unwrap_or_default();
                    self.to_api(h, u)
                })
                .collect(),
            total: None,
        })
    }

    /// Adds a host, for `caller` (`ManageHosts`).
    pub async fn add(
        &self,
        caller: &Caller,
        req: AddHostRequest,
    ) -> Result<HostResponse, ServiceError> {
        auth::check(caller, Permission::ManageHosts)?;
        let name = Name::parse("name", &req.name)?;
        check_address(&req.address).map_err(|e| ServiceError::Invalid(format!("address: {e}")))?;
        let host = self
            .store
            .insert_host(name.as_str(), &req.address, Utc::now())
            .await
            .map_err(|e| match e {
                StoreError::Conflict(what) => {
                    ServiceError::Conflict(format!("{what} already exists"))
                }
                other => other.into(),
            })?;
        tracing::info!(host = %name, address = %req.address, "host added");
        Ok(HostResponse {
            host: self.to_api(host, HostUsage::default()),
        })
    }

    /// Source VMs and golden images on every host, asked concurrently, for `caller`
    /// (`Read`).
    pub async fn list_vms(&self, caller: &Caller) -> Result<ListVmsResponse, ServiceError> {
        auth::check(caller, Permission::Read)?;
        let hosts = self.store.list_hosts().await?;
        let answers = join_all(
            hosts
                .iter()
                .map(|h| async move { (h, self.agents.list_images(&AgentTarget::from(h)).await) }),
        )
        .await;
        let mut vms = Vec::new();
        let mut host_errors = Vec::new();
        for (h, answer) in answers {
            match answer {
                Ok(images) => vms.extend(images.into_iter().map(|i| Vm {
                    state: match (i.available, i.state.is_empty()) {
                        (false, _) => "unavailable".into(),
                        (true, true) => "available".into(),
                        (true, false) => i.state,
                    },
                    name: i.name,
                    uuid: i.uuid,
                    persistent: i.persistent,
                    disk_path: i.disk_path,
                    host_name: h.name.clone(),
                    host_address: h.address.clone(),
                })),
                Err(e) => host_errors.push(HostError {
                    host_name: h.name.clone(),
                    host_address: h.address.clone(),
                    error: e.to_string(),
                }),
            }
        }
        Ok(ListVmsResponse { vms, host_errors })
    }

    /// One heartbeat round: every host's status and images, concurrently.
    pub async fn beat_all(&self) -> Result<(), StoreError> {
        let hosts = self.store.list_hosts().await?;
        let results = join_all(hosts.iter().map(|h| self.beat(h))).await;
        results.into_iter().collect()
    }

    async fn beat(&self, h: &HostRecord) -> Result<(), StoreError> {
        let t = AgentTarget::from(h);
        let answer = async {
            let status = self.agents.status(&t).await?;
            let images = self.agents.list_images(&t).await?;
            Ok::<_, crate::agents::AgentError>((status, images))
        }
        .await;
        match answer {
            Ok((status, images)) => {
                let mut names: Vec<String> = images
                    .into_iter()
                    .filter(|i| i.available)
                    .map(|i| i.name)
                    .collect();
                names.sort();
                names.dedup();
                let ssh_public_key = status.ssh_public_key;
                let status = status.status;
                if h.state != fluid_client::types::HostState::Online {
                    tracing::info!(host = %h.name, version = %status.agent_version, "host online");
                }
                self.store
                    .record_beat(
                        &h.name,
                        &Beat {
                            cpus_total: status.cpus_total,
                            memory_mb_total: status.memory_mb_total,
                            images: names,
                            agent_version: status.agent_version,
                            ssh_public_key,
                            pools: status.pools,
                            simulated: status.simulated,
                            at: Utc::now(),
                        },
                    )
                    .await
            }
            Err(e) => {
                if h.missed_beats + 1 == self.offline_after_missed_beats {
                    tracing::warn!(host = %h.name, error = %e, "host offline");
                } else {
                    tracing::debug!(host = %h.name, error = %e, "missed heartbeat");
                }
                self.store
                    .record_missed_beat(&h.name, &e.to_string(), self.offline_after_missed_beats)
                    .await
            }
        }
    }
}
