//! Int8FC / Int8FCRelu with DNNLOWP arithmetic (facts §6.4).
//!
//! X is viewed as `[M, K]` with `M = Π X.dims[..axis]`, W (Int8, uint8 codes) as `[N, K]`
//! with `N = Π W.dims[..axis_w]`; bias `[N]` (Int8 int32 with scale `s_x·s_w`, or f32).
//! `Y[i, j] = clamp(lrint((Σ_k (x[i,k] − z_x)(w[j,k] − z_w) + b_q[j]) · M) + z_y, lo, 255)`
//! with `M = s_x · s_w / s_y` (f32) and `lo = z_y` for Int8FCRelu. Y has shape
//! `X.dims[..axis] + [N]`. Accumulation is exact in 32 bits (also for `DNNLOWP_ACC16`).
//! With the c2q argument `W_scales` (one scale per output row of W), row `j` uses
//! `M[j] = s_x · W_scales[j] / s_y` and a float bias is quantized with `s_x · W_scales[j]`.
//!
//! `NodeSpec::reference` selects the scalar reference (one dot product per output);
//! otherwise X is the A matrix of the exact int8 GEMM of
//! [`qgemm`](crate::kernels::qgemm) (bit-identical results), with W packed once in
//! [`Op::prepare`] when it is constant.

use rayon::prelude::*;

use super::requant::OutputStage;
use super::{
    bias_values, canonical_axis, centered_i16, channel_w_scales, check_bias_info,
    check_dnnlowp_args, check_w_scales_len, constant_weights, dot_i16, qu8_from_vec, qu8_info,
    qu8_tensor, read_w_scales, static_output_params, Engine,
};
use crate::kernels::qgemm::{qgemm, PackedQWeights, QMatRef};
use crate::{expect_inputs, DType, NodeSpec, Op, OpError, OpResult, QParams, Tensor, TensorInfo};

/// `Int8FC` / `Int8FCRelu` operator.
#[derive(Debug)]
pub struct Int8Fc {
    op_type: String,
    relu: bool,
    axis: i64,
    axis_w: i64,
    y: QParams,
    /// Run the scalar reference instead of the fast kernels.
    reference: bool,
    /// Per-channel weight scales (`W_scales`), if given.
    w_scales: Option<Vec<f32>>,
    /// W packed by `prepare` (constant W): its shape, parameters and packing.
    prepared: Option<(Vec<usize>, QParams, PackedQWeights)>,
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
            reference: spec.reference,
            w_scales: read_w_scales(spec)?,
            prepared: None,
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
        check_w_scales_len(op, self.w_scales.as_deref(), n)?;
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
        let (m, k, n) = (r.m, r.k, r.n);
        // One weight scale per output row (all equal for per-tensor parameters).
        let w_scales = channel_w_scales(self.w_scales.as_deref(), r.wq, n);
        let bias = bias_values(op, Some(inputs[2]), r.xq, &w_scales)?;
        let stage = OutputStage::new(r.xq.scale, &w_scales, self.y, self.relu);
        let mut y = vec![0u8; m * n];
        if self.reference {
            let mut wc: Vec<i16> = Vec::with_capacity(n * k);
            for j in 0..n {
                wc.extend(centered_i16(&w[j * k..(j + 1) * k], r.wq.zero_point));
            }
            let xc = centered_i16(x, r.xq.zero_point);
            y.par_iter_mut()
                .with_min_len(64)
                .enumerate()
                .for_each(|(idx, out)| {
                    let (i, j) = (idx / n, idx % n);
                    let raw = dot_i16(&xc[i * k..(i + 1) * k], &wc[j * k..(j + 1) * k])
                        .wrapping_add(bias[j]);
                    *out = stage.apply(raw, j);
                });
        } else {
            let packed_now;
            let packed = match &self.prepared {
                Some((shape, wq, p)) if shape == inputs[1].shape() && *wq == r.wq => p,
                _ => {
                    packed_now = PackedQWeights::pack(w, n, k, &vec![r.wq.zero_point; n])?;
                    &packed_now
                }
            };
            let ep = stage.epilogue(packed.col_sums(), r.xq.zero_point, &bias, 0..n)?;
            let a = QMatRef::new(x, m, k, k, 0)?;
            qgemm(&a, packed, &ep, &mut y, n, 0)?;
        }
        Ok(vec![qu8_from_vec(&r.out_shape, y, self.y)?])
    }

    fn prepare(&mut self, constants: &[Option<&Tensor>]) -> OpResult<()> {
        self.prepared = None;
        let Some((codes, shape, wq)) = constant_weights(constants, self.reference) else {
            return Ok(());
        };
        // A W that does not fit is left for `eval` to report with its full message.
        let Ok(aw) = canonical_axis(&self.op_type, "axis_w", self.axis_w, shape) else {
            return Ok(());
        };
        let n: usize = shape[..aw].iter().product();
        let k: usize = shape[aw..].iter().product();
        if let Ok(p) = PackedQWeights::pack(codes, n, k, &vec![wq.zero_point; n]) {
            self.prepared = Some((shape.to_vec(), wq, p));
        }
        Ok(())
    }
}
