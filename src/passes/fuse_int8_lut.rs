//! Fuses Int8Dequantize → {Clip, Relu, NCHW2NHWC, NHWC2NCHW}* → Int8Quantize into one
//! `Int8Lut` at the Int8Quantize's place (see `ops::int8::lut`): an Int8 code goes through
//! f32 and back, element by element, so the chain is a 256-entry table. A runtime rewrite of
//! the in-memory net; the fused type is c2q's own and never written to a model file.
//!
//! Fused only when the chain is a straight line (every intermediate blob has one reader, the
//! next op, and is not a net output), the layout switches cancel (they alternate, in pairs),
//! and nothing between the Int8Dequantize and the Int8Quantize writes the Int8 input.

use std::collections::HashMap;

use caffe2_proto::{Argument, NetDef};
use ops::int8::lut::LUT_ELEMENTWISE;
use ops::Tensor;

use super::util::{is_live_output, push_args_prefixed, read_count, remove_ops};
use crate::Result;

const LAYOUT: &[&str] = &["NCHW2NHWC", "NHWC2NCHW"];

/// Fuses every eligible chain; returns how many were fused.
pub fn fuse_int8_lut(net: &mut NetDef, _params: &mut HashMap<String, Tensor>) -> Result<usize> {
    let mut removed: Vec<usize> = Vec::new();
    let mut fused = 0;
    for j in 0..net.op.len() {
        if let Some(chain) = chain_ending_at(net, j) {
            rewrite(net, j, &chain);
            removed.extend(&chain);
            fused += 1;
        }
    }
    remove_ops(net, removed);
    Ok(fused)
}

/// The ops of an eligible chain ending in the Int8Quantize at `j`, from the Int8Dequantize on
/// (without `j`), or None.
fn chain_ending_at(net: &NetDef, j: usize) -> Option<Vec<usize>> {
    let q = &net.op[j];
    if q.type_() != "Int8Quantize" || q.input.len() != 1 || q.output.len() != 1 {
        return None;
    }
    let mut chain = Vec::new();
    let mut cur = q.input[0].clone();
    let mut reader = j;
    loop {
        let w = (0..reader)
            .rev()
            .find(|&i| net.op[i].output.contains(&cur))?;
        let op = &net.op[w];
        if op.input.len() != 1
            || op.output.len() != 1
            || read_count(net, &cur) != 1
            || is_live_output(net, w, &cur)
        {
            return None;
        }
        let t = op.type_();
        chain.push(w);
        cur = op.input[0].clone();
        reader = w;
        if t == "Int8Dequantize" {
            break;
        }
        if !(LUT_ELEMENTWISE.contains(&t) || LAYOUT.contains(&t)) {
            return None;
        }
    }
    chain.reverse();
    let start = chain[0];
    // The layout switches (in order) must cancel pairwise.
    let layouts: Vec<&str> = chain
        .iter()
        .map(|&i| net.op[i].type_())
        .filter(|t| LAYOUT.contains(t))
        .collect();
    if !layouts.len().is_multiple_of(2) || layouts.chunks(2).any(|p| p[0] == p[1]) {
        return None;
    }
    // The Int8 input must keep its value until the fused op runs at `j`.
    let x = &net.op[start].input[0];
    if net.op[start + 1..j]
        .iter()
        .any(|op| op.output.iter().any(|o| o == x))
    {
        return None;
    }
    Some(chain)
}

/// Rewrites the Int8Quantize at `j` into the Int8Lut of `chain`.
fn rewrite(net: &mut NetDef, j: usize, chain: &[usize]) {
    let x = net.op[chain[0]].input[0].clone();
    let elementwise: Vec<_> = chain
        .iter()
        .map(|&i| net.op[i].clone())
        .filter(|op| LUT_ELEMENTWISE.contains(&op.type_()))
        .collect();
    let q = &mut net.op[j];
    q.set_type("Int8Lut".to_string());
    q.input = vec![x];
    let mut types = Argument::new();
    types.set_name("lut_ops".to_string());
    types.strings = elementwise
        .iter()
        .map(|op| op.type_().as_bytes().to_vec())
        .collect();
    q.arg.push(types);
    for (i, op) in elementwise.iter().enumerate() {
        push_args_prefixed(q, op, &format!("e{i}_"));
    }
}
