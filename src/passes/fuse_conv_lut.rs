//! Fuses an Int8Conv(Relu) into the `Int8Lut` that is the only reader of its output: the
//! pair becomes one `Int8ConvLut` at the convolution's place (see `ops::int8::conv_lut`),
//! which applies the table in place to the convolution's fresh output instead of writing a
//! second tensor. A runtime rewrite of the in-memory net (after `fuse_int8_lut` made the
//! Int8Lut ops): the fused type is c2q's own and never written to a model file.
//!
//! Fused only when moving the Int8Lut up to the convolution changes nothing: the
//! convolution's output has no other reader and is not a net output, and no op between the
//! two reads or writes the Int8Lut's output.

use std::collections::HashMap;

use caffe2_proto::NetDef;
use ops::Tensor;

use super::util::{
    is_live_output, last_writer, new_arg_s, push_args_prefixed, readers_after, remove_ops,
};
use crate::Result;

/// Fuses every eligible Int8Conv → Int8Lut pair; returns how many were fused.
pub fn fuse_conv_lut(net: &mut NetDef, _params: &mut HashMap<String, Tensor>) -> Result<usize> {
    let mut removed: Vec<usize> = Vec::new();
    for j in 0..net.op.len() {
        let lut = &net.op[j];
        if lut.type_() != "Int8Lut" || lut.input.len() != 1 || lut.output.len() != 1 {
            continue;
        }
        let Some(i) = last_writer(net, j, &lut.input[0]) else {
            continue;
        };
        if !removed.contains(&i) && can_fuse(net, i, j) {
            fuse(net, i, j);
            removed.push(j);
        }
    }
    let n = removed.len();
    remove_ops(net, removed);
    Ok(n)
}

/// True when the convolution at `i` can absorb the Int8Lut at `j`.
fn can_fuse(net: &NetDef, i: usize, j: usize) -> bool {
    let conv = &net.op[i];
    if !matches!(conv.type_(), "Int8Conv" | "Int8ConvRelu")
        || conv.output.len() != 1
        || !(2..=3).contains(&conv.input.len())
    {
        return false;
    }
    let (y, out) = (&conv.output[0], &net.op[j].output[0]);
    if readers_after(net, i, y) != [j] || (out != y && is_live_output(net, i, y)) {
        return false;
    }
    if conv.input.iter().any(|x| x == out) {
        return false;
    }
    net.op[i + 1..j]
        .iter()
        .all(|op| !op.output.iter().any(|o| o == out) && !op.input.iter().any(|x| x == out))
}

/// Rewrites the convolution at `i` into the fused op taking the Int8Lut at `j`.
fn fuse(net: &mut NetDef, i: usize, j: usize) {
    let lut = net.op[j].clone();
    let conv = &mut net.op[i];
    conv.arg.push(new_arg_s("conv_type", conv.type_()));
    conv.set_type("Int8ConvLut".to_string());
    conv.output[0] = lut.output[0].clone();
    push_args_prefixed(conv, &lut, "lut_");
}
