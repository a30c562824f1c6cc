//! `c2q bench`: median latency and throughput of a model over repeated runs after warm-up.

use std::collections::HashMap;
use std::time::Instant;

use clap::Args;
use ops::Tensor;
use serde_json::json;

use super::model_args::{ModelArgs, Shape};
use crate::Executor;

/// Flags of `c2q bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Images per run.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Timed runs.
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
    /// Untimed warm-up runs.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Per-image input shape (without the batch dimension).
    #[arg(long, default_value = "3,224,224")]
    pub input_shape: Shape,
    /// Machine-readable output (one JSON line).
    #[arg(long)]
    pub json: bool,
}

/// Summary statistics of a list of timings in milliseconds.
pub fn median_p90(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let n = ms.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let median = if n % 2 == 1 { ms[n / 2] } else { (ms[n / 2 - 1] + ms[n / 2]) / 2.0 };
    (median, ms[((n - 1) as f64 * 0.9) as usize])
}

/// Runs `c2q bench`.
pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let model = a.model.load(true)?;
    let input = model
        .data_inputs()
        .first()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("the model has no data input"))?;
    let mut shape = vec![a.batch];
    shape.extend(&a.input_shape.0);
    let n: usize = shape.iter().product();
    let x: Vec<f32> = (0..n).map(|i| ((i * 2654435761) % 1000) as f32 / 500.0 - 1.0).collect();
    let x = Tensor::from_f32(&shape, x);
    let exec = Executor::new(&model, a.threads)?;
    let feed = || HashMap::from([(input.clone(), x.clone())]);
    exec.check(&feed())?;
    for _ in 0..a.warmup {
        exec.run(feed())?;
    }
    let mut times = Vec::with_capacity(a.runs);
    for _ in 0..a.runs {
        let f = feed();
        let t0 = Instant::now();
        exec.run(f)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let (median, p90) = median_p90(times);
    let ips = a.batch as f64 * 1e3 / median;
    if a.json {
        println!(
            "{}",
            json!({"runtime": "c2q", "model": model.paths.predict, "batch": a.batch, "threads": exec.threads(),
                   "runs": a.runs, "median_ms": median, "p90_ms": p90, "images_per_s": ips})
        );
    } else {
        println!(
            "c2q: batch {} threads {}: median {:.2} ms/batch (p90 {:.2}) over {} runs, {:.1} images/s",
            a.batch,
            exec.threads(),
            median,
            p90,
            a.runs,
            ips
        );
    }
    Ok(())
}
