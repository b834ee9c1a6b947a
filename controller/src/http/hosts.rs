//! `GET /v1/hosts`, `POST /v1/hosts`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use fluid_client::types::{AddHostRequest, ErrorBody, HostResponse, ListHostsResponse};

use super::AppState;
use super::error::ApiError;
use super::json::ApiJson;
use crate::governance::auth::Caller;

#[utoipa::path(get, path = "/v1/hosts", tag = "hosts",
    responses((status = 200, body = ListHostsResponse), (status = 503, body = ErrorBody)))]
pub async fn list_hosts(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<ListHostsResponse>, ApiError> {
    Ok(Json(state.hosts.list(&caller).await?))
}

#[utoipa::path(post, path = "/v1/hosts", tag = "hosts", request_body = AddHostRequest,
    responses((status = 201, body = HostResponse), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn add_host(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<AddHostRequest>,
) -> Result<(StatusCode, Json<HostResponse>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(state.hosts.add(&caller, req).await?),
    ))
}
