//! End-to-end calibration math: batches -> DynamicHistogram -> histogram file -> choice of
//! quantization parameters, checked against values computed independently in the test.

use c2q::quant::hist_file::{read_histogram_file, write_histogram_file, HistogramRecord};
use c2q::quant::norm_min::l2_bruteforce;
use c2q::quant::{choose_from_histogram, DynamicHistogram, Histogram, QuantKind};

/// Deterministic values in [0, 1).
fn unit(i: u64) -> f32 {
    ((i.wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        >> 40) as f32)
        / (1u64 << 24) as f32
}

#[test]
fn batches_to_file_to_params() {
    // Two blobs: a ReLU-like output (min 0) and a signed one whose range grows on batch 2.
    let mut relu = DynamicHistogram::new(64);
    let mut signed = DynamicHistogram::new(64);
    let mut all_relu = Vec::new();
    for b in 0..3u64 {
        let mut batch: Vec<f32> = (0..5000u64)
            .map(|i| (unit(b * 10_000 + i) * 4.0 - 1.0).max(0.0))
            .collect();
        if b == 0 {
            // The largest value comes first, so the ReLU histogram never grows.
            batch[17] = 3.0;
        }
        relu.add(&batch);
        all_relu.extend_from_slice(&batch);
        // Batch 1 stays inside batch 0's range; batch 2 triples it (one growth step).
        let scale = [1.0, 0.9, 3.0][b as usize];
        let batch: Vec<f32> = (0..5000u64)
            .map(|i| (unit(b * 20_000 + i + 7) - 0.5) * scale)
            .collect();
        signed.add(&batch);
    }
    assert_eq!(relu.n_fixed_histograms(), 1);
    assert_eq!(signed.n_fixed_histograms(), 2);

    // The finalized ReLU histogram holds every value; its range is the data's.
    let hr = relu.finalize();
    assert_eq!(hr.total(), 15_000);
    assert_eq!(hr.min, 0.0);
    let data_max = all_relu.iter().cloned().fold(0f32, f32::max);
    assert_eq!(hr.max, data_max);
    assert_eq!(data_max, 3.0);
    // One range and no growth: the 256 fixed bins nest 4-to-1 into the 64 final bins, so the
    // final counts equal a direct count with the bin rule.
    let w = (hr.max - hr.min) / 256.0;
    let mut direct = vec![0u64; 64];
    for &v in &all_relu {
        let fine = (((v - hr.min) / w) as usize).min(255);
        direct[fine / 4] += 1;
    }
    assert_eq!(hr.counts, direct);

    let recs = vec![
        HistogramRecord {
            op_index: 3,
            op_type: Some("Relu".into()),
            output_index: 0,
            blob_name: "conv1_relu".into(),
            hist: hr.clone(),
        },
        HistogramRecord {
            op_index: 4,
            op_type: Some("Conv".into()),
            output_index: 0,
            blob_name: "conv2".into(),
            hist: signed.finalize(),
        },
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("calib.hist");
    write_histogram_file(&path, &recs).expect("write");
    let back = read_histogram_file(&path).expect("read");
    assert_eq!(back, recs);

    // Min/max params of the ReLU blob: [0, max] -> scale max/255, zero point 0.
    let (_, _, q) = choose_from_histogram(&back[0].hist, QuantKind::MinMax, true);
    assert_eq!(q.scale, (data_max as f64 / 255.0) as f32);
    assert_eq!(q.zero_point, 0);

    // L2 (fast search) equals the literal brute force on these 64-bin histograms.
    for r in &back {
        for sym in [false, true] {
            let (lo, hi, _) = choose_from_histogram(&r.hist, QuantKind::L2, sym);
            let lit = l2_bruteforce(&r.hist, sym).expect("searchable");
            assert_eq!((lo, hi), (lit.min, lit.max), "{} sym {sym}", r.blob_name);
        }
    }
}

#[test]
fn old_format_file_is_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.hist");
    std::fs::write(&path, "0 0 data -1 1 4 1 2 3 4\n1 0 fc 0 2 2 5 5\n").expect("write");
    let recs = read_histogram_file(&path).expect("read");
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[1].op_type, None);
    assert_eq!(
        recs[1].hist,
        Histogram {
            min: 0.0,
            max: 2.0,
            counts: vec![5, 5]
        }
    );
}
