//! Password hashing off the request path, on threads of their own at nice 10: argon2id yields the
//! CPU to seats, activations and everything else at normal priority (a tenth of their weight), so
//! a flood of logins cannot stall heartbeats, yet it always keeps a share: on a host whose CPU is
//! saturated, by our seat work or by other programs, logins and customer creation slow down but
//! never starve. (Linux's idle class, `SCHED_IDLE`, was tried: it starved hashing outright under
//! another program's load, and calls waiting on a hash ran into their deadline.)
//!
//! A fixed number of threads ([`THREADS`]) hash, one hash each at a time; more wait in the queue.
//! Each thread owns one argon2 working memory ([`HashMemory`], 12 MiB at the OWASP cost this
//! server uses) and lends it to every hash it runs, so the process holds `THREADS × 12 MiB` for
//! hashing however many logins come.

use licensing_domain::secrets::HashMemory;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

type Job = Box<dyn FnOnce(&mut HashMemory) + Send>;

/// Hashing could not run: its thread panicked, or the hashing threads are gone.
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed (its worker {0})")]
pub struct HashingFailed(&'static str);

/// Nice value of the hashing threads: a tenth of a normal thread's CPU weight when they compete.
pub const HASHING_NICE: i32 = 10;

/// How many threads hash, whatever the machine. Each keeps its argon2 memory (12 MiB at the
/// OWASP cost this server uses, see `PasswordHasher::owasp`) for good, so this is the number that
/// decides what a login flood costs in memory: two keep every process under 64 MiB through one
/// (the benchmark's `login_memory`; the all-in-one server holds 28-29 MiB besides its hashing
/// memory after the seat benchmark), and hash on two cores. With 19 MiB per thread, one thread
/// was all that fit (two measured 67 MiB). More threads would not hash faster on a small server
/// and cost memory on a large one, where the Account service scales out by replicas instead.
/// See BENCHMARKS.md, "Login memory".
pub const THREADS: usize = 2;

/// Working memories the hashing threads have allocated since the process started: one per thread
/// at most, however many hashes ran.
static MEMORIES_ALLOCATED: AtomicUsize = AtomicUsize::new(0);

/// How many argon2 working memories the hashing threads have allocated (at most [`THREADS`]).
pub fn memories_allocated() -> usize {
    MEMORIES_ALLOCATED.load(Ordering::Relaxed)
}

fn queue() -> &'static mpsc::Sender<Job> {
    static QUEUE: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for i in 0..THREADS {
            let receiver = receiver.clone();
            let spawned = std::thread::Builder::new().name(format!("password-hash-{i}")).spawn(move || {
                lower_this_thread();
                let mut memory = HashMemory::new();
                loop {
                    // The lock is held only while waiting for the next job, never during one.
                    let job = match receiver.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    let was_empty = memory.bytes() == 0;
                    job(&mut memory);
                    if was_empty && memory.bytes() > 0 {
                        MEMORIES_ALLOCATED.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a password-hashing thread");
            }
        }
        sender
    })
}

/// Runs `work` (an argon2 hash or verification) on a hashing thread, in that thread's memory.
pub async fn run<T: Send + 'static>(
    work: impl FnOnce(&mut HashMemory) -> T + Send + 'static,
) -> Result<T, HashingFailed> {
    let (done, result) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move |memory| {
        // A panic leaves the memory as good as before: argon2 overwrites it before reading it.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(memory)));
        let _ = done.send(outcome.map_err(|_| HashingFailed("panicked")));
    });
    queue().send(job).map_err(|_| HashingFailed("threads are gone"))?;
    result.await.map_err(|_| HashingFailed("threads are gone"))?
}

/// Lowers the calling thread to [`HASHING_NICE`].
// The workspace's one unsafe in production code: libc is the only way to set a thread's priority.
#[allow(unsafe_code)]
fn lower_this_thread() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority on this thread's own ID with valid arguments; no memory is touched. A
    // failure only leaves the priority as it was.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, HASHING_NICE);
    }
}

#[cfg(test)]
// Reads the threads' scheduling policy through libc, and counts allocations with a GlobalAlloc.
#[allow(unsafe_code)]
mod tests {
    use licensing_domain::secrets::PasswordHasher;

    #[tokio::test]
    async fn hashing_runs_at_a_lower_priority_that_never_starves() {
        let (policy, nice) = super::run(|_| {
            #[cfg(target_os = "linux")]
            // SAFETY: reads this thread's own scheduling policy and nice value.
            unsafe {
                (libc::sched_getscheduler(0), libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t))
            }
            #[cfg(not(target_os = "linux"))]
            (0, 0)
        })
        .await
        .unwrap();
        #[cfg(target_os = "linux")]
        assert_eq!((policy, nice), (libc::SCHED_OTHER, super::HASHING_NICE), "the normal class, at nice 10");
        let _ = (policy, nice);
    }

    #[tokio::test]
    async fn a_panicking_hash_is_an_error_and_the_threads_keep_working() {
        let failed = super::run(|_| -> u32 { panic!("argon2 blew up") }).await;
        assert!(failed.is_err());
        let results = futures_results().await;
        assert_eq!(results, (0..8).map(|i| i * 2).collect::<Vec<_>>());
    }

    async fn futures_results() -> Vec<u32> {
        let mut out = vec![];
        let handles: Vec<_> = (0..8u32).map(|i| tokio::spawn(super::run(move |_| i * 2))).collect();
        for handle in handles {
            out.push(handle.await.unwrap().unwrap());
        }
        out
    }

    /// Each hashing thread keeps one `HashMemory` for its whole life: however many hashes run,
    /// the threads allocate at most one each.
    #[tokio::test]
    async fn the_pool_holds_one_memory_per_thread_however_many_hashes_run() {
        let hasher = PasswordHasher::with_params(64, 1, 1);
        let jobs: Vec<_> = (0..8 * super::THREADS + 8)
            .map(|_| {
                let hasher = hasher.clone();
                tokio::spawn(super::run(move |memory| hasher.hash_with(memory, "correct horse battery")))
            })
            .collect();
        for job in jobs {
            assert!(job.await.unwrap().unwrap().starts_with("$argon2id$"));
        }
        let allocated = super::memories_allocated();
        assert!((1..=super::THREADS).contains(&allocated), "{allocated} memories for {} threads", super::THREADS);
    }

    /// The root of the memory a login flood used to leave behind: argon2 allocating its working
    /// memory for every hash. On the pool, a hash allocates it at most once per thread.
    #[tokio::test]
    async fn hashes_on_the_pool_reuse_their_threads_memory_rather_than_allocate_it() {
        // 2 MiB, so that its allocation counts as large and nothing else of a hash does.
        let hasher = PasswordHasher::with_params(2048, 1, 1);
        let jobs: Vec<_> = (0..4 * super::THREADS + 4)
            .map(|_| {
                let hasher = hasher.clone();
                tokio::spawn(super::run(move |memory| {
                    let before = counting::large_allocations();
                    let phc = hasher.hash_with(memory, "correct horse battery");
                    let verified = hasher.verify_with(memory, "correct horse battery", &phc).unwrap();
                    (counting::large_allocations() - before, verified)
                }))
            })
            .collect();
        let mut large_allocations = 0;
        for job in jobs {
            let (allocations, verified) = job.await.unwrap().unwrap();
            assert!(verified);
            large_allocations += allocations;
        }
        assert!(
            large_allocations <= super::THREADS as u64,
            "{large_allocations} large allocations for {} hashes and as many verifications on {} threads",
            4 * super::THREADS + 4,
            super::THREADS
        );
    }

    /// Counts each thread's allocations of 1 MiB or more (argon2's working memory; nothing else a
    /// hash allocates comes near), so a test can see what a hash allocated on its own thread.
    mod counting {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        const LARGE: usize = 1 << 20;

        thread_local! {
            // Const-initialized without a destructor: safe to touch from inside the allocator.
            static LARGE_ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
        }

        pub(crate) fn large_allocations() -> u64 {
            LARGE_ALLOCATIONS.with(Cell::get)
        }

        fn note(size: usize) {
            if size >= LARGE {
                let _ = LARGE_ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
            }
        }

        struct CountingLarge;

        // SAFETY: every call is passed on unchanged to the system allocator; counting touches
        // only a thread-local integer and allocates nothing.
        unsafe impl GlobalAlloc for CountingLarge {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                note(layout.size());
                // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
                unsafe { System.alloc(layout) }
            }

            unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
                note(layout.size());
                // SAFETY: as above.
                unsafe { System.alloc_zeroed(layout) }
            }

            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                // SAFETY: `ptr` was allocated by System with this layout (every allocation is).
                unsafe { System.dealloc(ptr, layout) }
            }

            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                if new_size > layout.size() {
                    note(new_size);
                }
                // SAFETY: as for dealloc; `new_size` is the caller's.
                unsafe { System.realloc(ptr, layout, new_size) }
            }
        }

        #[global_allocator]
        static ALLOCATOR: CountingLarge = CountingLarge;
    }
}
