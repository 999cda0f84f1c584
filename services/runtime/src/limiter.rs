//! Limits per key, in memory and per process (each replica limits on its own):
//! - [`GuessThrottle`] slows down password guessing (portal logins, activation passwords) with
//!   delays that grow with the guesser's failures, and never refuses a client that has not been
//!   guessing: no one can lock an owner out by failing on its account.
//! - [`FailureLimiter`] counts events per key in a fixed window (password reset mails per
//!   account): after `max_failures` in `window`, the key is blocked until the window ends.
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

/// Counts failures per key in a fixed window: a key with `max_failures` in the window is blocked
/// until the window ends (the default: 10 a minute).
#[derive(Clone)]
pub struct FailureLimiter {
    max_failures: u32,
    window: Duration,
    /// key -> (failures in the window, when the window started)
    state: Arc<Mutex<HashMap<String, (u32, Instant)>>>,
}

impl FailureLimiter {
    /// Blocks a key after `max_failures` failures within `window`.
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

    /// Counts a failure of `key` (starting a new window when the last one ended).
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

/// How [`GuessThrottle`] slows guessers down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuessPolicy {
    /// Failures a client address may have (on any accounts) before each further try waits.
    pub client_free: u32,
    /// Failures a client may have on one account before its next try there waits.
    pub pair_free: u32,
    /// Failures an account may have (from all clients) before every client that has failed on
    /// it waits, the more the more the account is attacked.
    pub account_free: u32,
    /// The first wait; each further failure doubles it, up to `max_delay`.
    pub base_delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
    /// Failures older than this are forgotten.
    pub window: Duration,
}

impl Default for GuessPolicy {
    /// OWASP's figures: a few free failures, then growing delays up to 15 minutes.
    fn default() -> Self {
        Self {
            client_free: 20,
            pair_free: 5,
            account_free: 10,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(15 * 60),
            window: Duration::from_secs(15 * 60),
        }
    }
}

/// Failures of one key within the window.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    first: Instant,
    last: Instant,
}

#[derive(Default)]
struct GuessState {
    by_client: HashMap<String, Failures>,
    by_account: HashMap<String, Failures>,
    /// (account, client)
    by_pair: HashMap<(String, String), Failures>,
}

/// Slows down password guessing without ever locking an owner out (OWASP's authentication
/// guidance). What a client must wait for depends on its own failures:
/// - per client address, after [`GuessPolicy::client_free`] failures on any accounts;
/// - per account and client, after [`GuessPolicy::pair_free`] failures on that account;
/// - per account, once the account has had [`GuessPolicy::account_free`] failures from anyone,
///   for every client that has itself failed there, counted from its own last failure.
///
/// Each wait doubles with each further failure, from `base_delay` up to `max_delay`. A client
/// that has not failed (the owner at its desk) is never delayed, however the account is
/// attacked; a success clears that client's failures on the account. Memory is bounded: failures
/// older than the window are forgotten.
#[derive(Clone)]
pub struct GuessThrottle {
    policy: GuessPolicy,
    state: Arc<Mutex<GuessState>>,
}

/// The wait after `failures` of which `free` cost nothing: none until then, then doubling.
fn wait_after(failures: u32, free: u32, policy: &GuessPolicy) -> Duration {
    if failures < free.max(1) {
        return Duration::ZERO;
    }
    let doublings = (failures - free.max(1)).min(30);
    policy.base_delay.saturating_mul(1 << doublings).min(policy.max_delay)
}

impl GuessThrottle {
    /// A throttle slowing guessers as `policy` says.
    pub fn new(policy: GuessPolicy) -> Self {
        Self { policy, state: Arc::default() }
    }

    fn live(&self, f: Option<&Failures>, now: Instant) -> Option<Failures> {
        f.copied().filter(|f| now.duration_since(f.first) < self.policy.window)
    }

    /// How long `client` must still wait before it may try a password of `account`, if at all.
    pub fn wait(&self, account: &str, client: &str) -> Option<Duration> {
        let now = Instant::now();
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let p = &self.policy;
        let until = |f: Failures, free: u32| f.last + wait_after(f.count, free, p);
        let mut ready = now;
        if let Some(f) = self.live(state.by_client.get(client), now) {
            ready = ready.max(until(f, p.client_free));
        }
        if let Some(pair) = self.live(state.by_pair.get(&(account.to_owned(), client.to_owned())), now) {
            ready = ready.max(until(pair, p.pair_free));
            if let Some(account) = self.live(state.by_account.get(account), now) {
                // The account's own count sets the wait; this client's last failure starts it.
                ready = ready.max(pair.last + wait_after(account.count, p.account_free, p));
            }
        }
        (ready > now).then(|| ready - now)
    }

    /// Records a wrong password of `account` from `client`.
    pub fn failed(&self, account: &str, client: &str) {
        let now = Instant::now();
        let window = self.policy.window;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let bump = |f: &mut Failures| {
            if now.duration_since(f.first) >= window {
                *f = Failures { count: 0, first: now, last: now };
            }
            f.count = f.count.saturating_add(1);
            f.last = now;
        };
        let fresh = Failures { count: 0, first: now, last: now };
        if state.by_pair.len() > MAX_KEYS || state.by_client.len() > MAX_KEYS || state.by_account.len() > MAX_KEYS {
            // Bounded memory under a flood of distinct keys: forget what the window forgot.
            state.by_pair.retain(|_, f| now.duration_since(f.first) < window);
            state.by_client.retain(|_, f| now.duration_since(f.first) < window);
            state.by_account.retain(|_, f| now.duration_since(f.first) < window);
        }
        bump(state.by_client.entry(client.to_owned()).or_insert(fresh));
        bump(state.by_account.entry(account.to_owned()).or_insert(fresh));
        bump(state.by_pair.entry((account.to_owned(), client.to_owned())).or_insert(fresh));
    }

    /// Records the right password of `account` from `client`: its failures there are forgiven.
    pub fn succeeded(&self, account: &str, client: &str) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.by_pair.remove(&(account.to_owned(), client.to_owned()));
    }
}

impl Default for GuessThrottle {
    fn default() -> Self {
        Self::new(GuessPolicy::default())
    }
}

/// `count` requests per `per`, in bursts of up to `count`. Written `60/min`, `10/s`, `1000/h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed per period (also the largest burst).
    pub count: u32,
    /// The period.
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
    /// The limit that was exceeded.
    pub rate: Rate,
    /// When the next request may succeed.
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

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").field("what", &self.what).field("rate", &self.rate).finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// Limits `what` requests (named in refusals) to `rate` per key; `None` never refuses.
    pub fn new(what: &'static str, rate: Option<Rate>) -> Self {
        Self { what, rate, buckets: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// The limit; `None` is unlimited.
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

    fn quick() -> GuessPolicy {
        GuessPolicy {
            client_free: 6,
            pair_free: 3,
            account_free: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(60),
            window: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_guesser_waits_longer_with_each_failure_and_the_owner_not_at_all() {
        let t = GuessThrottle::new(quick());
        for _ in 0..2 {
            t.failed("acct", "mallory");
        }
        assert_eq!(t.wait("acct", "mallory"), None, "a few failures are free");
        t.failed("acct", "mallory");
        let first = t.wait("acct", "mallory").expect("then a wait");
        t.failed("acct", "mallory");
        let second = t.wait("acct", "mallory").unwrap();
        assert!(second > first, "{second:?} grows from {first:?}");
        // The owner, from a client that has not failed, is never held back.
        assert_eq!(t.wait("acct", "owner"), None);
        // Nor is the guesser on another account (until its address has failed too often).
        assert_eq!(t.wait("other", "mallory"), None);
    }

    #[test]
    fn an_account_under_attack_slows_every_client_that_failed_on_it_but_not_a_clean_one() {
        let t = GuessThrottle::new(quick());
        // Many addresses, one failure each: none reaches its own free failures...
        for bot in 0..6 {
            t.failed("acct", &format!("bot-{bot}"));
        }
        // ...but the account has: each of them now waits, the owner does not.
        assert!(t.wait("acct", "bot-0").is_some());
        assert_eq!(t.wait("acct", "owner"), None);
        // An owner who mistyped once waits too, from its own failure, until it gets it right.
        t.failed("acct", "owner");
        assert!(t.wait("acct", "owner").is_some());
        t.succeeded("acct", "owner");
        assert_eq!(t.wait("acct", "owner"), None);
    }

    #[test]
    fn an_address_failing_on_many_accounts_is_slowed_everywhere() {
        let t = GuessThrottle::new(quick());
        for account in 0..6 {
            t.failed(&format!("acct-{account}"), "sprayer");
        }
        assert!(t.wait("fresh-account", "sprayer").is_some());
        assert_eq!(t.wait("fresh-account", "someone-else"), None);
    }

    #[test]
    fn waits_end_and_are_capped() {
        let policy = GuessPolicy { max_delay: Duration::from_millis(300), ..quick() };
        let t = GuessThrottle::new(policy);
        for _ in 0..40 {
            t.failed("acct", "mallory");
        }
        let wait = t.wait("acct", "mallory").unwrap();
        assert!(wait <= Duration::from_millis(300), "{wait:?}");
        std::thread::sleep(wait + Duration::from_millis(20));
        assert_eq!(t.wait("acct", "mallory"), None, "it may try again after the wait");
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
