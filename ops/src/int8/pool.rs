//! Int8MaxPool and Int8AveragePool (DNNLOWP, facts §4.4 and §6.5).
//!
//! Windows as in the fp32 pools: for output index `p`, `start = p·stride − pad_head`,
//! `end = min(start + kernel, in)`, `start = max(start, 0)`; padded cells are never read.
//!
//! - Int8MaxPool: the largest code in the window; output parameters are the input's (the
//!   `Y_scale`/`Y_zero_point` arguments are ignored, as in DNNLOWP).
//! - Int8AveragePool: with `size` the number of valid cells,
//!   `y = clamp(nearbyint((Σ x − z_x·size) · (s_x / s_y / size) + z_y), 0, 255)`, the
//!   multiplier evaluated in f32 left to right and the zero point added before rounding;
//!   output parameters from `Y_scale`/`Y_zero_point` (required). `count_include_pad` is not
//!   supported (DNNLOWP always divides by the valid cells).
//!
//! Both take `order` (default NHWC; NCHW is computed by converting to NHWC and back),
//! `kernel`/`stride`/`pads`/`legacy_pad`/`global_pooling` through [`ConvPoolGeometry`]
//! (2-D only; dilation is rejected), and require pads smaller than the kernel as DNNLOWP does.
//!
//! With `NodeSpec::reference` set, `pool_row` below computes every window directly;
//! otherwise the bit-identical row kernels of [`crate::kernels::qeltwise`] run (AVX2 when
//! available; separable: rows first, then columns). Average pools with windows above
//! [`qeltwise::AVG_POOL_MAX_CELLS`] cells, where i32 sums could overflow, always take the
//! reference path.

use std::borrow::Cow;

use rayon::prelude::*;

use super::conv::{chw_to_hwc, hwc_to_chw};
use super::requant::requantize_real;
use super::{
    check_dnnlowp_args, qu8_from_vec, qu8_info, qu8_tensor, static_output_params, Engine, OutCodes,
};
use crate::fp32::conv_pool::{ConvPoolGeometry, Order};
use crate::kernels::qeltwise::{self, PoolGeom, PoolScratch};
use crate::{expect_inputs, DType, NodeSpec, Op, OpError, OpResult, QParams, Tensor, TensorInfo};

/// `Int8MaxPool` / `Int8AveragePool` operator (scalar reference).
#[derive(Debug)]
pub struct Int8Pool {
    op_type: String,
    /// `None` for MaxPool (output parameters = input parameters).
    avg_y: Option<QParams>,
    geo: ConvPoolGeometry,
    reference: bool,
}

/// Sizes of one call, 2-D.
#[derive(Debug, Clone, Copy)]
struct PDims {
    n: usize,
    c: usize,
    ih: usize,
    iw: usize,
    oh: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    pt: usize,
    pl: usize,
}

/// Clipped window `[start, end)` of output index `p` along one dim.
fn window(p: usize, stride: usize, pad: usize, kernel: usize, len: usize) -> (usize, usize) {
    let start = (p * stride) as isize - pad as isize;
    let end = (start + kernel as isize).min(len as isize);
    let start = start.max(0);
    (start as usize, end.max(start) as usize)
}

impl Int8Pool {
    /// Builds the operator (`Int8MaxPool` or `Int8AveragePool`; 1 input, 1 output).
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        spec.check_inputs(1, 1)?;
        spec.check_outputs(1, 1)?;
        Engine::parse(&spec.op_type, &spec.engine)?;
        let max = match spec.op_type.as_str() {
            "Int8MaxPool" => true,
            "Int8AveragePool" => false,
            other => return Err(OpError::Unsupported(format!("int8 pool type {other}"))),
        };
        let mut args = spec.args.clone();
        if !args.has("order") {
            args.set("order", crate::ArgValue::S(b"NHWC".to_vec()));
        }
        let geo = ConvPoolGeometry::from_args(&args, true)?;
        if geo.ndim() != 2 {
            return Err(OpError::Unsupported(format!(
                "{} with {} spatial dims (kernel {:?}); only 2-D is implemented",
                spec.op_type,
                geo.ndim(),
                geo.kernel
            )));
        }
        if !geo.global {
            let nd = geo.ndim();
            for d in 0..nd {
                if geo.pads[d] >= geo.kernel[d] || geo.pads[nd + d] >= geo.kernel[d] {
                    return Err(OpError::BadArg {
                        name: "pads".into(),
                        msg: format!(
                            "{}: pads {:?} must be smaller than the kernel {:?}",
                            spec.op_type, geo.pads, geo.kernel
                        ),
                    });
                }
            }
        }
        let avg_y = if max {
            None
        } else {
            if spec.args.int_or("count_include_pad", 0)? != 0 {
                return Err(OpError::Unsupported(format!(
                    "{} with count_include_pad = 1",
                    spec.op_type
                )));
            }
            check_dnnlowp_args(spec)?;
            Some(static_output_params(spec, false)?)
        };
        Ok(Int8Pool {
            op_type: spec.op_type.clone(),
            avg_y,
            geo,
            reference: spec.reference,
        })
    }

    /// The resolved geometry.
    pub fn geometry(&self) -> &ConvPoolGeometry {
        &self.geo
    }

    fn resolve(&self, x: &TensorInfo) -> OpResult<(PDims, Vec<usize>, QParams)> {
        let op = self.op_type.as_str();
        let xq = qu8_info(op, "X", x)?;
        let xs = &x.shape;
        if xs.len() != 4 {
            return Err(OpError::Shape(format!(
                "{op}: X {xs:?} must be 4-D for a 2-D pool"
            )));
        }
        let order = self.geo.order;
        let c = xs[order.channel_axis(4)];
        let p = self.geo.plan(order.spatial(xs)).map_err(|e| match e {
            OpError::Shape(s) => OpError::Shape(format!("{op}: X {xs:?}: {s}")),
            other => other,
        })?;
        let d = PDims {
            n: xs[0],
            c,
            ih: p.input[0],
            iw: p.input[1],
            oh: p.output[0],
            ow: p.output[1],
            kh: p.kernel[0],
            kw: p.kernel[1],
            sh: p.stride[0],
            sw: p.stride[1],
            pt: p.pad_head[0],
            pl: p.pad_head[1],
        };
        let out = match order {
            Order::Nhwc => vec![d.n, d.oh, d.ow, c],
            Order::Nchw => vec![d.n, c, d.oh, d.ow],
        };
        Ok((d, out, xq))
    }

    fn out_params(&self, xq: QParams) -> QParams {
        self.avg_y.unwrap_or(xq)
    }
}

impl Op for Int8Pool {
    fn op_type(&self) -> &str {
        &self.op_type
    }

    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        expect_inputs(inputs, 1, 1)?;
        let (_, out, xq) = self.resolve(&inputs[0])?;
        Ok(vec![TensorInfo::new(DType::QU8(self.out_params(xq)), out)])
    }

    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        expect_inputs(inputs, 1, 1)?;
        let (d, out_shape, xq) = self.resolve(&inputs[0].info())?;
        let (x, _) = qu8_tensor(&self.op_type, "X", inputs[0])?;
        let yq = self.out_params(xq);
        let x: Cow<'_, [u8]> = match self.geo.order {
            Order::Nhwc => Cow::Borrowed(x),
            Order::Nchw => Cow::Owned(chw_to_hwc(x, d.n, d.c, d.ih * d.iw)),
        };
        let mut out = OutCodes::new(d.n * d.oh * d.ow * d.c);
        let y = out.as_mut_slice();
        let g = d.geom();
        let fast = !self.reference
            && (self.avg_y.is_none() || g.max_window_cells() <= qeltwise::AVG_POOL_MAX_CELLS);
        if fast && !y.is_empty() {
            self.pool_fast(&g, d.n, &x, xq, yq, y)?;
        } else if !y.is_empty() {
            let image = d.ih * d.iw * d.c;
            y.par_chunks_mut(d.ow * d.c)
                .enumerate()
                .try_for_each(|(row, yrow)| {
                    let n = row / d.oh;
                    self.pool_row(&d, &x[n * image..(n + 1) * image], row % d.oh, xq, yq, yrow)
                })?;
        }
        match self.geo.order {
            Order::Nhwc => Ok(vec![out.into_tensor(&out_shape, yq)?]),
            Order::Nchw => {
                let y = hwc_to_chw(out.as_mut_slice(), d.n, d.c, d.oh * d.ow);
                Ok(vec![qu8_from_vec(&out_shape, y, yq)?])
            }
        }
    }
}

impl PDims {
    /// The per-image geometry the fast kernels take.
    fn geom(&self) -> PoolGeom {
        PoolGeom {
            c: self.c,
            ih: self.ih,
            iw: self.iw,
            oh: self.oh,
            ow: self.ow,
            kh: self.kh,
            kw: self.kw,
            sh: self.sh,
            sw: self.sw,
            pt: self.pt,
            pl: self.pl,
        }
    }
}

/// Input bytes one parallel task should cover at least.
const TASK_BYTES: usize = 1 << 17;

impl Int8Pool {
    /// The fast path over `n` NHWC images `x` into a non-empty `y`, one task per group of
    /// output rows.
    fn pool_fast(
        &self,
        g: &PoolGeom,
        n: usize,
        x: &[u8],
        xq: QParams,
        yq: QParams,
        y: &mut [u8],
    ) -> OpResult<()> {
        if let Some((oy, ox)) = g.first_empty_window() {
            return Err(OpError::Shape(format!(
                "{}: output ({oy}, {ox}) has a window entirely in the padding",
                self.op_type
            )));
        }
        let image = g.image_len();
        if x.len() < n * image {
            return Err(OpError::Shape(format!(
                "{}: internal: {} codes for {n} images of {image}",
                self.op_type,
                x.len()
            )));
        }
        let k = qeltwise::kernels();
        let row_work = (g.kh * g.iw * g.c).max(1);
        let min_rows = (TASK_BYTES / row_work).max(1);
        let (oh, avg) = (g.oh, self.avg_y.is_some());
        y.par_chunks_mut(g.ow * g.c)
            .enumerate()
            .with_min_len(min_rows)
            .for_each_init(PoolScratch::default, |scratch, (row, yrow)| {
                let img = &x[(row / oh) * image..(row / oh + 1) * image];
                if avg {
                    (k.avg_pool_row)(img, g, row % oh, xq, yq, yrow, scratch);
                } else {
                    (k.max_pool_row)(img, g, row % oh, yrow, scratch);
                }
            });
        Ok(())
    }

    /// One NHWC output row `oy` of one image; `yrow` is `[W', C]`.
    fn pool_row(
        &self,
        d: &PDims,
        x: &[u8],
        oy: usize,
        xq: QParams,
        yq: QParams,
        yrow: &mut [u8],
    ) -> OpResult<()> {
        let c = d.c;
        let (hs, he) = window(oy, d.sh, d.pt, d.kh, d.ih);
        let mut sums = vec![0i64; c];
        for ox in 0..d.ow {
            let (ws, we) = window(ox, d.sw, d.pl, d.kw, d.iw);
            let size = (he - hs) * (we - ws);
            if size == 0 {
                return Err(OpError::Shape(format!(
                    "{}: output ({oy}, {ox}) has a window entirely in the padding",
                    self.op_type
                )));
            }
            let yo = &mut yrow[ox * c..(ox + 1) * c];
            match self.avg_y {
                None => {
                    yo.fill(0);
                    for iy in hs..he {
                        for ix in ws..we {
                            let xs = &x[(iy * d.iw + ix) * c..(iy * d.iw + ix + 1) * c];
                            for (m, &v) in yo.iter_mut().zip(xs) {
                                *m = (*m).max(v);
                            }
                        }
                    }
                }
                Some(_) => {
                    // DNNLOWP accumulates in int32; i64 gives the same values for any
                    // window below 8 million cells and cannot overflow.
                    sums.fill(-i64::from(xq.zero_point) * size as i64);
                    for iy in hs..he {
                        for ix in ws..we {
                            let xs = &x[(iy * d.iw + ix) * c..(iy * d.iw + ix + 1) * c];
                            for (s, &v) in sums.iter_mut().zip(xs) {
                                *s += i64::from(v);
                            }
                        }
                    }
                    let multiplier = xq.scale / yq.scale / size as f32;
                    for (o, &s) in yo.iter_mut().zip(&sums) {
                        *o = requantize_real(s as f32 * multiplier, yq.zero_point, 0);
                    }
                }
            }
        }
        Ok(())
    }
}
