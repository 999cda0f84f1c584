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
