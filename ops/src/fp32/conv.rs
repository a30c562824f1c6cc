//! Conv and ConvRelu (NCHW and NHWC, groups, dilation, legacy padding) via GEMM.
//!
//! NCHW: per image and group, `Y[g] = W[g] · col` with `W[g]` the `[M/G, C/G·kH·kW]` rows of
//! the weights and `col` the `[C/G·kH·kW, H'·W']` im2col matrix (1×1 stride-1 unpadded
//! convs use the input directly). NHWC: `Y[n] = col · W[g]ᵀ` with `col` `[H'·W', kH·kW·C/G]`.
//! Depthwise convs (`group == C == M`) use a direct loop instead of tiny GEMMs.
//!
//! **Determinism.** Work is split over images, groups and tiles of the output (rows or
//! columns of each GEMM), never over the reduction dimension, so outputs are bitwise
//! identical whatever the number of rayon threads.
//!
//! 1-D convs run as 2-D convs of height 1; 3-D convs are not supported.

use rayon::prelude::*;

use super::conv_pool::{ConvPoolGeometry, Order, SpatialPlan};
use crate::kernels::gemm::{
    prepacking_pays, sgemm, sgemm_par, sgemm_src, sgemm_src_par, Bias, Epilogue, Lhs, MatRef,
    PackedLhs, RhsSource, NR,
};
use crate::{expect_inputs, NodeSpec, Op, OpError, OpResult, Tensor, TensorInfo};

/// `Conv` / `ConvRelu` operator (fp32).
#[derive(Debug)]
pub struct Conv {
    op_type: String,
    relu: bool,
    geo: ConvPoolGeometry,
    /// Weights re-arranged once by `prepare` when W is constant.
    prepared: Option<Prepared>,
}

/// Constant weights re-arranged for the GEMM.
#[derive(Debug)]
struct Prepared {
    /// Shape of the W they were made from (eval falls back if it differs).
    w_shape: Vec<usize>,
    /// NCHW: per group, `W[g]` (`[M/G, kk]`) packed for the GEMM kernel.
    nchw: Vec<PackedLhs>,
    /// NHWC: per group `W[g]ᵀ`, `[kk, M/G]` row-major.
    nhwc_wt: Option<Vec<f32>>,
}

/// Everything the kernels need about one call, normalized to 2-D.
#[derive(Debug, Clone, Copy)]
struct Dims {
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
    /// GEMM reduction length per group.
    fn kk(&self) -> usize {
        self.cg() * self.kh * self.kw
    }
    fn out_hw(&self) -> usize {
        self.oh * self.ow
    }
    fn in_hw(&self) -> usize {
        self.ih * self.iw
    }
    /// 1×1 kernel, stride 1, no padding: the input is already the im2col matrix.
    fn is_pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.sh == 1
            && self.sw == 1
            && self.oh == self.ih
            && self.ow == self.iw
    }
    fn is_depthwise(&self) -> bool {
        self.g > 1 && self.g == self.c && self.g == self.m
    }
}

fn shape_err(msg: String) -> OpError {
    OpError::Shape(msg)
}

impl Conv {
    /// Builds the operator from its spec (`Conv` or `ConvRelu`, 2 or 3 inputs).
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        spec.check_inputs(2, 3)?;
        spec.check_outputs(1, 1)?;
        let geo = ConvPoolGeometry::from_args(&spec.args, false)?;
        if geo.ndim() > 2 {
            return Err(OpError::Unsupported(format!(
                "{} with {} spatial dims (kernel {:?}); only 1-D and 2-D are implemented",
                spec.op_type,
                geo.ndim(),
                geo.kernel
            )));
        }
        Ok(Conv {
            op_type: spec.op_type.clone(),
            relu: spec.op_type == "ConvRelu",
            geo,
            prepared: None,
        })
    }

    /// The resolved geometry (kernel, stride, pads, group, order...).
    pub fn geometry(&self) -> &ConvPoolGeometry {
        &self.geo
    }

    /// Validates input shapes and returns the normalized dimensions and output shape.
    fn resolve(
        &self,
        x: &[usize],
        w: &[usize],
        b: Option<&[usize]>,
    ) -> OpResult<(Dims, Vec<usize>)> {
        let nd = self.geo.ndim();
        let order = self.geo.order;
        if x.len() != nd + 2 {
            return Err(shape_err(format!(
                "{}: input X {x:?} must have rank {} for a {nd}-D kernel {:?}",
                self.op_type,
                nd + 2,
                self.geo.kernel
            )));
        }
        if w.len() != nd + 2 {
            return Err(shape_err(format!(
                "{}: filter W {w:?} must have rank {} (X is {x:?})",
                self.op_type,
                nd + 2
            )));
        }
        let n = x[0];
        let c = x[order.channel_axis(x.len())];
        let m = w[0];
        let g = self.geo.group;
        let (w_c, w_k) = match order {
            Order::Nchw => (w[1], &w[2..]),
            Order::Nhwc => (w[nd + 1], &w[1..nd + 1]),
        };
        if !c.is_multiple_of(g) || c / g != w_c {
            return Err(shape_err(format!(
                "{}: X {x:?} has {c} channels, filter W {w:?} expects {w_c} per group x {g} groups = {}",
                self.op_type,
                w_c * g
            )));
        }
        if !m.is_multiple_of(g) {
            return Err(shape_err(format!(
                "{}: filter W {w:?} has {m} output channels, not divisible by group {g}",
                self.op_type
            )));
        }
        if w_k != self.geo.kernel.as_slice() {
            return Err(shape_err(format!(
                "{}: filter W {w:?} has spatial dims {w_k:?}, kernel is {:?}",
                self.op_type, self.geo.kernel
            )));
        }
        if let Some(b) = b {
            if b != [m] {
                return Err(shape_err(format!(
                    "{}: bias {b:?} must be [{m}] for filter W {w:?}",
                    self.op_type
                )));
            }
        }
        let plan = self.geo.plan(order.spatial(x)).map_err(|e| match e {
            OpError::Shape(s) => shape_err(format!("{}: X {x:?}: {s}", self.op_type)),
            other => other,
        })?;
        let dims = dims_2d(c, m, g, &plan);
        let mut out = vec![n];
        match order {
            Order::Nchw => {
                out.push(m);
                out.extend_from_slice(&plan.output);
            }
            Order::Nhwc => {
                out.extend_from_slice(&plan.output);
                out.push(m);
            }
        }
        Ok((dims, out))
    }
}

fn dims_2d(c: usize, m: usize, g: usize, p: &SpatialPlan) -> Dims {
    if p.input.len() == 1 {
        Dims {
            c,
            m,
            g,
            ih: 1,
            iw: p.input[0],
            oh: 1,
            ow: p.output[0],
            kh: 1,
            kw: p.kernel[0],
            sh: 1,
            sw: p.stride[0],
            dh: 1,
            dw: p.dilation[0],
            pt: 0,
            pl: p.pad_head[0],
        }
    } else {
        Dims {
            c,
            m,
            g,
            ih: p.input[0],
            iw: p.input[1],
            oh: p.output[0],
            ow: p.output[1],
            kh: p.kernel[0],
            kw: p.kernel[1],
            sh: p.stride[0],
            sw: p.stride[1],
            dh: p.dilation[0],
            dw: p.dilation[1],
            pt: p.pad_head[0],
            pl: p.pad_head[1],
        }
    }
}

fn f32_info(op: &str, what: &str, t: &TensorInfo) -> OpResult<()> {
    if t.dtype != crate::DType::F32 {
        return Err(OpError::DType(format!("{op}: {what} must be f32, got {t}")));
    }
    Ok(())
}

impl Op for Conv {
    fn op_type(&self) -> &str {
        &self.op_type
    }

    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        expect_inputs(inputs, 2, 3)?;
        for (t, what) in inputs.iter().zip(["X", "W", "b"]) {
            f32_info(&self.op_type, what, t)?;
        }
        let b = inputs.get(2).map(|t| t.shape.as_slice());
        let (_, out) = self.resolve(&inputs[0].shape, &inputs[1].shape, b)?;
        Ok(vec![TensorInfo::f32(out)])
    }

    fn prepare(&mut self, constants: &[Option<&Tensor>]) -> OpResult<()> {
        self.prepared = None;
        let Some(Some(w)) = constants.get(1) else {
            return Ok(());
        };
        let Ok(wv) = w.f32_slice() else {
            return Ok(()); // eval reports the type error
        };
        let shape = w.shape();
        let g = self.geo.group;
        let m = shape.first().copied().unwrap_or(0);
        if m == 0 || !m.is_multiple_of(g) || wv.is_empty() {
            return Ok(()); // eval reports the shape error
        }
        let kk = wv.len() / m;
        let mg = m / g;
        let mut prep = Prepared {
            w_shape: shape.to_vec(),
            nchw: Vec::new(),
            nhwc_wt: None,
        };
        match self.geo.order {
            Order::Nchw => {
                let depthwise = shape.len() >= 2 && shape[1] == 1 && mg == 1 && g > 1;
                if !prepacking_pays() || depthwise {
                    return Ok(());
                }
                prep.nchw = (0..g)
                    .map(|gi| PackedLhs::pack(MatRef::row_major(&wv[gi * mg * kk..], mg, kk, kk)))
                    .collect();
            }
            Order::Nhwc => {
                // Per group, W[g] is [mg, kk] row-major; store its transpose [kk, mg].
                let mut t = vec![0.0f32; wv.len()];
                for gi in 0..g {
                    let src = &wv[gi * mg * kk..(gi + 1) * mg * kk];
                    let dst = &mut t[gi * mg * kk..(gi + 1) * mg * kk];
                    for r in 0..mg {
                        for q in 0..kk {
                            dst[q * mg + r] = src[r * kk + q];
                        }
                    }
                }
                prep.nhwc_wt = Some(t);
            }
        }
        self.prepared = Some(prep);
        Ok(())
    }

    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        expect_inputs(inputs, 2, 3)?;
        let x = inputs[0]
            .as_f32()
            .map_err(|e| OpError::DType(format!("{}: X: {e}", self.op_type)))?;
        let w = inputs[1]
            .as_f32()
            .map_err(|e| OpError::DType(format!("{}: W: {e}", self.op_type)))?;
        let b = match inputs.get(2) {
            Some(t) => Some(
                t.as_f32()
                    .map_err(|e| OpError::DType(format!("{}: b: {e}", self.op_type)))?,
            ),
            None => None,
        };
        let (d, out_shape) = self.resolve(x.shape(), w.shape(), b.map(|b| b.shape()))?;
        let xs = inputs[0].f32_slice()?;
        let ws = inputs[1].f32_slice()?;
        let bs = match inputs.get(2) {
            Some(t) => Some(t.f32_slice()?),
            None => None,
        };
        let mut y = vec![0.0f32; out_shape.iter().product()];
        let prep = self.prepared.as_ref().filter(|p| p.w_shape == w.shape());
        match self.geo.order {
            Order::Nchw => {
                let packed = prep.map(|p| p.nchw.as_slice()).filter(|p| p.len() == d.g);
                conv_nchw(&d, xs, ws, packed, bs, self.relu, &mut y)
            }
            Order::Nhwc => {
                let wt = prep.and_then(|p| p.nhwc_wt.as_deref());
                conv_nhwc(&d, xs, ws, wt, bs, self.relu, &mut y)
            }
        }
        Ok(vec![Tensor::try_f32(&out_shape, y)?])
    }
}

/// Work below this many multiply-adds per (image, group) GEMM runs one task per
/// (image, group) instead of splitting the GEMM.
const SMALL_GEMM: usize = 1 << 21;

fn conv_nchw(
    d: &Dims,
    x: &[f32],
    w: &[f32],
    packed: Option<&[PackedLhs]>,
    b: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
) {
    let (cg, mg, kk, ohw, ihw) = (d.cg(), d.mg(), d.kk(), d.out_hw(), d.in_hw());
    if y.is_empty() {
        return;
    }
    if d.is_depthwise() {
        y.par_chunks_mut(ohw).enumerate().for_each(|(plane, yp)| {
            let ch = plane % d.c;
            let xp = &x[plane * ihw..(plane + 1) * ihw];
            let wp = &w[ch * d.kh * d.kw..(ch + 1) * d.kh * d.kw];
            depthwise_plane(d, xp, wp, b.map(|b| b[ch]), relu, yp);
        });
        return;
    }
    // With the packed SIMD kernel, im2col panels are gathered straight from the image.
    let implicit = prepacking_pays();
    let one = |n: usize, gi: usize, yg: &mut [f32], par: bool| {
        let xg = &x[(n * d.c + gi * cg) * ihw..];
        let a: Lhs = match packed {
            Some(p) => (&p[gi]).into(),
            None => MatRef::row_major(&w[gi * mg * kk..], mg, kk, kk).into(),
        };
        let ep = Epilogue {
            bias: b.map_or(Bias::None, |b| Bias::PerRow(&b[gi * mg..])),
            relu,
        };
        let gemm = if par { sgemm_par } else { sgemm };
        if d.is_pointwise() {
            gemm(a, MatRef::row_major(xg, cg, ohw, ihw), yg, ohw, &ep);
        } else if implicit {
            let src = Im2colNchw {
                d: *d,
                x: &xg[..cg * ihw],
            };
            let gemm = if par { sgemm_src_par } else { sgemm_src };
            gemm(a, &src, yg, ohw, &ep);
        } else {
            let mut col = vec![0.0f32; kk * ohw];
            im2col_nchw(d, &xg[..cg * ihw], &mut col, par);
            gemm(a, MatRef::row_major(&col, kk, ohw, ohw), yg, ohw, &ep);
        }
    };
    let chunk = mg * ohw;
    if mg * kk * ohw >= SMALL_GEMM {
        for (i, yg) in y.chunks_mut(chunk).enumerate() {
            one(i / d.g, i % d.g, yg, true);
        }
    } else {
        y.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, yg)| one(i / d.g, i % d.g, yg, false));
    }
}

/// Fills `col` (`[cg·kh·kw, oh·ow]`, row-major) from one image-group `x` (`[cg, ih, iw]`).
/// Padded cells become 0.
fn im2col_nchw(d: &Dims, x: &[f32], col: &mut [f32], par: bool) {
    let ohw = d.out_hw();
    let fill = |r: usize, row: &mut [f32]| {
        let c = r / (d.kh * d.kw);
        let i = (r / d.kw) % d.kh;
        let j = r % d.kw;
        let xc = &x[c * d.ih * d.iw..(c + 1) * d.ih * d.iw];
        // Valid ox range: 0 <= ox*sw - pl + j*dw < iw.
        let off = j * d.dw;
        let (lo, hi) = valid_range(d.ow, d.sw, d.pl, off, d.iw);
        for oy in 0..d.oh {
            let out = &mut row[oy * d.ow..(oy + 1) * d.ow];
            let iy = (oy * d.sh + i * d.dh) as isize - d.pt as isize;
            if iy < 0 || iy >= d.ih as isize {
                out.fill(0.0);
                continue;
            }
            let xr = &xc[iy as usize * d.iw..(iy as usize + 1) * d.iw];
            out[..lo].fill(0.0);
            out[hi.max(lo)..].fill(0.0);
            if hi > lo {
                let x0 = lo * d.sw + off - d.pl;
                if d.sw == 1 {
                    out[lo..hi].copy_from_slice(&xr[x0..x0 + (hi - lo)]);
                } else {
                    for (o, &v) in out[lo..hi].iter_mut().zip(xr[x0..].iter().step_by(d.sw)) {
                        *o = v;
                    }
                }
            }
        }
    };
    if par && col.len() >= 1 << 15 {
        col.par_chunks_mut(ohw)
            .enumerate()
            .for_each(|(r, row)| fill(r, row));
    } else {
        col.chunks_mut(ohw)
            .enumerate()
            .for_each(|(r, row)| fill(r, row));
    }
}

/// The `[cg·kh·kw, oh·ow]` im2col matrix of one NCHW image-group, never materialized:
/// GEMM panels are gathered from the image directly.
struct Im2colNchw<'a> {
    d: Dims,
    /// `[cg, ih, iw]`.
    x: &'a [f32],
}

impl RhsSource for Im2colNchw<'_> {
    fn rows(&self) -> usize {
        self.d.kk()
    }

    fn cols(&self) -> usize {
        self.d.out_hw()
    }

    fn pack_block(&self, pc: usize, kc: usize, jc: usize, nc: usize, dst: &mut [f32]) {
        let d = &self.d;
        let khw = d.kh * d.kw;
        let plane = d.ih * d.iw;
        // Per im2col row: channel offset, kernel row offset, kernel column offset and the
        // output columns whose input column is inside the image.
        let rows: Vec<(usize, isize, usize, usize, usize)> = (pc..pc + kc)
            .map(|r| {
                let (c, i, j) = (r / khw, (r / d.kw) % d.kh, r % d.kw);
                let off = j * d.dw;
                let (lo, hi) = valid_range(d.ow, d.sw, d.pl, off, d.iw);
                (c * plane, (i * d.dh) as isize - d.pt as isize, off, lo, hi)
            })
            .collect();
        for (t, panel) in dst.chunks_mut(kc * NR).enumerate() {
            let j0 = jc + t * NR;
            let cols = NR.min(jc + nc - j0);
            // Split the panel's columns into runs within one output row: (oy, ox0, q0, len).
            let mut runs = [(0usize, 0usize, 0usize, 0usize); NR];
            let mut nruns = 0;
            let mut q = 0;
            while q < cols {
                let col = j0 + q;
                let (oy, ox0) = (col / d.ow, col % d.ow);
                let len = (cols - q).min(d.ow - ox0);
                runs[nruns] = (oy, ox0, q, len);
                nruns += 1;
                q += len;
            }
            // Fast path: the whole panel lies in one output row (the common case).
            let single = (nruns == 1 && cols == NR).then_some((runs[0].0, runs[0].1));
            for (p, &(cbase, iy_off, off, lo, hi)) in rows.iter().enumerate() {
                let row = &mut panel[p * NR..(p + 1) * NR];
                if let Some((oy, ox0)) = single {
                    let iy = (oy * d.sh) as isize + iy_off;
                    if iy >= 0 && (iy as usize) < d.ih && lo <= ox0 && ox0 + NR <= hi {
                        // Every column reads inside the image: a fixed-length gather.
                        let base = cbase + iy as usize * d.iw + ox0 * d.sw + off - d.pl;
                        let dst: &mut [f32; NR] = row.try_into().expect("row has NR values");
                        if d.sw == 1 {
                            dst.copy_from_slice(&self.x[base..base + NR]);
                        } else {
                            let src = &self.x[base..base + (NR - 1) * d.sw + 1];
                            for (q, v) in dst.iter_mut().enumerate() {
                                *v = src[q * d.sw];
                            }
                        }
                        continue;
                    }
                }
                row[cols..].fill(0.0);
                for &(oy, ox0, q0, len) in &runs[..nruns] {
                    let out = &mut row[q0..q0 + len];
                    let iy = (oy * d.sh) as isize + iy_off;
                    if iy < 0 || iy >= d.ih as isize {
                        out.fill(0.0);
                        continue;
                    }
                    let a = lo.clamp(ox0, ox0 + len);
                    let b = hi.clamp(a, ox0 + len);
                    out[..a - ox0].fill(0.0);
                    out[b - ox0..].fill(0.0);
                    if b > a {
                        let base = cbase + iy as usize * d.iw + a * d.sw + off - d.pl;
                        let dst = &mut out[a - ox0..b - ox0];
                        if d.sw == 1 {
                            dst.copy_from_slice(&self.x[base..base + (b - a)]);
                        } else {
                            for (o, &v) in dst.iter_mut().zip(self.x[base..].iter().step_by(d.sw)) {
                                *o = v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Output positions `o in lo..hi` whose input index `o*s + off - pad` lies in `0..len`.
fn valid_range(out: usize, s: usize, pad: usize, off: usize, len: usize) -> (usize, usize) {
    // o*s + off >= pad  =>  o >= ceil((pad - off) / s)
    let lo = if pad > off {
        (pad - off).div_ceil(s)
    } else {
        0
    };
    // o*s + off - pad < len  =>  o*s < len + pad - off  =>  o <= (len + pad - off - 1) / s
    let hi = if len + pad > off {
        ((len + pad - off - 1) / s + 1).min(out)
    } else {
        0
    };
    (lo.min(out), hi)
}

/// Direct depthwise convolution of one `[ih, iw]` plane with a `[kh, kw]` filter.
fn depthwise_plane(d: &Dims, x: &[f32], w: &[f32], b: Option<f32>, relu: bool, y: &mut [f32]) {
    y.fill(0.0);
    for oy in 0..d.oh {
        let yr = &mut y[oy * d.ow..(oy + 1) * d.ow];
        for i in 0..d.kh {
            let iy = (oy * d.sh + i * d.dh) as isize - d.pt as isize;
            if iy < 0 || iy >= d.ih as isize {
                continue;
            }
            let xr = &x[iy as usize * d.iw..(iy as usize + 1) * d.iw];
            for j in 0..d.kw {
                let wv = w[i * d.kw + j];
                let off = j * d.dw;
                let (lo, hi) = valid_range(d.ow, d.sw, d.pl, off, d.iw);
                for ox in lo..hi {
                    yr[ox] += wv * xr[ox * d.sw + off - d.pl];
                }
            }
        }
    }
    finish(y, b, relu);
}

fn finish(y: &mut [f32], b: Option<f32>, relu: bool) {
    if let Some(b) = b {
        y.iter_mut().for_each(|v| *v += b);
    }
    if relu {
        y.iter_mut().for_each(|v| *v = v.max(0.0));
    }
}

fn conv_nhwc(
    d: &Dims,
    x: &[f32],
    w: &[f32],
    wt: Option<&[f32]>,
    b: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
) {
    let (cg, mg, kk, ohw, ihw) = (d.cg(), d.mg(), d.kk(), d.out_hw(), d.in_hw());
    if y.is_empty() {
        return;
    }
    if d.is_depthwise() {
        // W is [C, kh, kw, 1]; process one output row of one image per task.
        y.par_chunks_mut(d.ow * d.m)
            .enumerate()
            .for_each(|(r, yr)| {
                let (n, oy) = (r / d.oh, r % d.oh);
                let xn = &x[n * ihw * d.c..(n + 1) * ihw * d.c];
                depthwise_row_nhwc(d, xn, w, oy, yr);
                for px in yr.chunks_mut(d.m) {
                    if let Some(b) = b {
                        px.iter_mut().zip(b).for_each(|(v, &bb)| *v += bb);
                    }
                    if relu {
                        px.iter_mut().for_each(|v| *v = v.max(0.0));
                    }
                }
            });
        return;
    }
    // B for group g: W[g]ᵀ, `[kk, mg]`, either pre-transposed or a strided view.
    let bmat = |gi: usize| match wt {
        Some(t) => MatRef::row_major(&t[gi * mg * kk..], kk, mg, mg),
        None => MatRef::row_major(&w[gi * mg * kk..], mg, kk, kk).t(),
    };
    let ep = |gi: usize| Epilogue {
        bias: b.map_or(Bias::None, |b| Bias::PerCol(&b[gi * mg..])),
        relu,
    };
    let big = ohw * kk * mg >= SMALL_GEMM;
    let image = |n: usize, yn: &mut [f32], par: bool| {
        let xn = &x[n * ihw * d.c..(n + 1) * ihw * d.c];
        let gemm = if par { sgemm_par } else { sgemm };
        if d.is_pointwise() {
            for gi in 0..d.g {
                let a = MatRef::new(&xn[gi * cg..], ohw, cg, d.c, 1);
                gemm(a.into(), bmat(gi), &mut yn[gi * mg..], d.m, &ep(gi));
            }
            return;
        }
        let mut col = vec![0.0f32; ohw * kk];
        for gi in 0..d.g {
            im2col_nhwc(d, xn, gi, &mut col, par);
            gemm(
                MatRef::row_major(&col, ohw, kk, kk).into(),
                bmat(gi),
                &mut yn[gi * mg..],
                d.m,
                &ep(gi),
            );
        }
    };
    let per_image = ohw * d.m;
    if big {
        for (n, yn) in y.chunks_mut(per_image).enumerate() {
            image(n, yn, true);
        }
    } else {
        y.par_chunks_mut(per_image)
            .enumerate()
            .for_each(|(n, yn)| image(n, yn, false));
    }
}

/// Fills `col` (`[oh·ow, kh·kw·cg]`, patch order (i, j, c)) for group `gi` of one NHWC image.
fn im2col_nhwc(d: &Dims, xn: &[f32], gi: usize, col: &mut [f32], par: bool) {
    let (cg, kk) = (d.cg(), d.kk());
    let fill = |p: usize, row: &mut [f32]| {
        let (oy, ox) = (p / d.ow, p % d.ow);
        for i in 0..d.kh {
            let iy = (oy * d.sh + i * d.dh) as isize - d.pt as isize;
            for j in 0..d.kw {
                let ix = (ox * d.sw + j * d.dw) as isize - d.pl as isize;
                let dst = &mut row[(i * d.kw + j) * cg..(i * d.kw + j + 1) * cg];
                if iy < 0 || iy >= d.ih as isize || ix < 0 || ix >= d.iw as isize {
                    dst.fill(0.0);
                } else {
                    let s = (iy as usize * d.iw + ix as usize) * d.c + gi * cg;
                    dst.copy_from_slice(&xn[s..s + cg]);
                }
            }
        }
    };
    if par && col.len() >= 1 << 15 {
        col.par_chunks_mut(kk)
            .enumerate()
            .for_each(|(p, row)| fill(p, row));
    } else {
        col.chunks_mut(kk)
            .enumerate()
            .for_each(|(p, row)| fill(p, row));
    }
}

/// One output row (`[ow, C]`) of an NHWC depthwise conv; `w` is `[C, kh, kw]`.
fn depthwise_row_nhwc(d: &Dims, xn: &[f32], w: &[f32], oy: usize, yr: &mut [f32]) {
    yr.fill(0.0);
    let c = d.c;
    let khw = d.kh * d.kw;
    for i in 0..d.kh {
        let iy = (oy * d.sh + i * d.dh) as isize - d.pt as isize;
        if iy < 0 || iy >= d.ih as isize {
            continue;
        }
        for j in 0..d.kw {
            let off = j * d.dw;
            let (lo, hi) = valid_range(d.ow, d.sw, d.pl, off, d.iw);
            for ox in lo..hi {
                let ix = ox * d.sw + off - d.pl;
                let xs = &xn[(iy as usize * d.iw + ix) * c..(iy as usize * d.iw + ix + 1) * c];
                let ys = &mut yr[ox * c..(ox + 1) * c];
                for ch in 0..c {
                    ys[ch] += w[ch * khw + i * d.kw + j] * xs[ch];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The implicit im2col panels equal panels packed from the explicit im2col matrix.
    #[test]
    fn implicit_im2col_matches_explicit() {
        #[rustfmt::skip]
        let cases = [
            // (cg, ih, iw, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr)
            (3, 7, 6, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),
            (2, 9, 11, 3, 2, 2, 3, 1, 1, 0, 1, 2, 1),
            (2, 10, 12, 3, 3, 1, 1, 2, 3, 2, 1, 0, 2),
            (3, 23, 23, 7, 7, 2, 2, 1, 1, 3, 3, 3, 3),
            (1, 5, 40, 1, 3, 1, 1, 1, 1, 0, 1, 0, 1),
            (2, 4, 4, 5, 5, 1, 1, 1, 1, 2, 2, 2, 2),
            // Wide rows: whole 16-column panels inside one output row (fixed-length path).
            (2, 5, 70, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1),
            (1, 4, 75, 3, 3, 1, 3, 1, 2, 1, 2, 1, 2),
            (2, 3, 40, 1, 1, 1, 2, 1, 1, 0, 0, 0, 0),
        ];
        for &(cg, ih, iw, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr) in &cases {
            let oh = (ih + pt + pb - (dh * (kh - 1) + 1)) / sh + 1;
            let ow = (iw + pl + pr - (dw * (kw - 1) + 1)) / sw + 1;
            let d = Dims {
                c: cg,
                m: 1,
                g: 1,
                ih,
                iw,
                oh,
                ow,
                kh,
                kw,
                sh,
                sw,
                dh,
                dw,
                pt,
                pl,
            };
            let x: Vec<f32> = (0..cg * ih * iw).map(|v| v as f32 + 1.0).collect();
            let (kk, n) = (d.kk(), d.out_hw());
            let mut col = vec![f32::NAN; kk * n];
            im2col_nchw(&d, &x, &mut col, false);
            let explicit = MatRef::row_major(&col, kk, n, n);
            let implicit = Im2colNchw { d, x: &x };
            assert_eq!((implicit.rows(), implicit.cols()), (kk, n));
            for pc in [0, kk / 2] {
                let kc = kk - pc;
                for (jc, nc) in [(0, n), (NR, n - NR), (n / 3, n / 2)] {
                    let len = nc.div_ceil(NR) * kc * NR;
                    let mut a = vec![f32::NAN; len];
                    let mut b = vec![f32::NAN; len];
                    implicit.pack_block(pc, kc, jc, nc, &mut a);
                    RhsSource::pack_block(&explicit, pc, kc, jc, nc, &mut b);
                    assert_eq!(a, b, "{d:?} pc {pc} jc {jc} nc {nc}");
                }
            }
        }
    }
}
