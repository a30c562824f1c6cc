//! Int8Conv / Int8ConvRelu with DNNLOWP arithmetic (facts §6.4).
//!
//! For output channel `m` and output pixel `p`:
//! `raw = Σ (x − z_x)(w − z_w) + b_q[m]` over the `kH·kW·C/G` window cells of `m`'s group,
//! where padded cells take the value `z_x` (real 0) and so contribute nothing; then
//! `y = clamp(lrint(raw · M) + z_y, lo, 255)` with `M = s_x · s_w / s_y` in f32 and
//! `lo = z_y` for Int8ConvRelu ([`OutputStage`]). Accumulation is exact in 32 bits (for any
//! K ≤ 2^31 / 255² ≈ 33 000; beyond that it wraps like int32 hardware), also for the
//! `DNNLOWP_ACC16` engine, whose real 16-bit saturating accumulation is not emulated.
//! The weights are used as `w_u8 − z_w_u8`, which equals DNNLOWP's `w_i8 − z_w_i8`.
//!
//! Layouts: NHWC (default) X `[N, H, W, C]`, W `[M, kH, kW, C/G]`, Y `[N, H', W', M]`;
//! NCHW X `[N, C, H, W]`, W `[M, C/G, kH, kW]`, Y `[N, M, H', W']` (computed by converting to
//! NHWC and back). Geometry (kernel, stride, pads, dilation, group, legacy padding) comes
//! from [`ConvPoolGeometry`]. Only 2-D convolutions are implemented. Bias is optional (2 or
//! 3 inputs) and may be Int8 int32 or f32.
//!
//! Per-channel weight scales: with the c2q argument `W_scales` (one scale per output
//! channel), channel `m` uses `M[m] = s_x · W_scales[m] / s_y` and a float bias is quantized
//! with `s_x · W_scales[m]` (see the [module docs](super)).
//!
//! Two implementations with bit-identical results:
//!
//! - the scalar reference (`NodeSpec::reference`): a gathered window per output pixel and a
//!   plain dot product per channel, split over output rows with rayon;
//! - the fast path (default), NHWC internally: depthwise convolutions (group = C = M) run the
//!   direct kernel of [`qdepthwise`](crate::kernels::qdepthwise); all others run the int8
//!   GEMM of [`qgemm`](crate::kernels::qgemm) per group, reading X directly as the A matrix
//!   for 1×1 stride-1 unpadded convolutions and otherwise gathering im2col rows tile by tile
//!   (padded cells take `z_x`). Constant weights are packed once in [`Op::prepare`].
//!
//! Every output is an exact integer sum, so results never depend on the thread count.

use std::borrow::Cow;

use rayon::prelude::*;

use super::requant::OutputStage;
use super::{
    bias_values, centered_i16, channel_w_scales, check_bias_info, check_dnnlowp_args,
    check_w_scales_len, constant_weights, dot_i16, qu8_from_vec, qu8_info, qu8_tensor,
    read_w_scales, static_output_params, Engine, OutCodes,
};
use crate::fp32::conv_pool::{ConvPoolGeometry, Order};
use crate::kernels::aligned::AVec;
use crate::kernels::qdepthwise::{qdepthwise, DwShape, PackedDepthwise};
use crate::kernels::qgemm::{
    qgemm, qgemm_sum, runs_on_tiles, ImplicitA, PackedQWeights, QLhs, QMatRef, SumStage,
};
use crate::{expect_inputs, DType, NodeSpec, Op, OpError, OpResult, QParams, Tensor, TensorInfo};

/// `Int8Conv` / `Int8ConvRelu` operator.
#[derive(Debug)]
pub struct Int8Conv {
    op_type: String,
    relu: bool,
    geo: ConvPoolGeometry,
    y: QParams,
    /// Run the scalar reference instead of the fast kernels.
    reference: bool,
    /// Per-channel weight scales (`W_scales`), if given.
    w_scales: Option<Vec<f32>>,
    /// Weights packed by `prepare` (constant W).
    prepared: Option<Prepared>,
}

/// Weights packed ahead of time, with what they were packed from.
#[derive(Debug)]
struct Prepared {
    w_shape: Vec<usize>,
    wq: QParams,
    weights: PackedConv,
    /// The same weights for the window form of implicit rows (`pack_window`), if it applies.
    window: Option<PackedQWeights>,
}

/// Packed weights of the fast path.
#[derive(Debug)]
enum PackedConv {
    /// One GEMM weight block per group (`[M/G, kH·kW·C/G]` each).
    Gemm(Vec<PackedQWeights>),
    /// Depthwise filter `[C, kH·kW]`.
    Depthwise(PackedDepthwise),
}

/// Sizes of one call, 2-D.
#[derive(Debug, Clone, Copy)]
struct Dims {
    n: usize,
    c: usize,
    m: usize,
    g: usize,
    ih: usize,
    iw: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    dh: usize,
    dw: usize,
    pt: usize,
    pl: usize,
}

impl Dims {
    fn cg(&self) -> usize {
        self.c / self.g
    }
    fn mg(&self) -> usize {
        self.m / self.g
    }
    /// Reduction length per output channel.
    fn kk(&self) -> usize {
        self.kh * self.kw * self.cg()
    }
}

/// Validated shapes and parameters of one call.
struct Resolved {
    d: Dims,
    out_shape: Vec<usize>,
    xq: QParams,
    wq: QParams,
}

impl Int8Conv {
    /// Builds the operator (`Int8Conv` or `Int8ConvRelu`; X, W and an optional bias).
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        spec.check_inputs(2, 3)?;
        spec.check_outputs(1, 1)?;
        Engine::parse(&spec.op_type, &spec.engine)?;
        check_dnnlowp_args(spec)?;
        let relu = spec.op_type.ends_with("Relu");
        let mut args = spec.args.clone();
        // Int8 convolutions default to NHWC (the layout of every published int8 net).
        if !args.has("order") {
            args.set("order", crate::ArgValue::S(b"NHWC".to_vec()));
        }
        let geo = ConvPoolGeometry::from_args(&args, false)?;
        if geo.ndim() != 2 {
            return Err(OpError::Unsupported(format!(
                "{} with {} spatial dims (kernel {:?}); only 2-D is implemented",
                spec.op_type,
                geo.ndim(),
                geo.kernel
            )));
        }
        Ok(Int8Conv {
            op_type: spec.op_type.clone(),
            relu,
            geo,
            y: static_output_params(spec, relu)?,
            reference: spec.reference,
            w_scales: read_w_scales(spec)?,
            prepared: None,
        })
    }

    /// The resolved geometry.
    pub fn geometry(&self) -> &ConvPoolGeometry {
        &self.geo
    }

    /// The output quantization parameters (after the ReLU re-derivation, if fused).
    pub fn output_params(&self) -> QParams {
        self.y
    }

    fn resolve(
        &self,
        x: &TensorInfo,
        w: &TensorInfo,
        b: Option<&TensorInfo>,
    ) -> OpResult<Resolved> {
        let op = self.op_type.as_str();
        let xq = qu8_info(op, "X", x)?;
        let wq = qu8_info(op, "filter W", w)?;
        let (xs, ws) = (&x.shape, &w.shape);
        if xs.len() != 4 || ws.len() != 4 {
            return Err(OpError::Shape(format!(
                "{op}: X {xs:?} and filter W {ws:?} must both be 4-D for a 2-D convolution"
            )));
        }
        let order = self.geo.order;
        let c = xs[order.channel_axis(4)];
        let m = ws[0];
        let g = self.geo.group;
        let (w_c, w_k) = match order {
            Order::Nhwc => (ws[3], &ws[1..3]),
            Order::Nchw => (ws[1], &ws[2..4]),
        };
        if !c.is_multiple_of(g) || c / g != w_c {
            return Err(OpError::Shape(format!(
                "{op}: X {xs:?} has {c} channels, filter W {ws:?} expects {w_c} per group x {g} \
                 groups = {} ({order:?})",
                w_c * g
            )));
        }
        if m == 0 || !m.is_multiple_of(g) {
            return Err(OpError::Shape(format!(
                "{op}: filter W {ws:?} has {m} output channels, which must be a positive \
                 multiple of group {g}"
            )));
        }
        if w_k != self.geo.kernel.as_slice() {
            return Err(OpError::Shape(format!(
                "{op}: filter W {ws:?} has spatial dims {w_k:?}, kernel is {:?} ({order:?})",
                self.geo.kernel
            )));
        }
        check_w_scales_len(op, self.w_scales.as_deref(), m)?;
        if let Some(b) = b {
            check_bias_info(op, b, m, xq, wq)?;
        }
        let plan = self.geo.plan(order.spatial(xs)).map_err(|e| match e {
            OpError::Shape(s) => OpError::Shape(format!("{op}: X {xs:?}: {s}")),
            other => other,
        })?;
        let d = Dims {
            n: xs[0],
            c,
            m,
            g,
            ih: plan.input[0],
            iw: plan.input[1],
            oh: plan.output[0],
            ow: plan.output[1],
            kh: plan.kernel[0],
            kw: plan.kernel[1],
            sh: plan.stride[0],
            sw: plan.stride[1],
            dh: plan.dilation[0],
            dw: plan.dilation[1],
            pt: plan.pad_head[0],
            pl: plan.pad_head[1],
        };
        let out_shape = match order {
            Order::Nhwc => vec![d.n, d.oh, d.ow, m],
            Order::Nchw => vec![d.n, m, d.oh, d.ow],
        };
        Ok(Resolved {
            d,
            out_shape,
            xq,
            wq,
        })
    }
}

impl Op for Int8Conv {
    fn op_type(&self) -> &str {
        &self.op_type
    }

    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        expect_inputs(inputs, 2, 3)?;
        let r = self.resolve(&inputs[0], &inputs[1], inputs.get(2))?;
        Ok(vec![TensorInfo::new(DType::QU8(self.y), r.out_shape)])
    }

    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        expect_inputs(inputs, 2, 3)?;
        let op = self.op_type.as_str();
        let b = inputs.get(2).copied();
        let r = self.resolve(
            &inputs[0].info(),
            &inputs[1].info(),
            b.map(|t| t.info()).as_ref(),
        )?;
        let d = r.d;
        let (x, _) = qu8_tensor(op, "X", inputs[0])?;
        let (w, _) = qu8_tensor(op, "filter W", inputs[1])?;
        // One weight scale per output channel (all equal for per-tensor parameters).
        let w_scales = channel_w_scales(self.w_scales.as_deref(), r.wq, d.m);
        let bias = bias_values(op, b, r.xq, &w_scales)?;
        let stage = OutputStage::new(r.xq.scale, &w_scales, self.y, self.relu);

        let x_nhwc: Cow<'_, [u8]> = match self.geo.order {
            Order::Nhwc => Cow::Borrowed(x),
            Order::Nchw => Cow::Owned(chw_to_hwc(x, d.n, d.c, d.ih * d.iw)),
        };
        let n_out = d.n * d.oh * d.ow * d.m;
        // The fast kernels write every output code.
        let mut out = if self.reference {
            OutCodes::new(n_out)
        } else {
            OutCodes::overwritten(n_out)
        };
        let y = out.as_mut_slice();
        if self.reference {
            self.eval_reference(&d, &x_nhwc, r.xq, w, r.wq, &bias, &stage, y);
        } else {
            let mut packed_now = None;
            let (packed, window) = self.packed(w, inputs[1].shape(), &d, r.wq, &mut packed_now)?;
            run_fast(
                &d,
                &x_nhwc,
                r.xq.zero_point,
                packed,
                window,
                &bias,
                &stage,
                y,
            )?;
        }
        match self.geo.order {
            Order::Nhwc => Ok(vec![out.into_tensor(&r.out_shape, self.y)?]),
            Order::Nchw => {
                let y = hwc_to_chw(out.as_mut_slice(), d.n, d.m, d.oh * d.ow);
                Ok(vec![qu8_from_vec(&r.out_shape, y, self.y)?])
            }
        }
    }

    fn prepare(&mut self, constants: &[Option<&Tensor>]) -> OpResult<()> {
        self.prepared = None;
        let Some((codes, shape, wq)) = constant_weights(constants, self.reference) else {
            return Ok(());
        };
        // Weights that do not fit are left for `eval` to report with its full message.
        if let Ok(weights) = pack_weights(codes, shape, self.geo.order, self.geo.group, wq) {
            let window = pack_window(codes, shape, &self.geo, wq);
            self.prepared = Some(Prepared {
                w_shape: shape.to_vec(),
                wq,
                weights,
                window,
            });
        }
        Ok(())
    }
}

impl Int8Conv {
    /// The packed weights of a call: the prepared ones when they were packed from weights
    /// of this shape and parameters, else `w` packed now into `now`; with them the window
    /// form's weights when that form runs this call (`window_pays`).
    fn packed<'a>(
        &'a self,
        w: &[u8],
        w_shape: &[usize],
        d: &Dims,
        wq: QParams,
        now: &'a mut Option<PackedConv>,
    ) -> OpResult<(&'a PackedConv, Option<&'a PackedQWeights>)> {
        match &self.prepared {
            Some(p) if p.w_shape == w_shape && p.wq == wq => Ok((
                &p.weights,
                p.window.as_ref().filter(|ww| window_pays(d, ww)),
            )),
            _ => {
                let packed = pack_weights(w, w_shape, self.geo.order, d.g, wq)?;
                Ok((now.insert(packed), None))
            }
        }
    }

    /// The convolution followed by a two-input Sum with `other` (laid out like the output),
    /// in one output stage, when the fast path has a fused form for this convolution: NHWC,
    /// one group, not the reference. `Ok(None)` otherwise (the caller then runs the two
    /// operators). `stage` makes the Sum's stage from the other summand's parameters; `out`
    /// are the Sum's output parameters.
    pub fn eval_fused_sum(
        &self,
        inputs: &[&Tensor],
        other: &Tensor,
        stage: impl Fn(QParams) -> SumStage,
        out: QParams,
    ) -> OpResult<Option<Tensor>> {
        expect_inputs(inputs, 2, 3)?;
        if self.reference || self.geo.order != Order::Nhwc || self.geo.group != 1 {
            return Ok(None);
        }
        let op = self.op_type.as_str();
        let b = inputs.get(2).copied();
        let r = self.resolve(
            &inputs[0].info(),
            &inputs[1].info(),
            b.map(|t| t.info()).as_ref(),
        )?;
        let d = r.d;
        let (x, _) = qu8_tensor(op, "X", inputs[0])?;
        let (w, _) = qu8_tensor(op, "filter W", inputs[1])?;
        let (o, oq) = qu8_tensor(op, "summand", other)?;
        if other.shape() != r.out_shape.as_slice() {
            return Err(OpError::Shape(format!(
                "{op}: summand {:?} does not match the output {:?}",
                other.shape(),
                r.out_shape
            )));
        }
        let w_scales = channel_w_scales(self.w_scales.as_deref(), r.wq, d.m);
        let bias = bias_values(op, b, r.xq, &w_scales)?;
        let st = OutputStage::new(r.xq.scale, &w_scales, self.y, self.relu);
        let mut packed_now = None;
        let (packed, window) = self.packed(w, inputs[1].shape(), &d, r.wq, &mut packed_now)?;
        let PackedConv::Gemm(groups) = packed else {
            return Ok(None);
        };
        let [pw] = groups.as_slice() else {
            return Ok(None);
        };
        let pw = window.unwrap_or(pw);
        let zx = r.xq.zero_point;
        let ep = st.epilogue(pw.col_sums(), zx, &bias, 0..d.m)?;
        let sum = stage(oq);
        // The GEMM writes every output code.
        let mut out_codes = OutCodes::overwritten(d.n * d.oh * d.ow * d.m);
        let y = out_codes.as_mut_slice();
        if is_direct(&d) {
            let a = QMatRef::new(x, d.n * d.ih * d.iw, d.c, d.c, 0)?;
            qgemm_sum(&a, pw, &ep, &sum, o, y, d.m, 0)?;
        } else if window.is_some() {
            let a = PaddedInput::new(x, &d, zx as u8, true);
            qgemm_sum(&a, pw, &ep, &sum, o, y, d.m, 0)?;
        } else if implicit_pays(&d, pw) {
            let a = PaddedInput::new(x, &d, zx as u8, false);
            qgemm_sum(&a, pw, &ep, &sum, o, y, d.m, 0)?;
        } else {
            let a = Im2col {
                x,
                d,
                g: 0,
                zx: zx as u8,
            };
            qgemm_sum(&a, pw, &ep, &sum, o, y, d.m, 0)?;
        }
        Ok(Some(out_codes.into_tensor(&r.out_shape, out)?))
    }

    /// The scalar reference: one gathered window and one dot product per output.
    #[allow(clippy::too_many_arguments)]
    fn eval_reference(
        &self,
        d: &Dims,
        x_nhwc: &[u8],
        xq: QParams,
        w: &[u8],
        wq: QParams,
        bias: &[i32],
        stage: &OutputStage,
        y: &mut [u8],
    ) {
        // Weights as (w − z_w) in [M, kH, kW, C/G] order.
        let w_khwc = filter_khwc(w, self.geo.order, d.m, d.cg(), d.kh * d.kw);
        let kk = d.kk();
        let mut wc: Vec<i16> = Vec::with_capacity(d.m * kk);
        for mi in 0..d.m {
            wc.extend(centered_i16(&w_khwc[mi * kk..(mi + 1) * kk], wq.zero_point));
        }
        if !y.is_empty() {
            y.par_chunks_mut(d.ow * d.m)
                .enumerate()
                .for_each(|(row, yrow)| {
                    conv_row(d, x_nhwc, xq.zero_point, &wc, bias, stage, row, yrow)
                });
        }
    }
}

/// Packs filter codes (`w_shape` in `order`'s layout) for the fast path: the depthwise
/// kernel when every group has one input and one output channel, else one GEMM block per
/// group. Fails on shapes that do not describe a 2-D grouped filter.
fn pack_weights(
    w: &[u8],
    w_shape: &[usize],
    order: Order,
    g: usize,
    wq: QParams,
) -> OpResult<PackedConv> {
    let bad = || OpError::Shape(format!("filter {w_shape:?} does not fit group {g}"));
    if w_shape.len() != 4 || g == 0 {
        return Err(bad());
    }
    let m = w_shape[0];
    let (cg, kh, kw) = filter_dims(w_shape, order);
    if m == 0 || !m.is_multiple_of(g) || w.len() != m * cg * kh * kw {
        return Err(bad());
    }
    let w_khwc = filter_khwc(w, order, m, cg, kh * kw);
    let mg = m / g;
    let kk = kh * kw * cg;
    if g > 1 && cg == 1 && mg == 1 {
        let zps = vec![wq.zero_point; m];
        return Ok(PackedConv::Depthwise(PackedDepthwise::pack(
            &w_khwc,
            m,
            kh * kw,
            &zps,
        )?));
    }
    let zps = vec![wq.zero_point; mg];
    let groups = (0..g)
        .map(|gi| PackedQWeights::pack(&w_khwc[gi * mg * kk..(gi + 1) * mg * kk], mg, kk, &zps))
        .collect::<OpResult<Vec<_>>>()?;
    Ok(PackedConv::Gemm(groups))
}

/// `(C/G, kH, kW)` of a 4-D filter shape `[M, ...]` in `order`.
fn filter_dims(w_shape: &[usize], order: Order) -> (usize, usize, usize) {
    match order {
        Order::Nhwc => (w_shape[3], w_shape[1], w_shape[2]),
        Order::Nchw => (w_shape[1], w_shape[2], w_shape[3]),
    }
}

/// Filter `w` of `m` channels, `cg` input channels and `taps` kernel cells, stored in
/// `order`, in `[M, kH, kW, C/G]` order (borrowed when it already is).
fn filter_khwc(w: &[u8], order: Order, m: usize, cg: usize, taps: usize) -> Cow<'_, [u8]> {
    match order {
        Order::Nhwc => Cow::Borrowed(w),
        Order::Nchw => Cow::Owned(chw_to_hwc(w, m, cg, taps)),
    }
}

/// The fast NHWC convolution into `y` (`[N, H', W', M]`).
#[allow(clippy::too_many_arguments)]
fn run_fast(
    d: &Dims,
    x: &[u8],
    zx: i32,
    packed: &PackedConv,
    window: Option<&PackedQWeights>,
    bias: &[i32],
    stage: &OutputStage,
    y: &mut [u8],
) -> OpResult<()> {
    let mismatch = || {
        OpError::Shape(format!(
            "internal: packed filter does not match the convolution {d:?}"
        ))
    };
    match packed {
        PackedConv::Depthwise(pw) => {
            if !(d.g == d.c && d.g == d.m) {
                return Err(mismatch());
            }
            let ep = stage.epilogue(pw.col_sums(), zx, bias, 0..d.m)?;
            let shape = DwShape {
                n: d.n,
                h: d.ih,
                w: d.iw,
                c: d.c,
                oh: d.oh,
                ow: d.ow,
                kh: d.kh,
                kw: d.kw,
                stride_h: d.sh,
                stride_w: d.sw,
                dil_h: d.dh,
                dil_w: d.dw,
                pad_t: d.pt,
                pad_l: d.pl,
            };
            qdepthwise(x, zx, &shape, pw, &ep, y)
        }
        PackedConv::Gemm(groups) => {
            if groups.len() != d.g {
                return Err(mismatch());
            }
            let (cg, mg) = (d.cg(), d.mg());
            let direct = is_direct(d);
            if let Some(ww) = window {
                // One group (`window_pays`): the window form of implicit rows.
                let ep = stage.epilogue(ww.col_sums(), zx, bias, 0..d.m)?;
                return qgemm(&PaddedInput::new(x, d, zx as u8, true), ww, &ep, y, d.m, 0);
            }
            for (g, pw) in groups.iter().enumerate() {
                let cols = g * mg..(g + 1) * mg;
                let ep = stage.epilogue(pw.col_sums(), zx, bias, cols)?;
                if direct {
                    let a = QMatRef::new(x, d.n * d.ih * d.iw, cg, d.c, g * cg)?;
                    qgemm(&a, pw, &ep, y, d.m, g * mg)?;
                } else if implicit_pays(d, pw) {
                    qgemm(&PaddedInput::new(x, d, zx as u8, false), pw, &ep, y, d.m, 0)?;
                } else {
                    let a = Im2col {
                        x,
                        d: *d,
                        g,
                        zx: zx as u8,
                    };
                    qgemm(&a, pw, &ep, y, d.m, g * mg)?;
                }
            }
            Ok(())
        }
    }
}

/// True for 1×1, stride-1, unpadded convolutions: the input is the GEMM's A as it is.
fn is_direct(d: &Dims) -> bool {
    d.kh == 1
        && d.kw == 1
        && d.sh == 1
        && d.sw == 1
        && d.pt == 0
        && d.pl == 0
        && d.oh == d.ih
        && d.ow == d.iw
}

/// True when reading the input as implicit im2col rows (a padded copy, then tile loads
/// straight from it) beats gathering im2col rows: one group, channels a multiple of 64 (each
/// 64-byte k step in one tap), the AMX kernels, a kernel larger than 1×1 (a 1×1 row is one
/// contiguous copy anyway) and output rows of at least 16 pixels (a tile holds the pixels of
/// one output row: 7-wide rows would leave 9 of its 16 rows idle). Measured on ResNet-50's
/// 3×3 layers (AMX, 1 thread): 56×56 0.235 → 0.153 ms, 28×28 0.16 → 0.135 ms, 14×14 equal,
/// 7×7 0.225 → 0.34 ms.
fn implicit_pays(d: &Dims, w: &PackedQWeights) -> bool {
    d.g == 1 && d.c.is_multiple_of(64) && d.kh * d.kw > 1 && d.ow >= 16 && runs_on_tiles(w)
}

/// True when this call runs on the window form of implicit rows (`ImplicitA::window`) with
/// weights `ww` from [`pack_window`]: AMX, one group, output rows of 16+ pixels (as for
/// [`implicit_pays`]) and the geometry the weights were packed for. Measured on ResNet-50's
/// first layer (7×7 s2, C = 3; AMX, 1 thread): gathered rows 0.85 ms, window form
/// 0.33 ms, although it multiplies 448 codes per pixel instead of 192; whole nets (1 thread,
/// batch 1): ResNet-50 10.9 → 9.5 ms, MobileNetV2 4.06 → 3.77, SqueezeNet 2.46 → 2.12.
fn window_pays(d: &Dims, ww: &PackedQWeights) -> bool {
    d.g == 1
        && d.dw == 1
        && d.kw * d.c <= 64
        && ww.k() == d.kh * 64
        && ww.n() == d.m
        && d.ow >= 16
        && runs_on_tiles(ww)
}

/// The weights of a one-group convolution whose kernel rows each fit one 64-byte k step
/// (`kW·C ≤ 64`, C not a multiple of 64, kernel larger than 1×1, no width dilation), packed
/// for the window form of implicit rows: K = `kH·64`, kernel row `ky`'s `kW·C` codes at
/// `64·ky`, the rest the weight zero point (weight 0). `None` when that does not apply, the
/// kernels do not run on AMX tiles, or the packing needs a row-sum correction (which would
/// count the window's unused bytes).
fn pack_window(
    w: &[u8],
    w_shape: &[usize],
    geo: &ConvPoolGeometry,
    wq: QParams,
) -> Option<PackedQWeights> {
    if w_shape.len() != 4 || geo.group != 1 || geo.dilation.get(1) != Some(&1) {
        return None;
    }
    let m = w_shape[0];
    let (c, kh, kw) = filter_dims(w_shape, geo.order);
    if c == 0 || c.is_multiple_of(64) || kw * c > 64 || kh * kw < 2 || w.len() != m * c * kh * kw {
        return None;
    }
    let w_khwc = filter_khwc(w, geo.order, m, c, kh * kw);
    let zw = u8::try_from(wq.zero_point).ok()?;
    let (kk, k2, row) = (kh * kw * c, kh * 64, kw * c);
    let mut wide = vec![zw; m * k2];
    for oc in 0..m {
        for ky in 0..kh {
            let src = &w_khwc[oc * kk + ky * row..][..row];
            wide[oc * k2 + ky * 64..][..row].copy_from_slice(src);
        }
    }
    let ww = PackedQWeights::pack(&wide, m, k2, &vec![wq.zero_point; m]).ok()?;
    (runs_on_tiles(&ww) && !ww.needs_rowsum()).then_some(ww)
}

/// The input of a one-group NHWC convolution copied into a buffer padded with the input
/// zero point so that every tap of every output pixel lies inside it (`ImplicitA`), plus
/// slack for the tile loads of the last pixels. The padded copy is about `kH·kW` times
/// smaller than the im2col rows it replaces.
struct PaddedInput {
    buf: AVec<u8>,
    d: Dims,
    ihp: usize,
    iwp: usize,
    /// Rows in the window form (`ImplicitA::window`): K = `kH·64`.
    window: bool,
}

impl PaddedInput {
    fn new(x: &[u8], d: &Dims, zx: u8, window: bool) -> Self {
        let ihp = (d.oh.max(1) - 1) * d.sh + (d.kh - 1) * d.dh + 1;
        let iwp = (d.ow.max(1) - 1) * d.sw + (d.kw - 1) * d.dw + 1;
        let body = d.n * ihp * iwp * d.c;
        // The window form reads 64 bytes from each kernel row's first tap.
        let slack = (16 * d.sw + d.kw * d.dw + 1) * d.c + if window { 128 } else { 64 };
        let mut buf = AVec::filled(body + slack, zx);
        // Input pixel (iy, ix) sits at padded (iy + pt, ix + pl); rows and columns no tap
        // reaches are left out.
        let cols = d.iw.min(iwp.saturating_sub(d.pl));
        for img in 0..d.n {
            for iy in 0..d.ih.min(ihp.saturating_sub(d.pt)) {
                let src = ((img * d.ih + iy) * d.iw) * d.c;
                let dst = ((img * ihp + iy + d.pt) * iwp + d.pl) * d.c;
                buf[dst..dst + cols * d.c].copy_from_slice(&x[src..src + cols * d.c]);
            }
        }
        PaddedInput {
            buf,
            d: *d,
            ihp,
            iwp,
            window,
        }
    }

    fn view(&self) -> ImplicitA<'_> {
        let d = &self.d;
        ImplicitA {
            data: &self.buf,
            n: d.n,
            ihp: self.ihp,
            iwp: self.iwp,
            c: d.c,
            oh: d.oh,
            ow: d.ow,
            stride: (d.sh, d.sw),
            dilation: (d.dh, d.dw),
            kernel: (d.kh, d.kw),
            window: self.window,
        }
    }
}

impl QLhs for PaddedInput {
    fn rows(&self) -> usize {
        self.d.n * self.d.oh * self.d.ow
    }

    fn depth(&self) -> usize {
        if self.window {
            self.d.kh * 64
        } else {
            self.d.kk()
        }
    }

    fn row<'s>(&'s self, r: usize, scratch: &'s mut [u8]) -> &'s [u8] {
        self.copy_row(r, scratch);
        &scratch[..self.depth()]
    }

    fn copy_row(&self, r: usize, dst: &mut [u8]) {
        let d = &self.d;
        let (img, pix) = (r / (d.oh * d.ow), r % (d.oh * d.ow));
        let (oy, ox) = (pix / d.ow, pix % d.ow);
        if self.window {
            // Each kernel row's taps, then zeros (the weights there are 0; the window
            // weights never need row sums, see `pack_window`).
            let row = d.kw * d.c;
            for ky in 0..d.kh {
                let py = oy * d.sh + ky * d.dh;
                let s = ((img * self.ihp + py) * self.iwp + ox * d.sw) * d.c;
                let dst = &mut dst[ky * 64..(ky + 1) * 64];
                dst[..row].copy_from_slice(&self.buf[s..s + row]);
                dst[row..].fill(0);
            }
            return;
        }
        let mut at = 0;
        for ky in 0..d.kh {
            let py = oy * d.sh + ky * d.dh;
            for kx in 0..d.kw {
                let px = ox * d.sw + kx * d.dw;
                let s = ((img * self.ihp + py) * self.iwp + px) * d.c;
                dst[at..at + d.c].copy_from_slice(&self.buf[s..s + d.c]);
                at += d.c;
            }
        }
    }

    fn implicit(&self) -> Option<ImplicitA<'_>> {
        Some(self.view())
    }
}

/// The im2col rows of group `g` of an NHWC convolution, gathered one output pixel at a
/// time: `[kH][kW][C/G]` codes per row, padded cells set to the input zero point.
struct Im2col<'a> {
    x: &'a [u8],
    d: Dims,
    g: usize,
    zx: u8,
}

impl QLhs for Im2col<'_> {
    fn rows(&self) -> usize {
        self.d.n * self.d.oh * self.d.ow
    }

    fn depth(&self) -> usize {
        self.d.kk()
    }

    fn copy_row(&self, r: usize, dst: &mut [u8]) {
        // `row` always writes the gathered codes into its scratch.
        self.row(r, dst);
    }

    fn row<'s>(&'s self, r: usize, scratch: &'s mut [u8]) -> &'s [u8] {
        let d = &self.d;
        let (n, pix) = (r / (d.oh * d.ow), r % (d.oh * d.ow));
        let (oy, ox) = (pix / d.ow, pix % d.ow);
        let image = &self.x[n * d.ih * d.iw * d.c..(n + 1) * d.ih * d.iw * d.c];
        let cg = d.cg();
        let dst = &mut scratch[..d.kk()];
        // With one group and no horizontal dilation, the kW cells of a kernel row are one
        // contiguous run of kW·C codes.
        let runs = d.g == 1 && d.dw == 1;
        let ix0 = (ox * d.sw) as isize - d.pl as isize;
        let mut at = 0;
        for ky in 0..d.kh {
            let iy = (oy * d.sh + ky * d.dh) as isize - d.pt as isize;
            let span = d.kw * cg;
            if iy < 0 || iy as usize >= d.ih {
                dst[at..at + span].fill(self.zx);
                at += span;
                continue;
            }
            let line = &image[iy as usize * d.iw * d.c..(iy as usize + 1) * d.iw * d.c];
            if runs && ix0 >= 0 && ix0 as usize + d.kw <= d.iw {
                let s = ix0 as usize * d.c;
                dst[at..at + span].copy_from_slice(&line[s..s + span]);
                at += span;
                continue;
            }
            for kx in 0..d.kw {
                let ix = ix0 + (kx * d.dw) as isize;
                if ix < 0 || ix as usize >= d.iw {
                    dst[at..at + cg].fill(self.zx);
                } else {
                    let s = ix as usize * d.c + self.g * cg;
                    dst[at..at + cg].copy_from_slice(&line[s..s + cg]);
                }
                at += cg;
            }
        }
        dst
    }
}

/// One output row `(n, oy)` of an NHWC convolution: `yrow` is `[W', M]`.
#[allow(clippy::too_many_arguments)]
fn conv_row(
    d: &Dims,
    x: &[u8],
    zx: i32,
    wc: &[i16],
    bias: &[i32],
    stage: &OutputStage,
    row: usize,
    yrow: &mut [u8],
) {
    let (n, oy) = (row / d.oh, row % d.oh);
    let (cg, mg, kk) = (d.cg(), d.mg(), d.kk());
    let image = &x[n * d.ih * d.iw * d.c..(n + 1) * d.ih * d.iw * d.c];
    let mut patch = vec![0i16; kk];
    for ox in 0..d.ow {
        for g in 0..d.g {
            // Gather the window of group g as (x − z_x); padded cells are real 0.
            let mut at = 0;
            for ky in 0..d.kh {
                let iy = (oy * d.sh + ky * d.dh) as isize - d.pt as isize;
                for kx in 0..d.kw {
                    let ix = (ox * d.sw + kx * d.dw) as isize - d.pl as isize;
                    let dst = &mut patch[at..at + cg];
                    if iy >= 0 && (iy as usize) < d.ih && ix >= 0 && (ix as usize) < d.iw {
                        let base = ((iy as usize) * d.iw + ix as usize) * d.c + g * cg;
                        for (p, &q) in dst.iter_mut().zip(&image[base..base + cg]) {
                            *p = (i32::from(q) - zx) as i16;
                        }
                    } else {
                        dst.fill(0);
                    }
                    at += cg;
                }
            }
            for m in g * mg..(g + 1) * mg {
                let raw = dot_i16(&patch, &wc[m * kk..(m + 1) * kk]).wrapping_add(bias[m]);
                yrow[ox * d.m + m] = stage.apply(raw, m);
            }
        }
    }
}

/// `[outer, C, S]` → `[outer, S, C]` (NCHW → NHWC for images, `[M, C/G, kH·kW]` →
/// `[M, kH·kW, C/G]` for filters).
pub(crate) fn chw_to_hwc<T: Copy + Default>(src: &[T], outer: usize, c: usize, s: usize) -> Vec<T> {
    let mut out = vec![T::default(); src.len()];
    for o in 0..outer {
        let (sp, dp) = (
            &src[o * c * s..(o + 1) * c * s],
            &mut out[o * c * s..(o + 1) * c * s],
        );
        for ci in 0..c {
            for si in 0..s {
                dp[si * c + ci] = sp[ci * s + si];
            }
        }
    }
    out
}

/// `[outer, S, C]` → `[outer, C, S]` (NHWC → NCHW).
pub(crate) fn hwc_to_chw<T: Copy + Default>(src: &[T], outer: usize, c: usize, s: usize) -> Vec<T> {
    let mut out = vec![T::default(); src.len()];
    for o in 0..outer {
        let (sp, dp) = (
            &src[o * c * s..(o + 1) * c * s],
            &mut out[o * c * s..(o + 1) * c * s],
        );
        for si in 0..s {
            for ci in 0..c {
                dp[ci * s + si] = sp[si * c + ci];
            }
        }
    }
    out
}
