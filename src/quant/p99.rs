//! P99: the smallest window around zero that holds a given fraction of the values (Caffe2
//! `P99::ChooseQuantizationParams`, 2018 version, facts §7.6).
//!
//! With `w = (max - min)/N` and no zero padding:
//! - `min == 0`: windows `[0, width)` for `width = 0, 1, ...`;
//! - otherwise, with `zero_bin = ceil(-min/w)`: windows of bins
//!   `[max(0, zero_bin - width), min(N-1, zero_bin + width)]`;
//!
//! the first `width` whose count reaches `threshold · total` wins (width 0 when none does). The
//! range is `[min, min + w·width]`, respectively
//! `[min + w·(zero_bin - width), min + w·(zero_bin + width + 1)]` (not clipped to the histogram).
//! Caffe2 only supports it with `preserve_sparsity` (symmetric quantization).

use super::histogram::Histogram;

/// Default fraction of values the window must hold (`--caffe2_dnnlowp_*_p99_threshold`).
pub const DEFAULT_THRESHOLD: f64 = 0.99;

/// The P99 range `(min', max')` of a histogram (see the module doc), f32 as in Caffe2.
/// `None` when the histogram is not searchable ([`Histogram::is_searchable`]).
pub fn p99_range(h: &Histogram, threshold: f64) -> Option<(f32, f32)> {
    if !h.is_searchable() {
        return None;
    }
    let nbins = h.counts.len() as i64;
    let w = h.bin_width();
    let zero_bin = (-h.min / w).ceil() as i64;
    let total: f64 = h.counts.iter().map(|&c| c as f64).sum();
    // prefix[i] = Σ counts[..i] (exact in u64, converted once per query).
    let mut prefix = Vec::with_capacity(h.counts.len() + 1);
    prefix.push(0u64);
    for &c in &h.counts {
        let last = prefix.last().copied().unwrap_or(0);
        prefix.push(last + c);
    }
    let sum = |lo: i64, hi: i64| -> f64 {
        // inclusive [lo, hi], empty when hi < lo
        if hi < lo {
            0.0
        } else {
            (prefix[(hi + 1) as usize] - prefix[lo as usize]) as f64
        }
    };
    let mut best_width = 0i64;
    for width in 0..nbins {
        let (lo, hi) = if h.min == 0.0 {
            (0, width - 1)
        } else {
            (0.max(zero_bin - width), (nbins - 1).min(zero_bin + width))
        };
        let (lo, hi) = (lo.max(0), hi.min(nbins - 1));
        if sum(lo, hi) / total >= threshold {
            best_width = width;
            break;
        }
    }
    Some(if h.min == 0.0 {
        (h.min, h.min + w * best_width as f32)
    } else {
        (
            h.min + w * (zero_bin - best_width) as f32,
            h.min + w * (zero_bin + best_width + 1) as f32,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relu_histogram_from_zero() {
        // [0, 10], 10 bins of width 1: 990 values in bins 0..5, 10 in bin 9. width 5 holds
        // 990/1000 = 0.99 -> [0, 5].
        let mut counts = vec![198u64, 198, 198, 198, 198, 0, 0, 0, 0, 10];
        assert_eq!(
            p99_range(
                &Histogram {
                    min: 0.0,
                    max: 10.0,
                    counts: counts.clone()
                },
                0.99
            ),
            Some((0.0, 5.0))
        );
        // One value fewer inside: 989/999 = 0.98999 < 0.99 -> width 9 (989) still < , width 10 is
        // not tried (widths run to N - 1) -> best_width stays 0 -> [0, 0].
        counts[0] = 197;
        assert_eq!(
            p99_range(
                &Histogram {
                    min: 0.0,
                    max: 10.0,
                    counts
                },
                0.99
            ),
            Some((0.0, 0.0))
        );
    }

    #[test]
    fn symmetric_window_around_zero_bin() {
        // [-2, 3], 10 bins of width 0.5: zero_bin = ceil(2/0.5) = 4 (bin 4 = [0, 0.5)).
        // Mass: bins 3, 4, 5 hold 330 each, bins 0 and 9 hold 5 each (total 1000).
        // width 0: bin 4 = 330; width 1: bins 3..5 = 990 -> 0.99 -> stop.
        // Range: [-2 + 0.5·3, -2 + 0.5·6] = [-0.5, 1.0].
        let mut counts = vec![0u64; 10];
        counts[3] = 330;
        counts[4] = 330;
        counts[5] = 330;
        counts[0] = 5;
        counts[9] = 5;
        let h = Histogram {
            min: -2.0,
            max: 3.0,
            counts,
        };
        assert_eq!(p99_range(&h, 0.99), Some((-0.5, 1.0)));
        // Threshold 0.995: width 4 covers bins 0..8 = 995 -> [-2 + 0, -2 + 0.5·9] = [-2, 2.5].
        assert_eq!(p99_range(&h, 0.995), Some((-2.0, 2.5)));
        // Threshold 0.996: width 5 covers bins 0..9 (clipped) = 1000 -> [-2 + 0.5·(4-5),
        // -2 + 0.5·10] = [-2.5, 3.0] (the range itself is not clipped to the histogram).
        assert_eq!(p99_range(&h, 0.996), Some((-2.5, 3.0)));
    }

    #[test]
    fn degenerate() {
        assert_eq!(p99_range(&Histogram::new(4, 0.0, 0.0), 0.99), None);
    }
}
