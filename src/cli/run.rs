//! `c2q run`: one forward pass on a tensor file or an image, printing the top classes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use caffe2_proto::{io, TensorProto, TensorProtos};
use clap::Args;
use ops::Tensor;
use serde_json::json;

use super::model_args::ModelArgs;
use super::preprocess_args::PreprocessArgs;
use crate::graph::convert::{tensor_from_proto, tensor_to_proto};
use crate::Executor;

/// Flags of `c2q run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Run the net exactly as written (no SpatialBN folding or Relu fusion).
    #[arg(long)]
    pub no_optimize: bool,
    /// Input tensor file: a serialized caffe2 TensorProto or TensorProtos (.pb or .pbtxt).
    #[arg(long, conflicts_with = "image", required_unless_present = "image")]
    pub input: Option<PathBuf>,
    /// Input image (JPEG/PNG), preprocessed as Caffe2 image_input with the preprocessing
    /// flags below (by default: shorter side 256, centre crop 224, zoo ResNet-50 mean/std,
    /// BGR planes, NCHW).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Preprocessing of --image (as for `calibrate` and `eval`).
    #[command(flatten)]
    pub pre: PreprocessArgs,
    /// Class names, one per line (line i = class i).
    #[arg(long)]
    pub synsets: Option<PathBuf>,
    /// How many top classes to print.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0, value_parser = super::parse_threads)]
    pub threads: usize,
    /// Write every external output as a serialized caffe2 TensorProtos (names set).
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// Reads a tensor file holding one TensorProto or a TensorProtos; returns named tensors.
pub fn read_tensor_file(path: &Path) -> anyhow::Result<Vec<(String, Tensor)>> {
    let bytes = io::read_file(path)?;
    // Why the file is not one good TensorProto, kept for the error if it is no TensorProtos
    // either (the two messages parse leniently from the same bytes).
    let mut as_one: Option<String> = None;
    if let Ok((t, _)) = io::parse::<TensorProto>(&bytes, path) {
        match tensor_from_proto(&t) {
            Ok(tensor) if !tensor.is_empty() => {
                return Ok(vec![(t.name().to_string(), tensor)]);
            }
            Ok(_) => as_one = Some("an empty tensor".into()),
            Err(e) => as_one = Some(e.to_string()),
        }
    }
    let why_one = |as_one: &Option<String>| {
        as_one
            .as_ref()
            .map(|e| format!("; read as one TensorProto: {e}"))
            .unwrap_or_default()
    };
    let (ts, _) = io::parse::<TensorProtos>(&bytes, path).map_err(|e| {
        anyhow::anyhow!(
            "{e} (expected a TensorProto or TensorProtos){}",
            why_one(&as_one)
        )
    })?;
    let mut out = Vec::new();
    for t in &ts.protos {
        let tensor =
            tensor_from_proto(t).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        out.push((t.name().to_string(), tensor));
    }
    if out.is_empty() {
        anyhow::bail!("{}: holds no tensor{}", path.display(), why_one(&as_one));
    }
    Ok(out)
}

/// Reads class names (one per line).
pub fn read_synsets(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = data::read_text_bounded(path, data::MAX_TEXT_BYTES, "class name list")?;
    Ok(text.lines().map(|l| l.trim().to_string()).collect())
}

/// Loads and preprocesses one image as a `[1, 3, crop, crop]` tensor.
pub fn image_tensor(path: &Path, pre: &data::Preprocess) -> anyhow::Result<Tensor> {
    let bytes = io::read_file(path)?;
    let img = data::decode_bgr(&bytes, &path.display().to_string())?;
    let mut buf = vec![0f32; pre.image_len()];
    pre.apply(&img, &mut buf)?;
    let shape = pre.batch_shape(1);
    Ok(Tensor::from_f32(&shape, buf))
}

/// Runs `c2q run`.
pub fn run(a: RunArgs) -> anyhow::Result<()> {
    let model = a.model.load(true)?;
    let model = if a.no_optimize {
        model
    } else {
        model.optimized()?.0
    };
    let data_inputs = model.data_inputs();
    let first_input = data_inputs
        .first()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("the model has no data input"))?;
    let mut feed: HashMap<String, Tensor> = HashMap::new();
    if let Some(p) = &a.input {
        for (name, t) in read_tensor_file(p)? {
            let key = if data_inputs.contains(&name) {
                name
            } else {
                first_input.clone()
            };
            if let Ok(v) = t.f32_slice() {
                let bad = v.iter().filter(|x| !x.is_finite()).count();
                if bad > 0 {
                    eprintln!(
                        "warning: {}: input `{key}` has {bad} NaN or infinite value(s) of {}; \
                         the outputs computed from them are meaningless",
                        p.display(),
                        v.len()
                    );
                }
            }
            feed.insert(key, t);
        }
    } else if let Some(p) = &a.image {
        feed.insert(
            first_input.clone(),
            image_tensor(p, &a.pre.to_preprocess()?)?,
        );
    }
    let exec = Executor::new(&model, a.threads)?;
    exec.check(&feed)?;
    let outputs = exec.run(feed)?;
    if let Some(path) = &a.save {
        let mut protos = TensorProtos::new();
        for name in model.outputs() {
            if let Some(t) = outputs.get(&name) {
                protos.protos.push(tensor_to_proto(t, &name));
            }
        }
        io::write(&protos, path, io::format_for_path(path))?;
    }
    let synsets = a.synsets.as_deref().map(read_synsets).transpose()?;
    let out_name = model.outputs().first().cloned().unwrap_or_default();
    let out = outputs
        .get(&out_name)
        .ok_or_else(|| anyhow::anyhow!("output `{out_name}` missing"))?;
    if let (Some(names), Some(path)) = (&synsets, &a.synsets) {
        let classes = out.shape().last().copied().unwrap_or(0);
        // Blank lines at the end do not count.
        let lines = names
            .iter()
            .rposition(|l| !l.is_empty())
            .map_or(0, |i| i + 1);
        if lines != classes {
            anyhow::bail!(
                "--synsets {}: {} lines, but output `{out_name}` has {classes} classes (one \
                 class name per line, line i = class i)",
                path.display(),
                lines
            );
        }
    }
    let tops = crate::eval::top_k(out, a.top)?;
    let label = |i: usize| {
        synsets
            .as_ref()
            .and_then(|s| s.get(i))
            .cloned()
            .unwrap_or_default()
    };
    if a.json {
        let j = json!({
            "output": out_name,
            "shape": out.shape(),
            "top": tops.iter().map(|row| row.iter().map(|(i, p)| json!({"class": i, "score": p, "label": label(*i)})).collect::<Vec<_>>()).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else {
        for (r, row) in tops.iter().enumerate() {
            if tops.len() > 1 {
                println!("image {r}:");
            }
            for (i, p) in row {
                println!("  {i:>5}  {p:>10.6}  {}", label(*i));
            }
        }
    }
    Ok(())
}
