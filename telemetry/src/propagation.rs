//! W3C trace context (`traceparent`, `tracestate`) in HTTP/2 headers, which is where
//! gRPC metadata travels. The controller injects the context of its span around an
//! agent call; the agent's server span takes it as its parent, so one trace follows a
//! request from the REST handler into the agent's libvirt calls.
//!
//! Without an OpenTelemetry layer in the subscriber (no `otlp_endpoint`) spans have no
//! trace context: nothing is injected, and an extracted context is ignored.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The header that carries the trace and parent span ids.
pub const TRACEPARENT: &str = "traceparent";

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Writes `span`'s trace context into `headers` (nothing when it has none).
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
    }
}

/// The caller's trace context named in `headers` (an empty context when there is none
/// or it is malformed).
pub fn extract(headers: &HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// Makes `span` (not yet entered) a child of the caller's span named in `headers`;
/// without a valid `traceparent` it starts a trace of its own.
pub fn continue_trace(span: &tracing::Span, headers: &HeaderMap) {
    let cx = extract(headers);
    if cx.span().span_context().is_valid()
        && let Err(e) = span.set_parent(cx)
    {
        tracing::debug!(error = %e, "could not continue the caller's trace");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt as _;

    fn ids(span: &tracing::Span) -> (String, String) {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        (sc.trace_id().to_string(), sc.span_id().to_string())
    }

    #[test]
    fn traceparent_round_trip() {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            // The controller's side: a span around the call, injected.
            let client = tracing::info_span!("client");
            let mut headers = HeaderMap::new();
            inject(&client, &mut headers);
            let (trace_id, span_id) = ids(&client);
            let tp = headers
                .get(TRACEPARENT)
                .expect("traceparent injected")
                .to_str()
                .expect("ascii");
            assert_eq!(tp, format!("00-{trace_id}-{span_id}-01"));
            assert_eq!(trace_id.len(), 32);
            assert_eq!(span_id.len(), 16);

            // The agent's side: its server span continues that trace.
            let server = tracing::info_span!("server");
            continue_trace(&server, &headers);
            let (server_trace, server_span) = ids(&server);
            assert_eq!(server_trace, trace_id, "one trace across the call");
            assert_ne!(server_span, span_id, "a span of its own");
            // A child of the server span (the libvirt call) stays in that trace.
            let child = server.in_scope(|| tracing::info_span!("libvirt"));
            assert_eq!(ids(&child).0, trace_id);

            // No header, or junk: a trace of its own.
            for junk in [None, Some("00-zz-yy-01"), Some("garbage")] {
                let mut h = HeaderMap::new();
                if let Some(j) = junk {
                    h.insert(TRACEPARENT, HeaderValue::from_static(j));
                }
                let lone = tracing::info_span!("lone");
                continue_trace(&lone, &h);
                assert_ne!(ids(&lone).0, trace_id, "{junk:?}");
            }
        });
    }

    #[test]
    fn without_an_otel_layer_nothing_is_injected() {
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("plain");
            let mut headers = HeaderMap::new();
            inject(&span, &mut headers);
            assert!(headers.is_empty());
        });
    }
}
