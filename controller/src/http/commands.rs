//! The command routes: run (JSON or Server-Sent Events), list, and the live activity
//! stream of a sandbox.

use std::convert::Infallible;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use fluid_client::types::{
    ErrorBody, ListCommandsResponse, OutputChunk, RunCommandRequest, RunCommandResponse,
};
use futures::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};
use utoipa::IntoParams;

use super::AppState;
use super::error::ApiError;
use super::json::ApiJson;
use super::params::{ApiPath, ApiQuery};
use crate::error::parse_id;
use crate::governance::auth::Caller;
use crate::work::commands::LiveEvent;

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunParams {
    /// Answer Server-Sent Events (`started`, `stdout`, `stderr`, `exit`).
    pub stream: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size (default 100, at most 1000).
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

fn json_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// One live event as SSE.
pub fn sse_event(ev: &LiveEvent) -> Event {
    match ev {
        LiveEvent::Started(s) => Event::default().event("started").data(json_text(s)),
        LiveEvent::Output {
            command_id,
            stderr,
            data,
        } => {
            let (data, encoding) = match std::str::from_utf8(data) {
                Ok(s) => (s.to_owned(), "utf-8"),
                Err(_) => (
                    base64::engine::general_purpose::STANDARD.encode(data),
                    "base64",
                ),
            };
            let chunk = OutputChunk {
                command_id: command_id.clone(),
                data,
                encoding: encoding.into(),
            };
            Event::default()
                .event(if *stderr { "stderr" } else { "stdout" })
                .data(json_text(&chunk))
        }
        LiveEvent::Exit(c) => Event::default()
            .event("exit")
            .data(json_text(&RunCommandResponse {
                command: (**c).clone(),
            })),
    }
}

fn run_stream(rx: mpsc::Receiver<LiveEvent>) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|ev| (Ok(sse_event(&ev)), rx))
    })
}

fn watch_stream(
    rx: broadcast::Receiver<LiveEvent>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(ev) => Some((Ok(sse_event(&ev)), rx)),
            Err(RecvError::Lagged(n)) => Some((
                Ok(Event::default()
                    .event("lagged")
                    .data(serde_json::json!({ "skipped": n }).to_string())),
                rx,
            )),
            Err(RecvError::Closed) => None,
        }
    })
}

async fn run(
    state: AppState,
    caller: Caller,
    id: String,
    params: RunParams,
    req: RunCommandRequest,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let handle = state.commands.run(&caller, &id, req, None).await?;
    if params.stream.unwrap_or(false) {
        return Ok(Sse::new(run_stream(handle.into_events()))
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let outcome = handle.finish().await?;
    Ok(Json(RunCommandResponse {
        command: outcome.record.to_api(),
    })
    .into_response())
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/run", tag = "commands",
    params(("id" = String, Path, description = "SBX-…"), RunParams),
    request_body = RunCommandRequest,
    responses((status = 200, body = RunCommandResponse,
            description = "the finished command; with stream=true, text/event-stream events started, stdout, stderr (OutputChunk) and exit (RunCommandResponse)"),
        (status = 400, body = ErrorBody), (status = 403, description = "refused by policy", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "the sandbox is not RUNNING", body = ErrorBody),
        (status = 429, description = "the sandbox already runs its limit of commands at once ([commands] max_concurrent_per_sandbox, or the agent's); not run; retry after Retry-After seconds", body = ErrorBody),
        (status = 502, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn run_command(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<RunParams>,
    ApiJson(req): ApiJson<RunCommandRequest>,
) -> Result<Response, ApiError> {
    run(state, caller, id, params, req).await
}

#[utoipa::path(post, path = "/v1/sandboxes/{id}/command", tag = "commands",
    params(("id" = String, Path, description = "SBX-…"), RunParams),
    request_body = RunCommandRequest,
    responses((status = 200, body = RunCommandResponse, description = "the same as /run"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn run_command_alias(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<RunParams>,
    ApiJson(req): ApiJson<RunCommandRequest>,
) -> Result<Response, ApiError> {
    run(state, caller, id, params, req).await
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/commands", tag = "commands",
    params(("id" = String, Path, description = "SBX-…"), PageParams),
    responses((status = 200, body = ListCommandsResponse), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn list_commands(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiQuery(params): ApiQuery<PageParams>,
) -> Result<Json<ListCommandsResponse>, ApiError> {
    let id = parse_id(&id)?;
    let (commands, total) = state
        .commands
        .list(&caller, &id, params.limit, params.offset)
        .await?;
    Ok(Json(ListCommandsResponse { commands, total }))
}

#[utoipa::path(get, path = "/v1/sandboxes/{id}/stream", tag = "commands",
    params(("id" = String, Path, description = "SBX-…")),
    responses((status = 200, content_type = "text/event-stream",
            description = "live activity of every command on the sandbox: started, stdout, stderr, exit; lagged {skipped} when this watcher fell behind"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn stream_activity(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let rx = state.commands.watch(&caller, &id).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "activity hub unavailable",
        )
    })?;
    Ok(Sse::new(watch_stream(rx))
        .keep_alive(KeepAlive::default())
        .into_response())
}
