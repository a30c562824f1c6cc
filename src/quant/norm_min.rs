//! L2 norm minimization, literal brute force (Caffe2 `NormMinimization::ChooseQuantizationParams`
//! with kind L2, facts §7.4), and the pieces shared with the fast search in
//! [`super::l2_fast`] and with [`super::l2_approx`].
//!
//! Model: the histogram has `N` bins of width `w` over `[min, max]`; values are uniformly spread
//! within a bin (density `ρ = count / w`). A *window* of `n` source bins starting at bin `s`
//! is mapped onto `256` codes of width `d = w·n/256`; every value is reconstructed at the center
//! of its code, values left of the window at the center of code 0 and values right of it at the
//! center of code 255. The error of a window is
//! `Σ_j ρ_j ∫_{bin j} (x - q(x))² dx`, computed per bin with `g(u, v) = ρ (v³ - u³)/3`.
//!
//! The literal search tries every `n` in `1..=N` and every `s` in `0..=N-n` (asymmetric), or only
//! `s = 0` (if `min == 0`) / `s = zero_bin - n/2` (symmetric), keeps per `n` the first `s` with the
//! strictly smallest error and then the smallest `n` with the strictly smallest error, all in
//! f32 exactly like the scalar Caffe2 code. It costs about `N³/2` bin visits: use it on small
//! histograms (tests) only; [`super::l2_fast::l2_search`] gives the same answer quickly.

use rayon::prelude::*;

use super::histogram::Histogram;

/// Number of destination codes (`2^precision`, precision 8).
pub const DST_NBINS: i64 = 256;

/// Histograms whose zero padding would exceed this many times their bin count are not searched
/// (min/max is used instead): Caffe2 would pad without limit and take hours.
pub const MAX_PADDING_FACTOR: usize = 8;

/// A histogram's counts as f32 (Caffe2 `bins_f`), padded with empty bins so that the range
/// contains 0 (facts §7.4 step 1, new-code `adjust_hist_to_include_zero`).
#[derive(Debug, Clone, PartialEq)]
pub struct PaddedBins {
    /// Lower end after padding (≤ 0).
    pub min: f32,
    /// Upper end after padding (≥ 0).
    pub max: f32,
    /// Bin width `(max - min)/nbins` of the **original** histogram (unchanged by padding).
    pub bin_width: f32,
    /// Counts converted to f32, with the padding bins.
    pub bins: Vec<f32>,
    /// Which side of zero the original data lay on (decides the symmetric start).
    pub side: Side,
}

/// Where the data of a histogram lie relative to zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Negative and positive values.
    Both,
    /// Only values >= 0 (e.g. after Relu, or strictly positive logits).
    NonNegative,
    /// Only values <= 0.
    NonPositive,
}

impl PaddedBins {
    /// Pads `h` (f32 arithmetic as in Caffe2): `min > 0` prepends `ceil(min/w)` empty bins and
    /// lowers `min` by that many widths; `max < 0` appends `ceil(-max/w)` bins. `None` when the
    /// histogram is not searchable ([`Histogram::is_searchable`]) or the padding would exceed
    /// [`MAX_PADDING_FACTOR`] times the bin count.
    pub fn new(h: &Histogram) -> Option<PaddedBins> {
        if !h.is_searchable() {
            return None;
        }
        let nbins = h.counts.len();
        let w = h.bin_width();
        let (mut min, mut max) = (h.min, h.max);
        let mut extra = 0usize;
        let mut offset = 0usize;
        let limit = (MAX_PADDING_FACTOR * nbins) as f32;
        if min > 0.0 {
            let k = (min / w).ceil();
            if k > limit {
                return None;
            }
            extra = k as usize;
            offset = extra;
            min -= extra as f32 * w;
        } else if max < 0.0 {
            let k = (-max / w).ceil();
            if k > limit {
                return None;
            }
            extra = k as usize;
            max += extra as f32 * w;
        }
        let mut bins = vec![0f32; nbins + extra];
        for (i, &c) in h.counts.iter().enumerate() {
            bins[i + offset] = c as f32;
        }
        let side = if h.min >= 0.0 {
            Side::NonNegative
        } else if h.max <= 0.0 {
            Side::NonPositive
        } else {
            Side::Both
        };
        Some(PaddedBins {
            min,
            max,
            bin_width: w,
            bins,
            side,
        })
    }

    /// Number of bins after padding.
    pub fn len(&self) -> usize {
        self.bins.len()
    }

    /// True when there are no bins (never for a value built by [`PaddedBins::new`]).
    pub fn is_empty(&self) -> bool {
        self.bins.is_empty()
    }

    /// `zero_bin = round(-min / w)` (half away from zero), f32 as in Caffe2.
    pub fn zero_bin(&self) -> i64 {
        (-self.min / self.bin_width).round() as i64
    }

    /// The start bin of the symmetric search for width `n`: 0 when `min == 0`, else
    /// `zero_bin - n/2` (may be negative or make the window run past the end).
    ///
    /// Deliberate departure from Caffe2: for one-sided data (all values >= 0, or all <= 0)
    /// the window starts (ends) at the zero bin. Caffe2 pads a strictly positive histogram
    /// down to just below 0 and then centres every window on zero, so no window can cover
    /// more than half of the data; on SqueezeNet's logits that clipped 68% of the values.
    /// For data whose minimum is exactly 0 (the Relu case) both rules agree.
    pub fn symmetric_start(&self, n: usize) -> i64 {
        match self.side {
            Side::NonNegative => 0,
            Side::NonPositive => self.bins.len() as i64 - n as i64,
            Side::Both if self.min == 0.0 => 0,
            Side::Both => self.zero_bin() - (n / 2) as i64,
        }
    }

    /// Real range of a window: `(min + w·s, min + w·(s + n))` in f32 as Caffe2 computes it,
    /// clamped at 0 on the empty side of one-sided data (so the padding bin does not make
    /// the range straddle zero and turn on symmetric parameters).
    pub fn window_range(&self, start: i64, n: usize) -> (f32, f32) {
        let mut hi = self.min + self.bin_width * (start + n as i64) as f32;
        let mut lo = self.min + self.bin_width * start as f32;
        match self.side {
            Side::NonNegative => lo = lo.max(0.0),
            Side::NonPositive => hi = hi.min(0.0),
            Side::Both => {}
        }
        (lo, hi)
    }
}

/// A chosen window of the L2 search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct L2Window {
    /// First source bin of the window (padded coordinates; may be negative when symmetric).
    pub start: i64,
    /// Number of source bins in the window.
    pub nbins_selected: usize,
    /// `min + w·start`.
    pub min: f32,
    /// `min + w·(start + nbins_selected)`.
    pub max: f32,
}

/// `GetNorm` for L2: `density · (end³ - begin³)/3` in f32, evaluated as Caffe2 does.
#[inline]
fn l2_norm(begin: f32, end: f32, density: f32) -> f32 {
    let norm = (end * end * end - begin * begin * begin) / 3.0;
    density * norm
}

/// Literal f32 L2 error of the window `[start, start + n)` (facts §7.4 step 3), summing over
/// **all** bins in order exactly like the scalar Caffe2 loop.
pub fn literal_l2_error(bins: &[f32], bin_width: f32, n: usize, start: i64) -> f32 {
    let dst_w = bin_width * n as f32 / DST_NBINS as f32;
    let top = (DST_NBINS - 1) as f32;
    let mut norm = 0f32;
    for (j, &c) in bins.iter().enumerate() {
        let begin = (j as i64 - start) as f32 * bin_width;
        let end = begin + bin_width;
        let db = top.min(0f32.max((begin / dst_w).floor())) as i64;
        let de = top.min(0f32.max((end / dst_w).floor())) as i64;
        let db_center = db as f32 * dst_w + dst_w / 2.0;
        let density = c / bin_width;
        let delta_begin = begin - db_center;
        if db == de {
            let delta_end = end - db_center;
            norm += l2_norm(delta_begin, delta_end, density);
        } else {
            let delta_end = dst_w / 2.0;
            norm += l2_norm(delta_begin, delta_end, density);
            norm += (de - db - 1) as f32 * l2_norm(-dst_w / 2.0, dst_w / 2.0, density);
            let de_center = de as f32 * dst_w + dst_w / 2.0;
            norm += l2_norm(-dst_w / 2.0, end - de_center, density);
        }
    }
    norm
}

/// The literal brute-force search over padded bins (O(N³) asymmetric, O(N²) symmetric).
/// Returns `(start, n)`. The widths run in parallel (rayon), like Caffe2's OpenMP loop; the
/// result does not depend on the thread count.
pub fn l2_bruteforce_bins(p: &PaddedBins, preserve_sparsity: bool) -> (i64, usize) {
    let nbins = p.len();
    let best_per_n: Vec<(i64, f32)> = (1..=nbins)
        .into_par_iter()
        .map(|n| {
            let (s_begin, s_end) = if preserve_sparsity {
                let s = p.symmetric_start(n);
                (s, s + 1)
            } else {
                (0, (nbins - n + 1) as i64)
            };
            let mut norm_min = f32::MAX;
            let mut best_start = 0i64;
            for s in s_begin..s_end {
                let norm = literal_l2_error(&p.bins, p.bin_width, n, s);
                if norm < norm_min {
                    norm_min = norm;
                    best_start = s;
                }
            }
            (best_start, norm_min)
        })
        .collect();
    let mut norm_min = f32::MAX;
    let (mut best_n, mut best_s) = (1usize, 0i64);
    for (i, &(s, norm)) in best_per_n.iter().enumerate() {
        if norm < norm_min {
            norm_min = norm;
            best_n = i + 1;
            best_s = s;
        }
    }
    (best_s, best_n)
}

/// Literal L2 brute force on a histogram (reference implementation; slow for N = 2048).
/// `None` when the histogram is not searchable (see [`PaddedBins::new`]).
pub fn l2_bruteforce(h: &Histogram, preserve_sparsity: bool) -> Option<L2Window> {
    let p = PaddedBins::new(h)?;
    let (start, n) = l2_bruteforce_bins(&p, preserve_sparsity);
    let (min, max) = p.window_range(start, n);
    Some(L2Window {
        start,
        nbins_selected: n,
        min,
        max,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Exact error of a window computed code by code (f64), independently of the per-bin closed
    /// form: code k covers [k·d, (k+1)·d) relative to the window start (code 0 extends to -inf,
    /// code 255 to +inf) and reconstructs at k·d + d/2; each bin's uniform density is
    /// integrated over its intersection with each code.
    pub(crate) fn per_code_error(bins: &[f32], w: f64, n: usize, s: i64) -> f64 {
        let d = w * n as f64 / 256.0;
        let mut total = 0.0;
        for (j, &c) in bins.iter().enumerate() {
            if c == 0.0 {
                continue;
            }
            let dens = c as f64 / w;
            let (b, e) = ((j as i64 - s) as f64 * w, (j as i64 - s + 1) as f64 * w);
            for k in 0..256i64 {
                let lo = if k == 0 {
                    f64::NEG_INFINITY
                } else {
                    k as f64 * d
                };
                let hi = if k == 255 {
                    f64::INFINITY
                } else {
                    (k + 1) as f64 * d
                };
                let (a, z) = (b.max(lo), e.min(hi));
                if a < z {
                    let ctr = k as f64 * d + d / 2.0;
                    total += dens * ((z - ctr).powi(3) - (a - ctr).powi(3)) / 3.0;
                }
            }
        }
        total
    }

    #[test]
    fn one_bin_window_is_w2_over_12_times_256_squared() {
        // Single bin of count 12 and width 1, window = that bin: d = 1/256, error =
        // 12 · d²/12 = 1/65536.
        let e = literal_l2_error(&[12.0], 1.0, 1, 0);
        assert!((e as f64 - 1.0 / 65536.0).abs() < 1e-9, "{e}");
    }

    #[test]
    fn outliers_measured_against_edge_centers() {
        // Bins [0,1), [1,2), [2,3) with counts 1, 0, 2; window = bin 1 only (s = 1, n = 1):
        // d = 1/256. Bin 0 lies left of the window: error = 1·mean over [-1,0) of (x - d/2)² =
        // (d/2)² + d/2 + 1/3. Bin 2 right: x in [1, 2) vs center 1 - d/2: (d/2)² + d/2 + 1/3,
        // times 2.
        let d = 1.0f64 / 256.0;
        let side = (d / 2.0).powi(2) + d / 2.0 + 1.0 / 3.0;
        let e = literal_l2_error(&[1.0, 0.0, 2.0], 1.0, 1, 1);
        assert!(
            (e as f64 - 3.0 * side).abs() < 1e-6,
            "{e} vs {}",
            3.0 * side
        );
    }

    #[test]
    fn literal_error_matches_per_code_integration() {
        let bins = [3.0f32, 0.0, 7.0, 1.0, 4.0, 4.0, 2.0, 9.0, 0.0, 5.0];
        for &(n, s) in &[
            (1usize, 0i64),
            (3, 2),
            (7, 1),
            (10, 0),
            (5, 5),
            (4, -2),
            (6, 7),
        ] {
            let lit = literal_l2_error(&bins, 0.5, n, s) as f64;
            let num = per_code_error(&bins, 0.5, n, s);
            assert!(
                (lit - num).abs() <= 1e-5 * num.max(1e-12),
                "n {n} s {s}: literal {lit} vs integrated {num}"
            );
        }
    }

    #[test]
    fn padding_includes_zero() {
        // [2, 4] with 4 bins (w 0.5): prepend ceil(2/0.5) = 4 bins -> [0, 4], 8 bins.
        let h = Histogram {
            min: 2.0,
            max: 4.0,
            counts: vec![1, 2, 3, 4],
        };
        let p = PaddedBins::new(&h).unwrap();
        assert_eq!((p.min, p.max, p.bin_width), (0.0, 4.0, 0.5));
        assert_eq!(p.bins, vec![0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0]);
        // [-3, -1.5], 3 bins (w 0.5): append ceil(1.5/0.5) = 3 bins -> [-3, 0].
        let h = Histogram {
            min: -3.0,
            max: -1.5,
            counts: vec![5, 6, 7],
        };
        let p = PaddedBins::new(&h).unwrap();
        assert_eq!((p.min, p.max), (-3.0, 0.0));
        assert_eq!(p.bins, vec![5.0, 6.0, 7.0, 0.0, 0.0, 0.0]);
        assert_eq!(p.zero_bin(), 6);
        // Too far from zero: [1000, 1001] with 4 bins would need 4000 padding bins.
        let h = Histogram {
            min: 1000.0,
            max: 1001.0,
            counts: vec![1; 4],
        };
        assert!(PaddedBins::new(&h).is_none());
        // Degenerate: empty or zero-width.
        assert!(PaddedBins::new(&Histogram::new(4, 1.0, 1.0)).is_none());
        assert!(PaddedBins::new(&Histogram::new(4, 0.0, 1.0)).is_none());
    }

    #[test]
    fn symmetric_start_rule() {
        let p = PaddedBins {
            min: -2.5,
            max: 2.5,
            bin_width: 0.5,
            bins: vec![1.0; 10],
            side: Side::Both,
        };
        // zero_bin = round(2.5/0.5) = 5; n = 4 -> 3; n = 5 -> 3; n = 10 -> 0; n = 1 -> 5.
        assert_eq!(p.symmetric_start(4), 3);
        assert_eq!(p.symmetric_start(5), 3);
        assert_eq!(p.symmetric_start(10), 0);
        assert_eq!(p.symmetric_start(1), 5);
        let q = PaddedBins {
            min: 0.0,
            ..p.clone()
        };
        assert_eq!(q.symmetric_start(7), 0);
        // One-sided data: the window starts (ends) at the zero bin.
        let pos = PaddedBins {
            min: -0.1,
            side: Side::NonNegative,
            ..p.clone()
        };
        assert_eq!(pos.symmetric_start(4), 0);
        assert_eq!(pos.window_range(0, 4), (0.0, 1.9));
        let neg = PaddedBins {
            side: Side::NonPositive,
            ..p
        };
        assert_eq!(neg.symmetric_start(4), 6);
    }

    /// Independent exhaustive search: evaluate every window with the per-code integration and
    /// pick the smallest error. On histograms without near-ties, the literal search must agree.
    #[test]
    fn bruteforce_agrees_with_exhaustive_per_code_search() {
        let cases: Vec<Vec<u64>> = vec![
            vec![0, 1, 4, 9, 30, 9, 4, 1, 0, 0, 0, 1],
            vec![50, 20, 10, 5, 3, 2, 1, 1, 0, 0, 0, 0, 0, 1],
            vec![1, 0, 0, 0, 0, 100, 0, 0, 0, 0, 0, 1],
        ];
        for counts in cases {
            let nb = counts.len();
            let h = Histogram {
                min: -1.0,
                max: -1.0 + nb as f32 * 0.25,
                counts: counts.clone(),
            };
            let p = PaddedBins::new(&h).unwrap();
            let (s, n) = l2_bruteforce_bins(&p, false);
            let mut best = (f64::MAX, 0i64, 0usize);
            for nn in 1..=p.len() {
                for ss in 0..=(p.len() - nn) as i64 {
                    let e = per_code_error(&p.bins, 0.25, nn, ss);
                    if e < best.0 * (1.0 - 1e-6) {
                        best = (e, ss, nn);
                    }
                }
            }
            assert_eq!((s, n), (best.1, best.2), "counts {counts:?}");
        }
    }

    #[test]
    fn bruteforce_hand_case() {
        // All mass in one bin: the best window is that bin alone (error c·w²/(12·256²)), any
        // wider window has a larger code width and so a larger error.
        let h = Histogram {
            min: -1.0,
            max: 1.0,
            counts: vec![0, 0, 0, 10, 0, 0, 0, 0],
        };
        let w = l2_bruteforce(&h, false).unwrap();
        assert_eq!((w.start, w.nbins_selected), (3, 1));
        assert_eq!((w.min, w.max), (-0.25, 0.0));
        // Symmetric: zero_bin = 4; n = 1 -> s = 4 (bin 3 is then an outlier); n = 2 -> s = 3,
        // window [3, 5) covers the mass: error 10·(d²/12 + ...) with d = 2w/256; compare with
        // n = 1: outlier error 10·((0.25/2 + d/2)² + ...) much larger. Wider windows get worse.
        let w = l2_bruteforce(&h, true).unwrap();
        assert_eq!((w.start, w.nbins_selected), (3, 2));
    }
}
