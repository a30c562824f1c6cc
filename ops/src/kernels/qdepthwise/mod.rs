//! Exact uint8 depthwise convolution (NHWC, group == C == M) with the fused DNNLOWP output
//! stage, AVX2 and portable.
//!
//! For output pixel `(n, oy, ox)` and channel `c`, with the `kH·kW` taps `t` of the window:
//! `acc = Σ_t x[t, c] · (w[c, t] − z_w[c])` (int32, wrapping), where a tap that falls into
//! the padding reads the input zero point `z_x`, then the [`QEpilogue`] adds
//! `b[c] − z_x · Σ_t (w[c, t] − z_w[c])` and requantizes. That is `Σ_t (x − z_x)(w − z_w) + b`
//! of the scalar reference exactly (modulo 2^32).
//!
//! AVX2: 16 channels at a time; the codes of two taps are zero-extended to i16 and
//! interleaved (`vpunpck[lh]wd`), so one `vpmaddwd` adds both taps' products per channel.
//! The interleave puts channels in the order `[0–3, 8–11]` and `[4–7, 12–15]`; weights and the
//! output-stage vectors are stored in that order, and `vpackssdw` restores the natural order.
//! Channels past the last multiple of 16 use the portable code. Rows of the output are split
//! over rayon; every output is an exact integer sum, so results do not depend on threads.

use rayon::prelude::*;

use super::isa::Isa;
use super::qgemm::QEpilogue;
use crate::{OpError, OpResult};

/// Channels per vector block.
const CB: usize = 16;

/// Lane `l` of a block's two accumulators holds channel `PERM[l]` of the block.
const PERM: [usize; CB] = [0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15];

/// Depthwise weights `[C, taps]` centred by their zero points: tap-major `[taps][C]`
/// (portable path) and, for every full block of 16 channels, as i16 pairs of consecutive
/// taps in the AVX2 lane order (`[block][tap pair][16]`), plus the per-channel sums
/// `Σ_t (w − z_w)`.
#[derive(Clone, PartialEq)]
pub struct PackedDepthwise {
    c: usize,
    taps: usize,
    by_tap: Vec<i32>,
    blocks: Vec<i32>,
    col_sums: Vec<i32>,
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

/// The output stage in the lane order of the AVX2 blocks (full blocks only).
struct Stage<'a> {
    ep: &'a QEpilogue,
    offsets: Vec<i32>,
    mults: Vec<f32>,
}

/// One output pixel: the tap rows (`C` codes each, padding → the zero-point row), the
/// weights, the stage, and the pixel's `C` output codes.
type PixelFn = unsafe fn(&[&[u8]], &PackedDepthwise, &Stage<'_>, &mut [u8]);

/// The pixel kernel of `isa`; AVX2 only if this CPU has it.
fn pixel_kernel(isa: Isa) -> PixelFn {
    match Isa::capped(isa) {
        #[cfg(target_arch = "x86_64")]
        l if l.has_avx2() => avx2::pixel,
        _ => pixel_scalar,
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

/// [`qdepthwise`] with an explicit instruction set (AVX2 falls back to the portable kernel
/// on CPUs without it).
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
    if x.len() != s.n * s.h * s.w * c || y.len() != s.n * s.oh * s.ow * c {
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
    let kern = pixel_kernel(isa);
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
                // SAFETY: `kern` is the AVX2 kernel only on CPUs with AVX2 (see
                // `pixel_kernel`); it checks the slice lengths itself.
                unsafe { kern(&taps, w, &stage, ypix) };
            }
        });
    Ok(())
}

/// Portable code for channels `from..C` of one pixel (64 channels at a time, taps outer so
/// the channel loop vectorizes).
fn pixel_tail(taps: &[&[u8]], w: &PackedDepthwise, ep: &QEpilogue, from: usize, y: &mut [u8]) {
    const STEP: usize = 64;
    let c = w.c;
    for start in (from..c).step_by(STEP) {
        let len = STEP.min(c - start);
        let mut acc = [0i32; STEP];
        for (t, tap) in taps.iter().enumerate() {
            let wr = &w.by_tap[t * c + start..t * c + start + len];
            for ((a, &x), &wv) in acc.iter_mut().zip(&tap[start..start + len]).zip(wr) {
                *a = a.wrapping_add(i32::from(x) * wv);
            }
        }
        for (j, (out, &a)) in y[start..start + len].iter_mut().zip(&acc).enumerate() {
            *out = ep.apply(a, start + j);
        }
    }
}

/// Portable pixel kernel.
///
/// # Safety
/// None required (safe code; `unsafe` only to share the function-pointer type).
unsafe fn pixel_scalar(taps: &[&[u8]], w: &PackedDepthwise, st: &Stage<'_>, y: &mut [u8]) {
    pixel_tail(taps, w, st.ep, 0, y);
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{pixel_tail, PackedDepthwise, Stage, CB};
    use crate::kernels::qgemm::avx2::{requant16_finite, requant8};
    use std::arch::x86_64::*;

    /// AVX2 pixel kernel (see `PixelFn`).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA. (Slice lengths are checked here.)
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn pixel(taps: &[&[u8]], w: &PackedDepthwise, st: &Stage<'_>, y: &mut [u8]) {
        let c = w.c;
        let nblocks = c / CB;
        let npairs = w.taps.div_ceil(2);
        assert!(taps.len() == w.taps && taps.iter().all(|t| t.len() >= c) && y.len() >= c);
        assert!(w.blocks.len() >= nblocks * npairs * CB);
        assert!(st.offsets.len() >= nblocks * CB && st.mults.len() >= nblocks * CB);
        // SAFETY: tap rows are read at [16b, 16b + 16) ⊂ [0, c), weights at block b's
        // 2·8 lanes of each pair, the stage vectors at [16b, 16b + 16), y at [16b, 16b + 16),
        // all within the lengths asserted above; loads and stores are unaligned.
        unsafe {
            let zp = _mm256_set1_epi32(st.ep.zero_point());
            let lo = _mm256_set1_epi32(st.ep.lo());
            let lo8 = _mm_set1_epi8(st.ep.lo() as u8 as i8);
            let finite = st.ep.finite();
            for b in 0..nblocks {
                let mut acc0 = _mm256_setzero_si256();
                let mut acc1 = _mm256_setzero_si256();
                let wb = w.blocks.as_ptr().add(b * npairs * CB) as *const __m256i;
                for q in 0..npairs {
                    let t0 = taps[2 * q];
                    let t1 = taps.get(2 * q + 1).copied().unwrap_or(t0);
                    let a = _mm256_cvtepu8_epi16(_mm_loadu_si128(
                        t0.as_ptr().add(b * CB) as *const __m128i
                    ));
                    let bb = _mm256_cvtepu8_epi16(_mm_loadu_si128(
                        t1.as_ptr().add(b * CB) as *const __m128i
                    ));
                    let w0 = _mm256_loadu_si256(wb.add(2 * q));
                    let w1 = _mm256_loadu_si256(wb.add(2 * q + 1));
                    acc0 =
                        _mm256_add_epi32(acc0, _mm256_madd_epi16(_mm256_unpacklo_epi16(a, bb), w0));
                    acc1 =
                        _mm256_add_epi32(acc1, _mm256_madd_epi16(_mm256_unpackhi_epi16(a, bb), w1));
                }
                let off = st.offsets.as_ptr().add(b * CB) as *const __m256i;
                let m = st.mults.as_ptr().add(b * CB);
                let out = y.as_mut_ptr().add(b * CB) as *mut __m128i;
                if finite {
                    let bytes = requant16_finite::<false>(
                        acc0,
                        acc1,
                        _mm256_loadu_si256(off),
                        _mm256_loadu_si256(off.add(1)),
                        _mm256_loadu_ps(m),
                        _mm256_loadu_ps(m.add(8)),
                        zp,
                        lo8,
                    );
                    _mm_storeu_si128(out, bytes);
                    continue;
                }
                let v0 = requant8(acc0, _mm256_loadu_si256(off), _mm256_loadu_ps(m), zp, lo);
                let v1 = requant8(
                    acc1,
                    _mm256_loadu_si256(off.add(1)),
                    _mm256_loadu_ps(m.add(8)),
                    zp,
                    lo,
                );
                // packs: [v0 lo (0-3), v1 lo (4-7) | v0 hi (8-11), v1 hi (12-15)].
                let p = _mm256_packs_epi32(v0, v1);
                let bytes =
                    _mm_packus_epi16(_mm256_castsi256_si128(p), _mm256_extracti128_si256::<1>(p));
                _mm_storeu_si128(out, bytes);
            }
        }
        pixel_tail(taps, w, st.ep, nblocks * CB, y);
    }
}
