//! `GET /v1/health`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fluid_client::types::{HealthHosts, HealthResponse, HostState};

use super::AppState;
use crate::store::StoreError;

/// The controller's version, as every health answer reports it.
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `status: ok` when the store answers, with the host-agents' reachability as the
/// heartbeat last recorded it (`hosts`: online, offline, unknown, total) and the
/// version. Offline agents are reported, never a 503: this answer is what a load
/// balancer or liveness probe acts on, and restarting or unrouting a controller cannot
/// bring a host back — it would only stop the API for the healthy hosts too. A failing
/// store is a 503 whose body is both a health answer (`status`, `store`, `version`)
/// and an error body (`error`, `code`, `details`).
#[utoipa::path(get, path = "/v1/health", tag = "health",
    responses((status = 200, body = HealthResponse), (status = 503, body = HealthResponse)))]
pub async fn health(State(state): State<AppState>) -> Response {
    match state.hosts.health().await {
        Ok(hosts) => {
            let count = |s: HostState| hosts.iter().filter(|h| h.state == s).count() as u64;
            Json(HealthResponse {
                status: "ok".into(),
                error: None,
                store: Some("ok".into()),
                hosts: Some(HealthHosts {
                    online: count(HostState::Online),
                    offline: count(HostState::Offline),
                    unknown: count(HostState::Unknown),
                    total: hosts.len() as u64,
                }),
                version: Some(VERSION.into()),
            })
            .into_response()
        }
        Err(e) => store_failing(&e),
    }
}

fn store_failing(e: &StoreError) -> Response {
    tracing::warn!(error = %e, "health: store failing");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({
            "status": "degraded",
            "error": "store unavailable",
            "code": 503,
            "details": e.to_string(),
            "store": e.to_string(),
            "version": VERSION,
        })),
    )
        .into_response()
}
