//! `c2q quantize`: calibrate an fp32 model on LMDB images and write its DNNLOWP int8 twin.

use std::collections::HashMap;
use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::model_args::ModelArgs;
use super::preprocess_args::PreprocessArgs;
use super::progress::bar;
use super::sample_args::SampleArgs;
use crate::eval::EvalOptions;
use crate::eval::{layer_errors_on_db, BlobError};
use crate::quant::calibrate::{calibrate_db, Calibration, ChosenRange};
use crate::quant::{
    quantize_model, read_histogram_file, write_histogram_file, Int8Model, Outcome, QuantKind,
    QuantizeConfig, WeightGranularity,
};
use crate::quant::{quantize_within_loss, FallbackOptions, FallbackResult};
use crate::Model;
use ops::QParams;

/// Flags of `c2q quantize`.
#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// The fp32 model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Calibration images (LMDB). Not needed with `--load-hist`.
    #[arg(long, required_unless_present = "load_hist")]
    pub calib_db: Option<PathBuf>,
    /// Output folder for init_net/predict_net (.pb and .pbtxt).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing output folder's nets.
    #[arg(long)]
    pub overwrite: bool,
    /// The calibration sample.
    #[command(flatten)]
    pub sample: SampleArgs,
    /// Activation range search: l2 (default, as Caffe2's published models), l2_approx,
    /// min_max, kl, p99.
    #[arg(long, default_value = "l2")]
    pub kind: QuantKind,
    /// Weight range search: min_max (default, the full range) or l2 / l2_approx / kl / p99
    /// over a 2048-bin histogram of the weights (the published ResNet-50 used l2). Weights are
    /// always symmetric.
    #[arg(long, default_value = "min_max")]
    pub weight_kind: QuantKind,
    /// Symmetric activation ranges (real 0 maps to code 128).
    #[arg(long)]
    pub preserve_sparsity: bool,
    /// Weight scales: per-channel (default: one per output channel of every Conv/FC, the most
    /// accurate; a c2q extension, `W_scales`, that real Caffe2 ignores), per-tensor (the
    /// portable Caffe2 form; warns for layers whose weights lose too much) or auto (per
    /// tensor, per channel only for layers whose per-tensor weight SQNR in a tenth of the
    /// channels is below 25 dB).
    #[arg(long, default_value = "per-channel", value_parser = WeightGranularity::parse)]
    pub weights: WeightGranularity,
    /// Bias correction: correct every Conv/FC bias for the output-mean shift its weight
    /// quantization causes, with the input channel means measured on this many images of the
    /// calibration DB (first in key order); 0 = off. Needs --calib-db.
    #[arg(long, default_value_t = crate::quant::pipeline::DEFAULT_BIAS_CORRECTION_IMAGES)]
    pub bias_correction_images: usize,
    /// Cross-layer equalization: rescale Conv -> (Relu) -> Conv pairs so that each channel's
    /// weight range matches across the pair (the fp32 function is unchanged), before
    /// calibrating. Helps per-tensor weights; histograms saved with it only fit runs with it.
    #[arg(long)]
    pub equalize: bool,
    /// Same as `--weights per-channel`.
    #[arg(long, conflicts_with = "weights")]
    pub per_channel: bool,
    /// Op types kept in fp32, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub exclude_ops: Vec<String>,
    /// Op indices (of the optimized net, see `--json` notes) kept in fp32, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub exclude_nodes: Vec<usize>,
    /// Save the collected histograms.
    #[arg(long)]
    pub save_hist: Option<PathBuf>,
    /// Use histograms saved earlier instead of calibrating.
    #[arg(long)]
    pub load_hist: Option<PathBuf>,
    /// Also write init_net.pbtxt (large).
    #[arg(long)]
    pub text_init: bool,
    /// Accuracy budget: after quantizing, measure the top-1 loss (percentage points) on the
    /// first `--holdout` images of the calibration DB (which are then not used to calibrate)
    /// and move the most harmful layers back to fp32 one at a time until the loss is at most
    /// this.
    #[arg(long)]
    pub max_loss: Option<f64>,
    /// Held-out images for `--max-loss` (the first ones in key order).
    #[arg(long, default_value_t = 50)]
    pub holdout: usize,
    /// Added to every label for `--max-loss` (1 for nets with a background class 0).
    #[arg(long, default_value_t = 0)]
    pub labels_offset: i64,
    /// Images of the calibration DB (first in key order) on which the per-layer SQNR of the
    /// written int8 net against fp32 is measured (0 = no per-layer report).
    #[arg(long, default_value_t = 8)]
    pub report_images: usize,
    /// Machine-readable report.
    #[arg(long)]
    pub json: bool,
    /// Preprocessing.
    #[command(flatten)]
    pub pre: PreprocessArgs,
}

impl QuantizeArgs {
    /// The weight granularity `--weights`/`--per-channel` ask for.
    pub fn granularity(&self) -> WeightGranularity {
        if self.per_channel {
            WeightGranularity::PerChannel
        } else {
            self.weights
        }
    }
}

/// Refuses an output folder that is, or contains, the folder of an input net: replacing it
/// would destroy the fp32 model being quantized (inputs are never modified).
fn refuse_input_as_output(out: &std::path::Path, paths: &crate::ModelPaths) -> anyhow::Result<()> {
    let Ok(out_c) = out.canonicalize() else {
        return Ok(()); // does not exist yet: it holds nothing
    };
    for p in paths.init.iter().chain(std::iter::once(&paths.predict)) {
        if let Ok(pc) = p.canonicalize() {
            if pc.starts_with(&out_c) {
                anyhow::bail!(
                    "--out {}: holds the input model file {}; write the int8 model to another folder",
                    out.display(),
                    p.display()
                );
            }
        }
    }
    Ok(())
}

/// Runs `c2q quantize`.
pub fn run(a: QuantizeArgs) -> anyhow::Result<()> {
    Int8Model::check_dir(&a.out, a.overwrite)?;
    let model = a.model.load(true)?;
    refuse_input_as_output(&a.out, &model.paths)?;
    let (model, _) = model.optimized()?;
    let pre = a.pre.to_preprocess()?;
    let cfg = QuantizeConfig {
        // With --max-loss the first --holdout records are kept for evaluation.
        skip: if a.max_loss.is_some() { a.holdout } else { 0 },
        kind: a.kind,
        preserve_sparsity: a.preserve_sparsity,
        weights: a.granularity(),
        weight_kind: a.weight_kind,
        exclude_ops: a.exclude_ops.clone(),
        exclude_nodes: a.exclude_nodes.clone(),
        bias_correction_images: a.bias_correction_images,
        equalize: a.equalize,
        ..a.sample.config(pre.clone())
    };
    let (model, pairs) = cfg.equalized(model)?;
    if a.equalize && !a.json {
        println!("equalized {pairs} conv pairs");
    }
    let t0 = std::time::Instant::now();
    let (calibration, skipped) = match &a.load_hist {
        Some(path) => {
            let records = read_histogram_file(path)?;
            crate::quant::check_coverage(&model, &records, path)?;
            (Calibration { records, images: 0 }, Vec::new())
        }
        None => {
            let db = a
                .calib_db
                .as_ref()
                .expect("clap requires --calib-db without --load-hist");
            let pb = bar(0, "calibrating");
            let progress = |done: usize, total: usize| super::progress::show(&pb, done, total);
            let r = calibrate_db(
                &model,
                db,
                cfg.batch_options(),
                cfg.threads,
                2048,
                Some(&progress),
            )?;
            pb.finish_and_clear();
            r
        }
    };
    if let Some(path) = &a.save_hist {
        write_histogram_file(path, &calibration.records)?;
    }
    let chosen = calibration.choose(&model, &cfg.choose_options())?;
    let mut opts = cfg.quantize_options(&model)?;
    if let Some(db) = &a.calib_db {
        opts.bias_correction = cfg.measure_bias_correction(&model, db)?;
    }
    let (int8, fallback) = match a.max_loss {
        None => (
            quantize_model(&model, &chosen.per_op, &chosen.inputs, &opts)?,
            None,
        ),
        Some(budget) => {
            let db = a.calib_db.as_ref().ok_or_else(|| {
                anyhow::anyhow!("--max-loss needs --calib-db (its first --holdout images)")
            })?;
            if a.holdout == 0 {
                anyhow::bail!("--max-loss needs --holdout > 0 images");
            }
            let fb = FallbackOptions {
                max_loss_points: budget,
                eval: EvalOptions {
                    batches: data::BatchOptions {
                        batch_size: cfg.batch,
                        limit: Some(a.holdout),
                        skip_bad: cfg.skip_bad,
                        format: cfg.format,
                        preprocess: pre.clone(),
                        ..data::BatchOptions::default()
                    },
                    threads: cfg.threads,
                    labels_offset: a.labels_offset,
                    ..EvalOptions::default()
                },
                report_images: a.report_images.max(1),
                max_steps: model.net.nodes.len(),
                trials: 4,
            };
            let say = |s: &str| {
                if !a.json {
                    println!("  {s}");
                }
            };
            if !a.json {
                println!("accuracy budget: at most {budget} points of top-1 loss");
            }
            let r = quantize_within_loss(&model, &chosen, &opts, db, &fb, Some(&say))?;
            let FallbackResult {
                int8,
                fp32_top1,
                initial_top1,
                final_top1,
                images,
                steps,
                met,
                ..
            } = r;
            let j = json!({
                "max_loss_points": budget, "holdout_images": images, "fp32_top1": fp32_top1,
                "int8_top1_before": initial_top1, "int8_top1": final_top1,
                "loss_points": 100.0 * (fp32_top1 - final_top1), "met": met,
                "moved_to_fp32": steps.iter().map(|s| json!({"op_index": s.op_index, "op_type": s.op_type,
                    "blob": s.blob, "sqnr_db": finite_or_null(s.sqnr_db), "top1_after": s.top1_after})).collect::<Vec<_>>(),
            });
            if !a.json {
                println!(
                    "  fp32 top-1 {fp32_top1:.4}, int8 {initial_top1:.4} -> {final_top1:.4} after moving {} layer(s) to fp32: {}",
                    steps.len(),
                    if met { "within budget" } else { "BUDGET NOT MET" }
                );
            }
            if !met {
                eprintln!(
                    "warning: --max-loss {budget}: the loss is still {:.2} points with every candidate layer in fp32",
                    100.0 * (fp32_top1 - final_top1)
                );
            }
            (int8, Some(j))
        }
    };
    let layers = match (&a.calib_db, a.report_images) {
        (Some(db), n) if n > 0 => {
            let int8_model = int8.to_model()?;
            let opts = data::BatchOptions {
                batch_size: cfg.batch.min(n),
                limit: Some(n),
                skip_bad: cfg.skip_bad,
                format: cfg.format,
                preprocess: pre.clone(),
                ..data::BatchOptions::default()
            };
            let (errs, _) = layer_errors_on_db(&model, &int8_model, db, opts, cfg.threads)?;
            Some(errs)
        }
        _ => None,
    };
    let rows = report_rows(&model, &int8.predict, &chosen.table);
    let report = layer_report(&rows, layers.as_deref());
    let report_json = json!({
        "kind": a.kind.name(), "preserve_sparsity": a.preserve_sparsity, "weights": a.granularity().name(),
        "calibration_images": calibration.images, "report_images": layers.as_ref().map(|_| a.report_images),
        "layers": report,
        "fallback": fallback,
    });
    let report_bytes = serde_json::to_string_pretty(&report_json)?.into_bytes();
    int8.write_dir_files(
        &a.out,
        a.overwrite,
        a.text_init,
        &[("report.json", &report_bytes)],
    )?;
    let secs = t0.elapsed().as_secs_f64();
    let kept: Vec<_> = int8
        .report
        .iter()
        .filter_map(|n| match &n.outcome {
            Outcome::KeptFp32(why) => Some((n.index, n.op_type.clone(), why.clone())),
            Outcome::Quantized(_) | Outcome::Absorbed(_) => None,
        })
        .collect();
    if a.json {
        let j = json!({
            "out": a.out, "images": calibration.images, "seconds": secs, "kind": a.kind.name(),
            "preserve_sparsity": a.preserve_sparsity, "weights": a.granularity().name(),
            "weight_kind": a.weight_kind.name(),
            "quantized_ops": int8.quantized_count(),
            "absorbed_ops": int8.absorbed_count(),
            "bias_correction_images": opts.bias_correction.as_ref().map_or(0, |m| m.images),
            "warnings": int8.warnings,
            "int8_ops": int8.predict.op.len(),
            "kept_fp32": kept.iter().map(|(i, t, w)| json!({"index": i, "type": t, "why": w})).collect::<Vec<_>>(),
            "ranges": chosen.table.iter().map(|c| json!({"op_index": c.op_index, "blob": c.blob, "min": c.min, "max": c.max,
                "chosen_min": c.chosen_min, "chosen_max": c.chosen_max, "clipped": c.clipped, "scale": c.q.scale, "zero_point": c.q.zero_point})).collect::<Vec<_>>(),
            "layers": report,
            "fallback": fallback,
            "skipped": skipped.iter().map(|s| json!({"key": s.key, "reason": s.reason})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        println!(
            "quantized {} of {} ops{} ({} calibration images, {} range search{}{}{}) in {:.1} s",
            int8.quantized_count(),
            model.net.nodes.len(),
            match int8.absorbed_count() {
                0 => String::new(),
                k => format!(", {k} Clips absorbed into their producers' int8 ranges"),
            },
            calibration.images,
            a.kind.name(),
            if a.preserve_sparsity {
                ", symmetric"
            } else {
                ""
            },
            match a.granularity() {
                WeightGranularity::PerTensor => ", per-tensor weights",
                WeightGranularity::PerChannel =>
                    ", per-channel weights: a c2q extension, use --weights per-tensor for Caffe2",
                WeightGranularity::Auto => ", auto weight granularity",
            },
            match &opts.bias_correction {
                Some(m) => format!(", bias correction on {} images", m.images),
                None => ", no bias correction".to_string(),
            },
            secs
        );
        for (i, t, why) in &kept {
            println!("  kept fp32: op #{i} {t}: {why}");
        }
        for w in &int8.warnings {
            eprintln!("warning: {w}");
        }
        if let Some(errs) = &layers {
            print_layer_table(errs, &rows, a.report_images, 10);
        }
        println!(
            "wrote predict_net.pb/.pbtxt ({} ops), init_net.pb ({} fills) and report.json to {}",
            int8.predict.op.len(),
            int8.init.op.len(),
            a.out.display()
        );
    }
    if !skipped.is_empty() {
        eprintln!("skipped {} bad calibration records", skipped.len());
    }
    Ok(())
}

/// One row of the layer report: a calibrated blob of the fp32 net under the label the
/// per-layer errors use (`name`, or `name#k` for the k-th write of a name reused in place),
/// with the parameters the int8 net actually carries for it (pass-through ops such as
/// MaxPool keep their input's; a producer that absorbed a Clip has the Clip's).
struct ReportRow<'a> {
    label: String,
    chosen: &'a ChosenRange,
    written: Option<QParams>,
}

/// The rows of `table` in order, labelled against the optimized fp32 `model` and with the
/// `Y_scale`/`Y_zero_point` of the matching `<blob>_int8` write of the int8 `predict` net.
fn report_rows<'a>(
    model: &Model,
    predict: &caffe2_proto::NetDef,
    table: &'a [ChosenRange],
) -> Vec<ReportRow<'a>> {
    let label = crate::eval::layer_error::blob_label;
    let mut labels: HashMap<(usize, &str), String> = HashMap::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, n) in model.net.nodes.iter().enumerate() {
        for o in &n.outputs {
            let k = seen.entry(o.as_str()).or_default();
            labels.insert((i, o.as_str()), label(o, *k));
            *k += 1;
        }
    }
    let mut written: HashMap<String, QParams> = HashMap::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for op in &predict.op {
        for o in &op.output {
            let Some(base) = o.strip_suffix("_int8") else {
                continue;
            };
            let k = seen.entry(base).or_default();
            let lab = label(base, *k);
            *k += 1;
            let scale = crate::passes::util::arg_f(op, "Y_scale");
            let zp = crate::passes::util::arg_i(op, "Y_zero_point");
            if let (Some(scale), Some(zp)) = (scale, zp) {
                written.insert(
                    lab,
                    QParams {
                        scale,
                        zero_point: zp as i32,
                    },
                );
            }
        }
    }
    table
        .iter()
        .map(|c| {
            let label = labels
                .get(&(c.op_index, c.blob.as_str()))
                .cloned()
                .unwrap_or_else(|| c.blob.clone());
            let written = written.get(&label).copied();
            ReportRow {
                label,
                chosen: c,
                written,
            }
        })
        .collect()
}

/// One JSON object per calibrated blob: observed and chosen range, clipped fraction, and the
/// SQNR/cosine of its int8 version when measured.
fn layer_report(rows: &[ReportRow<'_>], errs: Option<&[BlobError]>) -> Vec<serde_json::Value> {
    let by_blob: HashMap<&str, &BlobError> = errs
        .unwrap_or_default()
        .iter()
        .map(|e| (e.blob.as_str(), e))
        .collect();
    rows.iter()
        .map(|r| {
            let c = r.chosen;
            let e = by_blob.get(r.label.as_str());
            let q = r.written.unwrap_or(c.q);
            json!({
                "blob": r.label, "op_index": c.op_index, "min": c.min, "max": c.max,
                "chosen_min": c.chosen_min, "chosen_max": c.chosen_max, "clipped": c.clipped,
                "chosen_scale": c.q.scale, "chosen_zero_point": c.q.zero_point,
                "scale": q.scale, "zero_point": q.zero_point,
                "int8_op": e.map(|e| e.op_type.clone()),
                "sqnr_db": e.map(|e| finite_or_null(e.sqnr_db)),
                "cosine": e.map(|e| e.cosine),
            })
        })
        .collect()
}

/// JSON has no infinity: perfect agreement becomes `null` in `sqnr_db`.
fn finite_or_null(v: f64) -> serde_json::Value {
    if v.is_finite() {
        json!(v)
    } else {
        serde_json::Value::Null
    }
}

/// Prints the `worst` lowest-SQNR layers with their ranges (the range the int8 net carries:
/// a pass-through op's is its input's).
fn print_layer_table(errs: &[BlobError], rows: &[ReportRow<'_>], images: usize, worst: usize) {
    let ranges: HashMap<&str, &ReportRow<'_>> =
        rows.iter().map(|r| (r.label.as_str(), r)).collect();
    println!(
        "per-layer error of the int8 net on {images} images ({} blobs, worst {} shown):",
        errs.len(),
        worst.min(errs.len())
    );
    println!(
        "  {:<36} {:<16} {:>9} {:>8} {:>21} {:>8}",
        "blob", "int8 op", "SQNR dB", "cosine", "int8 range", "clipped"
    );
    for e in errs.iter().take(worst) {
        let (range, clipped) = match ranges.get(e.blob.as_str()) {
            Some(r) => {
                let q = r.written.unwrap_or(r.chosen.q);
                (
                    format!(
                        "[{:.3}, {:.3}]",
                        q.scale * (0 - q.zero_point) as f32,
                        q.scale * (255 - q.zero_point) as f32
                    ),
                    format!("{:.2e}", r.chosen.clipped),
                )
            }
            None => ("-".into(), "-".into()),
        };
        println!(
            "  {:<36} {:<16} {:>9.2} {:>8.5} {:>21} {:>8}",
            e.blob, e.op_type, e.sqnr_db, e.cosine, range, clipped
        );
    }
}
