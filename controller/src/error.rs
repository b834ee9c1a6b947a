//! The services' error: what went wrong, in terms each edge (REST, gRPC) maps once.

use fluid_proto::ValidationError;
use fluid_proto::model::SandboxId;

use crate::agents::AgentError;
use crate::agents::locate::Unreachable;
use crate::scheduler::ScheduleError;
use crate::store::StoreError;
use crate::support::ids::InvalidAgentId;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// Refused by policy (403).
    #[error("{0}")]
    Forbidden(String),
    /// The operation ran but could not do what was asked (422).
    #[error("{0}")]
    Unprocessable(String),
    /// A dependency is not ready (503).
    #[error("{0}")]
    Unavailable(String),
    /// Too many at once (429 with `Retry-After`).
    #[error("{message}")]
    Busy {
        message: String,
        retry_after_secs: u32,
    },
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Unreachable> for ServiceError {
    fn from(e: Unreachable) -> Self {
        match e {
            Unreachable::NotPlaced(_) | Unreachable::HostGone(_) => Self::Conflict(e.to_string()),
            Unreachable::Offline(_) => Self::Unavailable(e.to_string()),
            Unreachable::Store(e) => Self::Store(e),
        }
    }
}

impl From<InvalidAgentId> for ServiceError {
    fn from(e: InvalidAgentId) -> Self {
        Self::Invalid(e.to_string())
    }
}

impl From<ValidationError> for ServiceError {
    fn from(e: ValidationError) -> Self {
        Self::Invalid(e.to_string())
    }
}

/// Parses a sandbox id from a path; a malformed one is a 400.
pub fn parse_id(id: &str) -> Result<SandboxId, ServiceError> {
    Ok(SandboxId::parse("id", id)?)
}
