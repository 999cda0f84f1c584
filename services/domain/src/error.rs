//! How errors are classified. Each service has its own error enum; each implements
//! [`ClassifiedError`], and one function in `licensing-runtime` turns any of them into a gRPC
//! status, so the mapping lives in one tested place.

use std::time::Duration;

/// The kinds of failure a caller can act on (the gRPC status codes this server uses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request itself is wrong (a malformed key, an unknown field value); retrying cannot help.
    InvalidArgument,
    /// What the request names does not exist (or is not the caller's to see).
    NotFound,
    /// Creating something that exists already (a product code, an email in use).
    AlreadyExists,
    /// The thing exists but is in the wrong state for this (a suspended or expired license).
    FailedPrecondition,
    /// The caller may not do this (a wrong activation password, a seat policy's refusal).
    PermissionDenied,
    /// No credentials, or credentials that do not check out.
    Unauthenticated,
    /// A limit was reached (seats, activations, request rate); see [`ClassifiedError::retry_after`].
    ResourceExhausted,
    /// A dependency (store, Redis) is down; the caller may retry.
    Unavailable,
    /// Waiting ran out of time (a checkout waiting in the seat queue).
    DeadlineExceeded,
    /// The method is not served by the process that was called (another one serves it).
    Unimplemented,
    /// A bug on our side; never an answer to bad input.
    Internal,
}

/// An error that knows its [`ErrorClass`] and reason, from which `licensing_runtime::status::to_status`
/// makes the gRPC status.
pub trait ClassifiedError: std::error::Error {
    /// The kind of failure, which picks the gRPC status code.
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
    /// A connection fault or timeout: the caller may retry.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// A unique key is taken (the text names what).
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The row named does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A conditional update found the row in another state (a limit reached, a status changed).
    #[error("{0}")]
    Conflict(String),
    /// A row the store cannot read back (bad JSON, an unknown status): a bug or a manual edit.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Text the database cannot store (PostgreSQL refuses a NUL character). The services refuse
    /// such input before it gets here; this keeps one they missed from answering INTERNAL.
    #[error("text with a character the database cannot store (a NUL): {0}")]
    UnstorableText(String),
    /// Anything else the driver reported.
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
