//! License policies (templates) per product: the terms a license is issued with, and time
//! counted from first use. A license records which policy and revision it got; changing a policy
//! changes no license until the vendor applies it (each license's change audited on its own).

use crate::change::{validate_allowed_deactivations, validate_grace_period, validate_heartbeat_timeout, ChangeError};
use crate::clock::{Millis, DAY};
use crate::meter::{validate_meters, Meter};
use crate::model::{License, LicenseKind, Product};
use crate::text::quoted;
use serde::{Deserialize, Serialize};

/// When a license's validity and upgrade period start counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TermsStart {
    /// At issue (or the license's `valid_from`).
    #[default]
    Issue,
    /// At the first activation (node-locked) or first checkout (concurrent).
    FirstUse,
}

impl TermsStart {
    /// The stored and displayed name (`issue`, `first_use`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issue => "issue",
            Self::FirstUse => "first_use",
        }
    }
}

/// What a policy gives each license issued from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LicenseTerms {
    /// How the license is used.
    pub kind: LicenseKind,
    /// Activations (node-locked) or seats (concurrent); 0 for cloud.
    pub seats: i32,
    /// Returns allowed from the product; -1 unlimited.
    pub allowed_deactivations: i32,
    /// Codes of the product's modules included.
    #[serde(default)]
    pub modules: Vec<String>,
    /// How long the license is valid from its start; `None` is perpetual.
    #[serde(default)]
    pub validity_ms: Option<Millis>,
    /// How long after its start released versions are covered; `None` covers every version.
    #[serde(default)]
    pub upgrade_period_ms: Option<Millis>,
    /// When validity and upgrade period start.
    #[serde(default)]
    pub start: TermsStart,
    /// Usable this long past the expiry, flagged as in grace; 0 for none.
    #[serde(default)]
    pub grace_period_ms: Millis,
    /// Node-locked: machines not seen for this long are deactivated; `None` for no heartbeats.
    #[serde(default)]
    pub heartbeat_timeout_ms: Option<Millis>,
    /// Metered features.
    #[serde(default)]
    pub meters: Vec<Meter>,
    /// A trial policy: licenses issued from it are trials started by machines without a key
    /// (see [`crate::trial`]).
    #[serde(default)]
    pub trial: bool,
}

/// Longest validity or upgrade period a policy may give: 100 years.
pub const MAX_TERM: Millis = 36_525 * DAY;

fn invalid(field: &'static str, message: impl Into<String>) -> ChangeError {
    ChangeError::Invalid { field, message: message.into() }
}

fn check_term(field: &'static str, term: Option<Millis>) -> Result<(), ChangeError> {
    match term {
        Some(t) if !(DAY..=MAX_TERM).contains(&t) => Err(invalid(
            field,
            format!("must be between 1 day and 36525 days (100 years), got {:.2} days", t as f64 / DAY as f64),
        )),
        _ => Ok(()),
    }
}

impl LicenseTerms {
    /// Checks the terms for `product`: each value in bounds, and no contradiction (heartbeats on a
    /// license that is not node-locked, seats on a cloud license, time from first use of a license
    /// that has no use to count from, or nothing to start).
    pub fn validate(&self, product: &Product) -> Result<(), ChangeError> {
        match self.kind {
            LicenseKind::Cloud if self.seats != 0 => {
                return Err(invalid("terms.seats", "cloud licenses have no seats; leave it 0"))
            }
            LicenseKind::Cloud => {}
            // A server license's grants are agreed per customer; a policy carries none.
            LicenseKind::Server => {
                return Err(invalid(
                    "terms.kind",
                    "server licenses are issued with their grants (IssueLicense server_grants), not from a policy",
                ))
            }
            _ => crate::change::validate_seats(self.seats).map_err(|e| rename(e, "terms.seats"))?,
        }
        validate_allowed_deactivations(self.allowed_deactivations)
            .map_err(|e| rename(e, "terms.allowed_deactivations"))?;
        crate::change::validate_modules(product, &self.modules).map_err(|e| rename(e, "terms.modules"))?;
        check_term("terms.validity", self.validity_ms)?;
        check_term("terms.upgrade_period", self.upgrade_period_ms)?;
        validate_grace_period(self.grace_period_ms).map_err(|e| rename(e, "terms.grace_period"))?;
        validate_heartbeat_timeout(self.kind, self.heartbeat_timeout_ms)
            .map_err(|e| rename(e, "terms.heartbeat_timeout"))?;
        validate_meters(&self.meters).map_err(|e| invalid("terms.meters", e.to_string()))?;
        crate::trial::validate_trial_terms(self)?;
        if self.start == TermsStart::FirstUse {
            if self.kind == LicenseKind::Cloud {
                return Err(invalid(
                    "terms.start",
                    "a cloud license is never activated or checked out: count its time from issue",
                ));
            }
            if self.validity_ms.is_none() && self.upgrade_period_ms.is_none() {
                return Err(invalid(
                    "terms.start",
                    "time from first use needs a validity or an upgrade period to count; set one, or start at issue",
                ));
            }
        }
        Ok(())
    }
}

/// The same error, naming `field` instead (a policy's fields are `terms.*`).
fn rename(e: ChangeError, field: &'static str) -> ChangeError {
    match e {
        ChangeError::Invalid { message, .. } => ChangeError::Invalid { field, message },
        other => other,
    }
}

/// A policy: named terms of a product that licenses are issued from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Policy ID (`pol_…`).
    pub policy_id: String,
    /// The product whose licenses it makes.
    pub product_code: String,
    /// Display name, unique within the product (e.g. "Annual, 3 seats").
    pub name: String,
    /// 1 at creation, raised by each change of its terms.
    pub revision: i64,
    /// What licenses issued from it get.
    pub terms: LicenseTerms,
    /// When it was created (Unix ms).
    pub created_at: Millis,
    /// When its terms last changed (Unix ms).
    pub updated_at: Millis,
}

/// Longest policy name, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// A policy name: 1 to [`MAX_NAME_CHARS`] characters, no control characters; trimmed.
pub fn validate_name(name: &str) -> Result<String, ChangeError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(invalid(
            "name",
            format!("must be 1 to {MAX_NAME_CHARS} characters without control characters, got {}", quoted(name)),
        ));
    }
    Ok(name.to_owned())
}

/// Time counted from first use: the terms still to start, and when they did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirstUse {
    /// How long the license is valid from its first use; `None` is perpetual.
    pub validity_ms: Option<Millis>,
    /// How long after its first use released versions are covered; `None` covers every version.
    pub upgrade_period_ms: Option<Millis>,
    /// When it was first used (Unix ms); `None` until then.
    pub started_at: Option<Millis>,
}

impl License {
    /// Whether its time counts from a first use that has not happened yet.
    pub fn awaits_first_use(&self) -> bool {
        self.first_use.as_ref().is_some_and(|f| f.started_at.is_none())
    }

    /// Starts the time of a license that counts from first use, at `now`: its expiry and the
    /// end of its upgrade period are set from then. `false` (nothing changed) when its time does
    /// not count from first use or has started already.
    pub fn start_first_use(&mut self, now: Millis) -> bool {
        let Some(first_use) = self.first_use.as_mut().filter(|f| f.started_at.is_none()) else { return false };
        first_use.started_at = Some(now);
        if let Some(validity) = first_use.validity_ms {
            self.expires_at = Some(now.saturating_add(validity));
        }
        if let Some(period) = first_use.upgrade_period_ms {
            self.upgrades_until = Some(now.saturating_add(period));
        }
        self.updated_at = now;
        true
    }

    /// Applies `terms` (of `policy` at `revision`) to the license as issued from it, keeping
    /// what it has used: seats, deactivations, modules, grace, heartbeats and meters are the
    /// terms'; validity and upgrade period count from the license's start (its first use, or
    /// `valid_from`), or stay to start at its first use.
    pub fn apply_terms(&mut self, policy_id: &str, revision: i64, terms: &LicenseTerms, now: Millis) {
        self.seats = terms.seats;
        self.allowed_deactivations = terms.allowed_deactivations;
        self.modules = terms.modules.clone();
        // A module the terms no longer include takes its value and own expiry along.
        self.module_entitlements.retain(|m, _| terms.modules.contains(m));
        self.grace_period_ms = terms.grace_period_ms;
        self.heartbeat_timeout_ms = terms.heartbeat_timeout_ms;
        self.meters = terms.meters.clone();
        let started = match (&self.first_use, terms.start) {
            (Some(FirstUse { started_at: Some(at), .. }), _) => Some(*at),
            (_, TermsStart::Issue) => Some(self.valid_from),
            (_, TermsStart::FirstUse) => None,
        };
        match started {
            Some(start) => {
                self.expires_at = terms.validity_ms.map(|v| start.saturating_add(v));
                self.upgrades_until = terms.upgrade_period_ms.map(|p| start.saturating_add(p));
            }
            None => {
                self.expires_at = None;
                self.upgrades_until = None;
            }
        }
        self.first_use = match terms.start {
            TermsStart::FirstUse => Some(FirstUse {
                validity_ms: terms.validity_ms,
                upgrade_period_ms: terms.upgrade_period_ms,
                started_at: started,
            }),
            TermsStart::Issue => None,
        };
        self.policy_id = Some(policy_id.to_owned());
        self.policy_revision = revision;
        self.updated_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LicenseStatus, Module, UNLIMITED};

    fn product() -> Product {
        Product {
            code: "cad".into(),
            name: "CAD".into(),
            modules: vec![Module { code: "render".into(), name: "Render".into() }],
            versions: vec![],
            created_at: 0,
        }
    }

    fn terms() -> LicenseTerms {
        LicenseTerms {
            kind: LicenseKind::NodeLocked,
            seats: 3,
            allowed_deactivations: 2,
            modules: vec!["render".into()],
            validity_ms: Some(365 * DAY),
            upgrade_period_ms: Some(365 * DAY),
            start: TermsStart::FirstUse,
            grace_period_ms: 14 * DAY,
            heartbeat_timeout_ms: None,
            meters: vec![],
            trial: false,
        }
    }

    #[test]
    fn contradictory_or_out_of_bounds_terms_name_their_field() {
        assert_eq!(terms().validate(&product()), Ok(()));
        let field = |t: LicenseTerms| match t.validate(&product()) {
            Err(ChangeError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(LicenseTerms { validity_ms: Some(-DAY), ..terms() }), "terms.validity");
        assert_eq!(field(LicenseTerms { upgrade_period_ms: Some(0), ..terms() }), "terms.upgrade_period");
        assert_eq!(field(LicenseTerms { validity_ms: Some(MAX_TERM + 1), ..terms() }), "terms.validity");
        assert_eq!(field(LicenseTerms { seats: 0, ..terms() }), "terms.seats");
        assert_eq!(field(LicenseTerms { grace_period_ms: -1, ..terms() }), "terms.grace_period");
        assert_eq!(field(LicenseTerms { modules: vec!["nope".into()], ..terms() }), "terms.modules");
        let floating_heartbeats =
            LicenseTerms { kind: LicenseKind::Concurrent, heartbeat_timeout_ms: Some(600_000), ..terms() };
        assert_eq!(field(floating_heartbeats), "terms.heartbeat_timeout");
        let nothing_to_start = LicenseTerms { validity_ms: None, upgrade_period_ms: None, ..terms() };
        assert_eq!(field(nothing_to_start), "terms.start");
        assert_eq!(field(LicenseTerms { kind: LicenseKind::Server, ..terms() }), "terms.kind");
        let cloud_first_use = LicenseTerms { kind: LicenseKind::Cloud, seats: 0, ..terms() };
        assert_eq!(field(cloud_first_use), "terms.start");
    }

    fn license() -> License {
        License {
            license_id: "lic_1".into(),
            product_code: "cad".into(),
            customer_id: "cus_1".into(),
            kind: LicenseKind::NodeLocked,
            status: LicenseStatus::Active,
            seats: 1,
            allowed_deactivations: UNLIMITED,
            activations_used: 0,
            deactivations_used: 0,
            modules: vec![],
            valid_from: 1_000,
            expires_at: None,
            grace_period_ms: 0,
            upgrades_until: None,
            associated_customer_id: None,
            portal_deactivation_counts: true,
            replaces_license_id: None,
            notes: String::new(),
            licensee_name: String::new(),
            seat_policy: Default::default(),
            meters: vec![],
            module_entitlements: Default::default(),
            heartbeat_timeout_ms: None,
            policy_id: None,
            policy_revision: 0,
            first_use: None,
            server_grants: Vec::new(),
            created_at: 1_000,
            updated_at: 1_000,
        }
    }

    #[test]
    fn time_from_first_use_starts_once() {
        let mut l = license();
        l.apply_terms("pol_1", 1, &terms(), 1_000);
        assert!(l.awaits_first_use());
        assert_eq!((l.expires_at, l.upgrades_until), (None, None), "nothing runs out before the first use");
        assert!(l.start_first_use(5_000));
        assert_eq!((l.expires_at, l.upgrades_until), (Some(5_000 + 365 * DAY), Some(5_000 + 365 * DAY)));
        assert!(!l.start_first_use(9_000), "a second use starts nothing");
        assert_eq!(l.first_use.as_ref().unwrap().started_at, Some(5_000));
        // Applying the policy again later keeps the start it had.
        let longer = LicenseTerms { validity_ms: Some(730 * DAY), ..terms() };
        l.apply_terms("pol_1", 2, &longer, 10_000);
        assert_eq!((l.expires_at, l.policy_revision), (Some(5_000 + 730 * DAY), 2));
    }

    #[test]
    fn terms_from_issue_count_from_valid_from() {
        let mut l = license();
        l.apply_terms("pol_1", 1, &LicenseTerms { start: TermsStart::Issue, ..terms() }, 2_000);
        assert!(!l.awaits_first_use() && l.first_use.is_none());
        assert_eq!(l.expires_at, Some(1_000 + 365 * DAY));
        assert_eq!((l.seats, l.allowed_deactivations, l.grace_period_ms), (3, 2, 14 * DAY));
    }
}
