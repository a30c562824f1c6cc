//! The pixel loops of decoding and preprocessing, compiled a second time for AVX2.
//!
//! The loops are plain Rust; compiled for AVX2, LLVM turns them into 256-bit code (for the
//! YCbCr conversion, stride-3 de-interleaving shuffles). The arithmetic is the same operation
//! by operation (no fused multiply-add, no reassociation), so both builds give the same
//! bytes; the tests compare them.

/// True when the `*_avx2` builds may be called: the level in use (`ops::kernels::isa::Isa`,
/// the one switch for every kernel family; `C2Q_ISA=scalar` selects the portable loops) has
/// AVX2.
#[inline]
pub(crate) fn available() -> bool {
    ops::kernels::isa::Isa::current().has_avx2()
}
