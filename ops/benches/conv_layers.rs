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
    let backends = [Backend::MatrixMultiply, Backend::Packed(Kernel::detect())];
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
        let mut reps = 0u64;
        let w0 = std::time::Instant::now();
        pool.install(|| {
            while reps < 3 || w0.elapsed().as_millis() < 600 {
                for (v, op) in ops.iter().enumerate() {
                    set_backend_override(Some(backends[v]));
                    let (t0, c0) = (std::time::Instant::now(), thread_cpu_ns());
                    std::hint::black_box(op.eval(&[&x, &w]).unwrap());
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
        let ms = spent.map(|c| c as f64 / reps as f64 / 1e6);
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
