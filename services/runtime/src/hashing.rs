//! Password hashing off the request path: argon2id work runs on the blocking pool at a low CPU
//! priority, so a flood of logins takes only CPU that seats and activations leave
//! idle, instead of stalling their heartbeats.

use std::cell::Cell;

/// Low enough that a runnable seat or activation thread gets about nine tenths of a shared core
/// (weights 1024 against 110), high enough that hashing keeps its share against idle-time
/// housekeeping of other processes.
const NICE: i32 = 10;

thread_local! {
    static LOWERED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `work` (an argon2 hash or verification) on the blocking pool at [`NICE`].
pub async fn run<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, tokio::task::JoinError> {
    tokio::task::spawn_blocking(move || {
        lower_this_thread();
        work()
    })
    .await
}

/// Once per thread: an unprivileged process cannot raise it back, and the blocking pool's
/// other work (file writes, DNS) is background work too.
fn lower_this_thread() {
    LOWERED.with(|done| {
        if !done.get() {
            #[cfg(target_os = "linux")]
            // SAFETY: setpriority on this thread's own ID with a valid nice value; no memory is
            // touched. A failure only leaves the priority as it was.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, NICE);
            }
            done.set(true);
        }
    });
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn hashing_runs_at_low_priority() {
        let nice = super::run(|| {
            #[cfg(target_os = "linux")]
            // SAFETY: reads this thread's own priority.
            unsafe {
                libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t)
            }
            #[cfg(not(target_os = "linux"))]
            super::NICE
        })
        .await
        .unwrap();
        assert_eq!(nice, super::NICE);
    }
}
