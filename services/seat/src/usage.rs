//! [`UsageLog`]: checkouts, checkins, expirations, revocations and denials go to the SQL usage
//! log through a bounded queue and a background writer, so recording never blocks a checkout.
//! When the queue is full (or the store refuses a batch after retries) the loss is counted per
//! license and written as a `dropped` line, which reports show as `events_dropped`.

use licensing_domain::clock::Millis;
use licensing_domain::model::{UsageEvent, UsageKind};
use licensing_domain::store::UsageStore;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Events written per transaction at most.
const BATCH: usize = 256;
/// Attempts at writing one batch before its events are counted as lost.
const ATTEMPTS: u32 = 3;

enum Message {
    Event(UsageEvent),
    /// Answered once everything queued before it is written.
    Flush(oneshot::Sender<()>),
}

/// Losses not yet written: license -> (events, time of the first).
type Losses = Arc<Mutex<HashMap<String, (i64, Millis)>>>;

/// The usage log's writer: events are queued (bounded, never waited for) and written in batches
/// by a background task; what a full queue drops is counted and recorded as `dropped` events.
#[derive(Clone)]
pub struct UsageLog {
    queue: mpsc::Sender<Message>,
    losses: Losses,
    /// Events lost since start, for metrics and tests.
    dropped: Arc<AtomicU64>,
}

impl UsageLog {
    /// Starts the writer on the current runtime. `capacity` bounds the queue.
    pub fn start(store: Arc<dyn UsageStore>, capacity: usize) -> Self {
        let (queue, rx) = mpsc::channel(capacity.max(1));
        let log = Self { queue, losses: Losses::default(), dropped: Arc::default() };
        tokio::spawn(write_batches(store, rx, log.losses.clone(), log.dropped.clone()));
        log
    }

    /// Queues an event; never waits.
    pub fn record(&self, event: UsageEvent) {
        if let Err(e) = self.queue.try_send(Message::Event(event)) {
            let (mpsc::error::TrySendError::Full(Message::Event(event))
            | mpsc::error::TrySendError::Closed(Message::Event(event))) = e
            else {
                return;
            };
            lose(&self.losses, &self.dropped, &event.license_id, 1, event.occurred_at);
        }
    }

    /// Waits until everything recorded so far is written (for reports served by this process,
    /// and at shutdown).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.queue.send(Message::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Events lost since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn lose(losses: &Losses, dropped: &AtomicU64, license_id: &str, count: i64, at: Millis) {
    dropped.fetch_add(count as u64, Ordering::Relaxed);
    let mut losses = losses.lock().unwrap_or_else(|e| e.into_inner());
    let entry = losses.entry(license_id.to_owned()).or_insert((0, at));
    entry.0 += count;
}

/// The losses so far, as `dropped` lines.
fn take_losses(losses: &Losses) -> Vec<UsageEvent> {
    let taken = std::mem::take(&mut *losses.lock().unwrap_or_else(|e| e.into_inner()));
    taken
        .into_iter()
        .map(|(license_id, (count, at))| UsageEvent {
            license_id,
            occurred_at: at,
            kind: UsageKind::Dropped,
            lease_id: String::new(),
            group_id: String::new(),
            user: String::new(),
            host: String::new(),
            feature: String::new(),
            seats_delta: 0,
            overdraft: false,
            borrowed: false,
            reason: "usage queue full".into(),
            count,
        })
        .collect()
}

async fn write_batches(
    store: Arc<dyn UsageStore>,
    mut rx: mpsc::Receiver<Message>,
    losses: Losses,
    dropped: Arc<AtomicU64>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![];
        let mut flushes = vec![];
        let mut next = Some(first);
        while let Some(message) = next {
            match message {
                Message::Event(e) => batch.push(e),
                Message::Flush(done) => flushes.push(done),
            }
            next = if batch.len() < BATCH { rx.try_recv().ok() } else { None };
        }
        batch.extend(take_losses(&losses));
        if !batch.is_empty() {
            let mut attempt = 0;
            loop {
                attempt += 1;
                match store.append_usage(&batch).await {
                    Ok(()) => break,
                    Err(e) if attempt < ATTEMPTS => {
                        tracing::warn!(error = %e, attempt, "writing the usage log failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100 * 2u64.pow(attempt))).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, events = batch.len(), "usage events lost: the store refused them");
                        for event in &batch {
                            if event.kind == UsageKind::Dropped {
                                // Counted already: back in the pending losses, for the next batch.
                                let mut map = losses.lock().unwrap_or_else(|e| e.into_inner());
                                map.entry(event.license_id.clone()).or_insert((0, event.occurred_at)).0 += event.count;
                            } else {
                                lose(&losses, &dropped, &event.license_id, 1, event.occurred_at);
                            }
                        }
                        break;
                    }
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use licensing_domain::error::StoreError;
    use tokio::sync::Semaphore;

    /// A store that holds every write until the test lets it through.
    struct GatedStore {
        gate: Semaphore,
        written: Mutex<Vec<UsageEvent>>,
    }

    #[async_trait]
    impl UsageStore for GatedStore {
        async fn append_usage(&self, events: &[UsageEvent]) -> Result<(), StoreError> {
            self.gate.acquire().await.expect("gate").forget();
            self.written.lock().unwrap().extend_from_slice(events);
            Ok(())
        }
        async fn usage_events(&self, _: &str, _: Millis) -> Result<Vec<UsageEvent>, StoreError> {
            Ok(self.written.lock().unwrap().clone())
        }
    }

    fn checkout(n: i64) -> UsageEvent {
        UsageEvent {
            license_id: "lic_a".into(),
            occurred_at: n,
            kind: UsageKind::Checkout,
            lease_id: format!("lse_{n}"),
            group_id: format!("lse_{n}"),
            user: "ann".into(),
            host: "h".into(),
            feature: String::new(),
            seats_delta: 1,
            overdraft: false,
            borrowed: false,
            reason: String::new(),
            count: 1,
        }
    }

    #[tokio::test]
    async fn a_full_queue_never_blocks_and_the_loss_is_written_and_counted() {
        let store = Arc::new(GatedStore { gate: Semaphore::new(0), written: Mutex::default() });
        let log = UsageLog::start(store.clone(), 4);
        // The writer takes the first event and blocks on the store; 4 fit the queue; the rest drop.
        let started = std::time::Instant::now();
        for n in 0..20 {
            log.record(checkout(n));
            tokio::task::yield_now().await;
        }
        assert!(started.elapsed() < Duration::from_secs(1), "recording must never wait");
        let dropped = log.dropped();
        assert!((10..=15).contains(&dropped), "dropped {dropped}");
        store.gate.add_permits(1000);
        log.flush().await;
        let written = store.written.lock().unwrap().clone();
        let checkouts = written.iter().filter(|e| e.kind == UsageKind::Checkout).count() as u64;
        let lost: i64 = written.iter().filter(|e| e.kind == UsageKind::Dropped).map(|e| e.count).sum();
        assert_eq!(checkouts + lost as u64, 20, "every event is either written or counted as lost");
        assert_eq!(lost as u64, dropped);
    }
}
