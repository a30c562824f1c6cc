//! Transpose, NCHW2NHWC / NHWC2NCHW, ChannelShuffle.
//!
//! All three only move elements, so they accept any element type (Int8 parameters included).

use super::batch_norm::Order;
use crate::{expect_inputs, NodeSpec, Op, OpError, OpResult, Tensor, TensorInfo};

/// Checks that `axes` is a permutation of `0..ndim`.
fn check_permutation(axes: &[usize], ndim: usize, shape: &[usize]) -> OpResult<()> {
    if axes.len() != ndim {
        return Err(OpError::BadArg {
            name: "axes".into(),
            msg: format!(
                "{axes:?} has {} entries but X {shape:?} has rank {ndim}",
                axes.len()
            ),
        });
    }
    let mut seen = vec![false; ndim];
    for &a in axes {
        if a >= ndim || seen[a] {
            return Err(OpError::BadArg {
                name: "axes".into(),
                msg: format!("{axes:?} is not a permutation of 0..{ndim}"),
            });
        }
        seen[a] = true;
    }
    Ok(())
}

/// Swaps the two middle axes of a row-major `[batch, rows, cols, inner]` buffer into
/// `[batch, cols, rows, inner]`. With `inner == 1` it works in square tiles so that both the
/// reads and the writes stay within a few cache lines.
fn swap_middle<T: Clone>(
    src: &[T],
    batch: usize,
    rows: usize,
    cols: usize,
    inner: usize,
) -> Vec<T> {
    const TILE: usize = 32;
    let plane = rows * cols * inner;
    let mut out: Vec<T> = Vec::with_capacity(src.len());
    if inner == 1 && rows <= 8 {
        // Few rows (an image's colour planes into pixels): one pass writing the output in
        // order, reading `rows` sequential streams.
        for b in 0..batch {
            let s = &src[b * plane..(b + 1) * plane];
            let planes: Vec<&[T]> = s.chunks_exact(cols).collect();
            for c in 0..cols {
                out.extend(planes.iter().map(|p| p[c].clone()));
            }
        }
    } else if inner == 1 {
        // The tiled loop writes out of order, so start from a copy of the source (same
        // length) and overwrite every element.
        out.extend_from_slice(src);
        for b in 0..batch {
            let s = &src[b * plane..(b + 1) * plane];
            let d = &mut out[b * plane..(b + 1) * plane];
            for r0 in (0..rows).step_by(TILE) {
                for c0 in (0..cols).step_by(TILE) {
                    for r in r0..(r0 + TILE).min(rows) {
                        for c in c0..(c0 + TILE).min(cols) {
                            d[c * rows + r] = s[r * cols + c].clone();
                        }
                    }
                }
            }
        }
    } else {
        for b in 0..batch {
            let s = &src[b * plane..(b + 1) * plane];
            for c in 0..cols {
                for r in 0..rows {
                    let at = (r * cols + c) * inner;
                    out.extend_from_slice(&s[at..at + inner]);
                }
            }
        }
    }
    out
}

/// [`swap_middle`] on a tensor of any element type; the result gets `out_shape`.
fn swap_middle_tensor(
    x: &Tensor,
    batch: usize,
    rows: usize,
    cols: usize,
    inner: usize,
    out_shape: &[usize],
) -> OpResult<Tensor> {
    fn go<T: Clone>(
        a: &ndarray::ArrayD<T>,
        dims: [usize; 4],
        out_shape: &[usize],
    ) -> OpResult<ndarray::ArrayD<T>> {
        let src = match a.as_slice() {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(a.iter().cloned().collect::<Vec<T>>()),
        };
        let v = swap_middle(&src, dims[0], dims[1], dims[2], dims[3]);
        ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(out_shape), v)
            .map_err(|e| OpError::Shape(format!("internal: {e}")))
    }
    let d = [batch, rows, cols, inner];
    if batch * rows * cols * inner != x.len() {
        return Err(OpError::Shape(format!(
            "internal: {batch}x{rows}x{cols}x{inner} does not cover {:?}",
            x.shape()
        )));
    }
    Ok(match x {
        Tensor::F32(a) => Tensor::F32(go(a, d, out_shape)?),
        Tensor::F64(a) => Tensor::F64(go(a, d, out_shape)?),
        Tensor::I32(a) => Tensor::I32(go(a, d, out_shape)?),
        Tensor::I64(a) => Tensor::I64(go(a, d, out_shape)?),
        Tensor::U8(a) => Tensor::U8(go(a, d, out_shape)?),
        Tensor::I8(a) => Tensor::I8(go(a, d, out_shape)?),
        Tensor::U16(a) => Tensor::U16(go(a, d, out_shape)?),
        Tensor::I16(a) => Tensor::I16(go(a, d, out_shape)?),
        Tensor::Bool(a) => Tensor::Bool(go(a, d, out_shape)?),
        Tensor::Str(a) => Tensor::Str(go(a, d, out_shape)?),
        Tensor::QU8(a, q) => Tensor::QU8(go(a, d, out_shape)?, *q),
        Tensor::QI32(a, q) => Tensor::QI32(go(a, d, out_shape)?, *q),
    })
}

/// `Transpose`: Y = X with axes permuted (`axes`; absent or empty reverses all dims).
#[derive(Debug)]
pub struct Transpose {
    op_type: String,
    axes: Vec<usize>,
}

impl Transpose {
    /// Builds the operator from its spec (`axes`).
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        spec.check_inputs(1, 1)?;
        spec.check_outputs(1, 1)?;
        let axes = spec
            .args
            .ints("axes")?
            .unwrap_or_default()
            .into_iter()
            .map(|a| {
                usize::try_from(a).map_err(|_| OpError::BadArg {
                    name: "axes".into(),
                    msg: format!("negative axis {a}"),
                })
            })
            .collect::<OpResult<Vec<usize>>>()?;
        Ok(Transpose {
            op_type: spec.op_type.clone(),
            axes,
        })
    }

    fn axes_for(&self, shape: &[usize]) -> OpResult<Vec<usize>> {
        let n = shape.len();
        if self.axes.is_empty() {
            return Ok((0..n).rev().collect());
        }
        check_permutation(&self.axes, n, shape)?;
        Ok(self.axes.clone())
    }
}

impl Op for Transpose {
    fn op_type(&self) -> &str {
        &self.op_type
    }
    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        expect_inputs(inputs, 1, 1)?;
        let axes = self.axes_for(&inputs[0].shape)?;
        let shape = axes.iter().map(|&a| inputs[0].shape[a]).collect::<Vec<_>>();
        Ok(vec![TensorInfo::new(inputs[0].dtype, shape)])
    }
    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        expect_inputs(inputs, 1, 1)?;
        let axes = self.axes_for(inputs[0].shape())?;
        Ok(vec![inputs[0].permuted(&axes)?])
    }
}

/// `NCHW2NHWC` / `NHWC2NCHW`: moves the channel axis from 1 to last or back.
///
/// Caffe2 2018 requires 4-D input; this also accepts any rank >= 3 (as newer Caffe2 does),
/// treating the dims between batch and channel as spatial.
#[derive(Debug)]
pub struct OrderSwitch {
    op_type: String,
    to_nhwc: bool,
}

impl OrderSwitch {
    /// Builds the operator from its spec; the direction comes from the op type.
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        spec.check_inputs(1, 1)?;
        spec.check_outputs(1, 1)?;
        let to_nhwc = match spec.op_type.as_str() {
            "NCHW2NHWC" => true,
            "NHWC2NCHW" => false,
            other => {
                return Err(OpError::Unsupported(format!(
                    "{other} is not NCHW2NHWC or NHWC2NCHW"
                )))
            }
        };
        Ok(OrderSwitch {
            op_type: spec.op_type.clone(),
            to_nhwc,
        })
    }

    fn perm(&self, shape: &[usize]) -> OpResult<Vec<usize>> {
        let n = shape.len();
        if n < 3 {
            return Err(OpError::Shape(format!(
                "{} needs an input of rank >= 3 (usually 4-D), got {shape:?}",
                self.op_type
            )));
        }
        Ok(if self.to_nhwc {
            std::iter::once(0)
                .chain(2..n)
                .chain(std::iter::once(1))
                .collect()
        } else {
            std::iter::once(0)
                .chain(std::iter::once(n - 1))
                .chain(1..n - 1)
                .collect()
        })
    }
}

impl Op for OrderSwitch {
    fn op_type(&self) -> &str {
        &self.op_type
    }
    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        expect_inputs(inputs, 1, 1)?;
        let p = self.perm(&inputs[0].shape)?;
        let shape = p.iter().map(|&a| inputs[0].shape[a]).collect::<Vec<_>>();
        Ok(vec![TensorInfo::new(inputs[0].dtype, shape)])
    }
    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        expect_inputs(inputs, 1, 1)?;
        let x = inputs[0];
        let shape = x.shape();
        let p = self.perm(shape)?;
        let out_shape: Vec<usize> = p.iter().map(|&a| shape[a]).collect();
        let n = shape.len();
        let (c, spatial) = if self.to_nhwc {
            (shape[1], shape[2..].iter().product::<usize>())
        } else {
            (shape[n - 1], shape[1..n - 1].iter().product::<usize>())
        };
        // NCHW -> NHWC swaps [C, HW] per image; NHWC -> NCHW swaps [HW, C].
        let (rows, cols) = if self.to_nhwc {
            (c, spatial)
        } else {
            (spatial, c)
        };
        Ok(vec![swap_middle_tensor(
            x, shape[0], rows, cols, 1, &out_shape,
        )?])
    }
}

/// `ChannelShuffle`: with C = G·K channels, output channel `k·G + g` takes input channel
/// `g·K + k`. `group` (G, default 1) and `order` (NCHW: channel axis 1; NHWC: last axis).
#[derive(Debug)]
pub struct ChannelShuffle {
    op_type: String,
    group: usize,
    order: Order,
}

impl ChannelShuffle {
    /// Builds the operator from its spec (`group` >= 1, `order`).
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        spec.check_inputs(1, 1)?;
        spec.check_outputs(1, 1)?;
        let group = spec.args.int_or("group", 1)?;
        if group < 1 {
            return Err(OpError::BadArg {
                name: "group".into(),
                msg: format!("must be >= 1, got {group}"),
            });
        }
        Ok(ChannelShuffle {
            op_type: spec.op_type.clone(),
            group: group as usize,
            order: Order::from_args(&spec.args)?,
        })
    }

    /// Channel count after checking the shape.
    fn channels(&self, shape: &[usize]) -> OpResult<usize> {
        if shape.len() < 2 {
            return Err(OpError::Shape(format!(
                "ChannelShuffle needs an input of rank >= 2, got {shape:?}"
            )));
        }
        let c = shape[self.order.channel_axis(shape.len())];
        if !c.is_multiple_of(self.group) {
            return Err(OpError::Shape(format!(
                "ChannelShuffle: {c} channels of X {shape:?} are not divisible by group {}",
                self.group
            )));
        }
        Ok(c)
    }
}

impl Op for ChannelShuffle {
    fn op_type(&self) -> &str {
        &self.op_type
    }
    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        expect_inputs(inputs, 1, 1)?;
        self.channels(&inputs[0].shape)?;
        Ok(vec![inputs[0].clone()])
    }
    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        expect_inputs(inputs, 1, 1)?;
        let x = inputs[0];
        let shape = x.shape().to_vec();
        let c = self.channels(&shape)?;
        let (g, k) = (self.group, c / self.group);
        // Channels viewed as [G, K] become [K, G]: NCHW per image with HW-sized runs,
        // NHWC per pixel with single elements.
        let y = match self.order {
            Order::Nchw => {
                let inner: usize = shape[2..].iter().product();
                swap_middle_tensor(x, shape[0], g, k, inner, &shape)?
            }
            Order::Nhwc => {
                let outer: usize = shape[..shape.len() - 1].iter().product();
                swap_middle_tensor(x, outer, g, k, 1, &shape)?
            }
        };
        Ok(vec![y])
    }
}
