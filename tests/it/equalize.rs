//! Cross-layer equalization: the fp32 function is preserved, each pair's channel ranges meet
//! at √(r1·r2), and per-tensor weight quantization gets better.

use std::collections::HashMap;

use c2q::graph::builder::{Arg, NetBuilder};
use c2q::passes::equalize::equalize;
use c2q::{Executor, Model};
use ops::Tensor;

/// Deterministic values in [-1, 1].
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// Weights of `m` output channels of `per` values each, channel c scaled by 10^(c % 3 − 1).
fn imbalanced(m: usize, per: usize, seed: u64) -> Vec<f32> {
    let mut v = values(m * per, seed);
    for (c, chunk) in v.chunks_mut(per).enumerate() {
        let f = 10f32.powi((c % 3) as i32 - 1);
        chunk.iter_mut().for_each(|x| *x *= f);
    }
    v
}

fn run(model: &Model, x: &[f32], shape: &[usize], out: &str) -> Vec<f32> {
    let exec = Executor::new(model, 1).unwrap();
    let feed = HashMap::from([("data".to_string(), Tensor::from_f32(shape, x.to_vec()))]);
    exec.run(feed).unwrap()[out].f32_slice().unwrap().to_vec()
}

fn max_abs_per_row(v: &[f32], rows: usize) -> Vec<f32> {
    let per = v.len() / rows;
    v.chunks(per)
        .map(|c| c.iter().fold(0f32, |a, x| a.max(x.abs())))
        .collect()
}

#[test]
fn one_pair_meets_at_the_geometric_mean_and_keeps_the_function() {
    // Conv 2 -> 3 channels (1x1) + Relu, then Conv 3 -> 2 (1x1).
    let w1 = vec![4.0, -2.0, 0.1, 0.05, -1.0, 1.0];
    let w2 = vec![0.5, 1.0, -8.0, -0.25, 2.0, 4.0];
    let mut b = NetBuilder::new("pair");
    b.input("data")
        .param("w1", &[3, 2, 1, 1], w1.clone())
        .param("b1", &[3], vec![0.3, -0.2, 0.1])
        .param("w2", &[2, 3, 1, 1], w2.clone())
        .param("b2", &[2], vec![0.0, 0.1])
        .op(
            "Conv",
            &["data", "w1", "b1"],
            &["c1"],
            vec![("kernel", Arg::I(1))],
        )
        .op("Relu", &["c1"], &["c1"], vec![])
        .op(
            "Conv",
            &["c1", "w2", "b2"],
            &["y"],
            vec![("kernel", Arg::I(1))],
        )
        .output("y");
    let (init, predict) = b.build();
    let (model, _) = Model::from_nets(init, predict)
        .unwrap()
        .optimized()
        .unwrap();
    let (eq, n) = equalize(&model).unwrap();
    assert_eq!(n, 1);
    // r1 = (4, 0.1, 1), r2 = (max|w2[:,c]|) = (0.5, 2, 8): s = √(r1/r2) = (2√2, √0.05, √0.125);
    // both ranges become √(r1·r2) = (√2, √0.2, √8).
    let r1 = max_abs_per_row(eq.params["w1"].f32_slice().unwrap(), 3);
    let w2e = eq.params["w2"].f32_slice().unwrap();
    let r2: Vec<f32> = (0..3).map(|c| w2e[c].abs().max(w2e[3 + c].abs())).collect();
    for (c, want) in [2f32.sqrt(), 0.2f32.sqrt(), 8f32.sqrt()]
        .into_iter()
        .enumerate()
    {
        assert!((r1[c] - want).abs() < 1e-5, "r1 {r1:?}");
        assert!((r2[c] - want).abs() < 1e-5, "r2 {r2:?}");
    }
    // Bias of channel 0 divided by s_0 = 2√2.
    let b1 = eq.params["b1"].f32_slice().unwrap();
    assert!((b1[0] - 0.3 / 8f32.sqrt()).abs() < 1e-6, "{b1:?}");
    let x = values(2 * 9, 3);
    let (a, e) = (
        run(&model, &x, &[1, 2, 3, 3], "y"),
        run(&eq, &x, &[1, 2, 3, 3], "y"),
    );
    for (p, q) in a.iter().zip(&e) {
        assert!((p - q).abs() <= 1e-5 * p.abs().max(1.0), "{p} vs {q}");
    }
}

#[test]
fn chains_with_depthwise_keep_the_function_and_help_per_tensor_weights() {
    // Conv 4 -> 8 (3x3) + Relu, depthwise 3x3 (group 8) + Relu, Conv 8 -> 4 (1x1), all with
    // channel magnitudes spread over 100x; the depthwise output also feeds a second 1x1.
    let mut b = NetBuilder::new("chain");
    b.input("data")
        .param("w1", &[8, 4, 3, 3], imbalanced(8, 36, 1))
        .param("b1", &[8], values(8, 2))
        .param("wd", &[8, 1, 3, 3], imbalanced(8, 9, 3))
        .param("bd", &[8], values(8, 4))
        .param("w3", &[4, 8, 1, 1], values(32, 5))
        .param("b3", &[4], values(4, 6))
        .param("w4", &[2, 8, 1, 1], values(16, 7))
        .param("b4", &[2], values(2, 8))
        .op(
            "Conv",
            &["data", "w1", "b1"],
            &["c1"],
            vec![("kernel", Arg::I(3)), ("pad", Arg::I(1))],
        )
        .op("Relu", &["c1"], &["c1"], vec![])
        .op(
            "Conv",
            &["c1", "wd", "bd"],
            &["d"],
            vec![
                ("kernel", Arg::I(3)),
                ("pad", Arg::I(1)),
                ("group", Arg::I(8)),
            ],
        )
        .op("Relu", &["d"], &["d"], vec![])
        .op(
            "Conv",
            &["d", "w3", "b3"],
            &["y"],
            vec![("kernel", Arg::I(1))],
        )
        .op(
            "Conv",
            &["d", "w4", "b4"],
            &["z"],
            vec![("kernel", Arg::I(1))],
        )
        .output("y")
        .output("z");
    let (init, predict) = b.build();
    let (model, _) = Model::from_nets(init, predict)
        .unwrap()
        .optimized()
        .unwrap();
    let (eq, n) = equalize(&model).unwrap();
    assert_eq!(n, 2, "conv1 -> dw and dw -> (w3, w4)");
    let x = values(4 * 36, 9);
    for out in ["y", "z"] {
        let (a, e) = (
            run(&model, &x, &[1, 4, 6, 6], out),
            run(&eq, &x, &[1, 4, 6, 6], out),
        );
        let amp = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (p, q) in a.iter().zip(&e) {
            assert!((p - q).abs() <= 1e-5 * amp, "{out}: {p} vs {q}");
        }
    }
    // The spread of channel ranges within each weight shrinks: per-tensor quantization of
    // the depthwise filter loses less (10th-percentile channel SQNR, see quantization.md §5.3).
    let p10 = |m: &Model, w: &str| {
        let v = m.params[w].f32_slice().unwrap();
        let a = v.iter().fold(0f32, |m, x| m.max(x.abs()));
        let q = c2q::quant::qparams::choose_quantization_params(-a, a, 0, 255, true);
        let codes = c2q::quant::qparams::quantize_u8(v, q);
        c2q::quant::weights::channel_sqnr_p10(
            v,
            &codes,
            &[q.scale],
            q.zero_point,
            m.params[w].shape()[0],
        )
    };
    for w in ["w1", "wd"] {
        let (before, after) = (p10(&model, w), p10(&eq, w));
        assert!(after > before + 6.0, "{w}: {before:.1} dB -> {after:.1} dB");
    }
}
