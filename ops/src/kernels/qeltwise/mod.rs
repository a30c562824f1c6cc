//! Fast kernels for the element-wise, pooling and (de)quantization Int8 operators, bit-exact
//! with the scalar DNNLOWP reference in [`crate::int8`].
//!
//! Three implementations sit behind one table of function pointers ([`QEltwiseKernels`]),
//! filled once from [`Isa::current`]: portable Rust (`generic.rs`, [`SCALAR`]), AVX2
//! (`avx2.rs`, for the `avx2` and `avxvnni` levels) and AVX-512 (`avx512.rs`, for `avx512`
//! and above). All reproduce the reference's exact sequence of f32 operations:
//!
//! - Sum/Add: `acc = Σ_i s_i·(q_i − z_i)` (each difference formed exactly, products and
//!   sums rounded to f32 one at a time, left to right, never fused), then
//!   `clamp(nearbyint(acc · m + z_y), lo, 255)`.
//! - AveragePool: the exact integer window sum `Σ x − z_x·size`, converted to f32, then the
//!   same output stage with `m = s_x / s_y / size`.
//! - Quantize: `clamp(nearbyint(x · (1/s)) + z, 0, 255)`, NaN → `z`.
//! - Dequantize: `s · (q − z)`. MaxPool / Relu: integer maxima.
//! - Requantization (Int8Concat): `clamp(nearbyint(f32(q − z_x) · (s_x/s_y)) + z_y, 0, 255)`.
//!
//! The SIMD kernels may clamp in f32 before the conversion to integers: the bounds are
//! integers and rounding is monotone, so `round(clamp(v)) = clamp(round(v))`. Rounding is
//! half to even, as in the reference. How each SIMD table handles NaN, ±∞ and tails is
//! described in its file. The AVX2 kernels run the portable code for inputs shorter than a
//! vector and for pools with few channels, and assume valid parameters (zero points and
//! `lo` in [0, 255]); the AVX-512 kernels handle every length and channel count with masked
//! vectors and fall back to the portable code only for parameters outside the range where
//! their shortcuts are exact (never reached with valid uint8 parameters), so they equal the
//! portable kernels for any input.
//!
//! Pools are separable: for one output row, the window's input rows are first reduced into
//! one contiguous `[iw, c]` row (max of codes, or exact i32 sums), then each output pixel
//! reduces its window's columns of that row, vectorized over the channels.

use rayon::prelude::*;

use super::isa::Isa;
use crate::int8::requant::requantize_real;
use crate::QParams;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod generic;

/// The portable kernels under their former name (`qeltwise::scalar::add2`, ...).
pub use generic as scalar;

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

/// The output stage shared by Sum/Add and AveragePool: AveragePool applies
/// `clamp(nearbyint(v · multiplier + zero_point), lo, 255)`, every step in f32
/// ([`RealStage::apply`]); Sum/Add the fused multiply-add form ([`RealStage::apply_sum`]).
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
    /// Applies the stage to one value (the scalar definition; AveragePool).
    #[inline]
    pub fn apply(&self, v: f32) -> u8 {
        requantize_real(v * self.multiplier, self.zero_point, self.lo)
    }

    /// The Sum/Add form: `clamp(rhe(fma(v, multiplier, zero_point)), lo, 255)`, see
    /// [`crate::int8::requant::requantize_sum`].
    #[inline]
    pub fn apply_sum(&self, v: f32) -> u8 {
        crate::int8::requant::requantize_sum(v, self.multiplier, self.zero_point, self.lo)
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
/// `quantize(x, out, inv_scale, zero_point)`:
/// [`quantize_u8`](crate::int8::requant::quantize_u8) per element.
pub type QuantizeFn = fn(&[f32], &mut [u8], f32, i32);
/// `dequantize(x, out, params)`: [`dequantize_u8`](crate::int8::requant::dequantize_u8)
/// per element.
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

/// The kernels for `isa` (AVX-512 for `avx512` and above, AVX2 for `avx2` and `avxvnni`,
/// portable for `scalar`), or `None` when this CPU cannot run that level.
pub fn kernels_for(isa: Isa) -> Option<&'static QEltwiseKernels> {
    if !isa.supported() {
        return None;
    }
    match isa {
        Isa::Scalar => Some(&SCALAR),
        #[cfg(target_arch = "x86_64")]
        l if l.has_avx512() => Some(&avx512::KERNELS),
        #[cfg(target_arch = "x86_64")]
        l if l.has_avx2() => Some(&avx2::KERNELS),
        _ => None,
    }
}

/// The kernels of the level in use ([`Isa::current`]).
pub fn kernels() -> &'static QEltwiseKernels {
    kernels_for(Isa::current()).unwrap_or(&SCALAR)
}

/// Checks the row-kernel slice lengths (internal invariants of the callers).
fn check_pool_lengths(x: &[u8], g: &PoolGeom, oy: usize, out: &[u8]) {
    assert!(x.len() >= g.image_len(), "pool kernel: image too short");
    assert_eq!(out.len(), g.ow * g.c, "pool kernel: output row length");
    assert!(oy < g.oh, "pool kernel: row {oy} out of range");
}
