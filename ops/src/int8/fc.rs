//! Int8FC / Int8FCRelu with DNNLOWP arithmetic (facts §6.4).
//!
//! X is viewed as `[M, K]` with `M = Π X.dims[..axis]`, W (Int8, uint8 codes) as `[N, K]`
//! with `N = Π W.dims[..axis_w]`; bias `[N]` (Int8 int32 with scale `s_x·s_w`, or f32).
//! `Y[i, j] = clamp(lrint((Σ_k (x[i,k] − z_x)(w[j,k] − z_w) + b_q[j]) · M) + z_y, lo, 255)`
//! with `M = s_x · s_w / s_y` (f32) and `lo = z_y` for Int8FCRelu. Y has shape
//! `X.dims[..axis] + [N]`. Accumulation is exact in 32 bits (also for `DNNLOWP_ACC16`).

use rayon::prelude::*;

use super::requant::OutputStage;
use super::{
    bias_values, canonical_axis, centered_i16, check_bias_info, check_dnnlowp_args, dot_i16,
    qu8_from_vec, qu8_info, qu8_tensor, static_output_params, Engine,
};
use crate::{expect_inputs, DType, NodeSpec, Op, OpError, OpResult, QParams, Tensor, TensorInfo};

/// `Int8FC` / `Int8FCRelu` operator (scalar reference).
#[derive(Debug)]
pub struct Int8Fc {
    op_type: String,
    relu: bool,
    axis: i64,
    axis_w: i64,
    y: QParams,
}

/// Validated sizes and parameters of one call.
struct Resolved {
    m: usize,
    k: usize,
    n: usize,
    out_shape: Vec<usize>,
    xq: QParams,
    wq: QParams,
}

impl Int8Fc {
    /// Builds the operator (`Int8FC` or `Int8FCRelu`; X, W, b; `axis`, `axis_w` default 1).
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        spec.check_inputs(3, 3)?;
        spec.check_outputs(1, 1)?;
        Engine::parse(&spec.op_type, &spec.engine)?;
        check_dnnlowp_args(spec)?;
        let relu = spec.op_type.ends_with("Relu");
        Ok(Int8Fc {
            op_type: spec.op_type.clone(),
            relu,
            axis: spec.args.int_or("axis", 1)?,
            axis_w: spec.args.int_or("axis_w", 1)?,
            y: static_output_params(spec, relu)?,
        })
    }

    /// The output quantization parameters (after the ReLU re-derivation, if fused).
    pub fn output_params(&self) -> QParams {
        self.y
    }

    fn resolve(&self, x: &TensorInfo, w: &TensorInfo, b: &TensorInfo) -> OpResult<Resolved> {
        let op = self.op_type.as_str();
        let xq = qu8_info(op, "X", x)?;
        let wq = qu8_info(op, "W", w)?;
        let ax = canonical_axis(op, "axis", self.axis, &x.shape)?;
        let aw = canonical_axis(op, "axis_w", self.axis_w, &w.shape)?;
        let m: usize = x.shape[..ax].iter().product();
        let k: usize = x.shape[ax..].iter().product();
        let n: usize = w.shape[..aw].iter().product();
        let wk: usize = w.shape[aw..].iter().product();
        if k != wk {
            return Err(OpError::Shape(format!(
                "{op}: X {:?} (axis {}) gives K = {k}, but W {:?} (axis_w {}) gives K = {wk}",
                x.shape, self.axis, w.shape, self.axis_w
            )));
        }
        check_bias_info(op, b, n, xq, wq)?;
        let mut out_shape = x.shape[..ax].to_vec();
        out_shape.push(n);
        Ok(Resolved {
            m,
            k,
            n,
            out_shape,
            xq,
            wq,
        })
    }
}

impl Op for Int8Fc {
    fn op_type(&self) -> &str {
        &self.op_type
    }

    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        expect_inputs(inputs, 3, 3)?;
        let r = self.resolve(&inputs[0], &inputs[1], &inputs[2])?;
        Ok(vec![TensorInfo::new(DType::QU8(self.y), r.out_shape)])
    }

    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        expect_inputs(inputs, 3, 3)?;
        let op = self.op_type.as_str();
        let r = self.resolve(&inputs[0].info(), &inputs[1].info(), &inputs[2].info())?;
        let (x, _) = qu8_tensor(op, "X", inputs[0])?;
        let (w, _) = qu8_tensor(op, "W", inputs[1])?;
        let bias = bias_values(op, Some(inputs[2]), r.n, r.xq, r.wq)?;
        let (k, n) = (r.k, r.n);
        // One weight zero point and scale per output row (all equal: per-tensor parameters).
        let w_zero_points = vec![r.wq.zero_point; n];
        let w_scales = vec![r.wq.scale; n];
        let mut wc: Vec<i16> = Vec::with_capacity(n * k);
        for (j, &zw) in w_zero_points.iter().enumerate() {
            wc.extend(centered_i16(&w[j * k..(j + 1) * k], zw));
        }
        let xc = centered_i16(x, r.xq.zero_point);
        let stage = OutputStage::new(r.xq.scale, &w_scales, self.y, self.relu);
        let mut y = vec![0u8; r.m * n];
        y.par_iter_mut()
            .with_min_len(64)
            .enumerate()
            .for_each(|(idx, out)| {
                let (i, j) = (idx / n, idx % n);
                let raw =
                    dot_i16(&xc[i * k..(i + 1) * k], &wc[j * k..(j + 1) * k]).wrapping_add(bias[j]);
                *out = stage.apply(raw, j);
            });
        Ok(vec![qu8_from_vec(&r.out_shape, y, self.y)?])
    }
}
