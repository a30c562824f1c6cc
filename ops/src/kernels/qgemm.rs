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
use std::sync::OnceLock;

use rayon::prelude::*;

use super::isa::Isa;
use crate::int8::requant::requantize;
use crate::{OpError, OpResult};

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

/// Two i16 values in one i32 lane, `lo` in the low half (the `vpmaddwd` operand layout).
#[inline]
fn pair(lo: i32, hi: i32) -> i32 {
    (u32::from(lo as u16) | (u32::from(hi as u16) << 16)) as i32
}

/// The two i16 values of a [`pair`].
#[inline]
fn unpair(v: i32) -> (i32, i32) {
    (i32::from(v as i16), v >> 16)
}

/// How packed weights store K (chosen by [`PackedQWeights::pack`], or forced with
/// [`PackedQWeights::pack_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QLayout {
    /// i16 pairs of consecutive k for `vpmaddwd` (any zero point).
    Pairs,
    /// i8 quads of consecutive k for `vpmaddubsw` (centred weights in [−128, 127]), split
    /// into a saturation-free main part and exact sparse outliers.
    Quads,
}

/// One weight moved out of the `vpmaddubsw` main part: `acc[·, lane] += x[·, k] · delta`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Outlier {
    k: u32,
    lane: u32,
    delta: i32,
    /// `delta` as the low half of an i16 pair (high half 0), the `vpmaddwd` operand.
    dpair: i32,
}

impl Outlier {
    fn new(k: usize, lane: usize, delta: i32) -> Self {
        Outlier {
            k: k as u32,
            lane: lane as u32,
            delta,
            dpair: delta & 0xffff,
        }
    }
}

/// The outliers of one weight panel: lane `l`'s are `list[starts[l]..starts[l + 1]]`.
#[derive(Clone, Copy)]
struct OutlierPanel<'a> {
    list: &'a [Outlier],
    /// `NR + 1` non-decreasing offsets into `list`.
    starts: &'a [usize],
}

impl<'a> OutlierPanel<'a> {
    /// All the panel's outliers, lane by lane.
    fn all(&self) -> &'a [Outlier] {
        &self.list[self.starts[0]..self.starts[NR]]
    }

    /// Lane `l`'s outliers.
    fn lane(&self, l: usize) -> &'a [Outlier] {
        &self.list[self.starts[l]..self.starts[l + 1]]
    }

    /// A panel from a plain list (sorted by lane), for tests.
    #[cfg(test)]
    fn from_sorted(list: &'a [Outlier], starts: &'a mut Vec<usize>) -> Self {
        starts.clear();
        starts.extend((0..=NR).map(|l| list.partition_point(|o| (o.lane as usize) < l)));
        OutlierPanel { list, starts }
    }
}

/// Weights `[N, K]` centred by their zero points and packed for the GEMM: panels of [`NR`]
/// channels, within a panel `[k unit][channel]` (zero padded), where a unit is an i16 pair
/// ([`QLayout::Pairs`]) or an i8 quad ([`QLayout::Quads`], with the number of quads even),
/// plus the per-channel sums `Σ_k (w − z_w)` for the zero-point correction.
#[derive(Clone, PartialEq)]
pub struct PackedQWeights {
    n: usize,
    k: usize,
    layout: QLayout,
    /// K units per panel row (pairs, or an even number of quads).
    kunits: usize,
    data: Vec<i32>,
    col_sums: Vec<i32>,
    /// Quads only: weights kept out of the main part, grouped by panel.
    outliers: Vec<Outlier>,
    /// Quads only: `outliers[lane_outliers[c]..lane_outliers[c + 1]]` belong to channel `c`
    /// (`panels · NR + 1` offsets, padding channels included, so a panel's outliers come
    /// lane by lane).
    lane_outliers: Vec<usize>,
}

impl std::fmt::Debug for PackedQWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PackedQWeights {{ n: {}, k: {}, layout: {:?}, outliers: {} }}",
            self.n,
            self.k,
            self.layout,
            self.outliers.len()
        )
    }
}

/// Shortest K [`PackedQWeights::pack`] gives the quad layout: below it each quad tile (4 rows)
/// does too little work per output stage, and the 6-row pair tiles are faster even without
/// outliers (measured on ResNet-50's and SqueezeNet's K = 16–64 convolutions: pairs 0–20%
/// faster; whole SqueezeNet int8 ~4% faster at batch 1).
const QUAD_MIN_K: usize = 128;

/// Largest sum of same-sign centred weights allowed in one i16 lane of the quad kernel:
/// `255 · 128 = 32640` fits i16 both ways.
const LANE_BUDGET: i32 = 128;

impl PackedQWeights {
    /// Packs `codes` (`[n, k]` row-major uint8) with one zero point per row (in [0, 255]),
    /// choosing [`QLayout::Quads`] when K is at least 128, every centred weight fits i8 and
    /// few outliers are needed, else [`QLayout::Pairs`].
    pub fn pack(codes: &[u8], n: usize, k: usize, zero_points: &[i32]) -> OpResult<Self> {
        check_weights(codes, n, k, zero_points)?;
        if k >= QUAD_MIN_K && fits_i8(codes, n, k, zero_points) {
            let q = Self::pack_quads(codes, n, k, zero_points);
            // An outlier costs ~15x a main-part multiply-add per row; the quad kernel runs
            // ~25-40 % faster than pairs, so give up beyond 1/64 (~1.6 %) outliers.
            if q.outliers.len() * 64 <= n * k {
                return Ok(q);
            }
        }
        Ok(Self::pack_pairs(codes, n, k, zero_points))
    }

    /// Packs like [`pack`](Self::pack) with the given layout; [`QLayout::Quads`] fails when
    /// a centred weight does not fit i8.
    pub fn pack_with(
        codes: &[u8],
        n: usize,
        k: usize,
        zero_points: &[i32],
        layout: QLayout,
    ) -> OpResult<Self> {
        check_weights(codes, n, k, zero_points)?;
        match layout {
            QLayout::Pairs => Ok(Self::pack_pairs(codes, n, k, zero_points)),
            QLayout::Quads if fits_i8(codes, n, k, zero_points) => {
                Ok(Self::pack_quads(codes, n, k, zero_points))
            }
            QLayout::Quads => Err(OpError::DType(
                "int8 GEMM weights: centred weights do not fit i8 for the quad layout".into(),
            )),
        }
    }

    fn pack_pairs(codes: &[u8], n: usize, k: usize, zero_points: &[i32]) -> Self {
        let kpairs = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        let mut data = vec![0i32; panels * kpairs * NR];
        let mut col_sums = vec![0i32; n];
        for (c, (&z, sum)) in zero_points.iter().zip(&mut col_sums).enumerate() {
            let row = &codes[c * k..(c + 1) * k];
            let base = (c / NR) * kpairs * NR + c % NR;
            let mut s = 0i32;
            for (p, two) in row.chunks(2).enumerate() {
                let lo = i32::from(two[0]) - z;
                let hi = two.get(1).map_or(0, |&v| i32::from(v) - z);
                data[base + p * NR] = pair(lo, hi);
                s = s.wrapping_add(lo + hi);
            }
            *sum = s;
        }
        PackedQWeights {
            n,
            k,
            layout: QLayout::Pairs,
            kunits: kpairs,
            data,
            col_sums,
            outliers: Vec::new(),
            lane_outliers: vec![0; panels * NR + 1],
        }
    }

    /// The quad layout. The kernel adds the two i16 sums of quads `2j` and `2j + 1` lane by
    /// lane, so one i16 lane collects k = 8j + {0, 1, 4, 5} or 8j + {2, 3, 6, 7}; in each
    /// such set the positive weights and the negative weights must each sum to at most
    /// [`LANE_BUDGET`] in magnitude. Weights of largest magnitude are moved to the outlier
    /// list (main part 0) until the set complies.
    fn pack_quads(codes: &[u8], n: usize, k: usize, zero_points: &[i32]) -> Self {
        let kquads = k.div_ceil(8) * 2;
        let panels = n.div_ceil(NR);
        let mut data = vec![0i32; panels * kquads * NR];
        let mut col_sums = vec![0i32; n];
        let mut outliers = Vec::new();
        let mut lane_outliers = vec![0usize; panels * NR + 1];
        let mut main = vec![0i32; kquads * 4];
        for (c, (&z, sum)) in zero_points.iter().zip(&mut col_sums).enumerate() {
            let row = &codes[c * k..(c + 1) * k];
            main.fill(0);
            let mut s = 0i32;
            for (m, &v) in main.iter_mut().zip(row) {
                *m = i32::from(v) - z;
                s = s.wrapping_add(*m);
            }
            *sum = s;
            for oct in 0..kquads / 2 {
                for set in [[0usize, 1, 4, 5], [2, 3, 6, 7]] {
                    let idx = set.map(|j| 8 * oct + j);
                    loop {
                        let pos: i32 = idx.iter().map(|&i| main[i].max(0)).sum();
                        let neg: i32 = idx.iter().map(|&i| (-main[i]).max(0)).sum();
                        let sign = if pos > LANE_BUDGET {
                            1
                        } else if neg > LANE_BUDGET {
                            -1
                        } else {
                            break;
                        };
                        // The largest weight of the offending sign becomes an outlier.
                        let mut best = idx[0];
                        for &i in &idx {
                            if main[i] * sign > main[best] * sign {
                                best = i;
                            }
                        }
                        outliers.push(Outlier::new(best, c % NR, main[best]));
                        main[best] = 0;
                    }
                }
            }
            let base = (c / NR) * kquads * NR + c % NR;
            for (q, four) in main.chunks_exact(4).enumerate() {
                let b: [u8; 4] = std::array::from_fn(|j| four[j] as i8 as u8);
                data[base + q * NR] = i32::from_le_bytes(b);
            }
            lane_outliers[c + 1] = outliers.len();
        }
        // Padding channels of the last panel have none.
        let total = outliers.len();
        lane_outliers[n + 1..].fill(total);
        PackedQWeights {
            n,
            k,
            layout: QLayout::Quads,
            kunits: kquads,
            data,
            col_sums,
            outliers,
            lane_outliers,
        }
    }

    /// Output channels (N).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Reduction length (K).
    pub fn k(&self) -> usize {
        self.k
    }

    /// The layout the weights were packed in.
    pub fn layout(&self) -> QLayout {
        self.layout
    }

    /// Number of weights handled as exact outliers (always 0 for [`QLayout::Pairs`]).
    pub fn outlier_count(&self) -> usize {
        self.outliers.len()
    }

    /// `Σ_k (w[n, k] − z_w[n])` for every channel (wrapping i32).
    pub fn col_sums(&self) -> &[i32] {
        &self.col_sums
    }

    /// Units `pc..pc+kc` of the panel holding channel `col` (`col % NR == 0`).
    fn block(&self, col: usize, pc: usize, kc: usize) -> &[i32] {
        let s = ((col / NR) * self.kunits + pc) * NR;
        &self.data[s..s + kc * NR]
    }

    /// The outliers of the panel holding channel `col`.
    fn panel_outliers(&self, col: usize) -> OutlierPanel<'_> {
        let p = col / NR;
        OutlierPanel {
            list: &self.outliers,
            starts: &self.lane_outliers[p * NR..=(p + 1) * NR],
        }
    }
}

/// Checks the sizes and zero points of weights to pack.
fn check_weights(codes: &[u8], n: usize, k: usize, zero_points: &[i32]) -> OpResult<()> {
    if n.checked_mul(k) != Some(codes.len()) {
        return Err(OpError::Shape(format!(
            "int8 GEMM weights: {} codes do not form [{n}, {k}]",
            codes.len()
        )));
    }
    if zero_points.len() != n {
        return Err(OpError::Shape(format!(
            "int8 GEMM weights: {} zero points for {n} output channels",
            zero_points.len()
        )));
    }
    if let Some(z) = zero_points.iter().find(|z| !(0..=255).contains(*z)) {
        return Err(OpError::DType(format!(
            "int8 GEMM weights: zero point {z} is outside [0, 255]"
        )));
    }
    Ok(())
}

/// True when every centred weight `w − z_w` lies in [−128, 127].
fn fits_i8(codes: &[u8], n: usize, k: usize, zero_points: &[i32]) -> bool {
    (0..n).all(|c| {
        let row = &codes[c * k..(c + 1) * k];
        let z = zero_points[c];
        row.iter()
            .all(|&v| (-128..=127).contains(&(i32::from(v) - z)))
    })
}

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

/// The left operand A (`rows × depth` uint8 codes), handed out one row at a time: either
/// borrowed from the source ([`QMatRef`]) or gathered into a scratch row (im2col).
pub trait QLhs: Sync {
    /// Number of rows.
    fn rows(&self) -> usize;
    /// Reduction length K.
    fn depth(&self) -> usize;
    /// The `depth` codes of row `r`; `scratch` holds at least `depth` bytes.
    fn row<'s>(&'s self, r: usize, scratch: &'s mut [u8]) -> &'s [u8];
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
    micro: MicroFn,
    pack: PackFn,
    micro_quads: MicroFn,
    pack_quads: PackFn,
    outliers: OutlierFn,
}

static SCALAR: Kernels = Kernels {
    micro: micro_scalar,
    pack: pack_scalar,
    micro_quads: micro_quads_scalar,
    pack_quads: pack_quads_scalar,
    outliers: outlier_tile_scalar,
};

#[cfg(target_arch = "x86_64")]
static AVX2: Kernels = Kernels {
    micro: avx2::micro,
    pack: avx2::pack,
    micro_quads: avx2::micro_quads,
    pack_quads: avx2::pack_quads,
    outliers: avx2::outlier_tile,
};

/// The kernel table for `isa`; AVX2 only if this CPU has it (else the portable kernels).
fn kernels(isa: Isa) -> &'static Kernels {
    static HAS_AVX2: OnceLock<bool> = OnceLock::new();
    let has = *HAS_AVX2.get_or_init(|| Isa::detect() == Isa::Avx2);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if has => &AVX2,
        _ => {
            let _ = has;
            &SCALAR
        }
    }
}

/// The instruction set [`qgemm_with`] really uses for `isa` on this CPU.
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
    if m == 0 || n == 0 {
        return Ok(());
    }
    let kern = kernels(isa);
    let threads = rayon::current_num_threads().max(1);
    let row_bytes = w.kunits.max(1) * 4;
    // Row granularity: the register tile.
    let mr = if w.layout == QLayout::Quads { QR } else { MR };
    let mc_cap = (A_TILE_BUDGET / row_bytes / mr * mr).clamp(4 * mr, MC_MAX);
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
            run_tile(kern, a, r0, rows, w, 0, n, ep, chunk, ldy, col0);
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
                run_tile(kern, a, 0, m, w, c0, cols, ep, &mut buf, cols, 0);
                (c0, buf)
            })
            .collect();
        for (c0, buf) in blocks {
            let cols = buf.len() / m;
            for (dst, src) in y.chunks_mut(ldy).zip(buf.chunks(cols)) {
                dst[col0 + c0..col0 + c0 + cols].copy_from_slice(src);
            }
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

/// Portable outlier products (see [`OutlierFn`]).
///
/// # Safety
/// None required (safe code; `unsafe` only to fit the kernel table).
unsafe fn outlier_tile_scalar(
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

/// Writes row `i` of a pair panel ([`MR`] rows) from its codes.
fn pack_row_scalar(row: &[u8], i: usize, dst: &mut [i32]) {
    for (p, two) in row.chunks(2).enumerate() {
        dst[p * MR + i] = pair(i32::from(two[0]), two.get(1).map_or(0, |&v| i32::from(v)));
    }
}

/// Writes row `i` of a quad panel ([`QR`] rows) from its codes (missing codes of the last
/// quad are 0).
fn pack_quad_row_scalar(row: &[u8], i: usize, dst: &mut [i32]) {
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
unsafe fn pack_scalar(rows: &[&[u8]], k: usize, dst: &mut [i32]) {
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
unsafe fn pack_quads_scalar(rows: &[&[u8]], k: usize, dst: &mut [i32]) {
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
unsafe fn micro_quads_scalar(
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
fn start_scalar<const R: usize>(acc: &[i32], load: bool) -> [[i32; NR]; R] {
    let mut t = [[0i32; NR]; R];
    if load {
        for (r, row) in t.iter_mut().enumerate() {
            row.copy_from_slice(&acc[r * NR..(r + 1) * NR]);
        }
    }
    t
}

/// Stores a scalar accumulator tile to `acc` or through the output stage.
fn finish_scalar<const R: usize>(t: &[[i32; NR]; R], acc: &mut [i32], out: Option<OutTile<'_>>) {
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
unsafe fn micro_scalar(
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

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    //! AVX2 kernels (also used by the depthwise kernel for the output stage).
    use super::{OutTile, MR, NR, QR};
    use std::arch::x86_64::*;

    /// The DNNLOWP output stage on 8 accumulators: `clamp(lrint(f32(acc + off) · m) + zp,
    /// lo, 255)` as i32 lanes. Products beyond ±65536 are clamped first (any such value
    /// saturates the same way after the final clamp, and `cvtps` would return 0x80000000
    /// out of range); a NaN product becomes 0, as `f32 as i64` does in the scalar path.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn requant8(
        acc: __m256i,
        off: __m256i,
        m: __m256,
        zp: __m256i,
        lo: __m256i,
    ) -> __m256i {
        let raw = _mm256_add_epi32(acc, off);
        let f = _mm256_mul_ps(_mm256_cvtepi32_ps(raw), m);
        let f = _mm256_and_ps(f, _mm256_cmp_ps::<_CMP_ORD_Q>(f, f));
        let f = _mm256_min_ps(
            _mm256_max_ps(f, _mm256_set1_ps(-65536.0)),
            _mm256_set1_ps(65536.0),
        );
        // Round half to even: the default MXCSR mode, which Rust never changes.
        let i = _mm256_add_epi32(_mm256_cvtps_epi32(f), zp);
        _mm256_min_epi32(_mm256_max_epi32(i, lo), _mm256_set1_epi32(255))
    }

    /// The output stage of one row of 16 channels for finite multipliers, `v0`/`v1` the
    /// accumulators of channels 0–7 / 8–15 (with `NATURAL`; without it, of channels
    /// `[0–3, 8–11]` / `[4–7, 12–15]`, the depthwise lane order, which the i16 pack puts
    /// back in order by itself): the same values as [`requant8`] + [`narrow16`] with fewer
    /// steps. Without NaN only the upper side needs a float clamp (`cvtps` maps
    /// anything below −2^31 to 0x80000000, which is negative as it should be); adding `z_y`
    /// cannot overflow, and the saturating packs to i16 and then u8 clamp to [0, 255]
    /// before the lower bound `lo8` (16 copies of `lo`) is applied.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn requant16_finite<const NATURAL: bool>(
        v0: __m256i,
        v1: __m256i,
        off0: __m256i,
        off1: __m256i,
        m0: __m256,
        m1: __m256,
        zp: __m256i,
        lo8: __m128i,
    ) -> __m128i {
        let top = _mm256_set1_ps(65536.0);
        let r = |v, off, m| {
            let f = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(v, off)), m);
            _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_min_ps(f, top)), zp)
        };
        let (a, b) = (r(v0, off0, m0), r(v1, off1, m1));
        let mut p = _mm256_packs_epi32(a, b);
        if NATURAL {
            p = _mm256_permute4x64_epi64::<0b11_01_10_00>(p);
        }
        let bytes = _mm_packus_epi16(_mm256_castsi256_si128(p), _mm256_extracti128_si256::<1>(p));
        _mm_max_epu8(bytes, lo8)
    }

    /// Narrows two vectors of codes already in [0, 255] (channels 0–7 and 8–15) to 16 bytes
    /// in channel order.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn narrow16(v0: __m256i, v1: __m256i) -> __m128i {
        // packs: [v0 0-3, v1 0-3 | v0 4-7, v1 4-7] → permute 64-bit units to 0, 2, 1, 3.
        let p = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(v0, v1));
        _mm_packus_epi16(_mm256_castsi256_si128(p), _mm256_extracti128_si256::<1>(p))
    }

    /// AVX2 micro-kernel (see `MicroFn`): 6 × 16 i32 accumulators, B panel in 2 ymm per k
    /// pair, A broadcast as an i16 pair, `vpmaddwd` + `vpaddd`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA. (Slice lengths are checked here.)
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn micro(
        kp: usize,
        a: &[i32],
        b: &[i32],
        acc: &mut [i32],
        load: bool,
        out: Option<OutTile<'_>>,
    ) {
        assert!(a.len() >= kp * MR && b.len() >= kp * NR && acc.len() >= MR * NR);
        // SAFETY: the assert above bounds every pointer below: `a` is read at [0, kp·MR),
        // `b` at [0, kp·NR), `acc` (in `start`/`finish`) at [0, MR·NR). All loads are
        // unaligned.
        unsafe {
            let mut c = start::<MR>(acc, load);
            let mut ap = a.as_ptr();
            let mut bp = b.as_ptr() as *const __m256i;
            for _ in 0..kp {
                let b0 = _mm256_loadu_si256(bp);
                let b1 = _mm256_loadu_si256(bp.add(1));
                for (r, row) in c.iter_mut().enumerate() {
                    let av = _mm256_set1_epi32(*ap.add(r));
                    row[0] = _mm256_add_epi32(row[0], _mm256_madd_epi16(av, b0));
                    row[1] = _mm256_add_epi32(row[1], _mm256_madd_epi16(av, b1));
                }
                ap = ap.add(MR);
                bp = bp.add(2);
            }
            finish(&c, acc, out);
        }
    }

    /// AVX2 quad micro-kernel (see `MicroFn`, `kq` even): per two quads and row, two
    /// `vpmaddubsw` (u8 activations × i8 weights, i16 sums of two products), one `vpaddw`,
    /// one `vpmaddwd` by ones to widen to i32 and one `vpaddd`: three multiply-pipe µops per
    /// 64 multiply-adds instead of four. Exact because the packed weights keep every i16
    /// lane within ±255·128 (see `PackedQWeights::pack_quads`).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA. (Slice lengths are checked here.)
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn micro_quads(
        kq: usize,
        a: &[i32],
        b: &[i32],
        acc: &mut [i32],
        load: bool,
        out: Option<OutTile<'_>>,
    ) {
        assert!(kq.is_multiple_of(2));
        assert!(a.len() >= kq * QR && b.len() >= kq * NR && acc.len() >= QR * NR);
        // SAFETY: the asserts above bound every pointer below: `a` is read at [0, kq·QR),
        // `b` at [0, kq·NR), `acc` (in `start`/`finish`) at [0, QR·NR). All loads are
        // unaligned.
        unsafe {
            let mut c = start::<QR>(acc, load);
            let ones = _mm256_set1_epi16(1);
            let mut ap = a.as_ptr();
            let mut bp = b.as_ptr() as *const __m256i;
            for _ in 0..kq / 2 {
                // Row by row, the B vectors loaded where they are used (volatile reads, so
                // the compiler neither keeps all four in registers nor spills accumulators):
                // 8 accumulators, two broadcasts, two products and `ones` fit the 16 ymm.
                for (r, row) in c.iter_mut().enumerate() {
                    let a0 = _mm256_set1_epi32(*ap.add(r));
                    let a1 = _mm256_set1_epi32(*ap.add(QR + r));
                    for (h, acc) in row.iter_mut().enumerate() {
                        let s = _mm256_add_epi16(
                            _mm256_maddubs_epi16(a0, load_volatile(bp.add(h))),
                            _mm256_maddubs_epi16(a1, load_volatile(bp.add(2 + h))),
                        );
                        *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(s, ones));
                    }
                }
                ap = ap.add(2 * QR);
                bp = bp.add(4);
            }
            finish(&c, acc, out);
        }
    }

    /// AVX2 outlier products (see `OutlierFn`), eight row tiles at a time: per outlier, the
    /// 32 rows' codes of its k are picked out of their quads with `vpshufb`, multiplied by
    /// the weight with `vpmaddwd` (code and weight both fit i16, the other halves are 0) and
    /// summed per lane in registers; the lane sums are then transposed into the row-major
    /// tiles.
    ///
    /// # Safety
    /// The CPU must support AVX2. (Lengths are checked here.)
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn outlier_tile(
        outl: super::OutlierPanel<'_>,
        apack: &[i32],
        units: usize,
        tiles: usize,
        corr: &mut [i32],
        stride: usize,
    ) {
        /// Row tiles per pass (two per vector).
        const G: usize = 8;
        if tiles == 0 || units == 0 {
            return;
        }
        assert!(apack.len() >= tiles * units * QR);
        assert!(corr.len() >= (tiles - 1) * stride + QR * NR);
        // The last quad of a tile panel: every load offset is clamped to it, so a bad `k`
        // cannot read outside the panel.
        let last = (units - 1) * QR;
        // Byte j of every i32 lane moved to the lane's low byte, the rest zeroed.
        let sel: [__m256i; 4] = std::array::from_fn(|j| {
            let j = j as i8;
            let z = -1i8;
            _mm256_setr_epi8(
                j,
                z,
                z,
                z,
                4 + j,
                z,
                z,
                z,
                8 + j,
                z,
                z,
                z,
                12 + j,
                z,
                z,
                z,
                j,
                z,
                z,
                z,
                4 + j,
                z,
                z,
                z,
                8 + j,
                z,
                z,
                z,
                12 + j,
                z,
                z,
                z,
            )
        });
        for t in (0..tiles).step_by(G) {
            // G tiles at a time (the last one repeated past the end).
            let p: [&[i32]; G] = std::array::from_fn(|i| {
                let ti = (t + i).min(tiles - 1);
                &apack[ti * units * QR..(ti + 1) * units * QR]
            });
            // sums[lane][h]: lanes 0–3 rows of tile 2h, lanes 4–7 rows of tile 2h + 1.
            let sums: [[__m256i; G / 2]; NR] = std::array::from_fn(|lane| {
                let mut s = [_mm256_setzero_si256(); G / 2];
                for o in outl.lane(lane) {
                    let k = o.k as usize;
                    let at = ((k / 4) * QR).min(last);
                    let d = _mm256_set1_epi32(o.dpair);
                    let m = sel[k % 4];
                    for (h, acc) in s.iter_mut().enumerate() {
                        // SAFETY: `at + 4 <= units·QR`, the length of every panel in `p`.
                        let q = unsafe {
                            let ld = |i: usize| _mm_loadu_si128(p[i].as_ptr().add(at) as *const _);
                            _mm256_inserti128_si256::<1>(
                                _mm256_castsi128_si256(ld(2 * h)),
                                ld(2 * h + 1),
                            )
                        };
                        *acc =
                            _mm256_add_epi32(*acc, _mm256_madd_epi16(_mm256_shuffle_epi8(q, m), d));
                    }
                }
                s
            });
            // Transpose 8 × 8 blocks (8 lanes × 8 rows of two tiles) into the tiles.
            #[allow(clippy::needless_range_loop)]
            for h in 0..G / 2 {
                for lb in 0..NR / 8 {
                    let w = transpose8(std::array::from_fn(|i| sums[8 * lb + i][h]));
                    for (r, wr) in w.iter().enumerate() {
                        let ti = t + 2 * h + r / QR;
                        if ti < tiles {
                            let at = ti * stride + (r % QR) * NR + 8 * lb;
                            let dst = &mut corr[at..at + 8];
                            // SAFETY: `dst` holds 8 i32.
                            unsafe { _mm256_storeu_si256(dst.as_mut_ptr() as *mut __m256i, *wr) };
                        }
                    }
                }
            }
        }
    }

    /// Transposes an 8 × 8 block of i32: lane `j` of result `r` is lane `r` of `v[j]`.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn transpose8(v: [__m256i; 8]) -> [__m256i; 8] {
        let lo = transpose4(v[0], v[1], v[2], v[3]);
        let hi = transpose4(v[4], v[5], v[6], v[7]);
        // lo[j] = [lane j of v0–v3 | lane j + 4 of v0–v3], hi likewise for v4–v7.
        std::array::from_fn(|r| {
            let (a, b) = (lo[r % 4], hi[r % 4]);
            if r < 4 {
                _mm256_permute2x128_si256::<0x20>(a, b)
            } else {
                _mm256_permute2x128_si256::<0x31>(a, b)
            }
        })
    }

    /// An unaligned 32-byte vector, for [`load_volatile`].
    #[derive(Clone, Copy)]
    #[repr(C, packed)]
    struct Unaligned(__m256i);

    /// An unaligned load the compiler keeps at its place (neither hoisted nor merged).
    ///
    /// # Safety
    /// `p` must be valid for reading 32 bytes (any alignment).
    #[inline(always)]
    unsafe fn load_volatile(p: *const __m256i) -> __m256i {
        // SAFETY: the caller guarantees 32 readable bytes; `Unaligned` has alignment 1.
        unsafe { (p as *const Unaligned).read_volatile().0 }
    }

    /// The initial accumulators of an R-row tile: zero, or (with `load`) the tile in `acc`.
    ///
    /// # Safety
    /// The CPU must support AVX2. (The length of `acc` is checked here.)
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn start<const R: usize>(acc: &[i32], load: bool) -> [[__m256i; 2]; R] {
        let mut c = [[_mm256_setzero_si256(); 2]; R];
        if load {
            assert!(acc.len() >= R * NR);
            for (r, row) in c.iter_mut().enumerate() {
                // SAFETY: r·NR + 16 ≤ R·NR ≤ acc.len() (asserted).
                unsafe {
                    let p = acc.as_ptr().add(r * NR) as *const __m256i;
                    row[0] = _mm256_loadu_si256(p);
                    row[1] = _mm256_loadu_si256(p.add(1));
                }
            }
        }
        c
    }

    /// Stores the accumulators to `acc` (no output tile) or through the output stage.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA. (Slice lengths are checked here.)
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn finish<const R: usize>(
        c: &[[__m256i; 2]; R],
        acc: &mut [i32],
        out: Option<OutTile<'_>>,
    ) {
        assert!(acc.len() >= R * NR);
        if let Some(o) = &out {
            assert!(o.offsets.len() >= NR && o.mults.len() >= NR);
            assert!(o.y.len() >= (R - 1) * o.ldy + NR);
        }
        // SAFETY: the asserts above bound the pointers: `acc` is written at [0, R·NR),
        // `y` at r·ldy + [0, NR) for r < R, the stage vectors read at [0, NR).
        unsafe {
            match out {
                None => {
                    for (r, row) in c.iter().enumerate() {
                        let p = acc.as_mut_ptr().add(r * NR) as *mut __m256i;
                        _mm256_storeu_si256(p, row[0]);
                        _mm256_storeu_si256(p.add(1), row[1]);
                    }
                }
                Some(o) => {
                    let off0 = _mm256_loadu_si256(o.offsets.as_ptr() as *const __m256i);
                    let off1 = _mm256_loadu_si256(o.offsets.as_ptr().add(8) as *const __m256i);
                    let m0 = _mm256_loadu_ps(o.mults.as_ptr());
                    let m1 = _mm256_loadu_ps(o.mults.as_ptr().add(8));
                    let zp = _mm256_set1_epi32(o.zero_point);
                    let y = o.y.as_mut_ptr();
                    if o.finite {
                        let lo8 = _mm_set1_epi8(o.lo as u8 as i8);
                        for (r, row) in c.iter().enumerate() {
                            let bytes = requant16_finite::<true>(
                                row[0], row[1], off0, off1, m0, m1, zp, lo8,
                            );
                            _mm_storeu_si128(y.add(r * o.ldy) as *mut __m128i, bytes);
                        }
                    } else {
                        let lo = _mm256_set1_epi32(o.lo);
                        for (r, row) in c.iter().enumerate() {
                            let v0 = requant8(row[0], off0, m0, zp, lo);
                            let v1 = requant8(row[1], off1, m1, zp, lo);
                            let bytes = narrow16(v0, v1);
                            _mm_storeu_si128(y.add(r * o.ldy) as *mut __m128i, bytes);
                        }
                    }
                }
            }
        }
    }

    /// AVX2 pair panel packing ([`MR`] rows): 16 codes of each row at a time,
    /// zero-extended to i16 pairs and transposed (rows 0–3 with a 4 × 4 transpose of i32
    /// lanes, rows 4–5 interleaved).
    ///
    /// # Safety
    /// The CPU must support AVX2. (Lengths are checked here.)
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn pack(rows: &[&[u8]], k: usize, dst: &mut [i32]) {
        let kpairs = k.div_ceil(2);
        assert!(rows.len() == MR && rows.iter().all(|r| r.len() >= k));
        assert!(dst.len() >= kpairs * MR);
        let groups = k / 16;
        // SAFETY: row loads read bytes [16g, 16g + 16) ⊂ [0, k); stores write pairs
        // p = 8g..8g+8 < kpairs at dst[p·MR..p·MR + MR] (xmm at +0, 8 bytes at +4).
        unsafe {
            let d = dst.as_mut_ptr();
            for g in 0..groups {
                let ld = |i: usize| {
                    _mm256_cvtepu8_epi16(_mm_loadu_si128(
                        rows[i].as_ptr().add(16 * g) as *const __m128i
                    ))
                };
                let (r0, r1, r2, r3, r4, r5) = (ld(0), ld(1), ld(2), ld(3), ld(4), ld(5));
                let u = transpose4(r0, r1, r2, r3);
                // v: [pairs 0, 1 | 4, 5] of rows 4-5, w: [2, 3 | 6, 7].
                let v = _mm256_unpacklo_epi32(r4, r5);
                let w = _mm256_unpackhi_epi32(r4, r5);
                let p0 = 8 * g;
                for (j, uj) in u.iter().enumerate() {
                    _mm_storeu_si128(
                        d.add((p0 + j) * MR) as *mut __m128i,
                        _mm256_castsi256_si128(*uj),
                    );
                    _mm_storeu_si128(
                        d.add((p0 + j + 4) * MR) as *mut __m128i,
                        _mm256_extracti128_si256::<1>(*uj),
                    );
                }
                for (half, x) in [
                    (0, _mm256_castsi256_si128(v)),
                    (4, _mm256_extracti128_si256::<1>(v)),
                    (2, _mm256_castsi256_si128(w)),
                    (6, _mm256_extracti128_si256::<1>(w)),
                ] {
                    let lo = _mm_cvtsi128_si64(x);
                    let hi = _mm_extract_epi64::<1>(x);
                    (d.add((p0 + half) * MR + 4) as *mut i64).write_unaligned(lo);
                    (d.add((p0 + half + 1) * MR + 4) as *mut i64).write_unaligned(hi);
                }
            }
        }
        for (i, row) in rows.iter().enumerate() {
            super::pack_row_scalar(&row[16 * groups..k], i, &mut dst[8 * groups * MR..]);
        }
    }

    /// AVX2 quad panel packing ([`QR`] rows): 32 codes (8 quads) of each row at a time,
    /// transposed as i32 lanes; the quads past `k` up to an even count are zeroed.
    ///
    /// # Safety
    /// The CPU must support AVX2. (Lengths are checked here.)
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn pack_quads(rows: &[&[u8]], k: usize, dst: &mut [i32]) {
        let kq = k.div_ceil(8) * 2;
        assert!(rows.len() == QR && rows.iter().all(|r| r.len() >= k));
        assert!(dst.len() >= kq * QR);
        let groups = k / 32;
        // SAFETY: row loads read bytes [32g, 32g + 32) ⊂ [0, k); stores write quads
        // q = 8g..8g+8 ≤ kq at dst[q·QR..q·QR + QR].
        unsafe {
            let d = dst.as_mut_ptr();
            for g in 0..groups {
                let ld = |i: usize| _mm256_loadu_si256(rows[i].as_ptr().add(32 * g) as *const _);
                let u = transpose4(ld(0), ld(1), ld(2), ld(3));
                let q0 = 8 * g;
                for (j, uj) in u.iter().enumerate() {
                    _mm_storeu_si128(
                        d.add((q0 + j) * QR) as *mut __m128i,
                        _mm256_castsi256_si128(*uj),
                    );
                    _mm_storeu_si128(
                        d.add((q0 + j + 4) * QR) as *mut __m128i,
                        _mm256_extracti128_si256::<1>(*uj),
                    );
                }
            }
        }
        let rest = &mut dst[8 * groups * QR..kq * QR];
        rest.fill(0);
        for (i, row) in rows.iter().enumerate() {
            super::pack_quad_row_scalar(&row[32 * groups..k], i, rest);
        }
    }

    /// Transposes the i32 lanes of four rows: result `j` holds lane `j` of rows 0–3 in its
    /// low half and lane `j + 4` in its high half.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn transpose4(r0: __m256i, r1: __m256i, r2: __m256i, r3: __m256i) -> [__m256i; 4] {
        let t0 = _mm256_unpacklo_epi32(r0, r1);
        let t1 = _mm256_unpackhi_epi32(r0, r1);
        let t2 = _mm256_unpacklo_epi32(r2, r3);
        let t3 = _mm256_unpackhi_epi32(r2, r3);
        [
            _mm256_unpacklo_epi64(t0, t2),
            _mm256_unpackhi_epi64(t0, t2),
            _mm256_unpacklo_epi64(t1, t3),
            _mm256_unpackhi_epi64(t1, t3),
        ]
    }
}

#[cfg(test)]
mod tests {
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
