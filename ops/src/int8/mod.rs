//! Scalar reference implementations of the Caffe2 `Int8*` operators with DNNLOWP arithmetic.
//!
//! These operators are the oracle the fast kernels are tested against, so they favour
//! clarity: plain loops over contiguous NHWC data with exact 32-bit integer accumulation,
//! and every rounding step written out once in [`requant`].
//!
//! Conventions shared by all operators here:
//!
//! - Activations and weights are [`Tensor::QU8`] (uint8 codes, real = s·(q − z)); biases are
//!   [`Tensor::QI32`] (or plain f32, quantized on the fly).
//! - Output parameters come from the `Y_scale` (float, field `f`) and `Y_zero_point` (int)
//!   arguments. Operators whose output parameters are defined by their input (`Int8MaxPool`,
//!   `Int8Relu`, `Int8Flatten`, `Int8Reshape`) copy them from the input.
//! - Fused-ReLU operators (`*Relu`) and operators with `followed_by = "Relu"` re-derive their
//!   output parameters as DNNLOWP does ([`requant::relu_output_params`]).
//! - Conv and pool ops default to `order = "NHWC"` (the layout of every published int8 net
//!   and the only one QNNPACK accepts); note that Caffe2's `ConvPoolOpBase` itself defaults
//!   to NCHW, so a DNNLOWP op *without* an `order` argument would run NCHW in Caffe2.
//! - `infer` carries the parameters in [`DType::QU8`], so shape inference knows the
//!   parameters of every blob and validates them (bias scale, zero points, shapes).
//! - Engines: every engine computes with the DNNLOWP arithmetic (float requantization
//!   multiplier, round half to even). `DNNLOWP_ACC16` is computed with exact 32-bit
//!   accumulation (no 16-bit saturation or outlier split). QNNPACK-style nets (engine `""`,
//!   `NNPACK,DEPTHWISE_3x3`, ...) use the same integer math; their Q31 fixed-point
//!   requantization is available as [`requant::Q31Multiplier`] but not selected by the
//!   operators. Engines that change the data types (`DNNLOWP_16`, `DNNLOWP_ROWWISE*`) are
//!   rejected.
//! - Per-channel weight scales (a c2q extension): `Int8Conv`, `Int8ConvRelu`, `Int8FC` and
//!   `Int8FCRelu` accept a float-list argument `W_scales` with one weight scale per output
//!   channel (each finite and > 0). Channel `m` then requantizes with
//!   `M[m] = s_x · W_scales[m] / s_y` instead of the weight tensor's scale; the weight
//!   tensor's zero point is still used for every channel. Int8 int32 bias values are taken to
//!   be in units of `s_x · W_scales[m]` (the bias tensor's own scale is still checked against
//!   `s_x · s_w` of the tensors), a float bias is quantized per channel with
//!   `s_x · W_scales[m]`. `quantize_channelwise = 1` is accepted only together with
//!   `W_scales` (see [`read_w_scales`]); real Caffe2 ignores `W_scales`.
//! - Implementations: [`conv`] and [`fc`] keep the scalar reference loops (selected by
//!   `NodeSpec::reference`) and otherwise run the exact AVX2/portable kernels of
//!   [`crate::kernels::qgemm`] and [`crate::kernels::qdepthwise`], which give bit-identical
//!   results.

pub mod conv;
pub mod conv_lut;
pub mod conv_sum;
pub mod eltwise;
pub mod fc;
pub mod lut;
pub mod pool;
pub mod quantize;
pub mod requant;
pub mod shape;

use ndarray::ArrayD;

use crate::{Args, DType, NodeSpec, OpError, OpResult, QParams, Tensor, TensorInfo};

/// Every Int8 op type this module builds.
pub const INT8_OPS: &[&str] = &[
    "Int8Quantize",
    "Int8Dequantize",
    "Int8Conv",
    "Int8ConvRelu",
    "Int8FC",
    "Int8FCRelu",
    "Int8Sum",
    "Int8SumRelu",
    "Int8Add",
    "Int8AddRelu",
    "Int8MaxPool",
    "Int8AveragePool",
    "Int8Relu",
    "Int8Concat",
    "Int8Flatten",
    "Int8Reshape",
    "Int8ConvSum",
    "Int8ConvSumRelu",
    "Int8Lut",
    "Int8ConvLut",
    "Int8QuantizeNchw2Nhwc",
];

/// The engine families that matter for the arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// `DNNLOWP` (FBGEMM, x86).
    Dnnlowp,
    /// `DNNLOWP_ACC16`: computed here with exact 32-bit accumulation.
    DnnlowpAcc16,
    /// The default engine (`""`, QNNPACK) or a kernel-selection engine such as
    /// `NNPACK,DEPTHWISE_3x3`; Caffe2 falls back to the default implementation for engines
    /// it does not know.
    Default,
}

impl Engine {
    /// Classifies an engine string; engines that change the data types are unsupported.
    pub fn parse(op_type: &str, engine: &str) -> OpResult<Engine> {
        match engine {
            "DNNLOWP" => Ok(Engine::Dnnlowp),
            "DNNLOWP_ACC16" => Ok(Engine::DnnlowpAcc16),
            e if e.starts_with("DNNLOWP") => Err(OpError::Unsupported(format!(
                "{op_type} with engine {e:?}: only 8-bit per-tensor DNNLOWP (\"DNNLOWP\", \
                 \"DNNLOWP_ACC16\") and the default engine are implemented"
            ))),
            _ => Ok(Engine::Default),
        }
    }

    /// True for the DNNLOWP family.
    pub fn is_dnnlowp(self) -> bool {
        matches!(self, Engine::Dnnlowp | Engine::DnnlowpAcc16)
    }
}

/// Fails unless `q` is a valid uint8 parameter pair: finite scale > 0, zero point in [0, 255].
pub fn check_qparams(op: &str, what: &str, q: QParams) -> OpResult<()> {
    if !(q.scale.is_finite() && q.scale > 0.0) {
        return Err(OpError::DType(format!(
            "{op}: {what} has scale {} (must be finite and > 0)",
            q.scale
        )));
    }
    if !(0..=255).contains(&q.zero_point) {
        return Err(OpError::DType(format!(
            "{op}: {what} has zero point {} (must be in [0, 255] for uint8)",
            q.zero_point
        )));
    }
    Ok(())
}

/// The quantization parameters of a QU8 input description (validated).
pub fn qu8_info(op: &str, what: &str, t: &TensorInfo) -> OpResult<QParams> {
    match t.dtype {
        DType::QU8(q) => {
            check_qparams(op, what, q)?;
            Ok(q)
        }
        other => Err(OpError::DType(format!(
            "{op}: {what} must be an Int8 tensor (qu8), got {}{:?}",
            other.name(),
            t.shape
        ))),
    }
}

/// The codes (contiguous) and parameters of a QU8 input tensor (validated).
pub fn qu8_tensor<'a>(op: &str, what: &str, t: &'a Tensor) -> OpResult<(&'a [u8], QParams)> {
    match t {
        Tensor::QU8(a, q) => {
            check_qparams(op, what, *q)?;
            let s = a
                .as_slice()
                .ok_or_else(|| OpError::Shape(format!("{op}: {what} is not contiguous")))?;
            Ok((s, *q))
        }
        other => Err(OpError::DType(format!(
            "{op}: {what} must be an Int8 tensor (qu8), got {}{:?}",
            other.dtype().name(),
            other.shape()
        ))),
    }
}

/// The constant Int8 weights (input 1) a Conv/FC packs in `prepare`: codes, shape and
/// parameters; `None` with the scalar reference or when W is not a constant, contiguous Int8
/// tensor (then `eval` uses or reports what it gets at run time).
pub(crate) fn constant_weights<'a>(
    constants: &[Option<&'a Tensor>],
    reference: bool,
) -> Option<(&'a [u8], &'a [usize], QParams)> {
    if reference {
        return None;
    }
    let Some(Some(Tensor::QU8(arr, wq))) = constants.get(1) else {
        return None;
    };
    Some((arr.as_slice()?, arr.shape(), *wq))
}

/// A QU8 tensor from a shape, codes and parameters.
pub fn qu8_from_vec(shape: &[usize], v: Vec<u8>, q: QParams) -> OpResult<Tensor> {
    let n = v.len();
    ArrayD::from_shape_vec(ndarray::IxDyn(shape), v)
        .map(|a| Tensor::QU8(a, q))
        .map_err(|_| OpError::Shape(format!("internal: {n} codes do not fill {shape:?}")))
}

/// An Int8 output buffer whose codes start on a 64-byte boundary, so that the next op's
/// kernels can read its rows in place with aligned loads (see `kernels::aligned`).
pub struct OutCodes {
    v: Vec<u8>,
    off: usize,
    len: usize,
}

impl OutCodes {
    /// `len` zero codes.
    pub fn new(len: usize) -> Self {
        let (v, off) = crate::kernels::aligned::aligned_bytes(len);
        OutCodes { v, off, len }
    }

    /// `len` codes for an output its op overwrites entirely (the fast convolutions): the
    /// buffer of a freed activation when one fits (see [`recycle`]: its old codes stay
    /// until overwritten, no zero fill), else zeros. Zeroing a new buffer costs a serial
    /// pass over memory before the parallel kernels start (ResNet-50 at batch 16: ~6 % of
    /// the time in `memset`).
    pub fn overwritten(len: usize) -> Self {
        let need = len + crate::kernels::aligned::ALIGN - 1;
        let spare = SPARE.with_borrow_mut(|spare| {
            // The smallest spare that holds `need` without wasting more than half of it.
            let (i, _) = spare
                .iter()
                .enumerate()
                .filter(|(_, v)| v.len() >= need && v.len() <= 2 * need)
                .min_by_key(|(_, v)| v.len())?;
            Some(spare.swap_remove(i))
        });
        match spare {
            Some(v) => {
                let off = crate::kernels::aligned::aligned_offset(&v);
                OutCodes { v, off, len }
            }
            None => Self::new(len),
        }
    }

    /// The codes.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.v[self.off..self.off + self.len]
    }

    /// The codes as a tensor of `shape` (which must hold `len` elements), without copying.
    pub fn into_tensor(self, shape: &[usize], q: QParams) -> OpResult<Tensor> {
        let n = self.len;
        ndarray::Array1::from_vec(self.v)
            .slice_move(ndarray::s![self.off..self.off + n])
            .into_shape_with_order(ndarray::IxDyn(shape))
            .map(|a| Tensor::QU8(a, q))
            .map_err(|_| OpError::Shape(format!("internal: {n} codes do not fill {shape:?}")))
    }
}

thread_local! {
    /// Code buffers of freed Int8 activations for [`OutCodes::overwritten`], per thread: a
    /// buffer freed on a thread was last written there, so its lines are likely still in that
    /// core's caches (the threads of a split batch each reuse their own).
    static SPARE: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// At most this many spare buffers are kept (the largest are kept when there are more).
const SPARE_MAX: usize = 12;

/// Buffers smaller than this are not worth keeping.
const SPARE_MIN: usize = 64 << 10;

/// Takes a value the caller no longer needs: the code buffer of a large Int8 tensor goes to
/// the spare list of [`OutCodes::overwritten`] (bounded: [`SPARE_MAX`] buffers); anything
/// else is dropped.
pub fn recycle(t: Tensor) {
    let Tensor::QU8(a, _) = t else {
        return;
    };
    if a.len() < SPARE_MIN {
        return;
    }
    let (v, _) = a.into_raw_vec_and_offset();
    SPARE.with_borrow_mut(|spare| {
        spare.push(v);
        if spare.len() > SPARE_MAX {
            if let Some((i, _)) = spare.iter().enumerate().min_by_key(|(_, v)| v.len()) {
                spare.swap_remove(i);
            }
        }
    });
}

/// Reads `Y_scale` (float, field `f`) and `Y_zero_point` (int, default 0); `None` when
/// `Y_scale` is absent.
pub fn read_y_params(op: &str, args: &Args) -> OpResult<Option<QParams>> {
    let scale = match args.get("Y_scale") {
        // DNNLOWP only warns about a Y_zero_point without Y_scale; it has no effect.
        None => return Ok(None),
        Some(crate::ArgValue::F(s)) => *s,
        Some(other) => {
            return Err(OpError::BadArg {
                name: "Y_scale".into(),
                msg: format!(
                    "{op}: must be a single float (field f), found {other:?} \
                     (DNNLOWP ignores a Y_scale stored in another field)"
                ),
            })
        }
    };
    let zp = args.int_or("Y_zero_point", 0)?;
    if !(scale.is_finite() && scale > 0.0) {
        return Err(OpError::BadArg {
            name: "Y_scale".into(),
            msg: format!("{op}: must be finite and > 0, got {scale}"),
        });
    }
    if !(0..=255).contains(&zp) {
        return Err(OpError::BadArg {
            name: "Y_zero_point".into(),
            msg: format!("{op}: must be in [0, 255] for uint8 outputs, got {zp}"),
        });
    }
    Ok(Some(QParams {
        scale,
        zero_point: zp as i32,
    }))
}

/// The static output parameters an operator computes with: `Y_scale`/`Y_zero_point`
/// (required; dynamic per-batch quantization is not implemented), re-derived for ReLU when
/// `relu_fused` or `followed_by = "Relu"` (see [`requant::relu_output_params`]).
pub fn static_output_params(spec: &NodeSpec, relu_fused: bool) -> OpResult<QParams> {
    let op = spec.op_type.as_str();
    let y = read_y_params(op, &spec.args)?.ok_or_else(|| OpError::BadArg {
        name: "Y_scale".into(),
        msg: format!(
            "{op}: missing; the output quantization must be static (Y_scale as a float, \
             Y_zero_point as an int) because dynamic quantization is not implemented"
        ),
    })?;
    if relu_fused || followed_by_relu(spec)? {
        Ok(requant::relu_output_params(y))
    } else {
        Ok(y)
    }
}

/// Checks the DNNLOWP arguments that would change what an operator computes:
/// `dequantize_output` (unsupported), `followed_by` (only "Relu" is implemented; unknown
/// values are ignored as in DNNLOWP), per-group/per-channel weight quantization
/// (unsupported: weights come as one Int8 tensor with one parameter pair), except
/// `quantize_channelwise = 1` together with the c2q `W_scales` argument.
pub fn check_dnnlowp_args(spec: &NodeSpec) -> OpResult<()> {
    let op = spec.op_type.as_str();
    if spec.args.int_or("dequantize_output", 0)? != 0 {
        return Err(OpError::Unsupported(format!(
            "{op} with dequantize_output = 1 (float output)"
        )));
    }
    for name in ["quantize_groupwise", "quantize_channelwise"] {
        if name == "quantize_channelwise" && spec.args.has("W_scales") {
            continue;
        }
        if spec.args.int_or(name, 0)? != 0 {
            return Err(OpError::Unsupported(format!(
                "{op} with {name} = 1: per-group/per-channel weight parameters need weights \
                 that carry several (scale, zero point) pairs"
            )));
        }
    }
    if let Some(f) = spec.args.string("followed_by")? {
        if f == "Sigmoid" || f == "Tanh" {
            return Err(OpError::Unsupported(format!(
                "{op} with followed_by = {f:?} (fixed lookup-table output parameters)"
            )));
        }
    }
    Ok(())
}

/// Reads the c2q per-channel weight scales `W_scales` (a float list, each finite and > 0);
/// `None` when absent. The length is checked against the output channels by
/// [`check_w_scales_len`] once the weight shape is known.
pub fn read_w_scales(spec: &NodeSpec) -> OpResult<Option<Vec<f32>>> {
    let op = spec.op_type.as_str();
    let bad = |msg: String| OpError::BadArg {
        name: "W_scales".into(),
        msg: format!("{op}: {msg}"),
    };
    let Some(v) = spec.args.floats("W_scales")? else {
        return Ok(None);
    };
    if v.is_empty() {
        return Err(bad(
            "must hold one weight scale per output channel, got none".into(),
        ));
    }
    if let Some((i, s)) = v
        .iter()
        .enumerate()
        .find(|(_, s)| !(s.is_finite() && **s > 0.0))
    {
        return Err(bad(format!("scale {i} is {s} (must be finite and > 0)")));
    }
    Ok(Some(v))
}

/// Fails unless per-channel scales (if any) number exactly `channels`.
pub fn check_w_scales_len(op: &str, scales: Option<&[f32]>, channels: usize) -> OpResult<()> {
    match scales {
        Some(s) if s.len() != channels => Err(OpError::BadArg {
            name: "W_scales".into(),
            msg: format!(
                "{op}: has {} scales but the weights have {channels} output channels (need \
                 one per output channel)",
                s.len()
            ),
        }),
        _ => Ok(()),
    }
}

/// The weight scale of every output channel: `W_scales` when given (length already checked),
/// else the weight tensor's scale repeated.
pub fn channel_w_scales(scales: Option<&[f32]>, w: QParams, channels: usize) -> Vec<f32> {
    match scales {
        Some(s) => s.to_vec(),
        None => vec![w.scale; channels],
    }
}

fn followed_by_relu(spec: &NodeSpec) -> OpResult<bool> {
    Ok(spec.args.string("followed_by")?.as_deref() == Some("Relu"))
}

/// Caffe2 `canonical_axis_index`: `axis` in `[-rank, rank)`.
pub(crate) fn canonical_axis(op: &str, name: &str, axis: i64, shape: &[usize]) -> OpResult<usize> {
    let r = shape.len() as i64;
    if axis < -r || axis >= r {
        return Err(OpError::BadArg {
            name: name.to_string(),
            msg: format!("{op}: {axis} is out of range for a tensor of shape {shape:?}"),
        });
    }
    Ok(if axis < 0 { axis + r } else { axis } as usize)
}

/// True when two scales agree to 1e-5 relative (enough for scales printed with 6+ digits).
pub(crate) fn same_scale(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-5 * a.abs().max(b.abs())
}

/// Validates a Conv/FC bias description: `[len]`, either Int8 int32 with scale
/// `s_x · s_w` (within 1e-4 relative) and zero point 0, or f32 (quantized on the fly).
///
/// DNNLOWP itself enforces `|s_b − s_x·s_w| <= 1e-4` in absolute terms, which accepts almost
/// any scale at typical magnitudes (s_x·s_w ~ 1e-4); the relative check here is stricter.
pub fn check_bias_info(
    op: &str,
    b: &TensorInfo,
    len: usize,
    x: QParams,
    w: QParams,
) -> OpResult<()> {
    if b.shape.len() != 1 || b.shape[0] != len {
        return Err(OpError::Shape(format!(
            "{op}: bias {b} must have shape [{len}]"
        )));
    }
    match b.dtype {
        DType::QI32(q) => {
            let want = x.scale * w.scale;
            // Written so that a NaN scale fails too.
            let close = (q.scale - want).abs() <= 1e-4 * want;
            if !close {
                return Err(OpError::DType(format!(
                    "{op}: bias scale {} does not match input scale {} x weight scale {} = {want} \
                     (must agree within 1e-4 relative)",
                    q.scale, x.scale, w.scale
                )));
            }
            if q.zero_point != 0 {
                return Err(OpError::DType(format!(
                    "{op}: bias zero point must be 0, got {}",
                    q.zero_point
                )));
            }
            Ok(())
        }
        DType::F32 => Ok(()),
        other => Err(OpError::DType(format!(
            "{op}: bias must be an Int8 int32 tensor (qi32) or f32, got {}",
            other.name()
        ))),
    }
}

/// The int32 bias values of a Conv/FC (call [`check_bias_info`] first), one per entry of
/// `w_scales` (the weight scale of each output channel): Int8 int32 codes as they are, f32
/// values quantized with scale `s_x · w_scales[m]` ([`requant::quantize_bias`]), zeros
/// without a bias.
pub fn bias_values(
    op: &str,
    b: Option<&Tensor>,
    x: QParams,
    w_scales: &[f32],
) -> OpResult<Vec<i32>> {
    let len = w_scales.len();
    match b {
        None => Ok(vec![0; len]),
        Some(t) if t.shape() != [len] => Err(OpError::Shape(format!(
            "{op}: bias {:?} must have shape [{len}]",
            t.shape()
        ))),
        Some(Tensor::QI32(a, _)) => Ok(a
            .as_slice()
            .map_or_else(|| a.iter().copied().collect(), <[i32]>::to_vec)),
        Some(Tensor::F32(a)) => a
            .iter()
            .zip(w_scales)
            .map(|(&v, &ws)| {
                requant::quantize_bias(v, x.scale * ws)
                    .map_err(|e| OpError::DType(format!("{op}: {e}")))
            })
            .collect(),
        Some(other) => Err(OpError::DType(format!(
            "{op}: bias must be qi32 or f32, got {}",
            other.dtype().name()
        ))),
    }
}

/// `(q − z)` for every code, as i16 (codes and zero points are in [0, 255]).
pub fn centered_i16(codes: &[u8], zero_point: i32) -> Vec<i16> {
    codes
        .iter()
        .map(|&q| (i32::from(q) - zero_point) as i16)
        .collect()
}

/// Exact dot product of two i16 vectors with 32-bit (wrapping) accumulation.
#[inline]
pub fn dot_i16(a: &[i16], b: &[i16]) -> i32 {
    let mut acc = 0i32;
    for (&x, &y) in a.iter().zip(b) {
        acc = acc.wrapping_add(i32::from(x) * i32::from(y));
    }
    acc
}
