//! `c2q info`: what is in a model, and what of it c2q cannot run.

use std::collections::HashMap;

use clap::Args;
use ops::TensorInfo;
use serde_json::json;

use super::model_args::{ModelArgs, Shape};
use crate::graph::NodeStatus;

/// Flags of `c2q info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print every op with its output shapes.
    #[arg(long)]
    pub shapes: bool,
    /// Shape of the data input used for shape inference.
    #[arg(long, default_value = "1,3,224,224")]
    pub input_shape: Shape,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

fn human_bytes(b: usize) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

/// Runs `c2q info`.
pub fn run(a: InfoArgs) -> anyhow::Result<()> {
    let model = a.model.load(false)?;
    let net = &model.net;
    let inputs = model.data_inputs();
    let mut feed: HashMap<String, TensorInfo> = HashMap::new();
    if let Some(first) = inputs.first() {
        feed.insert(first.clone(), TensorInfo::f32(a.input_shape.0.clone()));
    }
    let shapes = model.infer(&feed);
    let mut counts: Vec<(String, usize)> = Vec::new();
    for n in &net.nodes {
        match counts.iter_mut().find(|(t, _)| *t == n.op_type) {
            Some(e) => e.1 += 1,
            None => counts.push((n.op_type.clone(), 1)),
        }
    }
    let unsupported = net.unsupported_ops();
    let invalid: Vec<String> = net
        .nodes
        .iter()
        .filter_map(|n| match &n.status {
            NodeStatus::Invalid(e) => Some(format!("{}: {e}", n.node_ref())),
            _ => None,
        })
        .collect();
    let (n_params, param_bytes) = model.param_totals();
    let outputs: Vec<(String, Option<TensorInfo>)> = model
        .outputs()
        .into_iter()
        .map(|o| {
            // Known only if the op that writes it last was inferred (inference may stop
            // earlier, after an op that wrote the same name).
            let last = net.nodes.iter().rposition(|n| n.outputs.contains(&o));
            let inferred = last.is_none_or(|k| shapes.per_node.get(k).is_some_and(|p| p.is_some()));
            let i = inferred.then(|| shapes.blobs.get(&o).cloned()).flatten();
            (o, i)
        })
        .collect();
    let shape_error = shapes.error.as_ref().map(|e| e.to_string());

    if a.json {
        let per_op: Vec<_> = net
            .nodes
            .iter()
            .zip(&shapes.per_node)
            .map(|(n, s)| {
                json!({
                    "index": n.index, "type": n.op_type, "name": n.name, "engine": n.engine,
                    "inputs": n.inputs, "outputs": n.outputs,
                    "output_shapes": s.as_ref().map(|v| v.iter().map(|i| json!({"dtype": i.dtype.name(), "shape": i.shape})).collect::<Vec<_>>()),
                    "supported": n.is_ready(),
                })
            })
            .collect();
        let j = json!({
            "predict_net": model.paths.predict,
            "init_net": model.paths.init,
            "name": net.name,
            "ops": net.nodes.len(),
            "inputs": inputs.iter().map(|i| json!({"name": i, "shape": feed.get(i).map(|t| t.shape.clone())})).collect::<Vec<_>>(),
            "outputs": outputs.iter().map(|(o, i)| json!({"name": o, "shape": i.as_ref().map(|t| t.shape.clone())})).collect::<Vec<_>>(),
            "op_counts": counts.iter().map(|(t, c)| json!({"type": t, "count": c})).collect::<Vec<_>>(),
            "parameters": {"blobs": model.params.len(), "values": n_params, "bytes": param_bytes, "known": model.init_def.is_some()},
            "unsupported_ops": unsupported.iter().map(|(t, c)| json!({"type": t, "count": c})).collect::<Vec<_>>(),
            "invalid_ops": invalid,
            "shape_error": shape_error,
            "isa": ops::kernels::isa::Isa::current().name(),
            "isa_detected": ops::kernels::isa::Isa::detect().name(),
            "per_op": if a.shapes { Some(per_op) } else { None },
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }

    println!("predict_net: {}", model.paths.predict.display());
    match &model.paths.init {
        Some(p) => println!("init_net:    {}", p.display()),
        None => println!("init_net:    (none; parameters unknown)"),
    }
    if !net.name.is_empty() {
        println!("name:        {}", net.name);
    }
    println!("ops:         {}", net.nodes.len());
    println!(
        "kernels:     {} (this CPU: {}; C2Q_ISA=scalar|avx2|avxvnni|avx512|avx512vnni|amx caps it)",
        ops::kernels::isa::Isa::current(),
        ops::kernels::isa::Isa::detect()
    );
    for i in &inputs {
        println!(
            "input:       {i}  (shape inference with {:?})",
            a.input_shape.0
        );
    }
    for (o, i) in &outputs {
        match i {
            Some(i) => println!("output:      {o}  {i}"),
            None => println!("output:      {o}"),
        }
    }
    if model.init_def.is_some() {
        println!(
            "parameters:  {} blobs, {} values, {}",
            model.params.len(),
            n_params,
            human_bytes(param_bytes)
        );
    }
    println!("op types:");
    for (t, c) in &counts {
        println!("  {t:<24} {c}");
    }
    if unsupported.is_empty() {
        println!("unsupported: none");
    } else {
        println!("unsupported (cannot run yet):");
        for (t, c) in &unsupported {
            println!("  {t:<24} {c}");
        }
    }
    for e in &invalid {
        println!("invalid: {e}");
    }
    if a.shapes {
        println!("shapes:");
        for (n, s) in net.nodes.iter().zip(&shapes.per_node) {
            let outs = match s {
                Some(v) => n
                    .outputs
                    .iter()
                    .zip(v)
                    .map(|(o, i)| format!("{o} {i}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                None => "?".into(),
            };
            let name = if n.name.is_empty() {
                String::new()
            } else {
                format!(" \"{}\"", n.name)
            };
            println!("  #{:<4} {:<16}{} -> {}", n.index, n.op_type, name, outs);
        }
    }
    if let Some(e) = shape_error {
        println!("shape inference stopped: {e}");
    }
    Ok(())
}
