//! Flatten and Reshape (with the old_shape output).
//!
//! Both only change the shape, so they accept any element type.

use ndarray::{ArrayD, IxDyn};

use crate::{expect_inputs, DType, NodeSpec, Op, OpError, OpResult, Tensor, TensorInfo};

/// `Flatten`: Y = X viewed as `[prod(dims[..axis]), prod(dims[axis..])]`, `axis` in
/// `[0, ndim]` (default 1).
#[derive(Debug)]
pub struct Flatten {
    op_type: String,
    axis: usize,
}

impl Flatten {
    /// Builds the operator from its spec (`axis` >= 0, default 1).
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        spec.check_inputs(1, 1)?;
        spec.check_outputs(1, 1)?;
        Ok(Flatten {
            op_type: spec.op_type.clone(),
            axis: spec.args.usize_or("axis", 1)?,
        })
    }

    fn out_shape(&self, shape: &[usize]) -> OpResult<Vec<usize>> {
        if self.axis > shape.len() {
            return Err(OpError::BadArg {
                name: "axis".into(),
                msg: format!("Flatten axis {} exceeds the rank of X {shape:?}", self.axis),
            });
        }
        Ok(vec![
            shape[..self.axis].iter().product(),
            shape[self.axis..].iter().product(),
        ])
    }
}

impl Op for Flatten {
    fn op_type(&self) -> &str {
        &self.op_type
    }
    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        expect_inputs(inputs, 1, 1)?;
        Ok(vec![TensorInfo::new(
            inputs[0].dtype,
            self.out_shape(&inputs[0].shape)?,
        )])
    }
    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        expect_inputs(inputs, 1, 1)?;
        let s = self.out_shape(inputs[0].shape())?;
        Ok(vec![inputs[0].clone().reshaped(&s)?])
    }
}

/// Resolves a Caffe2 `Reshape` target against the input dims: a 0 at index `i` (for `i` below
/// the input's rank, and only when the input is non-empty) copies input dim `i`, and at most
/// one -1 is inferred from the element count. The result must hold exactly as many elements.
pub fn resolve_reshape(old: &[usize], new: &[i64]) -> OpResult<Vec<usize>> {
    let bad = |msg: String| OpError::BadArg {
        name: "shape".into(),
        msg,
    };
    let total: usize = old.iter().product();
    let mut dims: Vec<i64> = new.to_vec();
    if total != 0 {
        for (i, d) in dims.iter_mut().enumerate().take(old.len()) {
            if *d == 0 {
                *d = old[i] as i64;
            }
        }
    }
    let mut unknown = None;
    let mut known: usize = 1;
    for (i, &d) in dims.iter().enumerate() {
        if d == -1 {
            if unknown.is_some() {
                return Err(bad(format!("{new:?} has more than one -1")));
            }
            unknown = Some(i);
        } else if d < 0 {
            return Err(bad(format!("{new:?} has the invalid dim {d}")));
        } else {
            known = known
                .checked_mul(d as usize)
                .ok_or_else(|| bad(format!("{new:?} overflows")))?;
        }
    }
    if known == 0 && total != 0 {
        return Err(OpError::Shape(format!(
            "cannot reshape X {old:?} ({total} elements) to zero size {new:?}"
        )));
    }
    if let Some(u) = unknown {
        if known == 0 {
            return Err(bad(format!(
                "dim {u} of {new:?} can not be inferred since the shape contains a 0"
            )));
        }
        if !total.is_multiple_of(known) {
            return Err(OpError::Shape(format!(
                "cannot reshape X {old:?} ({total} elements) to {new:?}: {total} is not a \
                 multiple of {known}"
            )));
        }
        dims[u] = (total / known) as i64;
    } else if known != total {
        return Err(OpError::Shape(format!(
            "cannot reshape X {old:?} ({total} elements) to {new:?} ({known} elements)"
        )));
    }
    Ok(dims.into_iter().map(|d| d as usize).collect())
}

/// `Reshape`: Y = X with a new shape from the `shape` argument or from a second input (a 1-D
/// integer tensor; never both). The optional second output `old_shape` is an int64 1-D tensor
/// of X's dims. See [`resolve_reshape`] for the 0 and -1 rules.
///
/// With a shape input, `infer` needs the input's values: they are taken from `prepare` when
/// the input is a constant (an init_net parameter); `eval` always reads the actual input.
#[derive(Debug)]
pub struct Reshape {
    op_type: String,
    shape_arg: Option<Vec<i64>>,
    const_shape: Option<Vec<i64>>,
    with_old_shape: bool,
}

impl Reshape {
    /// Builds the operator from its spec (`shape` or a second input; 1 or 2 outputs).
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        spec.check_inputs(1, 2)?;
        spec.check_outputs(1, 2)?;
        let shape_arg = spec.args.ints("shape")?;
        match (spec.n_inputs, &shape_arg) {
            (2, Some(_)) => {
                return Err(OpError::BadArg {
                    name: "shape".into(),
                    msg: "the new shape comes from the second input; do not also pass `shape`"
                        .into(),
                })
            }
            (1, None) => {
                return Err(OpError::BadArg {
                    name: "shape".into(),
                    msg: "missing (and there is no second input giving the shape)".into(),
                })
            }
            _ => {}
        }
        Ok(Reshape {
            op_type: spec.op_type.clone(),
            shape_arg,
            const_shape: None,
            with_old_shape: spec.n_outputs == 2,
        })
    }

    fn shape_values(t: &Tensor) -> OpResult<Vec<i64>> {
        if t.shape().len() != 1 {
            return Err(OpError::Shape(format!(
                "Reshape shape input must be 1-D, got {:?}",
                t.shape()
            )));
        }
        t.to_i64_vec()
    }

    fn outputs(&self, x: &TensorInfo, new_shape: Vec<usize>) -> Vec<TensorInfo> {
        let mut out = vec![TensorInfo::new(x.dtype, new_shape)];
        if self.with_old_shape {
            out.push(TensorInfo::new(DType::I64, vec![x.shape.len()]));
        }
        out
    }
}

impl Op for Reshape {
    fn op_type(&self) -> &str {
        &self.op_type
    }

    fn prepare(&mut self, constants: &[Option<&Tensor>]) -> OpResult<()> {
        self.const_shape = match constants.get(1) {
            Some(Some(t)) if self.shape_arg.is_none() => Some(Self::shape_values(t)?),
            _ => None,
        };
        Ok(())
    }

    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        expect_inputs(inputs, 1, 2)?;
        let target = match (&self.shape_arg, inputs.get(1)) {
            (Some(s), None) => s,
            (None, Some(si)) => {
                if si.shape.len() != 1 || !matches!(si.dtype, DType::I32 | DType::I64) {
                    return Err(OpError::Shape(format!(
                        "Reshape shape input must be a 1-D i32/i64 tensor, got {si}"
                    )));
                }
                self.const_shape.as_ref().ok_or_else(|| {
                    OpError::Unsupported(
                        "Reshape's shape input is not a constant, so its output shape is \
                         only known at run time"
                            .into(),
                    )
                })?
            }
            _ => {
                return Err(OpError::Arity(format!(
                    "Reshape: {} inputs do not fit how the node was built",
                    inputs.len()
                )))
            }
        };
        let new_shape = resolve_reshape(&inputs[0].shape, target)?;
        Ok(self.outputs(&inputs[0], new_shape))
    }

    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        expect_inputs(inputs, 1, 2)?;
        let x = inputs[0];
        let target = match (&self.shape_arg, inputs.get(1)) {
            (Some(s), None) => s.clone(),
            (None, Some(t)) => Self::shape_values(t)?,
            _ => {
                return Err(OpError::Arity(format!(
                    "Reshape: {} inputs do not fit how the node was built",
                    inputs.len()
                )))
            }
        };
        let new_shape = resolve_reshape(x.shape(), &target)?;
        let old: Vec<i64> = x.shape().iter().map(|&d| d as i64).collect();
        let mut out = vec![x.clone().reshaped(&new_shape)?];
        if self.with_old_shape {
            let n = old.len();
            out.push(Tensor::I64(
                ArrayD::from_shape_vec(IxDyn(&[n]), old)
                    .map_err(|e| OpError::Shape(format!("internal: {e}")))?,
            ));
        }
        Ok(out)
    }
}
