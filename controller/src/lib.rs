//! The fluid controller: REST API, scheduler, host registry and reconciliation for
//! sandbox VMs on a fleet of KVM hosts.
//!
//! A REST request enters in [`api`], becomes a placement decision in [`scheduler`]
//! (reserved atomically in the [`store`]), and crosses to the host in [`agents`].
//! [`hosts`] (heartbeat), [`reconciler`] and [`janitor`] run in the background.
//! [`commands`], [`files`] and [`access`] run commands in sandboxes through the agents'
//! Exec, audited in the store, under the [`policy`]; [`attach`] opens audited
//! interactive shells through the agents' Attach; [`ssh_ca`] signs the SSH
//! certificates agents and people use. [`grpc_api`] serves the public gRPC API
//! (`fluid.v1`) beside REST, over the same services.
//!
//! Every call is authenticated ([`auth`]: bearer tokens, roles, read-only mode);
//! [`approvals`] holds requests for human decisions (with the [`webhook`] that
//! announces them), and [`overcommit`] gates creates that find no room behind one.
//! [`egress`] holds each sandbox's network allow-list (pushed to its agent), which
//! agents extend through approvals ([`egress_requests`]).
//! [`snapshots`] takes, restores and forks from snapshots of sandboxes; [`diffs`]
//! compares disk states (read out-of-band by the agents) into the review record.
//! [`playbooks`] stores Ansible playbooks, [`generate`] writes one from a diff,
//! [`jobs`] runs them (against a sandbox, or production behind a `production_apply`
//! approval) and [`verify`] proves one reproduces its sandbox on a fresh one.
//! Every mutating call, state change, decision and command is appended to the
//! hash-chained audit trail in the [`store`]. [`metrics`] counts what happens for
//! Prometheus (`GET /metrics`).

pub mod agents;
pub mod ansible;
pub mod cli;
pub mod config;
pub mod error;
pub mod fleet;
pub mod governance;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod network;
pub mod sandboxes;
pub mod scheduler;
pub mod store;
pub mod support;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod work;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::agents::{AgentConnector, AgentTimeouts, GrpcAgents};
use crate::ansible::generate::Generator;
use crate::ansible::jobs::runner::{AnsibleRunner, PlaybookRunner};
use crate::ansible::jobs::{JobDeps, JobService, JobSettings};
use crate::ansible::playbooks::PlaybookService;
use crate::ansible::verify::{Verifier, VerifyDeps};
use crate::config::Config;
use crate::fleet::hosts::HostService;
use crate::fleet::reconciler::{LOST_GRACE, Reconciler};
use crate::governance::approvals::ApprovalService;
use crate::governance::audit::AuditService;
use crate::governance::auth::Authenticator;
use crate::governance::webhook::Webhook;
use crate::http::AppState;
use crate::metrics::Metrics;
use crate::network::egress::EgressService;
use crate::network::requests::EgressGate;
use crate::sandboxes::diffs::DiffService;
use crate::sandboxes::janitor::Janitor;
use crate::sandboxes::overcommit::OvercommitGate;
use crate::sandboxes::snapshots::SnapshotService;
use crate::sandboxes::{SandboxService, SandboxSettings};
use crate::store::{LoopKey, Store};
use crate::work::access::AccessService;
use crate::work::attach::AttachService;
use crate::work::commands::CommandService;
use crate::work::files::FileService;
use crate::work::policy::Policy;
use crate::work::ssh_ca::SshCa;

pub use crate::config::Config as ControllerConfig;

/// Time for in-flight HTTP requests to finish after a shutdown signal.
pub const HTTP_DRAIN_DEADLINE: Duration = Duration::from_secs(30);
/// Time for background loops to stop.
pub const LOOPS_DEADLINE: Duration = Duration::from_secs(10);
/// Time to close the database pool.
pub const STORE_CLOSE_DEADLINE: Duration = Duration::from_secs(5);

/// Builds the services and handler state over a store, an agent connector and the SSH
/// user CA.
pub fn build_state(
    store: Arc<dyn Store>,
    agents: Arc<dyn AgentConnector>,
    config: &Config,
    ca: Arc<SshCa>,
) -> anyhow::Result<AppState> {
    build_state_with_runner(
        store,
        agents,
        config,
        ca,
        Arc::new(AnsibleRunner::from_config(&config.ansible)),
    )
}

/// [`build_state`] with the given runner of ansible-playbook (tests record runs).
pub fn build_state_with_runner(
    store: Arc<dyn Store>,
    agents: Arc<dyn AgentConnector>,
    config: &Config,
    ca: Arc<SshCa>,
    runner: Arc<dyn PlaybookRunner>,
) -> anyhow::Result<AppState> {
    build_state_with(store, agents, config, ca, runner, Arc::new(Metrics::new()))
}

/// [`build_state_with_runner`] counting into `metrics` (which the agent connector
/// may share).
pub fn build_state_with(
    store: Arc<dyn Store>,
    agents: Arc<dyn AgentConnector>,
    config: &Config,
    ca: Arc<SshCa>,
    runner: Arc<dyn PlaybookRunner>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<AppState> {
    let policy = Arc::new(Policy::new(&config.policy).map_err(|e| anyhow::anyhow!("policy: {e}"))?);
    let commands = Arc::new(
        CommandService::new(
            store.clone(),
            agents.clone(),
            ca.clone(),
            policy,
            config.output_cap_bytes,
            metrics.clone(),
        )
        .with_limits(config.commands.clone())
        .with_commands_per_agent(config.quotas.commands_per_agent),
    );
    let files = Arc::new(FileService::new(commands.clone()));
    let attach = Arc::new(AttachService::new(
        commands.clone(),
        store.clone(),
        agents.clone(),
    ));
    let access = Arc::new(AccessService::new(
        store.clone(),
        commands.clone(),
        ca.clone(),
    ));
    let hosts = Arc::new(HostService::new(
        store.clone(),
        agents.clone(),
        config.cpu_overcommit_ratio,
        config.offline_after_missed_beats,
    ));
    let webhook = match (
        &config.approvals.webhook_url,
        config.approvals.webhook_secret()?,
    ) {
        (Some(url), Some(secret)) => Some(Webhook::new(url, &secret)?),
        _ => None,
    };
    let approvals = Arc::new(ApprovalService::new(store.clone(), webhook));
    let mut sandboxes = SandboxService::new(
        store.clone(),
        agents.clone(),
        SandboxSettings {
            default_cpu: config.default_cpu,
            default_memory_mb: config.default_memory_mb,
            cpu_overcommit_ratio: config.cpu_overcommit_ratio,
            wait_for_ip_timeout_secs: config.wait_for_ip_timeout_secs,
            ssh_user_ca_keys: vec![ca.public_key().to_owned()],
        },
        metrics.clone(),
    )
    .with_quotas(config.quotas.clone());
    if config.approvals.overcommit_approval {
        sandboxes = sandboxes.with_overcommit(Arc::new(OvercommitGate::new(
            store.clone(),
            approvals.clone(),
            Duration::from_secs(config.approvals.overcommit_timeout_secs),
        )));
    }
    let sandboxes = Arc::new(sandboxes);
    let egress = Arc::new(EgressService::new(store.clone(), agents.clone()));
    let egress_gate = Arc::new(EgressGate::new(
        store.clone(),
        egress.clone(),
        approvals.clone(),
        Duration::from_secs(config.approvals.egress_timeout_secs),
    ));
    let snapshots = Arc::new(SnapshotService::new(
        store.clone(),
        agents.clone(),
        commands.clone(),
        sandboxes.clone(),
    ));
    let diffs = Arc::new(DiffService::new(
        store.clone(),
        agents.clone(),
        commands.clone(),
        config.diff.clone(),
    ));
    let playbooks = Arc::new(PlaybookService::new(store.clone(), &config.data_dir));
    let jobs = Arc::new(JobService::new(
        JobDeps {
            store: store.clone(),
            agents: agents.clone(),
            approvals: approvals.clone(),
            playbooks: playbooks.clone(),
            sandboxes: sandboxes.clone(),
            ca: ca.clone(),
        },
        runner,
        JobSettings::from_config(config),
    ));
    let generator = Arc::new(Generator::new(
        store.clone(),
        diffs.clone(),
        playbooks.clone(),
        jobs.clone(),
        &config.data_dir,
        config.diff.text_limit_bytes,
    ));
    let verifier = Arc::new(Verifier::new(
        VerifyDeps {
            store: store.clone(),
            sandboxes: sandboxes.clone(),
            egress: egress.clone(),
            diffs: diffs.clone(),
            playbooks: playbooks.clone(),
            jobs: jobs.clone(),
        },
        config.verify.ignore_paths.clone(),
    ));
    Ok(AppState {
        auth: Arc::new(Authenticator::new(store.clone())),
        metrics,
        metrics_public: config.metrics.public,
        snapshots,
        diffs,
        playbooks,
        jobs,
        generator,
        verifier,
        audit: Arc::new(AuditService::new(store)),
        sandboxes,
        hosts,
        commands,
        files,
        access,
        attach,
        approvals,
        egress,
        egress_gate,
    })
}

/// Spawns the heartbeat, reconciler and janitor loops; they stop when `cancel` fires.
pub fn spawn_background(
    state: &AppState,
    store: Arc<dyn Store>,
    agents: Arc<dyn AgentConnector>,
    config: &Config,
    cancel: &CancellationToken,
) -> JoinSet<()> {
    let mut set = JoinSet::new();

    let hosts = state.hosts.clone();
    set.spawn(fleet::background::run_periodic(
        "heartbeat",
        Duration::from_secs(config.heartbeat_interval_secs),
        LoopKey::Heartbeat,
        store.clone(),
        cancel.clone(),
        move || {
            let hosts = hosts.clone();
            async move { Ok(hosts.beat_all().await?) }
        },
    ));

    // A create may legitimately take its whole deadline before the agent lists it.
    let in_flight = AgentTimeouts::new(config.agent_timeout()).create + LOST_GRACE;
    let reconciler = Arc::new(Reconciler::new(
        store.clone(),
        agents,
        LOST_GRACE,
        in_flight,
    ));
    set.spawn(fleet::background::run_periodic(
        "reconciler",
        Duration::from_secs(config.reconcile_interval_secs),
        LoopKey::Reconciler,
        store.clone(),
        cancel.clone(),
        move || {
            let r = reconciler.clone();
            async move { Ok(r.tick().await?) }
        },
    ));

    let retention = config.retention.clone();
    let retention_store = store.clone();
    set.spawn(fleet::background::run_periodic(
        "retention",
        Duration::from_secs(retention.check_interval_secs),
        LoopKey::Retention,
        store.clone(),
        cancel.clone(),
        move || {
            let (retention, store) = (retention.clone(), retention_store.clone());
            async move {
                retention.expire(&*store, chrono::Utc::now()).await?;
                Ok(())
            }
        },
    ));

    let janitor = Arc::new(Janitor::new(store.clone(), state.sandboxes.clone()));
    let approvals = state.approvals.clone();
    set.spawn(fleet::background::run_periodic(
        "janitor",
        Duration::from_secs(config.janitor_interval_secs),
        LoopKey::Janitor,
        store,
        cancel.clone(),
        move || {
            let j = janitor.clone();
            let approvals = approvals.clone();
            async move {
                j.tick().await?;
                approvals.expire_overdue().await?;
                Ok(())
            }
        },
    ));
    set
}

/// Binds `config.listen` and serves until `shutdown` fires.
pub async fn serve(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    serve_on(listener, config, shutdown).await
}

/// Serves on an already bound listener (tests bind port 0): binds `grpc_listen` (when
/// set), opens and migrates the store, registers the configured hosts, starts the
/// background loops, the HTTP API and the gRPC API, and on `shutdown` stops them in
/// order — HTTP and gRPC (drained), loops, store — each with a deadline.
pub async fn serve_on(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tls = config
        .tls()?
        .load()
        .context("loading the controller's TLS files")?;
    let api_tls = match &config.api_tls {
        Some(c) => Some(http::tls::ApiTls::load(c).context("loading [api_tls]")?),
        None => None,
    };
    let grpc_listener = match config.grpc_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("binding grpc_listen {a}"))?,
        ),
        None => None,
    };
    // The SSH user CA, playbooks and artefacts live here, whatever the database.
    support::private_fs::private_dir(&config.data_dir).context("data_dir")?;
    let store = store::open(config.database_url.as_deref(), &config.data_dir)
        .await
        .context("opening the store")?;
    for h in &config.hosts {
        store
            .upsert_host(&h.name, &h.address)
            .await
            .with_context(|| format!("registering host {}", h.name))?;
    }
    let metrics = Arc::new(Metrics::new());
    let agents: Arc<dyn AgentConnector> = Arc::new(GrpcAgents::new(
        tls,
        AgentTimeouts::new(config.agent_timeout()),
        metrics.clone(),
    ));
    let ca_path = config.ssh_ca_key_path();
    let ca = Arc::new(SshCa::load_or_create(&ca_path).context("loading the SSH user CA")?);
    let interrupted = store
        .interrupt_running_commands(chrono::Utc::now())
        .await
        .context("marking interrupted commands")?;
    if interrupted > 0 {
        tracing::warn!(
            interrupted,
            "commands were running when the controller stopped"
        );
    }
    let state = build_state_with(
        store.clone(),
        agents.clone(),
        &config,
        ca,
        Arc::new(AnsibleRunner::from_config(&config.ansible)),
        metrics,
    )?;
    match state.sandboxes.resume_overcommits().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(n, "resumed over-commit creates waiting for approval"),
        Err(e) => tracing::warn!(error = %e, "resuming over-commit creates"),
    }
    match state.egress_gate.resume().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(n, "resumed egress requests waiting for approval"),
        Err(e) => tracing::warn!(error = %e, "resuming egress requests"),
    }
    match state.jobs.resume().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(n, "resumed production jobs waiting for approval"),
        Err(e) => tracing::warn!(error = %e, "resuming Ansible jobs"),
    }
    let loops_cancel = CancellationToken::new();
    let mut loops = spawn_background(&state, store.clone(), agents, &config, &loops_cancel);

    let addr = listener.local_addr()?;
    let scheme = if api_tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, scheme, version = env!("CARGO_PKG_VERSION"), "fluid-controller listening");
    // A child token: a server that stops on its own stops the other one too.
    let drain = shutdown.child_token();
    let mut servers: JoinSet<(&'static str, anyhow::Result<()>)> = JoinSet::new();
    let app = http::router(state.clone());
    let http_drain = drain.clone();
    match &api_tls {
        Some(t) => {
            let listener = t.listener(listener).context("REST TLS listener")?;
            servers.spawn(async move {
                let r = axum::serve(listener, app)
                    .with_graceful_shutdown(http_drain.cancelled_owned())
                    .await;
                ("HTTP", r.map_err(anyhow::Error::from))
            });
        }
        None => {
            servers.spawn(async move {
                let r = axum::serve(listener, app)
                    .with_graceful_shutdown(http_drain.cancelled_owned())
                    .await;
                ("HTTP", r.map_err(anyhow::Error::from))
            });
        }
    }
    if let Some(grpc) = grpc_listener {
        let grpc_addr = grpc.local_addr()?;
        let grpc_tls = api_tls.as_ref().map(http::tls::ApiTls::grpc);
        let what = if grpc_tls.is_some() { "TLS" } else { "h2c" };
        tracing::info!(addr = %grpc_addr, transport = what, "public gRPC API listening");
        let grpc_state = state.clone();
        let grpc_drain = drain.clone();
        servers.spawn(async move {
            let r = grpc::serve(grpc, grpc_state, grpc_tls, grpc_drain).await;
            ("gRPC", r)
        });
    }

    let early = tokio::select! {
        r = servers.join_next() => r,
        () = shutdown.cancelled() => None,
    };
    let mut result = Ok(());
    if let Some(r) = early {
        let (name, r) = r.context("server task")?;
        tracing::error!("{name} server stopped on its own");
        result = r.with_context(|| format!("{name} server"));
        drain.cancel();
    } else {
        tracing::info!("shutting down: draining HTTP and gRPC requests");
    }
    let drained = tokio::time::timeout(HTTP_DRAIN_DEADLINE, async {
        let mut first_err = Ok(());
        while let Some(r) = servers.join_next().await {
            let r = match r {
                Ok((name, r)) => r.with_context(|| format!("{name} server")),
                Err(e) => Err(anyhow::Error::from(e).context("server task")),
            };
            if first_err.is_ok() {
                first_err = r;
            }
        }
        first_err
    })
    .await;
    match drained {
        Ok(r) => {
            if result.is_ok() {
                result = r;
            }
        }
        Err(_) => {
            tracing::warn!("requests still running after {HTTP_DRAIN_DEADLINE:?}; aborting them");
            servers.abort_all();
        }
    }

    tracing::info!("stopping background loops");
    loops_cancel.cancel();
    if tokio::time::timeout(LOOPS_DEADLINE, async {
        while loops.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!("background loops did not stop within {LOOPS_DEADLINE:?}; aborting");
        loops.abort_all();
    }
    if tokio::time::timeout(STORE_CLOSE_DEADLINE, store.close())
        .await
        .is_err()
    {
        tracing::warn!("store did not close within {STORE_CLOSE_DEADLINE:?}");
    }
    tracing::info!("stopped");
    result
}
