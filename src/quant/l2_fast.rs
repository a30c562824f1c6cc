//! Fast L2 norm minimization giving the same window as the literal brute force of
//! [`super::norm_min`] (facts §7.4) in a small fraction of its time.
//!
//! Work in units of the source bin width (`w = 1`). For a window of `n` bins starting at `s`
//! (end `e = s + n`), code width `d = n/256`, counts `c_j` (the f32 `bins_f` of Caffe2), the exact
//! error of the literal model splits into three parts:
//!
//! - left outliers (bins `j < s`, reconstructed at `s + d/2`), with `x_j = s - j - 1/2`, `a = n/512`:
//!   `L = Σ c_j ((x_j + a)² + 1/12) = LA(s) + 2a·LD(s) + (a² + 1/12)·P0(s)` where
//!   `P0 = Σ c`, `LD = Σ c·x`, `LA = Σ c·x²` are prefix sums (O(1) per window);
//! - right outliers (bins `j ≥ e`, reconstructed at `e - d/2`), symmetric with suffix sums `R`;
//! - the window itself: with `G(x) = ∫₀ˣ (t - q(t))² dt` and `P(x) = G(x) - x·d²/12`,
//!   `M = Σ_{i<n} c_{s+i} (G(i+1) - G(i)) = C·d²/12 + Σ_{i<n} c_{s+i} (P(i+1) - P(i))`, where `C` is
//!   the window's mass and `P(i) = d³ (u³/3 - u/12)` with `u = frac(256 i/n) - 1/2`.
//!   Summation by parts gives `|M - C d²/12| ≤ max|P| · TV` with `max|P| = d³/(36√3)` and
//!   `TV = Σ |c_{j} - c_{j-1}|` over the window's interior (again a prefix sum); the bound is 0
//!   when `n` divides 256 (then `P ≡ 0`).
//!
//! The search therefore (1) computes for every window an upper bound `L + R + C d²/12 + B` and
//! its minimum `U`; (2) evaluates the exact error (O(n), f64) only for windows whose lower bound
//! `L + R + max(0, C d²/12 - B)` is within a relative tolerance of `U` (and of the best exact
//! error found so far); (3) re-evaluates every window whose exact error is within the tolerance
//! of the best one with the literal f32 formula and picks the literal winner with the literal
//! tie rules (smallest error, then smallest `n`, then smallest `s`). The result equals the
//! literal search as long as the literal f32 error of every window stays within
//! [`RECHECK_TOLERANCE`] of its exact value (and at most [`MAX_RECHECK`] windows are that close
//! to the best): the tolerance is several times the worst-case f32 drift for N ≤ 2048 and ~25
//! times the measured one. Tests compare with the literal search on hundreds of small random
//! and adversarial histograms and on N = 2048 ones (ignored test: identical windows).

use super::histogram::Histogram;
use super::norm_min::{literal_l2_error, L2Window, PaddedBins};

/// Relative tolerance between the exact (f64) error and the literal f32 error of a window used
/// to decide which windows are re-checked with the literal formula, for histograms of up to
/// 2048 bins (it grows linearly above). A worst-case estimate of the literal f32 drift is about
/// `N·2⁻²⁴` from the running sum plus `(2/3)·N·2⁻²⁴` from the cubes of far outliers, i.e.
/// 2e-4 for N = 2048; measured drifts are below 2e-5 (see tests).
pub const RECHECK_TOLERANCE: f64 = 5e-4;

/// At most this many windows are re-evaluated with the literal formula (the ones with the
/// smallest exact errors).
pub const MAX_RECHECK: usize = 4096;

/// What the fast search did (for tests and benchmarks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct L2SearchStats {
    /// Windows considered (N(N+1)/2 asymmetric, N symmetric).
    pub windows: usize,
    /// Windows whose exact error was computed.
    pub exact_evaluations: usize,
    /// Windows re-checked with the literal f32 formula.
    pub literal_rechecks: usize,
}

/// Prefix/suffix sums over window boundaries `b` in `[b0, b1]` (absolute bin coordinates).
struct Sums {
    b0: i64,
    /// Counts over bins `[b0, b1)` (zero outside the histogram).
    c: Vec<f64>,
    p0: Vec<f64>,
    ld: Vec<f64>,
    la: Vec<f64>,
    q0: Vec<f64>,
    rd: Vec<f64>,
    ra: Vec<f64>,
    dv: Vec<f64>,
}

impl Sums {
    fn new(bins: &[f32], b0: i64, b1: i64) -> Sums {
        let len = (b1 - b0) as usize;
        let mut c = vec![0f64; len];
        for (j, &v) in bins.iter().enumerate() {
            c[(j as i64 - b0) as usize] = v as f64;
        }
        let mut p0 = vec![0f64; len + 1];
        let mut ld = vec![0f64; len + 1];
        let mut la = vec![0f64; len + 1];
        for t in 0..len {
            // Moving the boundary right by one: distances of old bins grow by 1, the new bin
            // enters at distance 1/2.
            la[t + 1] = la[t] + 2.0 * ld[t] + p0[t] + 0.25 * c[t];
            ld[t + 1] = ld[t] + p0[t] + 0.5 * c[t];
            p0[t + 1] = p0[t] + c[t];
        }
        let mut q0 = vec![0f64; len + 1];
        let mut rd = vec![0f64; len + 1];
        let mut ra = vec![0f64; len + 1];
        for t in (0..len).rev() {
            ra[t] = ra[t + 1] + 2.0 * rd[t + 1] + q0[t + 1] + 0.25 * c[t];
            rd[t] = rd[t + 1] + q0[t + 1] + 0.5 * c[t];
            q0[t] = q0[t + 1] + c[t];
        }
        // dv[t] = Σ_{b0 < j < b0 + t} |c_j - c_{j-1}|
        let mut dv = vec![0f64; len + 1];
        for t in 1..=len {
            let jump = if t >= 2 {
                (c[t - 1] - c[t - 2]).abs()
            } else {
                0.0
            };
            dv[t] = dv[t - 1] + jump;
        }

        Sums {
            b0,
            c,
            p0,
            ld,
            la,
            q0,
            rd,
            ra,
            dv,
        }
    }

    /// For width `n` and starts `s0, s0 + 1, ...` (one per output slot): the outlier error
    /// `L + R`, the main window term `C·d²/12` and the bound `max|P|·TV` on the correction.
    fn fill(&self, n: usize, s0: i64, lr: &mut [f64], main: &mut [f64], slack: &mut [f64]) {
        let count = lr.len();
        let ts = (s0 - self.b0) as usize;
        let te = ts + n;
        let a2 = n as f64 / 256.0; // 2a
        let k = {
            let a = n as f64 / 512.0;
            a * a + 1.0 / 12.0
        };
        let (main_k, pmax) = width_consts(n);
        let (la, ld, p0s) = (
            &self.la[ts..ts + count],
            &self.ld[ts..ts + count],
            &self.p0[ts..ts + count],
        );
        let (ra, rd, q0) = (
            &self.ra[te..te + count],
            &self.rd[te..te + count],
            &self.q0[te..te + count],
        );
        let p0e = &self.p0[te..te + count];
        let dve = &self.dv[te..te + count];
        let dvs = &self.dv[ts + 1..ts + 1 + count];
        let main = &mut main[..count];
        let slack = &mut slack[..count];
        for i in 0..count {
            lr[i] = la[i] + a2 * ld[i] + k * p0s[i] + ra[i] + a2 * rd[i] + k * q0[i];
            main[i] = (p0e[i] - p0s[i]) * main_k;
            slack[i] = pmax * (dve[i] - dvs[i]);
        }
    }

    /// (outlier error L + R, window mass C, interior total variation TV) of window (s, n).
    #[inline]
    fn terms(&self, s: i64, n: usize) -> (f64, f64, f64) {
        let ts = (s - self.b0) as usize;
        let te = ts + n;
        let a = n as f64 / 512.0;
        let k = a * a + 1.0 / 12.0;
        let l = self.la[ts] + 2.0 * a * self.ld[ts] + k * self.p0[ts];
        let r = self.ra[te] + 2.0 * a * self.rd[te] + k * self.q0[te];
        let mass = self.p0[te] - self.p0[ts];
        let tv = self.dv[te] - self.dv[ts + 1];
        (l + r, mass, tv)
    }
}

/// Per-width constants: `d²/12` and the bound factor `max|P|` (0 when `n | 256`).
#[inline]
fn width_consts(n: usize) -> (f64, f64) {
    let d = n as f64 / 256.0;
    let main = d * d / 12.0;
    let pmax = if 256 % n == 0 {
        0.0
    } else {
        // d³/(36√3), slightly inflated against rounding.
        d * d * d / (36.0 * 3f64.sqrt()) * (1.0 + 1e-9)
    };
    (main, pmax)
}

/// `(min_i (lr_i + main_i + slack_i), min_i (lr_i + max(0, main_i - slack_i)))`: the smallest
/// upper and lower bounds of a row of windows (independent lanes, vectorizable).
fn min_bounds(lr: &[f64], main: &[f64], slack: &[f64]) -> (f64, f64) {
    const L: usize = 4;
    let mut ub = [f64::INFINITY; L];
    let mut lb = [f64::INFINITY; L];
    let rows = lr
        .chunks_exact(L)
        .zip(main.chunks_exact(L))
        .zip(slack.chunks_exact(L));
    for ((a, b), c) in rows {
        for k in 0..L {
            let u = a[k] + b[k] + c[k];
            let l = a[k] + (b[k] - c[k]).max(0.0);
            ub[k] = if u < ub[k] { u } else { ub[k] };
            lb[k] = if l < lb[k] { l } else { lb[k] };
        }
    }
    let mut u = ub.iter().fold(f64::INFINITY, |x, &y| x.min(y));
    let mut l = lb.iter().fold(f64::INFINITY, |x, &y| x.min(y));
    let body = lr.len() - lr.len() % L;
    for i in body..lr.len() {
        u = u.min(lr[i] + main[i] + slack[i]);
        l = l.min(lr[i] + (main[i] - slack[i]).max(0.0));
    }
    (u, l)
}

/// Dot product with four independent accumulators (vectorizable).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    const L: usize = 4;
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f64; L];
    for (x, y) in a.chunks_exact(L).zip(b.chunks_exact(L)) {
        for k in 0..L {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    let body = n - n % L;
    for i in body..n {
        s += a[i] * b[i];
    }
    s
}

/// `P(i+1) - P(i)` for `i` in `0..n` (see the module doc), in units of `w = 1`.
fn delta_p(n: usize, out: &mut Vec<f64>) {
    let d = n as f64 / 256.0;
    let d3 = d * d * d;
    let inv_n = 1.0 / n as f64;
    let step = 256 % n;
    out.clear();
    out.reserve(n);
    let mut prev = 0.0; // P(0) = 0
    let mut r = 0usize; // (256·i) mod n, updated incrementally
    for i in 0..n {
        r += step;
        if r >= n {
            r -= n;
        }
        let next = if i + 1 == n {
            0.0 // P(n) = 0
        } else {
            let u = r as f64 * inv_n - 0.5;
            d3 * (u * u * u / 3.0 - u / 12.0)
        };
        out.push(next - prev);
        prev = next;
    }
}

/// Fast exact-equivalent of [`super::norm_min::l2_bruteforce_bins`]: returns `(start, n)`.
pub fn l2_search_bins(p: &PaddedBins, preserve_sparsity: bool) -> (i64, usize) {
    l2_search_bins_stats(p, preserve_sparsity).0
}

/// [`l2_search_bins`] plus statistics of the work done.
pub fn l2_search_bins_stats(
    p: &PaddedBins,
    preserve_sparsity: bool,
) -> ((i64, usize), L2SearchStats) {
    let nbins = p.len();
    let mut stats = L2SearchStats::default();
    if nbins == 0 {
        return ((0, 1), stats);
    }
    // Window list: asymmetric = all (s, n) with 0 <= s <= N - n; symmetric = one s per n.
    let sym_start = |n: usize| p.symmetric_start(n);
    let (mut b0, mut b1) = (0i64, nbins as i64);
    if preserve_sparsity {
        for n in 1..=nbins {
            let s = sym_start(n);
            b0 = b0.min(s);
            b1 = b1.max(s + n as i64);
        }
    }
    let sums = Sums::new(&p.bins, b0, b1);

    let starts = |n: usize| -> (i64, i64) {
        if preserve_sparsity {
            let s = sym_start(n);
            (s, s + 1)
        } else {
            (0, (nbins - n + 1) as i64)
        }
    };

    // Scratch rows of per-window terms for one width (filled by vectorizable loops).
    let max_count = if preserve_sparsity { 1 } else { nbins };
    let mut lr = vec![0f64; max_count];
    let mut main = vec![0f64; max_count];
    let mut slack = vec![0f64; max_count];

    // Pass 1: smallest upper bound, and the smallest lower bound of every width.
    let mut ub_min = f64::INFINITY;
    let mut lb_min_per_n = vec![f64::INFINITY; nbins + 1];
    for (n, lb_slot) in lb_min_per_n.iter_mut().enumerate().skip(1) {
        let (s0, s1) = starts(n);
        let count = (s1 - s0) as usize;
        sums.fill(
            n,
            s0,
            &mut lr[..count],
            &mut main[..count],
            &mut slack[..count],
        );
        let (ub, lb) = min_bounds(&lr[..count], &main[..count], &slack[..count]);
        ub_min = ub_min.min(ub);
        *lb_slot = lb;
        stats.windows += count;
    }

    // Pass 2: exact errors of the windows whose lower bound can compete.
    let tol = 1.0 + RECHECK_TOLERANCE * (nbins as f64 / 2048.0).max(1.0);
    let mut threshold = ub_min * tol;
    let mut best_exact = f64::INFINITY;
    let mut near: Vec<(f64, usize, i64)> = Vec::new();
    let mut dp: Vec<f64> = Vec::new();
    for (n, &lb_n) in lb_min_per_n.iter().enumerate().skip(1) {
        if lb_n > threshold {
            continue;
        }
        let (s0, s1) = starts(n);
        let count = (s1 - s0) as usize;
        sums.fill(
            n,
            s0,
            &mut lr[..count],
            &mut main[..count],
            &mut slack[..count],
        );
        let mut have_dp = false;
        for i in 0..count {
            let lb = lr[i] + (main[i] - slack[i]).max(0.0);
            if lb > threshold {
                continue;
            }
            let s = s0 + i as i64;
            let corr = if 256 % n == 0 {
                0.0
            } else {
                if !have_dp {
                    delta_p(n, &mut dp);
                    have_dp = true;
                }
                let from = (s - sums.b0) as usize;
                dot(&sums.c[from..from + n], &dp)
            };
            stats.exact_evaluations += 1;
            let exact = lr[i] + main[i] + corr;
            if exact < best_exact {
                best_exact = exact;
                threshold = threshold.min(best_exact * tol);
            }
            if exact <= threshold {
                near.push((exact, n, s));
            }
        }
    }

    // Pass 3: literal re-check of the near-best windows, literal tie rules.
    let limit = best_exact * tol;
    near.retain(|&(e, _, _)| e <= limit);
    near.sort_by(|a, b| a.0.total_cmp(&b.0));
    near.truncate(MAX_RECHECK);
    let mut best: Option<(f32, usize, i64)> = None;
    for &(_, n, s) in &near {
        let lit = literal_l2_error(&p.bins, p.bin_width, n, s);
        stats.literal_rechecks += 1;
        let better = match best {
            None => true,
            Some((bl, bn, bs)) => lit < bl || (lit == bl && (n < bn || (n == bn && s < bs))),
        };
        if better {
            best = Some((lit, n, s));
        }
    }
    match best {
        Some((_, n, s)) => ((s, n), stats),
        // Only when every error is NaN: the literal code then keeps its initial (start 0, n 1).
        None => ((0, 1), stats),
    }
}

/// Exact (f64) error of one window in units of `w² `, from the decomposition in the module doc
/// (used by tests to measure how far the literal f32 sum drifts).
pub fn exact_l2_error(p: &PaddedBins, start: i64, n: usize) -> f64 {
    let b0 = start.min(0);
    let b1 = (start + n as i64).max(p.len() as i64);
    let sums = Sums::new(&p.bins, b0, b1);
    let (lr, mass, _) = sums.terms(start, n);
    let (main_k, _) = width_consts(n);
    let mut dp = Vec::new();
    delta_p(n, &mut dp);
    let from = (start - b0) as usize;
    let corr: f64 = sums.c[from..from + n]
        .iter()
        .zip(&dp)
        .map(|(c, d)| c * d)
        .sum();
    lr + mass * main_k + corr
}

/// Fast L2 search on a histogram; same result as [`super::norm_min::l2_bruteforce`].
/// `None` when the histogram is not searchable (see [`PaddedBins::new`]).
pub fn l2_search(h: &Histogram, preserve_sparsity: bool) -> Option<L2Window> {
    let p = PaddedBins::new(h)?;
    let (start, n) = l2_search_bins(&p, preserve_sparsity);
    let (min, max) = p.window_range(start, n);
    Some(L2Window {
        start,
        nbins_selected: n,
        min,
        max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::norm_min::l2_bruteforce_bins;
    use crate::quant::norm_min::tests::per_code_error;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    fn padded(min: f32, max: f32, counts: Vec<u64>) -> PaddedBins {
        PaddedBins::new(&Histogram { min, max, counts }).expect("searchable")
    }

    /// Random histogram shapes: gaussian-ish, ReLU-like spike + decay, noisy, sparse.
    fn random_counts(rng: &mut Rng, n: usize) -> Vec<u64> {
        let kind = rng.below(5);
        let center = rng.unit() * n as f64;
        let width = 1.0 + rng.unit() * n as f64 / 3.0;
        let scale = [1.0, 30.0, 1e4, 1e7][rng.below(4) as usize];
        (0..n)
            .map(|i| {
                let x = (i as f64 - center) / width;
                let v = match kind {
                    0 => (-x * x / 2.0).exp() * scale,
                    1 => {
                        if i == 0 {
                            scale * 3.0
                        } else {
                            (-(i as f64) / width).exp() * scale
                        }
                    }
                    2 => rng.unit() * scale,
                    3 => {
                        if rng.below(4) == 0 {
                            rng.unit() * scale
                        } else {
                            0.0
                        }
                    }
                    _ => (-x.abs()).exp() * scale + rng.unit() * scale * 0.05,
                };
                v.round() as u64
            })
            .collect()
    }

    fn check_same(p: &PaddedBins, sym: bool, what: &str) {
        let lit = l2_bruteforce_bins(p, sym);
        let fast = l2_search_bins(p, sym);
        assert_eq!(fast, lit, "{what} sym {sym}: bins {:?}", p.bins);
    }

    #[test]
    fn exact_error_matches_per_code_integration() {
        let mut rng = Rng(99);
        for _ in 0..30 {
            let n = 4 + rng.below(40) as usize;
            let counts = random_counts(&mut rng, n);
            if counts.iter().all(|&c| c == 0) {
                continue;
            }
            let p = padded(-1.0, 2.0, counts);
            let nn = 1 + rng.below(p.len() as u64) as usize;
            let s = rng.below((p.len() - nn + 1) as u64) as i64 - 2;
            let w = p.bin_width as f64;
            let want = per_code_error(&p.bins, w, nn, s) / (w * w);
            let got = exact_l2_error(&p, s, nn);
            assert!(
                (got - want).abs() <= 1e-9 * want.max(1e-300),
                "{got} vs {want}"
            );
        }
    }

    #[test]
    fn same_window_as_bruteforce_on_random_histograms() {
        let mut rng = Rng(0x5eed);
        for case in 0..300 {
            let n = 2 + rng.below(62) as usize;
            let counts = random_counts(&mut rng, n);
            if counts.iter().all(|&c| c == 0) {
                continue;
            }
            // Ranges: straddling 0, starting at 0, positive (padding), negative (padding).
            let (lo, hi) = match case % 4 {
                0 => (-1.5f32, 2.25f32),
                1 => (0.0, 3.0),
                2 => (0.5, 2.5),
                _ => (-4.0, -1.0),
            };
            let p = padded(lo, hi, counts);
            check_same(&p, false, &format!("case {case}"));
            check_same(&p, true, &format!("case {case}"));
        }
    }

    #[test]
    fn same_window_as_bruteforce_on_adversarial_histograms() {
        let mut cases: Vec<Vec<u64>> = vec![
            vec![1],
            vec![5, 5],
            vec![0, 7, 0],
            vec![1; 40],                 // uniform: mirror windows tie
            vec![1_000_000_000_000; 17], // huge counts (f32 rounding of counts)
            vec![0, 0, 0, 0, 1, 0, 0, 0, 0],
        ];
        let mut two_spikes = vec![0u64; 33];
        two_spikes[3] = 100;
        two_spikes[29] = 100;
        cases.push(two_spikes);
        let mut relu = vec![0u64; 60];
        relu[0] = 100_000;
        for (i, c) in relu.iter_mut().enumerate().skip(1) {
            *c = (5000.0 * (-(i as f64) / 6.0).exp()) as u64;
        }
        relu[59] = 3; // far outlier
        cases.push(relu);
        let mut alternating = vec![0u64; 48];
        for (i, c) in alternating.iter_mut().enumerate() {
            *c = if i % 2 == 0 { 1000 } else { 1 };
        }
        cases.push(alternating);
        let mut edge_spikes = vec![1u64; 50];
        edge_spikes[0] = 10_000;
        edge_spikes[49] = 10_000;
        cases.push(edge_spikes);
        for (k, counts) in cases.into_iter().enumerate() {
            for &(lo, hi) in &[(-1.0f32, 1.0f32), (0.0, 1.0), (-0.3, 5.0), (2.0, 3.0)] {
                let p = padded(lo, hi, counts.clone());
                check_same(&p, false, &format!("adversarial {k} [{lo}, {hi}]"));
                check_same(&p, true, &format!("adversarial {k} [{lo}, {hi}]"));
            }
        }
    }

    #[test]
    fn same_window_as_bruteforce_on_larger_histograms() {
        let mut rng = Rng(77);
        for case in 0..6 {
            let n = [128usize, 160, 200, 256][case % 4];
            let counts = random_counts(&mut rng, n);
            if counts.iter().all(|&c| c == 0) {
                continue;
            }
            let p = padded(-0.7, 3.1, counts);
            check_same(&p, false, &format!("large case {case}"));
            check_same(&p, true, &format!("large case {case}"));
        }
    }

    #[test]
    fn literal_drift_is_far_below_the_tolerance() {
        // N = 2048 realistic shapes: |literal - exact| / exact over random windows.
        let mut rng = Rng(4242);
        let mut worst = 0f64;
        for _ in 0..6 {
            let counts = random_counts(&mut rng, 2048);
            if counts.iter().all(|&c| c == 0) {
                continue;
            }
            let p = padded(-3.0, 11.0, counts);
            let w = p.bin_width as f64;
            for _ in 0..40 {
                let n = 1 + rng.below(2048) as usize;
                let s = rng.below((2048 - n + 1) as u64) as i64;
                let lit = literal_l2_error(&p.bins, p.bin_width, n, s) as f64 / (w * w);
                let ex = exact_l2_error(&p, s, n);
                if ex > 0.0 {
                    worst = worst.max((lit - ex).abs() / ex);
                }
            }
        }
        eprintln!("worst relative literal drift: {worst:e}");
        assert!(worst < RECHECK_TOLERANCE / 10.0, "{worst}");
    }

    /// Realistic N = 2048 histograms built with a DynamicHistogram from synthetic activations.
    pub(crate) fn realistic_2048(kind: usize, seed: u64) -> Histogram {
        let mut rng = Rng(seed | 1);
        let mut gauss = || {
            // Box-Muller
            let u1 = rng.unit().max(1e-300);
            let u2 = rng.unit();
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        };
        let mut d = crate::quant::DynamicHistogram::new(2048);
        let batches = if kind == 3 { 1 } else { 8 };
        let per = if kind == 3 { 20_000 } else { 200_000 };
        for _ in 0..batches {
            let batch: Vec<f32> = (0..per)
                .map(|_| {
                    let g = gauss();
                    match kind {
                        // ReLU of a gaussian: half zeros, half-normal tail, rare big values
                        0 => (g.max(0.0) * (1.0 + (g * g * 0.05).exp() * 0.1)) as f32,
                        // pre-activation: gaussian with heavy (cubic) tails, shifted
                        1 => (0.3 + g + 0.02 * g * g * g) as f32,
                        // long-tailed positive (exponential-ish), min > 0 (needs padding)
                        2 => (0.5 + (g * 0.8).exp()) as f32,
                        // few samples: noisy
                        _ => (g * 2.0 - 1.0) as f32,
                    }
                })
                .collect();
            d.add(&batch);
        }
        d.finalize()
    }

    #[test]
    #[ignore = "slow: compares with the literal O(N^3) search on N = 2048 (minutes)"]
    fn agrees_with_bruteforce_on_n2048() {
        for kind in 0..4 {
            let h = realistic_2048(kind, 1000 + kind as u64);
            let p = PaddedBins::new(&h).unwrap();
            for sym in [false, true] {
                let t = std::time::Instant::now();
                let (fast, st) = l2_search_bins_stats(&p, sym);
                let tf = t.elapsed();
                let t = std::time::Instant::now();
                let lit = l2_bruteforce_bins(&p, sym);
                let tl = t.elapsed();
                let ef = literal_l2_error(&p.bins, p.bin_width, fast.1, fast.0);
                let el = literal_l2_error(&p.bins, p.bin_width, lit.1, lit.0);
                eprintln!(
                    "kind {kind} sym {sym}: N {} fast {fast:?} ({:.1} ms, {st:?}) literal {lit:?} \
                     ({:.1} s) errors {ef:e} vs {el:e}",
                    p.len(),
                    tf.as_secs_f64() * 1e3,
                    tl.as_secs_f64()
                );
                assert_eq!(fast, lit);
            }
        }
    }

    #[test]
    #[ignore = "timing: run with --ignored --nocapture"]
    fn timing_n2048() {
        for kind in 0..4 {
            let h = realistic_2048(kind, 1000 + kind as u64);
            let p = PaddedBins::new(&h).unwrap();
            for sym in [false, true] {
                let mut best = f64::MAX;
                let mut out = None;
                for _ in 0..7 {
                    let t = std::time::Instant::now();
                    out = Some(l2_search_bins_stats(&p, sym));
                    best = best.min(t.elapsed().as_secs_f64());
                }
                let (fast, st) = out.unwrap();
                eprintln!(
                    "kind {kind} sym {sym}: N {} -> {fast:?} in {:.1} ms (min of 7), {st:?}",
                    p.len(),
                    best * 1e3
                );
            }
        }
    }
}
