//! The AVX2 pixel kernel: 16 channels per step, two taps per `vpmaddwd` (see the module docs
//! of [`super`]).

use super::generic::pixel_tail;
use super::{PackedDepthwise, Stage, CB};
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
                acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(_mm256_unpacklo_epi16(a, bb), w0));
                acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(_mm256_unpackhi_epi16(a, bb), w1));
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
