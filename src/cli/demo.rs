//! `c2q demo`: the main job on example data the project makes itself: an example CNN, an
//! example image LMDB, calibration over it, int8 quantization, and fp32 vs int8 comparison.

use std::collections::HashMap;
use std::path::PathBuf;

use clap::Args;
use ops::Tensor;

use crate::demo::{example_preprocess, write_example_db, write_example_model, EXAMPLE_SIZE};
use crate::quant::calibrate::Calibrator;
use crate::quant::{quantize_model, ChooseOptions, QuantKind, QuantizeOptions};
use crate::{Executor, Model};

/// Flags of `c2q demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder to write the example model, images and database into (replaced if present).
    #[arg(long, default_value = "target/c2q-demo")]
    pub out: PathBuf,
    /// Seed for the example weights.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// Runs `c2q demo`.
pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    let model_dir = a.out.join("model");
    write_example_model(&model_dir, a.seed)?;
    println!("1. wrote an example CNN to {}", model_dir.display());

    let (classes, per_class) = (4, 8);
    let db = write_example_db(&a.out, classes, per_class)?;
    println!(
        "2. wrote {} generated images ({classes} classes) to the LMDB {}",
        classes * per_class,
        db.display()
    );

    let model = Model::load_dir(&model_dir)?;
    let (model, passes) = model.optimized()?;
    let rewrites: Vec<String> = passes.iter().map(|(p, n)| format!("{p} {n}")).collect();
    println!(
        "3. loaded it ({} ops after rewrites: {})",
        model.net.nodes.len(),
        rewrites.join(", ")
    );

    let pre = example_preprocess();
    let exec = Executor::new(&model, 0)?;
    let batch_opts = data::BatchOptions {
        batch_size: 8,
        sample: Some(24),
        seed: 1,
        preprocess: pre.clone(),
        ..data::BatchOptions::default()
    };
    let mut cal = Calibrator::new(&model, 2048);
    for b in data::Batches::open(&db, batch_opts)? {
        let b = b?;
        let x = Tensor::from_f32(&[b.n, 3, EXAMPLE_SIZE, EXAMPLE_SIZE], b.images);
        cal.run_batch(&exec, HashMap::from([("data".to_string(), x)]), b.n)?;
    }
    let calibration = cal.finish(&model);
    let chosen = calibration.choose(&model, &ChooseOptions::new(QuantKind::L2, false))?;
    println!(
        "4. calibrated on a seeded sample of {} images: {} activation histograms; L2-chosen ranges:",
        calibration.images,
        calibration.records.len()
    );
    for c in &chosen.table {
        println!(
            "     {:<10} observed [{:>8.3}, {:>8.3}]  chosen [{:>8.3}, {:>8.3}]  scale {:.5} zero point {}",
            c.blob, c.min, c.max, c.chosen_min, c.chosen_max, c.q.scale, c.q.zero_point
        );
    }

    let int8 = quantize_model(
        &model,
        &chosen.per_op,
        &chosen.inputs,
        &QuantizeOptions {
            input_shapes: HashMap::from([(
                "data".to_string(),
                vec![1, 3, EXAMPLE_SIZE, EXAMPLE_SIZE],
            )]),
            ..QuantizeOptions::default()
        },
    )?;
    let int8_dir = a.out.join("model_int8");
    int8.write_dir(&int8_dir)?;
    let int8_model = Model::load_dir(&int8_dir)?;
    let types: Vec<&str> = int8_model
        .net
        .nodes
        .iter()
        .map(|n| n.op_type.as_str())
        .collect();
    println!(
        "5. wrote the DNNLOWP int8 model to {} ({} ops: {})",
        int8_dir.display(),
        types.len(),
        types.join(" ")
    );

    let int8_exec = Executor::new(&int8_model, 0)?;
    let all = data::Batches::open(
        &db,
        data::BatchOptions {
            batch_size: 32,
            preprocess: pre,
            ..data::BatchOptions::default()
        },
    )?;
    let (mut n, mut agree, mut max_delta) = (0usize, 0usize, 0f32);
    for b in all {
        let b = b?;
        let x = Tensor::from_f32(&[b.n, 3, EXAMPLE_SIZE, EXAMPLE_SIZE], b.images);
        let feed = || HashMap::from([("data".to_string(), x.clone())]);
        let y32 = exec.run(feed())?.remove("softmax");
        let y8 = int8_exec.run(feed())?.remove("softmax");
        let (Some(y32), Some(y8)) = (y32, y8) else {
            anyhow::bail!("a model did not produce `softmax`");
        };
        let (t32, t8) = (crate::eval::top_k(&y32, 1)?, crate::eval::top_k(&y8, 1)?);
        agree += t32
            .iter()
            .zip(&t8)
            .filter(|(a, b)| a[0].0 == b[0].0)
            .count();
        for (p, q) in y32.f32_slice()?.iter().zip(y8.f32_slice()?) {
            max_delta = max_delta.max((p - q).abs());
        }
        n += b.n;
    }
    println!(
        "6. fp32 vs int8 on all {n} images: top-1 agreement {agree}/{n}, max |Δ probability| {max_delta:.4}"
    );
    println!("   (random example weights: classes are arbitrary; try `c2q eval -m A -m B --db DB` on real models)");
    println!("done in {:.2} s", t0.elapsed().as_secs_f64());
    Ok(())
}
