//! The portable kernels: plain Rust loops over the reference's f32 operation sequence. They
//! are the oracle of the SIMD tables' tests, and the SIMD kernels fall back to them for
//! inputs they do not vectorize.

use super::{check_pool_lengths, PoolGeom, PoolScratch, RealStage};
use crate::int8::requant::{dequantize_u8, quantize_u8, requantize, sum_term};
use crate::QParams;

/// Two-input Sum/Add (see [`Add2Fn`](super::Add2Fn)).
pub fn add2(a: &[u8], qa: QParams, b: &[u8], qb: QParams, out: &mut [u8], st: RealStage) {
    assert!(a.len() == out.len() && b.len() == out.len());
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = st.apply_sum(sum_term(x, qa) + sum_term(y, qb));
    }
}

/// n-input Sum (see [`SumNFn`](super::SumNFn)): the terms added left to right from the first.
pub fn sum_n(xs: &[(&[u8], QParams)], out: &mut [u8], st: RealStage) {
    assert!(xs.iter().all(|(x, _)| x.len() == out.len()));
    for (i, o) in out.iter_mut().enumerate() {
        let mut terms = xs.iter().map(|(x, p)| sum_term(x[i], *p));
        let first = terms.next().unwrap_or(0.0);
        *o = st.apply_sum(terms.fold(first, |acc, t| acc + t));
    }
}

/// Int8Quantize (see [`QuantizeFn`](super::QuantizeFn)).
pub fn quantize(x: &[f32], out: &mut [u8], inv_scale: f32, zero_point: i32) {
    assert_eq!(x.len(), out.len());
    for (o, &v) in out.iter_mut().zip(x) {
        *o = quantize_u8(v, inv_scale, zero_point);
    }
}

/// Int8Dequantize (see [`DequantizeFn`](super::DequantizeFn)).
pub fn dequantize(x: &[u8], out: &mut [f32], p: QParams) {
    assert_eq!(x.len(), out.len());
    for (o, &q) in out.iter_mut().zip(x) {
        *o = dequantize_u8(q, p);
    }
}

/// Int8Relu (see [`ReluFn`](super::ReluFn)).
pub fn relu(x: &[u8], out: &mut [u8], zero_point: u8) {
    assert_eq!(x.len(), out.len());
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v.max(zero_point);
    }
}

/// Codes moved to other parameters (see [`RequantFn`](super::RequantFn)): [`requantize`]
/// per code, through a 256-entry table of its results when the input is longer than the
/// table (Int8Concat calls this once per row segment, often only a few channels long).
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

/// One Int8MaxPool output row (see [`MaxPoolRowFn`](super::MaxPoolRowFn)): the maximum over
/// the window's rows first (one contiguous `[iw, c]` row), then over its columns.
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

/// One Int8AveragePool output row (see [`AvgPoolRowFn`](super::AvgPoolRowFn)).
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
