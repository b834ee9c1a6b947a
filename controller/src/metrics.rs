//! The controller's Prometheus metrics, served as OpenMetrics text on `GET /metrics`
//! (`api/metrics.rs`).
//!
//! Events are counted where they happen: sandbox creates ([`crate::sandboxes`]),
//! finished commands ([`crate::work::commands`]), REST requests (a middleware that labels
//! them with the matched route template, never the raw path, so ids do not explode the
//! label set) and agent calls (the gRPC layer on every agent channel, by RPC name and
//! code). The fleet gauges — sandboxes by state, hosts by state, each host's capacity
//! and warm pool (per image and shape, as its last heartbeat reported it), pending
//! approvals by kind — are read from the store when scraped: every replica answers the
//! same numbers and nothing can drift from the database.

use std::time::Duration;

use fluid_client::governance::{ApprovalKind, ApprovalStatus};
use fluid_client::types::{Host, HostState, SandboxState};
use fluid_telemetry::grpc::CallObserver;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::store::{ApprovalFilter, SandboxFilter, Store, StoreError};

/// The media type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabels {
    host: String,
}

/// One image and shape of a host's warm pool.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    host: String,
    image: String,
    cpus: u32,
    memory_mb: u64,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExecLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    method: String,
    code: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// A create takes 0.4 s to define and start, then a cold boot (~35 s under TCG) when
/// the request waits for the IP.
fn create_buckets() -> Histogram {
    Histogram::new([
        0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0,
    ])
}

/// Commands: a warm `true` is ~0.3 s; timeouts go up to an hour.
fn exec_buckets() -> Histogram {
    Histogram::new([
        0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
    ])
}

/// How a command ended, for `fluid_execs_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecOutcome {
    /// Exit status 0.
    Ok,
    /// Ran and exited non-zero.
    NonZero,
    TimedOut,
    /// The agent could not run it (or reported an error instead of a status).
    Failed,
    /// The agent's stream broke before the exit.
    Lost,
    /// Refused by the command policy (never reached an agent).
    Denied,
}

impl ExecOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::NonZero => "nonzero",
            Self::TimedOut => "timed_out",
            Self::Failed => "failed",
            Self::Lost => "lost",
            Self::Denied => "denied",
        }
    }
}

/// The registry and every metric in it. One per [`crate::http::AppState`].
pub struct Metrics {
    registry: Registry,
    sandboxes: Family<StateLabels, Gauge>,
    hosts: Family<StateLabels, Gauge>,
    host_cpus: Family<HostLabels, Gauge>,
    host_cpus_free: Family<HostLabels, Gauge>,
    host_memory: Family<HostLabels, Gauge>,
    host_memory_free: Family<HostLabels, Gauge>,
    host_simulated: Family<HostLabels, Gauge>,
    pool_size: Family<PoolLabels, Gauge>,
    pool_ready: Family<PoolLabels, Gauge>,
    pool_filling: Family<PoolLabels, Gauge>,
    pool_hits: Family<PoolLabels, Gauge>,
    pool_misses: Family<PoolLabels, Gauge>,
    approvals_pending: Family<KindLabels, Gauge>,
    create_seconds: Histograms<OutcomeLabels>,
    exec_seconds: Histograms<KindLabels>,
    execs: Family<ExecLabels, Counter>,
    http_requests: Family<HttpLabels, Counter>,
    agent_calls: Family<GrpcLabels, Counter>,
    agent_call_errors: Family<GrpcLabels, Counter>,
    scrape_errors: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("fluid"),
            sandboxes: Family::default(),
            hosts: Family::default(),
            host_cpus: Family::default(),
            host_cpus_free: Family::default(),
            host_memory: Family::default(),
            host_memory_free: Family::default(),
            host_simulated: Family::default(),
            pool_size: Family::default(),
            pool_ready: Family::default(),
            pool_filling: Family::default(),
            pool_hits: Family::default(),
            pool_misses: Family::default(),
            approvals_pending: Family::default(),
            create_seconds: Family::new_with_constructor(create_buckets),
            exec_seconds: Family::new_with_constructor(exec_buckets),
            execs: Family::default(),
            http_requests: Family::default(),
            agent_calls: Family::default(),
            agent_call_errors: Family::default(),
            scrape_errors: Counter::default(),
        };
        let r = &mut m.registry;
        r.register(
            "build",
            "The controller's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        r.register(
            "sandboxes",
            "Sandboxes in the store by state (DESTROYED rows included)",
            m.sandboxes.clone(),
        );
        r.register(
            "hosts",
            "Registered hosts by heartbeat state",
            m.hosts.clone(),
        );
        r.register("host_cpus", "vCPUs a host reports", m.host_cpus.clone());
        r.register(
            "host_cpus_free",
            "vCPUs left on a host before the over-commit ratio is reached",
            m.host_cpus_free.clone(),
        );
        r.register(
            "host_memory_bytes",
            "Memory a host reports",
            m.host_memory.clone(),
        );
        r.register(
            "host_memory_free_bytes",
            "Memory of a host not reserved by its live sandboxes (negative when over-committed)",
            m.host_memory_free.clone(),
        );
        r.register(
            "host_simulated",
            "1 for a simulated host (its agent's [simulated], control-plane scale tests), 0 for a real one",
            m.host_simulated.clone(),
        );
        r.register(
            "pool_size",
            "Members a host's warm pool keeps ready, per image and shape (the agent's configuration)",
            m.pool_size.clone(),
        );
        r.register(
            "pool_ready",
            "Warm pool members ready to be handed out, per host, image and shape",
            m.pool_ready.clone(),
        );
        r.register(
            "pool_filling",
            "Warm pool members being restored, per host, image and shape",
            m.pool_filling.clone(),
        );
        r.register(
            "pool_hits",
            "Creates served from a host's warm pool since its agent started, per image and shape",
            m.pool_hits.clone(),
        );
        r.register(
            "pool_misses",
            "Creates of a pooled image and shape that found no member ready, since the agent started",
            m.pool_misses.clone(),
        );
        r.register(
            "approvals_pending",
            "Approval requests waiting for a human, by kind",
            m.approvals_pending.clone(),
        );
        r.register(
            "sandbox_create_duration_seconds",
            "From placement to the create's answer (running, and its IP when the request waits for it)",
            m.create_seconds.clone(),
        );
        r.register(
            "exec_duration_seconds",
            "Duration of each finished command, by kind (command, file_read, ...)",
            m.exec_seconds.clone(),
        );
        r.register(
            "execs",
            "Commands that ended, by kind and outcome",
            m.execs.clone(),
        );
        r.register(
            "http_requests",
            "REST requests answered, by method, route template and status",
            m.http_requests.clone(),
        );
        r.register(
            "agent_calls",
            "gRPC calls to host-agents, by RPC and gRPC code",
            m.agent_calls.clone(),
        );
        r.register(
            "agent_call_errors",
            "gRPC calls to host-agents that did not end OK, by RPC and gRPC code",
            m.agent_call_errors.clone(),
        );
        r.register(
            "metrics_scrape_errors",
            "Scrapes whose store-backed gauges could not be read",
            m.scrape_errors.clone(),
        );
        m
    }

    /// A create answered (`ok`) or failed, `elapsed` after it was placed.
    pub fn sandbox_created(&self, ok: bool, elapsed: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        self.create_seconds
            .get_or_create(&OutcomeLabels { outcome })
            .observe(elapsed.as_secs_f64());
    }

    /// A command ended (`elapsed` is `None` when it never ran).
    pub fn command_finished(
        &self,
        kind: &'static str,
        outcome: ExecOutcome,
        elapsed: Option<Duration>,
    ) {
        self.execs
            .get_or_create(&ExecLabels {
                kind,
                outcome: outcome.as_str(),
            })
            .inc();
        if let Some(d) = elapsed {
            self.exec_seconds
                .get_or_create(&KindLabels { kind })
                .observe(d.as_secs_f64());
        }
    }

    /// A REST request was answered; `route` is the matched template (`/v1/sandboxes/{id}`).
    pub fn http_request(&self, method: &str, route: &str, status: u16) {
        self.http_requests
            .get_or_create(&HttpLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .inc();
    }

    /// Sets the fleet gauges: sandboxes and pending approvals from the store, hosts
    /// from `hosts` (as the API lists them, online check included).
    pub async fn refresh(&self, store: &dyn Store, hosts: &[Host]) -> Result<(), StoreError> {
        let r = self.refresh_inner(store, hosts).await;
        if r.is_err() {
            self.scrape_failed();
        }
        r
    }

    /// Counts a scrape whose fleet gauges could not be read.
    pub fn scrape_failed(&self) {
        self.scrape_errors.inc();
    }

    async fn refresh_inner(&self, store: &dyn Store, list: &[Host]) -> Result<(), StoreError> {
        for state in SandboxState::ALL {
            let (_, n) = store
                .list_sandboxes(&SandboxFilter {
                    state: Some(state),
                    limit: 0,
                    ..Default::default()
                })
                .await?;
            self.sandboxes
                .get_or_create(&StateLabels {
                    state: state.as_str(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        // Hosts removed since the last scrape must not linger.
        for f in [
            &self.host_cpus,
            &self.host_cpus_free,
            &self.host_memory,
            &self.host_memory_free,
            &self.host_simulated,
        ] {
            f.clear();
        }
        for f in [
            &self.pool_size,
            &self.pool_ready,
            &self.pool_filling,
            &self.pool_hits,
            &self.pool_misses,
        ] {
            f.clear();
        }
        for state in [HostState::Unknown, HostState::Online, HostState::Offline] {
            let n = list.iter().filter(|h| h.state == state).count();
            self.hosts
                .get_or_create(&StateLabels {
                    state: host_state(state),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        const MIB: i64 = 1 << 20;
        for h in list {
            let l = HostLabels {
                host: h.name.clone(),
            };
            self.host_cpus
                .get_or_create(&l)
                .set(i64::from(h.cpus_total));
            self.host_cpus_free.get_or_create(&l).set(h.cpus_free);
            self.host_memory.get_or_create(&l).set(
                i64::try_from(h.memory_mb_total).map_or(i64::MAX, |mb| mb.saturating_mul(MIB)),
            );
            self.host_memory_free
                .get_or_create(&l)
                .set(h.memory_mb_free.saturating_mul(MIB));
            self.host_simulated
                .get_or_create(&l)
                .set(i64::from(h.simulated));
            self.set_pools(h);
        }
        for kind in ApprovalKind::ALL {
            let (_, n) = store
                .list_approvals(&ApprovalFilter {
                    status: Some(ApprovalStatus::Pending),
                    kind: Some(kind),
                    limit: 0,
                    ..Default::default()
                })
                .await?;
            self.approvals_pending
                .get_or_create(&KindLabels {
                    kind: kind.as_str(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        Ok(())
    }

    /// The warm pool gauges of host `h`, one set per image and shape.
    fn set_pools(&self, h: &Host) {
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        for p in &h.pools {
            let l = PoolLabels {
                host: h.name.clone(),
                image: p.image.clone(),
                cpus: p.cpus,
                memory_mb: p.memory_mb,
            };
            self.pool_size.get_or_create(&l).set(i64::from(p.size));
            self.pool_ready.get_or_create(&l).set(i64::from(p.ready));
            self.pool_filling
                .get_or_create(&l)
                .set(i64::from(p.filling));
            self.pool_hits.get_or_create(&l).set(count(p.hits));
            self.pool_misses.get_or_create(&l).set(count(p.misses));
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

fn host_state(s: HostState) -> &'static str {
    match s {
        HostState::Unknown => "UNKNOWN",
        HostState::Online => "ONLINE",
        HostState::Offline => "OFFLINE",
    }
}

impl CallObserver for Metrics {
    fn finished(&self, method: &str, code: tonic::Code, _elapsed: Duration) {
        let labels = GrpcLabels {
            method: method.to_owned(),
            code: format!("{code:?}"),
        };
        self.agent_calls.get_or_create(&labels).inc();
        if code != tonic::Code::Ok {
            self.agent_call_errors.get_or_create(&labels).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_registry_encodes_valid_text() {
        let m = Metrics::new();
        m.sandbox_created(true, Duration::from_millis(400));
        m.command_finished("command", ExecOutcome::Ok, Some(Duration::from_millis(300)));
        m.command_finished("command", ExecOutcome::Denied, None);
        m.http_request("POST", "/v1/sandboxes", 201);
        m.finished("CreateSandbox", tonic::Code::Ok, Duration::ZERO);
        m.finished("Exec", tonic::Code::Unavailable, Duration::ZERO);
        let text = m.encode();
        let e = fluid_telemetry::exposition::parse(&text).expect(&text);
        assert_eq!(
            e.sum(
                "fluid_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))]
            ),
            1.0
        );
        assert_eq!(
            e.sum(
                "fluid_sandbox_create_duration_seconds_count",
                &[("outcome", "ok")]
            ),
            1.0
        );
        assert_eq!(e.sum("fluid_execs_total", &[("outcome", "ok")]), 1.0);
        assert_eq!(e.sum("fluid_execs_total", &[("outcome", "denied")]), 1.0);
        assert_eq!(e.sum("fluid_exec_duration_seconds_count", &[]), 1.0);
        assert_eq!(
            e.sum(
                "fluid_http_requests_total",
                &[("route", "/v1/sandboxes"), ("status", "201")]
            ),
            1.0
        );
        assert_eq!(e.sum("fluid_agent_calls_total", &[]), 2.0);
        assert_eq!(
            e.sum(
                "fluid_agent_call_errors_total",
                &[("method", "Exec"), ("code", "Unavailable")]
            ),
            1.0
        );
        assert_eq!(e.sum("fluid_agent_call_errors_total", &[]), 1.0);
    }
}
