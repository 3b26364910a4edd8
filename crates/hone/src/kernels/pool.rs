//! The threads the kernels run on: rayon's global pool, with a whole command running inside it,
//! and a small spinning pool for the many tiny loops of a decoding step.
//!
//! A parallel loop started from a thread outside rayon's pool hands its work to the pool and
//! sleeps until it is done — two context switches per loop. A decoding step runs several loops per
//! layer, each a few microseconds of work, so those switches cost more than the work: measured on
//! the default model, 46% of a one-thread decode went to the kernel's wake-up path. Started from a
//! pool thread ([`run_in_pool`]), a loop runs on the calling thread and idle threads steal from it.
//!
//! Rayon's idle threads still fall asleep within microseconds and are woken through a futex for
//! the next loop (~15% of a two-thread decode). [`parallel_for`] instead keeps its workers spinning
//! for a while after each loop, as llama.cpp's thread pool does, so back-to-back loops start at
//! once; a worker idle for longer parks and costs nothing.

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Stack of each pool thread: a command runs on one, and the main thread's default is 8 MiB.
const STACK_BYTES: usize = 8 << 20;

/// How long a spinning worker waits for the next loop before it parks.
const SPIN: Duration = Duration::from_millis(2);

/// Runs `f` on a thread of the global pool (`RAYON_NUM_THREADS` threads, else one per core).
pub fn run_in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    // Fails only when the pool was already built, and then it is the pool to run on.
    let _ = rayon::ThreadPoolBuilder::new()
        .stack_size(STACK_BYTES)
        .build_global();
    rayon::scope(|_| f())
}

/// Runs `f(0)`, …, `f(n - 1)` on the calling thread and the spinning workers, returning when all
/// are done. Loops started while another thread's loop runs fall back to rayon.
pub fn parallel_for(n: usize, f: &(dyn Fn(usize) + Sync)) {
    let pool = SpinPool::global();
    let Ok(_only_caller) = pool.caller.try_lock() else {
        rayon::scope(|s| (0..n).for_each(|i| s.spawn(move |_| f(i))));
        return;
    };
    if pool.workers == 0 || n <= 1 {
        (0..n).for_each(f);
        return;
    }
    let job = Job {
        f,
        n,
        next: AtomicUsize::new(0),
    };
    pool.done.store(0, Ordering::Relaxed);
    pool.job
        .store(&job as *const Job as *mut Job<'static>, Ordering::Release);
    pool.epoch.fetch_add(1, Ordering::Release);
    {
        let parked = pool.parked.lock().unwrap_or_else(|e| e.into_inner());
        if *parked > 0 {
            pool.wake.notify_all();
        }
    }
    job.run();
    // Every worker must have finished with `job` before it goes out of scope.
    while pool.done.load(Ordering::Acquire) < pool.workers {
        std::hint::spin_loop();
    }
}

/// Runs `f` on each of `items` on the calling thread and the spinning workers ([`parallel_for`]).
pub fn for_each<T: Send>(items: Vec<T>, f: &(dyn Fn(T) + Sync)) {
    // Each slot is claimed by exactly one index of the loop.
    let slots: Vec<Mutex<Option<T>>> = items.into_iter().map(|t| Mutex::new(Some(t))).collect();
    parallel_for(slots.len(), &|i| {
        let item = slots[i]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .expect("each index runs once");
        f(item);
    });
}

/// One loop: its body, its length and the next index to claim.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    n: usize,
    next: AtomicUsize,
}

impl Job<'_> {
    fn run(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.n {
                return;
            }
            (self.f)(i);
        }
    }
}

struct SpinPool {
    workers: usize,
    /// Bumped for each loop; workers watch it.
    epoch: AtomicUsize,
    /// The current loop, valid while its caller waits for `done`.
    job: AtomicPtr<Job<'static>>,
    /// Workers finished with the current loop.
    done: AtomicUsize,
    /// Workers parked on `wake`.
    parked: Mutex<usize>,
    wake: Condvar,
    /// Held by the thread whose loop is running.
    caller: Mutex<()>,
}

impl SpinPool {
    fn global() -> &'static SpinPool {
        static POOL: OnceLock<&'static SpinPool> = OnceLock::new();
        POOL.get_or_init(|| {
            let workers = rayon::current_num_threads().saturating_sub(1);
            let pool: &'static SpinPool = Box::leak(Box::new(SpinPool {
                workers,
                epoch: AtomicUsize::new(0),
                job: AtomicPtr::new(std::ptr::null_mut()),
                done: AtomicUsize::new(0),
                parked: Mutex::new(0),
                wake: Condvar::new(),
                caller: Mutex::new(()),
            }));
            for i in 0..workers {
                std::thread::Builder::new()
                    .name(format!("hone-spin-{i}"))
                    .spawn(move || pool.work())
                    .expect("cannot start a kernel thread");
            }
            pool
        })
    }

    fn work(&self) {
        let mut seen = 0;
        loop {
            seen = self.wait_for_loop(seen);
            // SAFETY: the epoch moved past `seen`, so `job` points at the loop its caller published
            // before bumping the epoch; the caller keeps it alive until every worker, this one
            // included, has counted itself in `done`.
            let job = unsafe { &*self.job.load(Ordering::Acquire) };
            job.run();
            self.done.fetch_add(1, Ordering::Release);
        }
    }

    /// Spins, then parks, until the epoch moves past `seen`; returns the new epoch.
    fn wait_for_loop(&self, seen: usize) -> usize {
        let start = Instant::now();
        loop {
            let epoch = self.epoch.load(Ordering::Acquire);
            if epoch != seen {
                return epoch;
            }
            if start.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
            // Checked again under the lock: a caller bumps the epoch before it looks for
            // parked workers, so a loop published now is seen here or wakes us.
            let epoch = self.epoch.load(Ordering::Acquire);
            if epoch != seen {
                return epoch;
            }
            *parked += 1;
            parked = self.wake.wait(parked).unwrap_or_else(|e| e.into_inner());
            *parked -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_runs_once_also_from_concurrent_callers() {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    for n in [0, 1, 2, 7, 100] {
                        let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                        parallel_for(n, &|i| {
                            hits[i].fetch_add(t + 1, Ordering::Relaxed);
                        });
                        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == t + 1));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
}
