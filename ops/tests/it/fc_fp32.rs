//! fp32 FC / FCTransposed against naive loops written here.

use ops::{build_op, ArgValue, Args, NodeSpec, Op, OpError, Tensor, TensorInfo};

use crate::ops_util;
use ops_util::rnd;

fn build(op: &str, args: &[(&str, ArgValue)]) -> Box<dyn Op> {
    let mut a = Args::new();
    for (k, v) in args {
        a.set(k, v.clone());
    }
    build_op(&NodeSpec::new(op, a, 3, 1))
        .expect("builds")
        .expect("known op")
}

fn run(op: &dyn Op, inputs: &[&Tensor]) -> Tensor {
    let infos: Vec<TensorInfo> = inputs.iter().map(|t| t.info()).collect();
    let inferred = op.infer(&infos).expect("infer");
    let y = op.eval(inputs).expect("eval").remove(0);
    assert_eq!(inferred[0], y.info());
    y
}

/// y[i][j] = b[j] + Σ_p x[i][p] · w(j, p), with `w_at(j, p)` giving the weight.
fn reference(
    m: usize,
    k: usize,
    n: usize,
    x: &[f32],
    w_at: impl Fn(usize, usize) -> f32,
    b: &[f32],
) -> Vec<f32> {
    let mut y = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = b[j] as f64;
            for p in 0..k {
                s += x[i * k + p] as f64 * w_at(j, p) as f64;
            }
            y[i * n + j] = s as f32;
        }
    }
    y
}

fn close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
            "{i}: got {a} want {b}"
        );
    }
}

#[test]
fn hand_worked() {
    // X [[1,2],[3,4]], W [[1,0],[1,1],[0,2]] (N=3, K=2), b [1,2,3].
    let x = Tensor::from_f32(&[2, 2], vec![1., 2., 3., 4.]);
    let w = Tensor::from_f32(&[3, 2], vec![1., 0., 1., 1., 0., 2.]);
    let b = Tensor::from_f32(&[3], vec![1., 2., 3.]);
    let y = run(build("FC", &[]).as_ref(), &[&x, &w, &b]);
    assert_eq!(y.shape(), &[2, 3]);
    assert_eq!(y.f32_slice().unwrap(), &[2., 5., 7., 4., 9., 11.]);
    // Same product with FCTransposed and W stored [K, N].
    let wt = Tensor::from_f32(&[2, 3], vec![1., 1., 0., 0., 1., 2.]);
    let y = run(build("FCTransposed", &[]).as_ref(), &[&x, &wt, &b]);
    assert_eq!(y.f32_slice().unwrap(), &[2., 5., 7., 4., 9., 11.]);
}

#[test]
fn flattening_axis() {
    // X [2, 3, 4, 5] axis 1 -> M 2, K 60; axis 2 -> M 6, K 20, Y [2, 3, N].
    let x = rnd(120, 1);
    let xt = Tensor::from_f32(&[2, 3, 4, 5], x.clone());
    let w = rnd(7 * 60, 2);
    let b = rnd(7, 3);
    let y = run(
        build("FC", &[]).as_ref(),
        &[
            &xt,
            &Tensor::from_f32(&[7, 60], w.clone()),
            &Tensor::from_f32(&[7], b.clone()),
        ],
    );
    assert_eq!(y.shape(), &[2, 7]);
    close(
        y.f32_slice().unwrap(),
        &reference(2, 60, 7, &x, |j, p| w[j * 60 + p], &b),
    );

    let w2 = rnd(7 * 20, 4);
    let y = run(
        build("FC", &[("axis", ArgValue::I(2))]).as_ref(),
        &[
            &xt,
            &Tensor::from_f32(&[7, 4, 5], w2.clone()),
            &Tensor::from_f32(&[7], b.clone()),
        ],
    );
    assert_eq!(y.shape(), &[2, 3, 7]);
    close(
        y.f32_slice().unwrap(),
        &reference(6, 20, 7, &x, |j, p| w2[j * 20 + p], &b),
    );
    // Negative axis: -2 on rank 4 is axis 2.
    let y2 = run(
        build("FC", &[("axis", ArgValue::I(-2))]).as_ref(),
        &[
            &xt,
            &Tensor::from_f32(&[7, 20], w2.clone()),
            &Tensor::from_f32(&[7], b),
        ],
    );
    assert_eq!(y2.shape(), &[2, 3, 7]);
    assert_eq!(y.f32_slice().unwrap(), y2.f32_slice().unwrap());
}

#[test]
fn axis_w_caffe1_style() {
    // W [1, 1, 10, 12] with axis_w = 3: N = 10, K = 12.
    let x = rnd(4 * 12, 5);
    let w = rnd(120, 6);
    let b = rnd(10, 7);
    let op = build("FC", &[("axis_w", ArgValue::I(3))]);
    let y = run(
        op.as_ref(),
        &[
            &Tensor::from_f32(&[4, 12], x.clone()),
            &Tensor::from_f32(&[1, 1, 10, 12], w.clone()),
            &Tensor::from_f32(&[10], b.clone()),
        ],
    );
    assert_eq!(y.shape(), &[4, 10]);
    close(
        y.f32_slice().unwrap(),
        &reference(4, 12, 10, &x, |j, p| w[j * 12 + p], &b),
    );
    // X given as [4, 3, 2, 2] flattens to K = 12 too.
    let y2 = run(
        op.as_ref(),
        &[
            &Tensor::from_f32(&[4, 3, 2, 2], x),
            &Tensor::from_f32(&[1, 1, 10, 12], w),
            &Tensor::from_f32(&[10], b),
        ],
    );
    assert_eq!(y, y2);
}

#[test]
fn fc_transposed_larger() {
    // M 33, K 70, N 130; W stored [K, N].
    let (m, k, n) = (33, 70, 130);
    let x = rnd(m * k, 8);
    let w = rnd(k * n, 9);
    let b = rnd(n, 10);
    let y = run(
        build("FCTransposed", &[]).as_ref(),
        &[
            &Tensor::from_f32(&[m, k], x.clone()),
            &Tensor::from_f32(&[k, n], w.clone()),
            &Tensor::from_f32(&[n], b.clone()),
        ],
    );
    assert_eq!(y.shape(), &[m, n]);
    close(
        y.f32_slice().unwrap(),
        &reference(m, k, n, &x, |j, p| w[p * n + j], &b),
    );
}

#[test]
fn prepared_weights_give_the_same_result() {
    for (name, wshape) in [("FC", [30usize, 50]), ("FCTransposed", [50, 30])] {
        for m in [1usize, 7] {
            let x = Tensor::from_f32(&[m, 50], rnd(m * 50, 20));
            let w = Tensor::from_f32(&wshape, rnd(1500, 21));
            let b = Tensor::from_f32(&[30], rnd(30, 22));
            let mut op = build(name, &[]);
            let plain = run(op.as_ref(), &[&x, &w, &b]);
            op.prepare(&[None, Some(&w), Some(&b)]).unwrap();
            let prepared = run(op.as_ref(), &[&x, &w, &b]);
            assert_eq!(plain, prepared, "{name} m={m}");
            let (xs, ws, bs) = (
                x.f32_slice().unwrap(),
                w.f32_slice().unwrap(),
                b.f32_slice().unwrap(),
            );
            let want = if name == "FC" {
                reference(m, 50, 30, xs, |j, p| ws[j * 50 + p], bs)
            } else {
                reference(m, 50, 30, xs, |j, p| ws[p * 30 + j], bs)
            };
            close(prepared.f32_slice().unwrap(), &want);
            // A W of another shape than the prepared one still works (falls back).
            let w2 = Tensor::from_f32(&[30, 5, 10], rnd(1500, 23));
            if name == "FC" {
                let op2 = build(name, &[("axis_w", ArgValue::I(1))]);
                let y = run(op2.as_ref(), &[&x, &w2, &b]);
                let ws2 = w2.f32_slice().unwrap();
                close(
                    y.f32_slice().unwrap(),
                    &reference(m, 50, 30, xs, |j, p| ws2[j * 50 + p], bs),
                );
                let y = run(op.as_ref(), &[&x, &w2, &b]);
                close(
                    y.f32_slice().unwrap(),
                    &reference(m, 50, 30, xs, |j, p| ws2[j * 50 + p], bs),
                );
            }
        }
    }
}

#[test]
fn threads_do_not_change_bits() {
    // ResNet-50 classifier shape at batch 4: 2048 -> 1000.
    let x = Tensor::from_f32(&[4, 2048], rnd(4 * 2048, 11));
    let w = Tensor::from_f32(&[1000, 2048], rnd(1000 * 2048, 12));
    let b = Tensor::from_f32(&[1000], rnd(1000, 13));
    let op = build("FC", &[]);
    let with = |t: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .unwrap();
        pool.install(|| op.eval(&[&x, &w, &b]).unwrap().remove(0))
    };
    let y1 = with(1);
    assert_eq!(y1, with(2));
    let xs = x.f32_slice().unwrap();
    let ws = w.f32_slice().unwrap();
    close(
        y1.f32_slice().unwrap(),
        &reference(
            4,
            2048,
            1000,
            xs,
            |j, p| ws[j * 2048 + p],
            b.f32_slice().unwrap(),
        ),
    );
}

#[test]
fn errors() {
    let op = build("FC", &[]);
    let e = op
        .infer(&[
            TensorInfo::f32(vec![2, 12]),
            TensorInfo::f32(vec![10, 11]),
            TensorInfo::f32(vec![10]),
        ])
        .unwrap_err();
    assert!(
        matches!(&e, OpError::Shape(m) if m.contains("[2, 12]") && m.contains("[10, 11]")),
        "{e:?}"
    );
    let e = op
        .infer(&[
            TensorInfo::f32(vec![2, 12]),
            TensorInfo::f32(vec![10, 12]),
            TensorInfo::f32(vec![9]),
        ])
        .unwrap_err();
    assert!(matches!(e, OpError::Shape(_)));
    let op = build("FC", &[("axis", ArgValue::I(2))]);
    let e = op
        .infer(&[
            TensorInfo::f32(vec![2, 12]),
            TensorInfo::f32(vec![10, 12]),
            TensorInfo::f32(vec![10]),
        ])
        .unwrap_err();
    assert!(
        matches!(e, OpError::BadArg { ref name, .. } if name == "axis"),
        "{e:?}"
    );
    let mut a = Args::new();
    a.set("axis", ArgValue::I(1));
    assert!(matches!(
        build_op(&NodeSpec::new("FC", a, 2, 1)),
        Err(OpError::Arity(_))
    ));
    let xi = Tensor::I32(ndarray::ArrayD::zeros(ndarray::IxDyn(&[2, 12])));
    let w = Tensor::zeros_f32(&[10, 12]);
    let b = Tensor::zeros_f32(&[10]);
    assert!(matches!(
        build("FC", &[]).eval(&[&xi, &w, &b]),
        Err(OpError::DType(_))
    ));
}
