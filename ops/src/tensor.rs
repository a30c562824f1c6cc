//! Typed n-dimensional tensors (row-major, standard layout) and their static descriptions.

use std::ops::Range;

use ndarray::{ArrayD, Axis, IxDyn, Slice};

/// Quantization parameters of an Int8 tensor: real = scale * (q - zero_point).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QParams {
    /// Real value of one quantization step.
    pub scale: f32,
    /// The code that represents real 0.
    pub zero_point: i32,
}

/// Element types a blob can hold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
    /// 32-bit signed integer.
    I32,
    /// 64-bit signed integer.
    I64,
    /// 8-bit unsigned integer (plain, not quantized).
    U8,
    /// 8-bit signed integer.
    I8,
    /// 16-bit unsigned integer.
    U16,
    /// 16-bit signed integer.
    I16,
    /// Boolean.
    Bool,
    /// Byte strings.
    Str,
    /// Caffe2 `Int8TensorCPU` with uint8 codes.
    QU8(QParams),
    /// Caffe2 `Int8TensorCPU` with int32 codes (biases).
    QI32(QParams),
}

impl DType {
    /// Short lowercase name used in messages (`f32`, `qu8(s=0.1,z=128)`, ...).
    pub fn name(&self) -> String {
        match self {
            DType::F32 => "f32".into(),
            DType::F64 => "f64".into(),
            DType::I32 => "i32".into(),
            DType::I64 => "i64".into(),
            DType::U8 => "u8".into(),
            DType::I8 => "i8".into(),
            DType::U16 => "u16".into(),
            DType::I16 => "i16".into(),
            DType::Bool => "bool".into(),
            DType::Str => "string".into(),
            DType::QU8(q) => format!("qu8(s={},z={})", q.scale, q.zero_point),
            DType::QI32(q) => format!("qi32(s={},z={})", q.scale, q.zero_point),
        }
    }

    /// Bytes per element (strings count as one pointer-sized slot).
    pub fn size_of(&self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 | DType::QI32(_) => 4,
            DType::U16 | DType::I16 => 2,
            DType::U8 | DType::I8 | DType::Bool | DType::QU8(_) => 1,
            DType::Str => std::mem::size_of::<Vec<u8>>(),
        }
    }
}

/// A tensor's static description: element type and shape. Used by shape inference.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Element type (with quantization parameters for Int8 tensors).
    pub dtype: DType,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
}

impl TensorInfo {
    /// A description from a type and a shape.
    pub fn new(dtype: DType, shape: impl Into<Vec<usize>>) -> Self {
        TensorInfo {
            dtype,
            shape: shape.into(),
        }
    }

    /// An f32 tensor of this shape.
    pub fn f32(shape: impl Into<Vec<usize>>) -> Self {
        Self::new(DType::F32, shape)
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

impl std::fmt::Display for TensorInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{:?}", self.dtype.name(), self.shape)
    }
}

/// A blob's value: an n-dimensional array of one element type.
///
/// Arrays are always in standard (row-major, contiguous) layout, so kernels may use
/// `as_slice()` on them.
#[derive(Debug, Clone, PartialEq)]
pub enum Tensor {
    /// 32-bit floats.
    F32(ArrayD<f32>),
    /// 64-bit floats.
    F64(ArrayD<f64>),
    /// 32-bit signed integers.
    I32(ArrayD<i32>),
    /// 64-bit signed integers.
    I64(ArrayD<i64>),
    /// 8-bit unsigned integers.
    U8(ArrayD<u8>),
    /// 8-bit signed integers.
    I8(ArrayD<i8>),
    /// 16-bit unsigned integers.
    U16(ArrayD<u16>),
    /// 16-bit signed integers.
    I16(ArrayD<i16>),
    /// Booleans.
    Bool(ArrayD<bool>),
    /// Byte strings.
    Str(ArrayD<Vec<u8>>),
    /// Int8 tensor with uint8 codes and quantization parameters.
    QU8(ArrayD<u8>, QParams),
    /// Int8 tensor with int32 codes (bias) and quantization parameters.
    QI32(ArrayD<i32>, QParams),
}

macro_rules! each_array {
    ($t:expr, $a:ident => $body:expr) => {
        match $t {
            Tensor::F32($a) => $body,
            Tensor::F64($a) => $body,
            Tensor::I32($a) => $body,
            Tensor::I64($a) => $body,
            Tensor::U8($a) => $body,
            Tensor::I8($a) => $body,
            Tensor::U16($a) => $body,
            Tensor::I16($a) => $body,
            Tensor::Bool($a) => $body,
            Tensor::Str($a) => $body,
            Tensor::QU8($a, _) => $body,
            Tensor::QI32($a, _) => $body,
        }
    };
}

/// Applies `$body` (an expression in the array `$a`, any element type) to the array of a
/// tensor and wraps the result in the same variant (quantization parameters kept).
macro_rules! map_array {
    ($t:expr, $a:ident => $body:expr) => {
        match $t {
            Tensor::F32($a) => Tensor::F32($body),
            Tensor::F64($a) => Tensor::F64($body),
            Tensor::I32($a) => Tensor::I32($body),
            Tensor::I64($a) => Tensor::I64($body),
            Tensor::U8($a) => Tensor::U8($body),
            Tensor::I8($a) => Tensor::I8($body),
            Tensor::U16($a) => Tensor::U16($body),
            Tensor::I16($a) => Tensor::I16($body),
            Tensor::Bool($a) => Tensor::Bool($body),
            Tensor::Str($a) => Tensor::Str($body),
            Tensor::QU8($a, q) => Tensor::QU8($body, q.to_owned()),
            Tensor::QI32($a, q) => Tensor::QI32($body, q.to_owned()),
        }
    };
}

impl Tensor {
    /// An f32 tensor from a shape and row-major values. Panics if the sizes disagree
    /// (only for literals in code and tests; loaders use `try_f32`).
    pub fn from_f32(shape: &[usize], values: Vec<f32>) -> Tensor {
        Tensor::F32(ArrayD::from_shape_vec(IxDyn(shape), values).expect("shape matches values"))
    }

    /// An f32 tensor from a shape and row-major values, or an error if the sizes disagree.
    pub fn try_f32(shape: &[usize], values: Vec<f32>) -> Result<Tensor, crate::OpError> {
        let n = values.len();
        ArrayD::from_shape_vec(IxDyn(shape), values)
            .map(Tensor::F32)
            .map_err(|_| crate::OpError::Shape(format!("{n} values do not fill shape {shape:?}")))
    }

    /// A tensor of zeros.
    pub fn zeros_f32(shape: &[usize]) -> Tensor {
        Tensor::F32(ArrayD::zeros(IxDyn(shape)))
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        match self {
            Tensor::F32(_) => DType::F32,
            Tensor::F64(_) => DType::F64,
            Tensor::I32(_) => DType::I32,
            Tensor::I64(_) => DType::I64,
            Tensor::U8(_) => DType::U8,
            Tensor::I8(_) => DType::I8,
            Tensor::U16(_) => DType::U16,
            Tensor::I16(_) => DType::I16,
            Tensor::Bool(_) => DType::Bool,
            Tensor::Str(_) => DType::Str,
            Tensor::QU8(_, q) => DType::QU8(*q),
            Tensor::QI32(_, q) => DType::QI32(*q),
        }
    }

    /// Dimensions.
    pub fn shape(&self) -> &[usize] {
        each_array!(self, a => a.shape())
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        each_array!(self, a => a.len())
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Static description (type and shape).
    pub fn info(&self) -> TensorInfo {
        TensorInfo::new(self.dtype(), self.shape().to_vec())
    }

    /// Size of the payload in bytes.
    pub fn nbytes(&self) -> usize {
        self.len() * self.dtype().size_of()
    }

    /// The f32 array, or an error naming what was found instead.
    pub fn as_f32(&self) -> Result<&ArrayD<f32>, crate::OpError> {
        match self {
            Tensor::F32(a) => Ok(a),
            other => Err(crate::OpError::DType(format!(
                "expected f32, got {}",
                other.dtype().name()
            ))),
        }
    }

    /// The f32 values as a contiguous slice.
    pub fn f32_slice(&self) -> Result<&[f32], crate::OpError> {
        self.as_f32()?
            .as_slice()
            .ok_or_else(|| crate::OpError::Shape("f32 tensor is not contiguous".into()))
    }

    /// Values widened to i64 for integer tensors (shape arguments, labels).
    pub fn to_i64_vec(&self) -> Result<Vec<i64>, crate::OpError> {
        match self {
            Tensor::I32(a) => Ok(a.iter().map(|&v| v as i64).collect()),
            Tensor::I64(a) => Ok(a.iter().copied().collect()),
            Tensor::U8(a) => Ok(a.iter().map(|&v| v as i64).collect()),
            Tensor::I8(a) => Ok(a.iter().map(|&v| v as i64).collect()),
            Tensor::U16(a) => Ok(a.iter().map(|&v| v as i64).collect()),
            Tensor::I16(a) => Ok(a.iter().map(|&v| v as i64).collect()),
            other => Err(crate::OpError::DType(format!(
                "expected an integer tensor, got {}",
                other.dtype().name()
            ))),
        }
    }

    /// The same data viewed with a new shape of the same element count.
    pub fn reshaped(self, shape: &[usize]) -> Result<Tensor, crate::OpError> {
        let n: usize = shape.iter().product();
        if n != self.len() {
            return Err(crate::OpError::Shape(format!(
                "cannot reshape {:?} ({} elements) to {:?} ({} elements)",
                self.shape(),
                self.len(),
                shape,
                n
            )));
        }
        fn re<T: Clone>(a: ArrayD<T>, shape: &[usize]) -> ArrayD<T> {
            let a = if a.is_standard_layout() {
                a
            } else {
                a.as_standard_layout().into_owned()
            };
            a.into_shape_with_order(IxDyn(shape))
                .expect("element count checked above")
        }
        Ok(map_array!(self, a => re(a, shape)))
    }

    /// A copy of rows `range` of the first axis (e.g. some images of a batch).
    pub fn slice_rows(&self, range: Range<usize>) -> Result<Tensor, crate::OpError> {
        let n = self.shape().first().copied().unwrap_or(0);
        if self.shape().is_empty() || range.start > range.end || range.end > n {
            return Err(crate::OpError::Shape(format!(
                "cannot take rows {range:?} of {:?}",
                self.shape()
            )));
        }
        fn s<T: Clone>(a: &ArrayD<T>, r: Range<usize>) -> ArrayD<T> {
            a.slice_axis(Axis(0), Slice::from(r))
                .as_standard_layout()
                .into_owned()
        }
        Ok(map_array!(self, a => s(a, range)))
    }

    /// Joins tensors along the first axis (the inverse of [`Tensor::slice_rows`]): all of
    /// one element type, with equal quantization parameters and equal other dimensions.
    pub fn concat_rows(parts: &[Tensor]) -> Result<Tensor, crate::OpError> {
        let first = parts
            .first()
            .ok_or_else(|| crate::OpError::Shape("no tensors to join".into()))?;
        let mismatch = |t: &Tensor| {
            crate::OpError::DType(format!(
                "cannot join {} {:?} to {} {:?}",
                t.dtype().name(),
                t.shape(),
                first.dtype().name(),
                first.shape()
            ))
        };
        if let Some(odd) = parts.iter().find(|t| t.dtype() != first.dtype()) {
            return Err(mismatch(odd));
        }
        fn cat<T: Clone>(arrays: &[&ArrayD<T>]) -> Result<ArrayD<T>, crate::OpError> {
            let views: Vec<_> = arrays.iter().map(|a| a.view()).collect();
            ndarray::concatenate(Axis(0), &views)
                .map_err(|e| crate::OpError::Shape(format!("cannot join along axis 0: {e}")))
        }
        macro_rules! join {
            ($var:ident $(, $q:ident)?) => {{
                let arrays = parts
                    .iter()
                    .map(|t| match t {
                        Tensor::$var(a, ..) => Ok(a),
                        other => Err(mismatch(other)),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Tensor::$var(cat(&arrays)? $(, *$q)?)
            }};
        }
        Ok(match first {
            Tensor::F32(_) => join!(F32),
            Tensor::F64(_) => join!(F64),
            Tensor::I32(_) => join!(I32),
            Tensor::I64(_) => join!(I64),
            Tensor::U8(_) => join!(U8),
            Tensor::I8(_) => join!(I8),
            Tensor::U16(_) => join!(U16),
            Tensor::I16(_) => join!(I16),
            Tensor::Bool(_) => join!(Bool),
            Tensor::Str(_) => join!(Str),
            Tensor::QU8(_, q) => join!(QU8, q),
            Tensor::QI32(_, q) => join!(QI32, q),
        })
    }

    /// Applies a permutation of axes to any element type (result in standard layout).
    pub fn permuted(&self, axes: &[usize]) -> Result<Tensor, crate::OpError> {
        if axes.len() != self.shape().len() {
            return Err(crate::OpError::Shape(format!(
                "permutation {axes:?} does not match rank {} of {:?}",
                self.shape().len(),
                self.shape()
            )));
        }
        let mut seen = vec![false; axes.len()];
        for &a in axes {
            if a >= axes.len() || seen[a] {
                return Err(crate::OpError::BadArg {
                    name: "axes".into(),
                    msg: format!("{axes:?} is not a permutation"),
                });
            }
            seen[a] = true;
        }
        fn p<T: Clone>(a: &ArrayD<T>, axes: &[usize]) -> ArrayD<T> {
            a.view()
                .permuted_axes(IxDyn(axes))
                .as_standard_layout()
                .into_owned()
        }
        Ok(map_array!(self, a => p(a, axes)))
    }
}
