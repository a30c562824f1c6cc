//! Conv and ConvRelu (NCHW and NHWC, groups, dilation, legacy padding) via packed GEMM.
//!
//! STUB: not implemented yet.

use crate::{NodeSpec, Op, OpError, OpResult, Tensor, TensorInfo};

/// `Conv` operator (not implemented yet).
#[derive(Debug)]
pub struct Conv {
    op_type: String,
}

impl Conv {
    /// Builds the operator from its spec.
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        let _ = &spec.args;
        Err(OpError::Unsupported(format!("{} is not implemented yet", spec.op_type)))
    }
}

impl Op for Conv {
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
