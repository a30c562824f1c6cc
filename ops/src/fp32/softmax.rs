//! Softmax over the trailing dimensions.
//!
//! X (f32) is viewed as a matrix `[prod(dims[..axis]), prod(dims[axis..])]` and every row is
//! replaced by `exp(x - rowmax) / sum(exp(x - rowmax))` (the max subtraction keeps it finite
//! for large inputs). `axis` defaults to 1; negative values count from the end.

use super::activation::expect_f32;
use crate::{expect_inputs, NodeSpec, Op, OpError, OpResult, Tensor, TensorInfo};

/// Resolves an axis that may be negative (counting from the end) against a rank, Caffe2's
/// `canonical_axis_index`: valid values are `-ndim..ndim`.
pub(crate) fn canonical_axis(name: &str, axis: i64, ndim: usize) -> OpResult<usize> {
    let n = ndim as i64;
    if axis < -n || axis >= n {
        return Err(OpError::BadArg {
            name: name.into(),
            msg: format!("axis {axis} is out of range for a tensor of rank {ndim}"),
        });
    }
    Ok(if axis < 0 { axis + n } else { axis } as usize)
}

/// Softmax of each row of a row-major `[rows, cols]` slice, written into `out`.
pub fn softmax_rows(x: &[f32], cols: usize, out: &mut [f32]) {
    if cols == 0 {
        return;
    }
    for (xr, yr) in x.chunks(cols).zip(out.chunks_mut(cols)) {
        let max = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for (y, &v) in yr.iter_mut().zip(xr) {
            let e = (v - max).exp();
            *y = e;
            sum += e;
        }
        let inv = 1.0 / sum;
        for y in yr.iter_mut() {
            *y *= inv;
        }
    }
}

/// `Softmax` operator (inference).
#[derive(Debug)]
pub struct Softmax {
    op_type: String,
    axis: i64,
}

impl Softmax {
    /// Builds the operator from its spec (`axis`, default 1).
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        spec.check_inputs(1, 1)?;
        spec.check_outputs(1, 1)?;
        Ok(Softmax {
            op_type: spec.op_type.clone(),
            axis: spec.args.int_or("axis", 1)?,
        })
    }
}

impl Op for Softmax {
    fn op_type(&self) -> &str {
        &self.op_type
    }

    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        expect_inputs(inputs, 1, 1)?;
        expect_f32(&self.op_type, "X", &inputs[0])?;
        canonical_axis("axis", self.axis, inputs[0].shape.len())?;
        Ok(vec![inputs[0].clone()])
    }

    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        expect_inputs(inputs, 1, 1)?;
        let shape = inputs[0].shape().to_vec();
        let axis = canonical_axis("axis", self.axis, shape.len())?;
        let cols: usize = shape[axis..].iter().product();
        let x = inputs[0].f32_slice()?;
        let mut y = vec![0.0f32; x.len()];
        softmax_rows(x, cols, &mut y);
        Ok(vec![Tensor::try_f32(&shape, y)?])
    }
}
