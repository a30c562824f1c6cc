//! Fuses a Relu into the op that feeds it: Conv → ConvRelu, Sum → SumRelu, when the Relu is
//! the only reader of the op's output (or works in place on it). The fused op takes the
//! Relu's output name.

use std::collections::HashMap;

use caffe2_proto::NetDef;
use ops::Tensor;

use super::util::{is_live_output, readers_after, remove_ops};
use crate::Result;

/// Op types that have a fused Relu twin, and the twin's name.
pub const FUSABLE: &[(&str, &str)] = &[("Conv", "ConvRelu"), ("Sum", "SumRelu")];

/// Fuses every fusable op → Relu pair; returns how many were fused.
pub fn fuse_relu(net: &mut NetDef, _params: &mut HashMap<String, Tensor>) -> Result<usize> {
    let mut removed = Vec::new();
    for i in 0..net.op.len() {
        let Some((_, fused)) = FUSABLE.iter().find(|(t, _)| *t == net.op[i].type_()) else {
            continue;
        };
        if net.op[i].output.len() != 1 {
            continue;
        }
        let out = net.op[i].output[0].clone();
        let [j] = readers_after(net, i, &out)[..] else {
            continue;
        };
        let relu = &net.op[j];
        if relu.type_() != "Relu" || relu.input.len() != 1 || relu.output.len() != 1 {
            continue;
        }
        let relu_out = relu.output[0].clone();
        if relu_out != out && is_live_output(net, i, &out) {
            continue;
        }
        net.op[i].set_type(fused.to_string());
        net.op[i].output[0] = relu_out;
        removed.push(j);
    }
    let n = removed.len();
    remove_ops(net, removed);
    Ok(n)
}
