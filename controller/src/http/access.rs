//! The access routes (SSH certificates for people) and `POST /v1/sandboxes/{id}/sshkey`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use fluid_client::types::{
    AccessRequest, AccessResponse, AddSshKeyRequest, CaPublicKeyResponse, CertificateResponse,
    ErrorBody, ListCertificatesResponse,
};

use super::AppState;
use super::commands::PageParams;
use super::error::ApiError;
use super::json::ApiJson;
use super::params::{ApiPath, ApiQuery};
use crate::error::parse_id;
use crate::governance::auth::Caller;

#[utoipa::path(post, path = "/v1/access/request", tag = "access", request_body = AccessRequest,
    responses((status = 200, body = AccessResponse), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the sandbox is not RUNNING or has no IP", body = ErrorBody)))]
pub async fn request_access(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<AccessRequest>,
) -> Result<Json<AccessResponse>, ApiError> {
    let id = parse_id(&req.sandbox_id)?;
    Ok(Json(state.access.request(&caller, &id, req).await?))
}

#[utoipa::path(get, path = "/v1/access/ca-pubkey", tag = "access",
    responses((status = 200, body = CaPublicKeyResponse)))]
pub async fn ca_pubkey(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<CaPublicKeyResponse>, ApiError> {
    Ok(Json(state.access.ca_pubkey(&caller)?))
}

#[utoipa::path(get, path = "/v1/access/certificates", tag = "access", params(PageParams),
    responses((status = 200, body = ListCertificatesResponse), (status = 400, body = ErrorBody)))]
pub async fn list_certificates(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<ListCertificatesResponse>, ApiError> {
    Ok(Json(
        state
            .access
            .list(&caller, params.limit, params.offset)
            .await?,
    ))
}

#[utoipa::path(get, path = "/v1/access/certificate/{id}", tag = "access",
    params(("id" = String, Path, description = "CRT-…")),
    responses((status = 200, body = CertificateResponse), (status = 404, body = ErrorBody)))]
pub async fn get_certificate(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<CertificateResponse>, ApiError> {
    Ok(Json(state.access.get(&caller, &id).await?))
}

#[utoipa::path(delete, path = "/v1/access/certificate/{id}", tag = "access",
    params(("id" = String, Path, description = "CRT-…")),
    responses((status = 200, body = CertificateResponse,
            description = "revoked; revocation_applied says whether the sandbox's sshd got the revoked key list"),
        (status = 404, body = ErrorBody)))]
pub async fn revoke_certificate(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<CertificateResponse>, ApiError> {
    Ok(Json(state.access.revoke(&caller, &id).await?))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/sshkey", tag = "access",
    params(("id" = String, Path, description = "SBX-…")), request_body = AddSshKeyRequest,
    responses((status = 204, description = "appended to the user's authorized_keys"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn add_ssh_key(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<AddSshKeyRequest>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    state.access.add_ssh_key(&caller, &id, req).await?;
    Ok(StatusCode::NO_CONTENT)
}
