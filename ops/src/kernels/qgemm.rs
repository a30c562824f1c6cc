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
//! [`requantize`](crate::int8::requant::requantize). The activations are used as they are
//! (zero-extended to i16) and the zero-point correction is folded into a per-channel offset
//! ([`QEpilogue`]); im2col cells that stand for padding therefore take the value `z_x`.
//!
//! Arithmetic: weights are centred once, `(w − z_w) ∈ [−255, 255]`, and stored as i16 pairs
//! of consecutive k; activations are packed per call as i16 pairs. The AVX2 kernel multiplies
//! them with `vpmaddwd` (two i16 products summed into an i32: at most 2·255·255, exact) and
//! accumulates with `vpaddd` (wrapping, like the reference). `vpmaddubsw` is not used: its
//! saturating int16 sums would differ from the reference (facts §6.9).
//!
//! Blocking: a register tile of [`MR`] rows × [`NR`] channels (12 ymm accumulators), K cut
//! into equal blocks of at most 512 (partial sums kept in an i32 tile buffer between
//! blocks), channels in blocks of 256, rows in tiles of up to 96 (fewer for long K, so the
//! packed A tile stays in L2). Work is split with rayon over row tiles, or over channel
//! blocks when there are too few rows. Every output is an exact integer sum, so results do
//! not depend on the tiling, the kernel or the thread count.
//!
//! The kernel set (AVX2 or portable) is chosen once from [`Isa::current`] and kept in a
//! table of function pointers.

use std::cell::RefCell;
use std::sync::OnceLock;

use rayon::prelude::*;

use super::isa::Isa;
use crate::int8::requant::requantize;
use crate::{OpError, OpResult};

/// Rows of the register tile (output pixels / FC rows).
pub const MR: usize = 6;
/// Output channels of the register tile.
pub const NR: usize = 16;
/// Largest K block, in pairs of k (512 values of k).
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

/// Weights `[N, K]` centred by their zero points and packed for the GEMM: panels of [`NR`]
/// channels, within a panel `[k pair][channel]` of i16 pairs (zero padded), plus the
/// per-channel sums `Σ_k (w − z_w)` for the zero-point correction.
#[derive(Clone, PartialEq)]
pub struct PackedQWeights {
    n: usize,
    k: usize,
    kpairs: usize,
    data: Vec<i32>,
    col_sums: Vec<i32>,
}

impl std::fmt::Debug for PackedQWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedQWeights {{ n: {}, k: {} }}", self.n, self.k)
    }
}

impl PackedQWeights {
    /// Packs `codes` (`[n, k]` row-major uint8) with one zero point per row (in [0, 255]).
    pub fn pack(codes: &[u8], n: usize, k: usize, zero_points: &[i32]) -> OpResult<Self> {
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
        Ok(PackedQWeights {
            n,
            k,
            kpairs,
            data,
            col_sums,
        })
    }

    /// Output channels (N).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Reduction length (K).
    pub fn k(&self) -> usize {
        self.k
    }

    /// `Σ_k (w[n, k] − z_w[n])` for every channel (wrapping i32).
    pub fn col_sums(&self) -> &[i32] {
        &self.col_sums
    }

    /// Rows `pc..pc+kc` (in k pairs) of the panel holding channel `col` (`col % NR == 0`).
    fn block(&self, col: usize, pc: usize, kc: usize) -> &[i32] {
        let s = ((col / NR) * self.kpairs + pc) * NR;
        &self.data[s..s + kc * NR]
    }
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

/// Micro-kernel: `kp` k pairs of an MR-row A panel (`[p][MR]`) times an NR-channel B panel
/// (`[p][NR]`), accumulators starting at 0 or (with `load`) at `acc`; the result goes back to
/// `acc` (MR × NR, stride NR) or, with an output tile, through the output stage.
type MicroFn = unsafe fn(usize, &[i32], &[i32], &mut [i32], bool, Option<OutTile<'_>>);

/// Packs MR full rows (`k` codes each) into an A panel `[kpairs][MR]` of i16 pairs.
type PackFn = unsafe fn(&[&[u8]; MR], usize, &mut [i32]);

/// The kernels of one instruction set.
struct Kernels {
    micro: MicroFn,
    pack: PackFn,
}

static SCALAR: Kernels = Kernels {
    micro: micro_scalar,
    pack: pack_scalar,
};

#[cfg(target_arch = "x86_64")]
static AVX2: Kernels = Kernels {
    micro: avx2::micro,
    pack: avx2::pack,
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
    let row_bytes = w.kpairs.max(1) * 4;
    let mc_cap = (A_TILE_BUDGET / row_bytes / MR * MR).clamp(4 * MR, MC_MAX);
    // Row tiles of about equal size, their number a multiple of the thread count (at
    // least two per thread when there are several threads).
    let per_thread = m
        .div_ceil(threads * mc_cap)
        .max(if threads > 1 { 2 } else { 1 });
    let tasks = threads * per_thread;
    let mc = (m.div_ceil(tasks).div_ceil(MR) * MR).min(mc_cap);
    if threads == 1 || mc >= 4 * MR || n <= NR {
        // Row tiles, each writing its own rows of Y.
        y.par_chunks_mut(mc * ldy)
            .enumerate()
            .for_each(|(t, chunk)| {
                let r0 = t * mc;
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

/// Per-thread scratch: packed A tile, partial sums, gathered rows.
#[derive(Default)]
struct Scratch {
    apack: Vec<i32>,
    partial: Vec<i32>,
    gather: Vec<u8>,
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
    debug_assert_eq!(c0 % NR, 0);
    // Taken out of the thread-local for the call (a nested call would allocate its own).
    let mut s = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    let kpairs = w.kpairs;
    let subtiles = rows.div_ceil(MR);
    s.apack.resize(subtiles * kpairs * MR, 0);
    s.gather.resize(MR * (2 * kpairs).max(1), 0);
    for t in 0..subtiles {
        let dst = &mut s.apack[t * kpairs * MR..(t + 1) * kpairs * MR];
        pack_rows(
            kern,
            a,
            r0 + t * MR,
            MR.min(rows - t * MR),
            &mut s.gather,
            dst,
        );
    }
    let kblocks = kpairs.div_ceil(KCP_MAX).max(1);
    let kstep = kpairs.div_ceil(kblocks);
    let mut edge = [0u8; MR * NR];
    // Accumulator tile for single-block K (never read: the kernel starts from 0 there).
    let mut local = [0i32; MR * NR];
    for nb in (c0..c0 + cols).step_by(NC) {
        let nbw = NC.min(c0 + cols - nb);
        let npan = nbw.div_ceil(NR);
        if kblocks > 1 {
            s.partial.resize(subtiles * npan * MR * NR, 0);
        }
        for kb in 0..kblocks {
            let pc = kb * kstep;
            let kc = kstep.min(kpairs - pc);
            let (first, last) = (kb == 0, kb + 1 == kblocks);
            for jr in 0..npan {
                let col = nb + jr * NR;
                let bp = w.block(col, pc, kc);
                let ncols = NR.min(c0 + cols - col);
                for t in 0..subtiles {
                    let ap = &s.apack[t * kpairs * MR + pc * MR..t * kpairs * MR + (pc + kc) * MR];
                    let acc: &mut [i32] = if kblocks > 1 {
                        let at = (t * npan + jr) * MR * NR;
                        &mut s.partial[at..at + MR * NR]
                    } else {
                        &mut local
                    };
                    if !last {
                        // SAFETY: `kern` holds AVX2 kernels only on CPUs with AVX2 (see
                        // `kernels`); slice lengths are checked inside the kernel.
                        unsafe { (kern.micro)(kc, ap, bp, acc, !first, None) };
                        continue;
                    }
                    let mrows = MR.min(rows - t * MR);
                    let oc = ocol + (col - c0);
                    if mrows == MR && ncols == NR {
                        let at = t * MR * ldo + oc;
                        let y = &mut out[at..at + (MR - 1) * ldo + NR];
                        // SAFETY: as above.
                        unsafe {
                            (kern.micro)(kc, ap, bp, acc, !first, Some(out_tile(ep, col, y, ldo)))
                        };
                    } else {
                        let tile = out_tile(ep, col, &mut edge, NR);
                        // SAFETY: as above.
                        unsafe { (kern.micro)(kc, ap, bp, acc, !first, Some(tile)) };
                        for r in 0..mrows {
                            let at = (t * MR + r) * ldo + oc;
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

/// Packs rows `r0..r0+rows` (`rows <= MR`) of A into one panel `[kpairs][MR]`; rows past
/// `rows` are zero.
fn pack_rows<L: QLhs + ?Sized>(
    kern: &Kernels,
    a: &L,
    r0: usize,
    rows: usize,
    gather: &mut [u8],
    dst: &mut [i32],
) {
    let k = a.depth();
    let step = gather.len() / MR;
    let mut chunks = gather.chunks_exact_mut(step);
    let bufs: [&mut [u8]; MR] = std::array::from_fn(|_| chunks.next().unwrap_or_default());
    if rows == MR {
        let mut i = 0;
        let rs: [&[u8]; MR] = bufs.map(|b| {
            let r = a.row(r0 + i, b);
            i += 1;
            r
        });
        // SAFETY: `kern` holds AVX2 kernels only on CPUs with AVX2; the kernel checks that
        // every row has `k` codes and `dst` holds `k.div_ceil(2)·MR` values.
        unsafe { (kern.pack)(&rs, k, dst) };
    } else {
        dst.fill(0);
        for (i, b) in bufs.into_iter().take(rows).enumerate() {
            let row = a.row(r0 + i, b);
            pack_row_scalar(&row[..k], i, dst);
        }
    }
}

/// Writes row `i` of a panel from its codes.
fn pack_row_scalar(row: &[u8], i: usize, dst: &mut [i32]) {
    for (p, two) in row.chunks(2).enumerate() {
        dst[p * MR + i] = pair(i32::from(two[0]), two.get(1).map_or(0, |&v| i32::from(v)));
    }
}

/// Portable panel packing.
///
/// # Safety
/// None required (safe code; `unsafe` only to fit the kernel table).
unsafe fn pack_scalar(rows: &[&[u8]; MR], k: usize, dst: &mut [i32]) {
    for (i, row) in rows.iter().enumerate() {
        pack_row_scalar(&row[..k], i, dst);
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
    let mut t = [[0i32; NR]; MR];
    if load {
        for (r, row) in t.iter_mut().enumerate() {
            row.copy_from_slice(&acc[r * NR..(r + 1) * NR]);
        }
    }
    for (ap, bp) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(kp) {
        let bs: [(i32, i32); NR] = std::array::from_fn(|c| unpair(bp[c]));
        for (row, &av) in t.iter_mut().zip(ap) {
            let (alo, ahi) = unpair(av);
            for (x, &(blo, bhi)) in row.iter_mut().zip(&bs) {
                *x = x.wrapping_add(alo * blo + ahi * bhi);
            }
        }
    }
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

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    //! AVX2 kernels (also used by the depthwise kernel for the output stage).
    use super::{OutTile, MR, NR};
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
        if let Some(o) = &out {
            assert!(o.offsets.len() >= NR && o.mults.len() >= NR);
            assert!(o.y.len() >= (MR - 1) * o.ldy + NR);
        }
        // SAFETY: the asserts above bound every pointer below: `a` is read at [0, kp·MR),
        // `b` at [0, kp·NR), `acc` at [0, MR·NR), `y` at r·ldy + [0, NR) for r < MR, the
        // stage vectors at [0, NR). All loads and stores are unaligned.
        unsafe {
            let mut c = [[_mm256_setzero_si256(); 2]; MR];
            if load {
                for (r, row) in c.iter_mut().enumerate() {
                    let p = acc.as_ptr().add(r * NR) as *const __m256i;
                    row[0] = _mm256_loadu_si256(p);
                    row[1] = _mm256_loadu_si256(p.add(1));
                }
            }
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

    /// AVX2 panel packing: 16 codes of each row at a time, zero-extended to i16 pairs and
    /// transposed (rows 0–3 with a 4 × 4 transpose of i32 lanes, rows 4–5 interleaved).
    ///
    /// # Safety
    /// The CPU must support AVX2. (Lengths are checked here.)
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn pack(rows: &[&[u8]; MR], k: usize, dst: &mut [i32]) {
        let kpairs = k.div_ceil(2);
        assert!(rows.iter().all(|r| r.len() >= k) && dst.len() >= kpairs * MR);
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
                let t0 = _mm256_unpacklo_epi32(r0, r1);
                let t1 = _mm256_unpackhi_epi32(r0, r1);
                let t2 = _mm256_unpacklo_epi32(r2, r3);
                let t3 = _mm256_unpackhi_epi32(r2, r3);
                // u_j = [pair j of rows 0-3 | pair j + 4 of rows 0-3].
                let u = [
                    _mm256_unpacklo_epi64(t0, t2),
                    _mm256_unpackhi_epi64(t0, t2),
                    _mm256_unpacklo_epi64(t1, t3),
                    _mm256_unpackhi_epi64(t1, t3),
                ];
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
            let tail = &row[16 * groups..k];
            super::pack_row_scalar(tail, i, &mut dst[8 * groups * MR..]);
        }
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
