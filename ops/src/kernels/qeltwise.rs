//! Fast kernels for the element-wise, pooling and (de)quantization Int8 operators, bit-exact
//! with the scalar DNNLOWP reference in [`crate::int8`].
//!
//! Two implementations sit behind one table of function pointers ([`QEltwiseKernels`]),
//! filled once from [`Isa::current`]: portable Rust (`Isa::Scalar`) and AVX2 (`Isa::Avx2`).
//! Both reproduce the reference's exact sequence of f32 operations:
//!
//! - Sum/Add: `acc = Σ_i s_i·(q_i − z_i)` (each difference formed in integers, products and
//!   sums rounded to f32 one at a time, left to right, never fused), then
//!   `clamp(nearbyint(acc · m + z_y), lo, 255)`.
//! - AveragePool: the exact integer window sum `Σ x − z_x·size`, converted to f32, then the
//!   same output stage with `m = s_x / s_y / size`.
//! - Quantize: `clamp(nearbyint(x · (1/s)) + z, 0, 255)`, NaN → `z`.
//! - Dequantize: `s · (q − z)`. MaxPool / Relu: integer maxima.
//!
//! In the AVX2 code, clamping happens in f32 *before* the conversion to integers. Because
//! the bounds are integers and rounding is monotone, `round(clamp(v)) = clamp(round(v))`;
//! clamping first also maps ±∞ to the right bound, and `max_ps(v, lo)` returns `lo` for a
//! NaN `v`, which is what the reference gets (NaN → 0 → clamped to `lo`). The conversion
//! `cvtps_epi32` rounds half to even under the default MXCSR rounding mode, which Rust
//! guarantees. Tails shorter than a vector are handled by recomputing an overlapping last
//! vector (the results are pure functions of the same inputs, so overlapped lanes are
//! written twice with equal values), except in AveragePool's in-place i32 row sums, which
//! finish with a scalar loop. Inputs shorter than one vector, and pools with fewer than 16
//! (MaxPool) or 8 (AveragePool) channels, use the portable code.
//!
//! Pools are separable: for one output row, the window's input rows are first reduced into
//! one contiguous `[iw, c]` row (max of codes, or exact i32 sums), then each output pixel
//! reduces its window's columns of that row, vectorized over the channels.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::isa::Isa;
use crate::int8::requant::{dequantize_u8, quantize_u8, requantize, requantize_real};
use crate::QParams;

/// Fewest elements per parallel task in [`par_chunks`] (a multiple of every vector width
/// used here).
pub const PAR_CHUNK: usize = 1 << 14;

/// Runs `f(start, piece)` over consecutive pieces of `out` (in parallel when there are
/// several), `start` being the piece's offset in `out`: about four equal pieces per thread
/// (so that threads finish together), each a multiple of 64 elements and at least
/// [`PAR_CHUNK`]. Element-wise kernels give the same results whatever the split.
pub fn par_chunks<T: Send>(out: &mut [T], f: impl Fn(usize, &mut [T]) + Sync + Send) {
    let tasks = 4 * rayon::current_num_threads().max(1);
    let chunk = out
        .len()
        .div_ceil(tasks)
        .next_multiple_of(64)
        .max(PAR_CHUNK);
    if out.len() <= chunk {
        f(0, out);
    } else {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, piece)| f(i * chunk, piece));
    }
}

/// The output stage shared by Sum/Add and AveragePool:
/// `clamp(nearbyint(v · multiplier + zero_point), lo, 255)`, every step in f32.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RealStage {
    /// Factor applied to the f32 value (`1/s_y` for Sum, `s_x/s_y/size` for AveragePool).
    pub multiplier: f32,
    /// Output zero point, added in f32 before rounding.
    pub zero_point: i32,
    /// Lower clamp bound (`z_y` with a fused ReLU, else 0).
    pub lo: i32,
}

impl RealStage {
    /// Applies the stage to one value (the scalar definition).
    #[inline]
    pub fn apply(&self, v: f32) -> u8 {
        requantize_real(v * self.multiplier, self.zero_point, self.lo)
    }
}

/// Geometry of a 2-D NHWC pool over one image: input `[ih, iw, c]`, output `[oh, ow, c]`,
/// windows `start = o·stride − pad`, `end = min(start + kernel, in)`, `start = max(start, 0)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolGeom {
    /// Channels.
    pub c: usize,
    /// Input height.
    pub ih: usize,
    /// Input width.
    pub iw: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride along the height.
    pub sh: usize,
    /// Stride along the width.
    pub sw: usize,
    /// Top pad.
    pub pt: usize,
    /// Left pad.
    pub pl: usize,
}

/// Clipped window `[start, end)` of output index `p` along one dimension (`end >= start`).
#[inline]
fn clip_window(p: usize, stride: usize, pad: usize, kernel: usize, len: usize) -> (usize, usize) {
    let start = (p * stride) as isize - pad as isize;
    let end = (start + kernel as isize).min(len as isize);
    let start = start.max(0);
    (start as usize, end.max(start) as usize)
}

impl PoolGeom {
    /// Input rows `[start, end)` of output row `oy`.
    #[inline]
    pub fn rows(&self, oy: usize) -> (usize, usize) {
        clip_window(oy, self.sh, self.pt, self.kh, self.ih)
    }

    /// Input columns `[start, end)` of output column `ox`.
    #[inline]
    pub fn cols(&self, ox: usize) -> (usize, usize) {
        clip_window(ox, self.sw, self.pl, self.kw, self.iw)
    }

    /// The first output position `(oy, ox)` whose window has no input cell, if any (the
    /// kernels require every window to be non-empty).
    pub fn first_empty_window(&self) -> Option<(usize, usize)> {
        if self.ow == 0 {
            return None;
        }
        if let Some(oy) = (0..self.oh).find(|&oy| {
            let (s, e) = self.rows(oy);
            s == e
        }) {
            return Some((oy, 0));
        }
        if self.oh == 0 {
            return None;
        }
        (0..self.ow)
            .find(|&ox| {
                let (s, e) = self.cols(ox);
                s == e
            })
            .map(|ox| (0, ox))
    }

    /// The largest number of cells in any window (at most `kh · kw`).
    pub fn max_window_cells(&self) -> usize {
        let rows = (0..self.oh)
            .map(|o| self.rows(o))
            .map(|(s, e)| e - s)
            .max()
            .unwrap_or(0);
        let cols = (0..self.ow)
            .map(|o| self.cols(o))
            .map(|(s, e)| e - s)
            .max()
            .unwrap_or(0);
        rows.saturating_mul(cols)
    }

    /// Codes in one input image (`ih · iw · c`).
    pub fn image_len(&self) -> usize {
        self.ih * self.iw * self.c
    }
}

/// Largest window for which [`QEltwiseKernels::avg_pool_row`] is exact: every partial sum
/// `Σ x − z·size` then fits in i32 (`255 · size <= i32::MAX`).
pub const AVG_POOL_MAX_CELLS: usize = i32::MAX as usize / 255;

/// Reusable buffers of the pool kernels (one per worker).
#[derive(Debug, Default, Clone)]
pub struct PoolScratch {
    rows_u8: Vec<u8>,
    rows_i32: Vec<i32>,
}

/// `add2(a, qa, b, qb, out, stage)`: `out[i] = stage(s_a·(a[i] − z_a) + s_b·(b[i] − z_b))`.
/// All slices have one length.
pub type Add2Fn = fn(&[u8], QParams, &[u8], QParams, &mut [u8], RealStage);
/// `sum_n(inputs, out, stage)`: `out[i] = stage(0 + Σ_k s_k·(x_k[i] − z_k))`, inputs left to
/// right; every input has `out.len()` codes.
pub type SumNFn = fn(&[(&[u8], QParams)], &mut [u8], RealStage);
/// `quantize(x, out, inv_scale, zero_point)`: [`quantize_u8`] per element.
pub type QuantizeFn = fn(&[f32], &mut [u8], f32, i32);
/// `dequantize(x, out, params)`: [`dequantize_u8`] per element.
pub type DequantizeFn = fn(&[u8], &mut [f32], QParams);
/// `relu(x, out, zero_point)`: `out[i] = max(x[i], zero_point)`.
pub type ReluFn = fn(&[u8], &mut [u8], u8);
/// `requant(x, x_params, out, y_params)`: codes moved to other parameters,
/// `out[i] = requantize(x[i] − z_x, s_x / s_y, z_y, 0)` (Int8Concat of inputs whose
/// parameters differ from the output's).
pub type RequantFn = fn(&[u8], QParams, &mut [u8], QParams);
/// `max_pool_row(image, geom, oy, out_row, scratch)`: output row `oy` (`[ow, c]`) of an
/// NHWC max pool over one image (`[ih, iw, c]`); every window must be non-empty.
pub type MaxPoolRowFn = fn(&[u8], &PoolGeom, usize, &mut [u8], &mut PoolScratch);
/// `avg_pool_row(image, geom, oy, x_params, y_params, out_row, scratch)`: output row `oy` of
/// an NHWC Int8AveragePool; every window must be non-empty and have at most
/// [`AVG_POOL_MAX_CELLS`] cells.
pub type AvgPoolRowFn = fn(&[u8], &PoolGeom, usize, QParams, QParams, &mut [u8], &mut PoolScratch);

/// The kernels of one instruction-set level.
#[derive(Debug, Clone, Copy)]
pub struct QEltwiseKernels {
    /// The level these kernels are written for.
    pub isa: Isa,
    /// Two-input Sum/Add.
    pub add2: Add2Fn,
    /// n-input Sum.
    pub sum_n: SumNFn,
    /// Int8Quantize.
    pub quantize: QuantizeFn,
    /// Int8Dequantize.
    pub dequantize: DequantizeFn,
    /// Int8Relu.
    pub relu: ReluFn,
    /// Codes moved to other quantization parameters.
    pub requant: RequantFn,
    /// One output row of Int8MaxPool (NHWC).
    pub max_pool_row: MaxPoolRowFn,
    /// One output row of Int8AveragePool (NHWC, windowed or global).
    pub avg_pool_row: AvgPoolRowFn,
}

/// The portable kernels.
pub const SCALAR: QEltwiseKernels = QEltwiseKernels {
    isa: Isa::Scalar,
    add2: scalar::add2,
    sum_n: scalar::sum_n,
    quantize: scalar::quantize,
    dequantize: scalar::dequantize,
    relu: scalar::relu,
    requant: scalar::requant,
    max_pool_row: scalar::max_pool_row,
    avg_pool_row: scalar::avg_pool_row,
};

/// The kernels for `isa`, or `None` when this CPU cannot run them.
pub fn kernels_for(isa: Isa) -> Option<&'static QEltwiseKernels> {
    if !isa.supported() {
        return None;
    }
    match isa {
        Isa::Scalar => Some(&SCALAR),
        #[cfg(target_arch = "x86_64")]
        l if l.has_avx2() => Some(&avx2::KERNELS),
        _ => None,
    }
}

/// The kernels of the level in use ([`Isa::current`]), chosen once per process.
pub fn kernels() -> &'static QEltwiseKernels {
    static CHOSEN: OnceLock<&'static QEltwiseKernels> = OnceLock::new();
    CHOSEN.get_or_init(|| kernels_for(Isa::current()).unwrap_or(&SCALAR))
}

/// Checks the row-kernel slice lengths (internal invariants of the callers).
fn check_pool_lengths(x: &[u8], g: &PoolGeom, oy: usize, out: &[u8]) {
    assert!(x.len() >= g.image_len(), "pool kernel: image too short");
    assert_eq!(out.len(), g.ow * g.c, "pool kernel: output row length");
    assert!(oy < g.oh, "pool kernel: row {oy} out of range");
}

/// Portable implementations (also used by the AVX2 kernels for inputs shorter than a
/// vector).
pub mod scalar {
    use super::*;

    /// `s·(q − z)` in f32, the difference formed in integers.
    #[inline]
    fn term(q: u8, p: QParams) -> f32 {
        p.scale * (i32::from(q) - p.zero_point) as f32
    }

    /// Two-input Sum/Add (see [`Add2Fn`]).
    pub fn add2(a: &[u8], qa: QParams, b: &[u8], qb: QParams, out: &mut [u8], st: RealStage) {
        assert!(a.len() == out.len() && b.len() == out.len());
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
            // The reference starts from 0.0 + t, which can only differ from t in the sign
            // of a zero, and that sign cannot change the rounded result (±0·m + z_y gives
            // the same value either way).
            *o = st.apply(term(x, qa) + term(y, qb));
        }
    }

    /// n-input Sum (see [`SumNFn`]).
    pub fn sum_n(xs: &[(&[u8], QParams)], out: &mut [u8], st: RealStage) {
        assert!(xs.iter().all(|(x, _)| x.len() == out.len()));
        for (i, o) in out.iter_mut().enumerate() {
            let mut acc = 0.0f32;
            for (x, p) in xs {
                acc += term(x[i], *p);
            }
            *o = st.apply(acc);
        }
    }

    /// Int8Quantize (see [`QuantizeFn`]).
    pub fn quantize(x: &[f32], out: &mut [u8], inv_scale: f32, zero_point: i32) {
        assert_eq!(x.len(), out.len());
        for (o, &v) in out.iter_mut().zip(x) {
            *o = quantize_u8(v, inv_scale, zero_point);
        }
    }

    /// Int8Dequantize (see [`DequantizeFn`]).
    pub fn dequantize(x: &[u8], out: &mut [f32], p: QParams) {
        assert_eq!(x.len(), out.len());
        for (o, &q) in out.iter_mut().zip(x) {
            *o = dequantize_u8(q, p);
        }
    }

    /// Int8Relu (see [`ReluFn`]).
    pub fn relu(x: &[u8], out: &mut [u8], zero_point: u8) {
        assert_eq!(x.len(), out.len());
        for (o, &v) in out.iter_mut().zip(x) {
            *o = v.max(zero_point);
        }
    }

    /// Codes moved to other parameters (see [`RequantFn`]): [`requantize`] per code, through
    /// a 256-entry table of its results when the input is longer than the table (Int8Concat
    /// calls this once per row segment, often only a few channels long).
    pub fn requant(x: &[u8], xq: QParams, out: &mut [u8], yq: QParams) {
        assert_eq!(x.len(), out.len());
        let m = xq.scale / yq.scale;
        let f = |c: u8| requantize(i32::from(c) - xq.zero_point, m, yq.zero_point, 0);
        if x.len() <= 256 {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = f(v);
            }
            return;
        }
        let table: [u8; 256] = std::array::from_fn(|c| f(c as u8));
        for (o, &v) in out.iter_mut().zip(x) {
            *o = table[usize::from(v)];
        }
    }

    /// One Int8MaxPool output row (see [`MaxPoolRowFn`]): the maximum over the window's rows
    /// first (one contiguous `[iw, c]` row), then over its columns.
    pub fn max_pool_row(x: &[u8], g: &PoolGeom, oy: usize, out: &mut [u8], s: &mut PoolScratch) {
        check_pool_lengths(x, g, oy, out);
        if out.is_empty() {
            return;
        }
        let c = g.c;
        let row_len = g.iw * c;
        let (hs, he) = g.rows(oy);
        let m: &[u8] = if he - hs == 1 {
            &x[hs * row_len..(hs + 1) * row_len]
        } else {
            s.rows_u8.clear();
            s.rows_u8
                .extend_from_slice(&x[hs * row_len..(hs + 1) * row_len]);
            for iy in hs + 1..he {
                let r = &x[iy * row_len..(iy + 1) * row_len];
                for (d, &v) in s.rows_u8.iter_mut().zip(r) {
                    *d = (*d).max(v);
                }
            }
            &s.rows_u8
        };
        for (ox, o) in out.chunks_exact_mut(c).enumerate() {
            let (ws, we) = g.cols(ox);
            o.copy_from_slice(&m[ws * c..(ws + 1) * c]);
            for ix in ws + 1..we {
                for (d, &v) in o.iter_mut().zip(&m[ix * c..(ix + 1) * c]) {
                    *d = (*d).max(v);
                }
            }
        }
    }

    /// Vertical i32 sums of the window rows of output row `oy` into `s.rows_i32`.
    pub(super) fn column_sums(x: &[u8], g: &PoolGeom, oy: usize, s: &mut PoolScratch) {
        let row_len = g.iw * g.c;
        let (hs, he) = g.rows(oy);
        s.rows_i32.clear();
        s.rows_i32.resize(row_len, 0);
        for iy in hs..he {
            let r = &x[iy * row_len..(iy + 1) * row_len];
            for (d, &v) in s.rows_i32.iter_mut().zip(r) {
                *d = d.wrapping_add(i32::from(v));
            }
        }
    }

    /// The output stage of AveragePool for a window of `size` cells.
    #[inline]
    pub(super) fn avg_stage(xq: QParams, yq: QParams, size: usize) -> (i32, RealStage) {
        let stage = RealStage {
            multiplier: xq.scale / yq.scale / size as f32,
            zero_point: yq.zero_point,
            lo: 0,
        };
        // Exact for size <= AVG_POOL_MAX_CELLS (the kernels' precondition); wrapping beyond.
        (
            (xq.zero_point.wrapping_mul(size as i32)).wrapping_neg(),
            stage,
        )
    }

    /// One Int8AveragePool output row (see [`AvgPoolRowFn`]).
    pub fn avg_pool_row(
        x: &[u8],
        g: &PoolGeom,
        oy: usize,
        xq: QParams,
        yq: QParams,
        out: &mut [u8],
        s: &mut PoolScratch,
    ) {
        check_pool_lengths(x, g, oy, out);
        if out.is_empty() {
            return;
        }
        let c = g.c;
        column_sums(x, g, oy, s);
        let (hs, he) = g.rows(oy);
        let m = &s.rows_i32;
        for (ox, o) in out.chunks_exact_mut(c).enumerate() {
            let (ws, we) = g.cols(ox);
            let (bias, st) = avg_stage(xq, yq, (he - hs) * (we - ws));
            for (ch, d) in o.iter_mut().enumerate() {
                let mut acc = bias;
                for ix in ws..we {
                    acc = acc.wrapping_add(m[ix * c + ch]);
                }
                *d = st.apply(acc as f32);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! AVX2 kernels. Every function here carries `#[target_feature(enable = "avx2")]` and is
    //! reached only through [`KERNELS`], which [`super::kernels_for`] hands out only after
    //! detecting AVX2. Memory is touched only through the load/store helpers below, which
    //! check the slice lengths they need.

    use std::arch::x86_64::*;

    use super::{check_pool_lengths, scalar, PoolGeom, PoolScratch, QEltwiseKernels, RealStage};
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
        s: __m256,
    }

    impl Term {
        #[inline]
        #[target_feature(enable = "avx2")]
        fn new(p: QParams) -> Term {
            Term {
                z: _mm256_set1_epi32(p.zero_point),
                s: _mm256_set1_ps(p.scale),
            }
        }

        /// `s · (q − z)` for the first 8 codes of `x` (exact difference, one f32 rounding).
        #[inline]
        #[target_feature(enable = "avx2")]
        fn eval(self, x: &[u8]) -> __m256 {
            let d = _mm256_sub_epi32(load_u8x8_i32(x), self.z);
            _mm256_mul_ps(self.s, _mm256_cvtepi32_ps(d))
        }
    }

    // -----------------------------------------------------------------------------------
    // Element-wise kernels.
    // -----------------------------------------------------------------------------------

    #[target_feature(enable = "avx2")]
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
                *rk = stage.apply(acc);
            }
            store_u8x32(&mut out[i..], pack_u8x32(r));
        }
    }

    #[target_feature(enable = "avx2")]
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
            let r = acc.map(|a| stage.apply(a));
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
                store_f32x8(&mut o[8 * k..], t.eval(&x[8 * k..]));
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
}
