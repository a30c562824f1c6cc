//! `c2q bench`: median latency and throughput of a model over repeated runs after warm-up.

use std::collections::HashMap;
use std::time::Instant;

use clap::Args;
use ops::kernels::isa::Isa;
use ops::Tensor;
use serde_json::json;

use super::model_args::{ModelArgs, Shape};
use crate::{Executor, Node, Observer};

/// Times each node as the gap since the previous node finished (the executor calls observers
/// right after a node's outputs exist), by op type and by layer class.
struct OpTimer<'a> {
    last: Instant,
    by_type: Vec<(String, f64, usize)>,
    /// (class, ms, multiply-accumulates) of the convolutions and FCs.
    by_class: Vec<(String, f64, u64)>,
    /// (label: index, type and first output; ms; multiply-accumulates) per node, by index.
    by_node: Vec<(String, f64, u64)>,
    params: &'a HashMap<String, Tensor>,
}

impl Observer for OpTimer<'_> {
    fn on_node(&mut self, node: &Node, outputs: &[&Tensor]) {
        let now = Instant::now();
        let ms = (now - self.last).as_secs_f64() * 1e3;
        self.last = now;
        match self.by_type.iter_mut().find(|(t, _, _)| *t == node.op_type) {
            Some(e) => {
                e.1 += ms;
                e.2 += 1;
            }
            None => self.by_type.push((node.op_type.clone(), ms, 1)),
        }
        let class = layer_class(node, outputs, self.params);
        if self.by_node.len() <= node.index {
            self.by_node.resize(node.index + 1, (String::new(), 0.0, 0));
        }
        let entry = &mut self.by_node[node.index];
        if entry.0.is_empty() {
            let out = node.outputs.first().map_or("", |o| o.as_str());
            *entry = (
                format!("{:>3} {} -> {out}", node.index, node.op_type),
                0.0,
                class.as_ref().map_or(0, |c| c.1),
            );
        }
        entry.1 += ms;
        if let Some((class, macs)) = class {
            match self.by_class.iter_mut().find(|(c, _, _)| *c == class) {
                Some(e) => {
                    e.1 += ms;
                    e.2 += macs;
                }
                None => self.by_class.push((class, ms, macs)),
            }
        }
    }
}

/// The layer class of a convolution or FC node (`conv 3x3 s2`, `depthwise 3x3`, `fc`) and
/// its multiply-accumulates: output elements × the weight elements per output channel.
fn layer_class(
    node: &Node,
    outputs: &[&Tensor],
    params: &HashMap<String, Tensor>,
) -> Option<(String, u64)> {
    let t = node.op_type.as_str();
    let conv = t.starts_with("Conv") || t.starts_with("Int8Conv");
    let fc = t == "FC" || t.starts_with("Int8FC");
    if !(conv || fc) {
        return None;
    }
    let w = params.get(node.inputs.get(1)?)?;
    let per_out: usize = w.shape().iter().skip(1).product();
    let macs = (outputs.first()?.len() * per_out) as u64;
    if fc {
        return Some(("fc".into(), macs));
    }
    let args = &node.spec.args;
    let int = |n: &str| args.int(n).ok().flatten();
    let kernel = args
        .ints("kernels")
        .ok()
        .flatten()
        .and_then(|k| k.first().copied())
        .or_else(|| int("kernel"))
        .or_else(|| int("kernel_h"))
        .unwrap_or(0);
    let stride = args
        .ints("strides")
        .ok()
        .flatten()
        .and_then(|k| k.first().copied())
        .or_else(|| int("stride"))
        .or_else(|| int("stride_h"))
        .unwrap_or(1);
    let group = int("group").unwrap_or(1);
    let kind = if group > 1 && per_out == (kernel * kernel) as usize {
        "depthwise"
    } else if group > 1 {
        "group conv"
    } else {
        "conv"
    };
    let s = if stride > 1 {
        format!(" s{stride}")
    } else {
        String::new()
    };
    Some((format!("{kind} {kernel}x{kernel}{s}"), macs))
}

/// Flags of `c2q bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Run the net exactly as written (no SpatialBN folding or Relu fusion).
    #[arg(long)]
    pub no_optimize: bool,
    /// Images per run.
    #[arg(long, default_value_t = 1, value_parser = super::parse_batch)]
    pub batch: usize,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 1, value_parser = super::parse_threads)]
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
    /// Also print where the time goes: total time per op type over the timed runs.
    #[arg(long)]
    pub profile: bool,
    /// With --profile, also the time of every op in execution order.
    #[arg(long)]
    pub profile_ops: bool,
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
    let median = if n % 2 == 1 {
        ms[n / 2]
    } else {
        (ms[n / 2 - 1] + ms[n / 2]) / 2.0
    };
    (median, ms[((n - 1) as f64 * 0.9) as usize])
}

/// Runs `c2q bench`.
pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let model = a.model.load(true)?;
    let model = if a.no_optimize {
        model
    } else {
        model.optimized()?.0
    };
    let input = model.data_input()?;
    let mut shape = vec![a.batch];
    shape.extend(&a.input_shape.0);
    ops::limits::check_tensor("the benchmark input (--batch x --input-shape)", &shape, 4)?;
    let n: usize = shape.iter().product();
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 2654435761) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let x = Tensor::from_f32(&shape, x);
    let exec = Executor::new(&model, a.threads)?;
    let feed = || HashMap::from([(input.clone(), x.clone())]);
    exec.check(&feed())?;
    // Warm-up and timed runs on one bar (drawn only on a terminal; between runs, outside
    // the timed part).
    let pb = super::progress::bar((a.warmup + a.runs) as u64, "benchmarking");
    for _ in 0..a.warmup {
        exec.run(feed())?;
        pb.inc(1);
    }
    let mut times = Vec::with_capacity(a.runs);
    for _ in 0..a.runs {
        let f = feed();
        let t0 = Instant::now();
        exec.run(f)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        pb.inc(1);
    }
    pb.finish_and_clear();
    let (median, p90) = median_p90(times);
    if a.profile {
        let mut timer = OpTimer {
            last: Instant::now(),
            by_type: Vec::new(),
            by_class: Vec::new(),
            by_node: Vec::new(),
            params: &model.params,
        };
        for _ in 0..a.runs {
            // The input copy is made before the clock starts (it is not the first op's time).
            let f = feed();
            timer.last = Instant::now();
            exec.run_observed(f, Some(&mut timer))?;
        }
        timer.by_type.sort_by(|x, y| y.1.total_cmp(&x.1));
        let total: f64 = timer.by_type.iter().map(|t| t.1).sum();
        // Profiled runs see every op's whole output, so they run the whole batch on all
        // threads; the timed runs may split it (per-thread parts, early layers image by
        // image): say so when they differ.
        let (parts, cut) = exec.plan(&feed())?;
        if parts > 1 || cut.is_some() {
            eprintln!(
                "note: the profile runs the whole batch on all threads; the timed runs above {}{} \
                 (per-op times here can add up to more than the median)",
                if parts > 1 {
                    format!("split it into {parts} per-thread parts")
                } else {
                    String::new()
                },
                match cut {
                    Some(k) if parts > 1 => format!(" and run the first {k} ops image by image"),
                    Some(k) => format!("run the first {k} ops image by image"),
                    None => String::new(),
                }
            );
        }
        eprintln!("per-op time (mean per run, {} runs):", a.runs);
        for (t, ms, n) in &timer.by_type {
            eprintln!(
                "  {t:<18} {:>9.2} ms  {:>5.1}%  ({} calls/run)",
                ms / a.runs as f64,
                100.0 * ms / total,
                n / a.runs
            );
        }
        if a.profile_ops {
            eprintln!("per op, in execution order (mean per run):");
            for (label, ms, macs) in &timer.by_node {
                let ms = ms / a.runs as f64;
                if *macs > 0 {
                    let g = *macs as f64 / ms / 1e6;
                    eprintln!("  {label:<52} {ms:>8.3} ms {g:>8.1} GMAC/s");
                } else {
                    eprintln!("  {label:<52} {ms:>8.3} ms");
                }
            }
        }
        if !timer.by_class.is_empty() {
            timer.by_class.sort_by(|x, y| y.1.total_cmp(&x.1));
            eprintln!("per layer class (GMAC/s = multiply-accumulates per second):");
            for (c, ms, macs) in &timer.by_class {
                eprintln!(
                    "  {c:<18} {:>9.2} ms  {:>8.1} GMAC/s",
                    ms / a.runs as f64,
                    *macs as f64 / ms / 1e6
                );
            }
        }
    }
    let ips = a.batch as f64 * 1e3 / median;
    if a.json {
        println!(
            "{}",
            json!({"runtime": "c2q", "model": model.paths.predict, "batch": a.batch, "threads": exec.threads(), "isa": Isa::current().name(),
                   "runs": a.runs, "median_ms": median, "p90_ms": p90, "images_per_s": ips})
        );
    } else {
        println!(
            "c2q ({}): batch {} threads {}: median {:.2} ms/batch (p90 {:.2}) over {} runs, {:.1} images/s",
            Isa::current(),
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
