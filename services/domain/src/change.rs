//! Admin changes to a license: validated against the current license and applied as pure
//! functions, so the store can apply one inside its transaction (row locked) and the rules live
//! in one place.

use crate::clock::Millis;
use crate::model::{License, LicenseStatus, Product, UNLIMITED};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LicenseChange {
    Suspend,
    Reinstate,
    Renew {
        expires_at: Millis,
    },
    SetSeats(i32),
    SetAllowedDeactivations(i32),
    AddModules(Vec<String>),
    RemoveModules(Vec<String>),
    ExtendUpgradePeriod {
        upgrades_until: Millis,
    },
    SetPortalDeactivationCounts(bool),
    SetSeatPolicy(crate::seat_policy::SeatPolicy),
    Associate(Option<String>),
    /// Associates with this account unless another account holds the license.
    Claim(String),
    /// Moves the association from one account to another; fails unless `from` holds it.
    Transfer {
        from: String,
        to: String,
    },
    Retire,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    #[error("{0}")]
    NotAllowed(String),
}

fn invalid(field: &'static str, message: impl Into<String>) -> ChangeError {
    ChangeError::Invalid { field, message: message.into() }
}

/// Seats or activations a license may have.
pub const MAX_SEATS: i32 = 1_000_000;

pub fn validate_seats(seats: i32) -> Result<(), ChangeError> {
    if !(1..=MAX_SEATS).contains(&seats) {
        return Err(invalid("seats", format!("must be between 1 and {MAX_SEATS}, got {seats}")));
    }
    Ok(())
}

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
                format!("product '{}' has no module '{m}' (known: {})", product.code, known.join(", ")),
            ));
        }
        if modules[..i].contains(m) {
            return Err(invalid("modules", format!("module '{m}' is listed twice")));
        }
    }
    Ok(())
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
                        return Err(invalid("modules", format!("the license already has module '{m}'")));
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
                        return Err(invalid("modules", format!("the license has no module '{m}'")));
                    }
                }
                license.modules.retain(|m| !modules.contains(m));
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
        }
        license.updated_at = now;
        Ok(())
    }
}
