//! The fast Int8 element-wise / pooling / (de)quantize / concat paths against the scalar
//! reference (`NodeSpec::reference = true`), bit for bit, plus every kernel table of
//! `kernels::qeltwise` this CPU can run (portable, AVX2, AVX-512) against the portable
//! table, naive loops and hand-worked values written here.

use ops::kernels::isa::Isa;
use ops::kernels::qeltwise::{self, PoolGeom, PoolScratch, QEltwiseKernels, RealStage};
use ops::{build_op, ArgValue, OpError, QParams, Tensor};
use ops_util::{build_int8, codes, f, i, qp, qu8, s, spec_int8};
use proptest::prelude::*;

use crate::ops_util;
use ops_util::TestRng as Rng;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Type name, shape, parameters (scale bits, zero point) and element bits of an output.
type Fingerprint = (String, Vec<usize>, Option<(u32, i32)>, Vec<u64>);

fn fingerprint(t: &Tensor) -> Fingerprint {
    let name = t.dtype().name().to_string();
    let shape = t.shape().to_vec();
    match t {
        Tensor::QU8(a, q) => (
            name,
            shape,
            Some((q.scale.to_bits(), q.zero_point)),
            a.iter().map(|&v| u64::from(v)).collect(),
        ),
        Tensor::F32(a) => (
            name,
            shape,
            None,
            a.iter().map(|v| u64::from(v.to_bits())).collect(),
        ),
        Tensor::I32(a) => (
            name,
            shape,
            None,
            a.iter().map(|&v| v as u32 as u64).collect(),
        ),
        other => panic!("unexpected output type {:?}", other.dtype()),
    }
}

/// Runs `op` with the fast and the reference path and requires identical outputs (or an
/// error from both). Returns the outputs (None on error).
fn same_both(
    op: &str,
    args: &[(&str, ArgValue)],
    n_out: usize,
    inputs: &[&Tensor],
) -> Option<Vec<Tensor>> {
    let n_in = inputs.len();
    let fast = build_int8(op, args, n_in, n_out, false);
    let refr = build_int8(op, args, n_in, n_out, true);
    let a = fast.eval(inputs);
    let b = refr.eval(inputs);
    match (a, b) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.len(), b.len());
            for (k, (x, y)) in a.iter().zip(&b).enumerate() {
                let (fx, fy) = (fingerprint(x), fingerprint(y));
                if fx != fy {
                    let first = fx.3.iter().zip(&fy.3).position(|(p, q)| p != q);
                    panic!(
                        "{op} output {k}: fast and reference differ (type/shape/params {:?} vs {:?}; \
                         first differing element {first:?})",
                        (&fx.0, &fx.1, fx.2),
                        (&fy.0, &fy.1, fy.2)
                    );
                }
            }
            // And shape inference agrees with what was produced.
            let infos: Vec<_> = inputs.iter().map(|t| t.info()).collect();
            let inferred = fast.infer(&infos).expect("infer");
            let got: Vec<_> = a.iter().map(|t| t.info()).collect();
            assert_eq!(inferred, got);
            Some(a)
        }
        (Err(_), Err(_)) => None,
        (Ok(_), Err(e)) => panic!("{op}: reference failed ({e}) but the fast path succeeded"),
        (Err(e), Ok(_)) => panic!("{op}: fast path failed ({e}) but the reference succeeded"),
    }
}

/// The AVX2 kernels, or a skip message.
fn avx2() -> Option<&'static QEltwiseKernels> {
    let k = qeltwise::kernels_for(Isa::Avx2);
    if k.is_none() {
        eprintln!("skipping the AVX2-specific checks: this CPU has no AVX2");
    }
    k
}

/// The AVX-512 kernels, or a skip message.
fn avx512() -> Option<&'static QEltwiseKernels> {
    let k = qeltwise::kernels_for(Isa::Avx512);
    if k.is_none() {
        eprintln!("skipping the AVX-512 kernels: this CPU has no AVX-512 F/BW/VL/DQ/CD");
    }
    k
}

/// The portable kernels (the oracle of the SIMD tables).
fn portable() -> &'static QEltwiseKernels {
    qeltwise::kernels_for(Isa::Scalar).unwrap()
}

/// Every SIMD kernel table this CPU can run.
fn simd_kernels() -> Vec<&'static QEltwiseKernels> {
    avx2().into_iter().chain(avx512()).collect()
}

/// Every kernel table this CPU can run (portable first).
fn all_kernels() -> Vec<&'static QEltwiseKernels> {
    let mut v = vec![portable()];
    v.extend(simd_kernels());
    v
}

/// Runs `f` on `n` outputs that sit between guard elements holding `fill`, checks that the
/// guards were not written, and returns the outputs.
fn guarded<T: Copy + PartialEq + std::fmt::Debug>(
    n: usize,
    fill: T,
    f: impl FnOnce(&mut [T]),
) -> Vec<T> {
    const GUARD: usize = 67;
    let mut buf = vec![fill; n + 2 * GUARD];
    f(&mut buf[GUARD..GUARD + n]);
    assert!(
        buf[..GUARD]
            .iter()
            .chain(&buf[GUARD + n..])
            .all(|&v| v == fill),
        "a kernel wrote outside its {n} outputs"
    );
    buf[GUARD..GUARD + n].to_vec()
}

// ---------------------------------------------------------------------------------------
// Naive loops (independent of the crate's code)
// ---------------------------------------------------------------------------------------

/// clamp(round_half_even(v), lo, 255), NaN → lo.
fn naive_round_clamp(v: f32, lo: i32) -> u8 {
    if v.is_nan() {
        return lo as u8;
    }
    let r = v.round_ties_even();
    if r < lo as f32 {
        lo as u8
    } else if r > 255.0 {
        255
    } else {
        r as u8
    }
}

fn naive_sum(xs: &[(&[u8], QParams)], inv: f32, zy: i32, lo: i32) -> Vec<u8> {
    (0..xs[0].0.len())
        .map(|j| {
            // DNNLOWP's x86 form: each term fma(q, s, f32(-z * s)), the terms added from
            // the first, then fma(acc, inv, z_y).
            let terms: Vec<f32> = xs
                .iter()
                .map(|(x, q)| (x[j] as f32).mul_add(q.scale, (-q.zero_point) as f32 * q.scale))
                .collect();
            let acc = terms[1..].iter().fold(terms[0], |a, t| a + t);
            naive_round_clamp(acc.mul_add(inv, zy as f32), lo)
        })
        .collect()
}

fn naive_quantize(x: &[f32], inv: f32, z: i32) -> Vec<u8> {
    x.iter()
        .map(|&v| {
            let p = v * inv;
            if p.is_nan() {
                return z as u8;
            }
            let r = p.round_ties_even() as f64 + z as f64;
            r.clamp(0.0, 255.0) as u8
        })
        .collect()
}

fn window(o: usize, stride: usize, pad: usize, k: usize, len: usize) -> std::ops::Range<usize> {
    let lo = (o * stride) as i64 - pad as i64;
    let hi = (lo + k as i64).min(len as i64);
    lo.max(0) as usize..hi.max(lo.max(0)) as usize
}

/// Naive NHWC pooling of one image, one output at a time.
fn naive_pool(x: &[u8], g: &PoolGeom, avg: Option<(QParams, QParams)>) -> Vec<u8> {
    let mut out = Vec::new();
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            for ch in 0..g.c {
                let rows = window(oy, g.sh, g.pt, g.kh, g.ih);
                let cols = window(ox, g.sw, g.pl, g.kw, g.iw);
                let cells: Vec<u8> = rows
                    .flat_map(|iy| cols.clone().map(move |ix| (iy, ix)))
                    .map(|(iy, ix)| x[(iy * g.iw + ix) * g.c + ch])
                    .collect();
                out.push(match avg {
                    None => *cells.iter().max().unwrap(),
                    Some((xq, yq)) => {
                        let size = cells.len() as i64;
                        let sum: i64 = cells.iter().map(|&v| v as i64).sum::<i64>()
                            - xq.zero_point as i64 * size;
                        let m = xq.scale / yq.scale / size as f32;
                        naive_round_clamp(sum as f32 * m + yq.zero_point as f32, 0)
                    }
                });
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Direct kernel tests
// ---------------------------------------------------------------------------------------

#[test]
fn add2_hand_worked_ties_and_clamps() {
    // s_a = s_b = 0.5, z = 0 / 10, s_y = 1, z_y = 0: values are multiples of 0.5, so every
    // odd sum is a tie. Padded to 37 elements so the AVX2 path runs with an overlapping tail.
    let (qa, qb) = (qp(0.5, 0), qp(0.5, 10));
    let st = RealStage {
        multiplier: 1.0,
        zero_point: 0,
        lo: 0,
    };
    // (a, b, want): 0.5·a + 0.5·(b − 10)
    let cases: [(u8, u8, u8); 8] = [
        (1, 10, 0),      // 0.5 → 0
        (3, 10, 2),      // 1.5 → 2
        (5, 10, 2),      // 2.5 → 2
        (7, 10, 4),      // 3.5 → 4
        (0, 0, 0),       // −5 → clamp 0
        (255, 255, 250), // 127.5 + 122.5 = 250
        (255, 0, 122),   // 127.5 − 5 = 122.5 → 122
        (200, 200, 195), // 100 + 95
    ];
    for k in all_kernels() {
        let mut a = vec![0u8; 37];
        let mut b = vec![10u8; 37];
        for (j, &(x, y, _)) in cases.iter().enumerate() {
            a[29 + j % 8] = x;
            b[29 + j % 8] = y;
        }
        let mut out = vec![0u8; 37];
        (k.add2)(&a, qa, &b, qb, &mut out, st);
        for (j, &(_, _, want)) in cases.iter().enumerate() {
            assert_eq!(out[29 + j], want, "{:?} case {j}", k.isa);
        }
        assert!(out[..29].iter().all(|&v| v == 0), "{:?}", k.isa);
        // Fused ReLU with z_y = 100: lo = 100.
        let st_relu = RealStage {
            multiplier: 1.0,
            zero_point: 100,
            lo: 100,
        };
        (k.add2)(&a, qa, &b, qb, &mut out, st_relu);
        assert_eq!(out[29 + 4], 100, "{:?}", k.isa); // −5 + 100 = 95 → 100
        assert_eq!(out[29 + 5], 255, "{:?}", k.isa); // 250 + 100 → 255
        assert_eq!(out[29 + 1], 102, "{:?}", k.isa); // 1.5 + 100 = 101.5 → 102
    }
}

#[test]
fn add2_and_sum_n_match_naive_loops() {
    let mut rng = Rng::new(7);
    let params = [qp(0.5, 128), qp(0.25, 0), qp(0.0371, 255), qp(3.0, 17)];
    let stages = [
        (1.0f32, 0, 0),
        (2.0, 128, 0),
        (1.0 / 0.013, 7, 7),
        (0.5, 255, 0),
    ];
    for k in all_kernels() {
        for &n in &[1usize, 5, 31, 32, 33, 63, 64, 100, 1000] {
            for &(inv, zy, lo) in &stages {
                let st = RealStage {
                    multiplier: inv,
                    zero_point: zy,
                    lo,
                };
                let data: Vec<Vec<u8>> = (0..4).map(|_| rng.u8s(n)).collect();
                // Two inputs.
                let xs: Vec<(&[u8], QParams)> = vec![(&data[0], params[0]), (&data[1], params[1])];
                let mut out = vec![0u8; n];
                (k.add2)(xs[0].0, xs[0].1, xs[1].0, xs[1].1, &mut out, st);
                assert_eq!(out, naive_sum(&xs, inv, zy, lo), "{:?} add2 n={n}", k.isa);
                // One to four inputs.
                for m in 1..=4 {
                    let xs: Vec<(&[u8], QParams)> =
                        (0..m).map(|j| (data[j].as_slice(), params[j])).collect();
                    (k.sum_n)(&xs, &mut out, st);
                    assert_eq!(
                        out,
                        naive_sum(&xs, inv, zy, lo),
                        "{:?} sum_n m={m} n={n}",
                        k.isa
                    );
                }
            }
        }
    }
}

/// The result a fused evaluation would give: `fma(s_a, d_a, s_b·d_b)` then `fma(acc, m, z)`,
/// emulated in f64 (the products of two f32 are exact there; the sums are rounded once to
/// f32, which is what a fused multiply-add does up to a negligible double-rounding risk).
fn fused_sum(da: i32, sa: f32, db: i32, sb: f32, m: f32, z: i32) -> u8 {
    let pb = sb * db as f32;
    let acc = (sa as f64 * da as f64 + pb as f64) as f32;
    let v = (acc as f64 * m as f64 + z as f64) as f32;
    naive_round_clamp(v, 0)
}

#[test]
fn sum_is_not_fused() {
    // Find code pairs whose result changes if the multiply-adds were fused, and check that
    // every kernel gives the unfused (reference) result on them.
    let (qa, qb) = (qp(0.0173, 131), qp(0.0411, 97));
    let mut found: Vec<(u8, u8, u8)> = Vec::new();
    let mut stage = None;
    for step in 0..200 {
        let m = 1.0f32 / (0.0297 + step as f32 * 1.3e-4);
        let z = 101;
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let want = naive_sum(&[(&[a], qa), (&[b], qb)], m, z, 0)[0];
                let fused = fused_sum(a as i32 - 131, qa.scale, b as i32 - 97, qb.scale, m, z);
                if want != fused {
                    found.push((a, b, want));
                }
            }
        }
        if found.len() >= 8 {
            stage = Some(RealStage {
                multiplier: m,
                zero_point: z,
                lo: 0,
            });
            break;
        }
        found.clear();
    }
    let st = stage.expect("no multiplier where fusing changes the result");
    let mut a: Vec<u8> = found.iter().map(|t| t.0).collect();
    let mut b: Vec<u8> = found.iter().map(|t| t.1).collect();
    let mut want: Vec<u8> = found.iter().map(|t| t.2).collect();
    while a.len() < 40 {
        a.extend_from_within(..a.len().min(40 - a.len()));
        b.extend_from_within(..b.len().min(40 - b.len()));
        want.extend_from_within(..want.len().min(40 - want.len()));
    }
    for k in all_kernels() {
        let mut out = vec![0u8; a.len()];
        (k.add2)(&a, qa, &b, qb, &mut out, st);
        assert_eq!(out, want, "{:?} add2", k.isa);
        (k.sum_n)(&[(&a, qa), (&b, qb)], &mut out, st);
        assert_eq!(out, want, "{:?} sum_n", k.isa);
    }
}

#[test]
fn avg_pool_is_not_fused() {
    // 1x1 windows with s_y = 1, so the multiplier is exactly s_x = m and
    // y = round(f32(d·m) + 255) with d = x − 255. Construct m so that f32(d·m) + 255 is
    // exactly a tie k + 0.5 while the exact d·m + 255 is not: a fused multiply-add would
    // then round the other way half of the time.
    let (z_x, z_y) = (255, 255);
    let mut cases: Vec<(f32, u8, u8)> = Vec::new();
    'search: for d in (-255i32..=-129).rev() {
        for t in 5..120 {
            let target = t as f64 + 0.5 - z_y as f64;
            let m0 = (target / d as f64) as f32;
            for m in [
                m0,
                f32::from_bits(m0.to_bits() + 1),
                f32::from_bits(m0.to_bits() - 1),
            ] {
                let plain = naive_round_clamp(d as f32 * m + z_y as f32, 0);
                let fused = naive_round_clamp((d as f64 * m as f64 + z_y as f64) as f32, 0);
                if plain != fused {
                    cases.push((m, (d + z_x) as u8, plain));
                    if cases.len() == 24 {
                        break 'search;
                    }
                }
            }
        }
    }
    assert!(
        cases.len() >= 8,
        "only {} cases where fusing changes the result",
        cases.len()
    );
    for &(m, code, want) in &cases {
        let (xq, yq) = (qp(m, z_x), qp(1.0, z_y));
        // 40 channels (vector path) holding the code, then a 3-channel (portable) image.
        for c in [40usize, 3] {
            let g = geom(c, 1, 1, (1, 1), (1, 1), (0, 0, 0, 0));
            let x = vec![code; c];
            for k in all_kernels() {
                let got = run_rows(k, &x, &g, Some((xq, yq)));
                assert_eq!(got, vec![want; c], "{:?} m={m} code={code}", k.isa);
            }
        }
    }
}

#[test]
fn stage_handles_infinities_and_nan() {
    // Huge input scales make the terms fma(q, s, −z·s) infinite: +inf → 255, −inf → lo,
    // inf − inf = NaN → lo.
    let big = qp(3.0e38, 0);
    let st = RealStage {
        multiplier: 1.0,
        zero_point: 3,
        lo: 3,
    };
    let a: Vec<u8> = (0..40).map(|j| if j % 2 == 0 { 255 } else { 0 }).collect();
    let b: Vec<u8> = (0..40).map(|j| if j % 3 == 0 { 255 } else { 0 }).collect();
    let negb = qp(-3.0e38, 0);
    for k in all_kernels() {
        let mut out = vec![0u8; 40];
        (k.add2)(&a, big, &b, negb, &mut out, st);
        let want = naive_sum(&[(&a, big), (&b, negb)], 1.0, 3, 3);
        assert_eq!(out, want, "{:?}", k.isa);
        // j = 0: inf + (−inf) = NaN → lo; j = 1: 0 + 0 → z_y = 3; j = 2: inf + 0 → 255;
        // j = 3: 0 + (−inf) → lo.
        assert_eq!(
            (out[0], out[1], out[2], out[3]),
            (3, 3, 255, 3),
            "{:?}",
            k.isa
        );
    }
}

#[test]
fn quantize_matches_naive_with_specials() {
    let mut rng = Rng::new(11);
    for k in all_kernels() {
        for &(scale, z) in &[
            (0.5f32, 0),
            (0.5, 128),
            (0.25, 255),
            (0.0173, 3),
            (1e-40, 9),
        ] {
            let inv = 1.0f32 / scale;
            for &n in &[1usize, 7, 32, 45, 100, 257] {
                let x: Vec<f32> = (0..n)
                    .map(|j| match j % 11 {
                        0 => f32::NAN,
                        1 => f32::INFINITY,
                        2 => f32::NEG_INFINITY,
                        3 => 1e30,
                        4 => -1e30,
                        5 => 0.0,
                        // Exact ties: (t + 1/2)·s.
                        6 | 7 => ((rng.next() % 600) as f32 - 300.0 + 0.5) * scale,
                        _ => ((rng.next() % 20000) as f32 - 10000.0) * 0.01,
                    })
                    .collect();
                let mut out = vec![0u8; n];
                (k.quantize)(&x, &mut out, inv, z);
                assert_eq!(
                    out,
                    naive_quantize(&x, inv, z),
                    "{:?} s={scale} z={z} n={n}",
                    k.isa
                );
            }
        }
        // Hand-worked: s = 0.5, z = 128: 1.25 → 2.5 → 2 → 130; 1.75 → 3.5 → 4 → 132;
        // NaN → 128; −1e9 → 0; 1e9 → 255.
        let x = [1.25f32, 1.75, f32::NAN, -1e9, 1e9];
        let mut xl = x.to_vec();
        xl.resize(40, 0.0);
        let mut out = vec![0u8; 40];
        (k.quantize)(&xl, &mut out, 2.0, 128);
        assert_eq!(&out[..5], &[130, 132, 128, 0, 255], "{:?}", k.isa);
    }
}

/// requantize(x − z_x, s_x/s_y, z_y, 0) written out: one f32 product, round half to even,
/// then the zero point in integers and the clamp (`as i64` saturates ±inf).
fn naive_requant(c: u8, xq: QParams, yq: QParams) -> u8 {
    let m = xq.scale / yq.scale;
    let r = ((c as i64 - xq.zero_point as i64) as f32 * m).round_ties_even();
    let r = if r.is_nan() { 0 } else { r as i64 };
    r.saturating_add(yq.zero_point as i64).clamp(0, 255) as u8
}

#[test]
fn requant_matches_naive() {
    let naive = naive_requant;
    let cases = [
        (qp(0.25, 10), qp(0.5, 128)), // m = 0.5: every odd difference is a tie
        (qp(0.0371, 128), qp(0.0213, 0)),
        (qp(1.0, 0), qp(0.003, 255)),     // saturates high
        (qp(3.0, 255), qp(0.01, 7)),      // saturates low
        (qp(1e30, 128), qp(1e-9, 128)),   // m overflows to inf
        (qp(1e-30, 0), qp(1e9, 200)),     // m underflows to 0
        (qp(0.5, 128), qp(0.5, 128)),     // identity
        (qp(0.5, 3), qp(0.7, -40)),       // zero points outside [0, 255]
        (qp(0.5, 3), qp(0.7, 3_000_000)), // far outside: the table path
        (qp(0.0, 3), qp(0.0, 3)),         // m = NaN: the table path
    ];
    let mut rng = Rng::new(17);
    for k in all_kernels() {
        for &(xq, yq) in &cases {
            for &n in &[0usize, 1, 31, 32, 33, 64, 100, 257] {
                let mut x = rng.u8s(n);
                if n >= 2 {
                    x[0] = 0;
                    x[1] = 255;
                }
                let mut out = vec![0xAAu8; n];
                (k.requant)(&x, xq, &mut out, yq);
                let want: Vec<u8> = x.iter().map(|&c| naive(c, xq, yq)).collect();
                assert_eq!(out, want, "{:?} {xq:?} -> {yq:?}, n = {n}", k.isa);
            }
        }
    }
}

#[test]
fn dequantize_and_relu_match_naive() {
    let mut rng = Rng::new(3);
    for k in all_kernels() {
        for &n in &[1usize, 8, 31, 33, 300] {
            let x = rng.u8s(n);
            for &p in &[qp(0.5, 0), qp(0.0371, 128), qp(3.5, 255)] {
                let mut out = vec![0f32; n];
                (k.dequantize)(&x, &mut out, p);
                for (j, (&o, &q)) in out.iter().zip(&x).enumerate() {
                    let want = p.scale * (q as i32 - p.zero_point) as f32;
                    assert_eq!(o.to_bits(), want.to_bits(), "{:?} dequantize {j}", k.isa);
                }
                let mut r = vec![0u8; n];
                (k.relu)(&x, &mut r, p.zero_point as u8);
                let want: Vec<u8> = x.iter().map(|&v| v.max(p.zero_point as u8)).collect();
                assert_eq!(r, want, "{:?} relu", k.isa);
            }
        }
        // Hand-worked: 0.5·(130 − 128) = 1, 0.5·(0 − 128) = −64.
        let mut out = vec![0f32; 2];
        (k.dequantize)(&[130, 0], &mut out, qp(0.5, 128));
        assert_eq!(out, vec![1.0, -64.0]);
    }
}

fn geom(
    c: usize,
    ih: usize,
    iw: usize,
    k: (usize, usize),
    s: (usize, usize),
    pad: (usize, usize, usize, usize),
) -> PoolGeom {
    let oh = (ih + pad.0 + pad.2 - k.0) / s.0 + 1;
    let ow = (iw + pad.1 + pad.3 - k.1) / s.1 + 1;
    PoolGeom {
        c,
        ih,
        iw,
        oh,
        ow,
        kh: k.0,
        kw: k.1,
        sh: s.0,
        sw: s.1,
        pt: pad.0,
        pl: pad.1,
    }
}

fn run_rows(
    k: &QEltwiseKernels,
    x: &[u8],
    g: &PoolGeom,
    avg: Option<(QParams, QParams)>,
) -> Vec<u8> {
    let mut out = vec![0u8; g.oh * g.ow * g.c];
    let mut scratch = PoolScratch::default();
    for (oy, row) in out.chunks_mut(g.ow * g.c).enumerate() {
        match avg {
            None => (k.max_pool_row)(x, g, oy, row, &mut scratch),
            Some((xq, yq)) => (k.avg_pool_row)(x, g, oy, xq, yq, row, &mut scratch),
        }
    }
    out
}

#[test]
fn pool_rows_match_naive_windows() {
    let mut rng = Rng::new(5);
    let shapes = [
        (
            1usize,
            5usize,
            5usize,
            (3usize, 3usize),
            (2usize, 2usize),
            (1usize, 1usize, 1usize, 1usize),
        ),
        (3, 7, 6, (2, 3), (1, 2), (0, 1, 1, 0)),
        (8, 4, 4, (4, 4), (1, 1), (0, 0, 0, 0)),
        (17, 6, 9, (3, 3), (2, 2), (1, 1, 1, 1)),
        (33, 5, 7, (3, 2), (2, 1), (2, 1, 0, 1)),
        (64, 9, 9, (3, 3), (2, 2), (1, 1, 1, 1)),
        (70, 3, 3, (3, 3), (1, 1), (0, 0, 0, 0)),
    ];
    for k in all_kernels() {
        for &(c, ih, iw, kk, st, pad) in &shapes {
            let g = geom(c, ih, iw, kk, st, pad);
            let x = rng.u8s(ih * iw * c);
            assert_eq!(
                run_rows(k, &x, &g, None),
                naive_pool(&x, &g, None),
                "{:?} max {g:?}",
                k.isa
            );
            for &(xq, yq) in &[
                (qp(1.0, 0), qp(1.0, 0)),
                (qp(0.5, 128), qp(0.25, 3)),
                (qp(0.02, 255), qp(0.7, 255)),
            ] {
                assert_eq!(
                    run_rows(k, &x, &g, Some((xq, yq))),
                    naive_pool(&x, &g, Some((xq, yq))),
                    "{:?} avg {g:?} {xq:?} {yq:?}",
                    k.isa
                );
            }
        }
    }
    // Hand-worked average: 2x2 window over [1, 2, 3, 6] (one channel), s_x = s_y = 1, z = 0:
    // 12 / 4 = 3; with [1, 2, 3, 4]: 2.5 → 2 (ties to even); [1, 2, 3, 8]: 3.5 → 4.
    for k in all_kernels() {
        let g = geom(1, 2, 2, (2, 2), (1, 1), (0, 0, 0, 0));
        for (x, want) in [([1u8, 2, 3, 6], 3u8), ([1, 2, 3, 4], 2), ([1, 2, 3, 8], 4)] {
            assert_eq!(
                run_rows(k, &x, &g, Some((qp(1.0, 0), qp(1.0, 0)))),
                vec![want]
            );
        }
        // 40 channels (vector path), channel j holds [j, j+1, j+2, j+3] → 1.5 + j, ties to even.
        let g = geom(40, 2, 2, (2, 2), (1, 1), (0, 0, 0, 0));
        let x: Vec<u8> = (0..4)
            .flat_map(|cell| (0..40u8).map(move |j| j + cell))
            .collect();
        let got = run_rows(k, &x, &g, Some((qp(1.0, 0), qp(1.0, 0))));
        let want: Vec<u8> = (0..40u8)
            .map(|j| (j as f32 + 1.5).round_ties_even() as u8)
            .collect();
        assert_eq!(got, want, "{:?}", k.isa);
        assert_eq!(run_rows(k, &x, &g, None), (3..43u8).collect::<Vec<_>>());
    }
}

#[test]
fn simd_kernels_equal_portable_on_random_data() {
    let p = portable();
    let mut rng = Rng::new(99);
    for n in [32usize, 47, 96, 129, 4099] {
        let x = rng.u8s(n);
        let y = rng.u8s(n);
        let st = RealStage {
            multiplier: 1.0 / 0.0731,
            zero_point: 128,
            lo: 0,
        };
        let f: Vec<f32> = x
            .iter()
            .zip(&y)
            .map(|(&u, &v)| (u as f32 - v as f32) * 0.0137)
            .collect();
        for k in simd_kernels() {
            let (mut o1, mut o2) = (vec![0u8; n], vec![0u8; n]);
            (k.add2)(&x, qp(0.0413, 131), &y, qp(0.0877, 119), &mut o1, st);
            (p.add2)(&x, qp(0.0413, 131), &y, qp(0.0877, 119), &mut o2, st);
            assert_eq!(o1, o2, "{:?} add2 n={n}", k.isa);
            (k.quantize)(&f, &mut o1, 1.0 / 0.0091, 77);
            (p.quantize)(&f, &mut o2, 1.0 / 0.0091, 77);
            assert_eq!(o1, o2, "{:?} quantize n={n}", k.isa);
        }
    }
}

// ---------------------------------------------------------------------------------------
// SIMD tables against the portable one (and naive loops) at vector-width edges
// ---------------------------------------------------------------------------------------

/// Codes with the extremes and the usual zero points over-represented.
fn edge_codes(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| match rng.below(8) {
            0 => 0,
            1 => 255,
            2 => 128,
            _ => rng.below(256) as u8,
        })
        .collect()
}

/// Floats for Quantize: NaN, ±inf, huge, zeros, exact ties of `scale` and ordinary values.
fn edge_floats(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| match rng.below(12) {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => f32::NEG_INFINITY,
            3 => 3.0e38,
            4 => -3.0e38,
            5 => -0.0,
            6 | 7 => (rng.range(-300, 300) as f32 + 0.5) * scale,
            _ => rng.range(-20000, 20000) as f32 * 0.0137,
        })
        .collect()
}

#[test]
fn simd_elementwise_kernels_match_at_every_length() {
    let p = portable();
    let mut rng = Rng::new(130);
    let params = [
        qp(0.5, 0),
        qp(0.0371, 128),
        qp(3.0, 255),
        qp(0.25, 17),
        qp(0.0413, 255),
    ];
    // (multiplier, z_y, lo): plain, fused ReLU (lo = z_y) at zero points 0, 128 and 255.
    let stages = [
        (1.0f32 / 0.0731, 0, 0),
        (2.0, 128, 128),
        (0.5, 255, 255),
        (1.0 / 0.013, 128, 0),
        (1.0, 0, 0),
        (1.0 / 0.0213, 255, 0),
    ];
    let requants = [
        (qp(0.25, 10), qp(0.5, 128)), // ties
        (qp(0.0371, 128), qp(0.0213, 0)),
        (qp(1.0, 255), qp(0.003, 255)),
        (qp(3.0, 0), qp(0.01, 7)),
    ];
    for k in simd_kernels() {
        for n in 0..=130usize {
            let data: Vec<Vec<u8>> = (0..4).map(|_| edge_codes(&mut rng, n)).collect();
            for (si, &(m, zy, lo)) in stages.iter().enumerate() {
                let st = RealStage {
                    multiplier: m,
                    zero_point: zy,
                    lo,
                };
                let (qa, qb) = (params[si % 5], params[(si + 2) % 5]);
                let got = guarded(n, 0xA5u8, |o| (k.add2)(&data[0], qa, &data[1], qb, o, st));
                let mut want = vec![0u8; n];
                (p.add2)(&data[0], qa, &data[1], qb, &mut want, st);
                assert_eq!(got, want, "{:?} add2 n={n} stage {si}", k.isa);
                let xs = [(data[0].as_slice(), qa), (data[1].as_slice(), qb)];
                assert_eq!(want, naive_sum(&xs, m, zy, lo), "portable add2 n={n}");
                for m_in in 1..=4 {
                    let xs: Vec<(&[u8], QParams)> = (0..m_in)
                        .map(|j| (data[j].as_slice(), params[(si + j) % 5]))
                        .collect();
                    let got = guarded(n, 0x5Au8, |o| (k.sum_n)(&xs, o, st));
                    (p.sum_n)(&xs, &mut want, st);
                    assert_eq!(got, want, "{:?} sum_n m={m_in} n={n} stage {si}", k.isa);
                    assert_eq!(want, naive_sum(&xs, m, zy, lo), "portable sum_n n={n}");
                }
            }
            for &(scale, z) in &[(0.5f32, 0), (0.0186, 128), (0.25, 255), (0.0173, 3)] {
                let x = edge_floats(&mut rng, n, scale);
                let inv = 1.0 / scale;
                let got = guarded(n, 0xA5u8, |o| (k.quantize)(&x, o, inv, z));
                let mut want = vec![0u8; n];
                (p.quantize)(&x, &mut want, inv, z);
                assert_eq!(got, want, "{:?} quantize n={n} z={z}", k.isa);
                assert_eq!(want, naive_quantize(&x, inv, z), "portable quantize n={n}");
            }
            for &q in &params {
                let got = guarded(n, -7.25f32, |o| (k.dequantize)(&data[2], o, q));
                let mut want = vec![0f32; n];
                (p.dequantize)(&data[2], &mut want, q);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{:?} dequantize n={n}", k.isa);
                let naive: Vec<f32> = data[2]
                    .iter()
                    .map(|&c| q.scale * (c as i32 - q.zero_point) as f32)
                    .collect();
                assert_eq!(bits(&want), bits(&naive), "portable dequantize n={n}");
            }
            for z in [0u8, 1, 128, 254, 255] {
                let got = guarded(n, 0xA5u8, |o| (k.relu)(&data[3], o, z));
                let want: Vec<u8> = data[3].iter().map(|&v| v.max(z)).collect();
                assert_eq!(got, want, "{:?} relu n={n} z={z}", k.isa);
            }
            for &(xq, yq) in &requants {
                let got = guarded(n, 0xA5u8, |o| (k.requant)(&data[3], xq, o, yq));
                let mut want = vec![0u8; n];
                (p.requant)(&data[3], xq, &mut want, yq);
                assert_eq!(got, want, "{:?} requant n={n} {xq:?} -> {yq:?}", k.isa);
                let naive: Vec<u8> = data[3].iter().map(|&c| naive_requant(c, xq, yq)).collect();
                assert_eq!(want, naive, "portable requant n={n}");
            }
        }
    }
}

#[test]
fn simd_output_stage_handles_nan_infinities_and_huge_multipliers() {
    let p = portable();
    let mut rng = Rng::new(31);
    let multipliers = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        3.0e38,
        -3.0e38,
        1.0e30,
        1.0e-45, // subnormal
        0.0,
        -0.0,
        -1.0,
        255.5,
        1.0e5, // large but bounded values: the AVX-512 Sum may skip its upper clamp
        -1.0e5,
    ];
    // Input scales that make single terms or sums infinite (3e38 · 255) and NaN (∞ − ∞).
    let inputs = [
        (qp(3.0e38, 0), qp(3.0e38, 255)),
        (qp(0.5, 128), qp(1.0e-45, 3)),
        (qp(f32::MAX, 128), qp(0.25, 0)),
    ];
    for k in simd_kernels() {
        for &m in &multipliers {
            for &(zy, lo) in &[(0, 0), (128, 0), (128, 128), (255, 255), (255, 0), (3, 3)] {
                let st = RealStage {
                    multiplier: m,
                    zero_point: zy,
                    lo,
                };
                for &(qa, qb) in &inputs {
                    for n in [1usize, 15, 16, 17, 63, 64, 65, 130] {
                        let a = edge_codes(&mut rng, n);
                        let b = edge_codes(&mut rng, n);
                        let xs = [(a.as_slice(), qa), (b.as_slice(), qb)];
                        let want = naive_sum(&xs, m, zy, lo);
                        let mut out = vec![0u8; n];
                        (p.add2)(&a, qa, &b, qb, &mut out, st);
                        assert_eq!(out, want, "portable add2 m={m} z={zy} lo={lo}");
                        (k.add2)(&a, qa, &b, qb, &mut out, st);
                        assert_eq!(out, want, "{:?} add2 m={m} z={zy} lo={lo} n={n}", k.isa);
                        (k.sum_n)(&xs, &mut out, st);
                        assert_eq!(out, want, "{:?} sum_n m={m} z={zy} lo={lo} n={n}", k.isa);
                    }
                }
            }
        }
        // Quantize with degenerate inverse scales: x · inv is then ±∞, NaN (0 · ∞, ∞ · 0)
        // or 0 for every x.
        for &inv in &[f32::INFINITY, f32::NAN, 0.0, 3.0e38, 1.0e-45, -2.0] {
            for z in [0, 1, 128, 255] {
                for n in [1usize, 16, 17, 64, 77] {
                    let x = edge_floats(&mut rng, n, 0.5);
                    let mut got = vec![0u8; n];
                    (k.quantize)(&x, &mut got, inv, z);
                    let mut want = vec![0u8; n];
                    (p.quantize)(&x, &mut want, inv, z);
                    assert_eq!(got, want, "{:?} quantize inv={inv} z={z}", k.isa);
                    assert_eq!(want, naive_quantize(&x, inv, z));
                }
            }
        }
        // Requantization with huge, tiny and degenerate multipliers, zero points near the
        // limits of the vector paths.
        let requants = [
            (qp(3.0e38, 0), qp(2.0, 0)),         // m = 1.5e38: clamped products
            (qp(3.0e38, 255), qp(2.0, 255)),     // and negative ones
            (qp(1.0e30, 128), qp(1.0e-9, 128)),  // m = inf
            (qp(1.0e-45, 0), qp(1.0, 0)),        // subnormal m
            (qp(0.0, 3), qp(0.0, 3)),            // m = NaN
            (qp(0.5, 128), qp(0.7, 1 << 20)),    // z_y at the vector limit
            (qp(0.5, 128), qp(0.7, -(1 << 20))), // and its negative
            (qp(0.5, 128), qp(0.7, (1 << 20) + 1)),
            (qp(0.5, 1 << 23), qp(0.5, 0)), // z_x at the widening limit
            (qp(0.5, -(1 << 23)), qp(0.5, 0)),
            (qp(0.5, (1 << 23) + 1), qp(0.5, 0)),
        ];
        for &(xq, yq) in &requants {
            for n in [1usize, 63, 64, 65, 300] {
                let x = edge_codes(&mut rng, n);
                let mut got = vec![0u8; n];
                (k.requant)(&x, xq, &mut got, yq);
                let mut want = vec![0u8; n];
                (p.requant)(&x, xq, &mut want, yq);
                assert_eq!(got, want, "{:?} requant {xq:?} -> {yq:?} n={n}", k.isa);
                let naive: Vec<u8> = x.iter().map(|&c| naive_requant(c, xq, yq)).collect();
                assert_eq!(want, naive);
            }
        }
    }
}

#[test]
fn avx512_kernels_equal_portable_outside_valid_parameters() {
    // Parameters no operator passes (zero points beyond the uint8 range, a negative lower
    // bound): the AVX-512 table must still agree with the portable kernels (it falls back to
    // them where its shortcuts stop being exact). The AVX2 table does not promise this: it
    // clamps at 0 where the portable kernel wraps a negative `lo` around.
    let p = portable();
    let mut rng = Rng::new(77);
    let terms = [
        qp(0.5, 1 << 23),
        qp(0.5, -(1 << 23)),
        qp(0.5, (1 << 23) + 1),
        qp(0.001, -3_000_000),
        qp(0.25, 300),
    ];
    let Some(k) = avx512() else { return };
    for n in [0usize, 1, 64, 100] {
        let a = edge_codes(&mut rng, n);
        let b = edge_codes(&mut rng, n);
        for &qa in &terms {
            for &(zy, lo) in &[(0, 0), (-7, -7), (300, 0), (100, -1)] {
                let st = RealStage {
                    multiplier: 0.0731,
                    zero_point: zy,
                    lo,
                };
                let (mut got, mut want) = (vec![0u8; n], vec![0u8; n]);
                (k.add2)(&a, qa, &b, qp(0.5, 128), &mut got, st);
                (p.add2)(&a, qa, &b, qp(0.5, 128), &mut want, st);
                assert_eq!(got, want, "{:?} add2 {qa:?} z={zy} lo={lo}", k.isa);
                let xs = [(b.as_slice(), qp(0.5, 128)), (a.as_slice(), qa)];
                (k.sum_n)(&xs, &mut got, st);
                (p.sum_n)(&xs, &mut want, st);
                assert_eq!(got, want, "{:?} sum_n {qa:?} z={zy} lo={lo}", k.isa);
            }
        }
        for z in [-3, 256, 300, -(1 << 23)] {
            let x = edge_floats(&mut rng, n, 0.5);
            let (mut got, mut want) = (vec![0u8; n], vec![0u8; n]);
            (k.quantize)(&x, &mut got, 2.0, z);
            (p.quantize)(&x, &mut want, 2.0, z);
            assert_eq!(got, want, "{:?} quantize z={z}", k.isa);
            let (mut got, mut want) = (vec![0f32; n], vec![0f32; n]);
            (k.dequantize)(&a, &mut got, qp(0.5, z));
            (p.dequantize)(&a, &mut want, qp(0.5, z));
            assert_eq!(got, want, "{:?} dequantize z={z}", k.isa);
        }
    }
}

#[test]
fn simd_pools_match_for_every_channel_count() {
    let p = portable();
    let mut rng = Rng::new(70);
    // (ih, iw, kernel, stride, pads t/l/b/r); the last one is global.
    let shapes = [
        (
            5usize,
            6usize,
            (3usize, 3usize),
            (2usize, 2usize),
            (1, 1, 1, 1),
        ),
        (3, 3, (2, 2), (1, 1), (0, 0, 0, 0)),
        (4, 5, (1, 1), (1, 1), (0, 0, 0, 0)),
        (2, 7, (2, 3), (1, 2), (1, 0, 1, 2)),
        (4, 3, (4, 3), (1, 1), (0, 0, 0, 0)),
    ];
    let params = [
        (qp(1.0, 0), qp(1.0, 0)), // ties (sums / size)
        (qp(0.5, 128), qp(0.25, 128)),
        (qp(0.02, 255), qp(0.7, 255)),
        (qp(0.0731, 0), qp(0.0213, 0)),
        (qp(3.0e38, 128), qp(1.0e-30, 0)), // multiplier +inf: NaN at zero sums
        (qp(1.0e-45, 0), qp(3.0e38, 128)), // multiplier 0
    ];
    // One scratch for every shape, so buffers shrink and grow between calls.
    let mut scratch = PoolScratch::default();
    for k in simd_kernels() {
        for c in 1..=70usize {
            for &(ih, iw, kk, st, pad) in &shapes {
                let g = geom(c, ih, iw, kk, st, pad);
                let x = edge_codes(&mut rng, ih * iw * c);
                let rows = |avg: Option<(QParams, QParams)>, s: &mut PoolScratch| -> Vec<u8> {
                    (0..g.oh)
                        .flat_map(|oy| {
                            guarded(g.ow * c, 0xA5u8, |o| match avg {
                                None => (k.max_pool_row)(&x, &g, oy, o, s),
                                Some((xq, yq)) => (k.avg_pool_row)(&x, &g, oy, xq, yq, o, s),
                            })
                        })
                        .collect()
                };
                let want = run_rows(p, &x, &g, None);
                assert_eq!(rows(None, &mut scratch), want, "{:?} max {g:?}", k.isa);
                assert_eq!(want, naive_pool(&x, &g, None), "portable max {g:?}");
                for &(xq, yq) in &params {
                    let avg = Some((xq, yq));
                    let want = run_rows(p, &x, &g, avg);
                    assert_eq!(
                        rows(avg, &mut scratch),
                        want,
                        "{:?} avg {g:?} {xq:?} {yq:?}",
                        k.isa
                    );
                    assert_eq!(want, naive_pool(&x, &g, avg), "portable avg {g:?}");
                }
            }
        }
    }
}

#[test]
fn simd_avg_pool_sums_many_rows_exactly() {
    // 300 rows of 255: column sums of 76 500 overflow 16 bits, so partial sums must be
    // widened in time. Global pooling of [300, 2, c] and a 290-row window with stride.
    let p = portable();
    for k in simd_kernels() {
        for c in [1usize, 16, 33, 64, 65] {
            for (kh, sh) in [(300usize, 1usize), (290, 7)] {
                let g = geom(c, 300, 2, (kh, 2), (sh, 1), (0, 0, 0, 0));
                let mut rng = Rng::new(c as u64);
                for x in [vec![255u8; 600 * c], edge_codes(&mut rng, 600 * c)] {
                    for &(xq, yq) in &[(qp(1.0, 0), qp(1.0, 0)), (qp(0.5, 128), qp(0.3, 3))] {
                        let got = run_rows(k, &x, &g, Some((xq, yq)));
                        let want = run_rows(p, &x, &g, Some((xq, yq)));
                        assert_eq!(got, want, "{:?} c={c} kh={kh}", k.isa);
                        assert_eq!(want, naive_pool(&x, &g, Some((xq, yq))));
                    }
                    let got = run_rows(k, &x, &g, None);
                    assert_eq!(got, naive_pool(&x, &g, None), "{:?} max c={c}", k.isa);
                }
            }
        }
    }
}

#[test]
fn kernels_for_maps_levels_to_tables() {
    for l in Isa::ALL {
        let Some(k) = qeltwise::kernels_for(l) else {
            assert!(!l.supported(), "{l}: supported but no table");
            continue;
        };
        let want = if l.has_avx512() {
            Isa::Avx512
        } else if l.has_avx2() {
            Isa::Avx2
        } else {
            Isa::Scalar
        };
        assert_eq!(k.isa, want, "table for {l}");
    }
}

#[test]
fn kernel_table_is_chosen_once_from_the_isa() {
    let k = qeltwise::kernels();
    assert!(k.isa <= Isa::current());
    assert!(std::ptr::eq(k, qeltwise::kernels()));
}

// ---------------------------------------------------------------------------------------
// Operators: fast vs reference (fixed cases)
// ---------------------------------------------------------------------------------------

#[test]
fn large_sum_is_exact_and_thread_count_independent() {
    // 3 chunks of PAR_CHUNK plus a ragged tail.
    let n = 3 * qeltwise::PAR_CHUNK + 77;
    let mut rng = Rng::new(21);
    let a = qu8(&[n], rng.u8s(n), qp(0.5, 128));
    let b = qu8(&[n], rng.u8s(n), qp(0.25, 0));
    let args = [("Y_scale", f(0.5)), ("Y_zero_point", i(0))];
    let outs = same_both("Int8SumRelu", &args, 1, &[&a, &b]).unwrap();
    let op = build_int8("Int8SumRelu", &args, 2, 1, false);
    for threads in [1usize, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let o = pool.install(|| op.eval(&[&a, &b])).unwrap();
        assert_eq!(codes(&o[0]).0, codes(&outs[0]).0, "{threads} threads");
    }
    // Spot check against the naive loop.
    let (ca, cb) = (codes(&a).0, codes(&b).0);
    let want = naive_sum(&[(&ca, qp(0.5, 128)), (&cb, qp(0.25, 0))], 1.0 / 0.5, 0, 0);
    assert_eq!(codes(&outs[0]).0, want);
}

#[test]
fn concat_fast_copies_rows_and_requantizes() {
    let mut rng = Rng::new(8);
    let (h, w) = (5, 3);
    let a = qu8(&[1, h, w, 7], rng.u8s(h * w * 7), qp(0.5, 128));
    let b = qu8(&[1, h, w, 33], rng.u8s(h * w * 33), qp(0.5, 128));
    let c = qu8(&[1, h, w, 2], rng.u8s(h * w * 2), qp(0.25, 10));
    // Same parameters: plain row copies; check the layout by hand.
    let out = same_both("Int8Concat", &[("order", s("NHWC"))], 2, &[&a, &b]).unwrap();
    let (ca, cb, cy) = (codes(&a).0, codes(&b).0, codes(&out[0]).0);
    for p in 0..h * w {
        assert_eq!(&cy[p * 40..p * 40 + 7], &ca[p * 7..p * 7 + 7]);
        assert_eq!(&cy[p * 40 + 7..p * 40 + 40], &cb[p * 33..p * 33 + 33]);
    }
    assert_eq!(fingerprint(&out[1]).3, vec![7, 33]);
    // A third input with other parameters is requantized: (q − 10)·0.25/0.5 + 128.
    let out = same_both("Int8Concat", &[("order", s("NHWC"))], 1, &[&a, &b, &c]).unwrap();
    let (cc, cy) = (codes(&c).0, codes(&out[0]).0);
    for p in 0..h * w {
        for j in 0..2 {
            let q = cc[p * 2 + j] as i32;
            let want = (((q - 10) as f32 * 0.5).round_ties_even() as i32 + 128).clamp(0, 255);
            assert_eq!(cy[p * 42 + 40 + j] as i32, want);
        }
    }
    // Explicit output parameters, NCHW axis, negative axis and add_axis.
    let args = [("axis", i(-1)), ("Y_scale", f(0.3)), ("Y_zero_point", i(5))];
    same_both("Int8Concat", &args, 2, &[&a, &b, &c]).unwrap();
    let x = qu8(&[2, 3, 4, 5], rng.u8s(120), qp(0.5, 128));
    let y = qu8(&[2, 3, 4, 5], rng.u8s(120), qp(0.7, 100));
    same_both("Int8Concat", &[("order", s("NCHW"))], 2, &[&x, &y]).unwrap();
    same_both(
        "Int8Concat",
        &[("axis", i(2)), ("add_axis", i(1))],
        2,
        &[&x, &y],
    )
    .unwrap();
    same_both(
        "Int8Concat",
        &[("axis", i(4)), ("add_axis", i(1))],
        1,
        &[&x, &y],
    )
    .unwrap();
    // Mismatched shapes fail on both paths.
    assert!(same_both("Int8Concat", &[("order", s("NCHW"))], 1, &[&x, &a]).is_none());
    // Many rows (several parallel blocks and a partial last one), one input copied and
    // two mapped, segments of 64 and 65 codes (a whole vector and a masked tail).
    let (h, w) = (61, 67);
    let big: Vec<Tensor> = [(64, qp(0.5, 128)), (65, qp(0.25, 10)), (3, qp(0.7, 100))]
        .iter()
        .map(|&(c, q)| qu8(&[1, h, w, c], rng.u8s(h * w * c), q))
        .collect();
    let refs: Vec<&Tensor> = big.iter().collect();
    let out = same_both("Int8Concat", &[("order", s("NHWC"))], 2, &refs).unwrap();
    let (cb, cy) = (codes(&big[1]).0, codes(&out[0]).0);
    for p in [0, 1, h * w / 2, h * w - 1] {
        for j in [0, 63, 64] {
            let q = cb[p * 65 + j] as i32;
            let want = (((q - 10) as f32 * 0.5).round_ties_even() as i32 + 128).clamp(0, 255);
            assert_eq!(cy[p * 132 + 64 + j] as i32, want, "pixel {p}, channel {j}");
        }
    }
}

#[test]
fn pool_errors_agree() {
    let x = qu8(&[1, 4, 4, 3], vec![1; 48], qp(0.5, 0));
    // Pads not smaller than the kernel are rejected when building, on both paths.
    let args = [("kernel", i(2)), ("pad", i(2)), ("order", s("NHWC"))];
    assert!(build_op(&spec_int8("Int8MaxPool", &args, 1, 1, false)).is_err());
    // A wrong input type fails on both paths.
    let fx = ops_util::t(&[1, 4, 4, 3], vec![0.0; 48]);
    let args = [("kernel", i(2)), ("order", s("NHWC"))];
    assert!(same_both("Int8MaxPool", &args, 1, &[&fx]).is_none());
    same_both("Int8MaxPool", &args, 1, &[&x]).unwrap();
}

#[test]
fn resnet_shaped_ops_match() {
    let mut rng = Rng::new(1);
    // MaxPool 3x3 s2 p1 on [1, 112, 112, 64] (ResNet-50 pool1), reduced to 28x28.
    let x = qu8(&[1, 28, 28, 64], rng.u8s(28 * 28 * 64), qp(0.06, 0));
    let args = [
        ("kernel", i(3)),
        ("stride", i(2)),
        ("pad", i(1)),
        ("order", s("NHWC")),
    ];
    same_both("Int8MaxPool", &args, 1, &[&x]).unwrap();
    // Global average pool on [1, 7, 7, 2048].
    let x = qu8(&[1, 7, 7, 2048], rng.u8s(7 * 7 * 2048), qp(0.0731, 0));
    let args = [
        ("global_pooling", i(1)),
        ("order", s("NHWC")),
        ("Y_scale", f(0.0213)),
        ("Y_zero_point", i(0)),
    ];
    same_both("Int8AveragePool", &args, 1, &[&x]).unwrap();
    // Quantize of a [1, 8, 8, 3] image.
    let v: Vec<f32> = (0..192).map(|j| (j as f32 - 96.0) * 1.37).collect();
    let t = ops_util::t(&[1, 8, 8, 3], v);
    same_both(
        "Int8Quantize",
        &[("Y_scale", f(0.5)), ("Y_zero_point", i(128))],
        1,
        &[&t],
    )
    .unwrap();
}

// ---------------------------------------------------------------------------------------
// Property tests: fast vs reference, bit for bit
// ---------------------------------------------------------------------------------------

fn scale_strategy() -> impl Strategy<Value = f32> {
    prop_oneof![
        Just(0.5f32),
        Just(0.25),
        Just(1.0),
        Just(2.0),
        Just(0.125),
        Just(0.003),
        0.001f32..4.0,
    ]
}

fn zp_strategy() -> impl Strategy<Value = i32> {
    prop_oneof![Just(0), Just(128), Just(255), 0i32..=255]
}

fn params_strategy() -> impl Strategy<Value = QParams> {
    (scale_strategy(), zp_strategy()).prop_map(|(s, z)| qp(s, z))
}

/// Codes that favour extremes (saturation) and a few repeated values (ties).
fn codes_strategy(n: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            Just(0u8),
            Just(255),
            Just(128),
            Just(1),
            any::<u8>(),
            any::<u8>()
        ],
        n,
    )
}

fn sum_case() -> impl Strategy<Value = (usize, Vec<(Vec<u8>, QParams)>, QParams, u8)> {
    (1usize..=4, 1usize..200, params_strategy(), 0u8..4).prop_flat_map(|(m, n, y, variant)| {
        let m = if variant >= 2 { 2 } else { m };
        (
            Just(n),
            prop::collection::vec((codes_strategy(n), params_strategy()), m),
            Just(y),
            Just(variant),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn prop_sum_add(case in sum_case()) {
        let (n, ins, y, variant) = case;
        let op = ["Int8Sum", "Int8SumRelu", "Int8Add", "Int8AddRelu"][variant as usize];
        let shape = [1, n];
        let ts: Vec<Tensor> = ins.iter().map(|(v, q)| qu8(&shape, v.clone(), *q)).collect();
        let refs: Vec<&Tensor> = ts.iter().collect();
        let args = [("Y_scale", f(y.scale)), ("Y_zero_point", i(y.zero_point as i64))];
        let out = same_both(op, &args, 1, &refs);
        prop_assert!(out.is_some());
    }

    #[test]
    fn prop_quantize(
        n in 1usize..200,
        scale in scale_strategy(),
        z in zp_strategy(),
        seeds in prop::collection::vec((0u8..8, -400i32..400, any::<f32>()), 200),
    ) {
        let x: Vec<f32> = seeds[..n]
            .iter()
            .map(|&(kind, t, r)| match kind {
                0 => (t as f32 + 0.5) * scale, // tie
                1 => t as f32 * scale,
                2 => [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30][(t & 3) as usize],
                3 => r,
                _ => t as f32 * 0.37,
            })
            .collect();
        let tx = ops_util::t(&[n], x);
        let args = [("Y_scale", f(scale)), ("Y_zero_point", i(z as i64))];
        let out = same_both("Int8Quantize", &args, 1, &[&tx]);
        prop_assert!(out.is_some());
    }

    #[test]
    fn prop_dequantize_relu(n in 1usize..200, p in params_strategy(), seed in any::<u64>()) {
        let x = qu8(&[n], Rng::new(seed).u8s(n), p);
        prop_assert!(same_both("Int8Dequantize", &[], 1, &[&x]).is_some());
        prop_assert!(same_both("Int8Relu", &[], 1, &[&x]).is_some());
    }

    #[test]
    fn prop_pool(
        n in 1usize..3,
        c in 1usize..71,
        h in 1usize..10,
        w in 1usize..10,
        k in (1usize..5, 1usize..5),
        st in (1usize..4, 1usize..4),
        pads in (0usize..4, 0usize..4, 0usize..4, 0usize..4),
        global in any::<bool>(),
        nchw in prop::bool::weighted(0.2),
        xq in params_strategy(),
        yq in params_strategy(),
        seed in any::<u64>(),
    ) {
        let mut args = vec![("order", s(if nchw { "NCHW" } else { "NHWC" }))];
        if global {
            args.push(("global_pooling", i(1)));
        } else {
            // Pads must stay below the kernel.
            let p = [pads.0 % k.0, pads.1 % k.1, pads.2 % k.0, pads.3 % k.1];
            args.push(("kernel_h", i(k.0 as i64)));
            args.push(("kernel_w", i(k.1 as i64)));
            args.push(("stride_h", i(st.0 as i64)));
            args.push(("stride_w", i(st.1 as i64)));
            args.push(("pads", ArgValue::Ints(p.iter().map(|&v| v as i64).collect())));
        }
        let shape = if nchw { [n, c, h, w] } else { [n, h, w, c] };
        let x = qu8(&shape, Rng::new(seed).u8s(n * c * h * w), xq);
        let _ = same_both("Int8MaxPool", &args, 1, &[&x]);
        args.push(("Y_scale", f(yq.scale)));
        args.push(("Y_zero_point", i(yq.zero_point as i64)));
        let _ = same_both("Int8AveragePool", &args, 1, &[&x]);
    }

    #[test]
    fn prop_concat_nhwc(
        hw in (1usize..5, 1usize..5),
        chans in prop::collection::vec((1usize..40, 0u8..3), 1..5),
        y in prop::option::of(params_strategy()),
        seed in any::<u64>(),
    ) {
        let mut rng = Rng::new(seed);
        let base = qp(0.5, 128);
        let ts: Vec<Tensor> = chans
            .iter()
            .map(|&(c, kind)| {
                let q = match kind {
                    0 => base,
                    1 => qp(0.25, 0),
                    _ => qp(0.0371, 255),
                };
                qu8(&[1, hw.0, hw.1, c], rng.u8s(hw.0 * hw.1 * c), q)
            })
            .collect();
        let refs: Vec<&Tensor> = ts.iter().collect();
        let mut args = vec![("order", s("NHWC"))];
        if let Some(y) = y {
            args.push(("Y_scale", f(y.scale)));
            args.push(("Y_zero_point", i(y.zero_point as i64)));
        }
        prop_assert!(same_both("Int8Concat", &args, 2, &refs).is_some());
    }
}

#[test]
fn errors_are_errors_on_both_paths() {
    // Shape mismatch in Sum.
    let a = qu8(&[4], vec![1; 4], qp(0.5, 0));
    let b = qu8(&[5], vec![1; 5], qp(0.5, 0));
    let args = [("Y_scale", f(0.5))];
    assert!(same_both("Int8Sum", &args, 1, &[&a, &b]).is_none());
    // Quantize of an Int8 tensor.
    assert!(same_both("Int8Quantize", &args, 1, &[&a]).is_none());
    let e: Result<_, OpError> =
        build_int8("Int8Dequantize", &[], 1, 1, false).eval(&[&ops_util::t(&[1], vec![0.0])]);
    assert!(e.is_err());
}
