//! The storage interfaces. `licensing-store` implements them on PostgreSQL and SQLite (one SQL
//! implementation, two dialects of migrations), and one conformance suite runs against both.

use crate::change::{ChangeError, LicenseChange};
use crate::clock::Millis;
use crate::error::StoreError;
use crate::model::*;
use crate::seat_policy::{SeatDenial, SeatLimits};
use async_trait::async_trait;

/// What the SQL store tells caches, in commit order: this license (its status, seats, dates or
/// policy) or one of its activations changed, and the change is committed. Whether every
/// process's changes are being reported is told beside it ([`LicenseFeed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LicenseChanged(pub String);

/// What a cache follows to stay exact (`SqlStore::license_feed` makes one).
#[derive(Debug)]
pub struct LicenseFeed {
    /// Committed changes, in commit order. A receiver that falls behind by more than the buffer
    /// loses the oldest ones (and is told it did).
    pub changes: tokio::sync::broadcast::Receiver<LicenseChanged>,
    /// Whether every process's changes are in `changes` right now; `None` when they always are
    /// (SQLite: this process is the only writer).
    pub listening: Option<tokio::sync::watch::Receiver<bool>>,
}

/// A counter per license, raised after every committed change to it, so a lease store can refuse
/// a checkout decided on a license read before the change (the Seat service decides checkouts on
/// cached licenses). A license never changed is at revision 0.
#[async_trait]
pub trait LicenseRevisions: Send + Sync + 'static {
    /// The license's revision now (0 if it never changed).
    async fn current(&self, license_id: &str) -> Result<u64, StoreError>;
    /// Called after the change is committed and before the call that made it returns.
    async fn raise(&self, license_id: &str) -> Result<(), StoreError>;
}

/// Why an update of a license failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The change does not apply to the license as it is.
    #[error(transparent)]
    Rejected(#[from] ChangeError),
}

/// The license catalog: products, customers, licenses, admin tokens and the audit log.
#[async_trait]
pub trait CatalogStore: Send + Sync + 'static {
    /// Fails with [`StoreError::AlreadyExists`] when the code is taken.
    async fn create_product(&self, product: &Product, audit: AuditRecord) -> Result<(), StoreError>;
    /// The product with this code, if any.
    async fn get_product(&self, code: &str) -> Result<Option<Product>, StoreError>;
    /// A page of products, by code.
    async fn list_products(&self, page: &Page) -> Result<Vec<Product>, StoreError>;
    /// Fails with [`StoreError::AlreadyExists`] when the version is recorded already.
    async fn add_product_version(
        &self,
        code: &str,
        version: ProductVersion,
        audit: AuditRecord,
    ) -> Result<Product, StoreError>;
    /// Adds a module to the product, with the product locked; fails with
    /// [`StoreError::AlreadyExists`] when the product has a module with its code, and
    /// [`StoreError::NotFound`] when there is no such product.
    async fn add_product_module(&self, code: &str, module: Module, audit: AuditRecord) -> Result<Product, StoreError>;

    /// `password_hash` is an argon2id PHC string, or none until the customer resets it.
    async fn create_customer(
        &self,
        customer: &Customer,
        password_hash: Option<&str>,
        audit: AuditRecord,
    ) -> Result<(), StoreError>;
    /// The customer with this ID, if any.
    async fn get_customer(&self, customer_id: &str) -> Result<Option<Customer>, StoreError>;
    /// The customer whose contact email is `email` (lowercased), if any.
    async fn find_customer_by_email(&self, email: &str) -> Result<Option<Customer>, StoreError>;
    /// A page of customers by ID; `query` narrows to a substring of company name or email.
    async fn list_customers(&self, query: Option<&str>, page: &Page) -> Result<Vec<Customer>, StoreError>;
    /// The customer's argon2id PHC string; `None` until a password is set.
    async fn customer_password_hash(&self, customer_id: &str) -> Result<Option<String>, StoreError>;
    /// Replaces the customer's password hash (an argon2id PHC string) and appends `audit`.
    async fn set_customer_password_hash(
        &self,
        customer_id: &str,
        password_hash: &str,
        audit: AuditRecord,
    ) -> Result<(), StoreError>;

    /// Stores a new license, its audit entry and (when paid) its receipt, atomically.
    async fn insert_license(
        &self,
        new: &NewLicense,
        audit: AuditRecord,
        receipt: Option<&Receipt>,
    ) -> Result<(), StoreError>;
    /// The license with this ID, if any.
    async fn get_license(&self, license_id: &str) -> Result<Option<License>, StoreError>;
    /// The license whose key has this keyed digest, if any.
    async fn find_license_by_key_digest(&self, key_digest: &str) -> Result<Option<License>, StoreError>;
    /// A page of licenses by ID, narrowed by `filter`.
    async fn list_licenses(&self, filter: &LicenseFilter, page: &Page) -> Result<Vec<License>, StoreError>;
    /// The salt the license's activation password is derived from.
    async fn activation_password_salt(&self, license_id: &str) -> Result<Option<String>, StoreError>;
    /// Replaces the salt, so the old activation password stops working at once.
    async fn set_activation_password_salt(
        &self,
        license_id: &str,
        salt: &str,
        audit: AuditRecord,
    ) -> Result<(), StoreError>;
    /// Applies `change` to the license with the row locked, appends `audit` and stores the
    /// receipt if any, atomically.
    async fn update_license(
        &self,
        license_id: &str,
        change: &LicenseChange,
        now: Millis,
        audit: AuditRecord,
        receipt: Option<&Receipt>,
    ) -> Result<License, UpdateError>;

    /// Fails with [`StoreError::AlreadyExists`] when the product has a policy of that name.
    async fn create_policy(&self, policy: &crate::policy::Policy, audit: AuditRecord) -> Result<(), StoreError>;
    /// The policy with this ID, if any.
    async fn get_policy(&self, policy_id: &str) -> Result<Option<crate::policy::Policy>, StoreError>;
    /// The policies of a product by name; every product's when `product_code` is empty.
    async fn list_policies(&self, product_code: &str) -> Result<Vec<crate::policy::Policy>, StoreError>;
    /// Replaces a policy's terms and raises its revision, with `audit`, atomically; no license
    /// changes. [`StoreError::NotFound`] when there is no such policy.
    async fn update_policy_terms(
        &self,
        policy_id: &str,
        terms: &crate::policy::LicenseTerms,
        now: Millis,
        audit: AuditRecord,
    ) -> Result<crate::policy::Policy, StoreError>;
    /// Starts the time of a license that counts from first use, at `now`, with its row locked
    /// (so of racing first uses one starts it), audited; the license as it is after. Changes
    /// nothing when its time does not count from first use or has started.
    async fn start_first_use(&self, license_id: &str, now: Millis) -> Result<License, StoreError>;

    /// Appends one entry to the audit log on its own (a change stores its entry with it).
    async fn append_audit(&self, audit: AuditRecord) -> Result<(), StoreError>;
    /// Oldest first, after the sequence number in `page.after`.
    async fn list_audit(&self, subject: &str, page: &Page) -> Result<Vec<AuditEvent>, StoreError>;

    /// How many admin tokens exist (0 means the bootstrap token may be made).
    async fn count_admin_tokens(&self) -> Result<i64, StoreError>;
    /// Idempotent: storing a digest already present changes nothing.
    async fn insert_admin_token(&self, token_id: &str, digest: &str, now: Millis) -> Result<(), StoreError>;
    /// The token ID of the admin token with this digest.
    async fn find_admin_token(&self, digest: &str) -> Result<Option<String>, StoreError>;
}

/// Whether a license may be used for a call, decided by the store with the license row locked.
pub type UsableCheck = dyn for<'l> Fn(&'l License) -> Result<(), Refusal> + Send + Sync;

/// Why an activation or deactivation was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActivationStoreError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No license with this ID.
    #[error("license {0} not found")]
    LicenseNotFound(String),
    /// The license may not be used now (its [`Refusal`]).
    #[error("{}", .0.message)]
    Refused(Refusal),
    /// Every activation (the license's seats) is in use.
    #[error("all {seats} activations of the license are in use")]
    LimitReached {
        /// The license's seats (allowed activations).
        seats: i32,
    },
    /// No live activation has this Installation ID or matches this fingerprint.
    #[error("no active installation matches")]
    NoActivation,
    /// Every allowed deactivation is spent.
    #[error("all {allowed} deactivations of the license are used")]
    DeactivationLimit {
        /// The license's allowed deactivations.
        allowed: i32,
    },
}

impl ActivationStoreError {
    /// The stable reason a refusal is recorded under in the activation history, for the
    /// refusals that are recorded.
    pub fn recorded_reason(&self) -> Option<&'static str> {
        match self {
            Self::Refused(r) => Some(r.reason),
            Self::LimitReached { .. } => Some("ACTIVATION_LIMIT_REACHED"),
            Self::DeactivationLimit { .. } => Some("DEACTIVATION_LIMIT_REACHED"),
            Self::Store(_) | Self::LicenseNotFound(_) | Self::NoActivation => None,
        }
    }
}

/// A new activation, with everything the store needs to decide atomically.
#[derive(Debug, Clone)]
pub struct ActivateCommand {
    /// License ID.
    pub license_id: String,
    /// The Installation ID to use if a new activation is made.
    pub installation_id: String,
    /// Keyed digests of the presented fingerprint.
    pub fingerprint: Vec<crate::fingerprint::ComponentDigest>,
    /// [`crate::fingerprint::summary`] of the fingerprint, for the history line.
    pub fingerprint_summary: String,
    /// Human-readable machine name.
    pub machine_name: String,
    /// The machine's platform, e.g. `linux-x86_64`.
    pub platform: String,
    /// The product version running.
    pub product_version: String,
    /// Made through an offline activation request.
    pub offline: bool,
    /// A server license's activation: a new server license file is signed for it, so the
    /// license's file serial is raised by one (new activation or repeated) and recorded on the
    /// activation ([`crate::model::Activation::server_serial`]), with the row locked.
    pub server: bool,
    /// Share of a stored fingerprint's components that must match for "the same machine".
    pub match_threshold: f64,
    /// Now (Unix ms), by the service's clock.
    pub now: Millis,
}

/// What an activation did.
#[derive(Debug, Clone, PartialEq)]
pub enum ActivateOutcome {
    /// A seat was consumed.
    New(Activation, License),
    /// The machine was already activated; nothing was consumed.
    Existing(Activation, License),
}

/// Which live activation to deactivate.
#[derive(Debug, Clone)]
pub enum DeactivateTarget {
    /// The activation with this Installation ID.
    Installation(String),
    /// A server's live activation `installation_id`, given back with the server license file
    /// of `serial`: only when that is the latest file signed for it (an older file's return is
    /// refused, reason `SUPERSEDED_SERVER_LICENSE`). `audit` is written with the change.
    ServerLicenseFile {
        /// Installation ID of the server's activation.
        installation_id: String,
        /// The serial of the file given back.
        serial: i64,
        /// The audit record of the return.
        audit: crate::model::AuditRecord,
    },
    /// A node-locked product's live activation `installation_id`, given back offline with the
    /// certificate issued at `certificate_issued_at` (an offline deactivation request): only
    /// when no certificate was signed for it by a (re-)activation or refresh after that one, nor
    /// before it was activated (a request from an older certificate is refused, reason
    /// `SUPERSEDED_CERTIFICATE`). `audit` is written with the change.
    OfflineRequest {
        /// Installation ID of the activation.
        installation_id: String,
        /// `issued_at_ms` of the certificate given back.
        certificate_issued_at: Millis,
        /// The audit record of the deactivation.
        audit: crate::model::AuditRecord,
    },
    /// The live activation best matching these digests (at or above the threshold).
    Fingerprint {
        /// Keyed digests of the presented fingerprint.
        digests: Vec<crate::fingerprint::ComponentDigest>,
        /// Share of the stored components that must be present (0.0 to 1.0).
        match_threshold: f64,
    },
}

/// A deactivation, decided atomically by the store.
#[derive(Debug, Clone)]
pub struct DeactivateCommand {
    /// License ID.
    pub license_id: String,
    /// Which activation.
    pub target: DeactivateTarget,
    /// Whether this deactivation spends one of the allowed deactivations.
    pub counts: bool,
    /// History action: "deactivate", "offline_deactivate", "portal_deactivate",
    /// "support_return" or "server_return".
    pub action: &'static str,
    /// Now (Unix ms), by the service's clock.
    pub now: Millis,
}

/// The live activation of a license that best matches a machine.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineMatch {
    /// The matching activation.
    pub activation: Activation,
    /// The share of the activation's stored components the machine presented.
    pub share: f64,
}

/// An activation the cull deactivated: its machine was not seen within the license's heartbeat
/// timeout.
#[derive(Debug, Clone, PartialEq)]
pub struct CulledActivation {
    /// The activation, now deactivated.
    pub activation: Activation,
    /// The license's heartbeat timeout it missed (ms).
    pub heartbeat_timeout_ms: Millis,
}

/// Node-locked activations and their history.
///
/// A machine is matched against a license's live activations through the fingerprint
/// components they share, never by reading every activation: the cost of matching stays flat
/// however many installations a license has.
#[async_trait]
pub trait ActivationStore: Send + Sync + 'static {
    /// Activates atomically: the license row is locked, `usable` is checked, a matching live
    /// activation is returned as is, else the activation count is raised by a conditional update
    /// (never past the seats) and the activation inserted, with its history line. A refusal
    /// (`usable` refuses, or the limit is reached) consumes nothing and is recorded as a history
    /// line whose outcome is its reason.
    async fn activate(
        &self,
        command: &ActivateCommand,
        usable: &UsableCheck,
    ) -> Result<ActivateOutcome, ActivationStoreError>;
    /// Deactivates atomically, spending a deactivation when `counts` (never past the limit).
    /// Refusals are not recorded: this is what the portal and support staff call.
    async fn deactivate(&self, command: &DeactivateCommand) -> Result<(Activation, License), ActivationStoreError>;
    /// A deactivation asked for by a product: like [`Self::deactivate`], but only while
    /// `usable` accepts the license (checked with its row locked), and a refusal (`usable`
    /// refuses, or the deactivation limit is reached) is recorded as a history line.
    async fn deactivate_checked(
        &self,
        command: &DeactivateCommand,
        usable: &UsableCheck,
    ) -> Result<(Activation, License), ActivationStoreError>;
    /// The activation with this Installation ID, live or not.
    async fn get_activation(&self, installation_id: &str) -> Result<Option<Activation>, StoreError>;
    /// The live activation of the license whose stored fingerprint `presented` matches best,
    /// if it matches at least `min_share` of its components.
    async fn best_live_match(
        &self,
        license_id: &str,
        presented: &[crate::fingerprint::ComponentDigest],
        min_share: f64,
    ) -> Result<Option<MachineMatch>, StoreError>;
    /// Live and past activations of a license, newest first.
    async fn list_activations(&self, license_id: &str) -> Result<Vec<Activation>, StoreError>;
    /// At most `limit` activations of a license, newest first, after `after` (keyset paging).
    async fn page_activations(
        &self,
        license_id: &str,
        after: Option<&InstallationCursor>,
        limit: u32,
    ) -> Result<Vec<Activation>, StoreError>;
    /// Live activations of a license (at most its seats, however long its history).
    async fn list_live_activations(&self, license_id: &str) -> Result<Vec<Activation>, StoreError>;
    /// Marks an activation seen (a refresh) and records the history line.
    async fn record_refresh(
        &self,
        installation_id: &str,
        event: &ActivationEvent,
        now: Millis,
    ) -> Result<(), StoreError>;
    /// A heartbeat: marks the live activation `installation_id` of `license_id` seen at `now`, and
    /// returns it as updated; `None` (nothing changed) when it is not live (deactivated, culled)
    /// or not that license's. No history line: heartbeats come every few minutes.
    async fn record_heartbeat(
        &self,
        license_id: &str,
        installation_id: &str,
        now: Millis,
    ) -> Result<Option<Activation>, StoreError>;
    /// Deactivates live activations of licenses that require heartbeats whose machines were not
    /// seen within the license's timeout (`last_seen_at + timeout <= now`), at most `max` in one
    /// call: per license in one transaction with its row locked, each freeing its activation
    /// without spending a deactivation, with a `system` audit record (`activation.culled`) and a
    /// history line (action `cull`). Returns what it culled. Safe to run from several processes
    /// at once: a machine is culled (and its activation freed) once, and one seen meanwhile is
    /// not culled.
    async fn cull_silent_activations(&self, now: Millis, max: usize) -> Result<Vec<CulledActivation>, StoreError>;
    /// Records a refused call on a license that changed nothing (a wrong activation password):
    /// a history line whose outcome is the refusal's reason.
    async fn record_refusal(&self, license_id: &str, event: &ActivationEvent) -> Result<(), StoreError>;
    /// History of a license, oldest first.
    async fn list_activation_events(&self, license_id: &str) -> Result<Vec<ActivationEvent>, StoreError>;
    /// At most `limit` lines of a license's history, newest first, older than the line with
    /// sequence `before` (keyset paging).
    async fn page_activation_events(
        &self,
        license_id: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<ActivationEvent>, StoreError>;
}

/// A checkout, decided atomically by the lease store against the pool's seats and policy.
#[derive(Debug, Clone)]
pub struct CheckoutCommand {
    /// License ID.
    pub license_id: String,
    /// The license's seats (the pool's size).
    pub seats: i32,
    /// The lease ID to use if a new lease is made.
    pub lease_id: String,
    /// Stable per client process; a checkout repeating it renews that client's lease.
    pub client_instance_id: String,
    /// User name the client reported.
    pub user: String,
    /// Host name the client reported.
    pub host: String,
    /// The module to check out; empty means the product itself.
    pub feature: String,
    /// Time to live, in ms (the borrow period when `borrowed`).
    pub ttl_ms: i64,
    /// Seats a new seat takes from the pool.
    pub cost: i32,
    /// Reservations, caps and overdraft as they apply to this checkout.
    pub limits: SeatLimits,
    /// Someone is ahead in the wait queue: no new seat, though renewing, reclaiming a lingering
    /// seat or sharing one still works.
    pub queue_blocked: bool,
    /// Join a live seat with this key, if it has room for another process.
    pub share_key: Option<String>,
    /// Processes per shared seat; 0 means no limit.
    pub max_processes: i32,
    /// Borrowed for offline use: `ttl_ms` is the borrow period, and heartbeats do not extend it.
    pub borrowed: bool,
    /// The latest a granted lease may expire (the license's expiry, or the end of its grace
    /// period when it has one), by the store's own clock:
    /// the store caps the expiry itself, as the service's reading of the clock is already old.
    pub not_after: Option<Millis>,
    /// The [`LicenseRevisions`] revision of the license that `seats` and `limits` come from, when
    /// it was cached: the store refuses the checkout ([`CheckoutOutcome::StaleLicense`]) if the
    /// license has changed since. `None`: read just now, nothing to check.
    pub license_revision: Option<u64>,
}

// A return value moved once per call, never stored in bulk: boxing the lease would only add an allocation.
/// What a checkout did.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckoutOutcome {
    /// A lease was granted.
    Granted {
        /// The lease as stored.
        lease: Lease,
        /// The client's own live or lingering lease was given back.
        renewed: bool,
        /// Seats of the pool in use after the checkout.
        in_use: i32,
        /// Seats this checkout took from the pool (0 when renewed or shared).
        seats_taken: i32,
    },
    /// No seat for this checkout: why, how many are in use and when the earliest lease expires.
    Denied {
        /// Which limit said no.
        denial: SeatDenial,
        /// Seats of the pool in use.
        in_use: i32,
        /// When the earliest live lease expires (Unix ms), if any is live.
        earliest_expiry: Option<Millis>,
    },
    /// The store lost its leases (Redis restarted empty, or failed over to a replica that
    /// lagged) and holds new seats back until `until`, when every lease it may have forgotten
    /// has expired; holders of those leases re-establish them meanwhile (see
    /// [`LeaseStore::reestablish`]).
    Recovering {
        /// No new seats before this instant (Unix ms, the store's clock).
        until: Millis,
    },
    /// The license changed after the revision the command carries: decide again on a fresh read.
    /// Nothing was changed. A store that keeps no revisions answers this to every command that
    /// carries one.
    StaleLicense,
}

/// A lease the store lost, as its holder's signed lease token describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostLease {
    /// License ID.
    pub license_id: String,
    /// Lease ID.
    pub lease_id: String,
    /// The client process that held it.
    pub client_instance_id: String,
    /// User name.
    pub user: String,
    /// Host name.
    pub host: String,
    /// The module; empty means the product itself.
    pub feature: String,
    /// The fence the lease was given.
    pub fence: i64,
    /// Seats of the pool the lease held.
    pub seats_held: i32,
    /// Time to live, in ms.
    pub ttl_ms: i64,
    /// The license's seats: a re-established lease still needs a free one.
    pub seats: i32,
}

/// What re-establishing a lost lease did.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReestablishOutcome {
    /// The lease holds its seat again, with a fresh expiry.
    Restored(Lease),
    /// The store is not recovering from a loss: a lease it does not know really ended.
    NotRecovering,
    /// Other re-established leases took the seats first.
    NoSeat,
}

/// What a heartbeat did.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeartbeatOutcome {
    /// The lease lives on: its expiry moved a TTL ahead (a borrowed lease's stays as it is).
    Extended(Lease),
    /// The lease timed out; the client must check out again.
    Expired,
    /// The lease was revoked by an administrator.
    Revoked,
    /// No such lease on this license (or it was checked in).
    Unknown,
}

/// Floating-seat leases. Every operation is atomic on one license's pool; expiry is judged by
/// the store's own clock (Redis server time, or the embedded server's clock), and an expired
/// lease never counts, whether or not anything has swept it yet.
///
/// A lease holds a seat (its group): several leases share one under a sharing policy, and the
/// seat's cost is charged when the seat is opened and freed when its last lease goes.
#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Checks a seat out as `command` says, atomically against the pool (see [`CheckoutOutcome`]).
    async fn checkout(&self, command: &CheckoutCommand) -> Result<CheckoutOutcome, StoreError>;
    /// Keeps a lease alive, by its store's clock, never past `not_after` (the license's end of
    /// use: its expiry, or the end of its grace period), as a checkout's `not_after` caps it.
    async fn heartbeat(
        &self,
        license_id: &str,
        lease_id: &str,
        not_after: Option<Millis>,
    ) -> Result<HeartbeatOutcome, StoreError>;
    /// Checks a lease in: frees it at once, or with `linger_ms` > 0 keeps its seat for the same
    /// user, host and feature that long (a borrowed lease is always freed at once). `None` when
    /// the lease was already gone or already lingering (a retried checkin).
    async fn checkin(&self, license_id: &str, lease_id: &str, linger_ms: i64) -> Result<Option<Released>, StoreError>;
    /// Removes the lease and raises the license's fence; `None` when there was no such lease.
    async fn revoke(&self, license_id: &str, lease_id: &str) -> Result<Option<(i64, Released)>, StoreError>;
    /// Live leases (lingering ones included), earliest expiry first.
    async fn list(&self, license_id: &str) -> Result<Vec<Lease>, StoreError>;
    /// Removes the expired leases of licenses whose earliest expiry has passed, and returns them
    /// so they can be recorded. Its cost grows with the expired leases, not with all leases.
    async fn sweep_expired(&self, max: usize) -> Result<Vec<Released>, StoreError>;
    /// Licenses that hold leases (or held them until a moment ago), at most `max`: what metrics
    /// report seats for. Its cost grows with those licenses, not with all licenses.
    async fn licenses_with_leases(&self, max: usize) -> Result<Vec<String>, StoreError>;
    /// The store's current time (Redis TIME for Redis).
    async fn now(&self) -> Result<Millis, StoreError>;
    /// Puts back a lease the store lost, while it is recovering from the loss. Durable stores
    /// (SQL) never lose leases, so they never re-establish one.
    async fn reestablish(&self, _lease: &LostLease) -> Result<ReestablishOutcome, StoreError> {
        Ok(ReestablishOutcome::NotRecovering)
    }
    /// Until when new seats are held back after the store lost its leases; `None` when they are
    /// not (durable stores never are).
    async fn recovering_until(&self) -> Result<Option<Millis>, StoreError> {
        Ok(None)
    }
    /// Ends a recovery early, so new seats are handed out at once (an operator's decision: a
    /// forgotten lease that is still held may then share its seat). Returns until when the
    /// recovery would have lasted; `None` when there was none.
    async fn end_recovery(&self) -> Result<Option<Millis>, StoreError> {
        Ok(None)
    }
}

/// A record that outlives the lease store (kept in the SQL store) of the latest expiry any lease
/// holder has been told: when the lease store loses its leases, no holder believes it holds a
/// seat past it, so that is when new seats may be handed out again.
#[async_trait]
pub trait ExpiryHorizon: Send + Sync + 'static {
    /// Moves the horizon to `at_least` unless it is later already; returns the horizon after.
    async fn raise(&self, at_least: Millis) -> Result<Millis, StoreError>;
    /// The horizon; `None` when none was ever recorded.
    async fn read(&self) -> Result<Option<Millis>, StoreError>;
}

/// The usage log: appended in batches by a background writer, read by reports.
#[async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// Appends events to the log.
    async fn append_usage(&self, events: &[UsageEvent]) -> Result<(), StoreError>;
    /// Every event of a license before `until`, in the order they happened.
    async fn usage_events(&self, license_id: &str, until: Millis) -> Result<Vec<UsageEvent>, StoreError>;
}

/// Why a reset token cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResetTokenError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such token.
    #[error("this reset token is not valid")]
    Unknown,
    /// It was not used in time.
    #[error("this reset token has expired; request a new one")]
    Expired,
    /// It was used once already.
    #[error("this reset token was used already; request a new one")]
    Used,
}

/// The customer portal's own state: sessions, reset tokens, receipts.
#[async_trait]
pub trait PortalStore: Send + Sync + 'static {
    /// Stores a portal session (by the keyed digest of its token) until `expires_at` (Unix ms).
    async fn create_session(
        &self,
        digest: &str,
        customer_id: &str,
        now: Millis,
        expires_at: Millis,
    ) -> Result<(), StoreError>;
    /// The customer of a live session (not expired, not revoked).
    async fn session_customer(&self, digest: &str, now: Millis) -> Result<Option<String>, StoreError>;
    /// Ends a session at once (a logout).
    async fn revoke_session(&self, digest: &str, now: Millis) -> Result<(), StoreError>;
    /// Stores a password-reset token (by its keyed digest), usable once until `expires_at` (Unix ms).
    async fn create_reset_token(
        &self,
        digest: &str,
        customer_id: &str,
        now: Millis,
        expires_at: Millis,
    ) -> Result<(), StoreError>;
    /// Atomically: marks the token used (once), sets the password hash and ends every session of
    /// the account. Returns the customer ID.
    async fn use_reset_token(&self, digest: &str, password_hash: &str, now: Millis) -> Result<String, ResetTokenError>;
    /// Atomically, with the old license locked: retires concurrent license `old_id` and issues
    /// its seats again as the licenses `parts` describe ([`crate::change::resplit`] decides).
    /// Returns the retired license and the new ones.
    async fn return_and_resplit(
        &self,
        old_id: &str,
        parts: &[crate::change::SplitPart],
        now: Millis,
        audit: AuditRecord,
    ) -> Result<(License, Vec<License>), UpdateError>;
    /// Receipts of a customer, newest first.
    async fn list_receipts(&self, customer_id: &str) -> Result<Vec<Receipt>, StoreError>;
    /// Replaces a customer's contact details and appends `audit`, atomically; returns the
    /// customer as updated. [`StoreError::AlreadyExists`] when another account has the email.
    async fn update_contact_details(
        &self,
        customer_id: &str,
        details: &ContactDetails,
        audit: AuditRecord,
    ) -> Result<Customer, StoreError>;
    /// Atomically: replaces the password hash, if it is still `verified_hash` (the one the
    /// current password was checked against; [`StoreError::Conflict`] otherwise), ends every
    /// session of the account except the one whose digest is `keep_session`, and appends `audit`.
    async fn change_password(
        &self,
        customer_id: &str,
        verified_hash: &str,
        new_hash: &str,
        keep_session: &str,
        now: Millis,
        audit: AuditRecord,
    ) -> Result<(), StoreError>;
}

/// Why a use of a meter was not counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeterStoreError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No license with this ID.
    #[error("license {0} not found")]
    LicenseNotFound(String),
    /// The use was refused and nothing was counted.
    #[error(transparent)]
    Refused(#[from] crate::meter::UseRefused),
}

/// Metered features: uses counted per meter and period.
#[async_trait]
pub trait MeterStore: Send + Sync + 'static {
    /// Counts a use atomically: with the license row locked, a use already recorded under its
    /// idempotency key is answered as it was (counted once, `replayed`); otherwise `usable` is
    /// checked, the meter looked up on the license, and the use counted only if the period's
    /// count stays within the meter's limit plus overage. A refusal changes nothing.
    async fn record_use(
        &self,
        command: &crate::meter::RecordUse,
        usable: &UsableCheck,
    ) -> Result<crate::meter::UseRecorded, MeterStoreError>;
    /// The current period of each of the license's meters at `now` (0 used when nothing was
    /// counted in it yet), in the license's order of meters.
    async fn current_meter_usage(
        &self,
        license: &License,
        now: Millis,
    ) -> Result<Vec<crate::meter::MeterUsage>, StoreError>;
    /// Every period of every meter the license ever counted, by meter then period, each with
    /// the limit, overage and reset of its latest use (so removed meters stay reported).
    async fn meter_history(&self, license_id: &str) -> Result<Vec<crate::meter::MeterUsage>, StoreError>;
}
