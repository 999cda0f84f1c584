//! [`SeatError`] and its gRPC class.

use licensing_domain::change::ChangeError;
use licensing_domain::clock::{rfc3339, Millis};
use licensing_domain::error::{ClassifiedError, ErrorClass, StoreError};
use licensing_domain::model::Refusal;
use licensing_domain::seat_policy::{Principal, SeatDenial};
use licensing_domain::store::UpdateError;
use licensing_runtime::auth::AuthError;
use licensing_runtime::credentials::CredentialError;
use licensing_runtime::limiter::RateLimited;
use licensing_runtime::server::ShuttingDown;
use std::time::Duration;

/// What the Seat service's use cases fail with.
#[derive(Debug, thiserror::Error)]
pub enum SeatError {
    /// The credentials did not name a license (or a wrong password was throttled).
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    /// An admin or owner call was not authorized.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A request field is out of bounds.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The request field at fault.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The license may not be used now (suspended, expired, not concurrent, …).
    #[error("{}", .0.message)]
    LicenseState(Refusal),
    /// The license does not include the feature checked out, or no longer: the module's own
    /// expiry passed.
    #[error("{}", feature_text(license_id, feature, *expired_at))]
    FeatureNotLicensed {
        /// License ID.
        license_id: String,
        /// The feature asked for.
        feature: String,
        /// When the module's own expiry passed (Unix ms), if that is why.
        expired_at: Option<licensing_domain::clock::Millis>,
    },
    /// No seat for this checkout; the caller may wait (`WaitForSeat`) or retry.
    #[error("{}{}", denial_text(license_id, *seats, *in_use, denial), earliest_text(*.earliest_expiry))]
    NoSeat {
        /// License ID.
        license_id: String,
        /// The license's seats.
        seats: i32,
        /// Seats in use.
        in_use: i32,
        /// Which limit said no.
        denial: SeatDenial,
        /// When the earliest live lease expires (Unix ms), if any is live.
        earliest_expiry: Option<Millis>,
        /// When trying again may succeed.
        retry_after: Option<Duration>,
    },
    /// The seat policy refuses this user, host or group (waiting would not help).
    #[error("{}", denial_text(license_id, 0, 0, denial))]
    Denied {
        /// License ID.
        license_id: String,
        /// The policy's refusal.
        denial: SeatDenial,
    },
    /// A borrow was asked for on a license whose policy allows none (its License ID).
    #[error("license {0} does not allow borrowing; ask its administrator to set max_borrow")]
    BorrowNotAllowed(String),
    /// The lease expired (its Lease ID): check out again.
    #[error("lease {0} has expired: check out again")]
    LeaseExpired(String),
    /// An administrator revoked the lease (its Lease ID).
    #[error("lease {0} was revoked by an administrator")]
    LeaseRevoked(String),
    /// The license has no live lease with this ID.
    #[error("license {license_id} has no live lease {lease_id}: check out again")]
    LeaseNotFound {
        /// License ID.
        license_id: String,
        /// Lease ID.
        lease_id: String,
    },
    /// No license has this ID.
    #[error("no license with ID {0}")]
    LicenseNotFound(String),
    /// `WaitForSeat` waited its longest (in ms) without a seat.
    #[error("no seat became free within {0} ms")]
    WaitTimedOut(u128),
    /// The operation is not available here (why).
    #[error("{0}")]
    NotAvailable(&'static str),
    /// The license's state does not allow the policy change (why).
    #[error("{0}")]
    PolicyNotAllowed(String),
    /// An on-premises server serves only the seats its file grants: no policy may add seats.
    #[error("{0}")]
    BeyondServerLicense(String),
    /// The lease store lost its leases and holds new seats back (see `CheckoutOutcome::Recovering`).
    #[error("the lease store lost its leases and hands out no new seat until {}, when every lease it may have forgotten has expired; holders of leases keep them by heartbeat with their lease token", rfc3339(*until))]
    Recovering {
        /// No new seats before this instant (Unix ms, the lease store's clock).
        until: Millis,
        /// How long until then.
        retry_after: Duration,
    },
    /// A lease token sent to re-establish a lease does not verify (why).
    #[error("lease_token: {0}")]
    BadLeaseToken(String),
    /// A rate limit refused the call.
    #[error(transparent)]
    RateLimited(#[from] RateLimited),
    /// The server is draining.
    #[error(transparent)]
    ShuttingDown(#[from] ShuttingDown),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn feature_text(license_id: &str, feature: &str, expired_at: Option<licensing_domain::clock::Millis>) -> String {
    let feature = licensing_domain::text::quoted(feature);
    match expired_at {
        Some(at) => format!(
            "feature {feature} of license {license_id} expired at {}; renew it with your vendor",
            licensing_domain::clock::rfc3339(at)
        ),
        None => format!("feature {feature} is not licensed by license {license_id}"),
    }
}

fn denial_text(license_id: &str, seats: i32, in_use: i32, denial: &SeatDenial) -> String {
    match denial {
        SeatDenial::Full => format!("all {seats} seats of license {license_id} are in use ({in_use} held)"),
        SeatDenial::Reserved => format!(
            "no seat of license {license_id} is free for you: {in_use} of {seats} are in use and the rest are reserved for others"
        ),
        SeatDenial::CapReached { principal, max_seats } => {
            // The store names the principal by its key (u:…, h:…, g:…); people read "user 'ann'".
            let who = Principal::from_key(principal).map_or_else(|| principal.clone(), |p| p.to_string());
            format!("{who} already holds its limit of {max_seats} seats of license {license_id}")
        }
        SeatDenial::Denied { principal } => {
            format!("the seat policy of license {license_id} denies {principal}")
        }
        SeatDenial::NotAllowed => {
            format!("the seat policy of license {license_id} allows only listed users, hosts and groups; you are not listed")
        }
        SeatDenial::Queued => format!(
            "no seat of license {license_id} is free for you now: {in_use} of {seats} are in use and clients waiting in line (WaitForSeat) get the next free seat first; wait in line too, or try again later"
        ),
    }
}

fn earliest_text(earliest: Option<Millis>) -> String {
    earliest.map(|e| format!("; the earliest lease expires at {}", rfc3339(e))).unwrap_or_default()
}

impl From<UpdateError> for SeatError {
    fn from(e: UpdateError) -> Self {
        match e {
            UpdateError::Store(s) => s.into(),
            UpdateError::Rejected(ChangeError::Invalid { field, message }) => Self::InvalidArgument { field, message },
            UpdateError::Rejected(ChangeError::NotAllowed(message)) => Self::PolicyNotAllowed(message),
        }
    }
}

impl SeatError {
    /// An [`Self::InvalidArgument`] from its field and message.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidArgument { field, message: message.into() }
    }
}

impl ClassifiedError for SeatError {
    fn class(&self) -> ErrorClass {
        match self {
            Self::Credentials(e) => e.class(),
            Self::Auth(e) => e.class(),
            Self::InvalidArgument { .. } => ErrorClass::InvalidArgument,
            Self::LicenseState(_)
            | Self::FeatureNotLicensed { .. }
            | Self::LeaseRevoked(_)
            | Self::NotAvailable(_)
            | Self::BorrowNotAllowed(_)
            | Self::PolicyNotAllowed(_) => ErrorClass::FailedPrecondition,
            Self::Denied { .. } | Self::BeyondServerLicense(_) => ErrorClass::PermissionDenied,
            Self::NoSeat { .. } => ErrorClass::ResourceExhausted,
            Self::LeaseExpired(_) | Self::LeaseNotFound { .. } | Self::LicenseNotFound(_) => ErrorClass::NotFound,
            Self::WaitTimedOut(_) => ErrorClass::DeadlineExceeded,
            Self::Recovering { .. } => ErrorClass::Unavailable,
            Self::BadLeaseToken(_) => ErrorClass::InvalidArgument,
            Self::RateLimited(e) => e.class(),
            Self::ShuttingDown(e) => e.class(),
            Self::Store(e) => e.class(),
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::Credentials(e) => e.reason(),
            Self::Auth(e) => e.reason(),
            Self::InvalidArgument { .. } => "INVALID_ARGUMENT",
            Self::LicenseState(r) => r.reason,
            Self::FeatureNotLicensed { .. } => "FEATURE_NOT_LICENSED",
            Self::NoSeat { denial, .. } | Self::Denied { denial, .. } => denial.reason(),
            Self::BorrowNotAllowed(_) => "BORROW_NOT_ALLOWED",
            Self::PolicyNotAllowed(_) => "FAILED_PRECONDITION",
            Self::BeyondServerLicense(_) => "BEYOND_SERVER_LICENSE",
            Self::LeaseExpired(_) => "LEASE_EXPIRED",
            Self::LeaseRevoked(_) => "LEASE_REVOKED",
            Self::LeaseNotFound { .. } => "LEASE_NOT_FOUND",
            Self::LicenseNotFound(_) => "LICENSE_NOT_FOUND",
            Self::WaitTimedOut(_) => "WAIT_TIMED_OUT",
            Self::NotAvailable(_) => "NOT_AVAILABLE",
            Self::Recovering { .. } => "LEASE_STORE_RECOVERING",
            Self::BadLeaseToken(_) => "LEASE_TOKEN_INVALID",
            Self::RateLimited(e) => e.reason(),
            Self::ShuttingDown(e) => e.reason(),
            Self::Store(e) => e.reason(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::NoSeat { retry_after, .. } => *retry_after,
            Self::Recovering { retry_after, .. } => Some(*retry_after),
            Self::Credentials(e) => e.retry_after(),
            Self::RateLimited(e) => e.retry_after(),
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
        let cases: Vec<(SeatError, Code, &str)> = vec![
            (SeatError::invalid("ttl", "negative"), Code::InvalidArgument, "INVALID_ARGUMENT"),
            (
                SeatError::NoSeat {
                    license_id: "l".into(),
                    seats: 2,
                    in_use: 2,
                    denial: SeatDenial::Full,
                    earliest_expiry: Some(5),
                    retry_after: Some(Duration::from_secs(3)),
                },
                Code::ResourceExhausted,
                "NO_SEAT_AVAILABLE",
            ),
            (SeatError::LeaseExpired("x".into()), Code::NotFound, "LEASE_EXPIRED"),
            (SeatError::LeaseRevoked("x".into()), Code::FailedPrecondition, "LEASE_REVOKED"),
            (
                SeatError::LeaseNotFound { license_id: "l".into(), lease_id: "x".into() },
                Code::NotFound,
                "LEASE_NOT_FOUND",
            ),
            (SeatError::WaitTimedOut(5), Code::DeadlineExceeded, "WAIT_TIMED_OUT"),
            (
                SeatError::LicenseState(Refusal { reason: "WRONG_KIND", message: "m".into() }),
                Code::FailedPrecondition,
                "WRONG_KIND",
            ),
            (StoreError::Unavailable("Redis down".into()).into(), Code::Unavailable, "STORE_UNAVAILABLE"),
            (AuthError::MissingAdminToken.into(), Code::Unauthenticated, "ADMIN_TOKEN_MISSING"),
            (
                SeatError::NoSeat {
                    license_id: "l".into(),
                    seats: 4,
                    in_use: 2,
                    denial: SeatDenial::Reserved,
                    earliest_expiry: None,
                    retry_after: None,
                },
                Code::ResourceExhausted,
                "SEATS_RESERVED",
            ),
            (
                SeatError::NoSeat {
                    license_id: "l".into(),
                    seats: 4,
                    in_use: 2,
                    denial: SeatDenial::CapReached { principal: "u:ann".into(), max_seats: 1 },
                    earliest_expiry: None,
                    retry_after: None,
                },
                Code::ResourceExhausted,
                "CAP_REACHED",
            ),
            (
                SeatError::Denied {
                    license_id: "l".into(),
                    denial: SeatDenial::Denied { principal: "user 'x'".into() },
                },
                Code::PermissionDenied,
                "DENIED",
            ),
            (
                SeatError::Denied { license_id: "l".into(), denial: SeatDenial::NotAllowed },
                Code::PermissionDenied,
                "NOT_ALLOWED",
            ),
            (SeatError::BorrowNotAllowed("l".into()), Code::FailedPrecondition, "BORROW_NOT_ALLOWED"),
            (
                SeatError::Recovering { until: 9, retry_after: Duration::from_secs(30) },
                Code::Unavailable,
                "LEASE_STORE_RECOVERING",
            ),
            (SeatError::BadLeaseToken("bad signature".into()), Code::InvalidArgument, "LEASE_TOKEN_INVALID"),
            (
                RateLimited {
                    what: "checkout",
                    scope: "license l".into(),
                    rate: "1/s".parse().unwrap(),
                    retry_after: Duration::from_secs(1),
                }
                .into(),
                Code::ResourceExhausted,
                "RATE_LIMITED",
            ),
            (
                UpdateError::Rejected(ChangeError::Invalid { field: "reservations", message: "too many".into() })
                    .into(),
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
        ];
        for (error, code, reason) in cases {
            let status = to_status(&error);
            assert_eq!((status.code(), reason_of(&status).unwrap()), (code, reason.to_owned()), "{error}");
        }
        let status = to_status(&SeatError::NoSeat {
            license_id: "l".into(),
            seats: 2,
            in_use: 2,
            denial: SeatDenial::Full,
            earliest_expiry: Some(5),
            retry_after: Some(Duration::from_secs(3)),
        });
        assert!(status.message().contains("all 2 seats") && status.message().contains("earliest lease expires"));
        assert_eq!(status.metadata().get("retry-after").unwrap(), "3");
    }
}
