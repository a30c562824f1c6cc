//! make-db: folder and list inputs, both record formats, encoded and raw, then read back
//! (keys, labels, bytes, pixels); atomic replacement and error handling.

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use caffe2_proto::{Datum, Message, TensorProtos};
use data::lmdb::Lmdb;
use data::make_db::{entries_from_folder, make_db, parse_list, record_key, MakeDbOptions, Source};
use data::record::{parse_record, Label, Payload, RecordFormat};
use data::DataError;

/// An RGB image whose pixel (x, y) is (x*20, y*30, x+y) encoded as PNG.
fn pattern_png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 20) as u8, (y * 30) as u8, (x + y) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn flat_jpeg(w: u32, h: u32, rgb: [u8; 3]) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, h, image::Rgb(rgb));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

/// root/classA/{b,a}.png, root/classB/sub/c.jpg, root/classC/d.png, root/top.png, plus
/// ignored entries. Returns (root, expected (name, label) in key order).
fn image_folder(base: &Path) -> (PathBuf, Vec<(&'static str, i32)>) {
    let root = base.join("imgs");
    write(&root.join("classA/b.png"), &pattern_png(8, 12));
    write(&root.join("classA/a.png"), &pattern_png(12, 8));
    write(
        &root.join("classB/sub/c.jpg"),
        &flat_jpeg(16, 10, [10, 20, 30]),
    );
    write(&root.join("classC/d.png"), &pattern_png(9, 9));
    write(&root.join("top.png"), &pattern_png(8, 8));
    write(&root.join(".hidden/x.png"), &pattern_png(8, 8));
    write(&root.join("classA/notes.txt"), b"not an image");
    let expected = vec![
        ("classA/a.png", 0),
        ("classA/b.png", 0),
        ("classB/sub/c.jpg", 1),
        ("classC/d.png", 2),
        ("top.png", 0),
    ];
    (root, expected)
}

fn read_all(path: &Path, format: RecordFormat) -> Vec<(String, data::record::Record)> {
    let db = Lmdb::open(path).unwrap();
    db.iter()
        .map(|r| {
            let (k, v) = r.unwrap();
            let key = String::from_utf8(k).unwrap();
            let rec = parse_record(&v, format, &key).unwrap();
            (key, rec)
        })
        .collect()
}

#[test]
fn folder_listing_order_and_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, expected) = image_folder(tmp.path());
    let entries = entries_from_folder(&root).unwrap();
    let got: Vec<(&str, i32)> = entries.iter().map(|e| (e.name.as_str(), e.label)).collect();
    assert_eq!(got, expected);
    assert_eq!(entries[2].path, root.join("classB/sub/c.jpg"));
    assert_eq!(record_key(42, "a/b.jpg"), "00000042_a/b.jpg");
}

#[test]
fn encoded_round_trip_both_formats() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, expected) = image_folder(tmp.path());
    for format in [RecordFormat::Datum, RecordFormat::TensorProtos] {
        let out = tmp.path().join(format!("db_{format}"));
        let progress = std::cell::Cell::new(0usize);
        let report = |n: usize| progress.set(n);
        let summary = make_db(
            &Source::Folder(root.clone()),
            &out,
            &MakeDbOptions {
                format,
                ..MakeDbOptions::default()
            },
            Some(&report),
        )
        .unwrap();
        assert_eq!(summary.count, 5);
        assert_eq!(progress.get(), 5);
        assert!(out.join("data.mdb").is_file());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(out.join("data.mdb"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o644);
        }
        let recs = read_all(&out, format);
        assert_eq!(recs.len(), 5);
        for (i, ((key, rec), (name, label))) in recs.iter().zip(&expected).enumerate() {
            assert_eq!(key, &format!("{i:08}_{name}"));
            assert_eq!(rec.label, Label::Int(*label));
            let file = fs::read(root.join(name)).unwrap();
            assert_eq!(rec.payload, Payload::Encoded(file), "{key}");
        }
        // No temporary folders left beside the target.
        let leftovers: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
    // The Caffe Datum written is exactly convert_imageset's: data, label, encoded=true.
    let db = Lmdb::open(tmp.path().join("db_datum")).unwrap();
    let v = db.get(b"00000003_classC/d.png").unwrap().unwrap();
    let d = Datum::parse_from_bytes(&v).unwrap();
    assert!(d.encoded() && d.label() == 2 && !d.has_channels());
    let db = Lmdb::open(tmp.path().join("db_tensorprotos")).unwrap();
    let v = db.get(b"00000002_classB/sub/c.jpg").unwrap().unwrap();
    let tp = TensorProtos::parse_from_bytes(&v).unwrap();
    assert_eq!(tp.protos[0].dims, vec![1]);
    assert_eq!(tp.protos[1].dims, vec![1]);
    assert_eq!(tp.protos[1].int32_data, vec![1]);
}

#[test]
fn list_file_tab_and_space_separated() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("r");
    write(&root.join("my dir/img 1.png"), &pattern_png(8, 8));
    write(&root.join("b.png"), &pattern_png(8, 9));
    let list = tmp.path().join("list.txt");
    fs::write(&list, "b.png\t7\r\n\nmy dir/img 1.png 12\n").unwrap();
    let out = tmp.path().join("db");
    let summary = make_db(
        &Source::List {
            list: list.clone(),
            root: root.clone(),
        },
        &out,
        &MakeDbOptions::default(),
        None,
    )
    .unwrap();
    assert_eq!(summary.count, 2);
    let recs = read_all(&out, RecordFormat::Datum);
    assert_eq!(recs[0].0, "00000000_b.png");
    assert_eq!(recs[0].1.label, Label::Int(7));
    assert_eq!(recs[1].0, "00000001_my dir/img 1.png");
    assert_eq!(recs[1].1.label, Label::Int(12));

    // Malformed lines name the list and line number.
    let e = parse_list("a.png 1\nb.png x\n", &root, &list).unwrap_err();
    assert!(e.to_string().contains("list.txt:2"), "{e}");
    let e = parse_list("lonely\n", &root, &list).unwrap_err();
    assert!(e.to_string().contains("list.txt:1"), "{e}");
}

#[test]
fn raw_round_trip_both_formats() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("r");
    // Already at scale 8 on the shorter side: stored pixel-exact.
    write(&root.join("a/exact.png"), &pattern_png(11, 8));
    // Flat colour, 16x24 (h x w) -> 8x12 by area averaging: stays flat.
    let flat = image::RgbImage::from_pixel(24, 16, image::Rgb([40, 90, 200]));
    let mut png = Cursor::new(Vec::new());
    flat.write_to(&mut png, image::ImageFormat::Png).unwrap();
    write(&root.join("b/flat.png"), &png.into_inner());
    for format in [RecordFormat::Datum, RecordFormat::TensorProtos] {
        let out = tmp.path().join(format!("raw_{format}"));
        make_db(
            &Source::Folder(root.clone()),
            &out,
            &MakeDbOptions {
                format,
                raw: Some(8),
                overwrite: false,
            },
            None,
        )
        .unwrap();
        let recs = read_all(&out, format);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].0, "00000000_a/exact.png");
        assert_eq!(recs[1].1.label, Label::Int(1));
        let Payload::Raw(img) = &recs[0].1.payload else {
            panic!("raw expected")
        };
        assert_eq!((img.height, img.width, img.channels), (8, 11, 3));
        for y in 0..8usize {
            for x in 0..11usize {
                let o = (y * 11 + x) * 3;
                // Stored BGR = (x + y, y*30, x*20).
                assert_eq!(
                    &img.data[o..o + 3],
                    &[(x + y) as u8, (y * 30) as u8, (x * 20) as u8],
                    "{format} ({x},{y})"
                );
            }
        }
        let Payload::Raw(img) = &recs[1].1.payload else {
            panic!("raw expected")
        };
        assert_eq!((img.height, img.width), (8, 12));
        assert!(img.data.chunks(3).all(|p| p == [200, 90, 40]));
        // The wire layout is the Caffe / Caffe2 one.
        let db = Lmdb::open(&out).unwrap();
        let v = db.get(b"00000001_b/flat.png").unwrap().unwrap();
        match format {
            RecordFormat::Datum => {
                let d = Datum::parse_from_bytes(&v).unwrap();
                assert_eq!((d.channels(), d.height(), d.width()), (3, 8, 12));
                assert!(!d.encoded());
                // CHW: the whole first plane is blue.
                assert!(d.data()[..96].iter().all(|&b| b == 200));
            }
            RecordFormat::TensorProtos => {
                let tp = TensorProtos::parse_from_bytes(&v).unwrap();
                assert_eq!(tp.protos[0].dims, vec![8, 12, 3]);
            }
        }
    }
}

#[test]
fn existing_targets_and_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, _) = image_folder(tmp.path());
    let out = tmp.path().join("db");
    let src = Source::Folder(root.clone());
    make_db(&src, &out, &MakeDbOptions::default(), None).unwrap();
    let e = make_db(&src, &out, &MakeDbOptions::default(), None).unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    // Overwrite replaces it (now with TensorProtos records).
    let o = MakeDbOptions {
        format: RecordFormat::TensorProtos,
        overwrite: true,
        ..MakeDbOptions::default()
    };
    make_db(&src, &out, &o, None).unwrap();
    let db = Lmdb::open(&out).unwrap();
    assert_eq!(db.len().unwrap(), 5);
    assert_eq!(
        data::batch::detect_db_format(&db).unwrap(),
        RecordFormat::TensorProtos
    );
    drop(db);
    // Never replaces a folder holding other files.
    let e = make_db(&src, &root, &o, None).unwrap_err();
    assert!(e.to_string().contains("refusing"), "{e}");
    assert!(root.join("top.png").is_file());
}

#[test]
fn missing_input_fails_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("l.txt");
    fs::write(&list, "ghost.png 1\n").unwrap();
    let out = tmp.path().join("db");
    let e = make_db(
        &Source::List {
            list,
            root: tmp.path().to_path_buf(),
        },
        &out,
        &MakeDbOptions::default(),
        None,
    )
    .unwrap_err();
    assert!(matches!(e, DataError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("ghost.png"), "{e}");
    assert!(!out.exists());
    let names: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");

    // Raw mode with an undecodable file: the error names the file.
    let root = tmp.path().join("r");
    write(&root.join("bad.png"), b"garbage, not a PNG");
    let e = make_db(
        &Source::Folder(root),
        &out,
        &MakeDbOptions {
            raw: Some(8),
            ..MakeDbOptions::default()
        },
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("bad.png"), "{e}");
    assert!(!out.exists());
    // Empty folder.
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let e = make_db(
        &Source::Folder(empty),
        &out,
        &MakeDbOptions::default(),
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("no images"), "{e}");
}
