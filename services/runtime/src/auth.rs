//! Bearer tokens in `authorization` metadata, and the admin token.

use licensing_domain::clock::{Millis, SharedClock};
use licensing_domain::error::{ClassifiedError, ErrorClass, StoreError};
use licensing_domain::ids;
use licensing_domain::model::License;
use licensing_domain::secrets::{purpose, random_token, KeyedHasher};
use licensing_domain::store::{CatalogStore, PortalStore};
use std::sync::Arc;
use tonic::metadata::MetadataMap;

/// The address a request came from, as throttles and rate limits count clients ("unknown"
/// when the transport does not say, e.g. a Unix socket).
pub fn caller_address<T>(request: &tonic::Request<T>) -> String {
    // Decided once by the server stack (a trusted gateway's forwarded client), else the peer.
    crate::client_address::client_address_of(request.extensions())
        .or_else(|| request.remote_addr().map(|a| a.ip()))
        .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
}

/// The token of `authorization: Bearer <token>`, if present and well formed.
pub fn bearer_token(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

/// Why a call was not authorized.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No bearer token on an admin call.
    #[error("this call needs an admin token: send metadata 'authorization: Bearer <admin token>'")]
    MissingAdminToken,
    /// The bearer token is not a known admin token.
    #[error("the admin token is not valid")]
    InvalidAdminToken,
    /// Neither an admin token nor a session token on a call either may make.
    #[error(
        "this call needs the admin token, or a portal session of the license's account: send metadata \
         'authorization: Bearer <token>'"
    )]
    MissingToken,
    /// A session token that names no live session.
    #[error("the session is not valid (expired or logged out); log in again")]
    InvalidSession,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ClassifiedError for AuthError {
    fn class(&self) -> ErrorClass {
        match self {
            Self::MissingAdminToken | Self::InvalidAdminToken | Self::MissingToken | Self::InvalidSession => {
                ErrorClass::Unauthenticated
            }
            Self::Store(e) => e.class(),
        }
    }
    fn reason(&self) -> &'static str {
        match self {
            Self::MissingAdminToken => "ADMIN_TOKEN_MISSING",
            Self::InvalidAdminToken => "ADMIN_TOKEN_INVALID",
            Self::MissingToken => "TOKEN_MISSING",
            Self::InvalidSession => "SESSION_INVALID",
            Self::Store(e) => e.reason(),
        }
    }
}

/// Who made an admin call: the ID of the admin token used (never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminId(pub String);

impl AdminId {
    /// The audit-log actor: `admin:<token id>`.
    pub fn actor(&self) -> String {
        format!("admin:{}", self.0)
    }
}

/// Checks admin tokens by their keyed digest (a lookup by digest compares no secret in variable time).
#[derive(Clone)]
pub struct AdminAuth {
    store: Arc<dyn CatalogStore>,
    hasher: KeyedHasher,
}

impl AdminAuth {
    /// Checks tokens against the digests in `store`, made with `hasher`.
    pub fn new(store: Arc<dyn CatalogStore>, hasher: KeyedHasher) -> Self {
        Self { store, hasher }
    }

    /// The admin token of the call's `authorization: Bearer` metadata, if it is a known one.
    pub async fn authorize(&self, metadata: &MetadataMap) -> Result<AdminId, AuthError> {
        let token = bearer_token(metadata).ok_or(AuthError::MissingAdminToken)?;
        if !token.starts_with("adm_") {
            return Err(AuthError::InvalidAdminToken);
        }
        let digest = self.hasher.digest(purpose::ADMIN_TOKEN, token);
        self.store.find_admin_token(&digest).await?.map(AdminId).ok_or(AuthError::InvalidAdminToken)
    }
}

/// Portal sessions (`ses_…` tokens), looked up by their keyed digest: the one place that decides
/// whether a session is live, for the Account service and for the calls of other services that
/// a customer may make on its own licenses.
#[derive(Clone)]
pub struct SessionAuth {
    store: Arc<dyn PortalStore>,
    hasher: KeyedHasher,
    clock: SharedClock,
}

impl SessionAuth {
    /// Checks session tokens against the digests in `store`, made with `hasher`, judging expiry by `clock`.
    pub fn new(store: Arc<dyn PortalStore>, hasher: KeyedHasher, clock: SharedClock) -> Self {
        Self { store, hasher, clock }
    }

    /// The customer of the live session `token` names; `None` when it names none (not a session
    /// token, unknown, expired or logged out).
    pub async fn customer(&self, token: &str) -> Result<Option<String>, StoreError> {
        if !token.starts_with("ses_") {
            return Ok(None);
        }
        self.store.session_customer(&self.hasher.digest(purpose::SESSION, token), self.clock.now()).await
    }
}

/// Who calls an RPC that both the vendor and a license's own customer may make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The vendor, by an admin token.
    Admin(AdminId),
    /// A customer account, by its portal session: it sees its own licenses only.
    Customer(String),
}

impl Caller {
    /// Whether this caller may see `license`: the admin any, a customer those of its account.
    pub fn may_see(&self, license: &License) -> bool {
        match self {
            Self::Admin(_) => true,
            Self::Customer(me) => license.belongs_to_account(me),
        }
    }
}

/// The admin token, or a portal session.
#[derive(Clone)]
pub struct AdminOrSessionAuth {
    admin: AdminAuth,
    sessions: SessionAuth,
}

impl AdminOrSessionAuth {
    /// Accepts either an admin token (`admin`) or a portal session (`sessions`).
    pub fn new(admin: AdminAuth, sessions: SessionAuth) -> Self {
        Self { admin, sessions }
    }

    /// Who the call's bearer token names: a `ses_…` token a customer, anything else an admin.
    pub async fn authorize(&self, metadata: &MetadataMap) -> Result<Caller, AuthError> {
        let token = bearer_token(metadata).ok_or(AuthError::MissingToken)?;
        if token.starts_with("ses_") {
            return self.sessions.customer(token).await?.map(Caller::Customer).ok_or(AuthError::InvalidSession);
        }
        self.admin.authorize(metadata).await.map(Caller::Admin)
    }
}

/// Makes sure an admin token exists. A configured token is stored (hashed) and accepted; with
/// none configured and none stored, a fresh token is generated and returned so the caller can
/// print it once.
pub async fn bootstrap_admin_token(
    store: &dyn CatalogStore,
    hasher: &KeyedHasher,
    configured: Option<&str>,
    now: Millis,
) -> Result<Option<String>, StoreError> {
    if let Some(token) = configured {
        let digest = hasher.digest(purpose::ADMIN_TOKEN, token);
        let token_id = format!("env-{}", &digest[..12]);
        store.insert_admin_token(&token_id, &digest, now).await?;
        return Ok(None);
    }
    if store.count_admin_tokens().await? > 0 {
        return Ok(None);
    }
    let token = random_token(ids::ADMIN_TOKEN, 24);
    let digest = hasher.digest(purpose::ADMIN_TOKEN, &token);
    store.insert_admin_token(&ids::new_id("tok"), &digest, now).await?;
    Ok(Some(token))
}

/// Admin tokens given in `LICENSING_ADMIN_TOKEN` must have this shape, so they are long enough.
pub fn validate_admin_token_shape(token: &str) -> Result<(), String> {
    if token.starts_with("adm_") && token.len() >= 4 + 26 && token[4..].bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err("LICENSING_ADMIN_TOKEN must look like adm_ followed by at least 26 letters or digits".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_parsed_leniently_but_safely() {
        let mut m = MetadataMap::new();
        assert_eq!(bearer_token(&m), None);
        m.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&m), Some("abc"));
        m.insert("authorization", "bearer   abc ".parse().unwrap());
        assert_eq!(bearer_token(&m), Some("abc"));
        m.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&m), None);
        m.insert("authorization", "Bearer ".parse().unwrap());
        assert_eq!(bearer_token(&m), None);
    }

    #[test]
    fn admin_token_shape() {
        assert!(validate_admin_token_shape("adm_0123456789ABCDEFGHJKMNPQRS").is_ok());
        assert!(validate_admin_token_shape("adm_short").is_err());
        assert!(validate_admin_token_shape("password1234567890123456789012345").is_err());
    }
}
