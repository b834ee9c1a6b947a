//! The network side of the sandbox service: egress allow-lists (SetEgressPolicy,
//! GetEgressPolicy), the addresses the firewall admits (learned from DHCP leases), and
//! restoring the rules at start-up.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use fluid_proto::model::{EgressState, SandboxId, SetEgressPolicy};

use super::Sandboxes;
use crate::error::ServiceError;
use crate::hypervisor::Hypervisor;
use crate::network::Firewall;
use crate::state::SandboxRecord;

impl<H: Hypervisor> Sandboxes<H> {
    pub fn firewall(&self) -> &Arc<Firewall> {
        &self.firewall
    }

    /// At start-up, before anything is served: the rules of every recorded sandbox
    /// replace whatever the tables hold (stale rules go, missing ones come back).
    pub async fn restore_network(&self) -> Result<(), ServiceError> {
        let records = self.store.list().await?;
        self.firewall.load(&records);
        if self.firewall.is_enforcing() {
            self.firewall.apply().await?;
            tracing::info!(sandboxes = records.len(), "sandbox network rules applied");
        }
        Ok(())
    }

    /// The sandbox's allow-list in force and what each domain of its (and the host's)
    /// entries resolves to now.
    fn egress_state(&self, r: &SandboxRecord) -> EgressState {
        EgressState {
            policy: r.egress.clone(),
            resolved: self
                .firewall
                .resolved(&r.id)
                .into_iter()
                .map(|(domain, ips)| (domain, ips.into_iter().map(IpAddr::V4).collect()))
                .collect(),
        }
    }

    /// Replaces a sandbox's allow-list: stored first (it is intent), then applied.
    /// Setting the policy it already has only makes sure the rules are in force.
    pub async fn set_egress_policy(
        &self,
        req: SetEgressPolicy,
    ) -> Result<EgressState, ServiceError> {
        let _guard = self.lock(&req.sandbox_id).await;
        let mut r = self.record(&req.sandbox_id).await?;
        if r.egress != req.policy {
            r.egress = req.policy;
            self.store.put(&r).await?;
            tracing::info!(
                id = %r.id,
                allow = %r.egress.allow.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                "egress policy set"
            );
        }
        self.firewall.upsert(&r);
        self.firewall.sync().await?;
        Ok(self.egress_state(&r))
    }

    pub async fn egress_policy(&self, id: &SandboxId) -> Result<EgressState, ServiceError> {
        let r = self.record(id).await?;
        Ok(self.egress_state(&r))
    }

    /// Admits `ip` from the sandbox and waits until the rules say so.
    pub(crate) async fn admit_ip(&self, id: &SandboxId, ip: Ipv4Addr) -> Result<(), ServiceError> {
        if self.firewall.set_ip(id, Some(ip)) {
            tracing::info!(id = %id, %ip, "sandbox address admitted");
        }
        self.firewall.sync().await?;
        Ok(())
    }

    /// After a stop: the sandbox's address is no longer admitted (the record is
    /// updated; the caller holds the sandbox's lock).
    pub(super) async fn withdraw_ip(&self, r: &SandboxRecord) {
        if let Ok(Some(mut current)) = self.store.get(&r.id).await
            && current.known_ip.is_some()
        {
            current.known_ip = None;
            if let Err(e) = self.store.put(&current).await {
                tracing::warn!(id = %r.id, "forgetting the sandbox's address: {e}");
            }
        }
        if self.firewall.set_ip(&r.id, None)
            && let Err(e) = self.firewall.sync().await
        {
            tracing::warn!(id = %r.id, "withdrawing the sandbox's address: {e}");
        }
    }

    /// One pass of the lease watcher: a sandbox whose lease appeared or changed gets
    /// that address admitted (one apply for all changes); the records follow in the
    /// background (a sandbox's lock may be held for a while, e.g. by a stop). Also
    /// retries an apply that failed. Returns how many addresses changed.
    pub async fn learn_ips(self: &Arc<Self>) -> Result<usize, ServiceError> {
        let members = self.firewall.members();
        let mut learned = Vec::new();
        if !members.is_empty() {
            let leases = self.hv.leases(self.config.network.name.as_str()).await?;
            // A sandbox with a reserved address: only a lease with that address counts.
            let reserved: std::collections::HashMap<SandboxId, Ipv4Addr> = self
                .store
                .list()
                .await?
                .into_iter()
                .filter_map(|r| Some((r.id, r.static_ip?)))
                .collect();
            for (id, mac, ip) in members {
                let Some(lease) = leases
                    .iter()
                    .find(|l| l.mac == mac && reserved.get(&id).is_none_or(|r| *r == l.ip))
                else {
                    continue;
                };
                if ip != Some(lease.ip) && self.firewall.set_ip(&id, Some(lease.ip)) {
                    tracing::info!(id = %id, ip = %lease.ip, "sandbox address learned from its lease");
                    learned.push((id, lease.ip));
                }
            }
        }
        self.firewall.sync().await?;
        for (id, ip) in &learned {
            let s = Arc::clone(self);
            let (id, ip) = (id.clone(), *ip);
            tokio::spawn(async move { s.remember_known_ip(&id, ip).await });
        }
        Ok(learned.len())
    }

    async fn remember_known_ip(&self, id: &SandboxId, ip: Ipv4Addr) {
        let _guard = self.lock(id).await;
        // Withdrawn or changed again meanwhile: the newer fact is (or will be) saved.
        let current = self.firewall.members().into_iter().find(|m| &m.0 == id);
        if current.is_none_or(|m| m.2 != Some(ip)) {
            return;
        }
        match self.store.get(id).await {
            Ok(Some(mut r)) if r.known_ip != Some(ip) => {
                r.known_ip = Some(ip);
                if let Err(e) = self.store.put(&r).await {
                    tracing::warn!(id = %id, "saving the sandbox's address: {e}");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(id = %id, "saving the sandbox's address: {e}"),
        }
    }
}

#[cfg(test)]
mod tests;
