//! [`ActivationError`] and its gRPC class.

use licensing_domain::error::{ClassifiedError, ErrorClass, StoreError};
use licensing_domain::fingerprint::FingerprintError;
use licensing_domain::meter::UseRefused;
use licensing_domain::model::Refusal;
use licensing_domain::server_usage::ServerUsageRefused;
use licensing_domain::store::ActivationStoreError;
use licensing_runtime::credentials::CredentialError;
use licensing_runtime::limiter::RateLimited;
use licensing_runtime::server::ShuttingDown;

/// What the Activation service's use cases fail with.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// The credentials did not name a license (or a wrong password was throttled).
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    /// A request field is out of bounds.
    #[error("{field}: {message}")]
    InvalidArgument {
        /// The request field at fault.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The presented fingerprint was refused.
    #[error(transparent)]
    Fingerprint(#[from] FingerprintError),
    /// Suspended, retired, expired, not yet valid, or not a node-locked license.
    #[error("{}", .0.message)]
    LicenseState(Refusal),
    /// Every activation of the license is in use.
    #[error(
        "all {seats} activations of license {license_id} are in use: deactivate the product on a machine you no longer use \
         (in the product, or in the customer portal for a lost machine), or ask your vendor for more activations"
    )]
    ActivationLimit {
        /// License ID.
        license_id: String,
        /// The license's activations.
        seats: i32,
    },
    /// Every server activation of a server license is in use.
    #[error(
        "all {seats} server activations of server license {license_id} are in use: return the license from the \
         server that holds it (its return file, AdminService.ProcessServerRequest), or ask your vendor for more"
    )]
    ServerLimit {
        /// License ID.
        license_id: String,
        /// The license's seats (servers).
        seats: i32,
    },
    /// A server request file does not decode, or asks for something impossible (why).
    #[error("{0}")]
    ServerRequest(String),
    /// The license's deactivations are spent.
    #[error(
        "license {license_id} has used all {allowed} of its deactivations: ask your vendor to deactivate this machine \
         or to allow more deactivations"
    )]
    DeactivationLimit {
        /// License ID.
        license_id: String,
        /// The license's allowed deactivations.
        allowed: i32,
    },
    /// No live activation of the license matches this machine (its License ID).
    #[error("license {0} is not activated on this machine")]
    NotActivated(String),
    /// The proven license has no live installation with this ID.
    #[error("the license you proved has no active installation {0}")]
    InstallationNotFound(String),
    /// A deactivation by Installation ID came with neither credentials nor a portal session.
    #[error(
        "installation_id alone proves nothing: send license_and_installation (the installation ID with the \
         license's key, or its License ID and activation password), or send the installation ID with the portal \
         session of the license's owner as metadata 'authorization: Bearer ses_…'"
    )]
    InstallationProofMissing,
    /// The portal session sent as proof is not live.
    #[error(
        "the portal session is not valid (expired or logged out): log in to the customer portal again, or send \
         the license's credentials with the installation ID (license_and_installation)"
    )]
    SessionInvalid,
    /// The offline activation request does not decode or verify (why).
    #[error("{0}")]
    OfflineRequest(String),
    /// An offline deactivation request does not decode, or names something malformed (why,
    /// starting with `request_file:`).
    #[error("{0}")]
    DeactivationRequest(String),
    /// A rate limit refused the call.
    #[error(transparent)]
    RateLimited(#[from] RateLimited),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// The server is draining.
    #[error(transparent)]
    ShuttingDown(#[from] ShuttingDown),
    /// No product has this code (a trial was asked for).
    #[error("product_code: no product has the code '{0}'")]
    ProductNotFound(String),
    /// The product offers no trial (none of its policies is a trial policy).
    #[error(
        "product '{0}' offers no trial (none of its policies is a trial policy): activate it with a license key, \
         or ask the vendor to create a trial policy"
    )]
    TrialNotOffered(String),
    /// The machine's trial of the product was converted to a paid license.
    #[error(
        "this machine's trial of product '{product_code}' was converted to the paid license {license_id}: \
         use that license (the same key as the trial)"
    )]
    TrialConverted {
        /// The product.
        product_code: String,
        /// The converted license.
        license_id: String,
    },
    /// A use of a meter was refused: unknown meter, over the limit, a reused key, or the
    /// license not usable.
    #[error(transparent)]
    Meter(UseRefused),
    /// A server's usage report was refused: unknown or freed installation, a serial never
    /// signed, or the period stored with other figures.
    #[error(transparent)]
    ServerUsage(ServerUsageRefused),
}

impl ActivationError {
    /// An [`Self::InvalidArgument`] from its field and message.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::InvalidArgument { field, message: message.into() }
    }

    /// The error for a store refusal of an (de)activation of `license_id`.
    pub fn from_store(e: ActivationStoreError, license_id: &str) -> Self {
        match e {
            ActivationStoreError::Store(s) => Self::Store(s),
            ActivationStoreError::LicenseNotFound(id) => Self::Credentials(CredentialError::UnknownLicense(id)),
            ActivationStoreError::Refused(r) => Self::LicenseState(r),
            ActivationStoreError::LimitReached { seats } => {
                Self::ActivationLimit { license_id: license_id.into(), seats }
            }
            ActivationStoreError::NoActivation => Self::NotActivated(license_id.into()),
            ActivationStoreError::DeactivationLimit { allowed } => {
                Self::DeactivationLimit { license_id: license_id.into(), allowed }
            }
        }
    }
}

impl From<StoreError> for ActivationError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl ClassifiedError for ActivationError {
    fn class(&self) -> ErrorClass {
        match self {
            Self::Credentials(e) => e.class(),
            Self::InvalidArgument { .. }
            | Self::Fingerprint(_)
            | Self::OfflineRequest(_)
            | Self::ServerRequest(_)
            | Self::DeactivationRequest(_) => ErrorClass::InvalidArgument,
            Self::LicenseState(_) | Self::TrialNotOffered(_) | Self::TrialConverted { .. } => {
                ErrorClass::FailedPrecondition
            }
            Self::ProductNotFound(_) => ErrorClass::NotFound,
            Self::ActivationLimit { .. } | Self::ServerLimit { .. } | Self::DeactivationLimit { .. } => {
                ErrorClass::ResourceExhausted
            }
            Self::NotActivated(_) | Self::InstallationNotFound(_) => ErrorClass::NotFound,
            Self::InstallationProofMissing | Self::SessionInvalid => ErrorClass::Unauthenticated,
            Self::RateLimited(e) => e.class(),
            Self::Store(e) => e.class(),
            Self::ShuttingDown(e) => e.class(),
            Self::Meter(UseRefused::UnknownMeter { .. }) => ErrorClass::NotFound,
            Self::Meter(UseRefused::LimitReached { .. }) => ErrorClass::ResourceExhausted,
            Self::Meter(UseRefused::KeyReused { .. }) => ErrorClass::AlreadyExists,
            Self::Meter(UseRefused::NotUsable(_)) => ErrorClass::FailedPrecondition,
            Self::ServerUsage(refused) => match refused {
                ServerUsageRefused::InstallationNotFound { .. } => ErrorClass::NotFound,
                ServerUsageRefused::Deactivated { .. } => ErrorClass::FailedPrecondition,
                ServerUsageRefused::UnknownSerial { .. } => ErrorClass::InvalidArgument,
                ServerUsageRefused::Conflict { .. } => ErrorClass::AlreadyExists,
            },
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::Credentials(e) => e.reason(),
            Self::InvalidArgument { .. } => "INVALID_ARGUMENT",
            Self::Fingerprint(_) => "FINGERPRINT_INVALID",
            Self::LicenseState(r) => r.reason,
            Self::ActivationLimit { .. } | Self::ServerLimit { .. } => "ACTIVATION_LIMIT_REACHED",
            Self::DeactivationLimit { .. } => "DEACTIVATION_LIMIT_REACHED",
            Self::NotActivated(_) => "NOT_ACTIVATED",
            Self::InstallationNotFound(_) => "INSTALLATION_NOT_FOUND",
            Self::InstallationProofMissing => "INSTALLATION_PROOF_MISSING",
            Self::SessionInvalid => "SESSION_INVALID",
            Self::OfflineRequest(_) => "OFFLINE_REQUEST_INVALID",
            Self::ProductNotFound(_) => "PRODUCT_NOT_FOUND",
            Self::TrialNotOffered(_) => "TRIAL_NOT_OFFERED",
            Self::TrialConverted { .. } => "TRIAL_CONVERTED",
            Self::ServerRequest(_) => "SERVER_REQUEST_INVALID",
            Self::DeactivationRequest(_) => "DEACTIVATION_REQUEST_INVALID",
            Self::RateLimited(e) => e.reason(),
            Self::Store(e) => e.reason(),
            Self::ShuttingDown(e) => e.reason(),
            Self::Meter(refused) => refused.reason(),
            Self::ServerUsage(refused) => match refused {
                ServerUsageRefused::InstallationNotFound { .. } => "INSTALLATION_NOT_FOUND",
                ServerUsageRefused::Deactivated { .. } => "SERVER_DEACTIVATED",
                ServerUsageRefused::UnknownSerial { .. } => "INVALID_ARGUMENT",
                ServerUsageRefused::Conflict { .. } => "USAGE_REPORT_CONFLICT",
            },
        }
    }

    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
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
        let cases: Vec<(ActivationError, Code, &str)> = vec![
            (ActivationError::invalid("machine", "missing"), Code::InvalidArgument, "INVALID_ARGUMENT"),
            (FingerprintError::Empty.into(), Code::InvalidArgument, "FINGERPRINT_INVALID"),
            (
                ActivationError::LicenseState(Refusal { reason: "SUSPENDED", message: "s".into() }),
                Code::FailedPrecondition,
                "SUSPENDED",
            ),
            (
                ActivationError::ActivationLimit { license_id: "l".into(), seats: 2 },
                Code::ResourceExhausted,
                "ACTIVATION_LIMIT_REACHED",
            ),
            (
                ActivationError::DeactivationLimit { license_id: "l".into(), allowed: 2 },
                Code::ResourceExhausted,
                "DEACTIVATION_LIMIT_REACHED",
            ),
            (
                ActivationError::ServerLimit { license_id: "l".into(), seats: 1 },
                Code::ResourceExhausted,
                "ACTIVATION_LIMIT_REACHED",
            ),
            (ActivationError::ServerRequest("request_file: x".into()), Code::InvalidArgument, "SERVER_REQUEST_INVALID"),
            (
                ActivationError::DeactivationRequest("request_file: x".into()),
                Code::InvalidArgument,
                "DEACTIVATION_REQUEST_INVALID",
            ),
            (ActivationError::NotActivated("l".into()), Code::NotFound, "NOT_ACTIVATED"),
            (
                ActivationError::ServerUsage(ServerUsageRefused::InstallationNotFound {
                    license_id: "l".into(),
                    installation_id: "i".into(),
                }),
                Code::NotFound,
                "INSTALLATION_NOT_FOUND",
            ),
            (
                ActivationError::ServerUsage(ServerUsageRefused::Deactivated {
                    license_id: "l".into(),
                    installation_id: "i".into(),
                    deactivated_at: 0,
                }),
                Code::FailedPrecondition,
                "SERVER_DEACTIVATED",
            ),
            (
                ActivationError::ServerUsage(ServerUsageRefused::UnknownSerial {
                    installation_id: "i".into(),
                    serial: 9,
                    latest: 1,
                }),
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
            (
                ActivationError::ServerUsage(ServerUsageRefused::Conflict {
                    installation_id: "i".into(),
                    report_id: "r".into(),
                }),
                Code::AlreadyExists,
                "USAGE_REPORT_CONFLICT",
            ),
            (ActivationError::TrialNotOffered("cad".into()), Code::FailedPrecondition, "TRIAL_NOT_OFFERED"),
            (ActivationError::ProductNotFound("cad".into()), Code::NotFound, "PRODUCT_NOT_FOUND"),
            (ActivationError::InstallationProofMissing, Code::Unauthenticated, "INSTALLATION_PROOF_MISSING"),
            (ActivationError::SessionInvalid, Code::Unauthenticated, "SESSION_INVALID"),
            (CredentialError::WrongPassword("l".into()).into(), Code::PermissionDenied, "WRONG_ACTIVATION_PASSWORD"),
            (CredentialError::UnknownKey.into(), Code::NotFound, "LICENSE_NOT_FOUND"),
            (StoreError::Unavailable("x".into()).into(), Code::Unavailable, "STORE_UNAVAILABLE"),
            (ShuttingDown.into(), Code::Unavailable, "SHUTTING_DOWN"),
            (
                ActivationError::Meter(UseRefused::UnknownMeter {
                    license_id: "l".into(),
                    meter: "m".into(),
                    known: "none".into(),
                }),
                Code::NotFound,
                "METER_NOT_FOUND",
            ),
            (
                ActivationError::Meter(UseRefused::LimitReached {
                    license_id: "l".into(),
                    meter: "m".into(),
                    amount: 2,
                    used: 19,
                    limit: 20,
                    overage: 0,
                    left: 1,
                }),
                Code::ResourceExhausted,
                "METER_LIMIT_REACHED",
            ),
            (
                ActivationError::Meter(UseRefused::KeyReused {
                    key: "k".into(),
                    recorded_meter: "m".into(),
                    recorded_amount: 1,
                }),
                Code::AlreadyExists,
                "IDEMPOTENCY_KEY_REUSED",
            ),
            (
                RateLimited {
                    what: "activation",
                    scope: "license l".into(),
                    rate: "1/s".parse().unwrap(),
                    retry_after: std::time::Duration::from_secs(1),
                }
                .into(),
                Code::ResourceExhausted,
                "RATE_LIMITED",
            ),
        ];
        for (error, code, reason) in cases {
            let status = to_status(&error);
            assert_eq!((status.code(), reason_of(&status).unwrap()), (code, reason.to_owned()), "{error}");
        }
    }
}
