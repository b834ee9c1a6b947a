//! Where a REST request enters. The router maps the paths of `docs/API.md` to thin
//! handlers; every error leaves through [`error::ApiError`]. Routes are declared once,
//! by each handler's `#[utoipa::path]` ([`documented`]); the OpenAPI document is what
//! that router collects, so a route cannot be served undocumented (but for the few
//! named in [`UNDOCUMENTED`]).

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
use axum::http::{Method, StatusCode};
use axum::routing::{get, post};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi as _;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt as _};
use utoipa_axum::routes;

use crate::ansible::generate::Generator;
use crate::ansible::jobs::JobService;
use crate::ansible::playbooks::PlaybookService;
use crate::ansible::verify::Verifier;
use crate::fleet::hosts::HostService;
use crate::governance::approvals::ApprovalService;
use crate::governance::audit::AuditService;
use crate::governance::auth::Authenticator;
use crate::network::egress::EgressService;
use crate::network::requests::EgressGate;
use crate::sandboxes::SandboxService;
use crate::sandboxes::diffs::DiffService;
use crate::sandboxes::snapshots::SnapshotService;
use crate::work::access::AccessService;
use crate::work::attach::AttachService;
use crate::work::commands::CommandService;
use crate::work::files::FileService;
use error::ApiError;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub sandboxes: Arc<SandboxService>,
    pub hosts: Arc<HostService>,
    pub commands: Arc<CommandService>,
    pub files: Arc<FileService>,
    pub access: Arc<AccessService>,
    pub attach: Arc<AttachService>,
    pub auth: Arc<Authenticator>,
    pub approvals: Arc<ApprovalService>,
    pub audit: Arc<AuditService>,
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

/// The fluid-remote v1 path of `POST /v1/human/ask` (same handler; not in the
/// OpenAPI document, which names each operation once).
pub const HUMAN_ASK_V1_ALIAS: &str = "/api/v1/human/ask";

/// Every route that is served but not in the OpenAPI document: the document itself,
/// the Prometheus scrape (OpenMetrics text, see [`metrics`]) and the fluid-remote v1
/// alias of `POST /v1/human/ask`. [`router`] adds exactly these besides
/// [`documented`]; nothing else can be routed without its `#[utoipa::path]`.
pub const UNDOCUMENTED: [(Method, &str); 3] = [
    (Method::GET, openapi::PATH),
    (Method::GET, auth::METRICS_PATH),
    (Method::POST, HUMAN_ASK_V1_ALIAS),
];

/// The documented routes: each handler's `#[utoipa::path]` is both its route (method
/// and path) and its entry in the OpenAPI document, so neither exists without the
/// other. One `routes!` per path: the macro registers every handler it is given on
/// every path among them.
pub fn documented() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health::health))
        .routes(routes!(hosts::list_hosts, hosts::add_host))
        .routes(routes!(vms::list_vms))
        .routes(routes!(
            sandboxes::list_sandboxes,
            sandboxes::create_sandbox
        ))
        .routes(routes!(sandboxes::get_sandbox, sandboxes::destroy_sandbox))
        .routes(routes!(sandboxes::start_sandbox))
        .routes(routes!(sandboxes::stop_sandbox))
        .routes(routes!(sandboxes::sandbox_ip))
        .routes(routes!(commands::run_command))
        .routes(routes!(commands::run_command_alias))
        .routes(routes!(commands::list_commands))
        .routes(routes!(commands::stream_activity))
        .routes(routes!(attach::attach))
        .routes(routes!(files::read_file))
        .routes(
            routes!(files::write_file).map(|write| {
                write.layer(DefaultBodyLimit::max(crate::work::files::WRITE_BODY_LIMIT))
            }),
        )
        .routes(routes!(files::edit_file))
        .routes(routes!(access::add_ssh_key))
        .routes(routes!(network::get_network, network::put_network))
        .routes(routes!(network::request_egress))
        .routes(routes!(snapshots::create_snapshot_alias))
        .routes(routes!(
            snapshots::list_snapshots,
            snapshots::create_snapshot
        ))
        .routes(routes!(snapshots::delete_snapshot))
        .routes(routes!(snapshots::restore_snapshot))
        .routes(routes!(snapshots::fork_sandbox))
        .routes(routes!(snapshots::diff_sandbox))
        .routes(routes!(snapshots::list_diffs))
        .routes(routes!(snapshots::get_diff))
        .routes(routes!(ansible::generate_ansible))
        .routes(routes!(ansible::list_playbooks, ansible::create_playbook))
        .routes(routes!(ansible::get_playbook, ansible::delete_playbook))
        .routes(routes!(ansible::export_playbook))
        .routes(routes!(ansible::verify_playbook))
        .routes(routes!(ansible::add_task))
        .routes(routes!(ansible::reorder_tasks))
        .routes(routes!(ansible::update_task, ansible::delete_task))
        .routes(routes!(ansible_jobs::list_jobs, ansible_jobs::create_job))
        .routes(routes!(ansible_jobs::get_job))
        .routes(routes!(ansible_jobs::stream_job))
        .routes(routes!(access::request_access))
        .routes(routes!(access::ca_pubkey))
        .routes(routes!(access::list_certificates))
        .routes(routes!(access::get_certificate, access::revoke_certificate))
        .routes(routes!(governance::get_mode, governance::set_mode))
        .routes(routes!(governance::whoami))
        .routes(routes!(governance::roles))
        .routes(routes!(governance::list_tokens, governance::create_token))
        .routes(routes!(governance::revoke_token))
        .routes(routes!(governance::list_audit))
        .routes(routes!(approvals::ask))
        .routes(routes!(approvals::list_approvals))
        .routes(routes!(approvals::get_approval))
        .routes(routes!(approvals::approve))
        .routes(routes!(approvals::reject))
}

/// The REST API: the [`documented`] routes and the [`UNDOCUMENTED`] ones, behind
/// authentication, request counting and tracing.
pub fn router(state: AppState) -> Router {
    let (routes, doc) = documented().split_for_parts();
    routes
        .route(HUMAN_ASK_V1_ALIAS, post(approvals::ask))
        .route(openapi::PATH, openapi::serve(doc))
        .route(auth::METRICS_PATH, get(metrics::metrics))
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
mod tests_pools;
#[cfg(test)]
mod tests_quotas;
#[cfg(test)]
mod tests_snapshots;
#[cfg(test)]
mod tests_start_path;
