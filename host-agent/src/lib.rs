//! fluid host-agent: runs sandboxes (libvirt domains on qcow2 overlays) on one KVM host
//! for the fluid controller, which calls it over mTLS gRPC.
//!
//! - [`config`]: the agent's TOML/env configuration.
//! - [`grpc`]: the `HostAgent` gRPC service (thin handlers).
//! - [`sandboxes`]: the service logic (create/start/stop/destroy/inspect).
//! - [`exec`]: commands in sandboxes over SSH (key, connection pool, wrapper, streams).
//! - [`reconcile`]: start-up repair of local records vs libvirt.
//! - [`hypervisor`]: the backend trait and its libvirt implementation.
//! - [`images`], [`overlay`], [`state`]: images, overlay disks, the redb records.

pub mod config;
pub mod error;
pub mod exec;
pub mod grpc;
pub mod hypervisor;
pub mod images;
pub mod overlay;
pub mod reconcile;
pub mod sandboxes;
pub mod state;

use std::sync::Arc;

use anyhow::Context as _;
use fluid_proto::pb::host_agent_server::HostAgentServer;
use fluid_proto::tls::require_controller;
use tokio_util::sync::CancellationToken;

pub use config::AgentConfig;
pub use sandboxes::Sandboxes;

use crate::hypervisor::libvirt::Libvirt;
use crate::state::StateStore;

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Opens the state, connects to libvirt and reconciles; the service is ready to serve.
pub async fn open(config: AgentConfig) -> anyhow::Result<Arc<Sandboxes<Libvirt>>> {
    overlay::ensure_dir(&config.state_dir).await?;
    overlay::ensure_dir(&config.overlay_dir()).await?;
    overlay::ensure_dir(&config.console_dir()).await?;
    let store = StateStore::open(&config.db_path()).await?;
    let hv = Libvirt::connect(&config.libvirt_uri, config.host_name.as_str())
        .await
        .with_context(|| format!("connecting to libvirt at {}", config.libvirt_uri))?;
    // The exec key lives in memory only: a restarted agent has a new one, and the
    // controller reads it again from GetStatus.
    let key = exec::AgentKey::generate(&format!("fluid-agent@{}", config.host_name))
        .context("making the agent's SSH key")?;
    let sandboxes = Arc::new(Sandboxes::new(config, Arc::new(hv), store, key));
    reconcile::reconcile(&sandboxes)
        .await
        .context("reconciling local state with libvirt")?;
    Ok(sandboxes)
}

/// Runs the agent until `shutdown` is cancelled. Sandboxes keep running when it exits.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let tls = config
        .tls
        .load()
        .context("loading the agent's TLS files")?
        .server_config();
    let listen = config.listen;
    let host_name = config.host_name.clone();
    let sandboxes = open(config).await?;
    let service =
        HostAgentServer::with_interceptor(grpc::AgentService::new(sandboxes), require_controller);
    tracing::info!(%listen, host = %host_name, "serving the HostAgent gRPC service (mTLS)");
    tonic::transport::Server::builder()
        .tls_config(tls)
        .context("TLS configuration")?
        .add_service(service)
        .serve_with_shutdown(listen, shutdown.cancelled_owned())
        .await
        .with_context(|| format!("serving on {listen}"))?;
    tracing::info!("gRPC server stopped; sandboxes are left running");
    Ok(())
}
