//! Sum and Add/Sub/Mul/Div (legacy and numpy broadcasting) against naive references.

use crate::ops_util;

use ndarray::{ArrayD, IxDyn};
use ops::{DType, Tensor, TensorInfo};
use ops_util::*;

fn op_fn(op: &str) -> fn(f64, f64) -> f64 {
    match op {
        "Add" => |a, b| a + b,
        "Sub" => |a, b| a - b,
        "Mul" => |a, b| a * b,
        _ => |a, b| a / b,
    }
}

/// Numpy broadcasting by multi-indices: output index -> A/B index with broadcast dims at 0.
fn numpy_ref(
    op: &str,
    a: &[f32],
    ash: &[usize],
    b: &[f32],
    bsh: &[usize],
) -> (Vec<usize>, Vec<f32>) {
    let r = ash.len().max(bsh.len());
    let pad = |s: &[usize]| -> Vec<usize> {
        let mut p = vec![1; r - s.len()];
        p.extend_from_slice(s);
        p
    };
    let (ap, bp) = (pad(ash), pad(bsh));
    let out: Vec<usize> = (0..r)
        .map(|k| if ap[k] == 1 { bp[k] } else { ap[k] })
        .collect();
    let n: usize = out.iter().product();
    let f = op_fn(op);
    let v = (0..n)
        .map(|i| {
            let idx = unravel(i, &out);
            let ai: Vec<usize> = idx
                .iter()
                .zip(&ap)
                .map(|(&x, &d)| if d == 1 { 0 } else { x })
                .collect();
            let bi: Vec<usize> = idx
                .iter()
                .zip(&bp)
                .map(|(&x, &d)| if d == 1 { 0 } else { x })
                .collect();
            f(a[ravel(&ai, &ap)] as f64, b[ravel(&bi, &bp)] as f64) as f32
        })
        .collect();
    (out, v)
}

/// Legacy broadcast the way Caffe2 describes it: pre / n / post around B's core dims.
fn legacy_ref(
    op: &str,
    a: &[f32],
    ash: &[usize],
    b: &[f32],
    bsh: &[usize],
    axis: usize,
) -> Vec<f32> {
    let start = bsh.iter().position(|&d| d != 1).unwrap_or(bsh.len());
    let end = bsh
        .iter()
        .rposition(|&d| d != 1)
        .map(|e| e + 1)
        .unwrap_or(start);
    let pre: usize = ash[..axis + start].iter().product();
    let n: usize = bsh[start..end].iter().product();
    let post: usize = ash[axis + end.max(start)..].iter().product();
    let f = op_fn(op);
    let mut out = vec![0.0f32; a.len()];
    for p in 0..pre {
        for (j, &bj) in b.iter().enumerate().take(n) {
            for q in 0..post {
                let k = (p * n + j) * post + q;
                out[k] = f(a[k] as f64, bj as f64) as f32;
            }
        }
    }
    out
}

#[test]
fn sum_of_n_inputs() {
    let shape = [2usize, 3, 4];
    let xs: Vec<Vec<f32>> = (0..4).map(|k| data(24, 20 + k)).collect();
    let ts: Vec<Tensor> = xs.iter().map(|v| t(&shape, v.clone())).collect();
    for n in 1..=4 {
        let op = build("Sum", &[], n, 1);
        let ins: Vec<&Tensor> = ts[..n].iter().collect();
        let y = run_ok(&*op, &ins);
        let want: Vec<f32> = (0..24)
            .map(|e| xs[..n].iter().map(|x| x[e]).sum())
            .collect();
        assert_close(&vals(&y[0]), &want, 1e-6);
    }
    // Integers.
    let a = Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[3]), vec![1, -2, i64::MAX]).unwrap());
    let b = Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[3]), vec![10, 20, 1]).unwrap());
    let y = run_ok(&*build("Sum", &[], 2, 1), &[&a, &b]);
    assert_eq!(y[0].to_i64_vec().unwrap(), vec![11, 18, i64::MIN]);
}

#[test]
fn sum_errors_name_shapes() {
    let op = build("Sum", &[], 2, 1);
    assert_err!(
        op.infer(&[TensorInfo::f32([2, 3]), TensorInfo::f32([3, 2])]),
        Shape,
        "input 0 is [2, 3], input 1 is [3, 2]"
    );
    assert_err!(
        op.infer(&[TensorInfo::f32([2]), TensorInfo::new(DType::I32, [2])]),
        DType,
        "share one type"
    );
    assert_err!(
        op.infer(&[
            TensorInfo::new(DType::Bool, [2]),
            TensorInfo::new(DType::Bool, [2])
        ]),
        DType,
        "f32"
    );
    assert!(op
        .eval(&[&t(&[2], vec![1.0, 2.0]), &t(&[1], vec![1.0])])
        .is_err());
    assert!(try_build("Sum", &[], 0, 1).is_err());
}

#[test]
fn binary_legacy_broadcast_matches_reference() {
    // (A shape, B shape, axis arg or None for default)
    let cases: Vec<(Vec<usize>, Vec<usize>, Option<i64>)> = vec![
        (vec![2, 3, 4, 5], vec![3], Some(1)), // Inception/DenseNet Scale: B=[C], axis 1
        (vec![2, 3, 4, 5], vec![4, 5], None), // default suffix match
        (vec![2, 3, 4, 5], vec![3, 4], Some(1)),
        (vec![2, 3, 4, 5], vec![1, 3, 1], Some(0)), // leading/trailing ones ignored
        (vec![2, 3, 4, 5], vec![2, 3, 4, 5], None), // same shape
        (vec![2, 3, 4, 5], vec![1], None),          // scalar-like
        (vec![2, 3, 4, 5], vec![5], Some(3)),
        (vec![2, 3, 4, 5], vec![], None), // rank-0 B
    ];
    for op in ["Add", "Sub", "Mul", "Div"] {
        for (ash, bsh, axis) in &cases {
            let na: usize = ash.iter().product();
            let nb: usize = bsh.iter().product();
            let a = data(na, 1);
            let b: Vec<f32> = data(nb, 2).iter().map(|v| v + 3.0).collect(); // no zeros
            let mut args = vec![("broadcast", i(1))];
            if let Some(ax) = axis {
                args.push(("axis", i(*ax)));
            }
            let o = build(op, &args, 2, 1);
            let y = run_ok(&*o, &[&t(ash, a.clone()), &t(bsh, b.clone())]);
            assert_eq!(y[0].shape(), &ash[..]);
            let ax = axis.map(|v| v as usize).unwrap_or(ash.len() - bsh.len());
            assert_close(&vals(&y[0]), &legacy_ref(op, &a, ash, &b, bsh, ax), 1e-6);
        }
    }
}

#[test]
fn binary_axis_str_selects_axis_from_order() {
    let a = data(2 * 3 * 2 * 2, 4);
    let b = vec![1.0, 10.0, 100.0];
    let o = build(
        "Mul",
        &[
            ("broadcast", i(1)),
            ("axis_str", s("C")),
            ("order", s("NCHW")),
        ],
        2,
        1,
    );
    let y = run_ok(&*o, &[&t(&[2, 3, 2, 2], a.clone()), &t(&[3], b.clone())]);
    assert_close(
        &vals(&y[0]),
        &legacy_ref("Mul", &a, &[2, 3, 2, 2], &b, &[3], 1),
        0.0,
    );
    // NHWC: C is axis 3.
    let o = build(
        "Add",
        &[
            ("broadcast", i(1)),
            ("axis_str", s("C")),
            ("order", s("NHWC")),
        ],
        2,
        1,
    );
    let y = run_ok(&*o, &[&t(&[2, 2, 2, 3], a.clone()), &t(&[3], b.clone())]);
    assert_close(
        &vals(&y[0]),
        &legacy_ref("Add", &a, &[2, 2, 2, 3], &b, &[3], 3),
        0.0,
    );
    assert_bad_arg!(
        try_build("Add", &[("broadcast", i(1)), ("axis_str", s("X"))], 2, 1),
        "axis_str"
    );
    assert_bad_arg!(
        try_build(
            "Add",
            &[("broadcast", i(1)), ("axis_str", s("C")), ("axis", i(1))],
            2,
            1
        ),
        "axis_str"
    );
}

#[test]
fn binary_numpy_broadcast_matches_reference() {
    let cases: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![2, 3, 4], vec![2, 3, 4]),
        (vec![2, 3, 4], vec![4]),
        (vec![2, 3, 4], vec![3, 1]),
        (vec![2, 1, 4], vec![3, 1]),
        (vec![1], vec![2, 3]),
        (vec![5, 1, 1, 2], vec![1, 3, 4, 1]),
        (vec![3, 1], vec![1, 4]),
        (vec![], vec![2, 2]),
        (vec![2, 2], vec![]),
        (vec![1, 1], vec![1]),
        (vec![0, 3], vec![3]),
    ];
    for op in ["Add", "Sub", "Mul", "Div"] {
        for (ash, bsh) in &cases {
            let a = data(ash.iter().product(), 5);
            let b: Vec<f32> = data(bsh.iter().product(), 6)
                .iter()
                .map(|v| v - 3.0)
                .collect();
            let o = build(op, &[], 2, 1);
            let y = run_ok(&*o, &[&t(ash, a.clone()), &t(bsh, b.clone())]);
            let (shape, want) = numpy_ref(op, &a, ash, &b, bsh);
            assert_eq!(y[0].shape(), &shape[..], "{op} {ash:?} {bsh:?}");
            assert_close(&vals(&y[0]), &want, 1e-6);
        }
    }
}

#[test]
fn binary_integer_and_double_types() {
    let a = Tensor::I32(ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![7, -7, i32::MAX, 9]).unwrap());
    let b = Tensor::I32(ArrayD::from_shape_vec(IxDyn(&[2]), vec![2, 1]).unwrap());
    let div = run_ok(&*build("Div", &[], 2, 1), &[&a, &b]);
    assert_eq!(
        div[0].to_i64_vec().unwrap(),
        vec![3, -7, i32::MAX as i64 / 2, 9]
    );
    let add = run_ok(&*build("Add", &[], 2, 1), &[&a, &b]);
    assert_eq!(
        add[0].to_i64_vec().unwrap(),
        vec![9, -6, i32::MIN as i64 + 1, 10]
    );
    let zero = Tensor::I32(ArrayD::from_shape_vec(IxDyn(&[2]), vec![2, 0]).unwrap());
    assert_bad_arg!(build("Div", &[], 2, 1).eval(&[&a, &zero]), "B");
    let a = Tensor::F64(ArrayD::from_shape_vec(IxDyn(&[2]), vec![1.5, 2.0]).unwrap());
    let b = Tensor::F64(ArrayD::from_shape_vec(IxDyn(&[1]), vec![0.5]).unwrap());
    match &run_ok(&*build("Sub", &[], 2, 1), &[&a, &b])[0] {
        Tensor::F64(y) => assert_eq!(y.iter().copied().collect::<Vec<_>>(), vec![1.0, 1.5]),
        other => panic!("expected f64, got {other:?}"),
    }
    // Float division by zero follows IEEE.
    let y = run_ok(
        &*build("Div", &[], 2, 1),
        &[&t(&[2], vec![1.0, 0.0]), &t(&[1], vec![0.0])],
    );
    let y = vals(&y[0]);
    assert!(y[0].is_infinite() && y[1].is_nan());
}

#[test]
fn binary_errors_name_shapes() {
    let legacy = build("Add", &[("broadcast", i(1)), ("axis", i(1))], 2, 1);
    assert_err!(
        legacy.infer(&[TensorInfo::f32([2, 3, 4]), TensorInfo::f32([4])]),
        Shape,
        "B dim 0 is 4"
    );
    assert_err!(
        legacy.infer(&[TensorInfo::f32([3]), TensorInfo::f32([2, 3])]),
        Shape,
        "rank"
    );
    let far = build("Add", &[("broadcast", i(1)), ("axis", i(3))], 2, 1);
    assert_bad_arg!(
        far.infer(&[TensorInfo::f32([2, 3, 4]), TensorInfo::f32([4])]),
        "axis"
    );
    let np = build("Mul", &[], 2, 1);
    assert_err!(
        np.infer(&[TensorInfo::f32([2, 3]), TensorInfo::f32([4, 3, 2])]),
        Shape,
        "cannot broadcast A [2, 3] with B [4, 3, 2]"
    );
    assert!(np
        .eval(&[&t(&[2, 3], data(6, 1)), &t(&[2], data(2, 1))])
        .is_err());
    assert_err!(
        np.infer(&[TensorInfo::f32([2]), TensorInfo::new(DType::I64, [2])]),
        DType,
        "one type"
    );
    assert_bad_arg!(try_build("Add", &[("broadcast", i(2))], 2, 1), "broadcast");
    assert_bad_arg!(
        try_build("Add", &[("broadcast", i(1)), ("axis", i(-2))], 2, 1),
        "axis"
    );
    assert!(try_build("Add", &[], 1, 1).is_err());
}

#[test]
fn binary_large_nchw_scale_is_exact() {
    // The Inception/DenseNet pattern on a realistic size: Y = X * s[c] + b[c].
    let shape = [2usize, 32, 28, 28];
    let n: usize = shape.iter().product();
    let x = data(n, 9);
    let sc = data(32, 10);
    let bi = data(32, 11);
    let mul = build("Mul", &[("broadcast", i(1)), ("axis", i(1))], 2, 1);
    let add = build("Add", &[("broadcast", i(1)), ("axis", i(1))], 2, 1);
    let y = run_ok(&*mul, &[&t(&shape, x.clone()), &t(&[32], sc.clone())]);
    let y = run_ok(&*add, &[&y[0], &t(&[32], bi.clone())]);
    let want: Vec<f32> = (0..n)
        .map(|k| {
            let c = unravel(k, &shape)[1];
            x[k] * sc[c] + bi[c]
        })
        .collect();
    assert_eq!(vals(&y[0]), want);
}
