//! Metered features (consumption): a license may carry meters, each a limit of use per period
//! (`exports` per month, `cpu-hours` per year), with an optional overage allowance. Products
//! record use with an idempotency key; the store decides each use atomically with the license
//! locked, so concurrent uses never exceed the limit and a retried use never counts twice.

use crate::clock::Millis;
use crate::text::quoted;
use serde::{Deserialize, Serialize};

/// When a meter's count starts again from zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MeterReset {
    /// At the start of every calendar month (UTC).
    Monthly,
    /// At the start of every calendar year (UTC).
    Yearly,
    /// Never: the limit is for the license's whole life.
    Never,
}

impl MeterReset {
    /// The stored and displayed name (`monthly`, `yearly`, `never`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Monthly => "monthly",
            Self::Yearly => "yearly",
            Self::Never => "never",
        }
    }

    /// The reset named by [`Self::as_str`]'s text, or `None`.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Monthly, Self::Yearly, Self::Never].into_iter().find(|r| r.as_str() == s)
    }

    /// The period `at` falls in: its start (inclusive) and end (exclusive; `None` for
    /// [`Self::Never`], whose one period starts at 0). Calendar periods in UTC.
    pub fn period(self, at: Millis) -> Period {
        use jiff::ToSpan as _;
        let utc = jiff::tz::TimeZone::UTC;
        let Ok(ts) = jiff::Timestamp::from_millisecond(at) else { return Period { start: 0, end: None } };
        let date = utc.to_datetime(ts).date();
        let (first, step) = match self {
            Self::Never => return Period { start: 0, end: None },
            Self::Monthly => (date.first_of_month(), 1.month()),
            Self::Yearly => (date.first_of_year(), 1.year()),
        };
        let at_midnight = |d: jiff::civil::Date| {
            utc.to_timestamp(d.to_datetime(jiff::civil::Time::midnight())).ok().map(|t| t.as_millisecond())
        };
        let start = at_midnight(first).unwrap_or(0);
        let end = first.checked_add(step).ok().and_then(at_midnight);
        Period { start, end }
    }
}

/// One period of a meter: uses in `[start, end)` count together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    /// First instant of the period (Unix ms); 0 for a meter that never resets.
    pub start: Millis,
    /// First instant after it (Unix ms); `None` when the meter never resets.
    pub end: Option<Millis>,
}

/// A meter of a license: how much of a feature may be used per period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meter {
    /// What is counted, e.g. `exports`; unique within the license.
    pub code: String,
    /// Use allowed per period.
    pub limit: i64,
    /// Use allowed beyond `limit` in a period (billed as overage); 0 for none.
    #[serde(default)]
    pub overage: i64,
    /// When the count starts again.
    pub reset: MeterReset,
}

/// Most meters one license may carry.
pub const MAX_METERS: usize = 32;
/// Largest limit, overage or single use: far beyond any real count, far below overflow.
pub const MAX_AMOUNT: i64 = 1_000_000_000_000;
/// Longest meter code.
pub const MAX_CODE_CHARS: usize = 64;
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 128;

/// Why a meter definition or a use was refused: the field and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct MeterInputError {
    /// The request field at fault.
    pub field: &'static str,
    /// What is wrong and what is allowed.
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> MeterInputError {
    MeterInputError { field, message: message.into() }
}

/// A meter code: 1 to [`MAX_CODE_CHARS`] of `a-z`, `0-9`, `-`, `_`, `.`, starting with a letter
/// or digit (it appears in certificates, CSV files and URLs).
pub fn validate_code(field: &'static str, code: &str) -> Result<(), MeterInputError> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.');
    let starts_well = code.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if code.is_empty() || code.chars().count() > MAX_CODE_CHARS || !starts_well || !code.chars().all(ok_char) {
        return Err(invalid(
            field,
            format!(
                "{} is not a meter code: 1 to {MAX_CODE_CHARS} of a-z, 0-9, '-', '_', '.', starting with a letter or digit",
                quoted(code)
            ),
        ));
    }
    Ok(())
}

impl Meter {
    /// Checks the definition: a valid code, a limit of 1 to [`MAX_AMOUNT`], an overage of 0 to
    /// [`MAX_AMOUNT`].
    pub fn validate(&self) -> Result<(), MeterInputError> {
        validate_code("meter.code", &self.code)?;
        if !(1..=MAX_AMOUNT).contains(&self.limit) {
            return Err(invalid("meter.limit", format!("must be between 1 and {MAX_AMOUNT}, got {}", self.limit)));
        }
        if !(0..=MAX_AMOUNT).contains(&self.overage) {
            return Err(invalid(
                "meter.overage",
                format!("must be between 0 (none) and {MAX_AMOUNT}, got {}", self.overage),
            ));
        }
        Ok(())
    }

    /// The most a period may count: the limit plus the overage allowance.
    pub fn ceiling(&self) -> i64 {
        self.limit + self.overage
    }
}

/// The meters a license is issued with: each valid, each code once, at most [`MAX_METERS`].
pub fn validate_meters(meters: &[Meter]) -> Result<(), MeterInputError> {
    if meters.len() > MAX_METERS {
        return Err(invalid("meters", format!("a license carries at most {MAX_METERS} meters, got {}", meters.len())));
    }
    for (i, meter) in meters.iter().enumerate() {
        meter.validate().map_err(|e| invalid("meters", e.to_string()))?;
        if meters[..i].iter().any(|m| m.code == meter.code) {
            return Err(invalid("meters", format!("meter {} is listed twice", quoted(&meter.code))));
        }
    }
    Ok(())
}

/// A use a product reports, to be decided by the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordUse {
    /// The license whose meter counts it.
    pub license_id: String,
    /// The meter's code.
    pub meter: String,
    /// How much was used (1 to [`MAX_AMOUNT`]).
    pub amount: i64,
    /// Chosen by the product, unique per use: a retry with the same key counts once.
    pub idempotency_key: String,
    /// When the use is recorded (Unix ms); decides its period.
    pub at: Millis,
}

impl RecordUse {
    /// Checks what the product sent: meter code, amount and idempotency key.
    pub fn validate(&self) -> Result<(), MeterInputError> {
        validate_code("meter", &self.meter)?;
        if !(1..=MAX_AMOUNT).contains(&self.amount) {
            return Err(invalid("amount", format!("must be between 1 and {MAX_AMOUNT}, got {}", self.amount)));
        }
        let key = &self.idempotency_key;
        if key.is_empty() || key.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS || key.chars().any(char::is_control) {
            return Err(invalid(
                "idempotency_key",
                format!(
                    "must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters without control characters (a UUID per use suits), got {}",
                    quoted(key)
                ),
            ));
        }
        Ok(())
    }
}

/// A meter's count in one period, after a use or as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterUsage {
    /// The meter as defined now.
    pub meter: Meter,
    /// The period counted.
    pub period: Period,
    /// Use counted in the period (may exceed the limit by up to the overage).
    pub used: i64,
}

impl MeterUsage {
    /// Use left within the limit (0 once in overage).
    pub fn remaining(&self) -> i64 {
        (self.meter.limit - self.used).max(0)
    }

    /// Use counted beyond the limit.
    pub fn overage_used(&self) -> i64 {
        (self.used - self.meter.limit).max(0)
    }
}

/// What the store made of a [`RecordUse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UseRecorded {
    /// The meter's period count after the use (for a replay: now).
    pub usage: MeterUsage,
    /// True when the idempotency key was recorded before: nothing was counted this time.
    pub replayed: bool,
}

/// Why a use was not counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UseRefused {
    /// The license has no meter with this code.
    #[error("license {license_id} has no meter {} (its meters: {known})", quoted(meter))]
    UnknownMeter {
        /// The license.
        license_id: String,
        /// The code asked for.
        meter: String,
        /// The license's meter codes, comma-separated, or "none".
        known: String,
    },
    /// The use would go past the limit and overage of the period.
    #[error("meter {} of license {license_id} has {left} left in this period (limit {limit}, overage {overage}, used {used}); {amount} is too much", quoted(meter))]
    LimitReached {
        /// The license.
        license_id: String,
        /// The meter's code.
        meter: String,
        /// The amount asked for.
        amount: i64,
        /// Counted in the period so far.
        used: i64,
        /// The meter's limit.
        limit: i64,
        /// The meter's overage allowance.
        overage: i64,
        /// What could still be counted.
        left: i64,
    },
    /// The idempotency key was recorded for a different use (another meter or amount).
    #[error(
        "idempotency key {} was used for {recorded_amount} of meter {}; send a new key for a new use",
        quoted(key),
        quoted(recorded_meter)
    )]
    KeyReused {
        /// The key.
        key: String,
        /// The meter the key was recorded for.
        recorded_meter: String,
        /// The amount it was recorded for.
        recorded_amount: i64,
    },
    /// The license is not usable (suspended, expired, ...).
    #[error("{}", .0.message)]
    NotUsable(crate::model::Refusal),
}

impl UseRefused {
    /// The stable reason gRPC reports.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownMeter { .. } => "METER_NOT_FOUND",
            Self::LimitReached { .. } => "METER_LIMIT_REACHED",
            Self::KeyReused { .. } => "IDEMPOTENCY_KEY_REUSED",
            Self::NotUsable(r) => r.reason,
        }
    }
}

/// The meters as a CSV file (one row per meter and period, oldest period first), the form the
/// portal and licensectl give for download.
pub fn usage_csv(rows: &[MeterUsage]) -> String {
    let mut out = String::from("meter,period_start,period_end,used,limit,overage_allowed,overage_used,remaining\n");
    for r in rows {
        let end = r.period.end.map(crate::clock::rfc3339).unwrap_or_default();
        let start =
            if r.meter.reset == MeterReset::Never { String::new() } else { crate::clock::rfc3339(r.period.start) };
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{}\n",
            r.meter.code,
            start,
            end,
            r.used,
            r.meter.limit,
            r.meter.overage,
            r.overage_used(),
            r.remaining()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::parse_instant;

    #[test]
    fn periods_are_calendar_months_and_years_in_utc() {
        let at = |t: &str| parse_instant(t).unwrap();
        let p = MeterReset::Monthly.period(at("2026-12-02T14:00:00Z"));
        assert_eq!(p, Period { start: at("2026-12-01"), end: Some(at("2027-01-01")) });
        let p = MeterReset::Monthly.period(at("2028-02-29T23:59:59Z"));
        assert_eq!(p, Period { start: at("2028-02-01"), end: Some(at("2028-03-01")) });
        let p = MeterReset::Yearly.period(at("2026-12-31T23:59:59.999Z"));
        assert_eq!(p, Period { start: at("2026-01-01"), end: Some(at("2027-01-01")) });
        // The first instant of a period belongs to it.
        assert_eq!(MeterReset::Monthly.period(at("2027-01-01")).start, at("2027-01-01"));
        assert_eq!(MeterReset::Never.period(at("2026-12-02")), Period { start: 0, end: None });
        assert_eq!(MeterReset::Monthly.period(i64::MAX).start, 0);
    }

    #[test]
    fn definitions_and_uses_name_the_field_at_fault() {
        let meter = Meter { code: "exports".into(), limit: 20, overage: 0, reset: MeterReset::Monthly };
        assert_eq!(meter.validate(), Ok(()));
        let field = |m: Meter| m.validate().unwrap_err().field;
        assert_eq!(field(Meter { limit: 0, ..meter.clone() }), "meter.limit");
        assert_eq!(field(Meter { limit: -5, ..meter.clone() }), "meter.limit");
        assert_eq!(field(Meter { overage: -1, ..meter.clone() }), "meter.overage");
        assert_eq!(field(Meter { code: "Exports".into(), ..meter.clone() }), "meter.code");
        assert_eq!(field(Meter { code: "-x".into(), ..meter.clone() }), "meter.code");
        assert_eq!(field(Meter { code: "x".repeat(65), ..meter.clone() }), "meter.code");

        let r#use = RecordUse {
            license_id: "lic_1".into(),
            meter: "exports".into(),
            amount: 1,
            idempotency_key: "k1".into(),
            at: 0,
        };
        assert_eq!(r#use.validate(), Ok(()));
        let field = |u: RecordUse| u.validate().unwrap_err().field;
        assert_eq!(field(RecordUse { amount: -1, ..r#use.clone() }), "amount");
        assert_eq!(field(RecordUse { amount: 0, ..r#use.clone() }), "amount");
        assert_eq!(field(RecordUse { amount: MAX_AMOUNT + 1, ..r#use.clone() }), "amount");
        assert_eq!(field(RecordUse { idempotency_key: String::new(), ..r#use.clone() }), "idempotency_key");
        assert_eq!(field(RecordUse { idempotency_key: "a\nb".into(), ..r#use.clone() }), "idempotency_key");
        assert_eq!(field(RecordUse { meter: String::new(), ..r#use }), "meter");
    }

    #[test]
    fn remaining_and_overage_split_the_count_at_the_limit() {
        let meter = Meter { code: "exports".into(), limit: 20, overage: 5, reset: MeterReset::Never };
        let usage = |used| MeterUsage { meter: meter.clone(), period: MeterReset::Never.period(0), used };
        assert_eq!((usage(12).remaining(), usage(12).overage_used()), (8, 0));
        assert_eq!((usage(23).remaining(), usage(23).overage_used()), (0, 3));
        assert_eq!(meter.ceiling(), 25);
        let csv = usage_csv(&[usage(23)]);
        assert_eq!(csv.lines().nth(1), Some("exports,,,23,20,5,3,0"));
    }
}
