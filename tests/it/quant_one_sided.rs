//! Symmetric (preserve-sparsity) L2 on one-sided data: the window starts at zero instead of
//! being centred on it (a deliberate departure from Caffe2, see `PaddedBins::symmetric_start`).

use c2q::quant::calibrate::clipped_fraction;
use c2q::quant::{choose_from_histogram, Histogram, QuantKind};

#[test]
fn strictly_positive_data_keeps_zero_point_zero_and_most_of_the_range() {
    // 64 bins over [1.7, 45.0], a falling profile like logits after global pooling.
    let counts: Vec<u64> = (0..64).map(|i| 1000 / (i as u64 + 1)).collect();
    let h = Histogram {
        min: 1.7,
        max: 45.0,
        counts,
    };
    for sym in [false, true] {
        let (lo, hi, q) = choose_from_histogram(&h, QuantKind::L2, sym);
        assert_eq!(q.zero_point, 0, "sym {sym}: [{lo}, {hi}]");
        assert!(lo >= 0.0, "sym {sym}: lo {lo}");
        let clipped = clipped_fraction(&h, lo, hi);
        assert!(clipped < 0.05, "sym {sym}: [{lo}, {hi}] clips {clipped}");
        // Expected scale from the chosen range, computed by hand: (hi - 0) / 255.
        assert!(
            (q.scale - hi / 255.0).abs() <= 1e-6 * hi,
            "sym {sym}: {q:?}"
        );
    }
    // Strictly negative data mirrors it: zero maps to the top code.
    let counts: Vec<u64> = (0..64).map(|i| 1000 / (64 - i as u64)).collect();
    let h = Histogram {
        min: -45.0,
        max: -1.7,
        counts,
    };
    let (lo, hi, q) = choose_from_histogram(&h, QuantKind::L2, true);
    assert!(hi <= 0.0, "[{lo}, {hi}]");
    assert_eq!(q.zero_point, 255, "{q:?}");
    assert!(clipped_fraction(&h, lo, hi) < 0.05);
}
