//! `Int8Lut`: a chain Int8Dequantize → element-wise fp32 ops (Clip, Relu) → Int8Quantize,
//! with only layout switches in between that cancel, run as one table lookup per code (a c2q
//! runtime fusion made by the pass `fuse_int8_lut`; not a Caffe2 op and never written to a
//! model file). Int8 nets whose ReLU6 stayed fp32 (MobileNetV2 before its Clip is absorbed
//! into the producer's range) spend most of their time in such chains.
//!
//! Every step of the chain maps one input code to one output code through the same f32
//! operations whatever the element's position, so the result for the input parameters `q`
//! is a 256-entry table: it is computed by running the chain's own operators on the 256
//! codes, once per input parameters (cached), and gives the same bytes as the chain.
//!
//! Arguments: `lut_ops` (strings: the element-wise op types in order), `e<i>_<name>` for each
//! argument `<name>` of op `i`, and the Int8Quantize's `Y_scale` / `Y_zero_point`.

use std::sync::Mutex;

use super::{qu8_info, qu8_tensor, OutCodes};
use crate::kernels::lut;
use crate::{
    build_op, expect_inputs, ArgValue, Args, DType, NodeSpec, Op, OpError, OpResult, QParams,
    Tensor, TensorInfo,
};

/// Element-wise fp32 ops a chain may contain (position-independent results).
pub const LUT_ELEMENTWISE: &[&str] = &["Clip", "Relu"];

/// The fused operator.
#[derive(Debug)]
pub struct Int8Lut {
    op_type: String,
    dequant: Box<dyn Op>,
    chain: Vec<Box<dyn Op>>,
    quant: Box<dyn Op>,
    /// Output parameters (the Int8Quantize's).
    y: QParams,
    reference: bool,
    /// The table of the last input parameters seen.
    cache: Mutex<Option<(QParams, Box<[u8; 256]>)>>,
}

impl Int8Lut {
    /// Builds the operator from the fused spec (see the module docs).
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        spec.check_inputs(1, 1)?;
        spec.check_outputs(1, 1)?;
        let types = match spec.args.get("lut_ops") {
            Some(ArgValue::Strings(v)) => v
                .iter()
                .map(|t| String::from_utf8_lossy(t).into_owned())
                .collect::<Vec<_>>(),
            // An empty repeated field is indistinguishable from an absent one.
            None | Some(ArgValue::Empty) => Vec::new(),
            _ => {
                return Err(OpError::BadArg {
                    name: "lut_ops".into(),
                    msg: "Int8Lut needs the element-wise op types as strings".into(),
                })
            }
        };
        let sub = |op_type: &str, args: Args| -> OpResult<Box<dyn Op>> {
            build_op(&spec.part(op_type, args, 1, 1))?
                .ok_or_else(|| OpError::Unsupported(format!("Int8Lut: {op_type}")))
        };
        let mut chain = Vec::with_capacity(types.len());
        for (i, t) in types.iter().enumerate() {
            if !LUT_ELEMENTWISE.contains(&t.as_str()) {
                return Err(OpError::BadArg {
                    name: "lut_ops".into(),
                    msg: format!("{t} is not one of {LUT_ELEMENTWISE:?}"),
                });
            }
            let prefix = format!("e{i}_");
            let mut args = Args::new();
            for (name, v) in spec.args.iter() {
                if let Some(n) = name.strip_prefix(&prefix) {
                    args.set(n, v.clone());
                }
            }
            chain.push(sub(t, args)?);
        }
        let mut qargs = Args::new();
        for name in ["Y_scale", "Y_zero_point"] {
            if let Some(v) = spec.args.get(name) {
                qargs.set(name, v.clone());
            }
        }
        let quant = sub("Int8Quantize", qargs)?;
        let y = match quant
            .infer(&[TensorInfo::new(DType::F32, vec![1])])?
            .remove(0)
            .dtype
        {
            DType::QU8(q) => q,
            other => {
                return Err(OpError::DType(format!(
                    "Int8Lut: the quantize step gives {}",
                    other.name()
                )))
            }
        };
        Ok(Int8Lut {
            op_type: spec.op_type.clone(),
            dequant: sub("Int8Dequantize", Args::new())?,
            chain,
            quant,
            y,
            reference: spec.reference,
            cache: Mutex::new(None),
        })
    }

    /// Output parameters (the Int8Quantize's).
    pub fn output_params(&self) -> QParams {
        self.y
    }

    /// True when the operator runs the chain itself (the scalar reference).
    pub fn is_reference(&self) -> bool {
        self.reference
    }

    /// Runs the chain's operators on `x`.
    fn run_chain(&self, x: &Tensor) -> OpResult<Tensor> {
        let mut t = self.dequant.eval(&[x])?.remove(0);
        for op in &self.chain {
            t = op.eval(&[&t])?.remove(0);
        }
        Ok(self.quant.eval(&[&t])?.remove(0))
    }

    /// The table for input parameters `q`.
    pub(crate) fn table(&self, q: QParams) -> OpResult<Box<[u8; 256]>> {
        if let Ok(c) = self.cache.lock() {
            if let Some((cq, t)) = c.as_ref() {
                if *cq == q {
                    return Ok(t.clone());
                }
            }
        }
        let codes = Tensor::QU8(
            ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[256]), (0..=255u8).collect())
                .map_err(|e| OpError::Shape(format!("internal: {e}")))?,
            q,
        );
        let t = self.run_chain(&codes)?;
        let (v, _) = qu8_tensor(&self.op_type, "table", &t)?;
        let arr = <[u8; 256]>::try_from(v)
            .map_err(|_| OpError::Shape("internal: table of the wrong length".into()))?;
        let out = Box::new(arr);
        if let Ok(mut c) = self.cache.lock() {
            *c = Some((q, out.clone()));
        }
        Ok(out)
    }
}

impl Op for Int8Lut {
    fn op_type(&self) -> &str {
        &self.op_type
    }

    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        expect_inputs(inputs, 1, 1)?;
        qu8_info(&self.op_type, "X", &inputs[0])?;
        Ok(vec![TensorInfo::new(
            DType::QU8(self.y),
            inputs[0].shape.clone(),
        )])
    }

    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        expect_inputs(inputs, 1, 1)?;
        let (x, q) = qu8_tensor(&self.op_type, "X", inputs[0])?;
        if self.reference {
            return Ok(vec![self.run_chain(inputs[0])?]);
        }
        let table = self.table(q)?;
        let mut out = OutCodes::new(x.len());
        let y = out.as_mut_slice();
        crate::kernels::qeltwise::par_chunks(y, |start, yc| {
            lut::map(&x[start..start + yc.len()], &table, yc)
        });
        Ok(vec![out.into_tensor(inputs[0].shape(), self.y)?])
    }
}
