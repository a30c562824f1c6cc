//! SpatialBN in test (inference) mode.
//!
//! Inputs X, scale, bias, mean, var (5 inputs, all f32); output Y with X's shape. The channel
//! axis is 1 for `order` NCHW (default) and the last axis for NHWC. Per channel c:
//! `inv_std = 1 / sqrt(var[c] + epsilon)`, `new_scale = scale[c] * inv_std`,
//! `new_bias = bias[c] - mean[c] * new_scale`, and `Y = X * new_scale + new_bias`.
//!
//! Only the one-output inference form exists here. Caffe2's training form (5 outputs) is
//! rejected; an `is_test = 0` node with a single output is still run with the running
//! statistics, since this is an inference runtime.

use ndarray::{ArrayD, IxDyn};

use super::activation::expect_f32;
use crate::{expect_inputs, NodeSpec, Op, OpError, OpResult, Tensor, TensorInfo};

/// Memory layout of a 4-D (or n-D) image tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Channels at axis 1 (`N, C, H, W`).
    Nchw,
    /// Channels last (`N, H, W, C`).
    Nhwc,
}

impl Order {
    /// Reads the `order` argument (default NCHW).
    pub fn from_args(args: &crate::Args) -> OpResult<Order> {
        match args.string_or("order", "NCHW")?.as_str() {
            "NCHW" => Ok(Order::Nchw),
            "NHWC" => Ok(Order::Nhwc),
            other => Err(OpError::BadArg {
                name: "order".into(),
                msg: format!("expected NCHW or NHWC, got {other:?}"),
            }),
        }
    }

    /// Index of the channel axis in a tensor of rank `ndim` (which must be >= 2).
    pub fn channel_axis(self, ndim: usize) -> usize {
        match self {
            Order::Nchw => 1,
            Order::Nhwc => ndim - 1,
        }
    }
}

/// `SpatialBN` (test mode): per-channel affine normalization with running statistics.
#[derive(Debug)]
pub struct SpatialBn {
    op_type: String,
    epsilon: f32,
    order: Order,
    /// `(new_scale, new_bias)` computed in `prepare` when all four parameters are constants.
    folded: Option<(Vec<f32>, Vec<f32>)>,
}

impl SpatialBn {
    /// Builds the operator from its spec (`epsilon` default 1e-5, `order`, `is_test`).
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        spec.check_inputs(5, 5)?;
        if spec.n_outputs != 1 {
            return Err(OpError::Unsupported(format!(
                "SpatialBN with {} outputs is the training form; only the 1-output inference \
                 form is supported",
                spec.n_outputs
            )));
        }
        let epsilon = spec.args.float_or("epsilon", 1e-5)?;
        if epsilon.is_nan() || epsilon < 0.0 {
            return Err(OpError::BadArg {
                name: "epsilon".into(),
                msg: format!("must be >= 0, got {epsilon}"),
            });
        }
        let _ = spec.args.int_or("is_test", 0)?;
        Ok(SpatialBn {
            op_type: spec.op_type.clone(),
            epsilon,
            order: Order::from_args(&spec.args)?,
            folded: None,
        })
    }

    /// The epsilon added to the variance.
    pub fn epsilon(&self) -> f32 {
        self.epsilon
    }

    /// Per-channel `(new_scale, new_bias)` from scale, bias, mean and var (each of length C).
    pub fn fold(
        scale: &[f32],
        bias: &[f32],
        mean: &[f32],
        var: &[f32],
        epsilon: f32,
    ) -> (Vec<f32>, Vec<f32>) {
        let c = scale.len();
        let mut new_scale = Vec::with_capacity(c);
        let mut new_bias = Vec::with_capacity(c);
        for i in 0..c {
            let inv_std = 1.0 / (var[i] + epsilon).sqrt();
            let s = scale[i] * inv_std;
            new_scale.push(s);
            new_bias.push(bias[i] - mean[i] * s);
        }
        (new_scale, new_bias)
    }

    fn check(&self, x: &[usize], params: [&TensorInfo; 4]) -> OpResult<usize> {
        if x.len() < 2 {
            return Err(OpError::Shape(format!(
                "SpatialBN needs X of rank >= 2, got {x:?}"
            )));
        }
        let c = x[self.order.channel_axis(x.len())];
        for (name, p) in ["scale", "bias", "mean", "var"].iter().zip(params) {
            if p.shape != [c] {
                return Err(OpError::Shape(format!(
                    "SpatialBN {name} must have shape [{c}] (channels of X {x:?}), got {:?}",
                    p.shape
                )));
            }
        }
        Ok(c)
    }
}

impl Op for SpatialBn {
    fn op_type(&self) -> &str {
        &self.op_type
    }

    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        expect_inputs(inputs, 5, 5)?;
        for (name, i) in ["X", "scale", "bias", "mean", "var"].iter().zip(inputs) {
            expect_f32(&self.op_type, name, i)?;
        }
        self.check(
            &inputs[0].shape,
            [&inputs[1], &inputs[2], &inputs[3], &inputs[4]],
        )?;
        Ok(vec![inputs[0].clone()])
    }

    fn prepare(&mut self, constants: &[Option<&Tensor>]) -> OpResult<()> {
        self.folded = None;
        if constants.len() != 5 {
            return Ok(());
        }
        let mut p: Vec<&[f32]> = Vec::with_capacity(4);
        for c in &constants[1..] {
            match c {
                Some(t) => p.push(t.f32_slice()?),
                None => return Ok(()),
            }
        }
        let n = p[0].len();
        if p.iter().any(|s| s.len() != n) {
            return Err(OpError::Shape(format!(
                "SpatialBN scale/bias/mean/var lengths differ: {:?}",
                p.iter().map(|s| s.len()).collect::<Vec<_>>()
            )));
        }
        self.folded = Some(Self::fold(p[0], p[1], p[2], p[3], self.epsilon));
        Ok(())
    }

    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        expect_inputs(inputs, 5, 5)?;
        let infos: Vec<TensorInfo> = inputs.iter().map(|t| t.info()).collect();
        self.infer(&infos)?;
        let x = inputs[0].as_f32()?;
        let shape = x.shape().to_vec();
        let c = shape[self.order.channel_axis(shape.len())];
        let computed;
        let (ns, nb) = match &self.folded {
            Some((s, b)) if s.len() == c => (s.as_slice(), b.as_slice()),
            _ => {
                computed = Self::fold(
                    inputs[1].f32_slice()?,
                    inputs[2].f32_slice()?,
                    inputs[3].f32_slice()?,
                    inputs[4].f32_slice()?,
                    self.epsilon,
                );
                (computed.0.as_slice(), computed.1.as_slice())
            }
        };
        let xs = inputs[0].f32_slice()?;
        let mut y: Vec<f32> = Vec::with_capacity(xs.len());
        if c > 0 && !xs.is_empty() {
            match self.order {
                Order::Nchw => {
                    // Blocks of `inner` values share one channel; channels cycle within N.
                    let inner: usize = shape[2..].iter().product();
                    if inner > 0 {
                        for (blk, xb) in xs.chunks(inner).enumerate() {
                            let ch = blk % c;
                            let (s, b) = (ns[ch], nb[ch]);
                            y.extend(xb.iter().map(|&xv| xv * s + b));
                        }
                    }
                }
                Order::Nhwc => {
                    for xr in xs.chunks(c) {
                        y.extend(xr.iter().zip(ns).zip(nb).map(|((&xv, &s), &b)| xv * s + b));
                    }
                }
            }
        }
        let y = ArrayD::from_shape_vec(IxDyn(&shape), y)
            .map_err(|e| OpError::Shape(format!("internal: {e}")))?;
        Ok(vec![Tensor::F32(y)])
    }
}
