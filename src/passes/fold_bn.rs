//! Folds a test-mode SpatialBN into the Conv that feeds it:
//! A = scale / sqrt(var + eps), B = bias − mean·A, W' = W·A (per output channel),
//! b' = b·A + B (b = 0 when the conv had no bias; the BN's bias blob then becomes the conv's
//! bias input, as Caffe2's `fuse_bn` does). The conv takes over the BN's output name.

use std::collections::HashMap;

use caffe2_proto::NetDef;
use ops::Tensor;

use super::util::{arg_f, is_live_output, read_count, readers_after, remove_ops};
use crate::{Error, NodeRef, Result};

fn param<'a>(params: &'a HashMap<String, Tensor>, name: &str, at: NodeRef) -> Result<&'a [f32]> {
    let t = params.get(name).ok_or_else(|| Error::Node {
        node: at.clone(),
        msg: format!("fold_bn: `{name}` is not a parameter"),
    })?;
    t.f32_slice().map_err(|e| Error::Node {
        node: at,
        msg: format!("fold_bn: `{name}`: {e}"),
    })
}

/// Folds every foldable Conv → SpatialBN pair; returns how many were folded.
pub fn fold_bn(net: &mut NetDef, params: &mut HashMap<String, Tensor>) -> Result<usize> {
    let mut removed = Vec::new();
    let mut folded = 0;
    for i in 0..net.op.len() {
        let op = &net.op[i];
        if op.type_() != "Conv" || op.output.len() != 1 || op.input.len() < 2 {
            continue;
        }
        let out = op.output[0].clone();
        let readers = readers_after(net, i, &out);
        let [j] = readers[..] else { continue };
        let bn = &net.op[j];
        if bn.type_() != "SpatialBN"
            || bn.input.len() != 5
            || bn.output.len() != 1
            || bn.input[0] != out
        {
            continue;
        }
        // The conv's own output value must not be needed after the BN replaces it.
        if bn.output[0] != out && is_live_output(net, i, &out) {
            continue;
        }
        let at = NodeRef {
            net: "predict_net",
            index: super::util::file_op(bn).unwrap_or(j),
            op_type: "SpatialBN".into(),
            name: bn.name().to_string(),
            file_ops: Vec::new(),
        };
        let (w_name, b_name) = (op.input[1].clone(), op.input.get(2).cloned());
        // Shared weights/biases would change other ops: leave those pairs alone.
        if read_count(net, &w_name) != 1 || b_name.as_ref().is_some_and(|b| read_count(net, b) != 1)
        {
            continue;
        }
        let eps = arg_f(bn, "epsilon").unwrap_or(1e-5) as f64;
        let scale = param(params, &bn.input[1], at.clone())?;
        let shift = param(params, &bn.input[2], at.clone())?;
        let mean = param(params, &bn.input[3], at.clone())?;
        let var = param(params, &bn.input[4], at.clone())?;
        let m = scale.len();
        if [shift.len(), mean.len(), var.len()].iter().any(|&l| l != m) {
            return Err(Error::Node {
                node: at,
                msg: format!(
                    "fold_bn: BN parameter lengths differ: scale {m}, bias {}, mean {}, var {}",
                    shift.len(),
                    mean.len(),
                    var.len()
                ),
            });
        }
        let a: Vec<f64> = (0..m)
            .map(|c| scale[c] as f64 / (var[c] as f64 + eps).sqrt())
            .collect();
        let bb: Vec<f64> = (0..m)
            .map(|c| shift[c] as f64 - mean[c] as f64 * a[c])
            .collect();
        let w = params.get(&w_name).ok_or_else(|| Error::Node {
            node: at.clone(),
            msg: format!("fold_bn: conv weight `{w_name}` is not a parameter"),
        })?;
        let w_shape = w.shape().to_vec();
        let w_vals = w.f32_slice().map_err(|e| Error::Node {
            node: at.clone(),
            msg: format!("fold_bn: `{w_name}`: {e}"),
        })?;
        if w_shape.first() != Some(&m) {
            return Err(Error::Node {
                node: at,
                msg: format!(
                    "fold_bn: conv weight `{w_name}` {w_shape:?} has no {m} output channels"
                ),
            });
        }
        let per = w_vals.len() / m;
        let new_w: Vec<f32> = w_vals
            .iter()
            .enumerate()
            .map(|(k, &v)| (v as f64 * a[k / per]) as f32)
            .collect();
        let old_b: Vec<f32> = match &b_name {
            Some(b) => param(params, b, at.clone())?.to_vec(),
            None => vec![0.0; m],
        };
        if old_b.len() != m {
            return Err(Error::Node {
                node: at,
                msg: format!(
                    "fold_bn: conv bias has {} values for {m} channels",
                    old_b.len()
                ),
            });
        }
        let new_b: Vec<f32> = (0..m)
            .map(|c| (old_b[c] as f64 * a[c] + bb[c]) as f32)
            .collect();
        let bias_blob = b_name.unwrap_or_else(|| bn.input[2].clone());
        let bn_out = bn.output[0].clone();
        params.insert(w_name, Tensor::from_f32(&w_shape, new_w));
        params.insert(bias_blob.clone(), Tensor::from_f32(&[m], new_b));
        let conv = &mut net.op[i];
        if conv.input.len() == 2 {
            conv.input.push(bias_blob.clone());
            if !net.external_input.contains(&bias_blob) {
                net.external_input.push(bias_blob);
            }
        }
        net.op[i].output[0] = bn_out;
        removed.push(j);
        folded += 1;
    }
    remove_ops(net, removed);
    Ok(folded)
}
