//! `Sandboxes::exec`: checks the sandbox can run a command, gets its SSH connection
//! (remembering a first-use host key in the record), and starts the command.
//!
//! Errors before the command starts are returned as such (NOT_FOUND, FAILED_PRECONDITION,
//! INVALID_ARGUMENT, PERMISSION_DENIED, UNAVAILABLE); once started, the stream's exit
//! event carries any error.

use std::net::Ipv4Addr;
use std::time::Duration;

use fluid_proto::model::{Exec, SandboxId};
use russh::keys::PublicKey;
use tokio::sync::mpsc;

use super::Sandboxes;
use crate::error::ServiceError;
use crate::exec::{ExecError, ExecEvent, run, wrapper};
use crate::hypervisor::{DomainState, Hypervisor};
use crate::state::SandboxRecord;

impl<H: Hypervisor> Sandboxes<H> {
    /// Starts `req` in its sandbox; the receiver yields `Started`, output chunks, then
    /// exactly one `Exit`.
    #[tracing::instrument(name = "sandbox.exec", skip_all, fields(sandbox_id = %req.sandbox_id))]
    pub async fn exec(&self, req: Exec) -> Result<mpsc::Receiver<ExecEvent>, ServiceError> {
        let r = self.record(&req.sandbox_id).await?;
        let ip = self.exec_target(&r).await?;
        let known = known_host_key(&r)?;
        let cmd = run::Command {
            command_id: req.command_id.clone(),
            script: wrapper::build(&req),
            stdin: req.stdin,
            timeout: req
                .timeout_seconds
                .map(|s| Duration::from_secs(u64::from(s))),
            output_cap_bytes: req.output_cap_bytes,
        };
        // A reused connection may have died unnoticed: one retry on a fresh one.
        for attempt in 0..2 {
            let checkout = self
                .ssh
                .connection(&r.id, ip, known.clone(), &req.ssh_certificate)
                .await?;
            if let Some(k) = &checkout.learned_host_key {
                self.remember_host_key(&r.id, k).await?;
            }
            match run::start(checkout.conn.clone(), cmd.clone()).await {
                Ok(rx) => {
                    tracing::info!(
                        id = %r.id, command_id = req.command_id, user = req.user,
                        fresh_connection = checkout.fresh,
                        connect_ms = checkout.connect_time.as_millis(), "command started"
                    );
                    return Ok(rx);
                }
                Err(e) => {
                    self.ssh.discard(&r.id, &checkout.conn);
                    if checkout.fresh || attempt == 1 {
                        return Err(e.into());
                    }
                    tracing::info!(id = %r.id, "the SSH connection was stale ({e}); reconnecting");
                }
            }
        }
        Err(ExecError::Internal("unreachable: exec retry loop ended".into()).into())
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
