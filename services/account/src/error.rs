//! [`AccountError`]: everything the Account service can answer with, and its gRPC class.

use licensing_domain::change::ChangeError;
use licensing_domain::error::{ClassifiedError, ErrorClass, StoreError};
use licensing_domain::store::UpdateError;
use licensing_runtime::auth::AuthError;
use licensing_runtime::limiter::RateLimited;

/// What the Account service (admin API, portal, web portal) answers with.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// A request field is malformed or out of range; the message names the field.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The request field at fault, e.g. `payment.currency`.
        field: &'static str,
        /// What is wrong with it and what is allowed.
        message: String,
    },
    /// What the request names does not exist (or is not the caller's).
    #[error("{message}")]
    NotFound {
        /// The stable reason, e.g. `LICENSE_NOT_FOUND`.
        reason: &'static str,
        /// What was not found, for a person.
        message: String,
    },
    /// Creating something that exists already (what).
    #[error("{0}")]
    AlreadyExists(String),
    /// The request does not fit the current state.
    #[error("{message}")]
    FailedPrecondition {
        /// The stable reason.
        reason: &'static str,
        /// Why not, for a person.
        message: String,
    },
    /// A login or token did not check out.
    #[error("{message}")]
    Unauthenticated {
        /// The stable reason, e.g. `LOGIN_FAILED`.
        reason: &'static str,
        /// What to do, for a person.
        message: String,
    },
    /// A limit was reached; the caller may retry after `retry_after`.
    #[error("{message}")]
    ResourceExhausted {
        /// The stable reason.
        reason: &'static str,
        /// What to do, for a person.
        message: String,
        /// When trying again may succeed.
        retry_after: std::time::Duration,
    },
    /// An admin or session token was not accepted.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
}

impl AccountError {
    /// An [`Self::InvalidArgument`] from its field and message.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidArgument { field, message: message.into() }
    }
}

impl From<StoreError> for AccountError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AlreadyExists(what) => Self::AlreadyExists(format!("{what} already exists")),
            StoreError::NotFound(what) => Self::NotFound { reason: "NOT_FOUND", message: format!("{what} not found") },
            StoreError::Conflict(message) => Self::FailedPrecondition { reason: "CONFLICT", message },
            other => Self::Store(other),
        }
    }
}

impl From<RateLimited> for AccountError {
    fn from(e: RateLimited) -> Self {
        Self::ResourceExhausted { reason: "RATE_LIMITED", message: e.to_string(), retry_after: e.retry_after }
    }
}

impl From<UpdateError> for AccountError {
    fn from(e: UpdateError) -> Self {
        match e {
            UpdateError::Store(s) => s.into(),
            UpdateError::Rejected(ChangeError::Invalid { field, message }) => Self::InvalidArgument { field, message },
            UpdateError::Rejected(ChangeError::NotAllowed(message)) => {
                Self::FailedPrecondition { reason: "LICENSE_STATE", message }
            }
        }
    }
}

impl ClassifiedError for AccountError {
    fn class(&self) -> ErrorClass {
        match self {
            Self::InvalidArgument { .. } => ErrorClass::InvalidArgument,
            Self::NotFound { .. } => ErrorClass::NotFound,
            Self::AlreadyExists(_) => ErrorClass::AlreadyExists,
            Self::FailedPrecondition { .. } => ErrorClass::FailedPrecondition,
            Self::Unauthenticated { .. } => ErrorClass::Unauthenticated,
            Self::ResourceExhausted { .. } => ErrorClass::ResourceExhausted,
            Self::Auth(e) => e.class(),
            Self::Store(e) => e.class(),
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::InvalidArgument { .. } => "INVALID_ARGUMENT",
            Self::NotFound { reason, .. }
            | Self::FailedPrecondition { reason, .. }
            | Self::Unauthenticated { reason, .. }
            | Self::ResourceExhausted { reason, .. } => reason,
            Self::AlreadyExists(_) => "ALREADY_EXISTS",
            Self::Auth(e) => e.reason(),
            Self::Store(e) => e.reason(),
        }
    }

    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::ResourceExhausted { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use licensing_runtime::status::{reason_of, to_status};
    use tonic::Code;

    #[test]
    fn each_variant_maps_to_its_status() {
        let cases: Vec<(AccountError, Code, &str)> = vec![
            (AccountError::invalid("seats", "must be positive"), Code::InvalidArgument, "INVALID_ARGUMENT"),
            (
                AccountError::NotFound { reason: "LICENSE_NOT_FOUND", message: "x".into() },
                Code::NotFound,
                "LICENSE_NOT_FOUND",
            ),
            (AccountError::AlreadyExists("product".into()), Code::AlreadyExists, "ALREADY_EXISTS"),
            (
                AccountError::FailedPrecondition { reason: "LICENSE_STATE", message: "x".into() },
                Code::FailedPrecondition,
                "LICENSE_STATE",
            ),
            (AccountError::Auth(AuthError::MissingAdminToken), Code::Unauthenticated, "ADMIN_TOKEN_MISSING"),
            (AccountError::Auth(AuthError::InvalidAdminToken), Code::Unauthenticated, "ADMIN_TOKEN_INVALID"),
            (StoreError::Unavailable("down".into()).into(), Code::Unavailable, "STORE_UNAVAILABLE"),
            (StoreError::AlreadyExists("customer".into()).into(), Code::AlreadyExists, "ALREADY_EXISTS"),
            (
                UpdateError::Rejected(ChangeError::Invalid { field: "expires_at", message: "too early".into() }).into(),
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
        ];
        for (error, code, reason) in cases {
            let status = to_status(&error);
            assert_eq!(status.code(), code, "{error}");
            assert_eq!(reason_of(&status).as_deref(), Some(reason), "{error}");
        }
        let status = to_status(&AccountError::invalid("seats", "must be positive"));
        assert_eq!(status.message(), "seats: must be positive");
    }
}
