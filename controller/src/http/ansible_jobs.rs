//! Ansible jobs: `POST/GET /v1/ansible/jobs`, `GET /v1/ansible/jobs/{job_id}` and its
//! output as a WebSocket, `GET /v1/ansible/jobs/{job_id}/stream`.
//!
//! The stream: one text frame per line of output (what was printed before the client
//! came first), then one `{"status", "exit_code", "error", "job_id"}` text frame when
//! the job has ended, then a close. Incoming frames are ignored; closing the socket
//! stops only the stream, never the job. A job run by another replica is followed by
//! reading its row every [`POLL`].

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use fluid_client::ansible::{CreateJobRequest, CreateJobResponse, JobList, JobResponse, JobStatus};
use fluid_client::types::ErrorBody;
use futures::stream::SplitSink;
use futures::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;

use super::AppState;
use super::error::ApiError;
use super::json::ApiJson;
use super::params::{ApiPath, ApiQuery};
use super::sandboxes::page_limit;
use crate::ansible::jobs::JobService;
use crate::ansible::jobs::live::JobEvent;
use crate::error::ServiceError;
use crate::governance::auth::Caller;
use crate::store::{JobFilter, JobRecord};
use crate::support::ids::JobId;

/// How often a job that runs elsewhere is re-read.
pub const POLL: Duration = Duration::from_millis(500);

/// Where a job's output streams: `ws(s)://<Host>/v1/ansible/jobs/{id}/stream` (the
/// path alone when the request named no usable host).
pub fn ws_url(headers: &HeaderMap, id: &str) -> String {
    let path = format!("/v1/ansible/jobs/{id}/stream");
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        });
    let Some(host) = host else { return path };
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|p| p.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    format!("{}://{host}{path}", if https { "wss" } else { "ws" })
}

/// The `201` answer of a started job.
pub fn created_job(
    headers: &HeaderMap,
    _state: &AppState,
    job: JobRecord,
) -> (StatusCode, Json<CreateJobResponse>) {
    (
        StatusCode::CREATED,
        Json(CreateJobResponse {
            job_id: job.id.clone(),
            ws_url: ws_url(headers, &job.id),
            job: job.to_api(),
        }),
    )
}

#[utoipa::path(post, path = "/v1/ansible/jobs", tag = "ansible", request_body = CreateJobRequest,
    responses((status = 201, description = "started: a sandbox runs at once; a production target runs --check --diff and waits for a production_apply approval", body = CreateJobResponse),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "no such playbook, sandbox or production target", body = ErrorBody),
        (status = 409, description = "the sandbox is not RUNNING", body = ErrorBody)))]
pub async fn create_job(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateJobRequest>,
) -> Result<(StatusCode, Json<CreateJobResponse>), ApiError> {
    let job = state.jobs.create(&caller, &req).await?;
    Ok(created_job(&headers, &state, job))
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobParams {
    /// Only jobs of this playbook.
    pub playbook: Option<String>,
    /// `pending`, `running`, `finished` or `failed`.
    pub status: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

#[utoipa::path(get, path = "/v1/ansible/jobs", tag = "ansible", params(JobParams),
    responses((status = 200, body = JobList), (status = 400, body = ErrorBody)))]
pub async fn list_jobs(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(p): ApiQuery<JobParams>,
) -> Result<Json<JobList>, ApiError> {
    let status = match p.status.as_deref() {
        None => None,
        Some(s) => Some(JobStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "status: {s:?} is not one of pending, running, finished, failed"
            ))
        })?),
    };
    let f = JobFilter {
        playbook: p.playbook,
        status,
        agent_id: None,
        limit: page_limit(p.limit)?,
        offset: p.offset.unwrap_or(0),
    };
    let (rows, total) = state.jobs.list(&caller, f).await?;
    Ok(Json(JobList {
        jobs: rows.iter().map(JobRecord::to_api).collect(),
        total,
    }))
}

#[utoipa::path(get, path = "/v1/ansible/jobs/{job_id}", tag = "ansible",
    params(("job_id" = String, Path, description = "JOB-…")),
    responses((status = 200, body = JobResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_job(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobResponse>, ApiError> {
    let id = parse_job_id(&id)?;
    Ok(Json(JobResponse {
        job: state.jobs.get(&caller, &id).await?.to_api(),
    }))
}

#[utoipa::path(get, path = "/v1/ansible/jobs/{job_id}/stream", tag = "ansible",
    params(("job_id" = String, Path, description = "JOB-…")),
    responses((status = 101, description = "WebSocket: a text frame per output line, then {\"status\",\"exit_code\",\"error\",\"job_id\"} and a close"),
        (status = 400, description = "not a WebSocket upgrade, or a bad id", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn stream_job(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let id = parse_job_id(&id)?;
    state.jobs.get(&caller, &id).await?;
    let ws = ws.map_err(|e| {
        ApiError::new(e.status(), "a job's stream needs a WebSocket upgrade")
            .with_details(e.body_text())
    })?;
    let jobs = state.jobs.clone();
    Ok(ws.on_upgrade(move |socket| follow(socket, jobs, caller, id)))
}

/// A job id from a path; a malformed one is a 400.
fn parse_job_id(id: &str) -> Result<JobId, ApiError> {
    JobId::parse("job_id", id).map_err(|e| ApiError::from(ServiceError::from(e)))
}

type Sink = SplitSink<WebSocket, Message>;

/// Sends each line of `text` as a frame; `false` when the client is gone.
async fn send_lines(sink: &mut Sink, text: &str) -> bool {
    for line in text.split_inclusive('\n') {
        let line = line.strip_suffix('\n').unwrap_or(line);
        if sink
            .send(Message::Text(line.to_owned().into()))
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

async fn send_end(
    sink: &mut Sink,
    id: &str,
    status: JobStatus,
    exit_code: Option<i32>,
    error: Option<&str>,
) {
    let end = serde_json::json!({
        "status": status,
        "exit_code": exit_code,
        "error": error,
        "job_id": id,
    });
    let _ = sink.send(Message::Text(end.to_string().into())).await;
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: close_code::NORMAL,
            reason: "job ended".into(),
        })))
        .await;
}

/// Streams a job's output to a client until the job ends or the client leaves.
async fn follow(socket: WebSocket, jobs: Arc<JobService>, caller: Caller, id: JobId) {
    let (mut sink, mut frames) = socket.split();
    let (gone_tx, mut gone) = tokio::sync::oneshot::channel::<()>();
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = frames.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
        drop(gone_tx);
    });
    let mut sent = 0usize;
    loop {
        if let Some((so_far, rx)) = jobs.subscribe(id.as_str()) {
            if !send_lines(&mut sink, so_far.get(sent..).unwrap_or_default()).await {
                break;
            }
            sent = so_far.len();
            match live(&mut sink, rx, id.as_str(), &mut sent, &mut gone).await {
                Live::Over => break,
                // Another controller took the job over: follow its row.
                Live::Lost => continue,
            }
        }
        let job = match jobs.get(&caller, &id).await {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!(job = %id, error = %e, "reading a streamed job");
                break;
            }
        };
        let new = job.output.get(sent..).unwrap_or_default();
        if !send_lines(&mut sink, new).await {
            break;
        }
        sent = job.output.len();
        if job.status.is_final() {
            send_end(
                &mut sink,
                id.as_str(),
                job.status,
                job.exit_code,
                job.error.as_deref(),
            )
            .await;
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = &mut gone => break,
        }
    }
    reader.abort();
}

/// How following a running job ended.
enum Live {
    /// The job ended (its status was sent) or the client left.
    Over,
    /// This controller stopped running it.
    Lost,
}

async fn live(
    sink: &mut Sink,
    mut rx: tokio::sync::broadcast::Receiver<JobEvent>,
    id: &str,
    sent: &mut usize,
    gone: &mut tokio::sync::oneshot::Receiver<()>,
) -> Live {
    loop {
        let ev = tokio::select! {
            ev = rx.recv() => ev,
            _ = &mut *gone => return Live::Over,
        };
        match ev {
            Ok(JobEvent::Line(l)) => {
                *sent += l.len();
                if !send_lines(sink, &l).await {
                    return Live::Over;
                }
            }
            Ok(JobEvent::End {
                status,
                exit_code,
                error,
            }) => {
                send_end(sink, id, status, exit_code, error.as_deref()).await;
                return Live::Over;
            }
            Err(RecvError::Lagged(n)) => {
                let note = format!("[{n} lines skipped: this client read too slowly]");
                if sink.send(Message::Text(note.into())).await.is_err() {
                    return Live::Over;
                }
            }
            Err(RecvError::Closed) => return Live::Lost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_urls_follow_the_host() {
        let mut h = HeaderMap::new();
        assert_eq!(ws_url(&h, "JOB-1"), "/v1/ansible/jobs/JOB-1/stream");
        h.insert(header::HOST, "ctl.example:8080".parse().expect("header"));
        assert_eq!(
            ws_url(&h, "JOB-1"),
            "ws://ctl.example:8080/v1/ansible/jobs/JOB-1/stream"
        );
        h.insert("x-forwarded-proto", "https".parse().expect("header"));
        assert_eq!(
            ws_url(&h, "JOB-1"),
            "wss://ctl.example:8080/v1/ansible/jobs/JOB-1/stream"
        );
        h.insert(header::HOST, "evil/x".parse().expect("header"));
        assert_eq!(ws_url(&h, "JOB-1"), "/v1/ansible/jobs/JOB-1/stream");
    }
}
