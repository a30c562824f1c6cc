//! init_net fill ops: values, types, shapes, random statistics and error cases.

use crate::ops_util;

use ndarray::{ArrayD, IxDyn};
use ops::{ArgValue, DType, NodeSpec, OpError, QParams, Tensor, TensorInfo};
use ops_util::*;

fn i64t(v: Vec<i64>) -> Tensor {
    let n = v.len();
    Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[n]), v).unwrap())
}

fn fill(op: &str, args: &[(&str, ArgValue)]) -> Tensor {
    let o = build(op, args, 0, 1);
    let mut y = run_ok(&*o, &[]);
    y.remove(0)
}

fn fill_seeded(op: &str, args: &[(&str, ArgValue)], seed: u64) -> Tensor {
    let mut sp = spec(op, args, 0, 1);
    sp.seed = seed;
    let o = ops::build_op(&sp).unwrap().unwrap();
    let mut y = run_ok(&*o, &[]);
    y.remove(0)
}

fn mean_std(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / n;
    (m, var.sqrt())
}

#[test]
fn given_tensor_fills_all_types() {
    let y = fill(
        "GivenTensorFill",
        &[
            ("shape", ints(&[2, 2])),
            ("values", floats(&[1.0, 2.0, 3.0, 4.5])),
        ],
    );
    assert_eq!(y, t(&[2, 2], vec![1.0, 2.0, 3.0, 4.5]));
    let y = fill(
        "GivenTensorDoubleFill",
        &[("shape", ints(&[2])), ("values", floats(&[0.5, -1.25]))],
    );
    assert_eq!(
        y,
        Tensor::F64(ArrayD::from_shape_vec(IxDyn(&[2]), vec![0.5, -1.25]).unwrap())
    );
    let y = fill(
        "GivenTensorBoolFill",
        &[("shape", ints(&[3])), ("values", ints(&[1, 0, 1]))],
    );
    assert_eq!(
        y,
        Tensor::Bool(ArrayD::from_shape_vec(IxDyn(&[3]), vec![true, false, true]).unwrap())
    );
    let y = fill(
        "GivenTensorIntFill",
        &[
            ("shape", ints(&[1, 3])),
            ("values", ints(&[-1, 7, 2147483647])),
        ],
    );
    assert_eq!(
        y,
        Tensor::I32(ArrayD::from_shape_vec(IxDyn(&[1, 3]), vec![-1, 7, i32::MAX]).unwrap())
    );
    let y = fill(
        "GivenTensorInt64Fill",
        &[("shape", ints(&[2])), ("values", ints(&[1 << 40, -5]))],
    );
    assert_eq!(y, i64t(vec![1 << 40, -5]));
    let strs = ArgValue::Strings(vec![b"ab".to_vec(), b"".to_vec()]);
    let y = fill(
        "GivenTensorStringFill",
        &[("shape", ints(&[2])), ("values", strs)],
    );
    assert_eq!(
        y,
        Tensor::Str(ArrayD::from_shape_vec(IxDyn(&[2]), vec![b"ab".to_vec(), vec![]]).unwrap())
    );
    // Scalar: no shape means shape [] with one value.
    let y = fill("GivenTensorFill", &[("values", floats(&[3.0]))]);
    assert_eq!(y.shape(), &[] as &[usize]);
    assert_eq!(vals(&y), vec![3.0]);
    // Empty tensor with an empty values list.
    let y = fill(
        "GivenTensorFill",
        &[("shape", ints(&[0, 4])), ("values", ArgValue::Empty)],
    );
    assert_eq!(y.shape(), &[0, 4]);
}

#[test]
fn given_tensor_fill_dtype_argument() {
    // dtype INT64 (10) reads `ints`.
    let y = fill(
        "GivenTensorFill",
        &[
            ("shape", ints(&[2])),
            ("values", ints(&[3, 4])),
            ("dtype", i(10)),
        ],
    );
    assert_eq!(y, i64t(vec![3, 4]));
    // dtype by name, INT32.
    let y = fill(
        "GivenTensorFill",
        &[
            ("shape", ints(&[2])),
            ("values", ints(&[3, 4])),
            ("dtype", s("INT32")),
        ],
    );
    assert_eq!(y.dtype(), DType::I32);
    // dtype DOUBLE reads floats.
    let y = fill(
        "GivenTensorFill",
        &[
            ("shape", ints(&[1])),
            ("values", floats(&[2.5])),
            ("dtype", i(13)),
        ],
    );
    assert_eq!(y.dtype(), DType::F64);
    // dtype FLOAT explicitly.
    let y = fill(
        "GivenTensorFill",
        &[
            ("shape", ints(&[1])),
            ("values", floats(&[2.5])),
            ("dtype", i(1)),
        ],
    );
    assert_eq!(y, t(&[1], vec![2.5]));
    // Unsupported dtypes.
    assert_bad_arg!(
        try_build(
            "GivenTensorFill",
            &[("values", ints(&[1])), ("dtype", i(6))],
            0,
            1
        ),
        "dtype"
    );
    assert_bad_arg!(
        try_build(
            "GivenTensorFill",
            &[("values", ints(&[1])), ("dtype", i(0))],
            0,
            1
        ),
        "dtype"
    );
    assert_bad_arg!(
        try_build(
            "GivenTensorFill",
            &[("values", ints(&[1])), ("dtype", s("FOO"))],
            0,
            1
        ),
        "dtype"
    );
    // dtype INT64 with the values in the float field.
    assert_bad_arg!(
        try_build(
            "GivenTensorFill",
            &[("values", floats(&[1.0])), ("dtype", i(10))],
            0,
            1
        ),
        "values"
    );
}

#[test]
fn given_tensor_fill_errors() {
    // Wrong count names both numbers.
    let e = try_build(
        "GivenTensorFill",
        &[("shape", ints(&[2, 3])), ("values", floats(&[1.0; 5]))],
        0,
        1,
    );
    assert_err!(e, Shape, "5 values given but shape [2, 3] has 6 elements");
    // Missing values.
    assert_bad_arg!(
        try_build("GivenTensorFill", &[("shape", ints(&[2]))], 0, 1),
        "values"
    );
    assert_bad_arg!(
        try_build("GivenTensorIntFill", &[("shape", ints(&[1]))], 0, 1),
        "values"
    );
    // Negative shape.
    assert_bad_arg!(
        try_build(
            "GivenTensorFill",
            &[("shape", ints(&[-2])), ("values", floats(&[]))],
            0,
            1
        ),
        "shape"
    );
    // Scalar shape.
    assert_bad_arg!(try_build("ConstantFill", &[("shape", i(3))], 0, 1), "shape");
    // Out-of-range ints and bools.
    assert_bad_arg!(
        try_build(
            "GivenTensorIntFill",
            &[("shape", ints(&[1])), ("values", ints(&[1 << 33]))],
            0,
            1
        ),
        "values"
    );
    assert_bad_arg!(
        try_build(
            "GivenTensorBoolFill",
            &[("shape", ints(&[1])), ("values", ints(&[2]))],
            0,
            1
        ),
        "values"
    );
    // Values in the wrong field.
    assert_bad_arg!(
        try_build(
            "GivenTensorIntFill",
            &[("shape", ints(&[1])), ("values", floats(&[1.0]))],
            0,
            1
        ),
        "values"
    );
    // Absurd shapes are errors, not allocation failures.
    let e = try_build(
        "ConstantFill",
        &[("shape", ints(&[1 << 40, 1 << 40]))],
        0,
        1,
    );
    assert_err!(e, Shape, "more than 2^64");
    // Within usize but over the tensor limit (8 GiB by default): 60000 x 60000 floats.
    let e = try_build("ConstantFill", &[("shape", ints(&[60000, 60000]))], 0, 1);
    assert_err!(e, Shape, "C2Q_MAX_TENSOR_BYTES");
    // Arity.
    assert!(try_build("GivenTensorFill", &[("values", floats(&[1.0]))], 0, 2).is_err());
    assert!(try_build("GivenTensorFill", &[("values", floats(&[1.0]))], 2, 1).is_err());
}

#[test]
fn constant_fill_types_and_defaults() {
    // value in f -> FLOAT.
    assert_eq!(
        fill("ConstantFill", &[("shape", ints(&[2])), ("value", f(1.5))]),
        t(&[2], vec![1.5, 1.5])
    );
    // value in i -> INT64.
    assert_eq!(
        fill("ConstantFill", &[("shape", ints(&[2])), ("value", i(7))]),
        i64t(vec![7, 7])
    );
    // No value, no dtype -> FLOAT zeros.
    assert_eq!(
        fill("ConstantFill", &[("shape", ints(&[3]))]),
        t(&[3], vec![0.0; 3])
    );
    // Explicit dtypes.
    let cases: Vec<(i64, ArgValue, Tensor)> = vec![
        (1, f(2.0), t(&[2], vec![2.0, 2.0])),
        (13, f(0.5), Tensor::F64(ArrayD::from_elem(IxDyn(&[2]), 0.5))),
        (2, i(-3), Tensor::I32(ArrayD::from_elem(IxDyn(&[2]), -3))),
        (
            10,
            i(1 << 40),
            Tensor::I64(ArrayD::from_elem(IxDyn(&[2]), 1 << 40)),
        ),
        (5, i(1), Tensor::Bool(ArrayD::from_elem(IxDyn(&[2]), true))),
        (6, i(255), Tensor::U8(ArrayD::from_elem(IxDyn(&[2]), 255))),
        (7, i(-128), Tensor::I8(ArrayD::from_elem(IxDyn(&[2]), -128))),
        (
            8,
            i(65535),
            Tensor::U16(ArrayD::from_elem(IxDyn(&[2]), 65535)),
        ),
        (
            9,
            i(-300),
            Tensor::I16(ArrayD::from_elem(IxDyn(&[2]), -300)),
        ),
        (
            4,
            s("hi"),
            Tensor::Str(ArrayD::from_elem(IxDyn(&[2]), b"hi".to_vec())),
        ),
    ];
    for (code, value, want) in cases {
        let y = fill(
            "ConstantFill",
            &[("shape", ints(&[2])), ("value", value), ("dtype", i(code))],
        );
        assert_eq!(y, want, "dtype {code}");
    }
    // dtype without value: zero of that type.
    let y = fill("ConstantFill", &[("shape", ints(&[1])), ("dtype", i(2))]);
    assert_eq!(y, Tensor::I32(ArrayD::from_elem(IxDyn(&[1]), 0)));
    // Errors: bad dtype, value out of range, string value without dtype.
    assert_bad_arg!(
        try_build("ConstantFill", &[("dtype", i(11))], 0, 1),
        "dtype"
    );
    assert_bad_arg!(try_build("ConstantFill", &[("dtype", i(3))], 0, 1), "dtype");
    assert!(matches!(
        try_build("ConstantFill", &[("dtype", i(12))], 0, 1),
        Err(OpError::BadArg { .. })
    ));
    assert_bad_arg!(
        try_build("ConstantFill", &[("dtype", i(6)), ("value", i(256))], 0, 1),
        "value"
    );
    assert_bad_arg!(
        try_build("ConstantFill", &[("dtype", i(5)), ("value", i(2))], 0, 1),
        "value"
    );
    assert_bad_arg!(
        try_build("ConstantFill", &[("dtype", i(2)), ("value", f(1.5))], 0, 1),
        "value"
    );
    assert_bad_arg!(
        try_build("ConstantFill", &[("value", s("x"))], 0, 1),
        "value"
    );
}

#[test]
fn fill_shape_from_input() {
    // Input dims + extra_shape.
    let x = t(&[2, 3], data(6, 1));
    let o = build(
        "ConstantFill",
        &[("value", f(4.0)), ("extra_shape", ints(&[5]))],
        1,
        1,
    );
    let y = run_ok(&*o, &[&x]);
    assert_eq!(y[0], t(&[2, 3, 5], vec![4.0; 30]));
    // input_as_shape: the values are the shape.
    let shape = i64t(vec![3, 1, 2]);
    let mut o = build(
        "ConstantFill",
        &[("value", f(1.0)), ("input_as_shape", i(1))],
        1,
        1,
    );
    // Without prepare, infer cannot know the values; eval can.
    assert!(matches!(
        o.infer(&[shape.info()]),
        Err(OpError::Unsupported(_))
    ));
    assert_eq!(o.eval(&[&shape]).unwrap()[0].shape(), &[3, 1, 2]);
    o.prepare(&[Some(&shape)]).unwrap();
    assert_eq!(run_ok(&*o, &[&shape])[0], t(&[3, 1, 2], vec![1.0; 6]));
    // Negative values in the shape input.
    assert_err!(o.eval(&[&i64t(vec![2, -1])]), Shape, "negative");
    assert_err!(o.infer(&[TensorInfo::f32([2])]), Shape, "integer");
    // shape together with an input, extra_shape / input_as_shape without one.
    assert_bad_arg!(
        try_build("ConstantFill", &[("shape", ints(&[2]))], 1, 1),
        "shape"
    );
    assert_bad_arg!(
        try_build("ConstantFill", &[("extra_shape", ints(&[2]))], 0, 1),
        "extra_shape"
    );
    assert_bad_arg!(
        try_build("ConstantFill", &[("input_as_shape", i(1))], 0, 1),
        "input_as_shape"
    );
    // A random fill shaped like its input.
    let o = build("RangeFill", &[], 1, 1);
    assert_eq!(
        run_ok(&*o, &[&x])[0],
        t(&[2, 3], vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    );
}

#[test]
fn range_fill() {
    let y = fill("RangeFill", &[("shape", ints(&[2, 2]))]);
    assert_eq!(y, t(&[2, 2], vec![0.0, 1.0, 2.0, 3.0]));
}

#[test]
fn uniform_fills_range_determinism_and_moments() {
    let args = [
        ("shape", ints(&[100, 100])),
        ("min", f(-2.0)),
        ("max", f(6.0)),
    ];
    let a = fill_seeded("UniformFill", &args, 5);
    let b = fill_seeded("UniformFill", &args, 5);
    let c = fill_seeded("UniformFill", &args, 6);
    assert_eq!(a, b);
    assert_ne!(a, c);
    let v = vals(&a);
    assert!(v.iter().all(|&x| (-2.0..=6.0).contains(&x)));
    let (m, sd) = mean_std(&v);
    // U(-2, 6): mean 2, std 8/sqrt(12) = 2.3094.
    assert!((m - 2.0).abs() < 0.1, "mean {m}");
    assert!((sd / 2.3094 - 1.0).abs() < 0.03, "std {sd}");
    // Defaults [0, 1].
    let v = vals(&fill("UniformFill", &[("shape", ints(&[1000]))]));
    assert!(v.iter().all(|&x| (0.0..=1.0).contains(&x)));
    // Integers, closed range.
    let y = fill_seeded(
        "UniformIntFill",
        &[("shape", ints(&[5000])), ("min", i(-2)), ("max", i(2))],
        1,
    );
    assert_eq!(y.dtype(), DType::I32);
    let v = y.to_i64_vec().unwrap();
    for k in -2..=2 {
        let c = v.iter().filter(|&&x| x == k).count();
        assert!((850..1150).contains(&c), "value {k}: {c} of 5000");
    }
    assert_bad_arg!(
        try_build("UniformFill", &[("min", f(1.0)), ("max", f(1.0))], 0, 1),
        "max"
    );
    assert_bad_arg!(
        try_build("UniformIntFill", &[("min", i(3)), ("max", i(2))], 0, 1),
        "max"
    );
}

#[test]
fn gaussian_fill_moments() {
    let y = fill_seeded(
        "GaussianFill",
        &[
            ("shape", ints(&[200, 100])),
            ("mean", f(1.0)),
            ("std", f(0.5)),
        ],
        9,
    );
    let (m, sd) = mean_std(&vals(&y));
    assert!((m - 1.0).abs() < 0.02, "mean {m}");
    assert!((sd / 0.5 - 1.0).abs() < 0.03, "std {sd}");
    assert_bad_arg!(try_build("GaussianFill", &[("std", f(-1.0))], 0, 1), "std");
}

#[test]
fn xavier_and_msra_statistics() {
    // Xavier: uniform(-s, s), s = sqrt(3 / fan_in), fan_in = numel / dims[0] = 64*3*3 = 576.
    let y = fill_seeded("XavierFill", &[("shape", ints(&[128, 64, 3, 3]))], 3);
    let v = vals(&y);
    let s = (3.0f64 / 576.0).sqrt();
    assert!(v.iter().all(|&x| (x as f64).abs() <= s + 1e-7));
    let (m, sd) = mean_std(&v);
    // Uniform(-s, s) has std s / sqrt(3).
    assert!(m.abs() < 0.01 * s, "mean {m}");
    assert!((sd / (s / 3f64.sqrt()) - 1.0).abs() < 0.03, "std {sd}");
    // MSRA: normal(0, sqrt(2 / fan_out)), fan_out = numel / dims[1] = 256*3*3 = 2304.
    let y = fill_seeded("MSRAFill", &[("shape", ints(&[256, 64, 3, 3]))], 4);
    let (m, sd) = mean_std(&vals(&y));
    let want = (2.0f64 / 2304.0).sqrt();
    assert!(m.abs() < 0.02 * want, "mean {m}");
    assert!((sd / want - 1.0).abs() < 0.03, "std {sd} vs {want}");
    // Shapes they cannot use.
    assert_err!(
        try_build("MSRAFill", &[("shape", ints(&[10]))], 0, 1),
        Shape,
        "rank >= 2"
    );
    assert_err!(try_build("XavierFill", &[], 0, 1), Shape, "rank >= 1");
    // Empty shapes give empty tensors.
    assert_eq!(fill("MSRAFill", &[("shape", ints(&[0, 3]))]).len(), 0);
}

#[test]
fn int8_fills() {
    let y = fill(
        "Int8GivenTensorFill",
        &[
            ("shape", ints(&[2, 2])),
            ("values", ArgValue::S(vec![0, 128, 255, 7])),
            ("Y_scale", f(0.25)),
            ("Y_zero_point", i(128)),
        ],
    );
    let q = QParams {
        scale: 0.25,
        zero_point: 128,
    };
    assert_eq!(
        y,
        Tensor::QU8(
            ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![0, 128, 255, 7]).unwrap(),
            q
        )
    );
    // Defaults scale 1, zero point 0.
    let y = fill(
        "Int8GivenTensorFill",
        &[("shape", ints(&[1])), ("values", ArgValue::S(vec![9]))],
    );
    assert_eq!(
        y.dtype(),
        DType::QU8(QParams {
            scale: 1.0,
            zero_point: 0
        })
    );
    let y = fill(
        "Int8GivenIntTensorFill",
        &[
            ("shape", ints(&[3])),
            ("values", ints(&[-5, 0, 1 << 20])),
            ("Y_scale", f(0.01)),
        ],
    );
    let q = QParams {
        scale: 0.01,
        zero_point: 0,
    };
    assert_eq!(
        y,
        Tensor::QI32(
            ArrayD::from_shape_vec(IxDyn(&[3]), vec![-5, 0, 1 << 20]).unwrap(),
            q
        )
    );
    // Errors: count, missing, wrong field, input not allowed.
    let e = try_build(
        "Int8GivenTensorFill",
        &[("shape", ints(&[3])), ("values", ArgValue::S(vec![1, 2]))],
        0,
        1,
    );
    assert_err!(e, Shape, "2 values given but shape [3] has 3 elements");
    assert_bad_arg!(
        try_build("Int8GivenTensorFill", &[("shape", ints(&[1]))], 0, 1),
        "values"
    );
    assert_bad_arg!(
        try_build(
            "Int8GivenTensorFill",
            &[("shape", ints(&[1])), ("values", ints(&[1]))],
            0,
            1
        ),
        "values"
    );
    assert_bad_arg!(
        try_build(
            "Int8GivenIntTensorFill",
            &[("shape", ints(&[1])), ("values", ints(&[1 << 32]))],
            0,
            1
        ),
        "values"
    );
    assert!(try_build(
        "Int8GivenTensorFill",
        &[("values", ArgValue::S(vec![1]))],
        1,
        1
    )
    .is_err());
}

#[test]
fn seeds_come_from_the_spec() {
    let mut a = NodeSpec::new(
        "GaussianFill",
        ops::Args::new().with("shape", ints(&[8])),
        0,
        1,
    );
    a.seed = 123;
    let mut b = a.clone();
    b.seed = 124;
    let ya = ops::build_op(&a).unwrap().unwrap().eval(&[]).unwrap();
    let ya2 = ops::build_op(&a).unwrap().unwrap().eval(&[]).unwrap();
    let yb = ops::build_op(&b).unwrap().unwrap().eval(&[]).unwrap();
    assert_eq!(ya, ya2);
    assert_ne!(ya, yb);
    assert!(ops::fill::is_fill_op("MSRAFill") && !ops::fill::is_fill_op("Conv"));
}

#[test]
fn dtype_codes() {
    use ops::fill::dtype_from_code;
    let want = [
        (1, DType::F32),
        (2, DType::I32),
        (3, DType::U8),
        (4, DType::Str),
        (5, DType::Bool),
        (6, DType::U8),
        (7, DType::I8),
        (8, DType::U16),
        (9, DType::I16),
        (10, DType::I64),
        (13, DType::F64),
    ];
    for (c, d) in want {
        assert_eq!(dtype_from_code(c).unwrap(), d);
    }
    assert!(
        dtype_from_code(0).is_err() && dtype_from_code(11).is_err() && dtype_from_code(12).is_err()
    );
}
