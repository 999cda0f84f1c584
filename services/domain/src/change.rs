//! Admin changes to a license: validated against the current license and applied as pure
//! functions, so the store can apply one inside its transaction (row locked) and the rules live
//! in one place.

use crate::clock::Millis;
use crate::model::{
    License, LicenseKind, LicenseStatus, ModuleEntitlement, Product, MAX_ENTITLEMENT_VALUE_CHARS, UNLIMITED,
};
use crate::text::quoted;

/// One admin (or portal) change to a license; [`Self::apply`] checks and makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LicenseChange {
    /// Blocks the license until reinstated.
    Suspend,
    /// Lifts a suspension.
    Reinstate,
    /// Moves the expiry later.
    Renew {
        /// The new expiry (Unix ms); after `valid_from` and the current expiry.
        expires_at: Millis,
    },
    /// Sets the seats (node-locked: activations); not below the seat policy's reservations.
    SetSeats(i32),
    /// Sets the allowed deactivations ([`UNLIMITED`] or 0 to [`MAX_SEATS`]).
    SetAllowedDeactivations(i32),
    /// Adds modules the product defines and the license lacks.
    AddModules(Vec<String>),
    /// Removes modules the license has.
    RemoveModules(Vec<String>),
    /// Moves the end of the upgrade period later.
    ExtendUpgradePeriod {
        /// The new end (Unix ms); later than the current one.
        upgrades_until: Millis,
    },
    /// Sets whether portal deactivations count against the allowed deactivations.
    SetPortalDeactivationCounts(bool),
    /// Replaces the seat policy (concurrent licenses only).
    SetSeatPolicy(crate::seat_policy::SeatPolicy),
    /// Associates with this portal account, or with none (`None`), whoever held it.
    Associate(Option<String>),
    /// Associates with this account unless another account holds the license.
    Claim(String),
    /// Moves the association from one account to another; fails unless `from` holds it.
    Transfer {
        /// The account holding it now (customer ID).
        from: String,
        /// The account receiving it (customer ID).
        to: String,
    },
    /// Retires the license for good (a return); only association changes apply after.
    Retire,
    /// The name shown as the license's licensee; empty goes back to the company name.
    SetLicenseeName(String),
    /// Adds a meter, or replaces the one with its code (use counted so far stays counted).
    SetMeter(crate::meter::Meter),
    /// Removes the meter with this code (its recorded use stays in the reports).
    RemoveMeter(String),
    /// Sets the grace period after expiry (ms; 0: none); see [`validate_grace_period`]. Allowed
    /// on a perpetual license too: it applies once a renewal sets an expiry.
    SetGracePeriod(Millis),
    /// Requires activated machines to check in at least this often (ms), or (`None`) not at all;
    /// node-locked licenses only (see [`validate_heartbeat_timeout`]).
    SetHeartbeatTimeout(Option<Millis>),
    /// Gives the license a policy's current terms (see [`License::apply_terms`]).
    ApplyPolicy {
        /// The policy (`pol_…`).
        policy_id: String,
        /// Its revision applied.
        revision: i64,
        /// Its terms, validated when the policy was made or changed.
        terms: Box<crate::policy::LicenseTerms>,
    },
    /// Sets the value and own expiry of a module the license includes; both `None` clears them
    /// (the module stays included). See [`validate_module_entitlement`].
    SetModuleEntitlement {
        /// The module's code; one the license includes.
        module: String,
        /// The value the product reads; `None` (or empty) for none.
        value: Option<String>,
        /// When the module stops being licensed (Unix ms); `None`: with the license.
        expires_at: Option<Millis>,
    },
    /// An on-premises server's local license takes the terms of its server license file
    /// (seats, modules, dates; see [`crate::onprem`]): the file decides, so the expiry may move
    /// either way, and a grant taken away suspends the license (a grant given back reinstates it).
    FollowServerFile(Box<crate::onprem::ServedTerms>),
    /// Replaces what a server license lets its on-premises servers serve (validated against the
    /// products by the caller, [`crate::server_license::validate_grants`]); servers get the new
    /// grants in their next file.
    SetServerGrants(Vec<crate::server_license::ServerGrant>),
}

/// Why a change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("{field}: {message}")]
    /// A value of the request is out of bounds.
    Invalid {
        /// The request field at fault, e.g. `seats`.
        field: &'static str,
        /// What is wrong with it and what is allowed.
        message: String,
    },
    /// The license's state does not allow it (retired, already suspended, another account's).
    #[error("{0}")]
    NotAllowed(String),
}

fn invalid(field: &'static str, message: impl Into<String>) -> ChangeError {
    ChangeError::Invalid { field, message: message.into() }
}

/// Seats or activations a license may have.
pub const MAX_SEATS: i32 = 1_000_000;

/// Seats (or activations) must be 1 to [`MAX_SEATS`].
pub fn validate_seats(seats: i32) -> Result<(), ChangeError> {
    if !(1..=MAX_SEATS).contains(&seats) {
        return Err(invalid("seats", format!("must be between 1 and {MAX_SEATS}, got {seats}")));
    }
    Ok(())
}

/// Allowed deactivations must be [`UNLIMITED`] or 0 to [`MAX_SEATS`].
pub fn validate_allowed_deactivations(n: i32) -> Result<(), ChangeError> {
    if !(UNLIMITED..=MAX_SEATS).contains(&n) {
        return Err(invalid(
            "allowed_deactivations",
            format!("must be -1 (unlimited) or between 0 and {MAX_SEATS}, got {n}"),
        ));
    }
    Ok(())
}

/// Every module must be one the product defines; duplicates are refused.
pub fn validate_modules(product: &Product, modules: &[String]) -> Result<(), ChangeError> {
    for (i, m) in modules.iter().enumerate() {
        if !product.has_module(m) {
            let known: Vec<&str> = product.modules.iter().map(|m| m.code.as_str()).collect();
            return Err(invalid(
                "modules",
                format!("product '{}' has no module {} (known: {})", product.code, quoted(m), known.join(", ")),
            ));
        }
        if modules[..i].contains(m) {
            return Err(invalid("modules", format!("module {} is listed twice", quoted(m))));
        }
    }
    Ok(())
}

/// A grace period must be 0 (none) to [`crate::model::MAX_GRACE_PERIOD`] (365 days).
pub fn validate_grace_period(grace_period_ms: Millis) -> Result<(), ChangeError> {
    if grace_period_ms < 0 {
        return Err(invalid("grace_period", "must not be negative (0 means no grace period)"));
    }
    if grace_period_ms > crate::model::MAX_GRACE_PERIOD {
        return Err(invalid(
            "grace_period",
            format!("must be at most 365 days, got {:.1} days", grace_period_ms as f64 / crate::clock::DAY as f64),
        ));
    }
    Ok(())
}

/// Shortest heartbeat timeout a license may require (ms): a minute, so a machine heartbeating
/// at a third of it is not culled by one slow round trip.
pub const MIN_HEARTBEAT_TIMEOUT: Millis = 60_000;
/// Longest heartbeat timeout a license may require (ms): a year.
pub const MAX_HEARTBEAT_TIMEOUT: Millis = 365 * crate::clock::DAY;

/// A heartbeat timeout must be [`MIN_HEARTBEAT_TIMEOUT`] to [`MAX_HEARTBEAT_TIMEOUT`], and only a
/// node-locked license (its activated machines) can require one; `None` (no heartbeats) always fits.
pub fn validate_heartbeat_timeout(kind: LicenseKind, timeout: Option<Millis>) -> Result<(), ChangeError> {
    let Some(timeout) = timeout else { return Ok(()) };
    if kind != LicenseKind::NodeLocked {
        return Err(invalid(
            "heartbeat_timeout",
            format!("only node-locked licenses require heartbeats, and this is a {} license", kind.as_str()),
        ));
    }
    if !(MIN_HEARTBEAT_TIMEOUT..=MAX_HEARTBEAT_TIMEOUT).contains(&timeout) {
        return Err(invalid(
            "heartbeat_timeout",
            format!(
                "must be between {} s and {} days, got {} ms",
                MIN_HEARTBEAT_TIMEOUT / 1000,
                MAX_HEARTBEAT_TIMEOUT / crate::clock::DAY,
                timeout
            ),
        ));
    }
    Ok(())
}

/// Checks what a license would grant of `module` at `now`, and returns it as stored: the
/// module must be one the product defines and the license includes; the value (trimmed, empty
/// meaning none) at most [`MAX_ENTITLEMENT_VALUE_CHARS`] characters without control characters;
/// the expiry after `now` and after the license's `valid_from`. Errors name the field
/// (`module`, `value`, `expires_at`).
pub fn validate_module_entitlement(
    license: &License,
    product: &Product,
    module: &str,
    entitlement: &ModuleEntitlement,
    now: Millis,
) -> Result<ModuleEntitlement, ChangeError> {
    if !product.has_module(module) {
        let known: Vec<&str> = product.modules.iter().map(|m| m.code.as_str()).collect();
        return Err(invalid(
            "module",
            format!("product '{}' has no module {} (known: {})", product.code, quoted(module), known.join(", ")),
        ));
    }
    if !license.modules.iter().any(|m| m == module) {
        return Err(invalid(
            "module",
            format!(
                "license {} does not include module {}; add it to the license first (AddLicenseModules)",
                license.license_id,
                quoted(module)
            ),
        ));
    }
    let value = match entitlement.value.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(v) if v.chars().count() > MAX_ENTITLEMENT_VALUE_CHARS || v.chars().any(char::is_control) => {
            return Err(invalid(
                "value",
                format!(
                    "{} is not a module value: at most {MAX_ENTITLEMENT_VALUE_CHARS} characters without control characters",
                    quoted(v)
                ),
            ))
        }
        Some(v) => Some(v.to_owned()),
    };
    if let Some(expires_at) = entitlement.expires_at {
        if expires_at <= now {
            return Err(invalid(
                "expires_at",
                format!("{} is not in the future; remove the module instead", crate::clock::rfc3339(expires_at)),
            ));
        }
        if expires_at <= license.valid_from {
            return Err(invalid(
                "expires_at",
                format!("must be after the license's valid_from ({})", crate::clock::rfc3339(license.valid_from)),
            ));
        }
    }
    Ok(ModuleEntitlement { value, expires_at: entitlement.expires_at })
}

/// Longest licensee name, in characters.
pub const MAX_LICENSEE_NAME_CHARS: usize = 200;

/// A licensee name as stored: trimmed, at most [`MAX_LICENSEE_NAME_CHARS`], no control
/// characters; empty means the company name.
pub fn validate_licensee_name(name: &str) -> Result<String, ChangeError> {
    let name = name.trim();
    if name.chars().count() > MAX_LICENSEE_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(invalid(
            "licensee_name",
            format!(
                "must be at most {MAX_LICENSEE_NAME_CHARS} characters without control characters (line breaks, tabs)"
            ),
        ));
    }
    Ok(name.to_owned())
}

impl LicenseChange {
    /// The audit action name of this change.
    pub fn action(&self) -> &'static str {
        match self {
            Self::Suspend => "license.suspended",
            Self::Reinstate => "license.reinstated",
            Self::Renew { .. } => "license.renewed",
            Self::SetSeats(_) => "license.seats_changed",
            Self::SetAllowedDeactivations(_) => "license.deactivations_changed",
            Self::AddModules(_) => "license.modules_added",
            Self::RemoveModules(_) => "license.modules_removed",
            Self::ExtendUpgradePeriod { .. } => "license.upgrade_period_extended",
            Self::SetPortalDeactivationCounts(_) => "license.portal_deactivation_policy_changed",
            Self::SetSeatPolicy(_) => "license.seat_policy_changed",
            Self::Associate(Some(_)) => "license.associated",
            Self::Associate(None) => "license.dissociated",
            Self::Claim(_) => "license.associated",
            Self::Transfer { .. } => "license.transferred",
            Self::Retire => "license.retired",
            Self::SetLicenseeName(_) => "license.licensee_name_changed",
            Self::SetMeter(_) => "license.meter_set",
            Self::RemoveMeter(_) => "license.meter_removed",
            Self::SetGracePeriod(_) => "license.grace_period_changed",
            Self::SetHeartbeatTimeout(_) => "license.heartbeat_timeout_changed",
            Self::ApplyPolicy { .. } => "license.policy_applied",
            Self::SetModuleEntitlement { .. } => "license.module_entitlement_set",
            Self::FollowServerFile(_) => "license.server_file_followed",
            Self::SetServerGrants(_) => "license.server_grants_changed",
        }
    }

    /// Checks the change against the license (and its product, for modules) and applies it.
    pub fn apply(&self, license: &mut License, product: &Product, now: Millis) -> Result<(), ChangeError> {
        if license.status == LicenseStatus::Retired && !matches!(self, Self::Associate(_) | Self::Transfer { .. }) {
            return Err(ChangeError::NotAllowed(format!(
                "license {} is retired and can no longer be changed",
                license.license_id
            )));
        }
        match self {
            Self::Suspend => {
                if license.status == LicenseStatus::Suspended {
                    return Err(ChangeError::NotAllowed(format!(
                        "license {} is already suspended",
                        license.license_id
                    )));
                }
                license.status = LicenseStatus::Suspended;
            }
            Self::Reinstate => {
                if license.status != LicenseStatus::Suspended {
                    return Err(ChangeError::NotAllowed(format!("license {} is not suspended", license.license_id)));
                }
                license.status = LicenseStatus::Active;
            }
            Self::Renew { expires_at } => {
                if *expires_at <= license.valid_from {
                    return Err(invalid("expires_at", "must be after the license's valid_from"));
                }
                if let Some(current) = license.expires_at {
                    if *expires_at <= current {
                        return Err(invalid("expires_at", "a renewal must move the expiry later"));
                    }
                }
                license.expires_at = Some(*expires_at);
            }
            Self::SetSeats(seats) => {
                if license.kind == crate::model::LicenseKind::Cloud {
                    return Err(invalid("seats", "cloud licenses have no seats"));
                }
                validate_seats(*seats)?;
                let reserved = license.seat_policy.reserved_seats();
                if reserved > *seats {
                    return Err(invalid(
                        "seats",
                        format!("the seat policy reserves {reserved} seats; lower its reservations first"),
                    ));
                }
                license.seats = *seats;
            }
            Self::SetAllowedDeactivations(n) => {
                validate_allowed_deactivations(*n)?;
                license.allowed_deactivations = *n;
            }
            Self::AddModules(modules) => {
                if modules.is_empty() {
                    return Err(invalid("modules", "name at least one module"));
                }
                validate_modules(product, modules)?;
                for m in modules {
                    if license.modules.contains(m) {
                        return Err(invalid("modules", format!("the license already has module {}", quoted(m))));
                    }
                }
                license.modules.extend(modules.iter().cloned());
            }
            Self::RemoveModules(modules) => {
                if modules.is_empty() {
                    return Err(invalid("modules", "name at least one module"));
                }
                for m in modules {
                    if !license.modules.contains(m) {
                        return Err(invalid("modules", format!("the license has no module {}", quoted(m))));
                    }
                }
                license.modules.retain(|m| !modules.contains(m));
                // A module added again later starts without its old value or expiry.
                license.module_entitlements.retain(|m, _| !modules.contains(m));
            }
            Self::ExtendUpgradePeriod { upgrades_until } => {
                if let Some(current) = license.upgrades_until {
                    if *upgrades_until <= current {
                        return Err(invalid("upgrades_until", "must be later than the current upgrade period end"));
                    }
                }
                license.upgrades_until = Some(*upgrades_until);
            }
            Self::SetPortalDeactivationCounts(counts) => license.portal_deactivation_counts = *counts,
            Self::SetSeatPolicy(policy) => {
                if license.kind != crate::model::LicenseKind::Concurrent {
                    return Err(ChangeError::NotAllowed(format!(
                        "license {} is a {} license; seat policies apply to concurrent licenses",
                        license.license_id,
                        license.kind.as_str()
                    )));
                }
                policy.validate(license.seats, license.expires_at, now)?;
                license.seat_policy = policy.clone();
            }
            Self::Associate(customer) => license.associated_customer_id = customer.clone(),
            Self::Claim(customer) => match &license.associated_customer_id {
                Some(holder) if holder != customer => {
                    return Err(ChangeError::NotAllowed(format!(
                        "license {} is associated with another account; ask that account to transfer it",
                        license.license_id
                    )))
                }
                _ => license.associated_customer_id = Some(customer.clone()),
            },
            Self::Transfer { from, to } => {
                if license.associated_customer_id.as_deref() != Some(from.as_str()) {
                    return Err(ChangeError::NotAllowed(format!(
                        "license {} is not associated with your account",
                        license.license_id
                    )));
                }
                license.associated_customer_id = Some(to.clone());
            }
            Self::Retire => license.status = LicenseStatus::Retired,
            Self::SetLicenseeName(name) => license.licensee_name = validate_licensee_name(name)?,
            Self::SetMeter(meter) => {
                meter.validate().map_err(|e| invalid(e.field, e.message))?;
                match license.meters.iter().position(|m| m.code == meter.code) {
                    Some(i) => license.meters[i] = meter.clone(),
                    None if license.meters.len() >= crate::meter::MAX_METERS => {
                        return Err(invalid(
                            "meter",
                            format!("a license carries at most {} meters", crate::meter::MAX_METERS),
                        ))
                    }
                    None => license.meters.push(meter.clone()),
                }
            }
            Self::RemoveMeter(code) => {
                if !license.meters.iter().any(|m| &m.code == code) {
                    return Err(invalid("meter", format!("the license has no meter {}", quoted(code))));
                }
                license.meters.retain(|m| &m.code != code);
            }
            Self::SetGracePeriod(grace_period_ms) => {
                validate_grace_period(*grace_period_ms)?;
                license.grace_period_ms = *grace_period_ms;
            }
            Self::SetHeartbeatTimeout(timeout) => {
                validate_heartbeat_timeout(license.kind, *timeout)?;
                license.heartbeat_timeout_ms = *timeout;
            }
            Self::ApplyPolicy { policy_id, revision, terms } => {
                if terms.kind != license.kind {
                    return Err(ChangeError::NotAllowed(format!(
                        "license {} is a {} license; policy {policy_id} makes {} licenses",
                        license.license_id,
                        license.kind.as_str(),
                        terms.kind.as_str()
                    )));
                }
                let reserved = license.seat_policy.reserved_seats();
                if reserved > terms.seats {
                    return Err(invalid(
                        "seats",
                        format!(
                            "the license's seat policy reserves {reserved} seats, more than the policy's {}",
                            terms.seats
                        ),
                    ));
                }
                license.apply_terms(policy_id, *revision, terms, now);
            }
            Self::SetModuleEntitlement { module, value, expires_at } => {
                let wanted = ModuleEntitlement { value: value.clone(), expires_at: *expires_at };
                let granted = validate_module_entitlement(license, product, module, &wanted, now)?;
                if granted == ModuleEntitlement::default() {
                    license.module_entitlements.remove(module);
                } else {
                    license.module_entitlements.insert(module.clone(), granted);
                }
            }
            Self::FollowServerFile(terms) => {
                if terms.granted {
                    validate_seats(terms.seats)?;
                    license.seats = terms.seats;
                    license.status = LicenseStatus::Active;
                    // Reservations beyond the file's seats cannot all be honoured: the local
                    // policy goes back to plain floating rather than promise seats it lacks.
                    if license.seat_policy.reserved_seats() > terms.seats {
                        license.seat_policy = Default::default();
                    }
                } else if license.status == LicenseStatus::Active {
                    license.status = LicenseStatus::Suspended;
                }
                license.modules.clone_from(&terms.modules);
                license.module_entitlements.retain(|m, _| terms.modules.contains(m));
                license.valid_from = terms.valid_from;
                license.expires_at = terms.expires_at;
                license.grace_period_ms = terms.grace_period_ms;
            }
            Self::SetServerGrants(grants) => {
                if license.kind != crate::model::LicenseKind::Server {
                    return Err(invalid(
                        "server_grants",
                        format!(
                            "only server licenses carry grants; {} is a {} license",
                            license.license_id,
                            license.kind.as_str()
                        ),
                    ));
                }
                license.server_grants.clone_from(grants);
            }
        }
        license.updated_at = now;
        Ok(())
    }
}

/// Most new licenses one returned concurrent license may be split into.
pub const MAX_SPLIT: usize = 100;

/// A new license (Activation ID) that a returned concurrent license is re-issued as.
#[derive(Debug, Clone)]
pub struct SplitPart {
    /// License ID (`lic_…`) of the new license.
    pub license_id: String,
    /// Its share of the seats (at least 1).
    pub seats: i32,
    /// Keyed digest of its new license key.
    pub key_digest: String,
    /// Salt its activation password is derived from.
    pub activation_password_salt: String,
}

/// Re-issues a returned concurrent license as new licenses with the seats it was bought with,
/// divided as `parts` say (Hexagon's "change the quantity of seats per Activation ID"): the
/// seats add up to the license's exactly, so a customer never gains a seat (more come only from
/// the vendor) and loses none. Each new license keeps everything else (product, modules, dates,
/// seat policy, which must fit its share) and names the old one. Applied by the store with the
/// old license locked, next to [`LicenseChange::Retire`].
pub fn resplit(license: &License, parts: &[SplitPart], now: Millis) -> Result<Vec<License>, ChangeError> {
    if license.kind != crate::model::LicenseKind::Concurrent {
        return Err(ChangeError::NotAllowed(format!("license {} is not a concurrent license", license.license_id)));
    }
    if parts.is_empty() || parts.len() > MAX_SPLIT {
        return Err(invalid("split", format!("name between 1 and {MAX_SPLIT} new licenses")));
    }
    if let Some(bad) = parts.iter().find(|p| p.seats < 1) {
        return Err(invalid("split", format!("every new license needs at least 1 seat, not {}", bad.seats)));
    }
    let total: i64 = parts.iter().map(|p| i64::from(p.seats)).sum();
    if total != i64::from(license.seats) {
        return Err(invalid(
            "split",
            format!(
                "the new licenses must share the {} seats of license {} exactly, not {total}: more seats come only from your vendor",
                license.seats, license.license_id
            ),
        ));
    }
    parts
        .iter()
        .map(|part| {
            license.seat_policy.validate(part.seats, license.expires_at, now).map_err(|e| {
                invalid("split", format!("the license's seat policy does not fit a share of {} seats: {e}", part.seats))
            })?;
            Ok(License {
                license_id: part.license_id.clone(),
                status: LicenseStatus::Active,
                seats: part.seats,
                activations_used: 0,
                deactivations_used: 0,
                replaces_license_id: Some(license.license_id.clone()),
                created_at: now,
                updated_at: now,
                ..license.clone()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LicenseKind;

    fn concurrent(seats: i32) -> License {
        License {
            license_id: "lic_OLD".into(),
            product_code: "p".into(),
            customer_id: "cus_X".into(),
            kind: LicenseKind::Concurrent,
            status: LicenseStatus::Active,
            seats,
            allowed_deactivations: UNLIMITED,
            activations_used: 0,
            deactivations_used: 0,
            modules: vec!["render".into()],
            module_entitlements: Default::default(),
            valid_from: 1,
            expires_at: Some(1_000_000),
            grace_period_ms: 0,
            upgrades_until: None,
            associated_customer_id: Some("cus_X".into()),
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
            created_at: 1,
            updated_at: 1,
        }
    }

    fn parts(seats: &[i32]) -> Vec<SplitPart> {
        seats
            .iter()
            .enumerate()
            .map(|(i, &seats)| SplitPart {
                license_id: format!("lic_NEW{i}"),
                seats,
                key_digest: format!("k{i}"),
                activation_password_salt: format!("s{i}"),
            })
            .collect()
    }

    #[test]
    fn a_licensee_name_is_trimmed_bounded_and_empty_means_the_company() {
        let mut license = concurrent(1);
        let product = crate::model::Product {
            code: "p".into(),
            name: "P".into(),
            modules: vec![],
            versions: vec![],
            created_at: 0,
        };
        LicenseChange::SetLicenseeName("  Acme Research Lab ".into()).apply(&mut license, &product, 5).unwrap();
        assert_eq!((license.licensee_name.as_str(), license.updated_at), ("Acme Research Lab", 5));
        for bad in ["line\nbreak".to_owned(), "x".repeat(MAX_LICENSEE_NAME_CHARS + 1)] {
            let err = LicenseChange::SetLicenseeName(bad).apply(&mut license, &product, 6).unwrap_err();
            assert!(matches!(err, ChangeError::Invalid { field: "licensee_name", .. }), "{err}");
        }
        assert_eq!(license.licensee_name, "Acme Research Lab", "a refused name changes nothing");
        LicenseChange::SetLicenseeName(String::new()).apply(&mut license, &product, 7).unwrap();
        assert_eq!(license.licensee_name, "");
        license.status = LicenseStatus::Retired;
        let err = LicenseChange::SetLicenseeName("Late".into()).apply(&mut license, &product, 8).unwrap_err();
        assert!(matches!(err, ChangeError::NotAllowed(_)));
    }

    #[test]
    fn a_grace_period_is_bounded_and_names_its_field() {
        let mut license = concurrent(1);
        let product = crate::model::Product {
            code: "p".into(),
            name: "P".into(),
            modules: vec![],
            versions: vec![],
            created_at: 0,
        };
        LicenseChange::SetGracePeriod(7 * crate::clock::DAY).apply(&mut license, &product, 5).unwrap();
        assert_eq!(
            (license.grace_period_ms, license.grace_ends_at()),
            (7 * crate::clock::DAY, Some(1_000_000 + 7 * crate::clock::DAY))
        );
        for bad in [-1, crate::model::MAX_GRACE_PERIOD + 1] {
            let err = LicenseChange::SetGracePeriod(bad).apply(&mut license, &product, 6).unwrap_err();
            assert!(matches!(err, ChangeError::Invalid { field: "grace_period", .. }), "{err}");
        }
        assert_eq!(license.grace_period_ms, 7 * crate::clock::DAY, "a refused value changes nothing");
        LicenseChange::SetGracePeriod(crate::model::MAX_GRACE_PERIOD).apply(&mut license, &product, 7).unwrap();
        LicenseChange::SetGracePeriod(0).apply(&mut license, &product, 8).unwrap();
        assert_eq!(license.grace_ends_at(), license.expires_at);
    }

    #[test]
    fn a_heartbeat_timeout_is_bounded_and_only_for_node_locked_licenses() {
        let product = crate::model::Product {
            code: "p".into(),
            name: "P".into(),
            modules: vec![],
            versions: vec![],
            created_at: 0,
        };
        let mut license = License { kind: LicenseKind::NodeLocked, ..concurrent(1) };
        LicenseChange::SetHeartbeatTimeout(Some(MIN_HEARTBEAT_TIMEOUT)).apply(&mut license, &product, 5).unwrap();
        assert_eq!(license.heartbeat_timeout_ms, Some(MIN_HEARTBEAT_TIMEOUT));
        for bad in [MIN_HEARTBEAT_TIMEOUT - 1, MAX_HEARTBEAT_TIMEOUT + 1, 0, -1] {
            let err = LicenseChange::SetHeartbeatTimeout(Some(bad)).apply(&mut license, &product, 6).unwrap_err();
            assert!(
                matches!(&err, ChangeError::Invalid { field: "heartbeat_timeout", message } if message.contains("60 s")),
                "{err}"
            );
        }
        assert_eq!(license.heartbeat_timeout_ms, Some(MIN_HEARTBEAT_TIMEOUT), "a refused timeout changes nothing");
        LicenseChange::SetHeartbeatTimeout(None).apply(&mut license, &product, 7).unwrap();
        assert_eq!(license.heartbeat_timeout_ms, None);
        let mut floating = concurrent(1);
        let err = LicenseChange::SetHeartbeatTimeout(Some(MIN_HEARTBEAT_TIMEOUT)).apply(&mut floating, &product, 8);
        assert!(matches!(err, Err(ChangeError::Invalid { field: "heartbeat_timeout", .. })), "{err:?}");
    }

    #[test]
    fn a_module_entitlement_is_checked_field_by_field_and_a_refusal_changes_nothing() {
        let mut license = concurrent(1);
        let product = crate::model::Product {
            code: "p".into(),
            name: "P".into(),
            modules: vec![
                crate::model::Module { code: "render".into(), name: "Render".into() },
                crate::model::Module { code: "export".into(), name: "Export".into() },
            ],
            versions: vec![],
            created_at: 0,
        };
        let set = |module: &str, value: Option<&str>, expires_at| LicenseChange::SetModuleEntitlement {
            module: module.into(),
            value: value.map(str::to_owned),
            expires_at,
        };
        set("render", Some(" 4096 "), Some(500)).apply(&mut license, &product, 5).unwrap();
        let granted = &license.module_entitlements["render"];
        assert_eq!((granted.value.as_deref(), granted.expires_at), (Some("4096"), Some(500)));
        assert!(license.module_licensed("render", 499).is_ok());
        let expired = license.module_licensed("render", 500).unwrap_err();
        assert!(expired.message.contains("expired at"), "{}", expired.message);
        assert_eq!(license.modules_licensed_at(500), vec![]);
        let before = license.clone();
        for (change, field) in [
            (set("nope", None, None), "module"),
            (set("export", Some("1"), None), "module"),
            (set("render", Some(&"x".repeat(MAX_ENTITLEMENT_VALUE_CHARS + 1)), None), "value"),
            (set("render", Some("a\0b"), None), "value"),
            (set("render", Some("line\nbreak"), None), "value"),
            (set("render", None, Some(5)), "expires_at"),
            (set("render", None, Some(1)), "expires_at"),
        ] {
            let err = change.apply(&mut license, &product, 5).unwrap_err();
            assert!(matches!(err, ChangeError::Invalid { field: f, .. } if f == field), "{field}: {err}");
        }
        assert_eq!(license, before, "refusals change nothing");
        set("render", None, None).apply(&mut license, &product, 6).unwrap();
        assert!(license.module_entitlements.is_empty(), "neither value nor expiry: no entry");
        set("render", Some("8"), None).apply(&mut license, &product, 7).unwrap();
        LicenseChange::RemoveModules(vec!["render".into()]).apply(&mut license, &product, 8).unwrap();
        assert!(license.module_entitlements.is_empty(), "a removed module takes its entitlement along");
    }

    #[test]
    fn a_returned_license_is_resplit_within_the_seats_bought() {
        let old = concurrent(10);
        let new = resplit(&old, &parts(&[6, 4]), 50).unwrap();
        assert_eq!(new.iter().map(|l| l.seats).collect::<Vec<_>>(), [6, 4]);
        assert!(new.iter().all(|l| l.replaces_license_id.as_deref() == Some("lic_OLD") && l.modules == old.modules));
        assert!(new.iter().all(|l| l.expires_at == old.expires_at && l.created_at == 50));
        for bad in [&[6, 5][..], &[5], &[10, 0], &[11, -1], &[]] {
            assert!(
                matches!(resplit(&old, &parts(bad), 50), Err(ChangeError::Invalid { field: "split", .. })),
                "{bad:?}"
            );
        }
        let named = License { licensee_name: "Acme Research".into(), ..concurrent(10) };
        assert!(resplit(&named, &parts(&[6, 4]), 50).unwrap().iter().all(|l| l.licensee_name == "Acme Research"));
        let node_locked = License { kind: LicenseKind::NodeLocked, ..concurrent(10) };
        assert!(matches!(resplit(&node_locked, &parts(&[10]), 50), Err(ChangeError::NotAllowed(_))));
    }
}
