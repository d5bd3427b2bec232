//! CPU threads of the model: how many, and at which scheduling priority.
//!
//! Two facts about candle on the CPU shape this module.
//! - Every CPU matmul asks `candle_core::utils::get_num_threads()`, which reads `RAYON_NUM_THREADS` and, when it is
//!   unset, counts the physical cores again by parsing `/proc/cpuinfo` — on every call. At batch 1 a decode step is a
//!   few dozen small matmuls, and this parsing took 18 % of the decode profile of the bundled model (`perf`, 2-core
//!   VM): `optimem bench decoder --model models/optimem-tiny` ran at 7.0 ms/token without the variable and 3.1 ms/token
//!   with it. [`pin_thread_count`] sets the variable once, to the count candle would have found.
//! - A server's model work (encodes of seconds) and its request handling (rendering a Remember's pages, reading the
//!   store) share the same cores. [`ModelThreads`] runs the model on its own rayon pool whose threads, like the
//!   engine's worker, run at a lower priority (a higher nice value), so that request handling is served first and the
//!   model takes every cycle left over.
//! - Each tensor op allocates its output. glibc's malloc serves blocks over 128 KiB (adaptively more) with their own
//!   `mmap` and gives freed heap memory back to the kernel, so the model's working set was unmapped and faulted in
//!   again, zeroed page by page, on every op: page faults were ~10 % of an encode profile. [`keep_freed_memory`]
//!   keeps that memory in the process for reuse.

/// Sets `RAYON_NUM_THREADS` to the number of threads candle would choose (physical cores, or `CANDLE_CPU_MASK`)
/// unless the caller set it.
///
/// # Safety
/// No other thread may exist yet (call it first thing in `main`): changing the environment while another thread
/// reads it is undefined behaviour in the C library.
#[allow(unsafe_code)]
pub unsafe fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        // SAFETY: the caller guarantees that this is the only thread.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
    }
}

/// Makes glibc's malloc serve every block from its heaps instead of a fresh `mmap` for each large one, and return freed
/// memory to the kernel only above 1 GiB of free heap: a tensor op's output reuses the pages of earlier ones instead of
/// page-faulting in new zeroed ones. Session 6 raised the mmap threshold to its maximum, 32 MiB; session 7 turned
/// `mmap` off (`M_MMAP_MAX` 0), because an official-size Base page still allocates 37–50 MiB per SAM block (qkv, MLP)
/// and took 3.9 M page faults for three encodes (0.55 M without). glibc still maps memory where a heap cannot grow
/// (a thread arena's heap is 64 MiB at most). Figures: benches/README.md, sessions 6 and 7. A no-op on other C
/// libraries.
#[allow(unsafe_code)]
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it takes the allocator's own lock and fails by return value.
    unsafe {
        if libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20) != 1
            || libc::mallopt(libc::M_MMAP_MAX, 0) != 1
            || libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30) != 1
        {
            tracing::warn!("could not tune the allocator (mallopt)");
        }
    }
}

/// Lowers the calling thread's scheduling priority to `nice` (0–19; Linux keeps a nice value per thread). A value at
/// or below the current one, or a platform without per-thread nice values, leaves it unchanged: lowering is always
/// permitted, raising is not.
// Reason: libc's getpriority/setpriority have no safe wrapper in the dependencies we have.
#[allow(unsafe_code)]
pub fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        let nice = nice.clamp(0, 19);
        // SAFETY: plain system calls on the calling thread (`who` = 0); errors are reported through the return value.
        unsafe {
            let current = libc::getpriority(libc::PRIO_PROCESS, 0);
            if nice > current {
                let rc = libc::setpriority(libc::PRIO_PROCESS, 0, nice);
                if rc != 0 {
                    tracing::warn!(nice, "could not lower the model thread's priority");
                }
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// The thread pool the model's CPU kernels run in: as many threads as candle uses, each at `nice`.
#[derive(Debug)]
pub struct ModelThreads {
    pool: rayon::ThreadPool,
    nice: i32,
}

impl ModelThreads {
    /// A pool of `candle_core::utils::get_num_threads()` threads named `optimem-model-N`, at `nice`.
    pub fn new(nice: i32) -> std::io::Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(candle_core::utils::get_num_threads())
            .thread_name(|i| format!("optimem-model-{i}"))
            .start_handler(move |_| lower_priority(nice))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Self { pool, nice })
    }

    /// Runs `f` in the pool: the kernels it starts (candle's matmuls, the SAM attention's parallel loops) use these
    /// threads.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    /// The nice value of the pool's threads.
    pub fn nice(&self) -> i32 {
        self.nice
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    fn current_nice() -> i32 {
        // SAFETY: as in `lower_priority`.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn pool_threads_run_at_the_lower_priority_and_the_caller_keeps_its_own() {
        let before = current_nice();
        let threads = ModelThreads::new(before + 5).expect("pool");
        let (inside, on_pool) =
            threads.run(|| (current_nice(), rayon::current_thread_index().is_some()));
        assert!(on_pool, "the closure ran outside the pool");
        assert_eq!(inside, (before + 5).min(19));
        assert_eq!(current_nice(), before);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn lowering_never_raises() {
        std::thread::spawn(|| {
            let base = current_nice();
            lower_priority(7);
            let lowered = current_nice();
            assert_eq!(lowered, base.max(7));
            lower_priority(3);
            assert_eq!(current_nice(), lowered);
        })
        .join()
        .expect("thread");
    }
}
