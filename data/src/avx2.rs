//! The pixel loops of decoding and preprocessing, compiled a second time for AVX2.
//!
//! The loops are plain Rust; compiled for AVX2, LLVM turns them into 256-bit code (for the
//! YCbCr conversion, stride-3 de-interleaving shuffles). The arithmetic is the same operation
//! by operation (no fused multiply-add, no reassociation), so both builds give the same
//! bytes; the tests compare them.

/// True when the running CPU has AVX2, so the `*_avx2` builds may be called.
#[inline]
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
