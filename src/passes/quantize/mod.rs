//! The int8 rewrite: an optimized fp32 Caffe2 net plus activation quantization parameters
//! becomes a DNNLOWP int8 net in the format of the published `resnet50_quantized` model
//! (facts §5, §6.2, §7.9, §8.1–8.2).
//!
//! Each op family owns its rule, one file each, listed in [`RULES`]: [`conv`], [`fc`],
//! [`eltwise`], [`pool`], [`passthrough`] (Relu, Flatten), [`concat`]; [`clip`] folds a
//! ReLU6 into the range of the op before it. A rule only decides ([`Plan`]); this module
//! emits, quantizes weights and biases, and keeps the layout boundaries. The arithmetic
//! (parameter choice, weight quantization, bias correction) lives in [`crate::quant`].
//!
//! Conventions of the output:
//! - the quantized region is NHWC: a 4-D fp32 tensor enters it through `NCHW2NHWC` (no engine)
//!   and `Int8Quantize`, and leaves it through `Int8Dequantize` and `NHWC2NCHW`; tensors of
//!   other ranks are quantized and dequantized without a layout change;
//! - the int8 version of blob `b` is named `b_int8`, the NHWC fp32 version `b_nhwc`; a value
//!   dequantized for an fp32 reader gets the original name back, so fp32 ops and the net's
//!   external outputs keep their names and shapes (drop-in replacement);
//! - weights are quantized per tensor with `ChooseQuantizationParams(min, max, 0, 255,
//!   preserve_sparsity = true)` ([`weight_qparams_min_max`]), which gives the symmetric zero
//!   point 128 in uint8 storage whenever the weights have both signs, and stored as uint8
//!   codes in `Int8GivenTensorFill` (`<w>_int8`, conv weights transposed to `[M, kH, kW, C/G]`);
//! - biases become `Int8GivenIntTensorFill` (`<b>_int8`) with scale `s_x · s_w`, zero point 0
//!   and `b_q = round_half_even(b / (s_x · s_w))`; a bias shared by ops with different input
//!   or weight scales gets one copy per scale (`<b>_v1_int8`, ...).
//!
//! With [`WeightGranularity::PerChannel`] (and, under the default `Auto`, for the layers whose
//! per-tensor weights lose too much), Conv and FC weights get one symmetric scale per
//! output channel (zero point 128 for all). Caffe2's `Int8GivenTensorFill` carries one scale,
//! and DNNLOWP's own per-channel form needs FBGEMM-packed weight blobs, so the per-channel
//! scales are a **c2q extension**: the op gets `quantize_channelwise = 1` and the float list
//! `W_scales` (one scale per output channel); the weight tensor's own `Y_scale` is the largest
//! channel scale and the bias is quantized per channel with `s_x · W_scales[m]` (its tensor
//! scale `s_x · max(W_scales)`). Real Caffe2 would ignore `W_scales`: per-tensor output
//! ([`WeightGranularity::PerTensor`]) is the portable form, per-channel the (accurate) default.

use std::collections::{HashMap, HashSet};

use caffe2_proto::{NetDef, OperatorDef};

use ops::int8::requant::relu_output_params;
use ops::{QParams, Tensor, TensorInfo};

use crate::graph::builder::{arg, op_def, Arg};
use crate::passes::util::{arg_i, arg_s};
use crate::quant::bias_correction::{output_shift, weight_error_sums, ChannelMeans};
use crate::quant::clip::{absorbed_params, saturation_is_clip};
use crate::quant::qparams::{
    bias_scale, choose_quantization_params, quantize_bias, quantize_u8, weight_qparams_min_max,
};
use crate::quant::weights::{
    channel_sqnr_p10, per_channel_weights, symmetric_extent, AUTO_PER_TENSOR_MIN_DB,
};
use crate::quant::QuantKind;
use crate::{Error, Model, Result};

mod clip;
mod concat;
mod conv;
mod eltwise;
mod fc;
mod model;
mod params;
mod passthrough;
mod pool;

use clip::clip_candidates;
use model::fill_op;
pub use model::Int8Model;

/// How [`quantize_model`] quantizes.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeOptions {
    /// Weight scales per output channel of Conv/FC (the default; a c2q extension, see module
    /// docs), per tensor (portable), or per channel only where one per tensor loses too much
    /// (`Auto`).
    pub weights: WeightGranularity,
    /// How weight ranges are chosen: `MinMax` (the default: the full range) or a histogram
    /// search such as `L2` (what the published ResNet-50 used); always symmetric.
    pub weight_kind: QuantKind,
    /// Op types kept fp32.
    pub exclude_ops: Vec<String>,
    /// Op indices (in `model.predict_def`) kept fp32.
    pub exclude_nodes: Vec<usize>,
    /// Engine of the emitted Int8 ops (`"DNNLOWP"`).
    pub engine: String,
    /// Shape of every data input (NCHW for images), used for shape inference.
    pub input_shapes: HashMap<String, Vec<usize>>,
    /// Channel means of the Conv/FC inputs: when set, each Conv/FC bias is corrected for the
    /// mean shift its weight quantization causes ([`crate::quant::bias_correction`]).
    pub bias_correction: Option<ChannelMeans>,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions {
            weights: WeightGranularity::PerChannel,
            weight_kind: QuantKind::MinMax,
            exclude_ops: Vec::new(),
            exclude_nodes: Vec::new(),
            engine: "DNNLOWP".to_string(),
            input_shapes: HashMap::new(),
            bias_correction: None,
        }
    }
}

/// How many scales a Conv/FC weight gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightGranularity {
    /// One scale per tensor: the portable DNNLOWP form.
    PerTensor,
    /// One scale per output channel (c2q's `W_scales` extension).
    PerChannel,
    /// Per tensor, except layers whose per-tensor weight SQNR is below
    /// [`AUTO_PER_TENSOR_MIN_DB`], which get per-channel scales.
    Auto,
}

impl WeightGranularity {
    /// Parses `per-tensor`, `per-channel` or `auto`.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s {
            "per-tensor" | "tensor" => Ok(Self::PerTensor),
            "per-channel" | "channel" => Ok(Self::PerChannel),
            "auto" => Ok(Self::Auto),
            _ => Err(format!("`{s}`: expected auto, per-tensor or per-channel")),
        }
    }

    /// The name [`WeightGranularity::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            Self::PerTensor => "per-tensor",
            Self::PerChannel => "per-channel",
            Self::Auto => "auto",
        }
    }
}

/// What happened to one op of the fp32 net.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Rewritten to this Int8 op type.
    Quantized(String),
    /// Kept as an fp32 op, for this reason.
    KeptFp32(String),
    /// Gone from the int8 net: what it did is part of another op's int8 output (a Clip
    /// whose bounds are the saturation of its producer's output range, see [`crate::quant::clip`]).
    Absorbed(String),
}

/// One line of the rewrite report.
#[derive(Debug, Clone, PartialEq)]
pub struct RewriteNote {
    /// Index of the op in the fp32 predict net.
    pub index: usize,
    /// Its fp32 op type.
    pub op_type: String,
    /// What became of it.
    pub outcome: Outcome,
}

/// What is known about the current value of a blob while rewriting.
#[derive(Debug, Clone, Default)]
struct BlobState {
    /// The fp32 (NCHW) value exists under the original name.
    fp32: bool,
    /// Quantization parameters observed for the fp32 value (to quantize it on demand).
    fp32_q: Option<QParams>,
    /// The int8 (NHWC if 4-D) version: name and parameters.
    int8: Option<(String, QParams)>,
    /// Description of the fp32 value (NCHW).
    info: Option<TensorInfo>,
}

/// A planned Int8 op: everything decided, nothing emitted yet.
struct Plan {
    op_type: String,
    /// Activation inputs (original blob names, to be read in int8) in op input order.
    act_inputs: Vec<String>,
    /// The weight input, if any.
    weight: Option<WeightPlan>,
    /// The bias input (fp32 parameter name), if any.
    bias: Option<String>,
    /// Arguments of the new op.
    args: Vec<(String, Arg)>,
    /// Output quantization parameters the op will produce.
    out_q: QParams,
    /// Extra outputs that stay non-quantized (Concat split_info).
    plain_outputs: usize,
    /// Remark for the report.
    note: Option<String>,
    /// Name of output 0 instead of the op's own (the blob of an absorbed Clip).
    rename: Option<String>,
}

/// How a weight is laid out before quantization.
struct WeightPlan {
    name: String,
    /// Axis permutation applied to the weight (None = as is).
    permute: Option<Vec<usize>>,
    /// Shape to view the weight in before the permutation and reshape back after it.
    view: Option<(Vec<usize>, Vec<usize>)>,
    /// Input scale (for the bias scale).
    x_scale: f32,
}

/// A quantized weight: its int8 name, tensor parameters and (per-channel mode) the scale of
/// every output channel.
#[derive(Debug, Clone)]
struct QWeight {
    name: String,
    q: QParams,
    channel_scales: Option<Vec<f32>>,
    /// Signal-to-quantization-noise ratio of the weight codes, dB (10th percentile over the
    /// output channels).
    sqnr: f64,
    /// The per-tensor SQNR, when `Auto` measured it and chose per-channel instead.
    per_tensor_sqnr: Option<f64>,
    /// `Σ_k (W_q − W)` per (output channel, input channel), see
    /// [`crate::quant::bias_correction::weight_error_sums`]; empty without bias correction.
    err_sums: Vec<f64>,
    /// (output channels, input channels per group) of `err_sums`.
    err_shape: (usize, usize),
}

/// The rewriter's working state.
struct Rewriter<'a> {
    model: &'a Model,
    opts: &'a QuantizeOptions,
    blobs: HashMap<String, BlobState>,
    out: Vec<OperatorDef>,
    /// Int8 params in creation order.
    int8_params: Vec<(String, Tensor)>,
    /// Weight cache: fp32 name -> quantized weight.
    weights: HashMap<String, QWeight>,
    /// Bias cache: fp32 name -> [(scales, int8 name)].
    biases: HashMap<String, Vec<(Vec<f32>, String)>>,
    /// Warnings for the report (layers likely to lose accuracy, with the fix).
    warnings: Vec<String>,
}

fn qargs(q: QParams) -> Vec<(String, Arg)> {
    vec![
        ("Y_scale".to_string(), Arg::F(q.scale)),
        ("Y_zero_point".to_string(), Arg::I(q.zero_point as i64)),
    ]
}

/// Copies an op's arguments except `order` and the output-parameter ones.
fn copy_args(op: &OperatorDef) -> Vec<(String, Arg)> {
    op.arg
        .iter()
        .filter(|a| !matches!(a.name(), "order" | "Y_scale" | "Y_zero_point"))
        .filter_map(|a| {
            let v = if a.has_f() {
                Arg::F(a.f())
            } else if a.has_i() {
                Arg::I(a.i())
            } else if a.has_s() {
                Arg::B(a.s().to_vec())
            } else if !a.ints.is_empty() {
                Arg::Ints(a.ints.clone())
            } else if !a.floats.is_empty() {
                Arg::Floats(a.floats.clone())
            } else {
                return None;
            };
            Some((a.name().to_string(), v))
        })
        .collect()
}

fn make_op(
    op_type: &str,
    inputs: &[String],
    outputs: &[String],
    args: Vec<(String, Arg)>,
    engine: &str,
) -> OperatorDef {
    let ins: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let outs: Vec<&str> = outputs.iter().map(String::as_str).collect();
    let mut op = op_def(op_type, &ins, &outs, Vec::new());
    op.arg = args.into_iter().map(|(n, v)| arg(&n, v)).collect();
    if !engine.is_empty() {
        op.set_engine(engine.to_string());
    }
    op
}

fn is_order_nchw(op: &OperatorDef) -> bool {
    arg_s(op, "order").is_none_or(|o| o == "NCHW")
}

/// What a rule returns: the planned Int8 op, or why the op stays fp32.
type PlanResult = std::result::Result<Plan, String>;

/// A rewrite rule: the fp32 op types it handles and how it plans their Int8 form.
struct Rule {
    types: &'static [&'static str],
    plan: fn(&Rewriter<'_>, &OperatorDef, &[Option<QParams>]) -> PlanResult,
}

/// Every rewrite rule; an op type listed in none stays fp32. (Clip is handled before the
/// rules: it disappears into its producer's range, see [`clip`].)
const RULES: &[Rule] = &[
    Rule {
        types: &["Conv", "ConvRelu"],
        plan: conv::plan,
    },
    Rule {
        types: &["FC"],
        plan: fc::plan,
    },
    Rule {
        types: &["Sum", "SumRelu", "Add", "AddRelu"],
        plan: eltwise::plan,
    },
    Rule {
        types: &["MaxPool", "AveragePool"],
        plan: pool::plan,
    },
    Rule {
        types: &["Relu", "Flatten"],
        plan: passthrough::plan,
    },
    Rule {
        types: &["Concat"],
        plan: concat::plan,
    },
];

/// The fp32 op types the quantizer rewrites to Int8 ops (plus Clip, absorbed).
pub fn rewritten_op_types() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = RULES.iter().flat_map(|r| r.types.iter().copied()).collect();
    v.push("Clip");
    v
}

/// The chosen parameters of output `k`, or why there are none.
fn out_act(act: &[Option<QParams>], k: usize) -> std::result::Result<QParams, String> {
    act.get(k)
        .copied()
        .flatten()
        .ok_or_else(|| format!("output {k} was not observed (no parameters)"))
}

/// The output parameters of a Relu-fused op: zero point 0 (re-derived when calibration gave
/// another), with a note for the report when they changed.
fn relu_fix(q: QParams) -> (QParams, Option<String>) {
    if q.zero_point == 0 {
        (q, None)
    } else {
        let r = relu_output_params(q);
        (
            r,
            Some(format!(
                "Relu-fused output had zero point {}; using scale {} zero point 0",
                q.zero_point, r.scale
            )),
        )
    }
}

impl<'a> Rewriter<'a> {
    fn rank(&self, blob: &str) -> Option<usize> {
        self.blobs
            .get(blob)
            .and_then(|s| s.info.as_ref())
            .map(|i| i.shape.len())
    }

    fn shape(&self, blob: &str) -> Option<Vec<usize>> {
        self.blobs
            .get(blob)
            .and_then(|s| s.info.as_ref())
            .map(|i| i.shape.clone())
    }

    /// Parameters the int8 version of `blob` has or would get when quantized on demand.
    fn int8_q(&self, blob: &str) -> Option<QParams> {
        let s = self.blobs.get(blob)?;
        if self.model.params.contains_key(blob) {
            return None;
        }
        match &s.int8 {
            Some((_, q)) => Some(*q),
            None if s.fp32 => s.fp32_q,
            None => None,
        }
    }

    /// The name of the int8 version of `blob`, emitting `NCHW2NHWC` + `Int8Quantize` if needed.
    fn ensure_int8(&mut self, blob: &str) -> Result<String> {
        let engine = self.opts.engine.clone();
        let rank = self.rank(blob);
        let s = self.blobs.entry(blob.to_string()).or_default();
        if let Some((n, _)) = &s.int8 {
            return Ok(n.clone());
        }
        let q = s.fp32_q.filter(|_| s.fp32).ok_or_else(|| {
            Error::Input(format!(
                "internal: blob `{blob}` has no quantization parameters to quantize with"
            ))
        })?;
        let name = format!("{blob}_int8");
        s.int8 = Some((name.clone(), q));
        let mut src = blob.to_string();
        if rank == Some(4) {
            let nhwc = format!("{blob}_nhwc");
            self.out.push(make_op(
                "NCHW2NHWC",
                &[src],
                std::slice::from_ref(&nhwc),
                Vec::new(),
                "",
            ));
            src = nhwc;
        }
        self.out.push(make_op(
            "Int8Quantize",
            &[src],
            std::slice::from_ref(&name),
            qargs(q),
            &engine,
        ));
        Ok(name)
    }

    /// Makes the fp32 value of `blob` available under its name (Dequantize + NHWC2NCHW).
    fn ensure_fp32(&mut self, blob: &str) {
        let engine = self.opts.engine.clone();
        let rank = self.rank(blob);
        let Some(s) = self.blobs.get_mut(blob) else {
            return;
        };
        if s.fp32 {
            return;
        }
        let Some((int8, _)) = s.int8.clone() else {
            return;
        };
        s.fp32 = true;
        if rank == Some(4) {
            let nhwc = format!("{blob}_nhwc");
            self.out.push(make_op(
                "Int8Dequantize",
                &[int8],
                std::slice::from_ref(&nhwc),
                Vec::new(),
                &engine,
            ));
            self.out.push(make_op(
                "NHWC2NCHW",
                &[nhwc],
                &[blob.to_string()],
                Vec::new(),
                "",
            ));
        } else {
            self.out.push(make_op(
                "Int8Dequantize",
                &[int8],
                &[blob.to_string()],
                Vec::new(),
                &engine,
            ));
        }
    }

    fn param_f32(&self, name: &str) -> std::result::Result<&Tensor, String> {
        match self.model.params.get(name) {
            Some(t @ Tensor::F32(_)) => Ok(t),
            Some(t) => Err(format!(
                "parameter `{name}` is {} (expected f32)",
                t.dtype().name()
            )),
            None => Err(format!("`{name}` is not a constant parameter")),
        }
    }

    fn act_q(&self, blob: &str) -> std::result::Result<QParams, String> {
        self.int8_q(blob)
            .ok_or_else(|| format!("input `{blob}` has no quantization parameters"))
    }

    /// Decides how op `i` is rewritten, or why it stays fp32.
    fn plan(&self, i: usize, op: &OperatorDef, act: &[Option<QParams>]) -> PlanResult {
        let t = op.type_();
        if t == "Softmax" {
            return Err("Softmax stays fp32 (as in the published nets)".into());
        }
        if self.opts.exclude_ops.iter().any(|e| e == t) {
            return Err("excluded by op type".into());
        }
        if self.opts.exclude_nodes.contains(&i) {
            return Err("excluded by index".into());
        }
        if op.output.is_empty() {
            return Err("no outputs".into());
        }
        match RULES.iter().find(|r| r.types.contains(&t)) {
            Some(rule) => (rule.plan)(self, op, act),
            None => Err("no int8 rewrite for this op type".into()),
        }
    }

    /// The shape of `blob` when it is 4-D, else why not.
    fn need_4d(&self, blob: &str) -> std::result::Result<Vec<usize>, String> {
        match self.shape(blob) {
            Some(s) if s.len() == 4 => Ok(s),
            Some(s) => Err(format!("input `{blob}` is {}-D (expected 4-D)", s.len())),
            None => Err(format!("shape of `{blob}` unknown")),
        }
    }

    /// Emits the planned op; returns a remark on its weights for the report, if any.
    fn emit(&mut self, i: usize, op: &OperatorDef, plan: Plan) -> Result<Option<String>> {
        let mut weight_note = None;
        let mut inputs = Vec::new();
        for x in &plan.act_inputs {
            inputs.push(self.ensure_int8(x)?);
        }
        let mut args = plan.args;
        if let Some(wp) = &plan.weight {
            let qw = self.weight(wp)?;
            inputs.push(qw.name.clone());
            let tensor_scale = bias_scale(wp.x_scale, qw.q.scale);
            if let Some(t) = qw.per_tensor_sqnr {
                weight_note = Some(format!(
                    "per-channel weights: per tensor their channel SQNR (10th percentile) would \
                     be {t:.1} dB (< {AUTO_PER_TENSOR_MIN_DB} dB), per channel {:.1} dB",
                    qw.sqnr
                ));
            } else if qw.sqnr < AUTO_PER_TENSOR_MIN_DB {
                let why = format!(
                    "weight SQNR {:.1} dB in a tenth of the channels (< {AUTO_PER_TENSOR_MIN_DB} dB): the int8 layer may be \
                     badly off; try --weights per-channel or --weight-kind l2, or keep it fp32 with \
                     --exclude-nodes {i}",
                    qw.sqnr
                );
                self.warnings
                    .push(format!("op #{i} {} `{}`: {why}", op.type_(), op.name()));
                weight_note = Some(why);
            }
            if let Some(scales) = &qw.channel_scales {
                args.push(("quantize_channelwise".into(), Arg::I(1)));
                args.push(("W_scales".into(), Arg::Floats(scales.clone())));
            }
            if let Some(b) = &plan.bias {
                let scales: Vec<f32> = match &qw.channel_scales {
                    Some(cs) => cs.iter().map(|&s| bias_scale(wp.x_scale, s)).collect(),
                    None => vec![tensor_scale],
                };
                let shift = self.bias_shift(op, &qw);
                inputs.push(self.bias(b, &scales, tensor_scale, shift.as_deref())?);
            }
        }
        let n_q = op.output.len() - plan.plain_outputs;
        let mut outputs = Vec::new();
        for (k, o) in op.output.iter().enumerate() {
            if k == 0 && plan.rename.is_some() {
                outputs.push(format!("{}_int8", plan.rename.as_deref().unwrap_or(o)));
            } else if k < n_q {
                outputs.push(format!("{o}_int8"));
            } else {
                outputs.push(o.clone());
            }
        }
        let mut new = make_op(&plan.op_type, &inputs, &outputs, args, &self.opts.engine);
        new.set_name(op.name().to_string());
        self.out.push(new);
        for (k, o) in op.output.iter().enumerate() {
            let s = self.blobs.entry(o.clone()).or_default();
            if k < n_q {
                *s = BlobState {
                    fp32: false,
                    fp32_q: None,
                    int8: Some((outputs[k].clone(), plan.out_q)),
                    info: s.info.take(),
                };
            } else {
                *s = BlobState {
                    fp32: true,
                    fp32_q: None,
                    int8: None,
                    info: s.info.take(),
                };
            }
        }
        Ok(weight_note)
    }
}

/// Rewrites an optimized fp32 model (see [`Model::optimized`]: BN folded, Relu fused into
/// ConvRelu/SumRelu, Dropout removed) into a DNNLOWP int8 model.
///
/// `act[i][k]` holds the chosen parameters of output `k` of op `i` of `model.predict_def`
/// (None if not observed); `input_q` those of each data input; `opts.input_shapes` the shape
/// of each data input. Ops that cannot be quantized (Softmax, unsupported types, excluded
/// ones, missing parameters) stay fp32 behind `Int8Dequantize`/`NHWC2NCHW` boundaries.
pub fn quantize_model(
    model: &Model,
    act: &[Vec<Option<QParams>>],
    input_q: &HashMap<String, QParams>,
    opts: &QuantizeOptions,
) -> Result<Int8Model> {
    let def = &model.predict_def;
    if let Some(&bad) = opts.exclude_nodes.iter().find(|&&i| i >= def.op.len()) {
        return Err(Error::Input(format!(
            "exclude node {bad}: the (optimized) net has only {} ops (indices 0..{})",
            def.op.len(),
            def.op.len().saturating_sub(1)
        )));
    }
    if let Some(bad) = opts
        .exclude_ops
        .iter()
        .find(|t| !def.op.iter().any(|o| o.type_() == t.as_str()))
    {
        let mut types: Vec<&str> = def.op.iter().map(|o| o.type_()).collect();
        types.sort_unstable();
        types.dedup();
        return Err(Error::Input(format!(
            "exclude op type `{bad}`: no op of that type in the (optimized) net; it has {}",
            types.join(", ")
        )));
    }
    let data_inputs = model.data_inputs();
    let mut feed = HashMap::new();
    for d in &data_inputs {
        let shape = opts.input_shapes.get(d).ok_or_else(|| {
            Error::Input(format!(
                "QuantizeOptions::input_shapes has no shape for data input `{d}`"
            ))
        })?;
        feed.insert(d.clone(), TensorInfo::f32(shape.clone()));
    }
    let shapes = model.infer(&feed).check()?;

    let mut rw = Rewriter {
        model,
        opts,
        blobs: HashMap::new(),
        out: Vec::new(),
        int8_params: Vec::new(),
        weights: HashMap::new(),
        biases: HashMap::new(),
        warnings: Vec::new(),
    };
    for (name, t) in &model.params {
        rw.blobs.insert(
            name.clone(),
            BlobState {
                fp32: true,
                fp32_q: None,
                int8: None,
                info: Some(t.info()),
            },
        );
    }
    for d in &data_inputs {
        rw.blobs.insert(
            d.clone(),
            BlobState {
                fp32: true,
                fp32_q: input_q.get(d).copied(),
                int8: None,
                info: feed.get(d).cloned(),
            },
        );
    }

    let empty = Vec::new();
    let mut report = Vec::with_capacity(def.op.len());
    let excluded = |j: usize, op: &OperatorDef| {
        opts.exclude_nodes.contains(&j) || opts.exclude_ops.iter().any(|t| t == op.type_())
    };
    let clips = clip_candidates(def, excluded);
    // Clip index -> (producer index, its output range) for the Clips absorbed so far.
    let mut absorbed: HashMap<usize, (usize, QParams)> = HashMap::new();
    for (i, op) in def.op.iter().enumerate() {
        let infos = shapes
            .per_node
            .get(i)
            .cloned()
            .flatten()
            .unwrap_or_default();
        let op_act = act.get(i).unwrap_or(&empty);
        let outcome = if let Some(&(p, q)) = absorbed.get(&i) {
            // The producer's int8 output already is the clipped value under this name.
            let name = format!("{}_int8", op.output[0]);
            let s = rw.blobs.entry(op.output[0].clone()).or_default();
            *s = BlobState {
                fp32: false,
                fp32_q: None,
                int8: Some((name, q)),
                info: s.info.take(),
            };
            Outcome::Absorbed(format!(
                "saturation of op #{p}'s int8 output (range [{:.4}, {:.4}])",
                q.scale * (0 - q.zero_point) as f32,
                q.scale * (255 - q.zero_point) as f32
            ))
        } else {
            plan_and_emit(&mut rw, &clips, &mut absorbed, act, i, op, op_act)?
        };
        for (o, info) in op.output.iter().zip(infos) {
            if let Some(s) = rw.blobs.get_mut(o) {
                s.info = Some(info);
            }
        }
        report.push(RewriteNote {
            index: i,
            op_type: op.type_().to_string(),
            outcome,
        });
    }
    for o in &def.external_output {
        rw.ensure_fp32(o);
    }

    // Parameters: int8 ones first (creation order), then fp32 ones still read.
    let read: HashSet<&String> = rw.out.iter().flat_map(|o| o.input.iter()).collect();
    let mut ordered: Vec<(String, Tensor)> = rw
        .int8_params
        .iter()
        .filter(|(n, _)| read.contains(n))
        .cloned()
        .collect();
    let mut fp32_names: Vec<&String> = def
        .external_input
        .iter()
        .chain(def.op.iter().flat_map(|o| o.input.iter()))
        .filter(|n| model.params.contains_key(*n) && read.contains(n))
        .collect();
    let mut seen = HashSet::new();
    fp32_names.retain(|n| seen.insert(*n));
    for n in fp32_names {
        if let Some(t) = model.params.get(n) {
            ordered.push((n.clone(), t.clone()));
        }
    }

    let mut init = NetDef::new();
    init.set_name(format!("{}_int8_init", def.name()));
    let mut predict = NetDef::new();
    predict.set_name(format!("{}_int8", def.name()));
    predict.external_input = data_inputs.clone();
    for (n, t) in &ordered {
        init.op.push(fill_op(n, t)?);
        init.external_output.push(n.clone());
        predict.external_input.push(n.clone());
    }
    predict.op = rw.out;
    predict.external_output = def.external_output.clone();
    let params = ordered.into_iter().collect();
    Ok(Int8Model {
        init,
        predict,
        params,
        report,
        warnings: rw.warnings,
    })
}

/// Plans op `i` with its rule (a producer whose Clip folds in takes the Clip output's range)
/// and emits it, or keeps it fp32; returns the report outcome.
fn plan_and_emit(
    rw: &mut Rewriter<'_>,
    clips: &HashMap<usize, clip::ClipCandidate>,
    absorbed: &mut HashMap<usize, (usize, QParams)>,
    act: &[Vec<Option<QParams>>],
    i: usize,
    op: &OperatorDef,
    op_act: &[Option<QParams>],
) -> Result<Outcome> {
    // A producer whose Clip may fold in takes the Clip output's range, clipped.
    let cand = clips.get(&i).and_then(|c| {
        let q = act.get(c.clip)?.first().copied().flatten()?;
        Some((c, absorbed_params(q, c.min, c.max)?))
    });
    let mut own_act;
    let plan_act = match cand {
        Some((_, q)) if !op_act.is_empty() => {
            own_act = op_act.to_vec();
            own_act[0] = Some(q);
            &own_act
        }
        _ => op_act,
    };
    Ok(match rw.plan(i, op, plan_act) {
        Ok(mut plan) => {
            let mut note = plan.note.clone();
            if let Some((c, _)) = cand.filter(|(c, _)| saturation_is_clip(plan.out_q, c.min, c.max))
            {
                plan.rename = Some(c.output.clone());
                absorbed.insert(c.clip, (i, plan.out_q));
                let n = format!("absorbs Clip #{} [{}, {}]", c.clip, c.min, c.max);
                note = Some(join_note(note, n));
            }
            let t = plan.op_type.clone();
            if let Some(w) = rw.emit(i, op, plan)? {
                note = Some(join_note(note, w));
            }
            Outcome::Quantized(match note {
                Some(n) => format!("{t} ({n})"),
                None => t,
            })
        }
        Err(reason) => {
            for x in &op.input {
                rw.ensure_fp32(x);
            }
            rw.out.push(op.clone());
            for (k, o) in op.output.iter().enumerate() {
                rw.blobs.insert(
                    o.clone(),
                    BlobState {
                        fp32: true,
                        fp32_q: op_act.get(k).copied().flatten(),
                        int8: None,
                        info: None,
                    },
                );
            }
            Outcome::KeptFp32(reason)
        }
    })
}

/// `old; new`, or `new` alone.
fn join_note(old: Option<String>, new: String) -> String {
    match old {
        Some(o) => format!("{o}; {new}"),
        None => new,
    }
}
