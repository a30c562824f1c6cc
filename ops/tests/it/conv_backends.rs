//! The matrixmultiply backend (explicit im2col, unpacked weights, FC as X·Wᵀ) agrees with
//! the packed backend, which the other test files check against naive references.
//!
//! The backend override is process-wide, so everything runs in one test function.

use ops::kernels::gemm::{set_backend_override, Backend, Kernel};

use crate::ops_util;
use ops::{build_op, ArgValue, Args, NodeSpec, Tensor};
use ops_util::rnd;

fn eval(op: &str, args: &[(&str, ArgValue)], inputs: &[&Tensor], prepare: bool) -> Vec<f32> {
    let mut a = Args::new();
    for (k, v) in args {
        a.set(k, v.clone());
    }
    let mut op = build_op(&NodeSpec::new(op, a, inputs.len(), 1))
        .unwrap()
        .unwrap();
    if prepare {
        let consts: Vec<Option<&Tensor>> = inputs
            .iter()
            .enumerate()
            .map(|(i, t)| (i > 0).then_some(*t))
            .collect();
        op.prepare(&consts).unwrap();
    }
    op.eval(inputs)
        .unwrap()
        .remove(0)
        .f32_slice()
        .unwrap()
        .to_vec()
}

/// Arguments, X shape, W shape.
type ConvCase = (Vec<(&'static str, ArgValue)>, Vec<usize>, Vec<usize>);

#[test]
fn backends_agree() {
    let nhwc = ArgValue::S(b"NHWC".to_vec());
    let conv_cases: Vec<ConvCase> = vec![
        (
            vec![("kernel", ArgValue::I(3)), ("pad", ArgValue::I(1))],
            vec![2, 5, 9, 8],
            vec![7, 5, 3, 3],
        ),
        (
            vec![
                ("kernel_h", ArgValue::I(3)),
                ("kernel_w", ArgValue::I(2)),
                ("stride", ArgValue::I(2)),
                ("pads", ArgValue::Ints(vec![0, 1, 2, 1])),
                ("dilation", ArgValue::I(1)),
            ],
            vec![1, 4, 11, 10],
            vec![6, 4, 3, 2],
        ),
        (
            vec![("kernel", ArgValue::I(3)), ("dilation", ArgValue::I(2))],
            vec![1, 3, 12, 12],
            vec![4, 3, 3, 3],
        ),
        (
            vec![("kernel", ArgValue::I(1)), ("group", ArgValue::I(2))],
            vec![1, 8, 6, 6],
            vec![6, 4, 1, 1],
        ),
        (
            vec![
                ("kernel", ArgValue::I(7)),
                ("stride", ArgValue::I(2)),
                ("pad", ArgValue::I(3)),
            ],
            vec![1, 3, 40, 40],
            vec![16, 3, 7, 7],
        ),
        (
            vec![
                ("kernel", ArgValue::I(3)),
                ("pad", ArgValue::I(1)),
                ("order", nhwc.clone()),
            ],
            vec![2, 9, 8, 5],
            vec![7, 3, 3, 5],
        ),
        (
            vec![("kernel", ArgValue::I(1)), ("order", nhwc)],
            vec![1, 6, 6, 8],
            vec![12, 1, 1, 8],
        ),
    ];
    let mm = Backend::MatrixMultiply;
    let packed = Backend::Packed(Kernel::detect());
    let close = |a: &[f32], b: &[f32], what: &str| {
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                "{what}: {i}: {x} vs {y}"
            );
        }
    };
    for (seed, (args, xs, ws)) in conv_cases.iter().enumerate() {
        let x = Tensor::from_f32(xs, rnd(xs.iter().product(), seed as u64));
        let w = Tensor::from_f32(ws, rnd(ws.iter().product(), seed as u64 + 100));
        let b = Tensor::from_f32(&ws[..1], rnd(ws[0], seed as u64 + 200));
        for prepare in [false, true] {
            set_backend_override(Some(mm));
            let y_mm = eval("ConvRelu", args, &[&x, &w, &b], prepare);
            set_backend_override(Some(packed));
            let y_pk = eval("ConvRelu", args, &[&x, &w, &b], prepare);
            close(&y_mm, &y_pk, &format!("conv {args:?} prepare={prepare}"));
        }
    }
    // FC / FCTransposed at batch 1 and 5.
    for (name, wshape) in [("FC", [20usize, 24]), ("FCTransposed", [24, 20])] {
        for m in [1usize, 5] {
            let x = Tensor::from_f32(&[m, 24], rnd(m * 24, 300));
            let w = Tensor::from_f32(&wshape, rnd(480, 301));
            let b = Tensor::from_f32(&[20], rnd(20, 302));
            for prepare in [false, true] {
                set_backend_override(Some(mm));
                let y_mm = eval(name, &[], &[&x, &w, &b], prepare);
                set_backend_override(Some(packed));
                let y_pk = eval(name, &[], &[&x, &w, &b], prepare);
                close(&y_mm, &y_pk, &format!("{name} m={m} prepare={prepare}"));
            }
        }
    }
    // The hand-worked dilated conv on the matrixmultiply path.
    set_backend_override(Some(mm));
    let x = Tensor::from_f32(&[1, 1, 3, 3], (0..9).map(|v| v as f32).collect());
    let w = Tensor::from_f32(&[1, 1, 2, 2], vec![1.0; 4]);
    let b = Tensor::from_f32(&[1], vec![2.0]);
    let args = [
        ("kernel", ArgValue::I(2)),
        ("pad", ArgValue::I(1)),
        ("dilations", ArgValue::Ints(vec![2, 2])),
    ];
    assert_eq!(
        eval("Conv", &args, &[&x, &w, &b], true),
        vec![6.0, 10.0, 6.0, 10.0, 18.0, 10.0, 6.0, 10.0, 6.0]
    );
    set_backend_override(None);
}
