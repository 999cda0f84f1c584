//! [`Seats`]: the floating-seat use cases over a [`LeaseStore`].

use crate::waiting::{Ticket, WaitQueues};
use crate::SeatError;
use licensing_domain::certificate::{Signer, LEASE_TOKEN_CONTEXT};
use licensing_domain::clock::{Millis, SECOND};
use licensing_domain::ids;
use licensing_domain::model::{Lease, License, LicenseKind};
use licensing_domain::store::{CatalogStore, CheckoutCommand, CheckoutOutcome, HeartbeatOutcome, LeaseStore};
use licensing_runtime::credentials::{CredentialResolver, Credentials};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct SeatSettings {
    pub default_ttl: Millis,
    pub min_ttl: Millis,
    pub max_ttl: Millis,
    /// The longest a `WaitForSeat` may wait.
    pub max_wait: Duration,
}

impl Default for SeatSettings {
    fn default() -> Self {
        Self {
            default_ttl: 60 * SECOND,
            min_ttl: SECOND,
            max_ttl: 3_600 * SECOND,
            max_wait: Duration::from_secs(3_600),
        }
    }
}

/// What a client asks for at checkout (decoded from the request).
#[derive(Debug, Clone, Default)]
pub struct CheckoutRequest {
    pub feature: String,
    pub user: String,
    pub host: String,
    pub client_instance_id: String,
    /// Requested TTL in ms; 0 means the default. Negative is refused.
    pub ttl_ms: i64,
}

/// A lease as handed to its holder.
#[derive(Debug, Clone)]
pub struct Grant {
    pub lease: Lease,
    pub renewed: bool,
    pub seats_total: i32,
    pub seats_in_use: i32,
    pub heartbeat_interval_ms: i64,
    pub token: String,
}

#[derive(Clone)]
pub struct Seats {
    catalog: Arc<dyn CatalogStore>,
    leases: Arc<dyn LeaseStore>,
    credentials: CredentialResolver,
    signer: Signer,
    settings: SeatSettings,
    waiting: WaitQueues,
}

const MAX_NAME: usize = 128;

fn name(field: &'static str, value: &str, required: bool) -> Result<String, SeatError> {
    let value = value.trim();
    if required && value.is_empty() {
        return Err(SeatError::invalid(field, "must not be empty"));
    }
    if value.chars().count() > MAX_NAME || value.chars().any(char::is_control) {
        return Err(SeatError::invalid(
            field,
            format!("must be at most {MAX_NAME} characters without control characters"),
        ));
    }
    Ok(value.to_owned())
}

fn check_id(field: &'static str, prefix: &str, value: &str) -> Result<(), SeatError> {
    if ids::is_well_formed(prefix, value) {
        Ok(())
    } else {
        Err(SeatError::invalid(
            field,
            format!("'{}' is not a {prefix}_… ID", value.chars().take(64).collect::<String>()),
        ))
    }
}

impl Seats {
    pub fn new(
        catalog: Arc<dyn CatalogStore>,
        leases: Arc<dyn LeaseStore>,
        credentials: CredentialResolver,
        signer: Signer,
        settings: SeatSettings,
    ) -> Self {
        Self { catalog, leases, credentials, signer, settings, waiting: WaitQueues::default() }
    }

    pub fn settings(&self) -> &SeatSettings {
        &self.settings
    }

    pub fn waiting(&self) -> &WaitQueues {
        &self.waiting
    }

    fn ttl(&self, requested: i64) -> Result<i64, SeatError> {
        match requested {
            0 => Ok(self.settings.default_ttl),
            t if t < 0 => Err(SeatError::invalid("ttl", "must not be negative (0 means the server default)")),
            t => Ok(t.clamp(self.settings.min_ttl, self.settings.max_ttl)),
        }
    }

    /// A signed token the holder can show offline until the lease's expiry.
    fn token(&self, lease: &Lease) -> String {
        let payload = json!({
            "v": 1,
            "lease_id": lease.lease_id,
            "license_id": lease.license_id,
            "client_instance_id": lease.client_instance_id,
            "fence": lease.fence,
            "expires_at_ms": lease.expires_at,
        });
        let blob = self.signer.sign(LEASE_TOKEN_CONTEXT, payload.to_string().as_bytes());
        format!("{}.{}", blob.payload, blob.signature)
    }

    fn grant(&self, lease: Lease, renewed: bool, license: &License, in_use: i32) -> Grant {
        Grant {
            token: self.token(&lease),
            heartbeat_interval_ms: (lease.ttl_ms / 3).max(1),
            seats_total: license.seats,
            seats_in_use: in_use,
            renewed,
            lease,
        }
    }

    async fn usable_license(&self, license_id: &str, now: Millis) -> Result<License, SeatError> {
        let license = self
            .catalog
            .get_license(license_id)
            .await?
            .ok_or_else(|| SeatError::LicenseNotFound(license_id.to_owned()))?;
        license.usability(now, LicenseKind::Concurrent).map_err(SeatError::LicenseState)?;
        Ok(license)
    }

    /// Checks out (or renews) a lease. `ticket` is the caller's place in the wait queue, if any:
    /// while others wait, a seat goes to the head of the queue first.
    pub async fn checkout(
        &self,
        credentials: &Credentials,
        request: &CheckoutRequest,
        ticket: Option<&Ticket>,
    ) -> Result<Grant, SeatError> {
        let client_instance_id = name("client_instance_id", &request.client_instance_id, true)?;
        let user = name("user", &request.user, false)?;
        let host = name("host", &request.host, false)?;
        let feature = name("feature", &request.feature, false)?;
        let ttl_ms = self.ttl(request.ttl_ms)?;
        let license = self.credentials.resolve(credentials).await?;
        let now = self.leases.now().await?;
        license.usability(now, LicenseKind::Concurrent).map_err(SeatError::LicenseState)?;
        if !feature.is_empty() && !license.modules.contains(&feature) {
            return Err(SeatError::FeatureNotLicensed { license_id: license.license_id.clone(), feature });
        }
        let command = CheckoutCommand {
            license_id: license.license_id.clone(),
            seats: if self.waiting.someone_else_first(&license.license_id, ticket) { 0 } else { license.seats },
            lease_id: ids::new_id(ids::LEASE),
            client_instance_id,
            user,
            host,
            feature,
            ttl_ms,
            cost: 1,
        };
        match self.leases.checkout(&command).await? {
            CheckoutOutcome::Granted { lease, renewed, in_use } => Ok(self.grant(lease, renewed, &license, in_use)),
            CheckoutOutcome::Full { in_use, earliest_expiry } => Err(SeatError::NoSeat {
                license_id: license.license_id.clone(),
                seats: license.seats,
                in_use,
                earliest_expiry,
                retry_after: earliest_expiry.map(|e| Duration::from_millis((e - now).max(0) as u64)),
            }),
        }
    }

    /// Extends a live lease; returns it with a fresh token.
    pub async fn heartbeat(&self, license_id: &str, lease_id: &str) -> Result<(Lease, String), SeatError> {
        check_id("license_id", ids::LICENSE, license_id)?;
        check_id("lease_id", ids::LEASE, lease_id)?;
        let now = self.leases.now().await?;
        // Suspending or retiring a license stops heartbeats at once.
        self.usable_license(license_id, now).await?;
        match self.leases.heartbeat(license_id, lease_id).await? {
            HeartbeatOutcome::Extended(lease) => {
                let token = self.token(&lease);
                Ok((lease, token))
            }
            HeartbeatOutcome::Expired => Err(SeatError::LeaseExpired(lease_id.to_owned())),
            HeartbeatOutcome::Revoked => Err(SeatError::LeaseRevoked(lease_id.to_owned())),
            HeartbeatOutcome::Unknown => {
                Err(SeatError::LeaseNotFound { license_id: license_id.to_owned(), lease_id: lease_id.to_owned() })
            }
        }
    }

    /// Idempotent: `false` when the lease was already gone.
    pub async fn checkin(&self, license_id: &str, lease_id: &str) -> Result<bool, SeatError> {
        check_id("license_id", ids::LICENSE, license_id)?;
        check_id("lease_id", ids::LEASE, lease_id)?;
        let released = self.leases.checkin(license_id, lease_id).await?;
        if released {
            self.waiting.notify(license_id);
        }
        Ok(released)
    }

    /// The License ID the credentials name, if they are right and the license is usable now.
    pub async fn license_for(&self, credentials: &Credentials) -> Result<String, SeatError> {
        let license = self.credentials.resolve(credentials).await?;
        license.usability(self.leases.now().await?, LicenseKind::Concurrent).map_err(SeatError::LicenseState)?;
        Ok(license.license_id)
    }

    pub async fn list(&self, license_id: &str) -> Result<(License, Vec<Lease>), SeatError> {
        check_id("license_id", ids::LICENSE, license_id)?;
        let license = self
            .catalog
            .get_license(license_id)
            .await?
            .ok_or_else(|| SeatError::LicenseNotFound(license_id.to_owned()))?;
        Ok((license, self.leases.list(license_id).await?))
    }

    pub async fn revoke(&self, license_id: &str, lease_id: &str) -> Result<i64, SeatError> {
        check_id("license_id", ids::LICENSE, license_id)?;
        check_id("lease_id", ids::LEASE, lease_id)?;
        let fence = self.leases.revoke(license_id, lease_id).await?.ok_or_else(|| SeatError::LeaseNotFound {
            license_id: license_id.to_owned(),
            lease_id: lease_id.to_owned(),
        })?;
        self.waiting.notify(license_id);
        Ok(fence)
    }

    /// Records the leases that expired (the seats were already free: expired leases never count).
    pub async fn sweep(&self) -> Result<usize, SeatError> {
        let expired = self.leases.sweep_expired(1000).await?;
        for lease in &expired {
            tracing::info!(license_id = %lease.license_id, lease_id = %lease.lease_id, user = %lease.user, host = %lease.host, "lease expired");
            self.waiting.notify(&lease.license_id);
        }
        Ok(expired.len())
    }

    pub async fn now(&self) -> Result<Millis, SeatError> {
        Ok(self.leases.now().await?)
    }
}
