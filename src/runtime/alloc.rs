//! Keeping freed activation memory in the process between runs (glibc only).
//!
//! By default glibc serves every allocation above a threshold (at most 32 MB, adjusted at run
//! time) with a fresh `mmap` and unmaps it when freed. A SqueezeNet fp32 batch of 16 has
//! activations of 25–50 MB, so every run page-faulted them in again and the kernel zeroed
//! every page (`clear_page`): ~125,000 page faults over 4 runs. Raising the `mmap` and trim
//! thresholds keeps such buffers in the heap, reused run after run: ~40,000 page faults, and
//! SqueezeNet fp32 at batch 16 on 1 thread (also calibration's whole-batch runs) ran 10–20%
//! faster in alternating A/B runs; int8 nets and split batches were unchanged. The cost: memory
//! freed by a run stays in the process (the peak is the same).

/// Raises glibc's `mmap` and trim thresholds so freed activation buffers are reused instead
/// of unmapped; returns whether it was applied. Does nothing (false) on other C libraries, or
/// when `C2Q_MALLOC=default` is set. The `c2q` command calls it at start; library users may.
pub fn keep_freed_memory() -> bool {
    if std::env::var("C2Q_MALLOC").as_deref() == Ok("default") {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: FFI calls with integer arguments only; `mallopt` is thread-safe in glibc.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, i32::MAX) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn thresholds_are_accepted_on_glibc() {
        // glibc accepts both values (it caps neither); elsewhere the call is a no-op.
        let applied = super::keep_freed_memory();
        let glibc = cfg!(all(target_os = "linux", target_env = "gnu"));
        let opted_out = std::env::var("C2Q_MALLOC").as_deref() == Ok("default");
        assert_eq!(applied, glibc && !opted_out);
        // Allocations still work afterwards, large and small.
        let big = vec![1u8; 64 << 20];
        assert_eq!(big.iter().map(|&b| u64::from(b)).sum::<u64>(), 64 << 20);
    }
}
