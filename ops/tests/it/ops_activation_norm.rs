//! Relu, Clip, Sigmoid, Tanh, SpatialBN, Softmax and LRN against naive references.

use crate::ops_util;

use ops::{DType, Tensor, TensorInfo};
use ops_util::*;

#[test]
fn relu_sigmoid_tanh_match_scalar_formulas() {
    let x = data(2 * 3 * 5, 1);
    let xt = t(&[2, 3, 5], x.clone());
    let relu = run_ok(&*build("Relu", &[], 1, 1), &[&xt]);
    let sig = run_ok(&*build("Sigmoid", &[], 1, 1), &[&xt]);
    let tanh = run_ok(&*build("Tanh", &[], 1, 1), &[&xt]);
    for (k, &v) in x.iter().enumerate() {
        let v64 = v as f64;
        assert_eq!(vals(&relu[0])[k], if v > 0.0 { v } else { 0.0 });
        let s = 1.0 / (1.0 + (-v64).exp());
        assert!((vals(&sig[0])[k] as f64 - s).abs() < 1e-6);
        let th = (v64.exp() - (-v64).exp()) / (v64.exp() + (-v64).exp());
        assert!((vals(&tanh[0])[k] as f64 - th).abs() < 1e-6);
    }
    // Hand values.
    let h = t(&[4], vec![-1.0, 0.0, 2.5, -0.0]);
    assert_eq!(
        vals(&run_ok(&*build("Relu", &[], 1, 1), &[&h])[0]),
        vec![0.0, 0.0, 2.5, 0.0]
    );
    let sg = vals(&run_ok(&*build("Sigmoid", &[], 1, 1), &[&h])[0]);
    assert!((sg[1] - 0.5).abs() < 1e-7);
    // Extreme inputs stay finite.
    let big = t(&[2], vec![-100.0, 100.0]);
    let sg = vals(&run_ok(&*build("Sigmoid", &[], 1, 1), &[&big])[0]);
    assert!(sg[0] >= 0.0 && sg[0] < 1e-40 && sg[1] == 1.0);
    let th = vals(&run_ok(&*build("Tanh", &[], 1, 1), &[&big])[0]);
    assert_eq!(th, vec![-1.0, 1.0]);
}

#[test]
fn activations_reject_non_f32_and_wrong_arity() {
    let relu = build("Relu", &[], 1, 1);
    let xi = Tensor::I32(ndarray::ArrayD::zeros(ndarray::IxDyn(&[2])));
    assert_err!(relu.infer(&[xi.info()]), DType, "f32");
    assert!(relu.eval(&[&xi]).is_err());
    assert!(try_build("Relu", &[], 2, 1).is_err());
    assert!(try_build("Tanh", &[], 1, 2).is_err());
}

#[test]
fn clip_bounds_and_defaults() {
    let x = t(&[5], vec![-3.0, -1.0, 0.5, 2.0, 9.0]);
    let c = build("Clip", &[("min", f(-1.5)), ("max", f(2.0))], 1, 1);
    assert_eq!(
        vals(&run_ok(&*c, &[&x])[0]),
        vec![-1.5, -1.0, 0.5, 2.0, 2.0]
    );
    // Only max.
    let c = build("Clip", &[("max", f(0.0))], 1, 1);
    assert_eq!(
        vals(&run_ok(&*c, &[&x])[0]),
        vec![-3.0, -1.0, 0.0, 0.0, 0.0]
    );
    // No bounds: finite values unchanged, infinities clamp to the finite extremes (Caffe2's
    // numeric_limits lowest/max defaults).
    let c = build("Clip", &[], 1, 1);
    let y = t(&[3], vec![f32::NEG_INFINITY, 1.25, f32::INFINITY]);
    assert_eq!(vals(&run_ok(&*c, &[&y])[0]), vec![f32::MIN, 1.25, f32::MAX]);
    // NaN passes through; -0.0 and NaN become 0 under Relu.
    let n = t(&[2], vec![f32::NAN, -0.0]);
    let y = vals(
        &run_ok(
            &*build("Clip", &[("min", f(0.0)), ("max", f(1.0))], 1, 1),
            &[&n],
        )[0],
    );
    assert!(y[0].is_nan() && y[1] == 0.0);
    let y = vals(&run_ok(&*build("Relu", &[], 1, 1), &[&n])[0]);
    assert_eq!((y[0], y[1].is_sign_positive()), (0.0, true));
    // min > max is rejected.
    assert_bad_arg!(
        try_build("Clip", &[("min", f(1.0)), ("max", f(0.0))], 1, 1),
        "min"
    );
    assert_bad_arg!(try_build("Clip", &[("min", s("a"))], 1, 1), "min");
}

/// Naive SpatialBN on a 4-D tensor in f64.
fn bn_ref(x: &[f32], shape: &[usize], nhwc: bool, p: [&[f32]; 4], eps: f64) -> Vec<f32> {
    let [scale, bias, mean, var] = p;
    (0..x.len())
        .map(|i| {
            let idx = unravel(i, shape);
            let c = if nhwc { idx[3] } else { idx[1] };
            let v = (x[i] as f64 - mean[c] as f64) / (var[c] as f64 + eps).sqrt() * scale[c] as f64
                + bias[c] as f64;
            v as f32
        })
        .collect()
}

#[test]
fn spatial_bn_nchw_nhwc_with_and_without_prepare() {
    let c = 3;
    let scale = vec![1.5, -0.5, 2.0];
    let bias = vec![0.1, 0.2, -0.3];
    let mean = vec![0.5, -1.0, 0.0];
    let var = vec![0.25, 4.0, 1e-6];
    let params: Vec<Tensor> = [&scale, &bias, &mean, &var]
        .iter()
        .map(|v| t(&[c], v.to_vec()))
        .collect();
    for (order, shape) in [("NCHW", [2usize, 3, 4, 5]), ("NHWC", [2, 4, 5, 3])] {
        let n: usize = shape.iter().product();
        let x = t(&shape, data(n, 7));
        let want = bn_ref(
            &vals(&x),
            &shape,
            order == "NHWC",
            [&scale, &bias, &mean, &var],
            1e-3,
        );
        let args = [("epsilon", f(1e-3)), ("order", s(order)), ("is_test", i(1))];
        let ins: Vec<&Tensor> = std::iter::once(&x).chain(params.iter()).collect();
        // Without prepare: parameters folded at eval.
        let op = build("SpatialBN", &args, 5, 1);
        assert_close(&vals(&run_ok(&*op, &ins)[0]), &want, 1e-5);
        // With prepare (parameters constant).
        let mut op = build("SpatialBN", &args, 5, 1);
        let consts: Vec<Option<&Tensor>> = std::iter::once(None)
            .chain(params.iter().map(Some))
            .collect();
        op.prepare(&consts).unwrap();
        assert_close(&vals(&run_ok(&*op, &ins)[0]), &want, 1e-5);
    }
    // Default epsilon 1e-5 with a hand value: x=3, mean=1, var=3.99999 -> (3-1)/2 * 2 + 1 = 3.
    let op = build("SpatialBN", &[], 5, 1);
    let one = |v: f32| t(&[1], vec![v]);
    let y = run_ok(
        &*op,
        &[
            &t(&[1, 1, 1, 1], vec![3.0]),
            &one(2.0),
            &one(1.0),
            &one(1.0),
            &one(3.99999),
        ],
    );
    assert_close(&vals(&y[0]), &[3.0], 1e-6);
}

#[test]
fn spatial_bn_errors() {
    let op = build("SpatialBN", &[], 5, 1);
    let x = TensorInfo::f32([2, 3, 4, 4]);
    let p3 = TensorInfo::f32([3]);
    let p4 = TensorInfo::f32([4]);
    assert_err!(
        op.infer(&[x.clone(), p3.clone(), p4.clone(), p3.clone(), p3.clone()]),
        Shape,
        "bias must have shape [3]"
    );
    // NHWC reads channels from the last axis: 4 here.
    let nhwc = build("SpatialBN", &[("order", s("NHWC"))], 5, 1);
    assert!(nhwc
        .infer(&[x.clone(), p4.clone(), p4.clone(), p4.clone(), p4.clone()])
        .is_ok());
    assert_err!(
        op.infer(&[
            TensorInfo::f32([3]),
            p3.clone(),
            p3.clone(),
            p3.clone(),
            p3.clone()
        ]),
        Shape,
        "rank"
    );
    assert_err!(
        op.infer(&[
            TensorInfo::new(DType::F64, [1, 3, 1, 1]),
            p3.clone(),
            p3.clone(),
            p3.clone(),
            p3.clone()
        ]),
        DType,
        "X must be f32"
    );
    assert!(matches!(
        try_build("SpatialBN", &[], 5, 5),
        Err(ops::OpError::Unsupported(_))
    ));
    assert!(try_build("SpatialBN", &[], 3, 1).is_err());
    assert_bad_arg!(
        try_build("SpatialBN", &[("order", s("CHWN"))], 5, 1),
        "order"
    );
    assert_bad_arg!(
        try_build("SpatialBN", &[("epsilon", f(-1.0))], 5, 1),
        "epsilon"
    );
}

/// Naive softmax over a [rows, cols] view in f64.
fn softmax_ref(x: &[f32], cols: usize) -> Vec<f32> {
    let mut out = Vec::new();
    for row in x.chunks(cols) {
        let m = row.iter().fold(f64::MIN, |a, &b| a.max(b as f64));
        let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
        let s: f64 = e.iter().sum();
        out.extend(e.iter().map(|v| (v / s) as f32));
    }
    out
}

#[test]
fn softmax_axes_and_stability() {
    let x = data(2 * 3 * 4, 3);
    let xt = t(&[2, 3, 4], x.clone());
    for (axis, cols) in [(1i64, 12usize), (2, 4), (-1, 4), (0, 24), (-3, 24)] {
        let op = build("Softmax", &[("axis", i(axis))], 1, 1);
        let y = run_ok(&*op, &[&xt]);
        assert_close(&vals(&y[0]), &softmax_ref(&x, cols), 1e-6);
    }
    // Default axis 1.
    let y = run_ok(&*build("Softmax", &[], 1, 1), &[&xt]);
    assert_close(&vals(&y[0]), &softmax_ref(&x, 12), 1e-6);
    // Large logits: exp would overflow without the max subtraction.
    let big = t(&[1, 2], vec![1000.0, 1001.0]);
    let y = vals(&run_ok(&*build("Softmax", &[], 1, 1), &[&big])[0]);
    assert_close(&y, &[0.268_941_43, 0.731_058_6], 1e-6);
    // Bad axis.
    let op = build("Softmax", &[("axis", i(3))], 1, 1);
    assert_bad_arg!(op.infer(&[xt.info()]), "axis");
    assert!(op.eval(&[&xt]).is_err());
    let op = build("Softmax", &[("axis", i(-4))], 1, 1);
    assert_bad_arg!(op.infer(&[xt.info()]), "axis");
}

/// Naive LRN on a 4-D tensor in f64: direct window sum, out-of-range channels are zero.
#[allow(clippy::too_many_arguments)]
fn lrn_ref(
    x: &[f32],
    shape: &[usize],
    nhwc: bool,
    size: usize,
    alpha: f64,
    beta: f64,
    bias: f64,
) -> (Vec<f32>, Vec<f32>) {
    let caxis = if nhwc { 3 } else { 1 };
    let c_n = shape[caxis] as i64;
    let pre = ((size - 1) / 2) as i64;
    let mut y = vec![0.0f32; x.len()];
    let mut sc = vec![0.0f32; x.len()];
    for i in 0..x.len() {
        let idx = unravel(i, shape);
        let c = idx[caxis] as i64;
        let mut sum = 0.0f64;
        for cc in (c - pre)..=(c + size as i64 - 1 - pre) {
            if cc < 0 || cc >= c_n {
                continue;
            }
            let mut j = idx.clone();
            j[caxis] = cc as usize;
            let v = x[ravel(&j, shape)] as f64;
            sum += v * v;
        }
        let s = bias + alpha / size as f64 * sum;
        sc[i] = s as f32;
        y[i] = (x[i] as f64 * s.powf(-beta)) as f32;
    }
    (y, sc)
}

#[test]
fn lrn_hand_worked_single_pixel() {
    // C = 3, size 3, alpha 3 (alpha/size = 1), beta 1, bias 1, x = [1, 2, 3]:
    // scale = [1+1+4, 1+1+4+9, 1+4+9] = [6, 15, 14], y = [1/6, 2/15, 3/14].
    let op = build(
        "LRN",
        &[
            ("size", i(3)),
            ("alpha", f(3.0)),
            ("beta", f(1.0)),
            ("bias", f(1.0)),
        ],
        1,
        2,
    );
    let y = run_ok(&*op, &[&t(&[1, 3, 1, 1], vec![1.0, 2.0, 3.0])]);
    assert_close(&vals(&y[0]), &[1.0 / 6.0, 2.0 / 15.0, 3.0 / 14.0], 1e-6);
    assert_close(&vals(&y[1]), &[6.0, 15.0, 14.0], 1e-6);
}

#[test]
fn lrn_matches_naive_nchw_and_nhwc() {
    for (order, shape) in [("NCHW", [2usize, 7, 3, 4]), ("NHWC", [2, 3, 4, 7])] {
        let n: usize = shape.iter().product();
        let x = data(n, 11);
        let xt = t(&shape, x.clone());
        for size in [1usize, 3, 5, 9] {
            let op = build(
                "LRN",
                &[
                    ("size", i(size as i64)),
                    ("alpha", f(1e-2)),
                    ("beta", f(0.75)),
                    ("bias", f(2.0)),
                    ("order", s(order)),
                ],
                1,
                2,
            );
            let y = run_ok(&*op, &[&xt]);
            let (wy, ws) = lrn_ref(&x, &shape, order == "NHWC", size, 1e-2, 0.75, 2.0);
            assert_close(&vals(&y[0]), &wy, 1e-5);
            assert_close(&vals(&y[1]), &ws, 1e-5);
        }
    }
    // Default bias 1 and single output.
    let op = build(
        "LRN",
        &[("size", i(5)), ("alpha", f(1e-4)), ("beta", f(0.75))],
        1,
        1,
    );
    let shape = [1usize, 6, 2, 2];
    let x = data(24, 5);
    let y = run_ok(&*op, &[&t(&shape, x.clone())]);
    assert_eq!(y.len(), 1);
    assert_close(
        &vals(&y[0]),
        &lrn_ref(&x, &shape, false, 5, 1e-4, 0.75, 1.0).0,
        1e-6,
    );
}

#[test]
fn lrn_errors() {
    assert_bad_arg!(try_build("LRN", &[], 1, 1), "size");
    assert_bad_arg!(try_build("LRN", &[("size", i(4))], 1, 1), "size");
    assert_bad_arg!(try_build("LRN", &[("size", i(-1))], 1, 1), "size");
    assert_bad_arg!(
        try_build("LRN", &[("size", i(3)), ("order", s("HWC"))], 1, 1),
        "order"
    );
    let op = build("LRN", &[("size", i(3))], 1, 1);
    assert_err!(op.infer(&[TensorInfo::f32([2, 3, 4])]), Shape, "4-D");
}
