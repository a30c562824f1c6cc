//! fp32 Conv / ConvRelu against a naive direct-convolution reference written here.

use ops::{build_op, ArgValue, Args, NodeSpec, Op, OpError, Tensor, TensorInfo};

use crate::ops_util;
use ops_util::rnd;

fn spec(op: &str, args: &[(&str, ArgValue)], n_in: usize) -> NodeSpec {
    let mut a = Args::new();
    for (k, v) in args {
        a.set(k, v.clone());
    }
    NodeSpec::new(op, a, n_in, 1)
}

fn build(op: &str, args: &[(&str, ArgValue)], n_in: usize) -> Box<dyn Op> {
    build_op(&spec(op, args, n_in))
        .expect("builds")
        .expect("known op")
}

/// Geometry of one reference convolution (NCHW semantics).
#[derive(Clone, Copy, Debug)]
struct G {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    m: usize,
    kh: usize,
    kw: usize,
    sh: usize,
    sw: usize,
    dh: usize,
    dw: usize,
    pt: usize,
    pl: usize,
    pb: usize,
    pr: usize,
    g: usize,
}

impl G {
    fn oh(&self) -> usize {
        (self.h + self.pt + self.pb - (self.dh * (self.kh - 1) + 1)) / self.sh + 1
    }
    fn ow(&self) -> usize {
        (self.w + self.pl + self.pr - (self.dw * (self.kw - 1) + 1)) / self.sw + 1
    }
}

/// Direct convolution, f64 accumulation, straight from the definition.
fn reference(g: &G, x: &[f32], w: &[f32], b: Option<&[f32]>, relu: bool) -> Vec<f32> {
    let (oh, ow) = (g.oh(), g.ow());
    let cpg = g.c / g.g;
    let mpg = g.m / g.g;
    let mut y = vec![0.0f32; g.n * g.m * oh * ow];
    for n in 0..g.n {
        for m in 0..g.m {
            let grp = m / mpg;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = b.map_or(0.0, |b| b[m] as f64);
                    for cc in 0..cpg {
                        let c = grp * cpg + cc;
                        for i in 0..g.kh {
                            for j in 0..g.kw {
                                let iy = (oy * g.sh + i * g.dh) as i64 - g.pt as i64;
                                let ix = (ox * g.sw + j * g.dw) as i64 - g.pl as i64;
                                if iy < 0 || ix < 0 || iy >= g.h as i64 || ix >= g.w as i64 {
                                    continue;
                                }
                                let xv = x[((n * g.c + c) * g.h + iy as usize) * g.w + ix as usize];
                                let wv = w[((m * cpg + cc) * g.kh + i) * g.kw + j];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    if relu {
                        acc = acc.max(0.0);
                    }
                    y[((n * g.m + m) * oh + oy) * ow + ox] = acc as f32;
                }
            }
        }
    }
    y
}

/// NCHW [n, c, h, w] -> NHWC.
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
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
            "{what}: element {i}: got {a}, want {b}"
        );
    }
}

fn geometry_args(g: &G) -> Vec<(&'static str, ArgValue)> {
    vec![
        ("kernel_h", ArgValue::I(g.kh as i64)),
        ("kernel_w", ArgValue::I(g.kw as i64)),
        ("stride_h", ArgValue::I(g.sh as i64)),
        ("stride_w", ArgValue::I(g.sw as i64)),
        ("dilations", ArgValue::Ints(vec![g.dh as i64, g.dw as i64])),
        (
            "pads",
            ArgValue::Ints(vec![g.pt as i64, g.pl as i64, g.pb as i64, g.pr as i64]),
        ),
        ("group", ArgValue::I(g.g as i64)),
    ]
}

fn run(op: &dyn Op, inputs: &[Tensor]) -> Tensor {
    let infos: Vec<TensorInfo> = inputs.iter().map(|t| t.info()).collect();
    let inferred = op.infer(&infos).expect("infer");
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let mut out = op.eval(&refs).expect("eval");
    assert_eq!(out.len(), 1);
    let y = out.remove(0);
    assert_eq!(inferred[0], y.info(), "infer agrees with eval");
    y
}

/// Runs the conv in both layouts (and with/without prepare) and checks against the reference.
fn check_case(g: G, bias: bool, relu: bool, seed: u64) {
    let x = rnd(g.n * g.c * g.h * g.w, seed);
    let w = rnd(g.m * (g.c / g.g) * g.kh * g.kw, seed + 1);
    let b = rnd(g.m, seed + 2);
    let want = reference(&g, &x, &w, bias.then_some(&b[..]), relu);
    let (oh, ow) = (g.oh(), g.ow());
    let name = if relu { "ConvRelu" } else { "Conv" };
    let n_in = if bias { 3 } else { 2 };

    // NCHW.
    let mut args = geometry_args(&g);
    let mut op = build(name, &args, n_in);
    let mut inputs = vec![
        Tensor::from_f32(&[g.n, g.c, g.h, g.w], x.clone()),
        Tensor::from_f32(&[g.m, g.c / g.g, g.kh, g.kw], w.clone()),
    ];
    if bias {
        inputs.push(Tensor::from_f32(&[g.m], b.clone()));
    }
    let y = run(op.as_ref(), &inputs);
    assert_eq!(y.shape(), &[g.n, g.m, oh, ow]);
    close(y.f32_slice().unwrap(), &want, &format!("NCHW {g:?}"));
    let consts: Vec<Option<&Tensor>> = vec![None, Some(&inputs[1]), inputs.get(2)];
    op.prepare(&consts[..n_in]).unwrap();
    let y2 = run(op.as_ref(), &inputs);
    assert_eq!(y, y2, "prepared NCHW");

    // NHWC: X [N,H,W,C], W [M,kH,kW,C/G].
    args.push(("order", ArgValue::S(b"NHWC".to_vec())));
    let mut op = build(name, &args, n_in);
    let mut inputs = vec![
        Tensor::from_f32(&[g.n, g.h, g.w, g.c], to_nhwc(&x, g.n, g.c, g.h, g.w)),
        Tensor::from_f32(
            &[g.m, g.kh, g.kw, g.c / g.g],
            to_nhwc(&w, g.m, g.c / g.g, g.kh, g.kw),
        ),
    ];
    if bias {
        inputs.push(Tensor::from_f32(&[g.m], b.clone()));
    }
    let want_nhwc = to_nhwc(&want, g.n, g.m, oh, ow);
    let y = run(op.as_ref(), &inputs);
    assert_eq!(y.shape(), &[g.n, oh, ow, g.m]);
    close(y.f32_slice().unwrap(), &want_nhwc, &format!("NHWC {g:?}"));
    let consts: Vec<Option<&Tensor>> = vec![None, Some(&inputs[1]), inputs.get(2)];
    op.prepare(&consts[..n_in]).unwrap();
    let y2 = run(op.as_ref(), &inputs);
    close(
        y2.f32_slice().unwrap(),
        &want_nhwc,
        &format!("NHWC prepared {g:?}"),
    );
}

fn base() -> G {
    G {
        n: 1,
        c: 3,
        h: 7,
        w: 6,
        m: 4,
        kh: 3,
        kw: 3,
        sh: 1,
        sw: 1,
        dh: 1,
        dw: 1,
        pt: 1,
        pl: 1,
        pb: 1,
        pr: 1,
        g: 1,
    }
}

#[test]
fn basic_3x3_pad1() {
    check_case(base(), true, false, 10);
}

#[test]
fn strides_asymmetric_pads_rect_kernel() {
    let g = G {
        kh: 3,
        kw: 2,
        sh: 2,
        sw: 3,
        pt: 0,
        pl: 1,
        pb: 2,
        pr: 1,
        h: 9,
        w: 11,
        ..base()
    };
    check_case(g, true, false, 20);
    let g = G {
        kh: 1,
        kw: 4,
        sh: 1,
        sw: 2,
        pt: 2,
        pl: 0,
        pb: 0,
        pr: 3,
        ..base()
    };
    check_case(g, false, false, 21);
}

#[test]
fn dilation() {
    let g = G {
        dh: 2,
        dw: 3,
        h: 10,
        w: 12,
        pt: 2,
        pl: 1,
        pb: 0,
        pr: 2,
        ..base()
    };
    check_case(g, true, false, 30);
    let g = G {
        dh: 2,
        dw: 2,
        sh: 2,
        sw: 2,
        h: 11,
        w: 11,
        ..base()
    };
    check_case(g, true, true, 31);
}

#[test]
fn groups_and_depthwise() {
    // AlexNet-style group 2.
    let g = G {
        c: 6,
        m: 8,
        g: 2,
        h: 8,
        w: 9,
        ..base()
    };
    check_case(g, true, false, 40);
    // Group 3 with stride and pads.
    let g = G {
        c: 6,
        m: 9,
        g: 3,
        sh: 2,
        sw: 2,
        pt: 0,
        pl: 2,
        pb: 1,
        pr: 0,
        ..base()
    };
    check_case(g, false, false, 41);
    // Depthwise, group == C == M, 3x3 stride 1 and stride 2.
    let g = G {
        c: 5,
        m: 5,
        g: 5,
        h: 9,
        w: 8,
        ..base()
    };
    check_case(g, true, false, 42);
    let g = G {
        c: 4,
        m: 4,
        g: 4,
        sh: 2,
        sw: 2,
        pt: 0,
        pl: 1,
        pb: 1,
        pr: 1,
        h: 9,
        w: 10,
        ..base()
    };
    check_case(g, true, true, 43);
    // Depthwise with channel multiplier 2 (M = 2C).
    let g = G {
        c: 3,
        m: 6,
        g: 3,
        ..base()
    };
    check_case(g, true, false, 44);
    // Depthwise with a 5x3 kernel and a batch of 2.
    let g = G {
        n: 2,
        c: 4,
        m: 4,
        g: 4,
        dh: 1,
        dw: 1,
        kh: 5,
        kw: 3,
        pt: 2,
        pb: 2,
        ..base()
    };
    check_case(g, false, true, 45);
}

#[test]
fn pointwise_and_strided_1x1() {
    let g = G {
        kh: 1,
        kw: 1,
        pt: 0,
        pl: 0,
        pb: 0,
        pr: 0,
        c: 8,
        m: 5,
        ..base()
    };
    check_case(g, true, false, 50);
    let g = G {
        kh: 1,
        kw: 1,
        pt: 0,
        pl: 0,
        pb: 0,
        pr: 0,
        c: 8,
        m: 6,
        g: 2,
        n: 2,
        ..base()
    };
    check_case(g, true, true, 51);
    let g = G {
        kh: 1,
        kw: 1,
        sh: 2,
        sw: 2,
        pt: 0,
        pl: 0,
        pb: 0,
        pr: 0,
        c: 8,
        m: 5,
        ..base()
    };
    check_case(g, false, false, 52);
    // 1x1 with padding is not pointwise: borders are bias only.
    let g = G {
        kh: 1,
        kw: 1,
        pt: 1,
        pl: 0,
        pb: 0,
        pr: 1,
        c: 2,
        m: 3,
        ..base()
    };
    check_case(g, true, false, 53);
}

#[test]
fn batch_relu_no_bias() {
    let g = G {
        n: 3,
        c: 4,
        m: 6,
        h: 5,
        w: 5,
        ..base()
    };
    check_case(g, false, false, 60);
    check_case(g, true, true, 61);
    check_case(g, false, true, 62);
}

#[test]
fn large_conv_uses_parallel_gemm() {
    // Big enough for the split-GEMM path, in both layouts, stride 2 and pointwise.
    let g = G {
        c: 32,
        m: 64,
        h: 30,
        w: 30,
        ..base()
    };
    check_case(g, true, true, 70);
    let g = G {
        c: 64,
        m: 96,
        h: 24,
        w: 24,
        kh: 1,
        kw: 1,
        pt: 0,
        pl: 0,
        pb: 0,
        pr: 0,
        ..base()
    };
    check_case(g, true, false, 71);
    // Small output, many filters: the GEMM splits rows and packs B once.
    let g = G {
        c: 32,
        m: 128,
        h: 7,
        w: 7,
        ..base()
    };
    check_case(g, true, false, 72);
    // Small output, many filters: the GEMM splits rows and packs B once.
    let g = G {
        c: 32,
        m: 128,
        h: 7,
        w: 7,
        ..base()
    };
    check_case(g, true, false, 72);
}

fn one_and_two_threads(g: G, nhwc: bool) {
    let mut args = geometry_args(&g);
    let (xs, ws) = if nhwc {
        args.push(("order", ArgValue::S(b"NHWC".to_vec())));
        (vec![g.n, g.h, g.w, g.c], vec![g.m, g.kh, g.kw, g.c / g.g])
    } else {
        (vec![g.n, g.c, g.h, g.w], vec![g.m, g.c / g.g, g.kh, g.kw])
    };
    let op = build("ConvRelu", &args, 3);
    let x = Tensor::from_f32(&xs, rnd(xs.iter().product(), 80));
    let w = Tensor::from_f32(&ws, rnd(ws.iter().product(), 81));
    let b = Tensor::from_f32(&[g.m], rnd(g.m, 82));
    let eval = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| op.eval(&[&x, &w, &b]).unwrap().remove(0))
    };
    let y1 = eval(1);
    let y2 = eval(2);
    let y3 = eval(3);
    assert_eq!(
        y1.f32_slice().unwrap(),
        y2.f32_slice().unwrap(),
        "{g:?} nhwc={nhwc}"
    );
    assert_eq!(
        y1.f32_slice().unwrap(),
        y3.f32_slice().unwrap(),
        "{g:?} nhwc={nhwc}"
    );
}

#[test]
fn thread_count_does_not_change_bits() {
    for nhwc in [false, true] {
        one_and_two_threads(
            G {
                c: 32,
                m: 64,
                h: 34,
                w: 34,
                ..base()
            },
            nhwc,
        );
        one_and_two_threads(
            G {
                c: 256,
                m: 128,
                h: 7,
                w: 7,
                kh: 1,
                kw: 1,
                pt: 0,
                pl: 0,
                pb: 0,
                pr: 0,
                ..base()
            },
            nhwc,
        );
        one_and_two_threads(
            G {
                n: 4,
                c: 8,
                m: 8,
                g: 2,
                h: 9,
                w: 9,
                ..base()
            },
            nhwc,
        );
        one_and_two_threads(
            G {
                n: 2,
                c: 16,
                m: 16,
                g: 16,
                h: 20,
                w: 20,
                ..base()
            },
            nhwc,
        );
        // Small output, many filters: rows are split and B is packed once.
        one_and_two_threads(
            G {
                c: 32,
                m: 128,
                h: 7,
                w: 7,
                ..base()
            },
            nhwc,
        );
    }
}

#[test]
fn hand_worked_dilated() {
    // k2 pad1 dilations [2,2], W = ones(1,1,2,2), b = 2, X = 0..8 (1x1x3x3).
    let op = build(
        "Conv",
        &[
            ("kernel", ArgValue::I(2)),
            ("pad", ArgValue::I(1)),
            ("dilations", ArgValue::Ints(vec![2, 2])),
        ],
        3,
    );
    let x = Tensor::from_f32(&[1, 1, 3, 3], (0..9).map(|v| v as f32).collect());
    let w = Tensor::from_f32(&[1, 1, 2, 2], vec![1.0; 4]);
    let b = Tensor::from_f32(&[1], vec![2.0]);
    let y = run(op.as_ref(), &[x, w, b]);
    assert_eq!(y.shape(), &[1, 1, 3, 3]);
    assert_eq!(
        y.f32_slice().unwrap(),
        &[6.0, 10.0, 6.0, 10.0, 18.0, 10.0, 6.0, 10.0, 6.0]
    );
}

#[test]
fn hand_worked_conv_relu() {
    // ConvRelu k2 pad1 stride1, W = ones(1,1,2,2), b = 2, X = 0..8 -> 4x4.
    let op = build(
        "ConvRelu",
        &[
            ("kernel", ArgValue::I(2)),
            ("pad", ArgValue::I(1)),
            ("stride", ArgValue::I(1)),
        ],
        3,
    );
    let x = Tensor::from_f32(&[1, 1, 3, 3], (0..9).map(|v| v as f32).collect());
    let w = Tensor::from_f32(&[1, 1, 2, 2], vec![1.0; 4]);
    let b = Tensor::from_f32(&[1], vec![2.0]);
    let y = run(op.as_ref(), &[x.clone(), w.clone(), b]);
    assert_eq!(y.shape(), &[1, 1, 4, 4]);
    let want = [
        2., 3., 5., 4., 5., 10., 14., 9., 11., 22., 26., 15., 8., 15., 17., 10.,
    ];
    assert_eq!(y.f32_slice().unwrap(), &want);
    // A negative bias is clipped by the ReLU: corners 0+(-3) -> 0, centre 24-3 = 21.
    let b = Tensor::from_f32(&[1], vec![-3.0]);
    let y = run(op.as_ref(), &[x, w, b]);
    let want = [
        0., 0., 0., 0., 0., 5., 9., 4., 6., 17., 21., 10., 3., 10., 12., 5.,
    ];
    assert_eq!(y.f32_slice().unwrap(), &want);
}

#[test]
fn legacy_valid_and_same() {
    let x = rnd(2 * 7 * 8, 90);
    let w = rnd(3 * 2 * 9, 91);
    let b = rnd(3, 92);
    // VALID k3 s2 on 7x8: (7-3)/2+1 = 3, (8-3)/2+1 = 3; pads 0.
    let op = build(
        "Conv",
        &[
            ("kernel", ArgValue::I(3)),
            ("stride", ArgValue::I(2)),
            ("legacy_pad", ArgValue::I(1)),
        ],
        3,
    );
    let inputs = [
        Tensor::from_f32(&[1, 2, 7, 8], x.clone()),
        Tensor::from_f32(&[3, 2, 3, 3], w.clone()),
        Tensor::from_f32(&[3], b.clone()),
    ];
    let y = run(op.as_ref(), &inputs);
    assert_eq!(y.shape(), &[1, 3, 3, 3]);
    let g = G {
        c: 2,
        m: 3,
        h: 7,
        w: 8,
        sh: 2,
        sw: 2,
        pt: 0,
        pl: 0,
        pb: 0,
        pr: 0,
        ..base()
    };
    close(
        y.f32_slice().unwrap(),
        &reference(&g, &x, &w, Some(&b), false),
        "VALID",
    );
    // SAME k3 s2: 7 -> 4 (needed 2: t1 b1), 8 -> 4 (needed 1: l0 r1).
    let op = build(
        "Conv",
        &[
            ("kernel", ArgValue::I(3)),
            ("stride", ArgValue::I(2)),
            ("legacy_pad", ArgValue::I(2)),
        ],
        3,
    );
    let y = run(op.as_ref(), &inputs);
    assert_eq!(y.shape(), &[1, 3, 4, 4]);
    let g = G {
        pt: 1,
        pb: 1,
        pl: 0,
        pr: 1,
        ..g
    };
    close(
        y.f32_slice().unwrap(),
        &reference(&g, &x, &w, Some(&b), false),
        "SAME",
    );
}

#[test]
fn one_dimensional() {
    // X [1, 2, 9], W [3, 2, 3], stride 2, pads [1, 0] -> (9+1-3)/2+1 = 4.
    let x = rnd(18, 100);
    let w = rnd(18, 101);
    let op = build(
        "Conv",
        &[
            ("kernels", ArgValue::Ints(vec![3])),
            ("strides", ArgValue::Ints(vec![2])),
            ("pads", ArgValue::Ints(vec![1, 0])),
        ],
        2,
    );
    let y = run(
        op.as_ref(),
        &[
            Tensor::from_f32(&[1, 2, 9], x.clone()),
            Tensor::from_f32(&[3, 2, 3], w.clone()),
        ],
    );
    assert_eq!(y.shape(), &[1, 3, 4]);
    let g = G {
        c: 2,
        m: 3,
        h: 1,
        w: 9,
        kh: 1,
        kw: 3,
        sw: 2,
        pt: 0,
        pb: 0,
        pl: 1,
        pr: 0,
        ..base()
    };
    close(
        y.f32_slice().unwrap(),
        &reference(&g, &x, &w, None, false),
        "1-D",
    );
}

fn infer_err(op: &dyn Op, shapes: &[&[usize]]) -> OpError {
    let infos: Vec<TensorInfo> = shapes.iter().map(|s| TensorInfo::f32(s.to_vec())).collect();
    op.infer(&infos).expect_err("should fail")
}

#[test]
fn bad_shapes_are_errors() {
    let op = build(
        "Conv",
        &[("kernel", ArgValue::I(3)), ("group", ArgValue::I(2))],
        3,
    );
    let msg = |e: OpError| {
        assert!(matches!(e, OpError::Shape(_)), "{e:?}");
        e.to_string()
    };
    // Channels: X has 6, W says 2 per group x 2 groups = 4.
    let m = msg(infer_err(
        op.as_ref(),
        &[&[1, 6, 8, 8], &[4, 2, 3, 3], &[4]],
    ));
    assert!(
        m.contains("[1, 6, 8, 8]") && m.contains("[4, 2, 3, 3]"),
        "{m}"
    );
    // C not divisible by group.
    msg(infer_err(
        op.as_ref(),
        &[&[1, 5, 8, 8], &[4, 2, 3, 3], &[4]],
    ));
    // M not divisible by group.
    let m = msg(infer_err(
        op.as_ref(),
        &[&[1, 4, 8, 8], &[3, 2, 3, 3], &[3]],
    ));
    assert!(m.contains("group 2"), "{m}");
    // Kernel vs W spatial dims.
    let m = msg(infer_err(
        op.as_ref(),
        &[&[1, 4, 8, 8], &[4, 2, 5, 5], &[4]],
    ));
    assert!(m.contains("[5, 5]") && m.contains("[3, 3]"), "{m}");
    // Bias length.
    let m = msg(infer_err(
        op.as_ref(),
        &[&[1, 4, 8, 8], &[4, 2, 3, 3], &[5]],
    ));
    assert!(m.contains("[5]"), "{m}");
    // Output size < 1.
    let m = msg(infer_err(
        op.as_ref(),
        &[&[1, 4, 2, 8], &[4, 2, 3, 3], &[4]],
    ));
    assert!(m.contains("[1, 4, 2, 8]"), "{m}");
    // Wrong rank.
    msg(infer_err(op.as_ref(), &[&[4, 8, 8], &[4, 2, 3, 3], &[4]]));
    msg(infer_err(op.as_ref(), &[&[1, 4, 8, 8], &[4, 2, 3], &[4]]));
    // eval reports the same error.
    let x = Tensor::zeros_f32(&[1, 5, 8, 8]);
    let w = Tensor::zeros_f32(&[4, 2, 3, 3]);
    let b = Tensor::zeros_f32(&[4]);
    assert!(matches!(op.eval(&[&x, &w, &b]), Err(OpError::Shape(_))));
    // Wrong dtype.
    let xi = Tensor::I32(ndarray::ArrayD::zeros(ndarray::IxDyn(&[1, 4, 8, 8])));
    let w = Tensor::zeros_f32(&[4, 2, 3, 3]);
    assert!(matches!(op.eval(&[&xi, &w, &b]), Err(OpError::DType(_))));
    // Arity.
    assert!(matches!(op.eval(&[&x]), Err(OpError::Arity(_))));
}

#[test]
fn bad_args_are_errors() {
    let bad =
        |args: &[(&str, ArgValue)], n_in: usize| build_op(&spec("Conv", args, n_in)).unwrap_err();
    assert!(matches!(bad(&[], 3), OpError::BadArg { .. }));
    assert!(matches!(
        bad(&[("kernel", ArgValue::I(3)), ("stride", ArgValue::I(0))], 3),
        OpError::BadArg { .. }
    ));
    assert!(matches!(
        bad(
            &[
                ("kernel", ArgValue::I(3)),
                ("order", ArgValue::S(b"NCWH".to_vec()))
            ],
            3
        ),
        OpError::BadArg { .. }
    ));
    assert!(matches!(
        bad(&[("kernel", ArgValue::I(3))], 4),
        OpError::Arity(_)
    ));
    assert!(matches!(
        bad(&[("kernels", ArgValue::Ints(vec![3, 3, 3]))], 3),
        OpError::Unsupported(_)
    ));
}
