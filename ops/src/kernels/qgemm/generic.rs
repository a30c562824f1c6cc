//! The portable kernels of the pair and quad layouts (the same integer operations as the
//! AVX2 ones; the oracle of their tests).

use super::pack::{pair, unpair, OutlierPanel};
use super::{OutTile, MR, NR, QR};
use crate::int8::requant::requantize;

/// Portable outlier products (see [`OutlierFn`]).
///
/// # Safety
/// None required (safe code; `unsafe` only to fit the kernel table).
pub(super) unsafe fn outlier_tile_scalar(
    outl: OutlierPanel<'_>,
    apack: &[i32],
    units: usize,
    tiles: usize,
    corr: &mut [i32],
    stride: usize,
) {
    for t in 0..tiles {
        let apanel = &apack[t * units * QR..(t + 1) * units * QR];
        // Lane-major sums first (one row of QR per lane), then transposed into the tile.
        let mut sums = [[0i32; QR]; NR];
        for o in outl.all() {
            let (k, lane) = (o.k as usize, o.lane as usize);
            let quads = &apanel[(k / 4) * QR..(k / 4 + 1) * QR];
            let shift = 8 * (k % 4);
            for (v, &q) in sums[lane].iter_mut().zip(quads) {
                let x = (q as u32 >> shift) as i32 & 0xff;
                *v = v.wrapping_add(x * o.delta);
            }
        }
        let acc = &mut corr[t * stride..t * stride + QR * NR];
        for (r, row) in acc.chunks_exact_mut(NR).enumerate() {
            for (v, lane) in row.iter_mut().zip(&sums) {
                *v = lane[r];
            }
        }
    }
}

/// Writes row `i` of a pair panel ([`MR`] rows) from its codes.
pub(super) fn pack_row_scalar(row: &[u8], i: usize, dst: &mut [i32]) {
    for (p, two) in row.chunks(2).enumerate() {
        dst[p * MR + i] = pair(i32::from(two[0]), two.get(1).map_or(0, |&v| i32::from(v)));
    }
}

/// Writes row `i` of a quad panel ([`QR`] rows) from its codes (missing codes of the last
/// quad are 0).
pub(super) fn pack_quad_row_scalar(row: &[u8], i: usize, dst: &mut [i32]) {
    for (q, four) in row.chunks(4).enumerate() {
        let mut b = [0u8; 4];
        b[..four.len()].copy_from_slice(four);
        dst[q * QR + i] = i32::from_le_bytes(b);
    }
}

/// Portable panel packing (i16 pairs, [`MR`] rows).
///
/// # Safety
/// None required (safe code; `unsafe` only to fit the kernel table).
pub(super) unsafe fn pack_scalar(rows: &[&[u8]], k: usize, dst: &mut [i32]) {
    assert_eq!(rows.len(), MR);
    for (i, row) in rows.iter().enumerate() {
        pack_row_scalar(&row[..k], i, dst);
    }
}

/// Portable panel packing (u8 quads, [`QR`] rows; the quads past `k` up to the even count
/// are 0).
///
/// # Safety
/// None required (safe code; `unsafe` only to fit the kernel table).
pub(super) unsafe fn pack_quads_scalar(rows: &[&[u8]], k: usize, dst: &mut [i32]) {
    assert_eq!(rows.len(), QR);
    let kq = k.div_ceil(8) * 2;
    dst[k.div_ceil(4) * QR..kq * QR].fill(0);
    for (i, row) in rows.iter().enumerate() {
        pack_quad_row_scalar(&row[..k], i, dst);
    }
}

/// Portable quad micro-kernel ([`QR`] rows): the exact sums the AVX2 kernel computes (its
/// i16 lanes never saturate for weights packed by [`PackedQWeights::pack_quads`]).
///
/// # Safety
/// None required (safe code; `unsafe` only to fit the kernel table).
pub(super) unsafe fn micro_quads_scalar(
    kq: usize,
    a: &[i32],
    b: &[i32],
    acc: &mut [i32],
    load: bool,
    out: Option<OutTile<'_>>,
) {
    let mut t = start_scalar::<QR>(acc, load);
    for (ap, bp) in a.chunks_exact(QR).zip(b.chunks_exact(NR)).take(kq) {
        let bs: [[i32; 4]; NR] =
            std::array::from_fn(|c| bp[c].to_le_bytes().map(|v| i32::from(v as i8)));
        for (row, &av) in t.iter_mut().zip(ap) {
            let xs = av.to_le_bytes().map(i32::from);
            for (x, wb) in row.iter_mut().zip(&bs) {
                let d = xs[0] * wb[0] + xs[1] * wb[1] + xs[2] * wb[2] + xs[3] * wb[3];
                *x = x.wrapping_add(d);
            }
        }
    }
    finish_scalar(&t, acc, out);
}

/// The initial scalar accumulator tile: zero, or (with `load`) the tile in `acc`.
pub(super) fn start_scalar<const R: usize>(acc: &[i32], load: bool) -> [[i32; NR]; R] {
    let mut t = [[0i32; NR]; R];
    if load {
        for (r, row) in t.iter_mut().enumerate() {
            row.copy_from_slice(&acc[r * NR..(r + 1) * NR]);
        }
    }
    t
}

/// Stores a scalar accumulator tile to `acc` or through the output stage.
pub(super) fn finish_scalar<const R: usize>(
    t: &[[i32; NR]; R],
    acc: &mut [i32],
    out: Option<OutTile<'_>>,
) {
    match out {
        None => {
            for (r, row) in t.iter().enumerate() {
                acc[r * NR..(r + 1) * NR].copy_from_slice(row);
            }
        }
        Some(o) => {
            for (r, row) in t.iter().enumerate() {
                for (c, &v) in row.iter().enumerate() {
                    o.y[r * o.ldy + c] =
                        requantize(v.wrapping_add(o.offsets[c]), o.mults[c], o.zero_point, o.lo);
                }
            }
        }
    }
}

/// Portable micro-kernel, the same integer operations as the AVX2 one.
///
/// # Safety
/// None required (safe code; `unsafe` only to fit the kernel table).
pub(super) unsafe fn micro_scalar(
    kp: usize,
    a: &[i32],
    b: &[i32],
    acc: &mut [i32],
    load: bool,
    out: Option<OutTile<'_>>,
) {
    let mut t = start_scalar::<MR>(acc, load);
    for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(kp) {
        let bs: [(i32, i32); NR] = std::array::from_fn(|c| unpair(bp[c]));
        for (row, &av) in t.iter_mut().zip(ap) {
            let (alo, ahi) = unpair(av);
            for (x, &(blo, bhi)) in row.iter_mut().zip(&bs) {
                *x = x.wrapping_add(alo * blo + ahi * bhi);
            }
        }
    }
    finish_scalar(&t, acc, out);
}
