//! Trials: a product whose policies include a trial policy may be activated without a key, once
//! per machine. The server remembers each machine that started a trial (its fingerprint's
//! component digests, matched with the same tolerance as activations), so reinstalling or
//! clearing local files does not start another; a trial converts to a paid license in place.

use crate::change::ChangeError;
use crate::clock::Millis;
use crate::error::StoreError;
use crate::fingerprint::ComponentDigest;
use crate::model::{AuditRecord, License, LicenseStatus, NewLicense};
use crate::policy::{LicenseTerms, Policy, TermsStart};
use crate::store::UpdateError;
use async_trait::async_trait;

/// The internal customer every trial license belongs to until converted (made by migration
/// 0014). It has no password and an address no mail reaches, so it never signs in to the portal.
pub const TRIAL_CUSTOMER_ID: &str = "cus_7R1A1S0000000000";

/// The trial policy a product offers: of its policies marked `trial`, the one whose terms
/// changed last (ties: the one created last, then the highest ID). `None`: no trials offered.
pub fn offered_trial(policies: &[Policy]) -> Option<&Policy> {
    policies
        .iter()
        .filter(|p| p.terms.trial)
        .max_by(|a, b| (a.updated_at, a.created_at, &a.policy_id).cmp(&(b.updated_at, b.created_at, &b.policy_id)))
}

/// Checks what a trial policy must be: node-locked, one activation, a length (validity) and
/// counted from issue (the trial starts when the machine asks for it). Errors name `terms.trial`.
pub fn validate_trial_terms(terms: &LicenseTerms) -> Result<(), ChangeError> {
    if !terms.trial {
        return Ok(());
    }
    let contradiction = if terms.kind != crate::model::LicenseKind::NodeLocked {
        Some("a trial is node-locked to the machine that starts it; set kind NODE_LOCKED")
    } else if terms.seats != 1 {
        Some("a trial activates one machine; set seats 1")
    } else if terms.validity_ms.is_none() {
        Some("a trial needs a length: set a validity (e.g. 14 days)")
    } else if terms.start != TermsStart::Issue {
        Some("a trial starts when the machine asks for it; set start ISSUE")
    } else {
        None
    };
    match contradiction {
        Some(message) => Err(ChangeError::Invalid { field: "terms.trial", message: message.into() }),
        None => Ok(()),
    }
}

/// A new trial license of `policy` (a trial policy), issued at `now` to the trial customer.
pub fn trial_license(license_id: String, policy: &Policy, now: Millis) -> License {
    let mut license = License {
        license_id,
        product_code: policy.product_code.clone(),
        customer_id: TRIAL_CUSTOMER_ID.into(),
        kind: policy.terms.kind,
        status: LicenseStatus::Active,
        seats: 1,
        allowed_deactivations: 0,
        activations_used: 0,
        deactivations_used: 0,
        modules: vec![],
        valid_from: now,
        expires_at: None,
        grace_period_ms: 0,
        upgrades_until: None,
        associated_customer_id: None,
        portal_deactivation_counts: true,
        replaces_license_id: None,
        notes: "trial".into(),
        licensee_name: String::new(),
        seat_policy: Default::default(),
        meters: vec![],
        server_grants: Vec::new(),
        module_entitlements: Default::default(),
        heartbeat_timeout_ms: None,
        policy_id: None,
        policy_revision: 0,
        first_use: None,
        created_at: now,
        updated_at: now,
    };
    license.apply_terms(&policy.policy_id, policy.revision, &policy.terms, now);
    license
}

impl License {
    /// Turns a trial license into a paid one of `policy` for `customer_id`, in place (its
    /// activations stay): the paid terms count from now, the conversion, and a policy whose time
    /// counts from first use starts now (the machine is in use already).
    pub fn convert_trial(&mut self, customer_id: &str, associate: bool, policy: &Policy, now: Millis) {
        self.customer_id = customer_id.to_owned();
        if associate {
            self.associated_customer_id = Some(customer_id.to_owned());
        }
        self.valid_from = now;
        self.notes = String::new();
        self.apply_terms(&policy.policy_id, policy.revision, &policy.terms, now);
        self.start_first_use(now);
    }
}

/// A trial request, decided atomically by the store.
#[derive(Debug, Clone)]
pub struct TrialCommand {
    /// The product asked for.
    pub product_code: String,
    /// Keyed digests of the presented fingerprint.
    pub fingerprint: Vec<ComponentDigest>,
    /// Share of a remembered machine's components that must match for "the same machine".
    pub match_threshold: f64,
    /// The trial license to store if this machine never had a trial of the product.
    pub new_license: NewLicense,
    /// Now (Unix ms), by the service's clock.
    pub now: Millis,
}

/// What a trial request found.
#[derive(Debug, Clone, PartialEq)]
pub enum TrialStart {
    /// The machine had no trial of the product: this one was issued now.
    New(License),
    /// The machine had one (the same machine, within the match threshold): that license.
    Existing {
        /// The trial's license, as it is now.
        license: License,
        /// When it was converted to a paid license, if it was.
        converted_at: Option<Millis>,
    },
}

/// Trials of a product, counted from stored data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TrialStats {
    /// Trials ever started (one per machine).
    pub started: i64,
    /// Not converted and not expired now.
    pub active: i64,
    /// Not converted, and expired.
    pub expired: i64,
    /// Converted to paid licenses.
    pub converted: i64,
}

/// The machines that started trials, and their conversions.
#[async_trait]
pub trait TrialStore: Send + Sync + 'static {
    /// With the product row locked (so racing requests from one machine make one trial): the
    /// product's trial of a machine matching `fingerprint` (at least `match_threshold` of its
    /// remembered components), its remembered fingerprint refreshed; else `new_license` is
    /// stored with the machine remembered and a `license.trial_started` audit record.
    /// [`StoreError::NotFound`] when there is no such product.
    async fn start_trial(&self, command: &TrialCommand) -> Result<TrialStart, StoreError>;
    /// Converts the trial license `license_id` to a paid license of `policy` for
    /// `customer_id`, with its row locked, atomically with `audit` (its activations stay).
    /// Refused ([`UpdateError::Rejected`]) when it is not a trial or was converted already.
    async fn convert_trial(
        &self,
        license_id: &str,
        customer_id: &str,
        associate: bool,
        policy: &Policy,
        now: Millis,
        audit: AuditRecord,
    ) -> Result<License, UpdateError>;
    /// Counts the product's trials as they are at `now`.
    async fn trial_stats(&self, product_code: &str, now: Millis) -> Result<TrialStats, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::DAY;
    use crate::model::LicenseKind;

    fn policy(trial: bool, updated_at: Millis) -> Policy {
        Policy {
            policy_id: format!("pol_{updated_at}"),
            product_code: "cad".into(),
            name: format!("p{updated_at}"),
            revision: 1,
            terms: LicenseTerms {
                kind: LicenseKind::NodeLocked,
                seats: 1,
                allowed_deactivations: 0,
                modules: vec![],
                validity_ms: Some(14 * DAY),
                upgrade_period_ms: None,
                start: TermsStart::Issue,
                grace_period_ms: 0,
                heartbeat_timeout_ms: None,
                meters: vec![],
                trial,
            },
            created_at: 0,
            updated_at,
        }
    }

    #[test]
    fn the_last_changed_trial_policy_is_offered() {
        assert_eq!(offered_trial(&[policy(false, 5)]), None);
        let policies = [policy(true, 1), policy(true, 3), policy(false, 9)];
        assert_eq!(offered_trial(&policies).unwrap().policy_id, "pol_3");
    }

    #[test]
    fn contradictory_trial_terms_name_terms_trial() {
        let ok = policy(true, 1).terms;
        assert_eq!(validate_trial_terms(&ok), Ok(()));
        for bad in [
            LicenseTerms { seats: 2, ..ok.clone() },
            LicenseTerms { kind: LicenseKind::Concurrent, ..ok.clone() },
            LicenseTerms { validity_ms: None, ..ok.clone() },
            LicenseTerms { start: TermsStart::FirstUse, ..ok.clone() },
        ] {
            match validate_trial_terms(&bad) {
                Err(ChangeError::Invalid { field, .. }) => assert_eq!(field, "terms.trial"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_trial_runs_from_issue_and_converts_from_now() {
        let mut license = trial_license("lic_1".into(), &policy(true, 1), 1_000);
        assert_eq!((license.customer_id.as_str(), license.expires_at), (TRIAL_CUSTOMER_ID, Some(1_000 + 14 * DAY)));
        let mut paid = policy(false, 2);
        paid.terms.validity_ms = Some(365 * DAY);
        paid.terms.start = TermsStart::FirstUse;
        license.convert_trial("cus_2", true, &paid, 50 * DAY);
        assert_eq!(license.customer_id, "cus_2");
        assert_eq!(license.associated_customer_id.as_deref(), Some("cus_2"));
        assert_eq!(license.expires_at, Some(50 * DAY + 365 * DAY), "paid time counts from the conversion");
        assert_eq!(license.policy_id.as_deref(), Some("pol_2"));
    }
}
