//! Int8 operators (DNNLOWP arithmetic) against hand-worked values and independent references:
//! naive integer loops written here (exact equality), and a float simulation in f64
//! (dequantize, run the float formula, quantize; within one code).

use ndarray::{ArrayD, IxDyn};
use ops::{build_op, ArgValue, DType, NodeSpec, Op, OpError, QParams, Tensor, TensorInfo};
use ops_util::{build_int8, codes, f, i, ints, qi32, qp, qu8, s, spec, try_build_int8};

use crate::ops_util;
use ops_util::TestRng as Rng;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A spec with an explicit engine.
fn spec_e(
    op: &str,
    engine: &str,
    args: &[(&str, ArgValue)],
    n_in: usize,
    n_out: usize,
) -> NodeSpec {
    let mut sp = spec(op, args, n_in, n_out);
    sp.engine = engine.to_string();
    sp
}

/// A DNNLOWP op with one output (fast kernels).
fn try_build(op: &str, args: &[(&str, ArgValue)], n_in: usize) -> Result<Box<dyn Op>, OpError> {
    try_build_int8(op, args, n_in, 1, false)
}

fn build(op: &str, args: &[(&str, ArgValue)], n_in: usize) -> Box<dyn Op> {
    build_int8(op, args, n_in, 1, false)
}

/// Runs `eval` and checks that `infer` predicted the outputs exactly (types, params, shapes).
fn run(op: &dyn Op, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
    let infos: Vec<TensorInfo> = inputs.iter().map(|t| t.info()).collect();
    let inferred = op.infer(&infos);
    let out = op.eval(inputs);
    match (&inferred, &out) {
        (Ok(inf), Ok(out)) => {
            let got: Vec<TensorInfo> = out.iter().map(|t| t.info()).collect();
            assert_eq!(inf, &got, "infer disagrees with eval for {}", op.op_type());
        }
        (Err(e), Ok(_)) => panic!("infer failed ({e}) but eval succeeded"),
        (Ok(_), Err(e)) => panic!("eval failed ({e}) but infer succeeded"),
        (Err(_), Err(_)) => {}
    }
    out
}

fn run1(op: &dyn Op, inputs: &[&Tensor]) -> Tensor {
    run(op, inputs)
        .unwrap_or_else(|e| panic!("{}: {e}", op.op_type()))
        .remove(0)
}

/// The DNNLOWP output formula written independently of the crate:
/// clamp(round_half_even(raw · M) + z, lo, 255) with M = s_x·s_w/s_y in f32.
fn ref_requant(raw: i64, sx: f32, sw: f32, y: QParams, lo: i32) -> u8 {
    let m = sx * sw / y.scale;
    let v = ((raw as f32) * m).round_ties_even() as i64 + y.zero_point as i64;
    v.clamp(lo as i64, 255) as u8
}

/// f64 "ideal" quantization of a real value.
fn ideal_q(real: f64, y: QParams, lo: i32) -> i64 {
    ((real / y.scale as f64).round_ties_even() as i64 + y.zero_point as i64).clamp(lo as i64, 255)
}

fn assert_within_one(got: &[u8], want: &[i64], max_diffs: usize, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let mut diffs = 0;
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g as i64 - w).abs();
        assert!(d <= 1, "{what}: element {k}: got {g}, float simulation {w}");
        diffs += d as usize;
    }
    assert!(
        diffs <= max_diffs,
        "{what}: {diffs} elements differ by one (allowed {max_diffs})"
    );
}

// ---------------------------------------------------------------------------------------
// Int8Conv
// ---------------------------------------------------------------------------------------

/// The hand-worked 3×3 example. X (NHWC 1×3×3×1), s_x = 0.5, z_x = 3:
///     3 5 7        x − z =  0  2  4
///     1 4 6                −2  1  3
///     2 8 3                −1  5  0
/// W [1, 2, 2, 1], s_w = 0.25, z_w = 128: codes 130 126 / 129 128, i.e. w − z = 2 −2 / 1 0.
fn hand_x() -> Tensor {
    qu8(&[1, 3, 3, 1], vec![3, 5, 7, 1, 4, 6, 2, 8, 3], qp(0.5, 3))
}
fn hand_w() -> Tensor {
    qu8(&[1, 2, 2, 1], vec![130, 126, 129, 128], qp(0.25, 128))
}

#[test]
fn conv_hand_worked_no_pad() {
    // Bias 8 with scale s_x·s_w = 0.125; output s_y = 0.25, z_y = 10, so M = 0.125/0.25 = 0.5.
    // Raw sums (window · [2 −2; 1 0]) + 8:
    //   (0,0): 0·2 + 2·(−2) + (−2)·1 + 1·0 = −6  → 2  → 2·0.5 = 1   → 11
    //   (0,1): 2·2 + 4·(−2) + 1·1 + 3·0   = −3  → 5  → 2.5 → 2 (even) → 12
    //   (1,0): −2·2 + 1·(−2) + (−1)·1 + 0 = −7  → 1  → 0.5 → 0 (even) → 10
    //   (1,1): 1·2 + 3·(−2) + 5·1 + 0     =  1  → 9  → 4.5 → 4 (even) → 14
    let b = qi32(&[1], vec![8], qp(0.125, 0));
    let op = build(
        "Int8Conv",
        &[
            ("kernel", i(2)),
            ("order", s("NHWC")),
            ("Y_scale", f(0.25)),
            ("Y_zero_point", i(10)),
        ],
        3,
    );
    let y = run1(op.as_ref(), &[&hand_x(), &hand_w(), &b]);
    assert_eq!(y.shape(), &[1, 2, 2, 1]);
    assert_eq!(codes(&y), (vec![11, 12, 10, 14], qp(0.25, 10)));

    // Bias 2, z_y = 3: raw −4, −1, −5, 3 → −2, −0.5 → 0, −2.5 → −2, 1.5 → 2 → 1, 3, 1, 5.
    let b = qi32(&[1], vec![2], qp(0.125, 0));
    let op = build(
        "Int8Conv",
        &[
            ("kernel", i(2)),
            ("Y_scale", f(0.25)),
            ("Y_zero_point", i(3)),
        ],
        3,
    );
    assert_eq!(
        codes(&run1(op.as_ref(), &[&hand_x(), &hand_w(), &b])).0,
        vec![1, 3, 1, 5]
    );
    // Int8ConvRelu with z_y = 0: −2, 0, −2, 2 → clamp at 0 → 0, 0, 0, 2. (0.25·255 = 63.75
    // and 63.75/255 = 0.25 exactly, so the ReLU re-derivation keeps the scale.)
    let op = build(
        "Int8ConvRelu",
        &[
            ("kernel", i(2)),
            ("Y_scale", f(0.25)),
            ("Y_zero_point", i(0)),
        ],
        3,
    );
    assert_eq!(
        codes(&run1(op.as_ref(), &[&hand_x(), &hand_w(), &b])),
        (vec![0, 0, 0, 2], qp(0.25, 0))
    );
    // Float bias 0.25 = 2 · 0.125 gives the same as the int bias 2 (z_y = 3).
    let bf = Tensor::from_f32(&[1], vec![0.25]);
    let op = build(
        "Int8Conv",
        &[
            ("kernel", i(2)),
            ("Y_scale", f(0.25)),
            ("Y_zero_point", i(3)),
        ],
        3,
    );
    assert_eq!(
        codes(&run1(op.as_ref(), &[&hand_x(), &hand_w(), &bf])).0,
        vec![1, 3, 1, 5]
    );
    // No bias: raw −6, −3, −7, 1 → −3, −1.5 → −2, −3.5 → −4, 0.5 → 0 → +10: 7, 8, 6, 10.
    let op = build(
        "Int8Conv",
        &[
            ("kernel", i(2)),
            ("Y_scale", f(0.25)),
            ("Y_zero_point", i(10)),
        ],
        2,
    );
    assert_eq!(
        codes(&run1(op.as_ref(), &[&hand_x(), &hand_w()])).0,
        vec![7, 8, 6, 10]
    );
}

#[test]
fn conv_hand_worked_pad_one() {
    // pad 1 → 4×4 output; padded cells are z_x, i.e. contribute 0. With a = x − z_x
    // (0 outside) raw(oy, ox) = 2a(oy−1, ox−1) − 2a(oy−1, ox) + a(oy, ox−1), plus bias 8:
    //   row 0:  0  0  2  4   → 8  8 10 12 → ·0.5: 4 4 5 6
    //   row 1:  0 −6 −3 11   → 8  2  5 19 →       4 1 2.5→2 9.5→10
    //   row 2:  4 −7  1  6   → 12 1  9 14 →       6 0.5→0 4.5→4 7
    //   row 3:  2 −12 10 0   → 10 −4 18 8 →       5 −2 9 4
    // + z_y 10.
    let b = qi32(&[1], vec![8], qp(0.125, 0));
    let op = build(
        "Int8Conv",
        &[
            ("kernel", i(2)),
            ("pad", i(1)),
            ("Y_scale", f(0.25)),
            ("Y_zero_point", i(10)),
        ],
        3,
    );
    let y = run1(op.as_ref(), &[&hand_x(), &hand_w(), &b]);
    assert_eq!(y.shape(), &[1, 4, 4, 1]);
    assert_eq!(
        codes(&y).0,
        vec![14, 14, 15, 16, 14, 11, 12, 20, 16, 10, 14, 17, 15, 8, 19, 14]
    );
}

/// One convolution configuration for the randomized tests.
#[derive(Debug, Clone)]
struct ConvCase {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    m: usize,
    g: usize,
    k: (usize, usize),
    stride: (usize, usize),
    dil: (usize, usize),
    pads: [usize; 4],
    nchw: bool,
    bias: u8, // 0 none, 1 qi32, 2 f32
    relu: bool,
}

struct ConvData {
    x: Tensor,
    w: Tensor,
    b: Option<Tensor>,
    xq: QParams,
    wq: QParams,
    /// `Y_scale` / `Y_zero_point` as given in the arguments.
    yq_arg: QParams,
    /// The parameters the op computes with (ReLU re-derivation applied).
    yq: QParams,
    bias_q: Vec<i64>,
}

/// DNNLOWP's ReLU re-derivation for zero point 0, written out: f32(f64(f32(s · 255)) / 255).
fn relu_scale(s: f32) -> f32 {
    ((s * 255.0) as f64 / 255.0) as f32
}

fn conv_args(cs: &ConvCase, yq: QParams) -> Vec<(&'static str, ArgValue)> {
    vec![
        ("kernel_h", i(cs.k.0 as i64)),
        ("kernel_w", i(cs.k.1 as i64)),
        ("strides", ints(&[cs.stride.0 as i64, cs.stride.1 as i64])),
        ("dilations", ints(&[cs.dil.0 as i64, cs.dil.1 as i64])),
        ("pads", ints(&cs.pads.map(|p| p as i64))),
        ("group", i(cs.g as i64)),
        ("order", s(if cs.nchw { "NCHW" } else { "NHWC" })),
        ("Y_scale", f(yq.scale)),
        ("Y_zero_point", i(yq.zero_point as i64)),
    ]
}

fn make_conv_data(cs: &ConvCase, rng: &mut Rng) -> ConvData {
    let cg = cs.c / cs.g;
    let xq = qp(0.01 + rng.unit() as f32 * 0.05, rng.range(0, 255) as i32);
    let wq = qp(0.002 + rng.unit() as f32 * 0.02, rng.range(100, 156) as i32);
    let yq = qp(
        0.05 + rng.unit() as f32 * 0.3,
        if cs.relu { 0 } else { rng.range(0, 255) as i32 },
    );
    let xs = if cs.nchw {
        [cs.n, cs.c, cs.h, cs.w]
    } else {
        [cs.n, cs.h, cs.w, cs.c]
    };
    let ws = if cs.nchw {
        [cs.m, cg, cs.k.0, cs.k.1]
    } else {
        [cs.m, cs.k.0, cs.k.1, cg]
    };
    let x = qu8(&xs, rng.u8s(xs.iter().product()), xq);
    let w = qu8(&ws, rng.u8s(ws.iter().product()), wq);
    let bscale = xq.scale * wq.scale;
    let (b, bias_q) = match cs.bias {
        1 => {
            let v: Vec<i32> = (0..cs.m).map(|_| rng.range(-3000, 3000) as i32).collect();
            let bq = v.iter().map(|&b| b as i64).collect();
            (Some(qi32(&[cs.m], v, qp(bscale, 0))), bq)
        }
        2 => {
            let v: Vec<f32> = (0..cs.m)
                .map(|_| (rng.unit() as f32 - 0.5) * 20.0 * bscale * 100.0)
                .collect();
            // Reference quantization of a float bias: round_half_even(b / (s_x·s_w)) in f32.
            let bq = v
                .iter()
                .map(|&b| (b / bscale).round_ties_even() as i64)
                .collect();
            (Some(Tensor::from_f32(&[cs.m], v)), bq)
        }
        _ => (None, vec![0; cs.m]),
    };
    let yq_arg = yq;
    let yq = if cs.relu {
        qp(relu_scale(yq.scale), 0)
    } else {
        yq
    };
    ConvData {
        x,
        w,
        b,
        xq,
        wq,
        yq_arg,
        yq,
        bias_q,
    }
}

/// Output spatial size (no legacy padding).
fn out_size(inp: usize, k: usize, s: usize, d: usize, ph: usize, pt: usize) -> usize {
    (inp + ph + pt - (d * (k - 1) + 1)) / s + 1
}

/// Naive convolution on logical indices, i64 sums: returns raw[n][m][oy][ox] (flat, NCHW
/// order) without bias. Padded cells are skipped (they hold z_x, i.e. x − z_x = 0).
fn ref_conv_raw(cs: &ConvCase, d: &ConvData) -> (Vec<i64>, usize, usize) {
    let (xa, _) = codes(&d.x);
    let (wa, _) = codes(&d.w);
    let cg = cs.c / cs.g;
    let mg = cs.m / cs.g;
    let oh = out_size(cs.h, cs.k.0, cs.stride.0, cs.dil.0, cs.pads[0], cs.pads[2]);
    let ow = out_size(cs.w, cs.k.1, cs.stride.1, cs.dil.1, cs.pads[1], cs.pads[3]);
    let xat = |n: usize, c: usize, y: usize, x: usize| -> i64 {
        let idx = if cs.nchw {
            ((n * cs.c + c) * cs.h + y) * cs.w + x
        } else {
            ((n * cs.h + y) * cs.w + x) * cs.c + c
        };
        xa[idx] as i64
    };
    let wat = |m: usize, c: usize, ky: usize, kx: usize| -> i64 {
        let idx = if cs.nchw {
            ((m * cg + c) * cs.k.0 + ky) * cs.k.1 + kx
        } else {
            ((m * cs.k.0 + ky) * cs.k.1 + kx) * cg + c
        };
        wa[idx] as i64
    };
    let (zx, zw) = (d.xq.zero_point as i64, d.wq.zero_point as i64);
    let mut raw = vec![0i64; cs.n * cs.m * oh * ow];
    for n in 0..cs.n {
        for m in 0..cs.m {
            let g = m / mg;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0i64;
                    for ci in 0..cg {
                        for ky in 0..cs.k.0 {
                            for kx in 0..cs.k.1 {
                                let iy =
                                    (oy * cs.stride.0 + ky * cs.dil.0) as i64 - cs.pads[0] as i64;
                                let ix =
                                    (ox * cs.stride.1 + kx * cs.dil.1) as i64 - cs.pads[1] as i64;
                                if iy < 0 || ix < 0 || iy >= cs.h as i64 || ix >= cs.w as i64 {
                                    continue;
                                }
                                let xv = xat(n, g * cg + ci, iy as usize, ix as usize) - zx;
                                acc += xv * (wat(m, ci, ky, kx) - zw);
                            }
                        }
                    }
                    raw[((n * cs.m + m) * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
    (raw, oh, ow)
}

/// Index of NCHW-ordered element in the op's output layout.
fn out_index(
    cs: &ConvCase,
    oh: usize,
    ow: usize,
    n: usize,
    m: usize,
    oy: usize,
    ox: usize,
) -> usize {
    if cs.nchw {
        ((n * cs.m + m) * oh + oy) * ow + ox
    } else {
        ((n * oh + oy) * ow + ox) * cs.m + m
    }
}

fn conv_cases() -> Vec<ConvCase> {
    let base = ConvCase {
        n: 2,
        c: 6,
        h: 7,
        w: 6,
        m: 4,
        g: 1,
        k: (3, 3),
        stride: (1, 1),
        dil: (1, 1),
        pads: [1, 1, 1, 1],
        nchw: false,
        bias: 1,
        relu: false,
    };
    vec![
        base.clone(),
        ConvCase {
            nchw: true,
            bias: 2,
            ..base.clone()
        },
        ConvCase {
            relu: true,
            bias: 0,
            ..base.clone()
        },
        ConvCase {
            k: (1, 1),
            pads: [0; 4],
            c: 32,
            m: 16,
            ..base.clone()
        },
        ConvCase {
            stride: (2, 1),
            pads: [0, 1, 2, 0],
            k: (3, 2),
            ..base.clone()
        },
        ConvCase {
            dil: (2, 2),
            pads: [2, 2, 2, 2],
            nchw: true,
            ..base.clone()
        },
        ConvCase {
            g: 2,
            m: 6,
            ..base.clone()
        },
        ConvCase {
            g: 2,
            m: 6,
            nchw: true,
            relu: true,
            ..base.clone()
        },
        // Depthwise (group = C = M), as in MobileNet.
        ConvCase {
            g: 6,
            m: 6,
            stride: (2, 2),
            ..base.clone()
        },
        ConvCase {
            g: 6,
            m: 12,
            nchw: true,
            ..base.clone()
        },
        // Large reduction (K = 3·3·64 = 576).
        ConvCase {
            n: 1,
            c: 64,
            m: 8,
            h: 5,
            w: 5,
            ..base.clone()
        },
    ]
}

#[test]
fn conv_random_exact_against_integer_reference() {
    let mut rng = Rng::new(7);
    for cs in conv_cases() {
        let d = make_conv_data(&cs, &mut rng);
        let op_type = if cs.relu { "Int8ConvRelu" } else { "Int8Conv" };
        let op = build(
            op_type,
            &conv_args(&cs, d.yq_arg),
            if cs.bias == 0 { 2 } else { 3 },
        );
        let mut inputs = vec![&d.x, &d.w];
        if let Some(b) = &d.b {
            inputs.push(b);
        }
        let y = run1(op.as_ref(), &inputs);
        let (got, q) = codes(&y);
        assert_eq!(q, d.yq, "{cs:?}");
        let (raw, oh, ow) = ref_conv_raw(&cs, &d);
        let lo = if cs.relu { d.yq.zero_point } else { 0 };
        for n in 0..cs.n {
            for m in 0..cs.m {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let r = raw[((n * cs.m + m) * oh + oy) * ow + ox] + d.bias_q[m];
                        let want = ref_requant(r, d.xq.scale, d.wq.scale, d.yq, lo);
                        let at = out_index(&cs, oh, ow, n, m, oy, ox);
                        assert_eq!(got[at], want, "{cs:?} at n{n} m{m} y{oy} x{ox} (raw {r})");
                    }
                }
            }
        }
    }
}

#[test]
fn conv_random_against_float_simulation() {
    let mut rng = Rng::new(99);
    for cs in conv_cases() {
        let d = make_conv_data(&cs, &mut rng);
        let op_type = if cs.relu { "Int8ConvRelu" } else { "Int8Conv" };
        let op = build(
            op_type,
            &conv_args(&cs, d.yq_arg),
            if cs.bias == 0 { 2 } else { 3 },
        );
        let mut inputs = vec![&d.x, &d.w];
        if let Some(b) = &d.b {
            inputs.push(b);
        }
        let (got, _) = codes(&run1(op.as_ref(), &inputs));
        // Float simulation: real conv of the dequantized tensors plus the real bias
        // b_q · s_x · s_w, then quantized ideally in f64.
        let (raw, oh, ow) = ref_conv_raw(&cs, &d);
        let sxw = d.xq.scale as f64 * d.wq.scale as f64;
        let lo = if cs.relu { d.yq.zero_point } else { 0 };
        let mut want = vec![0i64; got.len()];
        for n in 0..cs.n {
            for m in 0..cs.m {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let real =
                            (raw[((n * cs.m + m) * oh + oy) * ow + ox] + d.bias_q[m]) as f64 * sxw;
                        want[out_index(&cs, oh, ow, n, m, oy, ox)] = ideal_q(real, d.yq, lo);
                    }
                }
            }
        }
        assert_within_one(&got, &want, got.len() / 100 + 1, &format!("{cs:?}"));
    }
}

#[test]
fn conv_nchw_equals_nhwc() {
    let mut rng = Rng::new(5);
    let cs = ConvCase {
        n: 2,
        c: 4,
        h: 6,
        w: 5,
        m: 6,
        g: 2,
        k: (3, 2),
        stride: (2, 1),
        dil: (1, 1),
        pads: [1, 0, 1, 1],
        nchw: false,
        bias: 1,
        relu: false,
    };
    let d = make_conv_data(&cs, &mut rng);
    let op = build("Int8Conv", &conv_args(&cs, d.yq_arg), 3);
    let b = d.b.as_ref().unwrap();
    let y_nhwc = run1(op.as_ref(), &[&d.x, &d.w, b]);
    let x_nchw = d.x.permuted(&[0, 3, 1, 2]).unwrap();
    let w_nchw = d.w.permuted(&[0, 3, 1, 2]).unwrap();
    let cs2 = ConvCase { nchw: true, ..cs };
    let op = build("Int8Conv", &conv_args(&cs2, d.yq_arg), 3);
    let y_nchw = run1(op.as_ref(), &[&x_nchw, &w_nchw, b]);
    assert_eq!(y_nchw, y_nhwc.permuted(&[0, 3, 1, 2]).unwrap());
}

#[test]
fn conv_relu_with_nonzero_zero_point_rederives_params() {
    // Y_scale 0.5, Y_zero_point 128 on Int8ConvRelu: DNNLOWP replaces them with
    // ChooseQuantizationParams(0, 0.5·(255 − 128) = 63.5) = (63.5/255, 0).
    let op = build(
        "Int8ConvRelu",
        &[
            ("kernel", i(2)),
            ("Y_scale", f(0.5)),
            ("Y_zero_point", i(128)),
        ],
        2,
    );
    let y = run1(op.as_ref(), &[&hand_x(), &hand_w()]);
    let s2 = (63.5f64 / 255.0) as f32;
    let (v, q) = codes(&y);
    assert_eq!(q, qp(s2, 0));
    // raw −6, −3, −7, 1 with M = 0.125 / s2 (f32): only the last is positive.
    let m = 0.5f32 * 0.25 / s2;
    let want: Vec<u8> = [-6i32, -3, -7, 1]
        .iter()
        .map(|&r| ((r as f32 * m).round_ties_even() as i64).clamp(0, 255) as u8)
        .collect();
    assert_eq!(v, want);
    // 1 · 0.502 = 0.502 rounds to 1.
    assert_eq!(want, vec![0, 0, 0, 1]);
    // followed_by = "Relu" on a plain Int8Conv re-derives the params but does not clamp.
    let op = build(
        "Int8Conv",
        &[
            ("kernel", i(2)),
            ("Y_scale", f(0.5)),
            ("Y_zero_point", i(128)),
            ("followed_by", s("Relu")),
        ],
        2,
    );
    let infos = [hand_x().info(), hand_w().info()];
    assert_eq!(op.infer(&infos).unwrap()[0].dtype, DType::QU8(qp(s2, 0)));
}

#[test]
fn conv_errors() {
    let args = [
        ("kernel", i(2)),
        ("Y_scale", f(0.25)),
        ("Y_zero_point", i(10)),
    ];
    let op = build("Int8Conv", &args, 3);
    let b = qi32(&[1], vec![8], qp(0.125, 0));
    // f32 X.
    let xf = Tensor::from_f32(&[1, 3, 3, 1], vec![0.0; 9]);
    assert!(
        matches!(op.eval(&[&xf, &hand_w(), &b]), Err(OpError::DType(m)) if m.contains("X must be an Int8"))
    );
    assert!(matches!(
        op.infer(&[xf.info(), hand_w().info(), b.info()]),
        Err(OpError::DType(_))
    ));
    // f32 weights.
    let wf = Tensor::from_f32(&[1, 2, 2, 1], vec![0.0; 4]);
    assert!(
        matches!(op.eval(&[&hand_x(), &wf, &b]), Err(OpError::DType(m)) if m.contains("filter W"))
    );
    // Bias scale mismatch (0.13 vs 0.125) and non-zero bias zero point.
    let bad = qi32(&[1], vec![8], qp(0.13, 0));
    assert!(
        matches!(run(op.as_ref(), &[&hand_x(), &hand_w(), &bad]), Err(OpError::DType(m)) if m.contains("bias scale"))
    );
    let bad = qi32(&[1], vec![8], qp(0.125, 1));
    assert!(
        matches!(run(op.as_ref(), &[&hand_x(), &hand_w(), &bad]), Err(OpError::DType(m)) if m.contains("zero point"))
    );
    // A bias scale within 1e-4 relative is accepted.
    let ok = qi32(&[1], vec![8], qp(0.125 * (1.0 + 5e-5), 0));
    assert!(run(op.as_ref(), &[&hand_x(), &hand_w(), &ok]).is_ok());
    // Bias length and type.
    let bad = qi32(&[2], vec![8, 8], qp(0.125, 0));
    assert!(matches!(
        run(op.as_ref(), &[&hand_x(), &hand_w(), &bad]),
        Err(OpError::Shape(_))
    ));
    let bad = Tensor::I32(ArrayD::from_shape_vec(IxDyn(&[1]), vec![8]).unwrap());
    assert!(matches!(
        run(op.as_ref(), &[&hand_x(), &hand_w(), &bad]),
        Err(OpError::DType(_))
    ));
    // Non-finite float bias.
    let bad = Tensor::from_f32(&[1], vec![f32::NAN]);
    assert!(matches!(
        op.eval(&[&hand_x(), &hand_w(), &bad]),
        Err(OpError::DType(_))
    ));
    // Kernel/weight mismatch and channel mismatch.
    let w3 = qu8(&[1, 3, 3, 1], vec![128; 9], qp(0.25, 128));
    assert!(matches!(
        run(op.as_ref(), &[&hand_x(), &w3, &b]),
        Err(OpError::Shape(_))
    ));
    let w2c = qu8(&[1, 2, 2, 2], vec![128; 8], qp(0.25, 128));
    assert!(matches!(
        run(op.as_ref(), &[&hand_x(), &w2c, &b]),
        Err(OpError::Shape(_))
    ));
    // Invalid input parameters.
    let xbad = qu8(&[1, 3, 3, 1], vec![0; 9], qp(0.0, 3));
    assert!(matches!(
        run(op.as_ref(), &[&xbad, &hand_w(), &b]),
        Err(OpError::DType(_))
    ));
    // Missing Y_scale, Y_scale not a float, bad Y_zero_point.
    let e = try_build("Int8Conv", &[("kernel", i(2))], 3).unwrap_err();
    assert!(
        matches!(&e, OpError::BadArg { name, msg } if name == "Y_scale" && msg.contains("missing")),
        "{e}"
    );
    let e = try_build("Int8Conv", &[("kernel", i(2)), ("Y_scale", i(1))], 3).unwrap_err();
    assert!(
        matches!(&e, OpError::BadArg { name, .. } if name == "Y_scale"),
        "{e}"
    );
    let e = try_build(
        "Int8Conv",
        &[
            ("kernel", i(2)),
            ("Y_scale", f(0.1)),
            ("Y_zero_point", i(256)),
        ],
        3,
    )
    .unwrap_err();
    assert!(
        matches!(&e, OpError::BadArg { name, .. } if name == "Y_zero_point"),
        "{e}"
    );
    let e = try_build("Int8Conv", &[("kernel", i(2)), ("Y_scale", f(-1.0))], 3).unwrap_err();
    assert!(
        matches!(&e, OpError::BadArg { name, .. } if name == "Y_scale"),
        "{e}"
    );
    // Unsupported engines and arguments.
    let sp = spec_e("Int8Conv", "DNNLOWP_16", &args, 3, 1);
    assert!(matches!(build_op(&sp), Err(OpError::Unsupported(_))));
    let sp = spec_e("Int8FC", "DNNLOWP_ROWWISE", &[("Y_scale", f(1.0))], 3, 1);
    assert!(matches!(build_op(&sp), Err(OpError::Unsupported(_))));
    for extra in [
        ("dequantize_output", i(1)),
        ("quantize_groupwise", i(1)),
        ("followed_by", s("Sigmoid")),
    ] {
        let mut a = args.to_vec();
        a.push(extra);
        assert!(matches!(
            try_build("Int8Conv", &a, 3),
            Err(OpError::Unsupported(_))
        ));
    }
    // Accepted engines give identical results.
    let want = run1(op.as_ref(), &[&hand_x(), &hand_w(), &b]);
    for engine in ["", "DNNLOWP_ACC16", "NNPACK,DEPTHWISE_3x3"] {
        let op = build_op(&spec_e("Int8Conv", engine, &args, 3, 1))
            .unwrap()
            .unwrap();
        assert_eq!(
            run1(op.as_ref(), &[&hand_x(), &hand_w(), &b]),
            want,
            "{engine}"
        );
    }
    // Arity.
    assert!(matches!(
        try_build("Int8Conv", &args, 1),
        Err(OpError::Arity(_))
    ));
}

// ---------------------------------------------------------------------------------------
// Int8FC
// ---------------------------------------------------------------------------------------

#[test]
fn fc_hand_worked() {
    // X [2, 3] s 0.5 z 10: rows (12, 9, 10) → (2, −1, 0); (14, 10, 6) → (4, 0, −4).
    // W [2, 3] s 0.5 z 128: (129, 130, 127) → (1, 2, −1); (128, 126, 131) → (0, −2, 3).
    // b = (1, −2) with scale 0.25. Y s 1.0 z 100 → M = 0.25.
    // row 0: 2·1 − 1·2 + 0 + 1 = 1 → 0.25 → 0 → 100;  2·0 + (−1)(−2) + 0 − 2 = 0 → 100
    // row 1: 4 + 0 + 4 + 1 = 9 → 2.25 → 2 → 102;      0 + 0 − 12 − 2 = −14 → −3.5 → −4 → 96
    let x = qu8(&[2, 3], vec![12, 9, 10, 14, 10, 6], qp(0.5, 10));
    let w = qu8(&[2, 3], vec![129, 130, 127, 128, 126, 131], qp(0.5, 128));
    let b = qi32(&[2], vec![1, -2], qp(0.25, 0));
    let op = build(
        "Int8FC",
        &[("Y_scale", f(1.0)), ("Y_zero_point", i(100))],
        3,
    );
    assert_eq!(
        codes(&run1(op.as_ref(), &[&x, &w, &b])),
        (vec![100, 100, 102, 96], qp(1.0, 100))
    );
    // Int8FCRelu with z = 0: 0, 0, 2, 0 (−3.5 → −4 → clamp 0). (1·255/255 = 1 exactly.)
    let op = build(
        "Int8FCRelu",
        &[("Y_scale", f(1.0)), ("Y_zero_point", i(0))],
        3,
    );
    assert_eq!(codes(&run1(op.as_ref(), &[&x, &w, &b])).0, vec![0, 0, 2, 0]);
}

#[test]
fn fc_random_axes_exact_and_float() {
    let mut rng = Rng::new(11);
    // X [2, 3, 2, 2] with axis 1 → M = 2, K = 12; W [1, 5, 3, 4] with axis_w 2 → N = 5.
    let xq = qp(0.03, 77);
    let wq = qp(0.01, 131);
    let yq = qp(0.2, 120);
    let x = qu8(&[2, 3, 2, 2], rng.u8s(24), xq);
    let w = qu8(&[1, 5, 3, 4], rng.u8s(60), wq);
    let bv: Vec<i32> = (0..5).map(|_| rng.range(-5000, 5000) as i32).collect();
    let b = qi32(&[5], bv.clone(), qp(xq.scale * wq.scale, 0));
    let op = build(
        "Int8FC",
        &[
            ("axis", i(1)),
            ("axis_w", i(2)),
            ("Y_scale", f(yq.scale)),
            ("Y_zero_point", i(120)),
        ],
        3,
    );
    let y = run1(op.as_ref(), &[&x, &w, &b]);
    assert_eq!(y.shape(), &[2, 5]);
    let (got, _) = codes(&y);
    let (xa, _) = codes(&x);
    let (wa, _) = codes(&w);
    let mut want_f = vec![];
    for r in 0..2 {
        for n in 0..5 {
            let mut acc = bv[n] as i64;
            for k in 0..12 {
                acc += (xa[r * 12 + k] as i64 - 77) * (wa[n * 12 + k] as i64 - 131);
            }
            assert_eq!(got[r * 5 + n], ref_requant(acc, xq.scale, wq.scale, yq, 0));
            want_f.push(ideal_q(
                acc as f64 * xq.scale as f64 * wq.scale as f64,
                yq,
                0,
            ));
        }
    }
    assert_within_one(&got, &want_f, 1, "fc");
    // Negative axis: axis −3 on a rank-4 X is axis 1.
    let op = build(
        "Int8FC",
        &[
            ("axis", i(-3)),
            ("axis_w", i(2)),
            ("Y_scale", f(yq.scale)),
            ("Y_zero_point", i(120)),
        ],
        3,
    );
    assert_eq!(run1(op.as_ref(), &[&x, &w, &b]), y);
    // K mismatch and missing bias input.
    let op = build(
        "Int8FC",
        &[("axis", i(2)), ("axis_w", i(2)), ("Y_scale", f(0.2))],
        3,
    );
    assert!(matches!(
        run(op.as_ref(), &[&x, &w, &b]),
        Err(OpError::Shape(_))
    ));
    assert!(matches!(
        try_build("Int8FC", &[("Y_scale", f(0.2))], 2),
        Err(OpError::Arity(_))
    ));
}

// ---------------------------------------------------------------------------------------
// Int8Quantize / Int8Dequantize
// ---------------------------------------------------------------------------------------

#[test]
fn quantize_and_dequantize() {
    // s = 0.5 (1/s = 2 exactly), z = 128: x·2 = 2.5 → 2, 3.5 → 4, −2.5 → −2, 0.5 → 0,
    // then + 128; out of range clamps.
    let x = Tensor::from_f32(
        &[2, 4],
        vec![1.25, 1.75, -1.25, 0.25, 0.0, 100.0, -100.0, 63.5],
    );
    let op = build(
        "Int8Quantize",
        &[("Y_scale", f(0.5)), ("Y_zero_point", i(128))],
        1,
    );
    let y = run1(op.as_ref(), &[&x]);
    assert_eq!(
        codes(&y),
        (vec![130, 132, 126, 128, 128, 255, 0, 255], qp(0.5, 128))
    );
    let op = build("Int8Dequantize", &[], 1);
    let back = run1(op.as_ref(), &[&y]);
    assert_eq!(
        back.f32_slice().unwrap(),
        &[1.0, 2.0, -1.0, 0.0, 0.0, 63.5, -64.0, 63.5]
    );
    // Round trip of every code: dequantize then quantize is the identity.
    let all = qu8(&[256], (0..=255).collect(), qp(0.0207874, 128));
    let f32s = run1(op.as_ref(), &[&all]);
    let q = build(
        "Int8Quantize",
        &[("Y_scale", f(0.0207874)), ("Y_zero_point", i(128))],
        1,
    );
    assert_eq!(run1(q.as_ref(), &[&f32s]), all);
    // Errors: qu8 into Quantize, f32 into Dequantize, missing Y_scale.
    assert!(matches!(run(q.as_ref(), &[&all]), Err(OpError::DType(_))));
    assert!(matches!(run(op.as_ref(), &[&x]), Err(OpError::DType(_))));
    assert!(matches!(
        try_build("Int8Quantize", &[], 1),
        Err(OpError::BadArg { .. })
    ));
}

#[test]
fn quantize_random_against_float_formula() {
    let mut rng = Rng::new(3);
    let yq = qp(0.0207874, 128);
    let v: Vec<f32> = (0..5000)
        .map(|_| ((rng.unit() - 0.5) * 6.0) as f32)
        .collect();
    let op = build(
        "Int8Quantize",
        &[("Y_scale", f(yq.scale)), ("Y_zero_point", i(128))],
        1,
    );
    let (got, _) = codes(&run1(op.as_ref(), &[&Tensor::from_f32(&[5000], v.clone())]));
    let inv = 1.0f32 / yq.scale;
    for (k, (&g, &x)) in got.iter().zip(&v).enumerate() {
        let want = ((x * inv).round_ties_even() as i64 + 128).clamp(0, 255) as u8;
        assert_eq!(g, want, "element {k} ({x})");
        let ideal = ideal_q(x as f64, yq, 0);
        assert!((g as i64 - ideal).abs() <= 1);
    }
}

// ---------------------------------------------------------------------------------------
// Int8Sum / Int8Add / Int8Relu
// ---------------------------------------------------------------------------------------

#[test]
fn sum_hand_worked() {
    // a: s 0.5 z 10; b: s 0.25 z 0; y: s 1.0 z 5. The zero point is added before rounding:
    //   a 11, b 2 : 0.5 + 0.5 = 1.0;  + 5 = 6
    //   a 13, b 0 : 1.5;              + 5 = 6.5 → 6 (even)
    //   a 10, b 10: 2.5;              + 5 = 7.5 → 8 (even)
    //   a 0,  b 6 : −5 + 1.5 = −3.5;  + 5 = 1.5 → 2
    //   a 0,  b 0 : −5;               + 5 = 0
    //   a 255, b 255: 122.5 + 63.75 = 186.25; + 5 → 191
    let a = qu8(&[2, 3], vec![11, 13, 10, 0, 0, 255], qp(0.5, 10));
    let b = qu8(&[2, 3], vec![2, 0, 10, 6, 0, 255], qp(0.25, 0));
    for op_type in ["Int8Sum", "Int8Add"] {
        let op = build(op_type, &[("Y_scale", f(1.0)), ("Y_zero_point", i(5))], 2);
        assert_eq!(
            codes(&run1(op.as_ref(), &[&a, &b])),
            (vec![6, 6, 8, 2, 0, 191], qp(1.0, 5))
        );
    }
    // Relu variants with z = 0: 1, 1.5 → 2, 2.5 → 2, negatives clamp to 0, 186.25 → 186.
    for op_type in ["Int8SumRelu", "Int8AddRelu"] {
        let op = build(op_type, &[("Y_scale", f(1.0)), ("Y_zero_point", i(0))], 2);
        assert_eq!(
            codes(&run1(op.as_ref(), &[&a, &b])).0,
            vec![1, 2, 2, 0, 0, 186]
        );
    }
    // One input: 0.5·(q − 10) + 5: 5.5 → 6, 6.5 → 6, 5, 0, 0, 127.5 → 128.
    let op = build("Int8Sum", &[("Y_scale", f(1.0)), ("Y_zero_point", i(5))], 1);
    assert_eq!(codes(&run1(op.as_ref(), &[&a])).0, vec![6, 6, 5, 0, 0, 128]);
}

#[test]
fn sum_random_against_float_simulation() {
    let mut rng = Rng::new(21);
    for n_in in [2usize, 3, 4] {
        let len = 3000;
        let qs: Vec<QParams> = (0..n_in)
            .map(|_| qp(0.01 + rng.unit() as f32 * 0.1, rng.range(0, 255) as i32))
            .collect();
        let xs: Vec<Tensor> = qs
            .iter()
            .map(|&q| qu8(&[3, len / 3], rng.u8s(len), q))
            .collect();
        let yq = qp(0.05 + rng.unit() as f32 * 0.1, rng.range(0, 255) as i32);
        for relu in [false, true] {
            let (op_type, yq) = if relu {
                ("Int8SumRelu", qp(yq.scale, 0))
            } else {
                ("Int8Sum", yq)
            };
            let op = build(
                op_type,
                &[
                    ("Y_scale", f(yq.scale)),
                    ("Y_zero_point", i(yq.zero_point as i64)),
                ],
                n_in,
            );
            let refs: Vec<&Tensor> = xs.iter().collect();
            let y = run1(op.as_ref(), &refs);
            let (got, q) = codes(&y);
            let lo = if relu { yq.zero_point } else { 0 };
            // Relu re-derivation: f32(f64(f32(s·255))/255).
            let want_scale = if relu { relu_scale(yq.scale) } else { yq.scale };
            assert_eq!(q, qp(want_scale, yq.zero_point));
            let cs: Vec<Vec<u8>> = xs.iter().map(|t| codes(t).0).collect();
            let mut exact = vec![];
            let mut ideal = vec![];
            for j in 0..len {
                // Independent f32 formula: Σ s_i (q_i − z_i), · (1/s_y), + z_y, round, clamp.
                let mut acc = 0f32;
                let mut real = 0f64;
                for (c, q) in cs.iter().zip(&qs) {
                    acc += q.scale * (c[j] as i32 - q.zero_point) as f32;
                    real += q.scale as f64 * (c[j] as f64 - q.zero_point as f64);
                }
                let v = (acc * (1.0 / want_scale) + yq.zero_point as f32).round_ties_even();
                exact.push((v as i64).clamp(lo as i64, 255) as u8);
                ideal.push(ideal_q(real, qp(want_scale, yq.zero_point), lo));
            }
            assert_eq!(got, exact, "{op_type} n={n_in}");
            assert_within_one(&got, &ideal, len / 100, &format!("{op_type} n={n_in}"));
        }
    }
}

#[test]
fn sum_errors() {
    let a = qu8(&[2, 3], vec![0; 6], qp(0.5, 10));
    let b = qu8(&[3, 2], vec![0; 6], qp(0.5, 10));
    let op = build("Int8Sum", &[("Y_scale", f(1.0))], 2);
    assert!(matches!(
        run(op.as_ref(), &[&a, &b]),
        Err(OpError::Shape(_))
    ));
    let xf = Tensor::from_f32(&[2, 3], vec![0.0; 6]);
    assert!(matches!(
        run(op.as_ref(), &[&a, &xf]),
        Err(OpError::DType(_))
    ));
    assert!(matches!(
        try_build("Int8Add", &[("Y_scale", f(1.0))], 3),
        Err(OpError::Arity(_))
    ));
    assert!(matches!(
        try_build("Int8Add", &[("Y_scale", f(1.0)), ("broadcast", i(1))], 2),
        Err(OpError::Unsupported(_))
    ));
    assert!(matches!(
        try_build("Int8SumRelu", &[], 2),
        Err(OpError::BadArg { .. })
    ));
}

#[test]
fn relu_clamps_at_zero_point_and_keeps_params() {
    let x = qu8(&[5], vec![0, 99, 100, 101, 255], qp(0.3, 100));
    // Y args are ignored (output params = input params).
    let op = build(
        "Int8Relu",
        &[("Y_scale", f(7.0)), ("Y_zero_point", i(3))],
        1,
    );
    assert_eq!(
        codes(&run1(op.as_ref(), &[&x])),
        (vec![100, 100, 100, 101, 255], qp(0.3, 100))
    );
    assert!(matches!(
        run(op.as_ref(), &[&Tensor::from_f32(&[1], vec![0.0])]),
        Err(OpError::DType(_))
    ));
}

// ---------------------------------------------------------------------------------------
// Int8MaxPool / Int8AveragePool
// ---------------------------------------------------------------------------------------

#[test]
fn max_pool_hand_worked() {
    // 1×3×3×2 NHWC; channel 0 = 1..9, channel 1 = 9..1. k2 s2 pad (0,0,1,1) → 2×2.
    let mut v = vec![];
    for k in 0..9u8 {
        v.push(k + 1);
        v.push(9 - k);
    }
    let x = qu8(&[1, 3, 3, 2], v, qp(0.1, 5));
    let op = build(
        "Int8MaxPool",
        &[
            ("kernel", i(2)),
            ("stride", i(2)),
            ("pads", ints(&[0, 0, 1, 1])),
            ("order", s("NHWC")),
            ("Y_scale", f(9.0)),
        ],
        1,
    );
    let y = run1(op.as_ref(), &[&x]);
    // Windows: rows {0,1}×cols {0,1}, {0,1}×{2}, {2}×{0,1}, {2}×{2}.
    // ch0 (value = 3r + c + 1): 5, 6, 8, 9; ch1 (value = 9 − 3r − c): 9, 7, 3, 1.
    assert_eq!(codes(&y), (vec![5, 9, 6, 7, 8, 3, 9, 1], qp(0.1, 5)));
    // NCHW gives the permuted result.
    let op = build(
        "Int8MaxPool",
        &[
            ("kernel", i(2)),
            ("stride", i(2)),
            ("pads", ints(&[0, 0, 1, 1])),
            ("order", s("NCHW")),
        ],
        1,
    );
    let yn = run1(op.as_ref(), &[&x.permuted(&[0, 3, 1, 2]).unwrap()]);
    assert_eq!(yn, y.permuted(&[0, 3, 1, 2]).unwrap());
}

#[test]
fn average_pool_hand_worked() {
    // 1×3×3×1, s_x 0.5 z_x 10, codes 10..18; k2 s1 pad 1 → 4×4 output, Y s 0.25 z 3.
    // Corner (0,0): window {(0,0)} size 1: (10 − 10)·(0.5/0.25/1) = 0 → 3.
    // (0,1): cells 10, 11, size 2: Σ − 20 = 1 → 1 · 1.0 = 1 → 4.
    // (1,1): 10, 11, 13, 14: Σ = 48 − 40 = 8 → 8 · 0.5 = 4 → 7.
    // (1,2): 11, 12, 14, 15: 52 − 40 = 12 → 6 → 9.
    // (3,3): 18 alone: 8 · 2 = 16 → 19.
    // (0,3): 12 alone: 2·2 = 4 → 7. (3,0): 16: 6·2 = 12 → 15.
    // (2,1): 13,14,16,17: 60−40 = 20 → 10 → 13.
    // (1,0): 10, 13: 23 − 20 = 3 → 3·1.0 = 3 → 6.  (1,3): 12, 15: 27 − 20 = 7 → 10.
    // (2,0): 13, 16: 9 → 12.  (2,2): 14,15,17,18: 24 → 12 → 15. (2,3): 15, 18: 13 → 16.
    // (0,2): 11, 12: 3 → 6. (3,1): 16, 17: 13 → 16. (3,2): 17, 18: 15 → 18.
    let x = qu8(&[1, 3, 3, 1], (10..19).collect(), qp(0.5, 10));
    let op = build(
        "Int8AveragePool",
        &[
            ("kernel", i(2)),
            ("pad", i(1)),
            ("Y_scale", f(0.25)),
            ("Y_zero_point", i(3)),
        ],
        1,
    );
    let y = run1(op.as_ref(), &[&x]);
    assert_eq!(y.shape(), &[1, 4, 4, 1]);
    assert_eq!(
        codes(&y),
        (
            vec![3, 4, 6, 7, 6, 7, 9, 10, 12, 13, 15, 16, 15, 16, 18, 19],
            qp(0.25, 3)
        )
    );
    // Ties: codes 10, 11 with Y scale 1 → (1)·(0.5/1/2) = 0.25 → 0; 11, 12 → 3·0.25 = 0.75
    // → 1; 3 cells can't tie; 2 cells summing to 5 → 1.25 → 1; to 6 (12, 14) → 1.5 → 2;
    // to 10 → 2.5 → 2 (even).
    let x = qu8(
        &[1, 1, 10, 1],
        vec![10, 11, 11, 12, 11, 14, 12, 14, 15, 15],
        qp(0.5, 10),
    );
    let op = build(
        "Int8AveragePool",
        &[
            ("kernels", ints(&[1, 2])),
            ("strides", ints(&[1, 2])),
            ("Y_scale", f(1.0)),
        ],
        1,
    );
    // pairs: (10,11): 1·0.25 = 0.25 → 0; (11,12): 3·0.25 = 0.75 → 1; (11,14): 5 → 1.25 → 1;
    // (12,14): 6 → 1.5 → 2; (15,15): 10 → 2.5 → 2.
    assert_eq!(codes(&run1(op.as_ref(), &[&x])).0, vec![0, 1, 1, 2, 2]);
}

#[test]
fn average_pool_global_and_random() {
    let mut rng = Rng::new(17);
    let (n, h, w, c) = (2usize, 7usize, 7usize, 5usize);
    let xq = qp(0.07, 9);
    let yq = qp(0.05, 20);
    let x = qu8(&[n, h, w, c], rng.u8s(n * h * w * c), xq);
    let op = build(
        "Int8AveragePool",
        &[
            ("global_pooling", i(1)),
            ("Y_scale", f(yq.scale)),
            ("Y_zero_point", i(20)),
        ],
        1,
    );
    let y = run1(op.as_ref(), &[&x]);
    assert_eq!(y.shape(), &[n, 1, 1, c]);
    let (got, _) = codes(&y);
    let (xa, _) = codes(&x);
    for b in 0..n {
        for ch in 0..c {
            let sum: i64 = (0..h * w)
                .map(|p| xa[(b * h * w + p) * c + ch] as i64 - 9)
                .sum();
            // DNNLOWP formula, written out: (Σ − z·size)·(s_x/s_y/size) + z_y, round, clamp.
            let m = xq.scale / yq.scale / (h * w) as f32;
            let want = ((sum as f32 * m + 20.0).round_ties_even() as i64).clamp(0, 255);
            assert_eq!(got[b * c + ch] as i64, want);
            let ideal = ideal_q(sum as f64 * xq.scale as f64 / (h * w) as f64, yq, 0);
            assert!((want - ideal).abs() <= 1);
        }
    }
    // ResNet-50 style k7 s1 without global flag gives the same.
    let op = build(
        "Int8AveragePool",
        &[
            ("kernel", i(7)),
            ("stride", i(1)),
            ("Y_scale", f(yq.scale)),
            ("Y_zero_point", i(20)),
        ],
        1,
    );
    assert_eq!(run1(op.as_ref(), &[&x]), y);
    // Errors: pad >= kernel, count_include_pad, missing Y_scale, dilation, f32 input.
    assert!(matches!(
        try_build(
            "Int8AveragePool",
            &[("kernel", i(2)), ("pad", i(2)), ("Y_scale", f(1.0))],
            1
        ),
        Err(OpError::BadArg { .. })
    ));
    assert!(matches!(
        try_build(
            "Int8AveragePool",
            &[
                ("kernel", i(2)),
                ("count_include_pad", i(1)),
                ("Y_scale", f(1.0))
            ],
            1
        ),
        Err(OpError::Unsupported(_))
    ));
    assert!(matches!(
        try_build("Int8AveragePool", &[("kernel", i(2))], 1),
        Err(OpError::BadArg { .. })
    ));
    assert!(matches!(
        try_build("Int8MaxPool", &[("kernel", i(2)), ("dilation", i(2))], 1),
        Err(OpError::BadArg { .. })
    ));
    let op = build("Int8MaxPool", &[("kernel", i(2))], 1);
    assert!(matches!(
        run(op.as_ref(), &[&Tensor::zeros_f32(&[1, 4, 4, 1])]),
        Err(OpError::DType(_))
    ));
}

// ---------------------------------------------------------------------------------------
// Int8Concat / Int8Flatten / Int8Reshape
// ---------------------------------------------------------------------------------------

#[test]
fn concat_same_and_different_params() {
    let q = qp(0.1, 50);
    let a = qu8(&[1, 1, 2, 2], vec![1, 2, 3, 4], q);
    let b = qu8(&[1, 1, 2, 1], vec![5, 6], q);
    // Default axis for order NHWC is 3 (channels).
    let op = build_op(&spec_e("Int8Concat", "", &[("order", s("NHWC"))], 2, 2))
        .unwrap()
        .unwrap();
    let out = run(op.as_ref(), &[&a, &b]).unwrap();
    assert_eq!(codes(&out[0]), (vec![1, 2, 5, 3, 4, 6], q));
    assert_eq!(
        out[1],
        Tensor::I32(ArrayD::from_shape_vec(IxDyn(&[2]), vec![2, 1]).unwrap())
    );
    // Different params are requantized to Y: b has s 0.2 z 10, Y = a's params (0.1, 50):
    // code 12 → (12 − 10)·2 = 4 → 54; code 0 → −10·2 = −20 → 30.
    let b2 = qu8(&[1, 1, 2, 1], vec![12, 0], qp(0.2, 10));
    let y = run1(op.as_ref(), &[&a, &b2]);
    assert_eq!(codes(&y), (vec![1, 2, 54, 3, 4, 30], q));
    // Explicit Y params: a (0.1, 50) → (0.4, 0): (1 − 50)·0.25 = −12.25 → clamp 0; code 250 →
    // 200·0.25 = 50; code 52 → 0.5 → 0 (even); code 56 → 1.5 → 2.
    let a3 = qu8(&[1, 1, 2, 2], vec![1, 250, 52, 56], q);
    let op = build(
        "Int8Concat",
        &[("axis", i(3)), ("Y_scale", f(0.4)), ("Y_zero_point", i(0))],
        2,
    );
    let b3 = qu8(&[1, 1, 2, 1], vec![7, 8], qp(0.4, 0));
    assert_eq!(
        codes(&run1(op.as_ref(), &[&a3, &b3])),
        (vec![0, 50, 7, 0, 2, 8], qp(0.4, 0))
    );
    // No axis and no order: DNNLOWP defaults to 1, the default engine to 0.
    let op = build("Int8Concat", &[], 2);
    assert_eq!(run1(op.as_ref(), &[&a, &a]).shape(), &[1, 2, 2, 2]);
    let op = build_op(&spec_e("Int8Concat", "", &[], 2, 1))
        .unwrap()
        .unwrap();
    assert_eq!(run1(op.as_ref(), &[&a, &a]).shape(), &[2, 1, 2, 2]);
    // Shape mismatch off the axis.
    let op = build("Int8Concat", &[("axis", i(1))], 2);
    assert!(matches!(
        run(op.as_ref(), &[&a, &b]),
        Err(OpError::Shape(_))
    ));
}

#[test]
fn flatten_and_reshape_keep_params() {
    let q = qp(0.3, 7);
    let x = qu8(&[2, 1, 1, 3], vec![1, 2, 3, 4, 5, 6], q);
    let op = build(
        "Int8Flatten",
        &[("Y_scale", f(0.3)), ("Y_zero_point", i(7))],
        1,
    );
    let y = run1(op.as_ref(), &[&x]);
    assert_eq!(y, qu8(&[2, 3], vec![1, 2, 3, 4, 5, 6], q));
    let op = build_op(&spec_e(
        "Int8Reshape",
        "",
        &[("shape", ints(&[3, -1]))],
        1,
        2,
    ))
    .unwrap()
    .unwrap();
    let out = run(op.as_ref(), &[&x]).unwrap();
    assert_eq!(out[0], qu8(&[3, 2], vec![1, 2, 3, 4, 5, 6], q));
    assert_eq!(
        out[1],
        Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[4]), vec![2, 1, 1, 3]).unwrap())
    );
    // Y params that differ from the input's are rejected.
    let op = build(
        "Int8Flatten",
        &[("Y_scale", f(0.5)), ("Y_zero_point", i(7))],
        1,
    );
    assert!(matches!(
        run(op.as_ref(), &[&x]),
        Err(OpError::BadArg { .. })
    ));
    let op = build(
        "Int8Reshape",
        &[
            ("shape", ints(&[6])),
            ("Y_scale", f(0.3)),
            ("Y_zero_point", i(8)),
        ],
        1,
    );
    assert!(matches!(
        run(op.as_ref(), &[&x]),
        Err(OpError::BadArg { .. })
    ));
    // f32 input.
    let op = build("Int8Flatten", &[], 1);
    assert!(matches!(
        run(op.as_ref(), &[&Tensor::zeros_f32(&[2, 3])]),
        Err(OpError::DType(_))
    ));
}

#[test]
fn registry_lists_every_int8_op() {
    for op in ops::int8::INT8_OPS {
        assert!(
            ops::SUPPORTED_OPS.contains(op),
            "{op} missing from SUPPORTED_OPS"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Timing of the ResNet-50 convolutions (run with --ignored --nocapture in release).
// ---------------------------------------------------------------------------------------

#[test]
#[ignore]
fn resnet50_int8_conv_timing() {
    // (C, H, M, k, stride, pad) for every conv of ResNet-50 at batch 1, NHWC.
    let mut layers: Vec<(usize, usize, usize, usize, usize, usize)> = vec![(3, 224, 64, 7, 2, 3)];
    let stages = [
        (64, 56, 3, 1),
        (128, 56, 4, 2),
        (256, 28, 6, 2),
        (512, 14, 3, 2),
    ];
    let mut cin = 64;
    for &(width, hin, blocks, stride) in &stages {
        for blk in 0..blocks {
            let (s, h) = if blk == 0 {
                (stride, hin)
            } else {
                (1, hin / stride)
            };
            if blk == 0 {
                layers.push((cin, h, width * 4, 1, s, 0));
            }
            layers.push((if blk == 0 { cin } else { width * 4 }, h, width, 1, 1, 0));
            layers.push((width, h, width, 3, s, 1));
            layers.push((width, h / s, width * 4, 1, 1, 0));
        }
        cin = width * 4;
    }
    assert_eq!(layers.len(), 53);
    let mut rng = Rng::new(1);
    let start = std::time::Instant::now();
    let mut macs = 0f64;
    for &(c, h, m, k, st, p) in &layers {
        let x = qu8(&[1, h, h, c], rng.u8s(h * h * c), qp(0.02, 0));
        let w = qu8(&[m, k, k, c], rng.u8s(m * k * k * c), qp(0.01, 128));
        let op = build(
            "Int8ConvRelu",
            &[
                ("kernel", i(k as i64)),
                ("stride", i(st as i64)),
                ("pad", i(p as i64)),
                ("order", s("NHWC")),
                ("Y_scale", f(0.05)),
            ],
            2,
        );
        let y = op.eval(&[&x, &w]).unwrap();
        let o = y[0].shape()[1];
        macs += (o * o * m * k * k * c) as f64;
    }
    let dt = start.elapsed().as_secs_f64();
    println!(
        "ResNet-50 int8 convs: {:.2} GMAC in {dt:.2} s ({:.2} GMAC/s)",
        macs / 1e9,
        macs / 1e9 / dt
    );
}

#[test]
fn order_switch_ops_carry_int8_params() {
    // NCHW2NHWC / NHWC2NCHW (fp32 layout ops) move Int8 codes and keep the parameters.
    let q = qp(0.02, 128);
    let x = qu8(&[1, 2, 2, 3], (0..12).collect(), q);
    let op = build_op(&spec_e("NCHW2NHWC", "", &[], 1, 1))
        .unwrap()
        .unwrap();
    let y = run1(op.as_ref(), &[&x]);
    // x[0, c, h, w] = 6c + 3h + w → y[0, h, w, c].
    let want: Vec<u8> = (0..2)
        .flat_map(|h| (0..3).flat_map(move |w| (0..2).map(move |c| (6 * c + 3 * h + w) as u8)))
        .collect();
    assert_eq!(codes(&y), (want, q));
    assert_eq!(y.shape(), &[1, 2, 3, 2]);
    let op = build_op(&spec_e("NHWC2NCHW", "", &[], 1, 1))
        .unwrap()
        .unwrap();
    assert_eq!(run1(op.as_ref(), &[&y]), x);
}
