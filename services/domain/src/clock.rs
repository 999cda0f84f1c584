//! Wall-clock time in milliseconds since the Unix epoch, behind a trait so tests can move time.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (UTC). Every stored instant uses this unit.
pub type Millis = i64;

/// One second in [`Millis`].
pub const SECOND: Millis = 1_000;
/// One minute in [`Millis`].
pub const MINUTE: Millis = 60 * SECOND;
/// One hour in [`Millis`].
pub const HOUR: Millis = 60 * MINUTE;
/// One day (24 hours) in [`Millis`].
pub const DAY: Millis = 24 * HOUR;

/// The source of "now" for everything that stores or compares instants.
pub trait Clock: Send + Sync + 'static {
    /// The current instant, in Unix milliseconds.
    fn now(&self) -> Millis;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    // The one reading of the system's clock; everything else asks an injected clock.
    #[allow(clippy::disallowed_methods)]
    fn now(&self) -> Millis {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
    }
}

/// A clock tests set and advance by hand.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock that reads `start` (Unix ms) until moved.
    pub fn new(start: Millis) -> Self {
        Self(Arc::new(AtomicI64::new(start)))
    }
    /// Moves the clock forward by `by` ms (backward if negative).
    pub fn advance(&self, by: Millis) {
        self.0.fetch_add(by, Ordering::SeqCst);
    }
    /// Sets the clock to `to` (Unix ms).
    pub fn set(&self, to: Millis) {
        self.0.store(to, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}

/// The clock the services hold, shared between them.
pub type SharedClock = Arc<dyn Clock>;

/// The real clock, as a [`SharedClock`].
pub fn system_clock() -> SharedClock {
    Arc::new(SystemClock)
}

/// An instant as people and programs read it in messages and logs: RFC 3339 in UTC, with
/// milliseconds when there are any (`2026-12-02T05:10:26.07Z`).
pub fn rfc3339(at: Millis) -> String {
    jiff::Timestamp::from_millisecond(at)
        .map_or_else(|_| format!("{at} ms after 1970-01-01T00:00:00Z"), |t| t.to_string())
}

/// `months` calendar months after `at` (UTC), the day clamped to the month's last (31 January
/// plus one month is 28 or 29 February); `None` when out of range.
pub fn add_months(at: Millis, months: i32) -> Option<Millis> {
    use jiff::ToSpan as _;
    let utc = jiff::tz::TimeZone::UTC;
    let later = utc.to_datetime(jiff::Timestamp::from_millisecond(at).ok()?).checked_add(months.months()).ok()?;
    Some(utc.to_timestamp(later).ok()?.as_millisecond())
}

/// A date people type (`2027-12-31`, the start of that day in UTC) or an RFC 3339 instant
/// (`2027-12-31T12:00:00Z`). Impossible dates (`2027-02-31`) are refused, with why.
pub fn parse_instant(text: &str) -> Result<Millis, String> {
    let text = text.trim();
    if let Ok(t) = text.parse::<jiff::Timestamp>() {
        return Ok(t.as_millisecond());
    }
    let date = text.parse::<jiff::civil::Date>().map_err(|e| {
        if text.len() == 10 && text.as_bytes().get(4) == Some(&b'-') {
            format!("{} is not a date: {e}", crate::text::quoted(text))
        } else {
            format!(
                "{} is not a date (YYYY-MM-DD) or an RFC 3339 time (YYYY-MM-DDTHH:MM:SSZ)",
                crate::text::quoted(text)
            )
        }
    })?;
    let midnight = jiff::tz::TimeZone::UTC.to_timestamp(date.to_datetime(jiff::civil::Time::midnight()));
    midnight.map(|t| t.as_millisecond()).map_err(|e| format!("{}: {e}", crate::text::quoted(text)))
}

/// `YYYY-MM-DD` of a UTC day, counted in days since 1970-01-01.
pub fn utc_date(day: i64) -> String {
    jiff::Timestamp::from_second(day.saturating_mul(86_400))
        .map_or_else(|_| format!("day {day}"), |t| jiff::tz::TimeZone::UTC.to_datetime(t).date().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_read_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_188_226_070), "2026-12-02T05:10:26.07Z");
        assert!(rfc3339(i64::MAX).contains("ms after 1970"));
    }

    #[test]
    fn months_are_calendar_months() {
        let at = |text: &str| parse_instant(text).unwrap();
        assert_eq!(add_months(at("2026-12-02T10:00:00Z"), 12), Some(at("2027-12-02T10:00:00Z")));
        assert_eq!(add_months(at("2027-01-31"), 1), Some(at("2027-02-28")));
        assert_eq!(add_months(at("2028-01-31"), 1), Some(at("2028-02-29")));
        assert_eq!(add_months(at("2026-11-30"), 3), Some(at("2027-02-28")));
        assert_eq!(add_months(i64::MAX, 1), None);
    }

    #[test]
    fn typed_dates_are_checked_against_the_calendar() {
        assert_eq!(parse_instant("2027-12-31"), Ok(1_830_211_200_000));
        assert_eq!(parse_instant("2027-12-31T12:00:00Z"), Ok(1_830_254_400_000));
        let impossible = parse_instant("2027-02-31").unwrap_err();
        assert!(impossible.contains("2027-02-31") && impossible.contains("day"), "{impossible}");
        assert!(parse_instant("31.12.2027").is_err());
        assert!(parse_instant("").is_err());
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(20_818), "2026-12-31");
    }
}
