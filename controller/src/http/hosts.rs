//! `GET /v1/hosts`, `POST /v1/hosts`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use fluid_client::types::{AddHostRequest, ErrorBody, HostResponse, ListHostsResponse};

use super::AppState;
use super::error::ApiError;
use super::json::ApiJson;
use super::params::{ApiQuery, PageParams};
use crate::governance::auth::Caller;

#[utoipa::path(get, path = "/v1/hosts", tag = "hosts", params(PageParams),
    responses((status = 200, body = ListHostsResponse), (status = 400, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn list_hosts(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Json<ListHostsResponse>, ApiError> {
    let all = state.hosts.list(&caller).await?;
    let (hosts, total) = page.page(all.hosts)?;
    Ok(Json(ListHostsResponse {
        hosts,
        total: Some(total),
    }))
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
