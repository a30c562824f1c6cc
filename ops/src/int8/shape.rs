//! Int8Concat, Int8Flatten and Int8Reshape: data movement with quantization parameters.
//!
//! - Int8Concat: output parameters from `Y_scale`/`Y_zero_point`, or input 0's when absent.
//!   Every input whose parameters differ from the output's is requantized code by code,
//!   `clamp(lrint((q − z_i) · s_i / s_y) + z_y, 0, 255)`, as DNNLOWP's Concat does (the
//!   QNNPACK Int8Concat instead requires all parameters to be equal). Inputs with the output's
//!   parameters are copied unchanged (the requantization is the identity for them). The axis
//!   is `axis` (with `add_axis`) when given; otherwise `order` NHWC → 3, NCHW → 1; with
//!   neither, 1 for the DNNLOWP engines and 0 for the default engine (QNNPACK's default).
//!   An optional second output `split_info` (int32) holds each input's extent along the axis.
//! - Int8Flatten (`axis`, default 1) and Int8Reshape (`shape` argument or a second input;
//!   optional `old_shape` output): the codes are unchanged and the output keeps the input's
//!   parameters. A `Y_scale`/`Y_zero_point` that differs from the input's is an error, as in
//!   Caffe2's Int8Flatten/Int8Reshape (DNNLOWP has no implementation of its own for them).
//!
//! Unless `NodeSpec::reference` is set, Int8Concat writes its output directly: for every
//! index before the axis, each input's contiguous slab is copied (a memcpy of rows, e.g. of
//! channel runs in NHWC) or, when its parameters differ from the output's, mapped through a
//! 256-entry table holding the requantized value of every code (the same function, so the
//! same bytes as the reference).

use std::borrow::Cow;

use rayon::prelude::*;

use super::requant::requantize;
use super::{
    check_dnnlowp_args, qu8_from_vec, qu8_info, qu8_tensor, read_y_params, same_scale, Engine,
    OutCodes,
};
use crate::fp32::concat::Concat;
use crate::fp32::reshape::{Flatten, Reshape};
use crate::kernels::qeltwise::PAR_CHUNK;
use crate::{
    expect_inputs, ArgValue, Args, DType, NodeSpec, Op, OpError, OpResult, QParams, Tensor,
    TensorInfo,
};

/// `Int8Concat` operator.
#[derive(Debug)]
pub struct Int8Concat {
    op_type: String,
    y: Option<QParams>,
    /// Does the data movement once every input carries the output parameters.
    inner: Concat,
    /// The axis as given to `inner` (may be negative).
    axis: i64,
    /// `add_axis`: stack along a new axis.
    add_axis: bool,
    /// Use the reference path (convert, then `inner`).
    reference: bool,
}

impl Int8Concat {
    /// Builds the operator (n ≥ 1 inputs; Y and an optional split_info output).
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        spec.check_inputs(1, usize::MAX)?;
        spec.check_outputs(1, 2)?;
        let engine = Engine::parse(&spec.op_type, &spec.engine)?;
        check_dnnlowp_args(spec)?;
        let mut args = Args::new();
        let mut add_axis = false;
        match spec.args.int("axis")? {
            Some(a) => {
                args.set("axis", ArgValue::I(a));
                let add = spec.args.int_or("add_axis", 0)?;
                add_axis = add != 0;
                args.set("add_axis", ArgValue::I(add));
            }
            None => {
                let axis = match spec.args.string("order")?.as_deref() {
                    Some("NHWC") => 3,
                    Some("NCHW") => 1,
                    Some(other) => {
                        return Err(OpError::BadArg {
                            name: "order".into(),
                            msg: format!("expected NCHW or NHWC, got {other:?}"),
                        })
                    }
                    None if engine.is_dnnlowp() => 1,
                    None => 0,
                };
                args.set("axis", ArgValue::I(axis));
            }
        }
        let axis = args.int("axis")?.unwrap_or(0);
        let inner = Concat::from_spec(&NodeSpec::new(
            &spec.op_type,
            args,
            spec.n_inputs,
            spec.n_outputs,
        ))?;
        Ok(Int8Concat {
            op_type: spec.op_type.clone(),
            y: read_y_params(&spec.op_type, &spec.args)?,
            inner,
            axis,
            add_axis,
            reference: spec.reference,
        })
    }

    fn out_params(&self, first: QParams) -> QParams {
        self.y.unwrap_or(first)
    }

    /// The fast path: copies (or maps through a requantization table) each input's slab
    /// straight into the output.
    fn eval_fast(
        &self,
        inputs: &[&Tensor],
        xs: &[(&[u8], QParams)],
        yq: QParams,
    ) -> OpResult<Vec<Tensor>> {
        let op = self.op_type.as_str();
        let infos: Vec<TensorInfo> = inputs.iter().map(|t| t.info()).collect();
        // Validates the shapes and gives the output shapes.
        let outs = self.infer(&infos)?;
        let first = inputs[0].shape();
        let rank = first.len() + usize::from(self.add_axis);
        let r = rank as i64;
        if self.axis < -r || self.axis >= r {
            return Err(OpError::BadArg {
                name: "axis".into(),
                msg: format!("{op}: {} is out of range for rank {rank}", self.axis),
            });
        }
        let axis = if self.axis < 0 {
            self.axis + r
        } else {
            self.axis
        } as usize;
        let outer: usize = first[..axis].iter().product();
        let (sizes, inner): (Vec<usize>, usize) = if self.add_axis {
            (vec![1; inputs.len()], first[axis..].iter().product())
        } else {
            (
                inputs.iter().map(|t| t.shape()[axis]).collect(),
                first[axis + 1..].iter().product(),
            )
        };
        // Inputs whose parameters differ from the output's are requantized on the way. The
        // requantization maps each code on its own, so it is a 256-entry table per input,
        // computed once with the element-wise kernel and applied to every row segment.
        let requant = crate::kernels::qeltwise::kernels().requant;
        let tables: Vec<Option<[u8; 256]>> = xs
            .iter()
            .map(|(_, q)| {
                (*q != yq).then(|| {
                    let codes: [u8; 256] = std::array::from_fn(|v| v as u8);
                    let mut t = [0u8; 256];
                    requant(&codes, *q, &mut t, yq);
                    t
                })
            })
            .collect();
        let row_out: usize = sizes.iter().sum::<usize>() * inner;
        // Every code is written below.
        let mut out = OutCodes::overwritten(outer * row_out);
        let y = out.as_mut_slice();
        if !y.is_empty() {
            let rows_per_task = (PAR_CHUNK / row_out).max(1);
            y.par_chunks_mut(rows_per_task * row_out)
                .enumerate()
                .for_each(|(t, block)| {
                    let (o0, rows) = (t * rows_per_task, block.len() / row_out);
                    let mut off = 0;
                    // Input by input: its segments of this block's rows, copied or mapped
                    // through its table in one call.
                    for (((codes, _), &size), table) in xs.iter().zip(&sizes).zip(&tables) {
                        let len = size * inner;
                        let src = &codes[o0 * len..(o0 + rows) * len];
                        match table {
                            Some(tb) => crate::kernels::lut::map_rows(
                                src,
                                len,
                                tb,
                                &mut block[off..],
                                row_out,
                                len,
                                rows,
                            ),
                            None => {
                                for (s, d) in
                                    src.chunks_exact(len).zip(block.chunks_exact_mut(row_out))
                                {
                                    d[off..off + len].copy_from_slice(s);
                                }
                            }
                        }
                        off += len;
                    }
                });
        }
        let mut res = vec![out.into_tensor(&outs[0].shape, yq)?];
        if outs.len() == 2 {
            let v = sizes
                .iter()
                .map(|&s| {
                    i32::try_from(s)
                        .map_err(|_| OpError::Shape(format!("{op}: input size {s} exceeds i32")))
                })
                .collect::<OpResult<Vec<i32>>>()?;
            res.push(Tensor::I32(
                ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[v.len()]), v)
                    .map_err(|e| OpError::Shape(format!("internal: {e}")))?,
            ));
        }
        Ok(res)
    }
}

impl Op for Int8Concat {
    fn op_type(&self) -> &str {
        &self.op_type
    }

    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        expect_inputs(inputs, 1, usize::MAX)?;
        let mut first = None;
        for (i, t) in inputs.iter().enumerate() {
            let q = qu8_info(&self.op_type, &format!("input {i}"), t)?;
            first.get_or_insert(q);
        }
        let yq = self.out_params(
            first.ok_or_else(|| OpError::Arity(format!("{}: no inputs", self.op_type)))?,
        );
        let same: Vec<TensorInfo> = inputs
            .iter()
            .map(|t| TensorInfo::new(DType::QU8(yq), t.shape.clone()))
            .collect();
        self.inner.infer(&same)
    }

    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        expect_inputs(inputs, 1, usize::MAX)?;
        let op = self.op_type.as_str();
        let xs = inputs
            .iter()
            .enumerate()
            .map(|(i, t)| qu8_tensor(op, &format!("input {i}"), t))
            .collect::<OpResult<Vec<_>>>()?;
        let yq = self.out_params(xs[0].1);
        if !self.reference {
            return self.eval_fast(inputs, &xs, yq);
        }
        let converted = inputs
            .iter()
            .zip(&xs)
            .map(|(t, (codes, q))| {
                if *q == yq {
                    Ok(Cow::Borrowed(*t))
                } else {
                    let m = q.scale / yq.scale;
                    let v = codes
                        .iter()
                        .map(|&c| requantize(i32::from(c) - q.zero_point, m, yq.zero_point, 0))
                        .collect();
                    qu8_from_vec(t.shape(), v, yq).map(Cow::Owned)
                }
            })
            .collect::<OpResult<Vec<Cow<'_, Tensor>>>>()?;
        let refs: Vec<&Tensor> = converted.iter().map(|c| c.as_ref()).collect();
        self.inner.eval(&refs)
    }
}

/// Fails if `Y_scale`/`Y_zero_point` were given and differ from the input's parameters.
fn check_same_params(op: &str, y: Option<QParams>, x: QParams) -> OpResult<()> {
    match y {
        Some(y) if !(same_scale(y.scale, x.scale) && y.zero_point == x.zero_point) => {
            Err(OpError::BadArg {
                name: "Y_scale".into(),
                msg: format!(
                    "{op}: output parameters (scale {}, zero point {}) must equal the input's \
                     (scale {}, zero point {}): this op does not requantize",
                    y.scale, y.zero_point, x.scale, x.zero_point
                ),
            })
        }
        _ => Ok(()),
    }
}

/// `Int8Flatten` / `Int8Reshape`: a shape change that keeps codes and parameters.
#[derive(Debug)]
pub struct Int8Reshape {
    op_type: String,
    y: Option<QParams>,
    inner: Box<dyn Op>,
}

impl Int8Reshape {
    /// Builds `Int8Flatten` (`axis`) or `Int8Reshape` (`shape` or a shape input; optional
    /// `old_shape` output).
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        Engine::parse(&spec.op_type, &spec.engine)?;
        let inner: Box<dyn Op> = match spec.op_type.as_str() {
            "Int8Flatten" => Box::new(Flatten::from_spec(spec)?),
            "Int8Reshape" => Box::new(Reshape::from_spec(spec)?),
            other => return Err(OpError::Unsupported(format!("int8 shape op {other}"))),
        };
        Ok(Int8Reshape {
            op_type: spec.op_type.clone(),
            y: read_y_params(&spec.op_type, &spec.args)?,
            inner,
        })
    }
}

impl Op for Int8Reshape {
    fn op_type(&self) -> &str {
        &self.op_type
    }

    fn prepare(&mut self, constants: &[Option<&Tensor>]) -> OpResult<()> {
        self.inner.prepare(constants)
    }

    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        expect_inputs(inputs, 1, 2)?;
        let q = qu8_info(&self.op_type, "X", &inputs[0])?;
        check_same_params(&self.op_type, self.y, q)?;
        self.inner.infer(inputs)
    }

    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        expect_inputs(inputs, 1, 2)?;
        let (_, q) = qu8_tensor(&self.op_type, "X", inputs[0])?;
        check_same_params(&self.op_type, self.y, q)?;
        self.inner.eval(inputs)
    }
}
