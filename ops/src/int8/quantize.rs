//! Int8Quantize (f32 → Int8) and Int8Dequantize (Int8 → f32).
//!
//! Int8Quantize uses the current FBGEMM form `q = clamp(z + nearbyint(x · (1/s)), 0, 255)`
//! with `1/s` computed once in f32 ([`super::requant::quantize_u8`]). The 2018–early-2020
//! FBGEMM scalar form `clamp(nearbyint(z + x/s))` (the era of the published int8 ResNet-50;
//! its AVX2 path used `fma(x, 1/s, z)`) can differ by one code when `x/s` is within rounding of
//! a tie; it is available as [`super::requant::quantize_u8_legacy`]. QNNPACK's Int8Quantize
//! divides (`z + nearbyint(x / s)`), which can also differ from `x · (1/s)` in the last bit.
//! Output parameters must be static (`Y_scale`); the 3-input QNNPACK form (scale and zero
//! point as tensors) is not supported.
//!
//! With `NodeSpec::reference` set, the plain loops below run; otherwise the bit-identical
//! kernels of [`crate::kernels::qeltwise`] (AVX2 when available).

use rayon::prelude::*;

use super::requant::{dequantize_u8, quantize_u8};
use super::{
    check_dnnlowp_args, qu8_from_vec, qu8_info, qu8_tensor, static_output_params, Engine, OutCodes,
};
use crate::kernels::qeltwise;
use crate::{expect_inputs, DType, NodeSpec, Op, OpError, OpResult, QParams, Tensor, TensorInfo};

/// Elements per parallel chunk of the element-wise loops.
const CHUNK: usize = 1 << 14;

/// `Int8Quantize`: f32 X → Int8 Y with the static `Y_scale` / `Y_zero_point`.
///
/// `Int8QuantizeNchw2Nhwc` (a c2q runtime fusion of NCHW2NHWC → Int8Quantize made by the pass
/// `fuse_quantize_layout`, never written to a model file) takes X as `[N, C, rest..]` and
/// writes Y as `[N, rest.., C]`: each channel plane is quantized in place order, then the
/// codes are interleaved (a quarter of the bytes the f32 transpose moves). Quantization is
/// element-wise, so the bytes equal the two ops'.
#[derive(Debug)]
pub struct Int8Quantize {
    op_type: String,
    y: QParams,
    reference: bool,
    /// Input NCHW, output NHWC (`Int8QuantizeNchw2Nhwc`).
    to_nhwc: bool,
}

impl Int8Quantize {
    /// Builds the operator (1 input, 1 output, `Y_scale` required).
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        spec.check_inputs(1, 1)?;
        spec.check_outputs(1, 1)?;
        Engine::parse(&spec.op_type, &spec.engine)?;
        check_dnnlowp_args(spec)?;
        Ok(Int8Quantize {
            op_type: spec.op_type.clone(),
            y: static_output_params(spec, false)?,
            reference: spec.reference,
            to_nhwc: spec.op_type == "Int8QuantizeNchw2Nhwc",
        })
    }

    /// The output quantization parameters.
    pub fn output_params(&self) -> QParams {
        self.y
    }
}

impl Op for Int8Quantize {
    fn op_type(&self) -> &str {
        &self.op_type
    }

    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        expect_inputs(inputs, 1, 1)?;
        if inputs[0].dtype != DType::F32 {
            return Err(OpError::DType(format!(
                "{}: X must be f32, got {}",
                self.op_type, inputs[0]
            )));
        }
        Ok(vec![TensorInfo::new(
            DType::QU8(self.y),
            self.out_shape(&inputs[0].shape)?,
        )])
    }

    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        expect_inputs(inputs, 1, 1)?;
        let x = inputs[0]
            .f32_slice()
            .map_err(|e| OpError::DType(format!("{}: X: {e}", self.op_type)))?;
        let inv = 1.0f32 / self.y.scale;
        let z = self.y.zero_point;
        if self.to_nhwc {
            return self.eval_to_nhwc(inputs[0].shape(), x, inv, z);
        }
        if !self.reference {
            let mut out = OutCodes::new(x.len());
            let k = qeltwise::kernels();
            qeltwise::par_chunks(out.as_mut_slice(), |start, qc| {
                (k.quantize)(&x[start..start + qc.len()], qc, inv, z);
            });
            return Ok(vec![out.into_tensor(inputs[0].shape(), self.y)?]);
        }
        let mut q = vec![0u8; x.len()];
        q.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(qc, xc)| {
                for (o, &v) in qc.iter_mut().zip(xc) {
                    *o = quantize_u8(v, inv, z);
                }
            });
        Ok(vec![qu8_from_vec(inputs[0].shape(), q, self.y)?])
    }
}

impl Int8Quantize {
    /// The output shape for input shape `s` (`[N, rest.., C]` for the NCHW → NHWC form).
    fn out_shape(&self, s: &[usize]) -> OpResult<Vec<usize>> {
        if !self.to_nhwc {
            return Ok(s.to_vec());
        }
        if s.len() < 3 {
            return Err(OpError::Shape(format!(
                "{}: X {s:?} needs [N, C, spatial..] (3 or more dims)",
                self.op_type
            )));
        }
        let mut o = vec![s[0]];
        o.extend(&s[2..]);
        o.push(s[1]);
        Ok(o)
    }

    /// `Int8QuantizeNchw2Nhwc`: per image, blocks of pixels: each channel plane's block is
    /// quantized (the element-wise kernel, or the scalar definition for the reference) into
    /// a small buffer, then interleaved into pixels; blocks spread over the threads. One
    /// pass, no plane-sized buffer (ResNet-50's input, 1 thread: 0.30 → 0.20 ms).
    fn eval_to_nhwc(&self, shape: &[usize], x: &[f32], inv: f32, z: i32) -> OpResult<Vec<Tensor>> {
        const BLOCK: usize = 1024;
        let out_shape = self.out_shape(shape)?;
        let c = shape[1];
        let hw: usize = shape[2..].iter().product();
        // Every code is written below.
        let mut out = OutCodes::overwritten(x.len());
        if c * hw == 0 {
            return Ok(vec![out.into_tensor(&out_shape, self.y)?]);
        }
        let k = qeltwise::kernels();
        let quantize = |src: &[f32], dst: &mut [u8]| {
            if self.reference {
                for (o, &v) in dst.iter_mut().zip(src) {
                    *o = quantize_u8(v, inv, z);
                }
            } else {
                (k.quantize)(src, dst, inv, z);
            }
        };
        let y = out.as_mut_slice();
        for (xi, yi) in x.chunks_exact(c * hw).zip(y.chunks_exact_mut(c * hw)) {
            yi.par_chunks_mut(BLOCK * c)
                .enumerate()
                .for_each(|(bi, dst)| {
                    let (p0, n) = (bi * BLOCK, dst.len() / c);
                    let mut tmp = vec![0u8; n * c];
                    for (ch, t) in tmp.chunks_exact_mut(n).enumerate() {
                        quantize(&xi[ch * hw + p0..][..n], t);
                    }
                    if c == 3 {
                        let (t0, rest) = tmp.split_at(n);
                        let (t1, t2) = rest.split_at(n);
                        for (((px, &a), &b), &cc) in dst.chunks_exact_mut(3).zip(t0).zip(t1).zip(t2)
                        {
                            px[0] = a;
                            px[1] = b;
                            px[2] = cc;
                        }
                    } else {
                        for (p, px) in dst.chunks_exact_mut(c).enumerate() {
                            for (ch, v) in px.iter_mut().enumerate() {
                                *v = tmp[ch * n + p];
                            }
                        }
                    }
                });
        }
        Ok(vec![out.into_tensor(&out_shape, self.y)?])
    }
}

/// `Int8Dequantize`: Int8 X → f32 Y = s·(q − z).
#[derive(Debug)]
pub struct Int8Dequantize {
    op_type: String,
    reference: bool,
}

impl Int8Dequantize {
    /// Builds the operator (1 input, 1 output).
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        spec.check_inputs(1, 1)?;
        spec.check_outputs(1, 1)?;
        Engine::parse(&spec.op_type, &spec.engine)?;
        Ok(Int8Dequantize {
            op_type: spec.op_type.clone(),
            reference: spec.reference,
        })
    }
}

impl Op for Int8Dequantize {
    fn op_type(&self) -> &str {
        &self.op_type
    }

    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        expect_inputs(inputs, 1, 1)?;
        qu8_info(&self.op_type, "X", &inputs[0])?;
        Ok(vec![TensorInfo::f32(inputs[0].shape.clone())])
    }

    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        expect_inputs(inputs, 1, 1)?;
        let (x, p) = qu8_tensor(&self.op_type, "X", inputs[0])?;
        let mut y = vec![0f32; x.len()];
        if !self.reference {
            let k = qeltwise::kernels();
            qeltwise::par_chunks(&mut y, |start, yc| {
                (k.dequantize)(&x[start..start + yc.len()], yc, p);
            });
            return Ok(vec![Tensor::try_f32(inputs[0].shape(), y)?]);
        }
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(yc, xc)| {
                for (o, &q) in yc.iter_mut().zip(xc) {
                    *o = dequantize_u8(q, p);
                }
            });
        Ok(vec![Tensor::try_f32(inputs[0].shape(), y)?])
    }
}
