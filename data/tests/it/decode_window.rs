//! Colour conversion limited to the pixels preprocessing reads (`Preprocess::source_window`
//! with `decode_bgr_window`): the preprocessed floats must be the same bits as with a fully
//! converted image, for every resize path (area sums, integer boxes, enlarging), landscape
//! and portrait, and through `Batches`.

use std::io::Cursor;

use data::batch::{BatchOptions, Batches};
use data::lmdb::Lmdb;
use data::make_db::write_records;
use data::record::{datum_encoded, RecordFormat};
use data::{decode_bgr, decode_bgr_window, Preprocess};

/// A noisy colour JPEG (every pixel different, so a pixel left unconverted shows).
fn noisy_jpeg(h: u32, w: u32, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let n = (s >> 40) as u8;
        image::Rgb([
            n,
            (x * 255 / w) as u8 ^ (n >> 2),
            (y * 255 / h) as u8 ^ (n >> 3),
        ])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

fn pre(scale: usize, crop: usize) -> Preprocess {
    Preprocess {
        scale,
        crop,
        ..Preprocess::default()
    }
}

fn apply(p: &Preprocess, img: &data::Image) -> Vec<u32> {
    let mut out = vec![0f32; p.image_len()];
    p.apply(img, &mut out).unwrap();
    out.iter().map(|v| v.to_bits()).collect()
}

/// (height, width, scale, crop): fractional downscale (landscape, portrait, odd sizes),
/// integer 2x box, no resize, enlarging, and a crop as large as the resized image.
const CASES: [(u32, u32, usize, usize); 8] = [
    (375, 500, 256, 224),
    (500, 333, 256, 224),
    (701, 1003, 256, 224),
    (512, 768, 256, 224),
    (256, 300, 256, 224),
    (150, 200, 256, 224),
    (90, 61, 40, 40),
    (37, 53, 16, 8),
];

#[test]
fn window_conversion_gives_the_same_floats() {
    let mut smaller = 0;
    let mut shrunk_differs = 0;
    for (i, &(h, w, scale, crop)) in CASES.iter().enumerate() {
        let file = noisy_jpeg(h, w, i as u64 + 1);
        let p = pre(scale, crop);
        let full = decode_bgr(&file, "full").unwrap();
        let want = apply(&p, &full);
        let win = p.source_window(h as usize, w as usize).unwrap();
        if win.0.len() < h as usize || win.1.len() < w as usize {
            smaller += 1;
        }
        let part = decode_bgr_window(&file, "part", &|hh, ww| p.source_window(hh, ww)).unwrap();
        assert_eq!(apply(&p, &part), want, "{h}x{w} scale {scale} crop {crop}");
        // The margin is needed and enough: the window's own pixels are converted exactly as
        // in the full image; a window cut by three columns on the left changes the result
        // whenever it really cuts something.
        let (rows, cols) = win.clone();
        if cols.start + 3 < cols.end && cols.start > 0 {
            let cut = (rows, cols.start + 3..cols.end);
            let img = decode_bgr_window(&file, "cut", &|_, _| Some(cut.clone())).unwrap();
            if apply(&p, &img) != want {
                shrunk_differs += 1;
            }
        }
    }
    assert!(
        smaller >= 5,
        "only {smaller} windows smaller than their image"
    );
    assert!(
        shrunk_differs >= 3,
        "a cut window changed only {shrunk_differs} results"
    );
}

#[test]
fn batches_use_the_window_and_match_full_conversion() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let recs: Vec<(Vec<u8>, Vec<u8>)> = CASES[..6]
        .iter()
        .enumerate()
        .map(|(i, &(h, w, _, _))| {
            let file = noisy_jpeg(h, w, 100 + i as u64);
            (
                format!("{i:08}").into_bytes(),
                datum_encoded(&file, i as i32).unwrap(),
            )
        })
        .collect();
    write_records(&path, &recs, false).unwrap();
    let p = pre(256, 224);
    let opts = BatchOptions {
        batch_size: 4,
        preprocess: p.clone(),
        format: Some(RecordFormat::Datum),
        ..BatchOptions::default()
    };
    let got: Vec<u32> = Batches::new(Lmdb::open(&path).unwrap(), opts)
        .unwrap()
        .flat_map(|b| b.unwrap().images)
        .map(f32::to_bits)
        .collect();
    let want: Vec<u32> = CASES[..6]
        .iter()
        .enumerate()
        .flat_map(|(i, &(h, w, _, _))| {
            let file = noisy_jpeg(h, w, 100 + i as u64);
            apply(&p, &decode_bgr(&file, "full").unwrap())
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn imagenet100_window_conversion_matches() {
    let dir = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/imagenet100"
    ));
    if !dir.join("data.mdb").is_file() {
        eprintln!("skipping: {} not found", dir.display());
        return;
    }
    let p = Preprocess::default();
    let db = Lmdb::open(dir).unwrap();
    let mut want = Vec::new();
    for e in db.iter() {
        let (k, v) = e.unwrap();
        let key = String::from_utf8_lossy(&k).into_owned();
        let rec = data::record::parse_record(&v, RecordFormat::Datum, &key).unwrap();
        want.extend(apply(&p, &rec.into_image(&key).unwrap()));
    }
    assert_eq!(want.len(), 100 * p.image_len());
    let opts = BatchOptions {
        batch_size: 16,
        preprocess: p,
        ..BatchOptions::default()
    };
    let got: Vec<u32> = Batches::new(Lmdb::open(dir).unwrap(), opts)
        .unwrap()
        .flat_map(|b| b.unwrap().images)
        .map(f32::to_bits)
        .collect();
    assert!(
        got == want,
        "imagenet100 batches differ from fully converted images"
    );
}
