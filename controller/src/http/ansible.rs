//! Ansible playbooks: `/v1/ansible/playbooks…` (CRUD, tasks, reorder, export,
//! verify) and `POST /v1/sandboxes/{id}/generate/ansible`. Jobs are in
//! [`super::ansible_jobs`].

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use fluid_client::ansible::{
    CreatePlaybookRequest, CreateTaskRequest, ExportResponse, GenerateAnsibleRequest,
    GenerateAnsibleResponse, JobResponse, PlaybookList, PlaybookResponse, PlaybookWithTasks,
    ReorderTasksRequest, TaskResponse, UpdateTaskRequest, VerifyRequest,
};
use fluid_client::types::ErrorBody;
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::ansible_jobs::created_job;
use super::error::ApiError;
use super::json::{ApiJson, OptionalJson};
use super::params::{ApiPath, ApiQuery};
use super::sandboxes::page_limit;
use crate::governance::auth::Caller;

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size (default 100, at most 1000).
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

#[utoipa::path(get, path = "/v1/ansible/playbooks", tag = "ansible", params(PageParams),
    responses((status = 200, body = PlaybookList), (status = 400, body = ErrorBody)))]
pub async fn list_playbooks(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Json<PlaybookList>, ApiError> {
    let limit = page_limit(p.limit)?;
    let (playbooks, total) = state
        .playbooks
        .list(&caller, limit, p.offset.unwrap_or(0))
        .await?;
    Ok(Json(PlaybookList { playbooks, total }))
}

#[utoipa::path(post, path = "/v1/ansible/playbooks", tag = "ansible", request_body = CreatePlaybookRequest,
    responses((status = 201, body = PlaybookResponse),
        (status = 400, description = "a bad name (`/`, `..`, …) or host pattern, or an unknown field", body = ErrorBody),
        (status = 409, description = "a playbook of that name exists", body = ErrorBody)))]
pub async fn create_playbook(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreatePlaybookRequest>,
) -> Result<(StatusCode, Json<PlaybookResponse>), ApiError> {
    let playbook = state.playbooks.create(&caller, &req).await?;
    Ok((StatusCode::CREATED, Json(PlaybookResponse { playbook })))
}

#[utoipa::path(get, path = "/v1/ansible/playbooks/{name}", tag = "ansible",
    params(("name" = String, Path)),
    responses((status = 200, body = PlaybookWithTasks), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_playbook(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<PlaybookWithTasks>, ApiError> {
    Ok(Json(state.playbooks.get(&caller, &name).await?))
}

#[utoipa::path(delete, path = "/v1/ansible/playbooks/{name}", tag = "ansible",
    params(("name" = String, Path)),
    responses((status = 204, description = "deleted, with its file"), (status = 404, body = ErrorBody)))]
pub async fn delete_playbook(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.playbooks.delete(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/ansible/playbooks/{name}/export", tag = "ansible",
    params(("name" = String, Path)),
    responses((status = 200, body = ExportResponse), (status = 404, body = ErrorBody)))]
pub async fn export_playbook(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ExportResponse>, ApiError> {
    Ok(Json(ExportResponse {
        yaml: state.playbooks.export(&caller, &name).await?,
    }))
}

#[utoipa::path(post, path = "/v1/ansible/playbooks/{name}/tasks", tag = "ansible",
    params(("name" = String, Path)), request_body = CreateTaskRequest,
    responses((status = 201, body = TaskResponse),
        (status = 400, description = "an invalid module, task keyword or params", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn add_task(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<CreateTaskRequest>,
) -> Result<(StatusCode, Json<TaskResponse>), ApiError> {
    let task = state.playbooks.add_task(&caller, &name, req).await?;
    Ok((StatusCode::CREATED, Json(TaskResponse { task })))
}

#[utoipa::path(put, path = "/v1/ansible/playbooks/{name}/tasks/{task_id}", tag = "ansible",
    params(("name" = String, Path), ("task_id" = String, Path)), request_body = UpdateTaskRequest,
    responses((status = 200, body = TaskResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update_task(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, task_id)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<UpdateTaskRequest>,
) -> Result<Json<TaskResponse>, ApiError> {
    let task = state
        .playbooks
        .update_task(&caller, &name, &task_id, req)
        .await?;
    Ok(Json(TaskResponse { task }))
}

#[utoipa::path(delete, path = "/v1/ansible/playbooks/{name}/tasks/{task_id}", tag = "ansible",
    params(("name" = String, Path), ("task_id" = String, Path)),
    responses((status = 204, description = "deleted; the tasks after it move up"), (status = 404, body = ErrorBody)))]
pub async fn delete_task(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((name, task_id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    state
        .playbooks
        .delete_task(&caller, &name, &task_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(patch, path = "/v1/ansible/playbooks/{name}/tasks/reorder", tag = "ansible",
    params(("name" = String, Path)), request_body = ReorderTasksRequest,
    responses((status = 200, description = "the playbook in its new order", body = PlaybookWithTasks),
        (status = 400, description = "task_ids must name every task exactly once", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn reorder_tasks(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<ReorderTasksRequest>,
) -> Result<Json<PlaybookWithTasks>, ApiError> {
    Ok(Json(
        state
            .playbooks
            .reorder(&caller, &name, &req.task_ids)
            .await?,
    ))
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/generate/ansible", tag = "ansible",
    params(("id" = String, Path, description = "SBX-…")), request_body = GenerateAnsibleRequest,
    responses((status = 201, body = GenerateAnsibleResponse),
        (status = 400, description = "no snapshot to start from, an unknown snapshot, a bad name", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "a playbook of that name exists", body = ErrorBody),
        (status = 429, description = "the diff it needs could not start: a cap on disk inspections ([disk] max_inspections_per_sandbox, max_inspections); retry later", body = ErrorBody),
        (status = 507, description = "the host's disk cannot take the diff's exports and keep its reserve free; nothing was written", body = ErrorBody)))]
pub async fn generate_ansible(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    OptionalJson(req): OptionalJson<GenerateAnsibleRequest>,
) -> Result<(StatusCode, Json<GenerateAnsibleResponse>), ApiError> {
    let out = state.generator.generate(&caller, &id, &req).await?;
    Ok((StatusCode::CREATED, Json(out)))
}

#[utoipa::path(post, path = "/v1/ansible/playbooks/{name}/verify", tag = "ansible",
    params(("name" = String, Path)), request_body = VerifyRequest,
    responses((status = 201, description = "the verify job, running", body = fluid_client::ansible::CreateJobResponse),
        (status = 200, description = "wait=true: the finished job, with its verification", body = JobResponse),
        (status = 400, description = "the playbook has no source sandbox", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the source sandbox is destroyed", body = ErrorBody)))]
pub async fn verify_playbook(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiPath(name): ApiPath<String>,
    OptionalJson(req): OptionalJson<VerifyRequest>,
) -> Result<Response, ApiError> {
    let (job, task) = state.verifier.start(&caller, &name).await?;
    if !req.wait {
        return Ok(created_job(&headers, &state, job).into_response());
    }
    if let Err(e) = task.await {
        tracing::error!(job = %job.id, error = %e, "a verify task failed");
    }
    let job = state.jobs.reload(&caller, &job).await?;
    Ok((StatusCode::OK, Json(JobResponse { job: job.to_api() })).into_response())
}
