//! fp32 MaxPool / AveragePool against a naive reference written here.

use ops::{build_op, ArgValue, Args, NodeSpec, Op, OpError, Tensor, TensorInfo};

use crate::ops_util;

/// Values on the grid of multiples of 1e-3 in `[-10, 10]`.
fn rnd(n: usize, seed: u64) -> Vec<f32> {
    ops_util::rnd(n, seed)
        .into_iter()
        .map(|v| v * 10.0)
        .collect()
}

fn build(op: &str, args: &[(&str, ArgValue)]) -> Box<dyn Op> {
    let mut a = Args::new();
    for (k, v) in args {
        a.set(k, v.clone());
    }
    build_op(&NodeSpec::new(op, a, 1, 1))
        .expect("builds")
        .expect("known op")
}

fn run(op: &dyn Op, x: &Tensor) -> Tensor {
    let inferred = op.infer(&[x.info()]).expect("infer");
    let y = op.eval(&[x]).expect("eval").remove(0);
    assert_eq!(inferred[0], y.info());
    y
}

#[derive(Clone, Copy, Debug)]
struct P {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    pt: usize,
    pl: usize,
    pb: usize,
    pr: usize,
}

/// Visits every kernel cell and keeps those inside the image (padding is skipped).
fn reference(p: &P, x: &[f32], max: bool, include_pad: bool) -> (Vec<f32>, usize, usize) {
    let oh = (p.h + p.pt + p.pb - p.kh) / p.sh + 1;
    let ow = (p.w + p.pl + p.pr - p.kw) / p.sw + 1;
    let mut y = Vec::new();
    for n in 0..p.n {
        for c in 0..p.c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut best = f32::MIN;
                    let mut sum = 0.0f64;
                    let mut count = 0;
                    for i in 0..p.kh {
                        for j in 0..p.kw {
                            let iy = (oy * p.sh + i) as i64 - p.pt as i64;
                            let ix = (ox * p.sw + j) as i64 - p.pl as i64;
                            if iy < 0 || ix < 0 || iy >= p.h as i64 || ix >= p.w as i64 {
                                continue;
                            }
                            let v = x[((n * p.c + c) * p.h + iy as usize) * p.w + ix as usize];
                            // Caffe2's running max: NaN never wins, the first of equal
                            // values (0.0 / -0.0) stays.
                            if v > best {
                                best = v;
                            }
                            sum += v as f64;
                            count += 1;
                        }
                    }
                    let div = if include_pad { p.kh * p.kw } else { count };
                    y.push(if max { best } else { (sum / div as f64) as f32 });
                }
            }
        }
    }
    (y, oh, ow)
}

fn to_nhwc(v: &[f32], n: usize, c: usize, h: usize, w: usize) -> Vec<f32> {
    let mut o = vec![0.0; v.len()];
    for a in 0..n {
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    o[((a * h + y) * w + x) * c + ch] = v[((a * c + ch) * h + y) * w + x];
                }
            }
        }
    }
    o
}

fn close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
            "{what}: {i}: got {a} want {b}"
        );
    }
}

fn geo_args(p: &P) -> Vec<(&'static str, ArgValue)> {
    vec![
        ("kernels", ArgValue::Ints(vec![p.kh as i64, p.kw as i64])),
        ("strides", ArgValue::Ints(vec![p.sh as i64, p.sw as i64])),
        ("pad_t", ArgValue::I(p.pt as i64)),
        ("pad_l", ArgValue::I(p.pl as i64)),
        ("pad_b", ArgValue::I(p.pb as i64)),
        ("pad_r", ArgValue::I(p.pr as i64)),
    ]
}

/// Checks max, average and average-with-padding in both layouts.
fn check(p: P, seed: u64) {
    let x = rnd(p.n * p.c * p.h * p.w, seed);
    for (name, max, incl) in [
        ("MaxPool", true, false),
        ("AveragePool", false, false),
        ("AveragePool", false, true),
    ] {
        let (want, oh, ow) = reference(&p, &x, max, incl);
        let mut args = geo_args(&p);
        if incl {
            args.push(("count_include_pad", ArgValue::I(1)));
        }
        let y = run(
            build(name, &args).as_ref(),
            &Tensor::from_f32(&[p.n, p.c, p.h, p.w], x.clone()),
        );
        assert_eq!(y.shape(), &[p.n, p.c, oh, ow]);
        close(
            y.f32_slice().unwrap(),
            &want,
            &format!("{name} NCHW {p:?} incl={incl}"),
        );
        args.push(("order", ArgValue::S(b"NHWC".to_vec())));
        let xn = Tensor::from_f32(&[p.n, p.h, p.w, p.c], to_nhwc(&x, p.n, p.c, p.h, p.w));
        let y = run(build(name, &args).as_ref(), &xn);
        assert_eq!(y.shape(), &[p.n, oh, ow, p.c]);
        close(
            y.f32_slice().unwrap(),
            &to_nhwc(&want, p.n, p.c, oh, ow),
            &format!("{name} NHWC {p:?} incl={incl}"),
        );
    }
}

fn base() -> P {
    P {
        n: 2,
        c: 3,
        h: 9,
        w: 8,
        kh: 3,
        kw: 3,
        sh: 2,
        sw: 2,
        pt: 1,
        pl: 1,
        pb: 1,
        pr: 1,
    }
}

#[test]
fn windowed_variants() {
    check(base(), 1); // ResNet pool1 shape class: k3 s2 p1
    check(
        P {
            kh: 2,
            kw: 3,
            sh: 1,
            sw: 2,
            pt: 0,
            pl: 2,
            pb: 1,
            pr: 0,
            ..base()
        },
        2,
    );
    check(
        P {
            kh: 3,
            kw: 3,
            sh: 3,
            sw: 1,
            pt: 2,
            pl: 0,
            pb: 2,
            pr: 2,
            ..base()
        },
        3,
    );
    check(
        P {
            kh: 1,
            kw: 1,
            sh: 1,
            sw: 1,
            pt: 0,
            pl: 0,
            pb: 0,
            pr: 0,
            ..base()
        },
        4,
    );
    check(
        P {
            kh: 4,
            kw: 2,
            sh: 2,
            sw: 2,
            pt: 0,
            pl: 0,
            pb: 0,
            pr: 0,
            h: 10,
            w: 10,
            ..base()
        },
        5,
    );
}

#[test]
fn alexnet_pool5_pad_bottom_right() {
    // k3 s2 pads t/l 0 b/r 1 on 13x13 -> 6x6 (AlexNet pool5).
    let p = P {
        n: 1,
        c: 4,
        h: 13,
        w: 13,
        kh: 3,
        kw: 3,
        sh: 2,
        sw: 2,
        pt: 0,
        pl: 0,
        pb: 1,
        pr: 1,
    };
    check(p, 10);
    let (_, oh, ow) = reference(&p, &rnd(4 * 169, 10), true, false);
    assert_eq!((oh, ow), (6, 6));
}

#[test]
fn inception_pool5_divides_by_36() {
    // AveragePool k7 s1 pad_b/pad_r 1 on a 6x6 map -> 1x1, divisor 36 (not 49).
    let x: Vec<f32> = (0..36).map(|v| v as f32).collect(); // sum 630
    let args = [
        ("kernel", ArgValue::I(7)),
        ("stride", ArgValue::I(1)),
        ("pad_t", ArgValue::I(0)),
        ("pad_l", ArgValue::I(0)),
        ("pad_b", ArgValue::I(1)),
        ("pad_r", ArgValue::I(1)),
    ];
    let y = run(
        build("AveragePool", &args).as_ref(),
        &Tensor::from_f32(&[1, 1, 6, 6], x.clone()),
    );
    assert_eq!(y.shape(), &[1, 1, 1, 1]);
    assert_eq!(y.f32_slice().unwrap(), &[17.5]);
    let mut args = args.to_vec();
    args.push(("count_include_pad", ArgValue::I(1)));
    let y = run(
        build("AveragePool", &args).as_ref(),
        &Tensor::from_f32(&[1, 1, 6, 6], x),
    );
    assert_eq!(y.f32_slice().unwrap(), &[630.0 / 49.0]);
}

#[test]
fn hand_worked_small() {
    // 1x1x3x3 = 0..8, k2 s1 p1 -> 4x4.
    let x = Tensor::from_f32(&[1, 1, 3, 3], (0..9).map(|v| v as f32).collect());
    let args = [("kernel", ArgValue::I(2)), ("pad", ArgValue::I(1))];
    let y = run(build("MaxPool", &args).as_ref(), &x);
    assert_eq!(
        y.f32_slice().unwrap(),
        &[0., 1., 2., 2., 3., 4., 5., 5., 6., 7., 8., 8., 6., 7., 8., 8.]
    );
    let y = run(build("AveragePool", &args).as_ref(), &x);
    assert_eq!(
        y.f32_slice().unwrap(),
        &[0., 0.5, 1.5, 2., 1.5, 2., 3., 3.5, 4.5, 5., 6., 6.5, 6., 6.5, 7.5, 8.]
    );
    let mut a = args.to_vec();
    a.push(("count_include_pad", ArgValue::I(1)));
    let y = run(build("AveragePool", &a).as_ref(), &x);
    assert_eq!(
        y.f32_slice().unwrap(),
        &[0., 0.25, 0.75, 0.5, 0.75, 2., 3., 1.75, 2.25, 5., 6., 3.25, 1.5, 3.25, 3.75, 2.]
    );
}

#[test]
fn global_pooling() {
    let x = rnd(2 * 3 * 5 * 4, 20);
    let xt = Tensor::from_f32(&[2, 3, 5, 4], x.clone());
    let args = [("global_pooling", ArgValue::I(1))];
    let ym = run(build("MaxPool", &args).as_ref(), &xt);
    let ya = run(build("AveragePool", &args).as_ref(), &xt);
    assert_eq!(ym.shape(), &[2, 3, 1, 1]);
    for plane in 0..6 {
        let s = &x[plane * 20..(plane + 1) * 20];
        let mx = s.iter().cloned().fold(f32::MIN, f32::max);
        let mean = s.iter().map(|&v| v as f64).sum::<f64>() / 20.0;
        assert_eq!(ym.f32_slice().unwrap()[plane], mx);
        assert!((ya.f32_slice().unwrap()[plane] as f64 - mean).abs() < 1e-5);
    }
    // NHWC global.
    let xn = Tensor::from_f32(&[2, 5, 4, 3], to_nhwc(&x, 2, 3, 5, 4));
    let args = [
        ("global_pooling", ArgValue::I(1)),
        ("order", ArgValue::S(b"NHWC".to_vec())),
    ];
    let yn = run(build("AveragePool", &args).as_ref(), &xn);
    assert_eq!(yn.shape(), &[2, 1, 1, 3]);
    close(
        yn.f32_slice().unwrap(),
        ya.f32_slice().unwrap(),
        "global NHWC",
    );
}

#[test]
fn legacy_pads() {
    // CAFFE_LEGACY_POOLING k3 s2 p0 on 8x7: ceil(5/2)+1 = 4 vs standard 3 (tail 0+2*1 = 2),
    // ceil(4/2)+1 = 3 = standard (tail 0).
    let x = rnd(2 * 8 * 7, 30);
    let xt = Tensor::from_f32(&[1, 2, 8, 7], x.clone());
    let args = [
        ("kernel", ArgValue::I(3)),
        ("stride", ArgValue::I(2)),
        ("legacy_pad", ArgValue::I(3)),
    ];
    for name in ["MaxPool", "AveragePool"] {
        let y = run(build(name, &args).as_ref(), &xt);
        assert_eq!(y.shape(), &[1, 2, 4, 3]);
        let p = P {
            n: 1,
            c: 2,
            h: 8,
            w: 7,
            kh: 3,
            kw: 3,
            sh: 2,
            sw: 2,
            pt: 0,
            pl: 0,
            pb: 2,
            pr: 0,
        };
        let (want, _, _) = reference(&p, &x, name == "MaxPool", false);
        close(y.f32_slice().unwrap(), &want, "legacy pooling");
    }
    // VALID k3 s2 on 8x7: 3x3. SAME: ceil(8/2) = 4 (pad needed 1: t0 b1), ceil(7/2) = 4 (2: l1 r1).
    let y = run(
        build(
            "MaxPool",
            &[
                ("kernel", ArgValue::I(3)),
                ("stride", ArgValue::I(2)),
                ("legacy_pad", ArgValue::I(1)),
            ],
        )
        .as_ref(),
        &xt,
    );
    assert_eq!(y.shape(), &[1, 2, 3, 3]);
    let p = P {
        n: 1,
        c: 2,
        h: 8,
        w: 7,
        kh: 3,
        kw: 3,
        sh: 2,
        sw: 2,
        pt: 0,
        pl: 0,
        pb: 0,
        pr: 0,
    };
    close(
        y.f32_slice().unwrap(),
        &reference(&p, &x, true, false).0,
        "VALID",
    );
    let y = run(
        build(
            "AveragePool",
            &[
                ("kernel", ArgValue::I(3)),
                ("stride", ArgValue::I(2)),
                ("legacy_pad", ArgValue::I(2)),
            ],
        )
        .as_ref(),
        &xt,
    );
    assert_eq!(y.shape(), &[1, 2, 4, 4]);
    let p = P {
        pt: 0,
        pb: 1,
        pl: 1,
        pr: 1,
        ..p
    };
    close(
        y.f32_slice().unwrap(),
        &reference(&p, &x, false, false).0,
        "SAME",
    );
}

#[test]
fn one_dimensional() {
    // [1, 2, 7], k3 s2 pads [1, 1] -> (7+2-3)/2+1 = 4.
    let x = rnd(14, 40);
    let args = [
        ("kernels", ArgValue::Ints(vec![3])),
        ("strides", ArgValue::Ints(vec![2])),
        ("pads", ArgValue::Ints(vec![1, 1])),
    ];
    let y = run(
        build("MaxPool", &args).as_ref(),
        &Tensor::from_f32(&[1, 2, 7], x.clone()),
    );
    assert_eq!(y.shape(), &[1, 2, 4]);
    let p = P {
        n: 1,
        c: 2,
        h: 1,
        w: 7,
        kh: 1,
        kw: 3,
        sh: 1,
        sw: 2,
        pt: 0,
        pl: 1,
        pb: 0,
        pr: 1,
    };
    close(
        y.f32_slice().unwrap(),
        &reference(&p, &x, true, false).0,
        "1-D",
    );
}

#[test]
fn errors() {
    let op = build("MaxPool", &[("kernel", ArgValue::I(5))]);
    let e = op.infer(&[TensorInfo::f32(vec![1, 3, 4, 9])]).unwrap_err();
    assert!(
        matches!(&e, OpError::Shape(m) if m.contains("[1, 3, 4, 9]")),
        "{e:?}"
    );
    assert!(matches!(
        op.infer(&[TensorInfo::f32(vec![3, 9, 9])]),
        Err(OpError::Shape(_))
    ));
    let xi = Tensor::I32(ndarray::ArrayD::zeros(ndarray::IxDyn(&[1, 1, 9, 9])));
    assert!(matches!(op.eval(&[&xi]), Err(OpError::DType(_))));
    let mk = |args: &[(&str, ArgValue)]| {
        let mut a = Args::new();
        for (k, v) in args {
            a.set(k, v.clone());
        }
        build_op(&NodeSpec::new("AveragePool", a, 1, 1)).unwrap_err()
    };
    assert!(matches!(mk(&[]), OpError::BadArg { .. }));
    assert!(matches!(
        mk(&[("kernel", ArgValue::I(2)), ("dilation", ArgValue::I(2))]),
        OpError::BadArg { .. }
    ));
    assert!(matches!(
        mk(&[("global_pooling", ArgValue::I(1)), ("pad", ArgValue::I(1))]),
        OpError::BadArg { .. }
    ));
}

#[test]
fn threads_do_not_change_bits() {
    let x = Tensor::from_f32(&[2, 16, 30, 30], rnd(2 * 16 * 900, 50));
    let op = build(
        "AveragePool",
        &[
            ("kernel", ArgValue::I(3)),
            ("stride", ArgValue::I(2)),
            ("pad", ArgValue::I(1)),
        ],
    );
    let with = |t: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .unwrap();
        pool.install(|| op.eval(&[&x]).unwrap().remove(0))
    };
    assert_eq!(with(1), with(2));
}

#[test]
fn max_pool_keeps_first_maximum_and_skips_nan() {
    // Values drawn from a few classes so that windows hold ties, signed zeros and NaN: the
    // result must be, bit for bit, Caffe2's running `if v > m { m = v }` over the window in
    // row-major order (the first of equal values stays; NaN never wins; an all-NaN window
    // gives f32::MIN), in both layouts.
    let classes = [
        0.0f32,
        -0.0,
        f32::NAN,
        1.5,
        -2.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ];
    let mut neg_zeros = 0;
    for (idx, p) in [
        P {
            n: 1,
            w: 11,
            ..base()
        },
        P {
            c: 2,
            h: 7,
            w: 6,
            kh: 2,
            sh: 1,
            pt: 0,
            pl: 2,
            pr: 2,
            ..base()
        },
        P {
            n: 1,
            c: 1,
            h: 5,
            w: 5,
            kh: 5,
            kw: 1,
            sh: 3,
            sw: 1,
            pt: 2,
            pl: 0,
            pb: 2,
            pr: 0,
        },
        // Padding so wide that no window lies inside the row (every column is an edge).
        P {
            n: 1,
            c: 2,
            h: 3,
            w: 1,
            kh: 1,
            kw: 3,
            sh: 1,
            sw: 1,
            pt: 0,
            pl: 2,
            pb: 0,
            pr: 2,
        },
    ]
    .into_iter()
    .enumerate()
    {
        let len = p.n * p.c * p.h * p.w;
        let mut s = 0x9e37_79b9_u64 + idx as u64;
        let x: Vec<f32> = (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                classes[(s >> 33) as usize % classes.len()]
            })
            .collect();
        let (want_f, oh, ow) = reference(&p, &x, true, false);
        let want: Vec<u32> = want_f.iter().map(|v| v.to_bits()).collect();
        neg_zeros += want.iter().filter(|&&b| b == (-0.0f32).to_bits()).count();
        let args = geo_args(&p);
        let y = run(
            build("MaxPool", &args).as_ref(),
            &Tensor::from_f32(&[p.n, p.c, p.h, p.w], x.clone()),
        );
        let got: Vec<u32> = y.f32_slice().unwrap().iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, want, "NCHW {p:?}");
        let mut args = args;
        args.push(("order", ArgValue::S(b"NHWC".to_vec())));
        let xn = Tensor::from_f32(&[p.n, p.h, p.w, p.c], to_nhwc(&x, p.n, p.c, p.h, p.w));
        let y = run(build("MaxPool", &args).as_ref(), &xn);
        let want_n: Vec<u32> = to_nhwc(&want_f, p.n, p.c, oh, ow)
            .iter()
            .map(|v| v.to_bits())
            .collect();
        let got: Vec<u32> = y.f32_slice().unwrap().iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, want_n, "NHWC {p:?}");
    }
    assert!(
        neg_zeros > 0,
        "no window kept -0.0 first: the cases do not test it"
    );
}

#[test]
fn pools_on_every_small_geometry() {
    // Every geometry with sides 1–5, kernels 1–3, strides 1–3 and pads 0–2 (left/top and
    // right/bottom independently) that gives a non-empty output: the NCHW max pool equals
    // the reference bit for bit, and the average pools and the NHWC layout match it too
    // (windows wholly in the padding included).
    let mut checked = 0;
    for (h, w) in [(1, 1), (1, 5), (4, 1), (3, 4), (5, 5)] {
        let x = rnd(h * w * 2, (h * 10 + w) as u64);
        for (kh, kw) in [(1, 1), (1, 3), (2, 2), (3, 1), (3, 3)] {
            for (sh, sw) in [(1, 1), (2, 1), (1, 3), (2, 2)] {
                for (pt, pl, pb, pr) in [(0, 0, 0, 0), (1, 2, 0, 1), (2, 0, 2, 2), (0, 1, 1, 0)] {
                    let p = P {
                        n: 1,
                        c: 2,
                        h,
                        w,
                        kh,
                        kw,
                        sh,
                        sw,
                        pt,
                        pl,
                        pb,
                        pr,
                    };
                    if h + pt + pb < kh || w + pl + pr < kw {
                        continue;
                    }
                    let op = build("MaxPool", &geo_args(&p));
                    let xt = Tensor::from_f32(&[1, 2, h, w], x.clone());
                    let Ok(y) = op.eval(&[&xt]) else { continue };
                    let (want, oh, ow) = reference(&p, &x, true, false);
                    let got: Vec<u32> = y[0]
                        .f32_slice()
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect();
                    let want: Vec<u32> = want.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(got, want, "{p:?}");
                    checked += 1;
                    // The other pools and layout on the same geometry must not fail either.
                    let xn = Tensor::from_f32(&[1, h, w, 2], to_nhwc(&x, 1, 2, h, w));
                    for (name, incl) in [
                        ("MaxPool", false),
                        ("AveragePool", false),
                        ("AveragePool", true),
                    ] {
                        let mut args = geo_args(&p);
                        if incl {
                            args.push(("count_include_pad", ArgValue::I(1)));
                        }
                        let (want, _, _) = reference(&p, &x, name == "MaxPool", incl);
                        let finite = want.iter().all(|v| v.is_finite());
                        if name != "MaxPool" {
                            let y = build(name, &args).eval(&[&xt]).expect("NCHW eval");
                            if finite {
                                close(
                                    y[0].f32_slice().unwrap(),
                                    &want,
                                    &format!("{name} NCHW {p:?}"),
                                );
                            }
                        }
                        args.push(("order", ArgValue::S(b"NHWC".to_vec())));
                        let y = build(name, &args).eval(&[&xn]).expect("NHWC eval");
                        if finite {
                            let want = to_nhwc(&want, 1, 2, oh, ow);
                            close(
                                y[0].f32_slice().unwrap(),
                                &want,
                                &format!("{name} NHWC {p:?}"),
                            );
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 300, "only {checked} geometries checked");
}
