//! Limits per key, in memory and per process (each replica limits on its own):
//! - [`FailureLimiter`] counts failures (a wrong password per license, a failed login per
//!   account) in a fixed window: after `max_failures` in `window`, the key is blocked until the
//!   window ends.
//! - [`RateLimiter`] bounds the rate of requests (logins, activations, checkouts) per client or
//!   per license with a token bucket: bursts up to the rate's count, refilled evenly over its
//!   period; an empty bucket answers [`RateLimited`] with the wait until the next token.

use licensing_domain::error::{ClassifiedError, ErrorClass};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Keys kept before finished entries are forgotten, so a flood of distinct keys cannot grow
/// memory without bound.
const MAX_KEYS: usize = 100_000;

#[derive(Clone)]
pub struct FailureLimiter {
    max_failures: u32,
    window: Duration,
    /// key -> (failures in the window, when the window started)
    state: Arc<Mutex<HashMap<String, (u32, Instant)>>>,
}

impl FailureLimiter {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        Self { max_failures, window, state: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// How long `key` stays blocked, if it is.
    pub fn blocked(&self, key: &str) -> Option<Duration> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (count, start) = state.get(key)?;
        let elapsed = start.elapsed();
        (*count >= self.max_failures && elapsed < self.window).then(|| self.window - elapsed)
    }

    pub fn record_failure(&self, key: &str) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.len() > MAX_KEYS {
            // Bounded memory under a flood of distinct keys: forget finished windows.
            let window = self.window;
            state.retain(|_, (_, start)| start.elapsed() < window);
        }
        let entry = state.entry(key.to_owned()).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= self.window {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }
}

impl Default for FailureLimiter {
    fn default() -> Self {
        Self::new(10, Duration::from_secs(60))
    }
}

/// `count` requests per `per`, in bursts of up to `count`. Written `60/min`, `10/s`, `1000/h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not a rate such as 60/min, 10/s or 1000/h (or off)");
        let (count, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(format!("'{s}' allows nothing; write off to turn the limit off"));
        }
        Ok(Self { count, per })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.per.as_secs() {
            1 => write!(f, "{}/s", self.count),
            60 => write!(f, "{}/min", self.count),
            3600 => write!(f, "{}/h", self.count),
            s => write!(f, "{}/{s}s", self.count),
        }
    }
}

/// A request refused by a [`RateLimiter`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("too many {what} requests from {scope}; the limit is {rate}; try again in {} s", retry_after.as_secs_f64().ceil().max(1.0))]
pub struct RateLimited {
    /// What was limited, e.g. "checkout".
    pub what: &'static str,
    /// Whose requests, for the person reading the message: "this client", "license lic_…".
    pub scope: String,
    pub rate: Rate,
    pub retry_after: Duration,
}

impl ClassifiedError for RateLimited {
    fn class(&self) -> ErrorClass {
        ErrorClass::ResourceExhausted
    }
    fn reason(&self) -> &'static str {
        "RATE_LIMITED"
    }
    fn retry_after(&self) -> Option<Duration> {
        Some(self.retry_after)
    }
}

/// A token bucket per key; `None` rate means unlimited.
#[derive(Clone)]
pub struct RateLimiter {
    what: &'static str,
    rate: Option<Rate>,
    /// key -> (tokens left, when they were counted)
    buckets: Arc<Mutex<HashMap<String, (f64, Instant)>>>,
}

impl RateLimiter {
    /// Limits `what` requests (named in refusals) to `rate` per key; `None` never refuses.
    pub fn new(what: &'static str, rate: Option<Rate>) -> Self {
        Self { what, rate, buckets: Arc::new(Mutex::new(HashMap::new())) }
    }

    pub fn rate(&self) -> Option<Rate> {
        self.rate
    }

    /// Takes one token from `key`'s bucket; `scope` names the key in the refusal.
    pub fn acquire(&self, key: &str, scope: impl FnOnce() -> String) -> Result<(), RateLimited> {
        let Some(rate) = self.rate else { return Ok(()) };
        let capacity = f64::from(rate.count);
        let per_token = rate.per.as_secs_f64() / capacity;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > MAX_KEYS && !buckets.contains_key(key) {
            // A full bucket holds nothing worth remembering.
            let refill = rate.per;
            buckets.retain(|_, (_, at)| now.duration_since(*at) < refill);
        }
        let (tokens, at) = buckets.entry(key.to_owned()).or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() / per_token).min(capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return Ok(());
        }
        let retry_after = Duration::from_secs_f64((1.0 - *tokens) * per_token);
        Err(RateLimited { what: self.what, scope: scope(), rate, retry_after })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print() {
        assert_eq!("60/min".parse::<Rate>().unwrap(), Rate { count: 60, per: Duration::from_secs(60) });
        assert_eq!(" 10 / s ".parse::<Rate>().unwrap(), Rate { count: 10, per: Duration::from_secs(1) });
        assert_eq!("1000/h".parse::<Rate>().unwrap().to_string(), "1000/h");
        for bad in ["", "60", "x/min", "60/fortnight", "-1/s", "0/s", "60/min/s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refills_evenly() {
        let l = RateLimiter::new("checkout", Some(Rate { count: 4, per: Duration::from_millis(400) }));
        for _ in 0..4 {
            l.acquire("a", || "a".into()).unwrap();
        }
        let refused = l.acquire("a", || "client a".into()).unwrap_err();
        assert!(refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_millis(100));
        assert!(refused.to_string().contains("checkout") && refused.to_string().contains("client a"));
        assert_eq!(refused.reason(), "RATE_LIMITED");
        // Other keys have their own bucket.
        l.acquire("b", String::new).unwrap();
        std::thread::sleep(Duration::from_millis(120));
        l.acquire("a", String::new).unwrap();
        assert!(l.acquire("a", String::new).is_err());
    }

    #[test]
    fn no_rate_never_refuses() {
        let l = RateLimiter::new("login", None);
        for _ in 0..10_000 {
            l.acquire("a", String::new).unwrap();
        }
    }

    #[test]
    fn blocks_after_max_failures_until_the_window_ends() {
        let l = FailureLimiter::new(3, Duration::from_millis(200));
        for _ in 0..2 {
            l.record_failure("k");
        }
        assert!(l.blocked("k").is_none());
        l.record_failure("k");
        assert!(l.blocked("k").is_some());
        assert!(l.blocked("other").is_none());
        std::thread::sleep(Duration::from_millis(250));
        assert!(l.blocked("k").is_none());
    }
}
