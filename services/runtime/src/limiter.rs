//! Counting failures per key (a wrong password per license, a failed login per account) in a
//! fixed window: after `max_failures` in `window`, the key is blocked until the window ends.
//! In memory, per process: each replica limits on its own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
        if state.len() > 100_000 {
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

#[cfg(test)]
mod tests {
    use super::*;

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
