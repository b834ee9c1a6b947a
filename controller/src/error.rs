//! The services' error, [`ServiceError`]: what went wrong, keeping the cause (a store,
//! agent, scheduling or auth error stays that error), and its [`ErrorKind`], the one
//! thing an edge branches on. Each edge maps a kind once: REST in `http::error`, gRPC
//! in `grpc::status`, and the coming MCP server the same way.

use fluid_proto::ValidationError;
use fluid_proto::model::SandboxId;

use crate::agents::AgentError;
use crate::agents::locate::Unreachable;
use crate::scheduler::ScheduleError;
use crate::store::StoreError;
use crate::support::ids::InvalidAgentId;

/// The kinds of failure the edges answer differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or names something impossible (400).
    Invalid,
    /// No valid credentials (401).
    Unauthenticated,
    /// Refused by role, ownership or policy (403).
    Forbidden,
    NotFound,
    /// The target's current state does not allow it, or it already exists (409).
    Conflict,
    /// The operation ran but could not do what was asked (422).
    Unprocessable,
    /// Too many at once: retry after the given seconds (429).
    Busy {
        retry_after_secs: u32,
    },
    /// The host's disk cannot take it (507).
    InsufficientStorage,
    /// A dependency (store, agent, ansible-playbook) is not there now (503).
    Unavailable,
    /// An agent did not answer in time (504).
    Timeout,
    /// An agent failed or answered something invalid (502).
    Upstream,
    /// The controller's own failure (500).
    Internal,
}

/// `Retry-After` of an agent's RESOURCE_EXHAUSTED outside commands.
const AGENT_RETRY_AFTER_SECS: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Invalid(String),
    /// No valid credentials (401).
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// Refused by role, ownership or policy (403).
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
    /// The controller's own failure: a file it cannot write, an emitter bug (500).
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ServiceError {
    /// What kind of failure this is, read through to the cause.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) => ErrorKind::Invalid,
            Self::Unauthenticated(_) => ErrorKind::Unauthenticated,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Conflict(_) => ErrorKind::Conflict,
            Self::Forbidden(_) => ErrorKind::Forbidden,
            Self::Unprocessable(_) => ErrorKind::Unprocessable,
            Self::Unavailable(_) => ErrorKind::Unavailable,
            Self::Busy {
                retry_after_secs, ..
            } => ErrorKind::Busy {
                retry_after_secs: *retry_after_secs,
            },
            Self::Internal(_) => ErrorKind::Internal,
            Self::Schedule(e) => match e {
                ScheduleError::UnknownImage(_) => ErrorKind::Invalid,
                ScheduleError::NoCapacity(_) | ScheduleError::DuplicateName(_) => {
                    ErrorKind::Conflict
                }
                ScheduleError::Quota {
                    retry_after_secs, ..
                } => ErrorKind::Busy {
                    retry_after_secs: *retry_after_secs,
                },
                ScheduleError::Store(e) => store_kind(e),
            },
            Self::Agent(e) => match e {
                AgentError::Unavailable { .. } => ErrorKind::Unavailable,
                AgentError::Timeout { .. } => ErrorKind::Timeout,
                AgentError::Refused { .. } => ErrorKind::Conflict,
                AgentError::NotFound { .. } | AgentError::Failed { .. } => ErrorKind::Upstream,
                AgentError::InsufficientStorage { .. } => ErrorKind::InsufficientStorage,
                AgentError::Busy { .. } => ErrorKind::Busy {
                    retry_after_secs: AGENT_RETRY_AFTER_SECS,
                },
            },
            Self::Store(e) => store_kind(e),
        }
    }

    /// What the caller reads: a message, and details (a dependency's own words, or
    /// empty). A store or internal failure is logged here, once.
    pub fn message(&self) -> (String, String) {
        let store = |e: &StoreError| -> (String, String) {
            match e {
                StoreError::Conflict(_) => (e.to_string(), String::new()),
                StoreError::Unavailable(m) => {
                    tracing::error!(error = %m, "store unavailable");
                    ("store unavailable".into(), m.clone())
                }
                StoreError::Db(m) | StoreError::Corrupt(m) => {
                    tracing::error!(error = %m, "store failure");
                    ("internal store error".into(), m.clone())
                }
            }
        };
        match self {
            Self::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                ("internal error".into(), m.clone())
            }
            Self::Schedule(ScheduleError::Store(e)) | Self::Store(e) => store(e),
            other => (other.to_string(), String::new()),
        }
    }
}

fn store_kind(e: &StoreError) -> ErrorKind {
    match e {
        StoreError::Conflict(_) => ErrorKind::Conflict,
        StoreError::Unavailable(_) => ErrorKind::Unavailable,
        StoreError::Db(_) | StoreError::Corrupt(_) => ErrorKind::Internal,
    }
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

impl From<fluid_ansible::ValidationError> for ServiceError {
    fn from(e: fluid_ansible::ValidationError) -> Self {
        Self::Invalid(e.to_string())
    }
}

/// Parses a sandbox id from a path; a malformed one is a 400.
pub fn parse_id(id: &str) -> Result<SandboxId, ServiceError> {
    Ok(SandboxId::parse("id", id)?)
}

/// Page size when `limit` is not given.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page.
pub const MAX_LIMIT: u32 = 1000;

/// A page size from a `limit` parameter: the default, at most [`MAX_LIMIT`], never 0.
pub fn page_limit(limit: Option<u32>) -> Result<u32, ServiceError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(0) => Err(ServiceError::Invalid("limit: must be positive".into())),
        Some(n) => Ok(n.min(MAX_LIMIT)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_read_through_to_the_cause() {
        let unavailable = ServiceError::from(StoreError::Unavailable("pool timed out".into()));
        assert_eq!(unavailable.kind(), ErrorKind::Unavailable);
        assert_eq!(
            unavailable.message(),
            ("store unavailable".to_owned(), "pool timed out".to_owned())
        );
        assert!(
            matches!(unavailable, ServiceError::Store(StoreError::Unavailable(_))),
            "the store error is kept as the cause: {unavailable:?}"
        );
        let busy = ServiceError::from(AgentError::Busy {
            host: "h".into(),
            message: "too many".into(),
        });
        assert_eq!(
            busy.kind(),
            ErrorKind::Busy {
                retry_after_secs: AGENT_RETRY_AFTER_SECS
            }
        );
        assert_eq!(
            ServiceError::from(ScheduleError::UnknownImage("no such image".into())).kind(),
            ErrorKind::Invalid
        );
        let conflict = ServiceError::from(StoreError::Conflict("sandbox x".into()));
        assert_eq!(
            (conflict.kind(), conflict.message().0),
            (ErrorKind::Conflict, "sandbox x already exists".to_owned())
        );
        assert_eq!(
            ServiceError::Internal("disk".into()).message(),
            ("internal error".to_owned(), "disk".to_owned())
        );
    }
}
