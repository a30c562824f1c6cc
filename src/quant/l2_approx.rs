//! L2_APPROX: Caffe2 `NormMinimization::NonlinearQuantizationParamsSearch` (facts §7.5).
//!
//! A greedy quantile search: starting from the full (zero-padded) histogram, repeatedly move
//! either the start bin up to the next `α + 1e-5` quantile or the end bin down to the next
//! `β - 1e-5` quantile — whichever side moves more bins — and stop as soon as the L2 error of
//! the new range `[start, end]` (inclusive; `d = w·(end - start + 1)/256`) gets larger than the
//! best so far. The error model is the one of [`super::norm_min`]; this routine accumulates it in
//! double but evaluates each piece with the f32 `GetNorm`, as Caffe2 does.
//!
//! 2018/2019 behaviour: newer Caffe2 also skips the search (plain min/max) when
//! `(max - min)/255 < 6.1e-5`; that check is not applied here.

use super::histogram::Histogram;
use super::norm_min::{PaddedBins, DST_NBINS};

/// Quantile step of the search.
pub const STEP: f64 = 1e-5;

/// `GetNorm` for L2 on f32 arguments: `density · (end³ - begin³)/3`.
#[inline]
fn l2_norm(begin: f32, end: f32, density: f32) -> f32 {
    let norm = (end * end * end - begin * begin * begin) / 3.0;
    density * norm
}

/// Error of mapping bins `[start, end]` (inclusive) onto the 256 codes, accumulated in f64
/// exactly like the Caffe2 loop (f32 widths and pieces, double sums).
pub fn range_error(p: &PaddedBins, start: i64, end: i64) -> f64 {
    let w = p.bin_width;
    let dst_w = (w * (end - start + 1) as f32 / DST_NBINS as f32) as f64;
    let top = (DST_NBINS - 1) as f64;
    let mut norm = 0f64;
    for (j, &c) in p.bins.iter().enumerate() {
        let begin = ((j as i64 - start) as f32 * w) as f64;
        let end_x = begin + w as f64;
        let db = top.min(0f64.max((begin / dst_w).floor())) as i64;
        let de = top.min(0f64.max((end_x / dst_w).floor())) as i64;
        let db_center = db as f64 * dst_w + dst_w / 2.0;
        let density = c / w;
        if db == de {
            norm += l2_norm(
                (begin - db_center) as f32,
                (end_x - db_center) as f32,
                density,
            ) as f64;
        } else {
            norm += l2_norm((begin - db_center) as f32, (dst_w / 2.0) as f32, density) as f64;
            norm += ((de - db - 1) as f32
                * l2_norm((-dst_w / 2.0) as f32, (dst_w / 2.0) as f32, density))
                as f64;
            let de_center = de as f64 * dst_w + dst_w / 2.0;
            norm += l2_norm((-dst_w / 2.0) as f32, (end_x - de_center) as f32, density) as f64;
        }
    }
    norm
}

/// The greedy search on padded bins; returns the inclusive bin range `(start, end)`.
pub fn l2_approx_bins(p: &PaddedBins) -> (i64, i64) {
    let nbins = p.len() as i64;
    let mut cdf = Vec::with_capacity(p.len());
    let mut sum = 0u64;
    for &x in &p.bins {
        sum += x as u64;
        cdf.push(sum);
    }
    let total = sum as f64;
    let (mut alpha, mut beta) = (0f64, 1f64);
    let (mut start, mut end) = (0i64, nbins - 1);
    let mut norm_min = f64::MAX;
    while alpha < beta {
        let next_alpha = alpha + STEP;
        let next_beta = beta - STEP;
        let (mut i, mut j) = (start, end);
        while i < end && (cdf[i as usize] as f64) < next_alpha * total {
            i += 1;
        }
        while j > start && (cdf[j as usize] as f64) > next_beta * total {
            j -= 1;
        }
        let (mut next_start, mut next_end) = (start, end);
        if (i - start) > (end - j) {
            next_start = i;
            alpha = next_alpha;
        } else {
            next_end = j;
            beta = next_beta;
        }
        if next_start == start && next_end == end {
            continue;
        }
        let norm = range_error(p, next_start, next_end);
        if norm > norm_min {
            break;
        }
        norm_min = norm;
        start = next_start;
        end = next_end;
    }
    (start, end)
}

/// L2_APPROX range of a histogram: `(min + w·start, min + w·(end + 1))` after zero padding, f32.
/// `None` when the histogram is not searchable (see [`PaddedBins::new`]).
pub fn l2_approx_range(h: &Histogram) -> Option<(f32, f32)> {
    let p = PaddedBins::new(h)?;
    let (start, end) = l2_approx_bins(&p);
    let hi = p.min + p.bin_width * (end + 1) as f32;
    let lo = p.min + p.bin_width * start as f32;
    Some((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::norm_min::literal_l2_error;

    fn padded(min: f32, max: f32, counts: Vec<u64>) -> PaddedBins {
        PaddedBins::new(&Histogram { min, max, counts }).unwrap()
    }

    #[test]
    fn range_error_is_the_literal_error_of_the_same_window() {
        let p = padded(-1.0, 2.0, vec![3, 0, 7, 1, 4, 4, 2, 9, 0, 5, 1, 1]);
        for &(s, e) in &[(0i64, 11i64), (2, 5), (4, 4), (1, 10)] {
            let a = range_error(&p, s, e);
            let b = literal_l2_error(&p.bins, p.bin_width, (e - s + 1) as usize, s) as f64;
            assert!((a - b).abs() <= 1e-5 * b, "{a} vs {b}");
        }
    }

    #[test]
    fn trims_a_lone_outlier() {
        // 1000 values in bins 0..4 (250 each), one outlier in bin 15 of 16 (w = 1, [0, 16]).
        // CDF: 250, 500, 750, 1000 (x11), 1001. T = 1001.
        // Step 1: α' = 1e-5: CDF[0] = 250 ≥ 0.01 so i = 0; β' = 0.99999 (1000.99): CDF[15] =
        // 1001 > it -> j = 14 (CDF 1000). (i - start) = 0 is not > (end - j) = 1 -> the end moves
        // to 14; first move, so it is accepted.
        // α never changes (the start never moves), so i stays 0 and each step lowers β by 1e-5;
        // j stays 14 until β'·T < 1000, then it runs past every CDF = 1000 bin down to bin 2
        // (CDF[3] = 1000 > β'·T as well): clipping bin 3 (250 values) raises the error -> stop.
        // Result: bins [0, 14] -> [0, 15).
        let mut counts = vec![0u64; 16];
        counts[..4].copy_from_slice(&[250, 250, 250, 250]);
        counts[15] = 1;
        let h = Histogram {
            min: 0.0,
            max: 16.0,
            counts,
        };
        assert_eq!(l2_approx_range(&h), Some((0.0, 15.0)));
    }

    #[test]
    fn first_move_is_always_accepted() {
        // Uniform 8 x 100 over [-4, 4] (w = 1). Step 1 moves the end from 7 to 6 (CDF[7] = 800 >
        // 799.992, CDF[6] = 700 is not): accepted because the best error starts at +max, even
        // though clipping bin 7 costs about 100·(0.51² + 1/12) = 34.7 vs 800·(8/256)²/12 = 0.065
        // for the full range. The next move (end to 5, once β'·800 < 700) costs even more -> stop.
        let h = Histogram {
            min: -4.0,
            max: 4.0,
            counts: vec![100; 8],
        };
        assert_eq!(l2_approx_range(&h), Some((-4.0, 3.0)));
        let p = PaddedBins::new(&h).unwrap();
        assert!(range_error(&p, 0, 6) > range_error(&p, 0, 7));
        assert!(range_error(&p, 0, 5) > range_error(&p, 0, 6));
    }

    #[test]
    fn degenerate_histograms_are_not_searched() {
        assert_eq!(l2_approx_range(&Histogram::new(8, 1.0, 1.0)), None);
        assert_eq!(l2_approx_range(&Histogram::new(8, -1.0, 1.0)), None);
    }
}
