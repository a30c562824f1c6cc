//! Choosing a scale and zero point for a real range (FBGEMM `ChooseQuantizationParams`), plus
//! the DNNLOWP conventions for weights (uint8 chosen, then shifted to int8) and int32 biases.
//!
//! Quantization convention everywhere: `real = scale * (q - zero_point)`.
//!
//! Where FBGEMM versions differ, this module follows the 2018/2019 behaviour that produced the
//! published `resnet50_quantized` model (facts §7.3, §10):
//! - no minimum scale (the 6.1e-5 clip of FBGEMM 2020-12 is off unless
//!   [`QParamsOptions::clip_small_scale`] is set);
//! - symmetric zero point `(qmin + qmax) / 2 + 1` with integer division (old formula; it gives
//!   128 for `[0, 255]`, exactly like the 2021 formula `nearbyint(127.5)`).

use ops::QParams;

/// Smallest scale allowed by FBGEMM since 2020-12 (only with [`QParamsOptions::clip_small_scale`]).
pub const SMALL_SCALE_THRESHOLD: f32 = 6.1e-5;

/// Options of [`choose_quantization_params_with`] beyond the range and the code interval.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct QParamsOptions {
    /// Symmetric quantization: real 0 maps to the midpoint code (DNNLOWP `preserve_sparsity`).
    pub preserve_sparsity: bool,
    /// Round the scale to a power of two (`--caffe2_dnnlowp_force_scale_power_of_two`).
    pub force_scale_power_of_two: bool,
    /// Raise scales below 6.1e-5 to 6.1e-5 (FBGEMM 2020-12 and later; off = 2018/2019).
    pub clip_small_scale: bool,
}

/// `nearbyint` under the default rounding mode: round half to even.
pub fn round_half_even(x: f64) -> f64 {
    x.round_ties_even()
}

/// FBGEMM `ChooseQuantizationParams(min, max, qmin, qmax, preserve_sparsity)` with default
/// options (no power-of-two scale, no small-scale clip).
///
/// Steps (facts §7.3):
/// 1. symmetric mode (`preserve_sparsity && min < 0 < max`): `qs_min = -((qmax-qmin)/2 + 1)`,
///    `qs_max = (qmax-qmin)/2`, `t = max(|min/qs_min|, |max/qs_max|)`, `min = t*qs_min`,
///    `max = t*qs_max`;
/// 2. `min = min(min, 0)`, `max = max(max, 0)`;
/// 3. `scale = (max - min) / (qmax - qmin)` in double, stored as f32; `0 -> 0.1`;
/// 4. zero point `qmin - min/scale` or `qmax - max/scale`, whichever has the smaller error term
///    `|qmin| + |min/scale|` vs `|qmax| + |max/scale|`; symmetric mode: `(qmin+qmax)/2 + 1`;
/// 5. clamp to `[qmin, qmax]`, then round half to even.
///
/// Non-finite bounds are treated as 0.
///
/// Example: `(-1, 3, 0, 255, false)` gives scale `4/255`, zero point `nearbyint(63.75) = 64`.
pub fn choose_quantization_params(
    min: f32,
    max: f32,
    qmin: i32,
    qmax: i32,
    preserve_sparsity: bool,
) -> QParams {
    let opts = QParamsOptions {
        preserve_sparsity,
        ..QParamsOptions::default()
    };
    choose_quantization_params_with(min, max, qmin, qmax, &opts)
}

/// [`choose_quantization_params`] for activations: codes `[0, 255]`.
pub fn choose_activation_params(min: f32, max: f32, preserve_sparsity: bool) -> QParams {
    choose_quantization_params(min, max, 0, 255, preserve_sparsity)
}

/// [`choose_quantization_params`] with all options (power-of-two scale, small-scale clip).
///
/// Power of two: `scale < 1 -> 1 / 2^floor(log2(1/scale))`, else `2^ceil(log2(scale))`.
/// Small-scale clip (new FBGEMM): `scale < 6.1e-5 -> 6.1e-5`, with min/max stretched by the
/// same factor (or set to `-/+ 6.1e-5 * (qmax - qmin)` when the other end is 0).
pub fn choose_quantization_params_with(
    min: f32,
    max: f32,
    qmin: i32,
    qmax: i32,
    opts: &QParamsOptions,
) -> QParams {
    let mut min = if min.is_finite() { min } else { 0.0 };
    let mut max = if max.is_finite() { max } else { 0.0 };
    let (qmin, qmax) = if qmin <= qmax {
        (qmin, qmax)
    } else {
        (qmax, qmin)
    };
    let range = qmax as i64 - qmin as i64;

    if opts.preserve_sparsity && min < 0.0 && max > 0.0 {
        let qs_min = -(range / 2 + 1);
        let qs_max = range / 2;
        // float / int is a float division in C++; the max is taken in double.
        let t_min = (min / qs_min as f32).abs() as f64;
        let t_max = if qs_max == 0 {
            0.0
        } else {
            (max / qs_max as f32).abs() as f64
        };
        let t = t_min.max(t_max);
        min = (t * qs_min as f64) as f32;
        max = (t * qs_max as f64) as f32;
    }

    min = min.min(0.0);
    max = max.max(0.0);

    let mut scale = if range == 0 {
        0.0f32
    } else {
        ((max as f64 - min as f64) / range as f64) as f32
    };
    if scale == 0.0 || (1.0f32 / scale).is_infinite() {
        scale = 0.1;
    }

    if opts.force_scale_power_of_two {
        scale = if scale < 1.0 {
            let k = (1.0 / scale as f64).log2().floor();
            (1.0 / 2f64.powf(k)) as f32
        } else {
            let k = (scale as f64).log2().ceil();
            2f64.powf(k) as f32
        };
    }

    if opts.clip_small_scale && scale < SMALL_SCALE_THRESHOLD {
        let org_scale = scale;
        scale = SMALL_SCALE_THRESHOLD;
        if min == 0.0 {
            max = SMALL_SCALE_THRESHOLD * range as f32;
        } else if max == 0.0 {
            min = -SMALL_SCALE_THRESHOLD * range as f32;
        } else {
            let amplifier = SMALL_SCALE_THRESHOLD / org_scale;
            min *= amplifier;
            max *= amplifier;
        }
    }

    let s = scale as f64;
    let zp_from_min = qmin as f64 - min as f64 / s;
    let zp_from_max = qmax as f64 - max as f64 / s;
    let err_min = (qmin as f64).abs() + (min as f64 / s).abs();
    let err_max = (qmax as f64).abs() + (max as f64 / s).abs();
    let mut initial = if err_min < err_max {
        zp_from_min
    } else {
        zp_from_max
    };
    if opts.preserve_sparsity && min < 0.0 && max > 0.0 {
        // Old (2018/2019) formula with C++ integer division (truncation toward zero).
        initial = ((qmin as i64 + qmax as i64) / 2 + 1) as f64;
    }

    let zero_point = if initial < qmin as f64 {
        qmin
    } else if initial > qmax as f64 {
        qmax
    } else {
        round_half_even(initial) as i32
    };
    QParams { scale, zero_point }
}

/// Converts uint8-convention params (`[0, 255]`) to the int8 convention used by DNNLOWP
/// weights: the zero point is shifted by -128 (the scale is unchanged).
pub fn to_int8_convention(q: QParams) -> QParams {
    QParams {
        scale: q.scale,
        zero_point: q.zero_point - 128,
    }
}

/// Min and max of a slice ignoring NaN; `(0, 0)` for an empty slice or one with no number
/// (like `FindMinMax`, which returns 0/0 for empty input).
pub fn find_min_max(values: &[f32]) -> (f32, f32) {
    let mut lo = f32::INFINITY;
    let mut hi = f32::NEG_INFINITY;
    for &v in values {
        if v < lo {
            lo = v;
        }
        if v > hi {
            hi = v;
        }
    }
    if lo > hi {
        (0.0, 0.0)
    } else {
        (lo, hi)
    }
}

/// Per-tensor min/max params of a float weight tensor, in the **uint8** convention stored by
/// `Int8GivenTensorFill` (`Y_scale`, `Y_zero_point`): `ChooseQuantizationParams(min, max, 0, 255,
/// preserve_sparsity)` over all values. Use [`to_int8_convention`] for the int8 zero point
/// (symmetric weights: uint8 zero point 128, int8 zero point 0).
pub fn weight_qparams_min_max(w: &[f32], preserve_sparsity: bool) -> QParams {
    let (lo, hi) = find_min_max(w);
    choose_quantization_params(lo, hi, 0, 255, preserve_sparsity)
}

/// Splits a weight tensor whose slowest axis is the output channel (Caffe2 Conv `[M, ...]`,
/// FC `[N, K]`) into `groups` equal contiguous blocks. `None` when `groups` is 0 or does not
/// divide the length; an empty tensor yields no blocks.
pub fn weight_groups(w: &[f32], groups: usize) -> Option<std::slice::Chunks<'_, f32>> {
    if groups == 0 || !w.len().is_multiple_of(groups) {
        return None;
    }
    let per = w.len() / groups;
    if per == 0 {
        // Zero-sized weights: no blocks at all.
        return Some(w.chunks(1));
    }
    Some(w.chunks(per))
}

/// Quantizes floats to uint8 codes the way `Int8GivenTensorFill` values are produced
/// (`create_int8_given_tensor_fill`): `q = clamp(round_half_even(x / scale) + zero_point, 0, 255)`,
/// division in f32. For int8 weights subtract 128 from the codes and the zero point.
pub fn quantize_u8(values: &[f32], q: QParams) -> Vec<u8> {
    values
        .iter()
        .map(|&x| {
            let r = (x / q.scale).round_ties_even() as f64 + q.zero_point as f64;
            r.clamp(0.0, 255.0) as u8
        })
        .collect()
}

/// Scale of an int32 bias: `x_scale * w_scale` (f32 product; zero point 0).
pub fn bias_scale(x_scale: f32, w_scale: f32) -> f32 {
    x_scale * w_scale
}

/// Quantizes a float bias to int32: `b_q = round_half_even(b / scale)` (f32 division), saturated
/// to the int32 range. `scale` is normally [`bias_scale`]`(x_scale, w_scale)`.
pub fn quantize_bias(bias: &[f32], scale: f32) -> Vec<i32> {
    bias.iter()
        .map(|&b| {
            let r = (b / scale).round_ties_even() as f64;
            if r.is_nan() {
                0
            } else {
                r.clamp(i32::MIN as f64, i32::MAX as f64) as i32
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f64) -> bool {
        ((a as f64) - b).abs() <= 1e-7 * b.abs().max(1e-30)
    }

    #[test]
    fn worked_example_asymmetric() {
        // min -1, max 3: scale 4/255; zp from min: 0 + 1/(4/255) = 63.75 (error 63.75) vs
        // from max: 255 - 3*255/4 = 63.75 (error 255 + 191.25): use 63.75 -> 64.
        let q = choose_quantization_params(-1.0, 3.0, 0, 255, false);
        assert!(close(q.scale, 4.0 / 255.0), "{}", q.scale);
        assert_eq!(q.scale, (4.0f64 / 255.0) as f32);
        assert_eq!(q.zero_point, 64);
    }

    #[test]
    fn worked_example_symmetric() {
        // t = max(1/128, 3/127) = 3/127 = 0.023622; range [-128t, 127t]; scale = 255t/255 = t.
        let q = choose_quantization_params(-1.0, 3.0, 0, 255, true);
        let t = 3.0f32 / 127.0;
        let lo = (t as f64 * -128.0) as f32;
        let hi = (t as f64 * 127.0) as f32;
        let expect = ((hi as f64 - lo as f64) / 255.0) as f32;
        assert_eq!(q.scale, expect);
        assert!((q.scale - 0.023622).abs() < 1e-6);
        assert_eq!(q.zero_point, 128);
        // Symmetric with the negative side dominant: t = 4/128.
        let q = choose_quantization_params(-4.0, 1.0, 0, 255, true);
        assert!(close(q.scale, 4.0 / 128.0 * 255.0 / 255.0));
        assert_eq!(q.zero_point, 128);
    }

    #[test]
    fn symmetric_only_when_range_straddles_zero() {
        // ReLU outputs: min = 0, so preserve_sparsity changes nothing: scale = 6/255, zp = 0.
        let a = choose_quantization_params(0.0, 6.0, 0, 255, true);
        let b = choose_quantization_params(0.0, 6.0, 0, 255, false);
        assert_eq!(a, b);
        assert_eq!(a.zero_point, 0);
        assert_eq!(a.scale, (6.0f64 / 255.0) as f32);
    }

    #[test]
    fn range_is_extended_to_zero() {
        // [2, 5] -> [0, 5]: scale 5/255, zp 0. [-5, -2] -> [-5, 0]: zp 255.
        let q = choose_quantization_params(2.0, 5.0, 0, 255, false);
        assert_eq!(q.scale, (5.0f64 / 255.0) as f32);
        assert_eq!(q.zero_point, 0);
        let q = choose_quantization_params(-5.0, -2.0, 0, 255, false);
        assert_eq!(q.scale, (5.0f64 / 255.0) as f32);
        assert_eq!(q.zero_point, 255);
    }

    #[test]
    fn zero_range_gives_scale_point_one() {
        let q = choose_quantization_params(0.0, 0.0, 0, 255, false);
        assert_eq!(q.scale, 0.1);
        assert_eq!(q.zero_point, 0);
        let q = choose_quantization_params(f32::NAN, f32::INFINITY, 0, 255, true);
        assert_eq!(q.scale, 0.1);
        assert_eq!(q.zero_point, 0);
    }

    #[test]
    fn zero_point_ties_round_to_even() {
        // min = -126.5 s', max = 128.5 s' with s' = 1: scale = 255/255 = 1, zp_from_min =
        // 126.5 (error 126.5 < 255 + 128.5) -> nearbyint -> 126 (half to even, not 127).
        let q = choose_quantization_params(-126.5, 128.5, 0, 255, false);
        assert_eq!(q.scale, 1.0);
        assert_eq!(q.zero_point, 126);
        // 127.5 -> 128.
        let q = choose_quantization_params(-127.5, 127.5, 0, 255, false);
        assert_eq!(q.zero_point, 128);
    }

    #[test]
    fn zero_point_side_chosen_by_error_term() {
        // min = -10, max = 0.5: scale = 10.5/255; from min: 10*255/10.5 = 242.857 (error
        // 242.857) vs from max: 255 - 0.5*255/10.5 = 242.857 (error 255 + 12.14): min side.
        // [-5, 0]: error terms 255 vs 255 are equal, so the max side is used: 255 - 0 = 255.
        let q = choose_quantization_params(-10.0, 0.5, 0, 255, false);
        assert_eq!(q.zero_point, 243);
        assert_eq!(
            choose_quantization_params(-5.0, 0.0, 0, 255, false).zero_point,
            255
        );
        // Signed code range: qmin = -128, qmax = 127, min = -1, max = 1: scale = 2/255,
        // from min: -128 + 127.5 = -0.5 (error 128 + 127.5 = 255.5), from max: 127 - 127.5 =
        // -0.5 (error 254.5) -> max side -> -0.5 -> nearbyint -> -0 = 0.
        let q = choose_quantization_params(-1.0, 1.0, -128, 127, false);
        assert_eq!(q.zero_point, 0);
    }

    #[test]
    fn old_symmetric_zero_point_formula_on_signed_range() {
        // (qmin + qmax)/2 + 1 with truncating division: (-1)/2 + 1 = 1 (the 2018 behaviour).
        let q = choose_quantization_params(-1.0, 1.0, -128, 127, true);
        assert_eq!(q.zero_point, 1);
    }

    #[test]
    fn power_of_two_and_small_scale_options() {
        let opts = QParamsOptions {
            force_scale_power_of_two: true,
            ..Default::default()
        };
        // scale 4/255 = 0.01569 -> 1/2^floor(log2(63.75)) = 1/32.
        let q = choose_quantization_params_with(-1.0, 3.0, 0, 255, &opts);
        assert_eq!(q.scale, 1.0 / 32.0);
        // zp from min: 0 + 1*32 = 32.
        assert_eq!(q.zero_point, 32);
        // scale 510/255 = 2 -> 2; 600/255 = 2.35 -> 4.
        let q = choose_quantization_params_with(0.0, 600.0, 0, 255, &opts);
        assert_eq!(q.scale, 4.0);

        let clip = QParamsOptions {
            clip_small_scale: true,
            ..Default::default()
        };
        // [0, 0.001]: scale 3.9e-6 -> 6.1e-5, zp 0; without the option the tiny scale stays.
        let q = choose_quantization_params_with(0.0, 0.001, 0, 255, &clip);
        assert_eq!(q.scale, SMALL_SCALE_THRESHOLD);
        assert_eq!(q.zero_point, 0);
        let q = choose_quantization_params(0.0, 0.001, 0, 255, false);
        assert_eq!(q.scale, (0.001f32 as f64 / 255.0) as f32);
        // [-0.001, 0.001] stretched by the same factor: zp stays at 127.5 -> 128.
        let q = choose_quantization_params_with(-0.001, 0.001, 0, 255, &clip);
        assert_eq!(q.scale, SMALL_SCALE_THRESHOLD);
        assert_eq!(q.zero_point, 128);
    }

    #[test]
    fn symmetric_int8_weights_per_tensor() {
        // Weights in [-0.5, 0.25] symmetric: t = max(0.5/128, 0.25/127) = 0.5/128 = 1/256.
        let w = [0.25f32, -0.5, 0.1, 0.0, -0.0039];
        let q8 = weight_qparams_min_max(&w, true);
        assert_eq!(q8.scale, 1.0 / 256.0);
        assert_eq!(q8.zero_point, 128);
        let q = to_int8_convention(q8);
        assert_eq!(q.zero_point, 0);
        let codes = quantize_u8(&w, q8);
        // 0.25*256 = 64 -> 192; -0.5*256 = -128 -> 0; 0.1*256 = 25.6 -> 26 -> 154; 0 -> 128;
        // -0.0039*256 = -0.998 -> -1 -> 127.
        assert_eq!(codes, vec![192, 0, 154, 128, 127]);
        let i8codes: Vec<i32> = codes.iter().map(|&c| c as i32 - 128).collect();
        assert_eq!(i8codes, vec![64, -128, 26, 0, -1]);
    }

    #[test]
    fn symmetric_int8_weights_per_channel() {
        // Two output channels of 3 values each.
        let w = [1.0f32, -2.0, 0.5, 0.0, 0.127, -0.01];
        let groups: Vec<QParams> = weight_groups(&w, 2)
            .unwrap()
            .map(|g| weight_qparams_min_max(g, true))
            .collect();
        // ch0: t = max(2/128, 1/127) = 1/64. ch1: min -0.01, max 0.127: t = max(0.01/128,
        // 0.127/127) = 0.001.
        assert_eq!(groups[0].scale, 1.0 / 64.0);
        assert_eq!(groups[0].zero_point, 128);
        let t = (0.127f32 / 127.0) as f64;
        let expect = (((t * 127.0) as f32 as f64 - (t * -128.0) as f32 as f64) / 255.0) as f32;
        assert_eq!(groups[1].scale, expect);
        assert_eq!(groups[1].zero_point, 128);
        assert!(weight_groups(&w, 4).is_none());
        assert!(weight_groups(&w, 0).is_none());
        // Channel codes: 1.0*64 = 64 -> 192, -2*64 = -128 -> 0, 0.5*64 = 32 -> 160.
        assert_eq!(quantize_u8(&w[..3], groups[0]), vec![192, 0, 160]);
    }

    #[test]
    fn asymmetric_weight_then_shift() {
        // [0.2, 1.2] -> [0, 1.2]: scale 1.2/255, zp 0 (uint8) -> -128 (int8).
        let q = to_int8_convention(weight_qparams_min_max(&[0.2, 1.2, 0.7], false));
        assert_eq!(q.scale, (1.2f32 as f64 / 255.0) as f32);
        assert_eq!(q.zero_point, -128);
    }

    #[test]
    fn bias_int32() {
        let s = bias_scale(0.5, 0.25);
        assert_eq!(s, 0.125);
        // 1.0/0.125 = 8; -0.3125/0.125 = -2.5 -> -2 (half to even); 0.1875/0.125 = 1.5 -> 2;
        // 1e12 saturates.
        assert_eq!(
            quantize_bias(&[1.0, -0.3125, 0.1875, 1e12, -1e12], s),
            vec![8, -2, 2, i32::MAX, i32::MIN]
        );
    }

    #[test]
    fn quantize_u8_clamps_and_rounds_half_even() {
        let q = QParams {
            scale: 0.5,
            zero_point: 10,
        };
        // 1.25/0.5 = 2.5 -> 2 -> 12; 0.75/0.5 = 1.5 -> 2 -> 12; -10 -> -20+10 -> 0; 200 -> 255.
        assert_eq!(
            quantize_u8(&[1.25, 0.75, -10.0, 200.0], q),
            vec![12, 12, 0, 255]
        );
    }

    #[test]
    fn find_min_max_ignores_nan_and_handles_empty() {
        assert_eq!(find_min_max(&[]), (0.0, 0.0));
        assert_eq!(find_min_max(&[f32::NAN]), (0.0, 0.0));
        assert_eq!(find_min_max(&[3.0, f32::NAN, -1.0, 2.0]), (-1.0, 3.0));
    }
}
