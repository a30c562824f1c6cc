//! `Int8ConvLut`: an Int8Conv(Relu) whose output feeds only an `Int8Lut` (the fused
//! Int8Dequantize → Clip/Relu → Int8Quantize chain of nets that keep ReLU6 in f32), run as
//! one operator (a c2q runtime fusion, made by the pass `fuse_conv_lut`; not a Caffe2 op and
//! never written to a model file).
//!
//! Inputs: the convolution's (X, W, optional bias). Arguments: the convolution's, plus
//! - `conv_type` (string): `Int8Conv` or `Int8ConvRelu`;
//! - `lut_<name>` for every argument `<name>` of the Int8Lut (`lut_lut_ops`, `lut_Y_scale`,
//!   `lut_e0_min`, ...).
//!
//! The result is the same bytes as the two operators: the table is applied in place to the
//! convolution's fresh output (no second buffer, no zero fill, the codes still in cache).

use super::conv::Int8Conv;
use super::lut::Int8Lut;
use crate::kernels::qeltwise::par_chunks;
use crate::{expect_inputs, ArgValue, NodeSpec, Op, OpError, OpResult, Tensor, TensorInfo};

/// The fused operator.
#[derive(Debug)]
pub struct Int8ConvLut {
    op_type: String,
    conv: Int8Conv,
    lut: Int8Lut,
}

impl Int8ConvLut {
    /// Builds the operator from the fused spec (see the module docs).
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        spec.check_inputs(2, 3)?;
        spec.check_outputs(1, 1)?;
        let conv_type = match spec.args.get("conv_type") {
            Some(ArgValue::S(s)) => String::from_utf8_lossy(s).into_owned(),
            _ => String::new(),
        };
        if !matches!(conv_type.as_str(), "Int8Conv" | "Int8ConvRelu") {
            return Err(OpError::BadArg {
                name: "conv_type".into(),
                msg: format!(
                    "{} needs conv_type Int8Conv or Int8ConvRelu, got {conv_type:?}",
                    spec.op_type
                ),
            });
        }
        let (lut_args, conv_args) = spec.args.split_prefix("lut_", &["conv_type"]);
        Ok(Int8ConvLut {
            op_type: spec.op_type.clone(),
            conv: Int8Conv::from_spec(&spec.part(&conv_type, conv_args, spec.n_inputs, 1))?,
            lut: Int8Lut::from_spec(&spec.part("Int8Lut", lut_args, 1, 1))?,
        })
    }
}

impl Op for Int8ConvLut {
    fn op_type(&self) -> &str {
        &self.op_type
    }

    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        expect_inputs(inputs, 2, 3)?;
        let y = self.conv.infer(inputs)?;
        self.lut.infer(&y)
    }

    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        expect_inputs(inputs, 2, 3)?;
        match self.conv.eval(inputs)?.remove(0) {
            Tensor::QU8(mut codes, q) if !self.lut.is_reference() && codes.is_standard_layout() => {
                let table = self.lut.table(q)?;
                if let Some(c) = codes.as_slice_mut() {
                    par_chunks(c, |_, piece| {
                        crate::kernels::lut::map_in_place(piece, &table)
                    });
                }
                Ok(vec![Tensor::QU8(codes, self.lut.output_params())])
            }
            // The reference (and anything unexpected, for the Int8Lut's own checks).
            y => self.lut.eval(&[&y]),
        }
    }

    fn prepare(&mut self, constants: &[Option<&Tensor>]) -> OpResult<()> {
        self.conv.prepare(constants)
    }
}
