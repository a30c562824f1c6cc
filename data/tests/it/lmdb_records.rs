//! Record formats: detection, parsing (Datum / TensorProtos, encoded / raw, colour / gray),
//! errors naming the key, and the exact bytes of the record writers.

use caffe2_proto::tensor_proto::DataType;
use caffe2_proto::{Datum, Message, TensorProto, TensorProtos};
use data::image::Image;
use data::record::{
    datum_encoded, datum_raw, detect_format, parse_record, tensor_protos_encoded,
    tensor_protos_raw, Label, Payload, RecordFormat,
};
use data::DataError;

fn raw_image(rec: data::record::Record) -> Image {
    match rec.payload {
        Payload::Raw(img) => img,
        Payload::Encoded(_) => panic!("expected raw"),
    }
}

#[test]
fn writer_bytes_match_hand_encoded_wire_format() {
    // Datum{data="abc", label=7, encoded=true}: fields 4 (len), 5 (varint), 7 (varint).
    assert_eq!(
        datum_encoded(b"abc", 7).unwrap(),
        vec![0x22, 3, b'a', b'b', b'c', 0x28, 7, 0x38, 1]
    );
    // TensorProtos{[STRING dims [1] "ab", INT32 dims [1] int32_data [5] (packed)]}.
    let img = [0x08, 1, 0x10, 4, 0x32, 2, b'a', b'b'];
    let lab = [0x08, 1, 0x10, 2, 0x22, 1, 5];
    let mut expected = vec![0x0a, img.len() as u8];
    expected.extend_from_slice(&img);
    expected.push(0x0a);
    expected.push(lab.len() as u8);
    expected.extend_from_slice(&lab);
    assert_eq!(tensor_protos_encoded(b"ab", 5).unwrap(), expected);
}

#[test]
fn detection_by_wire_structure() {
    let enc = datum_encoded(b"\xff\xd8jpeg", 3).unwrap();
    assert_eq!(detect_format(&enc, "k").unwrap(), RecordFormat::Datum);
    let img = Image {
        height: 1,
        width: 2,
        channels: 3,
        data: vec![1, 2, 3, 4, 5, 6],
    };
    let raw = datum_raw(&img, 1).unwrap();
    assert_eq!(detect_format(&raw, "k").unwrap(), RecordFormat::Datum);
    let tp = tensor_protos_encoded(b"png", 1).unwrap();
    assert_eq!(detect_format(&tp, "k").unwrap(), RecordFormat::TensorProtos);
    let tpr = tensor_protos_raw(&img, 1).unwrap();
    assert_eq!(
        detect_format(&tpr, "k").unwrap(),
        RecordFormat::TensorProtos
    );
    // A Datum with only the label set (field 5) still reads as a Datum.
    assert_eq!(detect_format(&[0x28, 9], "k").unwrap(), RecordFormat::Datum);

    // Truncated length-delimited field, empty value, group wire type.
    for (bad, what) in [
        (vec![0x22, 10, 1, 2], "malformed"),
        (vec![], "empty"),
        (vec![0x0b, 0x0c], "malformed"),
    ] {
        let e = detect_format(&bad, "00000042_bad.jpg").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("00000042_bad.jpg"), "{msg}");
        assert!(msg.contains(what), "{msg}");
    }
    // Well-formed protobuf that is neither: field 2 as length-delimited.
    let e = detect_format(&[0x12, 1, 0], "kk").unwrap_err();
    assert!(e.to_string().contains("neither"), "{e}");
}

#[test]
fn datum_raw_chw_to_bgr_hwc() {
    // Hand-built raw Datum: 3 channels, 2 rows, 2 cols, planes B, G, R.
    let mut d = Datum::new();
    d.set_channels(3);
    d.set_height(2);
    d.set_width(2);
    d.set_data(vec![
        1, 2, 3, 4, // B plane
        10, 20, 30, 40, // G plane
        100, 110, 120, 130, // R plane
    ]);
    d.set_label(42);
    let bytes = d.write_to_bytes().unwrap();
    let rec = parse_record(&bytes, RecordFormat::Datum, "key").unwrap();
    assert_eq!(rec.label, Label::Int(42));
    let img = raw_image(rec);
    assert_eq!((img.height, img.width, img.channels), (2, 2, 3));
    assert_eq!(
        img.data,
        vec![1, 10, 100, 2, 20, 110, 3, 30, 120, 4, 40, 130]
    );
    // And our writer produces the same planes back.
    let again = datum_raw(&img, 42).unwrap();
    let d2 = Datum::parse_from_bytes(&again).unwrap();
    assert_eq!(d2.data(), d.data());
    assert_eq!((d2.channels(), d2.height(), d2.width()), (3, 2, 2));
    assert!(!d2.encoded());
}

#[test]
fn datum_raw_gray_is_replicated() {
    let mut d = Datum::new();
    d.set_channels(1);
    d.set_height(1);
    d.set_width(3);
    d.set_data(vec![5, 6, 7]);
    let rec = parse_record(&d.write_to_bytes().unwrap(), RecordFormat::Datum, "g").unwrap();
    assert_eq!(rec.label, Label::Int(0));
    let img = raw_image(rec);
    assert_eq!(img.channels, 3);
    assert_eq!(img.data, vec![5, 5, 5, 6, 6, 6, 7, 7, 7]);
}

#[test]
fn datum_errors_name_the_key() {
    let key = "00000007_x.jpg";
    let mut d = Datum::new();
    d.float_data = vec![1.0, 2.0];
    d.set_channels(1);
    let e = parse_record(&d.write_to_bytes().unwrap(), RecordFormat::Datum, key).unwrap_err();
    assert!(matches!(e, DataError::Record { .. }));
    let msg = e.to_string();
    assert!(msg.contains(key), "{msg}");
    assert!(
        msg.contains("float_data Datum records are not supported"),
        "{msg}"
    );

    let mut d = Datum::new();
    d.set_channels(2);
    d.set_height(1);
    d.set_width(1);
    d.set_data(vec![1, 2]);
    let e = parse_record(&d.write_to_bytes().unwrap(), RecordFormat::Datum, key).unwrap_err();
    assert!(e.to_string().contains("1 or 3 channels"), "{e}");

    let mut d = Datum::new();
    d.set_channels(3);
    d.set_height(2);
    d.set_width(2);
    d.set_data(vec![0; 11]);
    let e = parse_record(&d.write_to_bytes().unwrap(), RecordFormat::Datum, key).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("12") && msg.contains("11") && msg.contains(key),
        "{msg}"
    );

    let mut d = Datum::new();
    d.set_encoded(true);
    let e = parse_record(&d.write_to_bytes().unwrap(), RecordFormat::Datum, key).unwrap_err();
    assert!(e.to_string().contains("no data"), "{e}");

    // Format mismatch is explained.
    let tp = tensor_protos_encoded(b"x", 1).unwrap();
    let e = parse_record(&tp, RecordFormat::Datum, key).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("tensorprotos") && msg.contains(key), "{msg}");
}

fn tensor(dt: DataType) -> TensorProto {
    let mut t = TensorProto::new();
    t.set_data_type(dt);
    t
}

fn protos(ts: Vec<TensorProto>) -> Vec<u8> {
    let mut tp = TensorProtos::new();
    tp.protos = ts;
    tp.write_to_bytes().unwrap()
}

fn int_label(v: i32) -> TensorProto {
    let mut t = tensor(DataType::INT32);
    t.int32_data = vec![v];
    t
}

#[test]
fn tensor_protos_encoded_and_labels() {
    let bytes = tensor_protos_encoded(b"\x89PNG...", 17).unwrap();
    let rec = parse_record(&bytes, RecordFormat::TensorProtos, "k").unwrap();
    assert_eq!(rec.label, Label::Int(17));
    assert_eq!(rec.payload, Payload::Encoded(b"\x89PNG...".to_vec()));

    let mut img = tensor(DataType::STRING);
    img.string_data = vec![b"abc".to_vec()];
    let mut lab = tensor(DataType::FLOAT);
    lab.float_data = vec![2.5];
    let rec = parse_record(
        &protos(vec![img.clone(), lab]),
        RecordFormat::TensorProtos,
        "k",
    )
    .unwrap();
    assert_eq!(rec.label, Label::Float(2.5));
    assert_eq!(rec.label.as_i64(), 3);
    assert_eq!(Label::Float(2.4).as_i64(), 2);
    assert_eq!(Label::Float(-1.6).as_i64(), -2);
    assert_eq!(Label::Int(-4).as_f32(), -4.0);
}

#[test]
fn tensor_protos_raw_hwc_colour_and_gray() {
    let mut t = tensor(DataType::BYTE);
    t.dims = vec![1, 2, 3];
    t.set_byte_data(vec![1, 2, 3, 4, 5, 6]);
    let rec = parse_record(
        &protos(vec![t, int_label(9)]),
        RecordFormat::TensorProtos,
        "k",
    )
    .unwrap();
    assert_eq!(rec.label, Label::Int(9));
    let img = raw_image(rec);
    assert_eq!((img.height, img.width, img.channels), (1, 2, 3));
    assert_eq!(img.data, vec![1, 2, 3, 4, 5, 6]);

    // [H, W] gray, and [H, W, 1].
    for dims in [vec![2, 1], vec![2, 1, 1]] {
        let mut t = tensor(DataType::BYTE);
        t.dims = dims;
        t.set_byte_data(vec![8, 9]);
        let img = raw_image(
            parse_record(
                &protos(vec![t, int_label(0)]),
                RecordFormat::TensorProtos,
                "k",
            )
            .unwrap(),
        );
        assert_eq!((img.height, img.width, img.channels), (2, 1, 3));
        assert_eq!(img.data, vec![8, 8, 8, 9, 9, 9]);
    }

    // Writer round trip.
    let img = Image {
        height: 2,
        width: 1,
        channels: 3,
        data: vec![9, 8, 7, 6, 5, 4],
    };
    let back = tensor_protos_raw(&img, 3).unwrap();
    let tp = TensorProtos::parse_from_bytes(&back).unwrap();
    assert_eq!(tp.protos[0].dims, vec![2, 1, 3]);
    assert_eq!(tp.protos[0].data_type(), DataType::BYTE);
    assert_eq!(tp.protos[1].int32_data, vec![3]);
    let rec = parse_record(&back, RecordFormat::TensorProtos, "k").unwrap();
    assert_eq!(raw_image(rec), img);
}

#[test]
fn tensor_protos_errors_name_the_key() {
    let key = "00000003_broken";
    let check = |bytes: Vec<u8>, needle: &str| {
        let e = parse_record(&bytes, RecordFormat::TensorProtos, key).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(key), "{msg}");
        assert!(msg.contains(needle), "expected `{needle}` in: {msg}");
    };
    let mut s = tensor(DataType::STRING);
    s.string_data = vec![b"x".to_vec()];
    // Missing label.
    check(protos(vec![s.clone()]), "1 tensor");
    // Two strings.
    let mut s2 = s.clone();
    s2.string_data.push(b"y".to_vec());
    check(protos(vec![s2, int_label(1)]), "exactly one string");
    // FLOAT image (the proto2 default type).
    check(protos(vec![TensorProto::new(), int_label(1)]), "STRING");
    // BYTE with wrong size.
    let mut b = tensor(DataType::BYTE);
    b.dims = vec![2, 2, 3];
    b.set_byte_data(vec![0; 5]);
    check(protos(vec![b, int_label(1)]), "needs 12 bytes");
    // BYTE with 4 channels / bad dims.
    let mut b = tensor(DataType::BYTE);
    b.dims = vec![1, 1, 4];
    b.set_byte_data(vec![0; 4]);
    check(protos(vec![b, int_label(1)]), "1 or 3 channels");
    let mut b = tensor(DataType::BYTE);
    b.dims = vec![4];
    check(protos(vec![b, int_label(1)]), "dims");
    // Label with two values, INT64 label, non-finite float label.
    let mut l = int_label(1);
    l.int32_data.push(2);
    check(protos(vec![s.clone(), l]), "exactly one value");
    check(
        protos(vec![s.clone(), tensor(DataType::INT64)]),
        "INT32 or FLOAT",
    );
    let mut f = tensor(DataType::FLOAT);
    f.float_data = vec![f32::NAN];
    check(protos(vec![s.clone(), f]), "not finite");
    // Datum given to a TensorProtos database.
    check(datum_encoded(b"jpg", 1).unwrap(), "datum");
}

#[test]
fn format_names_parse() {
    assert_eq!(
        "datum".parse::<RecordFormat>().unwrap(),
        RecordFormat::Datum
    );
    assert_eq!(
        "Caffe2".parse::<RecordFormat>().unwrap(),
        RecordFormat::TensorProtos
    );
    assert!("leveldb".parse::<RecordFormat>().is_err());
    assert_eq!(RecordFormat::TensorProtos.to_string(), "tensorprotos");
}
