//! The `vpdpbusd` GEMM of the VNNI layouts ([`QLayout::Vnni`](super::QLayout::Vnni),
//! [`QLayout::Tiles`](super::QLayout::Tiles)), written once over a few lane primitives.
//!
//! [`Lanes`] is what the micro-kernel needs from an instruction set, on vectors of 16 i32
//! lanes (16 output channels): load 16 weight quads, broadcast 4 activation bytes, one
//! `vpdpbusd` step (`acc += Σ_{j<4} u8(a_j) · s8(b_j)` per lane, exact and wrapping), and the
//! fused output stage. Three implementations:
//!
//! - [`Portable`]: plain arrays and the scalar `requantize`, runs anywhere and is what the
//!   tests hold the others to; it also lets the packing, tiling and edge handling of this
//!   file (and of the AMX driver) run on CPUs without VNNI;
//! - [`Avx512`]: one zmm per 16 channels (`vpdpbusd zmm`, AVX512-VNNI);
//! - [`AvxVnni`]: two ymm per 16 channels (VEX `vpdpbusd`, AVX-VNNI).
//!
//! The micro-kernel keeps [`VR`] rows × `NB` panels of 16 channels in registers for the whole
//! K (no partial sums): per quad of k it loads `NB` weight vectors and broadcasts one 4-byte
//! group of each row, then `VR · NB` `vpdpbusd`. `VR = 6` and `NB = 4` fill 24 of the 32 zmm
//! registers with accumulators, which keeps the one `vpdpbusd` per cycle that Intel and AMD
//! cores issue busy while its ~5-cycle latency passes (6 × 4 independent chains), with
//! `VR + NB = 10` loads per 24 multiplies. On ymm (16 registers) the tile is 6 rows × one panel
//! (12 accumulators).
//!
//! A is read in place: every row of the tile is a pointer to its `4·kq` codes (the driver
//! hands out rows of the source matrix, or rows gathered and zero-padded into scratch).

use super::pack::PackedQWeights;
use super::{QEpilogue, QLhs, SumStage, NR};
use crate::int8::requant::requantize;

/// Rows of the register tile.
pub const VR: usize = 6;
/// Most panels of 16 channels in one register tile.
pub const VNB: usize = 4;

/// The output stage of one GEMM for the VNNI kernels: per channel offset, multiplier and
/// row-sum correction (all padded to whole panels), output zero point and lower clamp.
#[derive(Clone, Copy)]
pub(super) struct VStage<'a> {
    /// `b − z_x·Σ_k (w − z_w)` per channel.
    pub offsets: &'a [i32],
    /// `M` per channel.
    pub mults: &'a [f32],
    /// `s − z_w` per channel (see `QLayout::Vnni`); empty when no channel needs it.
    pub corr: &'a [i32],
    /// Output zero point.
    pub zero_point: i32,
    /// Lower clamp.
    pub lo: i32,
    /// Every multiplier is finite (no NaN product: the SIMD stages take a shorter path).
    pub finite: bool,
    /// The Int8Sum/Add fused after the stage, if any (the other summand comes per call).
    pub sum: Option<SumStage>,
}

impl<'a> VStage<'a> {
    /// The stage of `ep` for weights `w` (channels from 0).
    pub fn new(ep: &'a QEpilogue, w: &'a PackedQWeights) -> Self {
        VStage {
            offsets: ep.offsets(),
            mults: ep.multipliers(),
            corr: if w.needs_rowsum { &w.corr } else { &[] },
            zero_point: ep.zero_point(),
            lo: ep.lo(),
            finite: ep.finite(),
            sum: None,
        }
    }
}

/// The lane primitives of the `vpdpbusd` micro-kernel (16 i32 lanes = 16 channels).
///
/// # Safety
/// Implementations may require CPU features: their functions may only be called from code
/// compiled for (and running on) a CPU with them (see each implementation).
pub(super) trait Lanes {
    /// 16 i32 lanes.
    type V: Copy;
    /// The per-panel output stage, loaded once per tile.
    type S: Copy;
    /// All lanes 0.
    unsafe fn zero() -> Self::V;
    /// The 16 weight quads at `p` (64 bytes).
    unsafe fn load_b(p: *const i32) -> Self::V;
    /// The 4 activation bytes at `p` in every lane.
    unsafe fn bcast_a(p: *const u8) -> Self::V;
    /// `acc + Σ_{j<4} u8(a.byte j) · s8(b.byte j)` per lane, wrapping.
    unsafe fn dpbusd(acc: Self::V, a: Self::V, b: Self::V) -> Self::V;
    /// The stage of channels `c..c + 16` of `st`.
    unsafe fn stage(st: &VStage<'_>, c: usize) -> Self::S;
    /// Applies the stage to one row's accumulators (row codes summing to `rowsum`) and
    /// stores the first `n` (1 to 16) output codes at `y`; with a fused sum in the stage,
    /// the codes are then added to the `n` codes at `other` (see [`SumStage`]). `M` says
    /// which optional steps the stage has (bits of [`MODE_CORR`], [`MODE_NAN`],
    /// [`MODE_SUM`]), so that each combination compiles without run-time tests.
    unsafe fn requant_store<const M: u8>(
        acc: Self::V,
        s: &Self::S,
        rowsum: i32,
        other: *const u8,
        y: *mut u8,
        n: usize,
    );

    /// [`requant_store`](Lanes::requant_store) on a block of 2 rows × 32 channels, all
    /// valid: `acc[2·r + v]` holds row `r`, channels `16·v..16·v + 16` (stage `s[v]`); row
    /// `r` is stored at `y + r·ld` (and its summand read at `other + r·ld`). The default is
    /// four 16-lane calls; lanes with a cheaper whole-block form override it.
    #[inline(always)]
    unsafe fn requant_store_2x32<const M: u8>(
        acc: [Self::V; 4],
        s: [&Self::S; 2],
        rowsum: [i32; 2],
        other: *const u8,
        y: *mut u8,
        ld: usize,
    ) {
        // SAFETY: forwarded contract (32 codes per row at `y` and, with a sum, at `other`).
        unsafe { store_2x32_each::<Self, M>(acc, s, rowsum, other, y, ld) }
    }
}

/// [`Lanes::requant_store_2x32`] as four [`Lanes::requant_store`] calls.
///
/// # Safety
/// As [`Lanes::requant_store_2x32`].
#[inline(always)]
unsafe fn store_2x32_each<L: Lanes + ?Sized, const M: u8>(
    acc: [L::V; 4],
    s: [&L::S; 2],
    rowsum: [i32; 2],
    other: *const u8,
    y: *mut u8,
    ld: usize,
) {
    for (i, &a) in acc.iter().enumerate() {
        let (r, v) = (i / 2, i % 2);
        let at = r * ld + v * NR;
        // SAFETY: 16 codes at `y + at` (and `other + at`) by the caller's contract.
        unsafe { L::requant_store::<M>(a, s[v], rowsum[r], other.wrapping_add(at), y.add(at), NR) };
    }
}

/// Stage mode bit: add the row-sum correction.
pub(super) const MODE_CORR: u8 = 1;
/// Stage mode bit: some multiplier is not finite (the NaN-safe conversion).
pub(super) const MODE_NAN: u8 = 2;
/// Stage mode bit: a fused sum follows.
pub(super) const MODE_SUM: u8 = 4;

/// The mode bits of a stage.
pub(super) fn stage_mode(st: &VStage<'_>) -> u8 {
    (if st.corr.is_empty() { 0 } else { MODE_CORR })
        | (if st.finite { 0 } else { MODE_NAN })
        | (if st.sum.is_some() { MODE_SUM } else { 0 })
}

/// Arguments of one micro-kernel call.
pub(super) struct MicroArgs<'a> {
    /// Quads of k.
    pub kq: usize,
    /// The tile's rows, each valid for `4·kq` bytes (rows past `rows` repeat a valid row).
    pub a: [*const u8; VR],
    /// Sums of each row's codes (used when the stage has a correction).
    pub rowsum: [i32; VR],
    /// Quad 0 of the first panel; panel `p` starts `p·pstride` words later.
    pub b: *const i32,
    /// Words between panels.
    pub pstride: usize,
    /// Output code of row 0, channel 0 of the tile; row `r` at `y + r·ldy`.
    pub y: *mut u8,
    /// With a fused sum: the other summand's codes at the same place as `y` (same stride).
    pub other: *const u8,
    /// Output row stride.
    pub ldy: usize,
    /// Valid rows (1 to `VR`).
    pub rows: usize,
    /// Valid channels (1 to `16·NB`).
    pub chans: usize,
    /// The stage, indexed from the tile's first channel.
    pub stage: VStage<'a>,
}

/// A micro-kernel: `NB` panels fixed at compile time.
pub(super) type MicroFn = unsafe fn(&MicroArgs<'_>);

/// The micro-kernel body over lane primitives `L` (see the module docs).
///
/// # Safety
/// `L`'s CPU features must be present; every pointer in `m` must be valid as documented on
/// [`MicroArgs`] (rows for `4·kq` bytes, `NB` panels of `kq·16` words, `rows` output rows of
/// `chans` codes).
#[inline(always)]
pub(super) unsafe fn micro<L: Lanes, const NB: usize>(m: &MicroArgs<'_>) {
    // SAFETY: the caller guarantees the pointers (see above).
    unsafe {
        let mut acc = [[L::zero(); NB]; VR];
        let mut bp = m.b;
        for q in 0..m.kq {
            let mut bv = [L::zero(); NB];
            for (p, v) in bv.iter_mut().enumerate() {
                *v = L::load_b(bp.add(p * m.pstride));
            }
            for (row, &ap) in acc.iter_mut().zip(&m.a) {
                let av = L::bcast_a(ap.add(4 * q));
                for (c, &b) in row.iter_mut().zip(&bv) {
                    *c = L::dpbusd(*c, av, b);
                }
            }
            bp = bp.add(NR);
        }
        let mode = stage_mode(&m.stage);
        match mode {
            0 => epilogue::<L, NB, 0>(m, &acc),
            1 => epilogue::<L, NB, 1>(m, &acc),
            2 => epilogue::<L, NB, 2>(m, &acc),
            3 => epilogue::<L, NB, 3>(m, &acc),
            4 => epilogue::<L, NB, 4>(m, &acc),
            5 => epilogue::<L, NB, 5>(m, &acc),
            6 => epilogue::<L, NB, 6>(m, &acc),
            _ => epilogue::<L, NB, 7>(m, &acc),
        }
    }
}

/// The output stage of a micro-kernel's tile, stage mode `M`.
///
/// # Safety
/// As [`micro`].
#[inline(always)]
unsafe fn epilogue<L: Lanes, const NB: usize, const M: u8>(
    m: &MicroArgs<'_>,
    acc: &[[L::V; NB]; VR],
) {
    // SAFETY: the caller guarantees the output and summand pointers (see `micro`).
    unsafe {
        for (p, panel) in (0..NB).zip((0..m.chans).step_by(NR)) {
            let n = (m.chans - panel).min(NR);
            let s = L::stage(&m.stage, panel);
            for (r, row) in acc.iter().enumerate().take(m.rows) {
                let at = r * m.ldy + panel;
                L::requant_store::<M>(
                    row[p],
                    &s,
                    m.rowsum[r],
                    m.other.wrapping_add(at),
                    m.y.add(at),
                    n,
                );
            }
        }
    }
}

/// Portable lanes: arrays and the scalar output stage.
pub(super) struct Portable;

/// The stage of 16 channels, portable form.
#[derive(Clone, Copy)]
pub(super) struct PortableStage {
    off: [i32; NR],
    mult: [f32; NR],
    corr: [i32; NR],
    zero_point: i32,
    lo: i32,
    sum: Option<SumStage>,
}

impl Lanes for Portable {
    type V = [i32; NR];
    type S = PortableStage;

    #[inline(always)]
    unsafe fn zero() -> [i32; NR] {
        [0; NR]
    }

    #[inline(always)]
    unsafe fn load_b(p: *const i32) -> [i32; NR] {
        // SAFETY: the caller guarantees 16 readable words at `p`.
        unsafe { std::ptr::read_unaligned(p as *const [i32; NR]) }
    }

    #[inline(always)]
    unsafe fn bcast_a(p: *const u8) -> [i32; NR] {
        // SAFETY: the caller guarantees 4 readable bytes at `p`.
        let v = unsafe { std::ptr::read_unaligned(p as *const i32) };
        [v; NR]
    }

    #[inline(always)]
    unsafe fn dpbusd(acc: [i32; NR], a: [i32; NR], b: [i32; NR]) -> [i32; NR] {
        std::array::from_fn(|l| {
            let (x, w) = (a[l].to_le_bytes(), b[l].to_le_bytes());
            let d: i32 = (0..4)
                .map(|j| i32::from(x[j]) * i32::from(w[j] as i8))
                .sum();
            acc[l].wrapping_add(d)
        })
    }

    #[inline(always)]
    unsafe fn stage(st: &VStage<'_>, c: usize) -> PortableStage {
        PortableStage {
            off: std::array::from_fn(|l| st.offsets[c + l]),
            mult: std::array::from_fn(|l| st.mults[c + l]),
            corr: std::array::from_fn(|l| st.corr.get(c + l).copied().unwrap_or(0)),
            zero_point: st.zero_point,
            lo: st.lo,
            sum: st.sum,
        }
    }

    #[inline(always)]
    unsafe fn requant_store<const M: u8>(
        acc: [i32; NR],
        s: &PortableStage,
        rowsum: i32,
        other: *const u8,
        y: *mut u8,
        n: usize,
    ) {
        #[allow(clippy::needless_range_loop)] // `l` indexes five arrays and the output
        for l in 0..n {
            let raw = acc[l]
                .wrapping_add(s.off[l])
                .wrapping_add(s.corr[l].wrapping_mul(rowsum));
            let mut code = requantize(raw, s.mult[l], s.zero_point, s.lo);
            if let Some(sum) = &s.sum {
                // SAFETY: with a fused sum the caller guarantees `n` readable codes at `other`.
                code = sum.apply(code, unsafe { *other.add(l) });
            }
            // SAFETY: the caller guarantees `n` writable bytes at `y`.
            unsafe { *y.add(l) = code };
        }
    }
}

/// The portable micro-kernels, by number of panels.
pub(super) const PORTABLE: [MicroFn; VNB] = [
    micro_portable::<1>,
    micro_portable::<2>,
    micro_portable::<3>,
    micro_portable::<4>,
];

/// # Safety
/// As [`micro`] (no CPU features needed).
unsafe fn micro_portable<const NB: usize>(m: &MicroArgs<'_>) {
    // SAFETY: forwarded contract.
    unsafe { micro::<Portable, NB>(m) }
}

#[cfg(target_arch = "x86_64")]
pub(super) use x86::{Avx512, AVX512, AVXVNNI};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{
        micro, store_2x32_each, Lanes, MicroArgs, MicroFn, SumStage, VStage, MODE_CORR, MODE_NAN,
        MODE_SUM, NR, VNB,
    };
    use crate::int8::requant::sum_offset;
    use std::arch::x86_64::*;

    /// The DNNLOWP output stage on 16 lanes, returned as 16 codes: `clamp(lrint(f32(raw) ·
    /// m) + zp, lo, 255)`. A NaN product becomes 0 and products beyond ±65536 are clamped
    /// first (both then give what the scalar `requantize` gives: `as i64` maps NaN to 0, and
    /// any product that large saturates to the same bound after adding a zero point in
    /// [0, 255]); `cvtps` rounds half to even under the default MXCSR mode.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(crate) unsafe fn requant16(raw: __m512i, m: __m512, zp: __m512i, lo: __m512i) -> __m128i {
        _mm512_cvtepi32_epi8(requant16_i32(raw, m, zp, lo))
    }

    /// [`requant16`] before the narrowing: the codes as i32 lanes in [lo, 255].
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(crate) unsafe fn requant16_i32(
        raw: __m512i,
        m: __m512,
        zp: __m512i,
        lo: __m512i,
    ) -> __m512i {
        let f = _mm512_mul_ps(_mm512_cvtepi32_ps(raw), m);
        let ord = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(f, f);
        let f = _mm512_maskz_mov_ps(ord, f);
        let f = _mm512_min_ps(
            _mm512_max_ps(f, _mm512_set1_ps(-65536.0)),
            _mm512_set1_ps(65536.0),
        );
        let i = _mm512_add_epi32(_mm512_cvtps_epi32(f), zp);
        _mm512_min_epi32(_mm512_max_epi32(i, lo), _mm512_set1_epi32(255))
    }

    /// [`requant16_finite`] before the narrowing: the codes as i32 lanes in [lo, 255].
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(crate) unsafe fn requant16_finite_i32(
        raw: __m512i,
        m: __m512,
        zp: __m512i,
        lo: __m512i,
    ) -> __m512i {
        let f = _mm512_min_ps(
            _mm512_mul_ps(_mm512_cvtepi32_ps(raw), m),
            _mm512_set1_ps(65536.0),
        );
        let i = _mm512_max_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(f), zp), lo);
        _mm512_min_epi32(i, _mm512_set1_epi32(255))
    }

    /// [`requant16`] for a finite multiplier: the product is never NaN, so only the upper
    /// side needs a float clamp (`cvtps` maps anything below −2^31, −∞ included, to
    /// 0x80000000, negative as it should be), adding `z_y` cannot overflow, and after the
    /// lower clamp (`lo ≥ 0`) the unsigned saturating narrowing clamps to 255.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(crate) unsafe fn requant16_finite(
        raw: __m512i,
        m: __m512,
        zp: __m512i,
        lo: __m512i,
    ) -> __m128i {
        let f = _mm512_min_ps(
            _mm512_mul_ps(_mm512_cvtepi32_ps(raw), m),
            _mm512_set1_ps(65536.0),
        );
        let i = _mm512_max_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(f), zp), lo);
        _mm512_cvtusepi32_epi8(i)
    }

    /// AVX-512 lanes: one zmm per 16 channels.
    pub(crate) struct Avx512;

    /// The stage of 16 channels in zmm registers.
    #[derive(Clone, Copy)]
    pub(crate) struct ZStage {
        off: __m512i,
        mult: __m512,
        corr: __m512i,
        zp: __m512i,
        lo: __m512i,
        /// The lower clamp of the stage's codes (of the fused sum's, with one) in every byte.
        lo8: __m512i,
        sum: Option<ZSum>,
    }

    /// A fused sum's constants in zmm registers.
    #[derive(Clone, Copy)]
    pub(crate) struct ZSum {
        sa: __m512,
        /// `f32(−z_a · s_a)` ([`sum_offset`]).
        ca: __m512,
        /// `z_a · s_a + ca` exactly (the rounding error of `z_a · s_a`): `fma(a − z_a, s_a,
        /// ka)` is then exactly `fma(a, s_a, ca)`.
        ka: __m512,
        sb: __m512,
        cb: __m512,
        inv: __m512,
        zy: __m512,
        lo: __m512,
        /// The GEMM codes' zero point is the stage's: `a − z_a` is the rounded product
        /// clamped to `[lo_a, hi_a]` = `[lo − z, 255 − z]`, computed in f32 (see
        /// [`Avx512::requant_store_2x32`]).
        direct: bool,
        lo_a: __m512,
        hi_a: __m512,
    }

    impl ZSum {
        /// # Safety
        /// The CPU must support AVX-512 F.
        #[inline(always)]
        unsafe fn new(s: &SumStage, st: &VStage<'_>) -> ZSum {
            let z = st.zero_point;
            // SAFETY: AVX-512 present (caller).
            unsafe {
                let ca = sum_offset(s.gemm);
                ZSum {
                    direct: s.gemm.zero_point == z,
                    lo_a: _mm512_set1_ps((st.lo.max(0) - z) as f32),
                    hi_a: _mm512_set1_ps((255 - z) as f32),
                    sa: _mm512_set1_ps(s.gemm.scale),
                    ca: _mm512_set1_ps(ca),
                    ka: _mm512_set1_ps((s.gemm.zero_point as f32).mul_add(s.gemm.scale, ca)),
                    sb: _mm512_set1_ps(s.other.scale),
                    cb: _mm512_set1_ps(sum_offset(s.other)),
                    inv: _mm512_set1_ps(s.out.multiplier),
                    zy: _mm512_set1_ps(s.out.zero_point as f32),
                    lo: _mm512_set1_ps(s.out.lo as f32),
                }
            }
        }
    }

    /// The fused sum on 16 lanes: GEMM codes `a` (i32 lanes in [0, 255]) plus the 16 (or
    /// the first `n`) codes at `other`, the f32 operations of [`SumStage::apply`] in the same
    /// order; the result is clamped in f32 before the conversion (bounds are integers and
    /// rounding is monotone, so this equals clamping after it; `max_ps` returns the bound
    /// for a NaN first operand, as the scalar NaN → 0 → `lo` path does).
    ///
    /// # Safety
    /// The CPU must support AVX-512 F/BW; `n` codes readable at `other`.
    #[inline(always)]
    unsafe fn sum16(a: __m512i, z: &ZSum, other: *const u8, n: usize) -> __m128i {
        // SAFETY: AVX-512 present and `n` readable bytes at `other` (caller).
        unsafe {
            let b = if n == NR {
                _mm_loadu_si128(other as *const __m128i)
            } else {
                _mm_maskz_loadu_epi8((1u16 << n) - 1, other as *const i8)
            };
            let b = _mm512_cvtepu8_epi32(b);
            let ta = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a), z.sa, z.ca);
            let tb = _mm512_fmadd_ps(_mm512_cvtepi32_ps(b), z.sb, z.cb);
            let v = _mm512_fmadd_ps(_mm512_add_ps(ta, tb), z.inv, z.zy);
            let v = _mm512_min_ps(_mm512_max_ps(v, z.lo), _mm512_set1_ps(255.0));
            _mm512_cvtusepi32_epi8(_mm512_cvtps_epi32(v))
        }
    }

    impl Lanes for Avx512 {
        type V = __m512i;
        type S = ZStage;

        #[inline(always)]
        unsafe fn zero() -> __m512i {
            // SAFETY: called only from AVX-512 code (see the trait).
            unsafe { _mm512_setzero_si512() }
        }

        #[inline(always)]
        unsafe fn load_b(p: *const i32) -> __m512i {
            // SAFETY: 64 readable bytes at `p` (caller).
            unsafe { _mm512_loadu_si512(p as *const __m512i) }
        }

        #[inline(always)]
        unsafe fn bcast_a(p: *const u8) -> __m512i {
            // SAFETY: 4 readable bytes at `p` (caller).
            unsafe { _mm512_set1_epi32(std::ptr::read_unaligned(p as *const i32)) }
        }

        #[inline(always)]
        unsafe fn dpbusd(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
            // SAFETY: AVX512-VNNI present (caller).
            unsafe { _mm512_dpbusd_epi32(acc, a, b) }
        }

        #[inline(always)]
        unsafe fn stage(st: &VStage<'_>, c: usize) -> ZStage {
            assert!(st.offsets.len() >= c + NR && st.mults.len() >= c + NR);
            // SAFETY: lengths asserted above; AVX-512 present (caller).
            unsafe {
                ZStage {
                    off: _mm512_loadu_si512(st.offsets.as_ptr().add(c) as *const __m512i),
                    mult: _mm512_loadu_ps(st.mults.as_ptr().add(c)),
                    corr: if st.corr.len() >= c + NR {
                        _mm512_loadu_si512(st.corr.as_ptr().add(c) as *const __m512i)
                    } else {
                        _mm512_setzero_si512()
                    },
                    zp: _mm512_set1_epi32(st.zero_point),
                    lo: _mm512_set1_epi32(st.lo),
                    lo8: _mm512_set1_epi8(
                        st.sum.as_ref().map_or(st.lo, |x| x.out.lo).clamp(0, 255) as u8 as i8,
                    ),
                    sum: st.sum.as_ref().map(|x| ZSum::new(x, st)),
                }
            }
        }

        #[inline(always)]
        unsafe fn requant_store<const M: u8>(
            acc: __m512i,
            s: &ZStage,
            rowsum: i32,
            other: *const u8,
            y: *mut u8,
            n: usize,
        ) {
            // SAFETY: AVX-512 present, `n` writable bytes at `y` and, with a fused sum, `n`
            // readable bytes at `other` (caller).
            unsafe {
                let mut raw = _mm512_add_epi32(acc, s.off);
                if M & MODE_CORR != 0 {
                    let c = _mm512_mullo_epi32(s.corr, _mm512_set1_epi32(rowsum));
                    raw = _mm512_add_epi32(raw, c);
                }
                let bytes = match (M & MODE_SUM != 0, &s.sum) {
                    (true, Some(z)) => {
                        // The codes stay in i32 lanes for the fused sum.
                        let a = if M & MODE_NAN == 0 {
                            requant16_finite_i32(raw, s.mult, s.zp, s.lo)
                        } else {
                            requant16_i32(raw, s.mult, s.zp, s.lo)
                        };
                        sum16(a, z, other, n)
                    }
                    _ if M & MODE_NAN == 0 => requant16_finite(raw, s.mult, s.zp, s.lo),
                    _ => requant16(raw, s.mult, s.zp, s.lo),
                };
                if n == NR {
                    _mm_storeu_si128(y as *mut __m128i, bytes);
                } else {
                    _mm_mask_storeu_epi8(y as *mut i8, (1u16 << n) - 1, bytes);
                }
            }
        }

        /// The block form for finite multipliers: the four vectors of codes stay unclamped
        /// i32 until two signed (i32 → i16) and one unsigned (i16 → u8) saturating packs
        /// clamp them to [0, 255] together, a dword permutation puts each row's 32 codes in
        /// order and one byte max applies the lower clamp (`lo` ≥ 0 for every stage, and a
        /// value below 0 saturates to 0 as the 16-lane form's unsigned narrowing does):
        /// 5 shuffles and a max per 64 codes instead of a clamp and a 2-shuffle narrowing
        /// per 16. With a fused sum whose GEMM zero point is the stage's, `a − z_a` is taken
        /// in f32 (round the product to an integer, clamp to [`lo − z`, `255 − z`]: the same
        /// value as the integer path's round, add z, clamp, subtract z, convert), and the
        /// sum's own clamp becomes `min(255, v)` before the conversion (which keeps values
        /// of 2^31 and more from turning negative) plus the packs and the byte max: a NaN
        /// converts to i32::MIN and ends at `lo`, as the scalar path's NaN → 0 → `lo`.
        #[inline(always)]
        unsafe fn requant_store_2x32<const M: u8>(
            acc: [__m512i; 4],
            s: [&ZStage; 2],
            rowsum: [i32; 2],
            other: *const u8,
            y: *mut u8,
            ld: usize,
        ) {
            let sum = if M & MODE_SUM != 0 {
                s[0].sum.zip(s[1].sum)
            } else {
                None
            };
            if M & MODE_NAN != 0
                || (M & MODE_SUM != 0 && !sum.is_some_and(|(a, b)| a.direct && b.direct))
            {
                // SAFETY: forwarded contract.
                unsafe { store_2x32_each::<Self, M>(acc, s, rowsum, other, y, ld) };
                return;
            }
            // SAFETY: AVX-512 present; 32 writable codes at `y` and `y + ld` and, with a
            // fused sum, 32 readable ones at `other` and `other + ld` (caller).
            unsafe {
                let mut q = [_mm512_setzero_si512(); 4];
                for (i, qi) in q.iter_mut().enumerate() {
                    let (r, v) = (i / 2, i % 2);
                    let st = s[v];
                    let mut raw = _mm512_add_epi32(acc[i], st.off);
                    if M & MODE_CORR != 0 {
                        let c = _mm512_mullo_epi32(st.corr, _mm512_set1_epi32(rowsum[r]));
                        raw = _mm512_add_epi32(raw, c);
                    }
                    let f = _mm512_mul_ps(_mm512_cvtepi32_ps(raw), st.mult);
                    *qi = match sum {
                        Some((z0, z1)) => {
                            let z = if v == 0 { z0 } else { z1 };
                            let a = _mm512_roundscale_ps::<
                                { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
                            >(f);
                            let a = _mm512_min_ps(_mm512_max_ps(a, z.lo_a), z.hi_a);
                            let ta = _mm512_fmadd_ps(a, z.sa, z.ka);
                            let b = _mm_loadu_si128(other.add(r * ld + v * NR) as *const __m128i);
                            let b = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b));
                            let tb = _mm512_fmadd_ps(b, z.sb, z.cb);
                            let w = _mm512_fmadd_ps(_mm512_add_ps(ta, tb), z.inv, z.zy);
                            // 255 first: `min_ps` returns its second operand for a NaN, which
                            // must go on to the conversion (→ i32::MIN → `lo`).
                            _mm512_cvtps_epi32(_mm512_min_ps(_mm512_set1_ps(255.0), w))
                        }
                        None => _mm512_add_epi32(
                            _mm512_cvtps_epi32(_mm512_min_ps(f, _mm512_set1_ps(65536.0))),
                            st.zp,
                        ),
                    };
                }
                // Per 128-bit lane k: dwords (q0 chunk k, q1 chunk k, q2 chunk k, q3 chunk k).
                let p = _mm512_packus_epi16(
                    _mm512_packs_epi32(q[0], q[1]),
                    _mm512_packs_epi32(q[2], q[3]),
                );
                let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
                let p = _mm512_max_epu8(_mm512_permutexvar_epi32(idx, p), s[0].lo8);
                _mm256_storeu_si256(y as *mut __m256i, _mm512_castsi512_si256(p));
                _mm256_storeu_si256(y.add(ld) as *mut __m256i, _mm512_extracti64x4_epi64::<1>(p));
            }
        }
    }

    /// # Safety
    /// The CPU must support AVX-512 F/BW/VL and AVX512-VNNI; pointers as [`micro`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn micro_avx512<const NB: usize>(m: &MicroArgs<'_>) {
        // SAFETY: features enabled on this function; forwarded pointer contract.
        unsafe { micro::<Avx512, NB>(m) }
    }

    /// The AVX512-VNNI micro-kernels `qgemm_u8s8_i32_6x16nb_avx512vnni`, by number of panels.
    pub(crate) const AVX512: [MicroFn; VNB] = [
        micro_avx512::<1>,
        micro_avx512::<2>,
        micro_avx512::<3>,
        micro_avx512::<4>,
    ];

    /// AVX-VNNI lanes: two ymm per 16 channels.
    pub(crate) struct AvxVnni;

    /// The stage of 16 channels in ymm registers.
    #[derive(Clone, Copy)]
    pub(crate) struct YStage {
        off: [__m256i; 2],
        mult: [__m256; 2],
        corr: [__m256i; 2],
        zp: __m256i,
        lo: __m256i,
        sum: Option<SumStage>,
    }

    impl Lanes for AvxVnni {
        type V = [__m256i; 2];
        type S = YStage;

        #[inline(always)]
        unsafe fn zero() -> [__m256i; 2] {
            // SAFETY: AVX2 present (caller).
            unsafe { [_mm256_setzero_si256(); 2] }
        }

        #[inline(always)]
        unsafe fn load_b(p: *const i32) -> [__m256i; 2] {
            // SAFETY: 64 readable bytes at `p` (caller).
            unsafe {
                let p = p as *const __m256i;
                [_mm256_loadu_si256(p), _mm256_loadu_si256(p.add(1))]
            }
        }

        #[inline(always)]
        unsafe fn bcast_a(p: *const u8) -> [__m256i; 2] {
            // SAFETY: 4 readable bytes at `p` (caller).
            let v = unsafe { _mm256_set1_epi32(std::ptr::read_unaligned(p as *const i32)) };
            [v, v]
        }

        #[inline(always)]
        unsafe fn dpbusd(acc: [__m256i; 2], a: [__m256i; 2], b: [__m256i; 2]) -> [__m256i; 2] {
            // SAFETY: AVX-VNNI present (caller).
            unsafe {
                [
                    _mm256_dpbusd_avx_epi32(acc[0], a[0], b[0]),
                    _mm256_dpbusd_avx_epi32(acc[1], a[1], b[1]),
                ]
            }
        }

        #[inline(always)]
        unsafe fn stage(st: &VStage<'_>, c: usize) -> YStage {
            assert!(st.offsets.len() >= c + NR && st.mults.len() >= c + NR);
            // SAFETY: lengths asserted above; AVX2 present (caller).
            unsafe {
                let ld = |s: &[i32], h: usize| -> __m256i {
                    if s.len() >= c + NR {
                        _mm256_loadu_si256(s.as_ptr().add(c + 8 * h) as *const __m256i)
                    } else {
                        _mm256_setzero_si256()
                    }
                };
                YStage {
                    off: [ld(st.offsets, 0), ld(st.offsets, 1)],
                    mult: [
                        _mm256_loadu_ps(st.mults.as_ptr().add(c)),
                        _mm256_loadu_ps(st.mults.as_ptr().add(c + 8)),
                    ],
                    corr: [ld(st.corr, 0), ld(st.corr, 1)],
                    zp: _mm256_set1_epi32(st.zero_point),
                    lo: _mm256_set1_epi32(st.lo),
                    sum: st.sum,
                }
            }
        }

        #[inline(always)]
        unsafe fn requant_store<const M: u8>(
            acc: [__m256i; 2],
            s: &YStage,
            rowsum: i32,
            other: *const u8,
            y: *mut u8,
            n: usize,
        ) {
            use crate::kernels::qgemm::avx2::{narrow16, requant8};
            // SAFETY: AVX2 present and `n` writable bytes at `y` (caller).
            unsafe {
                let mut v = [_mm256_setzero_si256(); 2];
                for h in 0..2 {
                    let mut raw = _mm256_add_epi32(acc[h], s.off[h]);
                    if M & MODE_CORR != 0 {
                        let c = _mm256_mullo_epi32(s.corr[h], _mm256_set1_epi32(rowsum));
                        raw = _mm256_add_epi32(raw, c);
                    }
                    // `requant8` adds its offset argument; the offset is already in `raw`.
                    v[h] = requant8(raw, _mm256_setzero_si256(), s.mult[h], s.zp, s.lo);
                }
                let bytes = narrow16(v[0], v[1]);
                let mut tmp = [0u8; NR];
                _mm_storeu_si128(tmp.as_mut_ptr() as *mut __m128i, bytes);
                if let Some(sum) = &s.sum {
                    // The fused sum in scalar form: the VEX-only VNNI CPUs are clients,
                    // and this path is not their bottleneck.
                    for (l, t) in tmp.iter_mut().enumerate().take(n) {
                        *t = sum.apply(*t, *other.add(l));
                    }
                }
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), y, n);
            }
        }
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and AVX-VNNI; pointers as [`micro`].
    #[target_feature(enable = "avx2,fma,avxvnni")]
    unsafe fn micro_avxvnni<const NB: usize>(m: &MicroArgs<'_>) {
        // SAFETY: features enabled on this function; forwarded pointer contract.
        unsafe { micro::<AvxVnni, NB>(m) }
    }

    /// The AVX-VNNI micro-kernels `qgemm_u8s8_i32_6x16_avxvnni`: one panel per call (the
    /// 16 ymm registers hold 6 × 16 accumulators); every entry is the one-panel kernel.
    pub(crate) const AVXVNNI: [MicroFn; VNB] = [micro_avxvnni::<1>; VNB];
}

/// The micro-kernel table of one instruction set: entry `NB − 1` handles `NB` panels; `nb`
/// is the widest the table has (the ymm table repeats its one-panel kernel).
#[derive(Clone, Copy)]
pub(super) struct VnniKernels {
    /// Name for reports.
    pub name: &'static str,
    /// Kernels by number of panels.
    pub micro: &'static [MicroFn; VNB],
    /// Panels per call.
    pub nb: usize,
}

/// The portable kernels.
pub(super) const PORTABLE_KERNELS: VnniKernels = VnniKernels {
    name: "qgemm_u8s8_i32_6x64_portable",
    micro: &PORTABLE,
    nb: VNB,
};

/// Per-thread scratch of the VNNI driver.
#[derive(Default)]
pub(super) struct VScratch {
    /// Gathered rows, `[rows][4·kq]`.
    pub block: Vec<u8>,
    /// Row sums of the block.
    pub rowsums: Vec<i32>,
}

thread_local! {
    static VSCRATCH: std::cell::RefCell<VScratch> = std::cell::RefCell::new(VScratch::default());
}

/// Where A's rows come from for one row block: borrowed in place (`data`, row `r` at
/// `offset + r·ld`) or gathered into a scratch block (row `i` at `i·kpad`).
pub(super) enum RowSource<'a> {
    /// Rows read in place.
    InPlace {
        data: &'a [u8],
        offset: usize,
        ld: usize,
    },
    /// Rows gathered into `block`.
    Gathered { block: &'a [u8], kpad: usize },
}

impl RowSource<'_> {
    /// Pointer to row `i` of the block (relative to the block's first row `r0` for in-place rows).
    #[inline]
    pub fn ptr(&self, r0: usize, i: usize) -> *const u8 {
        match self {
            RowSource::InPlace { data, offset, ld } => data[offset + (r0 + i) * ld..].as_ptr(),
            RowSource::Gathered { block, kpad } => block[i * kpad..].as_ptr(),
        }
    }
}

/// Where rows `r0..r0+rows` (`rows ≥ 1`) of A are read for `kpad` bytes each: in place when
/// the source is strided and its last row has `kpad` bytes, else gathered into `block`
/// (`[rows rounded up to row_align][kpad]`, zero beyond K and in the padding rows).
pub(super) fn row_source<'s, L: QLhs + ?Sized>(
    a: &'s L,
    r0: usize,
    rows: usize,
    kpad: usize,
    row_align: usize,
    block: &'s mut Vec<u8>,
) -> RowSource<'s> {
    let k = a.depth();
    if let Some((data, offset, ld)) = a.strided() {
        let last_end = offset + (r0 + rows - 1) * ld + kpad;
        if last_end <= data.len() {
            return RowSource::InPlace { data, offset, ld };
        }
    }
    let padded = rows.next_multiple_of(row_align);
    block.clear();
    block.resize(padded * kpad, 0);
    for i in 0..rows {
        let dst = &mut block[i * kpad..(i + 1) * kpad];
        a.copy_row(r0 + i, dst);
        dst[k..].fill(0);
    }
    RowSource::Gathered { block, kpad }
}

/// Sums of the first `k` codes of rows `0..rows` of `src` (for the zero-point correction).
pub(super) fn row_sums(src: &RowSource<'_>, r0: usize, rows: usize, k: usize, out: &mut Vec<i32>) {
    out.clear();
    for i in 0..rows {
        let p = src.ptr(r0, i);
        // SAFETY: `p` starts a row with at least `kpad ≥ k` readable bytes (see `row_source`).
        let row = unsafe { std::slice::from_raw_parts(p, k) };
        out.push(row.iter().map(|&v| i32::from(v)).sum());
    }
}

/// Rows `r0..r0+rows` of A times channels `c0..c0+cols` of W (`c0 % 16 == 0`) into `out`
/// (`rows` rows of `ldo`) at columns `ocol..`, with micro-kernels `kern`.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_vnni<L: QLhs + ?Sized>(
    kern: &VnniKernels,
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
    if let Some((_, other)) = sum {
        assert_eq!(
            other.len(),
            out.len(),
            "fused sum: summand and output sizes differ"
        );
    }
    debug_assert_eq!(c0 % NR, 0);
    let kq = w.kunits;
    let kpad = 4 * kq;
    let mut stage_all = VStage::new(ep, w);
    stage_all.sum = sum.map(|(st, _)| *st);
    let other_base = sum.map_or(std::ptr::null(), |(_, o)| o.as_ptr());
    let mut s = VSCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    let mut block = std::mem::take(&mut s.block);
    {
        let src = row_source(a, r0, rows, kpad, 1, &mut block);
        if w.needs_rowsum {
            row_sums(&src, r0, rows, w.k, &mut s.rowsums);
        }
        let group = kern.nb * NR;
        for g0 in (c0..c0 + cols).step_by(group) {
            let gcols = group.min(c0 + cols - g0);
            let panels = gcols.div_ceil(NR);
            let micro = kern.micro[panels - 1];
            let stage = VStage {
                offsets: &stage_all.offsets[g0..],
                mults: &stage_all.mults[g0..],
                corr: stage_all.corr.get(g0..).unwrap_or(&[]),
                ..stage_all
            };
            let b = w.data[(g0 / NR) * kq * NR..].as_ptr();
            for t0 in (0..rows).step_by(VR) {
                let trows = VR.min(rows - t0);
                let ptrs: [*const u8; VR] =
                    std::array::from_fn(|i| src.ptr(r0, t0 + i.min(trows - 1)));
                let rowsum: [i32; VR] = std::array::from_fn(|i| {
                    s.rowsums.get(t0 + i.min(trows - 1)).copied().unwrap_or(0)
                });
                let at = t0 * ldo + ocol + (g0 - c0);
                let y = &mut out[at..at + (trows - 1) * ldo + gcols];
                let other = other_base.wrapping_add(at);
                let m = MicroArgs {
                    kq,
                    a: ptrs,
                    rowsum,
                    b,
                    pstride: kq * NR,
                    y: y.as_mut_ptr(),
                    other,
                    ldy: ldo,
                    rows: trows,
                    chans: gcols,
                    stage,
                };
                // SAFETY: the table holds kernels for this CPU (chosen by `vnni_kernels`);
                // each row pointer has `kpad = 4·kq` readable bytes (`row_source`), the
                // panels `g0/16 ..` hold `kq·16` words each, and `y` covers `trows` rows of
                // `gcols` codes at stride `ldo` (sliced above), and so does `other` (a slice
                // of the summand's length, asserted above) when there is a fused sum.
                unsafe { micro(&m) };
            }
        }
    }
    s.block = block;
    VSCRATCH.with(|c| *c.borrow_mut() = s);
}
