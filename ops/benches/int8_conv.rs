//! Int8 convolution speed (DNNLOWP arithmetic, NHWC, batch 1, weights prepared once):
//! ResNet-50-like layers on 1 and 2 threads, all 53 ResNet-50 convolutions, the GEMM kernel
//! on a cache-resident problem, and fast vs scalar reference for one small layer.
//! Throughputs are printed as elements/s where one element is one multiply-accumulate, so
//! "Gelem/s" reads as GMAC/s.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;

use ops::kernels::qgemm::{qgemm, PackedQWeights, QEpilogue, QLayout, QMatRef};
use ops::{build_op, ArgValue, Args, NodeSpec, Op, QParams, Tensor};

fn codes(n: usize, seed: usize) -> Vec<u8> {
    (0..n)
        .map(|i| ((i * 7919 + seed * 131) % 251) as u8)
        .collect()
}

fn qu8(shape: &[usize], v: Vec<u8>, scale: f32, zero_point: i32) -> Tensor {
    Tensor::QU8(
        ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(shape), v).expect("shape"),
        QParams { scale, zero_point },
    )
}

/// One NHWC Int8ConvRelu layer: (C, H, M, kernel, stride, pad).
struct Layer {
    op: Box<dyn Op>,
    x: Tensor,
    w: Tensor,
    macs: u64,
}

fn layer(
    c: usize,
    h: usize,
    m: usize,
    k: usize,
    stride: usize,
    pad: usize,
    reference: bool,
) -> Layer {
    let mut args = Args::new();
    args.set("kernel", ArgValue::I(k as i64));
    args.set("stride", ArgValue::I(stride as i64));
    args.set("pad", ArgValue::I(pad as i64));
    args.set("order", ArgValue::S(b"NHWC".to_vec()));
    args.set("Y_scale", ArgValue::F(0.05));
    let mut spec = NodeSpec::new("Int8ConvRelu", args, 2, 1);
    spec.engine = "DNNLOWP".into();
    spec.reference = reference;
    let mut op = build_op(&spec).expect("build").expect("registered");
    let x = qu8(&[1, h, h, c], codes(h * h * c, 1), 0.02, 3);
    let w = qu8(&[m, k, k, c], codes(m * k * k * c, 2), 0.004, 128);
    op.prepare(&[None, Some(&w)]).expect("prepare");
    let o = (h + 2 * pad - k) / stride + 1;
    Layer {
        op,
        x,
        w,
        macs: (o * o * m * k * k * c) as u64,
    }
}

fn run(l: &Layer) {
    let y = l.op.eval(&[&l.x, &l.w]).expect("eval");
    std::hint::black_box(y);
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
}

/// (C, H, M, kernel, stride, pad) of the 53 ResNet-50 convolutions.
fn resnet50_convs() -> Vec<(usize, usize, usize, usize, usize, usize)> {
    let mut v = vec![(3, 224, 64, 7, 2, 3)];
    let (mut c_in, mut size) = (64, 56);
    for (stage, &(width, blocks)) in [(64, 3), (128, 4), (256, 6), (512, 3)].iter().enumerate() {
        for blk in 0..blocks {
            let stride = if blk == 0 && stage > 0 { 2 } else { 1 };
            v.push((c_in, size, width, 1, 1, 0));
            v.push((width, size, width, 3, stride, 1));
            let out = size / stride;
            v.push((width, out, width * 4, 1, 1, 0));
            if blk == 0 {
                v.push((c_in, size, width * 4, 1, stride, 0));
            }
            c_in = width * 4;
            size = out;
        }
    }
    v
}

fn bench_layers(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("int8_conv");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    let layers = [
        ("56x56x64-64_1x1", (64, 56, 64, 1, 1, 0)),
        ("56x56x64-64_3x3", (64, 56, 64, 3, 1, 1)),
        ("28x28x128-128_3x3", (128, 28, 128, 3, 1, 1)),
        ("7x7x512-2048_1x1", (512, 7, 2048, 1, 1, 0)),
    ];
    for (name, (c, h, m, k, s, p)) in layers {
        let l = layer(c, h, m, k, s, p, false);
        g.throughput(Throughput::Elements(l.macs));
        for threads in [1, 2] {
            let tp = pool(threads);
            g.bench_with_input(BenchmarkId::new(name, format!("{threads}t")), &l, |b, l| {
                tp.install(|| b.iter(|| run(l)))
            });
        }
    }
    // Fast against the scalar reference on one small layer (1 thread).
    let tp = pool(1);
    for (label, reference) in [("fast", false), ("reference", true)] {
        let l = layer(64, 14, 64, 3, 1, 1, reference);
        g.throughput(Throughput::Elements(l.macs));
        g.bench_with_input(BenchmarkId::new("14x14x64-64_3x3", label), &l, |b, l| {
            tp.install(|| b.iter(|| run(l)))
        });
    }
    g.finish();
}

fn bench_resnet50(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("int8_resnet50_convs");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(3));
    let layers: Vec<Layer> = resnet50_convs()
        .into_iter()
        .map(|(c, h, m, k, s, p)| layer(c, h, m, k, s, p, false))
        .collect();
    let macs: u64 = layers.iter().map(|l| l.macs).sum();
    g.throughput(Throughput::Elements(macs));
    for threads in [1, 2] {
        let tp = pool(threads);
        g.bench_function(BenchmarkId::new("all_53", format!("{threads}t")), |b| {
            tp.install(|| b.iter(|| layers.iter().for_each(run)))
        });
    }
    g.finish();
}

fn bench_kernel(cr: &mut Criterion) {
    // A cache-resident GEMM (96 rows, K = 256, 64 channels): the micro-kernel's ceiling, for
    // both weight layouts (small weights, so the quad layout needs no outliers).
    let (m, k, n) = (96, 256, 64);
    let x = codes(m * k, 3);
    let wc: Vec<u8> = (0..n * k).map(|i| (112 + (i * 7919) % 33) as u8).collect();
    let a = QMatRef::new(&x, m, k, k, 0).expect("view");
    let mut y = vec![0u8; m * n];
    let mut g = cr.benchmark_group("int8_qgemm");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements((m * k * n) as u64));
    let tp = pool(1);
    for layout in [QLayout::Pairs, QLayout::Quads] {
        let w = PackedQWeights::pack_with(&wc, n, k, &vec![128; n], layout).expect("pack");
        assert_eq!(w.outlier_count(), 0);
        let ep = QEpilogue::new(w.col_sums(), 3, &vec![0; n], &vec![0.001; n], 0, 0).expect("ep");
        g.bench_function(format!("96x256x64_1t_{layout:?}"), |b| {
            tp.install(|| b.iter(|| qgemm(&a, &w, &ep, &mut y, n, 0).expect("qgemm")))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_kernel, bench_layers, bench_resnet50);
criterion_main!(benches);
