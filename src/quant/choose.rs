//! Choosing quantization parameters from a histogram with one of Caffe2's kinds
//! (`QuantizationFactory::ChooseQuantizationParams(hist, kind, precision, preserve_sparsity)`,
//! facts §7.3) or from raw float values (weights).
//!
//! Every kind picks a range `[min', max']` and ends with
//! [`choose_quantization_params`](super::qparams::choose_quantization_params)`(min', max', 0, 255,
//! preserve_sparsity)`. KL and P99 use the global factory defaults in Caffe2 for that last step;
//! here the caller's `preserve_sparsity` is used, which is the same thing whenever the caller
//! passes the flag's value (the normal case).
//!
//! Degenerate histograms (empty, zero-width or non-finite range, or a range so far from 0 that
//! the zero padding would exceed [`MAX_PADDING_FACTOR`](super::norm_min::MAX_PADDING_FACTOR)
//! times the bin count) fall back to min/max for every kind; Caffe2 has undefined behaviour
//! there.

use std::fmt;
use std::str::FromStr;

use ops::QParams;

use super::histogram::{Histogram, DEFAULT_NBINS};
use super::qparams::{choose_quantization_params_with, QParamsOptions};
use super::{kl, l2_approx, l2_fast, p99};

/// How a range is chosen from a histogram (`activation_quantization_kind` /
/// `weight_quantization_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantKind {
    /// The observed min and max (`min_max`, the Caffe2 default).
    MinMax,
    /// L2 norm minimization, brute force semantics (`l2`), computed by the fast search.
    L2,
    /// Greedy quantile L2 search (`l2_approx`); falls back to `l2` when preserving sparsity.
    L2Approx,
    /// KL divergence minimization (`kl`); slow (O(N³)) for 2048 bins.
    Kl,
    /// Smallest window around zero holding 99% of the values (`p99`).
    P99,
}

impl QuantKind {
    /// All kinds, in declaration order.
    pub const ALL: [QuantKind; 5] = [
        QuantKind::MinMax,
        QuantKind::L2,
        QuantKind::L2Approx,
        QuantKind::Kl,
        QuantKind::P99,
    ];

    /// The Caffe2 name (`min_max`, `l2`, `l2_approx`, `kl`, `p99`).
    pub fn name(self) -> &'static str {
        match self {
            QuantKind::MinMax => "min_max",
            QuantKind::L2 => "l2",
            QuantKind::L2Approx => "l2_approx",
            QuantKind::Kl => "kl",
            QuantKind::P99 => "p99",
        }
    }
}

impl fmt::Display for QuantKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for QuantKind {
    type Err = String;

    /// Parses a Caffe2 kind name, case-insensitively (Caffe2 lower-cases it first). Unlike
    /// Caffe2, which silently means `min_max` for unknown names, unknown names are an error;
    /// `l1` is a valid Caffe2 kind that this crate does not implement.
    fn from_str(s: &str) -> Result<QuantKind, String> {
        let lower = s.to_ascii_lowercase();
        QuantKind::ALL
            .into_iter()
            .find(|k| k.name() == lower)
            .ok_or_else(|| {
                let names: Vec<&str> = QuantKind::ALL.iter().map(|k| k.name()).collect();
                if lower == "l1" {
                    "quantization kind `l1` is not supported (use l2)".to_string()
                } else {
                    format!(
                        "unknown quantization kind `{s}` (expected one of: {})",
                        names.join(", ")
                    )
                }
            })
    }
}

/// The fallback range of a histogram that cannot be searched: its bounds, non-finite ones
/// replaced by 0.
fn min_max_of(h: &Histogram) -> (f32, f32) {
    let f = |v: f32| if v.is_finite() { v } else { 0.0 };
    (f(h.min), f(h.max))
}

/// All settings of a histogram-based choice (Caffe2 factory flags).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChooseOptions {
    /// The range search.
    pub kind: QuantKind,
    /// Symmetric quantization (`preserve_activation_sparsity` / `preserve_weight_sparsity`).
    pub preserve_sparsity: bool,
    /// Fraction of values the P99 window must hold (default 0.99).
    pub p99_threshold: f64,
    /// `force_scale_power_of_two` and the (post-2020) small-scale clip; `preserve_sparsity` of
    /// this field is ignored (the one above is used).
    pub qparams: QParamsOptions,
}

impl ChooseOptions {
    /// Caffe2 defaults for a kind: P99 threshold 0.99, no power-of-two scale, no scale clip.
    pub fn new(kind: QuantKind, preserve_sparsity: bool) -> ChooseOptions {
        ChooseOptions {
            kind,
            preserve_sparsity,
            p99_threshold: p99::DEFAULT_THRESHOLD,
            qparams: QParamsOptions::default(),
        }
    }
}

/// Chooses `(min', max', params)` for a histogram with the given kind (uint8 codes `[0, 255]`),
/// with the default options of [`ChooseOptions::new`].
///
/// - `MinMax`: `[hist.min, hist.max]`;
/// - `L2`: [`l2_fast::l2_search`] (same window as the literal brute force of §7.4);
/// - `L2Approx`: [`l2_approx::l2_approx_range`], or `L2` when `preserve_sparsity` (as Caffe2);
/// - `Kl`: [`kl::kl_range`]; `P99`: [`p99::p99_range`] with threshold 0.99.
pub fn choose_from_histogram(
    hist: &Histogram,
    kind: QuantKind,
    preserve_sparsity: bool,
) -> (f32, f32, QParams) {
    choose_from_histogram_with(hist, &ChooseOptions::new(kind, preserve_sparsity))
}

/// [`choose_from_histogram`] with all options.
pub fn choose_from_histogram_with(hist: &Histogram, opts: &ChooseOptions) -> (f32, f32, QParams) {
    let preserve_sparsity = opts.preserve_sparsity;
    let range = match opts.kind {
        QuantKind::MinMax => None,
        QuantKind::L2 => l2_fast::l2_search(hist, preserve_sparsity).map(|w| (w.min, w.max)),
        QuantKind::L2Approx if preserve_sparsity => {
            l2_fast::l2_search(hist, true).map(|w| (w.min, w.max))
        }
        QuantKind::L2Approx => l2_approx::l2_approx_range(hist),
        QuantKind::Kl => kl::kl_range(hist, preserve_sparsity),
        QuantKind::P99 => p99::p99_range(hist, opts.p99_threshold),
    };
    let (lo, hi) = range.unwrap_or_else(|| min_max_of(hist));
    (lo, hi, final_params(lo, hi, opts))
}

/// The final `ChooseQuantizationParams(min', max', 0, 255)` step with the options.
fn final_params(lo: f32, hi: f32, opts: &ChooseOptions) -> QParams {
    let q = QParamsOptions {
        preserve_sparsity: opts.preserve_sparsity,
        ..opts.qparams
    };
    choose_quantization_params_with(lo, hi, 0, 255, &q)
}

/// Chooses `(min', max', params)` for raw float values (e.g. a weight tensor), as DNNLOWP does:
/// min/max of the finite values for `MinMax` (or an empty input), otherwise a histogram of 2048
/// bins over that range followed by [`choose_from_histogram`]. For weights the result is in the
/// uint8 convention; see [`super::qparams::to_int8_convention`].
pub fn choose_from_values(
    values: &[f32],
    kind: QuantKind,
    preserve_sparsity: bool,
) -> (f32, f32, QParams) {
    choose_from_values_with(values, &ChooseOptions::new(kind, preserve_sparsity))
}

/// [`choose_from_values`] with all options.
pub fn choose_from_values_with(values: &[f32], opts: &ChooseOptions) -> (f32, f32, QParams) {
    let hist = Histogram::from_values(values, DEFAULT_NBINS);
    if opts.kind == QuantKind::MinMax || values.is_empty() {
        let (lo, hi) = (hist.min, hist.max);
        return (lo, hi, final_params(lo, hi, opts));
    }
    choose_from_histogram_with(&hist, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_round_trip() {
        for k in QuantKind::ALL {
            assert_eq!(k.name().parse::<QuantKind>(), Ok(k));
            assert_eq!(k.to_string(), k.name());
        }
        assert_eq!("L2_APPROX".parse::<QuantKind>(), Ok(QuantKind::L2Approx));
        assert_eq!("Min_Max".parse::<QuantKind>(), Ok(QuantKind::MinMax));
        assert!("l1"
            .parse::<QuantKind>()
            .unwrap_err()
            .contains("not supported"));
        assert!("l3".parse::<QuantKind>().unwrap_err().contains("unknown"));
    }

    #[test]
    fn min_max_kind() {
        let h = Histogram {
            min: -1.0,
            max: 3.0,
            counts: vec![1, 2, 3],
        };
        let (lo, hi, q) = choose_from_histogram(&h, QuantKind::MinMax, false);
        assert_eq!((lo, hi), (-1.0, 3.0));
        assert_eq!(q.zero_point, 64);
        assert_eq!(q.scale, (4.0f64 / 255.0) as f32);
    }

    #[test]
    fn l2_kind_on_a_spike() {
        // All mass in bin 3 of 8 over [-1, 1] (w = 0.25): the L2 window is that bin alone:
        // [-0.25, 0] -> scale 0.25/255, zero point 255.
        let h = Histogram {
            min: -1.0,
            max: 1.0,
            counts: vec![0, 0, 0, 10, 0, 0, 0, 0],
        };
        let (lo, hi, q) = choose_from_histogram(&h, QuantKind::L2, false);
        assert_eq!((lo, hi), (-0.25, 0.0));
        assert_eq!(q.scale, (0.25f64 / 255.0) as f32);
        assert_eq!(q.zero_point, 255);
        // l2_approx with preserve_sparsity is l2 (symmetric): window [3, 5) -> [-0.25, 0.25],
        // t = max(0.25/128, 0.25/127) = 0.25/127 -> scale = 255 t / 255, zp 128.
        let (lo, hi, q) = choose_from_histogram(&h, QuantKind::L2Approx, true);
        assert_eq!((lo, hi), (-0.25, 0.25));
        assert_eq!(q.zero_point, 128);
        let t = 0.25f32 / 127.0;
        let expect =
            (((t as f64 * 127.0) as f32 as f64 - (t as f64 * -128.0) as f32 as f64) / 255.0) as f32;
        assert_eq!(q.scale, expect);
    }

    #[test]
    fn p99_and_kl_kinds_dispatch() {
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
        let (lo, hi, _) = choose_from_histogram(&h, QuantKind::P99, true);
        assert_eq!((lo, hi), (-0.5, 1.0));
        let (lo, hi, _) = choose_from_histogram(&h, QuantKind::Kl, false);
        assert_eq!(Some((lo, hi)), kl::kl_range(&h, false));
    }

    #[test]
    fn options_reach_the_final_step() {
        let h = Histogram {
            min: -1.0,
            max: 3.0,
            counts: vec![1, 2, 3],
        };
        let mut o = ChooseOptions::new(QuantKind::MinMax, false);
        o.qparams.force_scale_power_of_two = true;
        // 4/255 -> 1/32 (see qparams tests), zero point 32.
        let (_, _, q) = choose_from_histogram_with(&h, &o);
        assert_eq!((q.scale, q.zero_point), (1.0 / 32.0, 32));
        // The P99 threshold reaches the search: w = 4/3, zero_bin = ceil(1/w) = 1; with
        // threshold 0.3 the width-0 window (bin 1, 2 of 6 values) suffices ->
        // [-1 + w·1, -1 + w·2]; with the default 0.99 it needs width 1 -> [-1 + 0, -1 + 3w].
        let mut o = ChooseOptions::new(QuantKind::P99, true);
        o.p99_threshold = 0.3;
        let (lo, hi, _) = choose_from_histogram_with(&h, &o);
        let w = 4.0f32 / 3.0;
        assert_eq!((lo, hi), (-1.0 + w * 1.0, -1.0 + w * 2.0));
        let (lo, hi, _) = choose_from_histogram(&h, QuantKind::P99, true);
        assert_eq!((lo, hi), (-1.0, -1.0 + w * 3.0));
    }

    #[test]
    fn degenerate_histograms_fall_back_to_min_max() {
        let h = Histogram::new(16, 2.5, 2.5);
        for k in QuantKind::ALL {
            let (lo, hi, q) = choose_from_histogram(&h, k, false);
            assert_eq!((lo, hi), (2.5, 2.5), "{k}");
            // [0, 2.5] after including zero: scale 2.5/255, zero point 0.
            assert_eq!(q.scale, (2.5f64 / 255.0) as f32);
            assert_eq!(q.zero_point, 0);
        }
        let h = Histogram {
            min: f32::NAN,
            max: 1.0,
            counts: vec![1],
        };
        let (lo, hi, _) = choose_from_histogram(&h, QuantKind::L2, false);
        assert_eq!((lo, hi), (0.0, 1.0));
    }

    #[test]
    fn values_path_builds_a_2048_bin_histogram() {
        // 1M values uniform in [-1, 1] plus one outlier at 40 (bins of 41/2048). min_max keeps
        // the outlier. L2 trades the outlier's squared clipping error against the code width:
        // covering [-1, e] costs about 1e6·((e+1)/256)²/12 + (40 - e)², minimal near e = 17, so
        // the window ends well inside (1, 40).
        let n = 1_000_000;
        let mut vals: Vec<f32> = (0..n)
            .map(|i| -1.0 + 2.0 * i as f32 / (n - 1) as f32)
            .collect();
        vals.push(40.0);
        let (lo, hi, _) = choose_from_values(&vals, QuantKind::MinMax, false);
        assert_eq!((lo, hi), (-1.0, 40.0));
        let (lo, hi, _) = choose_from_values(&vals, QuantKind::L2, false);
        assert_eq!(lo, -1.0);
        assert!(hi > 12.0 && hi < 22.0, "[{lo}, {hi}]");
        // Only 2000 values: the outlier is not worth clipping (2000·(41/256)²/12 = 4.3 < 39²).
        let few: Vec<f32> = (0..2000)
            .map(|i| -1.0 + 2.0 * i as f32 / 1999.0)
            .chain([40.0])
            .collect();
        let (_, hi, _) = choose_from_values(&few, QuantKind::L2, false);
        assert!(hi > 39.0, "{hi}");
        let (lo, hi, q) = choose_from_values(&[], QuantKind::L2, true);
        assert_eq!((lo, hi, q.scale, q.zero_point), (0.0, 0.0, 0.1, 0));
    }
}
