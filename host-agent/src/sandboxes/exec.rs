//! `Sandboxes::exec`: checks the sandbox can run a command and has room for one more
//! (`exec.max_concurrent_per_sandbox`), and starts the command through the host's
//! [`ExecBackend`](crate::exec::backend::ExecBackend) (SSH: a channel on one of its
//! connections, remembering a first-use host key in the record) with a timeout no
//! longer than `exec.max_timeout_secs` (also when the request has none).
//!
//! Errors before the command starts are returned as such (NOT_FOUND, FAILED_PRECONDITION,
//! INVALID_ARGUMENT, PERMISSION_DENIED, RESOURCE_EXHAUSTED, UNAVAILABLE); once started,
//! the stream's exit event carries any error.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use fluid_proto::model::{Exec, ExecEvent, SandboxId};
use russh::keys::PublicKey;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::Sandboxes;
use crate::error::ServiceError;
use crate::exec::ExecError;
use crate::exec::backend::ExecTarget;
use crate::hypervisor::{DomainState, Hypervisor};
use crate::state::SandboxRecord;

/// The run time a command gets: what it asked for, at most `ceiling` (also when it
/// asked for none).
pub fn effective_timeout(asked: Option<u32>, ceiling: u32) -> Duration {
    Duration::from_secs(u64::from(asked.unwrap_or(ceiling).min(ceiling)))
}

impl<H: Hypervisor> Sandboxes<H> {
    /// A slot among the sandbox's concurrent commands, or RESOURCE_EXHAUSTED.
    pub(crate) fn exec_slot(&self, id: &SandboxId) -> Result<OwnedSemaphorePermit, ServiceError> {
        let limit = self.config.exec.max_concurrent_per_sandbox;
        let sem = {
            let mut slots = self.exec_slots.lock().unwrap_or_else(|e| e.into_inner());
            slots
                .entry(id.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(limit as usize)))
                .clone()
        };
        sem.try_acquire_owned().map_err(|_| {
            ExecError::Busy(format!(
                "sandbox {id} already runs {limit} commands, this host's limit \
                 (exec.max_concurrent_per_sandbox); retry when one has ended"
            ))
            .into()
        })
    }

    /// Forgets a destroyed sandbox's command slots.
    pub(crate) fn forget_exec_slots(&self, id: &SandboxId) {
        self.exec_slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Starts `req` in its sandbox; the receiver yields `Started`, output chunks, then
    /// exactly one `Exit`.
    #[tracing::instrument(name = "sandbox.exec", skip_all, fields(sandbox_id = %req.sandbox_id))]
    pub async fn exec(&self, req: Exec) -> Result<mpsc::Receiver<ExecEvent>, ServiceError> {
        let r = self.record(&req.sandbox_id).await?;
        let ip = self.exec_target(&r).await?;
        let known_host_key = known_host_key(&r)?;
        let permit = self.exec_slot(&r.id)?;
        let timeout = effective_timeout(req.timeout_seconds, self.config.exec.max_timeout_secs);
        let target = ExecTarget {
            id: r.id.clone(),
            ip,
            known_host_key,
        };
        let started = self.exec.start(target, req, timeout, Some(permit)).await?;
        if let Some(k) = &started.learned_host_key {
            self.remember_host_key(&r.id, k).await?;
        }
        Ok(started.events)
    }

    /// The address of a sandbox that can run commands.
    pub(super) async fn exec_target(&self, r: &SandboxRecord) -> Result<Ipv4Addr, ServiceError> {
        if let Some(e) = &r.error {
            return Err(ServiceError::FailedPrecondition(format!(
                "sandbox {} cannot run commands: {e}",
                r.id
            )));
        }
        match self.state_of(r).await? {
            Some(DomainState::Running) => {}
            None => {
                return Err(ServiceError::FailedPrecondition(format!(
                    "sandbox {}'s domain is missing",
                    r.id
                )));
            }
            Some(s) => {
                return Err(ServiceError::FailedPrecondition(format!(
                    "sandbox {} is not running ({s:?})",
                    r.id
                )));
            }
        }
        super::dhcp::address_of(r, &self.leases().await).ok_or_else(|| {
            ServiceError::FailedPrecondition(format!(
                "sandbox {} has no IP address yet (no DHCP lease); wait for it first",
                r.id
            ))
        })
    }

    /// Saves a host key learned on first use (unless one was saved meanwhile).
    pub(super) async fn remember_host_key(
        &self,
        id: &SandboxId,
        key: &PublicKey,
    ) -> Result<(), ServiceError> {
        let line = key.to_openssh().map_err(|e| {
            ServiceError::Internal(format!("encoding sandbox {id}'s host key: {e}"))
        })?;
        let _guard = self.lock(id).await;
        if let Some(mut r) = self.store.get(id).await?
            && r.ssh_host_key.is_none()
        {
            r.ssh_host_key = Some(line);
            self.store.put(&r).await?;
            tracing::info!(id = %id, fingerprint = %key.fingerprint(Default::default()), "SSH host key remembered (first use)");
        }
        Ok(())
    }
}

/// The host key remembered for the sandbox (`None`: not yet, trust on first use).
pub(super) fn known_host_key(r: &SandboxRecord) -> Result<Option<PublicKey>, ServiceError> {
    match r.ssh_host_key.as_deref().map(PublicKey::from_openssh) {
        None => Ok(None),
        Some(Ok(k)) => Ok(Some(k)),
        Some(Err(e)) => Err(ServiceError::Internal(format!(
            "sandbox {}: the remembered SSH host key is unreadable: {e}",
            r.id
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandboxes::tests::{env, id};

    #[test]
    fn the_timeout_is_capped_by_the_ceiling_also_when_none_was_asked() {
        assert_eq!(effective_timeout(None, 600), Duration::from_secs(600));
        assert_eq!(effective_timeout(Some(3), 600), Duration::from_secs(3));
        assert_eq!(
            effective_timeout(Some(86_400), 600),
            Duration::from_secs(600)
        );
    }

    #[tokio::test]
    async fn past_the_limit_a_sandbox_gets_resource_exhausted_and_slots_come_back() {
        let e = env().await;
        let limit = e.s.config.exec.max_concurrent_per_sandbox as usize;
        let a = id("SBX-0000000a");
        let b = id("SBX-0000000b");
        let held: Vec<_> = (0..limit)
            .map(|_| e.s.exec_slot(&a).expect("a slot"))
            .collect();
        let err = e.s.exec_slot(&a).expect_err("one past the limit");
        assert!(
            matches!(&err, ServiceError::ResourceExhausted(m)
                if m.contains("exec.max_concurrent_per_sandbox") && m.contains("SBX-0000000a")),
            "{err:?}"
        );
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::ResourceExhausted
        );
        // Another sandbox has its own slots.
        let _other = e.s.exec_slot(&b).expect("another sandbox");
        drop(held);
        let _again =
            e.s.exec_slot(&a)
                .expect("a slot again once the others ended");
    }
}
