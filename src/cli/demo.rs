//! `c2q demo`: the main job on example data the project makes itself.

use std::collections::HashMap;
use std::path::PathBuf;

use clap::Args;

use crate::demo::{example_image, write_example_model, EXAMPLE_SIZE};
use crate::{Executor, Model};

/// Flags of `c2q demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder to write the example model and images into.
    #[arg(long, default_value = "target/c2q-demo")]
    pub out: PathBuf,
    /// Seed for the example weights.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// Runs `c2q demo`.
pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    let model_dir = a.out.join("model");
    write_example_model(&model_dir, a.seed)?;
    println!("wrote example model to {}", model_dir.display());
    let model = Model::load_dir(&model_dir)?;
    let exec = Executor::new(&model, 0)?;
    let pre = data::Preprocess {
        scale: EXAMPLE_SIZE + 4,
        crop: EXAMPLE_SIZE,
        ..data::Preprocess::default()
    };
    std::fs::create_dir_all(a.out.join("images"))?;
    for class in 0..3 {
        let path = a.out.join(format!("images/example_{class}.png"));
        example_image(48, 40, class).save(&path)?;
        let x = super::run::image_tensor(&path, &pre)?;
        let out = exec.run(HashMap::from([("data".to_string(), x)]))?;
        let top = super::run::top_k(&out["softmax"], 3)?;
        let s: Vec<String> = top[0]
            .iter()
            .map(|(i, p)| format!("{i} ({p:.3})"))
            .collect();
        println!("{}: top-3 {}", path.display(), s.join(", "));
    }
    Ok(())
}
