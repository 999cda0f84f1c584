//! Conversions shared by the gRPC adapters.

use licensing_domain::clock::Millis;
use prost_types::Timestamp;

/// A request field that cannot be converted: which one, and why, for a person. Each service's
/// error turns it into its INVALID_ARGUMENT with the field named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The request field at fault, e.g. `expires_at`.
    pub field: &'static str,
    /// What is wrong with it, for a person.
    pub message: String,
}

impl FieldError {
    /// A field error from its field and message.
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self { field, message: message.into() }
    }
}

/// A protobuf timestamp of an instant (Unix ms).
pub fn to_timestamp(millis: Millis) -> Timestamp {
    Timestamp { seconds: millis.div_euclid(1000), nanos: (millis.rem_euclid(1000) * 1_000_000) as i32 }
}

/// A protobuf timestamp of an optional instant (Unix ms).
pub fn opt_timestamp(millis: Option<Millis>) -> Option<Timestamp> {
    millis.map(to_timestamp)
}

/// Latest instant accepted anywhere (year 9999), so arithmetic on instants cannot overflow.
pub const MAX_MILLIS: Millis = 253_402_300_799_999;

/// A timestamp from a request, or why it cannot be one (out of range).
pub fn from_timestamp(field: &'static str, ts: &Timestamp) -> Result<Millis, FieldError> {
    if !(0..=999_999_999).contains(&ts.nanos) {
        return Err(FieldError::new(field, "nanos must be between 0 and 999999999"));
    }
    let millis = ts
        .seconds
        .checked_mul(1000)
        .and_then(|ms| ms.checked_add(i64::from(ts.nanos / 1_000_000)))
        .filter(|ms| (0..=MAX_MILLIS).contains(ms));
    millis.ok_or_else(|| FieldError::new(field, "must be between 1970-01-01 and 9999-12-31"))
}

/// [`from_timestamp`] of a field that may be unset (`None`).
pub fn from_opt_timestamp(field: &'static str, ts: Option<&Timestamp>) -> Result<Option<Millis>, FieldError> {
    ts.map(|t| from_timestamp(field, t)).transpose()
}

/// A protobuf duration of `millis` ms.
pub fn to_duration(millis: i64) -> prost_types::Duration {
    prost_types::Duration { seconds: millis.div_euclid(1000), nanos: (millis.rem_euclid(1000) * 1_000_000) as i32 }
}

/// Milliseconds of a request's duration (unset is 0), or why it cannot be one: negative, nanos
/// outside a second (protobuf's own range), or longer than any date this server accepts.
pub fn from_duration(field: &'static str, d: Option<&prost_types::Duration>) -> Result<i64, FieldError> {
    match d {
        None => Ok(0),
        Some(d) if d.seconds < 0 || d.nanos < 0 => Err(FieldError::new(field, "must not be negative")),
        Some(d) if d.nanos > 999_999_999 => Err(FieldError::new(field, "nanos must be between 0 and 999999999")),
        Some(d) => d
            .seconds
            .checked_mul(1000)
            .and_then(|ms| ms.checked_add(i64::from(d.nanos / 1_000_000)))
            .filter(|ms| *ms <= MAX_MILLIS)
            .ok_or_else(|| FieldError::new(field, "is too long")),
    }
}

pub mod seat {
    //! Seat policies and usage reports to and from `licensing.seat.v1`.
    use super::{from_duration, to_duration, to_timestamp, FieldError};
    use licensing_domain::seat_policy::*;
    use licensing_domain::usage::UsageReport;
    use licensing_proto::seat::v1 as pb;

    fn principal(p: &Principal) -> pb::Principal {
        let kind = match p.kind {
            PrincipalKind::User => pb::PrincipalKind::User,
            PrincipalKind::Host => pb::PrincipalKind::Host,
            PrincipalKind::Group => pb::PrincipalKind::Group,
        };
        pb::Principal { kind: kind as i32, name: p.name.clone() }
    }

    fn principal_from(field: &'static str, p: Option<&pb::Principal>) -> Result<Principal, FieldError> {
        let p = p.ok_or_else(|| FieldError::new(field, "every entry needs a principal"))?;
        let kind = match pb::PrincipalKind::try_from(p.kind) {
            Ok(pb::PrincipalKind::User) => PrincipalKind::User,
            Ok(pb::PrincipalKind::Host) => PrincipalKind::Host,
            Ok(pb::PrincipalKind::Group) => PrincipalKind::Group,
            _ => {
                return Err(FieldError::new(
                    field,
                    format!("principal {} needs a kind: USER, HOST or GROUP", licensing_domain::text::quoted(&p.name)),
                ));
            }
        };
        Ok(Principal { kind, name: p.name.clone() })
    }

    /// The protobuf form of a seat policy.
    pub fn policy(p: &SeatPolicy) -> pb::SeatPolicy {
        let share_scope = match p.share_scope {
            ShareScope::None => pb::ShareScope::None,
            ShareScope::UserHost => pb::ShareScope::UserHost,
            ShareScope::User => pb::ShareScope::User,
            ShareScope::Host => pb::ShareScope::Host,
        };
        pb::SeatPolicy {
            share_scope: share_scope as i32,
            max_processes_per_seat: p.max_processes_per_seat,
            linger: Some(to_duration(p.linger_ms)),
            max_borrow: Some(to_duration(p.max_borrow_ms)),
            overdraft_seats: p.overdraft_seats,
            reservations: p
                .reservations
                .iter()
                .map(|r| pb::Reservation { principal: Some(principal(&r.principal)), seats: r.seats })
                .collect(),
            caps: p
                .caps
                .iter()
                .map(|c| pb::SeatCap { principal: Some(principal(&c.principal)), max_seats: c.max_seats })
                .collect(),
            allow: p.allow.iter().map(principal).collect(),
            deny: p.deny.iter().map(principal).collect(),
            feature_costs: p.feature_costs.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            default_ttl: Some(to_duration(p.default_ttl_ms)),
            groups: p
                .groups
                .iter()
                .map(|g| pb::SeatGroup { name: g.name.clone(), members: g.members.iter().map(principal).collect() })
                .collect(),
        }
    }

    /// A policy from a request; the error names the field. Values are checked by
    /// [`SeatPolicy::validate`] afterwards, against the license.
    pub fn policy_from(p: &pb::SeatPolicy) -> Result<SeatPolicy, FieldError> {
        let share_scope = match pb::ShareScope::try_from(p.share_scope) {
            Ok(pb::ShareScope::Unspecified | pb::ShareScope::None) => ShareScope::None,
            Ok(pb::ShareScope::UserHost) => ShareScope::UserHost,
            Ok(pb::ShareScope::User) => ShareScope::User,
            Ok(pb::ShareScope::Host) => ShareScope::Host,
            Err(_) => return Err(FieldError::new("share_scope", format!("unknown share scope {}", p.share_scope))),
        };
        let ms = from_duration;
        let list = |field: &'static str, items: &[pb::Principal]| {
            items.iter().map(|p| principal_from(field, Some(p))).collect::<Result<Vec<_>, _>>()
        };
        Ok(SeatPolicy {
            share_scope,
            max_processes_per_seat: p.max_processes_per_seat,
            linger_ms: ms("linger", p.linger.as_ref())?,
            max_borrow_ms: ms("max_borrow", p.max_borrow.as_ref())?,
            overdraft_seats: p.overdraft_seats,
            reservations: p
                .reservations
                .iter()
                .map(|r| {
                    Ok(Reservation { principal: principal_from("reservations", r.principal.as_ref())?, seats: r.seats })
                })
                .collect::<Result<_, _>>()?,
            caps: p
                .caps
                .iter()
                .map(|c| {
                    Ok(SeatCap { principal: principal_from("caps", c.principal.as_ref())?, max_seats: c.max_seats })
                })
                .collect::<Result<_, _>>()?,
            allow: list("allow", &p.allow)?,
            deny: list("deny", &p.deny)?,
            feature_costs: p.feature_costs.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            default_ttl_ms: ms("default_ttl", p.default_ttl.as_ref())?,
            groups: p
                .groups
                .iter()
                .map(|g| Ok(SeatGroup { name: g.name.clone(), members: list("groups", &g.members)? }))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The report as the response; `with_csv` adds its CSV form.
    pub fn usage_report(r: &UsageReport, with_csv: bool) -> pb::GetUsageReportResponse {
        pb::GetUsageReportResponse {
            daily_peaks: r
                .days
                .iter()
                .map(|d| pb::DailyPeak {
                    day: d.day.clone(),
                    peak_seats: d.peak_seats,
                    seat_hours: d.seat_hours,
                    checkouts: d.checkouts,
                    denials: d.denials,
                })
                .collect(),
            total_seat_hours: r.total_seat_hours,
            denials: r
                .denials
                .iter()
                .map(|(reason, count)| pb::DenialCount { reason: reason.clone(), count: *count })
                .collect(),
            top_users: r
                .top_users
                .iter()
                .map(|u| pb::UserUsage { user: u.user.clone(), seat_hours: u.seat_hours, checkouts: u.checkouts })
                .collect(),
            events_dropped: r.events_dropped,
            csv: if with_csv { r.to_csv() } else { String::new() },
            checkouts: r.checkouts,
            overdraft_checkouts: r.overdraft_checkouts,
            from: Some(to_timestamp(r.from)),
            to: Some(to_timestamp(r.to)),
        }
    }
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
        assert_eq!(from_timestamp("t", &Timestamp { seconds: 0, nanos: -5 }).unwrap_err().field, "t");
        let too_many_nanos = prost_types::Duration { seconds: 1, nanos: 1_000_000_000 };
        assert_eq!(from_duration("ttl", Some(&too_many_nanos)).unwrap_err().field, "ttl");
    }
}

pub mod proto {
    //! Domain types to and from the shared `licensing.common.v1` messages.
    use super::{from_opt_timestamp, opt_timestamp, to_timestamp, FieldError};
    use licensing_domain::meter::{Meter, MeterReset, MeterUsage};
    use licensing_domain::model::{
        AuditEvent, Customer, Lease, License, LicenseKind, LicenseStatus, Module, ModuleEntitlement, Product,
    };
    use licensing_domain::policy::{LicenseTerms, Policy, TermsStart};
    use licensing_proto::common::v1 as pb;

    /// The protobuf form of a license kind.
    pub fn kind_to_proto(kind: LicenseKind) -> pb::LicenseKind {
        match kind {
            LicenseKind::NodeLocked => pb::LicenseKind::NodeLocked,
            LicenseKind::Concurrent => pb::LicenseKind::Concurrent,
            LicenseKind::Cloud => pb::LicenseKind::Cloud,
            LicenseKind::Server => pb::LicenseKind::Server,
        }
    }

    /// `None` for UNSPECIFIED or an unknown number.
    pub fn kind_from_proto(value: i32) -> Option<LicenseKind> {
        match pb::LicenseKind::try_from(value).ok()? {
            pb::LicenseKind::NodeLocked => Some(LicenseKind::NodeLocked),
            pb::LicenseKind::Concurrent => Some(LicenseKind::Concurrent),
            pb::LicenseKind::Cloud => Some(LicenseKind::Cloud),
            pb::LicenseKind::Server => Some(LicenseKind::Server),
            pb::LicenseKind::Unspecified => None,
        }
    }

    /// The protobuf form of a server license's grant.
    pub fn server_grant(g: &licensing_domain::server_license::ServerGrant) -> pb::ServerGrant {
        pb::ServerGrant {
            product_code: g.product_code.clone(),
            feature: g.feature.clone(),
            floating_seats: g.floating_seats,
            node_locked_activations: g.node_locked_activations,
        }
    }

    /// A server license's grant from its protobuf form (checked by the use case).
    pub fn server_grant_from_proto(g: pb::ServerGrant) -> licensing_domain::server_license::ServerGrant {
        licensing_domain::server_license::ServerGrant {
            product_code: g.product_code,
            feature: g.feature,
            floating_seats: g.floating_seats,
            node_locked_activations: g.node_locked_activations,
        }
    }

    /// The protobuf form of a license status.
    pub fn status_to_proto(status: LicenseStatus) -> pb::LicenseStatus {
        match status {
            LicenseStatus::Active => pb::LicenseStatus::Active,
            LicenseStatus::Suspended => pb::LicenseStatus::Suspended,
            LicenseStatus::Retired => pb::LicenseStatus::Retired,
        }
    }

    /// `None` for UNSPECIFIED or an unknown number.
    pub fn status_from_proto(value: i32) -> Option<LicenseStatus> {
        match pb::LicenseStatus::try_from(value).ok()? {
            pb::LicenseStatus::Active => Some(LicenseStatus::Active),
            pb::LicenseStatus::Suspended => Some(LicenseStatus::Suspended),
            pb::LicenseStatus::Retired => Some(LicenseStatus::Retired),
            pb::LicenseStatus::Unspecified => None,
        }
    }

    /// A license as its customer sees it (the portal, and products validating it): everything
    /// but the vendor's internal notes.
    pub fn customer_license(l: &License) -> pb::License {
        pb::License { notes: String::new(), ..license(l) }
    }

    /// A license as the vendor sees it (the admin API).
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
            licensee_name: l.licensee_name.clone(),
            heartbeat_timeout: l.heartbeat_timeout_ms.map(super::to_duration),
            grace_period: (l.grace_period_ms > 0).then(|| super::to_duration(l.grace_period_ms)),
            grace_ends_at: opt_timestamp(l.grace_ends_at()),
            meters: l.meters.iter().map(meter).collect(),
            module_entitlements: l.module_entitlements.iter().map(|(m, e)| module_entitlement(m, e)).collect(),
            policy_id: l.policy_id.clone().unwrap_or_default(),
            policy_revision: l.policy_revision,
            starts_at_first_use: l.first_use.is_some(),
            first_used_at: opt_timestamp(l.first_use.as_ref().and_then(|f| f.started_at)),
            validity_from_first_use: l
                .first_use
                .as_ref()
                .filter(|f| f.started_at.is_none())
                .and_then(|f| f.validity_ms)
                .map(super::to_duration),
            upgrade_period_from_first_use: l
                .first_use
                .as_ref()
                .filter(|f| f.started_at.is_none())
                .and_then(|f| f.upgrade_period_ms)
                .map(super::to_duration),
            server_grants: l.server_grants.iter().map(server_grant).collect(),
        }
    }

    /// The protobuf form of a policy.
    pub fn policy(p: &Policy) -> pb::Policy {
        pb::Policy {
            policy_id: p.policy_id.clone(),
            product_code: p.product_code.clone(),
            name: p.name.clone(),
            revision: p.revision,
            terms: Some(terms(&p.terms)),
            created_at: Some(to_timestamp(p.created_at)),
            updated_at: Some(to_timestamp(p.updated_at)),
        }
    }

    /// The protobuf form of a policy's terms.
    pub fn terms(t: &LicenseTerms) -> pb::LicenseTerms {
        pb::LicenseTerms {
            kind: kind_to_proto(t.kind) as i32,
            seats: t.seats,
            allowed_deactivations: t.allowed_deactivations,
            modules: t.modules.clone(),
            validity: t.validity_ms.map(super::to_duration),
            upgrade_period: t.upgrade_period_ms.map(super::to_duration),
            start: match t.start {
                TermsStart::Issue => pb::TermsStart::Issue,
                TermsStart::FirstUse => pb::TermsStart::FirstUse,
            } as i32,
            grace_period: (t.grace_period_ms > 0).then(|| super::to_duration(t.grace_period_ms)),
            heartbeat_timeout: t.heartbeat_timeout_ms.map(super::to_duration),
            meters: t.meters.iter().map(meter).collect(),
            trial: t.trial,
        }
    }

    /// Terms as sent (`terms.*` names a field at fault); bounds and contradictions are checked
    /// by the domain ([`LicenseTerms::validate`]).
    pub fn terms_from_proto(t: Option<&pb::LicenseTerms>) -> Result<LicenseTerms, FieldError> {
        let t = t.ok_or_else(|| FieldError::new("terms", "is required (kind, seats, validity, ...)"))?;
        let kind = kind_from_proto(t.kind)
            .ok_or_else(|| FieldError::new("terms.kind", "choose NODE_LOCKED, CONCURRENT or CLOUD"))?;
        let start = match pb::TermsStart::try_from(t.start) {
            Ok(pb::TermsStart::Unspecified | pb::TermsStart::Issue) => TermsStart::Issue,
            Ok(pb::TermsStart::FirstUse) => TermsStart::FirstUse,
            Err(_) => return Err(FieldError::new("terms.start", "must be TERMS_START_ISSUE or TERMS_START_FIRST_USE")),
        };
        let optional = |field: &'static str, d: Option<&prost_types::Duration>| {
            d.map(|d| super::from_duration(field, Some(d))).transpose()
        };
        Ok(LicenseTerms {
            kind,
            seats: t.seats,
            allowed_deactivations: t.allowed_deactivations,
            modules: t.modules.clone(),
            validity_ms: optional("terms.validity", t.validity.as_ref())?,
            upgrade_period_ms: optional("terms.upgrade_period", t.upgrade_period.as_ref())?,
            start,
            grace_period_ms: super::from_duration("terms.grace_period", t.grace_period.as_ref())?,
            heartbeat_timeout_ms: optional("terms.heartbeat_timeout", t.heartbeat_timeout.as_ref())?,
            meters: t.meters.iter().map(|m| meter_from_proto("terms.meters", Some(m))).collect::<Result<_, _>>()?,
            trial: t.trial,
        })
    }

    /// The protobuf form of a module's entitlement.
    pub fn module_entitlement(module: &str, e: &ModuleEntitlement) -> pb::ModuleEntitlement {
        pb::ModuleEntitlement {
            module: module.to_owned(),
            value: e.value.clone().unwrap_or_default(),
            expires_at: opt_timestamp(e.expires_at),
        }
    }

    /// A module's entitlement as sent (an empty value is none); `field` names it in errors.
    /// Its bounds are checked by the domain against the license
    /// ([`licensing_domain::change::validate_module_entitlement`]).
    pub fn module_entitlement_from_proto(
        field: &'static str,
        e: &pb::ModuleEntitlement,
    ) -> Result<(String, ModuleEntitlement), FieldError> {
        let expires_at = from_opt_timestamp(field, e.expires_at.as_ref())?;
        let value = Some(e.value.clone()).filter(|v| !v.is_empty());
        Ok((e.module.clone(), ModuleEntitlement { value, expires_at }))
    }

    /// The protobuf form of a meter.
    pub fn meter(m: &Meter) -> pb::Meter {
        let reset = match m.reset {
            MeterReset::Monthly => pb::MeterReset::Monthly,
            MeterReset::Yearly => pb::MeterReset::Yearly,
            MeterReset::Never => pb::MeterReset::Never,
        };
        pb::Meter { code: m.code.clone(), limit: m.limit, overage: m.overage, reset: reset as i32 }
    }

    /// A meter as sent; `field` names it in the error (e.g. `meter`, `meters`). Its bounds are
    /// checked by the domain ([`Meter::validate`]).
    pub fn meter_from_proto(field: &'static str, m: Option<&pb::Meter>) -> Result<Meter, FieldError> {
        let m = m.ok_or_else(|| FieldError::new(field, "is required (code, limit, overage, reset)"))?;
        let reset = match pb::MeterReset::try_from(m.reset) {
            Ok(pb::MeterReset::Monthly) => MeterReset::Monthly,
            Ok(pb::MeterReset::Yearly) => MeterReset::Yearly,
            Ok(pb::MeterReset::Never) => MeterReset::Never,
            _ => {
                return Err(FieldError::new(
                    field,
                    "reset must be METER_RESET_MONTHLY, METER_RESET_YEARLY or METER_RESET_NEVER",
                ))
            }
        };
        Ok(Meter { code: m.code.clone(), limit: m.limit, overage: m.overage, reset })
    }

    /// A meter's count in one period, in protobuf form.
    pub fn meter_usage(u: &MeterUsage) -> pb::MeterUsage {
        let never = u.meter.reset == MeterReset::Never;
        pb::MeterUsage {
            meter: Some(meter(&u.meter)),
            period_start: (!never).then(|| to_timestamp(u.period.start)),
            period_end: opt_timestamp(u.period.end),
            used: u.used,
            remaining: u.remaining(),
            overage_used: u.overage_used(),
        }
    }

    /// The protobuf form of a product.
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

    /// A module from its protobuf form.
    pub fn module_from_proto(m: &pb::Module) -> Module {
        Module { code: m.code.clone(), name: m.name.clone() }
    }

    /// The protobuf form of a customer.
    pub fn customer(c: &Customer) -> pb::Customer {
        pb::Customer {
            customer_id: c.customer_id.clone(),
            company_name: c.company_name.clone(),
            contact_email: c.contact_email.clone(),
            created_at: Some(to_timestamp(c.created_at)),
            contact_name: c.contact_name.clone(),
            phone: c.phone.clone(),
        }
    }

    /// The protobuf form of an audit-log entry.
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

    /// The protobuf form of a lease.
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
            borrowed: l.borrowed,
            overdraft: l.overdraft,
            shared_processes: l.shared_processes,
            lingering: l.lingering,
        }
    }

    /// The domain page of a request page (the token is the last key of the previous page).
    /// The page a request asks for. A page token is one this server handed out: short, and
    /// text every backend can store (a NUL in it is invalid input, as PostgreSQL refuses one).
    ///
    /// `field` names the request's page field (`page`, `installations_page`, ...) in a refusal.
    pub fn page(
        field: &'static str,
        p: Option<&pb::PageRequest>,
    ) -> Result<licensing_domain::model::Page, super::FieldError> {
        let p = p.cloned().unwrap_or_default();
        let token_field = match field {
            "installations_page" => "installations_page.page_token",
            "history_page" => "history_page.page_token",
            _ => "page.page_token",
        };
        if p.page_token.chars().count() > 200 {
            return Err(super::FieldError::new(token_field, "is not a page token this server handed out"));
        }
        licensing_domain::text::storable(&p.page_token).map_err(|m| super::FieldError::new(token_field, m))?;
        Ok(licensing_domain::model::Page {
            after: Some(p.page_token).filter(|t| !t.is_empty()),
            limit: u32::try_from(p.page_size).unwrap_or(0),
        })
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
