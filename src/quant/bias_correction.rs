//! Bias correction (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization
//! and Bias Correction", §4.2, with empirical input means): quantizing a layer's weights
//! shifts the mean of its output by `E[(W_q − W)·x] = (W_q − W)·E[x]`, a systematic error the
//! following layers cannot average out. With `E[x]` per input channel measured on the
//! calibration images, the shift of output channel `m` is
//!
//! `Δ_m = Σ_c (Σ_k (W_q − W)[m, k, c]) · E[x_c]`   (k runs over the kernel window)
//!
//! and the float bias becomes `b_m − Δ_m` before it is quantized. Zero padding makes the
//! window means at the borders differ from `E[x_c]`; the correction uses the interior mean.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use ops::Tensor;

use crate::graph::{Model, Node};
use crate::runtime::{Executor, Observer};
use crate::{Error, Result};

/// Mean of every channel of selected fp32 blobs (axis 1: the channel of NCHW tensors, the
/// feature of `[N, K]` ones), keyed by blob name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChannelMeans {
    /// Blob name -> one mean per channel.
    pub means: HashMap<String, Vec<f64>>,
    /// Images the means were taken over.
    pub images: usize,
}

/// Accumulates per-channel sums of the watched blobs.
struct MeanObserver {
    watch: HashSet<String>,
    sums: HashMap<String, (Vec<f64>, u64)>,
}

impl MeanObserver {
    fn add(&mut self, name: &str, t: &Tensor) {
        if !self.watch.contains(name) {
            return;
        }
        let (Ok(v), shape) = (t.f32_slice(), t.shape()) else {
            return;
        };
        if shape.len() < 2 || v.is_empty() {
            return;
        }
        let c = shape[1];
        let inner: usize = shape[2..].iter().product();
        let (sums, count) = self
            .sums
            .entry(name.to_string())
            .or_insert_with(|| (vec![0.0; c], 0));
        if sums.len() != c {
            return;
        }
        for (i, chunk) in v.chunks(inner.max(1)).enumerate() {
            sums[i % c] += chunk.iter().map(|&x| f64::from(x)).sum::<f64>();
        }
        *count += v.len() as u64;
    }
}

impl Observer for MeanObserver {
    fn on_node(&mut self, node: &Node, outputs: &[&Tensor]) {
        for (name, t) in node.outputs.iter().zip(outputs) {
            self.add(name, t);
        }
    }
}

/// The activation inputs (input 0) of every Conv/ConvRelu/FC of `model`.
pub fn weighted_layer_inputs(model: &Model) -> HashSet<String> {
    model
        .predict_def
        .op
        .iter()
        .filter(|op| matches!(op.type_(), "Conv" | "ConvRelu" | "FC"))
        .filter_map(|op| op.input.first().cloned())
        .collect()
}

/// Per-channel means of the inputs of `model`'s Conv/FC layers over `images` images of the
/// LMDB `db` (the first ones in key order after `opts.skip`), running the fp32 net.
pub fn measure_channel_means(
    model: &Model,
    db: &Path,
    opts: data::BatchOptions,
    threads: usize,
) -> Result<ChannelMeans> {
    let input = model.data_input()?;
    let pre = opts.preprocess.clone();
    let exec = Executor::new(model, threads)?;
    let mut obs = MeanObserver {
        watch: weighted_layer_inputs(model),
        sums: HashMap::new(),
    };
    let mut images = 0;
    for b in data::Batches::open(db, opts)? {
        let b = b?;
        let x = Tensor::from_f32(&pre.batch_shape(b.n), b.images);
        obs.add(&input, &x);
        exec.run_observed(HashMap::from([(input.clone(), x)]), Some(&mut obs))?;
        images += b.n;
    }
    if images == 0 {
        return Err(Error::Input(format!(
            "{}: no images to measure the bias correction on",
            db.display()
        )));
    }
    let means = obs
        .sums
        .into_iter()
        .filter(|(_, (_, n))| *n > 0)
        .map(|(k, (s, n))| {
            let per = n as f64 / s.len() as f64;
            (k, s.iter().map(|v| v / per).collect())
        })
        .collect();
    Ok(ChannelMeans { means, images })
}

/// Per (output channel, input channel of its group) sums of the weight error over the kernel
/// window: `err[m·cg + c] = Σ_k (W_q − W)[m, k, c]`, for a weight laid out `[M, …, cg]`
/// (input channel last, as the int8 rewrite stores it) with `deq` its dequantized codes.
pub fn weight_error_sums(w: &[f32], deq: &[f32], m: usize, cg: usize) -> Vec<f64> {
    let mut err = vec![0f64; m * cg];
    if m == 0 || cg == 0 {
        return err;
    }
    let per = w.len() / m;
    for (o, (wr, dr)) in w.chunks(per).zip(deq.chunks(per)).enumerate() {
        for (i, (&a, &b)) in wr.iter().zip(dr).enumerate() {
            err[o * cg + i % cg] += f64::from(b) - f64::from(a);
        }
    }
    err
}

/// The output-mean shift `Δ_m` of every output channel: `err` from [`weight_error_sums`],
/// `groups` groups (output channel `m` reads input channels `g·cg .. (g+1)·cg` with
/// `g = m / (M / groups)`), `means` one per input channel. None when the sizes disagree.
pub fn output_shift(
    err: &[f64],
    m: usize,
    cg: usize,
    groups: usize,
    means: &[f64],
) -> Option<Vec<f64>> {
    if groups == 0 || !m.is_multiple_of(groups) || means.len() != cg * groups || err.len() != m * cg
    {
        return None;
    }
    let per_group = m / groups;
    Some(
        (0..m)
            .map(|o| {
                let g = o / per_group;
                (0..cg).map(|c| err[o * cg + c] * means[g * cg + c]).sum()
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shift_by_hand() {
        // Two output channels, window of 2, two input channels (layout [M, k, c]).
        // W row 0: k0 = (1.0, 2.0), k1 = (0.5, -1.0); W_q row 0: (1.1, 2.0), (0.5, -0.9).
        // err[0] = (0.1 + 0, 0 + 0.1) = (0.1, 0.1). Row 1: W_q − W = (0, -0.2), (0.3, 0):
        // err[1] = (0.3, -0.2). Means (2, 5): Δ0 = 0.2 + 0.5 = 0.7; Δ1 = 0.6 − 1.0 = −0.4.
        let w = [1.0, 2.0, 0.5, -1.0, 0.0, 1.0, 1.0, 0.0];
        let q = [1.1, 2.0, 0.5, -0.9, 0.0, 0.8, 1.3, 0.0];
        let err = weight_error_sums(&w, &q, 2, 2);
        for (a, b) in err.iter().zip([0.1, 0.1, 0.3, -0.2]) {
            assert!((a - b).abs() < 1e-6, "{err:?}");
        }
        let d = output_shift(&err, 2, 2, 1, &[2.0, 5.0]).unwrap();
        assert!(
            (d[0] - 0.7).abs() < 1e-6 && (d[1] + 0.4).abs() < 1e-6,
            "{d:?}"
        );
        // Depthwise (2 groups of one channel each): channel m reads mean m only.
        let err = weight_error_sums(&[1.0, 1.0], &[1.5, 0.75], 2, 1);
        let d = output_shift(&err, 2, 1, 2, &[2.0, 4.0]).unwrap();
        assert!(
            (d[0] - 1.0).abs() < 1e-9 && (d[1] + 1.0).abs() < 1e-9,
            "{d:?}"
        );
        assert_eq!(output_shift(&err, 2, 1, 2, &[2.0]), None);
    }

    #[test]
    fn means_per_channel_of_nchw_and_nk() {
        let mut o = MeanObserver {
            watch: HashSet::from(["x".to_string(), "f".to_string()]),
            sums: HashMap::new(),
        };
        // [2, 2, 1, 2]: image 0 channel 0 {1, 3}, channel 1 {10, 10}; image 1 {5, 7}, {0, 20}.
        o.add(
            "x",
            &Tensor::from_f32(&[2, 2, 1, 2], vec![1., 3., 10., 10., 5., 7., 0., 20.]),
        );
        o.add(
            "f",
            &Tensor::from_f32(&[2, 3], vec![1., 2., 3., 3., 4., 5.]),
        );
        o.add("ignored", &Tensor::from_f32(&[1, 1], vec![9.]));
        let (s, n) = &o.sums["x"];
        assert_eq!((s.as_slice(), *n), ([16.0, 40.0].as_slice(), 8));
        let (s, n) = &o.sums["f"];
        assert_eq!((s.as_slice(), *n), ([4.0, 6.0, 8.0].as_slice(), 6));
        assert!(!o.sums.contains_key("ignored"));
    }
}
