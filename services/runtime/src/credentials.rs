//! How a product proves it may use a license: the license key, or the License ID plus an
//! activation password (the license's own, or the customer's company-wide portal password).
//! Shared by the Activation and Seat services.

use crate::limiter::GuessThrottle;
use licensing_domain::error::{ClassifiedError, ErrorClass, StoreError};
use licensing_domain::ids;
use licensing_domain::license_key::{LicenseKey, LicenseKeyError};
use licensing_domain::model::License;
use licensing_domain::secrets::{constant_time_eq, purpose, KeyedHasher, PasswordHasher};
use licensing_domain::store::CatalogStore;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// What a product sent to prove it may use a license.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A license key, as typed (parsed and checked on resolution).
    LicenseKey(String),
    /// `client` is the address the password came from: wrong passwords slow down that client,
    /// never the license's other users.
    IdAndPassword {
        /// License ID (`lic_…`).
        license_id: String,
        /// The license's activation password, or the customer's company-wide portal password.
        password: String,
        /// The client's address (see [`crate::auth::caller_address`]).
        client: String,
    },
}

/// Why credentials did not name a license the caller may use.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// Neither a license key nor a License ID and password.
    #[error("credentials: send either license_key or license_id_and_password")]
    Missing,
    /// The license key is not well formed (a typo the check symbol caught).
    #[error("license_key: {0}")]
    MalformedKey(LicenseKeyError),
    /// No license has this key.
    #[error("no license has this license key; check it against the one you received")]
    UnknownKey,
    /// Not a License ID (as sent).
    #[error("license_id: {} is not a License ID (lic_…)", licensing_domain::text::quoted(.0))]
    MalformedLicenseId(String),
    /// No license has this ID.
    #[error("no license with ID {0}")]
    UnknownLicense(String),
    /// Neither password is right for the license (its ID).
    #[error("the activation password is wrong for license {0}")]
    WrongPassword(String),
    /// This client got the password wrong too often for the license; it must wait.
    #[error(
        "too many wrong passwords for license {license_id} from this address; try again in {} s",
        retry_after.as_secs_f64().ceil().max(1.0)
    )]
    TooManyFailures {
        /// License ID.
        license_id: String,
        /// When the client may try again.
        retry_after: Duration,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ClassifiedError for CredentialError {
    fn class(&self) -> ErrorClass {
        match self {
            Self::Missing | Self::MalformedKey(_) | Self::MalformedLicenseId(_) => ErrorClass::InvalidArgument,
            Self::UnknownKey | Self::UnknownLicense(_) => ErrorClass::NotFound,
            Self::WrongPassword(_) => ErrorClass::PermissionDenied,
            Self::TooManyFailures { .. } => ErrorClass::ResourceExhausted,
            Self::Store(e) => e.class(),
        }
    }
    fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "CREDENTIALS_MISSING",
            Self::MalformedKey(_) => "LICENSE_KEY_MALFORMED",
            Self::UnknownKey | Self::UnknownLicense(_) => "LICENSE_NOT_FOUND",
            Self::MalformedLicenseId(_) => "LICENSE_ID_MALFORMED",
            Self::WrongPassword(_) => "WRONG_ACTIVATION_PASSWORD",
            Self::TooManyFailures { .. } => "TOO_MANY_FAILURES",
            Self::Store(e) => e.reason(),
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::TooManyFailures { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// Resolves [`Credentials`] to the license, throttling password guesses per license and client.
#[derive(Clone)]
pub struct CredentialResolver {
    catalog: Arc<dyn CatalogStore>,
    hasher: KeyedHasher,
    passwords: PasswordHasher,
    /// Wrong activation passwords, per license and client address.
    guesses: GuessThrottle,
    /// Verified against when a customer has no password, so a wrong password costs the same.
    decoy: Arc<OnceLock<String>>,
}

impl CredentialResolver {
    /// A resolver reading licenses from `catalog`, digesting keys with `hasher`, verifying
    /// portal passwords with `passwords` and throttling wrong ones with `guesses`.
    pub fn new(
        catalog: Arc<dyn CatalogStore>,
        hasher: KeyedHasher,
        passwords: PasswordHasher,
        guesses: GuessThrottle,
    ) -> Self {
        Self { catalog, hasher, passwords, guesses, decoy: Arc::new(OnceLock::new()) }
    }

    /// The keyed hasher of license keys and activation passwords.
    pub fn hasher(&self) -> &KeyedHasher {
        &self.hasher
    }

    /// The catalog licenses are read from.
    pub fn catalog(&self) -> &Arc<dyn CatalogStore> {
        &self.catalog
    }

    /// The keyed digest a license key is stored and looked up by.
    pub fn license_key_digest(&self, key: &str) -> Result<String, CredentialError> {
        let key = LicenseKey::parse(key).map_err(CredentialError::MalformedKey)?;
        Ok(self.hasher.digest(purpose::LICENSE_KEY, key.as_str()))
    }

    /// The license whose key has this digest (see [`Self::license_key_digest`]).
    pub async fn resolve_key_digest(&self, digest: &str) -> Result<License, CredentialError> {
        self.catalog.find_license_by_key_digest(digest).await?.ok_or(CredentialError::UnknownKey)
    }

    /// The license the credentials name, if they are right.
    pub async fn resolve(&self, credentials: &Credentials) -> Result<License, CredentialError> {
        match credentials {
            Credentials::LicenseKey(key) => self.resolve_key_digest(&self.license_key_digest(key)?).await,
            Credentials::IdAndPassword { license_id, password, client } => {
                if !ids::is_well_formed(ids::LICENSE, license_id) {
                    return Err(CredentialError::MalformedLicenseId(license_id.clone()));
                }
                // Only a client that has been guessing waits: never the license's other users.
                if let Some(retry_after) = self.guesses.wait(license_id, client) {
                    return Err(CredentialError::TooManyFailures { license_id: license_id.clone(), retry_after });
                }
                let license = self
                    .catalog
                    .get_license(license_id)
                    .await?
                    .ok_or_else(|| CredentialError::UnknownLicense(license_id.clone()))?;
                let salt = self.catalog.activation_password_salt(license_id).await?.unwrap_or_default();
                let own = self.hasher.activation_password(license_id, &salt);
                let typed = password.trim().to_uppercase();
                if constant_time_eq(own.as_bytes(), typed.as_bytes())
                    || self.company_password_matches(&license.customer_id, password).await?
                {
                    self.guesses.succeeded(license_id, client);
                    return Ok(license);
                }
                self.guesses.failed(license_id, client);
                Err(CredentialError::WrongPassword(license_id.clone()))
            }
        }
    }

    /// argon2id on the hashing threads; against a decoy hash when the customer has none.
    async fn company_password_matches(&self, customer_id: &str, password: &str) -> Result<bool, CredentialError> {
        let stored = self.catalog.customer_password_hash(customer_id).await?;
        let hasher = self.passwords.clone();
        let decoy = self.decoy.clone();
        let password = password.to_owned();
        let has_real = stored.is_some();
        let verified = crate::hashing::run(move |memory| {
            let phc = match stored {
                Some(phc) => phc,
                None => decoy.get_or_init(|| hasher.decoy_hash(memory)).clone(),
            };
            hasher.verify_with(memory, &password, &phc)
        })
        .await
        .map_err(|e| StoreError::Other(format!("password check failed: {e}")))?
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, customer_id, "a customer's stored password hash cannot be checked; a password reset replaces it");
            false
        });
        Ok(has_real && verified)
    }
}
