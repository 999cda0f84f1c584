//! The customer's side of a server license: what an on-premises license server serves from its
//! verified server license file, and when it may hand out new seats and activations.
//!
//! The on-premises server keeps no catalog of its own making: each grant of its file becomes
//! one *served license* in its local store ([`served_licenses`]), with a License ID derived from
//! the server license and the grant, so every new file (a refresh, a renewal, a seat change)
//! updates the same local licenses in place ([`crate::change::LicenseChange::FollowServerFile`]).
//! The seat and activation rules are the usual ones, applied to those licenses: the counts, dates
//! and grace period come from the file alone.
//!
//! [`ServingState::may_grant`] is the one rule for new checkouts and activations: a file, not yet
//! past its end, not refused by the vendor, and a clock that has not gone back.

use crate::clock::Millis;
use crate::ids;
use crate::license_key::ALPHABET;
use crate::model::LicenseKind;
use crate::server_license::ServerLicensePayload;
use sha2::{Digest, Sha256};

/// How far the clock may seem to go back (NTP corrections, a virtual machine's clock
/// catching up) before new seats are refused: the client library's tolerance.
pub const CLOCK_BACK_TOLERANCE_MS: Millis = 5 * 60 * 1000;

/// One local license an on-premises server serves: a grant of its file, as a license of the
/// local store that products check out from (floating) or activate on (node-locked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedLicense {
    /// Derived from the server license and the grant ([`served_license_id`]): stable across files.
    pub license_id: String,
    /// Concurrent (floating seats) or node-locked (activations).
    pub kind: LicenseKind,
    /// The product's code.
    pub product_code: String,
    /// The feature (module) a floating grant is of; empty: the product itself.
    pub feature: String,
    /// Seats (floating) or activations (node-locked) the file grants.
    pub seats: i32,
}

impl ServedLicense {
    /// `product`, `product/feature`, with `(node-locked)` for activations: how people name it.
    pub fn name(&self) -> String {
        let base = match self.feature.as_str() {
            "" => self.product_code.clone(),
            f => format!("{}/{f}", self.product_code),
        };
        match self.kind {
            LicenseKind::NodeLocked => format!("{base} (node-locked)"),
            _ => base,
        }
    }

    /// The modules the local license includes: the feature of a feature grant.
    pub fn modules(&self) -> Vec<String> {
        if self.feature.is_empty() {
            vec![]
        } else {
            vec![self.feature.clone()]
        }
    }
}

/// The License ID a grant is served under: `lic_` and 16 symbols of SHA-256 of the server
/// license, the kind, product and feature. The same grant of any file of the same server
/// license has the same ID; another grant or license never does (80 bits).
pub fn served_license_id(server_license_id: &str, kind: LicenseKind, product_code: &str, feature: &str) -> String {
    let digest = Sha256::digest(format!(
        "licensing-served-license-v1\n{server_license_id}\n{}\n{product_code}\n{feature}",
        kind.as_str()
    ));
    let mut id = format!("{}_", ids::LICENSE);
    id.extend(digest.iter().take(16).map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char));
    id
}

/// The local licenses a file's grants make: one concurrent license per grant with floating
/// seats (a feature grant is a license of the product with that module), one node-locked
/// license per product grant with activations.
pub fn served_licenses(payload: &ServerLicensePayload) -> Vec<ServedLicense> {
    let mut out = vec![];
    for grant in &payload.grants {
        let mut serve = |kind, seats| {
            out.push(ServedLicense {
                license_id: served_license_id(&payload.license_id, kind, &grant.product_code, &grant.feature),
                kind,
                product_code: grant.product_code.clone(),
                feature: grant.feature.clone(),
                seats,
            })
        };
        if grant.floating_seats > 0 {
            serve(LicenseKind::Concurrent, grant.floating_seats);
        }
        if grant.node_locked_activations > 0 && grant.feature.is_empty() {
            serve(LicenseKind::NodeLocked, grant.node_locked_activations);
        }
    }
    out
}

/// The terms a served license takes from its file, applied by
/// [`crate::change::LicenseChange::FollowServerFile`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedTerms {
    /// Seats or activations granted; 0 when the grant is gone from the file (then suspended).
    pub seats: i32,
    /// The modules of the grant.
    pub modules: Vec<String>,
    /// The file's validity.
    pub valid_from: Millis,
    /// The file's expiry (`None`: perpetual).
    pub expires_at: Option<Millis>,
    /// How long after the expiry the grace period lasts (ms; 0: none).
    pub grace_period_ms: Millis,
    /// Whether the grant is in the file (a grant taken away suspends its license).
    pub granted: bool,
}

impl ServedTerms {
    /// The terms of `served` under `payload`.
    pub fn of(served: &ServedLicense, payload: &ServerLicensePayload) -> Self {
        let grace_period_ms = match (payload.expires_at_ms, payload.grace_ends_at_ms) {
            (Some(expires), Some(ends)) => ends.saturating_sub(expires).max(0),
            _ => 0,
        };
        Self {
            seats: served.seats,
            modules: served.modules(),
            valid_from: payload.valid_from_ms,
            expires_at: payload.expires_at_ms,
            grace_period_ms,
            granted: true,
        }
    }
}

/// Why an on-premises server hands out no new seat or activation now. Leases and activations
/// already held go on to their end (which the file's end bounds).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotServing {
    /// No server license file has been imported or received yet.
    #[error("this on-premises server has no server license file yet: activate it online (licensectl onprem refresh) or import the vendor's response file (licensectl onprem import)")]
    NoFile,
    /// The file has been given back (a return file was written).
    #[error("this on-premises server's license was returned (serial {serial}); import a new server license file to serve again")]
    Returned {
        /// The serial of the file given back.
        serial: i64,
    },
    /// The file's license is not valid yet.
    #[error("the server license is valid from {from} (ms since the epoch); it is {now}")]
    NotYetValid {
        /// Its start.
        from: Millis,
        /// This server's clock.
        now: Millis,
    },
    /// Past the license's end (its grace period's end when it has one).
    #[error("the server license ended at {ended_at} (ms since the epoch): ask the vendor for a renewal, then refresh or import the new file")]
    Expired {
        /// When it ended.
        ended_at: Millis,
    },
    /// The vendor refused the last refresh (suspended, retired or returned at the vendor).
    #[error("the vendor refused this server's license ({reason}): {message}")]
    RefusedByVendor {
        /// The vendor's reason code, e.g. `SUSPENDED`.
        reason: String,
        /// The vendor's message.
        message: String,
    },
    /// The clock is behind a time this server has already seen.
    #[error("this server's clock ({now} ms) is behind a time it has already seen ({seen} ms): set the clock right; new seats are refused until then")]
    ClockSetBack {
        /// This server's clock.
        now: Millis,
        /// The latest time seen (a file's signing time or this server's own clock).
        seen: Millis,
    },
}

impl NotServing {
    /// A short machine-readable code (the reason in status details).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoFile => "NO_SERVER_LICENSE",
            Self::Returned { .. } => "SERVER_LICENSE_RETURNED",
            Self::NotYetValid { .. } => "NOT_YET_VALID",
            Self::Expired { .. } => "EXPIRED",
            Self::RefusedByVendor { .. } => "REFUSED_BY_VENDOR",
            Self::ClockSetBack { .. } => "CLOCK_SET_BACK",
        }
    }
}

impl crate::error::ClassifiedError for NotServing {
    fn class(&self) -> crate::error::ErrorClass {
        crate::error::ErrorClass::FailedPrecondition
    }

    fn reason(&self) -> &'static str {
        NotServing::reason(self)
    }
}

/// What decides whether new seats may be granted: the file in force and what has been seen.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServingState {
    /// The verified file in force, bound to this machine.
    pub payload: Option<ServerLicensePayload>,
    /// The serial of a file given back (nothing is served until a newer file arrives).
    pub returned_serial: Option<i64>,
    /// The vendor's refusal at the last refresh (`reason`, `message`), until a file arrives.
    pub refused: Option<(String, String)>,
}

impl ServingState {
    /// Whether a new seat or activation may be granted at `now`, given `seen_at`, the latest
    /// instant this server has seen on its own clock (kept across restarts).
    pub fn may_grant(&self, now: Millis, seen_at: Millis) -> Result<(), NotServing> {
        let seen = seen_at.max(self.payload.as_ref().map_or(0, |p| p.issued_at_ms));
        if now.saturating_add(CLOCK_BACK_TOLERANCE_MS) < seen {
            return Err(NotServing::ClockSetBack { now, seen });
        }
        if let Some((reason, message)) = &self.refused {
            return Err(NotServing::RefusedByVendor { reason: reason.clone(), message: message.clone() });
        }
        let Some(payload) = &self.payload else {
            return Err(match self.returned_serial {
                Some(serial) => NotServing::Returned { serial },
                None => NotServing::NoFile,
            });
        };
        if now < payload.valid_from_ms {
            return Err(NotServing::NotYetValid { from: payload.valid_from_ms, now });
        }
        if let Some(ended_at) = payload.grace_ends_at_ms.or(payload.expires_at_ms) {
            if now >= ended_at {
                return Err(NotServing::Expired { ended_at });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server_license::ServerGrant;

    fn payload() -> ServerLicensePayload {
        ServerLicensePayload {
            v: 1,
            license_id: "lic_AAAAAAAAAAAAAAAA".into(),
            customer_id: "cus_AAAAAAAAAAAAAAAA".into(),
            installation_id: "ins_AAAAAAAAAAAAAAAA".into(),
            server_name: "lic01".into(),
            fingerprint: vec![],
            match_threshold: 0.6,
            grants: vec![
                ServerGrant {
                    product_code: "cad".into(),
                    feature: String::new(),
                    floating_seats: 5,
                    node_locked_activations: 2,
                },
                ServerGrant {
                    product_code: "cad".into(),
                    feature: "render".into(),
                    floating_seats: 1,
                    node_locked_activations: 0,
                },
            ],
            valid_from_ms: 1_000,
            expires_at_ms: Some(10_000_000),
            grace_ends_at_ms: Some(11_000_000),
            issued_at_ms: 2_000,
            refresh_after_ms: 3_000,
            serial: 1,
        }
    }

    #[test]
    fn each_grant_is_served_under_a_stable_well_formed_id() {
        let served = served_licenses(&payload());
        let names: Vec<_> = served.iter().map(|s| (s.name(), s.seats)).collect();
        assert_eq!(names, [("cad".to_owned(), 5), ("cad (node-locked)".to_owned(), 2), ("cad/render".to_owned(), 1)]);
        for s in &served {
            assert!(ids::is_well_formed(ids::LICENSE, &s.license_id), "{}", s.license_id);
        }
        let again = served_licenses(&ServerLicensePayload { serial: 7, ..payload() });
        assert_eq!(served, again, "another file of the same license serves under the same IDs");
        let other = served_licenses(&ServerLicensePayload { license_id: "lic_BBBBBBBBBBBBBBBB".into(), ..payload() });
        assert!(served.iter().zip(&other).all(|(a, b)| a.license_id != b.license_id));
    }

    #[test]
    fn terms_follow_the_file_and_its_grace_period() {
        let p = payload();
        let terms = ServedTerms::of(&served_licenses(&p)[2], &p);
        assert_eq!(terms.seats, 1);
        assert_eq!(terms.modules, ["render"]);
        assert_eq!(terms.expires_at, Some(10_000_000));
        assert_eq!(terms.grace_period_ms, 1_000_000);
    }

    #[test]
    fn new_seats_need_a_file_in_its_dates_and_a_clock_that_did_not_go_back() {
        let mut state = ServingState::default();
        assert_eq!(state.may_grant(5_000, 0), Err(NotServing::NoFile));
        state.payload = Some(payload());
        assert_eq!(state.may_grant(500, 0), Err(NotServing::NotYetValid { from: 1_000, now: 500 }));
        assert_eq!(state.may_grant(5_000, 0), Ok(()));
        assert_eq!(state.may_grant(10_500_000, 0), Ok(()), "in grace");
        assert_eq!(state.may_grant(11_000_000, 0), Err(NotServing::Expired { ended_at: 11_000_000 }));
        let seen = 9_000_000;
        assert_eq!(state.may_grant(seen - CLOCK_BACK_TOLERANCE_MS, seen), Ok(()), "within the tolerance");
        assert_eq!(state.may_grant(1_000_000, seen), Err(NotServing::ClockSetBack { now: 1_000_000, seen }));
        let signed_later = ServingState {
            payload: Some(ServerLicensePayload { issued_at_ms: seen, ..payload() }),
            ..ServingState::default()
        };
        assert_eq!(
            signed_later.may_grant(1_000_000, 0),
            Err(NotServing::ClockSetBack { now: 1_000_000, seen }),
            "a clock behind the file's signing time is behind too"
        );
        state.refused = Some(("SUSPENDED".into(), "suspended".into()));
        assert_eq!(state.may_grant(seen, seen).unwrap_err().reason(), "REFUSED_BY_VENDOR");
        let returned = ServingState { returned_serial: Some(3), ..ServingState::default() };
        assert_eq!(returned.may_grant(5_000, 0), Err(NotServing::Returned { serial: 3 }));
    }
}
