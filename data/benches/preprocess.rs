//! Decode + `image_input` preprocessing throughput over the real imagenet100 JPEGs
//! (`../shared/data/imagenet100`; skipped with a message when absent). Single-threaded unless
//! named otherwise;
//! throughput is reported in images per second (elements = images), plus one 2-thread run.

use std::hint::black_box;

use caffe2_proto::{Datum, Message};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use data::{decode_bgr, Lmdb, Preprocess};

const DB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/imagenet100");

fn jpegs() -> Option<Vec<(String, Vec<u8>)>> {
    let db = match Lmdb::open(DB) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("skipping preprocess benches: {e}");
            return None;
        }
    };
    let mut out = Vec::new();
    for rec in db.iter() {
        let (key, value) = rec.ok()?;
        let datum = Datum::parse_from_bytes(&value).ok()?;
        out.push((
            String::from_utf8_lossy(&key).into_owned(),
            datum.data().to_vec(),
        ));
    }
    Some(out)
}

fn bench(c: &mut Criterion) {
    let Some(files) = jpegs() else { return };
    let pp = Preprocess::default();
    let images: Vec<_> = files
        .iter()
        .map(|(k, f)| decode_bgr(f, k).expect("imagenet100 JPEG decodes"))
        .collect();
    let mut out = vec![0f32; pp.image_len()];

    let mut g = c.benchmark_group("imagenet100");
    g.throughput(Throughput::Elements(files.len() as u64));
    g.sample_size(10);
    g.bench_function("decode_bgr", |b| {
        b.iter(|| {
            for (k, f) in &files {
                black_box(decode_bgr(black_box(f), k).ok());
            }
        })
    });
    g.bench_function("preprocess", |b| {
        b.iter(|| {
            for img in &images {
                pp.apply(black_box(img), &mut out).ok();
                black_box(&out);
            }
        })
    });
    g.bench_function("decode_and_preprocess", |b| {
        b.iter(|| {
            for (k, f) in &files {
                if let Ok(img) = decode_bgr(black_box(f), k) {
                    pp.apply(&img, &mut out).ok();
                }
                black_box(&out);
            }
        })
    });
    // The same on a 2-thread rayon pool (the target machine has 2 cores).
    if let Ok(pool) = rayon::ThreadPoolBuilder::new().num_threads(2).build() {
        use rayon::prelude::*;
        g.bench_function("decode_and_preprocess_2_threads", |b| {
            b.iter(|| {
                pool.install(|| {
                    files.par_iter().for_each_init(
                        || vec![0f32; pp.image_len()],
                        |buf, (k, f)| {
                            if let Ok(img) = decode_bgr(black_box(f), k) {
                                pp.apply(&img, buf).ok();
                            }
                            black_box(&buf);
                        },
                    )
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
