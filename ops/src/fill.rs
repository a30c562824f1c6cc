//! init_net fill ops: GivenTensor*Fill, ConstantFill, random fills, Int8 fills.
//!
//! Output shape (all but the Int8 fills, which only take `shape`):
//! - no input: the `shape` argument (repeated ints; absent means a scalar, shape `[]`);
//! - one input: the input's dims, or with `input_as_shape = 1` the input's values (a 1-D
//!   integer tensor), followed in both cases by `extra_shape`. `shape` must then be absent.
//!
//! | op | values | output |
//! |---|---|---|
//! | GivenTensorFill | `values` (floats); with `dtype` (FLOAT, DOUBLE, BOOL, INT32, INT64, STRING) from the field of that type | f32 or `dtype` |
//! | GivenTensor{Double,Bool,Int,Int64,String}Fill | `values` in floats / ints / ints / ints / strings | f64 / bool / i32 / i64 / string |
//! | ConstantFill | `value` (default 0) | `dtype`; absent: i64 if `value` is in `i`, else f32 |
//! | UniformFill | `min` (0) .. `max` (1), needs min < max | f32 |
//! | UniformIntFill | `min` (0) ..= `max` (1), needs min < max | i32 |
//! | GaussianFill | normal(`mean` 0, `std` 1) | f32 |
//! | XavierFill | uniform(-s, s), s = sqrt(3 / fan_in), fan_in = numel / `dims[0]` | f32 |
//! | MSRAFill | normal(0, sqrt(2 / fan_out)), fan_out = numel / `dims[1]` | f32 |
//! | RangeFill | 0, 1, 2, ... | f32 |
//! | Int8GivenTensorFill | `values`: one byte string (field `s`), one byte per element | QU8(`Y_scale` 1.0, `Y_zero_point` 0) |
//! | Int8GivenIntTensorFill | `values` in ints | QI32(`Y_scale`, `Y_zero_point`) |
//!
//! The number of given values must equal the shape's element count. Random fills draw from
//! [`crate::rng::Rng`] seeded with the node's `seed`, so they are deterministic (same seed,
//! same values) but do not reproduce Caffe2's `mt19937` values.

use ndarray::{ArrayD, IxDyn};

use crate::rng::Rng;
use crate::{ArgValue, Args, DType, NodeSpec, Op, OpError, OpResult, QParams, Tensor, TensorInfo};

/// Op types handled by [`Fill`].
pub const FILL_OPS: &[&str] = &[
    "GivenTensorFill",
    "GivenTensorDoubleFill",
    "GivenTensorBoolFill",
    "GivenTensorIntFill",
    "GivenTensorInt64Fill",
    "GivenTensorStringFill",
    "ConstantFill",
    "UniformFill",
    "UniformIntFill",
    "GaussianFill",
    "XavierFill",
    "MSRAFill",
    "RangeFill",
    "Int8GivenTensorFill",
    "Int8GivenIntTensorFill",
];

/// True for the init_net fill op types handled by [`Fill`].
pub fn is_fill_op(op_type: &str) -> bool {
    FILL_OPS.contains(&op_type)
}

/// Element type of a Caffe2 `TensorProto.DataType` code (BYTE reads as u8; FLOAT16,
/// UNDEFINED and unknown codes are errors).
pub fn dtype_from_code(code: i64) -> OpResult<DType> {
    Ok(match code {
        1 => DType::F32,
        2 => DType::I32,
        3 | 6 => DType::U8,
        4 => DType::Str,
        5 => DType::Bool,
        7 => DType::I8,
        8 => DType::U16,
        9 => DType::I16,
        10 => DType::I64,
        13 => DType::F64,
        0 => return Err(bad("dtype", "UNDEFINED (0) is not a data type")),
        12 => return Err(OpError::Unsupported("FLOAT16 tensors".into())),
        c => return Err(bad("dtype", format!("unknown data type code {c}"))),
    })
}

/// Data type code from its `TensorProto.DataType` name (as Caffe2's `GetCastDataType` accepts
/// a string `dtype` argument).
fn code_from_name(name: &str) -> Option<i64> {
    Some(match name.to_ascii_uppercase().as_str() {
        "UNDEFINED" => 0,
        "FLOAT" => 1,
        "INT32" => 2,
        "BYTE" => 3,
        "STRING" => 4,
        "BOOL" => 5,
        "UINT8" => 6,
        "INT8" => 7,
        "UINT16" => 8,
        "INT16" => 9,
        "INT64" => 10,
        "FLOAT16" => 12,
        "DOUBLE" => 13,
        _ => return None,
    })
}

fn bad(name: &str, msg: impl Into<String>) -> OpError {
    OpError::BadArg {
        name: name.into(),
        msg: msg.into(),
    }
}

/// The `dtype` argument as a data type code: an integer, or a type name string.
fn dtype_arg(args: &Args) -> OpResult<Option<i64>> {
    match args.get("dtype") {
        None => Ok(None),
        Some(ArgValue::S(b)) => {
            let s = String::from_utf8_lossy(b);
            code_from_name(&s)
                .map(Some)
                .ok_or_else(|| bad("dtype", format!("unknown data type name {s:?}")))
        }
        Some(_) => args.int("dtype"),
    }
}

fn array<T>(shape: &[usize], v: Vec<T>) -> OpResult<ArrayD<T>> {
    ArrayD::from_shape_vec(IxDyn(shape), v).map_err(|e| OpError::Shape(format!("internal: {e}")))
}

fn vec1<T>(v: Vec<T>) -> OpResult<ArrayD<T>> {
    let n = v.len();
    array(&[n], v)
}

/// Converts integer argument values to a narrower type, naming the first that does not fit.
fn narrow<T: TryFrom<i64>>(name: &str, what: &str, v: &[i64]) -> OpResult<Vec<T>> {
    v.iter()
        .enumerate()
        .map(|(i, &x)| {
            T::try_from(x)
                .map_err(|_| bad(name, format!("value {x} at index {i} does not fit {what}")))
        })
        .collect()
}

fn to_bools(name: &str, v: &[i64]) -> OpResult<Vec<bool>> {
    v.iter()
        .enumerate()
        .map(|(i, &x)| match x {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(bad(
                name,
                format!("value {x} at index {i} is not a bool (0 or 1)"),
            )),
        })
        .collect()
}

/// A single value of any plain element type (the `value` of ConstantFill).
#[derive(Debug, Clone, PartialEq)]
enum Scalar {
    F32(f32),
    F64(f64),
    I32(i32),
    I64(i64),
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    Bool(bool),
    Str(Vec<u8>),
}

impl Scalar {
    fn dtype(&self) -> DType {
        match self {
            Scalar::F32(_) => DType::F32,
            Scalar::F64(_) => DType::F64,
            Scalar::I32(_) => DType::I32,
            Scalar::I64(_) => DType::I64,
            Scalar::U8(_) => DType::U8,
            Scalar::I8(_) => DType::I8,
            Scalar::U16(_) => DType::U16,
            Scalar::I16(_) => DType::I16,
            Scalar::Bool(_) => DType::Bool,
            Scalar::Str(_) => DType::Str,
        }
    }

    fn fill(&self, shape: &[usize]) -> Tensor {
        let d = IxDyn(shape);
        match self {
            Scalar::F32(v) => Tensor::F32(ArrayD::from_elem(d, *v)),
            Scalar::F64(v) => Tensor::F64(ArrayD::from_elem(d, *v)),
            Scalar::I32(v) => Tensor::I32(ArrayD::from_elem(d, *v)),
            Scalar::I64(v) => Tensor::I64(ArrayD::from_elem(d, *v)),
            Scalar::U8(v) => Tensor::U8(ArrayD::from_elem(d, *v)),
            Scalar::I8(v) => Tensor::I8(ArrayD::from_elem(d, *v)),
            Scalar::U16(v) => Tensor::U16(ArrayD::from_elem(d, *v)),
            Scalar::I16(v) => Tensor::I16(ArrayD::from_elem(d, *v)),
            Scalar::Bool(v) => Tensor::Bool(ArrayD::from_elem(d, *v)),
            Scalar::Str(v) => Tensor::Str(ArrayD::from_elem(d, v.clone())),
        }
    }
}

/// What a fill node writes.
#[derive(Debug, Clone)]
enum Source {
    /// Explicit values, kept as a 1-D tensor of the output type.
    Given(Tensor),
    /// One value repeated.
    Constant(Scalar),
    /// f32 uniform in [min, max].
    Uniform { min: f32, max: f32 },
    /// i32 uniform in the closed range [min, max].
    UniformInt { min: i32, max: i32 },
    /// f32 normal.
    Gaussian { mean: f32, std: f32 },
    /// Xavier uniform.
    Xavier,
    /// MSRA (He) normal.
    Msra,
    /// 0, 1, 2, ... as f32.
    Range,
}

/// Where the output shape comes from.
#[derive(Debug, Clone, PartialEq)]
enum ShapeFrom {
    /// The `shape` argument.
    Arg(Vec<usize>),
    /// The input's dims followed by `extra_shape`.
    InputDims(Vec<usize>),
    /// The input's values followed by `extra_shape`.
    InputValues(Vec<usize>),
}

/// Any Caffe2 fill op (see the module docs for the table of types and arguments).
#[derive(Debug)]
pub struct Fill {
    op_type: String,
    source: Source,
    dtype: DType,
    shape_from: ShapeFrom,
    seed: u64,
    /// The input's values when `input_as_shape` and the input is a constant (from `prepare`).
    const_shape: Option<Vec<usize>>,
}

/// Reads a value list that must be present.
fn required<T>(name: &str, v: Option<T>) -> OpResult<T> {
    v.ok_or_else(|| bad(name, "missing (the fill op has no values)"))
}

/// The given values of a GivenTensor*Fill as a 1-D tensor of data type `code`.
fn given_values(args: &Args, code: i64) -> OpResult<Tensor> {
    let v = "values";
    Ok(match code {
        1 => Tensor::F32(vec1(required(v, args.floats(v)?)?)?),
        13 => Tensor::F64(vec1(
            required(v, args.floats(v)?)?
                .into_iter()
                .map(f64::from)
                .collect(),
        )?),
        5 => Tensor::Bool(vec1(to_bools(v, &required(v, args.ints(v)?)?)?)?),
        2 => Tensor::I32(vec1(narrow(v, "i32", &required(v, args.ints(v)?)?)?)?),
        10 => Tensor::I64(vec1(required(v, args.ints(v)?)?)?),
        4 => Tensor::Str(vec1(required(v, args.strings(v)?)?)?),
        0 => return Err(bad("dtype", "cannot be UNDEFINED (0)")),
        c => {
            return Err(bad(
                "dtype",
                format!(
                    "GivenTensorFill supports FLOAT, DOUBLE, BOOL, INT32, INT64, STRING; got {c}"
                ),
            ))
        }
    })
}

/// The `value` of a ConstantFill converted to data type `code`.
fn constant_value(args: &Args, code: i64) -> OpResult<Scalar> {
    let n = "value";
    let int = |what: &str| -> OpResult<i64> {
        args.int(n)
            .map_err(|_| bad(n, format!("must be an integer for dtype {what}")))
            .map(|v| v.unwrap_or(0))
    };
    let fit = |x: i64, what: &str| bad(n, format!("{x} does not fit {what}"));
    Ok(match code {
        1 => Scalar::F32(args.float_or(n, 0.0)?),
        13 => Scalar::F64(f64::from(args.float_or(n, 0.0)?)),
        5 => match int("BOOL")? {
            0 => Scalar::Bool(false),
            1 => Scalar::Bool(true),
            x => return Err(fit(x, "bool (0 or 1)")),
        },
        7 => {
            let x = int("INT8")?;
            Scalar::I8(i8::try_from(x).map_err(|_| fit(x, "i8"))?)
        }
        9 => {
            let x = int("INT16")?;
            Scalar::I16(i16::try_from(x).map_err(|_| fit(x, "i16"))?)
        }
        2 => {
            let x = int("INT32")?;
            Scalar::I32(i32::try_from(x).map_err(|_| fit(x, "i32"))?)
        }
        10 => Scalar::I64(int("INT64")?),
        6 => {
            let x = int("UINT8")?;
            Scalar::U8(u8::try_from(x).map_err(|_| fit(x, "u8"))?)
        }
        8 => {
            let x = int("UINT16")?;
            Scalar::U16(u16::try_from(x).map_err(|_| fit(x, "u16"))?)
        }
        4 => Scalar::Str(args.bytes(n)?.map(<[u8]>::to_vec).unwrap_or_default()),
        c => {
            return Err(bad(
                "dtype",
                format!("ConstantFill does not support data type code {c}"),
            ))
        }
    })
}

fn finite(name: &str, v: f32) -> OpResult<f32> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(bad(name, format!("must be finite, got {v}")))
    }
}

impl Fill {
    /// Builds the operator from its spec: reads and checks every argument, so a malformed
    /// init_net fails when loaded.
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        let t = spec.op_type.as_str();
        if !is_fill_op(t) {
            return Err(OpError::Unsupported(format!("{t} is not a fill op")));
        }
        spec.check_outputs(1, 1)?;
        let args = &spec.args;
        let int8 = t.starts_with("Int8");
        if int8 {
            spec.check_inputs(0, 0)?;
        } else {
            spec.check_inputs(0, 1)?;
        }
        let shape_from = Self::shape_from(args, spec.n_inputs)?;
        let source = match t {
            "GivenTensorFill" => Source::Given(given_values(args, dtype_arg(args)?.unwrap_or(1))?),
            "GivenTensorDoubleFill" => Source::Given(given_values(args, 13)?),
            "GivenTensorBoolFill" => Source::Given(given_values(args, 5)?),
            "GivenTensorIntFill" => Source::Given(given_values(args, 2)?),
            "GivenTensorInt64Fill" => Source::Given(given_values(args, 10)?),
            "GivenTensorStringFill" => Source::Given(given_values(args, 4)?),
            "ConstantFill" => {
                let code = match dtype_arg(args)? {
                    Some(c) => c,
                    None => match args.get("value") {
                        None | Some(ArgValue::F(_)) => 1,
                        Some(ArgValue::I(_)) => 10,
                        Some(other) => {
                            return Err(bad(
                                "value",
                                format!(
                                    "without `dtype` it must be a float or an int, got {other:?}"
                                ),
                            ))
                        }
                    },
                };
                Source::Constant(constant_value(args, code)?)
            }
            "UniformFill" => {
                let min = finite("min", args.float_or("min", 0.0)?)?;
                let max = finite("max", args.float_or("max", 1.0)?)?;
                if min >= max {
                    return Err(bad(
                        "max",
                        format!("must be greater than min ({min}), got {max}"),
                    ));
                }
                Source::Uniform { min, max }
            }
            "UniformIntFill" => {
                let min = args.int_or("min", 0)?;
                let max = args.int_or("max", 1)?;
                let min = i32::try_from(min)
                    .map_err(|_| bad("min", format!("{min} does not fit i32")))?;
                let max = i32::try_from(max)
                    .map_err(|_| bad("max", format!("{max} does not fit i32")))?;
                if min >= max {
                    return Err(bad(
                        "max",
                        format!("must be greater than min ({min}), got {max}"),
                    ));
                }
                Source::UniformInt { min, max }
            }
            "GaussianFill" => {
                let mean = finite("mean", args.float_or("mean", 0.0)?)?;
                let std = finite("std", args.float_or("std", 1.0)?)?;
                if std < 0.0 {
                    return Err(bad("std", format!("must be >= 0, got {std}")));
                }
                Source::Gaussian { mean, std }
            }
            "XavierFill" => Source::Xavier,
            "MSRAFill" => Source::Msra,
            "RangeFill" => Source::Range,
            "Int8GivenTensorFill" | "Int8GivenIntTensorFill" => {
                let scale = args.float_or("Y_scale", 1.0)?;
                let zp = args.int_or("Y_zero_point", 0)?;
                let zero_point = i32::try_from(zp)
                    .map_err(|_| bad("Y_zero_point", format!("{zp} does not fit i32")))?;
                let q = QParams { scale, zero_point };
                if t == "Int8GivenTensorFill" {
                    let bytes = match args.get("values") {
                        Some(ArgValue::S(b)) => b.clone(),
                        Some(ArgValue::Strings(v)) if v.len() == 1 => v[0].clone(),
                        None => return Err(bad("values", "missing (the fill op has no values)")),
                        Some(other) => {
                            return Err(bad(
                                "values",
                                format!("must be one byte string (field s), got {other:?}"),
                            ))
                        }
                    };
                    Source::Given(Tensor::QU8(vec1(bytes)?, q))
                } else {
                    let v = required("values", args.ints("values")?)?;
                    Source::Given(Tensor::QI32(vec1(narrow("values", "i32", &v)?)?, q))
                }
            }
            _ => return Err(OpError::Unsupported(format!("{t} is not a fill op"))),
        };
        let dtype = match &source {
            Source::Given(t) => t.dtype(),
            Source::Constant(s) => s.dtype(),
            Source::UniformInt { .. } => DType::I32,
            _ => DType::F32,
        };
        let fill = Fill {
            op_type: spec.op_type.clone(),
            source,
            dtype,
            shape_from,
            seed: spec.seed,
            const_shape: None,
        };
        if let ShapeFrom::Arg(s) = &fill.shape_from {
            fill.check_shape(s)?;
        }
        Ok(fill)
    }

    /// Reads `shape`, `extra_shape` and `input_as_shape` against the input count.
    fn shape_from(args: &Args, n_inputs: usize) -> OpResult<ShapeFrom> {
        if let Some(ArgValue::I(v)) = args.get("shape") {
            return Err(bad(
                "shape",
                format!("was a scalar ({v}), a list is expected"),
            ));
        }
        let shape = args.shape("shape")?;
        let extra = args.shape("extra_shape")?.unwrap_or_default();
        let as_shape = args.int_or("input_as_shape", 0)? != 0;
        if n_inputs == 1 {
            if shape.as_ref().is_some_and(|s| !s.is_empty()) {
                return Err(bad(
                    "shape",
                    "cannot be set when the shape comes from an input",
                ));
            }
            Ok(if as_shape {
                ShapeFrom::InputValues(extra)
            } else {
                ShapeFrom::InputDims(extra)
            })
        } else {
            if !extra.is_empty() {
                return Err(bad("extra_shape", "needs an input"));
            }
            if as_shape {
                return Err(bad("input_as_shape", "needs an input"));
            }
            Ok(ShapeFrom::Arg(shape.unwrap_or_default()))
        }
    }

    /// Output element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The shape from an `input_as_shape` tensor's values.
    fn values_as_shape(t: &Tensor) -> OpResult<Vec<usize>> {
        if t.shape().len() != 1 {
            return Err(OpError::Shape(format!(
                "input_as_shape needs a 1-D integer input, got {:?}",
                t.shape()
            )));
        }
        t.to_i64_vec()?
            .into_iter()
            .map(|d| {
                usize::try_from(d).map_err(|_| {
                    OpError::Shape(format!("negative dimension {d} in the shape input"))
                })
            })
            .collect()
    }

    /// Checks a final output shape against the values / the fill's rank needs.
    fn check_shape(&self, shape: &[usize]) -> OpResult<()> {
        crate::limits::check_tensor(&self.op_type, shape, self.dtype.size_of())?;
        let numel: usize = shape.iter().product();
        match &self.source {
            Source::Given(t) if t.len() != numel => Err(OpError::Shape(format!(
                "{}: {} values given but shape {shape:?} has {numel} elements",
                self.op_type,
                t.len()
            ))),
            Source::Xavier if shape.is_empty() => Err(OpError::Shape(
                "XavierFill needs a shape of rank >= 1 (fan_in = numel / dims[0])".into(),
            )),
            Source::Msra if shape.len() < 2 => Err(OpError::Shape(format!(
                "MSRAFill needs a shape of rank >= 2 (fan_out = numel / dims[1]), got {shape:?}"
            ))),
            _ => Ok(()),
        }
    }

    fn with_extra(mut base: Vec<usize>, extra: &[usize]) -> Vec<usize> {
        base.extend_from_slice(extra);
        base
    }

    /// Generates the output for a checked shape.
    fn generate(&self, shape: &[usize]) -> OpResult<Tensor> {
        let n: usize = shape.iter().product();
        let mut rng = Rng::new(self.seed);
        let f32s = |v: Vec<f32>| array(shape, v).map(Tensor::F32);
        match &self.source {
            Source::Given(t) => t.clone().reshaped(shape),
            Source::Constant(s) => Ok(s.fill(shape)),
            Source::Uniform { min, max } => {
                f32s((0..n).map(|_| rng.uniform_f32(*min, *max)).collect())
            }
            Source::UniformInt { min, max } => {
                let v = (0..n)
                    .map(|_| rng.uniform_i64(*min as i64, *max as i64) as i32)
                    .collect();
                array(shape, v).map(Tensor::I32)
            }
            Source::Gaussian { mean, std } => {
                f32s((0..n).map(|_| rng.normal_f32(*mean, *std)).collect())
            }
            Source::Xavier => {
                if n == 0 {
                    return f32s(Vec::new());
                }
                let fan_in = (n / shape[0]) as f32;
                let s = (3.0f32 / fan_in).sqrt();
                f32s((0..n).map(|_| rng.uniform_f32(-s, s)).collect())
            }
            Source::Msra => {
                if n == 0 {
                    return f32s(Vec::new());
                }
                let fan_out = (n / shape[1]) as f32;
                let s = (2.0f32 / fan_out).sqrt();
                f32s((0..n).map(|_| rng.normal_f32(0.0, s)).collect())
            }
            Source::Range => f32s((0..n).map(|i| i as f32).collect()),
        }
    }
}

impl Op for Fill {
    fn op_type(&self) -> &str {
        &self.op_type
    }

    fn prepare(&mut self, constants: &[Option<&Tensor>]) -> OpResult<()> {
        self.const_shape = match (&self.shape_from, constants.first()) {
            (ShapeFrom::InputValues(_), Some(Some(t))) => Some(Self::values_as_shape(t)?),
            _ => None,
        };
        Ok(())
    }

    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        let shape = match &self.shape_from {
            ShapeFrom::Arg(s) => {
                crate::expect_inputs(inputs, 0, 0)?;
                s.clone()
            }
            ShapeFrom::InputDims(extra) => {
                crate::expect_inputs(inputs, 1, 1)?;
                Self::with_extra(inputs[0].shape.clone(), extra)
            }
            ShapeFrom::InputValues(extra) => {
                crate::expect_inputs(inputs, 1, 1)?;
                let i = &inputs[0];
                if i.shape.len() != 1
                    || !matches!(
                        i.dtype,
                        DType::I32 | DType::I64 | DType::U8 | DType::I8 | DType::U16 | DType::I16
                    )
                {
                    return Err(OpError::Shape(format!(
                        "input_as_shape needs a 1-D integer input, got {i}"
                    )));
                }
                let base = self.const_shape.clone().ok_or_else(|| {
                    OpError::Unsupported(format!(
                        "{} with input_as_shape: the shape input is not a constant, so the \
                         output shape is only known at run time",
                        self.op_type
                    ))
                })?;
                Self::with_extra(base, extra)
            }
        };
        self.check_shape(&shape)?;
        Ok(vec![TensorInfo::new(self.dtype, shape)])
    }

    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        let shape = match &self.shape_from {
            ShapeFrom::Arg(s) => {
                crate::expect_inputs(inputs, 0, 0)?;
                s.clone()
            }
            ShapeFrom::InputDims(extra) => {
                crate::expect_inputs(inputs, 1, 1)?;
                Self::with_extra(inputs[0].shape().to_vec(), extra)
            }
            ShapeFrom::InputValues(extra) => {
                crate::expect_inputs(inputs, 1, 1)?;
                Self::with_extra(Self::values_as_shape(inputs[0])?, extra)
            }
        };
        self.check_shape(&shape)?;
        Ok(vec![self.generate(&shape)?])
    }
}
