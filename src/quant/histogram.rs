//! Activation histograms: Caffe2's `dnnlowp::Histogram` and `DynamicHistogram` (facts §7.2).
//!
//! A [`DynamicHistogram`] collects the values of one blob over many batches. It keeps a list of
//! fixed-range histograms with `4 * nbins` bins each (over-binning factor 4); when a batch falls
//! outside the newest range, a new histogram is appended whose range is the old one extended by
//! whole multiples of the old spread. [`DynamicHistogram::finalize`] merges them into one
//! [`Histogram`] of `nbins` bins over the global `[min, max]`.

/// Over-binning factor of the fixed histograms inside a [`DynamicHistogram`].
pub const OVER_BINNING_FACTOR: usize = 4;

/// Bin count used by Caffe2's histogram observers and by the weight path (`2^(8+3)`).
pub const DEFAULT_NBINS: usize = 2048;

/// A histogram with equal-width bins over `[min, max]`; bin `i` covers
/// `[min + i*w, min + (i+1)*w)` with `w = (max - min) / nbins` (the last bin also holds `max`).
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Lower end of the range.
    pub min: f32,
    /// Upper end of the range.
    pub max: f32,
    /// Counts per bin.
    pub counts: Vec<u64>,
}

/// Bin of `v` in a histogram of `nbins` bins over `[min, min + nbins*width)`:
/// `trunc((v - min) / width)` clamped to `[0, nbins - 1]` (width 0 -> bin 0), in f32 like Caffe2.
#[inline]
fn bin_index(v: f32, min: f32, width: f32, nbins: usize) -> usize {
    if width == 0.0 {
        return 0;
    }
    let t = (v - min) / width;
    // Clamping before the truncation gives the same bin as truncating then clamping; NaN -> 0.
    t.clamp(0.0, (nbins - 1) as f32) as usize
}

impl Histogram {
    /// An empty histogram of `nbins` bins (at least 1) over `[min, max]`.
    pub fn new(nbins: usize, min: f32, max: f32) -> Histogram {
        Histogram {
            min,
            max,
            counts: vec![0; nbins.max(1)],
        }
    }

    /// Number of bins.
    pub fn nbins(&self) -> usize {
        self.counts.len()
    }

    /// Bin width `(max - min) / nbins` in f32 (the value every Caffe2 routine uses).
    pub fn bin_width(&self) -> f32 {
        (self.max - self.min) / self.counts.len().max(1) as f32
    }

    /// Sum of all counts.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Caffe2 `Histogram::Add(f, cnt)`: adds `cnt` to the bin of `v` (bin rule: truncation,
    /// clamped to the valid bins, so values outside the range land in the end bins).
    pub fn add(&mut self, v: f32, cnt: u64) {
        let n = self.counts.len();
        if n == 0 {
            return;
        }
        let b = bin_index(v, self.min, self.bin_width(), n);
        self.counts[b] += cnt;
    }

    /// Histogram of `nbins` bins over `[min, max]` of the finite values (what DNNLOWP builds before
    /// a non-min/max search over raw floats, e.g. weights, with `nbins` = 2048). Non-finite
    /// values are skipped; an empty input gives range `[0, 0]`.
    pub fn from_values(values: &[f32], nbins: usize) -> Histogram {
        let mut lo = f32::INFINITY;
        let mut hi = f32::NEG_INFINITY;
        for &v in values.iter().filter(|v| v.is_finite()) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if lo > hi {
            return Histogram::new(nbins, 0.0, 0.0);
        }
        let mut h = Histogram::new(nbins, lo, hi);
        let w = h.bin_width();
        let n = h.counts.len();
        for &v in values.iter().filter(|v| v.is_finite()) {
            h.counts[bin_index(v, lo, w, n)] += 1;
        }
        h
    }

    /// True when the range is usable for a search: finite, `max > min`, at least one count.
    pub fn is_searchable(&self) -> bool {
        self.min.is_finite()
            && self.max.is_finite()
            && self.max > self.min
            && self.bin_width() > 0.0
            && self.total() > 0
    }
}

/// A fixed-range histogram inside a [`DynamicHistogram`].
#[derive(Debug, Clone)]
struct FixedHistogram {
    min: f32,
    max: f32,
    counts: Vec<u64>,
}

/// Histogram of a stream of batches whose range is not known in advance (Caffe2
/// `dnnlowp::DynamicHistogram`, facts §7.2).
///
/// Non-finite values (NaN, ±inf) are skipped and counted in [`DynamicHistogram::skipped`]
/// (Caffe2 would let them poison min/max).
#[derive(Debug, Clone)]
pub struct DynamicHistogram {
    nbins: usize,
    min: f32,
    max: f32,
    hists: Vec<FixedHistogram>,
    skipped: u64,
    /// Scratch for large batches: bin indices of one block, and four interleaved sets of u32
    /// sub-counters (allocated once, on the first large batch).
    scratch_idx: Vec<u32>,
    scratch_counts: Vec<u32>,
}

impl DynamicHistogram {
    /// A histogram that finalizes to `nbins` bins (0 is treated as 1); Caffe2 observers use 2048.
    pub fn new(nbins: usize) -> DynamicHistogram {
        DynamicHistogram {
            nbins: nbins.max(1),
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
            hists: Vec::new(),
            skipped: 0,
            scratch_idx: Vec::new(),
            scratch_counts: Vec::new(),
        }
    }

    /// Number of bins of the finalized histogram.
    pub fn nbins(&self) -> usize {
        self.nbins
    }

    /// True until a batch with at least one finite value was added.
    pub fn is_empty(&self) -> bool {
        self.hists.is_empty()
    }

    /// Smallest value seen (`None` before any data).
    pub fn min(&self) -> Option<f32> {
        (!self.is_empty()).then_some(self.min)
    }

    /// Largest value seen (`None` before any data).
    pub fn max(&self) -> Option<f32> {
        (!self.is_empty()).then_some(self.max)
    }

    /// Number of values counted so far (non-finite values excluded).
    pub fn count(&self) -> u64 {
        self.hists.iter().flat_map(|h| h.counts.iter()).sum()
    }

    /// Number of non-finite values skipped so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Number of fixed histograms kept (1 + number of range extensions so far).
    pub fn n_fixed_histograms(&self) -> usize {
        self.hists.len()
    }

    /// Adds one batch (Caffe2 `DynamicHistogram::Add(const float*, int)`): update the global
    /// min/max; on the first batch create a histogram of `4*nbins` bins over `[min, max]`; if the
    /// batch exceeds the newest histogram's range `[lo, hi]` (spread `s = hi - lo`), append one
    /// over `[lo - ceil((lo - min)/s)*s, hi + ceil((max - hi)/s')*s']` with `s' = hi - new_lo`
    /// (a zero spread jumps straight to the batch min/max); then count the batch into the newest
    /// histogram with the bin rule of [`Histogram::add`].
    ///
    /// Cost: one min/max pass and one binning pass, no allocation unless the range grows.
    pub fn add(&mut self, values: &[f32]) {
        let (lo, hi, nonfinite) = min_max_nonfinite(values);
        self.skipped += nonfinite as u64;
        if nonfinite == values.len() {
            return;
        }
        self.min = self.min.min(lo);
        self.max = self.max.max(hi);
        self.ensure_range();
        let h = match self.hists.last_mut() {
            Some(h) => h,
            None => return,
        };
        let n = h.counts.len();
        let w = (h.max - h.min) / n as f32;
        if w > 0.0 {
            if nonfinite == 0 && values.len() >= LARGE_BATCH {
                bin_all_large(
                    values,
                    h.min,
                    w,
                    &mut h.counts,
                    &mut self.scratch_idx,
                    &mut self.scratch_counts,
                );
            } else if nonfinite == 0 {
                bin_all(values, h.min, w, &mut h.counts);
            } else {
                for &v in values.iter().filter(|v| v.is_finite()) {
                    h.counts[bin_index(v, h.min, w, n)] += 1;
                }
            }
        } else {
            h.counts[0] += (values.len() - nonfinite) as u64;
        }
    }

    /// Makes sure the newest fixed histogram covers the global `[min, max]` (Caffe2's growth rule).
    fn ensure_range(&mut self) {
        let size = self.nbins * OVER_BINNING_FACTOR;
        let (gmin, gmax) = (self.min, self.max);
        let Some(cur) = self.hists.last() else {
            self.hists.push(FixedHistogram {
                min: gmin,
                max: gmax,
                counts: vec![0; size],
            });
            return;
        };
        if !(gmin < cur.min || gmax > cur.max) {
            return;
        }
        let mut new_min = cur.min;
        let mut new_max = cur.max;
        if gmin < cur.min {
            let spread = cur.max - cur.min;
            new_min = if spread == 0.0 {
                gmin
            } else {
                cur.min - ((cur.min - gmin) / spread).ceil() * spread
            };
        }
        if gmax > cur.max {
            let spread = cur.max - new_min;
            new_max = if spread == 0.0 {
                gmax
            } else {
                cur.max + ((gmax - cur.max) / spread).ceil() * spread
            };
        }
        let size = cur.counts.len();
        self.hists.push(FixedHistogram {
            min: new_min,
            max: new_max,
            counts: vec![0; size],
        });
    }

    /// Caffe2 `DynamicHistogram::Finalize()`: one histogram of `nbins` bins over the global
    /// `[min, max]`. Each non-empty source bin `[b, b + w_src)` of every fixed histogram is split
    /// over at most two destination bins: the destination bin containing `b` (index
    /// `trunc((b - min)/w_dst)`) gets `min(count, rint((end_of_that_bin - b)/w_src * count))`,
    /// the rest goes to the next one; counts are added at destination bin centers with
    /// [`Histogram::add`] (f32 arithmetic throughout, as in Caffe2). Before any data: `[0, 0]`,
    /// all zeros.
    pub fn finalize(&self) -> Histogram {
        if self.is_empty() {
            return Histogram::new(self.nbins, 0.0, 0.0);
        }
        let mut out = Histogram::new(self.nbins, self.min, self.max);
        let dst_w = (self.max - self.min) / self.nbins as f32;
        for h in &self.hists {
            let src_w = (h.max - h.min) / h.counts.len() as f32;
            for (i, &c) in h.counts.iter().enumerate() {
                if c == 0 {
                    continue;
                }
                let src_begin = h.min + src_w * i as f32;
                let dst_bin = if dst_w == 0.0 {
                    0
                } else {
                    // C++ float -> int conversion truncates toward zero.
                    ((src_begin - self.min) / dst_w) as i64
                };
                let dst_begin = self.min + dst_w * dst_bin as f32;
                let dst_end = dst_begin + dst_w;
                let first = if src_w == 0.0 {
                    0
                } else {
                    let share = ((dst_end - src_begin) / src_w * c as f32).round_ties_even();
                    // A negative share (rounding) converts to 0, like a saturating cast.
                    (share as u64).min(c)
                };
                out.add(dst_begin + dst_w / 2.0, first);
                if first < c {
                    out.add(dst_end + dst_w / 2.0, c - first);
                }
            }
        }
        out
    }
}

/// One pass over a batch: min and max of the finite values and the number of non-finite values.
/// With no finite value, min > max.
fn min_max_nonfinite(values: &[f32]) -> (f32, f32, usize) {
    const L: usize = 8;
    let mut lo = [f32::INFINITY; L];
    let mut hi = [f32::NEG_INFINITY; L];
    let mut bad = [0u32; L];
    let (body, rest) = values.as_chunks::<L>();
    let mut bad_total = 0usize;
    // Flush the u32 lane counters well before they can overflow.
    for block in body.chunks(1 << 20) {
        for c in block {
            for k in 0..L {
                let v = c[k];
                // NaN compares false, so it never becomes the min or max.
                lo[k] = if v < lo[k] { v } else { lo[k] };
                hi[k] = if v > hi[k] { v } else { hi[k] };
                bad[k] += u32::from(v.abs() >= f32::INFINITY || v.is_nan());
            }
        }
        bad_total += bad.iter().map(|&b| b as usize).sum::<usize>();
        bad = [0; L];
    }
    let mut lo_s = lo.iter().fold(f32::INFINITY, |a, &b| a.min(b));
    let mut hi_s = hi.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for &v in rest {
        if !v.is_finite() {
            bad_total += 1;
            continue;
        }
        lo_s = lo_s.min(v);
        hi_s = hi_s.max(v);
    }
    if bad_total > 0 && (lo_s.is_infinite() || hi_s.is_infinite()) {
        // Infinities took part in the lane min/max: redo over finite values only (rare path).
        lo_s = f32::INFINITY;
        hi_s = f32::NEG_INFINITY;
        for &v in values.iter().filter(|v| v.is_finite()) {
            lo_s = lo_s.min(v);
            hi_s = hi_s.max(v);
        }
    }
    (lo_s, hi_s, bad_total)
}

/// Batches at least this long use [`bin_all_large`].
const LARGE_BATCH: usize = 1 << 15;

/// Block length of [`bin_all_large`].
const BLOCK: usize = 4096;

/// Counts all (finite) values into `counts` with the Caffe2 bin rule (simple loop).
fn bin_all(values: &[f32], min: f32, width: f32, counts: &mut [u64]) {
    let n = counts.len();
    let top = (n - 1) as f32;
    for &v in values {
        let t = ((v - min) / width).clamp(0.0, top);
        counts[t as usize] += 1;
    }
}

/// Same counts as [`bin_all`] for long batches, faster: per block, the bin indices are computed
/// by a vectorizable loop, then counted into four interleaved sets of u32 sub-counters so that
/// runs of equal values (e.g. the zeros of a ReLU) do not serialize on one memory location. The
/// sub-counters are added into `counts` at the end (and every 2^30 values, far from overflow).
fn bin_all_large(
    values: &[f32],
    min: f32,
    width: f32,
    counts: &mut [u64],
    idx: &mut Vec<u32>,
    sub: &mut Vec<u32>,
) {
    let n = counts.len();
    let top = (n - 1) as f32;
    idx.resize(BLOCK, 0);
    sub.clear();
    sub.resize(4 * n, 0);
    for part in values.chunks(1 << 30) {
        for block in part.chunks(BLOCK) {
            let ids = &mut idx[..block.len()];
            for (o, &v) in ids.iter_mut().zip(block) {
                // Clamped first, so the conversion is exact truncation in range.
                *o = ((v - min) / width).clamp(0.0, top) as i32 as u32;
            }
            let quads = ids.chunks_exact(4);
            let rest = quads.remainder();
            for q in quads {
                sub[q[0] as usize] += 1;
                sub[n + q[1] as usize] += 1;
                sub[2 * n + q[2] as usize] += 1;
                sub[3 * n + q[3] as usize] += 1;
            }
            for &i in rest {
                sub[i as usize] += 1;
            }
        }
        for (b, c) in counts.iter_mut().enumerate() {
            *c += (sub[b] as u64 + sub[n + b] as u64)
                + (sub[2 * n + b] as u64 + sub[3 * n + b] as u64);
        }
        sub.iter_mut().for_each(|x| *x = 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Naive reference of the Caffe2 per-value bin rule, written independently.
    fn naive_bin(v: f32, min: f32, max: f32, nbins: usize) -> usize {
        let w = (max - min) / nbins as f32;
        if w == 0.0 {
            return 0;
        }
        let q = ((v - min) / w).trunc();
        if q < 0.0 {
            0
        } else if q >= (nbins - 1) as f32 {
            nbins - 1
        } else {
            q as usize
        }
    }

    #[test]
    fn histogram_add_bin_rule() {
        let mut h = Histogram::new(4, 0.0, 4.0);
        for v in [0.0f32, 0.99, 1.0, 2.5, 3.999, 4.0, 7.0, -3.0] {
            h.add(v, 1);
        }
        // bins: [0,1): 0, 0.99, -3 (clamped); [1,2): 1.0; [2,3): 2.5; [3,4]: 3.999, 4, 7.
        assert_eq!(h.counts, vec![3, 1, 1, 3]);
        assert_eq!(h.total(), 8);
        let mut z = Histogram::new(3, 2.0, 2.0);
        z.add(2.0, 5);
        z.add(9.0, 1);
        assert_eq!(z.counts, vec![6, 0, 0]);
    }

    #[test]
    fn from_values_matches_naive_binning() {
        let vals: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 1013) as f32 * 0.37 - 50.0)
            .collect();
        let h = Histogram::from_values(&vals, 64);
        let (lo, hi) = (
            vals.iter().cloned().fold(f32::INFINITY, f32::min),
            vals.iter().cloned().fold(f32::NEG_INFINITY, f32::max),
        );
        assert_eq!((h.min, h.max), (lo, hi));
        let mut naive = vec![0u64; 64];
        for &v in &vals {
            naive[naive_bin(v, lo, hi, 64)] += 1;
        }
        assert_eq!(h.counts, naive);
        assert_eq!(h.total(), 1000);
    }

    #[test]
    fn single_batch_finalize_exact_when_bins_nest() {
        // One batch over [0, 8] with nbins 2: fixed histogram has 8 bins of width 1; each source
        // bin lies inside one destination bin of width 4, so the finalize is an exact merge.
        let vals = [0.0f32, 0.5, 1.5, 3.9, 4.0, 5.0, 7.5, 8.0, 2.0];
        let mut d = DynamicHistogram::new(2);
        d.add(&vals);
        assert_eq!(d.n_fixed_histograms(), 1);
        let h = d.finalize();
        assert_eq!((h.min, h.max), (0.0, 8.0));
        // [0,4): 0, .5, 1.5, 3.9, 2.0 -> 5; [4,8]: 4, 5, 7.5, 8 -> 4.
        assert_eq!(h.counts, vec![5, 4]);
    }

    #[test]
    fn range_growth_by_whole_spreads() {
        let mut d = DynamicHistogram::new(2);
        d.add(&[0.0, 1.0]); // hist 0: [0, 1]
        d.add(&[0.5, 3.5]); // max 3.5 > 1: spread 1 -> 1 + ceil(2.5/1)*1 = 4
        assert_eq!(d.n_fixed_histograms(), 2);
        assert_eq!((d.hists[1].min, d.hists[1].max), (0.0, 4.0));
        d.add(&[-2.5, 1.0]); // min -2.5 < 0: spread 4 -> 0 - ceil(2.5/4)*4 = -4; max in range
        assert_eq!((d.hists[2].min, d.hists[2].max), (-4.0, 4.0));
        d.add(&[-9.0, 20.0]);
        // min: spread 8 -> -4 - ceil(5/8)*8 = -12; max: spread' = 4 - (-12) = 16 -> 4 +
        // ceil(16/16)*16 = 20.
        assert_eq!((d.hists[3].min, d.hists[3].max), (-12.0, 20.0));
        d.add(&[0.0, 1.0]); // inside: no new histogram
        assert_eq!(d.n_fixed_histograms(), 4);
        assert_eq!((d.min(), d.max()), (Some(-9.0), Some(20.0)));
        assert_eq!(d.count(), 10);
        // Old histograms untouched: hist 0 holds exactly the first batch.
        assert_eq!(d.hists[0].counts.iter().sum::<u64>(), 2);
        assert_eq!(d.hists[3].counts.iter().sum::<u64>(), 4);
    }

    #[test]
    fn zero_spread_jumps_to_batch_range() {
        let mut d = DynamicHistogram::new(4);
        d.add(&[3.0, 3.0, 3.0]); // zero-width histogram: all in bin 0
        assert_eq!(d.hists[0].counts[0], 3);
        d.add(&[5.0]); // spread 0 -> new max = 5
        assert_eq!((d.hists[1].min, d.hists[1].max), (3.0, 5.0));
        let h = d.finalize();
        // Zero-width source histogram: src_w = 0 -> share 0 -> all 3 go to the second add:
        // dst_end + w/2 with dst bin 0 ([3, 3.5)) -> 3.75 -> bin 1. Value 5 -> last source bin
        // [4.875, 5) -> dst bin 3.
        assert_eq!(h.counts, vec![0, 3, 0, 1]);
    }

    #[test]
    fn finalize_splits_over_two_bins_with_rint() {
        // A real split: dst width 1 over [0, 3]; source bin [0.75, 1.125) crosses 1.0.
        let mut d = DynamicHistogram::new(3);
        d.add(&[0.0, 3.0]);
        let mut counts = vec![0u64; 8];
        counts[2] = 10; // [0.75, 1.125): rint(0.25/0.375*10) = rint(6.667) = 7 -> dst 0, 3 -> dst 1
        counts[5] = 5; // [1.875, 2.25): rint(0.125/0.375*5) = rint(1.667) = 2 -> dst 1, 3 -> dst 2
        d.hists.push(FixedHistogram {
            min: 0.0,
            max: 3.0,
            counts,
        });
        let h = d.finalize();
        // First histogram (12 bins of 0.25 over [0,3]): 0 -> dst 0; 3 -> src bin 11 [2.75, 3)
        // -> dst 2 (trunc(2.75) = 2), share rint((3 - 2.75)/0.25) = 1.
        assert_eq!(h.counts, vec![1 + 7, 3 + 2, 3 + 1]);
        assert_eq!(h.total(), 17);
    }

    #[test]
    fn nonfinite_values_are_skipped() {
        let mut d = DynamicHistogram::new(4);
        d.add(&[f32::NAN, f32::INFINITY]);
        assert!(d.is_empty());
        let mut vals = vec![1.0f32; 20];
        vals[3] = f32::NEG_INFINITY;
        vals[17] = f32::NAN;
        vals[9] = 5.0;
        d.add(&vals);
        assert_eq!(d.skipped(), 4);
        assert_eq!(d.count(), 18);
        assert_eq!((d.min(), d.max()), (Some(1.0), Some(5.0)));
        let h = d.finalize();
        assert_eq!(h.counts, vec![17, 0, 0, 1]);
    }

    #[test]
    fn fast_add_matches_naive_binning_on_many_batches() {
        // Pseudo-random batches with growing range; compare the fixed histograms with a naive
        // per-value recomputation of the same growth rule.
        let mut state = 12345u64;
        let mut rnd = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let mut d = DynamicHistogram::new(16);
        let mut batches = Vec::new();
        for b in 0..6 {
            let scale = 1.0 + b as f32 * 0.7;
            let batch: Vec<f32> = (0..1037).map(|_| rnd() * scale + 0.1 * b as f32).collect();
            d.add(&batch);
            batches.push(batch);
        }
        // Each batch went into the histogram that was newest after its own growth step. Rebuild.
        let mut idx = 0;
        let mut naive: Vec<Vec<u64>> = d.hists.iter().map(|h| vec![0; h.counts.len()]).collect();
        let mut cur: Option<(f32, f32)> = None;
        let (mut gmin, mut gmax) = (f32::INFINITY, f32::NEG_INFINITY);
        for batch in &batches {
            for &v in batch {
                gmin = gmin.min(v);
                gmax = gmax.max(v);
            }
            match cur {
                None => cur = Some((gmin, gmax)),
                Some((lo, hi)) if gmin < lo || gmax > hi => {
                    idx += 1;
                    cur = Some((d.hists[idx].min, d.hists[idx].max));
                }
                _ => {}
            }
            let (lo, hi) = cur.unwrap();
            for &v in batch {
                naive[idx][naive_bin(v, lo, hi, 64)] += 1;
            }
        }
        assert_eq!(idx + 1, d.hists.len());
        for (h, n) in d.hists.iter().zip(&naive) {
            assert_eq!(&h.counts, n);
        }
        let f = d.finalize();
        assert_eq!(f.total(), 6 * 1037);
        assert_eq!(f.nbins(), 16);
    }

    #[test]
    fn large_batch_path_matches_simple_loop() {
        let vals: Vec<f32> = (0..100_003)
            .map(|i| {
                let x = ((i as u64 * 2654435761) % 10007) as f32 / 1000.0 - 3.0;
                if i % 3 == 0 {
                    0.0
                } else {
                    x
                }
            })
            .collect();
        let mut a = vec![0u64; 8192];
        let mut b = vec![0u64; 8192];
        bin_all(&vals, -3.0, 10.0 / 8192.0, &mut a);
        let (mut idx, mut sub) = (Vec::new(), Vec::new());
        bin_all_large(&vals, -3.0, 10.0 / 8192.0, &mut b, &mut idx, &mut sub);
        assert_eq!(a, b);
        let mut naive = vec![0u64; 8192];
        for &v in &vals {
            naive[naive_bin(v, -3.0, -3.0 + 10.0, 8192)] += 1;
        }
        // naive_bin recomputes the width as (max - min)/nbins, identical here (10/8192 exact).
        assert_eq!(a, naive);
        // Through the public API: one large batch.
        let mut d = DynamicHistogram::new(2048);
        d.add(&vals);
        let lo = vals.iter().cloned().fold(f32::INFINITY, f32::min);
        let hi = vals.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let mut naive = vec![0u64; 8192];
        for &v in &vals {
            naive[naive_bin(v, lo, hi, 8192)] += 1;
        }
        assert_eq!(d.hists[0].counts, naive);
    }

    #[test]
    #[ignore = "timing: run with --release --ignored --nocapture"]
    fn add_throughput() {
        let n = 11_000_000usize;
        let vals: Vec<f32> = (0..n)
            .map(|i| {
                // ReLU-like: runs of 64 zeros alternating with runs of scattered values.
                let x = ((i as u64 * 2654435761) % 100_000) as f32 / 10_000.0 - 2.0;
                if (i / 64) % 2 == 0 {
                    0.0
                } else {
                    x.max(0.0)
                }
            })
            .collect();
        let mut best = f64::MAX;
        for _ in 0..5 {
            let mut d = DynamicHistogram::new(2048);
            let t = std::time::Instant::now();
            for chunk in vals.chunks(200_000) {
                d.add(chunk);
            }
            best = best.min(t.elapsed().as_secs_f64());
            assert_eq!(d.count(), n as u64);
        }
        eprintln!("add: {:.1} ms for {} values (min of 5)", best * 1e3, n);
        let time = |f: &mut dyn FnMut()| {
            let mut best = f64::MAX;
            for _ in 0..5 {
                let t = std::time::Instant::now();
                f();
                best = best.min(t.elapsed().as_secs_f64());
            }
            best * 1e3
        };
        let mut sink = 0f32;
        let mm = time(&mut || {
            for c in vals.chunks(200_000) {
                sink += min_max_nonfinite(c).0;
            }
        });
        let mut counts = vec![0u64; 8192];
        let simple = time(&mut || {
            for c in vals.chunks(200_000) {
                bin_all(c, -2.0, 10.0 / 8192.0, &mut counts);
            }
        });
        let (mut idx, mut sub) = (Vec::new(), Vec::new());
        let large = time(&mut || {
            for c in vals.chunks(200_000) {
                bin_all_large(c, -2.0, 10.0 / 8192.0, &mut counts, &mut idx, &mut sub);
            }
        });
        eprintln!("min/max pass {mm:.1} ms, simple binning {simple:.1} ms, blocked {large:.1} ms ({sink})");
    }
}
