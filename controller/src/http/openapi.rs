//! The OpenAPI document of the REST API, served at `GET /openapi.json`: [`ApiDoc`]
//! (title, the schemas no operation names, the tags) plus every operation of the
//! router ([`super::documented`]), collected from the handlers' `#[utoipa::path]`.

use std::sync::Arc;

use axum::Json;
use axum::routing::{MethodRouter, get};
use utoipa::OpenApi;

use super::AppState;

/// Where the document is served.
pub const PATH: &str = "/openapi.json";

#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "fluid controller", description = "REST API of the fluid control plane (a superset of fluid-remote v1)"),
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

/// `GET /openapi.json`: `doc`, the document the router was built from.
pub fn serve(doc: utoipa::openapi::OpenApi) -> MethodRouter<AppState> {
    let doc = Arc::new(doc);
    get(move || {
        let doc = Arc::clone(&doc);
        async move { Json(utoipa::openapi::OpenApi::clone(&doc)) }
    })
}
