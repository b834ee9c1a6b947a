//! `GET /v1/whoami`, API tokens (`/v1/tokens`, admin), a sandbox's mode
//! (`/v1/sandboxes/{id}/mode`) and the audit trail (`GET /v1/audit`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use fluid_client::governance::{
    CreateTokenRequest, CreateTokenResponse, ListAuditResponse, ListTokensResponse, ModeResponse,
    RolesResponse, SandboxMode, SetModeRequest, TokenInfo, WhoAmI,
};
use fluid_client::types::ErrorBody;
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::error::ApiError;
use super::json::ApiJson;
use super::params::{ApiPath, ApiQuery, PageParams};
use super::sandboxes::page_limit;
use crate::error::parse_id;
use crate::governance::auth::Caller;
use crate::store::AuditFilter;

#[utoipa::path(get, path = "/v1/whoami", tag = "auth",
    responses((status = 200, body = WhoAmI), (status = 401, body = ErrorBody)))]
pub async fn whoami(caller: Caller) -> Json<WhoAmI> {
    Json(caller.whoami())
}

/// The role table the controller enforces: each role's permissions (with their
/// scope) and limits, the Ansible ones included. Any authenticated caller.
#[utoipa::path(get, path = "/v1/roles", tag = "auth",
    responses((status = 200, body = RolesResponse), (status = 401, body = ErrorBody)))]
pub async fn roles(caller: Caller) -> Result<Json<RolesResponse>, ApiError> {
    Ok(Json(RolesResponse {
        roles: crate::governance::auth::role_table_for(&caller)?,
    }))
}

#[utoipa::path(get, path = "/v1/tokens", tag = "auth", params(PageParams),
    responses((status = 200, body = ListTokensResponse), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn list_tokens(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<Json<ListTokensResponse>, ApiError> {
    let (tokens, total) = page.page(state.auth.list_for(&caller).await?)?;
    Ok(Json(ListTokensResponse { tokens, total }))
}

#[utoipa::path(post, path = "/v1/tokens", tag = "auth", request_body = CreateTokenRequest,
    responses((status = 201, body = CreateTokenResponse), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, Json<CreateTokenResponse>), ApiError> {
    let (token, info) = state
        .auth
        .create_for(&caller, &req.name, req.role, req.agent_id.as_deref())
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreateTokenResponse { token, info }),
    ))
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "auth",
    params(("id" = String, Path, description = "TOK-… or the token's name")),
    responses((status = 200, body = TokenInfo), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TokenInfo>, ApiError> {
    Ok(Json(state.auth.revoke_for(&caller, &id).await?))
}

fn mode_of(read_only: bool) -> SandboxMode {
    if read_only {
        SandboxMode::ReadOnly
    } else {
        SandboxMode::ReadWrite
    }
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/mode", tag = "sandboxes",
    params(("id" = String, Path, description = "SBX-…")),
    responses((status = 200, body = ModeResponse), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn get_mode(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ModeResponse>, ApiError> {
    let id = parse_id(&id)?;
    let sb = state.sandboxes.get(&caller, &id, false).await?.sandbox;
    Ok(Json(ModeResponse {
        sandbox_id: sb.id,
        mode: mode_of(sb.read_only),
    }))
}

#[utoipa::path(put, path = "/v1/sandboxes/{id}/mode", tag = "sandboxes",
    params(("id" = String, Path, description = "SBX-…")), request_body = SetModeRequest,
    responses((status = 200, body = ModeResponse), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_mode(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<SetModeRequest>,
) -> Result<Json<ModeResponse>, ApiError> {
    let id = parse_id(&id)?;
    let sb = state.sandboxes.set_mode(&caller, &id, req.mode).await?;
    Ok(Json(ModeResponse {
        sandbox_id: sb.id,
        mode: mode_of(sb.read_only),
    }))
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    pub sandbox_id: Option<String>,
    pub actor: Option<String>,
    /// api state approval command mode network token.
    pub kind: Option<String>,
    /// RFC 3339: events at or after this time.
    pub since: Option<String>,
    /// Events after this sequence number (paging; see `next_after_seq`).
    pub after_seq: Option<i64>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditParams),
    responses((status = 200, body = ListAuditResponse), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn list_audit(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(p): ApiQuery<AuditParams>,
) -> Result<Json<ListAuditResponse>, ApiError> {
    let nonempty = |o: Option<String>| o.filter(|s| !s.is_empty());
    let sandbox_id = match nonempty(p.sandbox_id) {
        Some(s) => Some(parse_id(&s)?),
        None => None,
    };
    let since = match nonempty(p.since) {
        Some(s) => Some(
            DateTime::parse_from_rfc3339(&s)
                .map_err(|e| ApiError::bad_request(format!("since: {s:?} is not RFC 3339: {e}")))?
                .with_timezone(&Utc),
        ),
        None => None,
    };
    let limit = page_limit(p.limit)?;
    if p.after_seq.is_some_and(|s| s < 0) {
        return Err(ApiError::bad_request("after_seq: must not be negative"));
    }
    let events = state
        .audit
        .list(
            &caller,
            &AuditFilter {
                sandbox_id: sandbox_id.map(|s| s.to_string()),
                actor: nonempty(p.actor),
                kind: nonempty(p.kind),
                since,
                after_seq: p.after_seq,
                limit,
            },
        )
        .await?;
    let next_after_seq = (events.len() == limit as usize)
        .then(|| events.last().map(|e| e.seq))
        .flatten();
    Ok(Json(ListAuditResponse {
        events,
        next_after_seq,
    }))
}
