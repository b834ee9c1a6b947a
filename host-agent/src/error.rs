//! The error the sandbox service returns; `grpc` maps each kind to a status code.

use crate::hypervisor::HypervisorError;
use crate::network::FirewallError;
use crate::overlay::OverlayError;
use crate::state::StateError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// A size past a limit (a file larger than the caller allows).
    #[error("{0}")]
    OutOfRange(String),
    /// Too many of something at once (tunnels); retry later.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The host's disk cannot take what the operation would write (a free-space check
    /// before an export or a snapshot): RESOURCE_EXHAUSTED marked `storage`.
    #[error("{0}")]
    InsufficientStorage(String),
    /// A per-sandbox or per-host cap on disk-heavy operations is reached; retry later:
    /// RESOURCE_EXHAUSTED marked `busy`.
    #[error("{0}")]
    Busy(String),
    /// libvirt (or another backend) cannot be reached; retry later.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<HypervisorError> for ServiceError {
    fn from(e: HypervisorError) -> Self {
        match e {
            HypervisorError::Unavailable(m) => Self::Unavailable(format!("libvirt: {m}")),
            HypervisorError::NotFound(m) => Self::Internal(format!("libvirt: {m} not found")),
            HypervisorError::NoSnapshot(m) => Self::NotFound(m),
            HypervisorError::Failed(m) => Self::Internal(format!("libvirt: {m}")),
        }
    }
}

/// The sandbox network rules could not be applied: nothing that needs them may go on
/// (a create is undone), and the caller may retry.
impl From<FirewallError> for ServiceError {
    fn from(e: FirewallError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl From<StateError> for ServiceError {
    fn from(e: StateError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<OverlayError> for ServiceError {
    fn from(e: OverlayError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::InvalidArgument(m) => tonic::Status::invalid_argument(m),
            ServiceError::NotFound(m) => tonic::Status::not_found(m),
            ServiceError::AlreadyExists(m) => tonic::Status::already_exists(m),
            ServiceError::FailedPrecondition(m) => tonic::Status::failed_precondition(m),
            ServiceError::DeadlineExceeded(m) => tonic::Status::deadline_exceeded(m),
            ServiceError::PermissionDenied(m) => tonic::Status::permission_denied(m),
            ServiceError::OutOfRange(m) => tonic::Status::out_of_range(m),
            ServiceError::ResourceExhausted(m) => tonic::Status::resource_exhausted(m),
            ServiceError::InsufficientStorage(m) => exhausted(m, EXHAUSTED_STORAGE),
            ServiceError::Busy(m) => exhausted(m, EXHAUSTED_BUSY),
            ServiceError::Unavailable(m) => tonic::Status::unavailable(m),
            ServiceError::Internal(m) => tonic::Status::internal(m),
        }
    }
}

/// gRPC metadata key saying which resource a RESOURCE_EXHAUSTED is about (the
/// controller answers 507 for `storage`, 429 for `busy`).
pub const EXHAUSTED_KEY: &str = "fluid-exhausted";
pub const EXHAUSTED_STORAGE: &str = "storage";
pub const EXHAUSTED_BUSY: &str = "busy";

fn exhausted(message: String, what: &'static str) -> tonic::Status {
    let mut md = tonic::metadata::MetadataMap::new();
    md.insert(
        EXHAUSTED_KEY,
        tonic::metadata::MetadataValue::from_static(what),
    );
    tonic::Status::with_metadata(tonic::Code::ResourceExhausted, message, md)
}
