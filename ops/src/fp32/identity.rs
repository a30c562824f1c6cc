//! Copy, and Dropout at inference (identity).
//!
//! Both accept any element type and return the input unchanged.

use ndarray::{ArrayD, IxDyn};

use crate::{expect_inputs, DType, NodeSpec, Op, OpError, OpResult, Tensor, TensorInfo};

/// `Copy`: Y = X.
#[derive(Debug)]
pub struct Copy {
    op_type: String,
}

impl Copy {
    /// Builds the operator from its spec (one input, one output).
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        spec.check_inputs(1, 1)?;
        spec.check_outputs(1, 1)?;
        Ok(Copy {
            op_type: spec.op_type.clone(),
        })
    }
}

impl Op for Copy {
    fn op_type(&self) -> &str {
        &self.op_type
    }
    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        expect_inputs(inputs, 1, 1)?;
        Ok(vec![inputs[0].clone()])
    }
    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        expect_inputs(inputs, 1, 1)?;
        Ok(vec![inputs[0].clone()])
    }
}

/// `Dropout` at inference: Y = X, and the optional second output (`mask`) is a Bool tensor
/// of `true`s with X's shape (every element kept).
///
/// Caffe2 runs the training form (random mask, inverted scaling by 1/(1-ratio)) when
/// `is_test = 0`. This is an inference runtime, so `is_test = 0` is accepted and still acts
/// as the identity. `ratio` (default 0.5) is validated to lie in [0, 1) and otherwise unused.
#[derive(Debug)]
pub struct Dropout {
    op_type: String,
    ratio: f32,
    with_mask: bool,
}

impl Dropout {
    /// Builds the operator from its spec (`ratio`, `is_test`; 1 or 2 outputs).
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        spec.check_inputs(1, 1)?;
        spec.check_outputs(1, 2)?;
        let ratio = spec.args.float_or("ratio", 0.5)?;
        if !(0.0..1.0).contains(&ratio) {
            return Err(OpError::BadArg {
                name: "ratio".into(),
                msg: format!("must be in [0, 1), got {ratio}"),
            });
        }
        let _ = spec.args.int_or("is_test", 0)?;
        Ok(Dropout {
            op_type: spec.op_type.clone(),
            ratio,
            with_mask: spec.n_outputs == 2,
        })
    }

    /// The (unused at inference) drop ratio.
    pub fn ratio(&self) -> f32 {
        self.ratio
    }
}

impl Op for Dropout {
    fn op_type(&self) -> &str {
        &self.op_type
    }
    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        expect_inputs(inputs, 1, 1)?;
        let mut out = vec![inputs[0].clone()];
        if self.with_mask {
            out.push(TensorInfo::new(DType::Bool, inputs[0].shape.clone()));
        }
        Ok(out)
    }
    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        expect_inputs(inputs, 1, 1)?;
        let mut out = vec![inputs[0].clone()];
        if self.with_mask {
            out.push(Tensor::Bool(ArrayD::from_elem(
                IxDyn(inputs[0].shape()),
                true,
            )));
        }
        Ok(out)
    }
}
