//! The sandbox routes: thin handlers that parse, then call the sandbox service.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use fluid_client::types::{
    CreateSandboxRequest, CreateSandboxResponse, DestroySandboxResponse, ErrorBody,
    GetSandboxResponse, ListSandboxesResponse, SandboxIpResponse, SandboxState,
    StartSandboxRequest, StartSandboxResponse, StopSandboxResponse,
};
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::error::ApiError;
use super::json::{ApiJson, OptionalJson};
use super::params::{ApiPath, ApiQuery};
use crate::sandboxes::parse_id;
use crate::store::SandboxFilter;

/// Page size when `limit` is not given.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page.
pub const MAX_LIMIT: u32 = 1000;

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    pub agent_id: Option<String>,
    pub job_id: Option<String>,
    pub base_image: Option<String>,
    /// One of CREATED STARTING RUNNING STOPPED DESTROYED ERROR.
    pub state: Option<String>,
    pub vm_name: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GetParams {
    pub include_commands: Option<bool>,
}

impl ListParams {
    fn into_filter(self) -> Result<SandboxFilter, ApiError> {
        let state = match self.state.as_deref() {
            None | Some("") => None,
            Some(s) => Some(SandboxState::parse(s).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "state: {s:?} is not one of CREATED STARTING RUNNING STOPPED DESTROYED ERROR"
                ))
            })?),
        };
        let limit = match self.limit {
            None => DEFAULT_LIMIT,
            Some(0) => return Err(ApiError::bad_request("limit: must be positive")),
            Some(n) => n.min(MAX_LIMIT),
        };
        let nonempty = |o: Option<String>| o.filter(|s| !s.is_empty());
        Ok(SandboxFilter {
            agent_id: nonempty(self.agent_id),
            job_id: nonempty(self.job_id),
            base_image: nonempty(self.base_image),
            state,
            sandbox_name: nonempty(self.vm_name),
            limit,
            offset: self.offset.unwrap_or(0),
        })
    }
}

#[utoipa::path(post, path = "/v1/sandboxes", tag = "sandboxes", request_body = CreateSandboxRequest,
    responses((status = 201, body = CreateSandboxResponse),
        (status = 400, description = "invalid request or unknown image", body = ErrorBody),
        (status = 409, description = "duplicate vm_name or no host has room", body = ErrorBody),
        (status = 502, description = "the agent failed", body = ErrorBody),
        (status = 503, description = "the agent is unreachable", body = ErrorBody)))]
pub async fn create_sandbox(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateSandboxRequest>,
) -> Result<(StatusCode, Json<CreateSandboxResponse>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(state.sandboxes.create(req).await?),
    ))
}

#[utoipa::path(get, path = "/v1/sandboxes", tag = "sandboxes", params(ListParams),
    responses((status = 200, body = ListSandboxesResponse), (status = 400, body = ErrorBody)))]
pub async fn list_sandboxes(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<ListSandboxesResponse>, ApiError> {
    let filter = params.into_filter()?;
    Ok(Json(state.sandboxes.list(&filter).await?))
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "SBX-…"), GetParams),
    responses((status = 200, body = GetSandboxResponse), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn get_sandbox(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<GetParams>,
) -> Result<Json<GetSandboxResponse>, ApiError> {
    let id = parse_id(&id)?;
    let include = params.include_commands.unwrap_or(false);
    Ok(Json(state.sandboxes.get(&id, include).await?))
}

#[utoipa::path(delete, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "SBX-…")),
    responses((status = 200, body = DestroySandboxResponse), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 502, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn destroy_sandbox(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DestroySandboxResponse>, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(state.sandboxes.destroy(&id).await?))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/start", tag = "sandboxes",
    params(("id" = String, Path, description = "SBX-…")),
    request_body(content = StartSandboxRequest, description = "optional"),
    responses((status = 200, body = StartSandboxResponse), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn start_sandbox(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    OptionalJson(req): OptionalJson<StartSandboxRequest>,
) -> Result<Json<StartSandboxResponse>, ApiError> {
    let id = parse_id(&id)?;
    let wait = req.wait_for_ip.unwrap_or(false);
    Ok(Json(state.sandboxes.start(&id, wait).await?))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/stop", tag = "sandboxes",
    params(("id" = String, Path, description = "SBX-…")),
    responses((status = 200, body = StopSandboxResponse), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn stop_sandbox(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<StopSandboxResponse>, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(state.sandboxes.stop(&id).await?))
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/ip", tag = "sandboxes",
    params(("id" = String, Path, description = "SBX-…")),
    responses((status = 200, body = SandboxIpResponse), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn sandbox_ip(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SandboxIpResponse>, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(state.sandboxes.ip(&id).await?))
}
