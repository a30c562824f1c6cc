//! Clip (ReLU6) absorption: a `Clip(min, max)` whose input comes from an op with an int8 form
//! disappears from the int8 net. The producer's output range is the Clip output's chosen
//! range intersected with `[min, max]`, and when the uint8 saturation of that range is exactly
//! the clip on the quantization grid ([`saturation_is_clip`]) the Clip is a no-op on the
//! codes. Caffe2 has no Int8Clip, so this keeps the net valid DNNLOWP with no new op type.

use caffe2_proto::OperatorDef;
use ops::int8::requant::quantize_u8;
use ops::QParams;

use crate::passes::util::arg_f;
use crate::quant::qparams::choose_quantization_params;

/// The bounds of a Clip op (absent ones as Caffe2 defaults them), or None when they are NaN
/// or crossed.
pub fn clip_bounds(op: &OperatorDef) -> Option<(f32, f32)> {
    let min = arg_f(op, "min").unwrap_or(f32::MIN);
    let max = arg_f(op, "max").unwrap_or(f32::MAX);
    (min <= max).then_some((min, max))
}

/// True when quantizing with `q` saturates exactly like `Clip(min, max)`: every float `x`
/// gets the same code as `clip(x)`. Quantizing is monotone in `x`, so this holds exactly when
/// `min` already maps to code 0 and `max` to code 255.
pub fn saturation_is_clip(q: QParams, min: f32, max: f32) -> bool {
    let inv = 1.0 / q.scale;
    quantize_u8(min, inv, q.zero_point) == 0 && quantize_u8(max, inv, q.zero_point) == 255
}

/// The producer's output parameters when it absorbs a `Clip(min, max)` whose own output was
/// given `clip_q`: `clip_q` itself when its saturation already is the clip, else the range
/// of `clip_q` intersected with `[min, max]` (re-chosen); None when no choice makes the
/// saturation exact (e.g. `min > 0`: every uint8 range contains 0).
pub fn absorbed_params(clip_q: QParams, min: f32, max: f32) -> Option<QParams> {
    if saturation_is_clip(clip_q, min, max) {
        return Some(clip_q);
    }
    let lo = clip_q.scale * (0 - clip_q.zero_point) as f32;
    let hi = clip_q.scale * (255 - clip_q.zero_point) as f32;
    let (lo, hi) = (lo.max(min), hi.min(max));
    if lo > hi {
        return None;
    }
    let q = choose_quantization_params(lo, hi, 0, 255, false);
    saturation_is_clip(q, min, max).then_some(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip(x: f32, lo: f32, hi: f32) -> f32 {
        x.max(lo).min(hi)
    }

    /// Every float on a fine grid (plus extremes) gets the same code with and without the
    /// clip in front: the saturation is the clip.
    fn assert_exact(q: QParams, min: f32, max: f32) {
        let inv = 1.0 / q.scale;
        let mut xs: Vec<f32> = (-40_000..=40_000).map(|k| k as f32 * 0.00025).collect();
        xs.extend([
            f32::MIN,
            -1e30,
            -7.0,
            6.0,
            6.0000005,
            1e30,
            f32::MAX,
            min,
            max,
        ]);
        for x in xs {
            let direct = quantize_u8(x, inv, q.zero_point);
            let clipped = quantize_u8(clip(x, min, max), inv, q.zero_point);
            assert_eq!(direct, clipped, "x = {x}, q = {q:?}, clip [{min}, {max}]");
        }
    }

    #[test]
    fn relu6_range_is_exact_on_the_grid() {
        // The range calibration gives a ReLU6 output: [0, r] with r <= 6.
        for r in [6.0f32, 5.9999, 4.25, 1.0, 0.01] {
            let q = choose_quantization_params(0.0, r, 0, 255, false);
            assert_eq!(q.zero_point, 0);
            assert_eq!(absorbed_params(q, 0.0, 6.0), Some(q));
            assert_exact(q, 0.0, 6.0);
        }
    }

    #[test]
    fn a_wider_range_is_intersected_with_the_clip() {
        // [-3, 9] (z = 64) does not saturate at 0 and 6: re-chosen as [0, 6].
        let wide = choose_quantization_params(-3.0, 9.0, 0, 255, false);
        assert!(!saturation_is_clip(wide, 0.0, 6.0));
        let q = absorbed_params(wide, 0.0, 6.0).unwrap();
        assert_eq!(q, choose_quantization_params(0.0, 6.0, 0, 255, false));
        assert_eq!((q.zero_point, q.scale), (0, 6.0 / 255.0));
        assert_exact(q, 0.0, 6.0);
        // Hand-worked: 6/255 = 0.0235294; 3.0 -> 127.5 -> 128 (ties to even), 7 -> 255, -1 -> 0.
        let inv = 1.0 / q.scale;
        assert_eq!(quantize_u8(3.0, inv, 0), 128);
        assert_eq!(quantize_u8(7.0, inv, 0), 255);
        assert_eq!(quantize_u8(-1.0, inv, 0), 0);
    }

    #[test]
    fn every_absorbed_range_is_exact_and_relu_like_clips_always_absorb() {
        for (lo, hi) in [
            (-2.0f32, 2.0),
            (-0.3, 7.5),
            (0.0, 3.0),
            (-5.0, 0.5),
            (-1.0, 12.0),
        ] {
            let clip_q = choose_quantization_params(lo, hi, 0, 255, false);
            for min in [-2.0f32, -1.0, -0.5, 0.0] {
                for max in [1.0f32, 3.0, 6.0] {
                    match absorbed_params(clip_q, min, max) {
                        Some(q) => assert_exact(q, min, max),
                        // min = 0 (Relu-like) always works: the range [0, x] has zero point 0.
                        None => assert!(min < 0.0, "[{lo}, {hi}] clip [{min}, {max}]"),
                    }
                }
            }
        }
        // Clip without bounds is the identity: any range saturates "exactly".
        let any = choose_quantization_params(-2.0, 5.0, 0, 255, false);
        assert_eq!(absorbed_params(any, f32::MIN, f32::MAX), Some(any));
    }

    #[test]
    fn clip_above_zero_cannot_be_absorbed() {
        // Every uint8 range contains 0, so codes below min = 1 exist.
        let q = choose_quantization_params(1.0, 5.0, 0, 255, false);
        assert_eq!(absorbed_params(q, 1.0, 5.0), None);
    }
}
