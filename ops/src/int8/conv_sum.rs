//! `Int8ConvSum` / `Int8ConvSumRelu`: an Int8Conv(Relu) whose output feeds only a two-input
//! Int8Sum/Int8Add(Relu), run as one operator (a c2q runtime fusion, made by the pass
//! `fuse_int8_sum`; not a Caffe2 op and never written to a model file).
//!
//! Inputs: the convolution's (X, W, optional bias), then the Sum's other input S. Arguments:
//! the convolution's, plus
//! - `conv_relu` (int, 0/1): the convolution was Int8ConvRelu;
//! - `sum_type` (string): the Sum's op type (`Int8Sum`, `Int8SumRelu`, `Int8Add`,
//!   `Int8AddRelu`);
//! - `sum_conv_input` (int, 0/1): which input of the Sum the convolution fed;
//! - `sum_<name>` for every argument `<name>` of the Sum (`sum_Y_scale`, `sum_Y_zero_point`).
//!
//! The result is the same bytes as the two operators: the convolution's output codes are
//! requantized exactly as by Int8Conv, then added with the Sum's f32 operations. On the VNNI
//! and AMX kernels both happen in one output stage (the convolution's codes never reach
//! memory); otherwise, and for the scalar reference, the convolution runs and then the Sum.

use super::conv::Int8Conv;
use super::eltwise::Int8Sum;
use crate::kernels::qgemm::SumStage;
use crate::{expect_inputs, ArgValue, NodeSpec, Op, OpError, OpResult, Tensor, TensorInfo};

/// The fused operator.
#[derive(Debug)]
pub struct Int8ConvSum {
    op_type: String,
    conv: Int8Conv,
    sum: Int8Sum,
    /// The convolution fed input 1 of the Sum (input 0 otherwise).
    conv_second: bool,
}

impl Int8ConvSum {
    /// Builds the operator from the fused spec (see the module docs).
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        spec.check_inputs(3, 4)?;
        spec.check_outputs(1, 1)?;
        let (conv_spec, sum_spec, conv_second) = split_spec(spec)?;
        let sum = Int8Sum::from_spec(&sum_spec)?;
        if sum_spec.op_type.ends_with("Relu") != spec.op_type.ends_with("Relu") {
            return Err(OpError::BadArg {
                name: "sum_type".into(),
                msg: format!(
                    "{} does not match op type {}",
                    sum_spec.op_type, spec.op_type
                ),
            });
        }
        Ok(Int8ConvSum {
            op_type: spec.op_type.clone(),
            conv: Int8Conv::from_spec(&conv_spec)?,
            sum,
            conv_second,
        })
    }

    /// The Sum's inputs in their original order.
    fn sum_inputs<'a, T>(&self, conv_out: &'a T, other: &'a T) -> [&'a T; 2] {
        if self.conv_second {
            [other, conv_out]
        } else {
            [conv_out, other]
        }
    }
}

/// The convolution's spec, the Sum's spec and whether the convolution is the Sum's input 1.
fn split_spec(spec: &NodeSpec) -> OpResult<(NodeSpec, NodeSpec, bool)> {
    let op = &spec.op_type;
    let conv_relu = spec.args.int_or("conv_relu", 0)? != 0;
    let sum_type = match spec.args.get("sum_type") {
        Some(ArgValue::S(s)) => String::from_utf8_lossy(s).into_owned(),
        _ => {
            return Err(OpError::BadArg {
                name: "sum_type".into(),
                msg: format!("{op} needs the fused Sum's op type as a string"),
            })
        }
    };
    if !matches!(
        sum_type.as_str(),
        "Int8Sum" | "Int8SumRelu" | "Int8Add" | "Int8AddRelu"
    ) {
        return Err(OpError::BadArg {
            name: "sum_type".into(),
            msg: format!("{sum_type} is not Int8Sum/Int8Add(Relu)"),
        });
    }
    let conv_second = match spec.args.int_or("sum_conv_input", 0)? {
        0 => false,
        1 => true,
        v => {
            return Err(OpError::BadArg {
                name: "sum_conv_input".into(),
                msg: format!("{v} is not 0 or 1"),
            })
        }
    };
    let (sum_args, conv_args) = spec
        .args
        .split_prefix("sum_", &["conv_relu", "sum_type", "sum_conv_input"]);
    let conv_type = if conv_relu {
        "Int8ConvRelu"
    } else {
        "Int8Conv"
    };
    Ok((
        spec.part(conv_type, conv_args, spec.n_inputs - 1, 1),
        spec.part(&sum_type, sum_args, 2, 1),
        conv_second,
    ))
}

impl Op for Int8ConvSum {
    fn op_type(&self) -> &str {
        &self.op_type
    }

    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        expect_inputs(inputs, 3, 4)?;
        let (conv_in, other) = inputs.split_at(inputs.len() - 1);
        let y = self.conv.infer(conv_in)?.remove(0);
        self.sum
            .infer(&self.sum_inputs(&y, &other[0]).map(|t| t.clone()))
    }

    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        expect_inputs(inputs, 3, 4)?;
        let (conv_in, other) = inputs.split_at(inputs.len() - 1);
        let other = other[0];
        // Check the Sum's operands first (shapes and types), with the Sum's own messages.
        let y_info = self
            .conv
            .infer(&conv_in.iter().map(|t| t.info()).collect::<Vec<_>>())?;
        self.sum.infer(
            &self
                .sum_inputs(&y_info[0], &other.info())
                .map(|t| t.clone()),
        )?;
        let stage = |qs| SumStage {
            gemm: self.conv.output_params(),
            other: qs,
            out: self.sum.real_stage(),
        };
        if let Some(out) =
            self.conv
                .eval_fused_sum(conv_in, other, stage, self.sum.output_params())?
        {
            return Ok(vec![out]);
        }
        let y = self.conv.eval(conv_in)?.remove(0);
        self.sum.eval(&self.sum_inputs(&y, other))
    }

    fn prepare(&mut self, constants: &[Option<&Tensor>]) -> OpResult<()> {
        let n = constants.len().saturating_sub(1);
        self.conv.prepare(&constants[..n])
    }
}
