//! The threads the kernels run on: rayon's global pool, with a whole command running inside it.
//!
//! A parallel loop started from a thread outside the pool hands its work to the pool and sleeps
//! until it is done — two context switches per loop. A decoding step runs five loops per layer,
//! each a few microseconds of work, so those switches cost more than the work: measured on the
//! default model, 46% of a one-thread decode went to the kernel's wake-up path. Started from a
//! pool thread, a loop runs on the calling thread and idle threads steal from it.

/// Stack of each pool thread: a command runs on one, and the main thread's default is 8 MiB.
const STACK_BYTES: usize = 8 << 20;

/// Runs `f` on a thread of the global pool (`RAYON_NUM_THREADS` threads, else one per core).
pub fn run_in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    // Fails only when the pool was already built, and then it is the pool to run on.
    let _ = rayon::ThreadPoolBuilder::new()
        .stack_size(STACK_BYTES)
        .build_global();
    rayon::scope(|_| f())
}
