//! Int8 depthwise convolution speed on the 3×3 depthwise layers of MobileNetV2 (NHWC,
//! batch 1, pad 1, weights with zero point 128 as c2q's quantizer makes them, fused ReLU):
//! median GMAC/s over `RUNS` runs (default 51) of the bare kernel at every instruction-set
//! level up to `Isa::current()` that has its own depthwise kernel, and of the whole
//! `Int8ConvRelu` operator (group = C) at the current level. One thread unless `THREADS`
//! says otherwise. `C2Q_ISA=avx2 cargo bench -p c2q-ops --bench int8_depthwise` limits the
//! table to the AVX2 kernel; `LAYER=i` runs only row `i`, `LEVEL=name` only that level,
//! `BEST=1` reports the fastest run instead of the median. Every kernel's output is checked
//! against the portable one.
//! Plain `main` (no criterion): the point is the table.

use std::time::Instant;

use ops::kernels::isa::Isa;
use ops::kernels::qdepthwise::{kernel_name, qdepthwise_with, DwShape, PackedDepthwise};
use ops::kernels::qgemm::QEpilogue;
use ops::{build_op, ArgValue, Args, NodeSpec, QParams, Tensor};

mod bench_util;
use bench_util::{aligned, codes};

/// (H = W, C, stride) of the 3×3 depthwise layers of MobileNetV2 (input size).
const LAYERS: [(usize, usize, usize); 10] = [
    (112, 32, 1),
    (112, 96, 2),
    (56, 144, 1),
    (56, 144, 2),
    (28, 192, 1),
    (28, 192, 2),
    (14, 384, 1),
    (14, 576, 1),
    (14, 576, 2),
    (7, 960, 1),
];

/// Median (with `BEST=1`: minimum) of `runs` timings of `f` in ms, after 3 warm-up calls.
fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..runs + 3)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .skip(3)
        .collect();
    t.sort_by(f64::total_cmp);
    if std::env::var_os("BEST").is_some() {
        t[0]
    } else {
        t[t.len() / 2]
    }
}

fn main() {
    let (runs, threads, pool) = bench_util::setup(51);
    let current = Isa::current();
    // One level per distinct depthwise kernel.
    let levels: Vec<Isa> = [Isa::Avx2, Isa::Avx512, Isa::Avx512Vnni]
        .into_iter()
        .filter(|l| *l <= current && Isa::capped(*l) == *l)
        .filter(|l| std::env::var("LEVEL").map_or(true, |v| v == l.name()))
        .collect();
    let stat = if std::env::var_os("BEST").is_some() {
        "best"
    } else {
        "median"
    };
    println!("ISA {current}, {threads} thread(s), {stat} of {runs} runs, GMAC/s");
    print!("{:<22} {:>6}", "layer (input, s)", "MMAC");
    for l in &levels {
        print!(" {:>11}", l.name());
    }
    println!(" {:>11}", "op (cur.)");
    let mut totals = vec![(0.0f64, 0.0f64); levels.len() + 1];
    let only: Option<usize> = std::env::var("LAYER").ok().and_then(|v| v.parse().ok());
    for (i, &(h, c, stride)) in LAYERS.iter().enumerate() {
        if only.is_some_and(|l| l != i) {
            continue;
        }
        let o = (h + 2 - 3) / stride + 1;
        let s = DwShape {
            n: 1,
            h,
            w: h,
            c,
            oh: o,
            ow: o,
            kh: 3,
            kw: 3,
            stride_h: stride,
            stride_w: stride,
            dil_h: 1,
            dil_w: 1,
            pad_t: 1,
            pad_l: 1,
        };
        let macs = (o * o * c * 9) as f64;
        let x = aligned(&codes(h * h * c, i));
        let mut x = x;
        let x = x.as_mut_slice();
        let wc = codes(c * 9, i + 50);
        let pw = PackedDepthwise::pack(&wc, c, 9, &vec![128; c]).expect("pack");
        let bias: Vec<i32> = (0..c).map(|j| (j as i32 * 37) % 2001 - 1000).collect();
        let mults: Vec<f32> = (0..c).map(|j| 0.0015 + (j % 7) as f32 * 1e-4).collect();
        let (zx, zy) = (3, 0);
        let ep = QEpilogue::new(pw.col_sums(), zx, &bias, &mults, zy, zy).expect("stage");
        let mut want = vec![0u8; o * o * c];
        qdepthwise_with(Isa::Scalar, x, zx, &s, &pw, &ep, &mut want).expect("scalar");
        let mut y = aligned(&want);
        let y = y.as_mut_slice();
        let label = format!("{h}x{h}x{c} s{stride}");
        print!("{label:<22} {:>6.2}", macs / 1e6);
        for (li, &l) in levels.iter().enumerate() {
            y.fill(0);
            qdepthwise_with(l, x, zx, &s, &pw, &ep, y).expect("run");
            assert_eq!(y, &want[..], "{l} ({}) differs", kernel_name(l, &pw));
            let ms = pool.install(|| {
                median_ms(runs, || {
                    qdepthwise_with(l, x, zx, &s, &pw, &ep, y).expect("run");
                    std::hint::black_box(&y);
                })
            });
            totals[li].0 += ms;
            totals[li].1 += macs;
            print!(" {:>11.1}", macs / ms / 1e6);
        }
        // The operator: output allocation and the per-call output stage included.
        let mut args = Args::new();
        args.set("kernel", ArgValue::I(3));
        args.set("stride", ArgValue::I(stride as i64));
        args.set("pad", ArgValue::I(1));
        args.set("group", ArgValue::I(c as i64));
        args.set("order", ArgValue::S(b"NHWC".to_vec()));
        args.set("Y_scale", ArgValue::F(0.05));
        let mut spec = NodeSpec::new("Int8ConvRelu", args, 2, 1);
        spec.engine = "DNNLOWP".into();
        let mut op = build_op(&spec).expect("build").expect("registered");
        let xt = Tensor::QU8(
            ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[1, h, h, c]), x.to_vec())
                .expect("shape"),
            QParams {
                scale: 0.02,
                zero_point: zx,
            },
        );
        let wt = Tensor::QU8(
            ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[c, 3, 3, 1]), wc).expect("shape"),
            QParams {
                scale: 0.004,
                zero_point: 128,
            },
        );
        op.prepare(&[None, Some(&wt)]).expect("prepare");
        let ms = pool.install(|| {
            median_ms(runs, || {
                std::hint::black_box(op.eval(&[&xt, &wt]).expect("eval"));
            })
        });
        let last = levels.len();
        totals[last].0 += ms;
        totals[last].1 += macs;
        println!(" {:>11.1}", macs / ms / 1e6);
    }
    print!("{:<22} {:>6}", "all (time-weighted)", "");
    for (ms, macs) in &totals {
        print!(" {:>11.1}", macs / ms / 1e6);
    }
    println!();
    let pw = PackedDepthwise::pack(&[0; 9], 1, 9, &[128]).expect("pack");
    for l in &levels {
        println!("{}: {}", l.name(), kernel_name(*l, &pw));
    }
}
