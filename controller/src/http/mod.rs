//! Where a REST request enters. The router maps the paths of `docs/API.md` to thin
//! handlers; every error leaves through [`error::ApiError`].

pub mod access;
pub mod ansible;
pub mod ansible_jobs;
pub mod approvals;
pub mod attach;
pub mod auth;
pub mod commands;
pub mod error;
pub mod files;
pub mod governance;
pub mod health;
pub mod hosts;
pub mod json;
pub mod metrics;
pub mod network;
pub mod openapi;
pub mod params;
pub mod sandboxes;
pub mod snapshots;
pub mod tls;
pub mod vms;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use tower_http::trace::TraceLayer;

use crate::ansible::generate::Generator;
use crate::ansible::jobs::JobService;
use crate::ansible::playbooks::PlaybookService;
use crate::ansible::verify::Verifier;
use crate::fleet::hosts::HostService;
use crate::governance::approvals::ApprovalService;
use crate::governance::auth::Authenticator;
use crate::network::egress::EgressService;
use crate::network::requests::EgressGate;
use crate::sandboxes::SandboxService;
use crate::sandboxes::diffs::DiffService;
use crate::sandboxes::snapshots::SnapshotService;
use crate::store::Store;
use crate::work::access::AccessService;
use crate::work::attach::AttachService;
use crate::work::commands::CommandService;
use crate::work::files::FileService;
use error::ApiError;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub sandboxes: Arc<SandboxService>,
    pub hosts: Arc<HostService>,
    pub commands: Arc<CommandService>,
    pub files: Arc<FileService>,
    pub access: Arc<AccessService>,
    pub attach: Arc<AttachService>,
    pub auth: Arc<Authenticator>,
    pub approvals: Arc<ApprovalService>,
    pub egress: Arc<EgressService>,
    pub egress_gate: Arc<EgressGate>,
    pub snapshots: Arc<SnapshotService>,
    pub diffs: Arc<DiffService>,
    pub playbooks: Arc<PlaybookService>,
    pub jobs: Arc<JobService>,
    pub generator: Arc<Generator>,
    pub verifier: Arc<Verifier>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// `GET /metrics` answers without a token (`[metrics] public`).
    pub metrics_public: bool,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

async fn no_route() -> ApiError {
    ApiError::not_found("no such route")
}

async fn wrong_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route",
    )
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(health::health))
        .route("/v1/hosts", get(hosts::list_hosts).post(hosts::add_host))
        .route("/v1/vms", get(vms::list_vms))
        .route(
            "/v1/sandboxes",
            get(sandboxes::list_sandboxes).post(sandboxes::create_sandbox),
        )
        .route(
            "/v1/sandboxes/{id}",
            get(sandboxes::get_sandbox).delete(sandboxes::destroy_sandbox),
        )
        .route(
            "/v1/sandboxes/{id}/start",
            axum::routing::post(sandboxes::start_sandbox),
        )
        .route(
            "/v1/sandboxes/{id}/stop",
            axum::routing::post(sandboxes::stop_sandbox),
        )
        .route("/v1/sandboxes/{id}/ip", get(sandboxes::sandbox_ip))
        .route("/v1/sandboxes/{id}/run", post(commands::run_command))
        .route(
            "/v1/sandboxes/{id}/command",
            post(commands::run_command_alias),
        )
        .route("/v1/sandboxes/{id}/commands", get(commands::list_commands))
        .route("/v1/sandboxes/{id}/stream", get(commands::stream_activity))
        .route("/v1/sandboxes/{id}/attach", get(attach::attach))
        .route("/v1/sandboxes/{id}/files/read", post(files::read_file))
        .route(
            "/v1/sandboxes/{id}/files/write",
            post(files::write_file)
                .layer(DefaultBodyLimit::max(crate::work::files::WRITE_BODY_LIMIT)),
        )
        .route("/v1/sandboxes/{id}/files/edit", post(files::edit_file))
        .route("/v1/sandboxes/{id}/sshkey", post(access::add_ssh_key))
        .route(
            "/v1/sandboxes/{id}/network",
            get(network::get_network).put(network::put_network),
        )
        .route(
            "/v1/sandboxes/{id}/network/requests",
            post(network::request_egress),
        )
        .route(
            "/v1/sandboxes/{id}/snapshot",
            post(snapshots::create_snapshot_alias),
        )
        .route(
            "/v1/sandboxes/{id}/snapshots",
            get(snapshots::list_snapshots).post(snapshots::create_snapshot),
        )
        .route(
            "/v1/sandboxes/{id}/snapshots/{name}",
            axum::routing::delete(snapshots::delete_snapshot),
        )
        .route(
            "/v1/sandboxes/{id}/snapshots/{name}/restore",
            post(snapshots::restore_snapshot),
        )
        .route("/v1/sandboxes/{id}/fork", post(snapshots::fork_sandbox))
        .route("/v1/sandboxes/{id}/diff", post(snapshots::diff_sandbox))
        .route("/v1/sandboxes/{id}/diffs", get(snapshots::list_diffs))
        .route(
            "/v1/sandboxes/{id}/diffs/{diff_id}",
            get(snapshots::get_diff),
        )
        .route(
            "/v1/sandboxes/{id}/generate/ansible",
            post(ansible::generate_ansible),
        )
        .route(
            "/v1/ansible/playbooks",
            get(ansible::list_playbooks).post(ansible::create_playbook),
        )
        .route(
            "/v1/ansible/playbooks/{name}",
            get(ansible::get_playbook).delete(ansible::delete_playbook),
        )
        .route(
            "/v1/ansible/playbooks/{name}/export",
            get(ansible::export_playbook),
        )
        .route(
            "/v1/ansible/playbooks/{name}/verify",
            post(ansible::verify_playbook),
        )
        .route(
            "/v1/ansible/playbooks/{name}/tasks",
            post(ansible::add_task),
        )
        .route(
            "/v1/ansible/playbooks/{name}/tasks/reorder",
            axum::routing::patch(ansible::reorder_tasks),
        )
        .route(
            "/v1/ansible/playbooks/{name}/tasks/{task_id}",
            axum::routing::put(ansible::update_task).delete(ansible::delete_task),
        )
        .route(
            "/v1/ansible/jobs",
            get(ansible_jobs::list_jobs).post(ansible_jobs::create_job),
        )
        .route("/v1/ansible/jobs/{job_id}", get(ansible_jobs::get_job))
        .route(
            "/v1/ansible/jobs/{job_id}/stream",
            get(ansible_jobs::stream_job),
        )
        .route("/v1/access/request", post(access::request_access))
        .route("/v1/access/ca-pubkey", get(access::ca_pubkey))
        .route("/v1/access/certificates", get(access::list_certificates))
        .route(
            "/v1/access/certificate/{id}",
            get(access::get_certificate).delete(access::revoke_certificate),
        )
        .route(
            "/v1/sandboxes/{id}/mode",
            get(governance::get_mode).put(governance::set_mode),
        )
        .route("/v1/whoami", get(governance::whoami))
        .route("/v1/roles", get(governance::roles))
        .route(
            "/v1/tokens",
            get(governance::list_tokens).post(governance::create_token),
        )
        .route(
            "/v1/tokens/{id}",
            axum::routing::delete(governance::revoke_token),
        )
        .route("/v1/audit", get(governance::list_audit))
        .route("/v1/human/ask", post(approvals::ask))
        .route("/api/v1/human/ask", post(approvals::ask))
        .route("/v1/approvals", get(approvals::list_approvals))
        .route("/v1/approvals/{id}", get(approvals::get_approval))
        .route("/v1/approvals/{id}/approve", post(approvals::approve))
        .route("/v1/approvals/{id}/reject", post(approvals::reject))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/metrics", get(metrics::metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        // Outside authentication, so refusals are counted too.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::count_requests,
        ))
        // Inside routing: the request's span is named after its route template.
        .route_layer(TraceLayer::new_for_http().make_span_with(metrics::request_span))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(json::BODY_LIMIT))
        .with_state(state)
}

#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod tests_ansible;
#[cfg(test)]
mod tests_ansible_jobs;
#[cfg(test)]
mod tests_ansible_owners;
#[cfg(test)]
mod tests_approvals;
#[cfg(test)]
mod tests_attach;
#[cfg(test)]
mod tests_authz;
#[cfg(test)]
mod tests_diffs;
#[cfg(test)]
mod tests_exec;
#[cfg(test)]
mod tests_exec_limits;
#[cfg(test)]
mod tests_network;
#[cfg(test)]
mod tests_observability;
#[cfg(test)]
mod tests_snapshots;
