//! `GET /v1/vms`: source VMs and golden images on every host.

use axum::Json;
use axum::extract::State;
use fluid_client::types::{ErrorBody, ListVmsResponse};

use super::AppState;
use super::error::ApiError;
use crate::governance::auth::Caller;

#[utoipa::path(get, path = "/v1/vms", tag = "inventory",
    responses((status = 200, body = ListVmsResponse), (status = 503, body = ErrorBody)))]
pub async fn list_vms(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<ListVmsResponse>, ApiError> {
    Ok(Json(state.hosts.list_vms(&caller).await?))
}
