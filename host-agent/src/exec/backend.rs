//! How a command reaches a sandbox's guest: the [`ExecBackend`] trait. A real host
//! runs it over SSH ([`SshExec`]: the wrapper script on a channel of one of the
//! sandbox's pooled connections); a simulated host answers it in memory
//! ([`super::simulated::SimulatedGuests`]).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fluid_proto::guest::wrapper;
use fluid_proto::model::{Exec, ExecEvent, SandboxId};
use russh::keys::PublicKey;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::pool::SshPool;
use super::run::{self, Reopen};
use crate::error::ServiceError;

/// The guest a command goes to.
#[derive(Debug, Clone)]
pub struct ExecTarget {
    pub id: SandboxId,
    pub ip: Ipv4Addr,
    /// The guest's SSH host key as remembered (`None`: trust on first use).
    pub known_host_key: Option<PublicKey>,
}

/// A started command.
#[derive(Debug)]
pub struct ExecStarted {
    /// `Started`, output chunks, then exactly one `Exit`.
    pub events: mpsc::Receiver<ExecEvent>,
    /// A host key learned on first use; the caller remembers it.
    pub learned_host_key: Option<PublicKey>,
}

#[async_trait]
pub trait ExecBackend: Send + Sync + 'static {
    /// Starts `req` in the guest at `target`, killed after `timeout`; `permit` (the
    /// sandbox's command slot, none for the agent's own commands) is held until the
    /// command has ended.
    async fn start(
        &self,
        target: ExecTarget,
        req: Exec,
        timeout: Duration,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<ExecStarted, ServiceError>;

    /// Drops whatever is held for the sandbox (it was destroyed).
    fn forget(&self, id: &SandboxId);
}

/// Commands over SSH, the wrapper script on a channel of the sandbox's connections.
#[derive(Debug, Clone)]
pub struct SshExec(pub Arc<SshPool>);

#[async_trait]
impl ExecBackend for SshExec {
    async fn start(
        &self,
        target: ExecTarget,
        req: Exec,
        timeout: Duration,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<ExecStarted, ServiceError> {
        let ExecTarget {
            id,
            ip,
            known_host_key: known,
        } = target;
        let cmd = run::Command {
            command_id: req.command_id.clone(),
            script: wrapper::build(&req),
            stdin: req.stdin,
            timeout: Some(timeout),
            output_cap_bytes: req.output_cap_bytes,
        };
        let reopen = Reopen {
            pool: self.0.clone(),
            id: id.clone(),
            ip,
            known: known.clone(),
            certificate: req.ssh_certificate.clone(),
        };
        let opened = self
            .0
            .open_channel(&id, ip, known, &req.ssh_certificate)
            .await?;
        let learned_host_key = opened.learned_host_key.clone();
        let (fresh, connect_ms) = (opened.fresh, opened.connect_time.as_millis());
        let events = run::start(opened, cmd, reopen, permit).await?;
        tracing::info!(
            %id, command_id = req.command_id, user = req.user,
            fresh_connection = fresh, connect_ms, timeout_s = timeout.as_secs(),
            connections = self.0.connections(&id), "command started"
        );
        Ok(ExecStarted {
            events,
            learned_host_key,
        })
    }

    fn forget(&self, id: &SandboxId) {
        self.0.forget(id);
    }
}
