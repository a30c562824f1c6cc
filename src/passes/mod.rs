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
pub fn optimize_fp32(
    net: &mut NetDef,
    params: &mut HashMap<String, Tensor>,
) -> Result<Vec<(&'static str, usize)>> {
    FP32_PASSES
        .iter()
        .map(|(name, pass)| pass(net, params).map(|n| (*name, n)))
        .collect()
}
