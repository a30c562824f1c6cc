//! Graph rewrite passes over a predict net and its parameters, one per file, listed in order
//! in [`FP32_PASSES`]. Each pass returns how many rewrites it made.
//!
//! Passes work on the protobuf `NetDef` (so the result can be written back as a Caffe2 net)
//! and the parameter store (so folded weights are real tensors).

pub mod equalize;
pub mod fold_bn;
pub mod fuse_conv_lut;
pub mod fuse_int8_lut;
pub mod fuse_int8_sum;
pub mod fuse_quantize_layout;
pub mod fuse_relu;
pub mod quantize;
pub mod remove_dropout;
pub mod util;

use std::collections::HashMap;

use caffe2_proto::NetDef;
use ops::Tensor;

use crate::Result;

/// (pass name, rewrites) for each pass run.
pub type PassReport = Vec<(&'static str, usize)>;

/// A rewrite pass: changes the net and parameters, returns the number of rewrites.
pub type Pass = fn(&mut NetDef, &mut HashMap<String, Tensor>) -> Result<usize>;

/// The simplifications applied before running or quantizing, in order: fp32 rewrites, then
/// the runtime fusion of Int8 ops (which leaves fp32 nets unchanged).
pub const FP32_PASSES: &[(&str, Pass)] = &[
    ("remove_dropout", remove_dropout::remove_dropout),
    ("fold_bn", fold_bn::fold_bn),
    ("fuse_relu", fuse_relu::fuse_relu),
    ("fuse_int8_sum", fuse_int8_sum::fuse_int8_sum),
    ("fuse_int8_lut", fuse_int8_lut::fuse_int8_lut),
    ("fuse_conv_lut", fuse_conv_lut::fuse_conv_lut),
    (
        "fuse_quantize_layout",
        fuse_quantize_layout::fuse_quantize_layout,
    ),
];

/// Runs every fp32 pass in order; returns (pass name, rewrites) for each.
pub fn optimize_fp32(net: &mut NetDef, params: &mut HashMap<String, Tensor>) -> Result<PassReport> {
    optimize_fp32_traced(net, params).map(|(report, _)| report)
}

/// [`optimize_fp32`], also returning for each op of the result the positions in the input net
/// of the ops it stands for (sorted): its own, and those of the ops fused into it (a Relu or
/// SpatialBN whose output it now writes, a Sum whose arguments it carries). Ops that only
/// vanish (a Dropout whose output was renamed away) belong to no op.
pub fn optimize_fp32_traced(
    net: &mut NetDef,
    params: &mut HashMap<String, Tensor>,
) -> Result<(PassReport, Vec<Vec<usize>>)> {
    let before: Vec<(Vec<String>, Vec<String>)> = net
        .op
        .iter()
        .map(|o| (o.input.clone(), o.output.clone()))
        .collect();
    for (i, op) in net.op.iter_mut().enumerate() {
        op.arg.push(util::new_arg_i(util::FILE_OP_ARG, i as i64));
    }
    let report = FP32_PASSES
        .iter()
        .map(|(name, pass)| pass(net, params).map(|n| (*name, n)))
        .collect::<Result<Vec<_>>>();
    let mut origins: Vec<Vec<usize>> = net.op.iter_mut().map(util::take_file_ops).collect();
    let report = report?;
    let mut owner: Vec<Option<usize>> = vec![None; before.len()];
    for (j, o) in origins.iter().enumerate() {
        for &r in o {
            if let Some(slot) = owner.get_mut(r) {
                *slot = Some(j);
            }
        }
    }
    // A vanished op belongs to the op now writing what it wrote (the nearest one that
    // started before it), or to the op whose chain it sat inside: it read a blob written by
    // one of that op's originals and wrote one read by another (a SpatialBN between a Conv
    // and the Relu fused with it). Repeated until nothing changes (chains of several).
    loop {
        let mut changed = false;
        for r in 0..before.len() {
            if owner[r].is_some() {
                continue;
            }
            let (ins, outs) = &before[r];
            let writes_same = net
                .op
                .iter()
                .enumerate()
                .filter(|(j, op)| {
                    origins[*j].first().is_some_and(|&f| f < r)
                        && op.output.iter().any(|o| outs.contains(o))
                })
                .max_by_key(|(j, _)| origins[*j][0])
                .map(|(j, _)| j);
            let inside = || {
                let fed_by = (0..r).rev().find_map(|k| {
                    let writes_input = before[k].1.iter().any(|o| ins.contains(o));
                    writes_input.then_some(owner[k]).flatten()
                })?;
                let read_by = (r + 1..before.len()).any(|k| {
                    owner[k] == Some(fed_by) && before[k].0.iter().any(|i| outs.contains(i))
                });
                read_by.then_some(fed_by)
            };
            if let Some(j) = writes_same.or_else(inside) {
                owner[r] = Some(j);
                origins[j].push(r);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    for o in &mut origins {
        o.sort_unstable();
        o.dedup();
    }
    Ok((report, origins))
}
