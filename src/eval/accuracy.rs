//! Top-1/top-5 accuracy of one or more models over a labelled image LMDB, side by side.
//!
//! Every model sees the same preprocessed batches, decoded on a prefetch thread while the
//! models run (at idle priority when inference uses every core; see
//! [`default_decode_priority`]). With two or more models every other model is also compared
//! with the first: top-1 agreement and the mean absolute difference of their outputs.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use ops::Tensor;

use crate::{Error, Executor, Model, Result};

/// Indices and values of the `k` largest entries of every row of a `[rows, ...]` f32 tensor,
/// largest first (ties: lower index first).
pub fn top_k(t: &Tensor, k: usize) -> Result<Vec<Vec<(usize, f32)>>> {
    let v = t
        .f32_slice()
        .map_err(|e| Error::Input(format!("model output: {e}")))?;
    let rows = t.shape().first().copied().unwrap_or(1).max(1);
    let cols = v.len() / rows;
    Ok((0..rows)
        .map(|r| {
            let row = &v[r * cols..(r + 1) * cols];
            // A strict total order (value descending, then index ascending), so selecting
            // the first k and sorting them gives the first k of the full sort.
            let order = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]).then(a.cmp(b));
            let mut idx: Vec<usize> = (0..cols).collect();
            if k < cols {
                idx.select_nth_unstable_by(k, order);
                idx.truncate(k);
            }
            idx.sort_by(order);
            idx.into_iter().take(k).map(|i| (i, row[i])).collect()
        })
        .collect())
}

/// For each of the `n` rows of a model output, whether every value is finite.
fn finite_rows(y: &Tensor, n: usize) -> Result<Vec<bool>> {
    let v = y
        .f32_slice()
        .map_err(|e| Error::Input(format!("model output: {e}")))?;
    let per = v.len().checked_div(n).unwrap_or(0).max(1);
    Ok((0..n)
        .map(|i| {
            v.get(i * per..(i + 1) * per)
                .is_some_and(|row| row.iter().all(|x| x.is_finite()))
        })
        .collect())
}

/// The score of one model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelScore {
    /// Images whose label is the top-1 class.
    pub top1: usize,
    /// Images whose label is among the top-5 classes.
    pub top5: usize,
    /// Seconds spent running this model (inference only).
    pub secs: f64,
    /// Images whose output row held a NaN or an infinity: not scored (a NaN has no class),
    /// counted as misses and reported.
    pub non_finite: usize,
    /// The LMDB key of the first such image.
    pub first_non_finite: Option<String>,
    /// Images where this model's top-1 class is the first model's (0 for the first model).
    pub agree_with_first: usize,
    /// Sum over images of the mean absolute difference between this model's output and the
    /// first model's (0 for the first model).
    pub abs_delta_sum: f64,
}

/// The result of [`evaluate`].
#[derive(Debug, Clone, Default)]
pub struct EvalReport {
    /// Images evaluated.
    pub images: usize,
    /// One score per model, in the order given.
    pub models: Vec<ModelScore>,
    /// Images where the first two models agree on the top-1 class (`models[1]`'s
    /// `agree_with_first`).
    pub agree: usize,
    /// Mean over images of the mean absolute difference of the first two models' outputs.
    pub mean_abs_delta: f64,
    /// Wall-clock seconds of the whole evaluation (decoding overlapped).
    pub wall_secs: f64,
    /// Records skipped as bad (with `skip_bad`).
    pub skipped: Vec<data::Skipped>,
}

impl EvalReport {
    /// Top-1 accuracy of model `i`.
    pub fn top1(&self, i: usize) -> f64 {
        self.models[i].top1 as f64 / self.images.max(1) as f64
    }

    /// Top-5 accuracy of model `i`.
    pub fn top5(&self, i: usize) -> f64 {
        self.models[i].top5 as f64 / self.images.max(1) as f64
    }

    /// Inference throughput of model `i` (images per second of its own run time).
    pub fn images_per_s(&self, i: usize) -> f64 {
        self.images as f64 / self.models[i].secs.max(1e-12)
    }

    /// Wall-clock seconds not spent running a model: waiting for batches, top-k, the
    /// comparison (what the input pipeline failed to hide).
    pub fn overhead_secs(&self) -> f64 {
        self.wall_secs - self.models.iter().map(|m| m.secs).sum::<f64>()
    }

    /// Top-1 agreement of the first two models (None with one model).
    pub fn agreement(&self) -> Option<f64> {
        self.agreement_with_first(1)
    }

    /// Top-1 agreement of model `i` with the first model (None for the first model itself or
    /// a model that was not evaluated).
    pub fn agreement_with_first(&self, i: usize) -> Option<f64> {
        (i >= 1 && i < self.models.len())
            .then(|| self.models[i].agree_with_first as f64 / self.images.max(1) as f64)
    }

    /// Mean over images of the mean absolute difference between model `i`'s output and the
    /// first model's (None as for [`EvalReport::agreement_with_first`]).
    pub fn mean_abs_delta_with_first(&self, i: usize) -> Option<f64> {
        (i >= 1 && i < self.models.len())
            .then(|| self.models[i].abs_delta_sum / self.images.max(1) as f64)
    }
}

/// How [`evaluate`] runs.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Which records, batch size and preprocessing.
    pub batches: data::BatchOptions,
    /// Worker threads per model (0 = all cores).
    pub threads: usize,
    /// Added to every label (1 for nets with a background class 0).
    pub labels_offset: i64,
    /// Batches decoded ahead on a background thread while the models run (0: decode each
    /// batch on all cores just before use). Default: [`DEFAULT_PREFETCH`].
    pub prefetch: usize,
    /// How the prefetch thread competes with inference for the CPU. Default:
    /// [`default_decode_priority`] for all cores.
    pub decode_priority: data::DecodePriority,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            batches: data::BatchOptions::default(),
            threads: 0,
            labels_offset: 0,
            prefetch: DEFAULT_PREFETCH,
            decode_priority: default_decode_priority(0),
        }
    }
}

/// Batches decoded ahead by default.
pub const DEFAULT_PREFETCH: usize = 2;

/// The decode thread's priority that suits `threads` inference threads (0 = all cores) on
/// this machine: normal when a core is left free for it, idle when inference uses every
/// core. An idle-priority decoder fills the moments inference threads wait (the end of a
/// batch part, joins, top-k) instead of preempting them (SqueezeNet fp32 + int8 on 2 cores,
/// 2 threads: ~10% less wall time than decoding between runs or at normal priority).
pub fn default_decode_priority(threads: usize) -> data::DecodePriority {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let used = if threads == 0 { cores } else { threads };
    if used < cores {
        data::DecodePriority::Normal
    } else {
        data::DecodePriority::Idle
    }
}

/// Evaluates `models` on the labelled images of the LMDB `db`; `progress(done, planned)` is
/// called after every batch.
pub fn evaluate(
    models: &[&Model],
    db: &Path,
    opts: &EvalOptions,
    progress: Option<&dyn Fn(usize, usize)>,
) -> Result<EvalReport> {
    if models.is_empty() {
        return Err(Error::Input("evaluate: no model given".into()));
    }
    let execs: Vec<Executor> = models
        .iter()
        .map(|m| Executor::new(m, opts.threads))
        .collect::<Result<_>>()?;
    let inputs: Vec<String> = models
        .iter()
        .map(|m| m.data_input())
        .collect::<Result<_>>()?;
    let outputs: Vec<String> = models
        .iter()
        .map(|m| {
            m.outputs()
                .first()
                .cloned()
                .ok_or_else(|| Error::Input("the model has no output".into()))
        })
        .collect::<Result<_>>()?;
    let pre = opts.batches.preprocess.clone();
    let t_wall = Instant::now();
    let batches = data::Batches::open(db, opts.batches.clone())?;
    let planned = batches.planned();
    // Either a prefetch thread decodes ahead while the models run, or (prefetch 0) each batch
    // is decoded on all cores just before it is used.
    enum Source {
        Ahead(data::Prefetch),
        Inline(data::Batches),
    }
    // The first batch is decoded on all cores either way: the models have nothing to do
    // until it is ready.
    let mut batches = batches;
    let mut first = batches.next();
    let mut batches = if opts.prefetch > 0 {
        Source::Ahead(batches.prefetch_with(opts.prefetch, opts.decode_priority)?)
    } else {
        Source::Inline(batches)
    };
    let mut next = || match (first.take(), &mut batches) {
        (Some(b), _) => Some(b),
        (None, Source::Ahead(p)) => p.next(),
        (None, Source::Inline(b)) => b.next(),
    };
    let mut r = EvalReport {
        models: vec![ModelScore::default(); models.len()],
        ..EvalReport::default()
    };
    while let Some(b) = next() {
        let b = b?;
        let x = Tensor::from_f32(&pre.batch_shape(b.n), b.images);
        // One feed map, renamed per model; every model reads the batch in place.
        let mut feed = HashMap::from([(inputs[0].clone(), x)]);
        let mut outs = Vec::with_capacity(models.len());
        for (k, e) in execs.iter().enumerate() {
            if !feed.contains_key(&inputs[k]) {
                let x = feed.drain().map(|(_, x)| x).next();
                let x = x.ok_or_else(|| Error::Input("evaluate: batch already consumed".into()))?;
                feed.insert(inputs[k].clone(), x);
            }
            let t0 = Instant::now();
            let mut o = e.run_ref(&feed)?;
            r.models[k].secs += t0.elapsed().as_secs_f64();
            let y = o.remove(&outputs[k]).ok_or_else(|| {
                Error::Input(format!("model output `{}` was not produced", outputs[k]))
            })?;
            let mut tops = top_k(&y, 5)?;
            let classes = y.shape().iter().skip(1).product::<usize>();
            let finite = finite_rows(&y, b.n)?;
            for (j, ((row, &label), ok)) in tops.iter_mut().zip(&b.labels).zip(&finite).enumerate()
            {
                let want = label + opts.labels_offset;
                if want < 0 || want >= classes as i64 {
                    return Err(Error::Input(format!(
                        "{}: record `{}`: label {label}{} is outside the model's {classes} \
                         classes (0..{}){}",
                        db.display(),
                        b.keys.get(j).map_or("?", |k| k.as_str()),
                        if opts.labels_offset != 0 {
                            format!(" + offset {}", opts.labels_offset)
                        } else {
                            String::new()
                        },
                        classes.saturating_sub(1),
                        if opts.labels_offset == 0 {
                            "; a net with a background class 0 needs --labels-offset 1"
                        } else {
                            ""
                        }
                    )));
                }
                if !ok {
                    let m = &mut r.models[k];
                    m.non_finite += 1;
                    if m.first_non_finite.is_none() {
                        m.first_non_finite = b.keys.get(j).cloned();
                    }
                    row.clear(); // no class: neither scored nor agreeing
                    continue;
                }
                if row.first().map(|t| t.0 as i64) == Some(want) {
                    r.models[k].top1 += 1;
                }
                if row.iter().any(|t| t.0 as i64 == want) {
                    r.models[k].top5 += 1;
                }
            }
            outs.push((y, tops));
        }
        let err = |e| Error::Input(format!("model output: {e}"));
        let y0 = outs[0].0.f32_slice().map_err(err)?;
        for (k, (yk, tk)) in outs.iter().enumerate().skip(1) {
            let m = &mut r.models[k];
            for (r0, rk) in outs[0].1.iter().zip(tk) {
                if !r0.is_empty() && r0.first().map(|t| t.0) == rk.first().map(|t| t.0) {
                    m.agree_with_first += 1;
                }
            }
            let yk = yk.f32_slice().map_err(err)?;
            if y0.len() == yk.len() && b.n > 0 {
                m.abs_delta_sum += y0
                    .iter()
                    .zip(yk)
                    .map(|(p, q)| f64::from((p - q).abs()))
                    .sum::<f64>()
                    / (y0.len() / b.n) as f64;
            }
        }
        r.images += b.n;
        if let Some(p) = progress {
            p(r.images, planned);
        }
    }
    r.wall_secs = t_wall.elapsed().as_secs_f64();
    r.skipped = match &batches {
        Source::Ahead(p) => p.skipped(),
        Source::Inline(b) => b.skipped(),
    };
    if r.images == 0 {
        return Err(Error::Input(format!(
            "{}: no image evaluated",
            db.display()
        )));
    }
    if let Some(m) = r.models.get(1) {
        r.agree = m.agree_with_first;
        r.mean_abs_delta = m.abs_delta_sum / r.images as f64;
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_equals_the_head_of_a_full_sort() {
        // Many ties (values from 7 levels), a NaN and infinities, every k, against a full
        // sort by (value descending, index ascending) with total_cmp.
        let cols = 23;
        let mut v: Vec<f32> = (0..2 * cols).map(|i| ((i * 5) % 7) as f32 - 3.0).collect();
        v[4] = f32::NAN;
        v[9] = f32::INFINITY;
        v[30] = f32::NEG_INFINITY;
        let t = Tensor::from_f32(&[2, cols], v.clone());
        for k in 0..=cols + 2 {
            let got = top_k(&t, k).unwrap();
            for (r, row) in got.iter().enumerate() {
                let vals = &v[r * cols..(r + 1) * cols];
                let mut idx: Vec<usize> = (0..cols).collect();
                idx.sort_by(|&a, &b| vals[b].total_cmp(&vals[a]).then(a.cmp(&b)));
                let want: Vec<usize> = idx.into_iter().take(k).collect();
                let got_idx: Vec<usize> = row.iter().map(|p| p.0).collect();
                assert_eq!(got_idx, want, "row {r}, k = {k}");
            }
        }
        // By hand: row 0 is [-3, 2, 0, -2, NaN, 1, -1, -3, 2, inf, -2, 3, ...] with its 3s at
        // 11 and 18; the positive NaN sorts above +inf under total_cmp, then inf, then the 3s
        // in index order.
        let top = top_k(&t, 4).unwrap();
        assert_eq!(
            top[0].iter().map(|p| p.0).collect::<Vec<_>>(),
            [4, 9, 11, 18]
        );
    }
}
