//! The on-premises server's use cases: its file (imported, refreshed, returned), the local
//! licenses the file makes, and the one decision whether a new seat may be granted.

use crate::error::OnPremError;
use crate::state::{PersistedState, StateFiles};
use crate::vendor::{GrantUsage, UsageUpload, Vendor, VendorError};
use ed25519_dalek::VerifyingKey;
use licensing_domain::certificate::VerifyError;
use licensing_domain::change::LicenseChange;
use licensing_domain::clock::{Millis, SharedClock};
use licensing_domain::error::StoreError;
use licensing_domain::fingerprint::Component;
use licensing_domain::model::{
    AuditRecord, Customer, License, LicenseFilter, LicenseKind, LicenseStatus, Module, NewLicense, Page, Product,
};
use licensing_domain::onprem::{served_licenses, NotServing, ServedLicense, ServedTerms, ServingState};
use licensing_domain::secrets::{purpose, random_token, KeyedHasher};
use licensing_domain::server_license::{
    encode_server_request, verify_server_license_file, ServerLicensePayload, ServerRequest, ServerRequestKind,
};
use licensing_domain::store::{ActivationStore, CatalogStore, LeaseStore, UpdateError, UsageStore};
use licensing_domain::usage::UsageReport;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

/// Who the on-premises server's own changes are recorded as in its audit log.
const ACTOR: &str = "onprem";

/// What the on-premises server is built from.
pub struct OnPremisesDeps {
    /// The local catalog the served licenses live in.
    pub catalog: Arc<dyn CatalogStore>,
    /// Node-locked activations of the served licenses (their use).
    pub activations: Arc<dyn ActivationStore>,
    /// Leases of the served licenses (their use).
    pub leases: Arc<dyn LeaseStore>,
    /// The usage log of the served licenses (what usage reports summarise).
    pub usage: Arc<dyn UsageStore>,
    /// Derives the served licenses' keys and digests them.
    pub hasher: KeyedHasher,
    /// The vendor's licensing server, when this server is online; `None`: air-gapped.
    pub vendor: Option<Arc<dyn Vendor>>,
    /// This server's clock.
    pub clock: SharedClock,
}

/// Who this server is to its vendor.
#[derive(Clone)]
pub struct OnPremisesSettings {
    /// The server license's key (`LICENSING_SERVER_LICENSE_KEY`).
    pub license_key: String,
    /// The vendor's Ed25519 public key, which signs server license files.
    pub vendor_key: VerifyingKey,
    /// This machine's fingerprint components.
    pub machine: Vec<Component>,
    /// The name this server is activated under.
    pub server_name: String,
    /// Where the file and the state are kept.
    pub files: StateFiles,
    /// The vendor's address, shown in the status (empty: air-gapped).
    pub vendor_url: String,
}

/// A served license as the status shows it: its key and how much of it is in use.
#[derive(Debug, Clone)]
pub struct ServedStatus {
    /// What the file grants.
    pub served: ServedLicense,
    /// The key products are configured with.
    pub license_key: String,
    /// Seats leased or machines activated now.
    pub in_use: i32,
}

/// What the server serves now.
#[derive(Debug, Clone)]
pub struct ServerStatus {
    /// `None` when new seats are granted; else why not.
    pub not_serving: Option<NotServing>,
    /// The file in force.
    pub payload: Option<ServerLicensePayload>,
    /// One entry per served license.
    pub licenses: Vec<ServedStatus>,
    /// The vendor's address (empty: air-gapped).
    pub vendor_url: String,
    /// When the last refresh succeeded.
    pub last_refresh_at: Option<Millis>,
    /// Why the last refresh failed, if it did.
    pub last_refresh_error: Option<String>,
}

/// What giving the file back did.
#[derive(Debug, Clone)]
pub struct Returned {
    /// The return file for the vendor.
    pub return_file: String,
    /// The serial of the file given back.
    pub serial: i64,
    /// Whether the vendor took it back online.
    pub returned_online: bool,
    /// Why the online return failed, if tried.
    pub online_error: Option<String>,
}

/// A usage report the vendor received.
#[derive(Debug, Clone)]
pub struct UsageSent {
    /// The vendor's report ID.
    pub report_id: String,
    /// The period it covers, `[from, to)`.
    pub from: Millis,
    /// Its end.
    pub to: Millis,
}

/// The longest period one usage report covers (the vendor's bound).
const MAX_USAGE_PERIOD_MS: Millis = 366 * 24 * 3600 * 1000;

/// The on-premises server: cheap to clone, shared by the gate, the admin API and the
/// background refresh.
#[derive(Clone)]
pub struct OnPremises {
    inner: Arc<Inner>,
}

struct Inner {
    deps: OnPremisesDeps,
    settings: OnPremisesSettings,
    serving: RwLock<ServingState>,
    /// The latest instant seen on this server's clock; persisted now and then, so a restart with
    /// the clock set back is caught too.
    seen_at: AtomicI64,
    /// What is kept on disk besides the file.
    persisted: std::sync::Mutex<PersistedState>,
    last_refresh: std::sync::Mutex<(Option<Millis>, Option<String>)>,
    /// One import, refresh or return at a time.
    changing: tokio::sync::Mutex<()>,
}

impl OnPremises {
    /// Opens the server: reads its state and file from disk, verifies the file (a file that no
    /// longer verifies or is bound to another machine is not served, and the reason logged), and
    /// brings the served licenses in line with it.
    pub async fn open(deps: OnPremisesDeps, settings: OnPremisesSettings) -> Result<Self, OnPremError> {
        let persisted = settings.files.read_state()?;
        let now = deps.clock.now();
        let seen_at = persisted.seen_at;
        let mut serving = ServingState {
            payload: None,
            returned_serial: persisted.returned_serial,
            refused: persisted.refused.clone(),
        };
        let file = settings.files.read_file()?;
        let this = Self {
            inner: Arc::new(Inner {
                deps,
                settings,
                serving: RwLock::new(ServingState::default()),
                seen_at: AtomicI64::new(seen_at),
                persisted: std::sync::Mutex::new(persisted),
                last_refresh: std::sync::Mutex::new((None, None)),
                changing: tokio::sync::Mutex::new(()),
            }),
        };
        if let Some(text) = file {
            match this.verify(&text) {
                Ok(payload) => {
                    this.follow(&payload, now).await?;
                    serving.payload = Some(payload);
                }
                Err(e) => tracing::error!(error = %e, "the server license file in the data directory is not served"),
            }
        }
        *this.inner.serving.write().unwrap_or_else(|e| e.into_inner()) = serving;
        if let Err(refused) = this.may_grant() {
            tracing::warn!(reason = refused.reason(), "{refused}");
        }
        Ok(this)
    }

    fn now(&self) -> Millis {
        self.inner.deps.clock.now()
    }

    /// Whether a new seat or activation may be granted now: the one rule the gate asks.
    pub fn may_grant(&self) -> Result<(), NotServing> {
        let now = self.now();
        let seen = self.inner.seen_at.fetch_max(now, Ordering::Relaxed);
        self.inner.serving.read().unwrap_or_else(|e| e.into_inner()).may_grant(now, seen)
    }

    /// Keeps the latest instant seen on disk (called now and then, and at shutdown).
    pub fn persist_clock(&self) -> Result<(), OnPremError> {
        let now = self.now();
        let seen = self.inner.seen_at.fetch_max(now, Ordering::Relaxed).max(now);
        let mut persisted = self.inner.persisted.lock().unwrap_or_else(|e| e.into_inner());
        // Only forward: a clock set back must not lower what was seen.
        if seen > persisted.seen_at {
            persisted.seen_at = seen;
            self.inner.settings.files.write_state(&persisted)?;
        }
        Ok(())
    }

    fn verify(&self, text: &str) -> Result<ServerLicensePayload, OnPremError> {
        let payload = verify_server_license_file(&self.inner.settings.vendor_key, text).map_err(|e| match e {
            VerifyError::Malformed(why) => OnPremError::InvalidFile(why),
            other => OnPremError::InvalidFile(format!(
                "{other}: it was altered, or signed by another vendor than LICENSING_VENDOR_PUBLIC_KEY names"
            )),
        })?;
        payload.check_machine(&self.inner.settings.machine).map_err(|e| {
            OnPremError::WrongMachine(format!("server license file: {e}; it is bound to another server"))
        })?;
        Ok(payload)
    }

    /// Imports a server license file: verified with the vendor's key, bound to this machine,
    /// newer than every file of its license seen here; then it is in force, the served
    /// licenses follow it, and it is kept on disk.
    pub async fn import(&self, text: &str) -> Result<ServerStatus, OnPremError> {
        let _one = self.inner.changing.lock().await;
        self.import_locked(text).await?;
        self.status().await
    }

    async fn import_locked(&self, text: &str) -> Result<ServerLicensePayload, OnPremError> {
        let payload = self.verify(text)?;
        let highest = {
            let persisted = self.inner.persisted.lock().unwrap_or_else(|e| e.into_inner());
            persisted.serials.get(&payload.license_id).copied().unwrap_or(0)
        };
        if payload.serial <= highest {
            return Err(OnPremError::Superseded { serial: payload.serial, highest });
        }
        let now = self.now();
        self.follow(&payload, now).await?;
        self.inner.settings.files.write_file(text)?;
        {
            let mut persisted = self.inner.persisted.lock().unwrap_or_else(|e| e.into_inner());
            persisted.serials.insert(payload.license_id.clone(), payload.serial);
            persisted.usage_since.get_or_insert(now);
            persisted.returned_serial = None;
            persisted.refused = None;
            self.inner.settings.files.write_state(&persisted)?;
        }
        let mut serving = self.inner.serving.write().unwrap_or_else(|e| e.into_inner());
        serving.payload = Some(payload.clone());
        serving.returned_serial = None;
        serving.refused = None;
        tracing::info!(license_id = %payload.license_id, serial = payload.serial, "server license file in force");
        Ok(payload)
    }

    /// The activation request file an air-gapped server's operator carries to the vendor.
    pub fn activation_request(&self) -> String {
        let s = &self.inner.settings;
        encode_server_request(&ServerRequest {
            v: 1,
            kind: ServerRequestKind::Activate,
            license_key: s.license_key.clone(),
            fingerprint: s.machine.clone(),
            server_name: s.server_name.clone(),
            installation_id: String::new(),
            serial: 0,
            created_at_ms: self.now(),
        })
    }

    /// Asks the vendor for a fresh file (activating this server the first time) and imports it.
    /// A refusal (suspended, retired, returned at the vendor) stops new seats until a file
    /// arrives; an unreachable vendor changes nothing (the file serves until its end).
    pub async fn refresh(&self) -> Result<ServerStatus, OnPremError> {
        let vendor = self.inner.deps.vendor.clone().ok_or(OnPremError::AirGapped)?;
        let _one = self.inner.changing.lock().await;
        let s = &self.inner.settings;
        let result = vendor.activate_server(&s.license_key, &s.machine, &s.server_name).await;
        let now = self.now();
        let outcome = match result {
            Ok(file) => self.import_locked(&file).await.map(|_| ()),
            Err(VendorError::Refused { reason, message }) => {
                tracing::warn!(%reason, %message, "the vendor refused this server's license: no new seats");
                let mut persisted = self.inner.persisted.lock().unwrap_or_else(|e| e.into_inner());
                persisted.refused = Some((reason.clone(), message.clone()));
                self.inner.settings.files.write_state(&persisted)?;
                self.inner.serving.write().unwrap_or_else(|e| e.into_inner()).refused =
                    Some((reason.clone(), message.clone()));
                Err(OnPremError::Vendor(VendorError::Refused { reason, message }))
            }
            Err(e) => Err(OnPremError::Vendor(e)),
        };
        {
            let mut last = self.inner.last_refresh.lock().unwrap_or_else(|e| e.into_inner());
            match &outcome {
                Ok(()) => *last = (Some(now), None),
                Err(e) => last.1 = Some(e.to_string()),
            }
        }
        outcome?;
        drop(_one);
        self.status().await
    }

    /// Gives the file back: it is deleted and nothing new is served from here on (the served
    /// licenses are suspended, so validations and heartbeats stop too); then the return file is
    /// written and, online, sent to the vendor, which frees this server's activation.
    pub async fn return_license(&self) -> Result<Returned, OnPremError> {
        let _one = self.inner.changing.lock().await;
        let Some(payload) = self.inner.serving.read().unwrap_or_else(|e| e.into_inner()).payload.clone() else {
            return Err(OnPremError::NoFile);
        };
        // First stop serving, on disk too: a restart must not bring the file back.
        self.inner.settings.files.remove_file()?;
        {
            let mut persisted = self.inner.persisted.lock().unwrap_or_else(|e| e.into_inner());
            persisted.returned_serial = Some(payload.serial);
            self.inner.settings.files.write_state(&persisted)?;
        }
        {
            let mut serving = self.inner.serving.write().unwrap_or_else(|e| e.into_inner());
            serving.payload = None;
            serving.returned_serial = Some(payload.serial);
        }
        let now = self.now();
        self.stop_serving_all(now).await?;
        let s = &self.inner.settings;
        let return_file = encode_server_request(&ServerRequest {
            v: 1,
            kind: ServerRequestKind::Return,
            license_key: s.license_key.clone(),
            fingerprint: s.machine.clone(),
            server_name: s.server_name.clone(),
            installation_id: payload.installation_id.clone(),
            serial: payload.serial,
            created_at_ms: now,
        });
        let (returned_online, online_error) = match &self.inner.deps.vendor {
            None => (false, None),
            Some(vendor) => match vendor.return_server(&return_file).await {
                Ok(()) => (true, None),
                Err(e) => (false, Some(e.to_string())),
            },
        };
        tracing::info!(serial = payload.serial, returned_online, "server license returned; no longer serving");
        Ok(Returned { return_file, serial: payload.serial, returned_online, online_error })
    }

    /// Sends the vendor what the served licenses were used for since the last report (or since
    /// the first file): per grant the peak use, checkouts, denials and leased time, from the
    /// usage log; node-locked grants, the machines activated then and the activations held now.
    /// The next report starts where this one ends.
    pub async fn upload_usage(&self) -> Result<UsageSent, OnPremError> {
        let vendor = self.inner.deps.vendor.clone().ok_or(OnPremError::AirGapped)?;
        let _one = self.inner.changing.lock().await;
        let Some(payload) = self.inner.serving.read().unwrap_or_else(|e| e.into_inner()).payload.clone() else {
            return Err(OnPremError::NoFile);
        };
        let to = self.now();
        let since = self.inner.persisted.lock().unwrap_or_else(|e| e.into_inner()).usage_since.unwrap_or(to);
        let from = since.clamp(to.saturating_sub(MAX_USAGE_PERIOD_MS), to);
        let mut grants = vec![];
        for served in served_licenses(&payload) {
            grants.push(self.grant_usage(&served, from, to).await?);
        }
        let upload = UsageUpload {
            license_key: self.inner.settings.license_key.clone(),
            installation_id: payload.installation_id.clone(),
            serial: payload.serial,
            from,
            to,
            grants,
        };
        let report_id = vendor.report_usage(&upload).await?;
        let mut persisted = self.inner.persisted.lock().unwrap_or_else(|e| e.into_inner());
        persisted.usage_since = Some(to);
        self.inner.settings.files.write_state(&persisted)?;
        Ok(UsageSent { report_id, from, to })
    }

    async fn grant_usage(&self, served: &ServedLicense, from: Millis, to: Millis) -> Result<GrantUsage, OnPremError> {
        let deps = &self.inner.deps;
        let mut usage = GrantUsage {
            product_code: served.product_code.clone(),
            feature: served.feature.clone(),
            kind: "floating",
            granted: served.seats,
            peak_in_use: 0,
            checkouts: 0,
            denials: 0,
            seat_seconds: 0,
        };
        if served.kind == LicenseKind::NodeLocked {
            usage.kind = "node_locked";
            let live = deps.activations.list_live_activations(&served.license_id).await?.len();
            usage.peak_in_use = i32::try_from(live).unwrap_or(i32::MAX);
            let events = deps.activations.list_activation_events(&served.license_id).await?;
            let made = |e: &&licensing_domain::model::ActivationEvent| {
                (from..to).contains(&e.occurred_at)
                    && matches!(e.action.as_str(), "activate" | "offline_activate")
                    && e.outcome == "ok"
            };
            usage.checkouts = events.iter().filter(made).count() as i64;
            return Ok(usage);
        }
        let events = deps.usage.usage_events(&served.license_id, to).await?;
        let report = UsageReport::compute(&served.license_id, &events, from, to, to);
        usage.peak_in_use = report.days.iter().map(|d| d.peak_seats).max().unwrap_or(0).max(0);
        usage.checkouts = report.checkouts.max(0);
        usage.denials = report.denials.iter().map(|(_, n)| *n).sum::<i64>().max(0);
        usage.seat_seconds = (report.total_seat_hours * 3600.0).round().max(0.0) as i64;
        Ok(usage)
    }

    /// What the server serves now, with the served licenses' keys and use.
    pub async fn status(&self) -> Result<ServerStatus, OnPremError> {
        let not_serving = self.may_grant().err();
        let payload = self.inner.serving.read().unwrap_or_else(|e| e.into_inner()).payload.clone();
        let mut licenses = vec![];
        for served in payload.as_ref().map(served_licenses).unwrap_or_default() {
            let in_use = match served.kind {
                LicenseKind::NodeLocked => {
                    self.inner.deps.activations.list_live_activations(&served.license_id).await?.len()
                }
                _ => self.inner.deps.leases.list(&served.license_id).await?.len(),
            };
            let license_key = self.inner.deps.hasher.served_license_key(&served.license_id).as_str().to_owned();
            licenses.push(ServedStatus { in_use: i32::try_from(in_use).unwrap_or(i32::MAX), license_key, served });
        }
        let (last_refresh_at, last_refresh_error) =
            self.inner.last_refresh.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(ServerStatus {
            not_serving,
            payload,
            licenses,
            vendor_url: self.inner.settings.vendor_url.clone(),
            last_refresh_at,
            last_refresh_error,
        })
    }

    /// Whether this server talks to its vendor.
    pub fn is_online(&self) -> bool {
        self.inner.deps.vendor.is_some()
    }

    /// Brings the local catalog in line with `payload`: the customer, the products and modules,
    /// and one license per grant (created with its derived key, or updated to the file's terms);
    /// licenses of grants no longer in the file are suspended.
    async fn follow(&self, payload: &ServerLicensePayload, now: Millis) -> Result<(), OnPremError> {
        let catalog = &self.inner.deps.catalog;
        if catalog.get_customer(&payload.customer_id).await?.is_none() {
            let customer = Customer {
                customer_id: payload.customer_id.clone(),
                company_name: format!("On-premises server {}", payload.server_name),
                contact_email: format!("{}@on-premises.invalid", payload.customer_id.to_ascii_lowercase()),
                contact_name: String::new(),
                phone: String::new(),
                created_at: now,
            };
            ignore_existing(
                catalog.create_customer(&customer, None, audit("customer.created", &customer.customer_id)).await,
            )?;
        }
        let served = served_licenses(payload);
        for s in &served {
            self.ensure_product(s, now).await?;
        }
        for s in &served {
            let terms = ServedTerms::of(s, payload);
            match catalog.get_license(&s.license_id).await? {
                None => self.create_served(s, payload, &terms, now).await?,
                Some(license) if !follows(&license, &terms) => {
                    self.change(&s.license_id, LicenseChange::FollowServerFile(Box::new(terms)), now).await?
                }
                Some(_) => {}
            }
        }
        let keep: Vec<&str> = served.iter().map(|s| s.license_id.as_str()).collect();
        for license in self.all_licenses().await? {
            if !keep.contains(&license.license_id.as_str()) && license.status == LicenseStatus::Active {
                self.suspend(&license, now).await?;
            }
        }
        Ok(())
    }

    async fn stop_serving_all(&self, now: Millis) -> Result<(), OnPremError> {
        for license in self.all_licenses().await? {
            if license.status == LicenseStatus::Active {
                self.suspend(&license, now).await?;
            }
        }
        Ok(())
    }

    async fn suspend(&self, license: &License, now: Millis) -> Result<(), OnPremError> {
        let terms = ServedTerms {
            seats: license.seats,
            modules: license.modules.clone(),
            valid_from: license.valid_from,
            expires_at: license.expires_at,
            grace_period_ms: license.grace_period_ms,
            granted: false,
        };
        self.change(&license.license_id, LicenseChange::FollowServerFile(Box::new(terms)), now).await
    }

    async fn change(&self, license_id: &str, change: LicenseChange, now: Millis) -> Result<(), OnPremError> {
        let audit = audit(change.action(), license_id);
        match self.inner.deps.catalog.update_license(license_id, &change, now, audit, None).await {
            Ok(_) => Ok(()),
            Err(UpdateError::Store(e)) => Err(e.into()),
            Err(e) => Err(OnPremError::Inconsistent(format!("license {license_id}: {e}"))),
        }
    }

    async fn all_licenses(&self) -> Result<Vec<License>, OnPremError> {
        let mut out: Vec<License> = vec![];
        loop {
            let page = Page { after: out.last().map(|l| l.license_id.clone()), limit: 500 };
            let batch = self.inner.deps.catalog.list_licenses(&LicenseFilter::default(), &page).await?;
            let done = batch.len() < 500;
            out.extend(batch);
            if done {
                return Ok(out);
            }
        }
    }

    async fn ensure_product(&self, served: &ServedLicense, now: Millis) -> Result<(), OnPremError> {
        let catalog = &self.inner.deps.catalog;
        let code = &served.product_code;
        let product = match catalog.get_product(code).await? {
            Some(p) => p,
            None => {
                let product = Product {
                    code: code.clone(),
                    name: code.clone(),
                    modules: vec![],
                    versions: vec![],
                    created_at: now,
                };
                ignore_existing(catalog.create_product(&product, audit("product.created", code)).await)?;
                catalog.get_product(code).await?.unwrap_or(product)
            }
        };
        if !served.feature.is_empty() && !product.has_module(&served.feature) {
            let module = Module { code: served.feature.clone(), name: served.feature.clone() };
            ignore_existing(
                catalog.add_product_module(code, module, audit("product.module_added", code)).await.map(|_| ()),
            )?;
        }
        Ok(())
    }

    async fn create_served(
        &self,
        served: &ServedLicense,
        payload: &ServerLicensePayload,
        terms: &ServedTerms,
        now: Millis,
    ) -> Result<(), OnPremError> {
        let license = License {
            license_id: served.license_id.clone(),
            product_code: served.product_code.clone(),
            customer_id: payload.customer_id.clone(),
            kind: served.kind,
            status: LicenseStatus::Active,
            seats: terms.seats,
            allowed_deactivations: licensing_domain::model::UNLIMITED,
            activations_used: 0,
            deactivations_used: 0,
            modules: terms.modules.clone(),
            module_entitlements: Default::default(),
            valid_from: terms.valid_from,
            expires_at: terms.expires_at,
            grace_period_ms: terms.grace_period_ms,
            upgrades_until: None,
            associated_customer_id: None,
            portal_deactivation_counts: false,
            replaces_license_id: None,
            seat_policy: Default::default(),
            meters: vec![],
            notes: format!("Served from server license {} ({})", payload.license_id, served.name()),
            licensee_name: String::new(),
            heartbeat_timeout_ms: None,
            policy_id: None,
            policy_revision: 0,
            first_use: None,
            server_grants: vec![],
            created_at: now,
            updated_at: now,
        };
        let key = self.inner.deps.hasher.served_license_key(&license.license_id);
        let new = NewLicense {
            key_digest: self.inner.deps.hasher.digest(purpose::LICENSE_KEY, key.as_str()),
            activation_password_salt: random_token("salt", 16),
            license,
        };
        let audit = audit("license.served", &served.license_id)
            .with_details(serde_json::json!({ "server_license_id": payload.license_id, "grant": served.name(), "seats": terms.seats }));
        ignore_existing(self.inner.deps.catalog.insert_license(&new, audit, None).await)
    }
}

/// Whether `license` already has `terms` (nothing to write).
fn follows(license: &License, terms: &ServedTerms) -> bool {
    license.status == LicenseStatus::Active
        && license.seats == terms.seats
        && license.modules == terms.modules
        && license.valid_from == terms.valid_from
        && license.expires_at == terms.expires_at
        && license.grace_period_ms == terms.grace_period_ms
}

fn audit(action: &str, subject: &str) -> AuditRecord {
    AuditRecord::new(ACTOR, action, subject)
}

/// Two imports racing make the same rows: the second finds them made.
fn ignore_existing(result: Result<(), StoreError>) -> Result<(), OnPremError> {
    match result {
        Ok(()) | Err(StoreError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
