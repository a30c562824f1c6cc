//! Accuracy-driven fallback (`c2q quantize --max-loss`): quantize, measure the top-1 loss on a
//! held-out slice of images, and move the most harmful layers back to fp32 one at a time until
//! the loss is within budget.
//!
//! "Most harmful" is read from the per-layer report ([`crate::eval::LayerErrors`]): errors
//! accumulate along the net, so a layer is judged by the noise it *adds*, the relative noise
//! power of its output (`10^(−SQNR/10)`) minus the largest one among its int8 inputs (an
//! op whose input comes from fp32 adds the error of quantizing that input too, so a MaxPool
//! behind an fp32 layer is a candidate as well). After every move the net is
//! re-quantized with the same activation parameters (no new calibration) and both figures are
//! measured again, so each step sees the effect of the previous ones. SQNR alone can miss
//! the layer that matters (noise in directions the classifier ignores is harmless, and a small
//! error where it looks is not), so at every step the few most suspicious layers are each
//! tried and the move that recovers the most held-out top-1 is kept.

use std::collections::HashMap;
use std::path::Path;

use crate::eval::{evaluate, layer_errors_on_db, EvalOptions};
use crate::quant::calibrate::ActivationParams;
use crate::quant::{quantize_model, Int8Model, QuantizeOptions};
use crate::{Error, Model, Result};

/// Int8 op types that do not correspond to an op of the fp32 net.
const BOUNDARY: &[&str] = &["Int8Quantize", "Int8Dequantize"];

/// Relative noise power `Σe²/Σr²` of an SQNR in dB.
fn noise(sqnr_db: f64) -> f64 {
    10f64.powf(-sqnr_db / 10.0)
}

/// How [`quantize_within_loss`] measures and decides.
#[derive(Debug, Clone)]
pub struct FallbackOptions {
    /// Largest accepted top-1 loss, in percentage points (0.5 = half a point).
    pub max_loss_points: f64,
    /// The held-out images (batch size, window, preprocessing) and threads.
    pub eval: EvalOptions,
    /// How many of the held-out images the per-layer SQNR is measured on.
    pub report_images: usize,
    /// Stop after moving this many layers.
    pub max_steps: usize,
    /// Candidates tried at every step (the most suspicious by added noise); the one whose
    /// move helps the held-out top-1 most is kept.
    pub trials: usize,
}

/// One layer moved back to fp32.
#[derive(Debug, Clone, PartialEq)]
pub struct FallbackStep {
    /// Index of the op in the optimized fp32 net (as in `--exclude-nodes`).
    pub op_index: usize,
    /// Its fp32 op type.
    pub op_type: String,
    /// Its output blob.
    pub blob: String,
    /// The SQNR (dB) of that blob that made it the worst.
    pub sqnr_db: f64,
    /// Held-out top-1 of the int8 net after the move.
    pub top1_after: f64,
}

/// What [`quantize_within_loss`] produced.
#[derive(Debug)]
pub struct FallbackResult {
    /// The final int8 net.
    pub int8: Int8Model,
    /// Options it was quantized with (`exclude_nodes` holds the moved layers).
    pub options: QuantizeOptions,
    /// Held-out top-1 of the fp32 net.
    pub fp32_top1: f64,
    /// Held-out top-1 of the int8 net before any move.
    pub initial_top1: f64,
    /// Held-out top-1 of the final int8 net.
    pub final_top1: f64,
    /// Held-out images.
    pub images: usize,
    /// Layers moved, in order.
    pub steps: Vec<FallbackStep>,
    /// True when the final loss is within budget.
    pub met: bool,
}

impl FallbackResult {
    /// Final top-1 loss in percentage points.
    pub fn loss_points(&self) -> f64 {
        100.0 * (self.fp32_top1 - self.final_top1)
    }
}

/// Quantizes `model` (already optimized) with `act`, then moves layers to fp32 until the
/// top-1 loss on the held-out images of `db` is at most `fb.max_loss_points`.
pub fn quantize_within_loss(
    model: &Model,
    act: &ActivationParams,
    opts: &QuantizeOptions,
    db: &Path,
    fb: &FallbackOptions,
    progress: Option<&dyn Fn(&str)>,
) -> Result<FallbackResult> {
    let say = |s: &str| {
        if let Some(p) = progress {
            p(s)
        }
    };
    let owners = crate::eval::blob_owners(model);
    let mut opts = opts.clone();
    let mut int8 = quantize_model(model, &act.per_op, &act.inputs, &opts)?;
    let mut int8_model = int8.to_model()?;
    let first = evaluate(&[model, &int8_model], db, &fb.eval, None)?;
    let (fp32_top1, initial_top1, images) = (first.top1(0), first.top1(1), first.images);
    let mut top1 = initial_top1;
    let mut steps = Vec::new();
    say(&format!(
        "held-out {images} images: fp32 top-1 {fp32_top1:.4}, int8 {top1:.4} (budget {} points)",
        fb.max_loss_points
    ));
    let within = |t: f64| 100.0 * (fp32_top1 - t) <= fb.max_loss_points + 1e-9;
    while !within(top1) && steps.len() < fb.max_steps {
        let mut report_eval = fb.eval.batches.clone();
        report_eval.limit = Some(
            fb.report_images
                .max(1)
                .min(report_eval.limit.unwrap_or(usize::MAX)),
        );
        report_eval.batch_size = report_eval.batch_size.min(fb.report_images.max(1));
        let (errs, _) = layer_errors_on_db(model, &int8_model, db, report_eval, fb.eval.threads)?;
        let by_blob: HashMap<&str, f64> =
            errs.iter().map(|e| (e.blob.as_str(), e.sqnr_db)).collect();
        let mut ranked: Vec<(f64, usize, String, &crate::eval::BlobError)> = errs
            .iter()
            .filter(|e| !BOUNDARY.contains(&e.op_type.as_str()))
            .filter_map(|e| {
                let (i, t) = owners.get(&e.blob)?;
                if opts.exclude_nodes.contains(i) {
                    return None;
                }
                let node = int8_model.net.nodes.get(e.op_index)?;
                let input_noise = node
                    .inputs
                    .iter()
                    .filter_map(|x| x.strip_suffix("_int8"))
                    .filter_map(|b| by_blob.get(b))
                    .map(|&s| noise(s))
                    .fold(0f64, f64::max);
                Some((noise(e.sqnr_db) - input_noise, *i, t.clone(), e))
            })
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        if ranked.is_empty() {
            say("no quantized layer left to move to fp32");
            break;
        }
        // Try the most suspicious few and keep the move that helps the held-out top-1 most
        // (ties: the more suspicious one).
        type Trial = (f64, usize, String, crate::eval::BlobError, Int8Model, Model);
        let mut best: Option<Trial> = None;
        for (_, i, t, e) in ranked.iter().take(fb.trials.max(1)) {
            let mut trial = opts.clone();
            trial.exclude_nodes.push(*i);
            let q = quantize_model(model, &act.per_op, &act.inputs, &trial)?;
            let qm = q.to_model()?;
            let t1 = evaluate(&[&qm], db, &fb.eval, None)?.top1(0);
            if best.as_ref().is_none_or(|b| t1 > b.0) {
                best = Some((t1, *i, t.clone(), (*e).clone(), q, qm));
            }
        }
        let Some((t1, i, op_type, e, q, qm)) = best else {
            break;
        };
        opts.exclude_nodes.push(i);
        int8 = q;
        int8_model = qm;
        top1 = t1;
        say(&format!(
            "moved op #{i} {op_type} (`{}`, SQNR {:.2} dB) to fp32: int8 top-1 {top1:.4}",
            e.blob, e.sqnr_db
        ));
        steps.push(FallbackStep {
            op_index: i,
            op_type,
            blob: e.blob.clone(),
            sqnr_db: e.sqnr_db,
            top1_after: top1,
        });
    }
    if images == 0 {
        return Err(Error::Input(format!("{}: no held-out image", db.display())));
    }
    Ok(FallbackResult {
        int8,
        options: opts,
        fp32_top1,
        initial_top1,
        final_top1: top1,
        images,
        met: within(top1),
        steps,
    })
}
