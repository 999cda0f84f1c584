//! Per-license seat policy of a concurrent license (what FlexNet's options file and RLM's ISV
//! options give), and the pure rules that decide whether a checkout gets a new seat.
//!
//! The service turns a policy and a checkout into a [`crate::store::CheckoutCommand`]: the
//! principals of the checkout, the reservations it may draw on, the caps it is under. The lease
//! store then decides atomically with [`decide_new_seat`] (the SQL store) or the same rule in
//! Lua (Redis), so the policy logic lives here and the stores only count.

use crate::change::{ChangeError, MAX_SEATS};
use crate::clock::{Millis, DAY};
use crate::text::quoted;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Which checkouts share one seat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShareScope {
    /// Every checkout takes a seat of its own.
    #[default]
    None,
    /// Checkouts of a feature by the same user on the same host share a seat.
    UserHost,
    /// Checkouts of a feature by the same user share a seat, on any host.
    User,
    /// Checkouts of a feature on the same host share a seat, by any user.
    Host,
}

/// What a [`Principal`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PrincipalKind {
    /// A user name as the client reports it.
    User,
    /// A host name as the client reports it.
    Host,
    /// A group: one of the policy's [`SeatGroup`]s, or one the product vouches for.
    Group,
}

/// A user, host or group named in a policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Principal {
    /// User, host or group.
    pub kind: PrincipalKind,
    /// The user, host or group name, matched exactly.
    pub name: String,
}

impl Principal {
    /// The user `name`.
    pub fn user(name: impl Into<String>) -> Self {
        Self { kind: PrincipalKind::User, name: name.into() }
    }
    /// The host `name`.
    pub fn host(name: impl Into<String>) -> Self {
        Self { kind: PrincipalKind::Host, name: name.into() }
    }
    /// The group `name`.
    pub fn group(name: impl Into<String>) -> Self {
        Self { kind: PrincipalKind::Group, name: name.into() }
    }

    /// The key the lease stores count seats under: `u:alice`, `h:ws-7`, `g:design`.
    pub fn key(&self) -> String {
        let tag = match self.kind {
            PrincipalKind::User => 'u',
            PrincipalKind::Host => 'h',
            PrincipalKind::Group => 'g',
        };
        format!("{tag}:{}", self.name)
    }

    /// The principal a [`Principal::key`] names, if it is one.
    pub fn from_key(key: &str) -> Option<Self> {
        let (tag, name) = key.split_once(':')?;
        let kind = match tag {
            "u" => PrincipalKind::User,
            "h" => PrincipalKind::Host,
            "g" => PrincipalKind::Group,
            _ => return None,
        };
        Some(Self { kind, name: name.to_owned() })
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            PrincipalKind::User => "user",
            PrincipalKind::Host => "host",
            PrincipalKind::Group => "group",
        };
        write!(f, "{kind} {}", quoted(&self.name))
    }
}

/// Seats set aside for one principal: only its checkouts take them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// Who the seats are for.
    pub principal: Principal,
    /// Seats reserved (at least 1).
    pub seats: i32,
}

/// The most seats one principal's checkouts may hold at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatCap {
    /// Whose checkouts are capped.
    pub principal: Principal,
    /// Most seats they may hold (0 forbids any).
    pub max_seats: i32,
}

/// A named group of users and hosts (FlexNet's GROUP and HOST_GROUP in one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatGroup {
    /// Group name, unique in the policy; reservations, caps and lists name it as a group principal.
    pub name: String,
    /// Users and hosts; a checkout belongs to the group when its user or its host is listed.
    pub members: Vec<Principal>,
}

/// The seat policy of one concurrent license. The default is plain floating: no sharing,
/// linger, borrowing, overdraft, reservations or limits, every feature costing one seat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SeatPolicy {
    /// Which checkouts share one seat.
    pub share_scope: ShareScope,
    /// Processes that may share one seat; 0 means no limit.
    pub max_processes_per_seat: i32,
    /// How long a checked-in seat stays held for the same user, host and feature.
    pub linger_ms: i64,
    /// The longest a seat may be borrowed for offline use; 0 means borrowing is not allowed.
    pub max_borrow_ms: i64,
    /// Seats a checkout may take beyond the license's seats (flagged as overdraft).
    pub overdraft_seats: i32,
    /// Seats set aside for users, hosts or groups; at most the license's seats in all.
    pub reservations: Vec<Reservation>,
    /// Most seats a user, host or group may hold.
    pub caps: Vec<SeatCap>,
    /// When not empty, only these may check out.
    pub allow: Vec<Principal>,
    /// Never these; deny wins over allow.
    pub deny: Vec<Principal>,
    /// Seats a checkout of a feature costs; features not listed cost one.
    pub feature_costs: BTreeMap<String, i32>,
    /// Lease TTL when the client asks for none; 0 means the server's default.
    pub default_ttl_ms: i64,
    /// Named groups of users and hosts the other entries may refer to.
    pub groups: Vec<SeatGroup>,
}

/// Bounds that keep a policy (and the work a checkout does with it) small.
pub const MAX_POLICY_ENTRIES: usize = 100;
/// Most members one group may list.
pub const MAX_GROUP_MEMBERS: usize = 1000;
/// Longest linger period (7 days).
pub const MAX_LINGER_MS: i64 = 7 * DAY;
/// Longest borrow period (366 days).
pub const MAX_BORROW_MS: i64 = 366 * DAY;
/// Longest principal, group or feature name, in characters.
pub const MAX_NAME: usize = 128;

fn invalid(field: &'static str, message: impl Into<String>) -> ChangeError {
    ChangeError::Invalid { field, message: message.into() }
}

fn check_name(field: &'static str, name: &str) -> Result<(), ChangeError> {
    match crate::text::bounded_text(name, MAX_NAME, true) {
        Ok(trimmed) if trimmed == name => Ok(()),
        Ok(_) => Err(invalid(field, format!("{} must not start or end with spaces", quoted(name)))),
        Err(m) => Err(invalid(field, format!("{}: {m}", quoted(name)))),
    }
}

fn check_len<T>(field: &'static str, items: &[T], max: usize) -> Result<(), ChangeError> {
    if items.len() > max {
        return Err(invalid(field, format!("at most {max} entries, got {}", items.len())));
    }
    Ok(())
}

fn check_unique<'a>(field: &'static str, principals: impl Iterator<Item = &'a Principal>) -> Result<(), ChangeError> {
    let mut seen = std::collections::HashSet::new();
    for p in principals {
        check_name(field, &p.name)?;
        if !seen.insert(p) {
            return Err(invalid(field, format!("{p} is listed twice")));
        }
    }
    Ok(())
}

fn check_duration(field: &'static str, ms: i64, max: i64) -> Result<(), ChangeError> {
    if !(0..=max).contains(&ms) {
        return Err(invalid(field, format!("must be between 0 and {} days", max / DAY)));
    }
    Ok(())
}

impl SeatPolicy {
    /// Checks the policy against the license it is for; the first bad field is named.
    pub fn validate(&self, seats: i32, expires_at: Option<Millis>, now: Millis) -> Result<(), ChangeError> {
        if self.max_processes_per_seat < 0 {
            return Err(invalid("max_processes_per_seat", "must not be negative (0 means no limit)"));
        }
        check_duration("linger", self.linger_ms, MAX_LINGER_MS)?;
        check_duration("max_borrow", self.max_borrow_ms, MAX_BORROW_MS)?;
        if let Some(expires_at) = expires_at {
            if self.max_borrow_ms > 0 && now + self.max_borrow_ms > expires_at {
                return Err(invalid(
                    "max_borrow",
                    format!(
                        "a borrow of {} h would outlive the license, which expires at {}",
                        self.max_borrow_ms / 3_600_000,
                        crate::clock::rfc3339(expires_at)
                    ),
                ));
            }
        }
        check_duration("default_ttl", self.default_ttl_ms, DAY)?;
        if !(0..=MAX_SEATS).contains(&self.overdraft_seats) {
            return Err(invalid("overdraft_seats", format!("must be between 0 and {MAX_SEATS}")));
        }
        check_len("reservations", &self.reservations, MAX_POLICY_ENTRIES)?;
        check_unique("reservations", self.reservations.iter().map(|r| &r.principal))?;
        let mut reserved: i64 = 0;
        for r in &self.reservations {
            if r.seats < 1 {
                return Err(invalid("reservations", format!("{} must reserve at least one seat", r.principal)));
            }
            reserved += i64::from(r.seats);
        }
        if reserved > i64::from(seats) {
            return Err(invalid("reservations", format!("{reserved} seats reserved but the license has only {seats}")));
        }
        check_len("caps", &self.caps, MAX_POLICY_ENTRIES)?;
        check_unique("caps", self.caps.iter().map(|c| &c.principal))?;
        if let Some(c) = self.caps.iter().find(|c| c.max_seats < 0) {
            return Err(invalid("caps", format!("the cap of {} must not be negative", c.principal)));
        }
        check_len("allow", &self.allow, MAX_POLICY_ENTRIES)?;
        check_unique("allow", self.allow.iter())?;
        check_len("deny", &self.deny, MAX_POLICY_ENTRIES)?;
        check_unique("deny", self.deny.iter())?;
        if self.feature_costs.len() > MAX_POLICY_ENTRIES {
            return Err(invalid("feature_costs", format!("at most {MAX_POLICY_ENTRIES} entries")));
        }
        for (feature, cost) in &self.feature_costs {
            check_name("feature_costs", feature)?;
            if *cost < 1 || *cost > seats.saturating_add(self.overdraft_seats) {
                return Err(invalid(
                    "feature_costs",
                    format!(
                        "feature {} must cost between 1 and the license's {seats} seats (plus overdraft)",
                        quoted(feature)
                    ),
                ));
            }
        }
        check_len("groups", &self.groups, MAX_POLICY_ENTRIES)?;
        let mut names = std::collections::HashSet::new();
        for g in &self.groups {
            check_name("groups", &g.name)?;
            if !names.insert(&g.name) {
                return Err(invalid("groups", format!("group {} is defined twice", quoted(&g.name))));
            }
            check_len("groups", &g.members, MAX_GROUP_MEMBERS)?;
            check_unique("groups", g.members.iter())?;
            if let Some(m) = g.members.iter().find(|m| m.kind == PrincipalKind::Group) {
                return Err(invalid(
                    "groups",
                    format!("group {} lists {m}: members are users and hosts", quoted(&g.name)),
                ));
            }
        }
        Ok(())
    }

    /// Seats reserved in all.
    pub fn reserved_seats(&self) -> i32 {
        self.reservations.iter().map(|r| r.seats).sum()
    }

    /// Seats a checkout of `feature` costs.
    pub fn cost(&self, feature: &str) -> i32 {
        self.feature_costs.get(feature).copied().unwrap_or(1)
    }

    /// The principals a checkout by `user` on `host` counts as: itself, its host, the policy's
    /// groups listing either, and the groups the product vouched for.
    pub fn principals(&self, user: &str, host: &str, declared_groups: &[String]) -> Vec<Principal> {
        let mut out = vec![];
        if !user.is_empty() {
            out.push(Principal::user(user));
        }
        if !host.is_empty() {
            out.push(Principal::host(host));
        }
        for g in &self.groups {
            if out.iter().take(2).any(|p| g.members.contains(p)) {
                out.push(Principal::group(&g.name));
            }
        }
        for g in declared_groups {
            let p = Principal::group(g);
            if !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }

    /// Allow and deny lists; deny wins.
    pub fn admits(&self, principals: &[Principal]) -> Result<(), SeatDenial> {
        if let Some(p) = principals.iter().find(|p| self.deny.contains(p)) {
            return Err(SeatDenial::Denied { principal: p.to_string() });
        }
        if !self.allow.is_empty() && !principals.iter().any(|p| self.allow.contains(p)) {
            return Err(SeatDenial::NotAllowed);
        }
        Ok(())
    }

    /// The key of the seat a checkout may share, when the policy shares seats.
    pub fn share_key(&self, user: &str, host: &str, feature: &str) -> Option<String> {
        let who = match self.share_scope {
            ShareScope::None => return None,
            ShareScope::UserHost => format!("uh:{user}\u{1e}{host}"),
            ShareScope::User => format!("u:{user}"),
            ShareScope::Host => format!("h:{host}"),
        };
        Some(format!("{feature}\u{1e}{who}"))
    }

    /// Reservations (as store keys with their seats) and caps that apply to `principals`.
    pub fn limits_for(&self, principals: &[Principal]) -> SeatLimits {
        SeatLimits {
            reservations: self.reservations.iter().map(|r| (r.principal.key(), r.seats)).collect(),
            candidates: self
                .reservations
                .iter()
                .filter(|r| principals.contains(&r.principal))
                .map(|r| r.principal.key())
                .collect(),
            caps: self
                .caps
                .iter()
                .filter(|c| principals.contains(&c.principal))
                .map(|c| (c.principal.key(), c.max_seats))
                .collect(),
            principals: principals.iter().map(Principal::key).collect(),
            overdraft: self.overdraft_seats,
        }
    }
}

/// What the lease store needs to decide a new seat, all keyed by [`Principal::key`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeatLimits {
    /// Every reservation of the policy: its key and its seats.
    pub reservations: Vec<(String, i32)>,
    /// The reservations this checkout may draw on, in policy order.
    pub candidates: Vec<String>,
    /// Caps on this checkout's principals: key and the most seats they may hold.
    pub caps: Vec<(String, i32)>,
    /// This checkout's principals, counted for caps.
    pub principals: Vec<String>,
    /// Seats a checkout may take beyond the license's seats.
    pub overdraft: i32,
}

/// Why a checkout got no seat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeatDenial {
    /// Every seat (and any overdraft) is held.
    Full,
    /// Seats are idle, but reserved for others.
    Reserved,
    /// A cap on one of the checkout's principals is reached.
    CapReached {
        /// The capped principal's key ([`Principal::key`]).
        principal: String,
        /// Its cap.
        max_seats: i32,
    },
    /// A deny entry matches.
    Denied {
        /// The principal denied, as people read it (`user 'alice'`).
        principal: String,
    },
    /// The policy has an allow list and the checkout is not on it.
    NotAllowed,
    /// A general seat is free, but clients waiting for one (WaitForSeat) come first.
    Queued,
}

impl SeatDenial {
    /// Stable reason, as recorded in the usage log and sent in the error details.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Full => "NO_SEAT_AVAILABLE",
            Self::Reserved => "SEATS_RESERVED",
            Self::CapReached { .. } => "CAP_REACHED",
            Self::Denied { .. } => "DENIED",
            Self::NotAllowed => "NOT_ALLOWED",
            // No seat for this caller now, as for Full: it may wait in line too.
            Self::Queued => "NO_SEAT_AVAILABLE",
        }
    }
}

/// Seats held in a pool, as the store counts them: live seat groups only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolUsage {
    /// Seats held in all.
    pub in_use: i32,
    /// Seats held per reservation key ("" is the general pool).
    pub by_bucket: HashMap<String, i32>,
    /// Seats held per principal key.
    pub by_principal: HashMap<String, i32>,
}

/// Where a new seat is charged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatCharge {
    /// The reservation key it draws on, or "" for the general pool.
    pub bucket: String,
    /// The seat is beyond the license's seats.
    pub overdraft: bool,
}

/// Decides whether a new seat of `cost` may be taken: caps, then the reservations the checkout
/// may draw on, then the general pool with overdraft.
///
/// This function (the SQL lease store) and `services/store/lua/checkout.lua` (Redis) implement
/// one decision, each over its own counters: change them together. The store conformance suite
/// runs the same cases against both.
///
/// `queue_blocked`: clients are waiting for a seat ahead of this checkout. They wait for a
/// general seat, so they hold back only those: a seat reserved for this checkout is still its own.
pub fn decide_new_seat(
    seats: i32,
    cost: i32,
    limits: &SeatLimits,
    pool: &PoolUsage,
    queue_blocked: bool,
) -> Result<SeatCharge, SeatDenial> {
    let used = |map: &HashMap<String, i32>, key: &str| map.get(key).copied().unwrap_or(0);
    for (key, max_seats) in &limits.caps {
        if used(&pool.by_principal, key) + cost > *max_seats {
            return Err(SeatDenial::CapReached { principal: key.clone(), max_seats: *max_seats });
        }
    }
    for key in &limits.candidates {
        let reserved = limits.reservations.iter().find(|(k, _)| k == key).map_or(0, |(_, s)| *s);
        if used(&pool.by_bucket, key) + cost <= reserved {
            return Ok(SeatCharge { bucket: key.clone(), overdraft: false });
        }
    }
    if queue_blocked {
        return Err(SeatDenial::Queued);
    }
    let reserved: i32 = limits.reservations.iter().map(|(_, s)| *s).sum();
    let held_in_reservations: i32 = limits.reservations.iter().map(|(k, s)| used(&pool.by_bucket, k).min(*s)).sum();
    let general_used = pool.in_use - held_in_reservations;
    let general_seats = seats - reserved;
    if general_used + cost > general_seats + limits.overdraft {
        return Err(if pool.in_use + cost <= seats + limits.overdraft {
            SeatDenial::Reserved
        } else {
            SeatDenial::Full
        });
    }
    Ok(SeatCharge { bucket: String::new(), overdraft: general_used + cost > general_seats })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> SeatPolicy {
        SeatPolicy {
            reservations: vec![Reservation { principal: Principal::group("design"), seats: 2 }],
            caps: vec![SeatCap { principal: Principal::user("mallory"), max_seats: 1 }],
            groups: vec![SeatGroup {
                name: "design".into(),
                members: vec![Principal::user("ann"), Principal::host("ws-1")],
            }],
            ..SeatPolicy::default()
        }
    }

    fn usage(in_use: i32, bucket: &[(&str, i32)], principal: &[(&str, i32)]) -> PoolUsage {
        PoolUsage {
            in_use,
            by_bucket: bucket.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            by_principal: principal.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn group_membership_comes_from_user_or_host() {
        let p = policy();
        assert!(p.principals("ann", "x", &[]).contains(&Principal::group("design")));
        assert!(p.principals("bob", "ws-1", &[]).contains(&Principal::group("design")));
        assert!(!p.principals("bob", "ws-2", &[]).contains(&Principal::group("design")));
        assert!(p.principals("bob", "ws-2", &["ops".into()]).contains(&Principal::group("ops")));
    }

    #[test]
    fn reserved_seats_are_kept_from_others_even_when_idle() {
        let p = policy();
        let others = p.limits_for(&p.principals("bob", "ws-9", &[]));
        // 4 seats, 2 reserved, 2 held by others: the idle reserved ones are not for bob.
        assert_eq!(decide_new_seat(4, 1, &others, &usage(2, &[], &[]), false), Err(SeatDenial::Reserved));
        let member = p.limits_for(&p.principals("ann", "ws-9", &[]));
        assert_eq!(decide_new_seat(4, 1, &member, &usage(2, &[], &[]), false).unwrap().bucket, "g:design");
        // With the reservation used up, members fall back to the general pool.
        let full_reservation = usage(3, &[("g:design", 2)], &[]);
        assert_eq!(decide_new_seat(4, 1, &member, &full_reservation, false).unwrap().bucket, "");
        assert_eq!(decide_new_seat(4, 1, &member, &usage(4, &[("g:design", 2)], &[]), false), Err(SeatDenial::Full));
    }

    #[test]
    fn waiters_hold_back_general_seats_but_not_a_reservation_of_the_caller() {
        let p = policy();
        let member = p.limits_for(&p.principals("ann", "ws-9", &[]));
        let others = p.limits_for(&p.principals("bob", "ws-9", &[]));
        let idle = usage(1, &[], &[]);
        assert_eq!(decide_new_seat(4, 1, &member, &idle, true).unwrap().bucket, "g:design");
        assert_eq!(decide_new_seat(4, 1, &others, &idle, true), Err(SeatDenial::Queued));
        // With the reservation used up, a member waits in line for a general seat like anyone.
        assert_eq!(decide_new_seat(4, 1, &member, &usage(3, &[("g:design", 2)], &[]), true), Err(SeatDenial::Queued));
        assert_eq!(SeatDenial::Queued.reason(), SeatDenial::Full.reason());
    }

    #[test]
    fn principal_keys_read_back() {
        for p in [Principal::user("a:b"), Principal::host("h"), Principal::group("g")] {
            assert_eq!(Principal::from_key(&p.key()), Some(p));
        }
        assert_eq!(Principal::from_key("x:y"), None);
        assert_eq!(Principal::from_key("plain"), None);
    }

    #[test]
    fn overdraft_is_flagged_and_bounded() {
        let p = SeatPolicy { overdraft_seats: 1, ..SeatPolicy::default() };
        let limits = p.limits_for(&[]);
        assert!(!decide_new_seat(2, 1, &limits, &usage(1, &[], &[]), false).unwrap().overdraft);
        assert!(decide_new_seat(2, 1, &limits, &usage(2, &[], &[]), false).unwrap().overdraft);
        assert_eq!(decide_new_seat(2, 1, &limits, &usage(3, &[], &[]), false), Err(SeatDenial::Full));
    }

    #[test]
    fn caps_apply_to_their_principal_only() {
        let p = policy();
        let mallory = p.limits_for(&p.principals("mallory", "h", &[]));
        let denied = decide_new_seat(10, 1, &mallory, &usage(1, &[], &[("u:mallory", 1)]), false);
        assert_eq!(denied, Err(SeatDenial::CapReached { principal: "u:mallory".into(), max_seats: 1 }));
        let bob = p.limits_for(&p.principals("bob", "h", &[]));
        assert!(decide_new_seat(10, 1, &bob, &usage(1, &[], &[("u:mallory", 1)]), false).is_ok());
    }

    #[test]
    fn deny_wins_over_allow() {
        let p = SeatPolicy {
            allow: vec![Principal::user("ann"), Principal::host("ws-1")],
            deny: vec![Principal::host("ws-1")],
            ..SeatPolicy::default()
        };
        assert!(p.admits(&p.principals("ann", "ws-2", &[])).is_ok());
        assert_eq!(
            p.admits(&p.principals("ann", "ws-1", &[])),
            Err(SeatDenial::Denied { principal: "host 'ws-1'".into() })
        );
        assert_eq!(p.admits(&p.principals("bob", "ws-2", &[])), Err(SeatDenial::NotAllowed));
    }

    #[test]
    fn contradictory_policies_name_the_field() {
        let field = |p: SeatPolicy, expires: Option<Millis>| match p.validate(3, expires, 0) {
            Err(ChangeError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let over = SeatPolicy {
            reservations: vec![Reservation { principal: Principal::user("a"), seats: 4 }],
            ..Default::default()
        };
        assert_eq!(field(over, None), "reservations");
        let negative =
            SeatPolicy { caps: vec![SeatCap { principal: Principal::user("a"), max_seats: -1 }], ..Default::default() };
        assert_eq!(field(negative, None), "caps");
        let long_borrow = SeatPolicy { max_borrow_ms: 10 * DAY, ..Default::default() };
        assert_eq!(field(long_borrow, Some(DAY)), "max_borrow");
        let costly = SeatPolicy { feature_costs: [("cad".to_string(), 4)].into(), ..Default::default() };
        assert_eq!(field(costly, None), "feature_costs");
        assert!(policy().validate(3, None, 0).is_ok());
    }
}
