//! `GET /metrics` (OpenMetrics text for Prometheus), the middleware that counts REST
//! requests, and the span every request runs in.
//!
//! `/metrics` needs the `ReadFleet` permission (admin, operator, readonly; an agent
//! token gets 403) unless `[metrics] public = true` (not the default: the metrics name
//! hosts and count what every tenant does). A store that fails while the fleet gauges are read
//! does not fail the scrape: the counters still answer (that is when they matter), the
//! gauges keep their last values and `fluid_metrics_scrape_errors_total` goes up.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::field::Empty;

use super::AppState;
use super::error::ApiError;
use crate::governance::auth::Caller;

/// `GET /metrics` ([`crate::fleet::hosts::HostService::scrape`]).
pub async fn metrics(State(state): State<AppState>, req: Request) -> Response {
    let caller = if state.metrics_public {
        None
    } else {
        let Some(caller) = req.extensions().get::<Caller>() else {
            return ApiError::new(axum::http::StatusCode::UNAUTHORIZED, "missing bearer token")
                .into_response();
        };
        Some(caller)
    };
    match state.hosts.scrape(caller, &state.metrics).await {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// A method as a label: the standard ones, anything else `other`.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The route template a request matched (`/v1/sandboxes/{id}`), never its raw path.
fn route_of(req: &axum::http::Request<axum::body::Body>) -> &str {
    req.extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
}

/// Counts each answered request under its method, route template and status.
pub async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = method_label(req.method());
    let route = route_of(&req).to_owned();
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    tracing::Span::current().record("http.response.status_code", status);
    state.metrics.http_request(method, &route, status);
    resp
}

/// The span a REST request runs in (`TraceLayer`, inside routing so the route is
/// known when the span is made): `POST /v1/sandboxes`, at INFO, so it is exported and
/// every span below it (services, agent calls) joins its trace. A caller's
/// `traceparent` is continued. Probes and scrapes (`/v1/health`, `/metrics`) get none:
/// they would bury the requests in a trace backend.
pub fn request_span(req: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let route = route_of(req);
    if route == "/v1/health" || route == super::auth::METRICS_PATH {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format!("{} {route}", method_label(req.method())),
        otel.kind = "server",
        http.request.method = %req.method(),
        http.route = route,
        url.path = %req.uri().path(),
        http.response.status_code = Empty,
    );
    fluid_telemetry::propagation::continue_trace(&span, req.headers());
    span
}
