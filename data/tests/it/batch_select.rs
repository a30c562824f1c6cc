//! Batching and record selection (skip / limit / seeded sample), using raw records and a
//! plain byte-to-float converter so no decoder or resizer is involved.

use std::path::Path;
use std::sync::Arc;

use data::batch::{sample_indices, BatchOptions, Batches, Selection, SplitMix64};
use data::image::Image;
use data::lmdb::Lmdb;
use data::make_db::write_records;
use data::record::{datum_raw, tensor_protos_raw, RecordFormat};
use data::DataResult;

const H: usize = 2;
const W: usize = 3;
const LEN: usize = H * W * 3;

/// Pixel byte `j` (interleaved BGR) of record `i`.
fn px(i: usize, j: usize) -> u8 {
    ((i * 7 + j * 3) % 256) as u8
}

fn label_of(i: usize) -> i32 {
    (i % 5) as i32 * 10
}

fn key_of(i: usize) -> String {
    format!("{i:08}_img{i}.png")
}

fn make_db(dir: &Path, n: usize, format: RecordFormat) -> Lmdb {
    let recs: Vec<(Vec<u8>, Vec<u8>)> = (0..n)
        .map(|i| {
            let img = Image {
                height: H,
                width: W,
                channels: 3,
                data: (0..LEN).map(|j| px(i, j)).collect(),
            };
            let v = match format {
                RecordFormat::Datum => datum_raw(&img, label_of(i)).unwrap(),
                RecordFormat::TensorProtos => tensor_protos_raw(&img, label_of(i)).unwrap(),
            };
            (key_of(i).into_bytes(), v)
        })
        .collect();
    let out = dir.join(format!("db_{format}_{n}"));
    write_records(&out, &recs, false).unwrap();
    Lmdb::open(&out).unwrap()
}

fn identity() -> Arc<data::batch::Converter> {
    Arc::new(|img: &Image, out: &mut [f32]| -> DataResult<()> {
        assert_eq!(out.len(), img.data.len());
        for (o, &b) in out.iter_mut().zip(&img.data) {
            *o = f32::from(b);
        }
        Ok(())
    })
}

fn opts(batch_size: usize) -> BatchOptions {
    BatchOptions {
        batch_size,
        ..BatchOptions::default()
    }
}

/// All (key, label, pixels) delivered, checking every batch's internal consistency.
fn run(b: impl Iterator<Item = DataResult<data::Batch>>) -> (Vec<usize>, Vec<String>) {
    let mut sizes = Vec::new();
    let mut keys = Vec::new();
    for batch in b {
        let batch = batch.unwrap();
        assert_eq!(batch.images.len(), batch.n * LEN);
        assert_eq!(batch.labels.len(), batch.n);
        assert_eq!(batch.keys.len(), batch.n);
        assert!(batch.float_labels.is_none());
        for (s, key) in batch.keys.iter().enumerate() {
            let i: usize = key[..8].parse().unwrap();
            assert_eq!(key, &key_of(i));
            assert_eq!(batch.labels[s], i64::from(label_of(i)));
            for j in 0..LEN {
                assert_eq!(batch.images[s * LEN + j], f32::from(px(i, j)), "{key} {j}");
            }
        }
        sizes.push(batch.n);
        keys.extend(batch.keys);
    }
    (sizes, keys)
}

#[test]
fn splitmix64_reference_values() {
    // Reference outputs of Vigna's splitmix64.c (cross-checked with a Python transcription).
    let mut r = SplitMix64::new(0);
    assert_eq!(r.next_u64(), 0xe220a8397b1dcdaf);
    assert_eq!(r.next_u64(), 0x6e789e6aa1b965f4);
    assert_eq!(r.next_u64(), 0x06c45d188009454f);
    let mut r = SplitMix64::new(1234567);
    assert_eq!(r.next_u64(), 0x599ed017fb08fc85);
    assert_eq!(r.next_u64(), 0x2c73f08458540fa5);
    let mut r = SplitMix64::new(9);
    for bound in [1u64, 2, 3, 7, 1000, u64::MAX] {
        for _ in 0..100 {
            assert!(r.below(bound) < bound);
        }
    }
}

#[test]
fn sample_indices_reference_and_properties() {
    // Values computed by an independent Python transcription of Floyd + SplitMix64.
    assert_eq!(sample_indices(5, 20, 42), vec![0, 5, 10, 13, 19]);
    assert_eq!(sample_indices(3, 1000, 7), vec![346, 621, 726]);
    assert_eq!(
        sample_indices(10, 12, 0),
        vec![0, 1, 2, 4, 5, 7, 8, 9, 10, 11]
    );
    assert_eq!(sample_indices(7, 7, 3), (0..7).collect::<Vec<_>>());
    assert_eq!(sample_indices(70, 7, 3), (0..7).collect::<Vec<_>>());
    assert!(sample_indices(0, 7, 3).is_empty());
    for seed in 0..20 {
        let s = sample_indices(25, 100, seed);
        assert_eq!(s.len(), 25);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert!(s.iter().all(|&i| i < 100));
    }
    // Rough uniformity: every index of 0..10 picked ~ 3/10 of the time over 3000 seeds.
    let mut hits = [0usize; 10];
    for seed in 0..3000 {
        for i in sample_indices(3, 10, seed) {
            hits[i] += 1;
        }
    }
    for (i, &h) in hits.iter().enumerate() {
        assert!((800..=1000).contains(&h), "index {i} picked {h} times");
    }
}

#[test]
fn batches_cover_all_records_in_key_order() {
    let tmp = tempfile::tempdir().unwrap();
    for format in [RecordFormat::Datum, RecordFormat::TensorProtos] {
        let db = make_db(tmp.path(), 50, format);
        let b = Batches::with_converter(db, &opts(8), LEN, identity()).unwrap();
        assert_eq!(b.format(), format);
        assert_eq!(b.planned(), 50);
        let (sizes, keys) = run(b);
        assert_eq!(sizes, vec![8, 8, 8, 8, 8, 8, 2]);
        assert_eq!(keys, (0..50).map(key_of).collect::<Vec<_>>());
    }
}

#[test]
fn skip_and_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let db = make_db(tmp.path(), 30, RecordFormat::Datum);
    let o = BatchOptions {
        batch_size: 4,
        skip: 5,
        limit: Some(10),
        ..BatchOptions::default()
    };
    let b = Batches::with_converter(db.clone(), &o, LEN, identity()).unwrap();
    assert_eq!(b.planned(), 10);
    let (sizes, keys) = run(b);
    assert_eq!(sizes, vec![4, 4, 2]);
    assert_eq!(keys, (5..15).map(key_of).collect::<Vec<_>>());

    // Limit beyond the end; skip beyond the end.
    let o = BatchOptions {
        batch_size: 7,
        skip: 25,
        limit: Some(100),
        ..BatchOptions::default()
    };
    let (_, keys) = run(Batches::with_converter(db.clone(), &o, LEN, identity()).unwrap());
    assert_eq!(keys, (25..30).map(key_of).collect::<Vec<_>>());
    let o = BatchOptions {
        skip: 31,
        ..BatchOptions::default()
    };
    let b = Batches::with_converter(db.clone(), &o, LEN, identity()).unwrap();
    assert_eq!(b.planned(), 0);
    assert_eq!(b.count(), 0);
    // Exactly a multiple of the batch size: no empty trailing batch.
    let (sizes, _) = run(Batches::with_converter(db, &opts(10), LEN, identity()).unwrap());
    assert_eq!(sizes, vec![10, 10, 10]);
}

#[test]
fn seeded_sample_is_reproducible_and_in_key_order() {
    let tmp = tempfile::tempdir().unwrap();
    let db = make_db(tmp.path(), 40, RecordFormat::TensorProtos);
    let sample = |seed: u64, n: usize, skip: usize, limit: Option<usize>| {
        let o = BatchOptions {
            batch_size: 3,
            sample: Some(n),
            seed,
            skip,
            limit,
            ..BatchOptions::default()
        };
        run(Batches::with_converter(db.clone(), &o, LEN, identity()).unwrap()).1
    };
    let a = sample(11, 12, 0, None);
    assert_eq!(a.len(), 12);
    assert_eq!(a, sample(11, 12, 0, None));
    assert_ne!(a, sample(12, 12, 0, None));
    // Exactly the records sample_indices chose, in key order.
    let expected: Vec<String> = sample_indices(12, 40, 11).into_iter().map(key_of).collect();
    assert_eq!(a, expected);
    // N >= count: everything.
    assert_eq!(
        sample(1, 40, 0, None),
        (0..40).map(key_of).collect::<Vec<_>>()
    );
    assert_eq!(
        sample(1, 1000, 0, None),
        (0..40).map(key_of).collect::<Vec<_>>()
    );
    // Sampling inside a window: positions shifted by skip.
    let w = sample(5, 4, 10, Some(8));
    let expected: Vec<String> = sample_indices(4, 8, 5)
        .into_iter()
        .map(|i| key_of(i + 10))
        .collect();
    assert_eq!(w, expected);

    // Same result whatever the rayon thread count.
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let three = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let full = |pool: &rayon::ThreadPool| {
        pool.install(|| {
            let o = BatchOptions {
                batch_size: 5,
                sample: Some(17),
                seed: 99,
                ..BatchOptions::default()
            };
            Batches::with_converter(db.clone(), &o, LEN, identity())
                .unwrap()
                .map(|b| b.unwrap())
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(full(&one), full(&three));
}

#[test]
fn selection_reads_raw_records() {
    let tmp = tempfile::tempdir().unwrap();
    let db = make_db(tmp.path(), 20, RecordFormat::Datum);
    let mut sel = Selection::new(db, 2, Some(15), Some(6), 3).unwrap();
    assert_eq!(sel.planned(), 6);
    let mut got = Vec::new();
    loop {
        let chunk = sel.next_records(4).unwrap();
        if chunk.is_empty() {
            break;
        }
        assert!(chunk.len() <= 4);
        got.extend(
            chunk
                .into_iter()
                .map(|(k, _)| String::from_utf8(k).unwrap()),
        );
    }
    let expected: Vec<String> = sample_indices(6, 15, 3)
        .into_iter()
        .map(|i| key_of(i + 2))
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn prefetch_matches_direct_iteration_and_drops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let db = make_db(tmp.path(), 33, RecordFormat::Datum);
    let direct: Vec<_> = Batches::with_converter(db.clone(), &opts(4), LEN, identity())
        .unwrap()
        .map(|b| b.unwrap())
        .collect();
    let pre = Batches::with_converter(db.clone(), &opts(4), LEN, identity())
        .unwrap()
        .prefetch(2)
        .unwrap();
    assert_eq!(pre.planned(), 33);
    assert_eq!(pre.image_len(), LEN);
    let fetched: Vec<_> = pre.map(|b| b.unwrap()).collect();
    assert_eq!(direct, fetched);
    // Dropping after one batch must not hang on the blocked producer.
    let mut pre = Batches::with_converter(db, &opts(1), LEN, identity())
        .unwrap()
        .prefetch(1)
        .unwrap();
    assert_eq!(pre.next().unwrap().unwrap().keys, vec![key_of(0)]);
    drop(pre);
}

#[test]
fn invalid_options() {
    let tmp = tempfile::tempdir().unwrap();
    let db = make_db(tmp.path(), 3, RecordFormat::Datum);
    let e = Batches::with_converter(db.clone(), &opts(0), LEN, identity()).unwrap_err();
    assert!(e.to_string().contains("batch size"), "{e}");
    let mut o = opts(2);
    o.preprocess.crop = 300;
    let e = Batches::new(db, o).unwrap_err();
    assert!(e.to_string().contains("crop"), "{e}");
}
