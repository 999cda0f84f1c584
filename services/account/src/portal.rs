//! [`Portal`]: what a customer does in the portal, on their own account only. Every lookup of a
//! license goes through [`Portal::my_license`], which answers NotFound for another account's
//! license, so nothing here can reach another customer's data.

use crate::catalog::Catalog;
use crate::mail::{Mail, Mailer};
use crate::{validate, AccountError};
use licensing_domain::change::{LicenseChange, SplitPart, MAX_SPLIT};
use licensing_domain::clock::{Millis, HOUR, MINUTE};
use licensing_domain::error::StoreError;
use licensing_domain::ids;
use licensing_domain::license_key::LicenseKey;
use licensing_domain::meter::MeterUsage;
use licensing_domain::model::*;
use licensing_domain::seat_policy::SeatPolicy;
use licensing_domain::secrets::{purpose, random_token, PasswordHasher};
use licensing_domain::server_usage::ServerUsageReport;
use licensing_domain::store::{
    ActivationStore, ActivationStoreError, DeactivateCommand, DeactivateTarget, LeaseStore, PortalStore,
    ResetTokenError, UpdateError, UsageStore,
};
use licensing_domain::usage::{report_period, UsageReport};
use licensing_runtime::auth::SessionAuth;
use licensing_runtime::limiter::{FailureLimiter, GuessPolicy, GuessThrottle, Rate, RateLimiter};
use serde_json::json;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Session and reset lifetimes and the limits on guessing of the customer portal.
#[derive(Debug, Clone)]
pub struct PortalSettings {
    /// How long a portal session lives (ms).
    pub session_ttl: Millis,
    /// How long a password-reset token may be used (ms).
    pub reset_ttl: Millis,
    /// Where the reset mail sends people; the token is appended as `?token=…`.
    pub reset_url: String,
    /// How wrong passwords slow the guesser down (never the owner).
    pub guessing: GuessPolicy,
    /// Reset mails one account may be sent per hour.
    pub resets_per_account_per_hour: u32,
    /// Login attempts (right or wrong) allowed per account from one client address; `None` is
    /// unlimited. Per address too, so a flood from elsewhere never refuses the owner.
    pub logins_per_account: Option<Rate>,
}

impl Default for PortalSettings {
    fn default() -> Self {
        Self {
            session_ttl: 8 * HOUR,
            reset_ttl: 30 * MINUTE,
            reset_url: "http://localhost:8080/reset-password".into(),
            guessing: GuessPolicy::default(),
            resets_per_account_per_hour: 3,
            logins_per_account: None,
        }
    }
}

/// A license as the portal shows it: with a page of its installations and of its history,
/// both newest first.
pub struct LicenseDetails {
    /// The license.
    pub license: License,
    /// A page of its installations, newest first.
    pub installations: Vec<Activation>,
    /// Where the next page of installations starts; `None` after the last.
    pub installations_next: Option<InstallationCursor>,
    /// A page of its activation history, newest first.
    pub history: Vec<ActivationEvent>,
    /// The sequence the next (older) page of history starts before; `None` after the oldest.
    pub history_next: Option<i64>,
    /// A server license: its servers and their latest usage reports (empty otherwise).
    pub server: ServerDetails,
}

/// Usage reports shown with a server license, the newest.
pub const LATEST_SERVER_REPORTS: u32 = 10;

/// What a server license's customer sees of its on-premises servers.
#[derive(Debug, Clone, Default)]
pub struct ServerDetails {
    /// The servers activated on it now, oldest first.
    pub servers: Vec<Activation>,
    /// The latest [`LATEST_SERVER_REPORTS`] usage reports they uploaded, newest first.
    pub reports: Vec<ServerUsageReport>,
}

/// A page size within bounds (0: the default).
fn page_size(page: &Page) -> u32 {
    if page.limit == 0 {
        DEFAULT_PAGE_SIZE
    } else {
        page.limit.min(MAX_PAGE_SIZE)
    }
}

/// A concurrent license returned to be issued again, and what it was issued as.
pub struct ReturnedLicense {
    /// The returned license, now retired.
    pub retired: License,
    /// The licenses issued in its place.
    pub reissued: Vec<ReissuedLicense>,
}

/// One new license (Activation ID) of a returned one, with its secrets, shown only now.
pub struct ReissuedLicense {
    /// The new license.
    pub license: License,
    /// Its license key; only a keyed digest is stored.
    pub license_key: LicenseKey,
    /// Its activation password.
    pub activation_password: String,
}

/// The next charge of a recurring payment: the latest recurring receipt of a license, renewed
/// after its months.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecurringPayment {
    /// The license's latest receipt with a cadence.
    pub receipt: Receipt,
    /// When the next charge falls due (Unix ms).
    pub next_charge_at: Millis,
}

/// Contact details as a customer submits them (checked by [`Portal::update_contact_details`]).
#[derive(Debug, Clone, Default)]
pub struct ContactForm {
    /// The person to contact; may be empty.
    pub contact_name: String,
    /// Contact email: the login and where reset mail goes.
    pub contact_email: String,
    /// Phone number; may be empty.
    pub phone: String,
}

/// The next charge of each recurring plan: per license, its latest receipt with a cadence,
/// soonest first. Pure, so the rule is tested without a store.
pub fn recurring_payments(receipts: &[Receipt], retired: &dyn Fn(&str) -> bool) -> Vec<RecurringPayment> {
    let mut latest: std::collections::BTreeMap<&str, &Receipt> = std::collections::BTreeMap::new();
    for r in receipts.iter().filter(|r| r.recurring_months > 0) {
        let newer =
            latest.get(r.license_id.as_str()).is_none_or(|l| (r.paid_at, &r.receipt_id) > (l.paid_at, &l.receipt_id));
        if newer {
            latest.insert(&r.license_id, r);
        }
    }
    let mut plans: Vec<RecurringPayment> = latest
        .into_values()
        .filter(|r| !retired(&r.license_id))
        .filter_map(|r| Some(RecurringPayment { next_charge_at: r.next_renewal_at()?, receipt: r.clone() }))
        .collect();
    plans.sort_by(|a, b| (a.next_charge_at, &a.receipt.license_id).cmp(&(b.next_charge_at, &b.receipt.license_id)));
    plans
}

/// The customer portal's use cases (for the gRPC AccountService and the web portal), each on
/// behalf of the logged-in customer `me`, who sees only the licenses of its account.
#[derive(Clone)]
pub struct Portal {
    catalog: Catalog,
    portal: Arc<dyn PortalStore>,
    activations: Arc<dyn ActivationStore>,
    /// Where live leases are read from; `None` when this process cannot see them.
    leases: Option<Arc<dyn LeaseStore>>,
    /// The usage log behind usage reports.
    usage: Arc<dyn UsageStore>,
    passwords: PasswordHasher,
    mailer: Arc<dyn Mailer>,
    settings: PortalSettings,
    guesses: GuessThrottle,
    reset_requests: FailureLimiter,
    account_logins: RateLimiter,
    /// Logins waiting for a hashing thread wait here, one permit per thread: a login whose
    /// caller gives up while waiting is dropped before it costs a hash (a job handed to the
    /// hashing threads runs even if no one waits for it any more), and a flood of logins keeps
    /// no more than one job per thread in the hashing queue, ahead of other hashes.
    hashing: Arc<Semaphore>,
    decoy: Arc<OnceLock<String>>,
    sessions: SessionAuth,
}

fn not_found_license(license_id: &str) -> AccountError {
    AccountError::NotFound { reason: "LICENSE_NOT_FOUND", message: format!("your account has no license {license_id}") }
}

fn wrong_login() -> AccountError {
    AccountError::Unauthenticated {
        reason: "LOGIN_FAILED",
        message: "the customer ID or email, or the password, is wrong".into(),
    }
}

fn too_many(retry_after: Duration) -> AccountError {
    AccountError::ResourceExhausted {
        reason: "TOO_MANY_ATTEMPTS",
        message: format!(
            "too many failed logins from this address; try again in {} s (others can still log in)",
            retry_after.as_secs_f64().ceil().max(1.0)
        ),
        retry_after,
    }
}

/// What the portal works with.
pub struct PortalDeps {
    /// The admin use cases the portal builds on.
    pub catalog: Catalog,
    /// Sessions, reset tokens and receipts.
    pub portal: Arc<dyn PortalStore>,
    /// Installations and their history.
    pub activations: Arc<dyn ActivationStore>,
    /// Where live leases are read from; `None` when this process cannot see them.
    pub leases: Option<Arc<dyn LeaseStore>>,
    /// The usage log behind usage reports.
    pub usage: Arc<dyn UsageStore>,
    /// Hashes and verifies customers' passwords.
    pub passwords: PasswordHasher,
    /// Where password reset mail goes.
    pub mailer: Arc<dyn Mailer>,
}

impl Portal {
    /// The portal over `deps`, with `settings`.
    pub fn new(deps: PortalDeps, settings: PortalSettings) -> Self {
        let PortalDeps { catalog, portal, activations, leases, usage, passwords, mailer } = deps;
        let sessions = SessionAuth::new(portal.clone(), catalog.hasher().clone(), catalog.clock());
        Self {
            guesses: GuessThrottle::new(settings.guessing),
            reset_requests: FailureLimiter::new(settings.resets_per_account_per_hour, Duration::from_secs(3600)),
            account_logins: RateLimiter::new("login", settings.logins_per_account),
            catalog,
            portal,
            activations,
            leases,
            usage,
            passwords,
            mailer,
            settings,
            hashing: Arc::new(Semaphore::new(licensing_runtime::hashing::THREADS)),
            decoy: Arc::new(OnceLock::new()),
            sessions,
        }
    }

    fn now(&self) -> Millis {
        self.catalog.now()
    }

    async fn audit(&self, actor: &str, action: &str, subject: &str, details: serde_json::Value) {
        let record = AuditRecord::new(actor, action, subject).with_details(details);
        if let Err(e) = self.catalog.store().append_audit(record).await {
            tracing::warn!(error = %e, action, "could not write a portal audit entry");
        }
    }

    /// The customer a login names: a customer ID or a contact email.
    async fn find_customer(&self, login: &str) -> Result<Option<Customer>, AccountError> {
        let login = login.trim();
        if login.starts_with("cus_") {
            validate::id("login", ids::CUSTOMER, login)?;
            return Ok(self.catalog.store().get_customer(login).await?);
        }
        let email = validate::email("login", login)?;
        Ok(self.catalog.store().find_customer_by_email(&email).await?)
    }

    /// argon2id verification on the hashing threads, bounded; a decoy hash when there is none.
    async fn verify_password(&self, password: &str, stored: Option<String>) -> Result<bool, AccountError> {
        let _permit = self.hashing.acquire().await.map_err(|_| StoreError::Unavailable("shutting down".into()))?;
        let hasher = self.passwords.clone();
        let decoy = self.decoy.clone();
        let password = password.to_owned();
        let real = stored.is_some();
        let verified = licensing_runtime::hashing::run(move |memory| {
            let phc = match stored {
                Some(phc) => phc,
                None => decoy.get_or_init(|| hasher.decoy_hash(memory)).clone(),
            };
            hasher.verify_with(memory, &password, &phc)
        })
        .await
        .map_err(|e| StoreError::Other(format!("password check failed: {e}")))?;
        let ok = verified.unwrap_or_else(|e| {
            tracing::error!(error = %e, "a customer's stored password hash cannot be checked; a password reset replaces it");
            false
        });
        Ok(real && ok)
    }

    /// Stores the right password again at the current cost and memory (its stored hash was made
    /// with other parameters). Best effort: the login goes on whatever happens here.
    async fn rehash(&self, customer_id: &str, password: &str) {
        let hashed = match self.catalog.hash_password(password.to_owned()).await {
            Ok(hashed) => hashed,
            Err(e) => return tracing::warn!(error = %e, "could not re-hash an outdated password hash"),
        };
        let audit = AuditRecord::new(format!("customer:{customer_id}"), "portal.password_rehashed", customer_id);
        if let Err(e) = self.catalog.store().set_customer_password_hash(customer_id, &hashed, audit).await {
            tracing::warn!(error = %e, "could not store a re-hashed password");
        }
    }

    /// Logs in with a customer ID or email and password: a new session token, or a refusal that
    /// does not tell which part was wrong; guessing is throttled per address and account.
    pub async fn login(
        &self,
        login: &str,
        password: &str,
        client: &str,
    ) -> Result<(String, Millis, Customer), AccountError> {
        if password.is_empty() || password.chars().count() > licensing_domain::secrets::MAX_PASSWORD_CHARS {
            return Err(wrong_login());
        }
        let customer = self.find_customer(login).await?;
        let account_key = customer.as_ref().map_or_else(|| login.trim().to_lowercase(), |c| c.customer_id.clone());
        // Only a client that has been guessing waits: never the owner at its own desk.
        if let Some(wait) = self.guesses.wait(&account_key, client) {
            return Err(too_many(wait));
        }
        self.account_logins
            .acquire(&format!("{account_key}\u{1f}{client}"), || "this account from this address".to_owned())?;
        let stored = match &customer {
            Some(c) => self.catalog.store().customer_password_hash(&c.customer_id).await?,
            None => None,
        };
        let outdated = stored.as_deref().is_some_and(|phc| self.passwords.is_outdated(phc));
        if !self.verify_password(password, stored).await? {
            self.guesses.failed(&account_key, client);
            if let Some(c) = &customer {
                self.audit(
                    &format!("customer:{}", c.customer_id),
                    "portal.login_failed",
                    &c.customer_id,
                    json!({ "client": client }),
                )
                .await;
            }
            return Err(wrong_login());
        }
        self.guesses.succeeded(&account_key, client);
        let customer = customer.expect("a verified password belongs to a customer");
        if outdated {
            self.rehash(&customer.customer_id, password).await;
        }
        let token = random_token("ses", 20);
        let now = self.now();
        let expires_at = now + self.settings.session_ttl;
        self.portal
            .create_session(
                &self.catalog.hasher().digest(purpose::SESSION, &token),
                &customer.customer_id,
                now,
                expires_at,
            )
            .await?;
        self.audit(
            &format!("customer:{}", customer.customer_id),
            "portal.login",
            &customer.customer_id,
            json!({ "client": client }),
        )
        .await;
        Ok((token, expires_at, customer))
    }

    /// The customer of a session token.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<String, AccountError> {
        let token = token.ok_or_else(|| AccountError::Unauthenticated {
            reason: "SESSION_MISSING",
            message: "log in first and send 'authorization: Bearer <session token>'".into(),
        })?;
        let invalid = || AccountError::Unauthenticated {
            reason: "SESSION_INVALID",
            message: "the session is not valid (expired or logged out); log in again".into(),
        };
        self.sessions.customer(token).await?.ok_or_else(invalid)
    }

    /// Ends the session `token` of customer `me`.
    pub async fn logout(&self, me: &str, token: &str) -> Result<(), AccountError> {
        self.portal.revoke_session(&self.catalog.hasher().digest(purpose::SESSION, token), self.now()).await?;
        self.audit(&format!("customer:{me}"), "portal.logout", me, json!({})).await;
        Ok(())
    }

    /// Answers the same whether or not the account exists: the work happens in the background.
    pub fn request_password_reset(&self, login: &str) -> Result<(), AccountError> {
        if login.trim().is_empty() || login.len() > 254 {
            return Err(AccountError::invalid("login", "name a customer ID or contact email"));
        }
        let portal = self.clone();
        let login = login.to_owned();
        tokio::spawn(async move {
            if let Err(e) = portal.send_reset(&login).await {
                tracing::warn!(error = %e, "password reset mail not sent");
            }
        });
        Ok(())
    }

    async fn send_reset(&self, login: &str) -> Result<(), AccountError> {
        let Some(customer) = self.find_customer(login).await.ok().flatten() else { return Ok(()) };
        if self.reset_requests.blocked(&customer.customer_id).is_some() {
            return Ok(());
        }
        self.reset_requests.record_failure(&customer.customer_id);
        let token = random_token("rst", 20);
        let now = self.now();
        self.portal
            .create_reset_token(
                &self.catalog.hasher().digest(purpose::RESET_TOKEN, &token),
                &customer.customer_id,
                now,
                now + self.settings.reset_ttl,
            )
            .await?;
        let mail = Mail {
            to: customer.contact_email.clone(),
            subject: "Reset your licensing portal password".into(),
            body: format!(
                "Someone asked to reset the portal password of {} ({}).\n\nReset token: {token}\nOr open: {}?token={token}\n\nThe token works once, for {} minutes. If you did not ask, ignore this mail.",
                customer.company_name,
                customer.customer_id,
                self.settings.reset_url,
                self.settings.reset_ttl / MINUTE
            ),
        };
        self.mailer.send(&mail).await.map_err(|e| StoreError::Unavailable(format!("mail: {e}")))?;
        self.audit(
            &format!("customer:{}", customer.customer_id),
            "portal.password_reset_requested",
            &customer.customer_id,
            json!({}),
        )
        .await;
        Ok(())
    }

    /// Sets a new password with a reset token (once, before it expires) and ends every session.
    pub async fn reset_password(&self, token: &str, new_password: String) -> Result<(), AccountError> {
        if !token.starts_with("rst_") || token.len() > 64 {
            return Err(AccountError::invalid("reset_token", "is not a reset token (rst_…)"));
        }
        validate::password("new_password", &new_password)?;
        let hash = self.catalog.hash_password(new_password).await?;
        let digest = self.catalog.hasher().digest(purpose::RESET_TOKEN, token);
        let customer_id = self.portal.use_reset_token(&digest, &hash, self.now()).await.map_err(|e| match e {
            ResetTokenError::Store(s) => s.into(),
            ResetTokenError::Unknown => {
                AccountError::NotFound { reason: "RESET_TOKEN_INVALID", message: e.to_string() }
            }
            ResetTokenError::Expired => {
                AccountError::FailedPrecondition { reason: "RESET_TOKEN_EXPIRED", message: e.to_string() }
            }
            ResetTokenError::Used => {
                AccountError::FailedPrecondition { reason: "RESET_TOKEN_USED", message: e.to_string() }
            }
        })?;
        self.audit(
            &format!("customer:{customer_id}"),
            "portal.password_reset",
            &customer_id,
            json!({ "sessions": "ended" }),
        )
        .await;
        Ok(())
    }

    /// The modules a product defines (to name a license's module codes).
    pub async fn product_modules(&self, product_code: &str) -> Result<Vec<Module>, AccountError> {
        Ok(self.catalog.get_product(product_code).await?.modules)
    }

    /// The portal's clock (what "due" and "expired" are judged by).
    pub fn now_millis(&self) -> Millis {
        self.now()
    }

    /// The customer's own account.
    pub async fn account(&self, me: &str) -> Result<Customer, AccountError> {
        self.catalog.get_customer(me).await
    }

    /// A license of this account, or NotFound (also for another account's license).
    pub async fn my_license(&self, me: &str, license_id: &str) -> Result<License, AccountError> {
        validate::id("license_id", ids::LICENSE, license_id)?;
        match self.catalog.store().get_license(license_id).await? {
            Some(l) if l.belongs_to_account(me) => Ok(l),
            _ => Err(not_found_license(license_id)),
        }
    }

    /// A page of the licenses associated with the account.
    pub async fn licenses(&self, me: &str, page: &Page) -> Result<Vec<License>, AccountError> {
        let filter = LicenseFilter { associated_customer_id: Some(me.to_owned()), ..Default::default() };
        Ok(self.catalog.store().list_licenses(&filter, page).await?)
    }

    /// One of the account's licenses, with a page of its installations and of its history
    /// (keyset pages: the tokens come from the previous page).
    pub async fn license_details(
        &self,
        me: &str,
        license_id: &str,
        installations_page: &Page,
        history_page: &Page,
    ) -> Result<LicenseDetails, AccountError> {
        let license = self.my_license(me, license_id).await?;
        let (installations, installations_next) = self.page_installations(&license, installations_page).await?;
        let (history, history_next) = self.page_history(&license, history_page).await?;
        let server = self.server_details_of(&license).await?;
        Ok(LicenseDetails { license, installations, installations_next, history, history_next, server })
    }

    /// One of the account's licenses, with (a server license) its servers and their latest
    /// usage reports.
    pub async fn server_details(&self, me: &str, license_id: &str) -> Result<(License, ServerDetails), AccountError> {
        let license = self.my_license(me, license_id).await?;
        let server = self.server_details_of(&license).await?;
        Ok((license, server))
    }

    /// The servers and latest usage reports of a license already found to be the account's.
    async fn server_details_of(&self, license: &License) -> Result<ServerDetails, AccountError> {
        if license.kind != LicenseKind::Server {
            return Ok(ServerDetails::default());
        }
        let latest = Page { after: None, limit: LATEST_SERVER_REPORTS };
        Ok(ServerDetails {
            servers: self.catalog.activated_servers(license).await?,
            reports: self.catalog.server_usage_reports(&license.license_id, &latest).await?,
        })
    }

    /// A page of the installations of one of the account's licenses, live and deactivated,
    /// newest first, with where the next page starts (`None` after the last).
    pub async fn installations(
        &self,
        me: &str,
        license_id: &str,
        page: &Page,
    ) -> Result<(License, Vec<Activation>, Option<InstallationCursor>), AccountError> {
        let license = self.my_license(me, license_id).await?;
        let (installations, next) = self.page_installations(&license, page).await?;
        Ok((license, installations, next))
    }

    /// A page of the installation and activation history of one of the account's licenses,
    /// refusals included, newest first, with the token of the next (older) page.
    pub async fn history(
        &self,
        me: &str,
        license_id: &str,
        page: &Page,
    ) -> Result<(License, Vec<ActivationEvent>, Option<i64>), AccountError> {
        let license = self.my_license(me, license_id).await?;
        let (history, next) = self.page_history(&license, page).await?;
        Ok((license, history, next))
    }

    /// One installation of one of the account's licenses (NotFound for any other).
    pub async fn installation(
        &self,
        me: &str,
        license_id: &str,
        installation_id: &str,
    ) -> Result<(License, Activation), AccountError> {
        let license = self.my_license(me, license_id).await?;
        validate::id("installation_id", ids::INSTALLATION, installation_id)?;
        match self.activations.get_activation(installation_id).await? {
            Some(a) if a.license_id == license.license_id => Ok((license, a)),
            _ => Err(AccountError::NotFound {
                reason: "INSTALLATION_NOT_FOUND",
                message: format!("license {license_id} has no installation {installation_id}"),
            }),
        }
    }

    async fn page_installations(
        &self,
        license: &License,
        page: &Page,
    ) -> Result<(Vec<Activation>, Option<InstallationCursor>), AccountError> {
        let after = match page.after.as_deref() {
            None => None,
            Some(token) => Some(InstallationCursor::parse(token).ok_or_else(|| {
                AccountError::invalid(
                    "installations_page.page_token",
                    "is not a token a previous page of installations gave: send it as it came, or none for the first page",
                )
            })?),
        };
        let size = page_size(page);
        let installations = self.activations.page_activations(&license.license_id, after.as_ref(), size).await?;
        let next = installations.last().filter(|_| installations.len() as u32 >= size).map(InstallationCursor::after);
        Ok((installations, next))
    }

    async fn page_history(
        &self,
        license: &License,
        page: &Page,
    ) -> Result<(Vec<ActivationEvent>, Option<i64>), AccountError> {
        let before = match page.after.as_deref() {
            None => None,
            Some(token) => Some(token.parse::<i64>().ok().filter(|s| *s > 0).ok_or_else(|| {
                AccountError::invalid(
                    "history_page.page_token",
                    "is not a token a previous page of history gave: send it as it came, or none for the first page",
                )
            })?),
        };
        let size = page_size(page);
        let history = self.activations.page_activation_events(&license.license_id, before, size).await?;
        let next = history.last().filter(|_| history.len() as u32 >= size).map(|e| e.sequence);
        Ok((history, next))
    }

    /// The live leases of one of the account's licenses.
    pub async fn leases(&self, me: &str, license_id: &str) -> Result<Vec<Lease>, AccountError> {
        self.my_license(me, license_id).await?;
        let leases = self.leases.as_ref().ok_or(AccountError::FailedPrecondition {
            reason: "NOT_AVAILABLE",
            message: "this Account service cannot see leases: set LICENSING_REDIS_URL".into(),
        })?;
        Ok(leases.list(license_id).await?)
    }

    /// The seat policy of one of the account's concurrent licenses.
    pub async fn seat_policy(&self, me: &str, license_id: &str) -> Result<SeatPolicy, AccountError> {
        let license = self.my_license(me, license_id).await?;
        if license.kind != LicenseKind::Concurrent {
            return Err(AccountError::FailedPrecondition {
                reason: "WRONG_KIND",
                message: format!("license {license_id} is not a concurrent license; it has no seat policy"),
            });
        }
        Ok(license.seat_policy)
    }

    /// The usage report of one of the account's licenses over `[from, to)`.
    pub async fn usage_report(
        &self,
        me: &str,
        license_id: &str,
        from: Option<Millis>,
        to: Option<Millis>,
    ) -> Result<UsageReport, AccountError> {
        self.my_license(me, license_id).await?;
        let now = self.now();
        let (from, to) = report_period(from, to, now).map_err(UpdateError::Rejected)?;
        let events = self.usage.usage_events(license_id, to).await?;
        Ok(UsageReport::compute(license_id, &events, from, to, now))
    }

    /// Deactivates a lost machine's installation, also for an expired license. Counts against
    /// the deactivation limit when the vendor's policy for the license says so.
    pub async fn deactivate_installation(
        &self,
        me: &str,
        license_id: &str,
        installation_id: &str,
    ) -> Result<(Activation, License), AccountError> {
        let license = self.my_license(me, license_id).await?;
        validate::id("installation_id", ids::INSTALLATION, installation_id)?;
        // A server keeps serving from its signed file until it gives it back: only the return
        // of its latest file frees it, or the vendor, never a click in the portal.
        if license.kind == LicenseKind::Server {
            return Err(AccountError::FailedPrecondition {
                reason: "WRONG_KIND",
                message: format!(
                    "license {license_id} is a server license: return it from its on-premises server (a return \
                     file your vendor processes), or ask your vendor"
                ),
            });
        }
        let command = DeactivateCommand {
            license_id: license.license_id.clone(),
            target: DeactivateTarget::Installation(installation_id.to_owned()),
            counts: license.portal_deactivation_counts,
            action: "portal_deactivate",
            now: self.now(),
        };
        let done = self.activations.deactivate(&command).await.map_err(|e| match e {
            ActivationStoreError::Store(s) => s.into(),
            ActivationStoreError::DeactivationLimit { allowed } => AccountError::ResourceExhausted {
                reason: "DEACTIVATION_LIMIT_REACHED",
                message: format!("license {license_id} has used all {allowed} of its deactivations: ask your vendor to deactivate this machine"),
                retry_after: Duration::from_secs(0),
            },
            _ => AccountError::NotFound { reason: "INSTALLATION_NOT_FOUND", message: format!("license {license_id} has no active installation {installation_id}") },
        })?;
        self.audit(
            &format!("customer:{me}"),
            "portal.installation_deactivated",
            me,
            json!({ "license_id": license_id, "installation_id": installation_id }),
        )
        .await;
        Ok(done)
    }

    /// The activation password of one of the account's licenses.
    pub async fn activation_password(&self, me: &str, license_id: &str) -> Result<String, AccountError> {
        self.my_license(me, license_id).await?;
        self.catalog.activation_password(license_id).await
    }

    /// Replaces the activation password of one of the account's licenses (the old one stops
    /// working at once) and returns the new one.
    pub async fn regenerate_activation_password(&self, me: &str, license_id: &str) -> Result<String, AccountError> {
        let license = self.my_license(me, license_id).await?;
        if license.status == LicenseStatus::Retired {
            return Err(AccountError::FailedPrecondition {
                reason: "LICENSE_RETIRED",
                message: format!("license {license_id} is retired"),
            });
        }
        let audit = AuditRecord::new(format!("customer:{me}"), "portal.activation_password_regenerated", me)
            .with_details(json!({ "license_id": license_id }));
        self.catalog.store().set_activation_password_salt(license_id, &random_token("salt", 16), audit).await.map_err(
            |e| match e {
                StoreError::Conflict(m) => AccountError::FailedPrecondition { reason: "LICENSE_RETIRED", message: m },
                other => other.into(),
            },
        )?;
        self.catalog.activation_password(license_id).await
    }

    /// Retires a concurrent license's Activation ID and issues its seats again as new licenses:
    /// one with all of them, or as many as `split` lists with those seats each. The seats add up
    /// to those bought, exactly (decided by the store with the license locked): a customer
    /// re-splits what it bought and never gives itself a seat. `new_seats` is the older form of
    /// one new license: 0 or the seats bought.
    pub async fn return_concurrent_license(
        &self,
        me: &str,
        license_id: &str,
        new_seats: i32,
        split: &[i32],
    ) -> Result<ReturnedLicense, AccountError> {
        let old = self.my_license(me, license_id).await?;
        if old.kind != LicenseKind::Concurrent {
            return Err(AccountError::FailedPrecondition {
                reason: "WRONG_KIND",
                message: format!("license {license_id} is not a concurrent license"),
            });
        }
        if old.status == LicenseStatus::Retired {
            return Err(AccountError::FailedPrecondition {
                reason: "LICENSE_RETIRED",
                message: format!("license {license_id} is retired already"),
            });
        }
        let shares: Vec<i32> = match (new_seats, split) {
            (0, []) => vec![old.seats],
            (0, split) => split.to_vec(),
            (seats, []) if seats == old.seats => vec![seats],
            (seats, []) => {
                return Err(AccountError::invalid(
                    "new_seats",
                    format!(
                        "license {license_id} is issued again with the {} seats bought, not {seats}: more seats come only from your vendor; to divide them among several licenses, send split",
                        old.seats
                    ),
                ))
            }
            (_, _) => return Err(AccountError::invalid("new_seats", "send new_seats or split, not both")),
        };
        if shares.len() > MAX_SPLIT {
            return Err(AccountError::invalid("split", format!("name at most {MAX_SPLIT} new licenses")));
        }
        let secrets: Vec<(LicenseKey, String)> =
            shares.iter().map(|_| (LicenseKey::generate(), random_token("salt", 16))).collect();
        let parts: Vec<SplitPart> = shares
            .iter()
            .zip(&secrets)
            .map(|(&seats, (key, salt))| SplitPart {
                license_id: ids::new_id(ids::LICENSE),
                seats,
                key_digest: self.catalog.hasher().digest(purpose::LICENSE_KEY, key.as_str()),
                activation_password_salt: salt.clone(),
            })
            .collect();
        let audit = AuditRecord::new(format!("customer:{me}"), "portal.concurrent_license_returned", me).with_details(
            json!({
                "retired": old.license_id,
                "reissued": parts.iter().map(|p| json!({ "license_id": p.license_id, "seats": p.seats })).collect::<Vec<_>>(),
            }),
        );
        let (retired, licenses) = self.portal.return_and_resplit(license_id, &parts, self.now(), audit).await?;
        let reissued = licenses
            .into_iter()
            .zip(secrets)
            .map(|(license, (license_key, salt))| ReissuedLicense {
                activation_password: self.catalog.hasher().activation_password(&license.license_id, &salt),
                license,
                license_key,
            })
            .collect();
        Ok(ReturnedLicense { retired, reissued })
    }

    /// Associates the license with this key with the account, unless another account holds it.
    pub async fn associate(&self, me: &str, license_key: &str) -> Result<License, AccountError> {
        let key = LicenseKey::parse(license_key).map_err(|e| AccountError::invalid("license_key", e.to_string()))?;
        let license = self
            .catalog
            .store()
            .find_license_by_key_digest(&self.catalog.hasher().digest(purpose::LICENSE_KEY, key.as_str()))
            .await?
            .ok_or_else(|| AccountError::NotFound {
                reason: "LICENSE_NOT_FOUND",
                message: "no license has this key".into(),
            })?;
        let audit = AuditRecord::new(format!("customer:{me}"), "portal.license_associated", me)
            .with_details(json!({ "license_id": license.license_id }));
        let license = self
            .catalog
            .store()
            .update_license(&license.license_id, &LicenseChange::Claim(me.to_owned()), self.now(), audit, None)
            .await
            .map_err(|e| match AccountError::from(e) {
                AccountError::FailedPrecondition { message, .. } => {
                    AccountError::FailedPrecondition { reason: "LICENSE_ASSOCIATED_ELSEWHERE", message }
                }
                other => other,
            })?;
        Ok(license)
    }

    /// Moves one of the account's licenses to the account `to`.
    pub async fn transfer(&self, me: &str, license_id: &str, to: &str) -> Result<License, AccountError> {
        self.my_license(me, license_id).await?;
        validate::id("to_customer_id", ids::CUSTOMER, to)?;
        if to == me {
            return Err(AccountError::invalid("to_customer_id", "is this account; name the receiving account"));
        }
        self.catalog.store().get_customer(to).await?.ok_or_else(|| AccountError::NotFound {
            reason: "CUSTOMER_NOT_FOUND",
            message: format!("no account {to} to receive the license"),
        })?;
        let audit = AuditRecord::new(format!("customer:{me}"), "portal.license_transferred", me)
            .with_details(json!({ "license_id": license_id, "to": to }));
        let change = LicenseChange::Transfer { from: me.to_owned(), to: to.to_owned() };
        let license =
            self.catalog.store().update_license(license_id, &change, self.now(), audit, None).await.map_err(|e| {
                match AccountError::from(e) {
                    AccountError::FailedPrecondition { .. } => not_found_license(license_id),
                    other => other,
                }
            })?;
        // The receiving account sees the transfer in its own audit log too.
        self.audit(
            &format!("customer:{me}"),
            "portal.license_received",
            to,
            json!({ "license_id": license_id, "from": me }),
        )
        .await;
        Ok(license)
    }

    /// The account's receipts, newest first.
    pub async fn receipts(&self, me: &str) -> Result<Vec<Receipt>, AccountError> {
        Ok(self.portal.list_receipts(me).await?)
    }

    /// A page of the audit log about the account, oldest first.
    pub async fn audit_events(&self, me: &str, page: &Page) -> Result<Vec<AuditEvent>, AccountError> {
        Ok(self.catalog.store().list_audit(me, page).await?)
    }

    /// Checks `password` against the account's own: a guess like a login's, so wrong ones slow
    /// down `client` (the same throttle as logins), never the account's other users. Returns the
    /// verified hash.
    async fn check_current_password(&self, me: &str, password: &str, client: &str) -> Result<String, AccountError> {
        if let Some(wait) = self.guesses.wait(me, client) {
            return Err(AccountError::ResourceExhausted {
                reason: "TOO_MANY_ATTEMPTS",
                message: format!(
                    "too many wrong passwords from this address; try again in {} s",
                    wait.as_secs_f64().ceil().max(1.0)
                ),
                retry_after: wait,
            });
        }
        let wrong = || AccountError::invalid("current_password", "is not the account's current password");
        if password.is_empty() || password.chars().count() > licensing_domain::secrets::MAX_PASSWORD_CHARS {
            self.guesses.failed(me, client);
            return Err(wrong());
        }
        let stored = self.catalog.store().customer_password_hash(me).await?;
        if !self.verify_password(password, stored.clone()).await? {
            self.guesses.failed(me, client);
            self.audit(&format!("customer:{me}"), "portal.password_check_failed", me, json!({ "client": client }))
                .await;
            return Err(wrong());
        }
        self.guesses.succeeded(me, client);
        Ok(stored.expect("a verified password has a hash"))
    }

    /// Changes the company password, given the current one. Every other session of the account
    /// ends; `session_token`'s lives on.
    pub async fn change_password(
        &self,
        me: &str,
        session_token: &str,
        current_password: &str,
        new_password: String,
        client: &str,
    ) -> Result<(), AccountError> {
        validate::password("new_password", &new_password)?;
        let verified = self.check_current_password(me, current_password, client).await?;
        if new_password == current_password {
            return Err(AccountError::invalid("new_password", "is the current password; choose a new one"));
        }
        let hash = self.catalog.hash_password(new_password).await?;
        let audit = AuditRecord::new(format!("customer:{me}"), "portal.password_changed", me)
            .with_details(json!({ "other_sessions": "ended" }));
        let keep = self.catalog.hasher().digest(purpose::SESSION, session_token);
        self.portal.change_password(me, &verified, &hash, &keep, self.now(), audit).await?;
        Ok(())
    }

    /// Updates the contact person, email and phone. A new email needs the current password
    /// (it is a login, and where reset mail goes); the old address is told of the change.
    pub async fn update_contact_details(
        &self,
        me: &str,
        form: &ContactForm,
        current_password: &str,
        client: &str,
    ) -> Result<Customer, AccountError> {
        let contact_name = form.contact_name.trim();
        if contact_name.chars().count() > 200 || contact_name.chars().any(char::is_control) {
            return Err(AccountError::invalid(
                "contact_name",
                "must be at most 200 characters without control characters",
            ));
        }
        let contact_email = validate::email("contact_email", &form.contact_email)?;
        let phone = form.phone.trim();
        let phone_ok = phone.chars().count() <= 40
            && phone.chars().all(|c| c.is_ascii_digit() || " +-()./".contains(c))
            && (phone.is_empty() || phone.chars().any(|c| c.is_ascii_digit()));
        if !phone_ok {
            return Err(AccountError::invalid(
                "phone",
                "must be at most 40 characters: digits, spaces and + - ( ) . / only (or empty)",
            ));
        }
        let before = self.account(me).await?;
        let email_changes = contact_email != before.contact_email;
        if email_changes {
            self.check_current_password(me, current_password, client).await?;
        }
        let details = ContactDetails {
            contact_name: contact_name.to_owned(),
            contact_email: contact_email.clone(),
            phone: phone.to_owned(),
        };
        let audit = AuditRecord::new(format!("customer:{me}"), "portal.contact_details_changed", me)
            .with_details(json!({ "contact_email_changed": email_changes }));
        let customer = self.portal.update_contact_details(me, &details, audit).await.map_err(|e| match e {
            StoreError::AlreadyExists(_) => AccountError::AlreadyExists(format!(
                "another account has the contact email {contact_email}; use another address"
            )),
            other => other.into(),
        })?;
        if email_changes {
            let mailer = self.mailer.clone();
            let notice = Mail {
                to: before.contact_email.clone(),
                subject: "The contact email of your licensing account changed".into(),
                body: format!(
                    "The contact email of {} ({}) was changed to {contact_email} in the licensing portal.\n\nPassword reset mail now goes there. If you did not make this change, contact your vendor at once.",
                    customer.company_name, customer.customer_id
                ),
            };
            tokio::spawn(async move {
                if let Err(e) = mailer.send(&notice).await {
                    tracing::warn!(error = %e, "contact email change notice not sent");
                }
            });
        }
        Ok(customer)
    }

    /// One of the account's licenses' meters now and every period they counted.
    pub async fn meter_usage(
        &self,
        me: &str,
        license_id: &str,
    ) -> Result<(Vec<MeterUsage>, Vec<MeterUsage>), AccountError> {
        self.my_license(me, license_id).await?;
        self.catalog.meter_usage(license_id).await
    }

    /// Sets the licensee name shown on one of the account's licenses; empty shows the company name.
    pub async fn set_licensee_name(&self, me: &str, license_id: &str, name: &str) -> Result<License, AccountError> {
        self.my_license(me, license_id).await?;
        let audit = AuditRecord::new(format!("customer:{me}"), "portal.licensee_name_changed", me)
            .with_details(json!({ "license_id": license_id }));
        let change = LicenseChange::SetLicenseeName(name.to_owned());
        Ok(self.catalog.store().update_license(license_id, &change, self.now(), audit, None).await?)
    }

    /// The next charge of each of the account's recurring payments, soonest first (a retired
    /// license is not charged again).
    pub async fn recurring_payments(&self, me: &str) -> Result<Vec<RecurringPayment>, AccountError> {
        let receipts = self.portal.list_receipts(me).await?;
        let mut retired = std::collections::HashSet::new();
        for r in receipts.iter().filter(|r| r.recurring_months > 0) {
            if let Some(l) = self.catalog.store().get_license(&r.license_id).await? {
                if l.status == LicenseStatus::Retired {
                    retired.insert(l.license_id);
                }
            }
        }
        Ok(recurring_payments(&receipts, &|id| retired.contains(id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(id: &str, license: &str, paid_at: Millis, months: i32) -> Receipt {
        Receipt {
            receipt_id: id.into(),
            license_id: license.into(),
            customer_id: "cus_X".into(),
            kind: "renewal".into(),
            amount_minor: 100,
            currency: "EUR".into(),
            paid_at,
            recurring_months: months,
        }
    }

    #[test]
    fn each_license_is_charged_next_after_its_latest_recurring_receipt() {
        let day = licensing_domain::clock::DAY;
        let t0 = licensing_domain::clock::parse_instant("2027-01-31T00:00:00Z").unwrap();
        let receipts = [
            receipt("rcp_1", "lic_A", t0, 12),
            receipt("rcp_2", "lic_A", t0 + 365 * day, 12),
            // A one-off payment (an upgrade) does not end the plan.
            receipt("rcp_3", "lic_A", t0 + 400 * day, 0),
            receipt("rcp_4", "lic_B", t0, 1),
            receipt("rcp_5", "lic_C", t0, 0),
            receipt("rcp_6", "lic_R", t0, 1),
        ];
        let plans = recurring_payments(&receipts, &|id| id == "lic_R");
        let got: Vec<(&str, &str, String)> = plans
            .iter()
            .map(|p| {
                (
                    p.receipt.license_id.as_str(),
                    p.receipt.receipt_id.as_str(),
                    licensing_domain::clock::rfc3339(p.next_charge_at),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("lic_B", "rcp_4", "2027-02-28T00:00:00Z".to_owned()),
                ("lic_A", "rcp_2", "2029-01-31T00:00:00Z".to_owned()),
            ]
        );
    }
}
