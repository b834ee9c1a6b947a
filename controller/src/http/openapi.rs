//! The OpenAPI document of the REST API, served at `GET /openapi.json`.

use axum::Json;
use utoipa::OpenApi;

use super::{
    access, ansible, ansible_jobs, approvals, attach, commands, files, governance, health, hosts,
    network, sandboxes, snapshots, vms,
};

#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "fluid controller", description = "REST API of the fluid control plane (a superset of fluid-remote v1)"),
    paths(
        health::health,
        hosts::list_hosts,
        hosts::add_host,
        vms::list_vms,
        sandboxes::create_sandbox,
        sandboxes::list_sandboxes,
        sandboxes::get_sandbox,
        sandboxes::destroy_sandbox,
        sandboxes::start_sandbox,
        sandboxes::stop_sandbox,
        sandboxes::sandbox_ip,
        commands::run_command,
        commands::run_command_alias,
        commands::list_commands,
        commands::stream_activity,
        attach::attach,
        files::read_file,
        files::write_file,
        files::edit_file,
        access::add_ssh_key,
        access::request_access,
        access::ca_pubkey,
        access::list_certificates,
        access::get_certificate,
        access::revoke_certificate,
        approvals::ask,
        approvals::list_approvals,
        approvals::get_approval,
        approvals::approve,
        approvals::reject,
        governance::whoami,
        governance::roles,
        governance::list_tokens,
        governance::create_token,
        governance::revoke_token,
        governance::get_mode,
        governance::set_mode,
        governance::list_audit,
        network::get_network,
        network::put_network,
        network::request_egress,
        snapshots::create_snapshot,
        snapshots::create_snapshot_alias,
        snapshots::list_snapshots,
        snapshots::restore_snapshot,
        snapshots::delete_snapshot,
        snapshots::fork_sandbox,
        snapshots::diff_sandbox,
        snapshots::list_diffs,
        snapshots::get_diff,
        ansible::list_playbooks,
        ansible::create_playbook,
        ansible::get_playbook,
        ansible::delete_playbook,
        ansible::export_playbook,
        ansible::add_task,
        ansible::update_task,
        ansible::delete_task,
        ansible::reorder_tasks,
        ansible::generate_ansible,
        ansible::verify_playbook,
        ansible_jobs::create_job,
        ansible_jobs::list_jobs,
        ansible_jobs::get_job,
        ansible_jobs::stream_job,
    ),
    components(schemas(
        fluid_client::types::OutputChunk,
        fluid_client::types::CommandStarted,
        fluid_client::types::AttachControl,
        fluid_client::types::AttachEvent,
    )),
    tags(
        (name = "health"), (name = "hosts"), (name = "inventory"), (name = "sandboxes"),
        (name = "commands"), (name = "files"), (name = "access"), (name = "approvals"),
        (name = "auth"), (name = "audit"), (name = "network"), (name = "snapshots"), (name = "ansible"),
    )
)]
pub struct ApiDoc;

pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
