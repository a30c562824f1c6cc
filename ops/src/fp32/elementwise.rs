//! Sum of n inputs, and Add/Sub/Mul/Div with legacy and numpy broadcasting.
//!
//! STUB: not implemented yet.

use crate::{NodeSpec, Op, OpError, OpResult, Tensor, TensorInfo};

/// `Sum` operator (not implemented yet).
#[derive(Debug)]
pub struct Sum {
    op_type: String,
}

impl Sum {
    /// Builds the operator from its spec.
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        let _ = &spec.args;
        Err(OpError::Unsupported(format!("{} is not implemented yet", spec.op_type)))
    }
}

impl Op for Sum {
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

/// `Binary` operator (not implemented yet).
#[derive(Debug)]
pub struct Binary {
    op_type: String,
}

impl Binary {
    /// Builds the operator from its spec.
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        let _ = &spec.args;
        Err(OpError::Unsupported(format!("{} is not implemented yet", spec.op_type)))
    }
}

impl Op for Binary {
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
