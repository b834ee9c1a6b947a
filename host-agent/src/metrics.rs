//! The agent's Prometheus metrics, served as OpenMetrics text by a plain HTTP listener
//! (`metrics_listen`, default `127.0.0.1:9464`; `GET /metrics`).
//!
//! One registry per process ([`metrics`]): an agent is one process per host, and what
//! is counted sits deep below constructors that tests build by the dozen (libvirt's
//! connection threads, the firewall, the gRPC layer), so a handle threaded through all
//! of them would buy nothing. Counted where it happens: operations and their durations
//! in the gRPC handlers, libvirt calls in `Libvirt::call_on`, nftables applies in the
//! firewall, gRPC requests by the server's `fluid_telemetry` layer. Sandboxes by
//! observed state are read from libvirt when scraped.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use fluid_proto::model::ObservedState;
use fluid_telemetry::grpc::CallObserver;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::hypervisor::{Hypervisor, HypervisorError};
use crate::sandboxes::Sandboxes;

/// The media type of [`AgentMetrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpOutcomeLabels {
    op: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LibvirtErrorLabels {
    op: &'static str,
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    method: String,
    code: String,
}

/// A sandbox operation the agent times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    Start,
    Stop,
    Destroy,
    /// A whole command, from the request to its exit.
    Exec,
    Snapshot,
    Revert,
    Diff,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Destroy => "destroy",
            Self::Exec => "exec",
            Self::Snapshot => "snapshot",
            Self::Revert => "revert",
            Self::Diff => "diff",
        }
    }
}

fn op_buckets() -> Histogram {
    Histogram::new([
        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    ])
}

fn state_label(s: ObservedState) -> &'static str {
    match s {
        ObservedState::Created => "CREATED",
        ObservedState::Running => "RUNNING",
        ObservedState::Stopped => "STOPPED",
        ObservedState::Paused => "PAUSED",
        ObservedState::Error => "ERROR",
    }
}

const STATES: [ObservedState; 5] = [
    ObservedState::Created,
    ObservedState::Running,
    ObservedState::Stopped,
    ObservedState::Paused,
    ObservedState::Error,
];

fn error_kind(e: &HypervisorError) -> &'static str {
    match e {
        HypervisorError::NotFound(_) => "not_found",
        HypervisorError::NoSnapshot(_) => "no_snapshot",
        HypervisorError::Unavailable(_) => "unavailable",
        HypervisorError::Failed(_) => "failed",
    }
}

/// Every metric of the agent.
pub struct AgentMetrics {
    registry: Registry,
    sandboxes: Family<StateLabels, Gauge>,
    ops: Family<OpOutcomeLabels, Counter>,
    op_seconds: Family<OpLabels, Histogram, fn() -> Histogram>,
    libvirt_calls: Family<OpLabels, Counter>,
    libvirt_errors: Family<LibvirtErrorLabels, Counter>,
    nft_applies: Counter,
    nft_apply_errors: Counter,
    dns_refused: Counter,
    grpc_requests: Family<GrpcLabels, Counter>,
    scrape_errors: Counter,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics").finish_non_exhaustive()
    }
}

static METRICS: LazyLock<AgentMetrics> = LazyLock::new(AgentMetrics::new);

/// The process's metrics.
pub fn metrics() -> &'static AgentMetrics {
    &METRICS
}

impl AgentMetrics {
    fn new() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("fluid_agent"),
            sandboxes: Family::default(),
            ops: Family::default(),
            op_seconds: Family::new_with_constructor(op_buckets),
            libvirt_calls: Family::default(),
            libvirt_errors: Family::default(),
            nft_applies: Counter::default(),
            nft_apply_errors: Counter::default(),
            dns_refused: Counter::default(),
            grpc_requests: Family::default(),
            scrape_errors: Counter::default(),
        };
        let r = &mut m.registry;
        r.register(
            "build",
            "The agent's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        r.register(
            "sandboxes",
            "This host's sandboxes by observed state",
            m.sandboxes.clone(),
        );
        r.register(
            "operations",
            "Sandbox operations (create, destroy, exec, snapshot, revert, diff, ...) by outcome",
            m.ops.clone(),
        );
        r.register(
            "operation_duration_seconds",
            "Duration of sandbox operations (exec: from the request to the command's exit)",
            m.op_seconds.clone(),
        );
        r.register(
            "libvirt_calls",
            "libvirt calls by operation",
            m.libvirt_calls.clone(),
        );
        r.register(
            "libvirt_errors",
            "Failed libvirt calls by operation and kind",
            m.libvirt_errors.clone(),
        );
        r.register(
            "nft_applies",
            "nftables rule sets applied (one atomic batch each)",
            m.nft_applies.clone(),
        );
        r.register(
            "nft_apply_errors",
            "nftables applies that failed",
            m.nft_apply_errors.clone(),
        );
        r.register(
            "dns_refused",
            "DNS queries of sandboxes refused by policy (not asked upstream)",
            m.dns_refused.clone(),
        );
        r.register(
            "grpc_requests",
            "HostAgent gRPC requests by RPC and gRPC code",
            m.grpc_requests.clone(),
        );
        r.register(
            "metrics_scrape_errors",
            "Scrapes whose sandbox states could not be read",
            m.scrape_errors.clone(),
        );
        m
    }

    /// A sandbox operation ended (`ok`: it did what was asked).
    pub fn op(&self, op: Op, ok: bool, elapsed: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        self.ops
            .get_or_create(&OpOutcomeLabels {
                op: op.as_str(),
                outcome,
            })
            .inc();
        self.op_seconds
            .get_or_create(&OpLabels { op: op.as_str() })
            .observe(elapsed.as_secs_f64());
    }

    /// A libvirt call ended, failed with `error` or not.
    pub fn libvirt_call(&self, op: &'static str, error: Option<&HypervisorError>) {
        self.libvirt_calls.get_or_create(&OpLabels { op }).inc();
        if let Some(e) = error {
            self.libvirt_errors
                .get_or_create(&LibvirtErrorLabels {
                    op,
                    kind: error_kind(e),
                })
                .inc();
        }
    }

    /// An nftables batch was applied (or failed).
    pub fn nft_apply(&self, ok: bool) {
        self.nft_applies.inc();
        if !ok {
            self.nft_apply_errors.inc();
        }
    }

    /// The DNS proxy refused a query outside a sandbox's policy (nothing went upstream).
    pub fn dns_refused(&self) {
        self.dns_refused.inc();
    }

    /// Sets the sandboxes-by-state gauge.
    fn set_states(&self, states: impl IntoIterator<Item = ObservedState>) {
        let states: Vec<ObservedState> = states.into_iter().collect();
        for s in STATES {
            let n = states.iter().filter(|x| **x == s).count();
            self.sandboxes
                .get_or_create(&StateLabels {
                    state: state_label(s),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }
}

/// Counts the gRPC server's requests (the `fluid_telemetry` layer's observer).
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcRequests;

impl CallObserver for GrpcRequests {
    fn finished(&self, method: &str, code: tonic::Code, _elapsed: Duration) {
        metrics()
            .grpc_requests
            .get_or_create(&GrpcLabels {
                method: method.to_owned(),
                code: format!("{code:?}"),
            })
            .inc();
    }
}

async fn scrape<H: Hypervisor>(State(sandboxes): State<Arc<Sandboxes<H>>>) -> impl IntoResponse {
    let m = metrics();
    match sandboxes.list().await {
        Ok(list) => m.set_states(list.into_iter().map(|v| v.state)),
        Err(e) => {
            m.scrape_errors.inc();
            tracing::warn!(error = %e, "metrics: the sandboxes' states could not be read");
        }
    }
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], m.encode())
}

/// Binds `listen` for `GET /metrics` (plain HTTP: put it on loopback or a management
/// network).
pub async fn bind(listen: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding metrics_listen {listen}"))
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve<H: Hypervisor>(
    listener: tokio::net::TcpListener,
    sandboxes: Arc<Sandboxes<H>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape::<H>))
        .with_state(sandboxes);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("serving metrics")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each event counts exactly once: a private registry (not the process-wide one,
    /// which other tests of this binary also bump) and exact sums.
    #[test]
    fn the_registry_encodes_valid_text() {
        let m = AgentMetrics::new();
        m.op(Op::Create, true, Duration::from_millis(450));
        m.op(Op::Exec, false, Duration::from_millis(300));
        m.libvirt_call("define", None);
        m.libvirt_call("start", Some(&HypervisorError::Failed("x".into())));
        // Two applies that worked and one that failed: errors counted on the wrong
        // outcome would read 2, not 1.
        m.nft_apply(true);
        m.nft_apply(false);
        m.nft_apply(true);
        m.set_states([ObservedState::Running, ObservedState::Running]);
        let text = m.encode();
        let e = fluid_telemetry::exposition::parse(&text).expect(&text);
        let exactly = |name: &str, labels: &[(&str, &str)], want: f64| {
            assert_eq!(e.sum(name, labels), want, "{name} {labels:?} in\n{text}");
        };
        exactly(
            "fluid_agent_operations_total",
            &[("op", "create"), ("outcome", "ok")],
            1.0,
        );
        exactly(
            "fluid_agent_operations_total",
            &[("op", "exec"), ("outcome", "error")],
            1.0,
        );
        exactly(
            "fluid_agent_operation_duration_seconds_count",
            &[("op", "exec")],
            1.0,
        );
        exactly("fluid_agent_libvirt_calls_total", &[], 2.0);
        exactly(
            "fluid_agent_libvirt_errors_total",
            &[("op", "start"), ("kind", "failed")],
            1.0,
        );
        exactly("fluid_agent_libvirt_errors_total", &[("op", "define")], 0.0);
        exactly("fluid_agent_nft_applies_total", &[], 3.0);
        exactly("fluid_agent_nft_apply_errors_total", &[], 1.0);
        exactly("fluid_agent_sandboxes", &[("state", "RUNNING")], 2.0);
        exactly("fluid_agent_sandboxes", &[("state", "ERROR")], 0.0);
        exactly(
            "fluid_agent_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        );
    }

    /// The gRPC server layer counts into the process-wide registry: one call, one count
    /// (a method name no other test uses, so the difference is exact).
    #[test]
    fn grpc_requests_count_once_per_call() {
        let count = || {
            let e = fluid_telemetry::exposition::parse(&metrics().encode()).expect("valid");
            e.sum(
                "fluid_agent_grpc_requests_total",
                &[("method", "MetricsProbe"), ("code", "Ok")],
            )
        };
        let before = count();
        GrpcRequests.finished("MetricsProbe", tonic::Code::Ok, Duration::ZERO);
        assert_eq!(count() - before, 1.0);
    }
}
