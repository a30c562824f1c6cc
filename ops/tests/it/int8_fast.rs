//! The fast int8 Conv/FC kernels against the scalar reference (`NodeSpec::reference`), bit
//! for bit, and the GEMM / depthwise kernels against naive loops written here; per-channel
//! weight scales (`W_scales`) against hand-worked values.

use ops::kernels::isa::Isa;
use ops::kernels::qdepthwise::{
    kernel_name as dw_kernel_name, qdepthwise, qdepthwise_with, DwShape, PackedDepthwise,
};
use ops::kernels::qeltwise::RealStage;
use ops::kernels::qgemm::{
    effective_isa, kernel_name, qgemm_sum_with, qgemm_tiles_emulated, qgemm_with, PackedQWeights,
    QEpilogue, QLayout, QMatRef, SumStage,
};
use ops::QParams;
use ops::{ArgValue, Op, OpError, Tensor};
use ops_util::{build_int8, codes, f, floats, i, ints, qi32, qp, qu8, s, try_build_int8};
use proptest::prelude::*;

use crate::ops_util;
use ops_util::TestRng as Rng;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A DNNLOWP op with one output: the fast kernels, or the scalar reference.
fn try_build_ref(
    op: &str,
    args: &[(&str, ArgValue)],
    n_in: usize,
    reference: bool,
) -> Result<Box<dyn Op>, OpError> {
    try_build_int8(op, args, n_in, 1, reference)
}

fn build_ref(op: &str, args: &[(&str, ArgValue)], n_in: usize, reference: bool) -> Box<dyn Op> {
    build_int8(op, args, n_in, 1, reference)
}

/// Runs `op` once in a 1-thread and once in a 2-thread pool; both must agree.
fn eval_threads(op: &dyn Op, inputs: &[&Tensor]) -> Result<Tensor, OpError> {
    let run = |n| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
            .install(|| op.eval(inputs))
    };
    let one = run(1)?.remove(0);
    let two = run(2)?.remove(0);
    assert_eq!(codes(&one), codes(&two), "1 vs 2 threads");
    Ok(one)
}

fn avx2_or_skip(what: &str) -> bool {
    if effective_isa(Isa::Avx2) == Isa::Avx2 {
        true
    } else {
        eprintln!("skipping the AVX2 part of {what}: this CPU has no AVX2");
        false
    }
}

// ---------------------------------------------------------------------------------------
// qgemm against a naive loop
// ---------------------------------------------------------------------------------------

struct GemmCase {
    m: usize,
    k: usize,
    n: usize,
    zx: i32,
    x: Vec<u8>,
    w: Vec<u8>,
    zw: Vec<i32>,
    bias: Vec<i32>,
    mults: Vec<f32>,
    zy: i32,
    lo: i32,
}

fn gemm_case(m: usize, k: usize, n: usize, seed: u64, relu: bool) -> GemmCase {
    let mut r = Rng::new(seed);
    let extreme = r.below(4) == 0;
    let zy = r.zp();
    GemmCase {
        m,
        k,
        n,
        zx: r.zp(),
        x: r.some_codes(m * k, 4),
        w: r.codes(n * k, extreme),
        zw: (0..n).map(|_| r.zp()).collect(),
        bias: (0..n).map(|_| r.below(200_001) as i32 - 100_000).collect(),
        mults: (0..n)
            .map(|_| (1e-5 + r.unit_f32() * 3e-3) / (k as f32).sqrt())
            .collect(),
        zy,
        lo: if relu { zy } else { 0 },
    }
}

/// The definition: `clamp(round_half_even(f32(Σ (x − z_x)(w − z_w) + b) · M) + z_y, lo, 255)`.
fn naive_gemm(c: &GemmCase) -> Vec<u8> {
    let mut y = vec![0u8; c.m * c.n];
    for i in 0..c.m {
        for j in 0..c.n {
            let mut acc: i64 = c.bias[j] as i64;
            for p in 0..c.k {
                acc += (c.x[i * c.k + p] as i64 - c.zx as i64)
                    * (c.w[j * c.k + p] as i64 - c.zw[j] as i64);
            }
            let raw = i32::try_from(acc).expect("test sizes stay in i32");
            let v = (raw as f32 * c.mults[j]).round_ties_even();
            // `as i64` saturates (NaN → 0), as C's lrintf would be undefined there.
            y[i * c.n + j] = (v as i64)
                .saturating_add(c.zy as i64)
                .clamp(c.lo as i64, 255) as u8;
        }
    }
    y
}

/// How one GEMM test run packs and runs the weights.
#[derive(Debug, Clone, Copy)]
enum Run {
    /// The layout `pack_for` gives at this level, run at this level.
    Level(Isa),
    /// The given layout, run at this level (capped to what the CPU has).
    Layout(QLayout, Isa),
    /// The tile layout on the AMX driver with emulated tiles.
    Emulated,
}

/// Every way of running a GEMM: each level's own layout, the VNNI and tile layouts at every
/// level (the unsupported ones fall back to the best supported kernels, down to the
/// portable VNNI kernels), and the emulated AMX driver.
fn all_runs() -> Vec<Run> {
    let mut v: Vec<Run> = Isa::ALL.iter().map(|&l| Run::Level(l)).collect();
    for layout in [QLayout::Vnni, QLayout::Tiles] {
        for l in [Isa::Scalar, Isa::AvxVnni, Isa::Avx512Vnni, Isa::Amx] {
            v.push(Run::Layout(layout, l));
        }
    }
    v.push(Run::Emulated);
    v
}

/// Runs the GEMM of `c`; A is read at row stride `k + lda_extra` from offset 1 of a copy
/// (so kernels that read rows in place meet rows that do not start or end on a 4-byte
/// boundary), Y has row stride `ldy` with the product at columns `col0..`.
fn run_gemm_as(run: Run, c: &GemmCase, ldy: usize, col0: usize, lda_extra: usize) -> Vec<u8> {
    let w = match run {
        Run::Level(isa) => PackedQWeights::pack_for(isa, &c.w, c.n, c.k, &c.zw),
        Run::Layout(layout, _) => PackedQWeights::pack_with(&c.w, c.n, c.k, &c.zw, layout),
        Run::Emulated => PackedQWeights::pack_with(&c.w, c.n, c.k, &c.zw, QLayout::Tiles),
    }
    .unwrap();
    let ep = QEpilogue::new(w.col_sums(), c.zx, &c.bias, &c.mults, c.zy, c.lo).unwrap();
    let lda = c.k + lda_extra;
    let mut xp = vec![0x5Au8; 1 + c.m * lda];
    for i in 0..c.m {
        xp[1 + i * lda..1 + i * lda + c.k].copy_from_slice(&c.x[i * c.k..(i + 1) * c.k]);
    }
    // The last row ends the buffer: in-place readers must not pass it.
    xp.truncate(1 + (c.m.max(1) - 1) * lda + c.k);
    let a = QMatRef::new(&xp, c.m, c.k, lda, 1).unwrap();
    let mut y = vec![0xA5u8; c.m * ldy];
    match run {
        Run::Level(isa) | Run::Layout(_, isa) => qgemm_with(isa, &a, &w, &ep, &mut y, ldy, col0),
        Run::Emulated => qgemm_tiles_emulated(&a, &w, &ep, None, &mut y, ldy, col0),
    }
    .unwrap();
    // Columns outside col0..col0+n are untouched.
    for row in y.chunks(ldy) {
        assert!(row[..col0].iter().all(|&v| v == 0xA5), "{run:?}");
        assert!(row[col0 + c.n..].iter().all(|&v| v == 0xA5), "{run:?}");
    }
    y.chunks(ldy)
        .flat_map(|r| r[col0..col0 + c.n].to_vec())
        .collect()
}

fn check_gemm(c: &GemmCase) {
    let want = naive_gemm(c);
    for run in all_runs() {
        assert_eq!(run_gemm_as(run, c, c.n, 0, 0), want, "{run:?}");
        assert_eq!(
            run_gemm_as(run, c, c.n + 5, 3, 3),
            want,
            "{run:?}, strided input and output"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn qgemm_matches_naive(
        m in 1usize..40, k in 1usize..160, n in 1usize..70, seed in any::<u64>(), relu: bool
    ) {
        check_gemm(&gemm_case(m, k, n, seed, relu));
    }
}

// ---------------------------------------------------------------------------------------
// The VNNI and tile layouts (vpdpbusd, AMX): every level and the emulated AMX driver
// ---------------------------------------------------------------------------------------

/// Zero points 0/128/255 or random for X and every channel of W, weights at the code
/// extremes (centred values up to ±255, so channels whose range does not fit i8 take the
/// row-sum correction), activations at 0/255 runs.
fn vnni_case(m: usize, k: usize, n: usize, seed: u64, relu: bool) -> GemmCase {
    let mut c = gemm_case(m, k, n, seed, relu);
    let mut r = Rng::new(seed ^ 0x51ed_270b_27a4_3c11);
    c.zx = [0, 128, 255, r.zp()][r.below(4) as usize];
    for j in 0..n {
        c.zw[j] = [0, 128, 255, r.zp()][r.below(4) as usize];
        let style = r.below(3);
        for p in 0..k {
            c.w[j * k + p] = match (style, r.below(4)) {
                (0, _) => r.below(256) as u8,
                (1, 0) => 0,
                (1, 1) => 255,
                // Symmetric-looking channels: centred values within i8.
                _ => (c.zw[j] + r.below(256) as i32 - 128).clamp(0, 255) as u8,
            };
        }
    }
    for v in c.x.iter_mut() {
        match r.below(8) {
            0 => *v = 0,
            1 => *v = 255,
            _ => {}
        }
    }
    c
}

/// Runs `c` on every VNNI/tile route at 1 and 2 threads against the naive loop.
fn check_vnni(c: &GemmCase) {
    let want = naive_gemm(c);
    let mut runs = vec![Run::Emulated];
    for layout in [QLayout::Vnni, QLayout::Tiles] {
        for l in [Isa::Scalar, Isa::AvxVnni, Isa::Avx512Vnni, Isa::Amx] {
            runs.push(Run::Layout(layout, l));
        }
    }
    for run in runs {
        for threads in [1, 2] {
            let got = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| run_gemm_as(run, c, c.n + 1, 1, (c.m + c.k) % 5));
            assert_eq!(
                got, want,
                "{run:?}, {threads} threads, m {} k {} n {}",
                c.m, c.k, c.n
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn qgemm_vnni_and_tiles_match_naive(
        m in 1usize..80, k in 1usize..300, n in 1usize..100, seed in any::<u64>(), relu: bool
    ) {
        check_vnni(&vnni_case(m, k, n, seed, relu));
    }
}

#[test]
fn qgemm_vnni_tile_edges_match_naive() {
    // Around the register tile (6 rows × 64 channels), the AMX block (32 × 32) and its
    // 64-byte K steps, with per-channel multipliers, odd zero points and fused ReLU.
    let mut idx = 0;
    for m in [1, 5, 6, 7, 15, 16, 17, 31, 32, 33, 49, 64, 65] {
        for (k, n) in [
            (1, 1),
            (3, 16),
            (4, 17),
            (63, 31),
            (64, 32),
            (65, 33),
            (129, 64),
            (200, 65),
        ] {
            idx += 1;
            check_vnni(&vnni_case(m, k, n, 1000 + idx, idx % 3 == 0));
        }
    }
    // Long K and many rows: several row tasks per thread and channel blocks.
    check_vnni(&vnni_case(200, 1100, 70, 5, false));
    check_vnni(&vnni_case(3, 4608, 40, 6, true));
}

#[test]
fn qgemm_vnni_extreme_weights_and_multipliers() {
    // Every code at an extreme with zero points that put the centred weights at ±255 (row
    // sums needed), huge, tiny, NaN and infinite multipliers: the stage must give the
    // scalar reference's codes (NaN → z_y, ±∞ → the bounds).
    let (m, k, n) = (37, 130, 20);
    let mut c = vnni_case(m, k, n, 99, false);
    for (j, zw) in c.zw.iter_mut().enumerate() {
        *zw = [0, 255, 128, 1][j % 4];
    }
    for (i, w) in c.w.iter_mut().enumerate() {
        *w = if (i / 3) % 2 == 0 { 255 } else { 0 };
    }
    for (j, mult) in c.mults.iter_mut().enumerate() {
        *mult = match j % 5 {
            0 => f32::NAN,
            1 => f32::INFINITY,
            2 => 1e9,
            3 => 1e-12,
            _ => 3e-5,
        };
    }
    check_vnni(&c);
    c.mults.iter_mut().for_each(|v| *v = -*v);
    c.lo = c.zy;
    check_vnni(&c);
}

/// The Sum reference written out: `clamp(round_half_even((0 + s_a·(a − z_a) + s_b·(b −
/// z_b)) · (1/s_y) + z_y), lo, 255)`, NaN → `lo`.
fn naive_sum2(a: u8, qa: QParams, b: u8, qb: QParams, inv: f32, zy: i32, lo: i32) -> u8 {
    // DNNLOWP's x86 form: fma(q, s, f32(-z * s)) per input, then fma(acc, 1/s_y, z_y).
    let ta = (a as f32).mul_add(qa.scale, (-qa.zero_point) as f32 * qa.scale);
    let tb = (b as f32).mul_add(qb.scale, (-qb.zero_point) as f32 * qb.scale);
    let v = (ta + tb).mul_add(inv, zy as f32).round_ties_even();
    if v.is_nan() {
        return lo as u8;
    }
    (v as i64).clamp(lo as i64, 255) as u8
}

#[test]
fn qgemm_fused_sum_matches_gemm_then_sum() {
    // Every route (each level's layout, VNNI/tile layouts at every level, emulated AMX) at 1
    // and 2 threads, few rows (the channel split) and many, odd widths, the Sum's ReLU and
    // scales that put values on ties, far outside [0, 255] and at NaN.
    let mut seed = 300;
    for &(m, k, n) in &[
        (1, 8, 16),
        (3, 70, 37),
        (40, 64, 64),
        (70, 200, 33),
        (130, 96, 96),
    ] {
        for (sa, sb, sy, relu) in [
            (0.5f32, 0.25f32, 1.0f32, false),
            (0.02, 0.03, 0.04, true),
            (1e30, 1e30, 1e-30, false),
            (f32::INFINITY, 1.0, 1.0, true),
        ] {
            seed += 1;
            let c = vnni_case(m, k, n, seed, seed % 2 == 0);
            let gemm = naive_gemm(&c);
            let mut r = Rng::new(seed);
            let other: Vec<u8> = (0..m * n).map(|_| r.below(256) as u8).collect();
            // The GEMM codes' parameters as the Sum sees them: in a net they are the
            // GEMM's own (zero point z_y, the kernels' direct form), else arbitrary.
            let za = r.zp();
            let qa = QParams {
                scale: sa,
                zero_point: if seed % 3 == 0 { za } else { c.zy },
            };
            let qb = QParams {
                scale: sb,
                zero_point: r.zp(),
            };
            let (zy, inv) = (r.zp(), 1.0 / sy);
            let lo = if relu { zy } else { 0 };
            let want: Vec<u8> = gemm
                .iter()
                .zip(&other)
                .map(|(&a, &b)| naive_sum2(a, qa, b, qb, inv, zy, lo))
                .collect();
            let st = SumStage {
                gemm: qa,
                other: qb,
                out: RealStage {
                    multiplier: inv,
                    zero_point: zy,
                    lo,
                },
            };
            for run in all_runs() {
                for threads in [1, 2] {
                    let w = match run {
                        Run::Level(isa) => PackedQWeights::pack_for(isa, &c.w, n, k, &c.zw),
                        Run::Layout(l, _) => PackedQWeights::pack_with(&c.w, n, k, &c.zw, l),
                        Run::Emulated => {
                            PackedQWeights::pack_with(&c.w, n, k, &c.zw, QLayout::Tiles)
                        }
                    }
                    .unwrap();
                    let ep =
                        QEpilogue::new(w.col_sums(), c.zx, &c.bias, &c.mults, c.zy, c.lo).unwrap();
                    let a = QMatRef::new(&c.x, m, k, k, 0).unwrap();
                    let mut y = vec![0u8; m * n];
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap()
                        .install(|| match run {
                            Run::Level(isa) | Run::Layout(_, isa) => {
                                qgemm_sum_with(isa, &a, &w, &ep, &st, &other, &mut y, n, 0)
                            }
                            Run::Emulated => {
                                qgemm_tiles_emulated(&a, &w, &ep, Some((&st, &other)), &mut y, n, 0)
                            }
                        })
                        .unwrap();
                    assert_eq!(
                        y, want,
                        "{run:?} {threads} threads m {m} k {k} n {n} sa {sa} za {}",
                        qa.zero_point
                    );
                }
            }
        }
    }
    // A summand of the wrong length is refused.
    let c = vnni_case(4, 8, 16, 1, false);
    let w = PackedQWeights::pack(&c.w, 16, 8, &c.zw).unwrap();
    let ep = QEpilogue::new(w.col_sums(), c.zx, &c.bias, &c.mults, c.zy, c.lo).unwrap();
    let a = QMatRef::new(&c.x, 4, 8, 8, 0).unwrap();
    let st = SumStage {
        gemm: QParams {
            scale: 1.0,
            zero_point: 0,
        },
        other: QParams {
            scale: 1.0,
            zero_point: 0,
        },
        out: RealStage {
            multiplier: 1.0,
            zero_point: 0,
            lo: 0,
        },
    };
    let mut y = vec![0u8; 64];
    assert!(qgemm_sum_with(Isa::Scalar, &a, &w, &ep, &st, &[0; 63], &mut y, 16, 0).is_err());
}

#[test]
fn qgemm_kernel_names_say_dtype_tile_and_isa() {
    let w = |isa| PackedQWeights::pack_for(isa, &[130u8; 64 * 8], 8, 64, &[128; 8]).unwrap();
    assert_eq!(
        kernel_name(Isa::Scalar, &w(Isa::Scalar)),
        "qgemm_u8i16_i32_6x16_portable"
    );
    // Each level's name when the CPU has it, else the level it falls back to.
    for l in Isa::ALL {
        let name = kernel_name(l, &w(l));
        assert!(name.starts_with("qgemm_u8"), "{name}");
        let got = Isa::capped(l);
        let want = match got {
            Isa::Scalar => "portable",
            Isa::Avx2 | Isa::Avx512 => "avx2",
            Isa::AvxVnni => "avxvnni",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Amx => "amx",
        };
        assert!(name.ends_with(want), "{l}: {name}");
    }
}

// ---------------------------------------------------------------------------------------
// The quad (vpmaddubsw) layout: saturation-free main part plus exact outliers
// ---------------------------------------------------------------------------------------

/// Weights whose centred values fit i8, mostly small with runs of large same-sign values
/// (which break the i16 lane budget and must become outliers), zero points 0/128/255 or
/// random ones.
fn quad_case(m: usize, k: usize, n: usize, seed: u64, relu: bool) -> GemmCase {
    let mut c = gemm_case(m, k, n, seed, relu);
    let mut r = Rng::new(seed ^ 0x9e37_79b9_7f4a_7c15);
    c.zx = [0, 128, 255, r.zp()][r.below(4) as usize];
    for j in 0..n {
        let zw = [0, 128, 255, r.zp()][r.below(4) as usize];
        c.zw[j] = zw;
        // Centred range that keeps the codes in [0, 255] and the values in [−128, 127].
        let (lo, hi) = ((-zw).max(-128), (255 - zw).min(127));
        let big = r.below(3);
        for p in 0..k {
            let v = match r.below(8) {
                0 if big > 0 => hi,
                1 if big > 1 => lo,
                2 => r.below(41) as i32 - 20,
                3 => r.below(256) as i32 - 128,
                _ => r.below(11) as i32 - 5,
            };
            c.w[j * k + p] = (v.clamp(lo, hi) + zw) as u8;
        }
    }
    c
}

fn check_quads(c: &GemmCase) -> usize {
    let want = naive_gemm(c);
    let w = PackedQWeights::pack_with(&c.w, c.n, c.k, &c.zw, QLayout::Quads).unwrap();
    assert_eq!(w.layout(), QLayout::Quads);
    let ep = QEpilogue::new(w.col_sums(), c.zx, &c.bias, &c.mults, c.zy, c.lo).unwrap();
    let a = QMatRef::new(&c.x, c.m, c.k, c.k, 0).unwrap();
    let isas: &[Isa] = if effective_isa(Isa::Avx2) == Isa::Avx2 {
        &[Isa::Scalar, Isa::Avx2]
    } else {
        &[Isa::Scalar]
    };
    for &isa in isas {
        for threads in [1, 2] {
            let mut y = vec![0u8; c.m * c.n];
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| qgemm_with(isa, &a, &w, &ep, &mut y, c.n, 0).unwrap());
            assert_eq!(y, want, "{isa:?}, {threads} threads");
        }
    }
    w.outlier_count()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn qgemm_quads_match_naive(
        m in 1usize..30, k in 1usize..300, n in 1usize..40, seed in any::<u64>(), relu: bool
    ) {
        check_quads(&quad_case(m, k, n, seed, relu));
    }
}

#[test]
fn qgemm_quads_outliers_and_blocks_match_naive() {
    // K past one block (1024 in quads) with a short remainder, K not a multiple of 8,
    // channels past one block, and weights that force many outliers; several K blocks with
    // several panels and more than eight row tiles (outlier products written straight into
    // the partial sums at a stride of one tile per panel).
    let mut outliers = 0;
    for (idx, &(m, k, n)) in [
        (9, 1037, 21),
        (50, 77, 270),
        (3, 2500, 17),
        (13, 8, 16),
        (70, 1100, 40),
    ]
    .iter()
    .enumerate()
    {
        outliers += check_quads(&quad_case(m, k, n, 77 + idx as u64, idx % 2 == 1));
    }
    assert!(
        outliers > 100,
        "only {outliers} outliers: the case does not test them"
    );
}

#[test]
fn qgemm_quads_lane_budget_edges() {
    // Four same-sign weights of 32 in one i16 lane sum to exactly 128 (kept), 33 + 32·3
    // breaks the budget (one outlier), with every activation at 255 and zero point 0: the
    // i16 lane reaches ±255·128 = ±32640 without saturating; four weights of −128 leave
    // one in the main part and three outliers per lane.
    let (m, k, n) = (5, 16, 3);
    for (wv, zw, want_out) in [(32, 128, 0), (-32, 128, 0), (33, 128, 2), (-128, 128, 6)] {
        let mut w = vec![128u8; n * k];
        for p in [0, 1, 4, 5, 8, 9, 12, 13] {
            w[p] = (wv + zw) as u8;
        }
        if wv == 33 {
            // Only one set per octet over budget.
            for p in [1, 4, 5, 9, 12, 13] {
                w[p] = (32 + zw) as u8;
            }
        }
        let c = GemmCase {
            m,
            k,
            n,
            zx: 0,
            x: vec![255; m * k],
            w,
            zw: vec![zw; n],
            bias: vec![3; n],
            mults: vec![1.0 / 1024.0; n],
            zy: 128,
            lo: 0,
        };
        let got = check_quads(&c);
        assert_eq!(got, want_out, "weight {wv}");
        // Hand-worked: channel 0 is 255 · (sum of its weights) + 3, scaled by 1/1024, + 128
        // (e.g. 32: 255·256 + 3 = 65283 → 63.75 → 64 → 192).
        let y = naive_gemm(&c);
        let wsum: i32 = if wv == 33 { 2 * 33 + 6 * 32 } else { 8 * wv };
        let v = ((255 * wsum + 3) as f32 / 1024.0).round_ties_even() as i32 + 128;
        assert_eq!(y[0] as i32, v.clamp(0, 255));
        if wv == 32 {
            assert_eq!(y[0], 192);
        }
    }
}

#[test]
fn qgemm_quads_reject_wide_weights() {
    // Zero point 0 with a code of 200: the centred value does not fit i8.
    let e = PackedQWeights::pack_with(&[200, 1], 1, 2, &[0], QLayout::Quads);
    assert!(e.is_err());
    // The automatic choice falls back to pairs and stays exact.
    let w = PackedQWeights::pack_for(Isa::Avx2, &[200, 1], 1, 2, &[0]).unwrap();
    assert_eq!(w.layout(), QLayout::Pairs);
}

#[test]
fn qgemm_automatic_layout() {
    // Small centred weights (no outliers): quads from K = 128 on, pairs below (a 4-row quad
    // tile does too little work per output stage there); too many outliers: pairs.
    let small =
        |n: usize, k: usize| -> Vec<u8> { (0..n * k).map(|i| (126 + i % 5) as u8).collect() };
    for (k, want) in [
        (64, QLayout::Pairs),
        (127, QLayout::Pairs),
        (128, QLayout::Quads),
        (576, QLayout::Quads),
    ] {
        let w = PackedQWeights::pack_for(Isa::Avx2, &small(8, k), 8, k, &[128; 8]).unwrap();
        assert_eq!((k, w.layout(), w.outlier_count()), (k, want, 0));
    }
    // Every weight at +127: each lane set of four breaks the budget, 3 outliers per set.
    let w = PackedQWeights::pack_for(Isa::Avx2, &vec![255; 8 * 256], 8, 256, &[128; 8]).unwrap();
    assert_eq!(w.layout(), QLayout::Pairs);
    // The VNNI levels take their own layouts whatever the weights.
    for (isa, want) in [
        (Isa::AvxVnni, QLayout::Vnni),
        (Isa::Avx512Vnni, QLayout::Vnni),
        (Isa::Amx, QLayout::Tiles),
    ] {
        let w = PackedQWeights::pack_for(isa, &small(8, 64), 8, 64, &[128; 8]).unwrap();
        assert_eq!(w.layout(), want);
    }
}

#[test]
fn qgemm_long_k_and_wide_n_match_naive() {
    avx2_or_skip("qgemm_long_k_and_wide_n_match_naive");
    // K past one block (512) and several blocks with a short remainder; N past one
    // channel block (256); M past one row tile (96) and across the small-M split.
    for (idx, &(m, k, n)) in [
        (7, 513, 20),
        (13, 1100, 33),
        (100, 40, 270),
        (3, 64, 300),
        (1, 2048, 100),
        (200, 9, 17),
        (61, 576, 64),
    ]
    .iter()
    .enumerate()
    {
        let c = gemm_case(m, k, n, 1000 + idx as u64, idx % 2 == 0);
        for threads in [1, 2] {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| check_gemm(&c));
        }
    }
}

#[test]
fn qgemm_extreme_values_match_naive() {
    // All codes 0/255 with zero points at the far ends: |x − z_x|, |w − z_w| = 255.
    for (zx, zw, x, w) in [(0, 255, 255u8, 0u8), (255, 0, 0, 255), (0, 0, 255, 255)] {
        let (m, k, n) = (9, 301, 19);
        let c = GemmCase {
            m,
            k,
            n,
            zx,
            x: vec![x; m * k],
            w: vec![w; n * k],
            zw: vec![zw; n],
            bias: vec![-7; n],
            mults: (0..n).map(|j| 1.0 / (1 << (j % 20)) as f32).collect(),
            zy: 128,
            lo: 0,
        };
        check_gemm(&c);
    }
}

/// Multipliers that overflow or are not finite (a tiny output scale), mixed with ordinary
/// ones: the kernels take their general output stage and must still agree with the loop.
fn odd_multipliers(n: usize) -> Vec<f32> {
    let odd = [
        f32::INFINITY,
        f32::NAN,
        0.0,
        f32::MAX,
        1e30,
        0.01,
        1.0,
        -0.0,
    ];
    (0..n).map(|j| odd[j % odd.len()]).collect()
}

#[test]
fn qgemm_non_finite_multipliers_match_naive() {
    let mut c = gemm_case(13, 37, 40, 77, false);
    c.mults = odd_multipliers(c.n);
    c.bias[0] = 0;
    c.x.iter_mut().for_each(|v| *v = c.zx as u8); // some raw values exactly 0 (0 · inf)
    for v in c.x.iter_mut().skip(100) {
        *v = v.wrapping_mul(7);
    }
    check_gemm(&c);
}

#[test]
fn qdepthwise_non_finite_multipliers_match_naive() {
    let mut r = Rng::new(99);
    let c = 37;
    let sh = DwShape {
        n: 1,
        h: 5,
        w: 4,
        c,
        oh: 5,
        ow: 4,
        kh: 3,
        kw: 3,
        stride_h: 1,
        stride_w: 1,
        dil_h: 1,
        dil_w: 1,
        pad_t: 1,
        pad_l: 1,
    };
    let x = r.codes(5 * 4 * c, false);
    let wc = r.codes(c * 9, false);
    let zw: Vec<i32> = (0..c).map(|_| r.zp()).collect();
    let bias: Vec<i32> = (0..c).map(|i| if i % 3 == 0 { 0 } else { 500 }).collect();
    let mults = odd_multipliers(c);
    let want = naive_depthwise(&x, 17, &sh, &wc, &zw, &bias, &mults, 5, 0);
    let pw = PackedDepthwise::pack(&wc, c, 9, &zw).unwrap();
    let ep = QEpilogue::new(pw.col_sums(), 17, &bias, &mults, 5, 0).unwrap();
    for isa in Isa::available() {
        let mut y = vec![0u8; want.len()];
        qdepthwise_with(isa, &x, 17, &sh, &pw, &ep, &mut y).unwrap();
        assert_eq!(y, want, "{isa:?}");
    }
}

#[test]
fn qgemm_zero_depth_gives_bias() {
    // K = 0: raw = bias only. 10 · 0.5 = 5 → 5 + 3 = 8; −10 · 0.5 = −5 → −5 + 3 → 0.
    let w = PackedQWeights::pack(&[], 2, 0, &[4, 9]).unwrap();
    let ep = QEpilogue::new(w.col_sums(), 17, &[10, -10], &[0.5, 0.5], 3, 0).unwrap();
    let a = QMatRef::new(&[], 3, 0, 0, 0).unwrap();
    for isa in [Isa::Scalar, Isa::Avx2] {
        let mut y = vec![9u8; 6];
        qgemm_with(isa, &a, &w, &ep, &mut y, 2, 0).unwrap();
        assert_eq!(y, vec![8, 0, 8, 0, 8, 0]);
    }
}

#[test]
fn qgemm_rejects_mismatched_buffers() {
    let w = PackedQWeights::pack(&[1, 2, 3, 4], 2, 2, &[0, 0]).unwrap();
    let ep = QEpilogue::new(w.col_sums(), 0, &[0, 0], &[1.0, 1.0], 0, 0).unwrap();
    let x = [1u8, 2, 3];
    let a = QMatRef::new(&x, 1, 3, 3, 0).unwrap();
    let mut y = vec![0u8; 2];
    assert!(qgemm_with(Isa::Scalar, &a, &w, &ep, &mut y, 2, 0).is_err());
    assert!(QMatRef::new(&x, 2, 2, 2, 0).is_err());
    assert!(PackedQWeights::pack(&[1, 2, 3], 2, 2, &[0, 0]).is_err());
    assert!(PackedQWeights::pack(&[1, 2, 3, 4], 2, 2, &[0, 256]).is_err());
    assert!(QEpilogue::new(w.col_sums(), 0, &[0], &[1.0, 1.0], 0, 0).is_err());
}

// ---------------------------------------------------------------------------------------
// Depthwise kernel against a naive loop
// ---------------------------------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
fn naive_depthwise(
    x: &[u8],
    zx: i32,
    sh: &DwShape,
    w: &[u8],
    zw: &[i32],
    bias: &[i32],
    mults: &[f32],
    zy: i32,
    lo: i32,
) -> Vec<u8> {
    let mut y = vec![0u8; sh.n * sh.oh * sh.ow * sh.c];
    for n in 0..sh.n {
        for oy in 0..sh.oh {
            for ox in 0..sh.ow {
                for c in 0..sh.c {
                    let mut acc = bias[c] as i64;
                    for ky in 0..sh.kh {
                        for kx in 0..sh.kw {
                            let iy = (oy * sh.stride_h + ky * sh.dil_h) as i64 - sh.pad_t as i64;
                            let ix = (ox * sh.stride_w + kx * sh.dil_w) as i64 - sh.pad_l as i64;
                            if iy < 0 || ix < 0 || iy >= sh.h as i64 || ix >= sh.w as i64 {
                                continue;
                            }
                            let xv = x[((n * sh.h + iy as usize) * sh.w + ix as usize) * sh.c + c];
                            let wv = w[(c * sh.kh + ky) * sh.kw + kx];
                            acc += (xv as i64 - zx as i64) * (wv as i64 - zw[c] as i64);
                        }
                    }
                    let v = (acc as i32 as f32 * mults[c]).round_ties_even();
                    y[((n * sh.oh + oy) * sh.ow + ox) * sh.c + c] =
                        (v as i64).saturating_add(zy as i64).clamp(lo as i64, 255) as u8;
                }
            }
        }
    }
    y
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn qdepthwise_matches_naive(
        n in 1usize..3, c in 1usize..71, k in prop::sample::select(vec![1usize, 2, 3, 5]),
        stride in 1usize..3, dil in 1usize..3, pad in 0usize..3, extra in 0usize..6,
        seed in any::<u64>(), relu: bool
    ) {
        let mut r = Rng::new(seed);
        let eff = (k - 1) * dil + 1;
        let pad = pad.min(k - 1);
        let h = (eff + extra).saturating_sub(2 * pad).max(1);
        let w_in = (eff + extra / 2).saturating_sub(2 * pad).max(1);
        let out = |len: usize| (len + 2 * pad).checked_sub(eff).map(|v| v / stride + 1);
        let (Some(oh), Some(ow)) = (out(h), out(w_in)) else { return Ok(()); };
        let sh = DwShape {
            n, h, w: w_in, c, oh, ow, kh: k, kw: k, stride_h: stride, stride_w: stride,
            dil_h: dil, dil_w: dil, pad_t: pad, pad_l: pad,
        };
        let zx = r.zp();
        let x = r.some_codes(n * h * w_in * c, 3);
        let extreme = r.below(3) == 0;
        let wc = r.codes(c * k * k, extreme);
        let zw: Vec<i32> = (0..c).map(|_| r.zp()).collect();
        let bias: Vec<i32> = (0..c).map(|_| r.below(20_001) as i32 - 10_000).collect();
        let mults: Vec<f32> = (0..c).map(|_| 1e-4 + r.unit_f32() * 0.02).collect();
        let zy = r.zp();
        let lo = if relu { zy } else { 0 };
        let want = naive_depthwise(&x, zx, &sh, &wc, &zw, &bias, &mults, zy, lo);
        let pw = PackedDepthwise::pack(&wc, c, k * k, &zw).unwrap();
        let ep = QEpilogue::new(pw.col_sums(), zx, &bias, &mults, zy, lo).unwrap();
        for isa in Isa::available() {
            let mut y = vec![0u8; want.len()];
            qdepthwise_with(isa, &x, zx, &sh, &pw, &ep, &mut y).unwrap();
            prop_assert_eq!(&y, &want, "{:?} {:?}", isa, sh);
        }
    }
}

/// A depthwise geometry with padding `(top, left, bottom, right)`; the output size follows.
#[allow(clippy::too_many_arguments)]
fn dw_shape(
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    k: (usize, usize),
    stride: (usize, usize),
    dil: (usize, usize),
    pad: (usize, usize, usize, usize),
) -> DwShape {
    let out = |len: usize, pa: usize, pb: usize, k: usize, s: usize, d: usize| {
        (len + pa + pb - ((k - 1) * d + 1)) / s + 1
    };
    DwShape {
        n,
        h,
        w,
        c,
        oh: out(h, pad.0, pad.2, k.0, stride.0, dil.0),
        ow: out(w, pad.1, pad.3, k.1, stride.1, dil.1),
        kh: k.0,
        kw: k.1,
        stride_h: stride.0,
        stride_w: stride.1,
        dil_h: dil.0,
        dil_w: dil.1,
        pad_t: pad.0,
        pad_l: pad.1,
    }
}

/// Data of one depthwise check: codes, zero points, bias, multipliers, output parameters.
struct DwData {
    x: Vec<u8>,
    zx: i32,
    wc: Vec<u8>,
    zw: Vec<i32>,
    bias: Vec<i32>,
    mults: Vec<f32>,
    zy: i32,
    lo: i32,
}

impl DwData {
    /// Random codes (weights only 0 and 255 when `extreme`), one weight zero point for all
    /// channels, small multipliers and biases.
    fn new(sh: &DwShape, zx: i32, zw: i32, extreme: bool, relu: bool, seed: u64) -> DwData {
        let mut r = Rng::new(seed);
        let c = sh.c;
        let zy = r.zp();
        DwData {
            x: r.codes(sh.n * sh.h * sh.w * c, false),
            zx,
            wc: r.codes(c * sh.kh * sh.kw, extreme),
            zw: vec![zw; c],
            bias: (0..c).map(|_| r.below(40_001) as i32 - 20_000).collect(),
            mults: (0..c).map(|_| 1e-4 + r.unit_f32() * 0.01).collect(),
            zy,
            lo: if relu { zy } else { 0 },
        }
    }
}

/// Every available level's depthwise kernel against the naive loop (output buffers filled
/// with 0 and with 255 first, so an unwritten code shows); returns the kernels used.
fn check_depthwise(sh: &DwShape, d: &DwData, what: &str) -> Vec<&'static str> {
    let want = naive_depthwise(&d.x, d.zx, sh, &d.wc, &d.zw, &d.bias, &d.mults, d.zy, d.lo);
    let pw = PackedDepthwise::pack(&d.wc, sh.c, sh.kh * sh.kw, &d.zw).unwrap();
    let ep = QEpilogue::new(pw.col_sums(), d.zx, &d.bias, &d.mults, d.zy, d.lo).unwrap();
    let mut names = Vec::new();
    for isa in Isa::available() {
        for fill in [0u8, 255] {
            let mut y = vec![fill; want.len()];
            qdepthwise_with(isa, &d.x, d.zx, sh, &pw, &ep, &mut y).unwrap();
            if let Some(i) = y.iter().zip(&want).position(|(a, b)| a != b) {
                let c = sh.c;
                let (pix, ch) = (i / c, i % c);
                panic!(
                    "{isa} ({}) {what} {sh:?}: pixel {pix} ({}, {}) channel {ch}: got {} want {}",
                    dw_kernel_name(isa, &pw),
                    pix / sh.ow % sh.oh,
                    pix % sh.ow,
                    y[i],
                    want[i]
                );
            }
        }
        names.push(dw_kernel_name(isa, &pw));
    }
    names
}

/// Every channel count from 1 to 70 and 96, 144, 960 (full and partial vector blocks, 1,
/// 2 or 4 pixels per zmm), 3×3 with stride 1 and 2 over odd widths with padding on every
/// side, weight zero points 0 (centred weights up to 255: the i16 kernels), 128 (they fit
/// i8: `vpdpbusd` where there is VNNI) and 255, input zero points 0/128/255, extreme
/// weights and a fused ReLU in turn.
#[test]
fn qdepthwise_channel_sweep_matches_naive() {
    let zps = [0, 128, 255];
    let mut names = std::collections::BTreeSet::new();
    let channels: Vec<usize> = (1..=70).chain([96, 144, 960]).collect();
    for (i, &c) in channels.iter().enumerate() {
        for stride in [1, 2] {
            let w = if c > 100 { 11 } else { 19 };
            let sh = dw_shape(1, 5, w, c, (3, 3), (stride, stride), (1, 1), (1, 1, 1, 1));
            let zx = zps[i % 3];
            let zw = zps[(i / 3 + stride) % 3];
            let d = DwData::new(
                &sh,
                zx,
                zw,
                i % 4 == 1,
                i % 5 == 2,
                (c * 10 + stride) as u64,
            );
            names.extend(check_depthwise(&sh, &d, &format!("zx {zx} zw {zw}")));
        }
    }
    if Isa::available().contains(&Isa::Avx512Vnni) {
        assert!(names.contains("dw_u8s8_64c_avx512vnni"), "{names:?}");
        assert!(names.contains("dw_i16_64c_avx512vnni"), "{names:?}");
        assert!(names.contains("dw_i16_64c_avx512"), "{names:?}");
    }
}

/// Kernel shapes, strides, dilations, uneven padding (including none and more than the
/// kernel needs on the bottom/right), batch 2 and rows shorter than one tile.
#[test]
fn qdepthwise_geometries_match_naive() {
    let mut seed = 1000;
    #[allow(clippy::type_complexity)]
    let cases: &[(
        (usize, usize),
        (usize, usize),
        (usize, usize),
        (usize, usize, usize, usize),
    )] = &[
        ((3, 3), (1, 1), (1, 1), (0, 0, 0, 0)),
        ((3, 3), (2, 2), (1, 1), (0, 1, 1, 0)),
        ((3, 3), (2, 2), (1, 1), (1, 0, 0, 1)),
        ((3, 3), (1, 2), (1, 1), (2, 1, 2, 2)),
        ((3, 3), (1, 1), (2, 2), (2, 2, 2, 2)),
        ((3, 3), (3, 1), (1, 3), (1, 3, 0, 1)),
        ((5, 5), (1, 1), (1, 1), (2, 2, 2, 2)),
        ((5, 5), (2, 2), (1, 1), (2, 1, 2, 1)),
        ((7, 7), (1, 1), (1, 1), (3, 3, 3, 3)),
        ((1, 1), (1, 1), (1, 1), (0, 0, 0, 0)),
        ((1, 1), (2, 2), (1, 1), (1, 1, 1, 1)),
        ((2, 2), (1, 1), (1, 1), (1, 0, 0, 1)),
        ((3, 1), (1, 1), (1, 1), (1, 0, 1, 0)),
        ((1, 3), (1, 1), (1, 1), (0, 1, 0, 1)),
        ((5, 3), (2, 1), (1, 2), (2, 2, 2, 2)),
        ((3, 5), (1, 1), (1, 1), (1, 2, 1, 2)),
    ];
    // An empty image: every output reads only padding.
    let sh = dw_shape(1, 0, 0, 70, (3, 3), (1, 1), (1, 1), (2, 2, 2, 2));
    assert_eq!((sh.oh, sh.ow), (2, 2));
    check_depthwise(
        &sh,
        &DwData::new(&sh, 9, 128, false, false, 1),
        "empty image",
    );
    for &(k, stride, dil, pad) in cases {
        for (c, h, w) in [(8, 9, 13), (32, 7, 10), (64, 6, 9), (144, 5, 7), (77, 4, 3)] {
            for n in [1, 2] {
                let sh = dw_shape(n, h, w, c, k, stride, dil, pad);
                for zw in [128, 3] {
                    seed += 1;
                    let d = DwData::new(
                        &sh,
                        (seed % 256) as i32,
                        zw,
                        seed % 3 == 0,
                        seed % 2 == 0,
                        seed,
                    );
                    check_depthwise(&sh, &d, &format!("zw {zw}"));
                }
            }
        }
    }
}

/// Rows long enough to be cut into several strips of columns (with 1, 2 and 4 pixels per
/// zmm), strides 1 and 2, dilation 2 and a 5-wide kernel: every strip boundary and the
/// short last strip.
#[test]
fn qdepthwise_wide_rows_match_naive() {
    let mut seed = 7000;
    for c in [1, 16, 17, 32, 40, 64, 80, 144] {
        for (k, stride, dil, pad) in [
            ((3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),
            ((3, 3), (2, 2), (1, 1), (1, 1, 0, 0)),
            ((3, 3), (1, 1), (2, 2), (2, 2, 2, 2)),
            ((3, 5), (1, 1), (1, 1), (1, 2, 1, 2)),
        ] {
            for w in [97, 230] {
                seed += 1;
                let sh = dw_shape(1, 3, w, c, k, stride, dil, pad);
                let zw = if seed % 2 == 0 { 128 } else { 17 };
                let d = DwData::new(&sh, 251, zw, false, seed % 3 == 0, seed);
                check_depthwise(&sh, &d, &format!("w {w} zw {zw}"));
            }
        }
    }
}

/// Non-finite, huge and zero multipliers, and biases near the i32 limits (the sums wrap), on
/// every block kind: the AVX-512 output stage in its clamped and NaN-safe forms.
#[test]
fn qdepthwise_extreme_stages_match_naive() {
    let odd = [
        f32::INFINITY,
        f32::NAN,
        0.0,
        f32::MAX,
        1e30,
        0.01,
        1.0,
        -0.0,
        f32::NEG_INFINITY,
        -1e30,
        -f32::MAX,
        -1.0,
        3e-3,
    ];
    let finite: Vec<f32> = odd.iter().copied().filter(|m| m.is_finite()).collect();
    for (i, c) in [1usize, 7, 16, 17, 32, 33, 48, 63, 64, 65, 96, 144]
        .into_iter()
        .enumerate()
    {
        for (j, list) in [&odd[..], &finite[..]].into_iter().enumerate() {
            for zw in [128, 0] {
                let sh = dw_shape(1, 6, 9, c, (3, 3), (1 + j, 1 + j), (1, 1), (1, 1, 1, 1));
                let mut d = DwData::new(
                    &sh,
                    200,
                    zw,
                    (i + j) % 2 == 0,
                    i % 3 == 0,
                    (i * 7 + j) as u64,
                );
                d.mults = (0..c).map(|ch| list[(ch + i) % list.len()]).collect();
                for (ch, b) in d.bias.iter_mut().enumerate() {
                    *b = match ch % 4 {
                        0 => i32::MAX - 100,
                        1 => i32::MIN + 100,
                        2 => 0,
                        _ => *b,
                    };
                }
                if j == 0 {
                    // Input at the zero point in one pixel: raw = bias only, so 0 · ∞ is NaN.
                    d.x[..c].fill(200);
                }
                check_depthwise(&sh, &d, &format!("multipliers {j} zw {zw}"));
            }
        }
    }
}

/// The kernels give the same codes on one thread as on two, batch 2, and through
/// `qdepthwise` (the current level).
#[test]
fn qdepthwise_threads_and_forced_level_agree() {
    let sh = dw_shape(2, 17, 23, 96, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1));
    let d = DwData::new(&sh, 7, 128, false, true, 5);
    let want = naive_depthwise(&d.x, d.zx, &sh, &d.wc, &d.zw, &d.bias, &d.mults, d.zy, d.lo);
    let pw = PackedDepthwise::pack(&d.wc, sh.c, 9, &d.zw).unwrap();
    let ep = QEpilogue::new(pw.col_sums(), d.zx, &d.bias, &d.mults, d.zy, d.lo).unwrap();
    for isa in Isa::available() {
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut y = vec![0u8; want.len()];
            pool.install(|| qdepthwise_with(isa, &d.x, d.zx, &sh, &pw, &ep, &mut y))
                .unwrap();
            assert_eq!(y, want, "{isa} {threads} threads");
        }
    }
    // `Isa::current()` (not forced here: other tests of this binary run concurrently).
    let mut y = vec![0u8; want.len()];
    qdepthwise(&d.x, d.zx, &sh, &pw, &ep, &mut y).unwrap();
    assert_eq!(y, want, "current level");
}

// ---------------------------------------------------------------------------------------
// Int8Conv / Int8FC: fast path against the reference path
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct ConvCase {
    n: usize,
    c: usize,
    m: usize,
    g: usize,
    h: usize,
    w: usize,
    k: (usize, usize),
    stride: (usize, usize),
    dil: (usize, usize),
    pads: [usize; 4],
    nchw: bool,
    relu: bool,
    per_channel: bool,
    bias: u8, // 0 none, 1 int32, 2 float
    seed: u64,
}

/// Builds the op twice (fast and reference), runs both on the same random data and
/// compares the codes (the fast op in 1- and 2-thread pools, and once more after
/// `prepare` with constant weights).
fn check_conv(cs: &ConvCase) {
    let mut r = Rng::new(cs.seed);
    let cg = cs.c / cs.g;
    let xq = qp(0.01 + r.unit_f32() * 0.05, r.zp());
    let wq = qp(0.002 + r.unit_f32() * 0.02, r.zp());
    let yq = qp(0.05 + r.unit_f32() * 0.5, if cs.relu { 0 } else { r.zp() });
    let x_shape = if cs.nchw {
        vec![cs.n, cs.c, cs.h, cs.w]
    } else {
        vec![cs.n, cs.h, cs.w, cs.c]
    };
    let w_shape = if cs.nchw {
        vec![cs.m, cg, cs.k.0, cs.k.1]
    } else {
        vec![cs.m, cs.k.0, cs.k.1, cg]
    };
    let x = qu8(&x_shape, r.some_codes(x_shape.iter().product(), 4), xq);
    let extreme = r.below(3) == 0;
    let w = qu8(&w_shape, r.codes(w_shape.iter().product(), extreme), wq);
    let scales: Vec<f32> = (0..cs.m).map(|_| 0.001 + r.unit_f32() * 0.03).collect();
    let mut args = vec![
        ("kernel_h", i(cs.k.0 as i64)),
        ("kernel_w", i(cs.k.1 as i64)),
        ("strides", ints(&[cs.stride.0 as i64, cs.stride.1 as i64])),
        ("dilations", ints(&[cs.dil.0 as i64, cs.dil.1 as i64])),
        ("pads", ints(&cs.pads.map(|p| p as i64))),
        ("group", i(cs.g as i64)),
        ("order", s(if cs.nchw { "NCHW" } else { "NHWC" })),
        ("Y_scale", f(yq.scale)),
        ("Y_zero_point", i(yq.zero_point as i64)),
    ];
    if cs.per_channel {
        args.push(("W_scales", floats(&scales)));
        args.push(("quantize_channelwise", i(1)));
    }
    let b = match cs.bias {
        1 => Some(qi32(
            &[cs.m],
            (0..cs.m).map(|_| r.below(40_001) as i32 - 20_000).collect(),
            qp(xq.scale * wq.scale, 0),
        )),
        2 => Some(ops_util::t(
            &[cs.m],
            (0..cs.m).map(|_| (r.unit_f32() - 0.5) * 0.5).collect(),
        )),
        _ => None,
    };
    let mut inputs = vec![&x, &w];
    if let Some(b) = &b {
        inputs.push(b);
    }
    let op_type = if cs.relu { "Int8ConvRelu" } else { "Int8Conv" };
    let reference = build_ref(op_type, &args, inputs.len(), true);
    let want = reference.eval(&inputs).unwrap().remove(0);
    let mut fast = build_ref(op_type, &args, inputs.len(), false);
    let got = eval_threads(fast.as_ref(), &inputs).unwrap();
    assert_eq!(codes(&got), codes(&want), "{cs:?}");
    assert_eq!(got.shape(), want.shape());
    let consts = [None, Some(&w), b.as_ref()];
    fast.prepare(&consts[..inputs.len()]).unwrap();
    let got = fast.eval(&inputs).unwrap().remove(0);
    assert_eq!(codes(&got), codes(&want), "prepared {cs:?}");
    check_conv_sum(cs, &args, &inputs, &want, &mut r);
}

/// The fused Int8ConvSum(Relu) against the reference convolution followed by the reference
/// Int8Sum/Add(Relu), fast (1 and 2 threads, with and without prepared weights) and in
/// reference mode, with the convolution as either input of the Sum.
fn check_conv_sum(
    cs: &ConvCase,
    conv_args: &[(&str, ArgValue)],
    inputs: &[&Tensor],
    conv_out: &Tensor,
    r: &mut Rng,
) {
    let (_, yq) = codes(conv_out);
    let oq = qp(0.02 + r.unit_f32() * 0.3, r.zp());
    let other = qu8(conv_out.shape(), r.some_codes(conv_out.len(), 4), oq);
    let sum_relu = r.below(2) == 0;
    let sum_type = ["Int8Sum", "Int8Add"][r.below(2) as usize];
    let sum_type = format!("{sum_type}{}", if sum_relu { "Relu" } else { "" });
    let zq = qp(0.05 + r.unit_f32() * 0.5, r.zp());
    let conv_second = r.below(2) == 1;
    let sum_args = [
        ("Y_scale", f(zq.scale)),
        ("Y_zero_point", i(zq.zero_point as i64)),
    ];
    let sum_ref = build_ref(&sum_type, &sum_args, 2, true);
    let pair = if conv_second {
        [&other, conv_out]
    } else {
        [conv_out, &other]
    };
    let want = sum_ref.eval(&pair).unwrap().remove(0);
    let mut args: Vec<(&str, ArgValue)> = conv_args.to_vec();
    args.push(("conv_relu", i(i64::from(cs.relu))));
    args.push(("sum_type", s(&sum_type)));
    args.push(("sum_conv_input", i(i64::from(conv_second))));
    args.push(("sum_Y_scale", f(zq.scale)));
    args.push(("sum_Y_zero_point", i(zq.zero_point as i64)));
    let fused_type = if sum_relu {
        "Int8ConvSumRelu"
    } else {
        "Int8ConvSum"
    };
    let mut all: Vec<&Tensor> = inputs.to_vec();
    all.push(&other);
    let _ = yq;
    for reference in [true, false] {
        let mut op = build_ref(fused_type, &args, all.len(), reference);
        assert_eq!(
            op.infer(&all.iter().map(|t| t.info()).collect::<Vec<_>>())
                .unwrap()[0],
            want.info()
        );
        let got = eval_threads(op.as_ref(), &all).unwrap();
        assert_eq!(
            codes(&got),
            codes(&want),
            "fused, reference {reference}: {cs:?}"
        );
        let mut consts: Vec<Option<&Tensor>> = vec![None, Some(inputs[1])];
        consts.extend(inputs.get(2).copied().map(Some));
        consts.push(None);
        op.prepare(&consts).unwrap();
        let got = op.eval(&all).unwrap().remove(0);
        assert_eq!(
            codes(&got),
            codes(&want),
            "fused prepared, reference {reference}: {cs:?}"
        );
    }
}

fn conv_case_strategy() -> impl Strategy<Value = ConvCase> {
    (
        (1usize..3, 1usize..4, 1usize..12, 0usize..4),
        (
            prop::sample::select(vec![1usize, 2, 3, 5, 7]),
            prop::sample::select(vec![1usize, 3]),
        ),
        (1usize..3, 1usize..3, 1usize..3, 0usize..3, 0usize..3),
        (
            0usize..7,
            0usize..7,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        ),
        (0u8..3, any::<u64>()),
    )
        .prop_map(
            |(
                (n, g, cg, mode),
                (kh, kw),
                (sh, sw, dil, pt, pb),
                (eh, ew, nchw, relu, pc),
                (bias, seed),
            )| {
                // mode 0: depthwise (C = M = G); otherwise grouped/plain with M/G in 1..20.
                let (g, cg, mg) = match mode {
                    0 => (g * 5 + 12, 1, 1),
                    _ => (g, cg, 1 + (seed as usize % 20)),
                };
                let (pt, pb) = (pt.min(kh - 1), pb.min(kh - 1));
                let (pl, pr) = (pb.min(kw - 1), pt.min(kw - 1));
                // Dilation only without groups (Caffe2 forbids the combination).
                let dil = if g > 1 { 1 } else { dil };
                let effh = (kh - 1) * dil + 1;
                let effw = (kw - 1) * dil + 1;
                ConvCase {
                    n,
                    c: g * cg,
                    m: g * mg,
                    g,
                    h: (effh + eh).saturating_sub(pt + pb).max(1),
                    w: (effw + ew).saturating_sub(pl + pr).max(1),
                    k: (kh, kw),
                    stride: (sh, sw),
                    dil: (dil, dil),
                    pads: [pt, pl, pb, pr],
                    nchw,
                    relu,
                    per_channel: pc,
                    bias,
                    seed,
                }
            },
        )
        .prop_filter("output must not be empty", |cs| {
            cs.h + cs.pads[0] + cs.pads[2] > (cs.k.0 - 1) * cs.dil.0
                && cs.w + cs.pads[1] + cs.pads[3] > (cs.k.1 - 1) * cs.dil.1
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn conv_fast_equals_reference(cs in conv_case_strategy()) {
        check_conv(&cs);
    }
}

#[allow(clippy::too_many_arguments)]
fn plain(
    n: usize,
    c: usize,
    m: usize,
    hw: usize,
    k: usize,
    stride: usize,
    pad: usize,
    seed: u64,
) -> ConvCase {
    ConvCase {
        n,
        c,
        m,
        g: 1,
        h: hw,
        w: hw,
        k: (k, k),
        stride: (stride, stride),
        dil: (1, 1),
        pads: [pad; 4],
        nchw: false,
        relu: seed.is_multiple_of(2),
        per_channel: seed.is_multiple_of(3),
        bias: (seed % 3) as u8,
        seed,
    }
}

#[test]
fn conv_fast_equals_reference_at_block_edges() {
    let cases = [
        // 1×1 direct path, channels around the 16-channel panel and 512-deep K block.
        plain(1, 64, 64, 9, 1, 1, 0, 1),
        plain(2, 17, 33, 5, 1, 1, 0, 2),
        plain(1, 520, 20, 3, 1, 1, 0, 3),
        // 1×1 stride 2 (gathered), 3×3 with K = 576 (two K blocks), 7×7 stride 2 first conv.
        plain(1, 24, 40, 8, 1, 2, 0, 4),
        plain(1, 64, 18, 6, 3, 1, 1, 5),
        plain(1, 3, 16, 15, 7, 2, 3, 6),
        // Many rows (row tiles of 96 and a partial one), more than 256 output channels.
        plain(1, 8, 20, 14, 3, 1, 1, 7),
        plain(1, 16, 260, 4, 1, 1, 0, 8),
        // Grouped (ResNeXt-like) and depthwise with channel counts around 16.
        ConvCase {
            g: 4,
            c: 32,
            m: 36,
            ..plain(2, 32, 36, 7, 3, 1, 1, 9)
        },
        ConvCase {
            g: 35,
            c: 35,
            m: 35,
            ..plain(1, 35, 35, 9, 3, 2, 1, 10)
        },
        ConvCase {
            g: 48,
            c: 48,
            m: 48,
            nchw: true,
            ..plain(2, 48, 48, 6, 3, 1, 1, 11)
        },
    ];
    for cs in &cases {
        check_conv(cs);
    }
}

fn check_fc(m: usize, k: usize, n: usize, seed: u64, relu: bool, per_channel: bool, float_b: bool) {
    let mut r = Rng::new(seed);
    let xq = qp(0.01 + r.unit_f32() * 0.05, r.zp());
    let wq = qp(0.002 + r.unit_f32() * 0.02, r.zp());
    let yq = qp(0.05 + r.unit_f32(), if relu { 0 } else { r.zp() });
    let x = qu8(&[m, k], r.some_codes(m * k, 4), xq);
    let w = qu8(&[n, k], r.some_codes(n * k, 3), wq);
    let b = if float_b {
        ops_util::t(&[n], (0..n).map(|_| r.unit_f32() - 0.5).collect())
    } else {
        qi32(
            &[n],
            (0..n).map(|_| r.below(40_001) as i32 - 20_000).collect(),
            qp(xq.scale * wq.scale, 0),
        )
    };
    let mut args = vec![
        ("Y_scale", f(yq.scale)),
        ("Y_zero_point", i(yq.zero_point as i64)),
    ];
    if per_channel {
        let sc: Vec<f32> = (0..n).map(|_| 0.001 + r.unit_f32() * 0.03).collect();
        args.push(("W_scales", floats(&sc)));
    }
    let op_type = if relu { "Int8FCRelu" } else { "Int8FC" };
    let inputs = [&x, &w, &b];
    let want = build_ref(op_type, &args, 3, true)
        .eval(&inputs)
        .unwrap()
        .remove(0);
    let mut fast = build_ref(op_type, &args, 3, false);
    let got = eval_threads(fast.as_ref(), &inputs).unwrap();
    assert_eq!(codes(&got), codes(&want), "m {m} k {k} n {n}");
    fast.prepare(&[None, Some(&w), Some(&b)]).unwrap();
    let got = fast.eval(&inputs).unwrap().remove(0);
    assert_eq!(codes(&got), codes(&want), "prepared: m {m} k {k} n {n}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn fc_fast_equals_reference(
        m in 1usize..20, k in 1usize..200, n in 1usize..80, seed in any::<u64>(),
        relu: bool, pc: bool, fb: bool
    ) {
        check_fc(m, k, n, seed, relu, pc, fb);
    }
}

#[test]
fn fc_large_shapes_equal_reference() {
    // ResNet-50's classifier at batch 1 and 3 (K = 2048 in 4 blocks, N split for 2 threads).
    check_fc(1, 2048, 1000, 5, false, false, false);
    check_fc(3, 2048, 1000, 6, false, true, true);
}

#[test]
fn prepared_weights_are_not_used_for_other_weights() {
    // prepare() packs W; eval with a different weight tensor (other zero point, other
    // shape) must use that tensor, not the packed one.
    let xq = qp(0.05, 3);
    let x = qu8(&[1, 2, 2, 4], (0..16).map(|v| v * 9).collect(), xq);
    let w1 = qu8(
        &[2, 1, 1, 4],
        vec![130, 120, 140, 128, 0, 255, 7, 9],
        qp(0.01, 128),
    );
    let w2 = qu8(
        &[2, 1, 1, 4],
        vec![130, 120, 140, 128, 0, 255, 7, 9],
        qp(0.01, 100),
    );
    let args = [("kernel", i(1)), ("order", s("NHWC")), ("Y_scale", f(0.02))];
    let reference = build_ref("Int8Conv", &args, 2, true);
    let mut fast = build_ref("Int8Conv", &args, 2, false);
    fast.prepare(&[None, Some(&w1)]).unwrap();
    for w in [&w1, &w2] {
        let want = reference.eval(&[&x, w]).unwrap().remove(0);
        let got = fast.eval(&[&x, w]).unwrap().remove(0);
        assert_eq!(codes(&got), codes(&want));
    }
}

// ---------------------------------------------------------------------------------------
// Per-channel weight scales
// ---------------------------------------------------------------------------------------

#[test]
fn per_channel_conv_hand_worked() {
    // 1×1 conv, X [1, 1, 2, 2] (two pixels, two channels), s_x = 0.5, z_x = 10:
    //   pixel 0: x = (14, 8)  → x − z_x = (4, −2)
    //   pixel 1: x = (10, 20) → (0, 10)
    // W [2, 1, 1, 2], z_w = 128 (tensor scale 0.25 is overridden by W_scales):
    //   channel 0: w = (130, 127) → (2, −1);  channel 1: w = (128, 131) → (0, 3)
    // W_scales = [0.25, 0.125], s_y = 1, z_y = 100:
    //   M0 = 0.5 · 0.25 / 1 = 0.125,  M1 = 0.5 · 0.125 / 1 = 0.0625
    // Float bias b = [1.0, −0.5], quantized per channel with s_x · W_scales[m]:
    //   b0 = 1.0 / 0.125 = 8,  b1 = −0.5 / 0.0625 = −8
    // raw:
    //   p0 c0: 4·2 + (−2)(−1) + 8 = 18  → 18 · 0.125 = 2.25 → 2 → 102
    //   p0 c1: 4·0 + (−2)·3 − 8 = −14   → −0.875 → −1 → 99
    //   p1 c0: 0 + 10·(−1) + 8 = −2     → −0.25 → 0 → 100
    //   p1 c1: 0 + 10·3 − 8 = 22        → 1.375 → 1 → 101
    // With one tensor scale 0.25 instead, channel 1 would give M1 = 0.125 and b1 = −4:
    //   p0 c1: −6 − 4 = −10 → −1.25 → −1 → 99; p1 c1: 30 − 4 = 26 → 3.25 → 3 → 103.
    let x = qu8(&[1, 1, 2, 2], vec![14, 8, 10, 20], qp(0.5, 10));
    let w = qu8(&[2, 1, 1, 2], vec![130, 127, 128, 131], qp(0.25, 128));
    let b = ops_util::t(&[2], vec![1.0, -0.5]);
    let base = [
        ("kernel", i(1)),
        ("order", s("NHWC")),
        ("Y_scale", f(1.0)),
        ("Y_zero_point", i(100)),
    ];
    let mut args = base.to_vec();
    args.push(("W_scales", floats(&[0.25, 0.125])));
    args.push(("quantize_channelwise", i(1)));
    for reference in [true, false] {
        let op = build_ref("Int8Conv", &args, 3, reference);
        let y = op.eval(&[&x, &w, &b]).unwrap().remove(0);
        assert_eq!(
            codes(&y),
            (vec![102, 99, 100, 101], qp(1.0, 100)),
            "ref {reference}"
        );
        let op = build_ref("Int8Conv", &base, 3, reference);
        let y = op.eval(&[&x, &w, &b]).unwrap().remove(0);
        assert_eq!(
            codes(&y).0,
            vec![102, 99, 100, 103],
            "per-tensor, ref {reference}"
        );
    }
    // An Int8 int32 bias is used as is (units s_x · W_scales[m]): b = [8, −8] gives the same.
    let bq = qi32(&[2], vec![8, -8], qp(0.125, 0));
    for reference in [true, false] {
        let op = build_ref("Int8Conv", &args, 3, reference);
        let y = op.eval(&[&x, &w, &bq]).unwrap().remove(0);
        assert_eq!(codes(&y).0, vec![102, 99, 100, 101]);
    }
}

#[test]
fn per_channel_fc_hand_worked() {
    // X [1, 3] = (12, 10, 4), z_x = 10, s_x = 1 → (2, 0, −6).
    // W [2, 3], z_w = 0: row 0 (1, 5, 1), row 1 (3, 0, 2). W_scales = [0.5, 0.25], s_y = 0.5,
    // z_y = 0, ReLU: M0 = 1 · 0.5 / 0.5 = 1, M1 = 0.5. Bias int32 [3, 1].
    //   row 0: 2 − 6 + 3 = −1 → ReLU clamp → 0;  row 1: 6 − 12 + 1 = −5 → −2.5 → −2 → 0.
    // Bias [3, 20]: row 1: −6 + 20 = 14 → 7.
    let x = qu8(&[1, 3], vec![12, 10, 4], qp(1.0, 10));
    let w = qu8(&[2, 3], vec![1, 5, 1, 3, 0, 2], qp(0.5, 0));
    let args = [
        ("Y_scale", f(0.5)),
        ("W_scales", floats(&[0.5, 0.25])),
        ("quantize_channelwise", i(1)),
    ];
    for reference in [true, false] {
        let op = build_ref("Int8FCRelu", &args, 3, reference);
        let b = qi32(&[2], vec![3, 1], qp(0.5, 0));
        assert_eq!(codes(&op.eval(&[&x, &w, &b]).unwrap()[0]).0, vec![0, 0]);
        let b = qi32(&[2], vec![3, 20], qp(0.5, 0));
        assert_eq!(codes(&op.eval(&[&x, &w, &b]).unwrap()[0]).0, vec![0, 7]);
    }
}

#[test]
fn per_channel_argument_errors() {
    let x = qu8(&[1, 1, 1, 2], vec![1, 2], qp(0.5, 0));
    let w = qu8(&[2, 1, 1, 2], vec![1, 2, 3, 4], qp(0.5, 0));
    let base = [("kernel", i(1)), ("order", s("NHWC")), ("Y_scale", f(1.0))];
    let with = |extra: Vec<(&'static str, ArgValue)>| {
        let mut a = base.to_vec();
        a.extend(extra);
        a
    };
    // Wrong length: reported by infer/eval, naming the op and the count.
    let op = build_ref(
        "Int8Conv",
        &with(vec![("W_scales", floats(&[0.1]))]),
        2,
        false,
    );
    match op.eval(&[&x, &w]).unwrap_err() {
        OpError::BadArg { name, msg } => {
            assert_eq!(name, "W_scales");
            assert!(
                msg.contains("Int8Conv") && msg.contains("1 scales"),
                "{msg}"
            );
        }
        e => panic!("unexpected {e}"),
    }
    assert!(op.infer(&[x.info(), w.info()]).is_err());
    // Non-positive / non-finite / empty scales: rejected when building.
    for bad in [
        vec![0.1, 0.0],
        vec![0.1, -1.0],
        vec![f32::NAN, 0.1],
        vec![f32::INFINITY, 1.0],
    ] {
        let e = try_build_ref(
            "Int8Conv",
            &with(vec![("W_scales", floats(&bad))]),
            2,
            false,
        )
        .unwrap_err();
        assert!(
            matches!(&e, OpError::BadArg { name, msg } if name == "W_scales" && msg.contains("Int8Conv")),
            "{e}"
        );
    }
    assert!(try_build_ref("Int8FC", &with(vec![("W_scales", floats(&[]))]), 3, false).is_err());
    // quantize_channelwise needs W_scales; quantize_groupwise stays unsupported.
    let e = try_build_ref(
        "Int8Conv",
        &with(vec![("quantize_channelwise", i(1))]),
        2,
        false,
    )
    .unwrap_err();
    assert!(matches!(e, OpError::Unsupported(_)), "{e}");
    let e = try_build_ref(
        "Int8Conv",
        &with(vec![
            ("quantize_groupwise", i(1)),
            ("W_scales", floats(&[0.1, 0.2])),
        ]),
        2,
        false,
    )
    .unwrap_err();
    assert!(matches!(e, OpError::Unsupported(_)), "{e}");
    assert!(try_build_ref(
        "Int8Conv",
        &with(vec![
            ("quantize_channelwise", i(1)),
            ("W_scales", floats(&[0.1, 0.2])),
        ]),
        2,
        false,
    )
    .is_ok());
    // FC: one scale per output row.
    let xf = qu8(&[1, 2], vec![1, 2], qp(0.5, 0));
    let wf = qu8(&[3, 2], vec![1, 2, 3, 4, 5, 6], qp(0.5, 0));
    let bf = qi32(&[3], vec![0, 0, 0], qp(0.25, 0));
    let op = build_ref(
        "Int8FC",
        &with(vec![("W_scales", floats(&[0.1, 0.2]))]),
        3,
        true,
    );
    assert!(matches!(
        op.eval(&[&xf, &wf, &bf]).unwrap_err(),
        OpError::BadArg { .. }
    ));
}
