//! Drives load: closed loop (N callers, each waiting for its answer before the next call) and
//! open loop (calls started on a fixed schedule, latency counted from the scheduled start, so
//! queueing shows instead of hiding behind slower callers). Both stop at a time or a count.

use async_trait::async_trait;
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// One caller's repeated operation; it keeps its own state (a lease, a session) between calls.
#[async_trait]
pub(crate) trait Op: Send + 'static {
    async fn call(&mut self) -> anyhow::Result<()>;

    /// When the last call's measured part was answered, if the call goes on after it (a
    /// checkout measured on its own, then checked in so the caller can check out again). The
    /// open loop counts latency up to here; the caller stays busy until the call returns.
    fn answered_at(&self) -> Option<Instant> {
        None
    }
}

/// When a run stops: whichever of the two comes first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub duration: Duration,
    pub max_ops: u64,
}

/// What a run measured. Latencies are recorded in microseconds.
pub(crate) struct Figures {
    pub ops: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency_us: Histogram<u64>,
    /// The first error seen, to say why a run failed.
    pub first_error: Option<String>,
}

impl Default for Figures {
    fn default() -> Self {
        Self::new()
    }
}

impl Figures {
    fn new() -> Self {
        Self {
            ops: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
            first_error: None,
        }
    }

    pub(crate) fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub(crate) fn p50_ms(&self) -> f64 {
        self.latency_us.value_at_quantile(0.50) as f64 / 1000.0
    }

    pub(crate) fn p99_ms(&self) -> f64 {
        self.latency_us.value_at_quantile(0.99) as f64 / 1000.0
    }

    fn record_until(&mut self, started: Instant, answered: Instant, result: anyhow::Result<()>) {
        let us = answered.saturating_duration_since(started).as_micros().clamp(1, 60_000_000) as u64;
        self.latency_us.record(us).expect("latency clamped into the histogram's bounds");
        match result {
            Ok(()) => self.ops += 1,
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }

    /// Adds another run's calls to these (its duration is the caller's to add).
    pub(crate) fn merge(&mut self, other: &Figures) {
        self.ops += other.ops;
        self.errors += other.errors;
        self.latency_us.add(&other.latency_us).expect("histograms with the same bounds");
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }
}

/// One unrecorded call per caller, all at once, so connections, statement caches and lazily
/// built state are warm before the clock starts.
async fn warm_up(mut callers: Vec<Box<dyn Op>>) -> Vec<Box<dyn Op>> {
    let calls = callers.iter_mut().map(|op| op.call());
    let _ = futures::future::join_all(calls).await;
    callers
}

/// Each caller calls as fast as its answers come back.
pub(crate) async fn closed_loop(callers: Vec<Box<dyn Op>>, bounds: Bounds) -> Figures {
    let callers = warm_up(callers).await;
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + bounds.duration;
    let tasks: Vec<_> = callers
        .into_iter()
        .map(|mut op| {
            let issued = issued.clone();
            tokio::spawn(async move {
                let mut figures = Figures::new();
                while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < bounds.max_ops {
                    let t = Instant::now();
                    let result = op.call().await;
                    // Latency up to the measured part's answer; ops/s counts whole calls.
                    figures.record_until(t, op.answered_at().unwrap_or_else(Instant::now), result);
                }
                figures
            })
        })
        .collect();
    let mut total = Figures::new();
    for task in tasks {
        if let Ok(figures) = task.await {
            total.merge(&figures);
        }
    }
    total.elapsed = started.elapsed();
    total
}

/// Starts `rate` calls a second on schedule, each on an idle caller; a call that finds no idle
/// caller waits for one, and that wait counts in its latency.
pub(crate) async fn open_loop(callers: Vec<Box<dyn Op>>, rate: f64, bounds: Bounds) -> Figures {
    let callers = warm_up(callers).await;
    let period = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let (idle_tx, mut idle_rx) = tokio::sync::mpsc::unbounded_channel::<Box<dyn Op>>();
    for op in callers {
        let _ = idle_tx.send(op);
    }
    let total = Arc::new(Mutex::new(Figures::new()));
    let started = Instant::now();
    let deadline = started + bounds.duration;
    let mut inflight = vec![];
    for i in 0..bounds.max_ops {
        let scheduled = started + period * (i as u32);
        if scheduled >= deadline {
            break;
        }
        tokio::time::sleep_until(scheduled).await;
        let Some(mut op) = idle_rx.recv().await else { break };
        let (total, idle_tx) = (total.clone(), idle_tx.clone());
        inflight.push(tokio::spawn(async move {
            let result = op.call().await;
            let answered = op.answered_at().unwrap_or_else(Instant::now);
            total.lock().await.record_until(scheduled, answered, result);
            let _ = idle_tx.send(op);
        }));
        inflight.retain(|t| !t.is_finished());
    }
    for task in inflight {
        let _ = task.await;
    }
    let mut figures = std::mem::take(&mut *total.lock().await);
    figures.elapsed = started.elapsed();
    figures
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sleepy(Duration);

    #[async_trait]
    impl Op for Sleepy {
        async fn call(&mut self) -> anyhow::Result<()> {
            tokio::time::sleep(self.0).await;
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_stops_at_the_count() {
        let callers: Vec<Box<dyn Op>> = (0..4).map(|_| Box::new(Sleepy(Duration::from_millis(10))) as _).collect();
        let figures = closed_loop(callers, Bounds { duration: Duration::from_secs(60), max_ops: 40 }).await;
        // The warm-up calls are not counted.
        assert_eq!(figures.ops, 40);
        assert_eq!(figures.errors, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_counts_the_wait_for_a_busy_caller() {
        // One caller taking 20 ms, scheduled every 10 ms: each call waits longer than the last.
        let callers: Vec<Box<dyn Op>> = vec![Box::new(Sleepy(Duration::from_millis(20)))];
        let figures = open_loop(callers, 100.0, Bounds { duration: Duration::from_millis(200), max_ops: 10 }).await;
        assert_eq!(figures.ops, 10);
        assert!(figures.latency_us.max() >= 100_000, "queueing hidden: max {} us", figures.latency_us.max());
    }

    /// Answers after `answer`, then stays busy for `after` (a checkout, then its checkin).
    struct AnswersEarly {
        answer: Duration,
        after: Duration,
        answered: Option<Instant>,
    }

    #[async_trait]
    impl Op for AnswersEarly {
        async fn call(&mut self) -> anyhow::Result<()> {
            tokio::time::sleep(self.answer).await;
            self.answered = Some(Instant::now());
            tokio::time::sleep(self.after).await;
            Ok(())
        }

        fn answered_at(&self) -> Option<Instant> {
            self.answered
        }
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_counts_up_to_the_measured_answer_and_still_counts_the_wait() {
        let op = |answer_ms, after_ms| -> Box<dyn Op> {
            Box::new(AnswersEarly {
                answer: Duration::from_millis(answer_ms),
                after: Duration::from_millis(after_ms),
                answered: None,
            })
        };
        let bounds = Bounds { duration: Duration::from_secs(1), max_ops: 5 };
        // Room to spare: each call counts its 5 ms, not the 20 ms after it.
        let figures = open_loop(vec![op(5, 20)], 10.0, bounds).await;
        assert_eq!(figures.ops, 5);
        let max_ms = figures.latency_us.max() / 1000;
        assert!((5..20).contains(&max_ms), "counted {max_ms} ms");
        // One caller busy for 25 ms, scheduled every 10 ms: the wait for it still counts.
        let figures = open_loop(vec![op(5, 20)], 100.0, bounds).await;
        assert!(figures.latency_us.max() >= 40_000, "queueing hidden: max {} us", figures.latency_us.max());
    }
}
