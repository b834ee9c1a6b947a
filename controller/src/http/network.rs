//! A sandbox's network egress: `GET|PUT /v1/sandboxes/{id}/network` (the allow-list)
//! and `POST /v1/sandboxes/{id}/network/requests` (ask a human for one more entry).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fluid_client::governance::ApprovalStatus;
use fluid_client::network::{
    EgressRequest, EgressResponse, NetworkPolicyResponse, PendingEgressResponse, PutNetworkRequest,
};
use fluid_client::types::ErrorBody;
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::error::ApiError;
use super::json::ApiJson;
use super::params::{ApiPath, ApiQuery};
use crate::error::parse_id;
use crate::governance::auth::Caller;
use crate::network::requests::RequestOutcome;

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RequestParams {
    /// Block until a human decides (true, the default), or answer 202 with the
    /// request at once (false).
    pub wait: Option<bool>,
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/network", tag = "network",
    params(("id" = String, Path, description = "SBX-…")),
    responses((status = 200, description = "the stored allow-list, with the agent's view when it answers", body = NetworkPolicyResponse),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_network(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<NetworkPolicyResponse>, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(NetworkPolicyResponse {
        network: state.egress.get(&caller, &id).await?,
    }))
}

#[utoipa::path(put, path = "/v1/sandboxes/{id}/network", tag = "network",
    params(("id" = String, Path, description = "SBX-…")), request_body = PutNetworkRequest,
    responses((status = 200, body = NetworkPolicyResponse),
        (status = 400, description = "a bad entry, or more than 256", body = ErrorBody),
        (status = 403, description = "only operators and admins", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "the sandbox is destroyed", body = ErrorBody),
        (status = 502, description = "the agent refused it (it stays stored)", body = ErrorBody),
        (status = 503, description = "stored, but the agent is unreachable: pushed when it is back", body = ErrorBody)))]
pub async fn put_network(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<PutNetworkRequest>,
) -> Result<Json<NetworkPolicyResponse>, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(NetworkPolicyResponse {
        network: state.egress.put(&caller, &id, &req.allow).await?,
    }))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/network/requests", tag = "network",
    params(("id" = String, Path, description = "SBX-…"), RequestParams), request_body = EgressRequest,
    responses((status = 200, description = "decided, or expired (approved=false)", body = EgressResponse),
        (status = 202, description = "waiting for a human (wait=false)", body = PendingEgressResponse),
        (status = 400, body = ErrorBody),
        (status = 403, description = "may not ask, or not for this sandbox", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "already allowed, or the sandbox is destroyed", body = ErrorBody)))]
pub async fn request_egress(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<RequestParams>,
    ApiJson(req): ApiJson<EgressRequest>,
) -> Result<Response, ApiError> {
    let wait = params.wait.unwrap_or(true);
    Ok(
        match state.egress_gate.request(&caller, &id, &req, wait).await? {
            RequestOutcome::Decided(r) => (StatusCode::OK, Json(r)).into_response(),
            RequestOutcome::Pending(approval) => (
                StatusCode::ACCEPTED,
                Json(PendingEgressResponse {
                    request_id: approval.id.clone(),
                    status: ApprovalStatus::Pending,
                    approval: approval.to_api(),
                }),
            )
                .into_response(),
        },
    )
}
