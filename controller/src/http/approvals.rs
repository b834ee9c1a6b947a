//! `POST /v1/human/ask` (and `/api/v1/human/ask`), `GET /v1/approvals`,
//! `GET /v1/approvals/{id}`, `POST /v1/approvals/{id}/approve|reject`.

use axum::Json;
use axum::extract::State;
use fluid_client::governance::{
    ApprovalKind, ApprovalResponse, ApprovalStatus, AskRequest, AskResponse, DecideRequest,
    ListApprovalsResponse,
};
use fluid_client::types::ErrorBody;
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::error::ApiError;
use super::json::{ApiJson, OptionalJson};
use super::params::{ApiPath, ApiQuery};
use super::sandboxes::page_limit;
use crate::error::ServiceError;
use crate::governance::approvals::refusal_reason;
use crate::governance::auth::Caller;
use crate::store::ApprovalFilter;
use crate::support::ids::ApprovalId;

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// pending (default) approved rejected expired, or `all`.
    pub status: Option<String>,
    /// custom overcommit egress production_apply.
    pub kind: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

#[utoipa::path(post, path = "/v1/human/ask", tag = "approvals", request_body = AskRequest,
    responses((status = 200, description = "decided, or timed out (approved=false)", body = AskResponse),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn ask(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<AskRequest>,
) -> Result<Json<AskResponse>, ApiError> {
    let rec = state.approvals.ask(&caller, req).await?;
    // The request outlives this call: if the client goes away, it can still be
    // decided, and expires on its own.
    let id = rec.id.clone();
    let approvals = state.approvals.clone();
    let fin = tokio::spawn(async move { approvals.wait(&id).await })
        .await
        .map_err(|e| {
            ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        })??;
    Ok(Json(AskResponse {
        request_id: fin.id.clone(),
        approved: fin.status == ApprovalStatus::Approved,
        comment: fin.comment.clone(),
        approved_by: fin.decided_by.clone(),
        status: fin.status,
        reason: refusal_reason(&fin),
    }))
}

#[utoipa::path(get, path = "/v1/approvals", tag = "approvals", params(ListParams),
    responses((status = 200, body = ListApprovalsResponse), (status = 400, body = ErrorBody)))]
pub async fn list_approvals(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<ListApprovalsResponse>, ApiError> {
    let status = match p.status.as_deref() {
        None | Some("") => Some(ApprovalStatus::Pending),
        Some("all") => None,
        Some(s) => Some(ApprovalStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "status: {s:?} is not one of pending approved rejected expired all"
            ))
        })?),
    };
    let kind = match p.kind.as_deref() {
        None | Some("") => None,
        Some(k) => Some(ApprovalKind::parse(k).ok_or_else(|| {
            ApiError::bad_request(format!(
                "kind: {k:?} is not one of custom overcommit egress production_apply"
            ))
        })?),
    };
    let limit = page_limit(p.limit)?;
    let (rows, total) = state
        .approvals
        .list(
            &caller,
            ApprovalFilter {
                status,
                agent_id: None,
                kind,
                limit,
                offset: p.offset.unwrap_or(0),
            },
        )
        .await?;
    Ok(Json(ListApprovalsResponse {
        approvals: rows.iter().map(|r| r.to_api()).collect(),
        total,
    }))
}

#[utoipa::path(get, path = "/v1/approvals/{id}", tag = "approvals",
    params(("id" = String, Path, description = "APR-…")),
    responses((status = 200, body = ApprovalResponse), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_approval(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ApprovalResponse>, ApiError> {
    let id = ApprovalId::parse("id", &id).map_err(ServiceError::from)?;
    let rec = state.approvals.get_for(&caller, &id).await?;
    Ok(Json(ApprovalResponse {
        approval: rec.to_api(),
    }))
}

async fn decide(
    state: AppState,
    caller: Caller,
    id: String,
    req: DecideRequest,
    approve: bool,
) -> Result<Json<ApprovalResponse>, ApiError> {
    let rec = state
        .approvals
        .decide(&caller, &id, approve, req.comment)
        .await?;
    Ok(Json(ApprovalResponse {
        approval: rec.to_api(),
    }))
}

#[utoipa::path(post, path = "/v1/approvals/{id}/approve", tag = "approvals",
    params(("id" = String, Path, description = "APR-…")),
    request_body(content = DecideRequest, description = "optional"),
    responses((status = 200, body = ApprovalResponse), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "already decided or expired", body = ErrorBody)))]
pub async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    OptionalJson(req): OptionalJson<DecideRequest>,
) -> Result<Json<ApprovalResponse>, ApiError> {
    decide(state, caller, id, req, true).await
}

#[utoipa::path(post, path = "/v1/approvals/{id}/reject", tag = "approvals",
    params(("id" = String, Path, description = "APR-…")),
    request_body(content = DecideRequest, description = "optional"),
    responses((status = 200, body = ApprovalResponse), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "already decided or expired", body = ErrorBody)))]
pub async fn reject(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    OptionalJson(req): OptionalJson<DecideRequest>,
) -> Result<Json<ApprovalResponse>, ApiError> {
    decide(state, caller, id, req, false).await
}
