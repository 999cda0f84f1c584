//! [`ClientError`].

use licensing_domain::clock::rfc3339;
use licensing_domain::clock::Millis;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("client configuration: {0}")]
    Config(&'static str),
    /// The server answered with an error status (its message says what to do).
    #[error("{code:?}: {message}")]
    Server { code: tonic::Code, reason: String, message: String },
    /// The server could not be reached and there is no usable offline certificate.
    #[error("the licensing server is unreachable: {0}")]
    Unreachable(String),
    #[error("no certificate is stored for offline use: activate while online first")]
    NoCertificate,
    #[error("the stored certificate is not valid: {0}")]
    BadCertificate(String),
    #[error("the offline period ended at {}: connect to the licensing server", rfc3339(*.0))]
    OfflinePeriodOver(Millis),
    #[error("the system clock was set back (now {}, last seen {}): offline use is refused", rfc3339(*now), rfc3339(*last_seen))]
    ClockSetBack { now: Millis, last_seen: Millis },
    #[error("this machine does not match the certificate's fingerprint")]
    FingerprintMismatch,
    #[error("module '{0}' is not licensed")]
    ModuleNotLicensed(String),
    #[error("trusted storage: {0}")]
    Storage(String),
    #[error("the borrowed seat's period ended at {}: connect to the licensing server", rfc3339(*.0))]
    BorrowEnded(Millis),
    #[error("the borrowed seat's token is not valid: {0}")]
    BadLeaseToken(String),
}

impl ClientError {
    /// Whether the server could not be reached (so offline rules apply), as opposed to an answer.
    pub fn is_unreachable(status: &tonic::Status) -> bool {
        matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled | tonic::Code::Unknown
        ) && licensing_reason(status).is_none_or(|r| r == "STORE_UNAVAILABLE")
    }

    pub fn from_status(status: tonic::Status) -> Self {
        if Self::is_unreachable(&status) {
            return Self::Unreachable(status.message().to_owned());
        }
        Self::Server {
            code: status.code(),
            reason: licensing_reason(&status).unwrap_or_default(),
            message: status.message().to_owned(),
        }
    }

    /// The server's stable reason code, when it sent one.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Server { reason, .. } if !reason.is_empty() => Some(reason),
            _ => None,
        }
    }
}

/// The server's `google.rpc.ErrorInfo` reason of a status.
pub(crate) fn licensing_reason(status: &tonic::Status) -> Option<String> {
    use tonic_types::StatusExt;
    status.get_details_error_info().map(|info| info.reason)
}
