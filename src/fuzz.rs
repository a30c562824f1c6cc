//! Fuzzing harnesses: one plain function per target, called by the cargo-fuzz targets in
//! `fuzz/` (nightly, `cargo +nightly fuzz run <target>`) and by `tests/it/fuzz_corpus.rs`,
//! which replays the committed corpus (`fuzz/corpus/<target>/`) on stable Rust. Each
//! harness accepts any bytes: errors are fine, a panic (or an abort) is a finding. Where a
//! property is cheap to state it is asserted too.

use std::collections::HashMap;
use std::path::Path;

use caffe2_proto::{io, Format, NetDef};
use ops::{Tensor, TensorInfo};

use crate::Model;

/// Largest tensor a fuzzed model may run with (the harness skips the run otherwise).
const RUN_MAX_BYTES: u64 = 16 << 20;

/// A binary NetDef: parse it; if it parses, its text form must parse back to the same
/// message.
pub fn net_binary(data: &[u8]) {
    let Ok(net) = io::parse_as::<NetDef>(data, Format::Binary, Path::new("<fuzz>")) else {
        return;
    };
    round_trip_text(&net);
}

/// A text NetDef: parse it; if it parses, printing and parsing again gives the same message.
pub fn net_text(data: &[u8]) {
    let Ok(net) = io::parse_as::<NetDef>(data, Format::Text, Path::new("<fuzz>")) else {
        return;
    };
    round_trip_text(&net);
}

/// The printed text parses back, and printing the result gives the same text; the messages
/// are equal too unless they hold a NaN (text keeps only `nan`/`-nan`, not the payload, and
/// NaN never equals itself).
fn round_trip_text(net: &NetDef) {
    let text = caffe2_proto::text::print(net);
    let back: NetDef = match caffe2_proto::text::parse(text.as_bytes()) {
        Ok(m) => m,
        Err(e) => panic!("printed net does not parse back: {e}\n{text}"),
    };
    let again = caffe2_proto::text::print(&back);
    assert!(
        again == text,
        "printed net prints differently once parsed:\n{text}\n---\n{again}"
    );
    assert!(
        text.contains("nan") || back == *net,
        "printed net parses to another message:\n{text}"
    );
}

/// One LMDB record value (either format): parse, decode, preprocess to a small crop.
pub fn record(data: &[u8]) {
    let pre = data::Preprocess {
        scale: 36,
        crop: 32,
        ..data::Preprocess::default()
    };
    for format in [data::RecordFormat::Datum, data::RecordFormat::TensorProtos] {
        let Ok(rec) = data::record::parse_record(data, format, "fuzz") else {
            continue;
        };
        let Ok(img) = rec.into_image("fuzz") else {
            continue;
        };
        let mut out = vec![0f32; pre.image_len()];
        let _ = pre.apply(&img, &mut out);
    }
}

/// A model: the first two bytes give the length of the init net, the rest after it is the
/// predict net (both binary). Load, infer shapes for a `[1, 3, 8, 8]` input, and run when
/// every inferred tensor is small.
pub fn model(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let n = usize::from(u16::from_le_bytes([data[0], data[1]])).min(data.len() - 2);
    let (init, predict) = data[2..].split_at(n);
    let path = Path::new("<fuzz>");
    let (Ok(init), Ok(predict)) = (
        io::parse_as::<NetDef>(init, Format::Binary, path),
        io::parse_as::<NetDef>(predict, Format::Binary, path),
    ) else {
        return;
    };
    let Ok(model) = Model::from_nets(init, predict) else {
        return;
    };
    let Ok(input) = model.data_input() else {
        return;
    };
    let shape = vec![1, 3, 8, 8];
    let shapes = model.infer(&HashMap::from([(
        input.clone(),
        TensorInfo::f32(shape.clone()),
    )]));
    if shapes.error.is_some() {
        return;
    }
    let small = shapes.per_node.iter().flatten().flatten().all(|i| {
        ops::limits::tensor_bytes(&i.shape, i.dtype.size_of()).is_some_and(|b| b <= RUN_MAX_BYTES)
    });
    if !small {
        return;
    }
    let Ok(exec) = crate::Executor::new(&model, 1) else {
        return;
    };
    let x = Tensor::from_f32(&shape, vec![0.5; 192]);
    let _ = exec.run(HashMap::from([(input, x)]));
}

/// The harness of a target by name (the names of `fuzz/fuzz_targets/*.rs`).
pub fn harness(target: &str) -> Option<fn(&[u8])> {
    match target {
        "net_binary" => Some(net_binary),
        "net_text" => Some(net_text),
        "record" => Some(record),
        "model" => Some(model),
        _ => None,
    }
}

/// The fuzz targets.
pub const TARGETS: [&str; 4] = ["net_binary", "net_text", "record", "model"];
