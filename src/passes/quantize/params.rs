//! Weight and bias quantization of the rewrite: per tensor, per channel or `auto`
//! ([`crate::quant::weights`]), int32 biases with the optional bias correction
//! ([`crate::quant::bias_correction`]), each quantized tensor made once and cached.

use ndarray::{ArrayD, IxDyn};
use ops::{QParams, Tensor};

use super::*;

impl Rewriter<'_> {
    /// Quantizes (and caches) a weight: per tensor, or per output channel (axis 0 of the
    /// transposed weight) as [`QuantizeOptions::weights`] says.
    pub(super) fn weight(&mut self, wp: &WeightPlan) -> Result<QWeight> {
        if let Some(hit) = self.weights.get(&wp.name) {
            return Ok(hit.clone());
        }
        let w = self
            .model
            .params
            .get(&wp.name)
            .ok_or_else(|| Error::Tensor {
                name: wp.name.clone(),
                msg: "weight parameter disappeared".into(),
            })?;
        let terr = |e: ops::OpError| Error::Tensor {
            name: wp.name.clone(),
            msg: e.to_string(),
        };
        let mut w = w.clone();
        if let Some((view, _)) = &wp.view {
            w = w.reshaped(view).map_err(terr)?;
        }
        if let Some(p) = &wp.permute {
            w = w.permuted(p).map_err(terr)?;
        }
        if let Some((_, back)) = &wp.view {
            w = w.reshaped(back).map_err(terr)?;
        }
        let shape = w.shape().to_vec();
        let values = w.f32_slice().map_err(terr)?;
        let kind = self.opts.weight_kind;
        let channels = shape.first().copied().unwrap_or(0);
        let per_channel = |values: &[f32]| per_channel_weights(&wp.name, values, channels, kind);
        let tensor = || {
            let q = match kind {
                QuantKind::MinMax => weight_qparams_min_max(values, true),
                kind => {
                    let a = symmetric_extent(values, kind);
                    choose_quantization_params(-a, a, 0, 255, true)
                }
            };
            (q, quantize_u8(values, q))
        };
        let mut per_tensor_sqnr = None;
        let (q, codes, channel_scales, sqnr) = match self.opts.weights {
            WeightGranularity::PerTensor => {
                let (q, codes) = tensor();
                let sqnr = channel_sqnr_p10(values, &codes, &[q.scale], q.zero_point, channels);
                (q, codes, None, sqnr)
            }
            WeightGranularity::PerChannel => {
                let (q, codes, scales) = per_channel(values)?;
                let sqnr = channel_sqnr_p10(values, &codes, &scales, 128, channels);
                (q, codes, Some(scales), sqnr)
            }
            WeightGranularity::Auto => {
                let (q, codes) = tensor();
                let sqnr = channel_sqnr_p10(values, &codes, &[q.scale], q.zero_point, channels);
                if sqnr >= AUTO_PER_TENSOR_MIN_DB {
                    (q, codes, None, sqnr)
                } else {
                    per_tensor_sqnr = Some(sqnr);
                    let (qc, cc, scales) = per_channel(values)?;
                    let sqnr = channel_sqnr_p10(values, &cc, &scales, 128, channels);
                    (qc, cc, Some(scales), sqnr)
                }
            }
        };
        // Input channels per group: the last axis of the stored layout ([M, kH, kW, C/G] for
        // Conv, [N, H, W, C] for an FC on a spatial input, [N, K] otherwise).
        let cg = match &wp.view {
            Some((view, _)) => view.get(1).copied().unwrap_or(1),
            None => shape.last().copied().unwrap_or(1),
        };
        let err_sums = if self.opts.bias_correction.is_some() {
            let per = values.len().checked_div(channels).unwrap_or(0).max(1);
            let deq: Vec<f32> = codes
                .iter()
                .enumerate()
                .map(|(i, &c)| {
                    let s = channel_scales.as_ref().map_or(q.scale, |cs| cs[i / per]);
                    s * (i32::from(c) - q.zero_point) as f32
                })
                .collect();
            weight_error_sums(values, &deq, channels, cg)
        } else {
            Vec::new()
        };
        let name = format!("{}_int8", wp.name);
        let arr = ArrayD::from_shape_vec(IxDyn(&shape), codes).map_err(|e| Error::Tensor {
            name: name.clone(),
            msg: e.to_string(),
        })?;
        self.int8_params.push((name.clone(), Tensor::QU8(arr, q)));
        let qw = QWeight {
            name,
            q,
            channel_scales,
            sqnr,
            per_tensor_sqnr,
            err_sums,
            err_shape: (channels, cg),
        };
        self.weights.insert(wp.name.clone(), qw.clone());
        Ok(qw)
    }

    /// Quantizes (and caches per scale list) a bias; returns its int8 name. `scales` holds
    /// one scale for the whole tensor or one per element (per-channel weights); the tensor
    /// carries `tensor_scale`.
    pub(super) fn bias(
        &mut self,
        b: &str,
        scales: &[f32],
        tensor_scale: f32,
        shift: Option<&[f64]>,
    ) -> Result<String> {
        let versions = self.biases.entry(b.to_string()).or_default();
        if shift.is_none() {
            if let Some((_, n)) = versions.iter().find(|(s, _)| s.as_slice() == scales) {
                return Ok(n.clone());
            }
        }
        let name = if versions.is_empty() {
            format!("{b}_int8")
        } else {
            format!("{b}_v{}_int8", versions.len())
        };
        // A corrected bias belongs to its op alone: never found again by its scales.
        let key = if shift.is_some() {
            Vec::new()
        } else {
            scales.to_vec()
        };
        versions.push((key, name.clone()));
        let t = self.model.params.get(b).ok_or_else(|| Error::Tensor {
            name: b.to_string(),
            msg: "bias parameter disappeared".into(),
        })?;
        let values = t.f32_slice().map_err(|e| Error::Tensor {
            name: b.to_string(),
            msg: e.to_string(),
        })?;
        let corrected: Vec<f32>;
        let values = match shift {
            Some(d) if d.len() == values.len() => {
                corrected = values
                    .iter()
                    .zip(d)
                    .map(|(&v, &d)| (f64::from(v) - d) as f32)
                    .collect();
                &corrected[..]
            }
            _ => values,
        };
        let codes = if scales.len() == 1 {
            quantize_bias(values, scales[0])
        } else if scales.len() == values.len() {
            values
                .iter()
                .zip(scales)
                .flat_map(|(&v, &s)| quantize_bias(&[v], s))
                .collect()
        } else {
            return Err(Error::Tensor {
                name: b.to_string(),
                msg: format!(
                    "bias has {} values but the weight has {} output channels",
                    values.len(),
                    scales.len()
                ),
            });
        };
        let arr =
            ArrayD::from_shape_vec(IxDyn(&[codes.len()]), codes).map_err(|e| Error::Tensor {
                name: name.clone(),
                msg: e.to_string(),
            })?;
        let q = QParams {
            scale: tensor_scale,
            zero_point: 0,
        };
        self.int8_params.push((name.clone(), Tensor::QI32(arr, q)));
        Ok(name)
    }

    /// The output-mean shift of a Conv/FC's weight quantization (see
    /// [`crate::quant::bias_correction`]), when bias correction is on and its input's channel
    /// means were measured.
    pub(super) fn bias_shift(&self, op: &OperatorDef, qw: &QWeight) -> Option<Vec<f64>> {
        let means = self
            .opts
            .bias_correction
            .as_ref()?
            .means
            .get(op.input.first()?)?;
        let (m, cg) = qw.err_shape;
        let groups = if op.type_() == "FC" {
            1
        } else {
            arg_i(op, "group").unwrap_or(1).max(1) as usize
        };
        output_shift(&qw.err_sums, m, cg, groups, means)
    }
}
