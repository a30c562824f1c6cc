//! MaxPool and AveragePool (windowed and global; padded cells never read).
//!
//! The window of output index `p` is `start = p·stride − pad_head`,
//! `end = min(start + kernel, in)`, `start = max(start, 0)` per spatial dim. MaxPool takes
//! the maximum over it (starting from the lowest finite f32, so a window that lies
//! entirely in the padding yields `f32::MIN` as in Caffe2); AveragePool divides the sum by
//! the number of cells in the clipped window, or by the full kernel area when
//! `count_include_pad` is set. 1-D pools run as 2-D pools of height 1; 3-D pools are not
//! supported. Work is split over image planes (NCHW) or output rows (NHWC) only.

use rayon::prelude::*;

use super::conv_pool::{ConvPoolGeometry, Order};
use crate::{expect_inputs, NodeSpec, Op, OpError, OpResult, Tensor, TensorInfo};

/// `MaxPool` / `AveragePool` operator (fp32).
#[derive(Debug)]
pub struct Pool {
    op_type: String,
    max: bool,
    count_include_pad: bool,
    geo: ConvPoolGeometry,
}

/// One call's geometry normalized to 2-D.
#[derive(Debug, Clone, Copy)]
struct PDims {
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

impl Pool {
    /// Builds the operator from its spec (`MaxPool` or `AveragePool`).
    pub fn from_spec(spec: &NodeSpec) -> OpResult<Self> {
        spec.check_inputs(1, 1)?;
        spec.check_outputs(1, 1)?;
        let max = match spec.op_type.as_str() {
            "MaxPool" => true,
            "AveragePool" => false,
            other => return Err(OpError::Unsupported(format!("pool type {other}"))),
        };
        let geo = ConvPoolGeometry::from_args(&spec.args, true)?;
        if geo.ndim() > 2 {
            return Err(OpError::Unsupported(format!(
                "{} with {} spatial dims (kernel {:?}); only 1-D and 2-D are implemented",
                spec.op_type,
                geo.ndim(),
                geo.kernel
            )));
        }
        let count_include_pad = spec.args.int_or("count_include_pad", 0)? != 0;
        Ok(Pool {
            op_type: spec.op_type.clone(),
            max,
            count_include_pad,
            geo,
        })
    }

    /// The resolved geometry.
    pub fn geometry(&self) -> &ConvPoolGeometry {
        &self.geo
    }

    fn resolve(&self, x: &[usize]) -> OpResult<(PDims, Vec<usize>)> {
        let nd = self.geo.ndim();
        if x.len() != nd + 2 {
            return Err(OpError::Shape(format!(
                "{}: input X {x:?} must have rank {} for a {nd}-D kernel {:?}",
                self.op_type,
                nd + 2,
                self.geo.kernel
            )));
        }
        let order = self.geo.order;
        let c = x[order.channel_axis(x.len())];
        let p = self.geo.plan(order.spatial(x)).map_err(|e| match e {
            OpError::Shape(s) => OpError::Shape(format!("{}: X {x:?}: {s}", self.op_type)),
            other => other,
        })?;
        let d = if nd == 1 {
            PDims {
                c,
                ih: 1,
                iw: p.input[0],
                oh: 1,
                ow: p.output[0],
                kh: 1,
                kw: p.kernel[0],
                sh: 1,
                sw: p.stride[0],
                pt: 0,
                pl: p.pad_head[0],
            }
        } else {
            PDims {
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
            }
        };
        let mut out = vec![x[0]];
        match order {
            Order::Nchw => {
                out.push(c);
                out.extend_from_slice(&p.output);
            }
            Order::Nhwc => {
                out.extend_from_slice(&p.output);
                out.push(c);
            }
        }
        Ok((d, out))
    }
}

/// Clipped window `[start, end)` of output index `p` along one dim.
fn window(p: usize, stride: usize, pad: usize, kernel: usize, len: usize) -> (usize, usize) {
    let start = (p * stride) as isize - pad as isize;
    let end = (start + kernel as isize).min(len as isize);
    let start = start.max(0);
    (start as usize, end.max(start) as usize)
}

impl Op for Pool {
    fn op_type(&self) -> &str {
        &self.op_type
    }

    fn infer(&self, inputs: &[TensorInfo]) -> OpResult<Vec<TensorInfo>> {
        expect_inputs(inputs, 1, 1)?;
        if inputs[0].dtype != crate::DType::F32 {
            return Err(OpError::DType(format!(
                "{}: X must be f32, got {}",
                self.op_type, inputs[0]
            )));
        }
        let (_, out) = self.resolve(&inputs[0].shape)?;
        Ok(vec![TensorInfo::f32(out)])
    }

    fn eval(&self, inputs: &[&Tensor]) -> OpResult<Vec<Tensor>> {
        expect_inputs(inputs, 1, 1)?;
        let xa = inputs[0]
            .as_f32()
            .map_err(|e| OpError::DType(format!("{}: X: {e}", self.op_type)))?;
        let (d, out_shape) = self.resolve(xa.shape())?;
        let x = inputs[0].f32_slice()?;
        let mut y = vec![0.0f32; out_shape.iter().product()];
        if !y.is_empty() {
            match self.geo.order {
                Order::Nchw => {
                    let (ihw, ohw) = (d.ih * d.iw, d.oh * d.ow);
                    y.par_chunks_mut(ohw)
                        .enumerate()
                        .for_each(|(pl, yp)| self.plane_nchw(&d, &x[pl * ihw..(pl + 1) * ihw], yp));
                }
                Order::Nhwc => {
                    let ihwc = d.ih * d.iw * d.c;
                    y.par_chunks_mut(d.ow * d.c)
                        .enumerate()
                        .for_each(|(r, yr)| {
                            let (n, oy) = (r / d.oh, r % d.oh);
                            self.row_nhwc(&d, &x[n * ihwc..(n + 1) * ihwc], oy, yr)
                        });
                }
            }
        }
        Ok(vec![Tensor::try_f32(&out_shape, y)?])
    }
}

impl Pool {
    fn divisor(&self, d: &PDims, hs: usize, he: usize, ws: usize, we: usize) -> f32 {
        if self.count_include_pad {
            (d.kh * d.kw) as f32
        } else {
            ((he - hs) * (we - ws)) as f32
        }
    }

    fn plane_nchw(&self, d: &PDims, x: &[f32], y: &mut [f32]) {
        if self.max {
            return max_plane_nchw(d, x, y);
        }
        for oy in 0..d.oh {
            let (hs, he) = window(oy, d.sh, d.pt, d.kh, d.ih);
            for ox in 0..d.ow {
                // An empty window wholly in the right padding may start past the row's end.
                let (ws, we) = window(ox, d.sw, d.pl, d.kw, d.iw);
                let (ws, we) = (ws.min(d.iw), we.min(d.iw));
                let mut s = 0.0f32;
                for iy in hs..he {
                    for &xv in &x[iy * d.iw + ws..iy * d.iw + we] {
                        s += xv;
                    }
                }
                y[oy * d.ow + ox] = s / self.divisor(d, hs, he, ws, we);
            }
        }
    }

    fn row_nhwc(&self, d: &PDims, x: &[f32], oy: usize, y: &mut [f32]) {
        let c = d.c;
        let (hs, he) = window(oy, d.sh, d.pt, d.kh, d.ih);
        for ox in 0..d.ow {
            let (ws, we) = window(ox, d.sw, d.pl, d.kw, d.iw);
            let yo = &mut y[ox * c..(ox + 1) * c];
            yo.fill(if self.max { f32::MIN } else { 0.0 });
            for iy in hs..he {
                for ix in ws..we {
                    let xs = &x[(iy * d.iw + ix) * c..(iy * d.iw + ix + 1) * c];
                    if self.max {
                        yo.iter_mut().zip(xs).for_each(|(m, &v)| {
                            if v > *m {
                                *m = v
                            }
                        });
                    } else {
                        yo.iter_mut().zip(xs).for_each(|(s, &v)| *s += v);
                    }
                }
            }
            if !self.max {
                let div = self.divisor(d, hs, he, ws, we);
                yo.iter_mut().for_each(|s| *s /= div);
            }
        }
    }
}

/// `if v > m { v } else { m }`: Caffe2's running-max step (NaN never wins; of equal values,
/// e.g. `0.0` and `-0.0`, the first one seen stays).
#[inline(always)]
fn keep_max(m: f32, v: f32) -> f32 {
    if v > m {
        v
    } else {
        m
    }
}

/// Row-window maxima of output columns `m` (the first at input offset `xs[0]`, stride `S`):
/// `m[i]` = the running max (`keep_max`, from `f32::MIN`) of `xs[S·i + j]` for `j < kw`, in
/// order. Eight columns at a time in registers, each written once: an in-place running max
/// would let the compiler turn the unchanged stores into masked stores, which are slow.
#[inline(always)]
fn row_max_strided<const S: usize>(m: &mut [f32], xs: &[f32], kw: usize) {
    let full = if xs.len() + S >= kw + S * 8 {
        (m.len() / 8).min((xs.len() + S - kw) / (8 * S)) * 8
    } else {
        0
    };
    for (c, a) in m[..full].chunks_exact_mut(8).enumerate() {
        let base = &xs[c * 8 * S..];
        let mut acc = [f32::MIN; 8];
        for j in 0..kw {
            // A slice of exactly the elements read, so the loop has no bounds checks.
            let w = &base[j..j + 7 * S + 1];
            for (i, v) in acc.iter_mut().enumerate() {
                *v = keep_max(*v, w[S * i]);
            }
        }
        a.copy_from_slice(&acc);
    }
    for (i, a) in m.iter_mut().enumerate().skip(full) {
        *a = xs[S * i..S * i + kw]
            .iter()
            .fold(f32::MIN, |m, &v| keep_max(m, v));
    }
}

/// Column maxima: `y[i]` = the running max (from `f32::MIN`) of `rows[r][i]` over the rows
/// in order, eight columns at a time in registers and each written once.
#[inline(always)]
fn col_max(y: &mut [f32], rows: &[&[f32]]) {
    let full = y.len() / 8 * 8;
    for (c, a) in y[..full].chunks_exact_mut(8).enumerate() {
        let mut acc = [f32::MIN; 8];
        for r in rows {
            let r: &[f32; 8] = r[c * 8..c * 8 + 8].try_into().expect("8 columns");
            for (v, &x) in acc.iter_mut().zip(r) {
                *v = keep_max(*v, x);
            }
        }
        a.copy_from_slice(&acc);
    }
    for (i, a) in y.iter_mut().enumerate().skip(full) {
        *a = rows.iter().fold(f32::MIN, |m, r| keep_max(m, r[i]));
    }
}

/// [`max_plane_nchw_portable`], compiled for AVX2 when the CPU has it.
fn max_plane_nchw(d: &PDims, x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::isa::Isa::current().has_avx2() {
        // SAFETY: the CPU has AVX2 (`Isa::current` checked it).
        unsafe { max_plane_nchw_avx2(d, x, y) };
        return;
    }
    max_plane_nchw_portable(d, x, y);
}

/// [`max_plane_nchw_portable`] compiled for AVX2: 8-lane compares and blends, and the
/// stride-2 reads as shuffles (same comparisons, so the same bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn max_plane_nchw_avx2(d: &PDims, x: &[f32], y: &mut [f32]) {
    max_plane_nchw_portable(d, x, y);
}

/// Max pooling of one NCHW plane in two passes: the max over each row window of every input
/// row, then, for each output row, the max over its window of those row maxima (vectorizes
/// over the output columns). Same bits as one pass over each window in row-major order: both
/// keep the first occurrence of the maximum and skip NaN.
#[inline(always)]
fn max_plane_nchw_portable(d: &PDims, x: &[f32], y: &mut [f32]) {
    let (iw, ow) = (d.iw, d.ow);
    // Row maxima of the input rows some window uses: rows `0..r1` (the first window starts
    // at row 0; a last window wholly in the bottom padding is empty and may start past the
    // last row).
    let r1 = window(d.oh.saturating_sub(1), d.sh, d.pt, d.kh, d.ih)
        .1
        .min(d.ih);
    let mut rows = vec![f32::MIN; r1 * ow];
    // Output columns whose window lies inside the row: `lo..hi`.
    let lo = d.pl.div_ceil(d.sw).min(ow);
    let hi = if iw + d.pl >= d.kw {
        ((iw + d.pl - d.kw) / d.sw + 1).clamp(lo, ow)
    } else {
        lo
    };
    for (iy, rm) in (0..r1).zip(rows.chunks_exact_mut(ow.max(1))) {
        let xr = &x[iy * iw..(iy + 1) * iw];
        for ox in (0..lo).chain(hi..ow) {
            // An empty window wholly in the right padding may start past the row's end.
            let (ws, we) = window(ox, d.sw, d.pl, d.kw, iw);
            let (ws, we) = (ws.min(iw), we.min(iw));
            rm[ox] = xr[ws..we].iter().fold(f32::MIN, |m, &v| keep_max(m, v));
        }
        // Inside: eight columns at a time, each column's window left to right.
        if lo == hi {
            continue;
        }
        let xs = &xr[lo * d.sw - d.pl..];
        let rm = &mut rm[lo..hi];
        // Strides 1 and 2 (nearly every net) spelled out so that they vectorize.
        match d.sw {
            1 => row_max_strided::<1>(rm, xs, d.kw),
            2 => row_max_strided::<2>(rm, xs, d.kw),
            s => {
                for (i, m) in rm.iter_mut().enumerate() {
                    *m = xs[s * i..s * i + d.kw]
                        .iter()
                        .fold(f32::MIN, |m, &v| keep_max(m, v));
                }
            }
        }
    }
    let mut window_rows: Vec<&[f32]> = Vec::with_capacity(d.kh);
    for (oy, yr) in y.chunks_exact_mut(ow.max(1)).enumerate().take(d.oh) {
        let (hs, he) = window(oy, d.sh, d.pt, d.kh, d.ih);
        window_rows.clear();
        window_rows.extend((hs..he).map(|iy| &rows[iy * ow..(iy + 1) * ow]));
        col_max(yr, &window_rows);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatched_max_plane_equals_portable() {
        // Every small geometry (kernels 1-3, strides 1-3, pads 0-2, sides 1-20) on values
        // with ties, signed zeros and NaN: the AVX2 build gives the portable build's bits.
        let vals = [
            0.0f32,
            -0.0,
            1.5,
            -2.0,
            f32::NAN,
            1.5,
            3.25,
            -0.0,
            f32::INFINITY,
        ];
        for (ih, iw) in [(1, 1), (5, 7), (13, 13), (20, 17), (8, 19)] {
            let x: Vec<f32> = (0..ih * iw)
                .map(|i| vals[(i * 7 + i / 5) % vals.len()])
                .collect();
            for (k, s, p) in (1..=3)
                .flat_map(|k| (1..=3).flat_map(move |s| (0..=2).map(move |p| (k, s, p))))
                .filter(|&(k, _, p)| p < k)
            {
                if ih + 2 * p < k || iw + 2 * p < k {
                    continue;
                }
                let (oh, ow) = ((ih + 2 * p - k) / s + 1, (iw + 2 * p - k) / s + 1);
                let d = PDims {
                    c: 1,
                    ih,
                    iw,
                    oh,
                    ow,
                    kh: k,
                    kw: k,
                    sh: s,
                    sw: s,
                    pt: p,
                    pl: p,
                };
                let (mut a, mut b) = (vec![7.0f32; oh * ow], vec![-7.0f32; oh * ow]);
                max_plane_nchw(&d, &x, &mut a);
                max_plane_nchw_portable(&d, &x, &mut b);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&b), "{ih}x{iw} k{k} s{s} p{p}");
            }
        }
    }
}
