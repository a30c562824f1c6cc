//! The one table from Caffe2 op type to operator implementation.

use crate::fill::Fill;
use crate::fp32::{
    activation::{Clip, Relu, Sigmoid, Tanh},
    batch_norm::SpatialBn,
    concat::Concat,
    conv::Conv,
    elementwise::{Binary, Sum},
    fc::Fc,
    identity::{Copy, Dropout},
    layout::{ChannelShuffle, OrderSwitch, Transpose},
    lrn::Lrn,
    pool::Pool,
    reshape::{Flatten, Reshape},
    softmax::Softmax,
};
use crate::int8;
use crate::{NodeSpec, Op, OpResult};

/// Every op type this crate can build, for `info` and the docs.
pub const SUPPORTED_OPS: &[&str] = &[
    "Conv",
    "ConvRelu",
    "MaxPool",
    "AveragePool",
    "FC",
    "FCTransposed",
    "SpatialBN",
    "Relu",
    "Clip",
    "Sigmoid",
    "Tanh",
    "Softmax",
    "Sum",
    "SumRelu",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Concat",
    "Flatten",
    "Reshape",
    "Transpose",
    "NCHW2NHWC",
    "NHWC2NCHW",
    "ChannelShuffle",
    "Copy",
    "Dropout",
    "LRN",
    "Int8Quantize",
    "Int8Dequantize",
    "Int8Conv",
    "Int8ConvRelu",
    "Int8FC",
    "Int8FCRelu",
    "Int8Sum",
    "Int8SumRelu",
    "Int8Add",
    "Int8AddRelu",
    "Int8MaxPool",
    "Int8AveragePool",
    "Int8Relu",
    "Int8Concat",
    "Int8Flatten",
    "Int8Reshape",
    "Int8ConvSum",
    "Int8ConvSumRelu",
    "Int8Lut",
    "Int8ConvLut",
    "Int8QuantizeNchw2Nhwc",
];

/// Builds the operator for a node, or `Ok(None)` when the op type is unknown (the graph
/// keeps such nodes as placeholders so `info` works on any net).
pub fn build_op(spec: &NodeSpec) -> OpResult<Option<Box<dyn Op>>> {
    fn b<T: Op + 'static>(r: OpResult<T>) -> OpResult<Option<Box<dyn Op>>> {
        r.map(|op| Some(Box::new(op) as Box<dyn Op>))
    }
    match spec.op_type.as_str() {
        "Conv" | "ConvRelu" => b(Conv::from_spec(spec)),
        "MaxPool" | "AveragePool" => b(Pool::from_spec(spec)),
        "FC" | "FCTransposed" => b(Fc::from_spec(spec)),
        "SpatialBN" => b(SpatialBn::from_spec(spec)),
        "Relu" => b(Relu::from_spec(spec)),
        "Clip" => b(Clip::from_spec(spec)),
        "Sigmoid" => b(Sigmoid::from_spec(spec)),
        "Tanh" => b(Tanh::from_spec(spec)),
        "Softmax" => b(Softmax::from_spec(spec)),
        "Sum" | "SumRelu" => b(Sum::from_spec(spec)),
        "Add" | "Sub" | "Mul" | "Div" => b(Binary::from_spec(spec)),
        "Concat" => b(Concat::from_spec(spec)),
        "Flatten" => b(Flatten::from_spec(spec)),
        "Reshape" => b(Reshape::from_spec(spec)),
        "Transpose" => b(Transpose::from_spec(spec)),
        "NCHW2NHWC" | "NHWC2NCHW" => b(OrderSwitch::from_spec(spec)),
        "ChannelShuffle" => b(ChannelShuffle::from_spec(spec)),
        "Copy" => b(Copy::from_spec(spec)),
        "Dropout" => b(Dropout::from_spec(spec)),
        "LRN" => b(Lrn::from_spec(spec)),
        "Int8Quantize" | "Int8QuantizeNchw2Nhwc" => {
            b(int8::quantize::Int8Quantize::from_spec(spec))
        }
        "Int8Dequantize" => b(int8::quantize::Int8Dequantize::from_spec(spec)),
        "Int8Conv" | "Int8ConvRelu" => b(int8::conv::Int8Conv::from_spec(spec)),
        "Int8ConvSum" | "Int8ConvSumRelu" => b(int8::conv_sum::Int8ConvSum::from_spec(spec)),
        "Int8Lut" => b(int8::lut::Int8Lut::from_spec(spec)),
        "Int8ConvLut" => b(int8::conv_lut::Int8ConvLut::from_spec(spec)),
        "Int8FC" | "Int8FCRelu" => b(int8::fc::Int8Fc::from_spec(spec)),
        "Int8Sum" | "Int8SumRelu" | "Int8Add" | "Int8AddRelu" => {
            b(int8::eltwise::Int8Sum::from_spec(spec))
        }
        "Int8MaxPool" | "Int8AveragePool" => b(int8::pool::Int8Pool::from_spec(spec)),
        "Int8Relu" => b(int8::eltwise::Int8Relu::from_spec(spec)),
        "Int8Concat" => b(int8::shape::Int8Concat::from_spec(spec)),
        "Int8Flatten" | "Int8Reshape" => b(int8::shape::Int8Reshape::from_spec(spec)),
        t if crate::fill::is_fill_op(t) => b(Fill::from_spec(spec)),
        _ => Ok(None),
    }
}
