//! A packed, cache-blocked fp32 GEMM with an AVX2+FMA 6×16 microkernel (runtime detected)
//! and a scalar fallback with the same blocking. (No AVX-512 kernel: the development
//! machine does not expose AVX-512, so one could not be tested.)
//!
//! Layouts: the left operand is packed in panels of [`MR`] rows, `[panel][k][MR]` (zero
//! padded), which [`PackedLhs`] can do once ahead of time for constant weights; the right
//! operand is packed per call in panels of [`NR`] columns, `[panel][k][NR]`, one block of
//! K (at most 256 deep, equal blocks chosen from K alone) at a time.
//!
//! Every element of C is computed as: for each block of K in order, an accumulator
//! starting at 0 sums `a·b` over the block in order (fused multiply-add on the AVX2 path),
//! then C is set to it (first block) or C plus it (later blocks). That sequence depends only
//! on K and the kernel in use, never on where the element sits in a tile, so any tiling of C
//! gives bitwise-identical results.

/// Rows of C per microkernel call.
pub const MR: usize = 6;
/// Columns of C per microkernel call.
pub const NR: usize = 16;
/// Largest depth of one K block.
const KC: usize = 256;

/// The K block depth for reduction length `k`: K is cut into equal blocks of at most
/// [`KC`] (rounded up to a multiple of 8), so no short last block is left over. Depends on
/// `k` only, which keeps results independent of tiling.
fn kc_step(k: usize) -> usize {
    let blocks = k.div_ceil(KC).max(1);
    (k.div_ceil(blocks).div_ceil(8) * 8).clamp(1, KC)
}
/// Rows of A per L2 block.
const MC: usize = MR * 12;
/// Columns of B packed at once.
const NC: usize = NR * 32;

use super::gemm::MatRef;

/// The left operand of a GEMM packed in [`MR`]-row panels (`[panel][k][MR]`, zero padded).
#[derive(Debug, Clone, PartialEq)]
pub struct PackedLhs {
    m: usize,
    k: usize,
    data: Vec<f32>,
}

impl PackedLhs {
    /// Packs `a` (`m × k`, any strides).
    pub fn pack(a: MatRef) -> PackedLhs {
        let (m, k) = (a.rows(), a.cols());
        let panels = m.div_ceil(MR);
        let mut data = vec![0.0f32; panels * k * MR];
        for p in 0..panels {
            let dst = &mut data[p * k * MR..(p + 1) * k * MR];
            let rows = MR.min(m - p * MR);
            for r in 0..rows {
                for q in 0..k {
                    dst[q * MR + r] = a.at(p * MR + r, q);
                }
            }
        }
        PackedLhs { m, k, data }
    }

    /// Rows of the unpacked matrix.
    pub fn rows(&self) -> usize {
        self.m
    }

    /// Columns (the reduction length).
    pub fn cols(&self) -> usize {
        self.k
    }

    /// Panels `p0..p0+np` (rows `p0·MR..`), as a slice and the row count they hold.
    pub(crate) fn panels(&self, p0: usize, rows: usize) -> &[f32] {
        let np = rows.div_ceil(MR);
        &self.data[p0 * self.k * MR..(p0 + np) * self.k * MR]
    }
}

/// A right-hand operand that packs itself into [`NR`]-column panels. [`MatRef`] is one;
/// operators can provide others, e.g. convolutions that gather im2col panels straight
/// from the image instead of materializing the im2col matrix.
pub trait RhsSource: Sync {
    /// Rows (the reduction length K).
    fn rows(&self) -> usize;
    /// Columns (N).
    fn cols(&self) -> usize;
    /// Packs rows `pc..pc+kc` of columns `jc..jc+nc` into `dst`: panel `t` (columns
    /// `jc+t·NR..`) at `dst[t·kc·NR..]`, its row `p` at `[p·NR..(p+1)·NR]`; columns past
    /// `jc+nc` are set to zero. `dst.len() == nc.div_ceil(NR)·kc·NR`.
    fn pack_block(&self, pc: usize, kc: usize, jc: usize, nc: usize, dst: &mut [f32]);
}

impl RhsSource for MatRef<'_> {
    fn rows(&self) -> usize {
        MatRef::rows(self)
    }

    fn cols(&self) -> usize {
        MatRef::cols(self)
    }

    fn pack_block(&self, pc: usize, kc: usize, jc: usize, nc: usize, dst: &mut [f32]) {
        for (t, panel) in dst.chunks_mut(kc * NR).enumerate() {
            let j0 = jc + t * NR;
            let cols = NR.min(jc + nc - j0);
            if cols == NR && self.col_stride() == 1 {
                for p in 0..kc {
                    panel[p * NR..(p + 1) * NR].copy_from_slice(self.row_slice(pc + p, j0, NR));
                }
            } else {
                for p in 0..kc {
                    let row = &mut panel[p * NR..(p + 1) * NR];
                    for (q, v) in row.iter_mut().enumerate() {
                        *v = if q < cols {
                            self.at(pc + p, j0 + q)
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
    }
}

/// A right-hand operand packed once for the whole product, shared by tiles that split
/// the rows of C (so each does not re-pack all of B). The block at depth `pc` starts at
/// `pc·panels·NR`; its panel `t` at `t·kc·NR` within the block.
#[derive(Debug)]
pub(crate) struct PackedRhs {
    n: usize,
    data: Vec<f32>,
}

impl PackedRhs {
    /// Packs all of `b`, one task per K block when `par`.
    pub(crate) fn pack<B: RhsSource + ?Sized>(b: &B, par: bool) -> PackedRhs {
        use rayon::prelude::*;
        let (k, n) = (b.rows(), b.cols());
        let np = n.div_ceil(NR);
        let step = kc_step(k);
        let mut data = vec![0.0f32; k * np * NR];
        let fill = |(i, block): (usize, &mut [f32])| {
            let pc = i * step;
            let kc = step.min(k - pc);
            b.pack_block(pc, kc, 0, n, &mut block[..kc * np * NR]);
        };
        if !data.is_empty() {
            if par {
                data.par_chunks_mut(step * np * NR)
                    .enumerate()
                    .for_each(fill);
            } else {
                data.chunks_mut(step * np * NR).enumerate().for_each(fill);
            }
        }
        PackedRhs { n, data }
    }

    /// Packed rows `pc..pc+kc` (a whole K block) of columns `jc..jc+nc` (`jc % NR == 0`).
    fn block(&self, pc: usize, kc: usize, jc: usize, nc: usize) -> &[f32] {
        debug_assert_eq!(jc % NR, 0);
        let np = self.n.div_ceil(NR);
        let s = pc * np * NR + (jc / NR) * kc * NR;
        &self.data[s..s + nc.div_ceil(NR) * kc * NR]
    }
}

/// Which microkernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// Portable Rust loops.
    Scalar,
    /// AVX2 + FMA intrinsics (x86-64 only, chosen at run time).
    Avx2Fma,
}

impl Kernel {
    /// The fastest kernel this CPU supports.
    pub fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Kernel::Avx2Fma;
            }
        }
        Kernel::Scalar
    }
}

/// `C = A · B[:, col0..col0+n]` for `A` given as packed panels (`rows` rows, reduction
/// `k`). C is row-major with leading dimension `ldc` (its first element is column `col0`
/// of the product); exactly `rows × n` of it is written.
///
/// When `pre` is given it must be `b` packed by [`PackedRhs::pack`] and `col0` a multiple
/// of [`NR`]; B is then read from it instead of being packed here.
///
/// # Safety
/// `c` must be valid for writes of `rows` rows of `n` elements at stride `ldc` and not be
/// aliased during the call. `a` must hold `rows.div_ceil(MR)` panels of depth `k`;
/// `b.rows() == k` and `col0 + n <= b.cols()`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_packed<B: RhsSource + ?Sized>(
    kernel: Kernel,
    a: &[f32],
    rows: usize,
    k: usize,
    b: &B,
    pre: Option<&PackedRhs>,
    col0: usize,
    n: usize,
    c: *mut f32,
    ldc: usize,
) {
    debug_assert_eq!(b.rows(), k);
    debug_assert!(col0 + n <= b.cols());
    debug_assert!(a.len() >= rows.div_ceil(MR) * k * MR);
    thread_local! {
        /// Per-thread packing buffer for B, reused across calls (no allocation per GEMM).
        static BPACK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let need = match pre {
        Some(_) => 0,
        None => kc_step(k).min(k) * NC.min(n).div_ceil(NR) * NR,
    };
    // The buffer is taken out of the thread-local for the duration of the call, so a
    // nested call (none is expected) would simply allocate its own.
    let mut bpack = BPACK.with(|b| std::mem::take(&mut *b.borrow_mut()));
    if bpack.len() < need {
        bpack.resize(need, 0.0);
    }
    let mut edge = [0.0f32; MR * NR];
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        let npanels = nc.div_ceil(NR);
        let step = kc_step(k);
        for pc in (0..k).step_by(step) {
            let kc = step.min(k - pc);
            let first = pc == 0;
            let bblock: &[f32] = match pre {
                Some(p) => p.block(pc, kc, col0 + jc, nc),
                None => {
                    b.pack_block(pc, kc, col0 + jc, nc, &mut bpack[..npanels * kc * NR]);
                    &bpack[..npanels * kc * NR]
                }
            };
            for ic in (0..rows).step_by(MC) {
                let mc = MC.min(rows - ic);
                for jr in 0..npanels {
                    let bp = &bblock[jr * kc * NR..(jr + 1) * kc * NR];
                    let ncols = NR.min(nc - jr * NR);
                    for ir in (0..mc).step_by(MR) {
                        let mrows = MR.min(mc - ir);
                        let panel = (ic + ir) / MR;
                        let ap = &a[panel * k * MR + pc * MR..panel * k * MR + (pc + kc) * MR];
                        let row0 = ic + ir;
                        let col0 = jc + jr * NR;
                        // SAFETY: (row0, col0) + (mrows, ncols) lies inside the rows × n
                        // region the caller guarantees.
                        let cp = unsafe { c.add(row0 * ldc + col0) };
                        if mrows == MR && ncols == NR {
                            // SAFETY: a full MR × NR tile of C at `cp` with stride ldc is in
                            // bounds; `ap`/`bp` hold kc·MR / kc·NR values.
                            unsafe { micro(kernel, kc, ap, bp, cp, ldc, !first) };
                        } else {
                            // SAFETY: `edge` is a local MR × NR buffer (stride NR); a narrow
                            // panel (≤ NR/2 columns) only computes and writes its left half.
                            unsafe {
                                if ncols <= NR / 2 {
                                    micro_half(kernel, kc, ap, bp, edge.as_mut_ptr(), NR)
                                } else {
                                    micro(kernel, kc, ap, bp, edge.as_mut_ptr(), NR, false)
                                }
                            };
                            for r in 0..mrows {
                                for q in 0..ncols {
                                    let v = edge[r * NR + q];
                                    // SAFETY: r < mrows, q < ncols: inside the region.
                                    unsafe {
                                        let dst = cp.add(r * ldc + q);
                                        *dst = if first { v } else { *dst + v };
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    BPACK.with(|b| *b.borrow_mut() = bpack);
}

/// Dispatches one MR × NR microkernel call: `c = acc` or `c += acc` with
/// `acc = Σ_p a[p]·b[p]` over `kc` steps.
///
/// # Safety
/// `c` must be valid for an MR × NR tile with row stride `ldc`; `a` and `b` hold at least
/// `kc·MR` and `kc·NR` values; `kernel` must be supported by this CPU.
unsafe fn micro(
    kernel: Kernel,
    kc: usize,
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    add: bool,
) {
    debug_assert!(a.len() >= kc * MR && b.len() >= kc * NR);
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx2Fma is only chosen after run-time detection; the caller guarantees C.
        Kernel::Avx2Fma => unsafe { avx2::micro_6x16(kc, a.as_ptr(), b.as_ptr(), c, ldc, add) },
        // SAFETY: the caller guarantees C.
        _ => unsafe { micro_scalar(kc, a, b, c, ldc, add) },
    }
}

/// Like [`micro`] with `add == false`, but only for the left `NR / 2` columns of the tile
/// (narrow last panels, e.g. N = 49 at ResNet-50's last stage). Each element is computed by
/// exactly the same operations as in [`micro`], so results do not depend on which one ran.
///
/// # Safety
/// `c` must be valid for an MR × NR/2 tile with row stride `ldc`; otherwise as [`micro`].
unsafe fn micro_half(kernel: Kernel, kc: usize, a: &[f32], b: &[f32], c: *mut f32, ldc: usize) {
    debug_assert!(a.len() >= kc * MR && b.len() >= kc * NR);
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx2Fma is only chosen after run-time detection; the caller guarantees C.
        Kernel::Avx2Fma => unsafe { avx2::micro_6x8(kc, a.as_ptr(), b.as_ptr(), c, ldc) },
        _ => {
            let mut full = [0.0f32; MR * NR];
            // SAFETY: `full` is a local MR × NR tile with stride NR.
            unsafe { micro_scalar(kc, a, b, full.as_mut_ptr(), NR, false) };
            for r in 0..MR {
                for q in 0..NR / 2 {
                    // SAFETY: inside the MR × NR/2 tile the caller guarantees.
                    unsafe { *c.add(r * ldc + q) = full[r * NR + q] };
                }
            }
        }
    }
}

/// Portable microkernel with the same summation order as the SIMD one (no fusion).
///
/// # Safety
/// As for [`micro`].
unsafe fn micro_scalar(kc: usize, a: &[f32], b: &[f32], c: *mut f32, ldc: usize, add: bool) {
    let mut acc = [[0.0f32; NR]; MR];
    for p in 0..kc {
        let ap = &a[p * MR..(p + 1) * MR];
        let bp = &b[p * NR..(p + 1) * NR];
        for (r, row) in acc.iter_mut().enumerate() {
            let av = ap[r];
            for (x, &bv) in row.iter_mut().zip(bp) {
                *x += av * bv;
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (q, &v) in row.iter().enumerate() {
            // SAFETY: inside the MR × NR tile the caller guarantees.
            unsafe {
                let dst = c.add(r * ldc + q);
                *dst = if add { *dst + v } else { v };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// AVX2+FMA 6×8 microkernel: the left half of [`micro_6x16`] (6 accumulators, the
    /// same FMA chain per element), storing `c = acc`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `a` points to `kc·MR` floats, `b` to `kc·NR`
    /// (only the first 8 of each row of NR are read), `c` to an MR × 8 tile with row
    /// stride `ldc`, valid for writes.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn micro_6x8(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
    ) {
        // SAFETY: all pointer arithmetic stays within the extents stated in the contract;
        // unaligned loads/stores are used throughout.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); MR];
            let mut ap = a;
            let mut bp = b;
            for _ in 0..kc {
                let b0 = _mm256_loadu_ps(bp);
                for (r, x) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*ap.add(r));
                    *x = _mm256_fmadd_ps(av, b0, *x);
                }
                ap = ap.add(MR);
                bp = bp.add(NR);
            }
            for (r, &v) in acc.iter().enumerate() {
                _mm256_storeu_ps(c.add(r * ldc), v);
            }
        }
    }

    /// AVX2+FMA 6×16 microkernel: 12 ymm accumulators, B row in 2 ymm, A broadcast.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `a` points to `kc·MR` floats, `b` to `kc·NR`,
    /// `c` to an MR × NR tile with row stride `ldc`, valid for reads and writes.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn micro_6x16(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        add: bool,
    ) {
        // SAFETY: all pointer arithmetic stays within the extents stated in the contract;
        // unaligned loads/stores are used throughout.
        unsafe {
            // Start fetching the C tile now so the misses overlap the k loop (C of a big
            // conv does not stay in L1/L2 between K blocks).
            for r in 0..MR {
                let cr = c.add(r * ldc) as *const i8;
                _mm_prefetch::<_MM_HINT_T0>(cr);
                _mm_prefetch::<_MM_HINT_T0>(cr.add(NR * 4 - 1));
            }
            let mut acc = [[_mm256_setzero_ps(); 2]; MR];
            let mut ap = a;
            let mut bp = b;
            for _ in 0..kc {
                let b0 = _mm256_loadu_ps(bp);
                let b1 = _mm256_loadu_ps(bp.add(8));
                for (r, row) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*ap.add(r));
                    row[0] = _mm256_fmadd_ps(av, b0, row[0]);
                    row[1] = _mm256_fmadd_ps(av, b1, row[1]);
                }
                ap = ap.add(MR);
                bp = bp.add(NR);
            }
            for (r, row) in acc.iter().enumerate() {
                let cr = c.add(r * ldc);
                let (mut v0, mut v1) = (row[0], row[1]);
                if add {
                    v0 = _mm256_add_ps(_mm256_loadu_ps(cr), v0);
                    v1 = _mm256_add_ps(_mm256_loadu_ps(cr.add(8)), v1);
                }
                _mm256_storeu_ps(cr, v0);
                _mm256_storeu_ps(cr.add(8), v1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                    .sum();
            }
        }
        c
    }

    fn run(kernel: Kernel, a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let pa = PackedLhs::pack(MatRef::row_major(a, m, k, k));
        let mut c = vec![f32::NAN; m * n];
        if m > 0 && n > 0 {
            // SAFETY: c is m × n with ldc n; pa holds the packed rows; b is k × n.
            unsafe {
                gemm_packed(
                    kernel,
                    pa.panels(0, m),
                    m,
                    k,
                    &MatRef::row_major(b, k, n, n),
                    None,
                    0,
                    n,
                    c.as_mut_ptr(),
                    n,
                )
            };
        }
        c
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]
        #[test]
        fn packed_matches_naive(
            m in 1usize..40, k in 1usize..600, n in 1usize..90, seed in 0u32..1000
        ) {
            let gen = |len: usize, s: u32| -> Vec<f32> {
                (0..len).map(|i| (((i as u32).wrapping_mul(2654435761) ^ s.wrapping_mul(40503)) % 2001) as f32 / 1000.0 - 1.0).collect()
            };
            let a = gen(m * k, seed);
            let b = gen(k * n, seed + 1);
            let want = naive(&a, &b, m, k, n);
            let scalar = run(Kernel::Scalar, &a, &b, m, k, n);
            let best = run(Kernel::detect(), &a, &b, m, k, n);
            for i in 0..m * n {
                let tol = 1e-4 * (k as f64).sqrt() * 4.0;
                prop_assert!((scalar[i] as f64 - want[i]).abs() < tol, "scalar {i}: {} vs {}", scalar[i], want[i]);
                prop_assert!((best[i] as f64 - want[i]).abs() < tol, "simd {i}: {} vs {}", best[i], want[i]);
            }
        }
    }

    #[test]
    fn narrow_last_panels_match_naive_exactly() {
        // Widths whose last panel has 1..=8 columns (half-width kernel) or 9..=15 (full
        // kernel into the edge buffer); small integers make every result exact.
        for n in [1, 5, 8, 9, 15, 17, 24, 49] {
            let (m, k) = (7, 40);
            let a: Vec<f32> = (0..m * k).map(|i| ((i * 5) % 7) as f32 - 3.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i * 3) % 5) as f32 - 2.0).collect();
            let want: Vec<f32> = naive(&a, &b, m, k, n).iter().map(|&v| v as f32).collect();
            assert_eq!(run(Kernel::Scalar, &a, &b, m, k, n), want, "scalar n={n}");
            assert_eq!(run(Kernel::detect(), &a, &b, m, k, n), want, "simd n={n}");
        }
    }

    #[test]
    fn simd_matches_scalar_without_fma_differences() {
        // Small integers: every product and sum is exact, so both kernels agree bitwise.
        let (m, k, n) = (13, 300, 37);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 9) as f32 - 4.0).collect();
        let want: Vec<f32> = naive(&a, &b, m, k, n).iter().map(|&v| v as f32).collect();
        assert_eq!(run(Kernel::Scalar, &a, &b, m, k, n), want);
        assert_eq!(run(Kernel::detect(), &a, &b, m, k, n), want);
    }
}
