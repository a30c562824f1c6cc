//! The full pipeline: encoded PNG / JPEG records (colour and gray) in both record formats,
//! decoded and preprocessed with the real `Preprocess`, in NCHW / NHWC and BGR / RGB, plus
//! the real ImageNet sample when `../shared` is present.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use data::batch::{BatchOptions, Batches, DecodePriority};
use data::lmdb::Lmdb;
use data::make_db::write_records;
use data::record::{datum_encoded, tensor_protos_encoded, RecordFormat};
use data::{ChannelOrder, Layout, Preprocess};

/// A constant-colour image encoded as PNG or JPEG. `rgb` is in R, G, B order.
fn encode(h: u32, w: u32, rgb: [u8; 3], gray: bool, jpeg: bool) -> Vec<u8> {
    let fmt = if jpeg {
        image::ImageFormat::Jpeg
    } else {
        image::ImageFormat::Png
    };
    let mut out = Cursor::new(Vec::new());
    if gray {
        image::GrayImage::from_pixel(w, h, image::Luma([rgb[0]]))
            .write_to(&mut out, fmt)
            .unwrap();
    } else {
        image::RgbImage::from_pixel(w, h, image::Rgb(rgb))
            .write_to(&mut out, fmt)
            .unwrap();
    }
    out.into_inner()
}

fn small_pre(order: ChannelOrder, layout: Layout) -> Preprocess {
    Preprocess {
        scale: 8,
        crop: 4,
        mean: [10.0, 20.0, 30.0],
        std: [2.0, 4.0, 5.0],
        order,
        layout,
    }
}

/// (rgb colour, gray?, jpeg?) of the test records.
const CASES: [([u8; 3], bool, bool); 4] = [
    ([200, 100, 50], false, false),
    ([77, 77, 77], true, false),
    ([30, 160, 220], false, true),
    ([128, 128, 128], true, true),
];

fn write_db(dir: &Path, format: RecordFormat) -> PathBuf {
    let recs: Vec<(Vec<u8>, Vec<u8>)> = CASES
        .iter()
        .enumerate()
        .map(|(i, &(rgb, gray, jpeg))| {
            // Landscape 12x16 and portrait 20x9 sizes: both need resizing.
            let (h, w) = if i % 2 == 0 { (12, 16) } else { (20, 9) };
            let file = encode(h, w, rgb, gray, jpeg);
            let v = match format {
                RecordFormat::Datum => datum_encoded(&file, i as i32 + 1).unwrap(),
                RecordFormat::TensorProtos => tensor_protos_encoded(&file, i as i32 + 1).unwrap(),
            };
            (format!("{i:08}_c{i}").into_bytes(), v)
        })
        .collect();
    let out = dir.join(format!("enc_{format}"));
    write_records(&out, &recs, false).unwrap();
    out
}

#[test]
fn encoded_records_are_decoded_and_normalized() {
    let tmp = tempfile::tempdir().unwrap();
    for format in [RecordFormat::Datum, RecordFormat::TensorProtos] {
        let path = write_db(tmp.path(), format);
        for order in [ChannelOrder::Bgr, ChannelOrder::Rgb] {
            for layout in [Layout::Nchw, Layout::Nhwc] {
                let pre = small_pre(order, layout);
                let opts = BatchOptions {
                    batch_size: 4,
                    preprocess: pre.clone(),
                    ..BatchOptions::default()
                };
                let mut b = Batches::open(&path, opts).unwrap();
                let batch = b.next().unwrap().unwrap();
                assert!(b.next().is_none());
                assert_eq!(batch.n, 4);
                assert_eq!(batch.labels, vec![1, 2, 3, 4]);
                assert_eq!(batch.images.len(), 4 * 3 * 16);
                for (s, &(rgb, gray, jpeg)) in CASES.iter().enumerate() {
                    let img = &batch.images[s * 48..(s + 1) * 48];
                    // Output plane p holds source channel src (B=0, G=1, R=2): BGR order
                    // writes B, G, R; RGB order writes R, G, B. mean/std follow src.
                    let src = |p: usize| match order {
                        ChannelOrder::Bgr => p,
                        ChannelOrder::Rgb => 2 - p,
                    };
                    // rgb[] is R, G, B, so source channel c has colour rgb[2 - c].
                    let colour = |c: usize| f32::from(if gray { rgb[0] } else { rgb[2 - c] });
                    // JPEG of a flat colour is near-exact; allow a few levels.
                    let tol_levels = if jpeg { 3.0 } else { 0.5 };
                    for p in 0..3 {
                        let c = src(p);
                        let want = (colour(c) - pre.mean[c]) / pre.std[c];
                        let tol = tol_levels / pre.std[c];
                        for i in 0..16 {
                            let got = match layout {
                                Layout::Nchw => img[p * 16 + i],
                                Layout::Nhwc => img[i * 3 + p],
                            };
                            assert!(
                                (got - want).abs() <= tol,
                                "{format} {order:?} {layout:?} rec {s} plane {p}: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn prefetched_pipeline_matches() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write_db(tmp.path(), RecordFormat::TensorProtos);
    let opts = BatchOptions {
        batch_size: 3,
        preprocess: small_pre(ChannelOrder::Bgr, Layout::Nchw),
        ..BatchOptions::default()
    };
    let direct: Vec<_> = Batches::open(&path, opts.clone())
        .unwrap()
        .map(|b| b.unwrap())
        .collect();
    let pre: Vec<_> = Batches::open(&path, opts.clone())
        .unwrap()
        .prefetch(2)
        .unwrap()
        .map(|b| b.unwrap())
        .collect();
    assert_eq!(direct.len(), 2);
    assert_eq!(direct, pre);

    // At idle priority: the same batches, and the records are converted on a thread in the
    // SCHED_IDLE class (Linux), while this (consuming) thread keeps its normal class.
    let db = data::lmdb::Lmdb::open(&path).unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = std::sync::Arc::clone(&seen);
    let pre = opts.preprocess.clone();
    let convert = move |img: &data::Image, out: &mut [f32]| {
        log.lock()
            .unwrap()
            .push(data::batch::current_thread_is_idle_priority());
        pre.apply(img, out)
    };
    let len = opts.preprocess.image_len();
    let idle: Vec<_> = Batches::with_converter(db, &opts, len, std::sync::Arc::new(convert))
        .unwrap()
        .prefetch_with(2, DecodePriority::Idle)
        .unwrap()
        .map(|b| b.unwrap())
        .collect();
    assert_eq!(direct, idle);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), CASES.len());
    assert!(
        seen.iter().all(|&i| i == cfg!(target_os = "linux")),
        "{seen:?}"
    );
    assert!(!data::batch::current_thread_is_idle_priority());
}

#[test]
fn imagenet100_sampled_batches() {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/imagenet100"
    ));
    if !dir.join("data.mdb").is_file() {
        eprintln!("skipping: {} not found", dir.display());
        return;
    }
    let db = Lmdb::open(dir).unwrap();
    let opts = BatchOptions {
        batch_size: 4,
        sample: Some(8),
        seed: 2024,
        ..BatchOptions::default()
    };
    let pre = opts.preprocess.clone();
    let batches: Vec<_> = Batches::new(db, opts)
        .unwrap()
        .map(|b| b.unwrap())
        .collect();
    assert_eq!(batches.len(), 2);
    let expected: Vec<usize> = data::batch::sample_indices(8, 100, 2024);
    let mut k = 0;
    for b in &batches {
        assert_eq!(b.images.len(), b.n * 3 * 224 * 224);
        for (s, key) in b.keys.iter().enumerate() {
            let i: usize = key[..8].parse().unwrap();
            assert_eq!(i, expected[k]);
            assert_eq!(b.labels[s], 10 * i as i64);
            k += 1;
        }
        // Every value is a normalized pixel: within [(0 - mean) / std, (255 - mean) / std].
        for (j, &v) in b.images.iter().enumerate() {
            let p = (j / (224 * 224)) % 3;
            let lo = (0.0 - pre.mean[p]) / pre.std[p] - 1e-4;
            let hi = (255.0 - pre.mean[p]) / pre.std[p] + 1e-4;
            assert!(v >= lo && v <= hi, "value {v} out of range in plane {p}");
        }
    }
}
