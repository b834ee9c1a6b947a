//! The one mapping of a service error to a gRPC status: its [`ErrorKind`] picks the
//! code, its message (and details, after a colon) the text.

use tonic::{Code, Status};

use crate::error::{ErrorKind, ServiceError};

/// The gRPC code of a kind of failure.
pub fn code_of(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::Invalid => Code::InvalidArgument,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::Forbidden => Code::PermissionDenied,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Conflict | ErrorKind::Unprocessable => Code::FailedPrecondition,
        ErrorKind::Busy { .. } | ErrorKind::InsufficientStorage => Code::ResourceExhausted,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Timeout => Code::DeadlineExceeded,
        ErrorKind::Upstream | ErrorKind::Internal => Code::Internal,
    }
}

/// The status a failed call answers.
pub fn status(e: impl Into<ServiceError>) -> Status {
    let e = e.into();
    let code = code_of(e.kind());
    let (error, details) = e.message();
    let message = if details.is_empty() {
        error
    } else {
        format!("{error}: {details}")
    };
    Status::new(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::AgentError;
    use crate::governance::auth::AuthError;
    use crate::store::StoreError;

    #[test]
    fn each_kind_has_its_code_and_the_details_follow_the_message() {
        let cases: Vec<(ServiceError, Code)> = vec![
            (ServiceError::Invalid("why".into()), Code::InvalidArgument),
            (
                AuthError::Unauthenticated("why".into()).into(),
                Code::Unauthenticated,
            ),
            (
                ServiceError::Forbidden("why".into()),
                Code::PermissionDenied,
            ),
            (ServiceError::NotFound("why".into()), Code::NotFound),
            (
                ServiceError::Conflict("why".into()),
                Code::FailedPrecondition,
            ),
            (
                ServiceError::Unprocessable("why".into()),
                Code::FailedPrecondition,
            ),
            (ServiceError::Unavailable("why".into()), Code::Unavailable),
            (
                AgentError::Timeout {
                    host: "h".into(),
                    seconds: 1,
                }
                .into(),
                Code::DeadlineExceeded,
            ),
            (
                AgentError::InsufficientStorage {
                    host: "h".into(),
                    message: "full".into(),
                }
                .into(),
                Code::ResourceExhausted,
            ),
            (
                ServiceError::Busy {
                    message: "why".into(),
                    retry_after_secs: 1,
                },
                Code::ResourceExhausted,
            ),
        ];
        for (e, code) in cases {
            let what = format!("{e:?}");
            assert_eq!(status(e).code(), code, "{what}");
        }
        let s = status(StoreError::Unavailable("pool timed out".into()));
        assert_eq!(
            (s.code(), s.message()),
            (Code::Unavailable, "store unavailable: pool timed out")
        );
        let s = status(ServiceError::Internal("a bug".into()));
        assert_eq!(
            (s.code(), s.message()),
            (Code::Internal, "internal error: a bug")
        );
    }
}
