//! `Sandboxes::open_tunnel`: a TCP connection from the agent to a running sandbox's
//! sshd, for the Tunnel RPC (the controller runs ansible-playbook through it). Only
//! port 22 is reachable this way, and at most [`MAX_TUNNELS`] tunnels are open at once
//! per agent; the permit travels with the connection and is returned when the tunnel
//! closes.

use std::time::Duration;

use fluid_proto::model::SandboxId;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::Sandboxes;
use crate::error::ServiceError;
use crate::hypervisor::Hypervisor;

/// Tunnels open at once per agent.
pub const MAX_TUNNELS: usize = 32;
/// The only port a tunnel reaches.
pub const TUNNEL_PORT: u16 = 22;
/// Time allowed for the TCP connect to the guest.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An open connection to a guest's sshd, holding one of the agent's tunnel slots.
#[derive(Debug)]
pub struct TunnelConn {
    pub stream: TcpStream,
    pub permit: OwnedSemaphorePermit,
}

impl<H: Hypervisor> Sandboxes<H> {
    /// Connects to port `port` (only [`TUNNEL_PORT`]) of running sandbox `id`.
    pub async fn open_tunnel(&self, id: &SandboxId, port: u32) -> Result<TunnelConn, ServiceError> {
        if port != u32::from(TUNNEL_PORT) {
            return Err(ServiceError::InvalidArgument(format!(
                "port: only {TUNNEL_PORT} can be tunnelled, not {port}"
            )));
        }
        let permit = self.tunnels.clone().try_acquire_owned().map_err(|_| {
            ServiceError::ResourceExhausted(format!(
                "{MAX_TUNNELS} tunnels are open on this host already; retry later"
            ))
        })?;
        let r = self.record(id).await?;
        let ip = self.exec_target(&r).await?;
        let stream = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((ip, TUNNEL_PORT)),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(ServiceError::Unavailable(format!(
                    "sandbox {id}: connecting to {ip}:{TUNNEL_PORT}: {e}"
                )));
            }
            Err(_) => {
                return Err(ServiceError::Unavailable(format!(
                    "sandbox {id}: no connection to {ip}:{TUNNEL_PORT} within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(id = %id, "TCP_NODELAY on a tunnel: {e}");
        }
        tracing::info!(id = %id, %ip, open = MAX_TUNNELS - self.tunnels.available_permits(), "tunnel opened");
        Ok(TunnelConn { stream, permit })
    }
}
