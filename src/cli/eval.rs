//! `c2q eval`: top-1/top-5 of one or more models over an LMDB, side by side.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use ops::Tensor;
use serde_json::json;

use super::preprocess_args::PreprocessArgs;
use super::progress::bar;
use super::run::top_k;
use crate::{Executor, Model};

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
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Evaluate at most this many records (in key order).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
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
    /// Machine-readable report.
    #[arg(long)]
    pub json: bool,
    /// Preprocessing.
    #[command(flatten)]
    pub pre: PreprocessArgs,
}

struct Stats {
    top1: usize,
    top5: usize,
    secs: f64,
}

/// Runs `c2q eval`.
pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    let models: Vec<Model> = a
        .models
        .iter()
        .map(|d| Ok(Model::load_dir(d)?.optimized()?.0))
        .collect::<anyhow::Result<_>>()?;
    let execs: Vec<Executor> = models
        .iter()
        .map(|m| Executor::new(m, a.threads))
        .collect::<crate::Result<_>>()?;
    let pre = a.pre.to_preprocess()?;
    let opts = data::BatchOptions {
        batch_size: a.batch.max(1),
        limit: a.limit,
        skip_bad: a.skip_bad,
        format: a.format,
        preprocess: pre.clone(),
        ..data::BatchOptions::default()
    };
    let batches = data::Batches::open(&a.db, opts)?;
    let pb = bar(batches.planned() as u64, "evaluating");
    let mut batches = batches.prefetch(2)?;
    let mut stats: Vec<Stats> = models
        .iter()
        .map(|_| Stats {
            top1: 0,
            top5: 0,
            secs: 0.0,
        })
        .collect();
    let (mut n, mut agree, mut dsum) = (0usize, 0usize, 0f64);
    for b in batches.by_ref() {
        let b = b?;
        let shape = pre.batch_shape(b.n);
        let x = Tensor::from_f32(&shape, b.images);
        let mut outs = Vec::new();
        for ((m, e), s) in models.iter().zip(&execs).zip(stats.iter_mut()) {
            let input = m.data_input()?;
            let t0 = Instant::now();
            let mut o = e.run(HashMap::from([(input, x.clone())]))?;
            s.secs += t0.elapsed().as_secs_f64();
            let name = m.outputs().first().cloned().unwrap_or_default();
            let y = o
                .remove(&name)
                .ok_or_else(|| anyhow::anyhow!("output `{name}` missing"))?;
            let tops = top_k(&y, 5)?;
            for (row, &label) in tops.iter().zip(&b.labels) {
                let want = (label + a.labels_offset) as usize;
                if row.first().map(|t| t.0) == Some(want) {
                    s.top1 += 1;
                }
                if row.iter().any(|t| t.0 == want) {
                    s.top5 += 1;
                }
            }
            outs.push((y, tops));
        }
        if outs.len() >= 2 {
            for (r0, r1) in outs[0].1.iter().zip(&outs[1].1) {
                if r0.first().map(|t| t.0) == r1.first().map(|t| t.0) {
                    agree += 1;
                }
            }
            let (y0, y1) = (outs[0].0.f32_slice()?, outs[1].0.f32_slice()?);
            dsum += y0
                .iter()
                .zip(y1)
                .map(|(p, q)| (p - q).abs() as f64)
                .sum::<f64>()
                / (y0.len() / b.n) as f64;
        }
        n += b.n;
        pb.set_position(n as u64);
    }
    pb.finish_and_clear();
    let skipped = batches.skipped();
    if n == 0 {
        anyhow::bail!("{}: no image evaluated", a.db.display());
    }
    if a.json {
        let j = json!({
            "images": n,
            "models": a.models.iter().zip(&stats).map(|(m, s)| json!({"model": m, "top1": s.top1 as f64 / n as f64,
                "top5": s.top5 as f64 / n as f64, "images_per_s": n as f64 / s.secs})).collect::<Vec<_>>(),
            "top1_agreement": (models.len() >= 2).then(|| agree as f64 / n as f64),
            "mean_abs_delta_softmax": (models.len() >= 2).then(|| dsum / n as f64),
            "skipped": skipped.iter().map(|s| json!({"key": s.key, "reason": s.reason})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        println!("{n} images from {}", a.db.display());
        println!(
            "{:<40} {:>7} {:>7} {:>10}",
            "model", "top-1", "top-5", "images/s"
        );
        for (m, s) in a.models.iter().zip(&stats) {
            println!(
                "{:<40} {:>7.3} {:>7.3} {:>10.1}",
                m.display(),
                s.top1 as f64 / n as f64,
                s.top5 as f64 / n as f64,
                n as f64 / s.secs
            );
        }
        if models.len() >= 2 {
            println!(
                "top-1 agreement (first two): {:.3}; mean |Δ output| per element: {:.2e}",
                agree as f64 / n as f64,
                dsum / n as f64
            );
        }
    }
    if !skipped.is_empty() {
        eprintln!("skipped {} bad records", skipped.len());
    }
    Ok(())
}
