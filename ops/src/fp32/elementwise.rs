//! Sum of n inputs, and Add/Sub/Mul/Div with legacy and numpy broadcasting.
//!
//! Element types: f32, f64, i32 and i64 (Caffe2's numeric types for these ops); all inputs of
//! one node must share the type, and the output has it too. Integer arithmetic wraps on
//! overflow like the C++ code, and integer division truncates toward zero; an integer
//! division by zero is an error instead of a crash.
//!
//! Broadcasting of `Add`/`Sub`/`Mul`/`Div`:
//! - `broadcast = 1` (legacy Caffe2 form): B's leading and trailing size-1 dims are ignored;
//!   the remaining dims must equal A's dims starting at `axis + (number of leading ones)`,
//!   where `axis` defaults to `A.ndim - B.ndim` (a suffix match) and must lie in
//!   `[0, A.ndim - B.ndim]`. `axis_str` (one letter of `order`, e.g. `"C"` with `NCHW`) may
//!   replace `axis`. The output has A's shape.
//! - `broadcast = 0`: numpy-style multidirectional broadcasting (shapes aligned at the right,
//!   each dim equal or 1), as in newer Caffe2 (the 2018 code required equal shapes, which is
//!   a special case).

use ndarray::{ArrayD, IxDyn};

use crate::{expect_inputs, DType, NodeSpec, Op, OpError, OpResult, Tensor, TensorInfo};

/// Arithmetic of the element types the element-wise ops accept.
trait Arith: Copy + PartialEq + std::fmt::Debug {
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    /// Division; integer callers have checked that the divisor is not zero.
    fn div(self, o: Self) -> Self;
    /// True for an integer zero (a divisor that would trap).
    fn is_int_zero(self) -> bool;
}

macro_rules! float_arith {
    ($t:ty) => {
        impl Arith for $t {
            #[inline(always)]
            fn add(self, o: Self) -> Self {
                self + o
            }
            #[inline(always)]
            fn sub(self, o: Self) -> Self {
                self - o
            }
            #[inline(always)]
            fn mul(self, o: Self) -> Self {
                self * o
            }
            #[inline(always)]
            fn div(self, o: Self) -> Self {
                self / o
            }
            fn is_int_zero(self) -> bool {
                false
            }
        }
    };
}

macro_rules! int_arith {
    ($t:ty) => {
        impl Arith for $t {
            #[inline(always)]
            fn add(self, o: Self) -> Self {
                self.wrapping_add(o)
            }
            #[inline(always)]
            fn sub(self, o: Self) -> Self {
                self.wrapping_sub(o)
            }
            #[inline(always)]
            fn mul(self, o: Self) -> Self {
                self.wrapping_mul(o)
            }
            #[inline(always)]
            fn div(self, o: Self) -> Self {
                if o == 0 {
                    0
                } else {
                    self.wrapping_div(o)
                }
            }
            fn is_int_zero(self) -> bool {
                self == 0
            }
        }
    };
}

float_arith!(f32);
float_arith!(f64);
int_arith!(i32);
int_arith!(i64);

fn is_numeric(d: DType) -> bool {
    matches!(d, DType::F32 | DType::F64 | DType::I32 | DType::I64)
}

fn std_slice<T: Clone>(a: &ArrayD<T>) -> std::borrow::Cow<'_, [T]> {
    match a.as_slice() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(a.iter().cloned().collect()),
    }
}

fn to_array<T>(shape: &[usize], v: Vec<T>) -> OpResult<ArrayD<T>> {
    ArrayD::from_shape_vec(IxDyn(shape), v).map_err(|e| OpError::Shape(format!("internal: {e}")))
}

// ---------------------------------------------------------------------------------------
// Sum

/// `Sum`: element-wise sum of one or more inputs of identical shape and type (no broadcast).
#[derive(Debug)]
pub struct Sum {
    op_type: String,
    /// `SumRelu`: max(0, ·) applied to the sum (f32 and f64 only).
    relu: bool,
}

impl Sum {
    /// Builds the operator from its spec (at least one input, one output).
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        spec.check_inputs(1, usize::MAX)?;
        spec.check_outputs(1, 1)?;
        Ok(Sum {
            op_type: spec.op_type.clone(),
            relu: spec.op_type == "SumRelu",
        })
    }
}

fn sum_arrays<T: Arith>(xs: &[&ArrayD<T>]) -> OpResult<ArrayD<T>> {
    let shape = xs[0].shape().to_vec();
    let first = std_slice(xs[0]);
    let mut acc: Vec<T> = match xs.get(1) {
        // Y = X0 + X1 in one pass, then accumulate the rest in order.
        Some(x1) => first
            .iter()
            .zip(std_slice(x1).iter())
            .map(|(&a, &b)| a.add(b))
            .collect(),
        None => first.into_owned(),
    };
    for x in xs.iter().skip(2) {
        let s = std_slice(x);
        for (a, &b) in acc.iter_mut().zip(s.iter()) {
            *a = a.add(b);
        }
    }
    to_array(&shape, acc)
}

impl Op for Sum {
    fn op_type(&self) -> &str {
        &self.op_type
    }

    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        expect_inputs(inputs, 1, usize::MAX)?;
        let first = &inputs[0];
        if !is_numeric(first.dtype) {
            return Err(OpError::DType(format!(
                "Sum supports f32, f64, i32, i64; input 0 is {first}"
            )));
        }
        for (i, x) in inputs.iter().enumerate().skip(1) {
            if x.dtype != first.dtype {
                return Err(OpError::DType(format!(
                    "Sum inputs must share one type: input 0 is {first}, input {i} is {x}"
                )));
            }
            if x.shape != first.shape {
                return Err(OpError::Shape(format!(
                    "Sum inputs must have identical shapes: input 0 is {:?}, input {i} is {:?}",
                    first.shape, x.shape
                )));
            }
        }
        Ok(vec![first.clone()])
    }

    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        let infos: Vec<TensorInfo> = inputs.iter().map(|t| t.info()).collect();
        self.infer(&infos)?;
        macro_rules! go {
            ($v:ident) => {{
                let xs: Vec<&ArrayD<_>> = inputs
                    .iter()
                    .map(|t| match t {
                        Tensor::$v(a) => Ok(a),
                        other => Err(OpError::DType(format!(
                            "Sum: unexpected {}",
                            other.dtype().name()
                        ))),
                    })
                    .collect::<OpResult<_>>()?;
                Tensor::$v(sum_arrays(&xs)?)
            }};
        }
        let mut y = match inputs[0] {
            Tensor::F32(_) => go!(F32),
            Tensor::F64(_) => go!(F64),
            Tensor::I32(_) => go!(I32),
            Tensor::I64(_) => go!(I64),
            other => {
                return Err(OpError::DType(format!(
                    "Sum: unsupported {}",
                    other.dtype().name()
                )))
            }
        };
        if self.relu {
            match &mut y {
                Tensor::F32(a) => a.mapv_inplace(|v| v.max(0.0)),
                Tensor::F64(a) => a.mapv_inplace(|v| v.max(0.0)),
                other => {
                    return Err(OpError::DType(format!(
                        "SumRelu: unsupported {}",
                        other.dtype().name()
                    )))
                }
            }
        }
        Ok(vec![y])
    }
}

// ---------------------------------------------------------------------------------------
// Broadcasting

/// Numpy-style broadcast of two shapes (aligned at the right, each dim equal or 1).
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> OpResult<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0usize; r];
    for i in 0..r {
        let da = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let db = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(OpError::Shape(format!(
                "cannot broadcast A {a:?} with B {b:?} (dim {da} vs {db})"
            )));
        };
    }
    Ok(out)
}

/// Legacy (`broadcast = 1`) alignment of B against A: B's shape padded with ones to A's rank
/// so that plain broadcasting then applies. `axis = -1` means `A.ndim - B.ndim`.
pub fn legacy_broadcast_shape(a: &[usize], b: &[usize], axis: i64) -> OpResult<Vec<usize>> {
    if b.len() > a.len() {
        return Err(OpError::Shape(format!(
            "broadcast=1 needs B of rank <= A's: A {a:?}, B {b:?}"
        )));
    }
    let max_axis = (a.len() - b.len()) as i64;
    let axis = if axis == -1 { max_axis } else { axis };
    if axis < 0 || axis > max_axis {
        return Err(OpError::BadArg {
            name: "axis".into(),
            msg: format!(
                "broadcast axis must be in [0, {max_axis}] for A {a:?}, B {b:?}, got {axis}"
            ),
        });
    }
    let axis = axis as usize;
    let start = b.iter().take_while(|&&d| d == 1).count();
    let end = b.len() - b[start..].iter().rev().take_while(|&&d| d == 1).count();
    let mut padded = vec![1usize; a.len()];
    for i in start..end {
        if a[i + axis] != b[i] {
            return Err(OpError::Shape(format!(
                "broadcast dimension mismatch: A {a:?}, B {b:?}, axis {axis}: \
                 A dim {} is {} but B dim {i} is {}",
                i + axis,
                a[i + axis],
                b[i]
            )));
        }
        padded[i + axis] = b[i];
    }
    Ok(padded)
}

/// One loop dimension after dropping size-1 dims and merging neighbours that broadcast alike.
#[derive(Debug, Clone, Copy)]
struct LoopDim {
    n: usize,
    a_stride: usize,
    b_stride: usize,
}

/// Loop plan for `out = f(a, b)` where `a_shape`/`b_shape` have `out_shape`'s rank and each of
/// their dims equals the output's or is 1.
fn plan(a_shape: &[usize], b_shape: &[usize], out_shape: &[usize]) -> Vec<LoopDim> {
    // (n, a broadcast, b broadcast) for every output dim larger than 1, merged.
    let mut dims: Vec<(usize, bool, bool)> = Vec::new();
    for i in 0..out_shape.len() {
        let n = out_shape[i];
        if n == 1 {
            continue;
        }
        let flags = (a_shape[i] == 1, b_shape[i] == 1);
        match dims.last_mut() {
            Some(last) if (last.1, last.2) == flags => last.0 *= n,
            _ => dims.push((n, flags.0, flags.1)),
        }
    }
    let mut out = vec![
        LoopDim {
            n: 0,
            a_stride: 0,
            b_stride: 0
        };
        dims.len()
    ];
    let (mut sa, mut sb) = (1usize, 1usize);
    for (k, &(n, ab, bb)) in dims.iter().enumerate().rev() {
        out[k] = LoopDim {
            n,
            a_stride: if ab { 0 } else { sa },
            b_stride: if bb { 0 } else { sb },
        };
        if !ab {
            sa *= n;
        }
        if !bb {
            sb *= n;
        }
    }
    out
}

/// Applies `f` element-wise with broadcasting. `a_shape`, `b_shape` have the rank of
/// `out_shape`; their dims are the output's or 1.
fn broadcast_apply<T: Copy>(
    a: &[T],
    a_shape: &[usize],
    b: &[T],
    b_shape: &[usize],
    out_shape: &[usize],
    f: impl Fn(T, T) -> T,
) -> Vec<T> {
    let total: usize = out_shape.iter().product();
    if total == 0 {
        return Vec::new();
    }
    let dims = plan(a_shape, b_shape, out_shape);
    let Some((inner, outer)) = dims.split_last() else {
        return vec![f(a[0], b[0])];
    };
    let mut out = Vec::with_capacity(total);
    let mut idx = vec![0usize; outer.len()];
    let (mut ao, mut bo) = (0usize, 0usize);
    let n = inner.n;
    loop {
        match (inner.a_stride, inner.b_stride) {
            (0, _) => {
                let av = a[ao];
                out.extend(b[bo..bo + n].iter().map(|&bv| f(av, bv)));
            }
            (_, 0) => {
                let bv = b[bo];
                out.extend(a[ao..ao + n].iter().map(|&av| f(av, bv)));
            }
            _ => {
                out.extend(
                    a[ao..ao + n]
                        .iter()
                        .zip(&b[bo..bo + n])
                        .map(|(&av, &bv)| f(av, bv)),
                );
            }
        }
        // Odometer over the outer dims.
        let mut k = outer.len();
        loop {
            if k == 0 {
                return out;
            }
            k -= 1;
            idx[k] += 1;
            ao += outer[k].a_stride;
            bo += outer[k].b_stride;
            if idx[k] < outer[k].n {
                break;
            }
            ao -= outer[k].a_stride * outer[k].n;
            bo -= outer[k].b_stride * outer[k].n;
            idx[k] = 0;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Add / Sub / Mul / Div

/// Which arithmetic a [`Binary`] node performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryKind {
    /// A + B.
    Add,
    /// A - B.
    Sub,
    /// A * B.
    Mul,
    /// A / B.
    Div,
}

/// `Add`, `Sub`, `Mul`, `Div` with Caffe2's broadcasting rules (see the module docs).
#[derive(Debug)]
pub struct Binary {
    op_type: String,
    kind: BinaryKind,
    legacy: bool,
    axis: i64,
}

impl Binary {
    /// Builds the operator from its spec (`broadcast` 0/1, `axis` default -1, `axis_str` +
    /// `order`).
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        spec.check_inputs(2, 2)?;
        spec.check_outputs(1, 1)?;
        let kind = match spec.op_type.as_str() {
            "Add" => BinaryKind::Add,
            "Sub" => BinaryKind::Sub,
            "Mul" => BinaryKind::Mul,
            "Div" => BinaryKind::Div,
            other => {
                return Err(OpError::Unsupported(format!(
                    "{other} is not an element-wise binary op"
                )))
            }
        };
        let legacy = match spec.args.int_or("broadcast", 0)? {
            0 => false,
            1 => true,
            v => {
                return Err(OpError::BadArg {
                    name: "broadcast".into(),
                    msg: format!("must be 0 or 1, got {v}"),
                })
            }
        };
        let mut axis = spec.args.int_or("axis", -1)?;
        if let Some(s) = spec.args.string("axis_str")? {
            if spec.args.has("axis") {
                return Err(OpError::BadArg {
                    name: "axis_str".into(),
                    msg: "`axis` and `axis_str` cannot be used together".into(),
                });
            }
            let order = spec.args.string_or("order", "NCHW")?;
            let pos = if s.len() == 1 { order.find(&s) } else { None };
            axis = match pos {
                Some(p) => p as i64,
                None => {
                    return Err(OpError::BadArg {
                        name: "axis_str".into(),
                        msg: format!("{s:?} is not one letter of order {order:?}"),
                    })
                }
            };
        }
        if legacy && axis < -1 {
            return Err(OpError::BadArg {
                name: "axis".into(),
                msg: format!("must be -1 or >= 0 with broadcast=1, got {axis}"),
            });
        }
        Ok(Binary {
            op_type: spec.op_type.clone(),
            kind,
            legacy,
            axis,
        })
    }

    /// The arithmetic performed.
    pub fn kind(&self) -> BinaryKind {
        self.kind
    }

    /// Output shape and B's shape padded to the output's rank; A's padded shape is
    /// returned too.
    fn shapes(&self, a: &[usize], b: &[usize]) -> OpResult<(Vec<usize>, Vec<usize>, Vec<usize>)> {
        if self.legacy {
            let bp = legacy_broadcast_shape(a, b, self.axis)?;
            Ok((a.to_vec(), a.to_vec(), bp))
        } else {
            let out = broadcast_shapes(a, b)?;
            let pad = |s: &[usize]| {
                let mut p = vec![1usize; out.len() - s.len()];
                p.extend_from_slice(s);
                p
            };
            Ok((out.clone(), pad(a), pad(b)))
        }
    }

    fn run<T: Arith>(&self, a: &ArrayD<T>, b: &ArrayD<T>) -> OpResult<ArrayD<T>> {
        let (out, ap, bp) = self.shapes(a.shape(), b.shape())?;
        let (av, bv) = (std_slice(a), std_slice(b));
        let v = match self.kind {
            BinaryKind::Add => broadcast_apply(&av, &ap, &bv, &bp, &out, T::add),
            BinaryKind::Sub => broadcast_apply(&av, &ap, &bv, &bp, &out, T::sub),
            BinaryKind::Mul => broadcast_apply(&av, &ap, &bv, &bp, &out, T::mul),
            BinaryKind::Div => {
                if out.iter().product::<usize>() > 0 && bv.iter().any(|v| v.is_int_zero()) {
                    return Err(OpError::BadArg {
                        name: "B".into(),
                        msg: "integer division by zero".into(),
                    });
                }
                broadcast_apply(&av, &ap, &bv, &bp, &out, T::div)
            }
        };
        to_array(&out, v)
    }
}

impl Op for Binary {
    fn op_type(&self) -> &str {
        &self.op_type
    }

    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        expect_inputs(inputs, 2, 2)?;
        let (a, b) = (&inputs[0], &inputs[1]);
        if !is_numeric(a.dtype) || a.dtype != b.dtype {
            return Err(OpError::DType(format!(
                "{} needs A and B of one type among f32, f64, i32, i64; got A {a}, B {b}",
                self.op_type
            )));
        }
        let (out, _, _) = self.shapes(&a.shape, &b.shape)?;
        Ok(vec![TensorInfo::new(a.dtype, out)])
    }

    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        expect_inputs(inputs, 2, 2)?;
        let y = match (inputs[0], inputs[1]) {
            (Tensor::F32(a), Tensor::F32(b)) => Tensor::F32(self.run(a, b)?),
            (Tensor::F64(a), Tensor::F64(b)) => Tensor::F64(self.run(a, b)?),
            (Tensor::I32(a), Tensor::I32(b)) => Tensor::I32(self.run(a, b)?),
            (Tensor::I64(a), Tensor::I64(b)) => Tensor::I64(self.run(a, b)?),
            (a, b) => {
                return Err(OpError::DType(format!(
                    "{} needs A and B of one type among f32, f64, i32, i64; got A {}, B {}",
                    self.op_type,
                    a.info(),
                    b.info()
                )))
            }
        };
        Ok(vec![y])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_merges_dims_that_broadcast_alike() {
        // A [2,3,4,5], B [1,3,4,1] -> three loop dims: 2 (b bcast), 12, 5 (b bcast).
        let p = plan(&[2, 3, 4, 5], &[1, 3, 4, 1], &[2, 3, 4, 5]);
        let got: Vec<(usize, usize, usize)> =
            p.iter().map(|d| (d.n, d.a_stride, d.b_stride)).collect();
        assert_eq!(got, vec![(2, 60, 0), (12, 5, 1), (5, 1, 0)]);
    }
}
