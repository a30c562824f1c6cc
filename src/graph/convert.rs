//! The one place protobuf meets operators: Caffe2 `Argument`s to [`ops::Args`], and
//! `TensorProto` to and from [`ops::Tensor`].

use caffe2_proto::{tensor_proto::DataType, Argument, TensorProto};
use ndarray::{ArrayD, IxDyn};
use ops::{ArgValue, Args, QParams, Tensor};

use crate::{Error, Result};

/// Converts an op's protobuf arguments to the neutral argument map.
pub fn args_from_proto(args: &[Argument]) -> Args {
    let mut out = Args::new();
    for a in args {
        let value = if a.has_f() {
            ArgValue::F(a.f())
        } else if a.has_i() {
            ArgValue::I(a.i())
        } else if a.has_s() {
            ArgValue::S(a.s().to_vec())
        } else if !a.floats.is_empty() {
            ArgValue::Floats(a.floats.clone())
        } else if !a.ints.is_empty() {
            ArgValue::Ints(a.ints.clone())
        } else if !a.strings.is_empty() {
            ArgValue::Strings(a.strings.clone())
        } else if a.n.is_some() || !a.nets.is_empty() || a.t.is_some() || !a.tensors.is_empty() {
            ArgValue::Other
        } else {
            ArgValue::Empty
        };
        out.set(a.name(), value);
    }
    out
}

/// Converts a neutral argument map back to protobuf arguments (for writing nets).
pub fn args_to_proto(args: &Args) -> Vec<Argument> {
    args.iter()
        .filter_map(|(name, v)| {
            let mut a = Argument::new();
            a.set_name(name.to_string());
            match v {
                ArgValue::F(f) => a.set_f(*f),
                ArgValue::I(i) => a.set_i(*i),
                ArgValue::S(s) => a.set_s(s.clone()),
                ArgValue::Floats(f) => a.floats = f.clone(),
                ArgValue::Ints(i) => a.ints = i.clone(),
                ArgValue::Strings(s) => a.strings = s.clone(),
                ArgValue::Empty => {}
                ArgValue::Other => return None,
            }
            Some(a)
        })
        .collect()
}

fn dims_of(t: &TensorProto, name: &str) -> Result<Vec<usize>> {
    t.dims
        .iter()
        .map(|&d| {
            usize::try_from(d).map_err(|_| Error::Tensor {
                name: name.to_string(),
                msg: format!("negative dimension {d} in {:?}", t.dims),
            })
        })
        .collect()
}

fn array<T>(shape: &[usize], values: Vec<T>, name: &str, field: &str) -> Result<ArrayD<T>> {
    let n = values.len();
    ArrayD::from_shape_vec(IxDyn(shape), values).map_err(|_| Error::Tensor {
        name: name.to_string(),
        msg: format!(
            "{n} values in {field} do not fill dims {shape:?} ({} elements)",
            shape.iter().product::<usize>()
        ),
    })
}

fn raw_le<const N: usize, T>(raw: &[u8], name: &str, f: fn([u8; N]) -> T) -> Result<Vec<T>> {
    if !raw.len().is_multiple_of(N) {
        return Err(Error::Tensor {
            name: name.to_string(),
            msg: format!("raw_data length {} is not a multiple of {N}", raw.len()),
        });
    }
    Ok(raw
        .chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunk has N bytes")))
        .collect())
}

/// Converts a `TensorProto` (as in golden files and `--input`) to a tensor.
pub fn tensor_from_proto(t: &TensorProto) -> Result<Tensor> {
    let name = t.name();
    let shape = dims_of(t, name)?;
    let raw = t.has_raw_data().then(|| t.raw_data());
    let ints = |what: &str| -> Result<Vec<i32>> {
        match raw {
            Some(r) => match what {
                "u8" | "i8" | "bool" => Ok(r
                    .iter()
                    .map(|&b| {
                        if what == "i8" {
                            b as i8 as i32
                        } else {
                            b as i32
                        }
                    })
                    .collect()),
                "u16" => raw_le::<2, i32>(r, name, |b| u16::from_le_bytes(b) as i32),
                "i16" => raw_le::<2, i32>(r, name, |b| i16::from_le_bytes(b) as i32),
                _ => raw_le::<4, i32>(r, name, i32::from_le_bytes),
            },
            None => Ok(t.int32_data.clone()),
        }
    };
    let dt = t
        .data_type
        .map_or(Ok(DataType::FLOAT), |e| e.enum_value())
        .map_err(|v| Error::Tensor {
            name: name.to_string(),
            msg: format!("unknown data_type {v}"),
        })?;
    Ok(match dt {
        DataType::FLOAT => {
            let v = match raw {
                Some(r) => raw_le::<4, f32>(r, name, f32::from_le_bytes)?,
                None => t.float_data.clone(),
            };
            Tensor::F32(array(&shape, v, name, "float_data")?)
        }
        DataType::DOUBLE => {
            let v = match raw {
                Some(r) => raw_le::<8, f64>(r, name, f64::from_le_bytes)?,
                None => t.double_data.clone(),
            };
            Tensor::F64(array(&shape, v, name, "double_data")?)
        }
        DataType::INT32 => Tensor::I32(array(&shape, ints("i32")?, name, "int32_data")?),
        DataType::INT64 => {
            let v = match raw {
                Some(r) => raw_le::<8, i64>(r, name, i64::from_le_bytes)?,
                None => t.int64_data.clone(),
            };
            Tensor::I64(array(&shape, v, name, "int64_data")?)
        }
        DataType::UINT8 => Tensor::U8(array(
            &shape,
            ints("u8")?.into_iter().map(|v| v as u8).collect(),
            name,
            "int32_data",
        )?),
        DataType::INT8 => Tensor::I8(array(
            &shape,
            ints("i8")?.into_iter().map(|v| v as i8).collect(),
            name,
            "int32_data",
        )?),
        DataType::UINT16 => Tensor::U16(array(
            &shape,
            ints("u16")?.into_iter().map(|v| v as u16).collect(),
            name,
            "int32_data",
        )?),
        DataType::INT16 => Tensor::I16(array(
            &shape,
            ints("i16")?.into_iter().map(|v| v as i16).collect(),
            name,
            "int32_data",
        )?),
        DataType::BOOL => Tensor::Bool(array(
            &shape,
            ints("bool")?.into_iter().map(|v| v != 0).collect(),
            name,
            "int32_data",
        )?),
        DataType::BYTE => Tensor::U8(array(
            &shape,
            raw.unwrap_or(t.byte_data()).to_vec(),
            name,
            "byte_data",
        )?),
        DataType::STRING => Tensor::Str(array(&shape, t.string_data.clone(), name, "string_data")?),
        DataType::FLOAT16 => {
            let v = ints("u16")?
                .into_iter()
                .map(|b| f16_to_f32(b as u16))
                .collect();
            Tensor::F32(array(&shape, v, name, "int32_data (float16)")?)
        }
        other => {
            return Err(Error::Tensor {
                name: name.to_string(),
                msg: format!("data_type {other:?} is not supported"),
            })
        }
    })
}

/// IEEE half-precision bits to f32.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = match (exp, mant) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal half: normalize.
            let mut e = 127 - 15 + 1;
            let mut m = m;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | ((e as u32) << 23) | ((m & 0x3ff) << 13)
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// Converts a tensor to a `TensorProto` named `name` (Int8 tensors become their code type:
/// UINT8 or INT32; their scale and zero point are not representable in a TensorProto).
pub fn tensor_to_proto(t: &Tensor, name: &str) -> TensorProto {
    let mut p = TensorProto::new();
    p.set_name(name.to_string());
    p.dims = t.shape().iter().map(|&d| d as i64).collect();
    let (dt, ()) = match t {
        Tensor::F32(a) => (DataType::FLOAT, p.float_data = a.iter().copied().collect()),
        Tensor::F64(a) => (
            DataType::DOUBLE,
            p.double_data = a.iter().copied().collect(),
        ),
        Tensor::I32(a) | Tensor::QI32(a, _) => {
            (DataType::INT32, p.int32_data = a.iter().copied().collect())
        }
        Tensor::I64(a) => (DataType::INT64, p.int64_data = a.iter().copied().collect()),
        Tensor::U8(a) | Tensor::QU8(a, _) => (
            DataType::UINT8,
            p.int32_data = a.iter().map(|&v| v as i32).collect(),
        ),
        Tensor::I8(a) => (
            DataType::INT8,
            p.int32_data = a.iter().map(|&v| v as i32).collect(),
        ),
        Tensor::U16(a) => (
            DataType::UINT16,
            p.int32_data = a.iter().map(|&v| v as i32).collect(),
        ),
        Tensor::I16(a) => (
            DataType::INT16,
            p.int32_data = a.iter().map(|&v| v as i32).collect(),
        ),
        Tensor::Bool(a) => (
            DataType::BOOL,
            p.int32_data = a.iter().map(|&v| v as i32).collect(),
        ),
        Tensor::Str(a) => (
            DataType::STRING,
            p.string_data = a.iter().cloned().collect(),
        ),
    };
    p.set_data_type(dt);
    p
}

/// The quantization parameters of an Int8 tensor, if it is one.
pub fn qparams_of(t: &Tensor) -> Option<QParams> {
    match t {
        Tensor::QU8(_, q) | Tensor::QI32(_, q) => Some(*q),
        _ => None,
    }
}
