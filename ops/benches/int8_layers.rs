//! Per-layer int8 convolution speed of the 53 ResNet-50 convolutions (batch 1, NHWC, weights
//! prepared once, one thread unless `THREADS` says otherwise): median ms over `RUNS` runs
//! (default 15), GMAC/s, and totals per layer class. The kernels are those of
//! `Isa::current()`; compare levels with `C2Q_ISA=avx2|avx512vnni|amx cargo bench -p c2q-ops
//! --bench int8_layers`. Plain `main` (no criterion): the point is the table.

use std::time::Instant;

use ops::kernels::isa::Isa;
use ops::kernels::qgemm::{kernel_name, qgemm, PackedQWeights, QEpilogue, QMatRef};
use ops::{build_op, ArgValue, Args, NodeSpec, QParams, Tensor};

mod bench_util;
use bench_util::{aligned, codes};

/// Codes as an Int8 tensor starting on a 64-byte boundary, like the outputs of the Int8 ops.
fn qu8(shape: &[usize], v: Vec<u8>, scale: f32, zero_point: i32) -> Tensor {
    aligned(&v)
        .into_tensor(shape, QParams { scale, zero_point })
        .expect("shape")
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

fn main() {
    let (runs, threads, pool) = bench_util::setup(15);
    println!(
        "ISA {}, {threads} thread(s), median of {runs} runs",
        Isa::current()
    );
    // GEMM=MxKxN: the bare GEMM on a cache-resident problem (A read in place), no conv.
    if let Ok(g) = std::env::var("GEMM") {
        let d: Vec<usize> = g
            .split('x')
            .map(|v| v.parse().expect("GEMM=MxKxN"))
            .collect();
        let (m, k, n) = (d[0], d[1], d[2]);
        // A as an Int8 op's output would be: 64-byte aligned (the kernels read it in place).
        let mut x = ops::kernels::aligned::AVec::filled(m * k, 0u8);
        x.copy_from_slice(&codes(m * k, 5));
        let wc = codes(n * k, 6);
        let w = PackedQWeights::pack(&wc, n, k, &vec![128; n]).expect("pack");
        let ep = QEpilogue::new(w.col_sums(), 3, &vec![0; n], &vec![0.001; n], 0, 0).expect("ep");
        let a = QMatRef::new(&x, m, k, k, 0).expect("view");
        let mut y = vec![0u8; m * n];
        let mut t: Vec<f64> = pool.install(|| {
            (0..runs + 3)
                .map(|_| {
                    let t0 = Instant::now();
                    qgemm(&a, &w, &ep, &mut y, n, 0).expect("qgemm");
                    t0.elapsed().as_secs_f64() * 1e3
                })
                .skip(3)
                .collect()
        });
        t.sort_by(f64::total_cmp);
        let ms = t[t.len() / 2];
        println!(
            "GEMM {m}x{k}x{n} ({}): {ms:.4} ms, {:.1} GMAC/s",
            kernel_name(Isa::current(), &w),
            (m * k * n) as f64 / ms / 1e6
        );
        return;
    }
    // LAYER=i: that layer only; LAYER=a-b: layers a to b (inclusive).
    let only: Option<(usize, usize)> = std::env::var("LAYER").ok().and_then(|v| {
        let mut it = v.splitn(2, '-').map(|x| x.parse::<usize>().ok());
        let a = it.next()??;
        Some((a, it.next().flatten().unwrap_or(a)))
    });
    let mut classes: Vec<(String, f64, u64)> = Vec::new();
    let (mut total_ms, mut total_macs) = (0.0, 0u64);
    // With SEQ=1 every run executes all layers in order (as in the net: each layer's weights
    // come from memory after the others evicted them); otherwise each layer repeats alone.
    let seq = std::env::var_os("SEQ").is_some();
    let mut layers = Vec::new();
    let share = std::env::var_os("SHARE").is_some();
    let mut xs: Vec<(Vec<Vec<usize>>, Vec<Tensor>)> = Vec::new();
    for (i, (c, h, m, k, s, p)) in resnet50_convs().into_iter().enumerate() {
        if only.is_some_and(|(a, b)| i < a || i > b) {
            continue;
        }
        let mut args = Args::new();
        args.set("kernel", ArgValue::I(k as i64));
        args.set("stride", ArgValue::I(s as i64));
        args.set("pad", ArgValue::I(p as i64));
        args.set("order", ArgValue::S(b"NHWC".to_vec()));
        args.set("Y_scale", ArgValue::F(0.05));
        let o = (h + 2 * p - k) / s + 1;
        // SUM=1: the convolution fused with the Int8SumRelu that follows it in ResNet.
        let fused = std::env::var_os("SUM").is_some();
        let mut inputs = 2;
        if fused {
            args.set("sum_type", ArgValue::S(b"Int8SumRelu".to_vec()));
            args.set("sum_Y_scale", ArgValue::F(0.07));
            args.set("sum_Y_zero_point", ArgValue::I(0));
            inputs = 3;
        }
        let ty = if fused {
            "Int8ConvSumRelu"
        } else {
            "Int8ConvRelu"
        };
        let mut spec = NodeSpec::new(ty, args, inputs, 1);
        spec.engine = "DNNLOWP".into();
        let mut op = build_op(&spec).expect("build").expect("registered");
        let x = qu8(&[1, h, h, c], codes(h * h * c, 1), 0.02, 3);
        let w = qu8(&[m, k, k, c], codes(m * k * k * c, 2), 0.004, 128);
        op.prepare(&[None, Some(&w), None]).expect("prepare");
        let other = qu8(&[1, o, o, m], codes(o * o * m, 3), 0.05, 0);
        let x = if fused { vec![x, w, other] } else { vec![x, w] };
        let macs = (o * o * m * k * k * c) as u64;
        let class = format!("{k}x{k}{}", if s > 1 { " s2" } else { "" });
        let label = format!("{i:>2} {class:<7} {h:>3}x{h:<3} {c:>4}->{m:<4}");
        // SHARE=1: layers whose inputs have the same shapes read the same tensors (the
        // activations' cache footprint of a net that reuses its buffers).
        let key: Vec<Vec<usize>> = x.iter().map(|t| t.shape().to_vec()).collect();
        let xi = match xs.iter().position(|(k, _)| *k == key) {
            Some(i) if share => i,
            _ => {
                xs.push((key, x));
                xs.len() - 1
            }
        };
        layers.push((label, class, op, xi, macs));
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); layers.len()];
    pool.install(|| {
        let time = |l: &(String, String, Box<dyn ops::Op>, usize, u64)| {
            let t0 = Instant::now();
            let ins: Vec<&Tensor> = xs[l.3].1.iter().collect();
            let y = l.2.eval(&ins).expect("eval");
            std::hint::black_box(y);
            t0.elapsed().as_secs_f64() * 1e3
        };
        if seq {
            for r in 0..runs + 3 {
                for (l, t) in layers.iter().zip(times.iter_mut()) {
                    let ms = time(l);
                    if r >= 3 {
                        t.push(ms);
                    }
                }
            }
        } else {
            for (l, t) in layers.iter().zip(times.iter_mut()) {
                for r in 0..runs + 3 {
                    let ms = time(l);
                    if r >= 3 {
                        t.push(ms);
                    }
                }
            }
        }
    });
    for ((label, class, _, _, macs), mut t) in layers.iter().zip(times) {
        t.sort_by(f64::total_cmp);
        let ms = t[t.len() / 2];
        println!(
            "{label} {ms:>8.3} ms {:>7.1} GMAC/s",
            *macs as f64 / ms / 1e6
        );
        match classes.iter_mut().find(|e| e.0 == *class) {
            Some(e) => {
                e.1 += ms;
                e.2 += macs;
            }
            None => classes.push((class.clone(), ms, *macs)),
        }
        total_ms += ms;
        total_macs += macs;
    }
    for (class, ms, macs) in &classes {
        println!(
            "{class:<7} {ms:>8.3} ms {:>7.1} GMAC/s",
            *macs as f64 / ms / 1e6
        );
    }
    println!(
        "all     {total_ms:>8.3} ms {:>7.1} GMAC/s",
        total_macs as f64 / total_ms / 1e6
    );
}
