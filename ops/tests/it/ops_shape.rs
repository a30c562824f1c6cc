//! Concat, Flatten, Reshape, Transpose, NCHW2NHWC/NHWC2NCHW, ChannelShuffle, Copy, Dropout.

use crate::ops_util;

use ndarray::{ArrayD, IxDyn};
use ops::{DType, QParams, Tensor, TensorInfo};
use ops_util::*;

fn i64t(v: Vec<i64>) -> Tensor {
    let n = v.len();
    Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[n]), v).unwrap())
}

/// Naive concat: output element at multi-index idx comes from the input whose range along
/// `axis` holds idx[axis].
fn concat_ref(xs: &[(Vec<usize>, Vec<f32>)], axis: usize) -> (Vec<usize>, Vec<f32>) {
    let mut out = xs[0].0.clone();
    out[axis] = xs.iter().map(|x| x.0[axis]).sum();
    let n: usize = out.iter().product();
    let v = (0..n)
        .map(|k| {
            let mut idx = unravel(k, &out);
            let mut which = 0;
            while idx[axis] >= xs[which].0[axis] {
                idx[axis] -= xs[which].0[axis];
                which += 1;
            }
            xs[which].1[ravel(&idx, &xs[which].0)]
        })
        .collect();
    (out, v)
}

#[test]
fn concat_along_each_axis_with_split_info() {
    for axis in 0..3usize {
        let shapes: Vec<Vec<usize>> = (0..3)
            .map(|k| {
                let mut s = vec![2, 3, 4];
                s[axis] = k + 1;
                s
            })
            .collect();
        let xs: Vec<(Vec<usize>, Vec<f32>)> = shapes
            .iter()
            .enumerate()
            .map(|(k, s)| (s.clone(), data(s.iter().product(), 30 + k as u32)))
            .collect();
        let ts: Vec<Tensor> = xs.iter().map(|(s, v)| t(s, v.clone())).collect();
        let op = build("Concat", &[("axis", i(axis as i64))], 3, 2);
        let y = run_ok(&*op, &ts.iter().collect::<Vec<_>>());
        let (shape, want) = concat_ref(&xs, axis);
        assert_eq!(y[0].shape(), &shape[..]);
        assert_eq!(vals(&y[0]), want);
        assert_eq!(
            y[1],
            Tensor::I32(ArrayD::from_shape_vec(IxDyn(&[3]), vec![1, 2, 3]).unwrap())
        );
    }
}

#[test]
fn concat_order_negative_axis_and_add_axis() {
    let a = t(&[1, 2, 2, 2], data(8, 1));
    let b = t(&[1, 1, 2, 2], data(4, 2));
    // Default order NCHW -> axis 1, single output.
    let y = run_ok(&*build("Concat", &[], 2, 1), &[&a, &b]);
    assert_eq!(y.len(), 1);
    let (sh, w) = concat_ref(
        &[(vec![1, 2, 2, 2], vals(&a)), (vec![1, 1, 2, 2], vals(&b))],
        1,
    );
    assert_eq!(y[0].shape(), &sh[..]);
    assert_eq!(vals(&y[0]), w);
    // NHWC -> axis 3.
    let a3 = t(&[1, 2, 2, 2], data(8, 3));
    let b3 = t(&[1, 2, 2, 1], data(4, 4));
    let y = run_ok(
        &*build("Concat", &[("order", s("NHWC"))], 2, 1),
        &[&a3, &b3],
    );
    let (sh, w) = concat_ref(
        &[(vec![1, 2, 2, 2], vals(&a3)), (vec![1, 2, 2, 1], vals(&b3))],
        3,
    );
    assert_eq!(y[0].shape(), &sh[..]);
    assert_eq!(vals(&y[0]), w);
    // axis -1 is the last axis.
    let y = run_ok(&*build("Concat", &[("axis", i(-1))], 2, 1), &[&a3, &b3]);
    assert_eq!(vals(&y[0]), w);
    // add_axis stacks along a new axis: [2,3] x2 at axis 1 -> [2, 2, 3].
    let p = t(&[2, 3], vec![0., 1., 2., 3., 4., 5.]);
    let q = t(&[2, 3], vec![10., 11., 12., 13., 14., 15.]);
    let y = run_ok(
        &*build("Concat", &[("axis", i(1)), ("add_axis", i(1))], 2, 2),
        &[&p, &q],
    );
    assert_eq!(y[0].shape(), &[2, 2, 3]);
    assert_eq!(
        vals(&y[0]),
        vec![0., 1., 2., 10., 11., 12., 3., 4., 5., 13., 14., 15.]
    );
    assert_eq!(y[1].to_i64_vec().unwrap(), vec![1, 1]);
    // add_axis at the new last position.
    let y = run_ok(
        &*build("Concat", &[("axis", i(2)), ("add_axis", i(1))], 2, 1),
        &[&p, &q],
    );
    assert_eq!(y[0].shape(), &[2, 3, 2]);
    assert_eq!(
        vals(&y[0]),
        vec![0., 10., 1., 11., 2., 12., 3., 13., 4., 14., 5., 15.]
    );
}

#[test]
fn concat_other_types_keep_qparams() {
    let q = QParams {
        scale: 0.5,
        zero_point: 3,
    };
    let a = Tensor::QU8(
        ArrayD::from_shape_vec(IxDyn(&[1, 2]), vec![1u8, 2]).unwrap(),
        q,
    );
    let b = Tensor::QU8(
        ArrayD::from_shape_vec(IxDyn(&[1, 1]), vec![9u8]).unwrap(),
        q,
    );
    let y = run_ok(&*build("Concat", &[("axis", i(1))], 2, 1), &[&a, &b]);
    assert_eq!(
        y[0],
        Tensor::QU8(
            ArrayD::from_shape_vec(IxDyn(&[1, 3]), vec![1u8, 2, 9]).unwrap(),
            q
        )
    );
    // Differing qparams count as differing types.
    let c = Tensor::QU8(
        ArrayD::from_shape_vec(IxDyn(&[1, 1]), vec![9u8]).unwrap(),
        QParams {
            scale: 1.0,
            zero_point: 0,
        },
    );
    assert!(build("Concat", &[("axis", i(1))], 2, 1)
        .eval(&[&a, &c])
        .is_err());
}

#[test]
fn concat_errors() {
    let op = build("Concat", &[("axis", i(1))], 2, 1);
    assert_err!(
        op.infer(&[TensorInfo::f32([2, 3, 4]), TensorInfo::f32([2, 3, 5])]),
        Shape,
        "input 0 has shape [2, 3, 4], input 1 has shape [2, 3, 5]"
    );
    assert_err!(
        op.infer(&[TensorInfo::f32([2, 3]), TensorInfo::f32([2, 3, 1])]),
        Shape,
        "input 1"
    );
    assert_err!(
        op.infer(&[TensorInfo::f32([2, 3]), TensorInfo::new(DType::I32, [2, 3])]),
        DType,
        "share"
    );
    let op = build("Concat", &[("axis", i(2))], 2, 1);
    assert_bad_arg!(
        op.infer(&[TensorInfo::f32([2, 3]), TensorInfo::f32([2, 3])]),
        "axis"
    );
    let op = build("Concat", &[("axis", i(0)), ("add_axis", i(1))], 2, 1);
    assert_err!(
        op.infer(&[TensorInfo::f32([2, 3]), TensorInfo::f32([3, 3])]),
        Shape,
        "add_axis"
    );
    assert_bad_arg!(
        try_build("Concat", &[("axis", i(1)), ("order", s("NHWC"))], 2, 1),
        "axis"
    );
    assert_bad_arg!(
        try_build("Concat", &[("axis", i(-1)), ("order", s("NHWC"))], 2, 1),
        "axis"
    );
    // Agreeing axis and order (as converted SqueezeNet nets have) are accepted.
    let op = build("Concat", &[("axis", i(3)), ("order", s("NHWC"))], 2, 1);
    let y = op.infer(&[TensorInfo::f32([1, 2, 2, 3]), TensorInfo::f32([1, 2, 2, 1])]);
    assert_eq!(y.unwrap()[0].shape, vec![1, 2, 2, 4]);
    assert_bad_arg!(try_build("Concat", &[("order", s("NCWH"))], 2, 1), "order");
    assert!(try_build("Concat", &[], 2, 3).is_err());
}

#[test]
fn flatten_axes() {
    let x = t(&[2, 3, 4, 5], data(120, 1));
    for (axis, want) in [
        (0i64, [1usize, 120]),
        (1, [2, 60]),
        (2, [6, 20]),
        (4, [120, 1]),
    ] {
        let y = run_ok(&*build("Flatten", &[("axis", i(axis))], 1, 1), &[&x]);
        assert_eq!(y[0].shape(), &want);
        assert_eq!(vals(&y[0]), vals(&x));
    }
    let y = run_ok(&*build("Flatten", &[], 1, 1), &[&x]);
    assert_eq!(y[0].shape(), &[2, 60]);
    let op = build("Flatten", &[("axis", i(5))], 1, 1);
    assert_bad_arg!(op.infer(&[x.info()]), "axis");
    assert_bad_arg!(try_build("Flatten", &[("axis", i(-1))], 1, 1), "axis");
}

#[test]
fn reshape_from_argument() {
    let x = t(&[2, 3, 4], data(24, 2));
    let cases: Vec<(Vec<i64>, Vec<usize>)> = vec![
        (vec![6, 4], vec![6, 4]),
        (vec![-1, 2], vec![12, 2]),
        (vec![0, -1], vec![2, 12]),
        (vec![0, 0, 2, 2], vec![2, 3, 2, 2]),
        (vec![24], vec![24]),
        (vec![1, -1, 1], vec![1, 24, 1]),
    ];
    for (target, want) in cases {
        let op = build("Reshape", &[("shape", ints(&target))], 1, 2);
        let y = run_ok(&*op, &[&x]);
        assert_eq!(y[0].shape(), &want[..], "{target:?}");
        assert_eq!(vals(&y[0]), vals(&x));
        assert_eq!(y[1], i64t(vec![2, 3, 4]));
    }
    // Single output form.
    let y = run_ok(&*build("Reshape", &[("shape", ints(&[4, 6]))], 1, 1), &[&x]);
    assert_eq!(y.len(), 1);
}

#[test]
fn reshape_from_input_tensor() {
    let x = t(&[2, 3, 4], data(24, 3));
    let shape = i64t(vec![4, -1]);
    let mut op = build("Reshape", &[], 2, 2);
    // Not constant: infer cannot know the values, eval can.
    assert!(matches!(
        op.infer(&[x.info(), shape.info()]),
        Err(ops::OpError::Unsupported(_))
    ));
    let y = op.eval(&[&x, &shape]).unwrap();
    assert_eq!(y[0].shape(), &[4, 6]);
    // Constant: prepare gives infer the values.
    op.prepare(&[None, Some(&shape)]).unwrap();
    let y = run_ok(&*op, &[&x, &shape]);
    assert_eq!(y[0].shape(), &[4, 6]);
    // i32 shape tensors work too.
    let s32 = Tensor::I32(ArrayD::from_shape_vec(IxDyn(&[2]), vec![3, 8]).unwrap());
    let y = op.eval(&[&x, &s32]).unwrap();
    assert_eq!(y[0].shape(), &[3, 8]);
    // A float shape tensor or a 2-D one is an error.
    assert!(op.eval(&[&x, &t(&[2], vec![4.0, 6.0])]).is_err());
    let s2d = Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[1, 2]), vec![4, 6]).unwrap());
    assert_err!(op.eval(&[&x, &s2d]), Shape, "1-D");
}

#[test]
fn reshape_errors() {
    let x = TensorInfo::f32([2, 3, 4]);
    let run = |target: &[i64]| {
        build("Reshape", &[("shape", ints(target))], 1, 1).infer(std::slice::from_ref(&x))
    };
    assert_err!(run(&[5, 5]), Shape, "24 elements");
    assert_err!(run(&[5, -1]), Shape, "multiple");
    assert_bad_arg!(run(&[-1, -1]), "shape");
    assert_bad_arg!(run(&[-2, 12]), "shape");
    assert_err!(run(&[0, 0, 0, 0]), Shape, "zero size"); // index 3 copies nothing: stays 0
    assert_bad_arg!(try_build("Reshape", &[], 1, 1), "shape");
    assert_bad_arg!(
        try_build("Reshape", &[("shape", ints(&[2]))], 2, 1),
        "shape"
    );
    assert!(try_build("Reshape", &[("shape", ints(&[2]))], 1, 3).is_err());
    // Empty input reshaped with a 0 and -1 cannot infer.
    let e = build("Reshape", &[("shape", ints(&[0, -1]))], 1, 1).infer(&[TensorInfo::f32([0, 3])]);
    assert_bad_arg!(e, "shape");
}

/// Naive transpose: out[idx] = in[idx permuted back].
fn transpose_ref(x: &[f32], shape: &[usize], axes: &[usize]) -> (Vec<usize>, Vec<f32>) {
    let out: Vec<usize> = axes.iter().map(|&a| shape[a]).collect();
    let v = (0..x.len())
        .map(|k| {
            let oi = unravel(k, &out);
            let mut ii = vec![0; shape.len()];
            for (d, &a) in axes.iter().enumerate() {
                ii[a] = oi[d];
            }
            x[ravel(&ii, shape)]
        })
        .collect();
    (out, v)
}

#[test]
fn transpose_and_order_switch() {
    let shape = [2usize, 3, 4, 5];
    let x = data(120, 4);
    let xt = t(&shape, x.clone());
    for axes in [
        vec![0usize, 2, 3, 1],
        vec![3, 2, 1, 0],
        vec![1, 0, 3, 2],
        vec![0, 1, 2, 3],
    ] {
        let ax: Vec<i64> = axes.iter().map(|&a| a as i64).collect();
        let y = run_ok(&*build("Transpose", &[("axes", ints(&ax))], 1, 1), &[&xt]);
        let (s, w) = transpose_ref(&x, &shape, &axes);
        assert_eq!(y[0].shape(), &s[..]);
        assert_eq!(vals(&y[0]), w);
    }
    // No axes: reverse.
    let y = run_ok(&*build("Transpose", &[], 1, 1), &[&xt]);
    assert_eq!(vals(&y[0]), transpose_ref(&x, &shape, &[3, 2, 1, 0]).1);
    // Order switches.
    let nhwc = run_ok(&*build("NCHW2NHWC", &[], 1, 1), &[&xt]);
    let (s, w) = transpose_ref(&x, &shape, &[0, 2, 3, 1]);
    assert_eq!(nhwc[0].shape(), &s[..]);
    assert_eq!(vals(&nhwc[0]), w);
    let back = run_ok(&*build("NHWC2NCHW", &[], 1, 1), &[&nhwc[0]]);
    assert_eq!(back[0], xt);
    // Few channels (the one-pass path, up to 8) and just past it, two images.
    for c in [1usize, 3, 8, 9] {
        let sh = [2usize, c, 5, 6];
        let xc = data(sh.iter().product(), 13);
        let y = run_ok(&*build("NCHW2NHWC", &[], 1, 1), &[&t(&sh, xc.clone())]);
        assert_eq!(
            vals(&y[0]),
            transpose_ref(&xc, &sh, &[0, 2, 3, 1]).1,
            "C = {c}"
        );
    }
    // Sizes beyond one 32x32 tile, and a non-f32 type.
    let big = [2usize, 40, 5, 7];
    let xb = data(big.iter().product(), 12);
    let y = run_ok(&*build("NCHW2NHWC", &[], 1, 1), &[&t(&big, xb.clone())]);
    assert_eq!(vals(&y[0]), transpose_ref(&xb, &big, &[0, 2, 3, 1]).1);
    let nhwc_big = [2usize, 5, 7, 40];
    let y = run_ok(
        &*build("NHWC2NCHW", &[], 1, 1),
        &[&t(&nhwc_big, xb.clone())],
    );
    assert_eq!(vals(&y[0]), transpose_ref(&xb, &nhwc_big, &[0, 3, 1, 2]).1);
    let xi =
        Tensor::I32(ArrayD::from_shape_vec(IxDyn(&[1, 3, 2]), vec![0, 1, 2, 3, 4, 5]).unwrap());
    let y = run_ok(&*build("NCHW2NHWC", &[], 1, 1), &[&xi]);
    assert_eq!(y[0].to_i64_vec().unwrap(), vec![0, 2, 4, 1, 3, 5]);
    // Hand case: NCHW [1,2,1,2] = c0:[1,2], c1:[3,4] -> NHWC [1,1,2,2] = [1,3,2,4].
    let h = t(&[1, 2, 1, 2], vec![1., 2., 3., 4.]);
    assert_eq!(
        vals(&run_ok(&*build("NCHW2NHWC", &[], 1, 1), &[&h])[0]),
        vec![1., 3., 2., 4.]
    );
    // Errors.
    let op = build("Transpose", &[("axes", ints(&[0, 1]))], 1, 1);
    assert_bad_arg!(op.infer(&[xt.info()]), "axes");
    let op = build("Transpose", &[("axes", ints(&[0, 1, 1, 2]))], 1, 1);
    assert_bad_arg!(op.infer(&[xt.info()]), "axes");
    assert_bad_arg!(
        try_build("Transpose", &[("axes", ints(&[-1, 0]))], 1, 1),
        "axes"
    );
    assert_err!(
        build("NCHW2NHWC", &[], 1, 1).infer(&[TensorInfo::f32([2, 3])]),
        Shape,
        "rank"
    );
}

#[test]
fn channel_shuffle_nchw_nhwc() {
    // Output channel k*G + g takes input channel g*K + k.
    for (order, shape) in [("NCHW", [2usize, 6, 2, 3]), ("NHWC", [2, 2, 3, 6])] {
        let caxis = if order == "NCHW" { 1 } else { 3 };
        let x = data(shape.iter().product(), 8);
        for g in [1usize, 2, 3, 6] {
            let k = 6 / g;
            let op = build(
                "ChannelShuffle",
                &[("group", i(g as i64)), ("order", s(order))],
                1,
                1,
            );
            let y = run_ok(&*op, &[&t(&shape, x.clone())]);
            let want: Vec<f32> = (0..x.len())
                .map(|o| {
                    let mut idx = unravel(o, &shape);
                    let oc = idx[caxis];
                    let (kk, gg) = (oc / g, oc % g);
                    idx[caxis] = gg * k + kk;
                    x[ravel(&idx, &shape)]
                })
                .collect();
            assert_eq!(vals(&y[0]), want, "{order} g={g}");
        }
    }
    let op = build("ChannelShuffle", &[("group", i(4))], 1, 1);
    assert_err!(
        op.infer(&[TensorInfo::f32([1, 6, 2, 2])]),
        Shape,
        "not divisible by group 4"
    );
    assert_bad_arg!(
        try_build("ChannelShuffle", &[("group", i(0))], 1, 1),
        "group"
    );
}

#[test]
fn copy_and_dropout_are_identity() {
    let x = t(&[2, 3], data(6, 9));
    assert_eq!(run_ok(&*build("Copy", &[], 1, 1), &[&x])[0], x);
    let xi = i64t(vec![1, 2, 3]);
    assert_eq!(run_ok(&*build("Copy", &[], 1, 1), &[&xi])[0], xi);
    let y = run_ok(
        &*build("Dropout", &[("ratio", f(0.5)), ("is_test", i(1))], 1, 2),
        &[&x],
    );
    assert_eq!(y[0], x);
    assert_eq!(y[1], Tensor::Bool(ArrayD::from_elem(IxDyn(&[2, 3]), true)));
    // is_test = 0 still acts as identity at inference.
    let y = run_ok(
        &*build("Dropout", &[("ratio", f(0.4)), ("is_test", i(0))], 1, 1),
        &[&x],
    );
    assert_eq!(y.len(), 1);
    assert_eq!(y[0], x);
    assert_bad_arg!(try_build("Dropout", &[("ratio", f(1.0))], 1, 1), "ratio");
    assert_bad_arg!(try_build("Dropout", &[("ratio", f(-0.1))], 1, 1), "ratio");
    assert!(try_build("Copy", &[], 2, 1).is_err());
}
