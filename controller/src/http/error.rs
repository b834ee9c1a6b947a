//! The one way handlers answer errors: `{"error", "code", "details"}` with a status chosen
//! deliberately for each failure (bad input is a 4xx, never a 500).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fluid_client::types::ErrorBody;

use crate::agents::AgentError;
use crate::error::ServiceError;
use crate::scheduler::ScheduleError;
use crate::store::StoreError;

/// `Retry-After` of a 429 for an agent's RESOURCE_EXHAUSTED outside commands.
const RETRY_AFTER_SECS: u32 = 2;

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

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => {
                Self::new(StatusCode::CONFLICT, format!("{what} already exists"))
            }
            StoreError::Unavailable(m) => {
                tracing::error!(error = %m, "store unavailable");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "store unavailable").with_details(m)
            }
            StoreError::Db(m) | StoreError::Corrupt(m) => {
                tracing::error!(error = %m, "store failure");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal store error").with_details(m)
            }
        }
    }
}

impl From<AgentError> for ApiError {
    fn from(e: AgentError) -> Self {
        let status = match &e {
            AgentError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            AgentError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            AgentError::Refused { .. } => StatusCode::CONFLICT,
            AgentError::NotFound { .. } | AgentError::Failed { .. } => StatusCode::BAD_GATEWAY,
            AgentError::InsufficientStorage { .. } => StatusCode::INSUFFICIENT_STORAGE,
            AgentError::Busy { .. } => return Self::too_many(e.to_string(), RETRY_AFTER_SECS),
        };
        Self::new(status, e.to_string())
    }
}

impl From<ScheduleError> for ApiError {
    fn from(e: ScheduleError) -> Self {
        match e {
            ScheduleError::UnknownImage(m) => Self::bad_request(m),
            e @ (ScheduleError::NoCapacity(_) | ScheduleError::DuplicateName(_)) => {
                Self::new(StatusCode::CONFLICT, e.to_string())
            }
            ScheduleError::Store(e) => e.into(),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Invalid(m) => Self::bad_request(m),
            ServiceError::NotFound(m) => Self::not_found(m),
            ServiceError::Conflict(m) => Self::new(StatusCode::CONFLICT, m),
            ServiceError::Forbidden(m) => Self::new(StatusCode::FORBIDDEN, m),
            ServiceError::Unprocessable(m) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, m),
            ServiceError::Unavailable(m) => Self::new(StatusCode::SERVICE_UNAVAILABLE, m),
            ServiceError::Busy {
                message,
                retry_after_secs,
            } => Self::too_many(message, retry_after_secs),
            ServiceError::Schedule(e) => e.into(),
            ServiceError::Agent(e) => e.into(),
            ServiceError::Store(e) => e.into(),
        }
    }
}
