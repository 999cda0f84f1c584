//! Conversions shared by the gRPC adapters.

use licensing_domain::clock::Millis;
use prost_types::Timestamp;

pub fn to_timestamp(millis: Millis) -> Timestamp {
    Timestamp { seconds: millis.div_euclid(1000), nanos: (millis.rem_euclid(1000) * 1_000_000) as i32 }
}

pub fn opt_timestamp(millis: Option<Millis>) -> Option<Timestamp> {
    millis.map(to_timestamp)
}

/// Latest instant accepted anywhere (year 9999), so arithmetic on instants cannot overflow.
pub const MAX_MILLIS: Millis = 253_402_300_799_999;

/// A timestamp from a request, or a message naming the field when it is out of range.
pub fn from_timestamp(field: &str, ts: &Timestamp) -> Result<Millis, String> {
    if !(0..=999_999_999).contains(&ts.nanos) {
        return Err(format!("{field}: nanos must be between 0 and 999999999"));
    }
    let millis = ts
        .seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(ts.nanos / 1_000_000)))
        .filter(|ms| (0..=MAX_MILLIS).contains(ms));
    millis.ok_or_else(|| format!("{field}: must be between 1970-01-01 and 9999-12-31"))
}

pub fn from_opt_timestamp(field: &str, ts: Option<&Timestamp>) -> Result<Option<Millis>, String> {
    ts.map(|t| from_timestamp(field, t)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_and_out_of_range_is_refused() {
        for ms in [0, 1, 999, 1_700_000_000_123, MAX_MILLIS] {
            assert_eq!(from_timestamp("t", &to_timestamp(ms)).unwrap(), ms);
        }
        assert!(from_timestamp("t", &Timestamp { seconds: -1, nanos: 0 }).is_err());
        assert!(from_timestamp("t", &Timestamp { seconds: i64::MAX, nanos: 0 }).is_err());
        assert!(from_timestamp("t", &Timestamp { seconds: 0, nanos: -5 }).unwrap_err().starts_with("t:"));
    }
}

pub mod proto {
    //! Domain types to and from the shared `licensing.common.v1` messages.
    use super::{opt_timestamp, to_timestamp};
    use licensing_domain::model::{AuditEvent, Customer, Lease, License, LicenseKind, LicenseStatus, Module, Product};
    use licensing_proto::common::v1 as pb;

    pub fn kind_to_proto(kind: LicenseKind) -> pb::LicenseKind {
        match kind {
            LicenseKind::NodeLocked => pb::LicenseKind::NodeLocked,
            LicenseKind::Concurrent => pb::LicenseKind::Concurrent,
            LicenseKind::Cloud => pb::LicenseKind::Cloud,
        }
    }

    /// `None` for UNSPECIFIED or an unknown number.
    pub fn kind_from_proto(value: i32) -> Option<LicenseKind> {
        match pb::LicenseKind::try_from(value).ok()? {
            pb::LicenseKind::NodeLocked => Some(LicenseKind::NodeLocked),
            pb::LicenseKind::Concurrent => Some(LicenseKind::Concurrent),
            pb::LicenseKind::Cloud => Some(LicenseKind::Cloud),
            pb::LicenseKind::Unspecified => None,
        }
    }

    pub fn status_to_proto(status: LicenseStatus) -> pb::LicenseStatus {
        match status {
            LicenseStatus::Active => pb::LicenseStatus::Active,
            LicenseStatus::Suspended => pb::LicenseStatus::Suspended,
            LicenseStatus::Retired => pb::LicenseStatus::Retired,
        }
    }

    pub fn status_from_proto(value: i32) -> Option<LicenseStatus> {
        match pb::LicenseStatus::try_from(value).ok()? {
            pb::LicenseStatus::Active => Some(LicenseStatus::Active),
            pb::LicenseStatus::Suspended => Some(LicenseStatus::Suspended),
            pb::LicenseStatus::Retired => Some(LicenseStatus::Retired),
            pb::LicenseStatus::Unspecified => None,
        }
    }

    pub fn license(l: &License) -> pb::License {
        pb::License {
            license_id: l.license_id.clone(),
            product_code: l.product_code.clone(),
            customer_id: l.customer_id.clone(),
            kind: kind_to_proto(l.kind) as i32,
            status: status_to_proto(l.status) as i32,
            seats: l.seats,
            allowed_deactivations: l.allowed_deactivations,
            activations_used: l.activations_used,
            deactivations_used: l.deactivations_used,
            modules: l.modules.clone(),
            valid_from: Some(to_timestamp(l.valid_from)),
            expires_at: opt_timestamp(l.expires_at),
            upgrades_until: opt_timestamp(l.upgrades_until),
            associated_customer_id: l.associated_customer_id.clone().unwrap_or_default(),
            portal_deactivation_counts: l.portal_deactivation_counts,
            replaces_license_id: l.replaces_license_id.clone().unwrap_or_default(),
            created_at: Some(to_timestamp(l.created_at)),
            updated_at: Some(to_timestamp(l.updated_at)),
            notes: l.notes.clone(),
        }
    }

    pub fn product(p: &Product) -> pb::Product {
        pb::Product {
            code: p.code.clone(),
            name: p.name.clone(),
            modules: p.modules.iter().map(|m| pb::Module { code: m.code.clone(), name: m.name.clone() }).collect(),
            versions: p
                .versions
                .iter()
                .map(|v| pb::ProductVersion {
                    version: v.version.clone(),
                    released_at: Some(to_timestamp(v.released_at)),
                })
                .collect(),
            created_at: Some(to_timestamp(p.created_at)),
        }
    }

    pub fn module_from_proto(m: &pb::Module) -> Module {
        Module { code: m.code.clone(), name: m.name.clone() }
    }

    pub fn customer(c: &Customer) -> pb::Customer {
        pb::Customer {
            customer_id: c.customer_id.clone(),
            company_name: c.company_name.clone(),
            contact_email: c.contact_email.clone(),
            created_at: Some(to_timestamp(c.created_at)),
        }
    }

    pub fn audit_event(e: &AuditEvent) -> pb::AuditEvent {
        pb::AuditEvent {
            sequence: e.sequence,
            occurred_at: Some(to_timestamp(e.occurred_at)),
            actor: e.actor.clone(),
            action: e.action.clone(),
            subject: e.subject.clone(),
            details_json: e.details_json.clone(),
        }
    }

    pub fn lease(l: &Lease) -> pb::Lease {
        pb::Lease {
            lease_id: l.lease_id.clone(),
            license_id: l.license_id.clone(),
            feature: l.feature.clone(),
            user: l.user.clone(),
            host: l.host.clone(),
            client_instance_id: l.client_instance_id.clone(),
            checked_out_at: Some(to_timestamp(l.checked_out_at)),
            last_heartbeat_at: Some(to_timestamp(l.last_heartbeat_at)),
            expires_at: Some(to_timestamp(l.expires_at)),
            fence: l.fence,
            seats_held: l.seats_held,
            borrowed: false,
            overdraft: false,
            shared_processes: 1,
        }
    }

    /// The domain page of a request page (the token is the last key of the previous page).
    pub fn page(p: Option<&pb::PageRequest>) -> licensing_domain::model::Page {
        let p = p.cloned().unwrap_or_default();
        licensing_domain::model::Page {
            after: Some(p.page_token).filter(|t| !t.is_empty()),
            limit: u32::try_from(p.page_size).unwrap_or(0),
        }
    }

    /// The next page token: the last key, when the page came back full.
    pub fn next_page_token<T>(items: &[T], page: &licensing_domain::model::Page, key: impl Fn(&T) -> String) -> String {
        let size = if page.limit == 0 {
            licensing_domain::model::DEFAULT_PAGE_SIZE
        } else {
            page.limit.min(licensing_domain::model::MAX_PAGE_SIZE)
        };
        match items.last() {
            Some(last) if items.len() as u32 >= size => key(last),
            _ => String::new(),
        }
    }
}
