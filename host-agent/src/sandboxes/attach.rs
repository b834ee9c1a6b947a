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
        // A reused connection may have died unnoticed: one retry on a fresh one.
        for attempt in 0..2 {
            let checkout = self
                .ssh
                .connection(&r.id, ip, known.clone(), &open.ssh_certificate)
                .await?;
            if let Some(k) = &checkout.learned_host_key {
                self.remember_host_key(&r.id, k).await?;
            }
            match shell::open(checkout.conn.clone(), &spec, false).await {
                Ok(s) => {
                    tracing::info!(
                        id = %r.id, session_id = open.session_id, user = open.user,
                        fresh_connection = checkout.fresh,
                        connect_ms = checkout.connect_time.as_millis(), "session attached"
                    );
                    return Ok(s);
                }
                Err(ExecError::Refused(m)) if !checkout.fresh => {
                    tracing::info!(
                        id = %r.id, session_id = open.session_id,
                        "the pooled SSH connection may not have a PTY ({m}); connecting with the session's certificate"
                    );
                    return self.attach_dedicated(&open, &spec).await;
                }
                Err(ExecError::Refused(m)) => return Err(ServiceError::PermissionDenied(m)),
                Err(e) => {
                    self.ssh.discard(&r.id, &checkout.conn);
                    if checkout.fresh || attempt == 1 {
                        return Err(e.into());
                    }
                    tracing::info!(id = %r.id, "the SSH connection was stale ({e}); reconnecting");
                }
            }
        }
        Err(ExecError::Internal("unreachable: attach retry loop ended".into()).into())
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
        let s = shell::open(conn, spec, true).await?;
        tracing::info!(
            id = %r.id, session_id = open.session_id, user = open.user,
            "session attached on a dedicated connection"
        );
        Ok(s)
    }
}
