//! AVX-512 kernels (512-bit vectors: 64 codes, or 16 f32 / i32 lanes).
//!
//! Every function here that uses intrinsics carries
//! `#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]` and is reached only
//! through [`KERNELS`], which [`super::kernels_for`] hands out only for a supported level
//! with AVX-512. Memory is touched only through the load/store helpers below. Each takes the
//! slice it reads or writes and stays inside it: a full vector when the slice holds one,
//! otherwise a masked access of exactly the slice's length (masked-off lanes are neither
//! read nor written, and load as 0). Tails are therefore plain masked vectors: no scalar
//! loops, no overlapping blocks, and every length and channel count runs vector code.
//!
//! The arithmetic is the portable kernels' sequence of f32 operations (see the module doc of
//! [`super`]), with these exact shortcuts:
//!
//! - **Codes to f32 without a conversion.** Unpacking a code `q` next to the 16-bit constant
//!   `0x4B00` gives the bit pattern `0x4B00_00qq`, the f32 `2^23 + q`. Subtracting the f32
//!   `2^23 + z` then yields `q − z` exactly (operands and result are integers below 2^24),
//!   which is the reference's `(q − z) as f32`. Zero points beyond ±2^23 take the portable
//!   path. The unpacks work within 128-bit lanes, so vector `j` of a 64-code block holds, in
//!   lane `l`, codes `16l + 4j .. 16l + 4j + 4`: exactly the order in which the saturating
//!   packs `i32 → i16 → u8` put results back, so no permutation is needed ([`widen`],
//!   [`narrow`]).
//! - **Output stage** `clamp(nearbyint(v·m + z), lo, 255)`: multiply, add (never fused),
//!   `min(255, t)`, which keeps a NaN, then a conversion whose rounding (to nearest, ties to
//!   even) is encoded in the instruction, independent of MXCSR. A NaN, −∞ or any value
//!   below `i32::MIN` converts to `i32::MIN`; the saturating packs clamp every i32 to
//!   [0, 255], so those become 0, as in the reference (NaN → 0, then the clamp). The lower
//!   bound `lo` (0, or `z_y` with a fused ReLU) is applied last as a byte maximum, once per
//!   64 codes. This needs `0 <= lo <= 255` (always true for valid parameters; otherwise
//!   the portable kernel runs).
//! - **Quantize**: `p = x · (1/s)`, `min(p, 255 − z)`, a conversion zero-masked on the lanes
//!   where `p` is NaN (the reference maps NaN to 0 before adding `z`), `+ z` in i32, then the
//!   saturating packs (which clamp −∞ and large negative values, converted to `i32::MIN`,
//!   to 0). Needs `0 <= z <= 255`.
//! - **AveragePool**: vertical window sums in u16 (at most 257 rows of 255 fit), widened to
//!   the reference's exact i32 sums; the i32 → f32 conversion rounds to nearest even, as
//!   `as f32` does.

use std::arch::x86_64::*;

use super::generic;
use super::{check_pool_lengths, PoolGeom, PoolScratch, QEltwiseKernels, RealStage};
use crate::int8::requant::sum_offset;
use crate::kernels::isa::Isa;
use crate::QParams;

/// The AVX-512 table.
pub(super) const KERNELS: QEltwiseKernels = QEltwiseKernels {
    isa: Isa::Avx512,
    add2,
    sum_n,
    quantize,
    dequantize,
    relu,
    requant,
    max_pool_row,
    avg_pool_row,
};

// ---------------------------------------------------------------------------------------
// Entry points (safe wrappers around the target-feature functions).
// ---------------------------------------------------------------------------------------

fn add2(a: &[u8], qa: QParams, b: &[u8], qb: QParams, out: &mut [u8], st: RealStage) {
    // SAFETY: this function is only reachable through KERNELS, which `kernels_for` hands
    // out only for a level the CPU supports with AVX-512 F/BW/VL/DQ.
    unsafe { add2_avx512(a, qa, b, qb, out, st) }
}

fn sum_n(xs: &[(&[u8], QParams)], out: &mut [u8], st: RealStage) {
    // SAFETY: as in `add2`.
    unsafe { sum_n_avx512(xs, out, st) }
}

fn quantize(x: &[f32], out: &mut [u8], inv_scale: f32, zero_point: i32) {
    // SAFETY: as in `add2`.
    unsafe { quantize_avx512(x, out, inv_scale, zero_point) }
}

fn dequantize(x: &[u8], out: &mut [f32], p: QParams) {
    // SAFETY: as in `add2`.
    unsafe { dequantize_avx512(x, out, p) }
}

fn relu(x: &[u8], out: &mut [u8], zero_point: u8) {
    // SAFETY: as in `add2`.
    unsafe { relu_avx512(x, out, zero_point) }
}

fn requant(x: &[u8], xq: QParams, out: &mut [u8], yq: QParams) {
    // SAFETY: as in `add2`.
    unsafe { requant_avx512(x, xq, out, yq) }
}

fn max_pool_row(x: &[u8], g: &PoolGeom, oy: usize, out: &mut [u8], s: &mut PoolScratch) {
    // SAFETY: as in `add2`.
    unsafe { max_pool_row_avx512(x, g, oy, out, s) }
}

fn avg_pool_row(
    x: &[u8],
    g: &PoolGeom,
    oy: usize,
    xq: QParams,
    yq: QParams,
    out: &mut [u8],
    s: &mut PoolScratch,
) {
    // SAFETY: as in `add2`.
    unsafe { avg_pool_row_avx512(x, g, oy, xq, yq, out, s) }
}

// ---------------------------------------------------------------------------------------
// Loads and stores, bounded by the slice they are given.
// ---------------------------------------------------------------------------------------

/// Mask of the first `min(n, 64)` byte lanes.
#[inline]
fn mask64(n: usize) -> __mmask64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// Mask of the first `min(n, 32)` byte lanes.
#[inline]
fn mask32(n: usize) -> __mmask32 {
    if n >= 32 {
        u32::MAX
    } else {
        (1u32 << n) - 1
    }
}

/// Mask of the first `min(n, 16)` lanes.
#[inline]
fn mask16(n: usize) -> __mmask16 {
    if n >= 16 {
        u16::MAX
    } else {
        ((1u32 << n) - 1) as u16
    }
}

/// The first `min(64, s.len())` codes of `s`, zero beyond.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
fn load_u8(s: &[u8]) -> __m512i {
    if s.len() >= 64 {
        // SAFETY: `s` has at least 64 readable bytes; loadu has no alignment requirement.
        unsafe { _mm512_loadu_si512(s.as_ptr().cast()) }
    } else {
        // SAFETY: the mask selects the first `s.len()` bytes, all inside `s`; masked-off
        // bytes are not accessed (no read, no fault).
        unsafe { _mm512_maskz_loadu_epi8(mask64(s.len()), s.as_ptr().cast()) }
    }
}

/// Stores the first `min(64, s.len())` bytes of `v` at the start of `s`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
fn store_u8(s: &mut [u8], v: __m512i) {
    if s.len() >= 64 {
        // SAFETY: `s` has at least 64 writable bytes; storeu has no alignment requirement.
        unsafe { _mm512_storeu_si512(s.as_mut_ptr().cast(), v) }
    } else {
        // SAFETY: the mask selects the first `s.len()` bytes, all inside `s`; masked-off
        // bytes are not written.
        unsafe { _mm512_mask_storeu_epi8(s.as_mut_ptr().cast(), mask64(s.len()), v) }
    }
}

/// The first `min(16, s.len())` codes of `s` zero-extended to i32 (zero beyond).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
fn load_u8x16_i32(s: &[u8]) -> __m512i {
    let v = if s.len() >= 16 {
        // SAFETY: `s` has at least 16 readable bytes; loadu has no alignment requirement.
        unsafe { _mm_loadu_si128(s.as_ptr().cast()) }
    } else {
        // SAFETY: the mask selects the first `s.len()` bytes, all inside `s`; masked-off
        // bytes are not accessed.
        unsafe { _mm_maskz_loadu_epi8(mask16(s.len()), s.as_ptr().cast()) }
    };
    _mm512_cvtepu8_epi32(v)
}

/// The first `min(32, s.len())` codes of `s` zero-extended to u16 (zero beyond).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
fn load_u8x32_u16(s: &[u8]) -> __m512i {
    let v = if s.len() >= 32 {
        // SAFETY: `s` has at least 32 readable bytes; loadu has no alignment requirement.
        unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
    } else {
        // SAFETY: the mask selects the first `s.len()` bytes, all inside `s`; masked-off
        // bytes are not accessed.
        unsafe { _mm256_maskz_loadu_epi8(mask32(s.len()), s.as_ptr().cast()) }
    };
    _mm512_cvtepu8_epi16(v)
}

/// The first `min(16, s.len())` floats of `s`, zero beyond.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
fn load_f32(s: &[f32]) -> __m512 {
    if s.len() >= 16 {
        // SAFETY: `s` has at least 16 readable floats; loadu has no alignment requirement.
        unsafe { _mm512_loadu_ps(s.as_ptr()) }
    } else {
        // SAFETY: the mask selects the first `s.len()` floats, all inside `s`; masked-off
        // lanes are not accessed.
        unsafe { _mm512_maskz_loadu_ps(mask16(s.len()), s.as_ptr()) }
    }
}

/// Stores the first `min(16, s.len())` floats of `v` at the start of `s`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
fn store_f32(s: &mut [f32], v: __m512) {
    if s.len() >= 16 {
        // SAFETY: `s` has at least 16 writable floats; storeu has no alignment requirement.
        unsafe { _mm512_storeu_ps(s.as_mut_ptr(), v) }
    } else {
        // SAFETY: the mask selects the first `s.len()` floats, all inside `s`; masked-off
        // lanes are not written.
        unsafe { _mm512_mask_storeu_ps(s.as_mut_ptr(), mask16(s.len()), v) }
    }
}

/// The first `min(16, s.len())` i32 of `s`, zero beyond.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
fn load_i32(s: &[i32]) -> __m512i {
    if s.len() >= 16 {
        // SAFETY: `s` has at least 16 readable i32; loadu has no alignment requirement.
        unsafe { _mm512_loadu_si512(s.as_ptr().cast()) }
    } else {
        // SAFETY: the mask selects the first `s.len()` i32, all inside `s`; masked-off
        // lanes are not accessed.
        unsafe { _mm512_maskz_loadu_epi32(mask16(s.len()), s.as_ptr()) }
    }
}

/// Stores the first `min(16, s.len())` i32 of `v` at the start of `s`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
fn store_i32(s: &mut [i32], v: __m512i) {
    if s.len() >= 16 {
        // SAFETY: `s` has at least 16 writable i32; storeu has no alignment requirement.
        unsafe { _mm512_storeu_si512(s.as_mut_ptr().cast(), v) }
    } else {
        // SAFETY: the mask selects the first `s.len()` i32, all inside `s`; masked-off
        // lanes are not written.
        unsafe { _mm512_mask_storeu_epi32(s.as_mut_ptr(), mask16(s.len()), v) }
    }
}

/// Consecutive ranges covering `0..n` for a loop over `width`-element vectors: first the
/// elements before `addr + i · size` reaches a 64-byte boundary (if any), then `width` at a
/// time (the last range may be shorter). `addr` is the address of element 0 of the array
/// the loop writes, `size` its element size: a 64-byte vector that is not aligned spans
/// two cache lines, which costs throughput in streaming loops.
#[inline]
fn aligned_steps(
    n: usize,
    addr: usize,
    size: usize,
    width: usize,
) -> impl Iterator<Item = std::ops::Range<usize>> {
    let head = ((64 - addr % 64) % 64 / size).min(n);
    let first = (head > 0).then_some(0..head);
    first
        .into_iter()
        .chain((head..n).step_by(width).map(move |i| i..n.min(i + width)))
}

/// `&s[start..]`, or an empty slice when `start` is past the end.
#[inline]
fn tail<T>(s: &[T], start: usize) -> &[T] {
    s.get(start..).unwrap_or(&[])
}

/// `&mut s[start..]`, or an empty slice when `start` is past the end.
#[inline]
fn tail_mut<T>(s: &mut [T], start: usize) -> &mut [T] {
    let start = start.min(s.len());
    &mut s[start..]
}

// ---------------------------------------------------------------------------------------
// Arithmetic helpers.
// ---------------------------------------------------------------------------------------

/// Rounding of the f32 ↔ i32 conversions: to nearest, ties to even (as the reference's
/// `round_ties_even` and `as f32`), exceptions suppressed.
const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

/// `2^23`: the f32 whose bit pattern is `0x4B00_0000` (see [`widen`]).
const TWO_23: i32 = 1 << 23;

/// Largest |zero point| for which `2^23 + z` and `q − z` are exact in f32.
const WIDEN_MAX_ZP: u32 = 1 << 23;

/// The 64 codes of `v` as f32 `2^23 + q`, in four vectors: vector `j`, 128-bit lane `l`,
/// holds codes `16l + 4j .. 16l + 4j + 4` (the order [`narrow`] puts back).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
fn widen(v: __m512i) -> [__m512; 4] {
    let zero = _mm512_setzero_si512();
    // The high half of the f32 2^23: 0x4B00_00qq is 2^23 + q.
    let exp = _mm512_set1_epi16(0x4B00);
    let lo = _mm512_unpacklo_epi8(v, zero);
    let hi = _mm512_unpackhi_epi8(v, zero);
    [
        _mm512_castsi512_ps(_mm512_unpacklo_epi16(lo, exp)),
        _mm512_castsi512_ps(_mm512_unpackhi_epi16(lo, exp)),
        _mm512_castsi512_ps(_mm512_unpacklo_epi16(hi, exp)),
        _mm512_castsi512_ps(_mm512_unpackhi_epi16(hi, exp)),
    ]
}

/// Four vectors of i32 in the order of [`widen`] back to 64 codes, each clamped to
/// [0, 255] by the saturating packs (i32 → i16 signed, i16 → u8 unsigned).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
fn narrow(r: [__m512i; 4]) -> __m512i {
    _mm512_packus_epi16(
        _mm512_packs_epi32(r[0], r[1]),
        _mm512_packs_epi32(r[2], r[3]),
    )
}

/// Four vectors of i32 holding elements `0..16, 16..32, 32..48, 48..64` to 64 codes in that
/// order, each clamped to [0, 255].
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
fn narrow_seq(r: [__m512i; 4]) -> __m512i {
    // After the packs, dword 4l + j (lane l) holds elements 16j + 4l .. 16j + 4l + 4.
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_permutexvar_epi32(order, narrow(r))
}

/// True when the output stage's lower bound is a code (see [`Stage`]).
#[inline]
fn stage_ok(st: RealStage) -> bool {
    (0..=255).contains(&st.lo)
}

/// Broadcast constants of a [`RealStage`] (requires [`stage_ok`]).
#[derive(Clone, Copy)]
struct Stage {
    m: __m512,
    z: __m512,
    hi: __m512,
    lo: __m512i,
}

impl Stage {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
    fn new(st: RealStage) -> Stage {
        debug_assert!(stage_ok(st));
        Stage {
            m: _mm512_set1_ps(st.multiplier),
            z: _mm512_set1_ps(st.zero_point as f32),
            hi: _mm512_set1_ps(255.0),
            lo: _mm512_set1_epi8(st.lo as u8 as i8),
        }
    }

    /// `nearbyint(min(v · m + z, 255))` as i32, with NaN (and anything below `i32::MIN`)
    /// → `i32::MIN`. The caller narrows with saturation (lower bound 0), then applies
    /// [`Stage::floor`]. With `CLAMP = false` the `min` is left out: only for inputs known
    /// to keep `|v · m + z|` below 2^30 (see [`sum_is_bounded`]), where the conversion is
    /// exact and the packs' saturation gives the same codes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
    fn apply<const CLAMP: bool>(self, v: __m512) -> __m512i {
        let t = _mm512_add_ps(_mm512_mul_ps(v, self.m), self.z);
        // min_ps returns its second operand when either is NaN, so a NaN stays NaN.
        let t = if CLAMP { _mm512_min_ps(self.hi, t) } else { t };
        _mm512_cvt_roundps_epi32::<NEAREST>(t)
    }

    /// [`Stage::apply`] in the Sum/Add form: `fma(v, m, z)`, one rounding
    /// ([`RealStage::apply_sum`]).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
    fn apply_sum<const CLAMP: bool>(self, v: __m512) -> __m512i {
        let t = _mm512_fmadd_ps(v, self.m, self.z);
        let t = if CLAMP { _mm512_min_ps(self.hi, t) } else { t };
        _mm512_cvt_roundps_epi32::<NEAREST>(t)
    }

    /// The lower clamp `lo` on 64 codes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
    fn floor(self, codes: __m512i) -> __m512i {
        _mm512_max_epu8(codes, self.lo)
    }
}

/// True when every value `t = fl(fl(Σ_i s_i·(q_i − z_i)) · m + z)` the Sum kernels can form
/// from codes `q_i ∈ [0, 255]` with these parameters is finite and `|t| < 2^30`, so that
/// [`Stage::apply`] may skip its upper clamp.
///
/// In f64, `A = 2 · Σ |s_i| · max|q − z_i|` bounds every partial sum of the f32 terms and
/// `2 · A · |m| + 2 · |z|` bounds `t`: the factor 2 covers the relative rounding error of
/// the f32 steps, `(1 + 2^−24)^(inputs + 2)`, for up to 2^20 inputs, provided no step
/// overflows, which `A < 2^100` guarantees (underflow only adds absolute errors of 2^−149).
/// A NaN or infinite parameter makes a bound NaN or infinite, hence false.
fn sum_is_bounded(params: impl ExactSizeIterator<Item = QParams>, st: RealStage) -> bool {
    if params.len() > 1 << 20 {
        return false;
    }
    let terms: f64 = params
        .map(|p| {
            let z = f64::from(p.zero_point);
            f64::from(p.scale).abs() * z.abs().max((255.0 - z).abs())
        })
        .sum();
    let acc = 2.0 * terms;
    let t = 2.0 * acc * f64::from(st.multiplier).abs() + 2.0 * f64::from(st.zero_point).abs();
    acc < 2f64.powi(100) && t < 2f64.powi(30)
}

/// Broadcast constants of one input's parameters.
#[derive(Clone, Copy)]
struct Term {
    s: __m512,
    /// `f32(−z · s)` ([`sum_offset`]).
    c: __m512,
}

impl Term {
    /// `None` when the zero point is too large for the widening trick.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
    fn new(p: QParams) -> Option<Term> {
        if p.zero_point.unsigned_abs() > WIDEN_MAX_ZP {
            return None;
        }
        Some(Term {
            s: _mm512_set1_ps(p.scale),
            c: _mm512_set1_ps(sum_offset(p)),
        })
    }

    /// `fma(q, s, f32(−z · s))` ([`sum_term`]) from a widened `2^23 + q` (`q` recovered
    /// exactly by subtracting 2^23).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
    fn eval(self, w: __m512) -> __m512 {
        let q = _mm512_sub_ps(w, _mm512_set1_ps(TWO_23 as f32));
        _mm512_fmadd_ps(q, self.s, self.c)
    }
}

// ---------------------------------------------------------------------------------------
// Element-wise kernels.
// ---------------------------------------------------------------------------------------

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
fn add2_avx512(a: &[u8], qa: QParams, b: &[u8], qb: QParams, out: &mut [u8], st: RealStage) {
    let n = out.len();
    assert!(a.len() == n && b.len() == n);
    let (Some(ta), Some(tb), true) = (Term::new(qa), Term::new(qb), stage_ok(st)) else {
        return generic::add2(a, qa, b, qb, out, st);
    };
    let stage = Stage::new(st);
    if sum_is_bounded([qa, qb].into_iter(), st) {
        add2_loop::<false>(a, b, out, ta, tb, stage);
    } else {
        add2_loop::<true>(a, b, out, ta, tb, stage);
    }
}

/// The loop of [`add2_avx512`] (`CLAMP`: see [`Stage::apply`]).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
fn add2_loop<const CLAMP: bool>(
    a: &[u8],
    b: &[u8],
    out: &mut [u8],
    ta: Term,
    tb: Term,
    stage: Stage,
) {
    for range in aligned_steps(out.len(), out.as_ptr() as usize, 1, 64) {
        let wa = widen(load_u8(&a[range.clone()]));
        let wb = widen(load_u8(&b[range.clone()]));
        let mut r = [_mm512_setzero_si512(); 4];
        for (j, rj) in r.iter_mut().enumerate() {
            // The reference's initial 0.0 + t is skipped: see `generic::add2`.
            *rj = stage.apply_sum::<CLAMP>(_mm512_add_ps(ta.eval(wa[j]), tb.eval(wb[j])));
        }
        store_u8(&mut out[range], stage.floor(narrow(r)));
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
fn sum_n_avx512(xs: &[(&[u8], QParams)], out: &mut [u8], st: RealStage) {
    let n = out.len();
    assert!(xs.iter().all(|(x, _)| x.len() == n));
    let terms: Option<Vec<Term>> = xs.iter().map(|(_, p)| Term::new(*p)).collect();
    let (Some(terms), true) = (terms, stage_ok(st)) else {
        return generic::sum_n(xs, out, st);
    };
    let Some((&(x0, _), rest)) = xs.split_first() else {
        return generic::sum_n(xs, out, st);
    };
    let stage = Stage::new(st);
    if sum_is_bounded(xs.iter().map(|(_, p)| *p), st) {
        sum_n_loop::<false>(x0, rest, &terms, out, stage);
    } else {
        sum_n_loop::<true>(x0, rest, &terms, out, stage);
    }
}

/// The loop of [`sum_n_avx512`]: inputs `x0` and `rest`, with one [`Term`] each (`CLAMP`:
/// see [`Stage::apply`]).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
fn sum_n_loop<const CLAMP: bool>(
    x0: &[u8],
    rest: &[(&[u8], QParams)],
    terms: &[Term],
    out: &mut [u8],
    stage: Stage,
) {
    for range in aligned_steps(out.len(), out.as_ptr() as usize, 1, 64) {
        // The reference's initial 0.0 + t is skipped: see `generic::add2`.
        let w = widen(load_u8(&x0[range.clone()]));
        let mut acc = [_mm512_setzero_ps(); 4];
        for (aj, &wj) in acc.iter_mut().zip(&w) {
            *aj = terms[0].eval(wj);
        }
        for ((x, _), t) in rest.iter().zip(&terms[1..]) {
            let w = widen(load_u8(&x[range.clone()]));
            for (aj, &wj) in acc.iter_mut().zip(&w) {
                *aj = _mm512_add_ps(*aj, t.eval(wj));
            }
        }
        let mut r = [_mm512_setzero_si512(); 4];
        for (rj, &aj) in r.iter_mut().zip(&acc) {
            *rj = stage.apply_sum::<CLAMP>(aj);
        }
        store_u8(&mut out[range], stage.floor(narrow(r)));
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
fn quantize_avx512(x: &[f32], out: &mut [u8], inv_scale: f32, zero_point: i32) {
    let n = out.len();
    assert_eq!(x.len(), n);
    if !(0..=255).contains(&zero_point) {
        return generic::quantize(x, out, inv_scale, zero_point);
    }
    let q = Quant {
        inv: _mm512_set1_ps(inv_scale),
        // clamp(round(p) + z, 0, 255): the upper bound applied to p as 255 − z (an integer,
        // so rounding commutes with it), the lower one by the saturating packs.
        hi: _mm512_set1_ps((255 - zero_point) as f32),
        z: _mm512_set1_epi32(zero_point),
    };
    for range in aligned_steps(n, out.as_ptr() as usize, 1, 64) {
        let (x, o) = (&x[range.clone()], &mut out[range]);
        // Full blocks get their own (inlined) call, where the length checks fold away.
        if o.len() == 64 {
            q.block(&x[..64], &mut o[..64]);
        } else {
            q.block(x, o);
        }
    }
}

/// Broadcast constants of Quantize.
#[derive(Clone, Copy)]
struct Quant {
    inv: __m512,
    hi: __m512,
    z: __m512i,
}

impl Quant {
    /// Quantizes up to 64 floats `x` into `o` (same length).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
    fn block(self, x: &[f32], o: &mut [u8]) {
        let mut r = [_mm512_setzero_si512(); 4];
        for (k, rk) in r.iter_mut().enumerate() {
            let p = _mm512_mul_ps(load_f32(tail(x, 16 * k)), self.inv);
            let ordered = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(p, p);
            let t = _mm512_min_ps(p, self.hi);
            // NaN lanes convert to 0 (then + z), as the reference's NaN → 0.
            let q = _mm512_maskz_cvt_roundps_epi32::<NEAREST>(ordered, t);
            *rk = _mm512_add_epi32(q, self.z);
        }
        store_u8(o, narrow_seq(r));
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
fn dequantize_avx512(x: &[u8], out: &mut [f32], p: QParams) {
    let n = out.len();
    assert_eq!(x.len(), n);
    let (s, z) = (_mm512_set1_ps(p.scale), _mm512_set1_epi32(p.zero_point));
    // Up to 64 codes of `x` into `o` (same length), 16 at a time.
    let block = |x: &[u8], o: &mut [f32]| {
        for k in 0..4 {
            // (q − z) in i32 (wrapping, like the reference in release builds), then to f32.
            let d = _mm512_sub_epi32(load_u8x16_i32(tail(x, 16 * k)), z);
            let v = _mm512_mul_ps(s, _mm512_cvt_roundepi32_ps::<NEAREST>(d));
            store_f32(tail_mut(o, 16 * k), v);
        }
    };
    for range in aligned_steps(n, out.as_ptr() as usize, 4, 64) {
        let (x, o) = (&x[range.clone()], &mut out[range]);
        // Full blocks get their own (inlined) call, where the length checks fold away.
        if o.len() == 64 {
            block(&x[..64], &mut o[..64]);
        } else {
            block(x, o);
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
fn relu_avx512(x: &[u8], out: &mut [u8], zero_point: u8) {
    let n = out.len();
    assert_eq!(x.len(), n);
    let z = _mm512_set1_epi8(zero_point as i8);
    for r in aligned_steps(n, out.as_ptr() as usize, 1, 64) {
        let v = _mm512_max_epu8(load_u8(&x[r.clone()]), z);
        store_u8(&mut out[r], v);
    }
}

/// `requantize(x − z_x, m, z_y, 0)` 64 codes at a time: the exact difference (widening
/// trick), one f32 product (as the reference's `raw as f32 * m`), the product clamped to
/// ±2^24 (beyond it every result saturates anyway, and the conversion would overflow),
/// rounded half to even, `z_y` added in i32 and the sum clamped to [0, 255] by the packs.
/// Falls back to the portable kernel for a non-finite multiplier or zero points far outside
/// the code range.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
fn requant_avx512(x: &[u8], xq: QParams, out: &mut [u8], yq: QParams) {
    let n = out.len();
    assert_eq!(x.len(), n);
    let m = xq.scale / yq.scale;
    if !m.is_finite()
        || yq.zero_point.unsigned_abs() > 1 << 20
        || xq.zero_point.unsigned_abs() > WIDEN_MAX_ZP
    {
        return generic::requant(x, xq, out, yq);
    }
    let zx = _mm512_set1_ps((TWO_23 + xq.zero_point) as f32);
    let zy = _mm512_set1_epi32(yq.zero_point);
    let mv = _mm512_set1_ps(m);
    let (lo, hi) = (_mm512_set1_ps(-16_777_216.0), _mm512_set1_ps(16_777_216.0));
    for range in aligned_steps(n, out.as_ptr() as usize, 1, 64) {
        let w = widen(load_u8(&x[range.clone()]));
        let mut r = [_mm512_setzero_si512(); 4];
        for (rj, &wj) in r.iter_mut().zip(&w) {
            let f = _mm512_mul_ps(_mm512_sub_ps(wj, zx), mv);
            let f = _mm512_min_ps(_mm512_max_ps(f, lo), hi);
            *rj = _mm512_add_epi32(_mm512_cvt_roundps_epi32::<NEAREST>(f), zy);
        }
        store_u8(&mut out[range], narrow(r));
    }
}

// ---------------------------------------------------------------------------------------
// Pooling.
// ---------------------------------------------------------------------------------------

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
fn max_pool_row_avx512(x: &[u8], g: &PoolGeom, oy: usize, out: &mut [u8], s: &mut PoolScratch) {
    check_pool_lengths(x, g, oy, out);
    let (hs, he) = g.rows(oy);
    if out.is_empty() || he <= hs {
        // Nothing to do, or an empty window (outside the contract): the portable kernel.
        return generic::max_pool_row(x, g, oy, out, s);
    }
    let c = g.c;
    let row_len = g.iw * c;
    let row = |iy: usize| &x[iy * row_len..(iy + 1) * row_len];
    // Maximum over the window's rows, as one contiguous [iw, c] row.
    let m: &[u8] = if he - hs == 1 {
        row(hs)
    } else {
        // Every element is overwritten below.
        s.rows_u8.resize(row_len, 0);
        let mut j = 0;
        while j < row_len {
            let mut acc = load_u8(&row(hs)[j..]);
            for iy in hs + 1..he {
                acc = _mm512_max_epu8(acc, load_u8(&row(iy)[j..]));
            }
            store_u8(&mut s.rows_u8[j..], acc);
            j += 64;
        }
        &s.rows_u8
    };
    // Then over the window's columns, 64 channels at a time (masked at the end of a pixel).
    for (ox, o) in out.chunks_exact_mut(c).enumerate() {
        let (ws, we) = g.cols(ox);
        let mut cb = 0;
        while cb < c {
            let cell = |ix: usize| &m[ix * c + cb..(ix + 1) * c];
            let mut acc = load_u8(cell(ws));
            for ix in ws + 1..we {
                acc = _mm512_max_epu8(acc, load_u8(cell(ix)));
            }
            store_u8(&mut o[cb..], acc);
            cb += 64;
        }
    }
}

/// Rows whose codes can be summed in u16 lanes without overflow (`257 · 255 = 65535`).
const U16_ROWS: usize = 257;

/// `dst[j] = Σ_{iy ∈ [hs, he)} x[iy · row_len + j]` for `j < row_len`, exact in i32: 64
/// columns at a time, summed in u16 over up to [`U16_ROWS`] rows, then widened.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
fn column_sums(x: &[u8], row_len: usize, hs: usize, he: usize, dst: &mut Vec<i32>) {
    // Every element is overwritten below.
    dst.resize(row_len, 0);
    let mut j = 0;
    while j < row_len {
        let mut acc = [_mm512_setzero_si512(); 4];
        let mut iy = hs;
        while iy < he {
            let end = he.min(iy + U16_ROWS);
            let (mut lo, mut hi) = (_mm512_setzero_si512(), _mm512_setzero_si512());
            for r in iy..end {
                let codes = &x[r * row_len + j..(r + 1) * row_len];
                lo = _mm512_add_epi16(lo, load_u8x32_u16(codes));
                hi = _mm512_add_epi16(hi, load_u8x32_u16(tail(codes, 32)));
            }
            let halves = [
                _mm512_castsi512_si256(lo),
                _mm512_extracti64x4_epi64::<1>(lo),
                _mm512_castsi512_si256(hi),
                _mm512_extracti64x4_epi64::<1>(hi),
            ];
            for (a, h) in acc.iter_mut().zip(halves) {
                *a = _mm512_add_epi32(*a, _mm512_cvtepu16_epi32(h));
            }
            iy = end;
        }
        let d = &mut dst[j..];
        for (k, &a) in acc.iter().enumerate() {
            let start = (16 * k).min(d.len());
            store_i32(&mut d[start..], a);
        }
        j += 64;
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
fn avg_pool_row_avx512(
    x: &[u8],
    g: &PoolGeom,
    oy: usize,
    xq: QParams,
    yq: QParams,
    out: &mut [u8],
    s: &mut PoolScratch,
) {
    check_pool_lengths(x, g, oy, out);
    let (hs, he) = g.rows(oy);
    if out.is_empty() || he <= hs {
        // Nothing to do, or an empty window (outside the contract): the portable kernel.
        return generic::avg_pool_row(x, g, oy, xq, yq, out, s);
    }
    let c = g.c;
    // Exact i32 sums over the window's rows, as one contiguous [iw, c] row.
    column_sums(x, g.iw * c, hs, he, &mut s.rows_i32);
    let m = &s.rows_i32;
    for (ox, o) in out.chunks_exact_mut(c).enumerate() {
        let (ws, we) = g.cols(ox);
        let (bias, st) = generic::avg_stage(xq, yq, (he - hs) * (we - ws));
        // The stage's lower bound is 0, which the saturating packs apply.
        debug_assert_eq!(st.lo, 0);
        let (bias, stage) = (_mm512_set1_epi32(bias), Stage::new(st));
        let mut cb = 0;
        while cb < c {
            let width = (c - cb).min(64);
            let mut r = [_mm512_setzero_si512(); 4];
            for (k, rk) in r.iter_mut().enumerate().take(width.div_ceil(16)) {
                let ch = cb + 16 * k;
                let mut acc = bias;
                for ix in ws..we {
                    acc = _mm512_add_epi32(acc, load_i32(&m[ix * c + ch..(ix + 1) * c]));
                }
                // i32 → f32 rounds to nearest even, as `as f32` does.
                *rk = stage.apply::<true>(_mm512_cvt_roundepi32_ps::<NEAREST>(acc));
            }
            store_u8(&mut o[cb..], narrow_seq(r));
            cb += 64;
        }
    }
}
