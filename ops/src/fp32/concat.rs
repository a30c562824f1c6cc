//! Concat along one axis, with Caffe2's optional `split_info` second output.
//!
//! The axis comes from `axis` (negative counts from the end) or, when `axis` is absent, from
//! `order` (NCHW -> 1, NHWC -> 3). Caffe2 rejects both together; since converted nets carry
//! both (SqueezeNet: `axis 1`, `order "NCHW"`), they are accepted here when they agree. With `add_axis = 1` the inputs
//! (all of one shape) are stacked along a new axis inserted at `axis`. All inputs must have
//! the same element type (any type works, Int8 parameters included) and rank, and equal dims
//! except along the axis. `split_info` is an int32 1-D tensor holding each input's size
//! along the axis (1 each with `add_axis`).

use ndarray::{ArrayD, IxDyn};

use super::batch_norm::Order;
use super::softmax::canonical_axis;
use crate::{expect_inputs, NodeSpec, Op, OpError, OpResult, Tensor, TensorInfo};

/// `Concat` operator.
#[derive(Debug)]
pub struct Concat {
    op_type: String,
    axis: i64,
    add_axis: bool,
    n_outputs: usize,
}

impl Concat {
    /// Builds the operator from its spec (`axis` or `order`, `add_axis`; 1 or 2 outputs).
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        spec.check_inputs(1, usize::MAX)?;
        spec.check_outputs(1, 2)?;
        let order_axis = match Order::from_args(&spec.args)? {
            Order::Nchw => 1,
            Order::Nhwc => 3,
        };
        let axis = match spec.args.int("axis")? {
            Some(a) => {
                // Caffe2 rejects `axis` together with `order`, but converters emit both
                // (e.g. axis 1 with order NCHW in real SqueezeNet nets): accept them when
                // they agree.
                if spec.args.has("order") && a != order_axis {
                    return Err(OpError::BadArg {
                        name: "axis".into(),
                        msg: format!(
                            "axis {a} disagrees with order {:?} (channel axis {order_axis})",
                            spec.args.string_or("order", "NCHW")?
                        ),
                    });
                }
                a
            }
            None => order_axis,
        };
        let add_axis = spec.args.int_or("add_axis", 0)? != 0;
        Ok(Concat {
            op_type: spec.op_type.clone(),
            axis,
            add_axis,
            n_outputs: spec.n_outputs,
        })
    }

    /// Output shape, the resolved axis, and each input's extent along it.
    fn plan(&self, shapes: &[&[usize]]) -> OpResult<(Vec<usize>, usize, Vec<usize>)> {
        let first = shapes[0];
        let rank = first.len() + usize::from(self.add_axis);
        let axis = canonical_axis("axis", self.axis, rank)?;
        for (i, s) in shapes.iter().enumerate().skip(1) {
            let mismatch = if s.len() != first.len() {
                true
            } else if self.add_axis {
                *s != first
            } else {
                (0..first.len()).any(|d| d != axis && s[d] != first[d])
            };
            if mismatch {
                return Err(OpError::Shape(format!(
                    "Concat along axis {axis}{}: input 0 has shape {first:?}, input {i} has \
                     shape {s:?}",
                    if self.add_axis { " (add_axis)" } else { "" }
                )));
            }
        }
        let sizes: Vec<usize> = if self.add_axis {
            vec![1; shapes.len()]
        } else {
            shapes.iter().map(|s| s[axis]).collect()
        };
        let mut out = first.to_vec();
        if self.add_axis {
            out.insert(axis, shapes.len());
        } else {
            out[axis] = sizes.iter().sum();
        }
        Ok((out, axis, sizes))
    }

    fn split_info(&self, sizes: &[usize]) -> OpResult<Tensor> {
        let v = sizes
            .iter()
            .map(|&s| {
                i32::try_from(s)
                    .map_err(|_| OpError::Shape(format!("Concat input size {s} exceeds i32")))
            })
            .collect::<OpResult<Vec<i32>>>()?;
        Ok(Tensor::I32(
            ArrayD::from_shape_vec(IxDyn(&[v.len()]), v)
                .map_err(|e| OpError::Shape(format!("internal: {e}")))?,
        ))
    }
}

/// Concatenates row-major arrays: each is `[outer, size_i * inner]` and the result is
/// `[outer, sum(size_i) * inner]`.
fn concat_arrays<T: Clone>(
    xs: &[&ArrayD<T>],
    out_shape: &[usize],
    outer: usize,
    inner: usize,
    sizes: &[usize],
) -> OpResult<ArrayD<T>> {
    let total: usize = out_shape.iter().product();
    let slices: Vec<std::borrow::Cow<'_, [T]>> = xs
        .iter()
        .map(|a| match a.as_slice() {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(a.iter().cloned().collect()),
        })
        .collect();
    let mut out = Vec::with_capacity(total);
    for o in 0..outer {
        for (s, &size) in slices.iter().zip(sizes) {
            let chunk = size * inner;
            out.extend_from_slice(&s[o * chunk..(o + 1) * chunk]);
        }
    }
    ArrayD::from_shape_vec(IxDyn(out_shape), out)
        .map_err(|e| OpError::Shape(format!("internal: {e}")))
}

impl Op for Concat {
    fn op_type(&self) -> &str {
        &self.op_type
    }

    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        expect_inputs(inputs, 1, usize::MAX)?;
        for (i, x) in inputs.iter().enumerate().skip(1) {
            if x.dtype != inputs[0].dtype {
                return Err(OpError::DType(format!(
                    "Concat inputs must share one type: input 0 is {}, input {i} is {x}",
                    inputs[0]
                )));
            }
        }
        let shapes: Vec<&[usize]> = inputs.iter().map(|i| i.shape.as_slice()).collect();
        let (out, _, _) = self.plan(&shapes)?;
        let mut res = vec![TensorInfo::new(inputs[0].dtype, out)];
        if self.n_outputs == 2 {
            res.push(TensorInfo::new(crate::DType::I32, vec![inputs.len()]));
        }
        Ok(res)
    }

    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        let infos: Vec<TensorInfo> = inputs.iter().map(|t| t.info()).collect();
        self.infer(&infos)?;
        let shapes: Vec<&[usize]> = inputs.iter().map(|t| t.shape()).collect();
        let (out_shape, axis, sizes) = self.plan(&shapes)?;
        let first = inputs[0].shape();
        let outer: usize = first[..axis].iter().product();
        let inner: usize = if self.add_axis {
            first[axis..].iter().product()
        } else {
            first[axis + 1..].iter().product()
        };
        macro_rules! go {
            ($v:ident $(, $q:ident)?) => {{
                let xs = inputs
                    .iter()
                    .map(|t| match t {
                        Tensor::$v(a $(, $q)?) => Ok(a),
                        other => Err(OpError::DType(format!(
                            "Concat: unexpected {}",
                            other.dtype().name()
                        ))),
                    })
                    .collect::<OpResult<Vec<_>>>()?;
                concat_arrays(&xs, &out_shape, outer, inner, &sizes)?
            }};
        }
        let y = match inputs[0] {
            Tensor::F32(_) => Tensor::F32(go!(F32)),
            Tensor::F64(_) => Tensor::F64(go!(F64)),
            Tensor::I32(_) => Tensor::I32(go!(I32)),
            Tensor::I64(_) => Tensor::I64(go!(I64)),
            Tensor::U8(_) => Tensor::U8(go!(U8)),
            Tensor::I8(_) => Tensor::I8(go!(I8)),
            Tensor::U16(_) => Tensor::U16(go!(U16)),
            Tensor::I16(_) => Tensor::I16(go!(I16)),
            Tensor::Bool(_) => Tensor::Bool(go!(Bool)),
            Tensor::Str(_) => Tensor::Str(go!(Str)),
            Tensor::QU8(_, q) => Tensor::QU8(go!(QU8, _q), *q),
            Tensor::QI32(_, q) => Tensor::QI32(go!(QI32, _q), *q),
        };
        let mut res = vec![y];
        if self.n_outputs == 2 {
            res.push(self.split_info(&sizes)?);
        }
        Ok(res)
    }
}
