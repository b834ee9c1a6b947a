//! A sandbox's snapshots, restore, fork and diffs: `/v1/sandboxes/{id}/snapshot(s)…`,
//! `/fork`, `/diff`, `/diffs`. Taking, restoring and deleting a snapshot change the
//! sandbox (`Work`: a read-only sandbox refuses them); a fork needs `CreateSandbox`
//! (for its agent id) and `Read` on the source; the rest `Read`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use fluid_client::snapshots::{
    CreateSnapshotRequest, DiffList, DiffRequest, DiffResponse, ForkRequest, SnapshotList,
    SnapshotResponse,
};
use fluid_client::types::{CreateSandboxResponse, ErrorBody};
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::error::ApiError;
use super::json::ApiJson;
use super::params::{ApiPath, ApiQuery};
use crate::error::parse_id;
use crate::governance::auth::Caller;

/// How long a restore waits for the sandbox's revoked keys to be written again (a
/// disk-only snapshot boots the sandbox: sshd takes ~40 s under TCG).
const REAPPLY_REVOCATIONS_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DiffListParams {
    /// Page size (default 100, at most 1000).
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

async fn create(
    state: AppState,
    caller: Caller,
    id: String,
    req: CreateSnapshotRequest,
) -> Result<(StatusCode, Json<SnapshotResponse>), ApiError> {
    let id = parse_id(&id)?;
    let snapshot = state.snapshots.create(&caller, &id, &req).await?;
    Ok((StatusCode::CREATED, Json(SnapshotResponse { snapshot })))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/snapshots", tag = "snapshots",
    params(("id" = String, Path, description = "SBX-…")), request_body = CreateSnapshotRequest,
    responses((status = 201, body = SnapshotResponse),
        (status = 400, description = "a bad or reserved name, external: true, unknown fields", body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "the name exists, the sandbox is neither RUNNING nor STOPPED, memory does not fit its state, or the sandbox has the most snapshots its host allows ([disk] max_snapshots_per_sandbox)", body = ErrorBody),
        (status = 429, description = "another snapshot of this sandbox is being taken ([disk] max_snapshot_jobs_per_sandbox); retry later", body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 503, body = ErrorBody),
        (status = 507, description = "the host's disk cannot take the snapshot (its memory) and keep its reserve free; nothing was written", body = ErrorBody)))]
pub async fn create_snapshot(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<CreateSnapshotRequest>,
) -> Result<(StatusCode, Json<SnapshotResponse>), ApiError> {
    create(state, caller, id, req).await
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/snapshot", tag = "snapshots",
    params(("id" = String, Path, description = "SBX-…")), request_body = CreateSnapshotRequest,
    responses((status = 201, description = "the same as POST /v1/sandboxes/{id}/snapshots", body = SnapshotResponse),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 507, body = ErrorBody)))]
pub async fn create_snapshot_alias(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<CreateSnapshotRequest>,
) -> Result<(StatusCode, Json<SnapshotResponse>), ApiError> {
    create(state, caller, id, req).await
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/snapshots", tag = "snapshots",
    params(("id" = String, Path, description = "SBX-…")),
    responses((status = 200, description = "oldest first", body = SnapshotList),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_snapshots(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<SnapshotList>, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(state.snapshots.list(&caller, &id).await?))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/snapshots/{name}/restore", tag = "snapshots",
    params(("id" = String, Path, description = "SBX-…"), ("name" = String, Path, description = "the snapshot")),
    responses((status = 200, body = SnapshotResponse),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "no such sandbox or snapshot", body = ErrorBody),
        (status = 409, description = "the sandbox is neither RUNNING nor STOPPED", body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn restore_snapshot(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, name)): ApiPath<(String, String)>,
) -> Result<Json<SnapshotResponse>, ApiError> {
    let id = parse_id(&id)?;
    let snapshot = state.snapshots.restore(&caller, &id, &name).await?;
    // The restore reverted the revoked-keys file on the sandbox's disk: write the
    // store's list again before answering (a booting sandbox: as soon as sshd is up).
    if let Err(e) = state
        .access
        .reapply_revocations(&id, REAPPLY_REVOCATIONS_WAIT)
        .await
    {
        tracing::warn!(sandbox = %id, error = %e, "revocations after a restore");
    }
    Ok(Json(SnapshotResponse { snapshot }))
}

#[utoipa::path(delete, path = "/v1/sandboxes/{id}/snapshots/{name}", tag = "snapshots",
    params(("id" = String, Path, description = "SBX-…"), ("name" = String, Path, description = "the snapshot")),
    responses((status = 204, description = "deleted on its host and here"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "no such sandbox or snapshot", body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn delete_snapshot(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, name)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    state.snapshots.delete(&caller, &id, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/fork", tag = "snapshots",
    params(("id" = String, Path, description = "the source sandbox (SBX-…)")), request_body = ForkRequest,
    responses((status = 201, description = "a new sandbox on the source's host: resumed from the snapshot's memory (or booted from its disk when it has none), or (no `snapshot`) a live fork resumed from the running source's memory and disk", body = CreateSandboxResponse),
        (status = 400, body = ErrorBody),
        (status = 403, description = "may not create sandboxes, not for this agent_id, or may not read the source", body = ErrorBody),
        (status = 404, description = "no such sandbox or snapshot", body = ErrorBody),
        (status = 409, description = "the source's host has no room, the vm_name is taken, or (a live fork) the source does not run", body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn fork_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<ForkRequest>,
) -> Result<(StatusCode, Json<CreateSandboxResponse>), ApiError> {
    let id = parse_id(&id)?;
    let created = state.snapshots.fork(&caller, &id, &req).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/diff", tag = "snapshots",
    params(("id" = String, Path, description = "SBX-…")), request_body = DiffRequest,
    responses((status = 200, description = "computed and stored", body = DiffResponse),
        (status = 400, description = "a bad name, or a snapshot compared with itself", body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, description = "no such sandbox or snapshot", body = ErrorBody),
        (status = 409, description = "the sandbox is destroyed (for `now`)", body = ErrorBody),
        (status = 429, description = "a diff of this sandbox is already running ([disk] max_inspections_per_sandbox), or the host's inspection slots stayed busy ([disk] max_inspections, inspection_queue_seconds); retry later", body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 503, body = ErrorBody), (status = 504, body = ErrorBody),
        (status = 507, description = "the host's disk cannot take the export of a disk state (or the temporary snapshot of `now`) and keep its reserve free; nothing was written", body = ErrorBody)))]
pub async fn diff_sandbox(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<DiffRequest>,
) -> Result<Json<DiffResponse>, ApiError> {
    let id = parse_id(&id)?;
    let diff = state.diffs.diff_for(&caller, &id, &req).await?;
    Ok(Json(DiffResponse { diff }))
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/diffs", tag = "snapshots",
    params(("id" = String, Path, description = "SBX-…"), DiffListParams),
    responses((status = 200, description = "newest first", body = DiffList),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_diffs(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<DiffListParams>,
) -> Result<Json<DiffList>, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(
        state
            .diffs
            .list(&caller, &id, params.limit, params.offset)
            .await?,
    ))
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/diffs/{diff_id}", tag = "snapshots",
    params(("id" = String, Path, description = "SBX-…"), ("diff_id" = String, Path, description = "DIF-…")),
    responses((status = 200, body = DiffResponse),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "no such sandbox, or no such diff of it", body = ErrorBody)))]
pub async fn get_diff(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, diff_id)): ApiPath<(String, String)>,
) -> Result<Json<DiffResponse>, ApiError> {
    let id = parse_id(&id)?;
    let diff = state.diffs.get_for(&caller, &id, &diff_id).await?;
    Ok(Json(DiffResponse { diff }))
}
