//! What the on-premises server's operations fail with, classified once (see `to_status`).

use crate::vendor::VendorError;
use licensing_domain::error::{ClassifiedError, ErrorClass, StoreError};

/// A refused or failed on-premises operation.
#[derive(Debug, thiserror::Error)]
pub enum OnPremError {
    /// The text is not a valid server license file of this vendor (altered, another key, not
    /// a file at all).
    #[error("server_license_file: not a valid server license file: {0}")]
    InvalidFile(String),
    /// The file is bound to another machine.
    #[error("{0}")]
    WrongMachine(String),
    /// The file is not newer than one already imported here (a replayed or older file).
    #[error("server_license_file: serial {serial} is not newer than the serial {highest} already imported here: an older or replayed file is never taken again")]
    Superseded {
        /// The file's serial.
        serial: i64,
        /// The highest serial imported for its license.
        highest: i64,
    },
    /// There is no file in force (to return).
    #[error("this server has no server license file in force")]
    NoFile,
    /// An online operation on a server without `LICENSING_VENDOR_URL`.
    #[error("this server is air-gapped (no LICENSING_VENDOR_URL): exchange files instead (WriteActivationRequest, ImportServerLicense)")]
    AirGapped,
    /// `confirm` was not set on a return.
    #[error("confirm: set confirm to true: the server stops serving at once")]
    NotConfirmed,
    /// The vendor refused or could not be reached.
    #[error(transparent)]
    Vendor(#[from] VendorError),
    /// The data directory could not be read or written.
    #[error("data directory: {0}")]
    Disk(String),
    /// The local store refused a change the file asks for (a bug).
    #[error("the local catalog could not follow the file: {0}")]
    Inconsistent(String),
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ClassifiedError for OnPremError {
    fn class(&self) -> ErrorClass {
        match self {
            Self::InvalidFile(_) | Self::NotConfirmed => ErrorClass::InvalidArgument,
            Self::WrongMachine(_) | Self::Superseded { .. } | Self::NoFile | Self::AirGapped => {
                ErrorClass::FailedPrecondition
            }
            Self::Vendor(VendorError::Refused { .. }) => ErrorClass::FailedPrecondition,
            Self::Vendor(VendorError::Unreachable(_)) => ErrorClass::Unavailable,
            Self::Vendor(VendorError::Unexpected(_)) | Self::Disk(_) | Self::Inconsistent(_) => ErrorClass::Internal,
            Self::Store(e) => e.class(),
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::InvalidFile(_) => "INVALID_SERVER_LICENSE_FILE",
            Self::WrongMachine(_) => "FINGERPRINT_MISMATCH",
            Self::Superseded { .. } => "SUPERSEDED_SERVER_LICENSE",
            Self::NoFile => "NO_SERVER_LICENSE",
            Self::AirGapped => "AIR_GAPPED",
            Self::NotConfirmed => "NOT_CONFIRMED",
            Self::Vendor(VendorError::Refused { .. }) => "REFUSED_BY_VENDOR",
            Self::Vendor(VendorError::Unreachable(_)) => "VENDOR_UNREACHABLE",
            Self::Vendor(VendorError::Unexpected(_)) => "VENDOR_UNEXPECTED",
            Self::Disk(_) => "DATA_DIRECTORY",
            Self::Inconsistent(_) => "INTERNAL",
            Self::Store(e) => e.reason(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_the_class_an_operator_can_act_on() {
        let cases = [
            (OnPremError::InvalidFile("x".into()), ErrorClass::InvalidArgument),
            (OnPremError::Superseded { serial: 1, highest: 2 }, ErrorClass::FailedPrecondition),
            (OnPremError::AirGapped, ErrorClass::FailedPrecondition),
            (OnPremError::Vendor(VendorError::Unreachable("down".into())), ErrorClass::Unavailable),
            (
                OnPremError::Vendor(VendorError::Refused { reason: "SUSPENDED".into(), message: "m".into() }),
                ErrorClass::FailedPrecondition,
            ),
        ];
        for (error, class) in cases {
            assert_eq!(error.class(), class, "{error}");
        }
    }
}
