//! Fuses an Int8Conv(Relu) into the two-input Int8Sum/Int8Add(Relu) that is the only reader
//! of its output: the pair becomes one `Int8ConvSum(Relu)` at the convolution's place (see
//! `ops::int8::conv_sum`), so the convolution's codes are added in its output stage instead
//! of being written and read back. A runtime rewrite of the in-memory net: the fused type
//! is c2q's own and never written to a model file.
//!
//! Fused only when moving the Sum up to the convolution changes nothing: the Sum's other
//! input is not written between the two ops, no op between them reads or writes the Sum's
//! output, the convolution's output has no other reader and is not a net output, the
//! convolution is NHWC with one group, and the Sum has exactly two distinct inputs.

use std::collections::HashMap;

use caffe2_proto::NetDef;
use ops::Tensor;

use super::util::{
    arg_i, arg_s, is_live_output, last_writer, new_arg_i, new_arg_s, push_args_prefixed,
    readers_after, remove_ops,
};
use crate::Result;

/// The Sum types that can absorb a convolution.
const SUMS: &[&str] = &["Int8Sum", "Int8SumRelu", "Int8Add", "Int8AddRelu"];

/// Fuses every eligible Int8Conv → Int8Sum pair; returns how many were fused.
pub fn fuse_int8_sum(net: &mut NetDef, _params: &mut HashMap<String, Tensor>) -> Result<usize> {
    let mut removed: Vec<usize> = Vec::new();
    for j in 0..net.op.len() {
        let sum = &net.op[j];
        if !SUMS.contains(&sum.type_())
            || sum.input.len() != 2
            || sum.output.len() != 1
            || sum.input[0] == sum.input[1]
        {
            continue;
        }
        // Try the later-produced input first (in ResNet's first block of a stage the branch1
        // convolution comes after the branch2 path it is added to).
        let mut cands: Vec<(usize, usize)> = (0..2)
            .filter_map(|ci| last_writer(net, j, &sum.input[ci]).map(|i| (i, ci)))
            .collect();
        cands.sort_unstable_by_key(|c| std::cmp::Reverse(c.0));
        if let Some(&(i, ci)) = cands
            .iter()
            .find(|&&(i, ci)| !removed.contains(&i) && can_fuse(net, i, j, ci))
        {
            fuse(net, i, j, ci);
            removed.push(j);
        }
    }
    let n = removed.len();
    remove_ops(net, removed);
    Ok(n)
}

/// True when the convolution at `i` can absorb the Sum at `j`, whose input `ci` it writes.
fn can_fuse(net: &NetDef, i: usize, j: usize, ci: usize) -> bool {
    let conv = &net.op[i];
    if !matches!(conv.type_(), "Int8Conv" | "Int8ConvRelu")
        || conv.output.len() != 1
        || !(2..=3).contains(&conv.input.len())
    {
        return false;
    }
    let order = arg_s(conv, "order").unwrap_or_else(|| "NHWC".into());
    if order != "NHWC" || arg_i(conv, "group").unwrap_or(1) != 1 {
        return false;
    }
    let sum = &net.op[j];
    let (y, other, out) = (&conv.output[0], &sum.input[1 - ci], &sum.output[0]);
    if other == y || readers_after(net, i, y) != [j] || (out != y && is_live_output(net, i, y)) {
        return false;
    }
    // The Sum now writes its output at `i`: nothing in between may read or write it (nor
    // write the other summand, which the Sum now reads earlier).
    net.op[i + 1..j].iter().all(|op| {
        !op.output.iter().any(|o| o == other || o == out) && !op.input.iter().any(|x| x == out)
    })
}

/// Rewrites the convolution at `i` into the fused op taking the Sum at `j` (input `ci`).
fn fuse(net: &mut NetDef, i: usize, j: usize, ci: usize) {
    let sum = net.op[j].clone();
    let conv = &mut net.op[i];
    let conv_relu = conv.type_() == "Int8ConvRelu";
    let relu = sum.type_().ends_with("Relu");
    conv.set_type(
        if relu {
            "Int8ConvSumRelu"
        } else {
            "Int8ConvSum"
        }
        .to_string(),
    );
    conv.input.push(sum.input[1 - ci].clone());
    conv.output[0] = sum.output[0].clone();
    conv.arg.push(new_arg_i("conv_relu", i64::from(conv_relu)));
    conv.arg.push(new_arg_s("sum_type", sum.type_()));
    conv.arg.push(new_arg_i("sum_conv_input", ci as i64));
    push_args_prefixed(conv, &sum, "sum_");
}
