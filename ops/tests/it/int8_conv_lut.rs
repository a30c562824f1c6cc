//! Int8ConvLut (an Int8Conv with the Int8Lut that alone reads its output, table applied in
//! place) against the two operators run one after the other, fast and reference.

use ops::{ArgValue, OpError, Tensor};
use ops_util::{build_int8, codes, f, i, ints, qi32, qp, qu8, s, try_build_int8};

use crate::ops_util;
use ops_util::TestRng as Rng;

fn clip6_args(prefix: &str) -> Vec<(String, ArgValue)> {
    vec![
        (
            format!("{prefix}lut_ops"),
            ArgValue::Strings(vec![b"Clip".to_vec()]),
        ),
        (format!("{prefix}e0_min"), f(0.0)),
        (format!("{prefix}e0_max"), f(6.0)),
        (format!("{prefix}Y_scale"), f(0.03)),
        (format!("{prefix}Y_zero_point"), i(0)),
    ]
}

#[test]
fn conv_lut_equals_conv_then_lut() {
    // (c, h, w, k, stride, pad, group): a 1x1, a 3x3 and a depthwise convolution.
    for (ci, &(c, h, w, k, st, p, g)) in [
        (24, 9, 13, 1, 1, 0, 1),
        (8, 11, 18, 3, 2, 1, 1),
        (32, 10, 10, 3, 1, 1, 32),
    ]
    .iter()
    .enumerate()
    {
        let mut r = Rng::new(500 + ci as u64);
        let m = if g > 1 { c } else { 40 };
        let xq = qp(0.04, r.zp());
        let wq = qp(0.01, 128);
        let x = qu8(&[1, h, w, c], r.some_codes(h * w * c, 4), xq);
        let wt = qu8(&[m, k, k, c / g], r.codes(m * k * k * c / g, false), wq);
        let b = qi32(
            &[m],
            (0..m).map(|_| r.below(2001) as i32 - 1000).collect(),
            qp(xq.scale * wq.scale, 0),
        );
        let conv_args: Vec<(&str, ArgValue)> = vec![
            ("kernel", i(k as i64)),
            ("stride", i(st as i64)),
            ("pads", ints(&[p as i64; 4])),
            ("group", i(g as i64)),
            ("order", s("NHWC")),
            ("Y_scale", f(0.05)),
            ("Y_zero_point", i(r.zp() as i64)),
        ];
        let lut_owned = clip6_args("");
        let lut_args: Vec<(&str, ArgValue)> = lut_owned
            .iter()
            .map(|(n, v)| (n.as_str(), v.clone()))
            .collect();
        let fused_owned = clip6_args("lut_");
        let mut fused_args = conv_args.clone();
        fused_args.push(("conv_type", s("Int8Conv")));
        fused_args.extend(fused_owned.iter().map(|(n, v)| (n.as_str(), v.clone())));
        let inputs: [&Tensor; 3] = [&x, &wt, &b];
        let conv = build_int8("Int8Conv", &conv_args, 3, 1, true);
        let lut = build_int8("Int8Lut", &lut_args, 1, 1, true);
        let y = conv.eval(&inputs).unwrap().remove(0);
        let want = lut.eval(&[&y]).unwrap().remove(0);
        // The clip really bites on both sides.
        let (wc, wq_out) = codes(&want);
        assert_eq!(wq_out, qp(0.03, 0));
        assert!(wc.contains(&0) && wc.contains(&200) && wc.iter().any(|&v| v > 0 && v < 200));
        for reference in [true, false] {
            let mut op = build_int8("Int8ConvLut", &fused_args, 3, 1, reference);
            op.prepare(&[None, Some(&wt), Some(&b)]).unwrap();
            for threads in [1, 2] {
                let got = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap()
                    .install(|| op.eval(&inputs))
                    .unwrap()
                    .remove(0);
                assert_eq!(got.shape(), want.shape());
                assert_eq!(
                    codes(&got),
                    codes(&want),
                    "case {ci}, reference {reference}, {threads} threads"
                );
            }
        }
    }
}

#[test]
fn conv_lut_needs_a_conv_type() {
    let mut args: Vec<(&str, ArgValue)> = vec![("kernel", i(1)), ("Y_scale", f(0.1))];
    let e = try_build_int8("Int8ConvLut", &args, 2, 1, false).unwrap_err();
    assert!(
        matches!(e, OpError::BadArg { ref name, .. } if name == "conv_type"),
        "{e}"
    );
    args.push(("conv_type", s("Int8FC")));
    assert!(try_build_int8("Int8ConvLut", &args, 2, 1, false).is_err());
}

/// Fast convolutions write every output code: with the spare list full of freed buffers of
/// 0xFF codes (which `OutCodes::overwritten` hands out without zeroing), outputs still equal
/// the reference, and a spare buffer is really reused.
#[test]
fn conv_outputs_overwrite_recycled_buffers() {
    use ops::int8::{recycle, OutCodes};
    let garbage = |n: usize| qu8(&[n], vec![0xFF; n], qp(1.0, 0));
    // A buffer of the right size comes back (same allocation), a much larger one does not.
    let t = garbage(300_000);
    let Tensor::QU8(a, _) = &t else {
        unreachable!()
    };
    let p = a.as_ptr() as usize;
    recycle(t);
    let mut o = OutCodes::overwritten(299_000);
    let q = o.as_mut_slice().as_ptr() as usize;
    assert!(q >= p.saturating_sub(64) && q < p + 64, "{p:#x} {q:#x}");
    for (ci, &(c, h, w, k, m)) in [(64, 40, 40, 1, 96), (3, 60, 61, 7, 64), (32, 30, 30, 3, 48)]
        .iter()
        .enumerate()
    {
        let mut r = Rng::new(700 + ci as u64);
        let xq = qp(0.05, r.zp());
        let wq = qp(0.01, 128);
        let x = qu8(&[1, h, w, c], r.some_codes(h * w * c, 4), xq);
        let wt = qu8(&[m, k, k, c], r.codes(m * k * k * c, false), wq);
        let args: Vec<(&str, ArgValue)> = vec![
            ("kernel", i(k as i64)),
            ("pads", ints(&[(k / 2) as i64; 4])),
            ("order", s("NHWC")),
            ("Y_scale", f(0.2)),
            ("Y_zero_point", i(5)),
        ];
        let want = build_int8("Int8ConvRelu", &args, 2, 1, true)
            .eval(&[&x, &wt])
            .unwrap()
            .remove(0);
        let mut fast = build_int8("Int8ConvRelu", &args, 2, 1, false);
        fast.prepare(&[None, Some(&wt)]).unwrap();
        for _ in 0..3 {
            for n in [want.len(), want.len() + 4096, want.len() * 3 / 2] {
                recycle(garbage(n));
            }
            let got = fast.eval(&[&x, &wt]).unwrap().remove(0);
            assert_eq!(codes(&got), codes(&want), "case {ci}");
            recycle(got);
        }
    }
}
