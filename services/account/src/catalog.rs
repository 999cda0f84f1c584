//! [`Catalog`]: the vendor's admin use cases over the catalog store. No gRPC here: the adapter
//! in [`crate::grpc`] converts requests into the inputs below.

use crate::{validate, AccountError};
use licensing_domain::change::{
    validate_allowed_deactivations, validate_grace_period, validate_heartbeat_timeout, validate_module_entitlement,
    validate_modules, validate_seats, ChangeError, LicenseChange,
};
use licensing_domain::clock::{Millis, SharedClock};
use licensing_domain::ids;
use licensing_domain::license_key::LicenseKey;
use licensing_domain::meter::MeterUsage;
use licensing_domain::model::*;
use licensing_domain::policy::{validate_name as validate_policy_name, FirstUse, LicenseTerms, Policy, TermsStart};
use licensing_domain::secrets::{purpose, random_token, KeyedHasher, PasswordHasher};
use licensing_domain::server_usage::{ServerUsageReport, ServerUsageStore};
use licensing_domain::store::{
    ActivationStore, ActivationStoreError, CatalogStore, DeactivateCommand, DeactivateTarget, MeterStore,
};
use licensing_domain::text::quoted;
use licensing_domain::trial::{TrialStats, TrialStore};
use serde_json::json;
use std::sync::Arc;

/// The vendor's admin use cases: products, customers, licenses, the audit log.
#[derive(Clone)]
pub struct Catalog {
    store: Arc<dyn CatalogStore>,
    /// Activations, which support staff free when returning a license for a customer.
    activations: Arc<dyn ActivationStore>,
    /// Metered features' counts, for reports.
    meters: Arc<dyn MeterStore>,
    hasher: KeyedHasher,
    passwords: PasswordHasher,
    clock: SharedClock,
    /// Trial machines and conversions.
    trials: Arc<dyn TrialStore>,
    /// Usage reports of on-premises servers.
    server_usage: Arc<dyn ServerUsageStore>,
}

/// What [`Catalog`] works over.
pub struct CatalogDeps {
    /// Products, customers, licenses and the audit log.
    pub store: Arc<dyn CatalogStore>,
    /// Activations, which support staff free when returning a license for a customer.
    pub activations: Arc<dyn ActivationStore>,
    /// Metered features' counts, for reports.
    pub meters: Arc<dyn MeterStore>,
    /// Keyed digests of license keys and tokens.
    pub hasher: KeyedHasher,
    /// Hashes customers' passwords (argon2id).
    pub passwords: PasswordHasher,
    /// Judges every date.
    pub clock: SharedClock,
    /// Trial machines and conversions.
    pub trials: Arc<dyn TrialStore>,
    /// Usage reports of on-premises servers.
    pub server_usage: Arc<dyn ServerUsageStore>,
}

/// Input of [`Catalog::issue_license`], already decoded from the request.
#[derive(Debug, Clone, Default)]
pub struct IssueLicense {
    /// Code of the product licensed.
    pub product_code: String,
    /// The customer (`cus_…`) the license is issued to.
    pub customer_id: String,
    /// `None` when the request left the kind unspecified.
    pub kind: Option<LicenseKind>,
    /// Activations (node-locked) or seats (concurrent); 0 for cloud licenses.
    pub seats: i32,
    /// [`UNLIMITED`] (-1), or how many returns from the product are allowed.
    pub allowed_deactivations: i32,
    /// Codes of the product's modules included.
    pub modules: Vec<String>,
    /// Valid from this instant (Unix ms); `None` is now.
    pub valid_from: Option<Millis>,
    /// Expiry (Unix ms); `None` is perpetual.
    pub expires_at: Option<Millis>,
    /// End of the upgrade period (Unix ms); `None` covers every version.
    pub upgrades_until: Option<Millis>,
    /// Grace period after the expiry (ms; 0: none); kept on a perpetual license for when a
    /// renewal sets an expiry.
    pub grace_period_ms: Millis,
    /// Associate the license with the customer's portal account at once.
    pub associate: bool,
    /// Free-form note kept for the vendor.
    pub notes: String,
    /// A payment to record as the issue's receipt.
    pub payment: Option<Payment>,
    /// Metered features the license carries.
    pub meters: Vec<licensing_domain::meter::Meter>,
    /// Values and own expiries of modules in `modules`, by module code; each module once.
    pub module_entitlements: Vec<(String, ModuleEntitlement)>,
    /// Node-locked: machines not seen for this long (ms) are culled; `None` requires no heartbeats.
    pub heartbeat_timeout_ms: Option<Millis>,
    /// Issue from this policy (`pol_…`): what the fields above leave unset (kind unspecified,
    /// seats 0, allowed deactivations 0, no modules, no dates, no grace, no heartbeats, no
    /// meters) comes from its terms.
    pub policy_id: Option<String>,
    /// A server license: what its on-premises server may serve (at least one grant); empty
    /// for every other kind.
    pub server_grants: Vec<licensing_domain::server_license::ServerGrant>,
}

/// When a license issued from a policy gets its dates: from its first use (the terms to start
/// then), or at issue (validity and upgrade period counted from `valid_from`).
enum PolicyDates {
    FromFirstUse(FirstUse),
    FromIssue { validity_ms: Option<Millis>, upgrade_period_ms: Option<Millis> },
}

impl IssueLicense {
    /// Fills what the request left unset from `terms`; returns how the license gets its dates.
    fn fill_from(&mut self, terms: &LicenseTerms) -> PolicyDates {
        self.kind = self.kind.or(Some(terms.kind));
        if self.seats == 0 {
            self.seats = terms.seats;
        }
        if self.allowed_deactivations == 0 {
            self.allowed_deactivations = terms.allowed_deactivations;
        }
        if self.modules.is_empty() {
            self.modules = terms.modules.clone();
        }
        if self.grace_period_ms == 0 {
            self.grace_period_ms = terms.grace_period_ms;
        }
        self.heartbeat_timeout_ms = self.heartbeat_timeout_ms.or(terms.heartbeat_timeout_ms);
        if self.meters.is_empty() {
            self.meters = terms.meters.clone();
        }
        // Dates given in the request win over the policy's durations.
        let validity = terms.validity_ms.filter(|_| self.expires_at.is_none());
        let upgrade_period = terms.upgrade_period_ms.filter(|_| self.upgrades_until.is_none());
        match terms.start {
            TermsStart::FirstUse if validity.is_some() || upgrade_period.is_some() => {
                PolicyDates::FromFirstUse(FirstUse {
                    validity_ms: validity,
                    upgrade_period_ms: upgrade_period,
                    started_at: None,
                })
            }
            _ => PolicyDates::FromIssue { validity_ms: validity, upgrade_period_ms: upgrade_period },
        }
    }
}

/// A payment given with an admin call, recorded as a receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// Amount in minor units (cents); not negative.
    pub amount_minor: i64,
    /// ISO 4217 code, e.g. `EUR`.
    pub currency: String,
    /// Months between charges, 0 for a one-off payment (at most 120).
    pub recurring_months: i32,
}

impl Payment {
    fn validate(&self) -> Result<(), AccountError> {
        if self.amount_minor < 0 {
            return Err(AccountError::invalid("payment.amount_minor", "must not be negative"));
        }
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(AccountError::invalid(
                "payment.currency",
                format!("{} is not an ISO 4217 code such as EUR", quoted(&self.currency)),
            ));
        }
        if !(0..=120).contains(&self.recurring_months) {
            return Err(AccountError::invalid("payment.recurring_months", "must be between 0 (one-off) and 120"));
        }
        Ok(())
    }

    fn receipt(&self, license: &License, kind: &str, now: Millis) -> Receipt {
        Receipt {
            receipt_id: ids::new_id(ids::RECEIPT),
            license_id: license.license_id.clone(),
            customer_id: license.customer_id.clone(),
            kind: kind.into(),
            amount_minor: self.amount_minor,
            currency: self.currency.clone(),
            paid_at: now,
            recurring_months: self.recurring_months,
        }
    }
}

/// A freshly issued license with its secrets, shown to the vendor once.
#[derive(Debug, Clone)]
pub struct IssuedLicense {
    /// The license as stored.
    pub license: License,
    /// Its license key; only a keyed digest is stored.
    pub license_key: LicenseKey,
    /// Its activation password.
    pub activation_password: String,
}

/// Most licenses one call applies a policy to.
pub const MAX_APPLY: usize = 1000;

fn change_error(e: licensing_domain::change::ChangeError) -> AccountError {
    AccountError::from(licensing_domain::store::UpdateError::Rejected(e))
}

fn not_found(reason: &'static str, message: String) -> AccountError {
    AccountError::NotFound { reason, message }
}

impl Catalog {
    /// The use cases over `deps`.
    pub fn new(deps: CatalogDeps) -> Self {
        let CatalogDeps { store, activations, meters, hasher, passwords, clock, trials, server_usage } = deps;
        Self { store, activations, meters, hasher, passwords, clock, trials, server_usage }
    }

    /// The servers activated on a server license now (its live activations, each with the
    /// serial of its latest file), oldest first; none for any other kind of license.
    pub async fn activated_servers(&self, license: &License) -> Result<Vec<Activation>, AccountError> {
        if license.kind != LicenseKind::Server {
            return Ok(vec![]);
        }
        let mut servers = self.activations.list_live_activations(&license.license_id).await?;
        servers.sort_by(|a, b| (a.activated_at, &a.installation_id).cmp(&(b.activated_at, &b.installation_id)));
        Ok(servers)
    }

    /// A page of the usage reports a license's on-premises servers uploaded, newest first (by
    /// when they were received); the page token is the last report's sequence.
    pub async fn server_usage_reports(
        &self,
        license_id: &str,
        page: &Page,
    ) -> Result<Vec<ServerUsageReport>, AccountError> {
        self.get_license(license_id).await?;
        if let Some(token) = &page.after {
            if token.parse::<i64>().map_or(true, |n| n < 1) {
                return Err(AccountError::invalid("page.page_token", "is not a page token this server handed out"));
            }
        }
        Ok(self.server_usage.list_server_usage_reports(license_id, page).await?)
    }

    /// A license's meters in their current periods, and every period any of its meters counted
    /// (removed meters too), oldest first per meter.
    pub async fn meter_usage(&self, license_id: &str) -> Result<(Vec<MeterUsage>, Vec<MeterUsage>), AccountError> {
        let license = self.get_license(license_id).await?;
        let current = self.meters.current_meter_usage(&license, self.now()).await?;
        let history = self.meters.meter_history(license_id).await?;
        Ok((current, history))
    }

    /// Installations and activation history of a license (support staff).
    pub async fn activation_history(
        &self,
        license_id: &str,
    ) -> Result<(Vec<Activation>, Vec<ActivationEvent>), AccountError> {
        self.get_license(license_id).await?;
        Ok((
            self.activations.list_activations(license_id).await?,
            self.activations.list_activation_events(license_id).await?,
        ))
    }

    /// Support staff return a license for a customer whose machine is gone: it leaves the
    /// account and every live activation is freed (not counted against the deactivation limit).
    pub async fn return_license(&self, actor: &str, license_id: &str, reason: &str) -> Result<License, AccountError> {
        self.change_license(actor, license_id, LicenseChange::Associate(None), reason).await?;
        for activation in self.activations.list_live_activations(license_id).await? {
            let command = DeactivateCommand {
                license_id: license_id.to_owned(),
                target: DeactivateTarget::Installation(activation.installation_id.clone()),
                counts: false,
                action: "support_return",
                now: self.now(),
            };
            match self.activations.deactivate(&command).await {
                Ok(_) | Err(ActivationStoreError::NoActivation) => {}
                Err(ActivationStoreError::Store(e)) => return Err(e.into()),
                Err(other) => {
                    return Err(AccountError::FailedPrecondition {
                        reason: "RETURN_FAILED",
                        message: other.to_string(),
                    })
                }
            }
        }
        self.get_license(license_id).await
    }

    /// A server license's grants must name products that exist and their modules, each once,
    /// with seats in bounds; other kinds carry none.
    async fn check_server_grants(
        &self,
        kind: LicenseKind,
        grants: &[licensing_domain::server_license::ServerGrant],
    ) -> Result<(), AccountError> {
        if kind != LicenseKind::Server {
            return match grants.is_empty() {
                true => Ok(()),
                false => Err(AccountError::invalid(
                    "server_grants",
                    format!("only server licenses carry grants; this is a {} license", kind.as_str()),
                )),
            };
        }
        let mut products: Vec<Product> = vec![];
        for grant in grants.iter().take(licensing_domain::server_license::MAX_GRANTS) {
            validate::code("server_grants.product_code", &grant.product_code)?;
            if !grant.feature.is_empty() {
                validate::code("server_grants.feature", &grant.feature)?;
            }
            if products.iter().any(|p| p.code == grant.product_code) {
                continue;
            }
            if let Some(product) = self.store.get_product(&grant.product_code).await? {
                products.push(product);
            }
        }
        licensing_domain::server_license::validate_grants(grants, &products)
            .map_err(|e| AccountError::invalid(e.field, e.message))
    }

    pub(crate) fn store(&self) -> &Arc<dyn CatalogStore> {
        &self.store
    }

    pub(crate) fn hasher(&self) -> &KeyedHasher {
        &self.hasher
    }

    pub(crate) fn clock(&self) -> SharedClock {
        self.clock.clone()
    }

    pub(crate) fn now(&self) -> Millis {
        self.clock.now()
    }

    /// argon2id on the hashing threads, so logins never stall the async workers.
    pub async fn hash_password(&self, password: String) -> Result<String, AccountError> {
        let hasher = self.passwords.clone();
        licensing_runtime::hashing::run(move |memory| hasher.hash_with(memory, &password)).await.map_err(|e| {
            AccountError::Store(licensing_domain::error::StoreError::Other(format!("hashing task failed: {e}")))
        })
    }

    /// Creates a product with its modules; its code must be free.
    pub async fn create_product(
        &self,
        actor: &str,
        code: &str,
        name: &str,
        modules: Vec<Module>,
    ) -> Result<Product, AccountError> {
        validate::code("code", code)?;
        validate::name("name", name)?;
        for (i, m) in modules.iter().enumerate() {
            validate::code("modules.code", &m.code)?;
            validate::name("modules.name", &m.name)?;
            if modules[..i].iter().any(|o| o.code == m.code) {
                return Err(AccountError::invalid("modules", format!("module {} is listed twice", quoted(&m.code))));
            }
        }
        let product = Product {
            code: code.to_owned(),
            name: name.trim().to_owned(),
            modules,
            versions: vec![],
            created_at: self.now(),
        };
        let audit = AuditRecord::new(actor, "product.created", code)
            .with_details(json!({ "name": product.name, "modules": product.modules.len() }));
        self.store.create_product(&product, audit).await?;
        Ok(product)
    }

    /// The product with this code.
    pub async fn get_product(&self, code: &str) -> Result<Product, AccountError> {
        validate::code("code", code)?;
        self.store
            .get_product(code)
            .await?
            .ok_or_else(|| not_found("PRODUCT_NOT_FOUND", format!("no product with code {}", quoted(code))))
    }

    /// A page of products, by code.
    pub async fn list_products(&self, page: &Page) -> Result<Vec<Product>, AccountError> {
        Ok(self.store.list_products(page).await?)
    }

    /// Records a released version of a product; `released_at` `None` is now.
    pub async fn add_product_version(
        &self,
        actor: &str,
        code: &str,
        version: &str,
        released_at: Option<Millis>,
    ) -> Result<Product, AccountError> {
        validate::code("product_code", code)?;
        validate::version("version", version)?;
        let released_at = released_at.unwrap_or_else(|| self.now());
        let audit = AuditRecord::new(actor, "product.version_added", code)
            .with_details(json!({ "version": version, "released_at": released_at }));
        let v = ProductVersion { version: version.trim().to_owned(), released_at };
        self.store.add_product_version(code, v, audit).await.map_err(|e| match e {
            licensing_domain::error::StoreError::NotFound(_) => {
                not_found("PRODUCT_NOT_FOUND", format!("no product with code {}", quoted(code)))
            }
            other => other.into(),
        })
    }

    /// Adds a module to an existing product (a new plug-in), so its licenses may include it;
    /// its code must be new to the product.
    pub async fn add_product_module(&self, actor: &str, code: &str, module: Module) -> Result<Product, AccountError> {
        validate::code("product_code", code)?;
        validate::code("module.code", &module.code)?;
        validate::name("module.name", &module.name)?;
        let module = Module { code: module.code, name: module.name.trim().to_owned() };
        let audit = AuditRecord::new(actor, "product.module_added", code)
            .with_details(json!({ "module": module.code, "name": module.name }));
        self.store.add_product_module(code, module, audit).await.map_err(|e| match e {
            licensing_domain::error::StoreError::NotFound(_) => {
                not_found("PRODUCT_NOT_FOUND", format!("no product with code {}", quoted(code)))
            }
            other => other.into(),
        })
    }

    /// Creates a customer, with a portal password when one is given (else one is set by reset).
    pub async fn create_customer(
        &self,
        actor: &str,
        company_name: &str,
        email: &str,
        password: Option<String>,
    ) -> Result<Customer, AccountError> {
        validate::name("company_name", company_name)?;
        let email = validate::email("contact_email", email)?;
        if let Some(p) = &password {
            validate::password("password", p)?;
        }
        let hash = match password {
            Some(p) => Some(self.hash_password(p).await?),
            None => None,
        };
        let customer = Customer {
            customer_id: ids::new_id(ids::CUSTOMER),
            company_name: company_name.trim().to_owned(),
            contact_email: email,
            contact_name: String::new(),
            phone: String::new(),
            created_at: self.now(),
        };
        let audit = AuditRecord::new(actor, "customer.created", &customer.customer_id)
            .with_details(json!({ "company_name": customer.company_name }));
        self.store.create_customer(&customer, hash.as_deref(), audit).await?;
        Ok(customer)
    }

    /// The customer with this ID.
    pub async fn get_customer(&self, customer_id: &str) -> Result<Customer, AccountError> {
        validate::id("customer_id", ids::CUSTOMER, customer_id)?;
        self.store
            .get_customer(customer_id)
            .await?
            .ok_or_else(|| not_found("CUSTOMER_NOT_FOUND", format!("no customer with ID {customer_id}")))
    }

    /// A page of customers; `query` (may be empty) narrows to a substring of company name or email.
    pub async fn list_customers(&self, query: &str, page: &Page) -> Result<Vec<Customer>, AccountError> {
        validate::search("query", query)?;
        let query = Some(query.trim()).filter(|q| !q.is_empty());
        Ok(self.store.list_customers(query, page).await?)
    }

    /// Sets a customer's portal password (checked against the password rules, hashed with argon2id).
    pub async fn set_customer_password(
        &self,
        actor: &str,
        customer_id: &str,
        password: String,
    ) -> Result<(), AccountError> {
        validate::password("password", &password)?;
        self.get_customer(customer_id).await?;
        let hash = self.hash_password(password).await?;
        let audit = AuditRecord::new(actor, "customer.password_set", customer_id);
        Ok(self.store.set_customer_password_hash(customer_id, &hash, audit).await?)
    }

    /// Issues a license as `input` says, with a new key and activation password (shown once).
    pub async fn issue_license(&self, actor: &str, mut input: IssueLicense) -> Result<IssuedLicense, AccountError> {
        let mut dates = PolicyDates::FromIssue { validity_ms: None, upgrade_period_ms: None };
        let mut policy = None;
        if let Some(policy_id) = input.policy_id.clone() {
            let p = self.get_policy(&policy_id).await?;
            if p.terms.trial {
                return Err(AccountError::invalid(
                    "policy_id",
                    format!(
                        "policy {policy_id} is a trial policy: machines start its trials themselves \
                         (ActivationService.ActivateTrial); issue from a paid policy"
                    ),
                ));
            }
            if input.product_code.is_empty() {
                input.product_code = p.product_code.clone();
            } else if input.product_code != p.product_code {
                return Err(AccountError::invalid(
                    "product_code",
                    format!(
                        "policy {policy_id} is for product '{}', not {}; leave product_code empty",
                        p.product_code,
                        quoted(&input.product_code)
                    ),
                ));
            }
            dates = input.fill_from(&p.terms);
            policy = Some(p);
        }
        validate::code("product_code", &input.product_code)?;
        validate::id("customer_id", ids::CUSTOMER, &input.customer_id)?;
        let kind = input
            .kind
            .ok_or_else(|| AccountError::invalid("kind", "choose NODE_LOCKED, CONCURRENT, CLOUD or SERVER"))?;
        let seats = match kind {
            LicenseKind::Cloud if input.seats != 0 => {
                return Err(AccountError::invalid("seats", "cloud licenses have no seats; leave it 0"))
            }
            LicenseKind::Cloud => 0,
            _ => {
                validate_seats(input.seats).map_err(|e| AccountError::invalid("seats", e.to_string()))?;
                input.seats
            }
        };
        if let Some(p) = &input.payment {
            p.validate()?;
        }
        validate_allowed_deactivations(input.allowed_deactivations)
            .map_err(|e| AccountError::invalid("allowed_deactivations", e.to_string()))?;
        validate_grace_period(input.grace_period_ms)
            .map_err(|e| AccountError::invalid("grace_period", e.to_string()))?;
        validate_heartbeat_timeout(kind, input.heartbeat_timeout_ms)
            .map_err(|e| AccountError::from(licensing_domain::store::UpdateError::Rejected(e)))?;
        if input.notes.chars().count() > 2000 {
            return Err(AccountError::invalid("notes", "must be at most 2000 characters"));
        }
        validate::storable("notes", &input.notes)?;
        licensing_domain::meter::validate_meters(&input.meters)
            .map_err(|e| AccountError::invalid(e.field, e.message))?;
        let now = self.now();
        let valid_from = input.valid_from.unwrap_or(now);
        let first_use = match dates {
            PolicyDates::FromFirstUse(first_use) => Some(first_use),
            PolicyDates::FromIssue { validity_ms, upgrade_period_ms } => {
                input.expires_at = input.expires_at.or(validity_ms.map(|v| valid_from.saturating_add(v)));
                input.upgrades_until = input.upgrades_until.or(upgrade_period_ms.map(|p| valid_from.saturating_add(p)));
                None
            }
        };
        if let Some(expires_at) = input.expires_at {
            if expires_at <= valid_from {
                return Err(AccountError::invalid("expires_at", "must be after valid_from"));
            }
        }
        if let Some(upgrades_until) = input.upgrades_until {
            if upgrades_until < valid_from {
                return Err(AccountError::invalid("upgrades_until", "must not be before valid_from"));
            }
        }
        let product = self.get_product(&input.product_code).await.map_err(|e| match e {
            AccountError::InvalidArgument { message, .. } => AccountError::invalid("product_code", message),
            other => other,
        })?;
        validate_modules(&product, &input.modules).map_err(|e| AccountError::invalid("modules", e.to_string()))?;
        self.check_server_grants(kind, &input.server_grants).await?;
        let customer = self.get_customer(&input.customer_id).await?;

        let license_key = LicenseKey::generate();
        let salt = random_token("salt", 16);
        let mut license = License {
            license_id: ids::new_id(ids::LICENSE),
            product_code: product.code.clone(),
            customer_id: customer.customer_id.clone(),
            kind,
            status: LicenseStatus::Active,
            seats,
            allowed_deactivations: input.allowed_deactivations,
            activations_used: 0,
            deactivations_used: 0,
            modules: input.modules,
            module_entitlements: Default::default(),
            valid_from,
            expires_at: input.expires_at,
            grace_period_ms: input.grace_period_ms,
            upgrades_until: input.upgrades_until,
            associated_customer_id: input.associate.then(|| customer.customer_id.clone()),
            portal_deactivation_counts: true,
            replaces_license_id: None,
            seat_policy: Default::default(),
            meters: input.meters,
            notes: input.notes,
            licensee_name: String::new(),
            heartbeat_timeout_ms: input.heartbeat_timeout_ms,
            policy_id: policy.as_ref().map(|p| p.policy_id.clone()),
            policy_revision: policy.as_ref().map_or(0, |p| p.revision),
            first_use,
            server_grants: input.server_grants,
            created_at: now,
            updated_at: now,
        };
        // Checked against the license as issued: its modules and its valid_from.
        for (i, (module, wanted)) in input.module_entitlements.iter().enumerate() {
            if input.module_entitlements[..i].iter().any(|(m, _)| m == module) {
                return Err(AccountError::invalid(
                    "module_entitlements",
                    format!("module {} is listed twice", quoted(module)),
                ));
            }
            let granted =
                validate_module_entitlement(&license, &product, module, wanted, now).map_err(|e| match e {
                    ChangeError::Invalid { field, message } => AccountError::invalid(
                        match field {
                            "value" => "module_entitlements.value",
                            "expires_at" => "module_entitlements.expires_at",
                            _ => "module_entitlements.module",
                        },
                        message,
                    ),
                    other => AccountError::invalid("module_entitlements", other.to_string()),
                })?;
            if granted != ModuleEntitlement::default() {
                license.module_entitlements.insert(module.clone(), granted);
            }
        }
        let activation_password = self.hasher.activation_password(&license.license_id, &salt);
        let new = NewLicense {
            key_digest: self.hasher.digest(purpose::LICENSE_KEY, license_key.as_str()),
            activation_password_salt: salt,
            license: license.clone(),
        };
        let audit = AuditRecord::new(actor, "license.issued", &license.license_id).with_details(json!({
            "product_code": license.product_code,
            "customer_id": license.customer_id,
            "kind": kind.as_str(),
            "seats": seats,
            "modules": license.modules,
            "expires_at": license.expires_at,
            "grace_period_ms": license.grace_period_ms,
            "heartbeat_timeout_ms": license.heartbeat_timeout_ms,
            "policy_id": license.policy_id,
            "policy_revision": license.policy_revision,
            "starts_at_first_use": license.first_use.is_some(),
            "module_entitlements": license.module_entitlements,
        }));
        let receipt = input.payment.as_ref().map(|p| p.receipt(&license, "issue", now));
        self.store.insert_license(&new, audit, receipt.as_ref()).await?;
        Ok(IssuedLicense { license, license_key, activation_password })
    }

    /// Creates a policy of a product: named terms licenses are issued from.
    pub async fn create_policy(
        &self,
        actor: &str,
        product_code: &str,
        name: &str,
        terms: LicenseTerms,
    ) -> Result<Policy, AccountError> {
        validate::code("product_code", product_code)?;
        let name = validate_policy_name(name).map_err(change_error)?;
        let product = self.get_product(product_code).await?;
        terms.validate(&product).map_err(change_error)?;
        let now = self.now();
        let policy = Policy {
            policy_id: ids::new_id(ids::POLICY),
            product_code: product.code,
            name,
            revision: 1,
            terms,
            created_at: now,
            updated_at: now,
        };
        let audit = AuditRecord::new(actor, "policy.created", &policy.policy_id)
            .with_details(json!({ "product_code": policy.product_code, "name": policy.name }));
        self.store.create_policy(&policy, audit).await?;
        Ok(policy)
    }

    /// The policy with this ID.
    pub async fn get_policy(&self, policy_id: &str) -> Result<Policy, AccountError> {
        validate::id("policy_id", ids::POLICY, policy_id)?;
        self.store
            .get_policy(policy_id)
            .await?
            .ok_or_else(|| not_found("POLICY_NOT_FOUND", format!("no policy with ID {policy_id}")))
    }

    /// The policies of a product (every product's when `product_code` is empty), by name.
    pub async fn list_policies(&self, product_code: &str) -> Result<Vec<Policy>, AccountError> {
        if !product_code.is_empty() {
            validate::code("product_code", product_code)?;
        }
        Ok(self.store.list_policies(product_code).await?)
    }

    /// Replaces a policy's terms (its revision goes up by one). Licenses already issued keep
    /// theirs until the vendor applies the policy to them ([`Self::apply_policy`]).
    pub async fn update_policy(
        &self,
        actor: &str,
        policy_id: &str,
        terms: LicenseTerms,
    ) -> Result<Policy, AccountError> {
        let policy = self.get_policy(policy_id).await?;
        if terms.kind != policy.terms.kind {
            return Err(AccountError::invalid(
                "terms.kind",
                format!(
                    "policy {policy_id} makes {} licenses; its kind cannot change (create another policy)",
                    policy.terms.kind.as_str()
                ),
            ));
        }
        let product = self.get_product(&policy.product_code).await?;
        terms.validate(&product).map_err(change_error)?;
        let audit = AuditRecord::new(actor, "policy.updated", policy_id);
        Ok(self.store.update_policy_terms(policy_id, &terms, self.now(), audit).await?)
    }

    /// Applies the policy's current terms to each of `license_ids` (licenses of its product),
    /// each change audited on its license; stops at the first license that cannot take them.
    pub async fn apply_policy(
        &self,
        actor: &str,
        policy_id: &str,
        license_ids: &[String],
    ) -> Result<Vec<License>, AccountError> {
        let policy = self.get_policy(policy_id).await?;
        if policy.terms.trial {
            return Err(AccountError::invalid(
                "policy_id",
                format!("policy {policy_id} is a trial policy: its terms go only to trials that machines start"),
            ));
        }
        if license_ids.is_empty() || license_ids.len() > MAX_APPLY {
            return Err(AccountError::invalid(
                "license_ids",
                format!("name 1 to {MAX_APPLY} licenses of product '{}'", policy.product_code),
            ));
        }
        let mut changed = Vec::with_capacity(license_ids.len());
        for license_id in license_ids {
            let license = self.get_license(license_id).await?;
            if license.product_code != policy.product_code || license.kind != policy.terms.kind {
                return Err(AccountError::invalid(
                    "license_ids",
                    format!(
                        "license {license_id} is a {} license of '{}'; policy {policy_id} makes {} licenses of '{}'",
                        license.kind.as_str(),
                        license.product_code,
                        policy.terms.kind.as_str(),
                        policy.product_code
                    ),
                ));
            }
            let change = LicenseChange::ApplyPolicy {
                policy_id: policy.policy_id.clone(),
                revision: policy.revision,
                terms: Box::new(policy.terms.clone()),
            };
            changed.push(self.change_license(actor, license_id, change, "").await?);
        }
        Ok(changed)
    }

    /// Converts the trial license `license_id` to a paid license of `customer_id` with the terms
    /// of the paid policy `policy_id` (of its product and kind), in place: its machine keeps its
    /// activation and key. Audited on the license (`license.trial_converted`).
    pub async fn convert_trial(
        &self,
        actor: &str,
        license_id: &str,
        customer_id: &str,
        policy_id: &str,
        associate: bool,
    ) -> Result<License, AccountError> {
        let license = self.get_license(license_id).await?;
        validate::id("customer_id", ids::CUSTOMER, customer_id)?;
        let customer = self.get_customer(customer_id).await?;
        let policy = self.get_policy(policy_id).await?;
        if policy.terms.trial {
            return Err(AccountError::invalid(
                "policy_id",
                format!("policy {policy_id} is a trial policy: convert to a paid policy of '{}'", license.product_code),
            ));
        }
        if policy.product_code != license.product_code || policy.terms.kind != license.kind {
            return Err(AccountError::invalid(
                "policy_id",
                format!(
                    "policy {policy_id} makes {} licenses of '{}'; license {license_id} is a {} license of '{}'",
                    policy.terms.kind.as_str(),
                    policy.product_code,
                    license.kind.as_str(),
                    license.product_code
                ),
            ));
        }
        let audit = AuditRecord::new(actor, "license.trial_converted", license_id);
        Ok(self.trials.convert_trial(license_id, &customer.customer_id, associate, &policy, self.now(), audit).await?)
    }

    /// A product's trials as they are now, counted from stored data.
    pub async fn trial_stats(&self, product_code: &str) -> Result<TrialStats, AccountError> {
        validate::code("product_code", product_code)?;
        let product = self.get_product(product_code).await?;
        Ok(self.trials.trial_stats(&product.code, self.now()).await?)
    }

    /// The license with this ID.
    pub async fn get_license(&self, license_id: &str) -> Result<License, AccountError> {
        validate::id("license_id", ids::LICENSE, license_id)?;
        self.store
            .get_license(license_id)
            .await?
            .ok_or_else(|| not_found("LICENSE_NOT_FOUND", format!("no license with ID {license_id}")))
    }

    /// `query` matches License ID, customer ID or notes; a full license key matches exactly.
    pub async fn list_licenses(
        &self,
        mut filter: LicenseFilter,
        query: &str,
        page: &Page,
    ) -> Result<Vec<License>, AccountError> {
        validate::search("query", query)?;
        let query = query.trim();
        if !query.is_empty() {
            match LicenseKey::parse(query) {
                Ok(key) => filter.key_digest = Some(self.hasher.digest(purpose::LICENSE_KEY, key.as_str())),
                Err(_) => filter.text = Some(query.to_owned()),
            }
        }
        if let Some(c) = &filter.customer_id {
            validate::id("customer_id", ids::CUSTOMER, c)?;
        }
        Ok(self.store.list_licenses(&filter, page).await?)
    }

    /// Applies an admin change; the audit entry records the change itself.
    pub async fn change_license(
        &self,
        actor: &str,
        license_id: &str,
        change: LicenseChange,
        reason: &str,
    ) -> Result<License, AccountError> {
        self.change_license_paid(actor, license_id, change, reason, None).await
    }

    /// Applies an admin change that may come with a payment (renewal, upgrade), recorded as a
    /// receipt in the same transaction.
    pub async fn change_license_paid(
        &self,
        actor: &str,
        license_id: &str,
        change: LicenseChange,
        reason: &str,
        payment: Option<Payment>,
    ) -> Result<License, AccountError> {
        validate::id("license_id", ids::LICENSE, license_id)?;
        if let Some(p) = &payment {
            p.validate()?;
        }
        if let LicenseChange::SetServerGrants(grants) = &change {
            // The products and features they name must exist, as at issue.
            self.check_server_grants(LicenseKind::Server, grants).await?;
        }
        let now = self.now();
        // The receipt names the license's customer, which never changes: reading it first is safe.
        let receipt = match &payment {
            Some(p) => {
                let kind = if matches!(change, LicenseChange::Renew { .. }) { "renewal" } else { "upgrade" };
                Some(p.receipt(&self.get_license(license_id).await?, kind, now))
            }
            None => None,
        };
        let paid = payment.as_ref().map(|p| json!({ "amount_minor": p.amount_minor, "currency": p.currency }));
        let details = json!({ "change": format!("{change:?}"), "reason": reason, "payment": paid });
        let audit = AuditRecord::new(actor, change.action(), license_id).with_details(details);
        self.store.update_license(license_id, &change, now, audit, receipt.as_ref()).await.map_err(|e| {
            match AccountError::from(e) {
                AccountError::NotFound { .. } => {
                    not_found("LICENSE_NOT_FOUND", format!("no license with ID {license_id}"))
                }
                other => other,
            }
        })
    }

    /// Associates a license with a customer's account (support staff).
    pub async fn associate(&self, actor: &str, license_id: &str, customer_id: &str) -> Result<License, AccountError> {
        self.get_customer(customer_id).await?;
        self.change_license(actor, license_id, LicenseChange::Associate(Some(customer_id.to_owned())), "").await
    }

    /// A page of the audit log of one subject (License ID, customer ID or product code), oldest first.
    pub async fn list_audit(&self, subject: &str, page: &Page) -> Result<Vec<AuditEvent>, AccountError> {
        if subject.trim().is_empty() {
            return Err(AccountError::invalid("subject", "name a License ID, customer ID or product code"));
        }
        validate::search("subject", subject)?;
        Ok(self.store.list_audit(subject.trim(), page).await?)
    }

    /// The activation password of a license (derived, never stored).
    pub async fn activation_password(&self, license_id: &str) -> Result<String, AccountError> {
        let salt = self
            .store
            .activation_password_salt(license_id)
            .await?
            .ok_or_else(|| not_found("LICENSE_NOT_FOUND", format!("no license with ID {license_id}")))?;
        Ok(self.hasher.activation_password(license_id, &salt))
    }
}
