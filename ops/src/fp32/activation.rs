//! Element-wise activations on f32 tensors: Relu, Clip, Sigmoid, Tanh.
//!
//! Each takes one f32 input and returns one f32 output of the same shape (Caffe2 often runs
//! them in place; the executor handles that, these ops simply return a new tensor).

use ndarray::{ArrayD, IxDyn};

use crate::{expect_inputs, NodeSpec, Op, OpError, OpResult, Tensor, TensorInfo};

/// Fails unless `info` is an f32 tensor; `what` names the input in the message.
pub(crate) fn expect_f32(op: &str, what: &str, info: &TensorInfo) -> OpResult<()> {
    if info.dtype != crate::DType::F32 {
        return Err(OpError::DType(format!(
            "{op}: {what} must be f32, got {info}"
        )));
    }
    Ok(())
}

/// Applies `f` to every element of an f32 tensor, walking a contiguous slice.
pub(crate) fn map_f32(x: &Tensor, f: impl Fn(f32) -> f32) -> OpResult<Tensor> {
    let a = x.as_f32()?;
    let out = match a.as_slice() {
        Some(s) => {
            let v: Vec<f32> = s.iter().map(|&x| f(x)).collect();
            ArrayD::from_shape_vec(IxDyn(a.shape()), v)
                .map_err(|e| OpError::Shape(format!("internal: {e}")))?
        }
        None => a.mapv(f),
    };
    Ok(Tensor::F32(out))
}

/// Shape inference shared by the one-in, one-out f32 activations.
fn unary_infer(op: &str, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
    expect_inputs(inputs, 1, 1)?;
    expect_f32(op, "X", &inputs[0])?;
    Ok(vec![inputs[0].clone()])
}

fn unary_spec(spec: &NodeSpec) -> OpResult<()> {
    spec.check_inputs(1, 1)?;
    spec.check_outputs(1, 1)
}

fn unary_input<'a>(inputs: &[&'a Tensor]) -> OpResult<&'a Tensor> {
    expect_inputs(inputs, 1, 1)?;
    Ok(inputs[0])
}

/// `Relu`: Y = max(X, 0).
#[derive(Debug)]
pub struct Relu {
    op_type: String,
}

impl Relu {
    /// Builds the operator from its spec (no arguments).
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        unary_spec(spec)?;
        Ok(Relu {
            op_type: spec.op_type.clone(),
        })
    }
}

impl Op for Relu {
    fn op_type(&self) -> &str {
        &self.op_type
    }
    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        unary_infer(&self.op_type, inputs)
    }
    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        // A plain comparison vectorizes (f32::max does not); NaN and -0.0 give 0.
        Ok(vec![map_f32(unary_input(inputs)?, |x| {
            if x > 0.0 {
                x
            } else {
                0.0
            }
        })?])
    }
}

/// `Clip`: Y = min(max(X, min), max).
///
/// `min` and `max` are floats; absent they are the lowest and highest finite f32, as in
/// Caffe2 (`numeric_limits<float>::lowest()` / `max()`), so infinite inputs clamp to them.
/// NaN inputs stay NaN.
#[derive(Debug)]
pub struct Clip {
    op_type: String,
    min: f32,
    max: f32,
}

impl Clip {
    /// Builds the operator from its spec (`min`, `max`); rejects `min > max` and NaN bounds.
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        unary_spec(spec)?;
        let min = spec.args.float_or("min", f32::MIN)?;
        let max = spec.args.float_or("max", f32::MAX)?;
        if min.is_nan() || max.is_nan() || min > max {
            return Err(OpError::BadArg {
                name: "min".into(),
                msg: format!("need min <= max, got min {min}, max {max}"),
            });
        }
        Ok(Clip {
            op_type: spec.op_type.clone(),
            min,
            max,
        })
    }

    /// The lower and upper bounds.
    pub fn bounds(&self) -> (f32, f32) {
        (self.min, self.max)
    }
}

impl Op for Clip {
    fn op_type(&self) -> &str {
        &self.op_type
    }
    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        unary_infer(&self.op_type, inputs)
    }
    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        let (lo, hi) = (self.min, self.max);
        // Comparisons (not f32::max/min) so the loop vectorizes; NaN passes through.
        Ok(vec![map_f32(unary_input(inputs)?, |x| {
            if x < lo {
                lo
            } else if x > hi {
                hi
            } else {
                x
            }
        })?])
    }
}

/// `Sigmoid`: Y = 1 / (1 + exp(-X)).
#[derive(Debug)]
pub struct Sigmoid {
    op_type: String,
}

impl Sigmoid {
    /// Builds the operator from its spec (no arguments).
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        unary_spec(spec)?;
        Ok(Sigmoid {
            op_type: spec.op_type.clone(),
        })
    }
}

impl Op for Sigmoid {
    fn op_type(&self) -> &str {
        &self.op_type
    }
    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        unary_infer(&self.op_type, inputs)
    }
    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        Ok(vec![map_f32(unary_input(inputs)?, |x| {
            1.0 / (1.0 + (-x).exp())
        })?])
    }
}

/// `Tanh`: Y = tanh(X).
#[derive(Debug)]
pub struct Tanh {
    op_type: String,
}

impl Tanh {
    /// Builds the operator from its spec (no arguments).
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        unary_spec(spec)?;
        Ok(Tanh {
            op_type: spec.op_type.clone(),
        })
    }
}

impl Op for Tanh {
    fn op_type(&self) -> &str {
        &self.op_type
    }
    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        unary_infer(&self.op_type, inputs)
    }
    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        Ok(vec![map_f32(unary_input(inputs)?, f32::tanh)?])
    }
}
