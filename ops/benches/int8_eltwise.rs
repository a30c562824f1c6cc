//! Int8 element-wise / pooling / quantize operators, fast path vs scalar reference, on
//! ResNet-50 shapes at batch 1: Int8SumRelu [1,56,56,256], Int8MaxPool 3×3 s2 p1
//! [1,112,112,64], global Int8AveragePool [1,7,7,2048], Int8Quantize [1,224,224,3].
//!
//! Run with `cargo bench -p c2q-ops --bench int8_eltwise`; criterion reports the input
//! elements per second. `C2Q_ISA=scalar` selects the portable fast kernels;
//! `RAYON_NUM_THREADS=1` measures one thread.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ndarray::{ArrayD, IxDyn};
use ops::kernels::qeltwise;
use ops::{build_op, ArgValue, Args, NodeSpec, Op, QParams, Tensor};

fn codes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

fn qu8(shape: &[usize], seed: u64, q: QParams) -> Tensor {
    let n = shape.iter().product();
    Tensor::QU8(
        ArrayD::from_shape_vec(IxDyn(shape), codes(n, seed)).expect("shape"),
        q,
    )
}

fn op(ty: &str, args: &[(&str, ArgValue)], n_in: usize, reference: bool) -> Box<dyn Op> {
    let mut a = Args::new();
    for (k, v) in args {
        a.set(k, v.clone());
    }
    let mut spec = NodeSpec::new(ty, a, n_in, 1);
    spec.engine = "DNNLOWP".into();
    spec.reference = reference;
    build_op(&spec).expect("valid spec").expect("registered")
}

fn bench_case(
    c: &mut Criterion,
    name: &str,
    ty: &str,
    args: &[(&str, ArgValue)],
    inputs: &[&Tensor],
) {
    let elems: usize = inputs
        .iter()
        .map(|t| t.shape().iter().product::<usize>())
        .sum();
    let mut g = c.benchmark_group(name);
    g.sample_size(20);
    g.throughput(Throughput::Elements(elems as u64));
    for (label, reference) in [("fast", false), ("reference", true)] {
        let o = op(ty, args, inputs.len(), reference);
        g.bench_function(label, |b| {
            b.iter(|| o.eval(std::hint::black_box(inputs)).expect("eval"))
        });
    }
    g.finish();
}

fn bench_int8(c: &mut Criterion) {
    println!(
        "int8 element-wise kernels: {} (rayon threads: {})",
        qeltwise::kernels().isa.name(),
        rayon::current_num_threads()
    );
    let f = ArgValue::F;
    let i = ArgValue::I;
    let s = |v: &str| ArgValue::S(v.as_bytes().to_vec());

    let a = qu8(
        &[1, 56, 56, 256],
        1,
        QParams {
            scale: 0.0413,
            zero_point: 0,
        },
    );
    let b = qu8(
        &[1, 56, 56, 256],
        2,
        QParams {
            scale: 0.0877,
            zero_point: 0,
        },
    );
    bench_case(
        c,
        "int8_sum_relu_1x56x56x256",
        "Int8SumRelu",
        &[("Y_scale", f(0.0731)), ("Y_zero_point", i(0))],
        &[&a, &b],
    );

    let x = qu8(
        &[1, 112, 112, 64],
        3,
        QParams {
            scale: 0.06,
            zero_point: 0,
        },
    );
    bench_case(
        c,
        "int8_maxpool_3x3s2_1x112x112x64",
        "Int8MaxPool",
        &[
            ("kernel", i(3)),
            ("stride", i(2)),
            ("pad", i(1)),
            ("order", s("NHWC")),
        ],
        &[&x],
    );

    let x = qu8(
        &[1, 7, 7, 2048],
        4,
        QParams {
            scale: 0.0731,
            zero_point: 0,
        },
    );
    bench_case(
        c,
        "int8_global_avgpool_1x7x7x2048",
        "Int8AveragePool",
        &[
            ("global_pooling", i(1)),
            ("order", s("NHWC")),
            ("Y_scale", f(0.0213)),
            ("Y_zero_point", i(0)),
        ],
        &[&x],
    );

    let n = 224 * 224 * 3;
    let v: Vec<f32> = codes(n, 5)
        .iter()
        .map(|&c| (f32::from(c) - 120.0) * 0.0173)
        .collect();
    let x = Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[1, 224, 224, 3]), v).expect("shape"));
    bench_case(
        c,
        "int8_quantize_1x224x224x3",
        "Int8Quantize",
        &[("Y_scale", f(0.0186)), ("Y_zero_point", i(114))],
        &[&x],
    );
}

criterion_group!(benches, bench_int8);
criterion_main!(benches);
