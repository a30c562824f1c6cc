//! `c2q demo`: the main job on example data the project makes itself: an example CNN, an
//! example image LMDB, calibration over it, and classification.

use std::collections::HashMap;
use std::path::PathBuf;

use clap::Args;
use ops::Tensor;

use crate::demo::{example_image, write_example_model, EXAMPLE_SIZE};
use crate::quant::calibrate::Calibrator;
use crate::quant::{ChooseOptions, QuantKind};
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

    let images = a.out.join("images");
    if images.exists() {
        std::fs::remove_dir_all(&images)?;
    }
    let classes = 4;
    let per_class = 8;
    for c in 0..classes {
        let dir = images.join(format!("class{c}"));
        std::fs::create_dir_all(&dir)?;
        for k in 0..per_class {
            example_image(44 + 3 * k as u32, 38 + 2 * k as u32, c)
                .save(dir.join(format!("{k}.png")))?;
        }
    }
    let db = a.out.join("db");
    let opts = data::MakeDbOptions {
        format: data::RecordFormat::Datum,
        raw: None,
        overwrite: true,
    };
    let made = data::make_db(&data::Source::Folder(images.clone()), &db, &opts, None)?;
    println!(
        "2. wrote {} generated images ({classes} classes) to the LMDB {}",
        made.count,
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

    let pre = data::Preprocess {
        scale: EXAMPLE_SIZE + 4,
        crop: EXAMPLE_SIZE,
        ..data::Preprocess::default()
    };
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

    let mut all = data::Batches::open(
        &db,
        data::BatchOptions {
            batch_size: 32,
            preprocess: pre,
            ..data::BatchOptions::default()
        },
    )?;
    let b = all
        .next()
        .ok_or_else(|| anyhow::anyhow!("the demo database is empty"))??;
    let x = Tensor::from_f32(&[b.n, 3, EXAMPLE_SIZE, EXAMPLE_SIZE], b.images);
    let out = exec.run(HashMap::from([("data".to_string(), x)]))?;
    let top = super::run::top_k(&out["softmax"], 1)?;
    println!(
        "5. classified the {} images (random weights, so classes are arbitrary):",
        b.n
    );
    for (key, t) in b.keys.iter().zip(&top).step_by(per_class) {
        println!("     {key:<24} -> class {} (p = {:.3})", t[0].0, t[0].1);
    }
    println!("done in {:.2} s", t0.elapsed().as_secs_f64());
    Ok(())
}
