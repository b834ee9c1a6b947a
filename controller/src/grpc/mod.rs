//! The public gRPC API for clients (`fluid.v1.Sandboxes`), beside REST.
//!
//! It is a second door into the same services: `Exec` goes through exactly what
//! `POST /v1/sandboxes/{id}/run` does (validation, policy, audit row, output cap, the
//! command runs to its end even when the client goes away) and streams the same live
//! events. Service errors map to gRPC codes once, by kind ([`status`]): invalid →
//! INVALID_ARGUMENT, forbidden → PERMISSION_DENIED, not found → NOT_FOUND, conflict and
//! unprocessable → FAILED_PRECONDITION, busy and disk full → RESOURCE_EXHAUSTED,
//! unavailable → UNAVAILABLE, an agent's timeout → DEADLINE_EXCEEDED, others → INTERNAL.
//!
//! `GetSandbox` and the `Approvals` service (list, decide) follow their REST routes.
//! Every call is authenticated from its `authorization: Bearer` metadata with the same
//! tokens and permissions as REST (401 → UNAUTHENTICATED, 403 → PERMISSION_DENIED),
//! and mutating calls are audited.
//!
//! Transport: TLS (rustls, the `[api_tls]` certificate shared with REST) when
//! configured, else plain HTTP/2 (h2c). Without `[api_tls]` the configuration refuses a
//! non-loopback `grpc_listen` unless `allow_insecure_listen = true`: bearer tokens must
//! not cross an untrusted network in clear text. A refusal (PERMISSION_DENIED) is
//! audited, or the call fails with UNAVAILABLE.

mod status;

use fluid_client::governance::ApprovalStatus;
use fluid_client::types::RunCommandRequest;
use fluid_proto::api;
use fluid_proto::api::approvals_server::{Approvals, ApprovalsServer};
use fluid_proto::api::sandboxes_server::{Sandboxes, SandboxesServer};
use futures::StreamExt as _;
use futures::stream::BoxStream;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::error::parse_id;
use crate::governance::auth::{self, Caller};
use crate::http::AppState;
use crate::store::{ApprovalFilter, ApprovalRecord, NewAuditEvent};
use crate::support::ids::ApprovalId;
use crate::work::commands::LiveEvent;
pub use status::status;

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

/// The caller behind a gRPC request's `authorization` metadata.
async fn caller_of<T>(state: &AppState, request: &Request<T>) -> Result<Caller, Status> {
    let token = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(auth::bearer);
    state.auth.authenticate(token).await.map_err(status)
}

/// `fluid.v1.Sandboxes` and `fluid.v1.Approvals` over the controller's services.
#[derive(Debug, Clone)]
pub struct PublicApi {
    state: AppState,
}

impl PublicApi {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl Sandboxes for PublicApi {
    type ExecStream = BoxStream<'static, Result<api::CommandEvent, Status>>;

    async fn exec(
        &self,
        request: Request<api::ExecCommandRequest>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let caller = caller_of(&self.state, &request).await?;
        let r = request.into_inner();
        let id = parse_id(&r.sandbox_id).map_err(status)?;
        let rest = RunCommandRequest {
            command: r.command,
            user: non_empty(r.user),
            timeout_sec: (r.timeout_sec > 0).then_some(r.timeout_sec),
            env: (!r.env.is_empty()).then(|| r.env.into_iter().collect()),
            workdir: non_empty(r.workdir),
            stdin: None,
        };
        let stdin = (!r.stdin.is_empty()).then_some(r.stdin);
        let handle = match self.state.commands.run(&caller, &id, rest, stdin).await {
            Ok(handle) => handle,
            Err(e) => {
                let status = status(e);
                if status.code() == tonic::Code::PermissionDenied {
                    // Like REST's 403: a refusal is audited, or the call fails
                    // (UNAVAILABLE).
                    let outcome = format!("refused: {}", status.message());
                    audit_call(&self.state, &caller, "Exec", Some(id.as_str()), &outcome).await?;
                }
                return Err(status);
            }
        };
        if let Err(e) = audit_call(&self.state, &caller, "Exec", Some(id.as_str()), "started").await
        {
            // The command runs (its own row is the authoritative record).
            tracing::error!(error = %e.message(), "appending a gRPC audit event");
        }
        // Dropping this stream (the client went away) only stops feeding it.
        let events = futures::stream::unfold(handle.into_events(), |mut rx| async move {
            rx.recv().await.map(|ev| (Ok(command_event(ev)), rx))
        });
        Ok(Response::new(events.boxed()))
    }

    async fn get_sandbox(
        &self,
        request: Request<api::GetSandboxRequest>,
    ) -> Result<Response<api::SandboxSummary>, Status> {
        let caller = caller_of(&self.state, &request).await?;
        let r = request.into_inner();
        let id = parse_id(&r.sandbox_id).map_err(status)?;
        let sb = self
            .state
            .sandboxes
            .get(&caller, &id, false)
            .await
            .map_err(status)?
            .sandbox;
        Ok(Response::new(api::SandboxSummary {
            id: sb.id,
            agent_id: sb.agent_id,
            sandbox_name: sb.sandbox_name,
            state: sb.state.as_str().to_owned(),
            ip_address: sb.ip_address.unwrap_or_default(),
            host_name: sb.host_name.unwrap_or_default(),
            read_only: sb.read_only,
            start_path: sb
                .start_path
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
        }))
    }
}

fn approval_summary(a: &ApprovalRecord) -> api::ApprovalSummary {
    api::ApprovalSummary {
        id: a.id.clone(),
        kind: a.kind.as_str().to_owned(),
        status: a.status.as_str().to_owned(),
        requested_by: a.requested_by.clone(),
        agent_id: a.agent_id.clone().unwrap_or_default(),
        sandbox_id: a.sandbox_id.clone().unwrap_or_default(),
        summary: a.summary.clone(),
        details_json: a.details.to_string(),
        decided_by: a.decided_by.clone().unwrap_or_default(),
        comment: a.comment.clone().unwrap_or_default(),
    }
}

/// Records a mutating gRPC call in the audit trail, like the REST middleware does. A
/// failed write is UNAVAILABLE: a refusal is answered only once it is recorded.
async fn audit_call(
    state: &AppState,
    caller: &Caller,
    method: &str,
    target: Option<&str>,
    outcome: &str,
) -> Result<(), Status> {
    let mut e = NewAuditEvent::system("api", format!("gRPC {method}"), outcome)
        .details(serde_json::json!({"token_id": caller.token_id}))
        .by(&caller.name, caller.role.as_str());
    if let Some(t) = target {
        e = if t.starts_with(fluid_proto::model::SandboxId::PREFIX) {
            e.sandbox(t)
        } else {
            e.target(t)
        };
    }
    state.audit.append(&e).await.map_err(|err| {
        tracing::error!(error = %err, outcome, "appending a gRPC audit event");
        Status::unavailable(format!(
            "audit trail unavailable: the call could not be recorded ({err})"
        ))
    })?;
    Ok(())
}

#[tonic::async_trait]
impl Approvals for PublicApi {
    async fn list_approvals(
        &self,
        request: Request<api::ListApprovalsRequest>,
    ) -> Result<Response<api::ListApprovalsResponse>, Status> {
        let caller = caller_of(&self.state, &request).await?;
        let r = request.into_inner();
        let wanted = match r.status.as_str() {
            "" => Some(ApprovalStatus::Pending),
            "all" => None,
            s => Some(ApprovalStatus::parse(s).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "status: {s:?} is not one of pending approved rejected expired all"
                ))
            })?),
        };
        let filter = ApprovalFilter {
            status: wanted,
            limit: 1000,
            ..Default::default()
        };
        let (rows, total) = self
            .state
            .approvals
            .list(&caller, filter)
            .await
            .map_err(status)?;
        Ok(Response::new(api::ListApprovalsResponse {
            approvals: rows.iter().map(approval_summary).collect(),
            total,
        }))
    }

    async fn decide(
        &self,
        request: Request<api::DecideRequest>,
    ) -> Result<Response<api::ApprovalSummary>, Status> {
        let caller = caller_of(&self.state, &request).await?;
        let r = request.into_inner();
        // The audit event's target, when the id is one.
        let id = ApprovalId::parse("id", &r.approval_id);
        let result = self
            .state
            .approvals
            .decide(&caller, &r.approval_id, r.approve, non_empty(r.comment))
            .await;
        let outcome = match &result {
            Ok(a) => a.status.as_str().to_owned(),
            Err(e) => format!("refused: {e}"),
        };
        if let Ok(id) = &id {
            let audited =
                audit_call(&self.state, &caller, "Decide", Some(id.as_str()), &outcome).await;
            // A refusal is answered only once recorded; a decision that was taken stays
            // taken (the approval row and its own event are the record).
            if result.is_err() {
                audited?;
            }
        }
        Ok(Response::new(approval_summary(&result.map_err(status)?)))
    }
}

/// Serves the gRPC API on `listener` (over TLS when `tls` is given) until `shutdown`
/// fires (then drains).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let api = PublicApi::new(state);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| anyhow::anyhow!("gRPC TLS configuration: {e}"))?;
    }
    builder
        .add_service(SandboxesServer::new(api.clone()))
        .add_service(ApprovalsServer::new(api))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown.cancelled_owned())
        .await?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
