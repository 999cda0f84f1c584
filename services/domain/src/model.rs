//! Products, customers, licenses and the audit log, as the services and stores see them.

use crate::clock::Millis;
use serde::{Deserialize, Serialize};

/// How a license may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LicenseKind {
    /// Activated on a number of machines (fingerprints), each activation held until returned.
    NodeLocked,
    /// Floating seats leased by running clients and kept alive by heartbeats.
    Concurrent,
    /// Validated by license key alone, no activation.
    Cloud,
    /// Activated by a customer's on-premises license server (its seats: how many servers),
    /// which serves what the license's grants allow; products never use it directly.
    Server,
}

impl LicenseKind {
    /// The stored and displayed name (`node_locked`, `concurrent`, `cloud`, `server`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NodeLocked => "node_locked",
            Self::Concurrent => "concurrent",
            Self::Cloud => "cloud",
            Self::Server => "server",
        }
    }
    /// The kind named by [`Self::as_str`]'s text, or `None`.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::NodeLocked, Self::Concurrent, Self::Cloud, Self::Server].into_iter().find(|k| k.as_str() == s)
    }
}

/// Lifecycle state set by the vendor (expiry is a date, not a status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LicenseStatus {
    /// Usable (within its dates).
    Active,
    /// Temporarily blocked by the vendor; reinstating restores it.
    Suspended,
    /// Permanently retired (returned, or replaced by a new license).
    Retired,
}

impl LicenseStatus {
    /// The stored and displayed name (`active`, `suspended`, `retired`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Retired => "retired",
        }
    }
    /// The status named by [`Self::as_str`]'s text, or `None`.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Active, Self::Suspended, Self::Retired].into_iter().find(|k| k.as_str() == s)
    }
}

/// A module (plugin, feature) of a product that a license may include.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Module {
    /// Code licenses and seat checkouts name it by; unique within the product.
    pub code: String,
    /// Display name.
    pub name: String,
}

/// What a license grants of one of the modules it includes beyond the module itself: a value
/// the product reads (e.g. `4096` for `max-resolution`) and an expiry of its own. Past that
/// expiry the module is no longer licensed, while the rest of the license goes on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleEntitlement {
    /// The value the product reads; at most [`MAX_ENTITLEMENT_VALUE_CHARS`] characters without
    /// control characters. `None`: the module carries no value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// When the module stops being licensed (Unix ms); `None`: with the license.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Millis>,
}

/// Longest value of a module entitlement, in characters.
pub const MAX_ENTITLEMENT_VALUE_CHARS: usize = 256;

/// A released version of a product; the upgrade period is judged against its release date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductVersion {
    /// `MAJOR.MINOR[.PATCH]`.
    pub version: String,
    /// Release instant (Unix ms).
    pub released_at: Millis,
}

/// A product the vendor licenses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// Vendor-chosen code, e.g. `cad-pro`; unique and immutable.
    pub code: String,
    /// Display name.
    pub name: String,
    /// Modules a license of the product may include.
    pub modules: Vec<Module>,
    /// Released versions, for upgrade-period checks.
    pub versions: Vec<ProductVersion>,
    /// When it was created (Unix ms).
    pub created_at: Millis,
}

impl Product {
    /// Whether the product has a module with this code.
    pub fn has_module(&self, code: &str) -> bool {
        self.modules.iter().any(|m| m.code == code)
    }
}

/// A company licenses are issued to; also a portal account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    /// Customer ID (`cus_…`).
    pub customer_id: String,
    /// Company name, shown as the licensee unless a license names another.
    pub company_name: String,
    /// Lowercased; the portal login and where password-reset mail goes.
    pub contact_email: String,
    /// The person to contact at the company; may be empty.
    pub contact_name: String,
    /// A phone number as the customer writes it; may be empty.
    pub phone: String,
    /// When it was created (Unix ms).
    pub created_at: Millis,
}

/// What a customer may change of its own contact details in the portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactDetails {
    /// The person to contact at the company; may be empty.
    pub contact_name: String,
    /// Lowercased; also a login and where password reset mail goes.
    pub contact_email: String,
    /// A phone number as the customer writes it; may be empty.
    pub phone: String,
}

/// Allowed deactivations that means "no limit".
pub const UNLIMITED: i32 = -1;

/// The longest grace period a license may have: 365 days.
pub const MAX_GRACE_PERIOD: Millis = 365 * crate::clock::DAY;

/// A license as stored: what it allows, and what of it is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct License {
    /// License ID (`lic_…`).
    pub license_id: String,
    /// The licensed product's code.
    pub product_code: String,
    /// The customer the license was issued to.
    pub customer_id: String,
    /// Node-locked, concurrent or cloud; fixed at issue.
    pub kind: LicenseKind,
    /// Active, suspended or retired.
    pub status: LicenseStatus,
    /// Allowed activations (node-locked) or seats (concurrent).
    pub seats: i32,
    /// [`UNLIMITED`] or the number of returns allowed from the product.
    pub allowed_deactivations: i32,
    /// Activations currently held (node-locked).
    pub activations_used: i32,
    /// Deactivations already spent (see [`Self::deactivations_left`]).
    pub deactivations_used: i32,
    /// Codes of the product's modules the license includes.
    pub modules: Vec<String>,
    /// Values and own expiries of some of `modules`, by module code (a module without an entry
    /// has neither). Every key is one of `modules`.
    pub module_entitlements: std::collections::BTreeMap<String, ModuleEntitlement>,
    /// Valid from this instant (Unix ms); the issue time unless the vendor set a later start.
    pub valid_from: Millis,
    /// Expiry (Unix ms); `None` is perpetual.
    pub expires_at: Option<Millis>,
    /// How long after its expiry the license stays usable, flagged as in its grace period
    /// (ms; 0: none). Only an expiry starts one: on a perpetual license it waits for a renewal
    /// to set an expiry. 0 to [`MAX_GRACE_PERIOD`].
    pub grace_period_ms: Millis,
    /// Versions released before this instant (Unix ms) may run; `None` means every version.
    pub upgrades_until: Option<Millis>,
    /// The portal account the license is associated with; `None` when not associated.
    pub associated_customer_id: Option<String>,
    /// Whether a deactivation made from the portal counts against `allowed_deactivations`.
    pub portal_deactivation_counts: bool,
    /// When this license replaced a retired one (a returned concurrent license), the old License ID.
    pub replaces_license_id: Option<String>,
    /// Free-form note kept for the vendor.
    pub notes: String,
    /// The name the license is shown as licensed to; empty means the customer's company name.
    pub licensee_name: String,
    /// How the seats of a concurrent license are shared, reserved and limited.
    pub seat_policy: crate::seat_policy::SeatPolicy,
    /// Metered features: how much of each may be used per period.
    pub meters: Vec<crate::meter::Meter>,
    /// The policy it was issued from (or last had applied), if any.
    pub policy_id: Option<String>,
    /// The revision of that policy it got; 0 without one.
    pub policy_revision: i64,
    /// When its validity and upgrade period count from its first use: those terms, and when
    /// it was first used (until then it has no expiry).
    pub first_use: Option<crate::policy::FirstUse>,
    /// Node-locked: an activated machine not seen (activation, certificate refresh or heartbeat)
    /// for this long (ms) is deactivated by the cull, freeing its activation without spending a
    /// deactivation. `None`: machines need not check in.
    pub heartbeat_timeout_ms: Option<Millis>,
    /// A server license: what the on-premises server it activates may serve. Empty for every
    /// other kind.
    pub server_grants: Vec<crate::server_license::ServerGrant>,
    /// When it was issued (Unix ms).
    pub created_at: Millis,
    /// When it last changed (Unix ms).
    pub updated_at: Millis,
}

impl License {
    /// Whether it can no longer be used at `now` (Unix ms) for its dates: past its expiry and
    /// past its grace period, if any. The end instant itself counts as expired.
    pub fn is_expired(&self, now: Millis) -> bool {
        self.grace_ends_at().is_some_and(|end| now >= end)
    }

    /// When its grace period ends (Unix ms): its expiry plus the grace period, the latest
    /// instant anything of it may be used until (certificates, leases). Its expiry when it has
    /// no grace period; `None` when perpetual.
    pub fn grace_ends_at(&self) -> Option<Millis> {
        self.expires_at.map(|e| e.saturating_add(self.grace_period_ms.max(0)))
    }

    /// Whether at `now` (Unix ms) it is past its expiry but within its grace period: usable,
    /// flagged so the product can warn. `Some(grace end)` then, `None` otherwise.
    pub fn in_grace(&self, now: Millis) -> Option<Millis> {
        let expires = self.expires_at?;
        let end = self.grace_ends_at()?;
        (now >= expires && now < end).then_some(end)
    }

    /// When the module `code` stopped being licensed, if its own expiry passed at `now` (Unix
    /// ms); the expiry instant itself counts as expired. `None` when it has none or it is ahead.
    pub fn module_expired_at(&self, code: &str, now: Millis) -> Option<Millis> {
        self.module_entitlements.get(code).and_then(|e| e.expires_at).filter(|&end| now >= end)
    }

    /// Whether the license includes the module `code` and its own expiry (if any) has not
    /// passed at `now`: a refusal naming the module (and its expiry) otherwise. Validation, seat
    /// checkouts and certificates all decide by this.
    pub fn module_licensed(&self, code: &str, now: Millis) -> Result<(), Refusal> {
        let refuse = |message: String| Err(Refusal { reason: "MODULE_NOT_LICENSED", message });
        if !self.modules.iter().any(|m| m == code) {
            return refuse(format!("module {} is not licensed", crate::text::quoted(code)));
        }
        if let Some(end) = self.module_expired_at(code, now) {
            return refuse(format!(
                "module {} of license {} expired at {}; renew it with your vendor",
                crate::text::quoted(code),
                self.license_id,
                crate::clock::rfc3339(end)
            ));
        }
        Ok(())
    }

    /// The modules licensed at `now` (those whose own expiry has not passed), in the license's
    /// order, each with its entitlement (default when it has none).
    pub fn modules_licensed_at(&self, now: Millis) -> Vec<(String, ModuleEntitlement)> {
        self.modules
            .iter()
            .filter(|m| self.module_expired_at(m, now).is_none())
            .map(|m| (m.clone(), self.module_entitlements.get(m).cloned().unwrap_or_default()))
            .collect()
    }

    /// Whether the license is one of `customer_id`'s in the portal: associated with that account.
    /// Another account's license is as good as unknown to it.
    pub fn belongs_to_account(&self, customer_id: &str) -> bool {
        self.associated_customer_id.as_deref() == Some(customer_id)
    }

    /// When `activation` is culled unless seen again: its last sighting plus the heartbeat
    /// timeout; `None` when the license requires no heartbeats.
    pub fn heartbeat_deadline(&self, activation: &Activation) -> Option<Millis> {
        self.heartbeat_timeout_ms.map(|timeout| activation.last_seen_at.saturating_add(timeout))
    }

    /// Returns still allowed from the product: [`UNLIMITED`], or zero or more.
    pub fn deactivations_left(&self) -> i32 {
        if self.allowed_deactivations == UNLIMITED {
            UNLIMITED
        } else {
            (self.allowed_deactivations - self.deactivations_used).max(0)
        }
    }
}

/// A license about to be stored, with the keyed digests of its secrets.
#[derive(Debug, Clone)]
pub struct NewLicense {
    /// The license to store.
    pub license: License,
    /// Keyed digest of its license key (`purpose::LICENSE_KEY`); the key itself is never stored.
    pub key_digest: String,
    /// Random salt from which the activation password is derived with the server key
    /// ([`crate::secrets::KeyedHasher::activation_password`]): the portal can show the password
    /// again, yet the database alone does not reveal it.
    pub activation_password_salt: String,
}

/// One entry to append to the audit log, written in the same transaction as the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Who acted: `admin:<token id>`, `customer:<customer id>`, `product` or `system`.
    pub actor: String,
    /// What happened, e.g. `license.issued`, `portal.login_failed`.
    pub action: String,
    /// The License ID, customer ID or product code it concerns.
    pub subject: String,
    /// Details as a JSON object.
    pub details: serde_json::Value,
}

impl AuditRecord {
    /// A record with empty details.
    pub fn new(actor: impl Into<String>, action: impl Into<String>, subject: impl Into<String>) -> Self {
        Self { actor: actor.into(), action: action.into(), subject: subject.into(), details: serde_json::json!({}) }
    }
    /// The record with `details` (a JSON object).
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// One entry of the append-only audit log, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Its place in the log, given by the store; only grows.
    pub sequence: i64,
    /// When it was written (Unix ms).
    pub occurred_at: Millis,
    /// Who acted (see [`AuditRecord::actor`]).
    pub actor: String,
    /// What happened, e.g. `license.suspended`.
    pub action: String,
    /// The License ID, customer ID or product code it concerns.
    pub subject: String,
    /// Details as JSON object text.
    pub details_json: String,
}

/// Keyset paging: items after `after` (an ID or sequence in the list's order), at most `limit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// Start after this item (its ID or sequence, from the previous page); `None` for the first page.
    pub after: Option<String>,
    /// At most this many items; 0 means [`DEFAULT_PAGE_SIZE`].
    pub limit: u32,
}

/// Page size when a request names none.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Largest page size a request may ask for.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Which licenses a list returns; each set field narrows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LicenseFilter {
    /// Issued to this customer.
    pub customer_id: Option<String>,
    /// Of this product.
    pub product_code: Option<String>,
    /// In this status.
    pub status: Option<LicenseStatus>,
    /// Substring of License ID, customer ID or notes.
    pub text: Option<String>,
    /// Exact keyed digest of a license key.
    pub key_digest: Option<String>,
    /// Licenses associated with this account (the portal's list).
    pub associated_customer_id: Option<String>,
}

/// A node-locked activation (an installation on one machine).
#[derive(Debug, Clone, PartialEq)]
pub struct Activation {
    /// The Installation ID.
    pub installation_id: String,
    /// License ID of the license it uses.
    pub license_id: String,
    /// Keyed digests of the fingerprint components last presented.
    pub fingerprint: Vec<crate::fingerprint::ComponentDigest>,
    /// Human-readable machine name, shown in the portal.
    pub machine_name: String,
    /// The machine's platform as the product reports it, e.g. `linux-x86_64`.
    pub platform: String,
    /// The product version running, `MAJOR.MINOR[.PATCH]`.
    pub product_version: String,
    /// When it was activated (Unix ms).
    pub activated_at: Millis,
    /// When this machine last activated, refreshed its certificate or sent a heartbeat (Unix ms);
    /// validations do not move it.
    pub last_seen_at: Millis,
    /// When it was deactivated (Unix ms); `None` while it holds an activation.
    pub deactivated_at: Option<Millis>,
    /// Made through an offline activation request.
    pub offline: bool,
    /// A server license's activation: the serial of the latest server license file signed for
    /// it (only that file's return frees it); 0 for every other activation.
    pub server_serial: i64,
}

/// Where a page of a license's installations (newest first) ended: the last one's activation
/// time and Installation ID. Clients see it as an opaque page token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallationCursor {
    /// Activation time of the last installation on the page (Unix ms).
    pub activated_at: Millis,
    /// Installation ID of the last installation on the page.
    pub installation_id: String,
}

impl InstallationCursor {
    /// The cursor after `activation` in a page.
    pub fn after(activation: &Activation) -> Self {
        Self { activated_at: activation.activated_at, installation_id: activation.installation_id.clone() }
    }

    /// The page token: `<activated_at>.<installation_id>`.
    pub fn token(&self) -> String {
        format!("{}.{}", self.activated_at, self.installation_id)
    }

    /// A token made by [`Self::token`], or `None` for anything else.
    pub fn parse(token: &str) -> Option<Self> {
        let (at, id) = token.split_once('.')?;
        let activated_at = at.parse().ok()?;
        crate::ids::is_well_formed(crate::ids::INSTALLATION, id)
            .then(|| Self { activated_at, installation_id: id.to_owned() })
    }
}

/// One line of a license's activation history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivationEvent {
    /// Its place in the history, given by the store (0 until stored).
    pub sequence: i64,
    /// When it happened (Unix ms).
    pub occurred_at: Millis,
    /// "activate", "deactivate", "refresh", "offline_activate", "offline_deactivate" (an
    /// offline deactivation request), "portal_deactivate", "support_return", "server_return",
    /// "cull" (freed by the server: no heartbeat within the license's timeout).
    pub action: String,
    /// Empty when a refused call named no installation (a refused activation).
    pub installation_id: String,
    /// The machine name the call presented.
    pub machine_name: String,
    /// [`crate::fingerprint::summary`] of the fingerprint presented.
    pub fingerprint_digest: String,
    /// "ok", "ok: already activated", "ok: not counted", or the stable reason of a refusal
    /// (e.g. "ACTIVATION_LIMIT_REACHED", "WRONG_ACTIVATION_PASSWORD", "VERSION_NOT_COVERED").
    pub outcome: String,
}

impl License {
    /// Whether the license may be used now for `kind` of use; the first failure wins.
    pub fn usability(&self, now: Millis, kind: LicenseKind) -> Result<(), Refusal> {
        let refuse = |reason, message: String| Err(Refusal { reason, message });
        match self.status {
            LicenseStatus::Retired => return refuse("RETIRED", format!("license {} is retired", self.license_id)),
            LicenseStatus::Suspended => {
                return refuse("SUSPENDED", format!("license {} is suspended; contact your vendor", self.license_id))
            }
            LicenseStatus::Active => {}
        }
        // A license is valid from the moment it is issued, on every service whatever its clock
        // (the Seat service judges by Redis's): only a start the vendor set after the issue is
        // judged by the clock.
        if self.valid_from > self.created_at && now < self.valid_from {
            return refuse(
                "NOT_YET_VALID",
                format!("license {} is not valid before {}", self.license_id, crate::clock::rfc3339(self.valid_from)),
            );
        }
        if self.is_expired(now) {
            let expired = crate::clock::rfc3339(self.expires_at.unwrap_or_default());
            let message = match self.grace_ends_at() {
                Some(end) if self.grace_period_ms > 0 => format!(
                    "license {} expired at {expired} and its grace period ended at {}; renew it with your vendor",
                    self.license_id,
                    crate::clock::rfc3339(end)
                ),
                _ => format!("license {} expired at {expired}; renew it with your vendor", self.license_id),
            };
            return refuse("EXPIRED", message);
        }
        if self.kind != kind {
            return refuse(
                "WRONG_KIND",
                format!("license {} is a {} license, not {}", self.license_id, self.kind.as_str(), kind.as_str()),
            );
        }
        Ok(())
    }

    /// Whether a version of the product may run under the license's upgrade period: one
    /// released (`released_at`) before the period ended; with an upgrade period, an unreleased
    /// version (`None`) may not. `version` names it in the refusal. Activation and validation
    /// both decide by this, so they refuse alike.
    pub fn covers_version(&self, version: &str, released_at: Option<Millis>) -> Result<(), Refusal> {
        let Some(until) = self.upgrades_until else { return Ok(()) };
        let refuse = |message: String| Err(Refusal { reason: "VERSION_NOT_COVERED", message });
        match released_at {
            None => refuse(format!("version {version} is not a released version of {}", self.product_code)),
            Some(released) if released > until => refuse(format!(
                "version {version} was released after the upgrade period ended at {}; renew maintenance to run it",
                crate::clock::rfc3339(until)
            )),
            Some(_) => Ok(()),
        }
    }
}

/// Why a license may not be used now ([`License::usability`]; also checked inside the store's
/// activation transaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Stable UPPER_SNAKE reason.
    pub reason: &'static str,
    /// Why, for people.
    pub message: String,
}

/// A floating-seat lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Lease ID (`lse_…`).
    pub lease_id: String,
    /// License ID of the license whose seat it holds.
    pub license_id: String,
    /// Stable per running client process; a checkout repeating it renews the live lease.
    pub client_instance_id: String,
    /// User name the client reported.
    pub user: String,
    /// Host name the client reported.
    pub host: String,
    /// The module checked out; empty means the product itself.
    pub feature: String,
    /// When it was checked out (Unix ms).
    pub checked_out_at: Millis,
    /// Last heartbeat (Unix ms); the checkout counts as the first.
    pub last_heartbeat_at: Millis,
    /// When it lapses without a heartbeat (Unix ms); a borrowed lease's end.
    pub expires_at: Millis,
    /// Per-license fencing number given at checkout; only grows.
    pub fence: i64,
    /// Seats of the pool the lease's seat holds (token-based features cost more than one).
    pub seats_held: i32,
    /// Time to live granted, in ms: each heartbeat moves `expires_at` this far ahead.
    pub ttl_ms: i64,
    /// The seat this lease holds: its own lease ID, or that of the lease whose seat it shares.
    pub group_id: String,
    /// Processes holding this seat (more than one under a sharing policy).
    pub shared_processes: i32,
    /// Borrowed for offline use: lives until `expires_at` without heartbeats.
    pub borrowed: bool,
    /// The seat was taken beyond the license's seats.
    pub overdraft: bool,
    /// Checked in, but the seat is held for the linger period.
    pub lingering: bool,
    /// The reservation the seat is charged to ([`crate::seat_policy::Principal::key`]), or "".
    pub bucket: String,
    /// Principal keys the seat counts against for caps.
    pub principals: Vec<String>,
    /// Key under which later checkouts may share this seat, or "".
    pub share_key: String,
}

impl Lease {
    /// How often its holder should heartbeat: a third of the TTL, so two heartbeats may be lost
    /// before the lease expires.
    pub fn heartbeat_interval_ms(&self) -> i64 {
        (self.ttl_ms / 3).max(1)
    }
}

/// Seats held by `leases`: each seat once, however many processes share it (its group).
pub fn seats_held<'a>(leases: impl IntoIterator<Item = &'a Lease>) -> i32 {
    let mut seen = std::collections::HashSet::new();
    leases.into_iter().filter(|l| seen.insert(l.group_id.as_str())).map(|l| l.seats_held).sum()
}

/// A lease taken out of its pool, with the seats that became free (0 when other processes
/// still share the seat, or when it lingers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// The lease as it was when released.
    pub lease: Lease,
    /// Seats returned to the pool.
    pub seats_freed: i32,
    /// When, by the store's clock: the checkin or revocation, or the expiry.
    pub at: Millis,
}

/// What the usage log records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UsageKind {
    /// A checkout granted a new lease (a renewal by the same client instance is not recorded).
    Checkout,
    /// A lease was checked in by its client.
    Checkin,
    /// A lease lapsed without heartbeats.
    Expired,
    /// An administrator or the customer revoked a lease.
    Revoked,
    /// A checkout was refused (see [`UsageEvent::reason`]).
    Denied,
    /// A lingering seat was finally freed.
    LingerEnded,
    /// Events lost because the usage queue was full; `count` says how many.
    Dropped,
}

impl UsageKind {
    /// Every kind, in the order reports list them.
    pub const ALL: [Self; 7] =
        [Self::Checkout, Self::Checkin, Self::Expired, Self::Revoked, Self::Denied, Self::LingerEnded, Self::Dropped];
    /// The stored name (`checkout`, `linger_ended`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Checkout => "checkout",
            Self::Checkin => "checkin",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::Denied => "denied",
            Self::LingerEnded => "linger_ended",
            Self::Dropped => "dropped",
        }
    }
    /// The kind named by [`Self::as_str`]'s text, or `None`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One line of a license's usage log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEvent {
    /// License ID.
    pub license_id: String,
    /// When it happened (Unix ms).
    pub occurred_at: Millis,
    /// What happened.
    pub kind: UsageKind,
    /// The lease concerned; empty for a denial.
    pub lease_id: String,
    /// The seat (see [`Lease::group_id`]); seat hours are counted per seat.
    pub group_id: String,
    /// User name of the lease or checkout.
    pub user: String,
    /// Host name of the lease or checkout.
    pub host: String,
    /// The module; empty means the product itself.
    pub feature: String,
    /// Seats taken (positive) or freed (negative) by this event.
    pub seats_delta: i32,
    /// The seat was beyond the license's seats.
    pub overdraft: bool,
    /// The lease was borrowed for offline use.
    pub borrowed: bool,
    /// Why a checkout was denied.
    pub reason: String,
    /// Events this line stands for (more than one only for [`UsageKind::Dropped`]).
    pub count: i64,
}

/// A payment recorded with an admin action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Receipt ID (`rcp_…`).
    pub receipt_id: String,
    /// License ID the payment was for.
    pub license_id: String,
    /// The customer who paid.
    pub customer_id: String,
    /// "issue", "renewal" or "upgrade".
    pub kind: String,
    /// Minor units (cents).
    pub amount_minor: i64,
    /// ISO 4217.
    pub currency: String,
    /// When it was paid (Unix ms).
    pub paid_at: Millis,
    /// 0 for a one-off payment.
    pub recurring_months: i32,
}

impl Receipt {
    /// The next renewal date of a recurring payment: `recurring_months` calendar months after
    /// the payment (a payment on 31 January renews on the last day of February).
    pub fn next_renewal_at(&self) -> Option<Millis> {
        if self.recurring_months <= 0 {
            return None;
        }
        crate::clock::add_months(self.paid_at, self.recurring_months)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn license(created_at: Millis, valid_from: Millis) -> License {
        License {
            license_id: "lic_X".into(),
            product_code: "p".into(),
            customer_id: "cus_X".into(),
            kind: LicenseKind::Concurrent,
            status: LicenseStatus::Active,
            seats: 1,
            allowed_deactivations: UNLIMITED,
            activations_used: 0,
            deactivations_used: 0,
            modules: vec![],
            module_entitlements: Default::default(),
            valid_from,
            expires_at: None,
            grace_period_ms: 0,
            upgrades_until: None,
            associated_customer_id: None,
            portal_deactivation_counts: true,
            replaces_license_id: None,
            notes: String::new(),
            licensee_name: String::new(),
            seat_policy: Default::default(),
            meters: Vec::new(),
            heartbeat_timeout_ms: None,
            policy_id: None,
            policy_revision: 0,
            first_use: None,
            server_grants: Vec::new(),
            created_at,
            updated_at: created_at,
        }
    }

    #[test]
    fn recurring_payments_renew_after_calendar_months() {
        let at = |text: &str| crate::clock::parse_instant(text).unwrap();
        let receipt = |paid: &str, months| Receipt {
            receipt_id: "rcp_X".into(),
            license_id: "lic_X".into(),
            customer_id: "cus_X".into(),
            kind: "renewal".into(),
            amount_minor: 100,
            currency: "EUR".into(),
            paid_at: at(paid),
            recurring_months: months,
        };
        assert_eq!(receipt("2026-12-02", 12).next_renewal_at(), Some(at("2027-12-02")));
        assert_eq!(receipt("2027-01-31", 1).next_renewal_at(), Some(at("2027-02-28")));
        assert_eq!(receipt("2026-12-02", 0).next_renewal_at(), None);
    }

    #[test]
    fn a_license_is_valid_from_its_issue_whatever_the_clock_and_from_a_later_start_by_it() {
        // Issued "valid now" at 1,000 by the issuing service's clock; another service's clock
        // reads 990: still valid.
        assert!(license(1_000, 1_000).usability(990, LicenseKind::Concurrent).is_ok());
        // A start the vendor set after the issue is judged by the clock.
        let scheduled = license(1_000, 5_000);
        assert_eq!(scheduled.usability(4_999, LicenseKind::Concurrent).unwrap_err().reason, "NOT_YET_VALID");
        assert!(scheduled.usability(5_000, LicenseKind::Concurrent).is_ok());
    }

    #[test]
    fn a_license_in_its_grace_period_is_usable_and_flagged_until_the_grace_end() {
        let expiring = License { expires_at: Some(10_000), grace_period_ms: 5_000, ..license(0, 0) };
        assert_eq!(expiring.grace_ends_at(), Some(15_000));
        assert_eq!(expiring.in_grace(9_999), None, "not yet expired");
        assert!(expiring.usability(9_999, LicenseKind::Concurrent).is_ok());
        assert_eq!(expiring.in_grace(10_000), Some(15_000), "the expiry instant starts the grace period");
        assert!(expiring.usability(14_999, LicenseKind::Concurrent).is_ok());
        let past = expiring.usability(15_000, LicenseKind::Concurrent).unwrap_err();
        assert_eq!(past.reason, "EXPIRED");
        assert!(past.message.contains("grace period ended at"), "{}", past.message);
        assert_eq!(expiring.in_grace(15_000), None);
        let without = License { grace_period_ms: 0, ..expiring.clone() };
        assert_eq!(without.usability(10_000, LicenseKind::Concurrent).unwrap_err().reason, "EXPIRED");
        assert_eq!(without.in_grace(10_000), None);
        let perpetual = License { expires_at: None, ..expiring };
        assert_eq!((perpetual.grace_ends_at(), perpetual.in_grace(i64::MAX - 1)), (None, None));
    }

    #[test]
    fn an_installation_cursor_reads_back_only_its_own_tokens() {
        let cursor = InstallationCursor { activated_at: 1_700_000_000_123, installation_id: crate::ids::new_id("ins") };
        assert_eq!(InstallationCursor::parse(&cursor.token()), Some(cursor));
        for bad in ["", "x", "12", "12.", ".ins_0000000000000000", "12.lic_0000000000000000", "1x.ins_0000000000000000"]
        {
            assert_eq!(InstallationCursor::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn versions_released_after_the_upgrade_period_are_not_covered() {
        let license = License {
            product_code: "cad".into(),
            kind: LicenseKind::NodeLocked,
            upgrades_until: Some(1_000),
            ..license(0, 0)
        };
        assert_eq!(license.covers_version("1.0", Some(1_000)), Ok(()));
        let late = license.covers_version("2.0", Some(1_001)).unwrap_err();
        assert_eq!(late.reason, "VERSION_NOT_COVERED");
        assert!(late.message.contains("2.0") && late.message.contains("renew"), "{}", late.message);
        let unknown = license.covers_version("9.9", None).unwrap_err();
        assert!(unknown.message.contains("not a released version of cad"), "{}", unknown.message);
        let perpetual_upgrades = License { upgrades_until: None, ..license };
        assert_eq!(perpetual_upgrades.covers_version("9.9", None), Ok(()));
    }
}
