//! The files routes: thin handlers over the file service (which checks the caller).

use axum::Json;
use axum::extract::State;
use fluid_client::types::{
    EditFileRequest, EditFileResponse, ErrorBody, ReadFileRequest, ReadFileResponse,
    WriteFileRequest, WriteFileResponse,
};

use super::AppState;
use super::error::ApiError;
use super::json::ApiJson;
use super::params::ApiPath;
use crate::error::parse_id;
use crate::governance::auth::Caller;

#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/read", tag = "files",
    params(("id" = String, Path, description = "SBX-…")), request_body = ReadFileRequest,
    responses((status = 200, body = ReadFileResponse),
        (status = 400, description = "bad path (relative, '..', NUL) or limit", body = ErrorBody),
        (status = 403, description = "path denied by policy", body = ErrorBody),
        (status = 404, description = "no such sandbox or file", body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn read_file(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ReadFileRequest>,
) -> Result<Json<ReadFileResponse>, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(state.files.read(&caller, &id, req).await?))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/write", tag = "files",
    params(("id" = String, Path, description = "SBX-…")), request_body = WriteFileRequest,
    responses((status = 200, body = WriteFileResponse), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn write_file(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<WriteFileRequest>,
) -> Result<Json<WriteFileResponse>, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(state.files.write(&caller, &id, req).await?))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/files/edit", tag = "files",
    params(("id" = String, Path, description = "SBX-…")), request_body = EditFileRequest,
    responses((status = 200, body = EditFileResponse), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "old_str occurs more than once, or (empty old_str) the file exists", body = ErrorBody),
        (status = 422, description = "old_str does not occur", body = ErrorBody)))]
pub async fn edit_file(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<EditFileRequest>,
) -> Result<Json<EditFileResponse>, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(state.files.edit(&caller, &id, req).await?))
}
