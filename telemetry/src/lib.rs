//! Telemetry shared by `fluid-controller` and `fluid-agent`.
//!
//! - [`init`]: the process's tracing subscriber: log lines on stderr (`text` or `json`,
//!   level from `RUST_LOG`, default `info`) and, when an OTLP endpoint is configured,
//!   every span exported over OTLP/gRPC by a batch exporter (flushed by
//!   [`Telemetry::shutdown`]).
//! - [`propagation`]: W3C `traceparent` in and out of HTTP/2 headers (gRPC metadata).
//! - [`grpc`]: a tower layer for tonic clients and servers: one span per call (the
//!   client's injects its context, the server's continues the caller's trace) and a
//!   callback with each call's method, gRPC code and duration (for metrics).
//! - [`exposition`]: a strict reader of the Prometheus text format (for tests of the
//!   `/metrics` endpoints).
//!
//! Prometheus metrics are each binary's own (`metrics.rs`); this crate only reports
//! what a gRPC call did.

pub mod exposition;
pub mod grpc;
pub mod propagation;

use std::fmt;
use std::str::FromStr;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// How log lines are written (to stderr; the journal under systemd).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the fields of every enclosing span (so a line
    /// inside a sandbox operation carries its `sandbox_id`).
    Json,
}

impl LogFormat {
    /// `text` or `json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("{other:?} is not a log format (text or json)")),
        }
    }
}

/// Checks an `otlp_endpoint`: empty (off) or `http://host:port` of an OTLP/gRPC
/// receiver. TLS is not offered: the exporter would need the receiver's CA; run a
/// local collector and let it forward over TLS.
pub fn check_otlp_endpoint(endpoint: &str) -> Result<(), String> {
    let e = endpoint.trim();
    if e.is_empty() {
        return Ok(());
    }
    let Some(rest) = e.strip_prefix("http://") else {
        return Err(format!(
            "{e:?} must be http://host:port (plain OTLP/gRPC; for TLS run a local collector)"
        ));
    };
    let authority = rest.trim_end_matches('/');
    let ok = authority.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty()
            && !host.contains('/')
            && !host.chars().any(char::is_whitespace)
            && port.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if !ok {
        return Err(format!("{e:?} must be http://host:port"));
    }
    http::Uri::try_from(e).map_err(|err| format!("{e:?}: {err}"))?;
    Ok(())
}

/// What [`init`] sets up.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `service.name` of exported spans (`fluid-controller`, `fluid-agent`).
    pub service_name: &'static str,
    /// `service.instance.id` (the agent's host name), when there is one.
    pub instance: Option<String>,
    pub log_format: LogFormat,
    /// OTLP/gRPC receiver; `None` or empty: spans are not exported.
    pub otlp_endpoint: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("otlp_endpoint: {0}")]
    Endpoint(String),
    #[error("building the OTLP exporter: {0}")]
    Exporter(String),
    #[error("installing the tracing subscriber: {0}")]
    Install(String),
}

/// The installed telemetry; [`Telemetry::shutdown`] flushes the spans not yet exported.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is still buffered and stops the exporter. Call it while the tokio
    /// runtime the exporter was built on still runs (its channel lives there).
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            tracing::warn!(error = %e, "flushing the OTLP exporter");
        }
    }
}

/// Targets whose spans are never exported: the exporter's own transport (exporting
/// them would feed itself) and low-level libraries.
fn export_filter() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("h2", LevelFilter::OFF)
        .with_target("hyper", LevelFilter::OFF)
        .with_target("hyper_util", LevelFilter::OFF)
        .with_target("tonic", LevelFilter::OFF)
        .with_target("tower", LevelFilter::OFF)
        .with_target("opentelemetry", LevelFilter::OFF)
        .with_target("opentelemetry_sdk", LevelFilter::OFF)
        .with_target("opentelemetry_otlp", LevelFilter::OFF)
}

fn provider(s: &Settings, endpoint: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let mut resource = Resource::builder()
        .with_service_name(s.service_name)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if let Some(i) = &s.instance {
        resource = resource.with_attribute(KeyValue::new("service.instance.id", i.clone()));
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// Whether text logs carry ANSI colours: only on a terminal, and never when `NO_COLOR`
/// is set to anything but the empty string (no-color.org). A journal or a log file gets
/// plain text.
fn colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the global tracing subscriber. With an OTLP endpoint it must be called
/// inside a tokio runtime (the exporter's gRPC channel runs on it); spans are batched
/// and sent from the SDK's own thread.
pub fn init(s: &Settings) -> Result<Telemetry, TelemetryError> {
    let endpoint = s
        .otlp_endpoint
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty());
    if let Some(e) = endpoint {
        check_otlp_endpoint(e).map_err(TelemetryError::Endpoint)?;
    }
    let provider = endpoint.map(|e| provider(s, e)).transpose()?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = match s.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(colour(
                std::io::IsTerminal::is_terminal(&std::io::stderr()),
                std::env::var_os("NO_COLOR"),
            ))
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(s.service_name))
            .with_filter(export_filter())
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| TelemetryError::Install(e.to_string()))?;
    if let Some(e) = endpoint {
        tracing::info!(
            endpoint = e,
            service = s.service_name,
            "exporting spans over OTLP/gRPC"
        );
    }
    Ok(Telemetry { provider })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(
            !colour(false, None),
            "a pipe or the journal gets plain text"
        );
        assert!(!colour(false, Some("1".into())));
    }

    #[test]
    fn log_formats_parse() {
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert_eq!(" Text ".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert!("yaml".parse::<LogFormat>().is_err());
        assert_eq!(LogFormat::default().to_string(), "text");
    }

    #[test]
    fn otlp_endpoints_are_checked() {
        for ok in [
            "",
            "  ",
            "http://127.0.0.1:4317",
            "http://collector.lab:4317/",
            "http://[::1]:4317",
        ] {
            assert!(check_otlp_endpoint(ok).is_ok(), "{ok}");
        }
        for bad in [
            "127.0.0.1:4317",
            "https://collector:4317",
            "http://collector",
            "http://:4317",
            "http://collector:0",
            "http://collector:4317/v1/traces",
            "http://a b:4317",
        ] {
            assert!(check_otlp_endpoint(bad).is_err(), "{bad}");
        }
    }
}
