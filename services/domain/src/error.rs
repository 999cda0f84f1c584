//! How errors are classified. Each service has its own error enum; each implements
//! [`ClassifiedError`], and one function in `licensing-runtime` turns any of them into a gRPC
//! status, so the mapping lives in one tested place.

use std::time::Duration;

/// The kinds of failure a caller can act on (the gRPC status codes this server uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    PermissionDenied,
    Unauthenticated,
    ResourceExhausted,
    Unavailable,
    DeadlineExceeded,
    /// The method is not served by the process that was called (another one serves it).
    Unimplemented,
    /// A bug on our side; never an answer to bad input.
    Internal,
}

pub trait ClassifiedError: std::error::Error {
    fn class(&self) -> ErrorClass;
    /// A stable UPPER_SNAKE reason a program can branch on (sent as google.rpc.ErrorInfo).
    fn reason(&self) -> &'static str;
    /// For ResourceExhausted: when trying again may succeed.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

/// What a store can fail with. Connection faults are [`StoreError::Unavailable`]: the caller sees
/// `Unavailable` and may retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0} not found")]
    NotFound(String),
    /// A conditional update found the row in another state (a limit reached, a status changed).
    #[error("{0}")]
    Conflict(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Text the database cannot store (PostgreSQL refuses a NUL character). The services refuse
    /// such input before it gets here; this keeps one they missed from answering INTERNAL.
    #[error("text with a character the database cannot store (a NUL): {0}")]
    UnstorableText(String),
    #[error("store error: {0}")]
    Other(String),
}

impl ClassifiedError for StoreError {
    fn class(&self) -> ErrorClass {
        match self {
            Self::Unavailable(_) => ErrorClass::Unavailable,
            Self::AlreadyExists(_) => ErrorClass::AlreadyExists,
            Self::NotFound(_) => ErrorClass::NotFound,
            Self::Conflict(_) => ErrorClass::FailedPrecondition,
            Self::UnstorableText(_) => ErrorClass::InvalidArgument,
            Self::Corrupt(_) | Self::Other(_) => ErrorClass::Internal,
        }
    }
    fn reason(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "STORE_UNAVAILABLE",
            Self::AlreadyExists(_) => "ALREADY_EXISTS",
            Self::NotFound(_) => "NOT_FOUND",
            Self::Conflict(_) => "CONFLICT",
            Self::Corrupt(_) => "STORE_CORRUPT",
            Self::UnstorableText(_) => "INVALID_ARGUMENT",
            Self::Other(_) => "STORE_ERROR",
        }
    }
}
