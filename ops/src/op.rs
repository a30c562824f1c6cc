//! The operator trait and the description an operator is built from.

use crate::{Args, OpError, OpResult, Tensor, TensorInfo};

/// Everything an operator needs to be built: its type, engine, arguments and arity.
/// (The graph layer makes one from a Caffe2 `OperatorDef`.)
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Caffe2 op type, e.g. `Conv`.
    pub op_type: String,
    /// Engine string, e.g. `""` or `DNNLOWP`.
    pub engine: String,
    /// Arguments.
    pub args: Args,
    /// Number of inputs in the net.
    pub n_inputs: usize,
    /// Number of outputs in the net.
    pub n_outputs: usize,
    /// Seed for random fill ops (deterministic per node).
    pub seed: u64,
    /// Use the scalar reference implementation instead of the fast (SIMD) kernels, for
    /// operators that have both (the Int8 family). Results are bit-identical either way.
    pub reference: bool,
}

impl NodeSpec {
    /// A spec with the given type, arguments and arity (engine empty, seed 0).
    pub fn new(op_type: &str, args: Args, n_inputs: usize, n_outputs: usize) -> Self {
        NodeSpec {
            op_type: op_type.to_string(),
            engine: String::new(),
            args,
            n_inputs,
            n_outputs,
            seed: 0,
            reference: false,
        }
    }

    /// The spec of a part of this (fused) op: type, arguments and arity of its own, the
    /// engine and the reference switch of this one.
    pub fn part(&self, op_type: &str, args: Args, n_inputs: usize, n_outputs: usize) -> Self {
        let mut s = NodeSpec::new(op_type, args, n_inputs, n_outputs);
        s.engine = self.engine.clone();
        s.reference = self.reference;
        s
    }

    /// Fails unless the input count is within `[min, max]`.
    pub fn check_inputs(&self, min: usize, max: usize) -> OpResult<()> {
        if self.n_inputs < min || self.n_inputs > max {
            return Err(OpError::Arity(arity_msg("inputs", self.n_inputs, min, max)));
        }
        Ok(())
    }

    /// Fails unless the output count is within `[min, max]`.
    pub fn check_outputs(&self, min: usize, max: usize) -> OpResult<()> {
        if self.n_outputs < min || self.n_outputs > max {
            return Err(OpError::Arity(arity_msg(
                "outputs",
                self.n_outputs,
                min,
                max,
            )));
        }
        Ok(())
    }
}

fn arity_msg(what: &str, got: usize, min: usize, max: usize) -> String {
    if min == max {
        format!("expected {min} {what}, got {got}")
    } else if max == usize::MAX {
        format!("expected at least {min} {what}, got {got}")
    } else {
        format!("expected {min} to {max} {what}, got {got}")
    }
}

/// A built operator: shape inference and evaluation.
///
/// `infer` and `eval` return exactly as many outputs as the node declared (`n_outputs`).
pub trait Op: Send + Sync + std::fmt::Debug {
    /// The Caffe2 op type this operator implements (e.g. `ConvRelu`).
    fn op_type(&self) -> &str;

    /// Output types and shapes from input types and shapes.
    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>>;

    /// Computes the outputs.
    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>>;

    /// Called once before running with the inputs that are constant (parameters from the
    /// init_net), so weights can be packed ahead of time. `None` marks a non-constant input.
    fn prepare(&mut self, _constants: &[Option<&Tensor>]) -> OpResult<()> {
        Ok(())
    }
}

/// Checks the number of runtime inputs handed to `infer`/`eval`.
pub fn expect_inputs<T>(inputs: &[T], min: usize, max: usize) -> OpResult<()> {
    if inputs.len() < min || inputs.len() > max {
        return Err(OpError::Arity(arity_msg("inputs", inputs.len(), min, max)));
    }
    Ok(())
}
