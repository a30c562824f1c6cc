//! Exact uint8 GEMM with a fused DNNLOWP output stage (Int8Conv / Int8FC), AVX2 and portable.
//!
//! Computes, for every row `i` of the left operand A (activation codes, uint8) and every
//! output channel `n` of the packed weights W (codes with one zero point per channel):
//!
//! ```text
//! acc[i, n] = Σ_k x[i, k] · (w[n, k] − z_w[n])                (int32, wrapping)
//! raw[i, n] = acc[i, n] + (b[n] − z_x · Σ_k (w[n, k] − z_w[n]))  (int32, wrapping)
//! y[i, n]   = clamp(lrint(f32(raw) · M[n]) + z_y, lo, 255)
//! ```
//!
//! which equals `Σ_k (x − z_x)(w − z_w) + b` of the scalar reference modulo 2^32, i.e. bit
//! for bit the same accumulator, and the same output stage as
//! [`crate::int8::requant::requantize`]. The activations are used as they are
//! (unsigned codes) and the zero-point correction is folded into a per-channel offset
//! ([`QEpilogue`]); im2col cells that stand for padding therefore take the value `z_x`.
//!
//! Two weight layouts ([`QLayout`], chosen when the weights are packed):
//!
//! - **Pairs** (any zero point): weights centred once, `(w − z_w) ∈ [−255, 255]`, stored as
//!   i16 pairs of consecutive k; activations packed per call as i16 pairs. The AVX2 kernel
//!   multiplies them with `vpmaddwd` (two i16 products summed into an i32: at most
//!   2·255·255, exact) and accumulates with `vpaddd` (wrapping, like the reference).
//!   Register tile [`MR`] × [`NR`] (12 ymm accumulators).
//! - **Quads** (every centred weight in [−128, 127], e.g. zero point 128): weights stored as
//!   i8 quads, activations as u8 quads. Per two quads the AVX2 kernel does two `vpmaddubsw`
//!   (u8 × i8, adjacent products summed into saturating i16), one `vpaddw`, one `vpmaddwd`
//!   by ones (to i32) and one `vpaddd`: 3 multiply-pipe µops per 64 multiply-adds instead of
//!   4. It is exact because no i16 lane can saturate or wrap: each lane sums the products of
//!   one set of four k (8j + {0, 1, 4, 5} or 8j + {2, 3, 6, 7}), and packing keeps the
//!   positive and the negative weights of every set at most 128 in total magnitude
//!   (`255 · 128 = 32640`). Weights that break this budget are moved, largest first, to a
//!   sparse outlier list (main part 0) whose products are added exactly in i32 before the
//!   kernel runs (facts §6.9: a saturating sum would differ from the reference, so none is
//!   allowed to happen). Register tile [`QR`] × [`NR`]. Weights needing more than ~1.5 %
//!   outliers are packed as pairs instead (the outliers would cost more than they save), and
//!   so is K < 128 (too little work per 4-row tile).
//!
//! Blocking: K cut into equal blocks of at most 256 units (pairs or quads; partial sums kept
//! in an i32 tile buffer between blocks), channels in blocks of 256, rows in tiles of up to
//! 96 (fewer for long K, so the packed A tile stays in L2). Work is split with rayon over row
//! tiles, or over channel blocks when there are too few rows. Every output is an exact
//! integer sum, so results do not depend on the layout, the tiling, the kernel or the
//! thread count.
//!
//! The kernel set (AVX2 or portable) is chosen once from [`Isa::current`] and kept in a
//! table of function pointers.

use std::cell::RefCell;

use rayon::prelude::*;

use super::isa::Isa;
use super::qeltwise::RealStage;
use crate::int8::requant::requantize;
use crate::{OpError, OpResult, QParams};

mod amx;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
mod generic;
mod pack;
mod vnni;

use generic::{
    micro_quads_scalar, micro_scalar, outlier_tile_scalar, pack_quads_scalar, pack_scalar,
};
use pack::OutlierPanel;
pub use pack::{PackedQWeights, QLayout};

/// True when [`qgemm`] runs weights `w` on AMX tiles at the current level (then an
/// [`ImplicitA`] source saves the im2col copy).
pub fn runs_on_tiles(w: &PackedQWeights) -> bool {
    matches!(runner(Isa::current(), w.layout), Runner::Amx)
}

/// Rows of the register tile (output pixels / FC rows) of the pair kernel.
pub const MR: usize = 6;
/// Rows of the register tile of the quad kernel.
pub const QR: usize = 4;
/// Output channels of the register tile.
pub const NR: usize = 16;
/// Largest K block, in units (pairs: 512 values of k; quads: 1024).
const KCP_MAX: usize = 256;
/// Largest row tile.
const MC_MAX: usize = 96;
/// Channels per block.
const NC: usize = 256;
/// Byte budget of one packed A tile (rows × K), about half of a 512 KiB L2.
const A_TILE_BUDGET: usize = 256 * 1024;

/// The fused output stage of one GEMM: per channel the additive offset
/// `b[n] − z_x · Σ_k (w[n, k] − z_w[n])` and the f32 multiplier `M[n]`, then the output zero
/// point and the lower clamp (`z_y` with a fused ReLU, else 0). Stored padded to a multiple
/// of [`NR`] channels.
#[derive(Debug, Clone, PartialEq)]
pub struct QEpilogue {
    n: usize,
    offsets: Vec<i32>,
    multipliers: Vec<f32>,
    zero_point: i32,
    lo: i32,
    /// Every multiplier is finite (then no product is NaN and the short AVX2 stage applies).
    finite: bool,
}

impl QEpilogue {
    /// The stage for channels with sums `col_sums` (see [`PackedQWeights::col_sums`]), input
    /// zero point `x_zero_point`, int32 `bias` and `multipliers` (one per channel), output
    /// zero point `zero_point` and lower clamp `lo` (both in [0, 255]).
    pub fn new(
        col_sums: &[i32],
        x_zero_point: i32,
        bias: &[i32],
        multipliers: &[f32],
        zero_point: i32,
        lo: i32,
    ) -> OpResult<Self> {
        let n = col_sums.len();
        if bias.len() != n || multipliers.len() != n {
            return Err(OpError::Shape(format!(
                "int8 output stage: {} bias values and {} multipliers for {n} channels",
                bias.len(),
                multipliers.len()
            )));
        }
        for (what, v) in [
            ("input zero point", x_zero_point),
            ("output zero point", zero_point),
            ("lower clamp", lo),
        ] {
            if !(0..=255).contains(&v) {
                return Err(OpError::DType(format!(
                    "int8 output stage: {what} {v} is outside [0, 255]"
                )));
            }
        }
        let padded = n.div_ceil(NR) * NR;
        let mut offsets: Vec<i32> = col_sums
            .iter()
            .zip(bias)
            .map(|(&s, &b)| b.wrapping_sub(x_zero_point.wrapping_mul(s)))
            .collect();
        offsets.resize(padded, 0);
        let mut mults = multipliers.to_vec();
        mults.resize(padded, 0.0);
        Ok(QEpilogue {
            n,
            offsets,
            multipliers: mults,
            zero_point,
            lo,
            finite: multipliers.iter().all(|m| m.is_finite()),
        })
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.n
    }

    /// The output code of channel `c` for the accumulator `acc = Σ_k x·(w − z_w)`.
    #[inline]
    pub fn apply(&self, acc: i32, c: usize) -> u8 {
        requantize(
            acc.wrapping_add(self.offsets[c]),
            self.multipliers[c],
            self.zero_point,
            self.lo,
        )
    }

    /// Per-channel offsets (padded).
    pub(crate) fn offsets(&self) -> &[i32] {
        &self.offsets
    }

    /// Per-channel multipliers (padded).
    pub(crate) fn multipliers(&self) -> &[f32] {
        &self.multipliers
    }

    /// Output zero point.
    pub(crate) fn zero_point(&self) -> i32 {
        self.zero_point
    }

    /// Lower clamp.
    pub(crate) fn lo(&self) -> i32 {
        self.lo
    }

    /// True when every multiplier is finite.
    pub(crate) fn finite(&self) -> bool {
        self.finite
    }
}

/// An Int8Sum / Int8Add of two inputs fused into a GEMM's output stage: the GEMM's codes
/// `a` (parameters `gemm`) plus the other summand's codes `b` (parameters `other`), in the
/// f32 operations of the Sum reference: `clamp(nearbyint(fma(fma(a, s_a, −z_a·s_a) +
/// fma(b, s_b, −z_b·s_b), 1/s_y, z_y)), lo, 255)` ([`RealStage::apply_sum`]). The two terms
/// commute exactly, so which input of the Sum the GEMM feeds does not matter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SumStage {
    /// Parameters of the GEMM's output codes.
    pub gemm: QParams,
    /// Parameters of the other summand.
    pub other: QParams,
    /// The Sum's output stage (`1/s_y`, `z_y`, lower clamp).
    pub out: RealStage,
}

impl SumStage {
    /// The scalar definition: the Sum's output code for GEMM code `a` and other code `b`.
    #[inline]
    pub fn apply(&self, a: u8, b: u8) -> u8 {
        let ta = crate::int8::requant::sum_term(a, self.gemm);
        let tb = crate::int8::requant::sum_term(b, self.other);
        self.out.apply_sum(ta + tb)
    }
}

/// Applies a fused sum to columns `col0..col0 + n` of the rows of `y` (stride `ldy`) with the
/// element-wise Sum kernels (for the GEMM kernels without a fused form).
fn sum_rows(st: &SumStage, other: &[u8], y: &mut [u8], ldy: usize, col0: usize, n: usize) {
    let k = super::qeltwise::kernels();
    let mut tmp = vec![0u8; n];
    for (yr, orow) in y.chunks_mut(ldy).zip(other.chunks(ldy)) {
        let (yr, orow) = (&mut yr[col0..col0 + n], &orow[col0..col0 + n]);
        tmp.copy_from_slice(yr);
        (k.add2)(&tmp, st.gemm, orow, st.other, yr, st.out);
    }
}

/// The left operand A (`rows × depth` uint8 codes), handed out one row at a time: either
/// borrowed from the source ([`QMatRef`]) or gathered into a scratch row (im2col).
pub trait QLhs: Sync {
    /// Number of rows.
    fn rows(&self) -> usize;
    /// Reduction length K.
    fn depth(&self) -> usize;
    /// The `depth` codes of row `r`; `scratch` holds at least `depth` bytes.
    fn row<'s>(&'s self, r: usize, scratch: &'s mut [u8]) -> &'s [u8];
    /// `(data, offset, ld)` when row `r` is `data[offset + r·ld..][..depth]` (the kernels
    /// then read rows in place, and may read past `depth` within `data`).
    fn strided(&self) -> Option<(&[u8], usize, usize)> {
        None
    }
    /// The rows as implicit im2col rows of a padded convolution input, when the source is
    /// one (the AMX driver then loads tiles straight from the input, see [`ImplicitA`]).
    fn implicit(&self) -> Option<ImplicitA<'_>> {
        None
    }
    /// Writes the `depth` codes of row `r` to `dst[..depth]`.
    fn copy_row(&self, r: usize, dst: &mut [u8]) {
        let mut tmp = vec![0u8; self.depth()];
        let got = self.row(r, &mut tmp);
        dst[..got.len()].copy_from_slice(got);
    }
}

/// A 2-D convolution's input seen as implicit im2col rows: the NHWC input copied into a
/// buffer `[n][ihp][iwp][c]` padded (with the input zero point) so that every tap of every
/// output pixel lies inside it. Row `p` (output pixel `(img, oy, ox)`) at k index
/// `(ky·kW + kx)·c + ci` is the code at padded position `(img, oy·sh + ky·dh, ox·sw + kx·dw,
/// ci)`. With `c` a multiple of 64, every 64-byte k step lies in one tap, so a tile of up to
/// 16 pixels of one output row at one k step is 16 rows `sw·c` bytes apart: one tile load,
/// no im2col copy.
///
/// With `window` (small channel counts: `kW·c ≤ 64`, no width dilation) k step `ky` is
/// instead the 64 bytes from the first tap of kernel row `ky`: its `kW·c` codes, then
/// whatever follows in the padded row, which the weights (packed with K = `kH·64`, zero past
/// each row's `kW·c`) multiply by zero. The first convolution of an image net (C = 3) then
/// runs without any gather, at the cost of the zero products.
#[derive(Debug, Clone, Copy)]
pub struct ImplicitA<'a> {
    /// The padded input, then slack so that tile loads never pass its end.
    pub data: &'a [u8],
    /// Images.
    pub n: usize,
    /// Padded input height and width.
    pub ihp: usize,
    /// Padded input width.
    pub iwp: usize,
    /// Channels.
    pub c: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
    /// Strides (height, width).
    pub stride: (usize, usize),
    /// Dilations (height, width).
    pub dilation: (usize, usize),
    /// Kernel (height, width).
    pub kernel: (usize, usize),
    /// One 64-byte k step per kernel row (see above).
    pub window: bool,
}

impl ImplicitA<'_> {
    /// True when the AMX driver can read rows `..rows_end` this way with K padded to `kpad`:
    /// channels a multiple of 64 (so K needs no padding) or the window form, an aligned start, and every tile
    /// load (16 rows from the last pixel, the farthest tap) inside `data`.
    pub(crate) fn fits(&self, kpad: usize, rows_end: usize) -> bool {
        let (kh, kw) = self.kernel;
        let shape_ok = if self.window {
            kw * self.c <= 64 && self.dilation.1 == 1 && kh * 64 == kpad
        } else {
            self.c.is_multiple_of(64) && kh * kw * self.c == kpad
        };
        if self.c == 0
            || !shape_ok
            || rows_end == 0
            || rows_end > self.n * self.oh * self.ow
            || !(self.data.as_ptr() as usize).is_multiple_of(64)
        {
            return false;
        }
        let last = self.pixel_offset(rows_end - 1);
        let far = self.k_offset(kpad - 64) + 64;
        last + (amx::TR - 1) * self.stride.1 * self.c + far <= self.data.len()
    }

    /// Byte offset, from a pixel's first tap, of k index `k` (a multiple of 64).
    pub(crate) fn k_offset(&self, k: usize) -> usize {
        if self.window {
            return k / 64 * self.dilation.0 * self.iwp * self.c;
        }
        let tap = k / self.c;
        let (ky, kx) = (tap / self.kernel.1, tap % self.kernel.1);
        (ky * self.dilation.0 * self.iwp + kx * self.dilation.1) * self.c + k % self.c
    }

    /// Byte offset of output pixel `p`'s first tap.
    fn pixel_offset(&self, p: usize) -> usize {
        let (img, pix) = (p / (self.oh * self.ow), p % (self.oh * self.ow));
        let (oy, ox) = (pix / self.ow, pix % self.ow);
        ((img * self.ihp + oy * self.stride.0) * self.iwp + ox * self.stride.1) * self.c
    }

    /// The tile starting at output pixel `p`: at most `max` pixels, all in `p`'s output
    /// row. Returns its first tap's address, the row stride and the pixel count.
    pub(crate) fn tile(&self, p: usize, max: usize) -> (*const u8, usize, usize) {
        let ox = p % (self.oh * self.ow) % self.ow;
        let len = max.min(self.ow - ox);
        (
            self.data[self.pixel_offset(p)..].as_ptr(),
            self.stride.1 * self.c,
            len,
        )
    }
}

/// A row-major uint8 matrix view: row `r` is `data[offset + r·ld ..][..k]`.
#[derive(Debug, Clone, Copy)]
pub struct QMatRef<'a> {
    data: &'a [u8],
    rows: usize,
    k: usize,
    ld: usize,
    offset: usize,
}

impl<'a> QMatRef<'a> {
    /// A view of `rows` rows of `k` codes at stride `ld`, starting at `offset`.
    pub fn new(data: &'a [u8], rows: usize, k: usize, ld: usize, offset: usize) -> OpResult<Self> {
        let need = if rows == 0 {
            0
        } else {
            (rows - 1)
                .checked_mul(ld)
                .and_then(|v| v.checked_add(offset + k))
                .unwrap_or(usize::MAX)
        };
        if need > data.len() {
            return Err(OpError::Shape(format!(
                "int8 GEMM input: {rows} rows of {k} at stride {ld} (offset {offset}) need {need} \
                 codes, have {}",
                data.len()
            )));
        }
        Ok(QMatRef {
            data,
            rows,
            k,
            ld,
            offset,
        })
    }
}

impl QLhs for QMatRef<'_> {
    fn rows(&self) -> usize {
        self.rows
    }

    fn depth(&self) -> usize {
        self.k
    }

    fn row<'s>(&'s self, r: usize, _scratch: &'s mut [u8]) -> &'s [u8] {
        let s = self.offset + r * self.ld;
        &self.data[s..s + self.k]
    }

    fn strided(&self) -> Option<(&[u8], usize, usize)> {
        Some((self.data, self.offset, self.ld))
    }

    fn copy_row(&self, r: usize, dst: &mut [u8]) {
        let s = self.offset + r * self.ld;
        dst[..self.k].copy_from_slice(&self.data[s..s + self.k]);
    }
}

/// Output tile of the final K block: `y[r·ldy + c]` for an MR × NR tile, with the stage's
/// values for its NR channels.
struct OutTile<'a> {
    y: &'a mut [u8],
    ldy: usize,
    offsets: &'a [i32],
    mults: &'a [f32],
    zero_point: i32,
    lo: i32,
    /// All `mults` are finite.
    finite: bool,
}

/// Micro-kernel: `kc` k units of an MR-row A panel (`[u][MR]`) times an NR-channel B panel
/// (`[u][NR]`), accumulators starting at 0 or (with `load`) at `acc`; the result goes back to
/// `acc` (MR × NR, stride NR) or, with an output tile, through the output stage. Units are
/// i16 pairs (`micro`) or u8/i8 quads, `kc` even (`micro_quads`).
type MicroFn = unsafe fn(usize, &[i32], &[i32], &mut [i32], bool, Option<OutTile<'_>>);

/// Packs full rows (`k` codes each; [`MR`] rows for pairs, [`QR`] for quads) into an A
/// panel `[units][rows]` (i16 pairs, or u8 quads with the number of quads even).
type PackFn = unsafe fn(&[&[u8]], usize, &mut [i32]);

/// Outlier products of one weight panel for every row tile: `(panel, apack, units, tiles,
/// corr, stride)` sets the [`QR`] × [`NR`] tile `corr[t·stride..][..QR·NR]` (`t < tiles`)
/// to `Σ x[r, k] · delta` per lane, reading the activations from the packed quad panels
/// `apack[t·units·QR..]` (`[quad][QR]` each).
type OutlierFn = unsafe fn(OutlierPanel<'_>, &[i32], usize, usize, &mut [i32], usize);

/// The kernels of one instruction set.
struct Kernels {
    /// Report name of the pair kernel.
    pairs_name: &'static str,
    /// Report name of the quad kernel.
    quads_name: &'static str,
    micro: MicroFn,
    pack: PackFn,
    micro_quads: MicroFn,
    pack_quads: PackFn,
    outliers: OutlierFn,
}

static SCALAR: Kernels = Kernels {
    pairs_name: "qgemm_u8i16_i32_6x16_portable",
    quads_name: "qgemm_u8s8_i32_4x16_portable",
    micro: micro_scalar,
    pack: pack_scalar,
    micro_quads: micro_quads_scalar,
    pack_quads: pack_quads_scalar,
    outliers: outlier_tile_scalar,
};

#[cfg(target_arch = "x86_64")]
static AVX2: Kernels = Kernels {
    pairs_name: "qgemm_u8i16_i32_6x16_avx2",
    quads_name: "qgemm_u8s8_i32_4x16_avx2",
    micro: avx2::micro,
    pack: avx2::pack,
    micro_quads: avx2::micro_quads,
    pack_quads: avx2::pack_quads,
    outliers: avx2::outlier_tile,
};

/// The kernel table for `isa`: AVX2 at AVX2 levels and above when this CPU has them, else
/// the portable kernels.
fn kernels(isa: Isa) -> &'static Kernels {
    match Isa::capped(isa) {
        #[cfg(target_arch = "x86_64")]
        l if l.has_avx2() => &AVX2,
        _ => &SCALAR,
    }
}

/// The instruction set of the pair/quad kernels [`qgemm_with`] really uses for `isa` on this CPU.
pub fn effective_isa(isa: Isa) -> Isa {
    if std::ptr::eq(kernels(isa), &SCALAR) {
        Isa::Scalar
    } else {
        Isa::Avx2
    }
}

/// `Y[:, col0..col0+N] = stage(A · (W − z_w)ᵀ)` with the kernels of [`Isa::current`].
///
/// `y` holds `a.rows()` rows of `ldy` codes; only columns `col0..col0 + w.n()` are written.
pub fn qgemm<L: QLhs + ?Sized>(
    a: &L,
    w: &PackedQWeights,
    ep: &QEpilogue,
    y: &mut [u8],
    ldy: usize,
    col0: usize,
) -> OpResult<()> {
    qgemm_with(Isa::current(), a, w, ep, y, ldy, col0)
}

/// [`qgemm`] with an explicit instruction set (AVX2 falls back to the portable kernels on
/// CPUs without it, see [`effective_isa`]).
pub fn qgemm_with<L: QLhs + ?Sized>(
    isa: Isa,
    a: &L,
    w: &PackedQWeights,
    ep: &QEpilogue,
    y: &mut [u8],
    ldy: usize,
    col0: usize,
) -> OpResult<()> {
    check_args(a, w, ep, y, ldy, col0)?;
    let kern = runner(isa, w.layout);
    run_split(kern, a, w, ep, None, y, ldy, col0)
}

/// [`qgemm`] followed by a fused two-input Sum with the codes `other` (laid out like `y`):
/// `y = sum.apply(stage(A · W), other)` element by element, in one pass where the kernels
/// have a fused form (VNNI and AMX), else as a second pass over the written columns.
#[allow(clippy::too_many_arguments)]
pub fn qgemm_sum<L: QLhs + ?Sized>(
    a: &L,
    w: &PackedQWeights,
    ep: &QEpilogue,
    sum: &SumStage,
    other: &[u8],
    y: &mut [u8],
    ldy: usize,
    col0: usize,
) -> OpResult<()> {
    qgemm_sum_with(Isa::current(), a, w, ep, sum, other, y, ldy, col0)
}

/// [`qgemm_sum`] at level `isa` (capped to what this CPU has).
#[allow(clippy::too_many_arguments)]
pub fn qgemm_sum_with<L: QLhs + ?Sized>(
    isa: Isa,
    a: &L,
    w: &PackedQWeights,
    ep: &QEpilogue,
    sum: &SumStage,
    other: &[u8],
    y: &mut [u8],
    ldy: usize,
    col0: usize,
) -> OpResult<()> {
    check_args(a, w, ep, y, ldy, col0)?;
    check_other(other, y)?;
    run_split(
        runner(isa, w.layout),
        a,
        w,
        ep,
        Some((sum, other)),
        y,
        ldy,
        col0,
    )
}

/// The other summand of a fused sum must be laid out like the output.
fn check_other(other: &[u8], y: &[u8]) -> OpResult<()> {
    if other.len() != y.len() {
        return Err(OpError::Shape(format!(
            "int8 GEMM with a fused sum: {} summand codes for an output of {}",
            other.len(),
            y.len()
        )));
    }
    Ok(())
}

/// Checks the operand sizes of one GEMM call.
fn check_args<L: QLhs + ?Sized>(
    a: &L,
    w: &PackedQWeights,
    ep: &QEpilogue,
    y: &[u8],
    ldy: usize,
    col0: usize,
) -> OpResult<()> {
    let (m, n) = (a.rows(), w.n);
    if a.depth() != w.k {
        return Err(OpError::Shape(format!(
            "int8 GEMM: input depth {} but weights have K = {}",
            a.depth(),
            w.k
        )));
    }
    if ep.channels() != n {
        return Err(OpError::Shape(format!(
            "int8 GEMM: output stage for {} channels, weights have {n}",
            ep.channels()
        )));
    }
    if col0 + n > ldy || m.checked_mul(ldy) != Some(y.len()) {
        return Err(OpError::Shape(format!(
            "int8 GEMM: output of {} codes cannot hold {m} rows of {ldy} with columns \
             {col0}..{}",
            y.len(),
            col0 + n
        )));
    }
    Ok(())
}

/// [`qgemm_with`] running the AMX driver on emulated tiles (plain arrays; any CPU), for
/// tests of its tiling and edges. `w` must be packed in [`QLayout::Tiles`].
pub fn qgemm_tiles_emulated<L: QLhs + ?Sized>(
    a: &L,
    w: &PackedQWeights,
    ep: &QEpilogue,
    sum: Option<(&SumStage, &[u8])>,
    y: &mut [u8],
    ldy: usize,
    col0: usize,
) -> OpResult<()> {
    if w.layout != QLayout::Tiles {
        return Err(OpError::Unsupported(
            "emulated AMX GEMM: weights are not in the tile layout".into(),
        ));
    }
    check_args(a, w, ep, y, ldy, col0)?;
    if let Some((_, other)) = sum {
        check_other(other, y)?;
    }
    run_split(Runner::AmxEmulated, a, w, ep, sum, y, ldy, col0)
}

/// The name of the micro-kernel [`qgemm_with`] runs for weights `w` at level `isa`
/// (dtype, tile and instruction set, e.g. `qgemm_u8s8_i32_6x64_avx512vnni`).
pub fn kernel_name(isa: Isa, w: &PackedQWeights) -> &'static str {
    match runner(isa, w.layout) {
        Runner::Classic(k) => match w.layout {
            QLayout::Quads => k.quads_name,
            _ => k.pairs_name,
        },
        Runner::Vnni(k) => k.name,
        Runner::Amx => "qgemm_u8s8_i32_32x32_amx",
        Runner::AmxEmulated => "qgemm_u8s8_i32_32x32_amx_emulated",
    }
}

/// Which driver and kernels run one GEMM.
#[derive(Clone, Copy)]
enum Runner {
    /// Pair/quad layouts: packed A panels, `vpmaddwd`/`vpmaddubsw` or portable.
    Classic(&'static Kernels),
    /// VNNI layouts on `vpdpbusd` register tiles (or their portable form).
    Vnni(&'static vnni::VnniKernels),
    /// Tile layout on AMX.
    Amx,
    /// Tile layout on emulated AMX (tests).
    AmxEmulated,
}

impl Runner {
    /// Row granularity (the register or tile block) and the largest row block of one task.
    fn row_tiles(self) -> (usize, usize, usize) {
        match self {
            Runner::Classic(_) => (MR, 4 * MR, MC_MAX),
            Runner::Vnni(_) => (vnni::VR, 4 * vnni::VR, 192),
            Runner::Amx | Runner::AmxEmulated => (2 * amx::TR, 2 * amx::TR, 256),
        }
    }
}

/// The runner for weights in `layout` at level `isa` (the best this CPU has, not above it).
fn runner(isa: Isa, layout: QLayout) -> Runner {
    let level = Isa::capped(isa);
    if !layout.is_vnni() {
        return Runner::Classic(kernels(level));
    }
    match level {
        #[cfg(target_arch = "x86_64")]
        Isa::Amx if layout == QLayout::Tiles => Runner::Amx,
        #[cfg(target_arch = "x86_64")]
        Isa::Amx | Isa::Avx512Vnni => Runner::Vnni(&AVX512_VNNI),
        #[cfg(target_arch = "x86_64")]
        Isa::AvxVnni => Runner::Vnni(&AVX_VNNI),
        _ => Runner::Vnni(&vnni::PORTABLE_KERNELS),
    }
}

/// The AVX512-VNNI register-tile kernels.
#[cfg(target_arch = "x86_64")]
static AVX512_VNNI: vnni::VnniKernels = vnni::VnniKernels {
    name: "qgemm_u8s8_i32_6x64_avx512vnni",
    micro: &vnni::AVX512,
    nb: vnni::VNB,
};

/// The AVX-VNNI register-tile kernels.
#[cfg(target_arch = "x86_64")]
static AVX_VNNI: vnni::VnniKernels = vnni::VnniKernels {
    name: "qgemm_u8s8_i32_6x16_avxvnni",
    micro: &vnni::AVXVNNI,
    nb: 1,
};

/// Splits one checked GEMM into tasks over rows (or channels) and runs them with `kern`.
#[allow(clippy::too_many_arguments)]
fn run_split<L: QLhs + ?Sized>(
    kern: Runner,
    a: &L,
    w: &PackedQWeights,
    ep: &QEpilogue,
    sum: Option<(&SumStage, &[u8])>,
    y: &mut [u8],
    ldy: usize,
    col0: usize,
) -> OpResult<()> {
    let (m, n) = (a.rows(), w.n);
    if m == 0 || n == 0 {
        return Ok(());
    }
    let threads = rayon::current_num_threads().max(1);
    let row_bytes = w.kunits.max(1) * 4;
    // Row granularity: the register tile.
    let (mr, mc_min, mc_max) = kern.row_tiles();
    let mr = if matches!(kern, Runner::Classic(_)) && w.layout == QLayout::Quads {
        QR
    } else {
        mr
    };
    let mc_min = if matches!(kern, Runner::Classic(_)) {
        4 * mr
    } else {
        mc_min
    };
    let mc_cap = (A_TILE_BUDGET / row_bytes / mr * mr).clamp(mc_min, mc_max);
    // Row tiles of about equal size, their number a multiple of the thread count (at
    // least two per thread when there are several threads).
    let per_thread = m
        .div_ceil(threads * mc_cap)
        .max(if threads > 1 { 2 } else { 1 });
    let tasks = threads * per_thread;
    let mc = (m.div_ceil(tasks).div_ceil(mr) * mr).min(mc_cap);
    if threads == 1 || mc >= 4 * MR || n <= NR {
        // Row tiles, each writing its own rows of Y: as many as tiles of `mc` rows would
        // make, but with the register-tile rows spread evenly (196 rows in 4 tiles: 52, 48,
        // 48, 48 rather than 52, 52, 52, 40), so that threads finish together.
        let units = m.div_ceil(mr);
        let ntiles = m.div_ceil(mc);
        let (base, extra) = (units / ntiles, units % ntiles);
        let mut tiles = Vec::with_capacity(ntiles);
        let (mut rest, mut r0) = (y, 0);
        for t in 0..ntiles {
            let rows = ((base + usize::from(t < extra)) * mr).min(m - r0);
            let (head, tail) = rest.split_at_mut(rows * ldy);
            tiles.push((r0, head));
            rest = tail;
            r0 += rows;
        }
        debug_assert_eq!(r0, m);
        tiles.into_par_iter().for_each(|(r0, chunk)| {
            let rows = chunk.len() / ldy;
            let sum = sum.map(|(st, o)| (st, &o[r0 * ldy..(r0 + rows) * ldy]));
            run_tile(kern, a, r0, rows, w, 0, n, ep, sum, chunk, ldy, col0);
        });
    } else {
        // Few rows: split the channels, each block into its own buffer, then copy.
        let nbw = (n.div_ceil(tasks).div_ceil(NR) * NR).clamp(NR, NC);
        let blocks: Vec<(usize, Vec<u8>)> = (0..n.div_ceil(nbw))
            .into_par_iter()
            .map(|b| {
                let c0 = b * nbw;
                let cols = nbw.min(n - c0);
                let mut buf = vec![0u8; m * cols];
                run_tile(kern, a, 0, m, w, c0, cols, ep, None, &mut buf, cols, 0);
                (c0, buf)
            })
            .collect();
        for (c0, buf) in blocks {
            let cols = buf.len() / m;
            for (dst, src) in y.chunks_mut(ldy).zip(buf.chunks(cols)) {
                dst[col0 + c0..col0 + c0 + cols].copy_from_slice(src);
            }
        }
        if let Some((st, other)) = sum {
            sum_rows(st, other, y, ldy, col0, n);
        }
    }
    Ok(())
}

/// Per-thread scratch: packed A tile, partial sums, gathered rows, outlier products.
#[derive(Default)]
struct Scratch {
    apack: Vec<i32>,
    partial: Vec<i32>,
    gather: Vec<u8>,
    corr: Vec<i32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Rows `r0..r0+rows` of A times channels `c0..c0+cols` of W (`c0 % NR == 0`), written to
/// `out` (`rows` rows of `ldo`) at columns `ocol..ocol+cols`.
#[allow(clippy::too_many_arguments)]
fn run_tile<L: QLhs + ?Sized>(
    kern: Runner,
    a: &L,
    r0: usize,
    rows: usize,
    w: &PackedQWeights,
    c0: usize,
    cols: usize,
    ep: &QEpilogue,
    sum: Option<(&SumStage, &[u8])>,
    out: &mut [u8],
    ldo: usize,
    ocol: usize,
) {
    match kern {
        Runner::Classic(k) => {
            run_tile_classic(k, a, r0, rows, w, c0, cols, ep, out, ldo, ocol);
            if let Some((st, other)) = sum {
                sum_rows(st, other, out, ldo, ocol, cols);
            }
        }
        Runner::Vnni(k) => vnni::run_vnni(k, a, r0, rows, w, c0, cols, ep, sum, out, ldo, ocol),
        #[cfg(target_arch = "x86_64")]
        Runner::Amx => {
            // SAFETY: `runner` returns `Amx` only when `Isa::Amx` is supported (AVX512-VNNI,
            // AMX-INT8, OS permission) and the weights are in the tile layout.
            unsafe { run_amx(a, r0, rows, w, c0, cols, ep, sum, out, ldo, ocol) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Runner::Amx => unreachable!("AMX runner on a CPU without AMX"),
        Runner::AmxEmulated => {
            let mut t = amx::Emulated::default();
            // SAFETY: emulated tiles and portable lanes need no CPU feature; the driver
            // keeps every tile access inside A, the packed panels and its scratch.
            unsafe {
                amx::run_tiles::<_, vnni::Portable, L>(
                    &mut t, a, r0, rows, w, c0, cols, ep, sum, out, ldo, ocol,
                )
            }
        }
    }
}

/// The AMX driver with AVX-512 output stages.
///
/// # Safety
/// The CPU must support `Isa::Amx` (with the OS permission granted).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
#[allow(clippy::too_many_arguments)]
unsafe fn run_amx<L: QLhs + ?Sized>(
    a: &L,
    r0: usize,
    rows: usize,
    w: &PackedQWeights,
    c0: usize,
    cols: usize,
    ep: &QEpilogue,
    sum: Option<(&SumStage, &[u8])>,
    out: &mut [u8],
    ldo: usize,
    ocol: usize,
) {
    // SAFETY: forwarded contract; the AVX-512 lanes' features are enabled here.
    unsafe {
        amx::run_tiles::<amx::Amx, vnni::Avx512, L>(
            &mut amx::Amx,
            a,
            r0,
            rows,
            w,
            c0,
            cols,
            ep,
            sum,
            out,
            ldo,
            ocol,
        )
    }
}

/// [`run_tile`] for the pair and quad layouts.
#[allow(clippy::too_many_arguments)]
fn run_tile_classic<L: QLhs + ?Sized>(
    kern: &Kernels,
    a: &L,
    r0: usize,
    rows: usize,
    w: &PackedQWeights,
    c0: usize,
    cols: usize,
    ep: &QEpilogue,
    out: &mut [u8],
    ldo: usize,
    ocol: usize,
) {
    let args = TileArgs {
        r0,
        rows,
        c0,
        cols,
        ldo,
        ocol,
    };
    match w.layout {
        QLayout::Vnni | QLayout::Tiles => unreachable!("VNNI layouts run the VNNI drivers"),
        QLayout::Pairs => {
            run_tile_r::<MR, L>(kern.micro, kern.pack, kern.outliers, a, w, ep, out, &args)
        }
        QLayout::Quads => run_tile_r::<QR, L>(
            kern.micro_quads,
            kern.pack_quads,
            kern.outliers,
            a,
            w,
            ep,
            out,
            &args,
        ),
    }
}

/// Where one [`run_tile`] call reads and writes.
struct TileArgs {
    r0: usize,
    rows: usize,
    c0: usize,
    cols: usize,
    ldo: usize,
    ocol: usize,
}

/// [`run_tile`] with register tiles of `R` rows.
#[allow(clippy::too_many_arguments)]
fn run_tile_r<const R: usize, L: QLhs + ?Sized>(
    micro: MicroFn,
    pack: PackFn,
    outliers: OutlierFn,
    a: &L,
    w: &PackedQWeights,
    ep: &QEpilogue,
    out: &mut [u8],
    t: &TileArgs,
) {
    let TileArgs {
        r0,
        rows,
        c0,
        cols,
        ldo,
        ocol,
    } = *t;
    debug_assert_eq!(c0 % NR, 0);
    let quads = w.layout == QLayout::Quads;
    // Taken out of the thread-local for the call (a nested call would allocate its own).
    let mut s = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    let ku = w.kunits;
    let subtiles = rows.div_ceil(R);
    s.apack.resize(subtiles * ku * R, 0);
    s.gather.resize(R * (4 * ku).max(1), 0);
    for t in 0..subtiles {
        let dst = &mut s.apack[t * ku * R..(t + 1) * ku * R];
        pack_rows::<R, L>(pack, a, r0 + t * R, R.min(rows - t * R), &mut s.gather, dst);
    }
    let kblocks = ku.div_ceil(KCP_MAX).max(1);
    let mut kstep = ku.div_ceil(kblocks);
    if quads {
        // The quad kernel takes quads two at a time.
        kstep += kstep % 2;
    }
    let mut edge = [0u8; MR * NR];
    // Accumulator tile for single-block K without outliers (never read: `load` is false).
    let mut local = [0i32; MR * NR];
    for nb in (c0..c0 + cols).step_by(NC) {
        let nbw = NC.min(c0 + cols - nb);
        let npan = nbw.div_ceil(NR);
        if kblocks > 1 {
            s.partial.resize(subtiles * npan * R * NR, 0);
        }
        for kb in 0..kblocks {
            let pc = kb * kstep;
            let kc = kstep.min(ku - pc);
            let (first, last) = (kb == 0, kb + 1 == kblocks);
            for jr in 0..npan {
                let col = nb + jr * NR;
                let bp = w.block(col, pc, kc);
                let ncols = NR.min(c0 + cols - col);
                let outl = w.panel_outliers(col);
                // Outliers exist only in the quad layout (R = QR). Their products preload
                // the accumulators of the first K block: the partial sums' tiles of this
                // panel (stride `npan` tiles), or with one K block the `corr` tiles.
                let preload = first && !outl.all().is_empty();
                if preload {
                    let (corr, stride) = if kblocks > 1 {
                        (&mut s.partial[jr * R * NR..], npan * R * NR)
                    } else {
                        s.corr.resize(subtiles * R * NR, 0);
                        (&mut s.corr[..], R * NR)
                    };
                    // SAFETY: `outliers` is an AVX2 kernel only on CPUs with AVX2; it checks
                    // its slice lengths.
                    unsafe { outliers(outl, &s.apack, ku, subtiles, corr, stride) };
                }
                for t in 0..subtiles {
                    let apanel = &s.apack[t * ku * R..(t + 1) * ku * R];
                    let ap = &apanel[pc * R..(pc + kc) * R];
                    let acc: &mut [i32] = if kblocks > 1 {
                        let at = (t * npan + jr) * R * NR;
                        &mut s.partial[at..at + R * NR]
                    } else if preload {
                        &mut s.corr[t * R * NR..(t + 1) * R * NR]
                    } else {
                        &mut local[..R * NR]
                    };
                    let load = preload || !first;
                    if !last {
                        // SAFETY: `micro` is an AVX2 kernel only on CPUs with AVX2 (see
                        // `kernels`); slice lengths are checked inside the kernel.
                        unsafe { micro(kc, ap, bp, acc, load, None) };
                        continue;
                    }
                    let mrows = R.min(rows - t * R);
                    let oc = ocol + (col - c0);
                    if mrows == R && ncols == NR {
                        let at = t * R * ldo + oc;
                        let y = &mut out[at..at + (R - 1) * ldo + NR];
                        // SAFETY: as above.
                        unsafe { micro(kc, ap, bp, acc, load, Some(out_tile(ep, col, y, ldo))) };
                    } else {
                        let tile = out_tile(ep, col, &mut edge[..R * NR], NR);
                        // SAFETY: as above.
                        unsafe { micro(kc, ap, bp, acc, load, Some(tile)) };
                        for r in 0..mrows {
                            let at = (t * R + r) * ldo + oc;
                            out[at..at + ncols].copy_from_slice(&edge[r * NR..r * NR + ncols]);
                        }
                    }
                }
            }
        }
    }
    SCRATCH.with(|c| *c.borrow_mut() = s);
}

/// The output tile for channels `col..col + NR` written to `y` at stride `ldy`.
fn out_tile<'a>(ep: &'a QEpilogue, col: usize, y: &'a mut [u8], ldy: usize) -> OutTile<'a> {
    OutTile {
        y,
        ldy,
        offsets: &ep.offsets()[col..col + NR],
        mults: &ep.multipliers()[col..col + NR],
        zero_point: ep.zero_point(),
        lo: ep.lo(),
        finite: ep.finite(),
    }
}

/// Packs rows `r0..r0+rows` (`rows <= R`) of A into one panel with `pack`; rows past
/// `rows` are zero (they are gathered into zeroed scratch first).
fn pack_rows<const R: usize, L: QLhs + ?Sized>(
    pack: PackFn,
    a: &L,
    r0: usize,
    rows: usize,
    gather: &mut [u8],
    dst: &mut [i32],
) {
    let k = a.depth();
    let step = gather.len() / R;
    let mut chunks = gather.chunks_exact_mut(step);
    let mut bufs: [&mut [u8]; R] = std::array::from_fn(|_| chunks.next().unwrap_or_default());
    if rows < R {
        for b in bufs.iter_mut().skip(rows) {
            b[..k].fill(0);
        }
    }
    let mut i = 0;
    let rs: [&[u8]; R] = bufs.map(|b| {
        let r = if i < rows { a.row(r0 + i, b) } else { &b[..k] };
        i += 1;
        r
    });
    // SAFETY: `pack` is an AVX2 kernel only on CPUs with AVX2; the kernel checks the number
    // of rows, that every row has `k` codes and that `dst` is large enough.
    unsafe { pack(&rs, k, dst) };
}

#[cfg(test)]
mod tests {
    use super::pack::{pair, unpair, Outlier};
    use super::*;

    fn lcg(seed: &mut u64) -> u64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    }

    #[test]
    fn pair_roundtrip() {
        for (lo, hi) in [(0, 0), (255, -255), (-255, 255), (-1, -1), (17, 0)] {
            assert_eq!(unpair(pair(lo, hi)), (lo, hi));
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_pack_matches_scalar_pack() {
        if effective_isa(Isa::Avx2) != Isa::Avx2 {
            eprintln!("skipping: this CPU has no AVX2");
            return;
        }
        let mut seed = 7u64;
        for k in [1usize, 2, 15, 16, 17, 31, 32, 33, 64, 147, 200] {
            let data: Vec<u8> = (0..MR * k).map(|_| lcg(&mut seed) as u8).collect();
            let rows: [&[u8]; MR] = std::array::from_fn(|i| &data[i * k..(i + 1) * k]);
            let kp = k.div_ceil(2);
            let mut s = vec![-1i32; kp * MR];
            let mut v = vec![-2i32; kp * MR];
            // SAFETY: AVX2 checked above; pack_scalar is safe code.
            unsafe {
                pack_scalar(&rows, k, &mut s);
                avx2::pack(&rows, k, &mut v);
            }
            assert_eq!(s, v, "k = {k}");
            // Independent check of the layout.
            for p in 0..kp {
                for (i, row) in rows.iter().enumerate() {
                    let hi = if 2 * p + 1 < k { row[2 * p + 1] } else { 0 };
                    assert_eq!(unpair(s[p * MR + i]), (row[2 * p] as i32, hi as i32));
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_micro_matches_scalar_micro() {
        if effective_isa(Isa::Avx2) != Isa::Avx2 {
            eprintln!("skipping: this CPU has no AVX2");
            return;
        }
        let mut seed = 11u64;
        for kp in [0usize, 1, 3, 40] {
            let a: Vec<i32> = (0..kp * MR)
                .map(|_| pair((lcg(&mut seed) % 256) as i32, (lcg(&mut seed) % 256) as i32))
                .collect();
            let b: Vec<i32> = (0..kp * NR)
                .map(|_| {
                    pair(
                        (lcg(&mut seed) % 511) as i32 - 255,
                        (lcg(&mut seed) % 511) as i32 - 255,
                    )
                })
                .collect();
            let init: Vec<i32> = (0..MR * NR).map(|i| i as i32 * 1000 - 7).collect();
            for load in [false, true] {
                let (mut s, mut v) = (init.clone(), init.clone());
                // SAFETY: AVX2 checked above.
                unsafe {
                    micro_scalar(kp, &a, &b, &mut s, load, None);
                    avx2::micro(kp, &a, &b, &mut v, load, None);
                }
                assert_eq!(s, v);
                let offsets: Vec<i32> = (0..NR as i32).map(|c| c * 37 - 300).collect();
                let mults: Vec<f32> = (0..NR).map(|c| 0.001 + c as f32 * 0.0007).collect();
                let ldy = NR + 3;
                let mut ys = vec![0u8; MR * ldy];
                let mut yv = vec![0u8; MR * ldy];
                for (zp, lo) in [(0, 0), (128, 0), (3, 3), (255, 255)] {
                    let tile = |y| OutTile {
                        y,
                        ldy,
                        offsets: &offsets,
                        mults: &mults,
                        zero_point: zp,
                        lo,
                        finite: true,
                    };
                    let (mut s, mut v) = (init.clone(), init.clone());
                    // SAFETY: AVX2 checked above.
                    unsafe {
                        micro_scalar(kp, &a, &b, &mut s, load, Some(tile(&mut ys)));
                        avx2::micro(kp, &a, &b, &mut v, load, Some(tile(&mut yv)));
                    }
                    assert_eq!(ys, yv, "kp {kp} load {load} zp {zp}");
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_quad_kernels_match_scalar() {
        if effective_isa(Isa::Avx2) != Isa::Avx2 {
            eprintln!("skipping: this CPU has no AVX2");
            return;
        }
        let mut seed = 5u64;
        // Packing: k not a multiple of 32 or 8, layout checked independently.
        for k in [1usize, 3, 8, 31, 32, 33, 64, 100, 147] {
            let data: Vec<u8> = (0..QR * k).map(|_| lcg(&mut seed) as u8).collect();
            let rows: Vec<&[u8]> = (0..QR).map(|i| &data[i * k..(i + 1) * k]).collect();
            let kq = k.div_ceil(8) * 2;
            let mut s = vec![-1i32; kq * QR];
            let mut v = vec![-2i32; kq * QR];
            // SAFETY: AVX2 checked above; pack_quads_scalar is safe code.
            unsafe {
                pack_quads_scalar(&rows, k, &mut s);
                avx2::pack_quads(&rows, k, &mut v);
            }
            assert_eq!(s, v, "k = {k}");
            for q in 0..kq {
                for (i, row) in rows.iter().enumerate() {
                    let want: [u8; 4] = std::array::from_fn(|j| *row.get(4 * q + j).unwrap_or(&0));
                    assert_eq!(s[q * QR + i].to_le_bytes(), want);
                }
            }
        }
        // Micro-kernel with small weights (no i16 lane can saturate: |w| ≤ 32), checked
        // against a plain loop too.
        for kq in [0usize, 2, 6, 40] {
            let a: Vec<i32> = (0..kq * QR).map(|_| lcg(&mut seed) as i32).collect();
            let b: Vec<i32> = (0..kq * NR)
                .map(|_| {
                    let w: [u8; 4] =
                        std::array::from_fn(|_| ((lcg(&mut seed) % 65) as i32 - 32) as i8 as u8);
                    i32::from_le_bytes(w)
                })
                .collect();
            let init: Vec<i32> = (0..QR * NR).map(|i| i as i32 * 999 - 5).collect();
            for load in [false, true] {
                let (mut s, mut v) = (init.clone(), init.clone());
                // SAFETY: AVX2 checked above.
                unsafe {
                    micro_quads_scalar(kq, &a, &b, &mut s, load, None);
                    avx2::micro_quads(kq, &a, &b, &mut v, load, None);
                }
                assert_eq!(s, v, "kq {kq} load {load}");
                for r in 0..QR {
                    for c in 0..NR {
                        let mut want = if load { init[r * NR + c] } else { 0 };
                        for q in 0..kq {
                            let x = a[q * QR + r].to_le_bytes();
                            let w = b[q * NR + c].to_le_bytes();
                            for j in 0..4 {
                                want += x[j] as i32 * (w[j] as i8) as i32;
                            }
                        }
                        assert_eq!(s[r * NR + c], want);
                    }
                }
            }
        }
        // Outlier products over 1 to 9 row tiles (groups of four and partial groups).
        let units = 10;
        for tiles in [1usize, 2, 3, 4, 5, 8, 9, 15, 16, 17] {
            let apack: Vec<i32> = (0..tiles * units * QR)
                .map(|_| lcg(&mut seed) as i32)
                .collect();
            let mut outl: Vec<Outlier> = (0..30)
                .map(|_| {
                    let k = (lcg(&mut seed) % (4 * units as u64)) as usize;
                    let lane = (lcg(&mut seed) % NR as u64) as usize;
                    Outlier::new(k, lane, (lcg(&mut seed) % 256) as i32 - 128)
                })
                .collect();
            outl.sort_by_key(|o| o.lane);
            let mut starts = Vec::new();
            let panel = OutlierPanel::from_sorted(&outl, &mut starts);
            // Tiles at a stride of 3 tile sizes (as in the partial-sum buffer); the cells
            // between them must stay untouched.
            let stride = 3 * QR * NR;
            let len = (tiles - 1) * stride + QR * NR;
            let mut s = vec![7i32; len];
            let mut v = vec![7i32; len];
            // SAFETY: AVX2 checked above.
            unsafe {
                outlier_tile_scalar(panel, &apack, units, tiles, &mut s, stride);
                avx2::outlier_tile(panel, &apack, units, tiles, &mut v, stride);
            }
            for (i, x) in s.iter().enumerate() {
                if i % stride >= QR * NR {
                    assert_eq!(*x, 7, "cell {i} between tiles written");
                }
            }
            assert_eq!(s, v, "tiles {tiles}");
            let (t, r, lane) = (tiles - 1, QR - 1, outl[0].lane as usize);
            let want: i32 = outl
                .iter()
                .filter(|o| o.lane as usize == lane)
                .map(|o| {
                    let k = o.k as usize;
                    let q = apack[t * units * QR + (k / 4) * QR + r];
                    q.to_le_bytes()[k % 4] as i32 * o.delta
                })
                .sum();
            assert_eq!(s[t * stride + r * NR + lane], want);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_output_stage_extremes_match_scalar() {
        if effective_isa(Isa::Avx2) != Isa::Avx2 {
            eprintln!("skipping: this CPU has no AVX2");
            return;
        }
        // Accumulators at the i32 extremes, ties, and multipliers that overflow or are 0.
        let accs = [
            i32::MIN,
            i32::MAX,
            0,
            1,
            -1,
            5,
            -5,
            7,
            1 << 24,
            (1 << 24) + 1,
            -(1 << 30),
            65535,
            131071,
            -131071,
            100,
            -100,
        ];
        for m in [
            0.5f32,
            1.0,
            f32::MAX,
            0.0,
            1e-30,
            3.4e38,
            0.001,
            f32::INFINITY,
            f32::NAN,
        ] {
            let mut init = [0i32; MR * NR];
            for (i, v) in init.iter_mut().enumerate() {
                *v = accs[i % NR];
            }
            let offsets = [0i32; NR];
            let mults = [m; NR];
            for (zp, lo) in [(0, 0), (10, 10), (255, 0)] {
                let mut ys = [0u8; MR * NR];
                let mut yv = [0u8; MR * NR];
                let tile = |y| OutTile {
                    y,
                    ldy: NR,
                    offsets: &offsets,
                    mults: &mults,
                    zero_point: zp,
                    lo,
                    finite: m.is_finite(),
                };
                let (mut s, mut v) = (init, init);
                // SAFETY: AVX2 checked above.
                unsafe {
                    micro_scalar(0, &[], &[], &mut s, true, Some(tile(&mut ys)));
                    avx2::micro(0, &[], &[], &mut v, true, Some(tile(&mut yv)));
                }
                assert_eq!(ys, yv, "m {m} zp {zp}");
                // Against the definition, written out independently.
                for (i, &acc) in init.iter().enumerate() {
                    let r = (acc as f32 * m).round_ties_even();
                    let r = if r.is_nan() { 0 } else { r as i64 };
                    let want = r.saturating_add(zp as i64).clamp(lo as i64, 255) as i32;
                    assert_eq!(ys[i] as i32, want, "acc {acc} m {m}");
                }
            }
        }
    }
}
