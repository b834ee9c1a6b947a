//! The one way handlers answer errors: `{"error", "code", "details"}` with a status chosen
//! deliberately for each failure (bad input is a 4xx, never a 500).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fluid_client::types::ErrorBody;

use crate::agents::AgentError;
use crate::error::{ErrorKind, ServiceError};
use crate::governance::auth::{AuthError, TokenError};
use crate::scheduler::ScheduleError;
use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: String,
    pub details: String,
    /// `Retry-After` (seconds) of a 429.
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            details: String::new(),
            retry_after: None,
        }
    }

    /// 429 with `Retry-After: secs`.
    pub fn too_many(error: impl Into<String>, secs: u32) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, error);
        e.retry_after = Some(secs);
        e
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn bad_request(error: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error)
    }

    pub fn not_found(error: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.error,
            code: self.status.as_u16(),
            details: self.details,
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        response
    }
}

impl From<ServiceError> for ApiError {
    /// The one mapping of a service error to HTTP: its kind picks the status.
    fn from(e: ServiceError) -> Self {
        let kind = e.kind();
        let (error, details) = e.message();
        let status = match kind {
            ErrorKind::Invalid => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Busy { retry_after_secs } => {
                return Self::too_many(error, retry_after_secs).with_details(details);
            }
            ErrorKind::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Upstream => StatusCode::BAD_GATEWAY,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, error).with_details(details)
    }
}

/// The errors a handler meets on its own (before it reaches a service) answer as the
/// service error they become.
macro_rules! through_service_error {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for ApiError {
            fn from(e: $t) -> Self {
                ServiceError::from(e).into()
            }
        }
    )*};
}
through_service_error!(StoreError, AgentError, ScheduleError, AuthError, TokenError);
