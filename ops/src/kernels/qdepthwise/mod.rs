//! Exact uint8 depthwise convolution (NHWC, group == C == M) with the fused DNNLOWP output
//! stage: AVX-512, AVX2 and portable.
//!
//! For output pixel `(n, oy, ox)` and channel `c`, with the `kH·kW` taps `t` of the window:
//! `acc = Σ_t x[t, c] · (w[c, t] − z_w[c])` (int32, wrapping), where a tap that falls into
//! the padding reads the input zero point `z_x`, then the [`QEpilogue`] adds
//! `b[c] − z_x · Σ_t (w[c, t] − z_w[c])` and requantizes. That is `Σ_t (x − z_x)(w − z_w) + b`
//! of the scalar reference exactly (modulo 2^32).
//!
//! The kernel is chosen per call from `Isa::capped(isa)`:
//!
//! - **AVX-512** (`avx512` and above, [`avx512`]): 64 channels per zmm. Output rows are
//!   taken in groups of `R` (2 for 3×3 stride 1: the 4 input rows they read form one unit)
//!   whose input rows are grouped in *units* of 4 rows (or 2). For every input column of a
//!   unit the rows' codes are transposed once into tap quads (u8 ×4 per i32 lane for
//!   `vpdpbusd`, levels with AVX512-VNNI and centred weights that fit i8 — the zero point
//!   128 of c2q's quantizer) or tap pairs (i16 ×2 for `vpdpwssd` / `vpmaddwd`, any
//!   weights), kept in a per-thread scratch with the left and right padding columns
//!   filled with `z_x`. Every output pixel then needs, per used unit and kernel column, one
//!   multiply-add per 16 channels, with no bounds checks; 4 pixels per step share the
//!   weights (and, for 3×3, the columns they read). Weights are arranged per geometry on
//!   first use and kept with the packed weights. Channels past the last multiple of 64 put
//!   2 or 4 pixels into one zmm (32 or 16 channels each) or use masked loads and stores.
//!   The output stage converts, scales, rounds and narrows 64 lanes with `vpackssdw` /
//!   `vpaddsw` / `vpackuswb` (saturation gives the clamps).
//! - **AVX2** ([`avx2`]): 16 channels at a time, one pixel at a time; the codes of two taps
//!   are zero-extended to i16 and interleaved (`vpunpck[lh]wd`), so one `vpmaddwd` adds both
//!   taps' products per channel. The interleave puts channels in the order `[0–3, 8–11]` and
//!   `[4–7, 12–15]`; weights and the output-stage vectors are stored in that order, and
//!   `vpackssdw` restores the natural order. Channels past the last multiple of 16 use the
//!   portable code.
//! - **portable** ([`generic`]): taps outer, 64 channels inner.
//!
//! Rows of the output (row groups for AVX-512) are split over rayon; every output is an
//! exact integer sum, so results do not depend on threads or on the kernel.

use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use super::isa::Isa;
use super::qgemm::QEpilogue;
use crate::{OpError, OpResult};

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod generic;

/// Channels per AVX2 vector block.
const CB: usize = 16;

/// Lane `l` of a block's two AVX2 accumulators holds channel `PERM[l]` of the block.
const PERM: [usize; CB] = [0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15];

/// Channels per AVX-512 block.
const ZB: usize = 64;

/// Depthwise weights `[C, taps]` centred by their zero points: tap-major `[taps][C]`
/// (portable path), for every full block of 16 channels as i16 pairs of consecutive taps in
/// the AVX2 lane order (`[block][tap pair][16]`), the per-channel sums `Σ_t (w − z_w)` and
/// `Σ_t |w − z_w|`, and the AVX-512 weight tables built on first use for each geometry.
pub struct PackedDepthwise {
    c: usize,
    taps: usize,
    by_tap: Vec<i32>,
    blocks: Vec<i32>,
    col_sums: Vec<i32>,
    abs_sums: Vec<u64>,
    fits_i8: bool,
    tables: Mutex<Vec<Arc<Tables>>>,
}

impl Clone for PackedDepthwise {
    fn clone(&self) -> Self {
        PackedDepthwise {
            c: self.c,
            taps: self.taps,
            by_tap: self.by_tap.clone(),
            blocks: self.blocks.clone(),
            col_sums: self.col_sums.clone(),
            abs_sums: self.abs_sums.clone(),
            fits_i8: self.fits_i8,
            tables: Mutex::new(self.cached_tables()),
        }
    }
}

impl PartialEq for PackedDepthwise {
    /// Equal weights (the table cache is derived data and not compared).
    fn eq(&self, other: &Self) -> bool {
        self.c == other.c && self.taps == other.taps && self.by_tap == other.by_tap
    }
}

impl std::fmt::Debug for PackedDepthwise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PackedDepthwise {{ c: {}, taps: {} }}",
            self.c, self.taps
        )
    }
}

impl PackedDepthwise {
    /// Packs `codes` (`[c, taps]` row-major, i.e. an NHWC filter `[C, kH, kW, 1]`) with one
    /// zero point per channel (in [0, 255]).
    pub fn pack(codes: &[u8], c: usize, taps: usize, zero_points: &[i32]) -> OpResult<Self> {
        if c.checked_mul(taps) != Some(codes.len()) || taps == 0 {
            return Err(OpError::Shape(format!(
                "depthwise weights: {} codes do not form [{c}, {taps}] with taps > 0",
                codes.len()
            )));
        }
        if zero_points.len() != c {
            return Err(OpError::Shape(format!(
                "depthwise weights: {} zero points for {c} channels",
                zero_points.len()
            )));
        }
        if let Some(z) = zero_points.iter().find(|z| !(0..=255).contains(*z)) {
            return Err(OpError::DType(format!(
                "depthwise weights: zero point {z} is outside [0, 255]"
            )));
        }
        let centred: Vec<i32> = codes
            .iter()
            .enumerate()
            .map(|(i, &q)| i32::from(q) - zero_points[i / taps])
            .collect();
        let col_sums = centred
            .chunks(taps)
            .map(|r| r.iter().fold(0i32, |s, &v| s.wrapping_add(v)))
            .collect();
        let abs_sums = centred
            .chunks(taps)
            .map(|r| r.iter().map(|v| u64::from(v.unsigned_abs())).sum())
            .collect();
        let fits_i8 = centred.iter().all(|v| i8::try_from(*v).is_ok());
        let npairs = taps.div_ceil(2);
        let nblocks = c / CB;
        let mut blocks = vec![0i32; nblocks * npairs * CB];
        for b in 0..nblocks {
            for q in 0..npairs {
                for (l, &p) in PERM.iter().enumerate() {
                    let row = &centred[(b * CB + p) * taps..(b * CB + p + 1) * taps];
                    let lo = row[2 * q];
                    let hi = row.get(2 * q + 1).copied().unwrap_or(0);
                    blocks[(b * npairs + q) * CB + l] =
                        (u32::from(lo as u16) | (u32::from(hi as u16) << 16)) as i32;
                }
            }
        }
        let mut by_tap = vec![0i32; c * taps];
        for (i, &v) in centred.iter().enumerate() {
            by_tap[(i % taps) * c + i / taps] = v;
        }
        Ok(PackedDepthwise {
            c,
            taps,
            by_tap,
            blocks,
            col_sums,
            abs_sums,
            fits_i8,
            tables: Mutex::new(Vec::new()),
        })
    }

    /// Channels.
    pub fn channels(&self) -> usize {
        self.c
    }

    /// Taps per channel (`kH·kW`).
    pub fn taps(&self) -> usize {
        self.taps
    }

    /// `Σ_t (w[c, t] − z_w[c])` for every channel (wrapping i32).
    pub fn col_sums(&self) -> &[i32] {
        &self.col_sums
    }

    /// True when every centred weight `w − z_w` fits i8 (then the AVX512-VNNI kernel
    /// multiplies u8 activations by i8 weights with `vpdpbusd`).
    pub fn fits_i8(&self) -> bool {
        self.fits_i8
    }

    /// The AVX-512 tables built so far.
    fn cached_tables(&self) -> Vec<Arc<Tables>> {
        self.tables
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The AVX-512 weight table for `key`, built on first use and kept (a layer always calls
    /// with the same geometry, so this is one build per layer and encoding).
    fn tables(&self, key: TableKey) -> Arc<Tables> {
        let mut cache = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = cache.iter().find(|t| t.key == key) {
            return Arc::clone(t);
        }
        let t = Arc::new(Tables::build(self, key));
        cache.push(Arc::clone(&t));
        t
    }
}

/// Geometry of an NHWC depthwise convolution (2-D).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DwShape {
    /// Batch size.
    pub n: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Channels (input = output).
    pub c: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Vertical stride.
    pub stride_h: usize,
    /// Horizontal stride.
    pub stride_w: usize,
    /// Vertical dilation.
    pub dil_h: usize,
    /// Horizontal dilation.
    pub dil_w: usize,
    /// Padding above.
    pub pad_t: usize,
    /// Padding on the left.
    pub pad_l: usize,
}

// ---------------------------------------------------------------------------------------
// AVX-512 layout: channel blocks, row groups and units, weight tables
// ---------------------------------------------------------------------------------------

/// One zmm register's worth of i32 lanes, 64-byte aligned.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct Z([i32; 16]);

/// One zmm register's worth of f32 lanes, 64-byte aligned.
#[derive(Clone, Copy, Default)]
#[repr(C, align(64))]
struct ZF([f32; 16]);

/// A block of up to 64 channels `base..base + nch` as the AVX-512 kernel lays it out: the
/// 128-bit lane `L` of a zmm holds channel group `L % lp` (16 channels) of pixel `L / lp`,
/// so one zmm carries `4 / lp` pixels. Dword `4L + i` of accumulator `k` (0..4) is channel
/// `base + 16·(L % lp) + 4k + i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Block {
    base: usize,
    nch: usize,
    lp: usize,
}

impl Block {
    /// Pixels per zmm.
    fn ppv(&self) -> usize {
        4 / self.lp
    }

    /// The channel of dword `d` (0..16) of accumulator `k`, if it exists.
    fn channel(&self, k: usize, d: usize) -> Option<usize> {
        let off = 16 * ((d / 4) % self.lp) + 4 * k + d % 4;
        (off < self.nch).then_some(self.base + off)
    }
}

/// The blocks of `c` channels: full blocks of 64, then the rest with 4 pixels per zmm (at
/// most 16 channels), 2 (at most 32) or 1 (masked).
fn blocks(c: usize) -> Vec<Block> {
    let mut v: Vec<Block> = (0..c / ZB)
        .map(|b| Block {
            base: b * ZB,
            nch: ZB,
            lp: 4,
        })
        .collect();
    let rest = c % ZB;
    if rest > 0 {
        let lp = match rest {
            1..=16 => 1,
            17..=32 => 2,
            _ => 4,
        };
        v.push(Block {
            base: c - rest,
            nch: rest,
            lp,
        });
    }
    v
}

/// How the AVX-512 kernel multiplies: 4 taps of u8 × i8 per i32 lane (`vpdpbusd`) or 2 taps
/// of i16 × i16 (`vpdpwssd` / `vpmaddwd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Enc {
    Quads,
    Pairs,
}

impl Enc {
    /// Input rows per unit (taps per i32 lane).
    fn unit(self) -> usize {
        match self {
            Enc::Quads => 4,
            Enc::Pairs => 2,
        }
    }
}

/// The row grouping of one geometry: output rows `R·g .. R·g + R` read the input rows
/// `(R·g·s_h − p_t) + uoff[i]`; rows `i` are taken `unit` at a time (slot `i % unit` of unit
/// `i / unit`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    /// Output rows per group.
    r: usize,
    /// Rows per unit.
    unit: usize,
    /// Distinct input row offsets of the group, ascending.
    uoff: Vec<usize>,
    /// `uoff.len()` rounded up to whole units, in units.
    nunits: usize,
    /// For each output row of the group: the units holding at least one of its taps.
    used: Vec<Vec<usize>>,
}

impl Plan {
    /// Input row offsets read by `r` output rows.
    fn offsets(kh: usize, sh: usize, dh: usize, r: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..r)
            .flat_map(|rr| (0..kh).map(move |ky| rr * sh + ky * dh))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The plan for kernel height `kh`, stride `sh`, dilation `dh ≥ 1`, `unit` rows per
    /// unit and `oh` output rows: the largest group (up to 4 rows, at most `oh`) whose rows
    /// need no more units than one output row alone.
    fn new(kh: usize, sh: usize, dh: usize, unit: usize, oh: usize) -> Plan {
        let alone = Plan::offsets(kh, sh, dh, 1).len().div_ceil(unit);
        let r = (1..=4.min(oh.max(1)))
            .filter(|&r| Plan::offsets(kh, sh, dh, r).len() <= alone * unit)
            .max()
            .unwrap_or(1);
        let uoff = Plan::offsets(kh, sh, dh, r);
        let nunits = uoff.len().div_ceil(unit);
        let used = (0..r)
            .map(|rr| {
                let mut u: Vec<usize> = (0..kh)
                    .map(|ky| {
                        let i = uoff.binary_search(&(rr * sh + ky * dh)).unwrap_or(0);
                        i / unit
                    })
                    .collect();
                u.dedup();
                u
            })
            .collect();
        Plan {
            r,
            unit,
            uoff,
            nunits,
            used,
        }
    }

    /// The kernel row `ky` whose tap for output row `rr` of the group reads row offset
    /// `uoff[i]`, if any.
    fn ky(&self, kh: usize, sh: usize, dh: usize, rr: usize, i: usize) -> Option<usize> {
        let d = self.uoff.get(i)?.checked_sub(rr * sh)?;
        (d % dh == 0 && d / dh < kh).then_some(d / dh)
    }
}

/// What the AVX-512 weight table depends on besides the weights (`rows`: the output
/// height, capped at 4, bounds the row group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TableKey {
    kh: usize,
    kw: usize,
    sh: usize,
    dh: usize,
    enc: Enc,
    rows: usize,
}

/// The AVX-512 weights of one geometry: for every block, output row of the group, unit,
/// kernel column and accumulator `k`, one zmm of i8 quads or i16 pairs (slot `s` holding
/// the weight of the tap that reads the unit's row `s`, 0 where there is none), in the
/// block's lane order.
struct Tables {
    key: TableKey,
    plan: Plan,
    blocks: Vec<Block>,
    w: Vec<Z>,
}

impl Tables {
    /// Zmm registers per block.
    fn per_block(&self) -> usize {
        self.plan.r * self.plan.nunits * self.key.kw * 4
    }

    fn build(pw: &PackedDepthwise, key: TableKey) -> Tables {
        let TableKey {
            kh,
            kw,
            sh,
            dh,
            enc,
            ..
        } = key;
        let plan = Plan::new(kh, sh, dh, enc.unit(), key.rows);
        let blocks = blocks(pw.c);
        let unit = plan.unit;
        let mut w = Vec::with_capacity(blocks.len() * plan.r * plan.nunits * kw * 4);
        for blk in &blocks {
            for rr in 0..plan.r {
                for u in 0..plan.nunits {
                    for kx in 0..kw {
                        for k in 0..4 {
                            w.push(Z(std::array::from_fn(|d| {
                                let Some(ch) = blk.channel(k, d) else {
                                    return 0;
                                };
                                let mut word = 0u32;
                                for s in 0..unit {
                                    let Some(ky) = plan.ky(kh, sh, dh, rr, u * unit + s) else {
                                        continue;
                                    };
                                    let v = pw.by_tap[(ky * kw + kx) * pw.c + ch];
                                    word |= match enc {
                                        Enc::Quads => u32::from(v as i8 as u8) << (8 * s),
                                        Enc::Pairs => u32::from(v as i16 as u16) << (16 * s),
                                    };
                                }
                                word as i32
                            })));
                        }
                    }
                }
            }
        }
        Tables {
            key,
            plan,
            blocks,
            w,
        }
    }
}

/// How the AVX-512 output stage treats the product `f32(raw) · M`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `|raw · M|` provably below 2^30 for every channel: converted directly.
    Bounded,
    /// Finite multipliers: clamped at 65536 before the conversion.
    Finite,
    /// Some multiplier is NaN or infinite: NaN products become 0, the rest is clamped.
    NonFinite,
}

/// The output stage of one call in the AVX-512 lane order: per block 4 zmm of offsets and 4
/// of multipliers.
struct ZStage {
    off: Vec<Z>,
    mult: Vec<ZF>,
    mode: Mode,
    zero_point: i32,
    lo: i32,
}

impl ZStage {
    fn new(ep: &QEpilogue, pw: &PackedDepthwise, blocks: &[Block]) -> ZStage {
        let (offs, mults) = (ep.offsets(), ep.multipliers());
        let mut off = vec![Z::default(); blocks.len() * 4];
        let mut mult = vec![ZF::default(); blocks.len() * 4];
        for (b, blk) in blocks.iter().enumerate() {
            for k in 0..4 {
                // Dwords `4L .. 4L + 4` hold channels `base + 16·(L % lp) + 4k ..+4`.
                for l in 0..4 {
                    let first = 16 * (l % blk.lp) + 4 * k;
                    let n = blk.nch.saturating_sub(first).min(4);
                    if n == 0 {
                        continue;
                    }
                    let ch = blk.base + first;
                    off[b * 4 + k].0[4 * l..4 * l + n].copy_from_slice(&offs[ch..ch + n]);
                    mult[b * 4 + k].0[4 * l..4 * l + n].copy_from_slice(&mults[ch..ch + n]);
                }
            }
        }
        let mode = if !ep.finite() {
            Mode::NonFinite
        } else {
            // |raw| ≤ |offset| + 255·Σ|w − z_w| when that does not wrap; the product then
            // stays far below 2^31 even after f32 rounding.
            let bounded = (0..pw.c).all(|ch| {
                let raw = f64::from(offs[ch]).abs() + 255.0 * pw.abs_sums[ch] as f64;
                raw < 2_147_483_000.0 && raw * f64::from(mults[ch]).abs() < 1_073_741_824.0
            });
            if bounded {
                Mode::Bounded
            } else {
                Mode::Finite
            }
        };
        ZStage {
            off,
            mult,
            mode,
            zero_point: ep.zero_point(),
            lo: ep.lo(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Dispatch
// ---------------------------------------------------------------------------------------

/// The output stage in the lane order of the AVX2 blocks (full blocks only).
struct Stage<'a> {
    ep: &'a QEpilogue,
    offsets: Vec<i32>,
    mults: Vec<f32>,
}

/// One output pixel: the tap rows (`C` codes each, padding → the zero-point row), the
/// weights, the stage, and the pixel's `C` output codes.
type PixelFn = unsafe fn(&[&[u8]], &PackedDepthwise, &Stage<'_>, &mut [u8]);

/// The pixel kernel of `level` (already capped to this CPU): AVX2 or portable.
fn pixel_kernel(level: Isa) -> PixelFn {
    match level {
        #[cfg(target_arch = "x86_64")]
        l if l.has_avx2() => avx2::pixel,
        _ => generic::pixel_scalar,
    }
}

/// The name of the depthwise kernel `qdepthwise_with(isa, ..)` runs for weights `w` (for
/// reports and benchmarks).
pub fn kernel_name(isa: Isa, w: &PackedDepthwise) -> &'static str {
    match Isa::capped(isa) {
        l if cfg!(target_arch = "x86_64") && l.has_avx512() => {
            if l >= Isa::Avx512Vnni && w.fits_i8 {
                "dw_u8s8_64c_avx512vnni"
            } else if l >= Isa::Avx512Vnni {
                "dw_i16_64c_avx512vnni"
            } else {
                "dw_i16_64c_avx512"
            }
        }
        l if cfg!(target_arch = "x86_64") && l.has_avx2() => "dw_i16_16c_avx2",
        _ => "dw_portable",
    }
}

/// Depthwise convolution of `x` (`[n, h, w, c]` codes, zero point `x_zero_point`) into `y`
/// (`[n, oh, ow, c]`) with the kernels of [`Isa::current`].
pub fn qdepthwise(
    x: &[u8],
    x_zero_point: i32,
    s: &DwShape,
    w: &PackedDepthwise,
    ep: &QEpilogue,
    y: &mut [u8],
) -> OpResult<()> {
    qdepthwise_with(Isa::current(), x, x_zero_point, s, w, ep, y)
}

/// [`qdepthwise`] with an explicit instruction set (capped to what this CPU has: AVX-512
/// levels fall back to AVX2, AVX2 to the portable kernel).
pub fn qdepthwise_with(
    isa: Isa,
    x: &[u8],
    x_zero_point: i32,
    s: &DwShape,
    w: &PackedDepthwise,
    ep: &QEpilogue,
    y: &mut [u8],
) -> OpResult<()> {
    let c = s.c;
    let sizes = [
        s.n.checked_mul(s.h * s.w).and_then(|v| v.checked_mul(c)),
        s.n.checked_mul(s.oh * s.ow).and_then(|v| v.checked_mul(c)),
    ];
    if sizes != [Some(x.len()), Some(y.len())] {
        return Err(OpError::Shape(format!(
            "depthwise: {} input / {} output codes do not match {s:?}",
            x.len(),
            y.len()
        )));
    }
    if w.c != c || w.taps != s.kh * s.kw || ep.channels() != c {
        return Err(OpError::Shape(format!(
            "depthwise: weights [{}, {}] / output stage for {} channels do not match {s:?}",
            w.c,
            w.taps,
            ep.channels()
        )));
    }
    if !(0..=255).contains(&x_zero_point) {
        return Err(OpError::DType(format!(
            "depthwise: input zero point {x_zero_point} is outside [0, 255]"
        )));
    }
    if y.is_empty() {
        return Ok(());
    }
    let level = Isa::capped(isa);
    #[cfg(target_arch = "x86_64")]
    if level.has_avx512() && s.dil_h > 0 && s.stride_w > 0 {
        let enc = if level >= Isa::Avx512Vnni && w.fits_i8 {
            Enc::Quads
        } else {
            Enc::Pairs
        };
        let tables = w.tables(TableKey {
            kh: s.kh,
            kw: s.kw,
            sh: s.stride_h,
            dh: s.dil_h,
            enc,
            rows: s.oh.min(4),
        });
        let stage = ZStage::new(ep, w, &tables.blocks);
        avx512::run(level, x, x_zero_point as u8, s, &tables, &stage, y);
        return Ok(());
    }
    run_pixels(level, x, x_zero_point, s, w, ep, y);
    Ok(())
}

/// The AVX2 / portable driver: one output pixel at a time from its tap rows.
fn run_pixels(
    level: Isa,
    x: &[u8],
    x_zero_point: i32,
    s: &DwShape,
    w: &PackedDepthwise,
    ep: &QEpilogue,
    y: &mut [u8],
) {
    let c = s.c;
    let full = c / CB * CB;
    let stage = Stage {
        ep,
        offsets: (0..full)
            .map(|i| ep.offsets()[i / CB * CB + PERM[i % CB]])
            .collect(),
        mults: (0..full)
            .map(|i| ep.multipliers()[i / CB * CB + PERM[i % CB]])
            .collect(),
    };
    let kern = pixel_kernel(level);
    let zrow = vec![x_zero_point as u8; c];
    let image = s.h * s.w * c;
    y.par_chunks_mut(s.ow * c)
        .enumerate()
        .for_each(|(row, yrow)| {
            let (n, oy) = (row / s.oh, row % s.oh);
            let img = &x[n * image..(n + 1) * image];
            let mut taps: Vec<&[u8]> = Vec::with_capacity(s.kh * s.kw);
            for (ox, ypix) in yrow.chunks_exact_mut(c).enumerate() {
                taps.clear();
                for ky in 0..s.kh {
                    let iy = (oy * s.stride_h + ky * s.dil_h).checked_sub(s.pad_t);
                    for kx in 0..s.kw {
                        let ix = (ox * s.stride_w + kx * s.dil_w).checked_sub(s.pad_l);
                        match (iy, ix) {
                            (Some(iy), Some(ix)) if iy < s.h && ix < s.w => {
                                let at = (iy * s.w + ix) * c;
                                taps.push(&img[at..at + c]);
                            }
                            _ => taps.push(&zrow),
                        }
                    }
                }
                // SAFETY: `kern` is the AVX2 kernel only when `level` (capped to this CPU)
                // has AVX2 (see `pixel_kernel`); it checks the slice lengths itself.
                unsafe { kern(&taps, w, &stage, ypix) };
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_group_rows_without_extra_units() {
        // 3×3 stride 1: two output rows read 4 input rows, one quad.
        let p = Plan::new(3, 1, 1, 4, 56);
        assert_eq!((p.r, p.uoff.clone(), p.nunits), (2, vec![0, 1, 2, 3], 1));
        assert_eq!(p.used, vec![vec![0], vec![0]]);
        assert_eq!((p.ky(3, 1, 1, 1, 0), p.ky(3, 1, 1, 1, 3)), (None, Some(2)));
        // Stride 2: a second row would need 5 rows.
        assert_eq!(Plan::new(3, 2, 1, 4, 56).r, 1);
        // Pairs: 3 rows → 2 units either way, so 2 output rows (4 input rows).
        let p = Plan::new(3, 1, 1, 2, 56);
        assert_eq!((p.r, p.nunits), (2, 2));
        assert_eq!(p.used, vec![vec![0, 1], vec![0, 1]]);
        // 5×5: 4 rows fit in 8 slots; never more rows than the output has.
        assert_eq!(Plan::new(5, 1, 1, 4, 56).r, 4);
        assert_eq!(Plan::new(5, 1, 1, 4, 3).r, 3);
        // Dilation 2: rows 0, 2, 4 fill one quad; with the next output row (1, 3, 5) it
        // would take two.
        let p = Plan::new(3, 1, 2, 4, 9);
        assert_eq!((p.r, p.uoff.clone(), p.nunits), (1, vec![0, 2, 4], 1));
        assert_eq!(
            (p.ky(3, 1, 2, 0, 1), p.ky(3, 1, 2, 0, 2)),
            (Some(1), Some(2))
        );
    }

    #[test]
    fn blocks_cover_every_channel_once() {
        for c in 1..=200 {
            let mut seen = vec![0u32; c];
            for blk in blocks(c) {
                for k in 0..4 {
                    // The lanes of the first pixel; the other pixels' lanes repeat them.
                    for d in 0..16 {
                        if d < 4 * blk.lp {
                            if let Some(ch) = blk.channel(k, d) {
                                seen[ch] += 1;
                            }
                        }
                        assert_eq!(blk.channel(k, d), blk.channel(k, d % (4 * blk.lp)));
                    }
                }
            }
            assert!(seen.iter().all(|&n| n == 1), "c {c}: {seen:?}");
        }
    }
}
