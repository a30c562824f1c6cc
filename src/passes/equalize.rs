//! Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight
//! Equalization and Bias Correction", §4.1): for a Conv whose output goes, through nothing
//! or a fused Relu, only into other Convs, output channel `c` of the first is divided by
//! `s_c > 0` (weights and bias) and input channel `c` of every reader multiplied by `s_c`.
//! `relu(x / s) = relu(x) / s` for `s > 0`, so the fp32 function is unchanged (up to
//! rounding), while with `r1_c` the largest `|w|` of output channel `c` and `r2_c` that of
//! input channel `c` over the readers, `s_c = √(r1_c / r2_c)` gives both the range
//! `√(r1_c · r2_c)`: channels of very different magnitude no longer share one per-tensor
//! weight scale badly. Depthwise layers take part (their input channel `c` is filter `c`).
//!
//! Not across Clip (ReLU6): `min(relu(x), 6)` does not commute with a per-channel scale.
//! Runs on the optimized fp32 model before calibration (the activations between the pair
//! change scale, so histograms must come from the equalized net).

use std::collections::HashMap;

use ops::Tensor;

use crate::graph::Model;
use crate::passes::util::{arg_i, is_live_output, readers_after};
use crate::Result;

/// Sweeps over all pairs; each sweep moves the ranges closer to the fixed point.
const SWEEPS: usize = 4;

/// One equalizable pair: the producer op and the ops reading its output.
#[derive(Debug, Clone)]
struct Pair {
    producer: usize,
    readers: Vec<usize>,
}

/// The weight (input 1) and bias (input 2) names and group count of a Conv, when the weight
/// is a 4-D f32 parameter read by this op alone and the layout is NCHW.
fn conv_params(model: &Model, i: usize) -> Option<(String, Option<String>, usize)> {
    let op = &model.predict_def.op[i];
    if !matches!(op.type_(), "Conv" | "ConvRelu") || op.input.len() < 2 {
        return None;
    }
    if crate::passes::util::arg_s(op, "order").is_some_and(|o| o != "NCHW") {
        return None;
    }
    let w = &op.input[1];
    match model.params.get(w) {
        Some(Tensor::F32(a)) if a.ndim() == 4 => {}
        _ => return None,
    }
    let reads = |name: &str| {
        model
            .predict_def
            .op
            .iter()
            .map(|o| o.input.iter().filter(|x| *x == name).count())
            .sum::<usize>()
    };
    if reads(w) != 1 {
        return None;
    }
    let b = op.input.get(2).cloned();
    if let Some(b) = &b {
        if !matches!(model.params.get(b), Some(Tensor::F32(_))) || reads(b) != 1 {
            return None;
        }
    }
    let group = arg_i(op, "group").unwrap_or(1).max(1) as usize;
    Some((w.clone(), b, group))
}

/// The equalizable pairs of the net, in op order.
fn pairs(model: &Model) -> Vec<Pair> {
    let net = &model.predict_def;
    let mut out = Vec::new();
    for (i, op) in net.op.iter().enumerate() {
        if conv_params(model, i).is_none() || op.output.len() != 1 {
            continue;
        }
        let y = &op.output[0];
        if is_live_output(net, i, y) {
            continue;
        }
        let readers = readers_after(net, i, y);
        if readers.is_empty()
            || readers.iter().any(|&r| {
                conv_params(model, r).is_none()
                    || net.op[r].input[0] != *y
                    || net.op[r].input[1..].iter().any(|x| x == y)
            })
        {
            continue;
        }
        out.push(Pair {
            producer: i,
            readers,
        });
    }
    out
}

/// The f32 values and shape `[M, C/G, kH, kW]` of a conv weight.
fn weight<'a>(params: &'a HashMap<String, Tensor>, name: &str) -> Option<(&'a [f32], [usize; 4])> {
    let t = params.get(name)?;
    let s = t.shape();
    let v = t.f32_slice().ok()?;
    Some((v, [s[0], s[1], s[2], s[3]]))
}

/// For input channel `c` of a conv weight `[M, C/G, kH, kW]` with `groups` groups: the
/// output channels that read it and the index of `c` within its group.
fn readers_of_channel(
    shape: [usize; 4],
    groups: usize,
    c: usize,
) -> (std::ops::Range<usize>, usize) {
    let cg = shape[1];
    let mg = shape[0] / groups;
    let g = c / cg;
    (g * mg..(g + 1) * mg, c % cg)
}

/// Equalizes every Conv → (Relu) → Conv pair of `model` (see the module docs); returns the
/// equalized model and the number of pairs changed.
pub fn equalize(model: &Model) -> Result<(Model, usize)> {
    let found = pairs(model);
    let mut params = model.params.clone();
    let mut changed = std::collections::HashSet::new();
    for _ in 0..SWEEPS {
        for p in &found {
            let (w1, b1, _) = conv_params(model, p.producer).expect("checked in pairs");
            let Some((v1, s1)) = weight(&params, &w1) else {
                continue;
            };
            let channels = s1[0];
            let per1 = s1[1] * s1[2] * s1[3];
            let r1: Vec<f32> = (0..channels)
                .map(|c| {
                    v1[c * per1..(c + 1) * per1]
                        .iter()
                        .fold(0f32, |a, x| a.max(x.abs()))
                })
                .collect();
            // r2[c]: the largest |w| reading input channel c, over all readers.
            let mut r2 = vec![0f32; channels];
            let mut ok = true;
            for &r in &p.readers {
                let (w2, _, groups) = conv_params(model, r).expect("checked in pairs");
                let Some((v2, s2)) = weight(&params, &w2) else {
                    ok = false;
                    break;
                };
                if s2[1] * groups != channels || s2[0] % groups != 0 {
                    ok = false;
                    break;
                }
                let k = s2[2] * s2[3];
                for (c, r2c) in r2.iter_mut().enumerate() {
                    let (outs, ci) = readers_of_channel(s2, groups, c);
                    for m in outs {
                        let base = (m * s2[1] + ci) * k;
                        for x in &v2[base..base + k] {
                            *r2c = r2c.max(x.abs());
                        }
                    }
                }
            }
            if !ok {
                continue;
            }
            let scale: Vec<f32> = r1
                .iter()
                .zip(&r2)
                .map(|(&a, &b)| {
                    let s = (a / b).sqrt();
                    if a > 0.0 && b > 0.0 && s.is_finite() && s > 0.0 {
                        s
                    } else {
                        1.0
                    }
                })
                .collect();
            if scale.iter().all(|&s| (s - 1.0).abs() < 1e-6) {
                continue;
            }
            changed.insert(p.producer);
            // Producer: output channel c divided by s_c (weights and bias).
            if let Some(Tensor::F32(a)) = params.get_mut(&w1) {
                if let Some(v) = a.as_slice_mut() {
                    for (c, chunk) in v.chunks_mut(per1).enumerate() {
                        chunk.iter_mut().for_each(|x| *x /= scale[c]);
                    }
                }
            }
            if let Some(b) = &b1 {
                if let Some(Tensor::F32(a)) = params.get_mut(b) {
                    if let Some(v) = a.as_slice_mut() {
                        v.iter_mut().zip(&scale).for_each(|(x, s)| *x /= s);
                    }
                }
            }
            // Readers: input channel c multiplied by s_c.
            for &r in &p.readers {
                let (w2, _, groups) = conv_params(model, r).expect("checked in pairs");
                let s2 = {
                    let s = params[&w2].shape();
                    [s[0], s[1], s[2], s[3]]
                };
                let k = s2[2] * s2[3];
                if let Some(Tensor::F32(a)) = params.get_mut(&w2) {
                    if let Some(v) = a.as_slice_mut() {
                        for (c, &sc) in scale.iter().enumerate() {
                            let (outs, ci) = readers_of_channel(s2, groups, c);
                            for m in outs {
                                let base = (m * s2[1] + ci) * k;
                                v[base..base + k].iter_mut().for_each(|x| *x *= sc);
                            }
                        }
                    }
                }
            }
        }
    }
    let mut out = Model::from_parts(
        model.paths.clone(),
        model.init_def.clone(),
        model.predict_def.clone(),
        params,
    );
    if model.uses_reference() {
        out.set_reference(true);
    }
    Ok((out, changed.len()))
}
