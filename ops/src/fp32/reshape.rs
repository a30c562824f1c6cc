//! Flatten and Reshape (with the old_shape output).
//!
//! STUB: not implemented yet.

use crate::{NodeSpec, Op, OpError, OpResult, Tensor, TensorInfo};

/// `Flatten` operator (not implemented yet).
#[derive(Debug)]
pub struct Flatten {
    op_type: String,
}

impl Flatten {
    /// Builds the operator from its spec.
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        let _ = &spec.args;
        Err(OpError::Unsupported(format!("{} is not implemented yet", spec.op_type)))
    }
}

impl Op for Flatten {
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

/// `Reshape` operator (not implemented yet).
#[derive(Debug)]
pub struct Reshape {
    op_type: String,
}

impl Reshape {
    /// Builds the operator from its spec.
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        let _ = &spec.args;
        Err(OpError::Unsupported(format!("{} is not implemented yet", spec.op_type)))
    }
}

impl Op for Reshape {
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
