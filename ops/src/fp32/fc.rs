//! FC (fully connected, Y = X·Wᵀ + b) and FCTransposed via GEMM.
//!
//! STUB: not implemented yet.

use crate::{NodeSpec, Op, OpError, OpResult, Tensor, TensorInfo};

/// `Fc` operator (not implemented yet).
#[derive(Debug)]
pub struct Fc {
    op_type: String,
}

impl Fc {
    /// Builds the operator from its spec.
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        let _ = &spec.args;
        Err(OpError::Unsupported(format!("{} is not implemented yet", spec.op_type)))
    }
}

impl Op for Fc {
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
