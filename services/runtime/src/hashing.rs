//! Password hashing off the request path, on threads of its own in Linux's idle scheduling class
//! (`SCHED_IDLE`): argon2id gets only the CPU that seats, activations and everything else leave
//! idle, and any of their threads that wakes up takes the core from a hash at once, so a flood of
//! logins cannot stall heartbeats. Under a CPU saturated by seat work, logins wait; that is the
//! order of importance (a product losing its seat costs more than a slow portal login).
//!
//! At most one hash per core runs at a time; more wait in the queue. Where the idle class is not
//! available, the threads run at the lowest nice value instead.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

/// Hashing could not run: its thread panicked, or the hashing threads are gone.
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed (its worker {0})")]
pub struct HashingFailed(&'static str);

/// Nice value of the hashing threads where `SCHED_IDLE` cannot be set.
const FALLBACK_NICE: i32 = 19;

fn queue() -> &'static mpsc::Sender<Job> {
    static QUEUE: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        for i in 0..threads {
            let receiver = receiver.clone();
            let spawned = std::thread::Builder::new().name(format!("password-hash-{i}")).spawn(move || {
                lower_this_thread();
                loop {
                    // The lock is held only while waiting for the next job, never during one.
                    let job = match receiver.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    job();
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a password-hashing thread");
            }
        }
        sender
    })
}

/// Runs `work` (an argon2 hash or verification) on a hashing thread.
pub async fn run<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, HashingFailed> {
    let (done, result) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        let _ = done.send(outcome.map_err(|_| HashingFailed("panicked")));
    });
    queue().send(job).map_err(|_| HashingFailed("threads are gone"))?;
    result.await.map_err(|_| HashingFailed("threads are gone"))?
}

/// Puts the calling thread in the idle scheduling class (or at the lowest nice value).
fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    // SAFETY: sched_setscheduler and setpriority on this thread's own ID with valid arguments;
    // no memory but the local `param` is touched. A failure only leaves the priority as it was.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, FALLBACK_NICE);
        }
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn hashing_runs_in_the_idle_scheduling_class() {
        let policy = super::run(|| {
            #[cfg(target_os = "linux")]
            // SAFETY: reads this thread's own scheduling policy.
            unsafe {
                libc::sched_getscheduler(0)
            }
            #[cfg(not(target_os = "linux"))]
            0
        })
        .await
        .unwrap();
        #[cfg(target_os = "linux")]
        assert_eq!(policy, libc::SCHED_IDLE);
        let _ = policy;
    }

    #[tokio::test]
    async fn a_panicking_hash_is_an_error_and_the_threads_keep_working() {
        let failed = super::run(|| -> u32 { panic!("argon2 blew up") }).await;
        assert!(failed.is_err());
        let results = futures_results().await;
        assert_eq!(results, (0..8).map(|i| i * 2).collect::<Vec<_>>());
    }

    async fn futures_results() -> Vec<u32> {
        let mut out = vec![];
        let handles: Vec<_> = (0..8u32).map(|i| tokio::spawn(super::run(move || i * 2))).collect();
        for handle in handles {
            out.push(handle.await.unwrap().unwrap());
        }
        out
    }
}
