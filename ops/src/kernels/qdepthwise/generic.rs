//! Portable depthwise code: one output pixel from its tap rows (the scalar level, and the
//! channels past the last full AVX2 block).

use super::{PackedDepthwise, Stage};
use crate::kernels::qgemm::QEpilogue;

/// Portable code for channels `from..C` of one pixel (64 channels at a time, taps outer so
/// the channel loop vectorizes).
pub(super) fn pixel_tail(
    taps: &[&[u8]],
    w: &PackedDepthwise,
    ep: &QEpilogue,
    from: usize,
    y: &mut [u8],
) {
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
pub(super) unsafe fn pixel_scalar(
    taps: &[&[u8]],
    w: &PackedDepthwise,
    st: &Stage<'_>,
    y: &mut [u8],
) {
    pixel_tail(taps, w, st.ep, 0, y);
}
