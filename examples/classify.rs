//! Classifies one image with a (quantized) Caffe2 model:
//! `cargo run --release --example classify -- MODEL_DIR IMAGE [SYNSETS]`.
use std::collections::HashMap;

use c2q::{eval::top_k, Executor, Model, Preprocess, Tensor};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model_dir, image, rest @ ..] = args.as_slice() else {
        return Err("usage: classify MODEL_DIR IMAGE [SYNSETS]".into());
    };
    let model = Model::load_dir(model_dir)?;
    let pre = Preprocess::default(); // shorter side 256, centre crop 224, zoo mean/std, BGR
    let img = c2q::data::decode_bgr(&std::fs::read(image)?, image)?;
    let mut x = vec![0f32; pre.image_len()];
    pre.apply(&img, &mut x)?;
    let feed = HashMap::from([(
        model.data_input()?,
        Tensor::from_f32(&pre.batch_shape(1), x),
    )]);
    let out = Executor::new(&model, 0)?.run(feed)?;
    let names: Vec<String> = match rest.first() {
        Some(p) => std::fs::read_to_string(p)?
            .lines()
            .map(str::to_string)
            .collect(),
        None => Vec::new(),
    };
    for (class, p) in &top_k(&out[&model.outputs()[0]], 5)?[0] {
        println!(
            "{p:.4}  {class:>4}  {}",
            names.get(*class).map_or("", |s| s)
        );
    }
    Ok(())
}
