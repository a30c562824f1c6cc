//! The rounding and requantization steps of DNNLOWP, written out once.
//!
//! Every Int8 operator in this crate goes through these functions:
//!
//! - [`requantize`]: 32-bit accumulator → uint8 code, `clamp(lrint(raw · M) + z_y, lo, 255)`
//!   with `M` an f32 multiplier (Conv, FC, Concat). [`OutputStage`] wraps it with one
//!   multiplier per output channel.
//! - [`requantize_real`]: an f32 value already in output units plus the zero point,
//!   `clamp(nearbyint(v + z_y), lo, 255)` (Sum/Add, AveragePool), i.e. the zero point is
//!   added *before* rounding as in those DNNLOWP kernels.
//! - [`quantize_u8`] / [`dequantize_u8`] (Int8Quantize / Int8Dequantize), [`quantize_bias`].
//! - [`relu_output_params`]: DNNLOWP's re-derivation of the output parameters of
//!   ReLU-fused operators.
//!
//! Rounding is always round-half-to-even (C `lrintf`/`nearbyint` under the default
//! rounding mode, and what the AVX2 `cvtps` instructions do).
//!
//! [`Q31Multiplier`] implements QNNPACK's fixed-point requantization for reference; the
//! operators do not use it (they compute with the DNNLOWP float multiplier for every engine).

use crate::kernels::qgemm::QEpilogue;
use crate::{OpError, OpResult, QParams};

/// Largest uint8 code.
pub const QMAX: i32 = 255;

/// Rounds to the nearest integer, ties to even (`lrintf`/`nearbyint` in the default mode).
#[inline]
pub fn round_half_even(x: f32) -> f32 {
    x.round_ties_even()
}

/// Clamps an integer to `[lo, 255]` and narrows it to a code.
#[inline]
fn clamp_code(v: i64, lo: i32) -> u8 {
    v.clamp(i64::from(lo), i64::from(QMAX)) as u8
}

/// DNNLOWP requantization of a 32-bit accumulator:
/// `clamp(lrint(raw · multiplier) + zero_point, lo, 255)`.
///
/// `raw` is converted to f32 (round to nearest, as C does) and multiplied in f32. `lo` is 0,
/// or the output zero point when a ReLU is fused. Out-of-range products saturate (C's
/// `lrintf` would be undefined there); a NaN multiplier gives `zero_point`.
#[inline]
pub fn requantize(raw: i32, multiplier: f32, zero_point: i32, lo: i32) -> u8 {
    let scaled = round_half_even(raw as f32 * multiplier);
    // `as i64` saturates (and maps NaN to 0), so the sum cannot overflow.
    clamp_code((scaled as i64).saturating_add(i64::from(zero_point)), lo)
}

/// `clamp(nearbyint(v + zero_point), lo, 255)` with the addition done in f32: the output stage
/// of DNNLOWP's Sum/Add and AveragePool, where `v` is already in output units.
#[inline]
pub fn requantize_real(v: f32, zero_point: i32, lo: i32) -> u8 {
    clamp_code(round_half_even(v + zero_point as f32) as i64, lo)
}

/// The constant of one Sum/Add input's term, `f32(−z · s)` (the int `−z` converted, then
/// multiplied in f32, as DNNLOWP's `-zero_point * scale`).
#[inline]
pub fn sum_offset(p: QParams) -> f32 {
    (-p.zero_point) as f32 * p.scale
}

/// One input's term of an Int8 Sum/Add, as DNNLOWP's x86 kernel forms it:
/// `fma(q, s, f32(−z · s))`, one rounding (not `s · (q − z)`).
#[inline]
pub fn sum_term(q: u8, p: QParams) -> f32 {
    f32::from(q).mul_add(p.scale, sum_offset(p))
}

/// `1/s_y` of the Sum/Add output stage: divided in f64 and rounded to f32, as DNNLOWP's
/// `_mm256_set1_ps(1.0 / out_qparams_.scale)`.
#[inline]
pub fn sum_inv_scale(scale: f32) -> f32 {
    (1.0f64 / f64::from(scale)) as f32
}

/// The Sum/Add output code: `clamp(rhe(fma(acc, inv, z_y)), lo, 255)` (DNNLOWP's x86 form,
/// one rounding for the multiply-add); NaN gives `lo`.
#[inline]
pub fn requantize_sum(acc: f32, inv: f32, zero_point: i32, lo: i32) -> u8 {
    clamp_code(
        round_half_even(acc.mul_add(inv, zero_point as f32)) as i64,
        lo,
    )
}

/// The DNNLOWP requantization multiplier `M = (s_x · s_w) / s_y`, evaluated left to right in
/// f32 exactly as the C++ expression `in_scale * filter_scale / out_scale`.
#[inline]
pub fn conv_multiplier(x_scale: f32, w_scale: f32, y_scale: f32) -> f32 {
    x_scale * w_scale / y_scale
}

/// Output stage of Conv/FC: one f32 multiplier per output channel (all equal with per-tensor
/// weight parameters; per-channel weight scales only need a different `multipliers`), the
/// output zero point and the lower clamp (`z_y` when a ReLU is fused, else 0).
#[derive(Debug, Clone, PartialEq)]
pub struct OutputStage {
    /// `M[m] = s_x · s_w[m] / s_y` for every output channel `m`.
    pub multipliers: Vec<f32>,
    /// Output zero point `z_y`.
    pub zero_point: i32,
    /// Lower clamp bound: `z_y` with a fused ReLU, else 0.
    pub lo: i32,
}

impl OutputStage {
    /// The stage for input scale `x_scale`, one weight scale per output channel, output
    /// parameters `y` and an optional fused ReLU.
    pub fn new(x_scale: f32, w_scales: &[f32], y: QParams, relu: bool) -> OutputStage {
        OutputStage {
            multipliers: w_scales
                .iter()
                .map(|&s| conv_multiplier(x_scale, s, y.scale))
                .collect(),
            zero_point: y.zero_point,
            lo: if relu { y.zero_point } else { 0 },
        }
    }

    /// Requantizes the accumulator of output channel `channel` (see [`requantize`]).
    #[inline]
    pub fn apply(&self, raw: i32, channel: usize) -> u8 {
        requantize(raw, self.multipliers[channel], self.zero_point, self.lo)
    }

    /// The fast GEMM's form of this stage for output channels `cols`: weights with column
    /// sums `col_sums` (of those channels), input zero point `zx`, `bias` of every channel.
    pub fn epilogue(
        &self,
        col_sums: &[i32],
        zx: i32,
        bias: &[i32],
        cols: std::ops::Range<usize>,
    ) -> OpResult<QEpilogue> {
        let short = || {
            OpError::Shape(format!(
                "output stage: channels {cols:?} of {} biases and {} multipliers",
                bias.len(),
                self.multipliers.len()
            ))
        };
        QEpilogue::new(
            col_sums,
            zx,
            bias.get(cols.clone()).ok_or_else(short)?,
            self.multipliers.get(cols.clone()).ok_or_else(short)?,
            self.zero_point,
            self.lo,
        )
    }
}

/// Int8Quantize as FBGEMM does it since 2020: `clamp(z + nearbyint(x · inv_scale), 0, 255)`
/// with `inv_scale = 1 / s` computed once in f32. NaN inputs give `z` (C would be undefined).
#[inline]
pub fn quantize_u8(x: f32, inv_scale: f32, zero_point: i32) -> u8 {
    let r = round_half_even(x * inv_scale) as i64;
    clamp_code(r.saturating_add(i64::from(zero_point)), 0)
}

/// The 2018–early-2020 FBGEMM scalar form, `clamp(nearbyint(z + x / s), 0, 255)`, for
/// comparison: it can differ from [`quantize_u8`] by one code when `x / s` is (nearly) a tie.
#[inline]
pub fn quantize_u8_legacy(x: f32, scale: f32, zero_point: i32) -> u8 {
    clamp_code(round_half_even(zero_point as f32 + x / scale) as i64, 0)
}

/// Int8Dequantize: `s · (q − z)`, the difference formed in integers and converted to f32.
#[inline]
pub fn dequantize_u8(q: u8, p: QParams) -> f32 {
    p.scale * (i32::from(q) - p.zero_point) as f32
}

/// A float bias quantized to int32 with scale `s_x · s_w` and zero point 0:
/// `round_half_even(b / scale)` in f32, saturated to the i32 range. Non-finite values are an
/// error.
pub fn quantize_bias(b: f32, scale: f32) -> OpResult<i32> {
    if !b.is_finite() {
        return Err(OpError::DType(format!("bias value {b} is not finite")));
    }
    // `as i32` saturates.
    Ok(round_half_even(b / scale) as i32)
}

/// The largest real value representable with `p`: `s · (255 − z)` in f32 (FBGEMM
/// `TensorQuantizationParams::Max`).
#[inline]
pub fn real_max(p: QParams) -> f32 {
    p.scale * (QMAX - p.zero_point) as f32
}

/// DNNLOWP's output parameters for an operator fused with (or followed by) a ReLU:
/// `ChooseQuantizationParams(0, Max)` with `Max = s_y · (255 − z_y)`.
///
/// With `min = 0` that reduces to scale `= f32((f64(Max) − 0) / 255)` (0.1 if it is 0) and
/// zero point 0. Note that this is *not* always the identity for `z_y = 0`: `f32(s · 255)`
/// rounds, and for about 0.4 % of f32 scales the result is one ulp away from `s`. A non-zero
/// `Y_zero_point` is replaced by 0 and the scale shrinks to cover `[0, Max]`, as DNNLOWP does.
/// (The 2020+ FBGEMM lower bound on the scale, 6.1e-5, is not applied: the published models
/// predate it.)
pub fn relu_output_params(y: QParams) -> QParams {
    let max = real_max(y).max(0.0);
    let mut scale = (f64::from(max) / f64::from(QMAX)) as f32;
    if scale == 0.0 || (1.0f32 / scale).is_infinite() {
        scale = 0.1;
    }
    QParams {
        scale,
        zero_point: 0,
    }
}

/// QNNPACK's Q31 fixed-point requantization parameters, derived from the bits of an f32
/// scale in `[2^-32, 1)`: `multiplier` = the 24-bit significand (implicit one included)
/// shifted left by 7, `shift = 126 − biased exponent`, so that
/// `scale = multiplier · 2^-(31 + shift)` exactly.
///
/// Not used by the operators (they use the DNNLOWP float multiplier for every engine); kept
/// as a documented reference. The tie handling follows QNNPACK's scalar reference (round half
/// up in the Q31 product, then a rounding shift with ties away from zero) and has not been
/// checked bit for bit against a QNNPACK build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Q31Multiplier {
    /// Significand in `[2^30, 2^31)`.
    pub multiplier: i32,
    /// Right shift after the Q31 multiplication, in `[0, 31]`.
    pub shift: u32,
}

impl Q31Multiplier {
    /// Parameters for `scale`; fails unless `2^-32 <= scale < 1` (QNNPACK asserts this).
    pub fn from_scale(scale: f32) -> OpResult<Q31Multiplier> {
        if !(scale.is_finite() && scale >= 2f32.powi(-32) && scale < 1.0) {
            return Err(OpError::Unsupported(format!(
                "QNNPACK requantization needs a scale in [2^-32, 1), got {scale}"
            )));
        }
        let bits = scale.to_bits();
        let multiplier = (((bits & 0x007f_ffff) | 0x0080_0000) << 7) as i32;
        let shift = 126 - (bits >> 23) as i32;
        Ok(Q31Multiplier {
            multiplier,
            shift: shift as u32,
        })
    }

    /// `raw · scale` rounded, before adding the zero point.
    pub fn scale(&self, raw: i32) -> i32 {
        let product = i64::from(raw) * i64::from(self.multiplier);
        // Q31 product, rounded half up.
        let q31 = ((product + (1i64 << 30)) >> 31) as i32;
        if self.shift == 0 {
            return q31;
        }
        // Rounding right shift with ties away from zero.
        let mask = (1i32 << self.shift) - 1;
        let threshold = mask >> 1;
        let remainder = (q31 & mask) - i32::from(q31 < 0);
        (q31 >> self.shift) + i32::from(remainder > threshold)
    }

    /// `clamp(scale(raw) + zero_point, lo, 255)`.
    pub fn requantize(&self, raw: i32, zero_point: i32, lo: i32) -> u8 {
        clamp_code(i64::from(self.scale(raw)) + i64::from(zero_point), lo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_half_even_ties() {
        let cases = [
            (0.5f32, 0.0f32),
            (1.5, 2.0),
            (2.5, 2.0),
            (3.5, 4.0),
            (-0.5, 0.0),
            (-1.5, -2.0),
            (-2.5, -2.0),
            (2.4999998, 2.0),
            (2.5000002, 3.0),
        ];
        for (x, want) in cases {
            assert_eq!(round_half_even(x), want, "{x}");
        }
    }

    #[test]
    fn requantize_hand_worked() {
        // M = 0.5 (exact): raw 5 -> 2.5 -> 2; raw 7 -> 3.5 -> 4; raw -5 -> -2.5 -> -2.
        assert_eq!(requantize(5, 0.5, 10, 0), 12);
        assert_eq!(requantize(7, 0.5, 10, 0), 14);
        assert_eq!(requantize(-5, 0.5, 10, 0), 8);
        assert_eq!(requantize(1, 0.5, 10, 0), 10); // 0.5 -> 0
        assert_eq!(requantize(3, 0.5, 10, 0), 12); // 1.5 -> 2
                                                   // Clamping: 600 * 0.5 = 300 + 10 > 255; -100 * 0.5 + 10 = -40 < 0.
        assert_eq!(requantize(600, 0.5, 10, 0), 255);
        assert_eq!(requantize(-100, 0.5, 10, 0), 0);
        // ReLU: lower bound is the zero point.
        assert_eq!(requantize(-4, 0.5, 10, 10), 10);
        assert_eq!(requantize(4, 0.5, 10, 10), 12);
        // Saturation instead of undefined behaviour.
        assert_eq!(requantize(i32::MAX, f32::MAX, 255, 0), 255);
        assert_eq!(requantize(i32::MIN, f32::MAX, 0, 0), 0);
    }

    #[test]
    fn requantize_real_adds_zero_point_before_rounding() {
        // 0.49999997 + 127 rounds (in f32) to 127.5, which ties to 128; rounding first and
        // adding the zero point afterwards would give 127.
        let v = 0.499_999_97_f32;
        assert_eq!(requantize_real(v, 127, 0), 128);
        assert_eq!(requantize(1, v, 127, 0), 127);
        assert_eq!(requantize_real(2.5, 0, 0), 2);
        assert_eq!(requantize_real(-3.0, 2, 0), 0);
        assert_eq!(requantize_real(-3.0, 2, 2), 2);
        assert_eq!(requantize_real(1e9, 2, 0), 255);
    }

    #[test]
    fn output_stage_per_channel() {
        let y = QParams {
            scale: 0.5,
            zero_point: 3,
        };
        let st = OutputStage::new(0.25, &[1.0, 2.0], y, false);
        // M = 0.25 * 1 / 0.5 = 0.5 and 0.25 * 2 / 0.5 = 1.0.
        assert_eq!(st.multipliers, vec![0.5, 1.0]);
        assert_eq!(st.apply(5, 0), 5); // 2.5 -> 2, + 3
        assert_eq!(st.apply(5, 1), 8); // 5 + 3
        assert_eq!(st.apply(-10, 0), 0); // -5 + 3 -> clamp 0
        let st = OutputStage::new(0.25, &[1.0], y, true);
        assert_eq!(st.apply(-10, 0), 3);
    }

    #[test]
    fn quantize_forms_and_ties() {
        // s = 0.5: x = 1.25 -> x / s = 2.5 -> 2 (half even) + 128 = 130.
        assert_eq!(quantize_u8(1.25, 2.0, 128), 130);
        assert_eq!(quantize_u8(1.75, 2.0, 128), 132); // 3.5 -> 4
        assert_eq!(quantize_u8(-100.0, 2.0, 128), 0);
        assert_eq!(quantize_u8(100.0, 2.0, 128), 255);
        assert_eq!(quantize_u8(f32::NAN, 2.0, 7), 7);
        // The legacy form rounds after adding z: 2.5 + 127 = 129.5 -> 130, while the current
        // form gives nearbyint(2.5) + 127 = 129.
        assert_eq!(quantize_u8(1.25, 2.0, 127), 129);
        assert_eq!(quantize_u8_legacy(1.25, 0.5, 127), 130);
        assert_eq!(quantize_u8_legacy(1.25, 0.5, 128), 130);
    }

    #[test]
    fn dequantize_and_bias() {
        let p = QParams {
            scale: 0.25,
            zero_point: 100,
        };
        assert_eq!(dequantize_u8(104, p), 1.0);
        assert_eq!(dequantize_u8(0, p), -25.0);
        // 0.3 / 0.125 = 2.4 -> 2; 0.3125 / 0.125 = 2.5 -> 2; 0.4375 / 0.125 = 3.5 -> 4.
        assert_eq!(quantize_bias(0.3, 0.125).unwrap(), 2);
        assert_eq!(quantize_bias(0.3125, 0.125).unwrap(), 2);
        assert_eq!(quantize_bias(-0.4375, 0.125).unwrap(), -4);
        assert_eq!(quantize_bias(1e30, 1e-10).unwrap(), i32::MAX);
        assert!(quantize_bias(f32::NAN, 0.1).is_err());
    }

    #[test]
    fn relu_params() {
        // z = 0 and a scale that survives the round trip: unchanged.
        let p = QParams {
            scale: 0.25,
            zero_point: 0,
        };
        assert_eq!(relu_output_params(p), p);
        // z = 128, s = 0.5: Max = 0.5 * 127 = 63.5, scale = 63.5 / 255.
        let q = relu_output_params(QParams {
            scale: 0.5,
            zero_point: 128,
        });
        assert_eq!(q.zero_point, 0);
        assert_eq!(q.scale, (63.5f64 / 255.0) as f32);
        // z = 255: Max = 0 -> scale 0.1.
        let q = relu_output_params(QParams {
            scale: 0.5,
            zero_point: 255,
        });
        assert_eq!(
            q,
            QParams {
                scale: 0.1,
                zero_point: 0
            }
        );
        // z = 0 but f32(s * 255) rounds: 1.0000222e-6 (the smallest such scale >= 1e-6)
        // moves by one ulp. Computed independently: s*255 in f32, then / 255 in f64.
        let s = 1.000_022_2e-6_f32;
        let want = ((s * 255.0) as f64 / 255.0) as f32;
        assert_ne!(want, s);
        assert_eq!(
            relu_output_params(QParams {
                scale: s,
                zero_point: 0
            })
            .scale,
            want
        );
        // For most scales it is the identity, e.g. the published ResNet-50 conv1 output.
        let s = 0.061_811_6_f32;
        let q = relu_output_params(QParams {
            scale: s,
            zero_point: 0,
        });
        assert_eq!(q.scale, ((s * 255.0) as f64 / 255.0) as f32);
    }

    #[test]
    fn q31_parameters_and_rounding() {
        // 0.5 = 1.0 * 2^-1: significand 2^23 << 7 = 2^30, biased exponent 126 -> shift 0.
        let q = Q31Multiplier::from_scale(0.5).unwrap();
        assert_eq!((q.multiplier, q.shift), (1 << 30, 0));
        // 0.375 = 1.5 * 2^-2: multiplier 1.5 * 2^30, shift 1.
        let q = Q31Multiplier::from_scale(0.375).unwrap();
        assert_eq!((q.multiplier, q.shift), (3 << 29, 1));
        // raw 4 * 0.375 = 1.5: Q31 product 4 * 1.5 * 2^30 / 2^31 = 3 exactly, then 3 / 2 =
        // 1.5 -> ties away from zero -> 2; -4 -> -2.
        assert_eq!(q.scale(4), 2);
        assert_eq!(q.scale(-4), -2);
        // raw 3 * 0.375 = 1.125 -> 1; raw 10 * 0.375 = 3.75 -> 4.
        assert_eq!(q.scale(3), 1);
        assert_eq!(q.scale(10), 4);
        assert_eq!(q.requantize(10, 100, 0), 104);
        assert_eq!(q.requantize(-1000, 100, 100), 100);
        // With shift 0 the first rounding is half up: 0.5 * 3 = 1.5 -> 2, -1.5 -> -1.
        let h = Q31Multiplier::from_scale(0.5).unwrap();
        assert_eq!(h.scale(3), 2);
        assert_eq!(h.scale(-3), -1);
        assert!(Q31Multiplier::from_scale(1.0).is_err());
        assert!(Q31Multiplier::from_scale(0.0).is_err());
    }

    #[test]
    fn q31_matches_exact_product_off_ties() {
        // Away from ties the fixed-point result equals round(raw * scale) computed in f64.
        let scales = [0.000_123_4_f32, 0.0137, 0.2, 0.61803, 0.999];
        let mut seed = 12345u64;
        for &s in &scales {
            let q = Q31Multiplier::from_scale(s).unwrap();
            for _ in 0..2000 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let raw = ((seed >> 33) as i64 - (1 << 30)) as i32 / 64;
                let exact = f64::from(raw) * f64::from(s);
                // Two roundings: skip values within one Q31 unit of a tie.
                let unit = 2f64.powi(-(q.shift as i32));
                if (exact - exact.floor() - 0.5).abs() <= unit {
                    continue;
                }
                assert_eq!(q.scale(raw) as f64, exact.round(), "raw {raw} scale {s}");
            }
        }
    }
}
