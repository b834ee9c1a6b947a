//! `GET /v1/health`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fluid_client::types::HealthResponse;

use super::AppState;

/// Ok when the store answers; otherwise 503 naming the failing part. The 503 body is
/// both a health answer (`status`, `error`) and an error body (`error`, `code`, `details`).
#[utoipa::path(get, path = "/v1/health", tag = "health",
    responses((status = 200, body = HealthResponse), (status = 503, body = HealthResponse)))]
pub async fn health(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(HealthResponse {
            status: "ok".into(),
            error: None,
        })
        .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "health: store failing");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({
                    "status": "degraded",
                    "error": "store unavailable",
                    "code": 503,
                    "details": e.to_string(),
                })),
            )
                .into_response()
        }
    }
}
