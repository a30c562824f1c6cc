//! Bad records (malformed protobuf, corrupt image, unsupported record) with and without
//! `skip_bad`, float labels and format detection in batches.

use std::path::Path;
use std::sync::Arc;

use caffe2_proto::tensor_proto::DataType;
use caffe2_proto::{Datum, Message, TensorProto, TensorProtos};
use data::batch::{BatchOptions, Batches, Converter};
use data::image::Image;
use data::lmdb::Lmdb;
use data::make_db::write_records;
use data::record::{datum_encoded, datum_raw, RecordFormat};
use data::{DataError, DataResult};

const LEN: usize = 3;

fn pixel_image(v: u8) -> Image {
    Image {
        height: 1,
        width: 1,
        channels: 3,
        data: vec![v, v.wrapping_add(1), v.wrapping_add(2)],
    }
}

fn identity() -> Arc<Converter> {
    Arc::new(|img: &Image, out: &mut [f32]| -> DataResult<()> {
        for (o, &b) in out.iter_mut().zip(&img.data) {
            *o = f32::from(b);
        }
        Ok(())
    })
}

/// 12 raw Datum records; records 3 (garbage bytes), 4 (encoded, not an image) and 9
/// (float_data Datum) are bad.
fn db_with_bad_records(dir: &Path) -> Lmdb {
    let mut recs = Vec::new();
    for i in 0..12u8 {
        let key = format!("{i:08}_r");
        let value = match i {
            3 => vec![0xff, 0xff, 0xff, 0x01],
            4 => datum_encoded(b"this is not an image file", 1).unwrap(),
            9 => {
                let mut d = Datum::new();
                d.float_data = vec![0.5; 3];
                d.set_channels(3);
                d.set_height(1);
                d.set_width(1);
                d.write_to_bytes().unwrap()
            }
            _ => datum_raw(&pixel_image(i * 10), i32::from(i)).unwrap(),
        };
        recs.push((key.into_bytes(), value));
    }
    let out = dir.join("bad_db");
    write_records(&out, &recs, false).unwrap();
    Lmdb::open(&out).unwrap()
}

fn opts(batch_size: usize, skip_bad: bool) -> BatchOptions {
    BatchOptions {
        batch_size,
        skip_bad,
        ..BatchOptions::default()
    }
}

#[test]
fn first_bad_record_is_an_error_naming_its_key() {
    let tmp = tempfile::tempdir().unwrap();
    let db = db_with_bad_records(tmp.path());
    let mut b = Batches::with_converter(db.clone(), &opts(3, false), LEN, identity()).unwrap();
    assert_eq!(b.format(), RecordFormat::Datum);
    let first = b.next().unwrap().unwrap();
    assert_eq!(first.keys, ["00000000_r", "00000001_r", "00000002_r"]);
    assert_eq!(first.images, vec![0., 1., 2., 10., 11., 12., 20., 21., 22.]);
    let e = b.next().unwrap().unwrap_err();
    assert!(matches!(e, DataError::Record { .. }), "{e:?}");
    assert!(e.to_string().contains("00000003_r"), "{e}");
    assert!(b.next().is_none(), "iteration ends after an error");

    // Corrupt image: decoding error names the key.
    let o = BatchOptions {
        skip: 4,
        ..opts(2, false)
    };
    let e = Batches::with_converter(db.clone(), &o, LEN, identity())
        .unwrap()
        .next()
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, DataError::Decode { .. }), "{e:?}");
    assert!(e.to_string().contains("00000004_r"), "{e}");

    // float_data Datum.
    let o = BatchOptions {
        skip: 9,
        ..opts(1, false)
    };
    let e = Batches::with_converter(db, &o, LEN, identity())
        .unwrap()
        .next()
        .unwrap()
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("00000009_r"), "{msg}");
    assert!(msg.contains("float_data"), "{msg}");
}

#[test]
fn skip_bad_counts_and_refills_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let db = db_with_bad_records(tmp.path());
    let mut b = Batches::with_converter(db.clone(), &opts(4, true), LEN, identity()).unwrap();
    let mut keys = Vec::new();
    let mut sizes = Vec::new();
    for batch in b.by_ref() {
        let batch = batch.unwrap();
        for (s, k) in batch.keys.iter().enumerate() {
            let i: u8 = k[..8].parse().unwrap();
            assert_eq!(batch.labels[s], i64::from(i));
            let v = f32::from(i * 10);
            assert_eq!(&batch.images[s * 3..s * 3 + 3], &[v, v + 1.0, v + 2.0]);
        }
        sizes.push(batch.n);
        keys.extend(batch.keys);
    }
    // 9 good records: batches refilled past the bad ones.
    assert_eq!(sizes, vec![4, 4, 1]);
    let good: Vec<String> = [0, 1, 2, 5, 6, 7, 8, 10, 11]
        .iter()
        .map(|i| format!("{i:08}_r"))
        .collect();
    assert_eq!(keys, good);
    let skipped = b.skipped();
    let sk: Vec<&str> = skipped.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(sk, ["00000003_r", "00000004_r", "00000009_r"]);
    assert!(skipped[2].reason.contains("float_data"), "{:?}", skipped[2]);

    // Same through the prefetch thread.
    let pre = Batches::with_converter(db.clone(), &opts(4, true), LEN, identity())
        .unwrap()
        .prefetch(1)
        .unwrap();
    let mut pre = pre;
    let n: usize = pre.by_ref().map(|b| b.unwrap().n).sum();
    assert_eq!(n, 9);
    assert_eq!(pre.skipped().len(), 3);

    // limit counts positions, bad records included.
    let o = BatchOptions {
        limit: Some(6),
        ..opts(10, true)
    };
    let mut b = Batches::with_converter(db, &o, LEN, identity()).unwrap();
    let only = b.next().unwrap().unwrap();
    assert_eq!(only.n, 4);
    assert!(b.next().is_none());
    assert_eq!(b.skipped().len(), 2);
}

#[test]
fn converter_errors_name_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let db = db_with_bad_records(tmp.path());
    let failing: Arc<Converter> = Arc::new(|_: &Image, _: &mut [f32]| {
        Err(DataError::Config("crop larger than image".into()))
    });
    let e = Batches::with_converter(db, &opts(2, false), LEN, failing)
        .unwrap()
        .next()
        .unwrap()
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("00000000_r") && msg.contains("crop larger"),
        "{msg}"
    );
}

#[test]
fn float_labels_and_detected_tensor_protos() {
    let tmp = tempfile::tempdir().unwrap();
    let mut recs = Vec::new();
    for (i, lab) in [(0u8, Some(2.6f32)), (1, None), (2, Some(-0.4))] {
        let mut img = TensorProto::new();
        img.set_data_type(DataType::BYTE);
        img.dims = vec![1, 1, 3];
        img.set_byte_data(pixel_image(i).data);
        let mut l = TensorProto::new();
        match lab {
            Some(v) => {
                l.set_data_type(DataType::FLOAT);
                l.float_data = vec![v];
            }
            None => {
                l.set_data_type(DataType::INT32);
                l.int32_data = vec![7];
            }
        }
        let mut tp = TensorProtos::new();
        tp.protos = vec![img, l];
        recs.push((vec![b'a' + i], tp.write_to_bytes().unwrap()));
    }
    let out = tmp.path().join("f");
    write_records(&out, &recs, false).unwrap();
    let db = Lmdb::open(&out).unwrap();
    let mut b = Batches::with_converter(db.clone(), &opts(2, false), LEN, identity()).unwrap();
    assert_eq!(b.format(), RecordFormat::TensorProtos);
    let first = b.next().unwrap().unwrap();
    assert_eq!(first.labels, vec![3, 7]);
    assert_eq!(first.float_labels, Some(vec![2.6, 7.0]));
    let second = b.next().unwrap().unwrap();
    assert_eq!(second.labels, vec![0]);
    assert_eq!(second.float_labels, Some(vec![-0.4]));

    // Forcing the wrong format: every record is reported as a mismatch.
    let o = BatchOptions {
        format: Some(RecordFormat::Datum),
        ..opts(2, false)
    };
    let e = Batches::with_converter(db, &o, LEN, identity())
        .unwrap()
        .next()
        .unwrap()
        .unwrap_err();
    assert!(e.to_string().contains("tensorprotos"), "{e}");
}

#[test]
fn detection_skips_an_unrecognisable_first_record() {
    let tmp = tempfile::tempdir().unwrap();
    let recs = vec![
        (b"0".to_vec(), vec![0xff, 0xff]),
        (b"1".to_vec(), datum_raw(&pixel_image(5), 1).unwrap()),
    ];
    let out = tmp.path().join("d");
    write_records(&out, &recs, false).unwrap();
    let db = Lmdb::open(&out).unwrap();
    let mut b = Batches::with_converter(db.clone(), &opts(2, true), LEN, identity()).unwrap();
    assert_eq!(b.format(), RecordFormat::Datum);
    assert_eq!(b.next().unwrap().unwrap().keys, ["1"]);
    assert_eq!(b.skipped()[0].key, "0");

    // Only garbage: detection fails naming the first key.
    let out2 = tmp.path().join("g");
    write_records(&out2, &recs[..1], false).unwrap();
    let e = Batches::with_converter(Lmdb::open(&out2).unwrap(), &opts(1, true), LEN, identity())
        .unwrap_err();
    assert!(e.to_string().contains("`0`"), "{e}");
}
