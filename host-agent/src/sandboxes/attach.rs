//! `Sandboxes::attach`: an interactive shell on a PTY in a running sandbox.
//!
//! The same preconditions and connection as Exec (record, no error, running, a DHCP
//! lease; the pooled SSH connection, made with the `open`'s certificate when there is
//! none). Agent exec certificates carry no extensions, so a pooled connection made
//! with one is refused a PTY; then the session gets a dedicated connection of its own,
//! authenticated with the `open`'s certificate (which must grant `permit-pty`), closed
//! when the session ends. Errors before the shell starts are returned as such
//! (NOT_FOUND, FAILED_PRECONDITION, INVALID_ARGUMENT, PERMISSION_DENIED, UNAVAILABLE);
//! afterwards the session's exit carries any error.

use fluid_proto::model::AttachOpen;

use super::Sandboxes;
use super::exec::known_host_key;
use crate::error::ServiceError;
use crate::exec::ExecError;
use crate::exec::pool::Slot;
use crate::exec::shell::{self, Shell, ShellSpec};
use crate::hypervisor::Hypervisor;

impl<H: Hypervisor> Sandboxes<H> {
    /// Opens the shell `open` asks for; see [`Shell`] for the session's streams.
    pub async fn attach(&self, open: AttachOpen) -> Result<Shell, ServiceError> {
        let r = self.record(&open.sandbox_id).await?;
        let ip = self.exec_target(&r).await?;
        let known = known_host_key(&r)?;
        let spec = ShellSpec {
            session_id: open.session_id.clone(),
            user: open.user.clone(),
            term: open.term.clone(),
            cols: open.cols,
            rows: open.rows,
        };
        let opened = self
            .ssh
            .open_channel(&r.id, ip, known, &open.ssh_certificate)
            .await?;
        if let Some(k) = &opened.learned_host_key {
            self.remember_host_key(&r.id, k).await?;
        }
        let (fresh, connect_ms) = (opened.fresh, opened.connect_time.as_millis());
        match shell::open(opened.slot, opened.channel, &spec, false).await {
            Ok(s) => {
                tracing::info!(
                    id = %r.id, session_id = open.session_id, user = open.user,
                    fresh_connection = fresh, connect_ms, "session attached"
                );
                Ok(s)
            }
            Err(ExecError::Refused(m)) if !fresh => {
                tracing::info!(
                    id = %r.id, session_id = open.session_id,
                    "the pooled SSH connection may not have a PTY ({m}); connecting with the session's certificate"
                );
                self.attach_dedicated(&open, &spec).await
            }
            Err(ExecError::Refused(m)) => Err(ServiceError::PermissionDenied(m)),
            Err(e) => Err(e.into()),
        }
    }

    /// The session on a connection of its own, made with the `open`'s certificate.
    async fn attach_dedicated(
        &self,
        open: &AttachOpen,
        spec: &ShellSpec,
    ) -> Result<Shell, ServiceError> {
        // Read again: the pooled connection may have just learned the host key.
        let r = self.record(&open.sandbox_id).await?;
        let ip = self.exec_target(&r).await?;
        let (conn, learned) = self
            .ssh
            .connect_dedicated(&r.id, ip, known_host_key(&r)?, &open.ssh_certificate)
            .await?;
        if let Some(k) = &learned {
            self.remember_host_key(&r.id, k).await?;
        }
        let channel = conn
            .handle
            .channel_open_session()
            .await
            .map_err(|e| match e {
                russh::Error::ChannelOpenFailure(reason) => ExecError::Refused(format!(
                    "sandbox {}: {}",
                    r.id,
                    crate::exec::pool::refusal(&reason)
                )),
                e => ExecError::Unreachable(format!(
                    "sandbox {}: connection to the guest lost while opening a channel: {e}",
                    r.id
                )),
            })?;
        let s = shell::open(Slot::take(conn), channel, spec, true).await?;
        tracing::info!(
            id = %r.id, session_id = open.session_id, user = open.user,
            "session attached on a dedicated connection"
        );
        Ok(s)
    }
}
