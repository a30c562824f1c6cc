//! LRN: local response normalization across channels (Caffe2 `LRN`, inference).
//!
//! For a 4-D f32 input, with `pre = (size - 1) / 2` and channels outside `[0, C)` counted as
//! zero: `scale[c] = bias + (alpha / size) * sum(x[c']^2 for c' in c-pre ..= c+size-1-pre)`,
//! and `Y = X * scale^(-beta)`. Arguments: `size` (required, odd, > 0), `alpha` (0), `beta`
//! (0), `bias` (1.0), `order` (NCHW or NHWC). The optional second output is `scale`.
//!
//! The window sum is computed directly for each channel (Caffe2 uses a running sum, which
//! differs only by float rounding).

use super::activation::expect_f32;
use super::batch_norm::Order;
use crate::{expect_inputs, NodeSpec, Op, OpError, OpResult, Tensor, TensorInfo};

/// `LRN` operator.
#[derive(Debug)]
pub struct Lrn {
    op_type: String,
    size: usize,
    alpha: f32,
    beta: f32,
    bias: f32,
    order: Order,
    with_scale: bool,
}

impl Lrn {
    /// Builds the operator from its spec (`size`, `alpha`, `beta`, `bias`, `order`).
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        spec.check_inputs(1, 1)?;
        spec.check_outputs(1, 2)?;
        let size = match spec.args.int("size")? {
            Some(s) if s > 0 && s % 2 == 1 => s as usize,
            Some(s) => {
                return Err(OpError::BadArg {
                    name: "size".into(),
                    msg: format!("must be a positive odd number, got {s}"),
                })
            }
            None => {
                return Err(OpError::BadArg {
                    name: "size".into(),
                    msg: "missing (LRN needs the window size)".into(),
                })
            }
        };
        Ok(Lrn {
            op_type: spec.op_type.clone(),
            size,
            alpha: spec.args.float_or("alpha", 0.0)?,
            beta: spec.args.float_or("beta", 0.0)?,
            bias: spec.args.float_or("bias", 1.0)?,
            order: Order::from_args(&spec.args)?,
            with_scale: spec.n_outputs == 2,
        })
    }

    /// Scale for one pixel's channel vector (NHWC), `sq` is scratch of length C.
    fn scale_line(&self, x: &[f32], sq: &mut [f32], scale: &mut [f32]) {
        let c = x.len();
        let pre = (self.size - 1) / 2;
        let aos = self.alpha / self.size as f32;
        for (s, &v) in sq.iter_mut().zip(x) {
            *s = v * v;
        }
        for (ch, out) in scale.iter_mut().enumerate().take(c) {
            let lo = ch.saturating_sub(pre);
            let hi = (ch + self.size - pre).min(c); // exclusive
            let mut acc = self.bias;
            for s in &sq[lo..hi] {
                acc += aos * s;
            }
            *out = acc;
        }
    }

    /// Scale for one NCHW image `[C, HW]`, plane by plane (same arithmetic order as
    /// [`Self::scale_line`]). `sq` is scratch of the image's size.
    fn scale_planes(&self, x: &[f32], c: usize, hw: usize, sq: &mut [f32], scale: &mut [f32]) {
        let pre = (self.size - 1) / 2;
        let aos = self.alpha / self.size as f32;
        for (s, &v) in sq.iter_mut().zip(x) {
            *s = v * v;
        }
        for ch in 0..c {
            let lo = ch.saturating_sub(pre);
            let hi = (ch + self.size - pre).min(c);
            let plane = &mut scale[ch * hw..(ch + 1) * hw];
            plane.fill(self.bias);
            for src in lo..hi {
                for (o, s) in plane.iter_mut().zip(&sq[src * hw..(src + 1) * hw]) {
                    *o += aos * s;
                }
            }
        }
    }
}

impl Op for Lrn {
    fn op_type(&self) -> &str {
        &self.op_type
    }

    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        expect_inputs(inputs, 1, 1)?;
        expect_f32(&self.op_type, "X", &inputs[0])?;
        if inputs[0].shape.len() != 4 {
            return Err(OpError::Shape(format!(
                "LRN needs a 4-D input, got {:?}",
                inputs[0].shape
            )));
        }
        let mut out = vec![inputs[0].clone()];
        if self.with_scale {
            out.push(inputs[0].clone());
        }
        Ok(out)
    }

    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        expect_inputs(inputs, 1, 1)?;
        self.infer(&[inputs[0].info()])?;
        let shape = inputs[0].shape().to_vec();
        let x = inputs[0].f32_slice()?;
        let mut scale = vec![0.0f32; x.len()];
        if !x.is_empty() {
            let c = shape[self.order.channel_axis(4)];
            match self.order {
                Order::Nchw => {
                    let img = c * shape[2] * shape[3];
                    let mut sq = vec![0.0f32; img];
                    for (xi, si) in x.chunks(img).zip(scale.chunks_mut(img)) {
                        self.scale_planes(xi, c, shape[2] * shape[3], &mut sq, si);
                    }
                }
                Order::Nhwc => {
                    let mut sq = vec![0.0f32; c];
                    for (xr, sr) in x.chunks(c).zip(scale.chunks_mut(c)) {
                        self.scale_line(xr, &mut sq, sr);
                    }
                }
            }
        }
        let y: Vec<f32> = if self.beta == 0.75 {
            // The usual AlexNet/GoogLeNet value: s^-0.75 = 1 / sqrt(s * sqrt(s)), much
            // cheaper than powf and within a few ulps of it.
            x.iter()
                .zip(&scale)
                .map(|(&xv, &s)| xv / (s * s.sqrt()).sqrt())
                .collect()
        } else {
            let nb = -self.beta;
            x.iter()
                .zip(&scale)
                .map(|(&xv, &s)| xv * s.powf(nb))
                .collect()
        };
        let mut out = vec![Tensor::try_f32(&shape, y)?];
        if self.with_scale {
            out.push(Tensor::try_f32(&shape, scale)?);
        }
        Ok(out)
    }
}
