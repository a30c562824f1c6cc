//! `c2q eval`: top-1/top-5 of one or more models over an LMDB, side by side.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::preprocess_args::PreprocessArgs;
use super::progress::bar;
use crate::eval::{evaluate, EvalOptions};
use crate::Model;

/// Flags of `c2q eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Model folders (init_net + predict_net); give two to compare fp32 and int8.
    #[arg(long = "model", short = 'm', required = true)]
    pub models: Vec<PathBuf>,
    /// The evaluation LMDB.
    #[arg(long)]
    pub db: PathBuf,
    /// Images per batch.
    #[arg(long, default_value_t = 16, value_parser = super::parse_batch)]
    pub batch: usize,
    /// Evaluate at most this many records (in key order).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0, value_parser = super::parse_threads)]
    pub threads: usize,
    /// Added to every label (1 for nets with a background class 0).
    #[arg(long, default_value_t = 0)]
    pub labels_offset: i64,
    /// Skip bad records (reported) instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
    /// Record format; detected when omitted.
    #[arg(long)]
    pub format: Option<data::RecordFormat>,
    /// Batches decoded ahead on a background thread while the models run; 0 decodes each
    /// batch on all cores just before it is used.
    #[arg(long, default_value_t = crate::eval::DEFAULT_PREFETCH)]
    pub prefetch: usize,
    /// Priority of the decode thread: `normal`, or `idle` (runs only on CPU time inference
    /// leaves unused). Default: idle when `--threads` uses every core, else normal.
    #[arg(long, value_enum)]
    pub decode_priority: Option<DecodePriorityArg>,
    /// Run Int8 ops with the scalar reference implementation (slow; bit-identical).
    #[arg(long)]
    pub reference: bool,
    /// Machine-readable report.
    #[arg(long)]
    pub json: bool,
    /// Preprocessing.
    #[command(flatten)]
    pub pre: PreprocessArgs,
}

/// `--decode-priority` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DecodePriorityArg {
    /// Like the inference threads.
    Normal,
    /// Only when a core would otherwise idle (Linux SCHED_IDLE).
    Idle,
}

/// Runs `c2q eval`.
pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    let models: Vec<Model> = a
        .models
        .iter()
        .map(|d| {
            let mut m = Model::load_dir(d)?.optimized()?.0;
            if a.reference {
                m.set_reference(true);
            }
            Ok(m)
        })
        .collect::<anyhow::Result<_>>()?;
    let opts = EvalOptions {
        batches: data::BatchOptions {
            batch_size: a.batch.max(1),
            limit: a.limit,
            skip_bad: a.skip_bad,
            format: a.format,
            preprocess: a.pre.to_preprocess()?,
            ..data::BatchOptions::default()
        },
        threads: a.threads,
        labels_offset: a.labels_offset,
        prefetch: a.prefetch,
        decode_priority: match a.decode_priority {
            None => crate::eval::default_decode_priority(a.threads),
            Some(DecodePriorityArg::Normal) => data::DecodePriority::Normal,
            Some(DecodePriorityArg::Idle) => data::DecodePriority::Idle,
        },
    };
    let pb = bar(0, "evaluating");
    let progress = |done: usize, total: usize| super::progress::show(&pb, done, total);
    let refs: Vec<&Model> = models.iter().collect();
    let r = evaluate(&refs, &a.db, &opts, Some(&progress))?;
    pb.finish_and_clear();
    let n = r.images;
    if a.json {
        let j = json!({
            "images": n,
            "wall_seconds": r.wall_secs,
            "images_per_s_wall": n as f64 / r.wall_secs,
            "overhead_seconds": r.overhead_secs(),
            "models": a.models.iter().enumerate().map(|(i, m)| json!({"model": m, "top1": r.top1(i),
                "top5": r.top5(i), "images_per_s": r.images_per_s(i),
                "inference_seconds": r.models[i].secs, "non_finite_images": r.models[i].non_finite,
                "first_non_finite_key": r.models[i].first_non_finite,
                "top1_agreement_with_first": r.agreement_with_first(i),
                "mean_abs_delta_with_first": r.mean_abs_delta_with_first(i)})).collect::<Vec<_>>(),
            "top1_agreement": r.agreement(),
            "mean_abs_delta_softmax": (models.len() >= 2).then_some(r.mean_abs_delta),
            "skipped": r.skipped.iter().map(|s| json!({"key": s.key, "reason": s.reason})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        println!(
            "{n} images from {} in {:.1} s ({:.1} images/s overall; {:.2} s outside the models)",
            a.db.display(),
            r.wall_secs,
            n as f64 / r.wall_secs,
            r.overhead_secs()
        );
        // Four decimals once an image is worth less than 0.1 point.
        let prec = if n > 1000 { 4 } else { 3 };
        let several = models.len() >= 2;
        print!(
            "{:<40} {:>7} {:>7} {:>10}",
            "model", "top-1", "top-5", "images/s"
        );
        if several {
            print!(" {:>9} {:>10}", "agree", "mean |Δ|");
        }
        println!();
        for (i, m) in a.models.iter().enumerate() {
            print!(
                "{:<40} {:>7.prec$} {:>7.prec$} {:>10.1}",
                m.display(),
                r.top1(i),
                r.top5(i),
                r.images_per_s(i)
            );
            match (r.agreement_with_first(i), r.mean_abs_delta_with_first(i)) {
                (Some(agree), Some(delta)) => print!(" {agree:>9.prec$} {delta:>10.2e}"),
                _ if several => print!(" {:>9} {:>10}", "(ref)", ""),
                _ => {}
            }
            println!();
        }
        if several {
            println!(
                "agree: top-1 agreement with the first model; mean |Δ|: mean absolute \
                 difference of the outputs per element"
            );
        }
    }
    for (i, m) in a.models.iter().enumerate() {
        let s = &r.models[i];
        if s.non_finite > 0 {
            eprintln!(
                "warning: {}: NaN or infinite outputs on {} of {n} images (first: record `{}`); \
                 they count as misses and never agree",
                m.display(),
                s.non_finite,
                s.first_non_finite.as_deref().unwrap_or("?")
            );
        }
    }
    if !r.skipped.is_empty() {
        eprintln!("skipped {} bad records", r.skipped.len());
    }
    Ok(())
}
