//! Per-layer CPU time of the 53 ResNet-50 convolutions (batch 1, NCHW) on one thread.
//! Prints a table comparing the matrixmultiply backend (explicit im2col) with the packed
//! kernel (pre-packed weights, implicit im2col), measured interleaved so that load from
//! other processes affects both alike.

use ops::kernels::gemm::{set_backend_override, Backend, Kernel};
use ops::{build_op, ArgValue, Args, NodeSpec, Op, Tensor};

fn rnd(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 % 1000) as f32) / 1000.0 - 0.5)
        .collect()
}

/// CPU time of the calling thread in ns (`/proc/thread-self/schedstat`), 0 if unavailable.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// (C, M, kernel, stride, pad, input size) of the 53 ResNet-50 convolutions.
fn resnet50_convs() -> Vec<(usize, usize, usize, usize, usize, usize)> {
    let mut layers = vec![(3, 64, 7, 2, 3, 224)];
    let (mut c_in, mut size) = (64, 56);
    for (stage, &(width, blocks)) in [(64, 3), (128, 4), (256, 6), (512, 3)].iter().enumerate() {
        for blk in 0..blocks {
            let stride = if blk == 0 && stage > 0 { 2 } else { 1 };
            layers.push((c_in, width, 1, 1, 0, size));
            layers.push((width, width, 3, stride, 1, size));
            let out = size / stride;
            layers.push((width, width * 4, 1, 1, 0, out));
            if blk == 0 {
                layers.push((c_in, width * 4, 1, stride, 0, size));
            }
            c_in = width * 4;
            size = out;
        }
    }
    layers
}

/// Cache-resident GEMM (72x64 times 64x64): the practical ceiling of the microkernel.
fn peak() {
    use ops::kernels::gemm::{sgemm_with, Epilogue, MatRef, PackedLhs};
    let (m, k, n) = (72, 64, 64);
    let a = rnd(m * k);
    let b = rnd(k * n);
    let pa = PackedLhs::pack(MatRef::row_major(&a, m, k, k));
    let mut c = vec![0.0f32; m * n];
    let be = Backend::Packed(Kernel::detect());
    for _ in 0..5 {
        let c0 = thread_cpu_ns();
        let reps = 20000;
        for _ in 0..reps {
            let bm = MatRef::row_major(&b, k, n, n);
            sgemm_with(be, (&pa).into(), bm, &mut c, n, &Epilogue::none());
        }
        let ns = (thread_cpu_ns() - c0) as f64;
        println!("peak: {:.1} GFLOPS", 2.0 * (m * k * n * reps) as f64 / ns);
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let threads: usize = std::env::var("C2Q_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    // C2Q_BENCH_PACKED_ONLY=1 skips the matrixmultiply column (for profiling);
    // C2Q_BENCH_MS sets the minimum time per layer (default 600 ms).
    let packed_only = std::env::var("C2Q_BENCH_PACKED_ONLY").is_ok_and(|v| v == "1");
    let min_ms: u128 = std::env::var("C2Q_BENCH_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let backends = [Backend::MatrixMultiply, Backend::Packed(Kernel::detect())];
    if std::env::var("C2Q_BENCH_PEAK").is_ok_and(|v| v == "1") {
        peak();
        return;
    }
    let mut total = [0.0f64; 2];
    let mut total_flop = 0.0;
    println!(
        "{:>5} {:>5} {:>2} {:>2} {:>4} | {:>17} | {:>17}",
        "C", "M", "k", "s", "in", "matrixmultiply", "packed"
    );
    for (ci, m, k, s, p, sz) in resnet50_convs() {
        let mut args = Args::new();
        args.set("kernel", ArgValue::I(k as i64));
        args.set("stride", ArgValue::I(s as i64));
        args.set("pad", ArgValue::I(p as i64));
        let x = Tensor::from_f32(&[1, ci, sz, sz], rnd(ci * sz * sz));
        let w = Tensor::from_f32(&[m, ci, k, k], rnd(m * ci * k * k));
        let mut ops: Vec<Box<dyn Op>> = Vec::new();
        for be in backends {
            if packed_only && be == Backend::MatrixMultiply {
                ops.push(
                    build_op(&NodeSpec::new("Conv", args.clone(), 2, 1))
                        .unwrap()
                        .unwrap(),
                );
                continue;
            }
            set_backend_override(Some(be));
            let mut op = build_op(&NodeSpec::new("Conv", args.clone(), 2, 1))
                .unwrap()
                .unwrap();
            op.prepare(&[None, Some(&w)]).unwrap();
            ops.push(op);
        }
        // The scheduler updates the counter at ticks: sum over >= 600 ms of work. With
        // more than one thread this is the wall time instead.
        let mut spent = [0u64; 2];
        // C2Q_BENCH_MIN=1: report the fastest single run (wall time) instead of the mean,
        // which filters out preemption on a busy machine.
        let mut best = [u64::MAX; 2];
        let mut reps = 0u64;
        let w0 = std::time::Instant::now();
        pool.install(|| {
            while reps < 3 || w0.elapsed().as_millis() < min_ms {
                for (v, op) in ops.iter().enumerate() {
                    if packed_only && v == 0 {
                        continue;
                    }
                    set_backend_override(Some(backends[v]));
                    let (t0, c0) = (std::time::Instant::now(), thread_cpu_ns());
                    std::hint::black_box(op.eval(&[&x, &w]).unwrap());
                    best[v] = best[v].min(t0.elapsed().as_nanos() as u64);
                    spent[v] += if threads == 1 {
                        thread_cpu_ns() - c0
                    } else {
                        t0.elapsed().as_nanos() as u64
                    };
                }
                reps += 1;
            }
        });
        let o = (sz + 2 * p - k) / s + 1;
        let flop = 2.0 * (m * ci * k * k * o * o) as f64;
        let ms = if std::env::var("C2Q_BENCH_MIN").is_ok_and(|v| v == "1") {
            best.map(|c| c as f64 / 1e6)
        } else {
            spent.map(|c| c as f64 / reps as f64 / 1e6)
        };
        total[0] += ms[0];
        total[1] += ms[1];
        total_flop += flop;
        println!(
            "{ci:>5} {m:>5} {k:>2} {s:>2} {sz:>4} | {:>7.3} ms {:>5.1} GF | {:>7.3} ms {:>5.1} GF",
            ms[0],
            flop / ms[0] / 1e6,
            ms[1],
            flop / ms[1] / 1e6
        );
    }
    set_backend_override(None);
    let what = if threads == 1 {
        "thread CPU time"
    } else {
        "wall time"
    };
    for (v, name) in ["matrixmultiply", "packed"].iter().enumerate() {
        println!(
            "{name}: total {:.2} ms, {:.1} GFLOPS ({what}, {threads} thread(s))",
            total[v],
            total_flop / total[v] / 1e6
        );
    }
}
