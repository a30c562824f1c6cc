//! Round trips of the real Caffe2 nets and tensors in `../shared` (skipped when absent).

use std::path::{Path, PathBuf};

use caffe2_proto::io::{self, Format};
use caffe2_proto::{text, Message, NetDef, TensorProto};

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared");

/// The path of a shared model file, or `None` (with a message) when `../shared` is absent.
fn shared(rel: &str) -> Option<PathBuf> {
    let p = Path::new(SHARED).join("models").join(rel);
    if p.exists() {
        Some(p)
    } else {
        println!("skipped: {} not found (../shared is absent)", p.display());
        None
    }
}

fn read_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn read_net(p: &Path) -> (NetDef, Format) {
    io::read_net(p).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn binary_nets_are_byte_identical_after_a_round_trip() {
    for rel in [
        "squeezenet1_1/predict_net.pb",
        "squeezenet1_1/init_net.pb",
        "resnet50_quantized/predict_net.pb",
    ] {
        let Some(p) = shared(rel) else { return };
        let original = read_bytes(&p);
        let (net, format) = read_net(&p);
        assert_eq!(format, Format::Binary, "{rel}");
        assert!(!net.op.is_empty(), "{rel}");
        let again = io::to_bytes(&net, Format::Binary).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.len(), original.len(), "{rel}");
        assert!(again == original, "{rel}: re-encoded bytes differ");
        // Through a file, via the atomic writer.
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let out = dir.path().join("copy.pb");
        io::write_net(&net, &out, io::format_for_path(&out)).unwrap_or_else(|e| panic!("{e}"));
        assert!(read_bytes(&out) == original, "{rel}: written file differs");
    }
}

#[test]
fn text_nets_parse_and_round_trip() {
    // (file, op count, first op type, last op type)
    let cases = [
        ("resnet50/predict_net.pbtxt", 175, "Conv", "Softmax"),
        ("resnet50/init_net.pbtxt", 267, "MSRAFill", "ConstantFill"),
        (
            "resnet50_quantized/predict_net.pbtxt",
            76,
            "NCHW2NHWC",
            "Softmax",
        ),
        ("squeezenet1_1/predict_net.pbtxt", 66, "Conv", "Softmax"),
    ];
    for (rel, n_ops, first, last) in cases {
        let Some(p) = shared(rel) else { return };
        let (net, format) = read_net(&p);
        assert_eq!(format, Format::Text, "{rel}");
        assert_eq!(net.op.len(), n_ops, "{rel}");
        assert_eq!(net.op[0].type_(), first, "{rel}");
        assert_eq!(net.op[n_ops - 1].type_(), last, "{rel}");
        let printed = text::print(&net);
        let back: NetDef = text::parse(printed.as_bytes()).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(back, net, "{rel}");
        // Printing is a fixed point, and the binary form agrees too.
        assert_eq!(text::print(&back), printed, "{rel}");
        assert_eq!(
            back.write_to_bytes().ok(),
            net.write_to_bytes().ok(),
            "{rel}"
        );
    }
}

#[test]
fn text_and_binary_twins_are_equal() {
    for stem in [
        "resnet50_quantized/predict_net",
        "squeezenet1_1/predict_net",
    ] {
        let (Some(pb), Some(txt)) = (
            shared(&format!("{stem}.pb")),
            shared(&format!("{stem}.pbtxt")),
        ) else {
            return;
        };
        let (from_pb, _) = read_net(&pb);
        let (from_txt, _) = read_net(&txt);
        assert_eq!(from_txt, from_pb, "{stem}");
        // Every float in the text agrees bit for bit: re-encoding gives the .pb bytes.
        let bytes = io::to_bytes(&from_txt, Format::Binary).unwrap_or_else(|e| panic!("{e}"));
        assert!(bytes == read_bytes(&pb), "{stem}");
    }
}

#[test]
fn quantized_net_values_are_read_exactly() {
    let Some(p) = shared("resnet50_quantized/predict_net.pbtxt") else {
        return;
    };
    let (net, _) = read_net(&p);
    let op = &net.op[1];
    assert_eq!(op.type_(), "Int8Quantize");
    assert_eq!(op.engine(), "DNNLOWP");
    let scale = op.arg.iter().find(|a| a.name() == "Y_scale").map(|a| a.f());
    let zero = op
        .arg
        .iter()
        .find(|a| a.name() == "Y_zero_point")
        .map(|a| a.i());
    // The text says 0.0207874; the float nearest to it.
    assert_eq!(scale.map(f32::to_bits), Some(0.0207874f32.to_bits()));
    assert_eq!(zero, Some(128));
}

#[test]
fn big_init_net_survives_text() {
    // 1.2 M real float weights through text and back, bit for bit.
    let Some(p) = shared("squeezenet1_1/init_net.pb") else {
        return;
    };
    let original = read_bytes(&p);
    let (net, _) = read_net(&p);
    let printed = io::to_bytes(&net, Format::Text).unwrap_or_else(|e| panic!("{e}"));
    let (back, format) =
        io::parse::<NetDef>(&printed, Path::new("<printed>")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(format, Format::Text);
    let bytes = io::to_bytes(&back, Format::Binary).unwrap_or_else(|e| panic!("{e}"));
    assert!(bytes == original, "text round trip changed the init net");
}

#[test]
fn golden_tensors_read_and_round_trip() {
    for k in 0..5 {
        let (Some(inp), Some(out)) = (
            shared(&format!("squeezenet1_1/golden/{k}_input.pb")),
            shared(&format!("squeezenet1_1/golden/{k}_output.pb")),
        ) else {
            return;
        };
        let (t_in, f_in) = io::read_tensor(&inp).unwrap_or_else(|e| panic!("{e}"));
        let (t_out, _) = io::read_tensor(&out).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(f_in, Format::Binary);
        assert_eq!(t_in.dims, [1, 3, 224, 224]);
        assert_eq!(t_in.float_data.len(), 3 * 224 * 224);
        assert_eq!(t_out.dims, [1, 1000]);
        assert_eq!(t_out.float_data.len(), 1000);
        assert!(
            t_in.name().starts_with(&format!("{k:08}_")),
            "{}",
            t_in.name()
        );
        // A softmax output: non-negative, sums to 1.
        let sum: f64 = t_out.float_data.iter().map(|&v| f64::from(v)).sum();
        assert!((sum - 1.0).abs() < 1e-4, "sum {sum}");
        assert!(t_out.float_data.iter().all(|&v| v >= 0.0));
        for (t, p) in [(&t_in, &inp), (&t_out, &out)] {
            let again = io::to_bytes(t, Format::Binary).unwrap_or_else(|e| panic!("{e}"));
            assert!(again == read_bytes(p), "{}", p.display());
            let txt = io::to_bytes(t, Format::Text).unwrap_or_else(|e| panic!("{e}"));
            let (back, _) = io::parse::<TensorProto>(&txt, p).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&back, t);
        }
    }
}

#[test]
fn truncated_real_net_is_a_clear_error() {
    let Some(p) = shared("squeezenet1_1/predict_net.pb") else {
        return;
    };
    let bytes = read_bytes(&p);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cut = dir.path().join("cut.pb");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap_or_else(|e| panic!("{e}"));
    let err = io::read_net(&cut).map(|_| ()).err().map(|e| e.to_string());
    let msg = err.unwrap_or_default();
    assert!(msg.starts_with(&cut.display().to_string()), "{msg}");
    assert!(
        msg.contains("binary format") && msg.contains("truncated"),
        "{msg}"
    );
}
