//! init_net fill ops: GivenTensor*Fill, ConstantFill, random fills, Int8 fills.
//!
//! STUB: not implemented yet.

use crate::{NodeSpec, Op, OpError, OpResult, Tensor, TensorInfo};

/// `Fill` operator (not implemented yet).
#[derive(Debug)]
pub struct Fill {
    op_type: String,
}

impl Fill {
    /// Builds the operator from its spec.
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        let _ = &spec.args;
        Err(OpError::Unsupported(format!("{} is not implemented yet", spec.op_type)))
    }
}

impl Op for Fill {
    fn op_type(&self) -> &str {
        &self.op_type
    }
    fn infer(&self, _inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        Err(OpError::Unsupported(self.op_type.clone()))
    }
    fn eval(&self, _inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        Err(OpError::Unsupported(self.op_type.clone()))
    }
}

/// Op types handled by [`Fill`].
pub const FILL_OPS: &[&str] = &[
    "GivenTensorFill",
    "GivenTensorDoubleFill",
    "GivenTensorBoolFill",
    "GivenTensorIntFill",
    "GivenTensorInt64Fill",
    "GivenTensorStringFill",
    "ConstantFill",
    "UniformFill",
    "UniformIntFill",
    "GaussianFill",
    "XavierFill",
    "MSRAFill",
    "RangeFill",
    "Int8GivenTensorFill",
    "Int8GivenIntTensorFill",
];

/// True for the init_net fill op types handled by [`Fill`].
pub fn is_fill_op(op_type: &str) -> bool {
    FILL_OPS.contains(&op_type)
}
