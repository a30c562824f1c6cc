//! Int8Sum / Int8SumRelu / Int8Add / Int8AddRelu and Int8Relu.
//!
//! Sum/Add (facts §6.5), element-wise over inputs of one shape (no broadcasting), in f32 as
//! DNNLOWP's AVX2/FMA kernel computes it: each input's term is `fma(q_i, s_i, f32(−z_i·s_i))`,
//! `acc` their sum left to right, and `y = clamp(nearbyint(fma(acc, 1/s_y, z_y)), lo, 255)`
//! with `1/s_y` divided in f64 and rounded to f32, `lo = z_y` for the `*Relu` variants. For
//! two inputs this is bit for bit the x86 DNNLOWP result. For n > 2 inputs (and for two
//! inputs on machines without AVX2) DNNLOWP
//! instead requantizes every input to a 16-bit intermediate grid chosen from the inputs'
//! ranges, adds in integers and requantizes; that is numerically different (typically by at
//! most one code) and is not reproduced: the same float formula is used for any n.
//!
//! Int8Relu: `y = max(x, z_x)` with the input's parameters (DNNLOWP and QNNPACK alike;
//! `Y_scale`/`Y_zero_point` are ignored, as in DNNLOWP).
//!
//! With `NodeSpec::reference` set, the plain loops below run; otherwise the bit-identical
//! kernels of [`crate::kernels::qeltwise`] (AVX2 when available).

use rayon::prelude::*;

use super::requant::{requantize_sum, sum_inv_scale, sum_term};
use super::{
    check_dnnlowp_args, qu8_from_vec, qu8_info, qu8_tensor, static_output_params, Engine, OutCodes,
};
use crate::kernels::qeltwise::{self, RealStage};
use crate::{expect_inputs, DType, NodeSpec, Op, OpError, OpResult, QParams, Tensor, TensorInfo};

/// Elements per parallel chunk.
const CHUNK: usize = 1 << 14;

/// `Int8Sum` / `Int8SumRelu` (n ≥ 1 inputs) and `Int8Add` / `Int8AddRelu` (2 inputs).
#[derive(Debug)]
pub struct Int8Sum {
    op_type: String,
    relu: bool,
    y: QParams,
    reference: bool,
}

impl Int8Sum {
    /// Builds the operator; Add forms take exactly two inputs and no broadcasting.
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        let is_add = spec.op_type.starts_with("Int8Add");
        if is_add {
            spec.check_inputs(2, 2)?;
            if spec.args.int_or("broadcast", 0)? != 0 {
                return Err(OpError::Unsupported(format!(
                    "{} with broadcast = 1 (inputs must have one shape)",
                    spec.op_type
                )));
            }
        } else {
            spec.check_inputs(1, usize::MAX)?;
        }
        spec.check_outputs(1, 1)?;
        Engine::parse(&spec.op_type, &spec.engine)?;
        check_dnnlowp_args(spec)?;
        let relu = spec.op_type.ends_with("Relu");
        Ok(Int8Sum {
            op_type: spec.op_type.clone(),
            relu,
            y: static_output_params(spec, relu)?,
            reference: spec.reference,
        })
    }

    /// The output quantization parameters (after the ReLU re-derivation, if fused).
    pub fn output_params(&self) -> QParams {
        self.y
    }

    /// The output stage: `1/s_y` (computed once, as `eval` does), `z_y` and the lower clamp.
    pub fn real_stage(&self) -> RealStage {
        RealStage {
            multiplier: sum_inv_scale(self.y.scale),
            zero_point: self.y.zero_point,
            lo: if self.relu { self.y.zero_point } else { 0 },
        }
    }

    fn check(&self, inputs: &[TensorInfo]) -> OpResult<Vec<QParams>> {
        let op = self.op_type.as_str();
        let mut qs = Vec::with_capacity(inputs.len());
        for (i, t) in inputs.iter().enumerate() {
            qs.push(qu8_info(op, &format!("input {i}"), t)?);
            if t.shape != inputs[0].shape {
                return Err(OpError::Shape(format!(
                    "{op}: input 0 has shape {:?}, input {i} has shape {:?} (no broadcasting)",
                    inputs[0].shape, t.shape
                )));
            }
        }
        Ok(qs)
    }
}

impl Op for Int8Sum {
    fn op_type(&self) -> &str {
        &self.op_type
    }

    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        expect_inputs(inputs, 1, usize::MAX)?;
        self.check(inputs)?;
        Ok(vec![TensorInfo::new(
            DType::QU8(self.y),
            inputs[0].shape.clone(),
        )])
    }

    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        expect_inputs(inputs, 1, usize::MAX)?;
        let infos: Vec<TensorInfo> = inputs.iter().map(|t| t.info()).collect();
        self.check(&infos)?;
        let op = self.op_type.as_str();
        let xs = inputs
            .iter()
            .enumerate()
            .map(|(i, t)| qu8_tensor(op, &format!("input {i}"), t))
            .collect::<OpResult<Vec<_>>>()?;
        let inv = sum_inv_scale(self.y.scale);
        let (zy, lo) = (
            self.y.zero_point,
            if self.relu { self.y.zero_point } else { 0 },
        );
        if !self.reference {
            let mut out = OutCodes::new(xs[0].0.len());
            let y = out.as_mut_slice();
            let st = RealStage {
                multiplier: inv,
                zero_point: zy,
                lo,
            };
            let k = qeltwise::kernels();
            qeltwise::par_chunks(y, |start, yc| {
                let r = start..start + yc.len();
                if let [(a, qa), (b, qb)] = xs.as_slice() {
                    (k.add2)(&a[r.clone()], *qa, &b[r], *qb, yc, st);
                } else {
                    let parts: Vec<(&[u8], QParams)> =
                        xs.iter().map(|(x, q)| (&x[r.clone()], *q)).collect();
                    (k.sum_n)(&parts, yc, st);
                }
            });
            return Ok(vec![out.into_tensor(inputs[0].shape(), self.y)?]);
        }
        let mut y = vec![0u8; xs[0].0.len()];
        y.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, yc)| {
            let start = ci * CHUNK;
            for (j, out) in yc.iter_mut().enumerate() {
                let (x0, q0) = &xs[0];
                let mut acc = sum_term(x0[start + j], *q0);
                for (x, q) in &xs[1..] {
                    acc += sum_term(x[start + j], *q);
                }
                *out = requantize_sum(acc, inv, zy, lo);
            }
        });
        Ok(vec![qu8_from_vec(inputs[0].shape(), y, self.y)?])
    }
}

/// `Int8Relu`: `y = max(x, z_x)`; output parameters equal the input's.
#[derive(Debug)]
pub struct Int8Relu {
    op_type: String,
    reference: bool,
}

impl Int8Relu {
    /// Builds the operator (1 input, 1 output).
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        spec.check_inputs(1, 1)?;
        spec.check_outputs(1, 1)?;
        Engine::parse(&spec.op_type, &spec.engine)?;
        Ok(Int8Relu {
            op_type: spec.op_type.clone(),
            reference: spec.reference,
        })
    }
}

impl Op for Int8Relu {
    fn op_type(&self) -> &str {
        &self.op_type
    }

    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        expect_inputs(inputs, 1, 1)?;
        qu8_info(&self.op_type, "X", &inputs[0])?;
        Ok(vec![inputs[0].clone()])
    }

    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        expect_inputs(inputs, 1, 1)?;
        let (x, q) = qu8_tensor(&self.op_type, "X", inputs[0])?;
        let z = q.zero_point as u8;
        let y: Vec<u8> = if self.reference {
            x.iter().map(|&v| v.max(z)).collect()
        } else {
            let k = qeltwise::kernels();
            let mut y = vec![0u8; x.len()];
            qeltwise::par_chunks(&mut y, |start, yc| {
                (k.relu)(&x[start..start + yc.len()], yc, z);
            });
            y
        };
        Ok(vec![qu8_from_vec(inputs[0].shape(), y, q)?])
    }
}
