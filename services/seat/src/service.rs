//! [`Seats`]: the floating-seat use cases over a [`LeaseStore`].

use crate::usage::UsageLog;
use crate::waiting::{Ticket, WaitQueues};
use crate::SeatError;
use licensing_domain::certificate::{verify_lease_token, LeaseTokenPayload, Signer};
use licensing_domain::change::LicenseChange;
use licensing_domain::clock::{Millis, SECOND};
use licensing_domain::error::StoreError;
use licensing_domain::ids;
use licensing_domain::model::{seats_held, AuditRecord, Lease, License, LicenseKind, Released, UsageEvent, UsageKind};
use licensing_domain::observe::{unobserved, SharedObserver};
use licensing_domain::seat_policy::SeatPolicy;
use licensing_domain::store::{
    CatalogStore, CheckoutCommand, CheckoutOutcome, HeartbeatOutcome, LeaseStore, LicenseRevisions, LostLease,
    ReestablishOutcome, UsageStore,
};
use licensing_domain::usage::{report_period, UsageReport};
use licensing_runtime::auth::Caller;
use licensing_runtime::credentials::{CredentialError, CredentialResolver, Credentials};
use licensing_runtime::license_cache::{FillTicket, Lookup};
use licensing_runtime::limiter::{Rate, RateLimiter};
use licensing_runtime::metrics::{Gauge, GaugeSource, Reading};
use licensing_runtime::server::{CancellationToken, ShuttingDown};
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;

/// Lease lifetimes and limits of the Seat service.
#[derive(Debug, Clone)]
pub struct SeatSettings {
    /// Lease TTL when neither the request nor the seat policy names one (ms).
    pub default_ttl: Millis,
    /// Shortest TTL granted (ms); shorter requests are raised to it.
    pub min_ttl: Millis,
    /// Longest TTL granted (ms); longer requests are lowered to it.
    pub max_ttl: Millis,
    /// The longest a `WaitForSeat` may wait.
    pub max_wait: Duration,
    /// Checkouts and waits allowed per license; `None` is unlimited.
    pub checkouts_per_license: Option<Rate>,
    /// Whether seat policies may grant overdraft seats; an on-premises server serves only the
    /// seats its server license file grants.
    pub overdraft_allowed: bool,
}

impl Default for SeatSettings {
    fn default() -> Self {
        Self {
            default_ttl: 60 * SECOND,
            min_ttl: SECOND,
            max_ttl: 3_600 * SECOND,
            max_wait: Duration::from_secs(3_600),
            checkouts_per_license: None,
            overdraft_allowed: true,
        }
    }
}

/// What a client asks for at checkout (decoded from the request).
#[derive(Debug, Clone, Default)]
pub struct CheckoutRequest {
    /// The module to check out; empty means the product itself.
    pub feature: String,
    /// User name the client reports.
    pub user: String,
    /// Host name the client reports.
    pub host: String,
    /// Stable per client process; a checkout repeating it renews that client's lease.
    pub client_instance_id: String,
    /// Requested TTL in ms; 0 means the default. Negative is refused.
    pub ttl_ms: i64,
    /// Borrow for offline use this long (ms); 0 means a normal lease.
    pub borrow_for_ms: i64,
    /// Groups the product vouches for.
    pub groups: Vec<String>,
}

/// A lease as handed to its holder.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The lease granted.
    pub lease: Lease,
    /// The checkout renewed the client's own live (or lingering) lease.
    pub renewed: bool,
    /// The license's seats.
    pub seats_total: i32,
    /// Seats of the pool in use after the checkout.
    pub seats_in_use: i32,
    /// Send the next heartbeat within this many ms (a third of the TTL).
    pub heartbeat_interval_ms: i64,
    /// The signed lease token, verifiable offline until the lease's expiry.
    pub token: String,
    /// When the license's grace period ends (Unix ms), while it is in it: expired but usable,
    /// and no lease outlives this.
    pub grace_ends_at: Option<Millis>,
}

/// What a heartbeat gave: the lease extended, its fresh token, and the grace period's end while
/// the license is in it.
#[derive(Debug, Clone)]
pub struct Beat {
    /// The lease as extended (never past the license's end of use).
    pub lease: Lease,
    /// The signed lease token for the new expiry.
    pub token: String,
    /// When the license's grace period ends (Unix ms), while it is in it.
    pub grace_ends_at: Option<Millis>,
}

/// Licenses for heartbeats and checkins, and for checkouts where the lease store fences them:
/// each with the lease store's revision of it read before it, when the store keeps revisions.
pub type LicenseCache = licensing_runtime::license_cache::LicenseCache<(Arc<License>, Option<u64>)>;

/// The Seat service's use cases: checkouts, heartbeats, checkins, waits, borrows, revocations,
/// seat policies and usage reports, over the catalog, lease and usage stores.
#[derive(Clone)]
pub struct Seats {
    catalog: Arc<dyn CatalogStore>,
    leases: Arc<dyn LeaseStore>,
    usage_store: Arc<dyn UsageStore>,
    usage: UsageLog,
    credentials: CredentialResolver,
    signer: Signer,
    settings: SeatSettings,
    waiting: WaitQueues,
    /// Buckets of [`SeatSettings::checkouts_per_license`].
    per_license: RateLimiter,
    /// Counts denials (metrics).
    observer: SharedObserver,
    /// Licenses for heartbeats and checkins, and for checkouts when `revisions` is set;
    /// pass-through unless given a live one ([`Seats::with_license_cache`]).
    licenses: Arc<LicenseCache>,
    /// The lease store's license revisions, when it keeps them: then checkouts are decided on
    /// cached licenses, fenced by the revision read before each ([`Seats::with_license_revisions`]).
    revisions: Option<Arc<dyn LicenseRevisions>>,
    /// The last lease token this process signed for each lease ([`SignedTokens`]).
    signed: Arc<SignedTokens>,
}

/// The lease tokens this process signed last, per lease, so a heartbeat that shows the very
/// token it was given is recognised by a constant-time comparison instead of an Ed25519
/// verification (which costs about twice the signature every heartbeat makes anyway). A token
/// not found here (signed by another replica, before a restart, or forgotten) is verified.
#[derive(Default)]
struct SignedTokens {
    by_lease: std::sync::Mutex<std::collections::HashMap<String, (String, LeaseTokenPayload)>>,
}

/// How many leases' tokens [`SignedTokens`] keeps; past it, it starts over (tokens are then
/// verified until it is refilled).
const SIGNED_TOKENS_KEPT: usize = 100_000;

impl SignedTokens {
    fn remember(&self, token: &str, payload: LeaseTokenPayload) {
        let mut by_lease = self.by_lease.lock().unwrap_or_else(|p| p.into_inner());
        if by_lease.len() >= SIGNED_TOKENS_KEPT && !by_lease.contains_key(&payload.lease_id) {
            by_lease.clear();
        }
        by_lease.insert(payload.lease_id.clone(), (token.to_owned(), payload));
    }

    /// The payload of `token` if it is the one this process last signed for `lease_id`.
    fn recall(&self, lease_id: &str, token: &str) -> Option<LeaseTokenPayload> {
        let by_lease = self.by_lease.lock().unwrap_or_else(|p| p.into_inner());
        let (signed, payload) = by_lease.get(lease_id)?;
        licensing_domain::secrets::constant_time_eq(signed.as_bytes(), token.as_bytes()).then(|| payload.clone())
    }

    fn forget(&self, lease_id: &str) {
        self.by_lease.lock().unwrap_or_else(|p| p.into_inner()).remove(lease_id);
    }
}

/// A license's pool ([`Seats::pool_status`]).
#[derive(Debug, Clone)]
pub struct PoolStatus {
    /// The license.
    pub license: License,
    /// Seats held (each shared seat once).
    pub in_use: i32,
    /// Seats held beyond the license's seats.
    pub overdraft_in_use: i32,
    /// Clients waiting in line in this process.
    pub waiting: usize,
    /// When the earliest live lease expires (Unix ms), if any is live.
    pub earliest_expiry: Option<Millis>,
}

/// What a caller waiting in line for a seat hears ([`Seats::wait_for_seat`]).
#[derive(Debug)]
pub enum WaitEvent {
    /// Its place in line (1 is next), whenever it changes.
    Position(usize),
    /// The seat: the last event.
    Granted(Box<Grant>),
}

/// How often a waiter at the head of the line tries again when nothing woke it.
const WAIT_POLL: Duration = Duration::from_millis(250);

/// A checkout's names, validated.
struct CheckoutNames {
    client_instance_id: String,
    user: String,
    host: String,
    feature: String,
    groups: Vec<String>,
}

/// How a checkout decided on one read of its license ended.
enum Decided {
    /// Granted (denials are errors).
    Done(Box<Grant>),
    /// The license was cached and has changed since, or refused the checkout: read it fresh.
    Stale,
}

/// The same bound as names in a seat policy.
const MAX_NAME: usize = licensing_domain::seat_policy::MAX_NAME;
/// Groups a checkout may name.
const MAX_GROUPS: usize = 32;

/// The usage-log line of a lease event.
fn lease_event(kind: UsageKind, at: Millis, lease: &Lease, seats_delta: i32) -> UsageEvent {
    UsageEvent {
        license_id: lease.license_id.clone(),
        occurred_at: at,
        kind,
        lease_id: lease.lease_id.clone(),
        group_id: lease.group_id.clone(),
        user: lease.user.clone(),
        host: lease.host.clone(),
        feature: lease.feature.clone(),
        seats_delta,
        overdraft: lease.overdraft,
        borrowed: lease.borrowed,
        reason: String::new(),
        count: 1,
    }
}

fn name(field: &'static str, value: &str, required: bool) -> Result<String, SeatError> {
    licensing_domain::text::bounded_text(value, MAX_NAME, required).map_err(|m| SeatError::invalid(field, m))
}

fn check_id(field: &'static str, prefix: &str, value: &str) -> Result<(), SeatError> {
    if ids::is_well_formed(prefix, value) {
        Ok(())
    } else {
        Err(SeatError::invalid(field, format!("{} is not a {prefix}_… ID", licensing_domain::text::quoted(value))))
    }
}

impl Seats {
    /// The service over its stores; `usage` writes the usage log, `signer` signs lease tokens.
    pub fn new(
        catalog: Arc<dyn CatalogStore>,
        leases: Arc<dyn LeaseStore>,
        usage_store: Arc<dyn UsageStore>,
        usage: UsageLog,
        credentials: CredentialResolver,
        signer: Signer,
        settings: SeatSettings,
    ) -> Self {
        let per_license = RateLimiter::new("checkout", settings.checkouts_per_license);
        Self {
            catalog,
            leases,
            usage_store,
            usage,
            credentials,
            signer,
            settings,
            waiting: WaitQueues::default(),
            per_license,
            observer: unobserved(),
            licenses: Arc::default(),
            revisions: None,
            signed: Arc::default(),
        }
    }

    /// Serves heartbeats and checkins from `cache`, which must follow the store's license events.
    pub fn with_license_cache(mut self, cache: Arc<LicenseCache>) -> Self {
        self.licenses = cache;
        self
    }

    /// Decides checkouts on cached licenses too. `revisions` must be the lease store's (it
    /// refuses a checkout whose license changed since the revision it carries), raised by every
    /// process that changes licenses (`SqlStore::raise_license_revisions_in`).
    pub fn with_license_revisions(mut self, revisions: Arc<dyn LicenseRevisions>) -> Self {
        self.revisions = Some(revisions);
        self
    }

    /// The license for the paths that run for every held seat (heartbeat, checkin): from the
    /// cache when it has it, else read and kept.
    async fn known_license(&self, license_id: &str) -> Result<Option<Arc<License>>, SeatError> {
        match self.licenses.lookup(license_id) {
            Lookup::Hit((license, _)) => Ok(Some(license)),
            Lookup::Miss(ticket) => Ok(self.read_and_keep(license_id, ticket).await?.map(|(license, _)| license)),
        }
    }

    /// Reads a license the cache missed and keeps it, with the lease store's revision of it
    /// (when it keeps them) read first, so a checkout may use the entry too.
    async fn read_and_keep(
        &self,
        license_id: &str,
        ticket: FillTicket,
    ) -> Result<Option<(Arc<License>, Option<u64>)>, SeatError> {
        let revision = match &self.revisions {
            Some(revisions) => Some(revisions.current(license_id).await?),
            None => None,
        };
        let Some(license) = self.catalog.get_license(license_id).await? else {
            return Ok(None);
        };
        let license = Arc::new(license);
        self.licenses.fill(ticket, license_id, (license.clone(), revision));
        Ok(Some((license, revision)))
    }

    /// Reports denials to `observer` (metrics).
    pub fn with_observer(mut self, observer: SharedObserver) -> Self {
        self.observer = observer;
        self
    }

    /// The usage-log writer.
    pub fn usage_log(&self) -> &UsageLog {
        &self.usage
    }

    fn ttl(&self, requested: i64, policy: &SeatPolicy) -> Result<i64, SeatError> {
        match requested {
            0 if policy.default_ttl_ms > 0 => {
                Ok(policy.default_ttl_ms.clamp(self.settings.min_ttl, self.settings.max_ttl))
            }
            0 => Ok(self.settings.default_ttl),
            t if t < 0 => Err(SeatError::invalid("ttl", "must not be negative (0 means the server default)")),
            t => Ok(t.clamp(self.settings.min_ttl, self.settings.max_ttl)),
        }
    }

    /// A signed token the holder can show offline until the lease's expiry.
    fn token(&self, lease: &Lease) -> String {
        let payload = LeaseTokenPayload {
            v: 1,
            lease_id: lease.lease_id.clone(),
            license_id: lease.license_id.clone(),
            client_instance_id: lease.client_instance_id.clone(),
            fence: lease.fence,
            expires_at_ms: lease.expires_at,
            borrowed: lease.borrowed,
            feature: lease.feature.clone(),
            user: lease.user.clone(),
            host: lease.host.clone(),
            seats_held: lease.seats_held,
            ttl_ms: lease.ttl_ms,
        };
        let token = self.signer.sign_lease_token(&payload);
        self.signed.remember(&token, payload);
        token
    }

    fn grant(&self, lease: Lease, renewed: bool, license: &License, in_use: i32, now: Millis) -> Grant {
        Grant {
            grace_ends_at: license.in_grace(now),
            token: self.token(&lease),
            heartbeat_interval_ms: lease.heartbeat_interval_ms(),
            seats_total: license.seats,
            seats_in_use: in_use,
            renewed,
            lease,
        }
    }

    async fn usable_license(&self, license_id: &str, now: Millis) -> Result<Arc<License>, SeatError> {
        let license =
            self.known_license(license_id).await?.ok_or_else(|| SeatError::LicenseNotFound(license_id.to_owned()))?;
        license.usability(now, LicenseKind::Concurrent).map_err(SeatError::LicenseState)?;
        Ok(license)
    }

    /// Checks out (or renews) a lease under the license's seat policy. `ticket` is the caller's
    /// place in the wait queue, if any: while others wait, a new seat goes to the head first.
    /// A call without a ticket counts against the license's checkout rate; a waiter's retries do
    /// not (it was counted once, when it joined the line).
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
        if request.groups.len() > MAX_GROUPS {
            return Err(SeatError::invalid("groups", format!("at most {MAX_GROUPS} groups")));
        }
        let groups = request.groups.iter().map(|g| name("groups", g, true)).collect::<Result<Vec<_>, _>>()?;
        if request.borrow_for_ms < 0 {
            return Err(SeatError::invalid("borrow_for", "must not be negative"));
        }
        let names = CheckoutNames { client_instance_id, user, host, feature, groups };
        let (mut license, mut revision) = self.checkout_license(credentials).await?;
        if license.awaits_first_use() {
            // Its time counts from its first use: this checkout starts it (once, whoever races).
            let started = self.catalog.start_first_use(&license.license_id, self.leases.now().await?).await?;
            self.licenses.forget(&license.license_id);
            (license, revision) = (Arc::new(started), None);
        }
        if ticket.is_none() {
            self.per_license.acquire(&license.license_id, || format!("license {}", license.license_id))?;
        }
        match self.decide_checkout(request, &names, &license, revision, ticket).await? {
            Decided::Done(grant) => Ok(*grant),
            Decided::Stale => {
                // The cached license changed, or refused the checkout: decide again on a fresh read.
                self.licenses.forget(&license.license_id);
                let fresh = self.credentials.resolve(credentials).await?;
                match self.decide_checkout(request, &names, &fresh, None, ticket).await? {
                    Decided::Done(grant) => Ok(*grant),
                    Decided::Stale => Err(SeatError::Store(StoreError::Other(
                        "the lease store refused a checkout on a license read just now".into(),
                    ))),
                }
            }
        }
    }

    /// The license a checkout decides on, and its revision when it came from the cache. Cached
    /// only where the lease store keeps revisions (so it refuses a checkout on a license that
    /// changed since) and the license is named by key; otherwise read fresh (revision `None`).
    async fn checkout_license(&self, credentials: &Credentials) -> Result<(Arc<License>, Option<u64>), SeatError> {
        let (Some(_), Credentials::LicenseKey(key)) = (&self.revisions, credentials) else {
            return Ok((Arc::new(self.credentials.resolve(credentials).await?), None));
        };
        let digest = self.credentials.license_key_digest(key)?;
        let Some((license_id, found)) = self.licenses.lookup_by_key(&digest) else {
            // First use of this key here: read by key, and remember whose it is.
            let license = self.credentials.resolve_key_digest(&digest).await?;
            self.licenses.remember_key_owner(digest, license.license_id.clone());
            return Ok((Arc::new(license), None));
        };
        match found {
            Lookup::Hit((license, Some(revision))) => Ok((license, Some(revision))),
            // Kept before revisions were read: not fenced, so read fresh.
            Lookup::Hit((_, None)) => Ok((Arc::new(self.credentials.resolve_key_digest(&digest).await?), None)),
            Lookup::Miss(ticket) => {
                let (license, revision) =
                    self.read_and_keep(&license_id, ticket).await?.ok_or(CredentialError::UnknownKey)?;
                Ok((license, revision))
            }
        }
    }

    /// Decides a checkout on `license`. When `revision` is set the license came from the cache:
    /// anything it refuses is [`Decided::Stale`] (to be decided again on a fresh read), and the
    /// lease store checks the revision is still current before it grants or denies a seat.
    async fn decide_checkout(
        &self,
        request: &CheckoutRequest,
        names: &CheckoutNames,
        license: &License,
        revision: Option<u64>,
        ticket: Option<&Ticket>,
    ) -> Result<Decided, SeatError> {
        let cached = revision.is_some();
        let CheckoutNames { client_instance_id, user, host, feature, groups } = names;
        let policy = &license.seat_policy;
        let mut ttl_ms = self.ttl(request.ttl_ms, policy)?;
        let now = self.leases.now().await?;
        if let Err(refused) = self.license_allows(request, license, feature, now) {
            return if cached { Ok(Decided::Stale) } else { Err(refused) };
        }
        // The lease's end of use: the license's (its expiry, or its grace period's end), or the
        // feature's own expiry when that comes first.
        let feature_ends = license.module_entitlements.get(feature.as_str()).and_then(|e| e.expires_at);
        let not_after = [license.grace_ends_at(), feature_ends].into_iter().flatten().min();
        let borrowed = request.borrow_for_ms > 0;
        if borrowed {
            ttl_ms = not_after.map_or(request.borrow_for_ms, |e| request.borrow_for_ms.min(e - now));
        }
        let principals = policy.principals(user, host, groups);
        let denied_event = |reason: &str| UsageEvent {
            license_id: license.license_id.clone(),
            occurred_at: now,
            kind: UsageKind::Denied,
            lease_id: String::new(),
            group_id: String::new(),
            user: user.clone(),
            host: host.clone(),
            feature: feature.clone(),
            seats_delta: 0,
            overdraft: false,
            borrowed,
            reason: reason.to_owned(),
            count: 1,
        };
        let record_denial = |reason: &str| {
            self.observer.seat_denied(&license.license_id, feature, reason);
            self.usage.record(denied_event(reason));
        };
        if let Err(denial) = policy.admits(&principals) {
            if cached {
                return Ok(Decided::Stale);
            }
            record_denial(denial.reason());
            return Err(SeatError::Denied { license_id: license.license_id.clone(), denial });
        }
        let command = CheckoutCommand {
            license_id: license.license_id.clone(),
            seats: license.seats,
            lease_id: ids::new_id(ids::LEASE),
            client_instance_id: client_instance_id.clone(),
            user: user.clone(),
            host: host.clone(),
            cost: policy.cost(feature),
            share_key: policy.share_key(user, host, feature),
            feature: feature.clone(),
            ttl_ms,
            limits: policy.limits_for(&principals),
            queue_blocked: self.waiting.someone_else_first(&license.license_id, ticket),
            max_processes: policy.max_processes_per_seat,
            borrowed,
            license_revision: revision,
            not_after,
        };
        match self.leases.checkout(&command).await? {
            CheckoutOutcome::Granted { lease, renewed, in_use, seats_taken } => {
                if !renewed {
                    self.usage.record(lease_event(UsageKind::Checkout, lease.checked_out_at, &lease, seats_taken));
                }
                Ok(Decided::Done(Box::new(self.grant(lease, renewed, license, in_use, now))))
            }
            CheckoutOutcome::StaleLicense => Ok(Decided::Stale),
            CheckoutOutcome::Recovering { until } => {
                Err(SeatError::Recovering { until, retry_after: Duration::from_millis((until - now).max(0) as u64) })
            }
            CheckoutOutcome::Denied { denial, in_use, earliest_expiry } => {
                // A queued waiter retries on its own; its retries are not separate denials.
                if ticket.is_none() {
                    record_denial(denial.reason());
                }
                Err(SeatError::NoSeat {
                    license_id: license.license_id.clone(),
                    seats: license.seats,
                    in_use,
                    denial,
                    earliest_expiry,
                    retry_after: earliest_expiry.map(|e| Duration::from_millis((e - now).max(0) as u64)),
                })
            }
        }
    }

    /// What the license itself says of this checkout: usable, the feature licensed, borrowing
    /// allowed for that long.
    fn license_allows(
        &self,
        request: &CheckoutRequest,
        license: &License,
        feature: &str,
        now: Millis,
    ) -> Result<(), SeatError> {
        license.usability(now, LicenseKind::Concurrent).map_err(SeatError::LicenseState)?;
        // A module past its own expiry is refused as one not licensed, naming the expiry.
        if !feature.is_empty() && license.module_licensed(feature, now).is_err() {
            return Err(SeatError::FeatureNotLicensed {
                license_id: license.license_id.clone(),
                feature: feature.to_owned(),
                expired_at: license.module_expired_at(feature, now),
            });
        }
        if request.borrow_for_ms > 0 {
            let policy = &license.seat_policy;
            if policy.max_borrow_ms == 0 {
                return Err(SeatError::BorrowNotAllowed(license.license_id.clone()));
            }
            if request.borrow_for_ms > policy.max_borrow_ms {
                return Err(SeatError::invalid(
                    "borrow_for",
                    format!(
                        "license {} allows borrowing for at most {} h",
                        license.license_id,
                        policy.max_borrow_ms as f64 / 3_600_000.0
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Extends a live lease; returns it with a fresh token. `lease_token` (may be empty) is the
    /// holder's last token: when sent, it must be this lease's, signed by this server, or nothing
    /// is extended; it tells an expired lease from an unknown one whatever the store remembers,
    /// and when the lease store lost the lease and is recovering, it puts the lease back, if a
    /// seat is still free for it.
    pub async fn heartbeat(&self, license_id: &str, lease_id: &str, lease_token: &str) -> Result<Beat, SeatError> {
        check_id("license_id", ids::LICENSE, license_id)?;
        check_id("lease_id", ids::LEASE, lease_id)?;
        let token = match lease_token {
            "" => None,
            token => Some(self.verified_token(license_id, lease_id, token)?),
        };
        let now = self.leases.now().await?;
        // Suspending or retiring a license stops heartbeats at once.
        let license = self.usable_license(license_id, now).await?;
        // The token names the lease's feature: a feature past its own expiry stops heartbeats,
        // and none moves the lease past that expiry.
        let mut not_after = license.grace_ends_at();
        if let Some(feature) = token.as_ref().map(|t| t.feature.as_str()).filter(|f| !f.is_empty()) {
            if let Some(expired_at) = license.module_expired_at(feature, now) {
                return Err(SeatError::FeatureNotLicensed {
                    license_id: license_id.to_owned(),
                    feature: feature.to_owned(),
                    expired_at: Some(expired_at),
                });
            }
            let feature_ends = license.module_entitlements.get(feature).and_then(|e| e.expires_at);
            not_after = [not_after, feature_ends].into_iter().flatten().min();
        }
        let lease = match self.leases.heartbeat(license_id, lease_id, not_after).await? {
            HeartbeatOutcome::Extended(lease) => lease,
            HeartbeatOutcome::Expired => return Err(SeatError::LeaseExpired(lease_id.to_owned())),
            HeartbeatOutcome::Revoked => return Err(SeatError::LeaseRevoked(lease_id.to_owned())),
            HeartbeatOutcome::Unknown => match token {
                Some(token) if token.expires_at_ms <= now => return Err(SeatError::LeaseExpired(lease_id.to_owned())),
                Some(token) => self.reestablish(&license, token).await?,
                None => {
                    return Err(SeatError::LeaseNotFound {
                        license_id: license_id.to_owned(),
                        lease_id: lease_id.to_owned(),
                    })
                }
            },
        };
        let token = self.token(&lease);
        Ok(Beat { token, grace_ends_at: license.in_grace(now), lease })
    }

    /// The payload of `lease_token` if this server signed it for this very lease.
    fn verified_token(
        &self,
        license_id: &str,
        lease_id: &str,
        lease_token: &str,
    ) -> Result<LeaseTokenPayload, SeatError> {
        let token = match self.signed.recall(lease_id, lease_token) {
            Some(token) => token,
            None => verify_lease_token(&self.signer.verifying_key(), lease_token)
                .map_err(|e| SeatError::BadLeaseToken(format!("it is not a lease token this server signed ({e})")))?,
        };
        if token.lease_id != lease_id || token.license_id != license_id {
            return Err(SeatError::BadLeaseToken(format!(
                "it is the lease token of lease {} of license {}, not of lease {lease_id} of license {license_id}",
                token.lease_id, token.license_id
            )));
        }
        Ok(token)
    }

    /// A lease the store does not know, put back from its holder's (verified, unexpired) token if
    /// the store lost it.
    async fn reestablish(&self, license: &License, token: LeaseTokenPayload) -> Result<Lease, SeatError> {
        let not_found =
            || SeatError::LeaseNotFound { license_id: license.license_id.clone(), lease_id: token.lease_id.clone() };
        if token.ttl_ms <= 0 {
            return Err(not_found());
        }
        let lost = LostLease {
            license_id: token.license_id.clone(),
            lease_id: token.lease_id.clone(),
            client_instance_id: token.client_instance_id.clone(),
            user: token.user.clone(),
            host: token.host.clone(),
            feature: token.feature.clone(),
            fence: token.fence,
            seats_held: token.seats_held,
            ttl_ms: token.ttl_ms.clamp(self.settings.min_ttl, self.settings.max_ttl),
            seats: license.seats,
        };
        match self.leases.reestablish(&lost).await? {
            ReestablishOutcome::Restored(lease) => {
                tracing::info!(license_id = %lease.license_id, lease_id = %lease.lease_id, "lease re-established from its token after the lease store lost it");
                Ok(lease)
            }
            ReestablishOutcome::NotRecovering | ReestablishOutcome::NoSeat => Err(not_found()),
        }
    }

    /// Idempotent: `false` when the lease was already gone. Under a linger policy the seat
    /// stays held for the same user, host and feature for the linger period.
    pub async fn checkin(&self, license_id: &str, lease_id: &str) -> Result<bool, SeatError> {
        check_id("license_id", ids::LICENSE, license_id)?;
        check_id("lease_id", ids::LEASE, lease_id)?;
        let linger_ms = self.known_license(license_id).await?.map_or(0, |l| l.seat_policy.linger_ms);
        self.signed.forget(lease_id);
        let Some(released) = self.leases.checkin(license_id, lease_id, linger_ms).await? else {
            return Ok(false);
        };
        self.usage.record(lease_event(UsageKind::Checkin, released.at, &released.lease, -released.seats_freed));
        if released.seats_freed > 0 {
            self.waiting.notify(license_id);
        }
        Ok(true)
    }

    /// The License ID a waiter may queue on: the credentials are right, the license is usable
    /// now, and its checkout rate allows one more.
    async fn admit_waiter(&self, credentials: &Credentials) -> Result<String, SeatError> {
        let license = self.credentials.resolve(credentials).await?;
        license.usability(self.leases.now().await?, LicenseKind::Concurrent).map_err(SeatError::LicenseState)?;
        self.per_license.acquire(&license.license_id, || format!("license {}", license.license_id))?;
        Ok(license.license_id)
    }

    /// Waits in line for a seat of the license `credentials` name, first come, first served
    /// (in this process). The credentials and the license are checked before anything is
    /// queued, so a bad one fails the call, not the stream. The stream tells the caller's place
    /// whenever it changes, then the grant; or ends with an error: WAIT_TIMED_OUT after
    /// `max_wait_ms` (0: the server's longest; never longer), SHUTTING_DOWN when `drain` is
    /// cancelled, or what a checkout refused other than a full pool. A caller that goes away
    /// leaves the line at once, and a seat granted as it left is checked in again: no seat is
    /// kept for someone who cannot receive it.
    pub async fn wait_for_seat(
        &self,
        credentials: Credentials,
        request: CheckoutRequest,
        max_wait_ms: i64,
        drain: CancellationToken,
    ) -> Result<ReceiverStream<Result<WaitEvent, SeatError>>, SeatError> {
        if max_wait_ms < 0 {
            return Err(SeatError::invalid("max_wait", "must not be negative (0 means the server's longest)"));
        }
        let longest = self.settings.max_wait;
        let max_wait = match max_wait_ms {
            0 => longest,
            ms => Duration::from_millis(ms as u64).min(longest),
        };
        let license_id = self.admit_waiter(&credentials).await?;
        let (events, stream) = tokio::sync::mpsc::channel(8);
        let seats = self.clone();
        tokio::spawn(async move {
            let ticket = seats.waiting.enqueue(&license_id);
            let changed = ticket.changed();
            let deadline = tokio::time::Instant::now() + max_wait;
            let mut last_position = 0;
            loop {
                let notified = changed.notified();
                let position = ticket.position();
                if position != last_position {
                    last_position = position;
                    if events.send(Ok(WaitEvent::Position(position))).await.is_err() {
                        return;
                    }
                }
                if position == 1 {
                    match seats.checkout(&credentials, &request, Some(&ticket)).await {
                        Ok(grant) => {
                            let (license_id, lease_id) = (grant.lease.license_id.clone(), grant.lease.lease_id.clone());
                            if events.send(Ok(WaitEvent::Granted(Box::new(grant)))).await.is_err() {
                                // The caller is gone: never keep a seat it cannot receive.
                                let _ = seats.checkin(&license_id, &lease_id).await;
                            }
                            return;
                        }
                        Err(SeatError::NoSeat { .. }) => {}
                        Err(e) => {
                            let _ = events.send(Err(e)).await;
                            return;
                        }
                    }
                }
                tokio::select! {
                    () = notified => {}
                    () = tokio::time::sleep(WAIT_POLL) => {}
                    () = tokio::time::sleep_until(deadline) => {
                        let _ = events.send(Err(SeatError::WaitTimedOut(max_wait.as_millis()))).await;
                        return;
                    }
                    () = events.closed() => return,
                    () = drain.cancelled() => {
                        // Leaving the line: the caller waits again on a server that is up.
                        let _ = events.send(Err(ShuttingDown.into())).await;
                        return;
                    }
                }
            }
        });
        Ok(ReceiverStream::new(stream))
    }

    /// The license, as `caller` may see it: the admin any, a customer only its account's (any
    /// other is as good as unknown to it).
    async fn visible_license(&self, caller: &Caller, license_id: &str) -> Result<License, SeatError> {
        check_id("license_id", ids::LICENSE, license_id)?;
        match self.catalog.get_license(license_id).await? {
            Some(license) if caller.may_see(&license) => Ok(license),
            _ => Err(SeatError::LicenseNotFound(license_id.to_owned())),
        }
    }

    /// The license and its live leases, if `caller` may see the license.
    pub async fn list(&self, caller: &Caller, license_id: &str) -> Result<(License, Vec<Lease>), SeatError> {
        let license = self.visible_license(caller, license_id).await?;
        Ok((license, self.leases.list(license_id).await?))
    }

    /// A license's pool as it stands: seats held (each shared seat once), those beyond the
    /// license's seats, waiters in this process, the earliest expiry.
    pub async fn pool_status(&self, caller: &Caller, license_id: &str) -> Result<PoolStatus, SeatError> {
        let (license, leases) = self.list(caller, license_id).await?;
        let in_use = seats_held(&leases);
        Ok(PoolStatus {
            in_use,
            overdraft_in_use: (in_use - license.seats).max(0),
            waiting: self.waiting.waiting(license_id),
            earliest_expiry: leases.iter().map(|l| l.expires_at).min(),
            license,
        })
    }

    /// Revokes a lease (an administrator's call): its seat is free at once; returns the license's new fence.
    pub async fn revoke(&self, license_id: &str, lease_id: &str) -> Result<i64, SeatError> {
        check_id("license_id", ids::LICENSE, license_id)?;
        check_id("lease_id", ids::LEASE, lease_id)?;
        let (fence, released) = self.leases.revoke(license_id, lease_id).await?.ok_or_else(|| {
            SeatError::LeaseNotFound { license_id: license_id.to_owned(), lease_id: lease_id.to_owned() }
        })?;
        self.usage.record(lease_event(UsageKind::Revoked, released.at, &released.lease, -released.seats_freed));
        self.waiting.notify(license_id);
        Ok(fence)
    }

    /// Records the leases that expired (the seats were already free: expired leases never count).
    pub async fn sweep(&self) -> Result<usize, SeatError> {
        let expired = self.leases.sweep_expired(1000).await?;
        for Released { lease, seats_freed, at } in &expired {
            let kind = if lease.lingering { UsageKind::LingerEnded } else { UsageKind::Expired };
            tracing::info!(license_id = %lease.license_id, lease_id = %lease.lease_id, user = %lease.user, host = %lease.host, kind = kind.as_str(), "lease ended");
            self.usage.record(lease_event(kind, *at, lease, -seats_freed));
            self.waiting.notify(&lease.license_id);
        }
        Ok(expired.len())
    }

    /// Sets the seat policy of a concurrent license; a contradictory one is refused with the
    /// field named and the old policy kept.
    pub async fn update_policy(&self, actor: &str, license_id: &str, policy: SeatPolicy) -> Result<License, SeatError> {
        check_id("license_id", ids::LICENSE, license_id)?;
        if policy.overdraft_seats > 0 && !self.settings.overdraft_allowed {
            return Err(SeatError::BeyondServerLicense(format!(
                "overdraft_seats: an on-premises server serves only the seats its server license file grants; \
                 set 0 (got {})",
                policy.overdraft_seats
            )));
        }
        let now = self.leases.now().await?;
        let audit = AuditRecord::new(actor, "license.seat_policy_changed", license_id);
        Ok(self.catalog.update_license(license_id, &LicenseChange::SetSeatPolicy(policy), now, audit, None).await?)
    }

    /// The usage report of a license over `[from, to)`; unset `to` is now, unset `from` is 30
    /// days before `to`. Events recorded by this process are written first.
    pub async fn usage_report(
        &self,
        caller: &Caller,
        license_id: &str,
        from: Option<Millis>,
        to: Option<Millis>,
    ) -> Result<UsageReport, SeatError> {
        check_id("license_id", ids::LICENSE, license_id)?;
        let now = self.leases.now().await?;
        let (from, to) = report_period(from, to, now)
            .map_err(|e| SeatError::from(licensing_domain::store::UpdateError::Rejected(e)))?;
        self.visible_license(caller, license_id).await?;
        self.usage.flush().await;
        let events = self.usage_store.usage_events(license_id, to).await?;
        Ok(UsageReport::compute(license_id, &events, from, to, now))
    }

    /// The lease store's clock (Unix ms).
    pub async fn now(&self) -> Result<Millis, SeatError> {
        Ok(self.leases.now().await?)
    }

    /// Until when new seats are held back after the lease store lost its leases, if they are.
    pub async fn recovering_until(&self) -> Result<Option<Millis>, SeatError> {
        Ok(self.leases.recovering_until().await?)
    }

    /// Ends a recovery early (an administrator's decision, audited); returns until when it would
    /// have lasted, or `None` when there was none.
    pub async fn end_recovery(&self, actor: &str, reason: &str) -> Result<Option<Millis>, SeatError> {
        let reason =
            licensing_domain::text::bounded_text(reason, 500, false).map_err(|m| SeatError::invalid("reason", m))?;
        let ended = self.leases.end_recovery().await?;
        if let Some(until) = ended {
            tracing::warn!(actor, until = %licensing_domain::clock::rfc3339(until), reason, "lease store recovery ended early by an administrator: new seats are handed out again");
            let audit = AuditRecord::new(actor, "lease_store.recovery_ended", "lease_store")
                .with_details(serde_json::json!({ "would_have_ended_at": until, "reason": reason }));
            self.catalog.append_audit(audit).await?;
        }
        Ok(ended)
    }
}

/// Most licenses whose seats a scrape reports; beyond it the per-license series would flood
/// Prometheus (and each costs a lease-store read at scrape time).
pub const METRICS_MAX_LICENSES: usize = 1_000;

#[async_trait::async_trait]
impl GaugeSource for Seats {
    /// Seats in use and live leases per license and feature, seats per license, waiters per
    /// license, and usage-log losses. Seat counts are read from the lease store, so every
    /// replica reports the same truth.
    async fn read(&self, out: &mut Vec<Reading>) {
        out.push(Reading::new(Gauge::UsageLogDropped, &[], self.usage.dropped() as f64));
        match tokio::join!(self.leases.recovering_until(), self.leases.now()) {
            (Ok(until), Ok(now)) => {
                let remaining = until.map_or(0.0, |until| (until - now).max(0) as f64 / 1000.0);
                out.push(Reading::new(Gauge::LeaseStoreRecovery, &[], remaining));
            }
            (Err(e), _) | (_, Err(e)) => tracing::warn!(error = %e, "metrics: reading the lease store's recovery"),
        }
        for (license_id, waiting) in self.waiting.lengths() {
            out.push(Reading::new(Gauge::SeatWaiters, &[("license_id", &license_id)], waiting as f64));
        }
        let licenses = match self.leases.licenses_with_leases(METRICS_MAX_LICENSES).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: listing licenses with leases");
                return;
            }
        };
        for license_id in licenses {
            let (leases, license) =
                match tokio::join!(self.leases.list(&license_id), self.catalog.get_license(&license_id)) {
                    (Ok(leases), Ok(license)) => (leases, license),
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::warn!(error = %e, license_id, "metrics: reading a license's leases");
                        continue;
                    }
                };
            let product = license.as_ref().map_or("", |l| l.product_code.as_str());
            if let Some(license) = &license {
                out.push(Reading::new(
                    Gauge::SeatsAllowed,
                    &[("license_id", &license_id), ("product", product)],
                    license.seats as f64,
                ));
            }
            let mut by_feature: std::collections::BTreeMap<&str, Vec<&Lease>> = Default::default();
            for lease in &leases {
                by_feature.entry(lease.feature.as_str()).or_default().push(lease);
            }
            if by_feature.is_empty() {
                // Emptied since the sweep last looked: report the drop to zero.
                by_feature.insert("", vec![]);
            }
            for (feature, leases) in by_feature {
                let labels = [("license_id", license_id.as_str()), ("product", product), ("feature", feature)];
                // A seat shared by several processes is one seat.
                out.push(Reading::new(Gauge::SeatsInUse, &labels, f64::from(seats_held(leases.iter().copied()))));
                out.push(Reading::new(Gauge::LeasesLive, &labels, leases.len() as f64));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(lease_id: &str) -> LeaseTokenPayload {
        LeaseTokenPayload {
            v: 1,
            lease_id: lease_id.into(),
            license_id: "lic_A".into(),
            client_instance_id: "c".into(),
            fence: 1,
            expires_at_ms: 0,
            borrowed: false,
            feature: String::new(),
            user: "u".into(),
            host: "h".into(),
            seats_held: 1,
            ttl_ms: 1,
        }
    }

    #[test]
    fn only_the_very_token_signed_last_for_a_lease_is_recalled() {
        let signed = SignedTokens::default();
        signed.remember("tok-1", payload("lse_1"));
        assert_eq!(signed.recall("lse_1", "tok-1"), Some(payload("lse_1")));
        assert_eq!(signed.recall("lse_1", "tok-2"), None, "an altered token is verified, not recalled");
        assert_eq!(signed.recall("lse_2", "tok-1"), None, "another lease's token is verified, not recalled");
        signed.remember("tok-3", payload("lse_1"));
        assert_eq!(signed.recall("lse_1", "tok-1"), None, "only the latest is kept");
        signed.forget("lse_1");
        assert_eq!(signed.recall("lse_1", "tok-3"), None);
    }
}
