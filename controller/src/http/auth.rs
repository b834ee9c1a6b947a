//! Authentication at the edge: a middleware on every route but `/v1/health` (and
//! `/metrics` when `[metrics] public = true`; not the default) that turns
//! the bearer token into a [`Caller`] (401 without a valid one), and records every
//! mutating call in the audit trail with its outcome once the handler has answered.
//! Handlers take the [`Caller`] as an extractor and hand it to the service they call,
//! which checks what it may do (`crate::governance::auth`); no handler checks a
//! permission itself.
//!
//! The record of a refusal fails closed: a refused call (4xx) whose audit event cannot
//! be written answers 503 instead, so no refusal is ever answered without its event.
//! A call that succeeded keeps its answer (its effect happened, and its state change
//! carries its own event written in the same transaction); the missing `api` event is
//! logged as an error.

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use fluid_proto::model::SandboxId;

use super::AppState;
use super::error::ApiError;
use crate::governance::auth::{self, AuthError, Caller};
use crate::store::NewAuditEvent;

/// Routes that answer without a token.
pub const OPEN_PATHS: [&str; 1] = ["/v1/health"];
/// Open too when `[metrics] public = true` (default false: `ReadFleet` needed).
pub const METRICS_PATH: &str = "/metrics";

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "missing bearer token"))
    }
}

/// Whether a call changes something (and so is audited).
fn is_mutating(method: &Method, route: &str) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) || route.ends_with("/attach")
}

/// The id a path names (the segment after the collection), and the sandbox it is in.
fn targets(path: &str) -> (Option<String>, Option<String>) {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let target = segs.get(2).map(|s| (*s).to_owned());
    let sandbox = (segs.get(1) == Some(&"sandboxes"))
        .then(|| target.clone())
        .flatten()
        .filter(|s| s.starts_with(SandboxId::PREFIX));
    (target, sandbox)
}

/// The middleware: authenticate, run the handler, audit a mutating call.
pub async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_owned();
    if OPEN_PATHS.contains(&path.as_str()) || (path == METRICS_PATH && state.metrics_public) {
        return next.run(req).await;
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::bearer)
        .map(str::to_owned);
    let caller = match state.auth.authenticate(token.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            if matches!(e, AuthError::Unauthenticated(_)) {
                tracing::info!(%path, reason = %e, "unauthenticated request refused");
            }
            let mut resp = ApiError::from(e).into_response();
            if resp.status() == StatusCode::UNAUTHORIZED {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            return resp;
        }
    };
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| path.clone(), |m| m.as_str().to_owned());
    req.extensions_mut().insert(caller.clone());
    let resp = next.run(req).await;
    if is_mutating(&method, &route) {
        let (target, sandbox_id) = targets(&path);
        let event = NewAuditEvent {
            at: chrono::Utc::now(),
            actor: caller.name.clone(),
            role: caller.role.as_str().to_owned(),
            kind: "api".into(),
            action: format!("{method} {route}"),
            target,
            sandbox_id,
            outcome: resp.status().as_u16().to_string(),
            details: serde_json::json!({"token_id": caller.token_id, "path": path}),
        };
        if let Err(e) = state.audit.append(&event).await {
            tracing::error!(error = %e, action = %event.action, outcome = %event.outcome,
                "appending an API audit event");
            if is_refusal(resp.status()) {
                return audit_unavailable(&e.to_string()).into_response();
            }
        }
    }
    resp
}

/// A refusal: the caller asked, and was told no (or that the request was wrong).
fn is_refusal(status: StatusCode) -> bool {
    status.is_client_error()
}

/// What a refusal becomes when its audit event cannot be written.
pub fn audit_unavailable(details: &str) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "audit trail unavailable: the request was refused, but the refusal could not be recorded",
    )
    .with_details(details.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_of_paths() {
        assert_eq!(
            targets("/v1/sandboxes/SBX-abc/run"),
            (Some("SBX-abc".into()), Some("SBX-abc".into()))
        );
        assert_eq!(targets("/v1/sandboxes"), (None, None));
        assert_eq!(
            targets("/v1/approvals/APR-1/approve"),
            (Some("APR-1".into()), None)
        );
    }

    #[test]
    fn mutating_calls() {
        assert!(is_mutating(&Method::POST, "/v1/sandboxes"));
        assert!(is_mutating(&Method::GET, "/v1/sandboxes/{id}/attach"));
        assert!(!is_mutating(&Method::GET, "/v1/sandboxes/{id}"));
    }
}
