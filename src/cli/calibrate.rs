//! `c2q calibrate`: histograms of every activation over a seeded sample of LMDB images.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::model_args::ModelArgs;
use super::preprocess_args::PreprocessArgs;
use super::progress::bar;
use super::sample_args::SampleArgs;
use crate::quant::calibrate::calibrate_db;
use crate::quant::{write_histogram_file, ChooseOptions, QuantKind};

/// Flags of `c2q calibrate`.
#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// The fp32 model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Calibration images (Caffe Datum or Caffe2 TensorProtos LMDB).
    #[arg(long)]
    pub calib_db: PathBuf,
    /// The calibration sample.
    #[command(flatten)]
    pub sample: SampleArgs,
    /// Bins per histogram.
    #[arg(long, default_value_t = 2048, value_parser = super::parse_bins)]
    pub bins: usize,
    /// Write the histograms (Caffe2 histogram-observer text format).
    #[arg(long)]
    pub save_hist: Option<PathBuf>,
    /// Range search for the printed table: l2, l2_approx, min_max, kl, p99.
    #[arg(long, default_value = "l2")]
    pub kind: QuantKind,
    /// Symmetric activation ranges (real 0 maps to code 128).
    #[arg(long)]
    pub preserve_sparsity: bool,
    /// Machine-readable table.
    #[arg(long)]
    pub json: bool,
    /// Calibrate the net exactly as written (no SpatialBN folding or Relu fusion).
    #[arg(long)]
    pub no_optimize: bool,
    /// Preprocessing.
    #[command(flatten)]
    pub pre: PreprocessArgs,
}

/// Runs `c2q calibrate`.
pub fn run(a: CalibrateArgs) -> anyhow::Result<()> {
    let model = a.model.load(true)?;
    let model = if a.no_optimize {
        model
    } else {
        model.optimized()?.0
    };
    let pre = a.pre.to_preprocess()?;
    let opts = a.sample.config(pre).batch_options();
    let pb = bar(0, "calibrating");
    let progress = |done: usize, total: usize| super::progress::show(&pb, done, total);
    let t0 = std::time::Instant::now();
    let (calibration, skipped) = calibrate_db(
        &model,
        &a.calib_db,
        opts,
        a.sample.threads,
        a.bins,
        Some(&progress),
    )?;
    pb.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    if let Some(path) = &a.save_hist {
        write_histogram_file(path, &calibration.records)?;
    }
    let chosen = calibration.choose(&model, &ChooseOptions::new(a.kind, a.preserve_sparsity))?;
    if a.json {
        let j = json!({
            "images": calibration.images, "seconds": secs, "skipped": skipped.iter().map(|s| json!({"key": s.key, "reason": s.reason})).collect::<Vec<_>>(),
            "kind": a.kind.name(), "preserve_sparsity": a.preserve_sparsity,
            "blobs": chosen.table.iter().map(|c| json!({
                "op_index": c.op_index, "output_index": c.output_index, "blob": c.blob,
                "min": c.min, "max": c.max, "chosen_min": c.chosen_min, "chosen_max": c.chosen_max,
                "clipped": c.clipped, "scale": c.q.scale, "zero_point": c.q.zero_point,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        println!(
            "calibrated on {} images in {:.1} s ({:.1} images/s); {} activations observed; range search {}",
            calibration.images,
            secs,
            calibration.images as f64 / secs,
            calibration.records.len(),
            a.kind.name()
        );
        println!(
            "{:>4} {:<40} {:>10} {:>10} {:>10} {:>10} {:>8} {:>10} {:>4}",
            "op", "blob", "min", "max", "lo", "hi", "clip%", "scale", "zp"
        );
        for c in &chosen.table {
            println!(
                "{:>4} {:<40} {:>10.4} {:>10.4} {:>10.4} {:>10.4} {:>8.4} {:>10.6} {:>4}",
                c.op_index,
                c.blob,
                c.min,
                c.max,
                c.chosen_min,
                c.chosen_max,
                100.0 * c.clipped,
                c.q.scale,
                c.q.zero_point
            );
        }
        if let Some(p) = &a.save_hist {
            println!("histograms written to {}", p.display());
        }
    }
    if !skipped.is_empty() {
        eprintln!("skipped {} bad records:", skipped.len());
        for s in &skipped {
            eprintln!("  {}: {}", s.key, s.reason);
        }
    }
    Ok(())
}
