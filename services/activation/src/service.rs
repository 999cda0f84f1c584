//! [`Activations`]: the node-locked use cases. Inputs here are already decoded from gRPC.

use crate::ActivationError;
use licensing_domain::certificate::{
    encode_offline_request, CertificateEntitlement, CertificateMeter, CertificatePayload, OfflineRequest, SignedBlob,
    Signer,
};
use licensing_domain::clock::{Millis, SharedClock, DAY};
use licensing_domain::error::StoreError;
use licensing_domain::fingerprint::{self, Component, ComponentDigest};
use licensing_domain::ids;
use licensing_domain::meter::MeterUsage;
use licensing_domain::model::NewLicense;
use licensing_domain::model::{
    Activation, ActivationEvent, AuditRecord, License, LicenseKind, LicenseStatus, ModuleEntitlement, Refusal,
};
use licensing_domain::observe::{unobserved, SharedObserver};
use licensing_domain::offline_deactivation::{decode_deactivation_request, DeactivationCredential};
use licensing_domain::server_usage::ServerUsageStore;
use licensing_domain::store::{
    ActivateCommand, ActivateOutcome, ActivationStore, ActivationStoreError, CatalogStore, CulledActivation,
    DeactivateCommand, DeactivateTarget, MachineMatch, MeterStore,
};
use licensing_domain::text::quoted;
use licensing_domain::trial::{offered_trial, trial_license, TrialCommand, TrialStart, TrialStore};
use licensing_runtime::auth::SessionAuth;
use licensing_runtime::credentials::{CredentialError, CredentialResolver, Credentials};
use licensing_runtime::license_cache::{LicenseCache, Lookup};
use licensing_runtime::limiter::{Rate, RateLimiter};
use licensing_runtime::server::{CancellationToken, ShuttingDown};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_stream::wrappers::ReceiverStream;

/// Tunables of the Activation service.
#[derive(Debug, Clone)]
pub struct ActivationSettings {
    /// Share of a machine's stored fingerprint components that must still match.
    pub match_threshold: f64,
    /// A certificate asks for a refresh after this long.
    pub refresh_after: Millis,
    /// A certificate allows offline use for this long (never past the license's expiry, or the
    /// end of its grace period when it has one).
    pub offline_validity: Millis,
    /// Activations (online and offline, new or repeated) allowed per license; `None` is unlimited.
    pub activations_per_license: Option<Rate>,
}

impl Default for ActivationSettings {
    fn default() -> Self {
        Self {
            match_threshold: fingerprint::DEFAULT_MATCH_THRESHOLD,
            refresh_after: DAY,
            offline_validity: 14 * DAY,
            activations_per_license: None,
        }
    }
}

/// Where a product is running, as it reported it.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    /// The fingerprint components as presented (normalized by the service).
    pub fingerprint: Vec<Component>,
    /// Human-readable machine name, shown in the portal.
    pub machine_name: String,
    /// The machine's platform, e.g. `linux-x86_64`.
    pub platform: String,
    /// The product version running, `MAJOR.MINOR[.PATCH]`.
    pub product_version: String,
}

/// The outcome of a validation, as `ValidateResponse.code` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidationCode {
    /// The license may be used here now.
    Valid,
    /// No license has these credentials.
    NotFound,
    /// The vendor suspended the license.
    Suspended,
    /// The license is retired.
    Retired,
    /// The license has expired.
    Expired,
    /// The license's validity has not started.
    NotYetValid,
    /// The license is not activated on this machine.
    NotActivated,
    /// Too few of a live activation's components match this machine.
    FingerprintMismatch,
    /// A module asked for is not in the license.
    ModuleNotLicensed,
    /// The version running was released after the upgrade period.
    VersionNotCovered,
    /// A concurrent license: it is used through the Seat service.
    WrongKind,
    /// Expired, but within its grace period: usable (valid) until [`Validation::grace_ends_at`].
    ValidInGrace,
}

impl ValidationCode {
    /// Whether the license may be used: [`Self::Valid`] or [`Self::ValidInGrace`].
    pub fn is_valid(self) -> bool {
        matches!(self, Self::Valid | Self::ValidInGrace)
    }
}

/// What a validation found.
#[derive(Debug, Clone)]
pub struct Validation {
    /// Valid, or why not.
    pub code: ValidationCode,
    /// A person-readable explanation, naming the module or date concerned.
    pub detail: String,
    /// The license, when the credentials named one.
    pub license: Option<Arc<License>>,
    /// A fresh certificate, when valid on a node-locked license.
    pub certificate: Option<SignedBlob>,
    /// When the grace period ends (Unix ms), when the code is [`ValidationCode::ValidInGrace`].
    pub grace_ends_at: Option<Millis>,
    /// When valid: the modules licensed now (their own expiry not passed), each with its value
    /// and expiry, by module code.
    pub entitlements: Vec<(String, ModuleEntitlement)>,
}

impl Validation {
    fn failed(code: ValidationCode, detail: impl Into<String>, license: Option<Arc<License>>) -> Self {
        Self { code, detail: detail.into(), license, certificate: None, grace_ends_at: None, entitlements: vec![] }
    }
}

/// What validations of one license read: the license, and the machines looked up on it since.
/// A machine is matched by the store through the components it shares with live activations
/// (never by reading them all, which a site license has 100,000 of), once per machine while
/// the entry lives; the entry goes with any change to the license or its activations.
#[derive(Debug)]
pub struct LicenseActivations {
    /// The license as read.
    pub license: Arc<License>,
    /// A presented fingerprint (its sorted component digests) -> its best live match, if any
    /// reaches half the match threshold (nearer ones are a fingerprint mismatch).
    machines: Mutex<HashMap<String, Option<Arc<MachineMatch>>>>,
}

/// Machines remembered per license entry; beyond it they are looked up each time.
const MACHINES_PER_ENTRY: usize = 10_000;

/// How long a product version's release date is used without reading the product again.
const RELEASE_KEPT: Duration = Duration::from_secs(60);

/// Product versions whose release dates are kept at most.
const RELEASES_KEPT: usize = 10_000;

/// (product code, version) -> (the version's label, its release date, when it was read).
type Releases = HashMap<(String, licensing_domain::version::Version), (String, Millis, Instant)>;

impl LicenseActivations {
    fn new(license: License) -> Self {
        Self { license: Arc::new(license), machines: Mutex::default() }
    }

    fn machine(&self, key: &str) -> Option<Option<Arc<MachineMatch>>> {
        self.machines.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    fn remember(&self, key: String, found: Option<Arc<MachineMatch>>) {
        let mut machines = self.machines.lock().unwrap_or_else(|p| p.into_inner());
        if machines.len() < MACHINES_PER_ENTRY {
            machines.insert(key, found);
        }
    }
}

/// The key a presented fingerprint is remembered by.
fn machine_key(digests: &[ComponentDigest]) -> String {
    let mut parts: Vec<&str> = digests.iter().map(|d| d.digest.as_str()).collect();
    parts.sort_unstable();
    parts.join(",")
}

/// [`LicenseActivations`] by license, dropped when the license or its activations change.
pub type ValidationCache = LicenseCache<Arc<LicenseActivations>>;

/// How a call that names an installation by its ID proves the license is the caller's: the ID
/// alone proves nothing (it is printed in the certificate file and shown in the portal).
#[derive(Debug, Clone)]
pub enum InstallationProof {
    /// The license's key, or its License ID and a password.
    Credentials(Credentials),
    /// A customer portal session token (`ses_…`) of the license's owner.
    PortalSession(String),
    /// Neither was sent.
    Missing,
}

/// What [`Activations`] works over.
pub struct ActivationDeps {
    /// Licenses and products.
    pub catalog: Arc<dyn CatalogStore>,
    /// Activations and their history.
    pub store: Arc<dyn ActivationStore>,
    /// Metered features' counts.
    pub meters: Arc<dyn MeterStore>,
    /// Where portal sessions are checked, for deactivations proven by one.
    pub sessions: SessionAuth,
    /// Turns a license key, or License ID and password, into the license.
    pub credentials: CredentialResolver,
    /// Signs certificates.
    pub signer: Signer,
    /// Judges every date.
    pub clock: SharedClock,
    /// The machines that started trials.
    pub trials: Arc<dyn TrialStore>,
    /// The usage reports of on-premises servers.
    pub server_usage: Arc<dyn ServerUsageStore>,
}

/// What [`Activations::activate_trial`] gave the machine.
#[derive(Debug, Clone)]
pub struct TrialActivation {
    /// The machine's activation of the trial license.
    pub activation: Activation,
    /// Whether the machine had started this trial before (nothing new was made).
    pub existing_trial: bool,
    /// The certificate for the machine.
    pub certificate: SignedBlob,
    /// The trial license, as it is now.
    pub license: License,
    /// The trial's license key (derived from its ID, the same each time).
    pub license_key: String,
}

/// The Activation service's use cases: activate, validate, refresh, deactivate, offline requests,
/// license watches and metered use, over the catalog, activation and meter stores.
#[derive(Clone)]
pub struct Activations {
    catalog: Arc<dyn CatalogStore>,
    store: Arc<dyn ActivationStore>,
    meters: Arc<dyn MeterStore>,
    /// Where portal sessions are checked, for deactivations proven by one.
    sessions: SessionAuth,
    credentials: CredentialResolver,
    signer: Signer,
    clock: SharedClock,
    trials: Arc<dyn TrialStore>,
    server_usage: Arc<dyn ServerUsageStore>,
    settings: ActivationSettings,
    /// Buckets of [`ActivationSettings::activations_per_license`], taken by activations and
    /// deactivations alike: every refusal they record was let through by it (or, for a wrong
    /// password, by the credentials' failure limiter), so refusals cannot grow the history
    /// faster than those limits allow.
    per_license: RateLimiter,
    /// Counts new activations (metrics).
    observer: SharedObserver,
    /// What validations of licenses named by key read; pass-through unless given a live one
    /// ([`Activations::with_validation_cache`]).
    validations: Arc<ValidationCache>,
    /// Release dates of product versions recently read (see [`Activations::release_of`]).
    releases: Arc<Mutex<Releases>>,
}

const MAX_NAME: usize = 200;

fn check_text(field: &'static str, value: &str, required: bool) -> Result<String, ActivationError> {
    licensing_domain::text::bounded_text(value, MAX_NAME, required).map_err(|m| ActivationError::invalid(field, m))
}

/// `MAJOR.MINOR[.PATCH]` as numbers, or an error naming the field.
pub fn parse_version(value: &str) -> Result<licensing_domain::version::Version, ActivationError> {
    licensing_domain::version::parse(value).ok_or_else(|| {
        ActivationError::invalid(
            "product_version",
            format!("{} is not a version of the form MAJOR.MINOR[.PATCH]", quoted(value)),
        )
    })
}

impl Activations {
    /// The service over `deps`, with `settings`.
    pub fn new(deps: ActivationDeps, settings: ActivationSettings) -> Self {
        let ActivationDeps { catalog, store, meters, sessions, credentials, signer, clock, trials, server_usage } =
            deps;
        let per_license = RateLimiter::new("activation", settings.activations_per_license);
        Self {
            catalog,
            store,
            meters,
            sessions,
            credentials,
            signer,
            clock,
            trials,
            server_usage,
            settings,
            per_license,
            observer: unobserved(),
            validations: Arc::default(),
            releases: Arc::default(),
        }
    }

    /// Serves validations from `cache`, which must follow the store's license events (they
    /// report changes to activations too).
    pub fn with_validation_cache(mut self, cache: Arc<ValidationCache>) -> Self {
        self.validations = cache;
        self
    }

    /// Reports new activations to `observer` (metrics).
    pub fn with_observer(mut self, observer: SharedObserver) -> Self {
        self.observer = observer;
        self
    }

    /// The key certificates are signed with.
    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    pub(crate) fn settings(&self) -> &ActivationSettings {
        &self.settings
    }

    pub(crate) fn activation_store(&self) -> &dyn ActivationStore {
        self.store.as_ref()
    }

    pub(crate) fn catalog(&self) -> &dyn CatalogStore {
        self.catalog.as_ref()
    }

    pub(crate) fn now(&self) -> Millis {
        self.clock.now()
    }

    pub(crate) fn credentials(&self) -> &CredentialResolver {
        &self.credentials
    }

    pub(crate) fn meter_store(&self) -> &dyn MeterStore {
        self.meters.as_ref()
    }

    pub(crate) fn server_usage_store(&self) -> &dyn ServerUsageStore {
        self.server_usage.as_ref()
    }

    fn digests(&self, components: &[Component]) -> Result<(Vec<Component>, Vec<ComponentDigest>), ActivationError> {
        let normalized = fingerprint::normalize(components)?;
        let digests = fingerprint::stored_digests(self.credentials.hasher(), &normalized);
        Ok((normalized, digests))
    }

    /// The signed certificate of an activation, for the machine as presented now, with the
    /// license's meters as counted now.
    pub async fn certificate(
        &self,
        license: &License,
        activation: &Activation,
        presented: &[Component],
    ) -> Result<SignedBlob, ActivationError> {
        let meters = match license.meters.is_empty() {
            true => Vec::new(),
            false => self.meters.current_meter_usage(license, self.now()).await?,
        };
        Ok(self.sign_certificate(license, activation, presented, &meters))
    }

    fn sign_certificate(
        &self,
        license: &License,
        activation: &Activation,
        presented: &[Component],
        meters: &[MeterUsage],
    ) -> SignedBlob {
        let now = self.now();
        let mut valid_until = now + self.settings.offline_validity;
        // Offline use goes on through the grace period, as online validation does.
        if let Some(end) = license.grace_ends_at() {
            valid_until = valid_until.min(end);
        }
        let licensed = license.modules_licensed_at(now);
        let payload = CertificatePayload {
            v: 1,
            license_id: license.license_id.clone(),
            installation_id: activation.installation_id.clone(),
            product_code: license.product_code.clone(),
            customer_id: license.customer_id.clone(),
            kind: license.kind.as_str().into(),
            // A module whose own expiry passed is left out, so products that predate
            // entitlements refuse it offline too.
            modules: licensed.iter().map(|(code, _)| code.clone()).collect(),
            valid_from_ms: license.valid_from,
            expires_at_ms: license.expires_at,
            upgrades_until_ms: license.upgrades_until,
            issued_at_ms: now,
            refresh_after_ms: (now + self.settings.refresh_after).min(valid_until),
            valid_until_ms: valid_until,
            fingerprint: fingerprint::public_digests(presented),
            match_threshold: self.settings.match_threshold,
            seats: license.seats,
            meters: meters.iter().map(CertificateMeter::from).collect(),
            grace_ends_at_ms: license.grace_ends_at().filter(|_| license.grace_period_ms > 0),
            heartbeat_timeout_secs: license.heartbeat_timeout_ms.unwrap_or(0) / 1000,
            first_used_at_ms: license.first_use.as_ref().and_then(|f| f.started_at),
            entitlements: licensed
                .into_iter()
                .filter(|(_, e)| *e != ModuleEntitlement::default())
                .map(|(module, e)| CertificateEntitlement { module, value: e.value, expires_at_ms: e.expires_at })
                .collect(),
        };
        self.signer.sign_certificate(&payload)
    }

    /// Activates the machine on the license the credentials name (or finds its live activation):
    /// the activation, whether it existed already, and its fresh certificate.
    pub async fn activate(
        &self,
        credentials: &Credentials,
        machine: &Machine,
    ) -> Result<(Activation, bool, SignedBlob), ActivationError> {
        self.activate_as(credentials, machine, false).await
    }

    async fn activate_as(
        &self,
        credentials: &Credentials,
        machine: &Machine,
        offline: bool,
    ) -> Result<(Activation, bool, SignedBlob), ActivationError> {
        let (activation, license, existed, presented) =
            self.activate_machine(credentials, machine, offline, LicenseKind::NodeLocked).await?;
        let certificate = self.certificate(&license, &activation, &presented).await?;
        Ok((activation, existed, certificate))
    }

    /// Activates a machine on a license of `kind` (node-locked, or a server license) with the
    /// store's atomic limit: the activation, the license as it now stands, whether the machine
    /// was activated already, and the normalized components presented. A server license's
    /// activation gets the next server license file serial (see [`ActivateCommand::server`]).
    pub(crate) async fn activate_machine(
        &self,
        credentials: &Credentials,
        machine: &Machine,
        offline: bool,
        kind: LicenseKind,
    ) -> Result<(Activation, License, bool, Vec<Component>), ActivationError> {
        let machine_name = check_text("machine.machine_name", &machine.machine_name, false)?;
        let platform = check_text("machine.platform", &machine.platform, false)?;
        let product_version = check_text("machine.product_version", &machine.product_version, false)?;
        if !product_version.is_empty() {
            parse_version(&product_version)?;
        }
        let (presented, digests) = self.digests(&machine.fingerprint)?;
        let summary = fingerprint::summary(&digests);
        let action = if offline { "offline_activate" } else { "activate" };
        let license = self.resolve_recorded(credentials, action, &machine_name, &summary).await?;
        self.per_license.acquire(&license.license_id, || format!("license {}", license.license_id))?;
        // The upgrade period decides with the license locked, like every other rule, so an
        // extension made meanwhile counts; the release date is read first (it never changes).
        let version = match product_version.as_str() {
            "" => None,
            // An on-premises server reports its own version: no upgrade period judges it.
            _ if kind == LicenseKind::Server => None,
            v => Some(self.release_of(&license, parse_version(v)?).await?),
        };
        let now = self.now();
        let command = ActivateCommand {
            license_id: license.license_id.clone(),
            installation_id: ids::new_id(ids::INSTALLATION),
            fingerprint_summary: summary,
            fingerprint: digests,
            machine_name,
            platform,
            product_version,
            offline,
            server: kind == LicenseKind::Server,
            match_threshold: self.settings.match_threshold,
            now,
        };
        let usable = move |l: &License| {
            l.usability(now, kind)?;
            match &version {
                Some((label, released_at)) => l.covers_version(label, *released_at),
                None => Ok(()),
            }
        };
        let outcome = self.store.activate(&command, &usable).await.map_err(|e| match e {
            ActivationStoreError::LimitReached { seats } if kind == LicenseKind::Server => {
                ActivationError::ServerLimit { license_id: license.license_id.clone(), seats }
            }
            e => ActivationError::from_store(e, &license.license_id),
        })?;
        let (activation, license, existed) = match outcome {
            ActivateOutcome::New(a, l) => {
                self.observer.activated(&l.product_code);
                (a, l, false)
            }
            ActivateOutcome::Existing(a, l) => (a, l, true),
        };
        Ok((activation, license, existed, presented))
    }

    /// Starts (or finds) the trial of `product_code` on this machine, without a key: once per
    /// machine and product, decided by the store with the product locked, then activated like
    /// any license (an expired trial is refused as expired; a converted one is refused).
    pub async fn activate_trial(
        &self,
        product_code: &str,
        machine: &Machine,
    ) -> Result<TrialActivation, ActivationError> {
        let code_ok = (2..=64).contains(&product_code.len())
            && product_code.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !product_code.starts_with('-');
        if !code_ok {
            return Err(ActivationError::invalid(
                "product_code",
                format!(
                    "{} must be 2-64 lowercase letters, digits or dashes, not starting with a dash",
                    quoted(product_code)
                ),
            ));
        }
        // Everything the activation checks is checked before a trial is made.
        check_text("machine.machine_name", &machine.machine_name, false)?;
        check_text("machine.platform", &machine.platform, false)?;
        let product_version = check_text("machine.product_version", &machine.product_version, false)?;
        if !product_version.is_empty() {
            parse_version(&product_version)?;
        }
        let (_, digests) = self.digests(&machine.fingerprint)?;
        if self.catalog.get_product(product_code).await?.is_none() {
            return Err(ActivationError::ProductNotFound(product_code.to_owned()));
        }
        let policies = self.catalog.list_policies(product_code).await?;
        let policy =
            offered_trial(&policies).ok_or_else(|| ActivationError::TrialNotOffered(product_code.to_owned()))?;
        let now = self.now();
        let license_id = ids::new_id(ids::LICENSE);
        let hasher = self.credentials.hasher();
        let key = hasher.trial_license_key(&license_id);
        let salt = licensing_domain::secrets::random_token("salt", 16);
        let command = TrialCommand {
            product_code: product_code.to_owned(),
            fingerprint: digests,
            match_threshold: self.settings.match_threshold,
            new_license: NewLicense {
                key_digest: hasher.digest(licensing_domain::secrets::purpose::LICENSE_KEY, key.as_str()),
                activation_password_salt: salt,
                license: trial_license(license_id, policy, now),
            },
            now,
        };
        let (license, existing_trial) = match self.trials.start_trial(&command).await.map_err(|e| match e {
            StoreError::NotFound(_) => ActivationError::ProductNotFound(product_code.to_owned()),
            other => ActivationError::Store(other),
        })? {
            TrialStart::New(license) => (license, false),
            TrialStart::Existing { license, converted_at: Some(_) } => {
                return Err(ActivationError::TrialConverted {
                    product_code: product_code.to_owned(),
                    license_id: license.license_id,
                })
            }
            TrialStart::Existing { license, converted_at: None } => (license, true),
        };
        let license_key = hasher.trial_license_key(&license.license_id).as_str().to_owned();
        let (activation, _, certificate) =
            self.activate_as(&Credentials::LicenseKey(license_key.clone()), machine, false).await?;
        let license = self.catalog.get_license(&license.license_id).await?.unwrap_or(license);
        Ok(TrialActivation { activation, existing_trial, certificate, license, license_key })
    }

    /// Activation from an offline request text, with the same limits and idempotency.
    pub async fn activate_offline(
        &self,
        request_text: &str,
    ) -> Result<(Activation, bool, SignedBlob), ActivationError> {
        if request_text.len() > 64 * 1024 {
            return Err(ActivationError::OfflineRequest("activation_request: larger than 64 KiB".into()));
        }
        let request = licensing_domain::certificate::decode_offline_request(request_text)
            .map_err(|e| ActivationError::OfflineRequest(format!("activation_request: {e}")))?;
        if request.v != 1 {
            return Err(ActivationError::OfflineRequest(format!(
                "activation_request: version {} is not supported",
                request.v
            )));
        }
        let machine = Machine {
            fingerprint: request.fingerprint,
            machine_name: request.machine_name,
            platform: request.platform,
            product_version: request.product_version,
        };
        self.activate_as(&Credentials::LicenseKey(request.license_key), &machine, true).await
    }

    /// Writes the request a product on an air-gapped machine would (for tools and tests).
    pub fn offline_request(license_key: &str, machine: &Machine, now: Millis) -> String {
        encode_offline_request(&OfflineRequest {
            v: 1,
            license_key: license_key.into(),
            fingerprint: machine.fingerprint.clone(),
            machine_name: machine.machine_name.clone(),
            platform: machine.platform.clone(),
            product_version: machine.product_version.clone(),
            created_at_ms: now,
        })
    }

    /// Frees a node-locked activation given back by an offline deactivation request (see
    /// [`licensing_domain::offline_deactivation`]): the product deleted its certificate and
    /// wrote the request, and an operator submits it from a connected machine (`client` is the
    /// caller's address, for the password limiter). Decided by the store with the license row
    /// locked, like a product's online deactivation: it spends a deactivation (never past the
    /// limit), needs the license usable, and is refused (`SUPERSEDED_CERTIFICATE`, nothing
    /// changes) when the machine was activated again or refreshed its certificate after the
    /// certificate the request gives back. A second submission finds no live activation
    /// (NOT_FOUND). Recorded in the history (`offline_deactivate`) and audited
    /// (`activation.offline_deactivated`).
    pub async fn deactivate_offline(
        &self,
        request_text: &str,
        client: &str,
    ) -> Result<(Activation, License), ActivationError> {
        let bad = |why: String| ActivationError::DeactivationRequest(format!("request_file: {why}"));
        let request = decode_deactivation_request(request_text).map_err(|e| {
            bad(match e {
                licensing_domain::certificate::VerifyError::Malformed(why) => {
                    format!(
                        "not an offline deactivation request (-----BEGIN LICENSING DEACTIVATION REQUEST-----): {why}"
                    )
                }
                other => other.to_string(),
            })
        })?;
        request.check().map_err(bad)?;
        let (_, digests) = self.digests(&request.fingerprint).map_err(|e| bad(e.to_string()))?;
        let summary = fingerprint::summary(&digests);
        let credentials = match request.credential() {
            DeactivationCredential::LicenseKey(key) => Credentials::LicenseKey(key),
            DeactivationCredential::Password(password) => Credentials::IdAndPassword {
                license_id: request.license_id.clone(),
                password,
                client: client.to_owned(),
            },
        };
        let license = self.resolve_recorded(&credentials, "offline_deactivate", "", &summary).await?;
        if license.license_id != request.license_id {
            return Err(ActivationError::LicenseState(Refusal {
                reason: "LICENSE_MISMATCH",
                message: format!(
                    "the request's license key is not the key of license {} it names: the request was not written \
                     by this license's product",
                    request.license_id
                ),
            }));
        }
        self.per_license.acquire(&license.license_id, || format!("license {}", license.license_id))?;
        let now = self.now();
        let details = serde_json::json!({
            "installation_id": request.installation_id,
            "certificate_issued_at_ms": request.certificate_issued_at_ms,
            "request_created_at_ms": request.created_at_ms,
            "fingerprint": summary,
        });
        let command = DeactivateCommand {
            license_id: license.license_id.clone(),
            target: DeactivateTarget::OfflineRequest {
                installation_id: request.installation_id.clone(),
                certificate_issued_at: request.certificate_issued_at_ms,
                audit: AuditRecord::new("product", "activation.offline_deactivated", &license.license_id)
                    .with_details(details),
            },
            // The product's own return, as an online Deactivate.
            counts: true,
            action: "offline_deactivate",
            now,
        };
        let usable = move |l: &License| l.usability(now, LicenseKind::NodeLocked);
        self.store.deactivate_checked(&command, &usable).await.map_err(|e| match e {
            ActivationStoreError::NoActivation => {
                ActivationError::InstallationNotFound(request.installation_id.clone())
            }
            ActivationStoreError::Refused(refusal) if refusal.reason == "SUPERSEDED_CERTIFICATE" => {
                ActivationError::LicenseState(refusal)
            }
            ActivationStoreError::Refused(refusal) => ActivationError::LicenseState(portal_can_deactivate(refusal)),
            e => ActivationError::from_store(e, &license.license_id),
        })
    }

    /// The license the credentials name. A wrong activation password is recorded in the
    /// license's history as a refusal of `action` (the credentials' failure limiter bounds how
    /// many can be recorded: once it blocks, nothing is checked or recorded).
    async fn resolve_recorded(
        &self,
        credentials: &Credentials,
        action: &str,
        machine_name: &str,
        fingerprint_summary: &str,
    ) -> Result<License, ActivationError> {
        match self.credentials.resolve(credentials).await {
            Err(CredentialError::WrongPassword(license_id)) => {
                let error = CredentialError::WrongPassword(license_id.clone());
                let event = ActivationEvent {
                    sequence: 0,
                    occurred_at: self.now(),
                    action: action.into(),
                    installation_id: String::new(),
                    machine_name: machine_name.into(),
                    fingerprint_digest: fingerprint_summary.into(),
                    outcome: licensing_domain::error::ClassifiedError::reason(&error).into(),
                };
                if let Err(e) = self.store.record_refusal(&license_id, &event).await {
                    tracing::warn!(error = %e, license_id, "could not record a wrong activation password in the history");
                }
                Err(error.into())
            }
            other => Ok(other?),
        }
    }

    /// Deactivation from the product: by credentials and fingerprint, or by Installation ID
    /// with a proof that the license is the caller's.
    pub async fn deactivate(&self, request: DeactivationRequest) -> Result<(Activation, License), ActivationError> {
        let (license, target) = match request {
            DeactivationRequest::ByMachine { credentials, fingerprint } => {
                let (_, digests) = self.digests(&fingerprint)?;
                let summary = fingerprint::summary(&digests);
                let license = self.resolve_recorded(&credentials, "deactivate", "", &summary).await?;
                (license, DeactivateTarget::Fingerprint { digests, match_threshold: self.settings.match_threshold })
            }
            DeactivationRequest::ByInstallation { installation_id, proof } => {
                if !ids::is_well_formed(ids::INSTALLATION, &installation_id) {
                    return Err(ActivationError::invalid(
                        "installation_id",
                        format!("{} is not an Installation ID (ins_…)", quoted(&installation_id)),
                    ));
                }
                let license = match proof {
                    InstallationProof::Missing => return Err(ActivationError::InstallationProofMissing),
                    InstallationProof::Credentials(credentials) => {
                        self.resolve_recorded(&credentials, "deactivate", "", "").await?
                    }
                    InstallationProof::PortalSession(token) => {
                        self.license_of_session_owner(&token, &installation_id).await?
                    }
                };
                (license, DeactivateTarget::Installation(installation_id))
            }
        };
        self.per_license.acquire(&license.license_id, || format!("license {}", license.license_id))?;
        let now = self.now();
        let command = DeactivateCommand {
            license_id: license.license_id.clone(),
            target,
            counts: true,
            action: "deactivate",
            now,
        };
        let usable = move |l: &License| l.usability(now, LicenseKind::NodeLocked);
        self.store.deactivate_checked(&command, &usable).await.map_err(|e| match (e, &command.target) {
            (ActivationStoreError::NoActivation, DeactivateTarget::Installation(id)) => {
                ActivationError::InstallationNotFound(id.clone())
            }
            (ActivationStoreError::Refused(refusal), _) => {
                ActivationError::LicenseState(portal_can_deactivate(refusal))
            }
            (e, _) => ActivationError::from_store(e, &license.license_id),
        })
    }

    /// The license of a live installation whose owner (the account it is associated with)
    /// holds this portal session. Another account's installation answers as a missing one.
    async fn license_of_session_owner(&self, token: &str, installation_id: &str) -> Result<License, ActivationError> {
        let customer = self.sessions.customer(token).await?.ok_or(ActivationError::SessionInvalid)?;
        let not_found = || ActivationError::InstallationNotFound(installation_id.to_owned());
        let activation = self.store.get_activation(installation_id).await?.ok_or_else(not_found)?;
        let license = self.catalog.get_license(&activation.license_id).await?.ok_or_else(not_found)?;
        if !license.belongs_to_account(&customer) {
            return Err(not_found());
        }
        Ok(license)
    }

    /// Validates a license for this machine; wrong credentials are errors, license problems are codes.
    pub async fn validate(
        &self,
        credentials: &Credentials,
        fingerprint: &[Component],
        modules: &[String],
        product_version: &str,
    ) -> Result<Validation, ActivationError> {
        let version = match product_version.trim() {
            "" => None,
            v => Some(parse_version(v)?),
        };
        let read = match self.license_and_live_activations(credentials).await {
            Ok(read) => read,
            // An unknown key and an unknown License ID are one situation: the same code.
            Err(CredentialError::UnknownKey) => {
                return Ok(Validation::failed(ValidationCode::NotFound, "no license has this key", None))
            }
            Err(CredentialError::UnknownLicense(id)) => {
                let message = format!("no license has the License ID {}", quoted(&id));
                return Ok(Validation::failed(ValidationCode::NotFound, message, None));
            }
            Err(e) => return Err(e.into()),
        };
        let license = read.license.clone();
        let now = self.now();
        if let Err(refusal) = license.usability(now, license.kind) {
            let code = match refusal.reason {
                "RETIRED" => ValidationCode::Retired,
                "SUSPENDED" => ValidationCode::Suspended,
                "NOT_YET_VALID" => ValidationCode::NotYetValid,
                _ => ValidationCode::Expired,
            };
            return Ok(Validation::failed(code, refusal.message, Some(license)));
        }
        let mut activation_and_presented = None;
        match license.kind {
            LicenseKind::Cloud => {}
            LicenseKind::Server => {
                return Ok(Validation::failed(
                    ValidationCode::WrongKind,
                    "a server license is activated by an on-premises license server (ActivateServer), not by a product",
                    Some(license),
                ))
            }
            LicenseKind::Concurrent => {
                return Ok(Validation::failed(
                    ValidationCode::WrongKind,
                    "a concurrent license is used through the Seat service",
                    Some(license),
                ))
            }
            LicenseKind::NodeLocked => {
                let (presented, digests) = self.digests(fingerprint)?;
                // A recognisably similar machine (at least half the needed share) is a mismatch;
                // anything less is simply another machine.
                let best = self.nearest_machine(&read, &digests).await?;
                match best.as_deref() {
                    Some(MachineMatch { share, .. }) if *share >= self.settings.match_threshold => {
                        activation_and_presented = best.map(|found| (found, presented))
                    }
                    Some(MachineMatch { share, .. }) => {
                        return Ok(Validation::failed(
                            ValidationCode::FingerprintMismatch,
                            format!(
                                "this machine matches {:.0}% of an activated machine's components; {:.0}% are needed",
                                share * 100.0,
                                self.settings.match_threshold * 100.0
                            ),
                            Some(license),
                        ))
                    }
                    _ => {
                        return Ok(Validation::failed(
                            ValidationCode::NotActivated,
                            "the license is not activated on this machine",
                            Some(license),
                        ))
                    }
                }
            }
        }
        // A module past its own expiry is not licensed any more; the refusal names its expiry.
        if let Some(refusal) = modules.iter().find_map(|m| license.module_licensed(m, now).err()) {
            return Ok(Validation::failed(ValidationCode::ModuleNotLicensed, refusal.message, Some(license)));
        }
        // Every version runs without an upgrade period: no need to read the product.
        if let (Some(version), Some(_)) = (version, license.upgrades_until) {
            let (label, released_at) = self.release_of(&license, version).await?;
            if let Err(refusal) = license.covers_version(&label, released_at) {
                return Ok(Validation::failed(ValidationCode::VersionNotCovered, refusal.message, Some(license)));
            }
        }
        let certificate = match activation_and_presented {
            Some((found, presented)) => Some(self.certificate(&license, &found.activation, &presented).await?),
            None => None,
        };
        let grace_ends_at = license.in_grace(now);
        let (code, detail) = match grace_ends_at {
            Some(end) => (
                ValidationCode::ValidInGrace,
                format!(
                    "license {} expired at {} and is in its grace period until {}; renew it with your vendor",
                    license.license_id,
                    licensing_domain::clock::rfc3339(license.expires_at.unwrap_or_default()),
                    licensing_domain::clock::rfc3339(end)
                ),
            ),
            None => (ValidationCode::Valid, String::new()),
        };
        let entitlements = license.modules_licensed_at(now);
        Ok(Validation { code, detail, license: Some(license), certificate, grace_ends_at, entitlements })
    }

    /// The live activation `digests` come nearest to on the read's license, if it reaches half
    /// the match threshold; remembered in the read for the next validation of the machine.
    async fn nearest_machine(
        &self,
        read: &LicenseActivations,
        digests: &[ComponentDigest],
    ) -> Result<Option<Arc<MachineMatch>>, ActivationError> {
        let key = machine_key(digests);
        if let Some(found) = read.machine(&key) {
            return Ok(found);
        }
        let min_share = self.settings.match_threshold / 2.0;
        let found = self.store.best_live_match(&read.license.license_id, digests, min_share).await?.map(Arc::new);
        read.remember(key, found.clone());
        Ok(found)
    }

    /// The license the credentials name, with the machines looked up on it. Licenses named by
    /// key come from the validation cache (products validate at every start and on a timer);
    /// an activation password is checked on every call, so those are read each time.
    async fn license_and_live_activations(
        &self,
        credentials: &Credentials,
    ) -> Result<Arc<LicenseActivations>, CredentialError> {
        let Credentials::LicenseKey(key) = credentials else {
            let license = self.credentials.resolve(credentials).await?;
            return Ok(Arc::new(LicenseActivations::new(license)));
        };
        let digest = self.credentials.license_key_digest(key)?;
        let ticket = match self.validations.lookup_by_key(&digest) {
            Some((_, Lookup::Hit(read))) => return Ok(read),
            Some((_, Lookup::Miss(ticket))) => ticket,
            None => self.validations.ticket(),
        };
        let license = self.credentials.resolve_key_digest(&digest).await?;
        self.validations.remember_key_owner(digest, license.license_id.clone());
        let read = Arc::new(LicenseActivations::new(license));
        self.validations.fill(ticket, &read.license.license_id, read.clone());
        Ok(read)
    }

    /// A version of the license's product as the upgrade period judges it: its name and its
    /// release date (`None` when the product has no such release). A recorded release never
    /// changes, so one found is kept for [`RELEASE_KEPT`] (only a second label for the same
    /// version, recorded with another date, could change the answer); an unknown version is
    /// read again each time, as it may be released any moment.
    async fn release_of(
        &self,
        license: &License,
        version: licensing_domain::version::Version,
    ) -> Result<(String, Option<Millis>), ActivationError> {
        let key = (license.product_code.clone(), version);
        {
            let releases = self.releases.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((label, released_at, read_at)) = releases.get(&key) {
                if read_at.elapsed() < RELEASE_KEPT {
                    return Ok((label.clone(), Some(*released_at)));
                }
            }
        }
        let named = format!("{}.{}.{}", version.0, version.1, version.2);
        let product = self.catalog.get_product(&license.product_code).await?;
        let released =
            product.and_then(|p| p.versions.into_iter().find(|v| parse_version(&v.version).ok() == Some(version)));
        Ok(match released {
            Some(v) => {
                let mut releases = self.releases.lock().unwrap_or_else(|p| p.into_inner());
                if releases.len() >= RELEASES_KEPT {
                    releases.clear();
                }
                releases.insert(key, (v.version.clone(), v.released_at, Instant::now()));
                (v.version, Some(v.released_at))
            }
            None => (named, None),
        })
    }

    /// A fresh certificate for an activated machine, recorded as a refresh.
    pub async fn refresh(
        &self,
        credentials: &Credentials,
        fingerprint: &[Component],
    ) -> Result<SignedBlob, ActivationError> {
        let (license, activation, presented) = self.activated(credentials, fingerprint).await?;
        let now = self.now();
        let event = ActivationEvent {
            sequence: 0,
            occurred_at: now,
            action: "refresh".into(),
            installation_id: activation.installation_id.clone(),
            machine_name: activation.machine_name.clone(),
            fingerprint_digest: fingerprint::summary(&activation.fingerprint),
            outcome: "ok".into(),
        };
        self.store.record_refresh(&activation.installation_id, &event, now).await?;
        self.certificate(&license, &activation, &presented).await
    }

    /// A heartbeat from an activated machine: marks it seen now, so a license with a heartbeat
    /// timeout keeps its activation. Refused as a refresh is (credentials, license state), and
    /// with [`ActivationError::NotActivated`] when the machine holds no activation (it was
    /// deactivated, or culled for missing heartbeats); a refusal changes nothing. Licenses named
    /// by key and their machines come from the validation cache: a heartbeat costs one write.
    pub async fn heartbeat(
        &self,
        credentials: &Credentials,
        fingerprint: &[Component],
    ) -> Result<Heartbeat, ActivationError> {
        let (_, digests) = self.digests(fingerprint)?;
        let read = self.license_and_live_activations(credentials).await?;
        let license = read.license.clone();
        let now = self.now();
        license.usability(now, LicenseKind::NodeLocked).map_err(ActivationError::LicenseState)?;
        let not_activated = || ActivationError::NotActivated(license.license_id.clone());
        let found = self
            .nearest_machine(&read, &digests)
            .await?
            .filter(|m| m.share >= self.settings.match_threshold)
            .ok_or_else(not_activated)?;
        // Not live any more (culled or deactivated since the cache read it): nothing changes.
        let activation = self
            .store
            .record_heartbeat(&license.license_id, &found.activation.installation_id, now)
            .await?
            .ok_or_else(not_activated)?;
        Ok(Heartbeat { deadline: license.heartbeat_deadline(&activation), activation, license })
    }

    /// Deactivates the machines of licenses with a heartbeat timeout that were not seen within
    /// it (see [`ActivationStore::cull_silent_activations`]), in batches until none is left;
    /// returns them. Safe to run in every replica at once.
    pub async fn cull_silent_machines(&self) -> Result<Vec<CulledActivation>, ActivationError> {
        let now = self.now();
        let mut culled = vec![];
        loop {
            let batch = self.store.cull_silent_activations(now, CULL_BATCH).await?;
            for c in &batch {
                tracing::info!(
                    license_id = c.activation.license_id,
                    installation_id = c.activation.installation_id,
                    last_seen_at = c.activation.last_seen_at,
                    heartbeat_timeout_ms = c.heartbeat_timeout_ms,
                    "machine deactivated: no heartbeat within the license's timeout"
                );
            }
            let done = batch.len() < CULL_BATCH;
            culled.extend(batch);
            if done {
                return Ok(culled);
            }
        }
    }

    /// The license, its live activation on this machine and the normalized components.
    pub async fn activated(
        &self,
        credentials: &Credentials,
        fingerprint: &[Component],
    ) -> Result<(License, Activation, Vec<Component>), ActivationError> {
        let (presented, digests) = self.digests(fingerprint)?;
        let license = self.credentials.resolve(credentials).await?;
        license.usability(self.now(), LicenseKind::NodeLocked).map_err(ActivationError::LicenseState)?;
        let activation = self
            .store
            .best_live_match(&license.license_id, &digests, self.settings.match_threshold)
            .await?
            .ok_or_else(|| ActivationError::NotActivated(license.license_id.clone()))?
            .activation;
        Ok((license, activation, presented))
    }

    /// The license as stored now (for the watch stream).
    pub async fn current_license(&self, license_id: &str) -> Result<Option<License>, ActivationError> {
        Ok(self.catalog.get_license(license_id).await?)
    }

    /// Follows the license activated on this machine: the stream tells its state at once, then
    /// whenever the vendor changes it (in any process; looked for every `poll`), with a fresh
    /// certificate while the license is usable. Credentials and activation are checked before
    /// anything streams, so a bad one fails the call. The stream ends with NOT_ACTIVATED when the
    /// license is gone, SHUTTING_DOWN when `drain` is cancelled, and at once when the caller goes.
    pub async fn watch_license(
        &self,
        credentials: Credentials,
        presented: Vec<Component>,
        poll: Duration,
        drain: CancellationToken,
    ) -> Result<ReceiverStream<Result<LicenseChange, ActivationError>>, ActivationError> {
        let (license, _, _) = self.activated(&credentials, &presented).await?;
        let (events, stream) = tokio::sync::mpsc::channel(4);
        let activations = self.clone();
        tokio::spawn(async move {
            let mut last_seen: Option<(Millis, LicenseStatus)> = None;
            loop {
                let event = match activations.current_license(&license.license_id).await {
                    Ok(Some(current)) if last_seen == Some((current.updated_at, current.status)) => None,
                    Ok(Some(current)) => {
                        last_seen = Some((current.updated_at, current.status));
                        // While the license is usable, a fresh certificate; otherwise the
                        // license alone says why not.
                        let certificate = match activations.activated(&credentials, &presented).await {
                            Ok((l, a, p)) => activations.certificate(&l, &a, &p).await.map(Some),
                            Err(_) => Ok(None),
                        };
                        Some(certificate.map(|certificate| LicenseChange { license: current, certificate }))
                    }
                    Ok(None) => Some(Err(ActivationError::NotActivated(license.license_id.clone()))),
                    Err(e) => Some(Err(e)),
                };
                if let Some(event) = event {
                    let end = event.is_err();
                    if events.send(event).await.is_err() || end {
                        return;
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(poll) => {}
                    () = events.closed() => return,
                    () = drain.cancelled() => {
                        let _ = events.send(Err(ShuttingDown.into())).await;
                        return;
                    }
                }
            }
        });
        Ok(ReceiverStream::new(stream))
    }
}

/// Silent machines culled per store call (each license's in one transaction).
const CULL_BATCH: usize = 500;

/// What a heartbeat established ([`Activations::heartbeat`]).
#[derive(Debug, Clone)]
pub struct Heartbeat {
    /// The machine's activation, as seen now.
    pub activation: Activation,
    /// The license it holds an activation of.
    pub license: Arc<License>,
    /// When the machine is culled unless seen again; `None` when the license requires no heartbeats.
    pub deadline: Option<Millis>,
}

/// What a product watching its license hears ([`Activations::watch_license`]).
#[derive(Debug)]
pub struct LicenseChange {
    /// The license as it now stands.
    pub license: License,
    /// A fresh certificate for this machine, while the license is usable.
    pub certificate: Option<SignedBlob>,
}

/// How a product's deactivation names the activation to return.
pub enum DeactivationRequest {
    /// The live activation best matching this machine on the license the credentials name.
    ByMachine {
        /// The license's credentials.
        credentials: Credentials,
        /// The machine's fingerprint as presented.
        fingerprint: Vec<Component>,
    },
    /// The installation with this ID, proven by credentials or a portal session.
    ByInstallation {
        /// Installation ID (`ins_…`).
        installation_id: String,
        /// What proves the caller may return it.
        proof: InstallationProof,
    },
}

/// A license-state refusal of a product's deactivation, pointing to the customer portal, which
/// can still deactivate the installation (of an expired license, say).
fn portal_can_deactivate(refusal: Refusal) -> Refusal {
    match refusal.reason {
        "WRONG_KIND" | "RETIRED" => refusal,
        _ => Refusal {
            message: format!(
                "{}. The product cannot deactivate it now, but you can do so in the customer portal \
                 (AccountService/DeactivateInstallation)",
                refusal.message
            ),
            ..refusal
        },
    }
}
