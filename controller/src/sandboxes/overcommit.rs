//! The over-commit step of a create: with `overcommit_approval = true`, a create that
//! finds no host with room becomes an `overcommit` approval instead of a 409.
//! [`SandboxService::create`] takes this step only when placement found no room.
//!
//! The approval's details say what was asked against what each host has, and which
//! host it would go to (the online host with the image and the most free memory).
//! Nothing is reserved while it waits: the sandbox's id is fixed in the request, and
//! its row appears only once a human approves. Then the scheduler is tried once more
//! (room may have appeared) and otherwise the sandbox is reserved on the named host
//! past its capacity. A rejection or expiry answers 409.
//!
//! The continuation runs in its own task, so it completes whether or not the client
//! that asked is still connected (`?wait=false` answers 202 at once); a controller that
//! restarts resumes pending gated creates, and performs approved ones whose sandbox
//! was never created ([`OvercommitGate::resume`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fluid_client::governance::{ApprovalKind, ApprovalStatus};
use fluid_client::types::{CreateSandboxRequest, CreateSandboxResponse, HostState};
use fluid_proto::model::SandboxId;
use serde::{Deserialize, Serialize};

use crate::error::ServiceError;
use crate::governance::approvals::{ApprovalService, NewRequest, Requester, refusal_reason};
use crate::governance::auth::Caller;
use crate::sandboxes::{PreparedCreate, SandboxService};
use crate::scheduler::{Placement, ScheduleError};
use crate::store::{
    ApprovalFilter, ApprovalRecord, HostRecord, HostUsage, ReserveError, SandboxRecord, Store,
    free_cpus, free_memory,
};

/// One host as an over-commit approval shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRoom {
    pub name: String,
    pub state: String,
    pub memory_mb_total: u64,
    pub memory_mb_free: i64,
    pub cpus_total: u32,
    pub cpus_free: i64,
    pub has_image: bool,
    /// Why it cannot take the sandbox now.
    pub reason: Option<String>,
}

/// What an over-commit approval stores: enough to perform the create later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OvercommitDetails {
    pub request: CreateSandboxRequest,
    pub sandbox_id: String,
    pub requested: Requested,
    pub hosts: Vec<HostRoom>,
    pub target_host: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requested {
    #[serde(rename = "cpu")]
    pub cpus: u32,
    pub memory_mb: u64,
    #[serde(rename = "source_vm_name")]
    pub image: String,
}

/// Every host's room for `p`, and the host an approved over-commit would use.
pub fn plan(
    hosts: &[HostRecord],
    usage: &HashMap<String, HostUsage>,
    p: &Placement,
    ratio: f64,
) -> (Vec<HostRoom>, Option<String>) {
    let mut rooms = Vec::new();
    let mut best: Option<(&HostRecord, i64)> = None;
    for h in hosts {
        let u = usage.get(&h.name).copied().unwrap_or_default();
        let has_image = h.images.iter().any(|i| i == &p.image);
        let mem = free_memory(h, u);
        rooms.push(HostRoom {
            name: h.name.clone(),
            state: format!("{:?}", h.state).to_uppercase(),
            memory_mb_total: h.memory_mb_total,
            memory_mb_free: mem,
            cpus_total: h.cpus_total,
            cpus_free: free_cpus(h, u, ratio),
            has_image,
            reason: crate::scheduler::reject_reason(h, u, p, ratio),
        });
        if h.state == HostState::Online && has_image && best.is_none_or(|(_, m)| mem > m) {
            best = Some((h, mem));
        }
    }
    (rooms, best.map(|(h, _)| h.name.clone()))
}

/// The result of a create.
#[derive(Debug)]
pub enum CreateOutcome {
    Created(CreateSandboxResponse),
    /// Waiting for a human (`?wait=false`): the request and the sandbox's future id.
    Pending {
        approval: ApprovalRecord,
        sandbox_id: String,
    },
}

/// The over-commit step: opens the approval, waits for it, then creates past capacity.
pub struct OvercommitGate {
    store: Arc<dyn Store>,
    approvals: Arc<ApprovalService>,
    timeout: Duration,
}

impl std::fmt::Debug for OvercommitGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OvercommitGate")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl OvercommitGate {
    /// A gate whose approvals expire after `timeout`.
    pub fn new(store: Arc<dyn Store>, approvals: Arc<ApprovalService>, timeout: Duration) -> Self {
        Self {
            store,
            approvals,
            timeout,
        }
    }

    /// `prepared` found no room (`why`): opens an over-commit approval and (with `wait`)
    /// blocks until it is decided and the create performed or refused.
    pub async fn ask(
        self: &Arc<Self>,
        sandboxes: &Arc<SandboxService>,
        caller: &Caller,
        req: CreateSandboxRequest,
        prepared: PreparedCreate,
        why: String,
        wait: bool,
    ) -> Result<CreateOutcome, ServiceError> {
        let hosts = self.store.list_hosts().await?;
        let usage = self.store.host_usage().await?;
        let ratio = sandboxes.cpu_overcommit_ratio();
        let (rooms, target) = plan(&hosts, &usage, &prepared.placement, ratio);
        let Some(target_host) = target else {
            // No online host has the image: no human can make it fit.
            return Err(ScheduleError::NoCapacity(why).into());
        };
        let p = &prepared.placement;
        let details = OvercommitDetails {
            request: req,
            sandbox_id: p.id.clone(),
            requested: Requested {
                cpus: p.cpus,
                memory_mb: p.memory_mb,
                image: p.image.clone(),
            },
            hosts: rooms,
            target_host: target_host.clone(),
            reason: why,
        };
        let approval = self
            .approvals
            .open(
                NewRequest {
                    kind: ApprovalKind::Overcommit,
                    requester: Requester::from(caller),
                    sandbox_id: Some(p.id.clone()),
                    summary: format!(
                        "create {} ({} vCPU, {} MiB, image {}) for agent {}: no host has room; over-commit host {target_host}?",
                        p.name, p.cpus, p.memory_mb, p.image, p.agent_id
                    ),
                    details: serde_json::to_value(&details)
                        .map_err(|e| ServiceError::Invalid(e.to_string()))?,
                    timeout: self.timeout,
                },
                caller.role.as_str(),
            )
            .await?;
        let sandbox_id = p.id.clone();
        let this = self.clone();
        let sandboxes = sandboxes.clone();
        let id = approval.id.clone();
        let task =
            tokio::spawn(async move { this.finish(&sandboxes, &id, prepared, &target_host).await });
        if !wait {
            return Ok(CreateOutcome::Pending {
                approval,
                sandbox_id,
            });
        }
        task.await
            .map_err(|e| ServiceError::Unavailable(format!("the gated create failed: {e}")))?
            .map(CreateOutcome::Created)
    }

    /// Waits for the decision on `approval_id`, then performs (or refuses) the create.
    async fn finish(
        &self,
        sandboxes: &SandboxService,
        approval_id: &str,
        prepared: PreparedCreate,
        target_host: &str,
    ) -> Result<CreateSandboxResponse, ServiceError> {
        let fin = self.approvals.wait(approval_id).await?;
        if fin.status != ApprovalStatus::Approved {
            let why = refusal_reason(&fin).unwrap_or_else(|| "not approved".into());
            tracing::info!(approval = %approval_id, %why, "over-commit refused");
            return Err(ServiceError::Conflict(format!(
                "over-commit {approval_id} {why}; the sandbox was not created"
            )));
        }
        let row = match sandboxes.place(&prepared).await {
            Ok(row) => row,
            Err(ServiceError::Schedule(ScheduleError::NoCapacity(_))) => {
                self.reserve_past_capacity(sandboxes, &prepared.placement, target_host)
                    .await?
            }
            Err(e) => return Err(e),
        };
        tracing::info!(approval = %approval_id, sandbox = %row.id, host = ?row.host_name, "approved over-commit: creating");
        sandboxes.launch(prepared, row).await
    }

    async fn reserve_past_capacity(
        &self,
        sandboxes: &SandboxService,
        p: &Placement,
        host: &str,
    ) -> Result<SandboxRecord, ServiceError> {
        let r = p.reservation(host, sandboxes.cpu_overcommit_ratio(), Utc::now(), true);
        self.store.reserve(&r).await.map_err(|e| match e {
            ReserveError::NoRoom(m) => {
                ServiceError::Conflict(format!("approved over-commit on {host}: {m}"))
            }
            ReserveError::DuplicateName(n) => ScheduleError::DuplicateName(n).into(),
            ReserveError::Quota(m) => crate::scheduler::quota(m).into(),
            ReserveError::Store(e) => e.into(),
        })
    }

    /// At start: resumes the waits of pending over-commit requests, and performs
    /// approved ones whose sandbox does not exist (the controller stopped in between).
    pub async fn resume(
        self: &Arc<Self>,
        sandboxes: &Arc<SandboxService>,
    ) -> Result<usize, ServiceError> {
        let mut resumed = 0;
        for status in [ApprovalStatus::Pending, ApprovalStatus::Approved] {
            let (rows, _) = self
                .store
                .list_approvals(&ApprovalFilter {
                    status: Some(status),
                    agent_id: None,
                    kind: Some(ApprovalKind::Overcommit),
                    limit: 1000,
                    offset: 0,
                })
                .await?;
            for a in rows {
                let Ok(d) = serde_json::from_value::<OvercommitDetails>(a.details.clone()) else {
                    tracing::warn!(approval = %a.id, "over-commit request without readable details");
                    continue;
                };
                if self.store.get_sandbox(&d.sandbox_id).await?.is_some() {
                    continue;
                }
                let id = SandboxId::parse("sandbox_id", &d.sandbox_id)?;
                let prepared = sandboxes.prepare(&d.request, Some(id))?;
                let this = self.clone();
                let sandboxes = sandboxes.clone();
                tokio::spawn(async move {
                    if let Err(e) = this
                        .finish(&sandboxes, &a.id, prepared, &d.target_host)
                        .await
                    {
                        tracing::warn!(approval = %a.id, error = %e, "resumed over-commit create");
                    }
                });
                resumed += 1;
            }
        }
        Ok(resumed)
    }
}
