//! Usage reports of a concurrent license, computed from its usage log.
//!
//! Seats are counted per seat (lease group), not per lease: several processes sharing one seat
//! hold it once. A seat's hours go to the user who opened it.

use crate::change::ChangeError;
use crate::clock::{Millis, DAY, HOUR};
use crate::model::{UsageEvent, UsageKind};
use std::collections::{BTreeMap, HashMap};

/// The longest period one report covers.
pub const MAX_REPORT_DAYS: i64 = 366;
/// Users listed in a report, most seat hours first.
pub const TOP_USERS: usize = 10;

/// A report period from a request: unset `to` is `now`, unset `from` is 30 days before `to`;
/// `from` must come first and the period be at most [`MAX_REPORT_DAYS`] long.
pub fn report_period(from: Option<Millis>, to: Option<Millis>, now: Millis) -> Result<(Millis, Millis), ChangeError> {
    let to = to.unwrap_or(now);
    let from = from.unwrap_or(to - 30 * DAY);
    if from >= to {
        return Err(ChangeError::Invalid { field: "from", message: "must be before to".into() });
    }
    if to - from > MAX_REPORT_DAYS * DAY {
        return Err(ChangeError::Invalid {
            field: "to",
            message: format!("a report covers at most {MAX_REPORT_DAYS} days"),
        });
    }
    Ok((from, to))
}

/// One day (UTC) of a usage report.
#[derive(Debug, Clone, PartialEq)]
pub struct DailyUsage {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    /// Most seats held at once that day.
    pub peak_seats: i32,
    /// Seat hours held that day (a seat held one hour is one).
    pub seat_hours: f64,
    /// Checkouts that took a new lease that day.
    pub checkouts: i64,
    /// Checkouts refused that day.
    pub denials: i64,
}

/// One user's line in a usage report.
#[derive(Debug, Clone, PartialEq)]
pub struct UserUsage {
    /// User name as clients reported it.
    pub user: String,
    /// Seat hours of the seats the user opened.
    pub seat_hours: f64,
    /// Checkouts by the user.
    pub checkouts: i64,
}

/// What a license's seats were used for over a period.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageReport {
    /// License ID.
    pub license_id: String,
    /// Start of the period (Unix ms).
    pub from: Millis,
    /// End of the period (Unix ms, exclusive).
    pub to: Millis,
    /// Each day of the period, oldest first.
    pub days: Vec<DailyUsage>,
    /// Seat hours over the whole period.
    pub total_seat_hours: f64,
    /// Reason and count, most frequent first.
    pub denials: Vec<(String, i64)>,
    /// At most [`TOP_USERS`] users, most seat hours first.
    pub top_users: Vec<UserUsage>,
    /// Checkouts that took a new lease.
    pub checkouts: i64,
    /// Checkouts that took an overdraft seat.
    pub overdraft_checkouts: i64,
    /// Events the usage queue lost (it was full); the figures above miss them.
    pub events_dropped: i64,
}

/// `YYYY-MM-DD` of a day number since 1970-01-01.
pub fn civil_date(days: i64) -> String {
    crate::clock::utc_date(days)
}

fn hours(seat_ms: i128) -> f64 {
    seat_ms as f64 / HOUR as f64
}

/// Running state: which seats are held, by whom, and the seat-milliseconds so far.
#[derive(Default)]
struct Replay {
    /// Open seats: group ID -> (user who opened it, seats).
    seats: HashMap<String, (String, i32)>,
    level: i32,
    by_user: HashMap<String, i32>,
    last: Millis,
    seat_ms: i128,
    day_seat_ms: BTreeMap<i64, i128>,
    user_seat_ms: HashMap<String, i128>,
    peaks: BTreeMap<i64, i32>,
}

impl Replay {
    fn observe(&mut self, t: Millis) {
        if let Some(peak) = self.peaks.get_mut(&t.div_euclid(DAY)) {
            *peak = (*peak).max(self.level);
        }
    }

    /// Accumulates seat time from the last point to `t`, day by day.
    fn advance(&mut self, t: Millis) {
        while self.last < t {
            let next_midnight = (self.last.div_euclid(DAY) + 1) * DAY;
            let until = t.min(next_midnight);
            let span = i128::from(until - self.last);
            let ms = i128::from(self.level) * span;
            self.seat_ms += ms;
            *self.day_seat_ms.entry(self.last.div_euclid(DAY)).or_default() += ms;
            for (user, level) in &self.by_user {
                *self.user_seat_ms.entry(user.clone()).or_default() += i128::from(*level) * span;
            }
            self.last = until;
            self.observe(until);
        }
    }

    fn apply(&mut self, e: &UsageEvent) {
        if e.seats_delta > 0 {
            let seat = self.seats.entry(e.group_id.clone()).or_insert_with(|| (e.user.clone(), 0));
            seat.1 += e.seats_delta;
            *self.by_user.entry(seat.0.clone()).or_default() += e.seats_delta;
            self.level += e.seats_delta;
        } else if e.seats_delta < 0 {
            // Freed by whoever left last; charged back to whoever opened it.
            let owner = match self.seats.remove(&e.group_id) {
                Some((owner, held)) => {
                    self.level -= held.min(-e.seats_delta);
                    owner
                }
                None => e.user.clone(),
            };
            if let Some(level) = self.by_user.get_mut(&owner) {
                *level = (*level + e.seats_delta).max(0);
            }
            self.by_user.retain(|_, l| *l > 0);
        }
        self.level = self.level.max(0);
    }
}

impl UsageReport {
    /// The report of `[from, to)` from every event of the license before `to`, in order.
    /// Seats still held count up to `now`, never into the future.
    pub fn compute(license_id: &str, events: &[UsageEvent], from: Millis, to: Millis, now: Millis) -> Self {
        let mut replay = Replay { last: from, ..Replay::default() };
        let first_day = from.div_euclid(DAY);
        let last_day = (to - 1).div_euclid(DAY);
        for day in first_day..=last_day {
            replay.peaks.insert(day, 0);
        }
        let mut started = false;
        let mut daily_checkouts: BTreeMap<i64, i64> = BTreeMap::new();
        let mut daily_denials: BTreeMap<i64, i64> = BTreeMap::new();
        let mut denials: HashMap<String, i64> = HashMap::new();
        let mut user_checkouts: HashMap<String, i64> = HashMap::new();
        let (mut checkouts, mut overdraft_checkouts, mut events_dropped) = (0, 0, 0);
        for e in events.iter().filter(|e| e.occurred_at < to) {
            if e.occurred_at < from {
                replay.apply(e);
                continue;
            }
            if !started {
                started = true;
                replay.observe(from);
            }
            replay.advance(e.occurred_at);
            replay.apply(e);
            replay.observe(e.occurred_at);
            let day = e.occurred_at.div_euclid(DAY);
            match e.kind {
                UsageKind::Checkout => {
                    checkouts += 1;
                    overdraft_checkouts += i64::from(e.overdraft);
                    *daily_checkouts.entry(day).or_default() += 1;
                    *user_checkouts.entry(e.user.clone()).or_default() += 1;
                }
                UsageKind::Denied => {
                    *denials.entry(e.reason.clone()).or_default() += 1;
                    *daily_denials.entry(day).or_default() += 1;
                }
                UsageKind::Dropped => events_dropped += e.count,
                _ => {}
            }
        }
        if !started {
            replay.observe(from);
        }
        replay.advance(to.min(now));

        let days = replay
            .peaks
            .iter()
            .map(|(day, peak)| DailyUsage {
                day: civil_date(*day),
                peak_seats: *peak,
                seat_hours: hours(replay.day_seat_ms.get(day).copied().unwrap_or(0)),
                checkouts: daily_checkouts.get(day).copied().unwrap_or(0),
                denials: daily_denials.get(day).copied().unwrap_or(0),
            })
            .collect();
        let mut denials: Vec<(String, i64)> = denials.into_iter().collect();
        denials.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut users: Vec<String> = replay.user_seat_ms.keys().chain(user_checkouts.keys()).cloned().collect();
        users.sort();
        users.dedup();
        let mut top_users: Vec<UserUsage> = users
            .into_iter()
            .map(|user| UserUsage {
                seat_hours: hours(replay.user_seat_ms.get(&user).copied().unwrap_or(0)),
                checkouts: user_checkouts.get(&user).copied().unwrap_or(0),
                user,
            })
            .filter(|u| u.seat_hours > 0.0 || u.checkouts > 0)
            .collect();
        top_users.sort_by(|a, b| {
            b.seat_hours.total_cmp(&a.seat_hours).then(b.checkouts.cmp(&a.checkouts)).then(a.user.cmp(&b.user))
        });
        top_users.truncate(TOP_USERS);
        Self {
            license_id: license_id.to_owned(),
            from,
            to,
            days,
            total_seat_hours: hours(replay.seat_ms),
            denials,
            top_users,
            checkouts,
            overdraft_checkouts,
            events_dropped,
        }
    }

    /// The report as CSV in long form (`metric,day,subject,value`), one figure a row, so a
    /// spreadsheet can pivot it. Names are quoted, and a leading `=`, `+`, `-` or `@` is
    /// defused so a spreadsheet never runs a user name as a formula.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("metric,day,subject,value\n");
        let mut row = |metric: &str, day: &str, subject: &str, value: String| {
            out.push_str(&format!("{metric},{day},{},{value}\n", csv_field(subject)));
        };
        row("license", "", &self.license_id, String::new());
        for d in &self.days {
            row("peak_seats", &d.day, "", d.peak_seats.to_string());
            row("seat_hours", &d.day, "", format!("{:.4}", d.seat_hours));
            row("checkouts", &d.day, "", d.checkouts.to_string());
            row("denials", &d.day, "", d.denials.to_string());
        }
        row("total_seat_hours", "", "", format!("{:.4}", self.total_seat_hours));
        row("total_checkouts", "", "", self.checkouts.to_string());
        row("overdraft_checkouts", "", "", self.overdraft_checkouts.to_string());
        for (reason, count) in &self.denials {
            row("denials_by_reason", "", reason, count.to_string());
        }
        for u in &self.top_users {
            row("user_seat_hours", "", &u.user, format!("{:.4}", u.seat_hours));
            row("user_checkouts", "", &u.user, u.checkouts.to_string());
        }
        row("events_dropped", "", "", self.events_dropped.to_string());
        out
    }
}

fn csv_field(value: &str) -> String {
    let defused = if value.starts_with(['=', '+', '-', '@']) { format!("'{value}") } else { value.to_owned() };
    if defused.contains([',', '"', '\n', '\r']) || defused != value {
        format!("\"{}\"", defused.replace('"', "\"\""))
    } else {
        defused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(at: Millis, kind: UsageKind, group: &str, user: &str, delta: i32) -> UsageEvent {
        UsageEvent {
            license_id: "lic".into(),
            occurred_at: at,
            kind,
            lease_id: group.into(),
            group_id: group.into(),
            user: user.into(),
            host: "h".into(),
            feature: String::new(),
            seats_delta: delta,
            overdraft: false,
            borrowed: false,
            reason: if kind == UsageKind::Denied { "NO_SEAT_AVAILABLE".into() } else { String::new() },
            count: 1,
        }
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(19_723), "2024-01-01");
        assert_eq!(civil_date(20_414), "2025-11-22");
    }

    #[test]
    fn seat_hours_span_midnight_and_start_before_the_period() {
        let day = 20_000 * DAY;
        let events = vec![
            // Opened the day before the period: counts from the period's start.
            event(day - HOUR, UsageKind::Checkout, "a", "ann", 1),
            event(day + 2 * HOUR, UsageKind::Checkin, "a", "ann", -1),
            event(day + 23 * HOUR, UsageKind::Checkout, "b", "bob", 2),
            event(day + 25 * HOUR, UsageKind::Checkin, "b", "bob", -2),
            event(day + 24 * HOUR, UsageKind::Denied, "", "cy", 0),
        ];
        let mut sorted = events.clone();
        sorted.sort_by_key(|e| e.occurred_at);
        let r = UsageReport::compute("lic", &sorted, day, day + 2 * DAY, day + 3 * DAY);
        assert_eq!(r.days.len(), 2);
        assert_eq!((r.days[0].peak_seats, r.days[1].peak_seats), (2, 2));
        assert!((r.days[0].seat_hours - 4.0).abs() < 1e-9, "{:?}", r.days);
        assert!((r.days[1].seat_hours - 2.0).abs() < 1e-9);
        assert!((r.total_seat_hours - 6.0).abs() < 1e-9);
        assert_eq!(r.top_users[0].user, "bob");
        assert_eq!(r.denials, vec![("NO_SEAT_AVAILABLE".to_string(), 1)]);
        assert_eq!(r.checkouts, 1);
        // Seats still held are not counted into the future.
        let open = &sorted[..1];
        let r = UsageReport::compute("lic", open, day, day + 2 * DAY, day + HOUR);
        assert!((r.total_seat_hours - 1.0).abs() < 1e-9, "{}", r.total_seat_hours);
    }

    #[test]
    fn lost_events_are_reported() {
        let lost = UsageEvent { kind: UsageKind::Dropped, count: 7, ..event(10 * HOUR, UsageKind::Dropped, "", "", 0) };
        let r = UsageReport::compute("lic", &[lost], 0, DAY, DAY);
        assert_eq!(r.events_dropped, 7);
        assert!(r.to_csv().contains("events_dropped,,,7\n"));
    }

    #[test]
    fn csv_defuses_formulas_and_quotes() {
        assert_eq!(csv_field("ann"), "ann");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
    }
}
