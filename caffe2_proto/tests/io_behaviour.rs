//! Format detection, fallback, error messages, atomic writes and wire-encoding details.
//! Self-contained: no shared assets needed.

use std::path::Path;

use caffe2_proto::io::{self, Format, ProtoError};
use caffe2_proto::{
    format_for_path, tensor_proto::DataType, Argument, Message, NetDef, OperatorDef, QTensorProto,
    TensorProto, TensorProtos,
};

fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"))
}

fn sample_net() -> NetDef {
    let mut net = NetDef::new();
    net.set_name("sample".into());
    let mut op = OperatorDef::new();
    op.set_type("Int8GivenTensorFill".into());
    op.output = vec!["w".into()];
    for (name, f) in [("Y_scale", f32::MAX), ("tiny", 1e-45), ("neg_zero", -0.0)] {
        let mut a = Argument::new();
        a.set_name(name.into());
        a.set_f(f);
        op.arg.push(a);
    }
    let mut values = Argument::new();
    values.set_name("values".into());
    values.set_s((0..=255u8).rev().collect());
    op.arg.push(values);
    let mut floats = Argument::new();
    floats.set_name("floats".into());
    floats.floats = vec![
        -f32::MAX,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MIN_POSITIVE,
        0.1,
    ];
    floats.ints = vec![i64::MIN, -1, 0, i64::MAX];
    op.arg.push(floats);
    net.op.push(op);
    net.external_output = vec!["w".into()];
    net
}

fn err_text<T>(r: Result<T, ProtoError>) -> (ProtoError, String) {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => {
            let s = e.to_string();
            (e, s)
        }
    }
}

#[test]
fn write_and_read_both_formats() {
    let dir = tmpdir();
    let net = sample_net();
    for (file, format) in [("n.pb", Format::Binary), ("n.pbtxt", Format::Text)] {
        let p = dir.path().join(file);
        assert_eq!(format_for_path(&p), format);
        io::write_net(&net, &p, format).unwrap_or_else(|e| panic!("{e}"));
        let (back, detected) = io::read_net(&p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(detected, format, "{file}");
        assert_eq!(back, net, "{file}");
    }
    // The text file really is text with the awkward values spelled out.
    let txt = std::fs::read_to_string(dir.path().join("n.pbtxt")).unwrap_or_default();
    for needle in [
        "f: 3.4028235e38",
        "f: 1e-45",
        "f: -0\n",
        "floats: -inf",
        "s: \"\\377\\376",
    ] {
        assert!(txt.contains(needle), "{needle} missing in\n{txt}");
    }
    // NaN keeps its sign through text.
    let mut a = Argument::new();
    a.floats = vec![f32::NAN, -f32::NAN];
    let bytes = io::to_bytes(&a, Format::Text).unwrap_or_else(|e| panic!("{e}"));
    let back: Argument = io::parse_as(&bytes, Format::Text, Path::new("x")).unwrap_or_default();
    assert!(back.floats[0].is_nan() && back.floats[0].is_sign_positive());
    assert!(back.floats[1].is_nan() && back.floats[1].is_sign_negative());
}

#[test]
fn tensor_helpers_round_trip() {
    let dir = tmpdir();
    let mut t = TensorProto::new();
    t.set_name("x".into());
    t.set_data_type(DataType::FLOAT);
    t.dims = vec![2, 2];
    t.float_data = vec![1.0, -2.5, f32::MAX, 1e-40];
    let mut ts = TensorProtos::new();
    ts.protos = vec![t.clone(), t.clone()];
    ts.protos[1].set_data_type(DataType::INT32);
    ts.protos[1].int32_data = vec![i32::MIN, -1, 0, i32::MAX];
    for format in [Format::Binary, Format::Text] {
        let p = dir.path().join("t");
        io::write_tensor(&t, &p, format).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(io::read_tensor(&p).ok(), Some((t.clone(), format)));
        io::write_tensors(&ts, &p, format).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(io::read_tensors(&p).ok(), Some((ts.clone(), format)));
    }
}

#[test]
fn printable_binary_is_detected_by_fallback() {
    // A NetDef holding only a name of length L is "\n" + byte L + name: all printable for
    // L in 32..=126, so it can look like text (or, for L = 35 '#', like a comment).
    for len in 1..=126usize {
        let mut net = NetDef::new();
        net.set_name("abcdefghij".repeat(13)[..len].to_string());
        let bytes = net.write_to_bytes().unwrap_or_default();
        assert_eq!(bytes[1] as usize, len);
        let (back, format) = io::parse::<NetDef>(&bytes, Path::new("mem"))
            .unwrap_or_else(|e| panic!("len {len}: {e}"));
        assert_eq!(format, Format::Binary, "len {len}");
        assert_eq!(back, net, "len {len}");
    }
    // Name starting like a field ("name:"), length 0x61 = 'a'.
    let mut net = NetDef::new();
    net.set_name(format!("name: {}", "x".repeat(0x61 - 6)));
    let bytes = net.write_to_bytes().unwrap_or_default();
    assert_eq!(&bytes[..2], b"\na");
    assert_eq!(io::detect_format(&bytes), Format::Text);
    let parsed = io::parse::<NetDef>(&bytes, Path::new("mem")).ok();
    assert_eq!(parsed, Some((net, Format::Binary)));
}

#[test]
fn detection_rules() {
    assert_eq!(io::detect_format(b"name: \"x\""), Format::Text);
    assert_eq!(io::detect_format(b"# c\n  op {}"), Format::Text);
    assert_eq!(io::detect_format(b"\n\x05hello\x12\x00"), Format::Binary);
    assert_eq!(io::detect_format(b"\xff\xfe"), Format::Binary);
    // Text with raw non-UTF-8 bytes in a bytes literal: looks binary, reads as text.
    let text = b"# values\nop { arg { name: \"values\" s: \"\x80\xff\" } }";
    let (net, format) =
        io::parse::<NetDef>(text, Path::new("t.pbtxt")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(format, Format::Text);
    assert_eq!(net.op[0].arg[0].s(), [0x80, 0xff]);
}

#[test]
fn empty_and_blank_files() {
    let dir = tmpdir();
    for (name, content) in [
        ("empty.pb", &b""[..]),
        ("blank.pbtxt", b"  \n\t\n"),
        ("c.pbtxt", b"# only\n# comments\n"),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap_or_else(|e| panic!("{e}"));
        let (e, msg) = err_text(io::read_net(&p));
        assert!(matches!(e, ProtoError::Empty { .. }), "{name}: {msg}");
        assert!(msg.starts_with(&p.display().to_string()), "{msg}");
        assert!(msg.contains("empty") && msg.contains("NetDef"), "{msg}");
    }
    // Explicit-format parsing accepts empty input: it is the empty message.
    assert_eq!(
        io::parse_as::<NetDef>(b"", Format::Binary, Path::new("x")).ok(),
        Some(NetDef::new())
    );
}

#[test]
fn missing_file() {
    let p = tmpdir().path().join("nope/predict_net.pb");
    let (e, msg) = err_text(io::read_net(&p));
    assert!(matches!(e, ProtoError::Io { .. }), "{msg}");
    assert!(msg.starts_with(&p.display().to_string()), "{msg}");
    assert!(
        msg.contains("cannot read") && msg.contains("No such file"),
        "{msg}"
    );
}

#[test]
fn truncated_binary() {
    let bytes = sample_net().write_to_bytes().unwrap_or_default();
    let dir = tmpdir();
    let p = dir.path().join("cut.pb");
    // (A 1-byte cut is "\n", which reads as an empty text file.)
    // Every cut inside the data fails with a binary-format error naming the file.
    for cut in [2, 3, 10, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&p, &bytes[..cut]).unwrap_or_else(|e| panic!("{e}"));
        let (e, msg) = err_text(io::read_net(&p));
        assert!(
            msg.starts_with(&p.display().to_string()),
            "cut {cut}: {msg}"
        );
        match e {
            ProtoError::Parse { format, .. } => assert_eq!(format, Format::Binary, "{msg}"),
            ProtoError::Unrecognized { first, .. } => assert_eq!(first, Format::Binary, "{msg}"),
            other => panic!("cut {cut}: {other}"),
        }
        assert!(msg.contains("truncated"), "cut {cut}: {msg}");
    }
}

#[test]
fn garbage_text() {
    let dir = tmpdir();
    let p = dir.path().join("bad.pbtxt");
    std::fs::write(
        &p,
        "name: \"net\"\nop {\n  type: \"Relu\"\n  inputt: \"x\"\n}\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let (e, msg) = err_text(io::read_net(&p));
    assert!(
        matches!(
            e,
            ProtoError::Unrecognized {
                first: Format::Text,
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.starts_with(&p.display().to_string()), "{msg}");
    assert!(
        msg.contains("line 4, column 3") && msg.contains("no field named `inputt`"),
        "{msg}"
    );
    std::fs::write(&p, "this is { not a net").unwrap_or_else(|e| panic!("{e}"));
    let (_, msg) = err_text(io::read_net(&p));
    assert!(msg.contains("not a valid NetDef in either format"), "{msg}");
}

#[test]
fn required_fields_are_checked_on_write() {
    let mut net = NetDef::new();
    let mut op = OperatorDef::new();
    let mut arg = Argument::new();
    let mut q = QTensorProto::new();
    q.set_precision(8);
    q.set_scale(0.5);
    q.set_bias(0.0);
    arg.qtensors.push(q.clone());
    op.arg.push(arg);
    net.op.push(op);
    let dir = tmpdir();
    let p = dir.path().join("q.pb");
    let (e, msg) = err_text(io::write_net(&net, &p, Format::Binary));
    assert!(matches!(e, ProtoError::Serialize { .. }), "{msg}");
    assert!(msg.contains("op[0].arg[0].qtensors[0].is_signed"), "{msg}");
    assert!(!p.exists());
    net.op[0].arg[0].qtensors[0].set_is_signed(false);
    for format in [Format::Binary, Format::Text] {
        io::write_net(&net, &p, format).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(io::read_net(&p).ok(), Some((net.clone(), format)));
    }
}

#[test]
fn atomic_write_replaces_and_leaves_no_temp_files() {
    let dir = tmpdir();
    let p = dir.path().join("net.pb");
    std::fs::write(&p, b"old").unwrap_or_else(|e| panic!("{e}"));
    io::write_net(&sample_net(), &p, Format::Binary).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(io::read_net(&p).ok().map(|(n, _)| n), Some(sample_net()));
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(names, ["net.pb"]);
    // Writing into a missing folder fails cleanly and names the file.
    let bad = dir.path().join("missing/net.pb");
    let (e, msg) = err_text(io::write_net(&NetDef::new(), &bad, Format::Binary));
    assert!(matches!(e, ProtoError::Io { .. }), "{msg}");
    assert!(
        msg.starts_with(&bad.display().to_string()) && msg.contains("cannot write"),
        "{msg}"
    );
    // A directory cannot be replaced by a file.
    let (_, msg) = err_text(io::write_net(&NetDef::new(), dir.path(), Format::Binary));
    assert!(msg.starts_with(&dir.path().display().to_string()), "{msg}");
}

#[test]
fn format_for_path_rules() {
    for (p, f) in [
        ("a.pbtxt", Format::Text),
        ("a.PBTXT", Format::Text),
        ("dir.pb/a.prototxt", Format::Text),
        ("a.txt", Format::Text),
        ("a.pb", Format::Binary),
        ("a", Format::Binary),
        ("a.pbtxt.pb", Format::Binary),
    ] {
        assert_eq!(format_for_path(p), f, "{p}");
    }
}

#[test]
fn packed_and_unpacked_encodings() {
    // TensorProto.float_data (field 3) is [packed = true]. Packed: tag 0x1a, length, data.
    let one = 1.0f32.to_le_bytes();
    let two = 2.0f32.to_le_bytes();
    let mut packed = vec![0x1a, 8];
    packed.extend(one);
    packed.extend(two);
    // The same values unpacked: tag 0x1d (field 3, fixed32) before each value.
    let mut unpacked = vec![0x1d];
    unpacked.extend(one);
    unpacked.push(0x1d);
    unpacked.extend(two);
    let a = TensorProto::parse_from_bytes(&packed).unwrap_or_default();
    let b = TensorProto::parse_from_bytes(&unpacked).unwrap_or_default();
    assert_eq!(a.float_data, [1.0, 2.0]);
    assert_eq!(b, a);
    // Both are written back packed: byte identity holds for schema-conforming files only.
    assert_eq!(a.write_to_bytes().ok(), Some(packed.clone()));
    assert_eq!(b.write_to_bytes().ok(), Some(packed));

    // Argument.ints (field 6) is not packed. Unpacked: tag 0x30 before each varint.
    let unpacked_ints = vec![0x30, 0x03, 0x30, 0x96, 0x01];
    let packed_ints = vec![0x32, 0x03, 0x03, 0x96, 0x01];
    let a = Argument::parse_from_bytes(&unpacked_ints).unwrap_or_default();
    let b = Argument::parse_from_bytes(&packed_ints).unwrap_or_default();
    assert_eq!(a.ints, [3, 150]);
    assert_eq!(b, a);
    assert_eq!(a.write_to_bytes().ok(), Some(unpacked_ints.clone()));
    assert_eq!(b.write_to_bytes().ok(), Some(unpacked_ints));
}

#[test]
fn negative_varints_use_ten_bytes_like_cpp() {
    // DeviceOption.device_type (int32) = -1: sign-extended 10-byte varint, as C++ writes.
    let wire = [
        0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
    ];
    let d = caffe2_proto::DeviceOption::parse_from_bytes(&wire).unwrap_or_default();
    assert_eq!(d.device_type(), -1);
    assert_eq!(d.write_to_bytes().ok().as_deref(), Some(&wire[..]));
}

/// A folder, a device and a missing file are refused before any reading, each with the
/// path and one plain reason (`/dev/zero` used to be read for gigabytes).
#[test]
fn non_files_are_refused_before_reading() {
    use caffe2_proto::NetDef;
    let dir = tempfile::tempdir().unwrap();
    let err = caffe2_proto::io::read::<NetDef>(dir.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("folder"), "{err}");
    #[cfg(unix)]
    {
        let err = caffe2_proto::io::read::<NetDef>("/dev/zero")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/dev/zero") && err.contains("not a regular file"),
            "{err}"
        );
    }
    let missing = dir.path().join("nope.pb");
    let err = caffe2_proto::io::read::<NetDef>(&missing)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope.pb"), "{err}");
}
