//! The OpenAPI document of the REST API, served at `GET /openapi.json`.

use axum::Json;
use utoipa::OpenApi;

use super::{health, hosts, sandboxes, vms};

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
    ),
    tags(
        (name = "health"), (name = "hosts"), (name = "inventory"), (name = "sandboxes"),
    )
)]
pub struct ApiDoc;

pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
