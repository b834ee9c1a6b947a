//! The public gRPC API for clients (`fluid.v1.Sandboxes`), beside REST.
//!
//! It is a second door into the same services: `Exec` goes through exactly what
//! `POST /v1/sandboxes/{id}/run` does (validation, policy, audit row, output cap, the
//! command runs to its end even when the client goes away) and streams the same live
//! events. REST errors map to gRPC codes: 400 → INVALID_ARGUMENT, 403 →
//! PERMISSION_DENIED, 404 → NOT_FOUND, 409 and 422 → FAILED_PRECONDITION, 503 →
//! UNAVAILABLE, 504 → DEADLINE_EXCEEDED, others → INTERNAL.
//!
//! Transport: plain HTTP/2 without TLS (h2c), like the REST API, and without
//! authentication for now — both arrive with a later issue. Bind it to a trusted
//! address (the default is 127.0.0.1:8081).

use std::sync::Arc;

use axum::http::StatusCode;
use fluid_client::types::RunCommandRequest;
use fluid_proto::api;
use fluid_proto::api::sandboxes_server::{Sandboxes, SandboxesServer};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};

use crate::api::error::ApiError;
use crate::commands::{CommandService, LiveEvent};
use crate::sandboxes::{ServiceError, parse_id};

/// The gRPC status of a REST error.
pub fn status_of(e: ApiError) -> Status {
    let code = match e.status {
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => Code::InvalidArgument,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::CONFLICT | StatusCode::UNPROCESSABLE_ENTITY => Code::FailedPrecondition,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        StatusCode::GATEWAY_TIMEOUT => Code::DeadlineExceeded,
        _ => Code::Internal,
    };
    let message = if e.details.is_empty() {
        e.error
    } else {
        format!("{}: {}", e.error, e.details)
    };
    Status::new(code, message)
}

fn service_status(e: ServiceError) -> Status {
    status_of(ApiError::from(e))
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// One live event of a command as a gRPC event.
pub fn command_event(ev: LiveEvent) -> api::CommandEvent {
    use api::command_event::Event;
    let event = match ev {
        LiveEvent::Started(s) => Event::Started(api::CommandStarted {
            command_id: s.command_id,
            started_at_unix_ms: s.started_at.timestamp_millis(),
        }),
        LiveEvent::Output {
            stderr: false,
            data,
            ..
        } => Event::Stdout(data.to_vec()),
        LiveEvent::Output {
            stderr: true, data, ..
        } => Event::Stderr(data.to_vec()),
        LiveEvent::Exit(c) => Event::Exit(api::CommandResult {
            command_id: c.id,
            exit_code: c.exit_code,
            timed_out: c.timed_out,
            truncated: c.truncated,
            duration_ms: c.duration_ms.unwrap_or(0),
            status: c.status,
            error: c.error.unwrap_or_default(),
        }),
    };
    api::CommandEvent { event: Some(event) }
}

/// `fluid.v1.Sandboxes` over the controller's services.
#[derive(Debug, Clone)]
pub struct SandboxesApi {
    commands: Arc<CommandService>,
}

impl SandboxesApi {
    pub fn new(commands: Arc<CommandService>) -> Self {
        Self { commands }
    }

    /// The tonic service.
    pub fn into_service(self) -> SandboxesServer<Self> {
        SandboxesServer::new(self)
    }
}

#[tonic::async_trait]
impl Sandboxes for SandboxesApi {
    type ExecStream = BoxStream<'static, Result<api::CommandEvent, Status>>;

    async fn exec(
        &self,
        request: Request<api::ExecCommandRequest>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let r = request.into_inner();
        let id = parse_id(&r.sandbox_id).map_err(service_status)?;
        let rest = RunCommandRequest {
            command: r.command,
            user: non_empty(r.user),
            timeout_sec: (r.timeout_sec > 0).then_some(r.timeout_sec),
            env: (!r.env.is_empty()).then(|| r.env.into_iter().collect()),
            workdir: non_empty(r.workdir),
            stdin: None,
        };
        let mut spec = self
            .commands
            .spec_from_request(rest)
            .map_err(service_status)?;
        if !r.stdin.is_empty() {
            spec.stdin = r.stdin;
            self.commands.check_spec(&spec).map_err(service_status)?;
        }
        let handle = self.commands.run(&id, spec).await.map_err(service_status)?;
        // Dropping this stream (the client went away) only stops feeding it.
        let events = futures::stream::unfold(handle.into_events(), |mut rx| async move {
            rx.recv().await.map(|ev| (Ok(command_event(ev)), rx))
        });
        Ok(Response::new(events.boxed()))
    }
}

/// Serves the gRPC API on `listener` until `shutdown` fires (then drains).
pub async fn serve(
    listener: TcpListener,
    commands: Arc<CommandService>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(SandboxesApi::new(commands).into_service())
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests;
