//! Int8 element-wise / pooling / quantize operators, fast path vs scalar reference, on
//! ResNet-50 shapes at batch 1: Int8SumRelu [1,56,56,256], Int8MaxPool 3×3 s2 p1
//! [1,112,112,64], global Int8AveragePool [1,7,7,2048], Int8Quantize [1,224,224,3].
//!
//! The `kernel_*` groups call each kernel table this CPU can run (portable, AVX2, AVX-512)
//! directly on one thread, with preallocated outputs, on the same shapes.
//!
//! Run with `cargo bench -p c2q-ops --bench int8_eltwise`; criterion reports the input
//! elements per second. `C2Q_ISA=scalar|avx2|avx512` caps the level the operators use;
//! `RAYON_NUM_THREADS=1` measures one thread.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ndarray::{ArrayD, IxDyn};
use ops::kernels::isa::Isa;
use ops::kernels::qeltwise::{self, PoolGeom, PoolScratch, QEltwiseKernels, RealStage};
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

/// Every kernel table this CPU can run, lowest level first.
fn tables() -> Vec<&'static QEltwiseKernels> {
    [Isa::Scalar, Isa::Avx2, Isa::Avx512]
        .into_iter()
        .filter_map(qeltwise::kernels_for)
        .filter(|k| k.isa.supported())
        .collect()
}

/// One criterion group comparing the tables on `run(table)`, `elems` input elements per
/// call.
fn bench_tables(
    c: &mut Criterion,
    name: &str,
    elems: usize,
    mut run: impl FnMut(&QEltwiseKernels),
) {
    let mut g = c.benchmark_group(name);
    g.sample_size(30);
    g.throughput(Throughput::Elements(elems as u64));
    for k in tables() {
        g.bench_function(k.isa.name(), |b| b.iter(|| run(std::hint::black_box(k))));
    }
    g.finish();
}

/// Every output row of one NHWC pool (max when `avg` is `None`).
fn pool_image(
    k: &QEltwiseKernels,
    x: &[u8],
    g: &PoolGeom,
    avg: Option<(QParams, QParams)>,
    out: &mut [u8],
    s: &mut PoolScratch,
) {
    for (oy, row) in out.chunks_exact_mut(g.ow * g.c).enumerate() {
        match avg {
            None => (k.max_pool_row)(x, g, oy, row, s),
            Some((xq, yq)) => (k.avg_pool_row)(x, g, oy, xq, yq, row, s),
        }
    }
}

fn pool_geom(c: usize, hw: usize, k: usize, stride: usize, pad: usize) -> PoolGeom {
    let o = (hw + 2 * pad - k) / stride + 1;
    PoolGeom {
        c,
        ih: hw,
        iw: hw,
        oh: o,
        ow: o,
        kh: k,
        kw: k,
        sh: stride,
        sw: stride,
        pt: pad,
        pl: pad,
    }
}

fn bench_kernels(c: &mut Criterion) {
    println!(
        "kernel tables: {:?}",
        tables().iter().map(|k| k.isa.name()).collect::<Vec<_>>()
    );
    let n = 56 * 56 * 256;
    let (a, b) = (codes(n, 1), codes(n, 2));
    let (qa, qb) = (
        QParams {
            scale: 0.0413,
            zero_point: 0,
        },
        QParams {
            scale: 0.0877,
            zero_point: 128,
        },
    );
    let mut out = vec![0u8; n];
    let relu = RealStage {
        multiplier: 1.0 / 0.0731,
        zero_point: 0,
        lo: 0,
    };
    bench_tables(c, "kernel_add2_relu_802816", 2 * n, |k| {
        (k.add2)(&a, qa, &b, qb, &mut out, relu)
    });
    let third = codes(n, 3);
    let xs = [(&a[..], qa), (&b[..], qb), (&third[..], qa)];
    bench_tables(c, "kernel_sum3_802816", 3 * n, |k| {
        (k.sum_n)(&xs, &mut out, relu)
    });
    bench_tables(c, "kernel_relu_802816", n, |k| (k.relu)(&a, &mut out, 128));
    let yq = QParams {
        scale: 0.0731,
        zero_point: 3,
    };
    bench_tables(c, "kernel_requant_802816", n, |k| {
        (k.requant)(&a, qb, &mut out, yq)
    });
    let mut f = vec![0f32; n];
    bench_tables(c, "kernel_dequantize_802816", n, |k| {
        (k.dequantize)(&a, &mut f, qb)
    });
    let nq = 224 * 224 * 3;
    let v: Vec<f32> = codes(nq, 5)
        .iter()
        .map(|&c| (f32::from(c) - 120.0) * 0.0173)
        .collect();
    bench_tables(c, "kernel_quantize_150528", nq, |k| {
        (k.quantize)(&v, &mut out[..nq], 1.0 / 0.0186, 114)
    });

    let mut s = PoolScratch::default();
    for (name, g, avg) in [
        (
            "kernel_maxpool_3x3s2_112x112x64",
            pool_geom(64, 112, 3, 2, 1),
            None,
        ),
        (
            "kernel_maxpool_3x3s2_56x56x3",
            pool_geom(3, 56, 3, 2, 1),
            None,
        ),
        (
            "kernel_avgpool_global_7x7x2048",
            pool_geom(2048, 7, 7, 1, 0),
            Some((qa, yq)),
        ),
        (
            "kernel_avgpool_3x3s1_28x28x96",
            pool_geom(96, 28, 3, 1, 1),
            Some((qa, yq)),
        ),
    ] {
        let x = codes(g.image_len(), 6);
        let mut y = vec![0u8; g.oh * g.ow * g.c];
        bench_tables(c, name, x.len(), |k| {
            pool_image(k, &x, &g, avg, &mut y, &mut s)
        });
    }
}

criterion_group!(benches, bench_int8, bench_kernels);
criterion_main!(benches);
