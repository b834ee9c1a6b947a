//! fluid host-agent: runs sandboxes (libvirt domains on qcow2 overlays) on one KVM host
//! for the fluid controller, which calls it over mTLS gRPC.
//!
//! - [`config`]: the agent's TOML/env configuration.
//! - [`grpc`]: the `HostAgent` gRPC service (thin handlers).
//! - [`sandboxes`]: the service logic (create/start/stop/destroy/inspect, snapshots,
//!   fork, diffs and file reads of disk states, tunnels).
//! - [`exec`]: commands in sandboxes over SSH (key, connection pool, wrapper, streams).
//! - [`reconcile`]: start-up repair of local records vs libvirt.
//! - [`hypervisor`]: the backend trait and its libvirt implementation.
//! - [`network`]: sandbox isolation (nftables rules, egress allow-lists, DNS proxy).
//! - [`images`], [`overlay`], [`state`]: images, overlay disks, the redb records.
//! - [`simulated`]: simulated hosts (`[simulated]`) for control-plane scale tests.
//! - [`metrics`]: Prometheus metrics on `metrics_listen`. Every gRPC call runs in a
//!   server span that continues the controller's trace (`traceparent`), so with an
//!   `otlp_endpoint` one trace follows a request down to the libvirt calls.

pub mod config;
pub mod error;
pub mod exec;
pub mod grpc;
pub mod hypervisor;
pub mod images;
pub mod metrics;
pub mod network;
pub mod overlay;
pub mod reconcile;
pub mod sandboxes;
pub mod simulated;
pub mod state;
pub mod templates;

use std::sync::Arc;

use anyhow::Context as _;
use fluid_proto::pb::host_agent_server::HostAgentServer;
use fluid_proto::tls::require_controller;
use tokio_util::sync::CancellationToken;

pub use config::AgentConfig;
pub use sandboxes::Sandboxes;

use crate::hypervisor::Hypervisor as _;
use crate::hypervisor::libvirt::Libvirt;
use crate::network::nft::NftCommand;
use crate::network::{Firewall, NetworkSettings};
use crate::state::StateStore;

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The firewall the config asks for: enforcing (settings completed from the libvirt
/// network) or not at all.
async fn firewall(config: &AgentConfig, hv: &Libvirt) -> anyhow::Result<Firewall> {
    let net = &config.network;
    if !net.enforce {
        tracing::warn!(
            "[network] enforce = false: sandboxes are NOT isolated (no nftables rules; \
             they reach whatever the libvirt network {} reaches)",
            net.name
        );
        // The package's boot-time deny would otherwise keep every sandbox offline.
        let mut batch = nftables::schema::Nftables {
            objects: std::borrow::Cow::Owned(Vec::new()),
        };
        network::ruleset::remove_boot_table(&mut batch);
        if let Err(e) = network::nft::NftBackend::apply(&NftCommand::default(), &batch).await {
            tracing::error!(
                table = network::ruleset::BOOT_TABLE,
                "removing the boot-time deny failed ({e}); sandboxes stay offline until it is \
                 deleted (`nft delete table bridge {}`)",
                network::ruleset::BOOT_TABLE
            );
        }
        return Ok(Firewall::disabled());
    }
    let info = hv
        .network_info(net.name.as_str())
        .await
        .with_context(|| format!("reading libvirt network {}", net.name))?;
    let settings = NetworkSettings::resolve(net, &info)?;
    tracing::info!(
        table = %settings.table, bridge = %settings.bridge, host = %settings.host,
        dns_listen = %settings.dns_listen, dns_upstream = %settings.dns_upstream,
        always_allow = settings.always_allow.len(),
        "sandboxes are sealed by nftables rules"
    );
    Ok(Firewall::new(settings, Arc::new(NftCommand::default())))
}

/// Opens the state, connects to libvirt, reconciles and applies the sandboxes'
/// network rules (and starts keeping them current); the service is ready to serve.
///
/// The order is the isolation's: nothing is served (no gRPC, no DNS proxy) and no
/// domain is started before the rules are in force. Reconciliation only defines,
/// undefines and destroys domains; meanwhile the sandboxes that run are held either by
/// the rules a previous agent left, or after a reboot by the package's boot-time deny
/// (`table bridge fluid-boot`), which the first apply deletes in its own transaction.
/// An apply that fails fails the start.
pub async fn open(config: AgentConfig) -> anyhow::Result<Arc<Sandboxes<Libvirt>>> {
    let store = open_state(&config).await?;
    let hv = Libvirt::connect(&config.libvirt_uri, config.host_name.as_str())
        .await
        .with_context(|| format!("connecting to libvirt at {}", config.libvirt_uri))?;
    let key = agent_key(&config)?;
    let firewall = Arc::new(firewall(&config, &hv).await?);
    let sandboxes = Arc::new(Sandboxes::new(config, Arc::new(hv), store, key, firewall));
    start(sandboxes).await
}

/// The state directories and the redb records.
async fn open_state(config: &AgentConfig) -> anyhow::Result<StateStore> {
    overlay::ensure_dir(&config.state_dir).await?;
    overlay::ensure_dir(&config.overlay_dir()).await?;
    overlay::ensure_dir(&config.console_dir()).await?;
    Ok(StateStore::open(&config.db_path()).await?)
}

/// The exec key, which lives in memory only: a restarted agent has a new one, and the
/// controller reads it again from GetStatus.
fn agent_key(config: &AgentConfig) -> anyhow::Result<exec::AgentKey> {
    exec::AgentKey::generate(&format!("fluid-agent@{}", config.host_name))
        .context("making the agent's SSH key")
}

/// Reconciles, clears what an interrupted diff left, applies the network rules and
/// starts the background work (rules kept current, templates, the warm pool).
async fn start<H: hypervisor::Hypervisor>(
    sandboxes: Arc<Sandboxes<H>>,
) -> anyhow::Result<Arc<Sandboxes<H>>> {
    reconcile::reconcile(&sandboxes)
        .await
        .context("reconciling local state with libvirt")?;
    sandboxes
        .clear_leftovers()
        .await
        .context("clearing what an interrupted diff left")?;
    sandboxes
        .restore_network()
        .await
        .context("applying the sandbox network rules")?;
    network::watch::spawn(&sandboxes);
    sandboxes.start_templates().await;
    sandboxes.start_pool();
    Ok(sandboxes)
}

/// `fluid-agent build-templates`: builds the memory templates of `[templates] shapes`
/// now, in the foreground (after an image update, or before the agent's first start);
/// a line per template.
pub async fn build_templates(config: AgentConfig) -> anyhow::Result<Vec<String>> {
    let hv = Libvirt::connect(&config.libvirt_uri, config.host_name.as_str())
        .await
        .with_context(|| format!("connecting to libvirt at {}", config.libvirt_uri))?;
    let templates = templates::Templates::new(config.templates.clone(), &config.state_dir);
    let cx = templates::build::BuildContext {
        hv: &hv,
        agent: &config.host_name,
        network: &config.network.name,
        virt_type: config.virt_type,
    };
    templates.build_configured(&cx, &config.images).await
}

/// Runs the agent until `shutdown` is cancelled. Sandboxes keep running when it exits.
/// With `[simulated]`, serves that many simulated hosts instead ([`simulated::run`]).
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    if config.simulated.is_some() {
        return simulated::run(config, shutdown).await;
    }
    let tls = config
        .tls
        .load()
        .context("loading the agent's TLS files")?
        .server_config();
    let listen = config.listen;
    let host_name = config.host_name.clone();
    // Bound first: a taken port fails the start before anything else is touched.
    let metrics_listener = match config.metrics_listen {
        Some(a) => Some(metrics::bind(a).await?),
        None => None,
    };
    let sandboxes = open(config).await?;
    if let Some(l) = metrics_listener {
        serve_metrics(l, sandboxes.clone(), &shutdown)?;
    }
    // The DNS proxy the rules send sandboxes' DNS to. Without it a sandbox cannot
    // resolve anything, so its failure stops the agent (to be restarted) rather than
    // leaving it half-working.
    let dns = match sandboxes.firewall().settings() {
        Some(settings) => {
            let sink: Arc<dyn network::dns::ResolvedSink> = sandboxes.firewall().clone();
            let (dns_listen, upstream) = (settings.dns_listen.into(), settings.dns_upstream);
            tracing::info!(listen = %dns_listen, %upstream, "serving the sandboxes' DNS proxy");
            tokio::spawn(network::dns::serve(
                dns_listen,
                upstream,
                sink,
                settings.dns_caps,
                shutdown.child_token(),
            ))
        }
        None => tokio::spawn(std::future::pending::<anyhow::Result<()>>()),
    };
    tracing::info!(%listen, host = %host_name, "serving the HostAgent gRPC service (mTLS)");
    let server = serve_grpc(sandboxes, tls, listen, shutdown.clone())?;
    tokio::pin!(server);
    tokio::select! {
        served = &mut server => served.with_context(|| format!("serving on {listen}"))?,
        ended = dns => {
            let ended = ended.context("the DNS proxy task")?;
            if !shutdown.is_cancelled() {
                shutdown.cancel();
                let _ = (&mut server).await;
                ended.context("the DNS proxy")?;
                anyhow::bail!("the DNS proxy stopped");
            }
            (&mut server).await.with_context(|| format!("serving on {listen}"))?;
        }
    }
    tracing::info!("gRPC server stopped; sandboxes are left running (and sealed)");
    Ok(())
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
fn serve_metrics<H: hypervisor::Hypervisor>(
    listener: tokio::net::TcpListener,
    sandboxes: Arc<Sandboxes<H>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!(listen = %listener.local_addr()?, "serving Prometheus metrics (GET /metrics)");
    let token = shutdown.child_token();
    tokio::spawn(async move {
        if let Err(e) = metrics::serve(listener, sandboxes, token).await {
            tracing::error!("{e:#}");
        }
    });
    Ok(())
}

/// The HostAgent gRPC service of `sandboxes` on `listen` (mTLS: only the controller's
/// certificate is let in), until `shutdown`.
fn serve_grpc<H: hypervisor::Hypervisor>(
    sandboxes: Arc<Sandboxes<H>>,
    tls: tonic::transport::ServerTlsConfig,
    listen: std::net::SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<impl std::future::Future<Output = Result<(), tonic::transport::Error>>> {
    let service =
        HostAgentServer::with_interceptor(grpc::AgentService::new(sandboxes), require_controller);
    Ok(tonic::transport::Server::builder()
        .tls_config(tls)
        .context("TLS configuration")?
        .layer(fluid_telemetry::grpc::GrpcLayer::server(
            fluid_proto::pb::host_agent_server::SERVICE_NAME,
            Arc::new(metrics::GrpcRequests),
        ))
        .add_service(service)
        .serve_with_shutdown(listen, shutdown.cancelled_owned()))
}
