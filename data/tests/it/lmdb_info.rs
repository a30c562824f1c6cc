//! `db info` summaries and `db show` previews.

use std::cell::Cell;
use std::io::Cursor;
use std::path::Path;

use data::db_info::{db_info, denormalize_rgb, preprocessed_rgb};
use data::image::Image;
use data::lmdb::Lmdb;
use data::make_db::write_records;
use data::record::{datum_encoded, datum_raw, tensor_protos_encoded, RecordFormat};
use data::{decode_bgr, ChannelOrder, Layout, Preprocess};

fn png(w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image::RgbImage::from_pixel(w, h, image::Rgb(rgb))
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image::GrayImage::from_pixel(w, h, image::Luma([90]))
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .unwrap();
    out.into_inner()
}

#[test]
fn info_counts_labels_sizes_and_bad_records() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = Image {
        height: 5,
        width: 40,
        channels: 3,
        data: vec![1; 600],
    };
    let recs = vec![
        (
            b"a".to_vec(),
            datum_encoded(&png(30, 20, [1, 2, 3]), 4).unwrap(),
        ),
        (b"b".to_vec(), datum_encoded(&jpeg(12, 50), 4).unwrap()),
        (b"c".to_vec(), datum_raw(&raw, 9).unwrap()),
        (b"d".to_vec(), datum_encoded(b"no image here", 1).unwrap()),
        (b"e".to_vec(), vec![0xff, 0xff, 0xff]),
    ];
    let out = tmp.path().join("db");
    write_records(&out, &recs, false).unwrap();
    let db = Lmdb::open(&out).unwrap();
    let calls = Cell::new(0usize);
    let last = Cell::new(0usize);
    let progress = |n: usize| {
        calls.set(calls.get() + 1);
        last.set(n);
    };
    let info = db_info(&db, None, Some(&progress)).unwrap();
    assert!(calls.get() >= 1);
    assert_eq!(last.get(), 5);
    assert_eq!(info.count, 5);
    assert_eq!(info.format, RecordFormat::Datum);
    assert_eq!(info.encoded, 3);
    assert_eq!(info.raw, 1);
    assert_eq!(
        info.labels
            .iter()
            .map(|(&k, &v)| (k, v))
            .collect::<Vec<_>>(),
        [(1, 1), (4, 2), (9, 1)]
    );
    assert_eq!(info.float_labels, 0);
    assert_eq!(info.kinds.get("png"), Some(&1));
    assert_eq!(info.kinds.get("jpeg"), Some(&1));
    assert_eq!(info.kinds.get("raw"), Some(&1));
    assert_eq!(info.kinds.get("unknown"), Some(&1));
    // Widths 30, 12, 40; heights 20, 50, 5.
    assert_eq!(info.width, Some((12, 40)));
    assert_eq!(info.height, Some((5, 50)));
    let bad: Vec<&str> = info.bad.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(bad, ["d", "e"]);
}

#[test]
fn info_on_tensor_protos() {
    let tmp = tempfile::tempdir().unwrap();
    let recs: Vec<_> = (0..3)
        .map(|i| {
            (
                format!("{i}").into_bytes(),
                tensor_protos_encoded(&png(8 + i, 9, [0, 0, 0]), i as i32).unwrap(),
            )
        })
        .collect();
    let out = tmp.path().join("db");
    write_records(&out, &recs, false).unwrap();
    let info = db_info(&Lmdb::open(&out).unwrap(), None, None).unwrap();
    assert_eq!(info.format, RecordFormat::TensorProtos);
    assert_eq!(info.count, 3);
    assert_eq!(info.width, Some((8, 10)));
    assert_eq!(info.height, Some((9, 9)));
    assert!(info.bad.is_empty());
}

#[test]
fn imagenet100_info_matches_decoded_sizes() {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/imagenet100"
    ));
    if !dir.join("data.mdb").is_file() {
        eprintln!("skipping: {} not found", dir.display());
        return;
    }
    let db = Lmdb::open(dir).unwrap();
    let info = db_info(&db, None, None).unwrap();
    assert_eq!(info.count, 100);
    assert_eq!(info.encoded, 100);
    assert_eq!(info.labels.len(), 100);
    assert!(info
        .labels
        .iter()
        .all(|(&l, &n)| n == 1 && l % 10 == 0 && l < 1000));
    assert_eq!(info.kinds.get("jpeg"), Some(&100));
    assert!(info.bad.is_empty());
    // Independent: decode every image fully and take the extremes.
    let (mut wmin, mut wmax, mut hmin, mut hmax) = (usize::MAX, 0, usize::MAX, 0);
    for r in db.iter() {
        let (k, v) = r.unwrap();
        let key = String::from_utf8(k).unwrap();
        let rec = data::record::parse_record(&v, RecordFormat::Datum, &key).unwrap();
        let img = rec.into_image(&key).unwrap();
        wmin = wmin.min(img.width);
        wmax = wmax.max(img.width);
        hmin = hmin.min(img.height);
        hmax = hmax.max(img.height);
    }
    assert_eq!(info.width, Some((wmin, wmax)));
    assert_eq!(info.height, Some((hmin, hmax)));
}

fn pre(order: ChannelOrder, layout: Layout, crop: usize) -> Preprocess {
    Preprocess {
        scale: crop,
        crop,
        mean: [10.0, 20.0, 30.0],
        std: [2.0, 4.0, 5.0],
        order,
        layout,
    }
}

#[test]
fn denormalize_hand_values() {
    // BGR planes: B = 1*2+10 = 12, G = 2*4+20 = 28, R = 3*5+30 = 45.
    let img = denormalize_rgb(&[1.0, 2.0, 3.0], &pre(ChannelOrder::Bgr, Layout::Nchw, 1)).unwrap();
    assert_eq!(img.data, vec![45, 28, 12]);
    // RGB planes (mean/std by source channel): R = 1*5+30 = 35, G = 28, B = 3*2+10 = 16.
    let img = denormalize_rgb(&[1.0, 2.0, 3.0], &pre(ChannelOrder::Rgb, Layout::Nchw, 1)).unwrap();
    assert_eq!(img.data, vec![35, 28, 16]);
    // Clamping and rounding: B = 200*2+10 -> 255, G = -50*4+20 -> 0, R = 0.29*5+30 = 31.45 -> 31.
    let img = denormalize_rgb(
        &[200.0, -50.0, 0.29],
        &pre(ChannelOrder::Bgr, Layout::Nchw, 1),
    )
    .unwrap();
    assert_eq!(img.data, vec![31, 0, 255]);
    // 2x2 NCHW vs NHWC: pixel i of plane p holds value i + 10p (pre-normalized as 0 mean/1 std).
    let p = Preprocess {
        mean: [0.0; 3],
        std: [1.0; 3],
        ..pre(ChannelOrder::Bgr, Layout::Nchw, 2)
    };
    let nchw: Vec<f32> = (0..3)
        .flat_map(|p| (0..4).map(move |i| (i + 10 * p) as f32))
        .collect();
    let nhwc: Vec<f32> = (0..4)
        .flat_map(|i| (0..3).map(move |p| (i + 10 * p) as f32))
        .collect();
    let a = denormalize_rgb(&nchw, &p).unwrap();
    let b = denormalize_rgb(
        &nhwc,
        &Preprocess {
            layout: Layout::Nhwc,
            ..p.clone()
        },
    )
    .unwrap();
    assert_eq!(a, b);
    assert_eq!((a.height, a.width, a.channels), (2, 2, 3));
    // Pixel 3: B = 3, G = 13, R = 23 -> RGB.
    assert_eq!(&a.data[9..12], &[23, 13, 3]);
    assert!(denormalize_rgb(&[0.0; 5], &p).is_err());
}

#[test]
fn show_returns_the_rgb_crop() {
    let tmp = tempfile::tempdir().unwrap();
    let file = png(20, 14, [200, 100, 50]);
    // Sanity: the decoder gives BGR.
    assert_eq!(&decode_bgr(&file, "x").unwrap().data[..3], &[50, 100, 200]);
    let out = tmp.path().join("db");
    write_records(
        &out,
        &[(b"00000000_x.png".to_vec(), datum_encoded(&file, 3).unwrap())],
        false,
    )
    .unwrap();
    let db = Lmdb::open(&out).unwrap();
    for order in [ChannelOrder::Bgr, ChannelOrder::Rgb] {
        for layout in [Layout::Nchw, Layout::Nhwc] {
            let p = Preprocess {
                scale: 10,
                ..pre(order, layout, 8)
            };
            let img = preprocessed_rgb(&db, "00000000_x.png", None, &p).unwrap();
            assert_eq!((img.height, img.width, img.channels), (8, 8, 3));
            assert!(
                img.data.chunks(3).all(|px| px == [200, 100, 50]),
                "{order:?} {layout:?}"
            );
        }
    }
    let e = preprocessed_rgb(&db, "nope", None, &Preprocess::default()).unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
}
