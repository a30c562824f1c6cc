//! AVX2 kernels. Every function here carries `#[target_feature(enable = "avx2")]` and is
//! reached only through [`KERNELS`], which [`super::kernels_for`] hands out only after
//! detecting AVX2. Memory is touched only through the load/store helpers below, which
//! check the slice lengths they need.
//!
//! Clamping happens in f32 *before* the conversion to integers. Because the bounds are
//! integers and rounding is monotone, `round(clamp(v)) = clamp(round(v))`; clamping first
//! also maps ±∞ to the right bound, and `max_ps(v, lo)` returns `lo` for a NaN `v`, which
//! is what the reference gets (NaN → 0 → clamped to `lo`). The conversion `cvtps_epi32`
//! rounds half to even under the default MXCSR rounding mode, which Rust guarantees. Tails
//! shorter than a vector are handled by recomputing an overlapping last vector (the results
//! are pure functions of the same inputs, so overlapped lanes are written twice with equal
//! values), except in AveragePool's in-place i32 row sums, which finish with a scalar loop.
//! Inputs shorter than one vector, and pools with fewer than 16 (MaxPool) or 8
//! (AveragePool) channels, use the portable code.

use std::arch::x86_64::*;

use super::generic as scalar;
use super::{check_pool_lengths, PoolGeom, PoolScratch, QEltwiseKernels, RealStage};
use crate::int8::requant::sum_offset;
use crate::kernels::isa::Isa;
use crate::QParams;

/// The AVX2 table.
pub(super) const KERNELS: QEltwiseKernels = QEltwiseKernels {
    isa: Isa::Avx2,
    add2,
    sum_n,
    quantize,
    dequantize,
    relu,
    requant,
    max_pool_row,
    avg_pool_row,
};

// -----------------------------------------------------------------------------------
// Entry points (safe wrappers around the target-feature functions).
// -----------------------------------------------------------------------------------

fn add2(a: &[u8], qa: QParams, b: &[u8], qb: QParams, out: &mut [u8], st: RealStage) {
    // SAFETY: this function is only reachable through KERNELS, handed out only when
    // the CPU supports AVX2.
    unsafe { add2_avx2(a, qa, b, qb, out, st) }
}

fn sum_n(xs: &[(&[u8], QParams)], out: &mut [u8], st: RealStage) {
    // SAFETY: as in `add2`.
    unsafe { sum_n_avx2(xs, out, st) }
}

fn quantize(x: &[f32], out: &mut [u8], inv_scale: f32, zero_point: i32) {
    // SAFETY: as in `add2`.
    unsafe { quantize_avx2(x, out, inv_scale, zero_point) }
}

fn dequantize(x: &[u8], out: &mut [f32], p: QParams) {
    // SAFETY: as in `add2`.
    unsafe { dequantize_avx2(x, out, p) }
}

fn relu(x: &[u8], out: &mut [u8], zero_point: u8) {
    // SAFETY: as in `add2`.
    unsafe { relu_avx2(x, out, zero_point) }
}

fn requant(x: &[u8], xq: QParams, out: &mut [u8], yq: QParams) {
    // SAFETY: as in `add2`.
    unsafe { requant_avx2(x, xq, out, yq) }
}

fn max_pool_row(x: &[u8], g: &PoolGeom, oy: usize, out: &mut [u8], s: &mut PoolScratch) {
    // SAFETY: as in `add2`.
    unsafe { max_pool_row_avx2(x, g, oy, out, s) }
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
    unsafe { avg_pool_row_avx2(x, g, oy, xq, yq, out, s) }
}

// -----------------------------------------------------------------------------------
// Checked loads and stores.
// -----------------------------------------------------------------------------------

/// 32 codes from the start of `s`.
#[inline]
#[target_feature(enable = "avx2")]
fn load_u8x32(s: &[u8]) -> __m256i {
    assert!(s.len() >= 32);
    // SAFETY: `s` has at least 32 readable bytes; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

/// Stores 32 codes at the start of `s`.
#[inline]
#[target_feature(enable = "avx2")]
fn store_u8x32(s: &mut [u8], v: __m256i) {
    assert!(s.len() >= 32);
    // SAFETY: `s` has at least 32 writable bytes; storeu has no alignment requirement.
    unsafe { _mm256_storeu_si256(s.as_mut_ptr().cast(), v) }
}

/// 16 codes from the start of `s`.
#[inline]
#[target_feature(enable = "avx2")]
fn load_u8x16(s: &[u8]) -> __m128i {
    assert!(s.len() >= 16);
    // SAFETY: `s` has at least 16 readable bytes; loadu has no alignment requirement.
    unsafe { _mm_loadu_si128(s.as_ptr().cast()) }
}

/// Stores 16 codes at the start of `s`.
#[inline]
#[target_feature(enable = "avx2")]
fn store_u8x16(s: &mut [u8], v: __m128i) {
    assert!(s.len() >= 16);
    // SAFETY: `s` has at least 16 writable bytes; storeu has no alignment requirement.
    unsafe { _mm_storeu_si128(s.as_mut_ptr().cast(), v) }
}

/// The first 8 codes of `s`, zero-extended to i32.
#[inline]
#[target_feature(enable = "avx2")]
fn load_u8x8_i32(s: &[u8]) -> __m256i {
    assert!(s.len() >= 8);
    // SAFETY: `s` has at least 8 readable bytes; loadl_epi64 reads exactly 8 bytes
    // without an alignment requirement.
    let v = unsafe { _mm_loadl_epi64(s.as_ptr().cast()) };
    _mm256_cvtepu8_epi32(v)
}

/// Stores the low 8 bytes of `v` at the start of `s`.
#[inline]
#[target_feature(enable = "avx2")]
fn store_u8x8(s: &mut [u8], v: __m128i) {
    assert!(s.len() >= 8);
    // SAFETY: `s` has at least 8 writable bytes; storel_epi64 writes exactly 8 bytes
    // without an alignment requirement.
    unsafe { _mm_storel_epi64(s.as_mut_ptr().cast(), v) }
}

/// 8 floats from the start of `s`.
#[inline]
#[target_feature(enable = "avx2")]
fn load_f32x8(s: &[f32]) -> __m256 {
    assert!(s.len() >= 8);
    // SAFETY: `s` has at least 8 readable floats; loadu has no alignment requirement.
    unsafe { _mm256_loadu_ps(s.as_ptr()) }
}

/// Stores 8 floats at the start of `s`.
#[inline]
#[target_feature(enable = "avx2")]
fn store_f32x8(s: &mut [f32], v: __m256) {
    assert!(s.len() >= 8);
    // SAFETY: `s` has at least 8 writable floats; storeu has no alignment requirement.
    unsafe { _mm256_storeu_ps(s.as_mut_ptr(), v) }
}

/// 8 i32 from the start of `s`.
#[inline]
#[target_feature(enable = "avx2")]
fn load_i32x8(s: &[i32]) -> __m256i {
    assert!(s.len() >= 8);
    // SAFETY: `s` has at least 8 readable i32; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

/// Stores 8 i32 at the start of `s`.
#[inline]
#[target_feature(enable = "avx2")]
fn store_i32x8(s: &mut [i32], v: __m256i) {
    assert!(s.len() >= 8);
    // SAFETY: `s` has at least 8 writable i32; storeu has no alignment requirement.
    unsafe { _mm256_storeu_si256(s.as_mut_ptr().cast(), v) }
}

/// Start offsets of `width`-wide blocks covering `0..len` (`len >= width`): `0, width,
/// 2·width, ...` and a last block ending exactly at `len` (it may overlap the previous
/// one).
#[inline]
fn blocks(len: usize, width: usize) -> impl Iterator<Item = usize> {
    debug_assert!(len >= width);
    (0..len.div_ceil(width)).map(move |k| (k * width).min(len - width))
}

// -----------------------------------------------------------------------------------
// Arithmetic helpers.
// -----------------------------------------------------------------------------------

/// Packs four vectors of i32 in `[0, 255]` (elements 0..8, 8..16, 16..24, 24..32) into
/// 32 codes in order.
#[inline]
#[target_feature(enable = "avx2")]
fn pack_u8x32(r: [__m256i; 4]) -> __m256i {
    // packs works per 128-bit lane; the dwords come out as 0,2,4,6,1,3,5,7 of the
    // wanted order, which the final permutation undoes.
    let lo = _mm256_packs_epi32(r[0], r[1]);
    let hi = _mm256_packs_epi32(r[2], r[3]);
    let bytes = _mm256_packus_epi16(lo, hi);
    _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// Packs one vector of i32 in `[0, 255]` into 8 codes (the low 8 bytes of the result).
#[inline]
#[target_feature(enable = "avx2")]
fn pack_u8x8(r: __m256i) -> __m128i {
    let words = _mm_packs_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
    _mm_packus_epi16(words, words)
}

/// Broadcast constants of a [`RealStage`].
#[derive(Clone, Copy)]
struct Stage {
    m: __m256,
    z: __m256,
    lo: __m256,
    hi: __m256,
}

impl Stage {
    #[inline]
    #[target_feature(enable = "avx2")]
    fn new(st: RealStage) -> Stage {
        Stage {
            m: _mm256_set1_ps(st.multiplier),
            z: _mm256_set1_ps(st.zero_point as f32),
            lo: _mm256_set1_ps(st.lo as f32),
            hi: _mm256_set1_ps(255.0),
        }
    }

    /// [`Stage::apply`] in the Sum/Add form: `fma(v, m, z)` ([`RealStage::apply_sum`]).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn apply_sum(self, v: __m256) -> __m256i {
        let t = _mm256_fmadd_ps(v, self.m, self.z);
        // max_ps returns its second operand when the first is NaN.
        let t = _mm256_min_ps(_mm256_max_ps(t, self.lo), self.hi);
        _mm256_cvtps_epi32(t)
    }

    /// `clamp(nearbyint(v · m + z), lo, 255)` as i32: multiply, add, then clamp (NaN →
    /// `lo`) and round half to even in the conversion.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn apply(self, v: __m256) -> __m256i {
        let t = _mm256_add_ps(_mm256_mul_ps(v, self.m), self.z);
        // max_ps returns its second operand when the first is NaN.
        let t = _mm256_min_ps(_mm256_max_ps(t, self.lo), self.hi);
        _mm256_cvtps_epi32(t)
    }
}

/// Broadcast constants of one input's parameters.
#[derive(Clone, Copy)]
struct Term {
    z: __m256i,
    /// `f32(−z · s)` ([`sum_offset`]).
    c: __m256,
    s: __m256,
}

impl Term {
    #[inline]
    #[target_feature(enable = "avx2")]
    fn new(p: QParams) -> Term {
        Term {
            z: _mm256_set1_epi32(p.zero_point),
            c: _mm256_set1_ps(sum_offset(p)),
            s: _mm256_set1_ps(p.scale),
        }
    }

    /// Int8Dequantize: `s · (q − z)` for the first 8 codes of `x` (exact difference, one
    /// f32 rounding).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn dequant(self, x: &[u8]) -> __m256 {
        let d = _mm256_sub_epi32(load_u8x8_i32(x), self.z);
        _mm256_mul_ps(self.s, _mm256_cvtepi32_ps(d))
    }

    /// `fma(q, s, f32(−z · s))` for the first 8 codes of `x` ([`sum_term`]).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn eval(self, x: &[u8]) -> __m256 {
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(load_u8x8_i32(x)), self.s, self.c)
    }
}

// -----------------------------------------------------------------------------------
// Element-wise kernels.
// -----------------------------------------------------------------------------------

#[target_feature(enable = "avx2,fma")]
fn add2_avx2(a: &[u8], qa: QParams, b: &[u8], qb: QParams, out: &mut [u8], st: RealStage) {
    let n = out.len();
    assert!(a.len() == n && b.len() == n);
    if n < 32 {
        return scalar::add2(a, qa, b, qb, out, st);
    }
    let (ta, tb, stage) = (Term::new(qa), Term::new(qb), Stage::new(st));
    for i in blocks(n, 32) {
        let (a, b) = (&a[i..i + 32], &b[i..i + 32]);
        let mut r = [_mm256_setzero_si256(); 4];
        for (k, rk) in r.iter_mut().enumerate() {
            // The reference's initial 0.0 + t is skipped: see `scalar::add2`.
            let acc = _mm256_add_ps(ta.eval(&a[8 * k..]), tb.eval(&b[8 * k..]));
            *rk = stage.apply_sum(acc);
        }
        store_u8x32(&mut out[i..], pack_u8x32(r));
    }
}

#[target_feature(enable = "avx2,fma")]
fn sum_n_avx2(xs: &[(&[u8], QParams)], out: &mut [u8], st: RealStage) {
    let n = out.len();
    assert!(xs.iter().all(|(x, _)| x.len() == n));
    if n < 32 {
        return scalar::sum_n(xs, out, st);
    }
    let terms: Vec<Term> = xs.iter().map(|(_, p)| Term::new(*p)).collect();
    let stage = Stage::new(st);
    for i in blocks(n, 32) {
        let mut acc = [_mm256_setzero_ps(); 4];
        for ((x, _), t) in xs.iter().zip(&terms) {
            let x = &x[i..i + 32];
            for (k, ak) in acc.iter_mut().enumerate() {
                *ak = _mm256_add_ps(*ak, t.eval(&x[8 * k..]));
            }
        }
        let r = acc.map(|a| stage.apply_sum(a));
        store_u8x32(&mut out[i..], pack_u8x32(r));
    }
}

#[target_feature(enable = "avx2")]
fn quantize_avx2(x: &[f32], out: &mut [u8], inv_scale: f32, zero_point: i32) {
    let n = out.len();
    assert_eq!(x.len(), n);
    if n < 32 {
        return scalar::quantize(x, out, inv_scale, zero_point);
    }
    let inv = _mm256_set1_ps(inv_scale);
    // clamp(round(p) + z, 0, 255) = round(clamp(p, −z, 255 − z)) + z for integer bounds.
    let lo = _mm256_set1_ps(-(zero_point as f32));
    let hi = _mm256_set1_ps((255 - zero_point) as f32);
    let z = _mm256_set1_epi32(zero_point);
    for i in blocks(n, 32) {
        let x = &x[i..i + 32];
        let mut r = [_mm256_setzero_si256(); 4];
        for (k, rk) in r.iter_mut().enumerate() {
            let p = _mm256_mul_ps(load_f32x8(&x[8 * k..]), inv);
            // NaN → +0 (the reference maps NaN to 0 before adding z).
            let p = _mm256_and_ps(p, _mm256_cmp_ps::<_CMP_ORD_Q>(p, p));
            let p = _mm256_min_ps(_mm256_max_ps(p, lo), hi);
            *rk = _mm256_add_epi32(_mm256_cvtps_epi32(p), z);
        }
        store_u8x32(&mut out[i..], pack_u8x32(r));
    }
}

#[target_feature(enable = "avx2")]
fn dequantize_avx2(x: &[u8], out: &mut [f32], p: QParams) {
    let n = out.len();
    assert_eq!(x.len(), n);
    if n < 32 {
        return scalar::dequantize(x, out, p);
    }
    let t = Term::new(p);
    for i in blocks(n, 32) {
        let (x, o) = (&x[i..i + 32], &mut out[i..i + 32]);
        for k in 0..4 {
            store_f32x8(&mut o[8 * k..], t.dequant(&x[8 * k..]));
        }
    }
}

#[target_feature(enable = "avx2")]
fn relu_avx2(x: &[u8], out: &mut [u8], zero_point: u8) {
    let n = out.len();
    assert_eq!(x.len(), n);
    if n < 32 {
        return scalar::relu(x, out, zero_point);
    }
    let z = _mm256_set1_epi8(zero_point as i8);
    for i in blocks(n, 32) {
        store_u8x32(&mut out[i..], _mm256_max_epu8(load_u8x32(&x[i..]), z));
    }
}

/// `requantize(x − z_x, m, z_y, 0)` for 32 codes at a time: the difference in i32, one
/// f32 product (as the scalar `raw as f32 * m`), the product clamped to ±2^24 (beyond it
/// every result saturates anyway), rounded half to even by the conversion, `z_y` added in
/// i32 and the sum clamped to [0, 255]. Falls back to the scalar kernel for short inputs, a
/// non-finite multiplier or a zero point far outside the code range.
#[target_feature(enable = "avx2")]
fn requant_avx2(x: &[u8], xq: QParams, out: &mut [u8], yq: QParams) {
    let n = out.len();
    assert_eq!(x.len(), n);
    let m = xq.scale / yq.scale;
    if n < 32 || !m.is_finite() || yq.zero_point.unsigned_abs() > 1 << 20 {
        return scalar::requant(x, xq, out, yq);
    }
    let (zx, zy) = (
        _mm256_set1_epi32(xq.zero_point),
        _mm256_set1_epi32(yq.zero_point),
    );
    let mv = _mm256_set1_ps(m);
    let (lo, hi) = (_mm256_set1_ps(-16_777_216.0), _mm256_set1_ps(16_777_216.0));
    let (c0, c255) = (_mm256_setzero_si256(), _mm256_set1_epi32(255));
    for i in blocks(n, 32) {
        let xb = &x[i..i + 32];
        let r: [__m256i; 4] = std::array::from_fn(|k| {
            let d = _mm256_sub_epi32(load_u8x8_i32(&xb[8 * k..]), zx);
            let f = _mm256_mul_ps(_mm256_cvtepi32_ps(d), mv);
            let f = _mm256_min_ps(_mm256_max_ps(f, lo), hi);
            let q = _mm256_add_epi32(_mm256_cvtps_epi32(f), zy);
            _mm256_min_epi32(_mm256_max_epi32(q, c0), c255)
        });
        store_u8x32(&mut out[i..], pack_u8x32(r));
    }
}

// -----------------------------------------------------------------------------------
// Pooling.
// -----------------------------------------------------------------------------------

/// `dst[j] = max(dst[j], src[j])` (equal lengths).
#[inline]
#[target_feature(enable = "avx2")]
fn max_into(dst: &mut [u8], src: &[u8]) {
    let n = dst.len();
    assert_eq!(src.len(), n);
    if n >= 32 {
        // Overlapping blocks read a dst value that is already the maximum: harmless.
        for j in blocks(n, 32) {
            let v = _mm256_max_epu8(load_u8x32(&dst[j..]), load_u8x32(&src[j..]));
            store_u8x32(&mut dst[j..], v);
        }
    } else {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = (*d).max(v);
        }
    }
}

/// `dst[j] = max(a[j], b[j])` (equal lengths).
#[inline]
#[target_feature(enable = "avx2")]
fn max2(dst: &mut [u8], a: &[u8], b: &[u8]) {
    let n = dst.len();
    assert!(a.len() == n && b.len() == n);
    if n >= 32 {
        for j in blocks(n, 32) {
            let v = _mm256_max_epu8(load_u8x32(&a[j..]), load_u8x32(&b[j..]));
            store_u8x32(&mut dst[j..], v);
        }
    } else {
        for ((d, &u), &v) in dst.iter_mut().zip(a).zip(b) {
            *d = u.max(v);
        }
    }
}

#[target_feature(enable = "avx2")]
fn max_pool_row_avx2(x: &[u8], g: &PoolGeom, oy: usize, out: &mut [u8], s: &mut PoolScratch) {
    check_pool_lengths(x, g, oy, out);
    let c = g.c;
    if c < 16 {
        return scalar::max_pool_row(x, g, oy, out, s);
    }
    let row_len = g.iw * c;
    let (hs, he) = g.rows(oy);
    // Maximum over the window's rows, as one contiguous [iw, c] row.
    let m: &[u8] = if he - hs == 1 {
        &x[hs * row_len..(hs + 1) * row_len]
    } else {
        s.rows_u8.clear();
        s.rows_u8.resize(row_len, 0);
        let row = |iy: usize| &x[iy * row_len..(iy + 1) * row_len];
        max2(&mut s.rows_u8, row(hs), row(hs + 1));
        for iy in hs + 2..he {
            max_into(&mut s.rows_u8, row(iy));
        }
        &s.rows_u8
    };
    // Then over the window's columns, vectorized over the channels.
    for (ox, o) in out.chunks_exact_mut(c).enumerate() {
        let (ws, we) = g.cols(ox);
        if c >= 32 {
            for cb in blocks(c, 32) {
                let mut acc = load_u8x32(&m[ws * c + cb..]);
                for ix in ws + 1..we {
                    acc = _mm256_max_epu8(acc, load_u8x32(&m[ix * c + cb..]));
                }
                store_u8x32(&mut o[cb..], acc);
            }
        } else {
            for cb in blocks(c, 16) {
                let mut acc = load_u8x16(&m[ws * c + cb..]);
                for ix in ws + 1..we {
                    acc = _mm_max_epu8(acc, load_u8x16(&m[ix * c + cb..]));
                }
                store_u8x16(&mut o[cb..], acc);
            }
        }
    }
}

/// `dst[j] += src[j]` (codes widened to i32, wrapping), vectorized 8 at a time.
#[inline]
#[target_feature(enable = "avx2")]
fn add_widened(dst: &mut [i32], src: &[u8]) {
    let n = dst.len();
    assert_eq!(src.len(), n);
    let full = n - n % 8;
    for j in (0..full).step_by(8) {
        let v = _mm256_add_epi32(load_i32x8(&dst[j..]), load_u8x8_i32(&src[j..]));
        store_i32x8(&mut dst[j..], v);
    }
    for (d, &v) in dst[full..].iter_mut().zip(&src[full..]) {
        *d = d.wrapping_add(i32::from(v));
    }
}

#[target_feature(enable = "avx2")]
fn avg_pool_row_avx2(
    x: &[u8],
    g: &PoolGeom,
    oy: usize,
    xq: QParams,
    yq: QParams,
    out: &mut [u8],
    s: &mut PoolScratch,
) {
    check_pool_lengths(x, g, oy, out);
    let c = g.c;
    if c < 8 {
        return scalar::avg_pool_row(x, g, oy, xq, yq, out, s);
    }
    let row_len = g.iw * c;
    let (hs, he) = g.rows(oy);
    // Exact i32 sums over the window's rows, as one contiguous [iw, c] row.
    s.rows_i32.clear();
    s.rows_i32.resize(row_len, 0);
    for iy in hs..he {
        add_widened(&mut s.rows_i32, &x[iy * row_len..(iy + 1) * row_len]);
    }
    let m = &s.rows_i32;
    for (ox, o) in out.chunks_exact_mut(c).enumerate() {
        let (ws, we) = g.cols(ox);
        let (bias, st) = scalar::avg_stage(xq, yq, (he - hs) * (we - ws));
        let (bias, stage) = (_mm256_set1_epi32(bias), Stage::new(st));
        for cb in blocks(c, 8) {
            let mut acc = bias;
            for ix in ws..we {
                acc = _mm256_add_epi32(acc, load_i32x8(&m[ix * c + cb..]));
            }
            // i32 → f32 rounds to nearest even, as `as f32` does.
            let r = stage.apply(_mm256_cvtepi32_ps(acc));
            store_u8x8(&mut o[cb..], pack_u8x8(r));
        }
    }
}
