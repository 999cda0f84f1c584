//! [`ClientError`].

use licensing_domain::clock::rfc3339;
use licensing_domain::clock::Millis;

/// What a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client was set up wrong (a bad public key), or the server's answer lacked a part.
    #[error("client configuration: {0}")]
    Config(&'static str),
    /// The server answered with an error status (its message says what to do).
    #[error("{code:?}: {message}")]
    Server {
        /// The gRPC status code.
        code: tonic::Code,
        /// The stable reason (ErrorInfo), empty when none was sent.
        reason: String,
        /// The server's explanation, for a person.
        message: String,
    },
    /// The server could not be reached and there is no usable offline certificate.
    #[error("the licensing server is unreachable: {0}")]
    Unreachable(String),
    /// Offline validation was asked for, but no certificate is stored.
    #[error("no certificate is stored for offline use: activate while online first")]
    NoCertificate,
    /// The product gave its activation back offline (its certificate is deleted and an offline
    /// deactivation request written): it is not licensed on this machine until activated again.
    #[error(
        "this product gave its activation back offline (its certificate was deleted): activate it again to use it"
    )]
    DeactivatedOffline,
    /// The stored certificate does not parse or verify (why).
    #[error("the stored certificate is not valid: {0}")]
    BadCertificate(String),
    /// Offline use ended at this instant (Unix ms, the certificate's `valid_until_ms`).
    #[error("the offline period ended at {}: connect to the licensing server", rfc3339(*.0))]
    OfflinePeriodOver(Millis),
    /// The machine's clock reads earlier than a time the product has seen (for a certificate, by more
    /// than [`crate::node_locked::CLOCK_TOLERANCE`]): offline use is refused.
    #[error("the system clock was set back (now {}, last seen {}): offline use is refused", rfc3339(*now), rfc3339(*last_seen))]
    ClockSetBack {
        /// The machine's clock now (Unix ms).
        now: Millis,
        /// The latest time the product had seen before (Unix ms).
        last_seen: Millis,
    },
    /// Too few of the certificate's fingerprint components match this machine.
    #[error("this machine does not match the certificate's fingerprint")]
    FingerprintMismatch,
    /// The certificate does not include this module.
    #[error("module '{0}' is not licensed")]
    ModuleNotLicensed(String),
    /// The certificate includes this module, but its own expiry passed: it is not licensed any
    /// more (the rest of the license may be).
    #[error("module '{module}' expired at {}: renew it with your vendor", rfc3339(*expired_at))]
    ModuleExpired {
        /// The module's code.
        module: String,
        /// When its own expiry passed (Unix ms).
        expired_at: Millis,
    },
    /// The trusted-storage file could not be read or written (why).
    #[error("trusted storage: {0}")]
    Storage(String),
    /// The borrow period ended at this instant (Unix ms).
    #[error("the borrowed seat's period ended at {}: connect to the licensing server", rfc3339(*.0))]
    BorrowEnded(Millis),
    /// The stored lease token does not verify, or is not for this seat (why).
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

    /// The error for a status the server (or the transport) answered with.
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
