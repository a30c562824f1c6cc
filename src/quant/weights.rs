//! Weight quantization math: symmetric extents, per-channel scales, and the per-channel
//! SQNR that decides `--weights auto` (see `docs/quantization.md` §5).

use ops::QParams;

use crate::quant::qparams::{choose_quantization_params, quantize_u8};
use crate::quant::{choose_from_values, QuantKind};
use crate::{Error, Result};

/// The half-width `a` of the symmetric weight range `[-a, a]`: `max |w|` for `MinMax`,
/// otherwise from a histogram search run on the weights' own (asymmetric) range, keeping the
/// larger end. (Caffe2's symmetric search only tries windows centred on zero no wider than the
/// histogram, so for a lopsided range it can never keep the long side; searching
/// asymmetrically avoids that.)
/// Falls back to 1 for all-zero or non-finite input.
pub fn symmetric_extent(values: &[f32], kind: QuantKind) -> f32 {
    let a = match kind {
        QuantKind::MinMax => values.iter().fold(0f32, |a, v| a.max(v.abs())),
        kind => {
            let (lo, hi, _) = choose_from_values(values, kind, false);
            lo.abs().max(hi.abs())
        }
    };
    if a > 0.0 && a.is_finite() {
        a
    } else {
        1.0
    }
}

/// Per-channel weights: one symmetric scale per slice of axis 0 (`channels` slices), all
/// with zero point 128 (the ops take one weight zero point); returns the tensor parameters
/// (largest channel scale), the codes and the channel scales.
pub fn per_channel_weights(
    name: &str,
    values: &[f32],
    channels: usize,
    kind: QuantKind,
) -> Result<(QParams, Vec<u8>, Vec<f32>)> {
    let per = values.len().checked_div(channels).unwrap_or(0);
    let mut codes = Vec::with_capacity(values.len());
    let mut scales = Vec::with_capacity(channels);
    for m in 0..channels {
        let chunk = &values[m * per..(m + 1) * per];
        // Symmetric around 0 even when a channel has one sign only, so that every
        // channel shares the zero point 128.
        let a = symmetric_extent(chunk, kind);
        let qm = choose_quantization_params(-a, a, 0, 255, true);
        if qm.zero_point != 128 {
            return Err(Error::Tensor {
                name: name.to_string(),
                msg: format!(
                    "per-channel weights need the symmetric zero point 128 in every \
                     channel; channel {m} got {}",
                    qm.zero_point
                ),
            });
        }
        codes.extend(quantize_u8(chunk, qm));
        scales.push(qm.scale);
    }
    let max = scales.iter().copied().fold(f32::MIN_POSITIVE, f32::max);
    let q = QParams {
        scale: max,
        zero_point: 128,
    };
    Ok((q, codes, scales))
}

/// Below this weight SQNR (dB, the 10th percentile over output channels, see
/// [`channel_sqnr_p10`]) with one scale per tensor, [`WeightGranularity::Auto`] gives a layer
/// one scale per output channel. Ordinary conv layers measure 28–40 dB per tensor; depthwise
/// layers whose channels differ by orders of magnitude (MobileNetV2: 11–25 dB) fall below, and
/// their few-code channels are what collapses a per-tensor net.
pub const AUTO_PER_TENSOR_MIN_DB: f64 = 25.0;

/// SQNR in dB of weight codes against the float weights, per output channel (the `channels`
/// equal slices of axis 0); returns the 10th percentile over the channels with any signal
/// (all-zero channels are exact either way). `scales` holds one scale for the whole tensor
/// or one per channel. Each channel counts: in a depthwise layer output channel `m` sees only
/// weight channel `m`, so a channel whose weights got a handful of codes is an output
/// channel with that SQNR, however small its share of the tensor's energy.
pub fn channel_sqnr_p10(
    values: &[f32],
    codes: &[u8],
    scales: &[f32],
    zero_point: i32,
    channels: usize,
) -> f64 {
    let channels = channels.max(1);
    let per = values.len() / channels;
    if per == 0 || scales.is_empty() {
        return f64::INFINITY;
    }
    let mut db: Vec<f64> = (0..channels)
        .filter_map(|m| {
            let s = f64::from(
                scales[if scales.len() == 1 {
                    0
                } else {
                    m.min(scales.len() - 1)
                }],
            );
            let (mut sig, mut noise) = (0f64, 0f64);
            for (&w, &c) in values[m * per..(m + 1) * per].iter().zip(&codes[m * per..]) {
                let d = s * f64::from(i32::from(c) - zero_point);
                sig += f64::from(w) * f64::from(w);
                noise += (f64::from(w) - d) * (f64::from(w) - d);
            }
            (sig > 0.0).then(|| crate::eval::layer_error::sqnr_db(sig, noise))
        })
        .collect();
    if db.is_empty() {
        return f64::INFINITY;
    }
    db.sort_by(f64::total_cmp);
    db[db.len() / 10]
}
