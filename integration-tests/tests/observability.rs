//! Acceptance of metrics and traces on real processes (one VM under TCG):
//! - the controller's and the agent's `/metrics` parse with a strict text-format
//!   parser, and their create and exec counters move after one create and one command;
//! - with `otlp_endpoint` set on both, a small OTLP/gRPC receiver in this process gets
//!   spans from both services, and the create request is ONE trace: the REST span, the
//!   controller's agent call, the agent's server span and its libvirt calls;
//! - with `log_format = "json"`, both write JSON log lines, and those logged inside a
//!   sandbox operation carry its `sandbox_id`.
//!
//! One stack, its one create and one command are shared by the tests of this file
//! (`fluid_prereq::shared`, torn down at exit); each test checks one of the three.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use fluid_client::types::{CreateSandboxRequest, HostState, RunCommandRequest};
use fluid_prereq::shared::{Shared, Teardown};
use fluid_telemetry::exposition::{Exposition, parse};
use integration_tests::stack::wait_ssh_banner;
use integration_tests::{AgentOptions, Stack, StoreKind};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;

/// One span as received.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    trace: String,
    id: String,
    parent: String,
}

/// The OTLP/gRPC trace receiver: keeps every span it is sent.
#[derive(Debug, Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Got>>>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = Vec::new();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                got.push(Got {
                    service: service.clone(),
                    name: span.name,
                    trace: hex(&span.trace_id),
                    id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                });
            }
        }
        self.spans
            .lock()
            .map_err(|_| tonic::Status::internal("poisoned"))?
            .extend(got);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    /// Serves on 127.0.0.1 (a free port); returns the endpoint for `otlp_endpoint`.
    async fn start(&self) -> Result<String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let svc = TraceServiceServer::new(self.clone());
        tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(incoming)
                .await
            {
                eprintln!("OTLP receiver: {e}");
            }
        });
        Ok(format!("http://{addr}"))
    }

    fn spans(&self) -> Vec<Got> {
        self.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Scrapes `url`, with `token` when given (the controller's `/metrics` needs one with
/// `ReadFleet` by default; the agent's, on loopback, none).
async fn scrape(url: &str, token: Option<&str>) -> Result<Exposition> {
    let mut req = reqwest::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.with_context(|| format!("GET {url}"))?;
    ensure!(resp.status().is_success(), "GET {url}: {}", resp.status());
    let text = resp.text().await?;
    parse(&text).map_err(|e| anyhow::anyhow!("{url}: {e}"))
}

/// How much `sample{labels}` moved between two scrapes.
fn moved(before: &Exposition, after: &Exposition, sample: &str, labels: &[(&str, &str)]) -> f64 {
    after.sum(sample, labels) - before.sum(sample, labels)
}

/// The spans of the trace whose REST span is `POST /v1/sandboxes`, once both services'
/// parts of it (down to the agent's libvirt define and start, or restore) have arrived.
fn create_trace(spans: &[Got]) -> Option<Vec<Got>> {
    let root = spans
        .iter()
        .find(|s| s.service == "fluid-controller" && s.name == "POST /v1/sandboxes")?;
    let trace: Vec<Got> = spans
        .iter()
        .filter(|s| s.trace == root.trace)
        .cloned()
        .collect();
    let has = |service: &str, name: &str| {
        trace
            .iter()
            .any(|s| s.service == service && s.name.starts_with(name))
    };
    // The domain starts by a cold boot or by a restore from a memory template.
    (has("fluid-agent", "fluid.agent.v1.HostAgent/CreateSandbox")
        && has("fluid-agent", "libvirt define")
        && (has("fluid-agent", "libvirt start") || has("fluid-agent", "libvirt restore")))
    .then_some(trace)
}

/// Whether a JSON log line was written inside a span of sandbox `id`.
fn carries(line: &serde_json::Value, id: &str) -> bool {
    line["spans"]
        .as_array()
        .is_some_and(|spans| spans.iter().any(|s| s["sandbox_id"] == id))
}

/// The chain of span names from `span` up to the trace's root.
fn ancestry(trace: &[Got], span: &Got) -> Vec<String> {
    let by_id: BTreeMap<&str, &Got> = trace.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut out = vec![format!("{}: {}", span.service, span.name)];
    let mut cur = span;
    while let Some(p) = by_id.get(cur.parent.as_str()) {
        out.push(format!("{}: {}", p.service, p.name));
        cur = p;
    }
    out
}

/// The shared stack, with what was scraped before its one create and one command.
struct Observed {
    stack: Stack,
    receiver: Receiver,
    id: String,
    ctl_metrics: String,
    agent_metrics: String,
    ctl_before: Exposition,
    agent_before: Exposition,
}

impl Teardown for Observed {
    async fn teardown(self) {
        if let Err(e) = self.stack.client.destroy_sandbox(&self.id).await {
            eprintln!("teardown: destroying {}: {e}", self.id);
        }
        drop(self.stack);
        println!("teardown: the shared stack is gone");
    }
}

static STACK: Shared<Observed> = Shared::new();

async fn setup() -> Result<Observed> {
    let receiver = Receiver::default();
    let endpoint = receiver.start().await?;
    let otlp = format!("otlp_endpoint = \"{endpoint}\"\nlog_format = \"json\"\n");
    // The create waits for the lease: 300 s, not the default 180, on a loaded host.
    let mut stack = Stack::start_configured(
        StoreKind::Sqlite,
        vec![AgentOptions::new("a").config(&otlp)],
        &format!("{otlp}wait_for_ip_timeout_secs = 300\n"),
        "",
    )
    .await?;
    stack
        .wait_host("a", HostState::Online, Duration::from_secs(30))
        .await?;
    let ctl_metrics = format!("{}/metrics", stack.api_url);
    let agent_metrics = stack.agent("a")?.metrics_url.clone();
    let ctl_before = scrape(&ctl_metrics, Some(&stack.admin_token)).await?;
    let agent_before = scrape(&agent_metrics, None).await?;

    // One create (waiting for the IP) and one command.
    let t0 = Instant::now();
    let created = stack
        .client
        .create_sandbox(&CreateSandboxRequest {
            source_vm_name: "debian-12".into(),
            agent_id: "observability".into(),
            vm_name: Some(format!("{}-obs", stack.prefix)),
            cpu: Some(1),
            memory_mb: Some(512),
            wait_for_ip: Some(true),
            ..Default::default()
        })
        .await?;
    let id = created.sandbox.id.clone();
    let ip = created.ip_address.context("create answered no IP")?;
    println!("create → IP {ip} in {:.1}s", t0.elapsed().as_secs_f64());
    wait_ssh_banner(&format!("{ip}:22"), Duration::from_secs(180)).await?;
    let cmd = stack
        .client
        .run_command(
            &id,
            &RunCommandRequest {
                command: "echo observability".into(),
                ..Default::default()
            },
        )
        .await?
        .command;
    ensure!(cmd.exit_code == 0, "command: {cmd:?}");
    Ok(Observed {
        stack,
        receiver,
        id,
        ctl_metrics,
        agent_metrics,
        ctl_before,
        agent_before,
    })
}

#[test]
fn metrics_of_both_services_parse_and_count_the_create_and_the_command_once() -> Result<()> {
    STACK.run(setup, async |o| {
        let ctl = scrape(&o.ctl_metrics, Some(&o.stack.admin_token)).await?;
        let agent = scrape(&o.agent_metrics, None).await?;
        let (cb, ab) = (&o.ctl_before, &o.agent_before);
        // One create and one command happened since the first scrape: each counter
        // moved by exactly one (a double count fails as surely as a missing one).
        let figures = [
            (
                "controller fluid_sandbox_create_duration_seconds_count{outcome=ok}",
                moved(
                    cb,
                    &ctl,
                    "fluid_sandbox_create_duration_seconds_count",
                    &[("outcome", "ok")],
                ),
            ),
            (
                "controller fluid_execs_total{kind=command,outcome=ok}",
                moved(
                    cb,
                    &ctl,
                    "fluid_execs_total",
                    &[("kind", "command"), ("outcome", "ok")],
                ),
            ),
            (
                "controller fluid_http_requests_total{POST /v1/sandboxes 201}",
                moved(
                    cb,
                    &ctl,
                    "fluid_http_requests_total",
                    &[
                        ("method", "POST"),
                        ("route", "/v1/sandboxes"),
                        ("status", "201"),
                    ],
                ),
            ),
            (
                "controller fluid_agent_calls_total{CreateSandbox Ok}",
                moved(
                    cb,
                    &ctl,
                    "fluid_agent_calls_total",
                    &[("method", "CreateSandbox"), ("code", "Ok")],
                ),
            ),
            (
                "agent fluid_agent_operations_total{create ok}",
                moved(
                    ab,
                    &agent,
                    "fluid_agent_operations_total",
                    &[("op", "create"), ("outcome", "ok")],
                ),
            ),
            (
                "agent fluid_agent_operations_total{exec ok}",
                moved(
                    ab,
                    &agent,
                    "fluid_agent_operations_total",
                    &[("op", "exec"), ("outcome", "ok")],
                ),
            ),
            (
                "agent fluid_agent_grpc_requests_total{CreateSandbox Ok}",
                moved(
                    ab,
                    &agent,
                    "fluid_agent_grpc_requests_total",
                    &[("method", "CreateSandbox"), ("code", "Ok")],
                ),
            ),
            (
                "agent fluid_agent_libvirt_calls_total{define}",
                moved(
                    ab,
                    &agent,
                    "fluid_agent_libvirt_calls_total",
                    &[("op", "define")],
                ),
            ),
        ];
        let mut wrong = Vec::new();
        for (what, delta) in &figures {
            println!("moved by {delta}: {what}");
            if *delta != 1.0 {
                wrong.push(format!("{what} moved by {delta}"));
            }
        }
        ensure!(wrong.is_empty(), "not counted once: {wrong:?}");
        let running = ctl.sum("fluid_sandboxes", &[("state", "RUNNING")]);
        let agent_running = agent.sum("fluid_agent_sandboxes", &[("state", "RUNNING")]);
        let exec_p = ctl.sum("fluid_exec_duration_seconds_sum", &[("kind", "command")]);
        println!(
            "fluid_sandboxes{{RUNNING}} = {running}, fluid_agent_sandboxes{{RUNNING}} = {agent_running}, \
             exec seconds (sum) = {exec_p:.3}, controller families {}, agent families {}",
            ctl.families.len(),
            agent.families.len()
        );
        ensure!(
            running == 1.0 && agent_running == 1.0,
            "RUNNING: controller {running}, agent {agent_running}"
        );
        Ok(())
    })
}

#[test]
fn one_trace_follows_the_create_from_the_rest_call_to_libvirt() -> Result<()> {
    STACK.run(setup, async |o| {
        // Spans are exported in batches: poll for the whole trace (45 s at most).
        let deadline = Instant::now() + Duration::from_secs(45);
        let trace = loop {
            if let Some(t) = create_trace(&o.receiver.spans()) {
                break t;
            }
            if Instant::now() > deadline {
                let names: Vec<String> = o
                    .receiver
                    .spans()
                    .iter()
                    .map(|s| format!("{} {} {}", s.service, s.trace, s.name))
                    .collect();
                bail!(
                    "no complete create trace within 45 s; received:\n{}",
                    names.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let services: BTreeMap<&str, usize> = trace.iter().fold(BTreeMap::new(), |mut m, s| {
            *m.entry(s.service.as_str()).or_default() += 1;
            m
        });
        let mut names: Vec<String> = trace
            .iter()
            .map(|s| format!("{}: {}", s.service, s.name))
            .collect();
        names.sort();
        println!(
            "create trace {}: {} spans {services:?}\n  {}",
            trace[0].trace,
            trace.len(),
            names.join("\n  ")
        );
        let define = trace
            .iter()
            .find(|s| s.name == "libvirt define")
            .context("libvirt define")?;
        let chain = ancestry(&trace, define);
        println!("  {}", chain.join("\n  ← "));
        // Parent links are whole: libvirt → agent operation → agent server span →
        // controller's agent call → … → the REST span.
        ensure!(
            chain.last().map(String::as_str) == Some("fluid-controller: POST /v1/sandboxes"),
            "the libvirt span does not descend from the REST span: {chain:?}"
        );
        for want in [
            "fluid-agent: sandbox.create",
            "fluid-agent: fluid.agent.v1.HostAgent/CreateSandbox",
            "fluid-controller: fluid.agent.v1.HostAgent/CreateSandbox",
            "fluid-controller: sandbox.create",
        ] {
            ensure!(chain.iter().any(|c| c == want), "{want} missing: {chain:?}");
        }
        Ok(())
    })
}

#[test]
fn json_log_lines_of_a_sandbox_operation_carry_its_id() -> Result<()> {
    STACK.run(setup, async |o| {
        for (who, log) in [
            ("controller", o.stack.controller.log_tail(2000)),
            ("agent", o.stack.agent("a")?.service.log_tail(2000)),
        ] {
            let lines: Vec<serde_json::Value> = log
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            ensure!(
                lines.len() * 10 >= log.lines().count() * 9,
                "{who}: not JSON lines:\n{log}"
            );
            let tagged = lines.iter().filter(|l| carries(l, &o.id)).count();
            let example = lines
                .iter()
                .find(|l| carries(l, &o.id))
                .map(|l| l.to_string())
                .unwrap_or_default();
            println!(
                "{who}: {} JSON lines, {tagged} carry sandbox_id {}; e.g. {example}",
                lines.len(),
                o.id
            );
            ensure!(tagged > 0, "{who}: no log line carries the sandbox id");
        }
        Ok(())
    })
}
