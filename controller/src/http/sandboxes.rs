//! The sandbox routes: thin handlers that parse, then call the sandbox service with
//! the caller (the service checks what the caller may do).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fluid_client::governance::{ApprovalStatus, PendingCreateResponse};
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
use crate::error::parse_id;
use crate::governance::auth::Caller;
use crate::sandboxes::overcommit::CreateOutcome;
use crate::store::SandboxFilter;
use crate::support::ids::LegacyJobId;

/// A page size from a `limit` parameter ([`crate::error::page_limit`]).
pub fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    Ok(crate::error::page_limit(limit)?)
}

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
pub struct CreateParams {
    /// When the create waits for an over-commit approval: block until it is decided
    /// (true, the default), or answer 202 with the request at once (false).
    pub wait: Option<bool>,
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
        let limit = page_limit(self.limit)?;
        let nonempty = |o: Option<String>| o.filter(|s| !s.is_empty());
        Ok(SandboxFilter {
            agent_id: nonempty(self.agent_id),
            legacy_job_id: nonempty(self.job_id).map(LegacyJobId::from),
            image: nonempty(self.base_image),
            state,
            name: nonempty(self.vm_name),
            limit,
            offset: self.offset.unwrap_or(0),
        })
    }
}

#[utoipa::path(post, path = "/v1/sandboxes", tag = "sandboxes", request_body = CreateSandboxRequest,
    params(CreateParams),
    responses((status = 201, body = CreateSandboxResponse),
        (status = 202, description = "waiting for an over-commit approval (wait=false)", body = PendingCreateResponse),
        (status = 403, description = "the token may not create, or not for this agent_id", body = ErrorBody),
        (status = 400, description = "invalid request or unknown image", body = ErrorBody),
        (status = 409, description = "duplicate vm_name or no host has room", body = ErrorBody),
        (status = 502, description = "the agent failed", body = ErrorBody),
        (status = 503, description = "the agent is unreachable", body = ErrorBody)))]
pub async fn create_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<CreateParams>,
    ApiJson(req): ApiJson<CreateSandboxRequest>,
) -> Result<Response, ApiError> {
    let wait = params.wait.unwrap_or(true);
    Ok(match state.sandboxes.create(&caller, req, wait).await? {
        CreateOutcome::Created(r) => (StatusCode::CREATED, Json(r)).into_response(),
        CreateOutcome::Pending {
            approval,
            sandbox_id,
        } => (
            StatusCode::ACCEPTED,
            Json(PendingCreateResponse {
                request_id: approval.id.clone(),
                sandbox_id,
                status: ApprovalStatus::Pending,
                approval: approval.to_api(),
            }),
        )
            .into_response(),
    })
}

#[utoipa::path(get, path = "/v1/sandboxes", tag = "sandboxes", params(ListParams),
    responses((status = 200, body = ListSandboxesResponse), (status = 400, body = ErrorBody)))]
pub async fn list_sandboxes(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<ListSandboxesResponse>, ApiError> {
    let filter = params.into_filter()?;
    Ok(Json(state.sandboxes.list(&caller, filter).await?))
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "SBX-…"), GetParams),
    responses((status = 200, body = GetSandboxResponse), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn get_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<GetParams>,
) -> Result<Json<GetSandboxResponse>, ApiError> {
    let id = parse_id(&id)?;
    let include = params.include_commands.unwrap_or(false);
    Ok(Json(state.sandboxes.get(&caller, &id, include).await?))
}

#[utoipa::path(delete, path = "/v1/sandboxes/{id}", tag = "sandboxes",
    params(("id" = String, Path, description = "SBX-…")),
    responses((status = 200, body = DestroySandboxResponse), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 502, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn destroy_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<DestroySandboxResponse>, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(state.sandboxes.destroy(&caller, &id).await?))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/start", tag = "sandboxes",
    params(("id" = String, Path, description = "SBX-…")),
    request_body(content = StartSandboxRequest, description = "optional"),
    responses((status = 200, body = StartSandboxResponse), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn start_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    OptionalJson(req): OptionalJson<StartSandboxRequest>,
) -> Result<Json<StartSandboxResponse>, ApiError> {
    let id = parse_id(&id)?;
    let wait = req.wait_for_ip.unwrap_or(false);
    let started = state.sandboxes.start(&caller, &id, wait).await?;
    // A revocation made while the sandbox was stopped never reached its disk: write
    // them again once its sshd is up (in the background).
    if let Err(e) = state
        .access
        .reapply_revocations(&id, std::time::Duration::ZERO)
        .await
    {
        tracing::debug!(sandbox = %id, error = %e, "revocations after a start");
    }
    Ok(Json(started))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/stop", tag = "sandboxes",
    params(("id" = String, Path, description = "SBX-…")),
    responses((status = 200, body = StopSandboxResponse), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn stop_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<StopSandboxResponse>, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(state.sandboxes.stop(&caller, &id).await?))
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/ip", tag = "sandboxes",
    params(("id" = String, Path, description = "SBX-…")),
    responses((status = 200, body = SandboxIpResponse), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn sandbox_ip(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SandboxIpResponse>, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(state.sandboxes.ip(&caller, &id).await?))
}
