//! The one place where a service error becomes a `tonic::Status`: the class picks the code, the
//! message is the error's own (written for a person), and the reason goes out as a
//! `google.rpc.ErrorInfo` detail (plus `RetryInfo` when there is a retry-after) for programs.

use licensing_domain::error::{ClassifiedError, ErrorClass};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The ErrorInfo domain of every licensing error.
pub const ERROR_DOMAIN: &str = "licensing";

/// The gRPC code of an error class.
pub fn code_of(class: ErrorClass) -> Code {
    match class {
        ErrorClass::InvalidArgument => Code::InvalidArgument,
        ErrorClass::NotFound => Code::NotFound,
        ErrorClass::AlreadyExists => Code::AlreadyExists,
        ErrorClass::FailedPrecondition => Code::FailedPrecondition,
        ErrorClass::PermissionDenied => Code::PermissionDenied,
        ErrorClass::Unauthenticated => Code::Unauthenticated,
        ErrorClass::ResourceExhausted => Code::ResourceExhausted,
        ErrorClass::Unavailable => Code::Unavailable,
        ErrorClass::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorClass::Unimplemented => Code::Unimplemented,
        ErrorClass::Internal => Code::Internal,
    }
}

/// The longest message a status carries, in characters. Messages quote input only as short
/// previews (`licensing_domain::text::quoted`); this bound holds even where one was missed.
pub const MAX_MESSAGE_CHARS: usize = 500;

/// The gRPC status of a service error: the class's code, the error's message (bounded to
/// [`MAX_MESSAGE_CHARS`], generic for an internal error, which is logged), and ErrorInfo
/// (plus RetryInfo).
pub fn to_status<E: ClassifiedError + ?Sized>(error: &E) -> Status {
    let class = error.class();
    let message = match class {
        ErrorClass::Internal => {
            tracing::error!(error = %error, reason = error.reason(), "internal error");
            "internal error; it has been logged".to_owned()
        }
        ErrorClass::Unavailable => {
            tracing::warn!(error = %error, "dependency unavailable");
            format!("{error}; try again shortly")
        }
        _ => error.to_string(),
    };
    let message = licensing_domain::text::bounded_message(&message, MAX_MESSAGE_CHARS);
    let mut details =
        ErrorDetails::with_error_info(error.reason(), ERROR_DOMAIN, std::collections::HashMap::<String, String>::new());
    // One answer to "when may I try again": whole seconds (what `retry-after` can say), at
    // least one, in the header and in RetryInfo alike.
    let retry_seconds = error.retry_after().map(|after| after.as_secs_f64().ceil().max(1.0) as u64);
    if let Some(seconds) = retry_seconds {
        details.set_retry_info(Some(std::time::Duration::from_secs(seconds)));
    }
    let mut status = Status::with_error_details(code_of(class), message, details);
    if let Some(seconds) = retry_seconds {
        if let Ok(v) = seconds.to_string().parse() {
            status.metadata_mut().insert("retry-after", v);
        }
    }
    status
}

/// The reason (ErrorInfo) carried by a status made by [`to_status`], for clients and tests.
pub fn reason_of(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

/// The RetryInfo delay carried by a status made by [`to_status`], for clients and tests.
pub fn retry_delay_of(status: &Status) -> Option<std::time::Duration> {
    status.get_details_retry_info().and_then(|info| info.retry_delay)
}

/// `result.or_status()?` in gRPC handlers: any classified error through [`to_status`].
pub trait OrStatus<T> {
    /// The error as a gRPC status ([`to_status`]).
    fn or_status(self) -> Result<T, Status>;
}

impl<T, E: ClassifiedError> OrStatus<T> for Result<T, E> {
    fn or_status(self) -> Result<T, Status> {
        self.map_err(|e| to_status(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use licensing_domain::error::StoreError;
    use std::time::Duration;

    #[derive(Debug, thiserror::Error)]
    #[error("slow down")]
    struct Limited;
    impl ClassifiedError for Limited {
        fn class(&self) -> ErrorClass {
            ErrorClass::ResourceExhausted
        }
        fn reason(&self) -> &'static str {
            "RATE_LIMITED"
        }
        fn retry_after(&self) -> Option<Duration> {
            Some(Duration::from_millis(1500))
        }
    }

    #[test]
    fn every_class_has_its_code() {
        use ErrorClass::*;
        let pairs = [
            (InvalidArgument, Code::InvalidArgument),
            (NotFound, Code::NotFound),
            (AlreadyExists, Code::AlreadyExists),
            (FailedPrecondition, Code::FailedPrecondition),
            (PermissionDenied, Code::PermissionDenied),
            (Unauthenticated, Code::Unauthenticated),
            (ResourceExhausted, Code::ResourceExhausted),
            (Unavailable, Code::Unavailable),
            (DeadlineExceeded, Code::DeadlineExceeded),
            (Internal, Code::Internal),
        ];
        for (class, code) in pairs {
            assert_eq!(code_of(class), code);
        }
    }

    #[test]
    fn status_carries_message_reason_and_retry() {
        let s = to_status(&Limited);
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.message(), "slow down");
        assert_eq!(reason_of(&s).as_deref(), Some("RATE_LIMITED"));
        assert_eq!(s.metadata().get("retry-after").unwrap(), "2");
        // RetryInfo says what retry-after says.
        assert_eq!(s.get_details_retry_info().unwrap().retry_delay, Some(Duration::from_secs(2)));
    }

    #[derive(Debug, thiserror::Error)]
    #[error("no product with code {0}")]
    struct Echoes(String);
    impl ClassifiedError for Echoes {
        fn class(&self) -> ErrorClass {
            ErrorClass::NotFound
        }
        fn reason(&self) -> &'static str {
            "PRODUCT_NOT_FOUND"
        }
    }

    #[test]
    fn a_message_is_bounded_and_escaped_whatever_it_quotes() {
        let s = to_status(&Echoes(format!("\u{1b}[31m{}", "x".repeat(1 << 20))));
        assert!(s.message().chars().count() <= MAX_MESSAGE_CHARS + 1, "{}", s.message().len());
        assert!(!s.message().chars().any(char::is_control));
        assert!(s.message().starts_with("no product with code \\u{1b}[31mxxx"));
    }

    #[test]
    fn store_faults_are_unavailable_and_internal_errors_hide_details() {
        let s = to_status(&StoreError::Unavailable("connection refused".into()));
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(reason_of(&s).as_deref(), Some("STORE_UNAVAILABLE"));
        let s = to_status(&StoreError::Corrupt("secret table detail".into()));
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("secret table detail"));
    }
}
