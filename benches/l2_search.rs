//! Time of the fast L2 search (`c2q::quant::l2_fast`) on N = 2048 histograms.
//!
//! Run: `cargo bench -p c2q --bench l2_search`.

use criterion::{criterion_group, criterion_main, Criterion};

use c2q::quant::l2_fast::l2_search_bins;
use c2q::quant::norm_min::PaddedBins;
use c2q::quant::{choose_from_histogram, DynamicHistogram, Histogram, QuantKind};

/// Deterministic pseudo-random gaussian samples (xorshift + Box-Muller).
struct Gauss(u64);

impl Gauss {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    fn next(&mut self) -> f64 {
        let u1 = self.unit().max(1e-300);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// Histograms of synthetic activations, as the calibration observer would build them.
fn histogram(kind: usize) -> Histogram {
    let mut g = Gauss(0x9e3779b97f4a7c15 ^ kind as u64);
    let mut d = DynamicHistogram::new(2048);
    for _ in 0..8 {
        let batch: Vec<f32> = (0..200_000)
            .map(|_| {
                let x = g.next();
                match kind {
                    0 => (x.max(0.0) * (1.0 + (x * x * 0.05).exp() * 0.1)) as f32,
                    1 => (0.3 + x + 0.02 * x * x * x) as f32,
                    _ => (0.5 + (x * 0.8).exp()) as f32,
                }
            })
            .collect();
        d.add(&batch);
    }
    d.finalize()
}

fn bench(c: &mut Criterion) {
    let names = ["relu", "gaussian_heavy_tails", "positive_long_tail"];
    for (kind, name) in names.iter().enumerate() {
        let h = histogram(kind);
        let p = match PaddedBins::new(&h) {
            Some(p) => p,
            None => continue,
        };
        c.bench_function(&format!("l2_search_2048/{name}/asymmetric"), |b| {
            b.iter(|| l2_search_bins(std::hint::black_box(&p), false))
        });
        c.bench_function(&format!("l2_search_2048/{name}/symmetric"), |b| {
            b.iter(|| l2_search_bins(std::hint::black_box(&p), true))
        });
    }
    let h = histogram(0);
    c.bench_function("choose_from_histogram_2048/relu/l2_approx", |b| {
        b.iter(|| choose_from_histogram(std::hint::black_box(&h), QuantKind::L2Approx, false))
    });
    let vals: Vec<f32> = {
        let mut g = Gauss(7);
        (0..1_000_000).map(|_| g.next() as f32).collect()
    };
    c.bench_function("dynamic_histogram_add/1M", |b| {
        let mut d = DynamicHistogram::new(2048);
        b.iter(|| d.add(std::hint::black_box(&vals)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
