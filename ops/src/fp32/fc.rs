//! FC (fully connected, Y = X·Wᵀ + b) and FCTransposed (Y = X·W + b) via GEMM.
//!
//! X is viewed as `[M, K]` with `M = Π X.dims[..axis]`; FC's W as `[N, K]` with
//! `N = Π W.dims[..axis_w]`, FCTransposed's W as `[K, N]` with `K = Π W.dims[..axis_w]`.
//! Y has shape `X.dims[..axis] + [N]`. Negative axes count from the end. The GEMM is split
//! over rows/columns of Y only, so results do not depend on the thread count.

use crate::kernels::gemm::{prepacking_pays, sgemm_par, Bias, Epilogue, Lhs, MatRef, PackedLhs};
use crate::{expect_inputs, DType, NodeSpec, Op, OpError, OpResult, Tensor, TensorInfo};

/// `FC` / `FCTransposed` operator (fp32).
#[derive(Debug)]
pub struct Fc {
    op_type: String,
    transposed: bool,
    axis: i64,
    axis_w: i64,
    /// Constant W viewed as `[N, K]` and packed by `prepare`, with the W shape it came from.
    packed_w: Option<(Vec<usize>, PackedLhs)>,
}

/// Resolved sizes of one call.
#[derive(Debug, Clone, Copy)]
struct FcDims {
    m: usize,
    k: usize,
    n: usize,
}

/// Caffe2 `canonical_axis_index`: `axis` in `[-rank, rank)`.
fn canonical(name: &str, axis: i64, rank: usize, shape: &[usize]) -> OpResult<usize> {
    let r = rank as i64;
    if axis < -r || axis >= r {
        return Err(OpError::BadArg {
            name: name.to_string(),
            msg: format!("{axis} is out of range for a tensor of shape {shape:?}"),
        });
    }
    Ok(if axis < 0 {
        (axis + r) as usize
    } else {
        axis as usize
    })
}

impl Fc {
    /// Builds the operator from its spec (`FC` or `FCTransposed`, 3 inputs).
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        spec.check_inputs(3, 3)?;
        spec.check_outputs(1, 1)?;
        Ok(Fc {
            op_type: spec.op_type.clone(),
            transposed: spec.op_type == "FCTransposed",
            axis: spec.args.int_or("axis", 1)?,
            axis_w: spec.args.int_or("axis_w", 1)?,
            packed_w: None,
        })
    }

    fn resolve(&self, x: &[usize], w: &[usize], b: &[usize]) -> OpResult<(FcDims, Vec<usize>)> {
        let ax = canonical("axis", self.axis, x.len(), x)?;
        let aw = canonical("axis_w", self.axis_w, w.len(), w)?;
        let prod = |dims: &[usize], what: &str, shape: &[usize]| {
            dims.iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| {
                    OpError::Shape(format!(
                        "{}: {what} {shape:?} has too many elements",
                        self.op_type
                    ))
                })
        };
        let m = prod(&x[..ax], "X", x)?;
        let k = prod(&x[ax..], "X", x)?;
        let head = prod(&w[..aw], "W", w)?;
        let tail = prod(&w[aw..], "W", w)?;
        let (n, wk) = if self.transposed {
            (tail, head)
        } else {
            (head, tail)
        };
        if k != wk {
            return Err(OpError::Shape(format!(
                "{}: X {x:?} (axis {}) gives K = {k}, but W {w:?} (axis_w {}) gives K = {wk}",
                self.op_type, self.axis, self.axis_w
            )));
        }
        if b.len() != 1 || b[0] != n {
            return Err(OpError::Shape(format!(
                "{}: bias {b:?} must be [{n}] for W {w:?} (axis_w {})",
                self.op_type, self.axis_w
            )));
        }
        let mut out = x[..ax].to_vec();
        out.push(n);
        Ok((FcDims { m, k, n }, out))
    }
}

impl Op for Fc {
    fn op_type(&self) -> &str {
        &self.op_type
    }

    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        expect_inputs(inputs, 3, 3)?;
        for (t, what) in inputs.iter().zip(["X", "W", "b"]) {
            if t.dtype != DType::F32 {
                return Err(OpError::DType(format!(
                    "{}: {what} must be f32, got {t}",
                    self.op_type
                )));
            }
        }
        let (_, out) = self.resolve(&inputs[0].shape, &inputs[1].shape, &inputs[2].shape)?;
        Ok(vec![TensorInfo::f32(out)])
    }

    fn prepare(&mut self, constants: &[Option<&Tensor>]) -> OpResult<()> {
        self.packed_w = None;
        let Some(Some(w)) = constants.get(1) else {
            return Ok(());
        };
        let Ok(ws) = w.f32_slice() else {
            return Ok(()); // eval reports the type error
        };
        if !prepacking_pays() {
            return Ok(());
        }
        let shape = w.shape();
        let Ok(aw) = canonical("axis_w", self.axis_w, shape.len(), shape) else {
            return Ok(()); // eval reports the argument error
        };
        let head: usize = shape[..aw].iter().product();
        let tail: usize = shape[aw..].iter().product();
        let w_nk = if self.transposed {
            MatRef::row_major(ws, head, tail, tail).t()
        } else {
            MatRef::row_major(ws, head, tail, tail)
        };
        self.packed_w = Some((shape.to_vec(), PackedLhs::pack(w_nk)));
        Ok(())
    }

    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        expect_inputs(inputs, 3, 3)?;
        let mut s = [&[][..]; 3];
        for (i, what) in ["X", "W", "b"].iter().enumerate() {
            s[i] = inputs[i]
                .f32_slice()
                .map_err(|e| OpError::DType(format!("{}: {what}: {e}", self.op_type)))?;
        }
        let (d, out_shape) =
            self.resolve(inputs[0].shape(), inputs[1].shape(), inputs[2].shape())?;
        let mut y = vec![0.0f32; d.m * d.n];
        if !y.is_empty() && prepacking_pays() {
            // Yᵀ = W[N,K] · Xᵀ, so the weights are the packed operand; then transpose.
            let w_nk: Lhs = match &self.packed_w {
                Some((shape, p)) if shape.as_slice() == inputs[1].shape() => p.into(),
                _ if self.transposed => MatRef::row_major(s[1], d.k, d.n, d.n).t().into(),
                _ => MatRef::row_major(s[1], d.n, d.k, d.k).into(),
            };
            let xt = MatRef::row_major(s[0], d.m, d.k, d.k).t();
            let ep = Epilogue {
                bias: Bias::PerRow(s[2]),
                relu: false,
            };
            if d.m == 1 {
                sgemm_par(w_nk, xt, &mut y, 1, &ep);
            } else {
                let mut yt = vec![0.0f32; d.n * d.m];
                sgemm_par(w_nk, xt, &mut yt, d.m, &ep);
                for (j, col) in yt.chunks(d.m).enumerate() {
                    for (i, &v) in col.iter().enumerate() {
                        y[i * d.n + j] = v;
                    }
                }
            }
        } else if !y.is_empty() {
            let a = MatRef::row_major(s[0], d.m, d.k, d.k);
            let b = if self.transposed {
                MatRef::row_major(s[1], d.k, d.n, d.n)
            } else {
                MatRef::row_major(s[1], d.n, d.k, d.k).t()
            };
            let ep = Epilogue {
                bias: Bias::PerCol(s[2]),
                relu: false,
            };
            sgemm_par(a.into(), b, &mut y, d.n, &ep);
        }
        Ok(vec![Tensor::try_f32(&out_shape, y)?])
    }
}
