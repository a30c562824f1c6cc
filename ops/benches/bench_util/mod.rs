//! What the plain-`main` int8 benches share: deterministic codes, 64-byte aligned buffers
//! like the Int8 ops' outputs, and the process set-up (allocator, `RUNS`, `THREADS`).

/// `n` deterministic codes (a different sequence per `seed`).
pub fn codes(n: usize, seed: usize) -> Vec<u8> {
    (0..n)
        .map(|i| ((i * 7919 + seed * 131) % 251) as u8)
        .collect()
}

/// `v` in a buffer starting on a 64-byte boundary, like the outputs of the Int8 ops.
pub fn aligned(v: &[u8]) -> ops::int8::OutCodes {
    let mut out = ops::int8::OutCodes::new(v.len());
    out.as_mut_slice().copy_from_slice(v);
    out
}

/// Keeps freed buffers in the process, as the `c2q` binary does (`runtime::alloc`), and
/// returns the timed runs (`RUNS`, else `default_runs`), the thread count (`THREADS`, else
/// 1) and a pool of that many threads.
pub fn setup(default_runs: usize) -> (usize, usize, rayon::ThreadPool) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: plain allocator tuning calls before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (runs, threads) = (env("RUNS", default_runs), env("THREADS", 1));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    (runs, threads, pool)
}
