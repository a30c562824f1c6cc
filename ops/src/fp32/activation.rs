//! Element-wise activations: Relu, Clip, Sigmoid, Tanh.
//!
//! STUB: not implemented yet.

use crate::{NodeSpec, Op, OpError, OpResult, Tensor, TensorInfo};

/// `Relu` operator (not implemented yet).
#[derive(Debug)]
pub struct Relu {
    op_type: String,
}

impl Relu {
    /// Builds the operator from its spec.
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        let _ = &spec.args;
        Err(OpError::Unsupported(format!("{} is not implemented yet", spec.op_type)))
    }
}

impl Op for Relu {
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

/// `Clip` operator (not implemented yet).
#[derive(Debug)]
pub struct Clip {
    op_type: String,
}

impl Clip {
    /// Builds the operator from its spec.
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        let _ = &spec.args;
        Err(OpError::Unsupported(format!("{} is not implemented yet", spec.op_type)))
    }
}

impl Op for Clip {
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

/// `Sigmoid` operator (not implemented yet).
#[derive(Debug)]
pub struct Sigmoid {
    op_type: String,
}

impl Sigmoid {
    /// Builds the operator from its spec.
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        let _ = &spec.args;
        Err(OpError::Unsupported(format!("{} is not implemented yet", spec.op_type)))
    }
}

impl Op for Sigmoid {
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

/// `Tanh` operator (not implemented yet).
#[derive(Debug)]
pub struct Tanh {
    op_type: String,
}

impl Tanh {
    /// Builds the operator from its spec.
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        let _ = &spec.args;
        Err(OpError::Unsupported(format!("{} is not implemented yet", spec.op_type)))
    }
}

impl Op for Tanh {
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
