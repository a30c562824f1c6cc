//! Calibration over an LMDB: histograms cover exactly the activations the executor computes.

use crate::common;

use std::collections::HashMap;
use std::process::Command;

use c2q::demo::{example_image, example_net, EXAMPLE_SIZE};
use c2q::quant::calibrate::{Calibrator, INPUT_OP_TYPE};
use c2q::quant::{read_histogram_file, write_histogram_file, ChooseOptions, QuantKind};
use c2q::{Executor, Model};
use ops::Tensor;

fn make_db(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    let imgs = dir.join("imgs/a");
    std::fs::create_dir_all(&imgs).unwrap();
    for k in 0..n {
        example_image(40 + k as u32, 36, k)
            .save(imgs.join(format!("{k:02}.png")))
            .unwrap();
    }
    let db = dir.join("db");
    let opts = data::MakeDbOptions {
        format: data::RecordFormat::Datum,
        raw: None,
        overwrite: false,
    };
    data::make_db(&data::Source::Folder(dir.join("imgs")), &db, &opts, None).unwrap();
    db
}

#[test]
fn histograms_match_independent_min_max_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let db = make_db(dir.path(), 7);
    let (init, predict) = example_net(11);
    let model = Model::from_nets(init, predict)
        .unwrap()
        .optimized()
        .unwrap()
        .0;
    let pre = data::Preprocess {
        scale: EXAMPLE_SIZE + 4,
        crop: EXAMPLE_SIZE,
        ..data::Preprocess::default()
    };
    let opts = data::BatchOptions {
        batch_size: 3,
        preprocess: pre,
        ..data::BatchOptions::default()
    };
    let exec = Executor::new(&model, 2).unwrap();
    let mut cal = Calibrator::new(&model, 64);
    // Independent: per op output, min and max over every image run one at a time.
    let mut ref_minmax: HashMap<(usize, usize), (f32, f32)> = HashMap::new();
    for b in data::Batches::open(&db, opts).unwrap() {
        let b = b.unwrap();
        let x = Tensor::from_f32(&[b.n, 3, EXAMPLE_SIZE, EXAMPLE_SIZE], b.images.clone());
        cal.run_batch(&exec, HashMap::from([("data".to_string(), x)]), b.n)
            .unwrap();
        for img in b.images.chunks(3 * EXAMPLE_SIZE * EXAMPLE_SIZE) {
            let mut live: HashMap<String, Tensor> = HashMap::from([(
                "data".to_string(),
                Tensor::from_f32(&[1, 3, EXAMPLE_SIZE, EXAMPLE_SIZE], img.to_vec()),
            )]);
            for (i, node) in model.net.nodes.iter().enumerate() {
                let ins: Vec<&Tensor> = node
                    .inputs
                    .iter()
                    .map(|n| live.get(n).or_else(|| model.params.get(n)).unwrap())
                    .collect();
                let outs = node.op().unwrap().eval(&ins).unwrap();
                for (k, t) in outs.iter().enumerate() {
                    let v = t.f32_slice().unwrap();
                    let e = ref_minmax.entry((i, k)).or_insert((f32::MAX, f32::MIN));
                    e.0 = v.iter().cloned().fold(e.0, f32::min);
                    e.1 = v.iter().cloned().fold(e.1, f32::max);
                }
                for (n, t) in node.outputs.iter().zip(outs) {
                    live.insert(n.clone(), t);
                }
            }
        }
    }
    assert_eq!(cal.images, 7);
    let calib = cal.finish(&model);
    // Every op output plus the data input.
    assert_eq!(calib.records.len(), model.net.nodes.len() + 1);
    let shapes = model
        .infer(&HashMap::from([(
            "data".to_string(),
            ops::TensorInfo::f32(vec![1, 3, EXAMPLE_SIZE, EXAMPLE_SIZE]),
        )]))
        .check()
        .unwrap();
    for r in &calib.records {
        if r.op_type.as_deref() == Some(INPUT_OP_TYPE) {
            assert_eq!(r.hist.total(), 7 * 3 * 32 * 32);
            continue;
        }
        let (lo, hi) = ref_minmax[&(r.op_index, r.output_index)];
        assert_eq!((r.hist.min, r.hist.max), (lo, hi), "{}", r.blob_name);
        let per_image: usize =
            shapes.per_node[r.op_index].as_ref().unwrap()[r.output_index].numel();
        assert_eq!(r.hist.total(), 7 * per_image as u64, "{}", r.blob_name);
        assert_eq!(r.hist.counts.len(), 64);
    }
    // Relu-fused outputs are non-negative, so their chosen zero point is 0.
    let chosen = calib
        .choose(&model, &ChooseOptions::new(QuantKind::L2, false))
        .unwrap();
    for (node, qs) in model.net.nodes.iter().zip(&chosen.per_op) {
        if node.op_type.ends_with("Relu") {
            assert_eq!(qs[0].unwrap().zero_point, 0, "{}", node.op_type);
        }
    }
    assert!(chosen.inputs.contains_key("data"));
    // Histogram files round-trip and are checked against the net.
    let f = dir.path().join("h.txt");
    write_histogram_file(&f, &calib.records).unwrap();
    let back = read_histogram_file(&f).unwrap();
    assert_eq!(back, calib.records);
    c2q::quant::check_coverage(&model, &back, &f).unwrap();
    // Written atomically: a second write replaces the file (a new inode from the rename)
    // instead of truncating it in place, and leaves no temporary file beside it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(&f).unwrap().ino();
        write_histogram_file(&f, &calib.records).unwrap();
        assert_ne!(std::fs::metadata(&f).unwrap().ino(), ino);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("h.txt"))
            .collect();
        assert_eq!(names, ["h.txt"]);
    }
    // An empty file and one cut short are refused for this net, naming the file and a
    // convolution without a histogram.
    let text = std::fs::read_to_string(&f).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cut = dir.path().join("cut.txt");
    std::fs::write(&cut, lines[..lines.len() / 3].join("\n")).unwrap();
    let short = read_histogram_file(&cut).unwrap();
    assert!(!short.is_empty());
    let err = c2q::quant::check_coverage(&model, &short, &cut)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cut.txt") && err.contains("no histogram for") && err.contains("Conv"),
        "{err}"
    );
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let none = read_histogram_file(&empty).unwrap_or_default();
    let err = c2q::quant::check_coverage(&model, &none, &empty)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("empty.txt") && err.contains("no histograms"),
        "{err}"
    );
    let (init2, predict2) = example_net(11);
    let unopt = Model::from_nets(init2, predict2).unwrap();
    let calib_unopt = c2q::quant::calibrate::Calibration {
        records: back,
        images: 7,
    };
    let err = calib_unopt
        .choose(&unopt, &ChooseOptions::new(QuantKind::MinMax, false))
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not match"), "{err}");
}

#[test]
fn calibrate_cli_reports_and_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let db = make_db(dir.path(), 4);
    let model = dir.path().join("model");
    c2q::demo::write_example_model(&model, 5).unwrap();
    let hist = dir.path().join("h.txt");
    let run = common::c2q;
    let m = model.to_str().unwrap();
    let (ok, out, err) = run(&[
        "calibrate",
        "--model",
        m,
        "--calib-db",
        db.to_str().unwrap(),
        "--scale",
        "36",
        "--crop",
        "32",
        "--save-hist",
        hist.to_str().unwrap(),
        "--calib-images",
        "3",
        "--json",
    ]);
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["images"], 3);
    assert!(hist.exists());
    let (ok, _, err) = run(&[
        "calibrate",
        "--model",
        m,
        "--calib-db",
        "/nonexistent/db",
        "--scale",
        "36",
        "--crop",
        "32",
    ]);
    assert!(!ok && err.contains("/nonexistent/db"), "{err}");
}

#[test]
fn quantize_then_eval_cli_on_generated_data() {
    let dir = tempfile::tempdir().unwrap();
    let db = make_db(dir.path(), 12);
    let model = dir.path().join("model");
    c2q::demo::write_example_model(&model, 5).unwrap();
    let out = dir.path().join("int8");
    let run = common::c2q;
    let (m, d, o) = (
        model.to_str().unwrap(),
        db.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let pre = ["--scale", "36", "--crop", "32"];
    let mut args = vec![
        "quantize",
        "--model",
        m,
        "--calib-db",
        d,
        "--out",
        o,
        "--json",
    ];
    args.extend(pre);
    let (ok, stdout, err) = run(&args);
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(j["images"], 12);
    assert_eq!(j["kept_fp32"][0]["type"], "Softmax");
    for f in ["init_net.pb", "predict_net.pb", "predict_net.pbtxt"] {
        assert!(out.join(f).exists(), "{f}");
    }
    // Refuses to overwrite an existing model without --overwrite.
    let (ok, _, err) = run(&args);
    assert!(!ok && err.contains("--overwrite"), "{err}");
    // The int8 net loads, keeps the fp32 input/output names, and agrees with fp32 on top-1.
    let int8 = Model::load_dir(&out).unwrap();
    assert_eq!(int8.data_inputs(), vec!["data".to_string()]);
    assert_eq!(int8.outputs(), vec!["softmax".to_string()]);
    assert!(int8.net.nodes.iter().any(|n| n.op_type == "Int8ConvRelu"));
    let mut eargs = vec!["eval", "-m", m, "-m", o, "--db", d, "--json"];
    eargs.extend(pre);
    let (ok, stdout, err) = run(&eargs);
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(j["images"], 12);
    // Wall time = the models' inference time + what the pipeline did not hide.
    let inference: f64 = (0..2)
        .map(|i| j["models"][i]["inference_seconds"].as_f64().unwrap())
        .sum();
    let wall = j["wall_seconds"].as_f64().unwrap();
    let overhead = j["overhead_seconds"].as_f64().unwrap();
    assert!(inference > 0.0 && inference <= wall, "{inference} {wall}");
    assert!(
        (inference + overhead - wall).abs() < 1e-9,
        "{inference} {overhead} {wall}"
    );
    let agreement = j["top1_agreement"].as_f64().unwrap();
    assert!(agreement >= 11.0 / 12.0, "top-1 agreement {agreement}");
    assert!(j["mean_abs_delta_softmax"].as_f64().unwrap() < 0.01);
    // Decoding inline (no prefetch thread) gives the same figures.
    eargs.extend(["--prefetch", "0"]);
    let (ok, stdout, err) = run(&eargs);
    assert!(ok, "{err}");
    let k: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for i in 0..2 {
        assert_eq!(k["models"][i]["top1"], j["models"][i]["top1"]);
        assert_eq!(k["models"][i]["top5"], j["models"][i]["top5"]);
    }
    assert_eq!(k["top1_agreement"], j["top1_agreement"]);
    assert_eq!(k["mean_abs_delta_softmax"], j["mean_abs_delta_softmax"]);
}

#[test]
fn quantize_cli_bad_inputs_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let db = make_db(dir.path(), 6);
    // The example net with an fp32-only op (Tanh, no Int8 twin) between FC and Softmax.
    let model = dir.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    let (init, mut predict) = example_net(5);
    let fc = predict.op.iter().position(|o| o.type_() == "FC").unwrap();
    let mut tanh = predict.op[fc].clone();
    tanh.set_type("Tanh".into());
    tanh.input = vec!["pred".into()];
    tanh.output = vec!["pred".into()];
    tanh.arg.clear();
    predict.op.insert(fc + 1, tanh);
    caffe2_proto::io::write(
        &init,
        model.join("init_net.pb"),
        caffe2_proto::Format::Binary,
    )
    .unwrap();
    caffe2_proto::io::write(
        &predict,
        model.join("predict_net.pb"),
        caffe2_proto::Format::Binary,
    )
    .unwrap();
    let run = common::c2q;
    let (m, d) = (model.to_str().unwrap(), db.to_str().unwrap());
    let out = dir.path().join("int8");
    let o = out.to_str().unwrap();
    let base = |extra: &[&'static str], db: &str| -> Vec<String> {
        let mut v: Vec<String> = [
            "quantize",
            "--model",
            m,
            "--calib-db",
            db,
            "--out",
            o,
            "--scale",
            "36",
            "--crop",
            "32",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let call = |v: Vec<String>| run(&v.iter().map(String::as_str).collect::<Vec<_>>());

    // Missing calibration DB: the path is named, nothing is written.
    let (ok, _, err) = call(base(&[], "/nonexistent/calib_db"));
    assert!(!ok && err.contains("/nonexistent/calib_db"), "{err}");
    assert!(!out.join("predict_net.pb").exists());
    // Zero images.
    let (ok, _, err) = call(base(&["--calib-images", "0"], d));
    assert!(!ok && err.contains("zero calibration images"), "{err}");
    // An excluded node that does not exist.
    let (ok, _, err) = call(base(&["--exclude-nodes", "999"], d));
    assert!(!ok && err.contains("exclude node 999"), "{err}");
    let (ok, _, err) = call(base(&["--exclude-ops", "Frobnicate"], d));
    assert!(!ok && err.contains("Frobnicate"), "{err}");
    assert!(!out.join("predict_net.pb").exists());

    // The Tanh cannot be quantized: it stays fp32 and the report says why; every quantized
    // Conv output gets an SQNR.
    let (ok, stdout, err) = call(base(&["--json", "--report-images", "4"], d));
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let kept = j["kept_fp32"].as_array().unwrap();
    let tanh = kept
        .iter()
        .find(|k| k["type"] == "Tanh")
        .expect("Tanh kept");
    assert!(
        tanh["why"].as_str().unwrap().contains("no int8 rewrite"),
        "{tanh}"
    );
    let layers = j["layers"].as_array().unwrap();
    let convs: Vec<_> = layers
        .iter()
        .filter(|l| {
            l["int8_op"]
                .as_str()
                .is_some_and(|t| t.starts_with("Int8Conv"))
        })
        .collect();
    assert_eq!(convs.len(), 3, "{layers:?}");
    for c in convs {
        let s = c["sqnr_db"].as_f64().unwrap();
        // 8-bit activations on a tiny net: far above 10 dB, and not perfect.
        assert!(s > 15.0 && s < 80.0, "{c}");
        assert!(c["cosine"].as_f64().unwrap() > 0.99, "{c}");
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["layers"], j["layers"]);

    // The folder now holds a model: without --overwrite it is refused at once (before
    // calibrating: the missing DB is not even opened) and left as it was; with it the nets
    // are replaced (and --text-init adds init_net.pbtxt).
    let before = std::fs::read(out.join("predict_net.pb")).unwrap();
    let (ok, _, err) = call(base(&["--seed", "7"], "/nonexistent/calib_db"));
    assert!(!ok && err.contains("already holds a model"), "{err}");
    assert_eq!(std::fs::read(out.join("predict_net.pb")).unwrap(), before);
    assert!(!out.join("init_net.pbtxt").exists());
    let (ok, _, err) = call(base(&["--overwrite", "--text-init"], d));
    assert!(ok, "{err}");
    assert!(out.join("init_net.pbtxt").exists());
    assert_eq!(std::fs::read(out.join("predict_net.pb")).unwrap(), before);

    // Every unusable --out fails before any work (the missing DB is never opened): a file,
    // a folder with a user's file in it, a folder whose parent does not exist.
    let file = dir.path().join("a_file");
    std::fs::write(&file, b"x").unwrap();
    let foreign = dir.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), b"mine").unwrap();
    let orphan = dir.path().join("no/such/parent/int8");
    for (bad, want) in [
        (&file, "exists and is not a folder"),
        (&foreign, "holds `notes.txt`"),
        (&orphan, "does not exist"),
    ] {
        let mut v = base(&[], "/nonexistent/calib_db");
        let at = v.iter().position(|x| x == "--out").unwrap();
        v[at + 1] = bad.to_str().unwrap().to_string();
        let (ok, _, err) = call(v);
        assert!(
            !ok && err.contains(want) && !err.contains("calib_db"),
            "{err}"
        );
    }
    assert_eq!(std::fs::read(foreign.join("notes.txt")).unwrap(), b"mine");
}

/// Records the f32 value of one blob as the net runs.
struct Grab(&'static str, Option<Vec<f32>>);

impl c2q::Observer for Grab {
    fn on_node(&mut self, node: &c2q::Node, outputs: &[&Tensor]) {
        for (n, t) in node.outputs.iter().zip(outputs) {
            if n == self.0 {
                if let Tensor::F32(a) = t {
                    self.1 = Some(a.iter().copied().collect());
                }
            }
        }
    }
}

#[test]
fn compare_cli_and_layer_errors_match_an_independent_sqnr() {
    let dir = tempfile::tempdir().unwrap();
    let db = make_db(dir.path(), 6);
    let model = dir.path().join("model");
    c2q::demo::write_example_model(&model, 5).unwrap();
    let out = dir.path().join("int8");
    let (m, d, o) = (
        model.to_str().unwrap(),
        db.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let pre = ["--scale", "36", "--crop", "32"];
    let run = |args: &[&str]| {
        let (ok, stdout, stderr) = common::c2q(&[args, &pre[..]].concat());
        assert!(ok, "{stderr}");
        stdout
    };
    run(&["quantize", "--model", m, "--calib-db", d, "--out", o]);
    let j: serde_json::Value = serde_json::from_str(&run(&[
        "compare", m, o, "--db", d, "--images", "4", "--json",
    ]))
    .unwrap();
    assert_eq!(j["images"], 4);
    let layers = j["layers"].as_array().unwrap();
    // Every Int8 op of the int8 net that writes a `<blob>_int8` other than the input
    // quantization has a row.
    let int8 = Model::load_dir(&out).unwrap();
    let written: Vec<&str> = int8
        .net
        .nodes
        .iter()
        .filter(|n| n.op_type.starts_with("Int8") && n.op_type != "Int8Quantize")
        .flat_map(|n| n.outputs.iter())
        .filter_map(|b| b.strip_suffix("_int8"))
        .collect();
    let mut listed: Vec<&str> = layers.iter().map(|l| l["blob"].as_str().unwrap()).collect();
    listed.sort_unstable();
    let mut want = written.clone();
    want.sort_unstable();
    assert_eq!(listed, want);
    // Worst first.
    let s: Vec<f64> = layers
        .iter()
        .map(|l| l["sqnr_db"].as_f64().unwrap())
        .collect();
    assert!(s.windows(2).all(|w| w[0] <= w[1]), "{s:?}");

    // The FC output `pred` is dequantized by the int8 net itself: its SQNR computed here by
    // hand from the two nets' `pred` values must match the LayerErrors figure.
    let fp32 = Model::load_dir(&model).unwrap().optimized().unwrap().0;
    let mut le = c2q::eval::LayerErrors::new(&fp32, &int8, 1).unwrap();
    let (mut sig, mut noise) = (0f64, 0f64);
    for k in 0..3 {
        let x = Tensor::from_f32(
            &[1, 3, 32, 32],
            (0..3 * 32 * 32)
                .map(|i| (((i * 7 + k * 131) % 97) as f32 / 48.0) - 1.0)
                .collect(),
        );
        let feed = HashMap::from([("data".to_string(), x)]);
        let (mut g32, mut g8) = (Grab("pred", None), Grab("pred", None));
        Executor::new(&fp32, 1)
            .unwrap()
            .run_observed(feed.clone(), Some(&mut g32))
            .unwrap();
        Executor::new(&int8, 1)
            .unwrap()
            .run_observed(feed.clone(), Some(&mut g8))
            .unwrap();
        for (r, q) in g32.1.unwrap().iter().zip(g8.1.unwrap()) {
            sig += f64::from(*r) * f64::from(*r);
            noise += (f64::from(*r) - f64::from(q)).powi(2);
        }
        le.add_batch(feed, 1).unwrap();
    }
    let errs = le.finish().unwrap();
    let pred = errs.iter().find(|e| e.blob == "pred").unwrap();
    let want = 10.0 * (sig / noise).log10();
    assert!(
        (pred.sqnr_db - want).abs() < 1e-6,
        "{} vs {want}",
        pred.sqnr_db
    );
    assert_eq!(pred.op_type, "Int8FC");
    // compare names the fp32 op index that --exclude-nodes takes.
    let fc = fp32
        .net
        .nodes
        .iter()
        .position(|n| n.op_type == "FC")
        .unwrap();
    let row = layers.iter().find(|l| l["blob"] == "pred").unwrap();
    assert_eq!(row["fp32_op_index"], fc);

    // Progress over the database: before the first batch and after each (6 images, batches
    // of 4), with the same figures as without it.
    let seen = std::sync::Mutex::new(Vec::new());
    let progress = |done: usize, total: usize| seen.lock().unwrap().push((done, total));
    let opts = || data::BatchOptions {
        batch_size: 4,
        preprocess: data::Preprocess {
            scale: 36,
            crop: 32,
            ..data::Preprocess::default()
        },
        ..data::BatchOptions::default()
    };
    let (with, n) =
        c2q::eval::layer_errors_on_db_with(&fp32, &int8, &db, opts(), 1, Some(&progress)).unwrap();
    let (without, _) = c2q::eval::layer_errors_on_db(&fp32, &int8, &db, opts(), 1).unwrap();
    assert_eq!(n, 6);
    assert_eq!(*seen.lock().unwrap(), [(0, 6), (4, 6), (6, 6)]);
    assert_eq!(with.len(), without.len());
    for (a, b) in with.iter().zip(&without) {
        assert_eq!(
            (&a.blob, a.sqnr_db.to_bits()),
            (&b.blob, b.sqnr_db.to_bits())
        );
    }
}

#[test]
fn max_loss_moves_the_damaged_layer_back_to_fp32() {
    // A net with one deliberately damaged layer: conv3 gets a single outlier weight, so with
    // per-tensor weights every other conv3 weight rounds to a handful of codes.
    let dir = tempfile::tempdir().unwrap();
    let (mut init, predict) = example_net(5);
    for op in &mut init.op {
        if op.output[0] == "conv3_w" {
            let values = op.arg.iter_mut().find(|a| a.name() == "values").unwrap();
            values.floats[0] = 40.0;
        }
    }
    // Images labelled with the fp32 net's own top-1, so fp32 scores 100%. The random example
    // net gives every image nearly the same pooled features, so the FC is re-centred first:
    // logits = R·(f − mean f), which makes the prediction depend on the image.
    let pre = data::Preprocess {
        scale: EXAMPLE_SIZE + 4,
        crop: EXAMPLE_SIZE,
        ..data::Preprocess::default()
    };
    let imgs = dir.path().join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    let mut inputs = Vec::new();
    for k in 0..30 {
        let img = example_image(40 + (k % 5) as u32, 36, k);
        img.save(imgs.join(format!("{k:02}.png"))).unwrap();
        let mut bgr = image::RgbImage::new(img.width(), img.height());
        for (d, s) in bgr.pixels_mut().zip(img.pixels()) {
            *d = image::Rgb([s[2], s[1], s[0]]);
        }
        let img = data::Image {
            height: bgr.height() as usize,
            width: bgr.width() as usize,
            channels: 3,
            data: bgr.into_raw(),
        };
        let mut buf = vec![0f32; pre.image_len()];
        pre.apply(&img, &mut buf).unwrap();
        inputs.push(HashMap::from([(
            "data".to_string(),
            Tensor::from_f32(&pre.batch_shape(1), buf),
        )]));
    }
    let features = |init: &caffe2_proto::NetDef| -> Vec<Vec<f32>> {
        let m = Model::from_nets(init.clone(), predict.clone()).unwrap();
        let exec = Executor::new(&m, 1).unwrap();
        inputs
            .iter()
            .map(|x| {
                let mut g = Grab("pool2", None);
                exec.run_observed(x.clone(), Some(&mut g)).unwrap();
                g.1.unwrap()
            })
            .collect()
    };
    let f = features(&init);
    let c = f[0].len();
    let mean: Vec<f32> = (0..c)
        .map(|j| f.iter().map(|v| v[j]).sum::<f32>() / f.len() as f32)
        .collect();
    // Channel 0 carries the outlier itself; the decision uses the other channels, whose
    // small conv3 weights the per-tensor scale crushes.
    let spread: f32 = f
        .iter()
        .flat_map(|v| v.iter().zip(&mean).skip(1).map(|(a, b)| (a - b).abs()))
        .fold(0.0, f32::max);
    let classes = c2q::demo::EXAMPLE_CLASSES;
    let r: Vec<f32> = (0..classes * c)
        .map(|i| {
            if i % c == 0 {
                0.0
            } else {
                ((((i * 37 + 11) % 23) as f32) / 11.0 - 1.0) / spread
            }
        })
        .collect();
    let b: Vec<f32> = (0..classes)
        .map(|k| -(0..c).map(|j| r[k * c + j] * mean[j]).sum::<f32>())
        .collect();
    for op in &mut init.op {
        let values = op.arg.iter_mut().find(|a| a.name() == "values");
        match (op.output[0].as_str(), values) {
            ("fc_w", Some(v)) => v.floats = r.clone(),
            ("fc_b", Some(v)) => v.floats = b.clone(),
            _ => {}
        }
    }
    let model_dir = dir.path().join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    caffe2_proto::io::write(
        &init,
        model_dir.join("init_net.pb"),
        caffe2_proto::Format::Binary,
    )
    .unwrap();
    caffe2_proto::io::write(
        &predict,
        model_dir.join("predict_net.pb"),
        caffe2_proto::Format::Binary,
    )
    .unwrap();
    let fp32 = Model::from_nets(init, predict).unwrap();
    let exec = Executor::new(&fp32, 1).unwrap();
    let mut list = String::new();
    for (k, x) in inputs.iter().enumerate() {
        let y = exec.run(x.clone()).unwrap().remove("softmax").unwrap();
        let top = c2q::eval::top_k(&y, 1).unwrap()[0][0].0;
        list.push_str(&format!("{k:02}.png {top}\n"));
    }
    std::fs::write(dir.path().join("list.txt"), list).unwrap();
    let db = dir.path().join("db");
    data::make_db(
        &data::Source::List {
            list: dir.path().join("list.txt"),
            root: imgs,
        },
        &db,
        &data::MakeDbOptions {
            format: data::RecordFormat::Datum,
            raw: None,
            overwrite: false,
        },
        None,
    )
    .unwrap();

    let out = dir.path().join("int8");
    let o = Command::new(env!("CARGO_BIN_EXE_c2q"))
        .args(["quantize", "--model"])
        .arg(&model_dir)
        .arg("--calib-db")
        .arg(&db)
        .arg("--out")
        .arg(&out)
        .args(["--scale", "36", "--crop", "32", "--kind", "min_max"])
        // Per tensor, so that the outlier damages conv3 (`auto` would give it per-channel
        // weights and repair it).
        .args(["--weights", "per-tensor"])
        .args(["--max-loss", "0", "--holdout", "15", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let fb = &j["fallback"];
    assert_eq!(fb["holdout_images"], 15);
    assert_eq!(fb["fp32_top1"], 1.0);
    let before = fb["int8_top1_before"].as_f64().unwrap();
    assert!(before < 0.9, "the damage should cost accuracy: {fb}");
    assert_eq!(fb["met"], true, "{fb}");
    assert_eq!(fb["int8_top1"], 1.0, "{fb}");
    let moved = fb["moved_to_fp32"].as_array().unwrap();
    assert_eq!(
        moved[0]["blob"], "conv3",
        "the damaged layer goes first: {fb}"
    );
    // The written net keeps conv3 in fp32 and the rest in int8.
    let int8 = Model::load_dir(&out).unwrap();
    let conv3 = int8
        .net
        .nodes
        .iter()
        .find(|n| n.outputs.contains(&"conv3".to_string()))
        .unwrap();
    assert_eq!(conv3.op_type, "Conv");
    assert!(int8.net.nodes.iter().any(|n| n.op_type == "Int8ConvRelu"));
}

/// The quantize report labels a blob rewritten in place (`res#1`, the Sum written over the
/// conv's output) as `compare` does, with that op's SQNR, and shows the parameters the int8
/// net carries (MaxPool: its input's, not the range calibrated for its output).
#[test]
fn quantize_report_rows_match_compare_and_the_written_params() {
    let dir = tempfile::tempdir().unwrap();
    let db = make_db(dir.path(), 6);
    let (init, mut predict) = c2q::demo::example_net(5);
    // conv3 -> Sum(conv3, pool1) -> Relu, all writing `conv3` in place; the pool reads it.
    for op in &mut predict.op {
        for b in op.input.iter_mut().chain(op.output.iter_mut()) {
            if b == "res" {
                *b = "conv3".into();
            }
        }
    }
    let model = dir.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    caffe2_proto::io::write(
        &init,
        model.join("init_net.pb"),
        caffe2_proto::Format::Binary,
    )
    .unwrap();
    caffe2_proto::io::write(
        &predict,
        model.join("predict_net.pb"),
        caffe2_proto::Format::Binary,
    )
    .unwrap();
    let out = dir.path().join("int8");
    let (m, d, o) = (
        model.to_str().unwrap(),
        db.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let pre = ["--scale", "36", "--crop", "32"];
    let run = |args: &[&str]| {
        let (ok, stdout, stderr) = common::c2q(&[args, &pre[..]].concat());
        assert!(ok, "{stderr}");
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()
    };
    let q = run(&[
        "quantize",
        "--model",
        m,
        "--calib-db",
        d,
        "--out",
        o,
        "--json",
        "--report-images",
        "4",
    ]);
    let c = run(&["compare", m, o, "--db", d, "--images", "4", "--json"]);
    let rows = q["layers"].as_array().unwrap();
    let by_label = |label: &str| {
        rows.iter()
            .find(|r| r["blob"] == label)
            .unwrap_or_else(|| panic!("no row `{label}` in {rows:?}"))
    };
    let compared = c["layers"].as_array().unwrap();
    assert!(
        compared.iter().any(|l| l["blob"] == "conv3#1"),
        "{compared:?}"
    );
    for l in compared {
        let r = by_label(l["blob"].as_str().unwrap());
        assert_eq!(r["int8_op"], l["op_type"], "{r} vs {l}");
        let (a, b) = (
            r["sqnr_db"].as_f64().unwrap(),
            l["sqnr_db"].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-9, "{r} vs {l}");
    }
    assert_eq!(by_label("conv3#1")["int8_op"], "Int8SumRelu");
    assert_eq!(by_label("conv3")["int8_op"], "Int8Conv");
    // Every row's scale is the Y_scale of the op writing that blob in the int8 net.
    let net = c2q::Model::load_dir(&out).unwrap().predict_def;
    let mut seen = std::collections::HashMap::new();
    for op in &net.op {
        for b in &op.output {
            let Some(base) = b.strip_suffix("_int8") else {
                continue;
            };
            let k: &mut usize = seen.entry(base.to_string()).or_default();
            let label = if *k == 0 {
                base.to_string()
            } else {
                format!("{base}#{k}")
            };
            *k += 1;
            let Some(ys) = op.arg.iter().find(|a| a.name() == "Y_scale") else {
                continue;
            };
            if let Some(r) = rows.iter().find(|r| r["blob"] == label.as_str()) {
                assert_eq!(r["scale"].as_f64().unwrap() as f32, ys.f(), "{label}: {r}");
            }
        }
    }
    let pool = by_label("pool1");
    assert_eq!(
        pool["scale"],
        by_label("conv1")["scale"],
        "MaxPool carries its input's"
    );
    assert_ne!(pool["chosen_scale"], pool["scale"], "{pool}");
}

/// The output folder is written as a unit: `--overwrite` leaves none of the old files
/// (a stale `init_net.pbtxt` goes), a folder holding other files is refused and kept, the
/// input model's own folder is refused even with `--overwrite`, and no staging folder stays.
#[test]
fn quantize_output_folder_is_replaced_as_a_unit() {
    let dir = tempfile::tempdir().unwrap();
    let db = make_db(dir.path(), 4);
    let model = dir.path().join("model");
    c2q::demo::write_example_model(&model, 3).unwrap();
    let out = dir.path().join("int8");
    let (m, d, o) = (
        model.to_str().unwrap(),
        db.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let q = |extra: &[&str], out: &str| {
        let mut v = vec![
            "quantize",
            "--model",
            m,
            "--calib-db",
            d,
            "--out",
            out,
            "--scale",
            "36",
            "--crop",
            "32",
            "--report-images",
            "0",
        ];
        v.extend_from_slice(extra);
        common::c2q(&v)
    };
    let (ok, _, err) = q(&["--text-init"], o);
    assert!(ok, "{err}");
    assert!(out.join("init_net.pbtxt").exists() && out.join("report.json").exists());
    let (ok, _, err) = q(&["--overwrite"], o);
    assert!(ok, "{err}");
    assert!(
        !out.join("init_net.pbtxt").exists(),
        "stale init_net.pbtxt left behind"
    );
    assert!(out.join("init_net.pb").exists() && out.join("report.json").exists());
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("c2q-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A folder with a file c2q did not write is refused, and the file stays.
    let other = dir.path().join("mine");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "keep me").unwrap();
    let (ok, _, err) = q(&["--overwrite"], other.to_str().unwrap());
    assert!(!ok && err.contains("notes.txt"), "{err}");
    assert_eq!(
        std::fs::read_to_string(other.join("notes.txt")).unwrap(),
        "keep me"
    );

    // The input model's folder as --out: refused, the fp32 nets untouched.
    let before = std::fs::read(model.join("init_net.pb")).unwrap();
    let (ok, _, err) = q(&["--overwrite"], m);
    assert!(!ok && err.contains("input model"), "{err}");
    assert_eq!(std::fs::read(model.join("init_net.pb")).unwrap(), before);
}

#[test]
fn calibration_progress_counts_what_the_database_holds() {
    // 10,000 images asked of a 5-record database: the progress total is 5, reported before
    // the first batch and after each (batches of 2: 0, 2, 4, 5).
    let dir = tempfile::tempdir().unwrap();
    let db = make_db(dir.path(), 5);
    let (init, predict) = example_net(3);
    let model = Model::from_nets(init, predict).unwrap();
    let opts = data::BatchOptions {
        batch_size: 2,
        sample: Some(10_000),
        preprocess: data::Preprocess {
            scale: EXAMPLE_SIZE + 4,
            crop: EXAMPLE_SIZE,
            ..data::Preprocess::default()
        },
        ..data::BatchOptions::default()
    };
    let seen = std::sync::Mutex::new(Vec::new());
    let progress = |done: usize, total: usize| seen.lock().unwrap().push((done, total));
    let (cal, skipped) =
        c2q::quant::calibrate::calibrate_db(&model, &db, opts, 1, 64, Some(&progress)).unwrap();
    assert_eq!(cal.images, 5);
    assert!(skipped.is_empty());
    assert_eq!(*seen.lock().unwrap(), [(0, 5), (2, 5), (4, 5), (5, 5)]);
}
