//! GEMM and conv benchmarks: typical ResNet-50 GEMM shapes and every ResNet-50 conv at
//! batch 1 (NCHW, 224×224), run with the global rayon pool.

use criterion::{criterion_group, criterion_main, Criterion};
use std::time::{Duration, Instant};

use ops::kernels::gemm::{sgemm_with, Backend, Epilogue, Kernel, Lhs, MatRef, PackedLhs};
use ops::{build_op, ArgValue, Args, NodeSpec, Op, Tensor};

fn rnd(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 % 1000) as f32) / 1000.0 - 0.5)
        .collect()
}

/// (C, M, kernel, stride, pad, input size) of the 53 ResNet-50 convolutions.
fn resnet50_convs() -> Vec<(usize, usize, usize, usize, usize, usize)> {
    let mut v = vec![(3, 64, 7, 2, 3, 224)];
    let mut c_in = 64;
    let mut size = 56;
    for (stage, &(width, blocks)) in [(64, 3), (128, 4), (256, 6), (512, 3)].iter().enumerate() {
        for blk in 0..blocks {
            let stride = if blk == 0 && stage > 0 { 2 } else { 1 };
            v.push((c_in, width, 1, 1, 0, size));
            v.push((width, width, 3, stride, 1, size));
            let out_size = size / stride;
            v.push((width, width * 4, 1, 1, 0, out_size));
            if blk == 0 {
                v.push((c_in, width * 4, 1, stride, 0, size));
            }
            c_in = width * 4;
            size = out_size;
        }
    }
    v
}

/// CPU time of the calling thread (ns), from `/proc/thread-self/schedstat`; falls back to
/// wall time where that file does not exist. The machine is shared, so single-threaded
/// kernels are compared by CPU time rather than wall time.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// CPU time of the whole process (ns, 10 ms resolution) from `/proc/self/stat`.
fn process_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 10_000_000)
}

fn cpu_time<F: FnMut()>(iters: u64, mut f: F) -> Duration {
    let t0 = thread_cpu_ns();
    let w0 = Instant::now();
    for _ in 0..iters {
        f();
    }
    match (t0, thread_cpu_ns()) {
        (Some(a), Some(b)) => Duration::from_nanos(b - a),
        _ => w0.elapsed(),
    }
}

fn bench_gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("sgemm_1thread_cpu_time");
    g.sample_size(10);
    let simd = Backend::Packed(Kernel::detect());
    for &(m, k, n) in &[
        (64, 147, 12544),
        (256, 2304, 196),
        (2048, 512, 49),
        (128, 1152, 784),
    ] {
        let a = rnd(m * k);
        let b = rnd(k * n);
        let mut out = vec![0.0f32; m * n];
        let am = MatRef::row_major(&a, m, k, k);
        let bm = MatRef::row_major(&b, k, n, n);
        let packed = PackedLhs::pack(am);
        for (name, backend, pre) in [
            ("matrixmultiply", Backend::MatrixMultiply, false),
            ("packed", simd, false),
            ("prepacked", simd, true),
        ] {
            g.bench_function(format!("{m}x{k}x{n}/{name}"), |bch| {
                bch.iter_custom(|iters| {
                    cpu_time(iters, || {
                        let lhs: Lhs = if pre { (&packed).into() } else { am.into() };
                        sgemm_with(backend, lhs, bm, &mut out, n, &Epilogue::none())
                    })
                })
            });
        }
    }
    g.finish();
}

fn bench_resnet(c: &mut Criterion) {
    let layers: Vec<(Box<dyn Op>, Tensor, Tensor)> = resnet50_convs()
        .into_iter()
        .map(|(ci, m, k, s, p, size)| {
            let mut args = Args::new();
            args.set("kernel", ArgValue::I(k as i64));
            args.set("stride", ArgValue::I(s as i64));
            args.set("pad", ArgValue::I(p as i64));
            let mut op = build_op(&NodeSpec::new("Conv", args, 2, 1))
                .unwrap()
                .unwrap();
            let x = Tensor::from_f32(&[1, ci, size, size], rnd(ci * size * size));
            let w = Tensor::from_f32(&[m, ci, k, k], rnd(m * ci * k * k));
            op.prepare(&[None, Some(&w)]).unwrap();
            (op, x, w)
        })
        .collect();
    let mut g = c.benchmark_group("resnet50");
    g.sample_size(10);
    let run = || {
        for (op, x, w) in &layers {
            criterion::black_box(op.eval(&[x, w]).unwrap());
        }
    };
    g.bench_function("all_53_convs_batch1_wall", |b| b.iter(run));
    g.bench_function("all_53_convs_batch1_process_cpu", |b| {
        b.iter_custom(|iters| {
            let t0 = process_cpu_ns();
            let w0 = Instant::now();
            for _ in 0..iters {
                run();
            }
            match (t0, process_cpu_ns()) {
                (Some(a), Some(b)) => Duration::from_nanos(b - a),
                _ => w0.elapsed(),
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench_gemm, bench_resnet);
criterion_main!(benches);
