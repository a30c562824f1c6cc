//! LMDB opening, iteration, seeking and counting: the real Caffe-written ImageNet sample
//! (skipped when `../shared` is absent) and small generated databases.

use std::path::{Path, PathBuf};

use data::batch::detect_db_format;
use data::lmdb::{Lmdb, Start};
use data::make_db::write_records;
use data::record::{parse_record, Label, Payload, RecordFormat};
use data::DataError;

fn shared_db() -> Option<PathBuf> {
    let p = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/imagenet100"
    ));
    if p.join("data.mdb").is_file() {
        Some(p.to_path_buf())
    } else {
        eprintln!("skipping: {} not found", p.display());
        None
    }
}

/// (file, label) lines of labels.tsv, written independently of the LMDB.
fn shared_labels(dir: &Path) -> Vec<(String, i32)> {
    let text = std::fs::read_to_string(dir.join("labels.tsv")).expect("labels.tsv");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (f, lab) = l.split_once('\t').expect("tab");
            (f.to_string(), lab.trim().parse().expect("label"))
        })
        .collect()
}

#[test]
fn imagenet100_opens_read_only_and_matches_labels() {
    let Some(dir) = shared_db() else { return };
    let had_lock = dir.join("lock.mdb").exists();
    let db = Lmdb::open(&dir).expect("open");
    assert_eq!(db.len().unwrap(), 100);
    assert!(!db.is_empty().unwrap());
    assert_eq!(detect_db_format(&db).unwrap(), RecordFormat::Datum);

    let labels = shared_labels(&dir);
    assert_eq!(labels.len(), 100);
    let mut n = 0;
    for (i, item) in db.iter().enumerate() {
        let (k, v) = item.expect("record");
        let key = String::from_utf8(k).unwrap();
        let (file, label) = &labels[i];
        assert_eq!(key, format!("{i:08}_{file}"));
        assert_eq!(*label, (i as i32) * 10);
        let rec = parse_record(&v, RecordFormat::Datum, &key).expect("parse");
        assert_eq!(rec.label, Label::Int(*label));
        match rec.payload {
            // JPEG SOI marker.
            Payload::Encoded(bytes) => assert_eq!(&bytes[..2], &[0xFF, 0xD8]),
            Payload::Raw(_) => panic!("expected encoded records"),
        }
        n += 1;
    }
    assert_eq!(n, 100);
    // NO_LOCK: no lock file taken or created.
    assert_eq!(dir.join("lock.mdb").exists(), had_lock);
}

#[test]
fn imagenet100_seek_get_and_data_mdb_path() {
    let Some(dir) = shared_db() else { return };
    let db = Lmdb::open(dir.join("data.mdb")).expect("open via data.mdb");
    assert_eq!(db.len().unwrap(), 100);
    let labels = shared_labels(&dir);
    // Seek to a prefix between keys: lands on record 50.
    let mut it = db.iter_from(b"00000050");
    let (k, _) = it.next().unwrap().unwrap();
    assert_eq!(k, format!("00000050_{}", labels[50].0).into_bytes());
    assert_eq!(it.count(), 49);
    // Seek to an exact key: inclusive.
    let exact = format!("00000099_{}", labels[99].0);
    let got: Vec<_> = db
        .iter_from(exact.as_bytes())
        .map(|r| r.unwrap().0)
        .collect();
    assert_eq!(got, vec![exact.clone().into_bytes()]);
    // Past the end.
    assert_eq!(db.iter_from(b"1").count(), 0);
    let v = db.get(exact.as_bytes()).unwrap().expect("present");
    let rec = parse_record(&v, RecordFormat::Datum, &exact).unwrap();
    assert_eq!(rec.label, Label::Int(990));
    assert!(db.get(b"nope").unwrap().is_none());
}

#[test]
fn imagenet100_concurrent_opens() {
    let Some(dir) = shared_db() else { return };
    // Many threads opening and dropping the same environment at once: heed refuses a
    // second open of the same path, so this exercises the shared registry.
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                for _ in 0..20 {
                    let db = Lmdb::open(&dir).expect("open");
                    assert_eq!(db.len().unwrap(), 100);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
}

#[test]
fn open_errors_name_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing_db");
    let e = Lmdb::open(&missing).unwrap_err();
    assert!(matches!(e, DataError::Lmdb { .. }));
    assert!(e.to_string().contains("missing_db"), "{e}");
    let empty = tmp.path().join("empty_dir");
    std::fs::create_dir(&empty).unwrap();
    let e = Lmdb::open(&empty).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("empty_dir") && msg.contains("data.mdb"),
        "{msg}"
    );
    // A file that is not an LMDB.
    let junk = tmp.path().join("junk.mdb");
    std::fs::write(&junk, vec![7u8; 10000]).unwrap();
    let e = Lmdb::open(&junk).unwrap_err();
    assert!(e.to_string().contains("junk.mdb"), "{e}");
}

fn kv(k: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
    (k.as_bytes().to_vec(), v.as_bytes().to_vec())
}

#[test]
fn byte_order_iteration_and_scan_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("db");
    // Plain decimal keys (as Caffe2's scripts write them) iterate in byte order.
    let recs = vec![
        kv("2", "two"),
        kv("10", "ten"),
        kv("1", "one"),
        kv("0", "zero"),
    ];
    write_records(&out, &recs, false).unwrap();
    let db = Lmdb::open(&out).unwrap();
    assert_eq!(db.len().unwrap(), 4);
    let keys: Vec<String> = db
        .keys()
        .unwrap()
        .into_iter()
        .map(|k| String::from_utf8(k).unwrap())
        .collect();
    assert_eq!(keys, ["0", "1", "10", "2"]);

    let collect = |start: Start<'_>| {
        let mut got = Vec::new();
        db.scan(start, |k, v| {
            got.push(format!(
                "{}={}",
                String::from_utf8_lossy(k),
                String::from_utf8_lossy(v)
            ));
            Ok(true)
        })
        .unwrap();
        got
    };
    assert_eq!(
        collect(Start::First),
        ["0=zero", "1=one", "10=ten", "2=two"]
    );
    assert_eq!(
        collect(Start::AtOrAfter(b"1")),
        ["1=one", "10=ten", "2=two"]
    );
    assert_eq!(collect(Start::After(b"1")), ["10=ten", "2=two"]);
    assert_eq!(collect(Start::AtOrAfter(b"11")), ["2=two"]);
    assert!(collect(Start::After(b"2")).is_empty());

    // Early stop and error propagation from the visitor.
    let mut seen = 0;
    db.scan(Start::First, |_, _| {
        seen += 1;
        Ok(seen < 2)
    })
    .unwrap();
    assert_eq!(seen, 2);
    let e = db
        .scan(Start::First, |_, _| {
            Err(DataError::Config("stop here".into()))
        })
        .unwrap_err();
    assert!(e.to_string().contains("stop here"));
}

#[test]
fn chunked_iteration_over_many_records() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("db");
    // 300 records (several internal chunks of 64), values of varying length.
    let recs: Vec<(Vec<u8>, Vec<u8>)> = (0..300)
        .map(|i| {
            (
                format!("{i:08}_k").into_bytes(),
                vec![(i % 251) as u8; 1 + (i * 37) % 5000],
            )
        })
        .collect();
    write_records(&out, &recs, false).unwrap();
    let db = Lmdb::open(&out).unwrap();
    assert_eq!(db.len().unwrap(), 300);
    let got: Vec<(Vec<u8>, Vec<u8>)> = db.iter().map(|r| r.unwrap()).collect();
    assert_eq!(got, recs);
    let from: Vec<Vec<u8>> = db.iter_from(b"00000123").map(|r| r.unwrap().0).collect();
    assert_eq!(from.len(), 300 - 123);
    assert_eq!(from[0], b"00000123_k".to_vec());
    assert_eq!(from[64], b"00000187_k".to_vec());
}

#[test]
fn lock_free_reading_of_a_folder_without_lock_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("db");
    write_records(&out, &[kv("a", "1"), kv("b", "2")], false).unwrap();
    // Caffe-style DBs copied around often lack lock.mdb: reading must not create it.
    let lock = out.join("lock.mdb");
    if lock.exists() {
        std::fs::remove_file(&lock).unwrap();
    }
    let db = Lmdb::open(&out).unwrap();
    assert_eq!(db.get(b"b").unwrap(), Some(b"2".to_vec()));
    drop(db);
    assert!(!lock.exists());
}

#[test]
fn empty_database() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("db");
    write_records(&out, &[], false).unwrap();
    let db = Lmdb::open(&out).unwrap();
    assert!(db.is_empty().unwrap());
    assert_eq!(db.iter().count(), 0);
    assert_eq!(detect_db_format(&db).unwrap(), RecordFormat::Datum);
}

/// A truncated `data.mdb` (liblmdb would map it and fault with SIGBUS on the first page past
/// its end) is refused at open with a message that says so and names the file; the full copy
/// still opens and reads every record. Each truncation in its own folder (this process keeps
/// one environment per path).
#[test]
fn truncated_data_file_is_an_error_not_a_fault() {
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    // Values of 3 KB: most records need their own overflow pages.
    let recs: Vec<(Vec<u8>, Vec<u8>)> = (0..60)
        .map(|i| (format!("{i:04}").into_bytes(), vec![i as u8; 3000]))
        .collect();
    write_records(&full, &recs, false).unwrap();
    let bytes = std::fs::read(full.join("data.mdb")).unwrap();
    assert!(bytes.len() > 64 << 10, "{} bytes", bytes.len());
    let db = Lmdb::open(&full).unwrap();
    assert_eq!(db.len().unwrap(), 60);
    let mut n = 0;
    db.scan(Start::First, |_, v| {
        assert_eq!(v.len(), 3000);
        n += 1;
        Ok(true)
    })
    .unwrap();
    assert_eq!(n, 60);
    for (i, keep) in [
        0,
        100,
        4096,
        8192,
        12288,
        bytes.len() / 2,
        bytes.len() - 4096,
    ]
    .into_iter()
    .enumerate()
    {
        let dir = tmp.path().join(format!("cut{i}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("data.mdb"), &bytes[..keep]).unwrap();
        let err = match Lmdb::open(&dir) {
            Ok(db) => panic!("{keep} bytes opened: {:?} records", db.len()),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("truncated") && err.contains(&format!("cut{i}")),
            "{keep} bytes: {err}"
        );
        // The single-file form (the data file named directly) is checked too.
        let err = Lmdb::open(dir.join("data.mdb")).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{keep} bytes: {err}");
    }
}

/// The record format is a vote over the first records: one TensorProtos record among
/// Datums (first in key order) does not make every Datum a bad record.
#[test]
fn format_is_voted_over_the_first_records() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("db");
    let png = {
        let img = image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([x as u8, y as u8, 5]));
        let mut buf = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut buf, image::ImageFormat::Png)
            .unwrap();
        buf.into_inner()
    };
    let mut records = vec![(
        b"000_odd".to_vec(),
        data::record::tensor_protos_encoded(&png, 1).unwrap(),
    )];
    for k in 1..5 {
        records.push((
            format!("{k:03}_ok").into_bytes(),
            data::record::datum_encoded(&png, k).unwrap(),
        ));
    }
    write_records(&out, &records, false).unwrap();
    let db = Lmdb::open(&out).unwrap();
    assert_eq!(detect_db_format(&db).unwrap(), RecordFormat::Datum);
    // One of each: a tie goes to the first seen.
    let out2 = tmp.path().join("db2");
    write_records(
        &out2,
        &records[..1]
            .iter()
            .chain(&records[1..2])
            .cloned()
            .collect::<Vec<_>>(),
        false,
    )
    .unwrap();
    let db2 = Lmdb::open(&out2).unwrap();
    assert_eq!(detect_db_format(&db2).unwrap(), RecordFormat::TensorProtos);
}
