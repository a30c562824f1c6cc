//! Convolutions read as implicit im2col rows (a padded input, tile loads straight from it):
//! the AMX driver on emulated tiles (any CPU) against a naive convolution, and Int8Conv /
//! Int8ConvSum with 64-channel inputs (the implicit path on AMX CPUs) against the reference.

use ops::kernels::aligned::AVec;
use ops::kernels::qgemm::{
    qgemm_tiles_emulated, ImplicitA, PackedQWeights, QEpilogue, QLayout, QLhs,
};
use ops::{ArgValue, Tensor};
use ops_util::{build_int8, codes, f, i, ints, qi32, qp, qu8, s};

use crate::ops_util;
use ops_util::TestRng as Rng;

/// One NHWC convolution geometry.
#[derive(Debug, Clone, Copy)]
struct Geo {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: (usize, usize),
    stride: (usize, usize),
    dil: (usize, usize),
    pad: (usize, usize),
}

impl Geo {
    fn out(&self) -> (usize, usize) {
        let e = |i: usize, k: usize, s: usize, d: usize, p: usize| {
            (i + 2 * p - (k - 1) * d - 1) / s + 1
        };
        (
            e(self.h, self.k.0, self.stride.0, self.dil.0, self.pad.0),
            e(self.w, self.k.1, self.stride.1, self.dil.1, self.pad.1),
        )
    }
}

/// A padded input as implicit rows, built here independently of the operator's own.
struct Padded {
    buf: AVec<u8>,
    g: Geo,
    hp: usize,
    wp: usize,
    zx: u8,
    /// The window form: K = kH·64, kernel row ky's kW·C codes first in k step ky.
    window: bool,
}

impl Padded {
    fn new(x: &[u8], g: Geo, zx: u8, window: bool) -> Self {
        let (oh, ow) = g.out();
        let hp = (oh - 1) * g.stride.0 + (g.k.0 - 1) * g.dil.0 + 1;
        let wp = (ow - 1) * g.stride.1 + (g.k.1 - 1) * g.dil.1 + 1;
        let mut buf = AVec::filled(
            g.n * hp * wp * g.c + (16 * g.stride.1 + g.k.1 * g.dil.1 + 1) * g.c + 128,
            zx,
        );
        for img in 0..g.n {
            for y in 0..g.h {
                for xx in 0..g.w {
                    let (py, px) = (y + g.pad.0, xx + g.pad.1);
                    if py < hp && px < wp {
                        for ch in 0..g.c {
                            buf[((img * hp + py) * wp + px) * g.c + ch] =
                                x[((img * g.h + y) * g.w + xx) * g.c + ch];
                        }
                    }
                }
            }
        }
        Padded {
            buf,
            g,
            hp,
            wp,
            zx,
            window,
        }
    }

    /// Input code at (img, y, x, ch) with padding, from the unpadded input.
    fn naive_tap(x: &[u8], g: &Geo, zx: u8, img: usize, y: isize, xx: isize, ch: usize) -> u8 {
        if y < 0 || xx < 0 || y as usize >= g.h || xx as usize >= g.w {
            zx
        } else {
            x[((img * g.h + y as usize) * g.w + xx as usize) * g.c + ch]
        }
    }
}

impl QLhs for Padded {
    fn rows(&self) -> usize {
        let (oh, ow) = self.g.out();
        self.g.n * oh * ow
    }
    fn depth(&self) -> usize {
        if self.window {
            self.g.k.0 * 64
        } else {
            self.g.k.0 * self.g.k.1 * self.g.c
        }
    }
    fn row<'s>(&'s self, r: usize, scratch: &'s mut [u8]) -> &'s [u8] {
        let (oh, ow) = self.g.out();
        let g = &self.g;
        let (img, oy, ox) = (r / (oh * ow), r % (oh * ow) / ow, r % ow);
        let mut at = 0;
        for ky in 0..g.k.0 {
            if self.window {
                // Codes past the kernel row meet zero weights: any value will do.
                scratch[at..at + 64].fill(0xA5);
            }
            for kx in 0..g.k.1 {
                let (py, px) = (
                    oy * g.stride.0 + ky * g.dil.0,
                    ox * g.stride.1 + kx * g.dil.1,
                );
                let src = ((img * self.hp + py) * self.wp + px) * g.c;
                scratch[at..at + g.c].copy_from_slice(&self.buf[src..src + g.c]);
                at += g.c;
            }
            if self.window {
                at = (ky + 1) * 64;
            }
        }
        let _ = self.zx;
        &scratch[..at]
    }
    fn implicit(&self) -> Option<ImplicitA<'_>> {
        let (oh, ow) = self.g.out();
        Some(ImplicitA {
            data: &self.buf,
            n: self.g.n,
            ihp: self.hp,
            iwp: self.wp,
            c: self.g.c,
            oh,
            ow,
            stride: self.g.stride,
            dilation: self.g.dil,
            kernel: self.g.k,
            window: self.window,
        })
    }
}

#[test]
fn emulated_amx_on_implicit_rows_matches_a_naive_convolution() {
    let geos = [
        Geo {
            n: 1,
            c: 64,
            h: 5,
            w: 20,
            k: (3, 3),
            stride: (1, 1),
            dil: (1, 1),
            pad: (1, 1),
        },
        Geo {
            n: 2,
            c: 64,
            h: 6,
            w: 17,
            k: (3, 3),
            stride: (2, 2),
            dil: (1, 1),
            pad: (1, 1),
        },
        Geo {
            n: 1,
            c: 128,
            h: 4,
            w: 33,
            k: (2, 3),
            stride: (1, 2),
            dil: (2, 1),
            pad: (0, 2),
        },
        Geo {
            n: 1,
            c: 64,
            h: 3,
            w: 7,
            k: (1, 1),
            stride: (1, 1),
            dil: (1, 1),
            pad: (0, 0),
        },
    ];
    for (gi, g) in geos.iter().enumerate() {
        let mut r = Rng::new(40 + gi as u64);
        let (oh, ow) = g.out();
        let m = 37;
        let zx = r.zp() as u8;
        let x = r.some_codes(g.n * g.h * g.w * g.c, 5);
        let k = g.k.0 * g.k.1 * g.c;
        let wc = r.codes(m * k, gi % 2 == 0);
        let zw: Vec<i32> = (0..m).map(|j| [128, 0, 255, 77][j % 4]).collect();
        let bias: Vec<i32> = (0..m).map(|_| r.below(2001) as i32 - 1000).collect();
        let mults: Vec<f32> = (0..m).map(|_| 1e-4 + r.unit_f32() * 2e-3).collect();
        let (zy, lo) = (r.zp(), 0);
        let want = naive_conv(g, &x, zx, &wc, &zw, &bias, &mults, zy, lo, m);
        let a = Padded::new(&x, *g, zx, false);
        let w = PackedQWeights::pack_with(&wc, m, k, &zw, QLayout::Tiles).unwrap();
        let ep = QEpilogue::new(w.col_sums(), zx as i32, &bias, &mults, zy, lo).unwrap();
        let _ = (oh, ow);
        check_emulated(&a, &w, &ep, &want, m, g);
    }
}

/// The emulated AMX driver on `a` at 1 and 2 threads gives `want`.
fn check_emulated(a: &Padded, w: &PackedQWeights, ep: &QEpilogue, want: &[u8], m: usize, g: &Geo) {
    for threads in [1, 2] {
        let mut y = vec![0u8; want.len()];
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| qgemm_tiles_emulated(a, w, ep, None, &mut y, m, 0))
            .unwrap();
        assert_eq!(y, want, "{g:?}, {threads} threads");
    }
}

/// The naive convolution with padding taps at z_x and the DNNLOWP output stage.
#[allow(clippy::too_many_arguments)]
fn naive_conv(
    g: &Geo,
    x: &[u8],
    zx: u8,
    wc: &[u8],
    zw: &[i32],
    bias: &[i32],
    mults: &[f32],
    zy: i32,
    lo: i32,
    m: usize,
) -> Vec<u8> {
    let (oh, ow) = g.out();
    let k = g.k.0 * g.k.1 * g.c;
    {
        let mut want = vec![0u8; g.n * oh * ow * m];
        for img in 0..g.n {
            for oy in 0..oh {
                for ox in 0..ow {
                    for j in 0..m {
                        let mut acc: i64 = bias[j] as i64;
                        let mut t = 0;
                        for ky in 0..g.k.0 {
                            for kx in 0..g.k.1 {
                                let y =
                                    (oy * g.stride.0 + ky * g.dil.0) as isize - g.pad.0 as isize;
                                let xx =
                                    (ox * g.stride.1 + kx * g.dil.1) as isize - g.pad.1 as isize;
                                for ch in 0..g.c {
                                    let v = Padded::naive_tap(x, g, zx, img, y, xx, ch) as i64;
                                    acc += (v - zx as i64) * (wc[j * k + t] as i64 - zw[j] as i64);
                                    t += 1;
                                }
                            }
                        }
                        let q = ((acc as i32) as f32 * mults[j]).round_ties_even();
                        want[((img * oh + oy) * ow + ox) * m + j] =
                            (q as i64 + zy as i64).clamp(lo as i64, 255) as u8;
                    }
                }
            }
        }
        want
    }
}

/// The window form (few channels: each kernel row's kW·C codes in one 64-byte k step, the
/// rest of the step meeting zero weights) on emulated tiles against the naive convolution:
/// an image net's first layer (C = 3, 7×7 s2 and 3×3 s2), 16 channels, odd kernels with
/// height dilation, per-channel weight zero points whose centred weights fit i8.
#[test]
fn emulated_amx_on_window_rows_matches_a_naive_convolution() {
    let geo = |n, c, h, w, k, stride, dil, pad| Geo {
        n,
        c,
        h,
        w,
        k,
        stride,
        dil,
        pad,
    };
    let geos = [
        geo(1, 3, 21, 40, (7, 7), (2, 2), (1, 1), (3, 3)),
        geo(2, 3, 9, 35, (3, 3), (2, 2), (1, 1), (1, 1)),
        geo(1, 16, 5, 18, (3, 3), (1, 1), (1, 1), (1, 1)),
        geo(1, 5, 7, 20, (2, 4), (1, 1), (2, 1), (1, 2)),
    ];
    for (gi, g) in geos.iter().enumerate() {
        let mut r = Rng::new(140 + gi as u64);
        let m = 19 + 13 * gi;
        let zx = r.zp() as u8;
        let x = r.some_codes(g.n * g.h * g.w * g.c, 5);
        let (kh, row) = (g.k.0, g.k.1 * g.c);
        let k = kh * row;
        let zw: Vec<i32> = (0..m).map(|j| [128, 100, 150][j % 3]).collect();
        // Centred weights in [−128, 127] (no row-sum correction), extremes included.
        let wc: Vec<u8> = (0..m * k)
            .map(|t| {
                let z = zw[t / k];
                let v = match r.below(8) {
                    0 => z - 128,
                    1 => z + 127,
                    _ => z + r.below(101) as i32 - 50,
                };
                v.clamp(0, 255) as u8
            })
            .collect();
        let bias: Vec<i32> = (0..m).map(|_| r.below(2001) as i32 - 1000).collect();
        let mults: Vec<f32> = (0..m).map(|_| 1e-4 + r.unit_f32() * 2e-3).collect();
        let (zy, lo) = (r.zp(), if gi % 2 == 0 { 0 } else { 10 });
        let want = naive_conv(g, &x, zx, &wc, &zw, &bias, &mults, zy, lo, m);
        // The weights widened to K = kH·64 (code z_w, weight 0, past each kernel row).
        let mut wide = vec![0u8; m * kh * 64];
        for j in 0..m {
            wide[j * kh * 64..(j + 1) * kh * 64].fill(zw[j] as u8);
            for ky in 0..kh {
                wide[j * kh * 64 + ky * 64..][..row]
                    .copy_from_slice(&wc[j * k + ky * row..][..row]);
            }
        }
        let a = Padded::new(&x, *g, zx, true);
        let w = PackedQWeights::pack_with(&wide, m, kh * 64, &zw, QLayout::Tiles).unwrap();
        assert!(!w.needs_rowsum());
        let ep = QEpilogue::new(w.col_sums(), zx as i32, &bias, &mults, zy, lo).unwrap();
        check_emulated(&a, &w, &ep, &want, m, g);
    }
}

/// Int8Conv (and the fused Int8ConvSum) on 64/128-channel inputs wide enough for the implicit
/// path: fast (1 and 2 threads) against the reference.
#[test]
fn conv_with_implicit_rows_equals_reference() {
    let cases: [(usize, usize, usize, usize, usize, usize, usize); 9] = [
        // (n, c, h, w, k, stride, pad)
        (1, 64, 9, 20, 3, 1, 1),
        (2, 64, 8, 33, 3, 2, 1),
        (1, 128, 5, 16, 3, 1, 0),
        (1, 64, 6, 18, 5, 1, 2),
        (1, 192, 4, 17, 3, 1, 1),
        // Few channels: the window form on AMX CPUs (an image net's first layers).
        (1, 3, 20, 41, 7, 2, 3),
        (2, 3, 9, 36, 3, 2, 1),
        (1, 16, 6, 19, 3, 1, 1),
        (1, 4, 5, 17, 5, 1, 2),
    ];
    for (ci, &(n, c, h, w, k, st, p)) in cases.iter().enumerate() {
        let mut r = Rng::new(90 + ci as u64);
        let m = 24 + 8 * ci;
        let xq = qp(0.03, r.zp());
        // Case 6: a weight zero point other than 128, centred weights still within i8.
        let wq = qp(0.005, if ci == 6 { 120 } else { 128 });
        let yq = qp(0.2, r.zp());
        let x = qu8(&[n, h, w, c], r.some_codes(n * h * w * c, 4), xq);
        let wc: Vec<u8> = r.codes(m * k * k * c, ci == 1);
        let wc = if ci == 6 {
            wc.into_iter().map(|v| v.min(247)).collect()
        } else {
            wc
        };
        let wt = qu8(&[m, k, k, c], wc, wq);
        let b = qi32(
            &[m],
            (0..m).map(|_| r.below(4001) as i32 - 2000).collect(),
            qp(xq.scale * wq.scale, 0),
        );
        let args: Vec<(&str, ArgValue)> = vec![
            ("kernel", i(k as i64)),
            ("stride", i(st as i64)),
            ("pads", ints(&[p as i64; 4])),
            ("order", s("NHWC")),
            ("Y_scale", f(yq.scale)),
            ("Y_zero_point", i(yq.zero_point as i64)),
        ];
        let inputs = [&x, &wt, &b];
        let want = build_int8("Int8ConvRelu", &args, 3, 1, true)
            .eval(&inputs)
            .unwrap()
            .remove(0);
        let mut fast = build_int8("Int8ConvRelu", &args, 3, 1, false);
        fast.prepare(&[None, Some(&wt), Some(&b)]).unwrap();
        for threads in [1, 2] {
            let got = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| fast.eval(&inputs))
                .unwrap()
                .remove(0);
            assert_eq!(codes(&got), codes(&want), "case {ci}, {threads} threads");
        }
        // The fused Sum on the same convolution.
        let oq = qp(0.1, r.zp());
        let other = qu8(want.shape(), r.some_codes(want.len(), 3), oq);
        let mut sargs = args.clone();
        sargs.push(("conv_relu", i(1)));
        sargs.push(("sum_type", s("Int8SumRelu")));
        sargs.push(("sum_Y_scale", f(0.15)));
        sargs.push(("sum_Y_zero_point", i(7)));
        let fused_in: [&Tensor; 4] = [&x, &wt, &b, &other];
        let reference = build_int8("Int8ConvSumRelu", &sargs, 4, 1, true)
            .eval(&fused_in)
            .unwrap()
            .remove(0);
        let mut fused = build_int8("Int8ConvSumRelu", &sargs, 4, 1, false);
        fused.prepare(&[None, Some(&wt), Some(&b), None]).unwrap();
        let got = fused.eval(&fused_in).unwrap().remove(0);
        assert_eq!(codes(&got), codes(&reference), "fused sum, case {ci}");
    }
}
