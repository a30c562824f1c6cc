//! Fuses NCHW2NHWC → Int8Quantize (the input of every NHWC int8 net) into one
//! `Int8QuantizeNchw2Nhwc` at the Int8Quantize's place: the f32 image is quantized plane by
//! plane and the codes interleaved, instead of transposing the f32 image first. A runtime
//! rewrite of the in-memory net; the fused type is c2q's own and never written to a file.
//! Fused only when the transposed blob has no other reader and is not a net output, and
//! nothing in between writes the NCHW input.

use std::collections::HashMap;

use caffe2_proto::NetDef;
use ops::Tensor;

use super::util::{is_live_output, read_count, remove_ops};
use crate::Result;

/// Fuses every eligible pair; returns how many were fused.
pub fn fuse_quantize_layout(
    net: &mut NetDef,
    _params: &mut HashMap<String, Tensor>,
) -> Result<usize> {
    let mut removed = Vec::new();
    for j in 0..net.op.len() {
        let q = &net.op[j];
        if q.type_() != "Int8Quantize" || q.input.len() != 1 || q.output.len() != 1 {
            continue;
        }
        let t = q.input[0].clone();
        let Some(i) = (0..j).rev().find(|&i| net.op[i].output.contains(&t)) else {
            continue;
        };
        let sw = &net.op[i];
        if sw.type_() != "NCHW2NHWC"
            || sw.input.len() != 1
            || sw.output.len() != 1
            || read_count(net, &t) != 1
            || is_live_output(net, i, &t)
        {
            continue;
        }
        let x = sw.input[0].clone();
        if net.op[i + 1..j].iter().any(|op| op.output.contains(&x)) {
            continue;
        }
        let q = &mut net.op[j];
        q.set_type("Int8QuantizeNchw2Nhwc".to_string());
        q.input = vec![x];
        removed.push(i);
    }
    let n = removed.len();
    remove_ops(net, removed);
    Ok(n)
}
