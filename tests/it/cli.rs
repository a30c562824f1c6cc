//! The `c2q` binary end to end on data the tests make themselves.

use crate::common;

use std::path::Path;

use c2q::demo::{example_image, write_example_model};
use caffe2_proto::{io, Format, TensorProto, TensorProtos};
use common::c2q;

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn info_run_and_save_on_the_example_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_example_model(&model, 3).unwrap();

    let (ok, out, err) = c2q(&[
        "info",
        "--model",
        p(&model),
        "--json",
        "--shapes",
        "--input-shape",
        "1,3,32,32",
    ]);
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["ops"], 12);
    assert_eq!(j["unsupported_ops"].as_array().unwrap().len(), 0);
    assert_eq!(j["outputs"][0]["name"], "softmax");
    assert_eq!(j["outputs"][0]["shape"], serde_json::json!([1, 10]));
    assert_eq!(
        j["per_op"][3]["output_shapes"][0]["shape"],
        serde_json::json!([1, 8, 16, 16])
    );

    // An input tensor file: 2 images.
    let vals: Vec<f32> = (0..2 * 3 * 32 * 32)
        .map(|i| ((i % 17) as f32 - 8.0) / 8.0)
        .collect();
    let mut t = TensorProto::new();
    t.dims = vec![2, 3, 32, 32];
    t.float_data = vals;
    t.set_name("data".into());
    let input = dir.path().join("x.pb");
    io::write(&t, &input, Format::Binary).unwrap();
    let saved = dir.path().join("out.pb");
    let (ok, out, err) = c2q(&[
        "run",
        "--model",
        p(&model),
        "--input",
        p(&input),
        "--save",
        p(&saved),
        "--json",
        "--top",
        "3",
    ]);
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["top"].as_array().unwrap().len(), 2);
    let (protos, _) = io::read::<TensorProtos>(&saved).unwrap();
    assert_eq!(protos.protos.len(), 1);
    let sm = &protos.protos[0];
    assert_eq!(sm.name(), "softmax");
    assert_eq!(sm.dims, vec![2, 10]);
    for row in sm.float_data.chunks(10) {
        let s: f32 = row.iter().sum();
        assert!((s - 1.0).abs() < 1e-5);
    }
    // The printed top-1 score is the saved tensor's row maximum.
    let top1 = j["top"][1][0]["score"].as_f64().unwrap() as f32;
    let max1 = sm.float_data[10..].iter().cloned().fold(f32::MIN, f32::max);
    assert_eq!(top1, max1);

    // Errors: a missing model folder, a missing input file.
    let (ok, _, err) = c2q(&["run", "--model", "/nonexistent/model", "--input", p(&input)]);
    assert!(!ok && err.contains("/nonexistent/model"), "{err}");
    let (ok, _, err) = c2q(&["run", "--model", p(&model), "--input", "/nonexistent/x.pb"]);
    assert!(!ok && err.contains("/nonexistent/x.pb"), "{err}");

    // NaN and infinite inputs run, with a warning naming the file, the blob and the count.
    t.float_data[5] = f32::NAN;
    t.float_data[77] = f32::INFINITY;
    let bad = dir.path().join("bad.pb");
    io::write(&t, &bad, Format::Binary).unwrap();
    let (ok, _, err) = c2q(&["run", "--model", p(&model), "--input", p(&bad)]);
    assert!(ok, "{err}");
    assert!(
        err.contains("warning") && err.contains("bad.pb") && err.contains("`data` has 2 NaN"),
        "{err}"
    );
    let (ok, _, err) = c2q(&["run", "--model", p(&model), "--input", p(&input)]);
    assert!(ok && !err.contains("warning"), "{err}");
}

#[test]
fn make_db_info_show_and_bench_with_a_bad_record() {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    for (class, name) in [(0, "cat"), (1, "dog")] {
        std::fs::create_dir_all(imgs.join(name)).unwrap();
        for k in 0..3 {
            example_image(40 + 8 * k, 30 + 4 * k, class * 3 + k as usize)
                .save(imgs.join(format!("{name}/{k}.png")))
                .unwrap();
        }
    }
    let db = dir.path().join("db");
    let (ok, out, err) = c2q(&["make-db", "--folder", p(&imgs), "--out", p(&db)]);
    assert!(ok, "{err}");
    assert!(out.contains("wrote 6 records"), "{out}");
    // Refuses to overwrite without --overwrite.
    let (ok, _, err) = c2q(&["make-db", "--folder", p(&imgs), "--out", p(&db)]);
    assert!(!ok, "{err}");

    let (ok, out, err) = c2q(&["db", "info", p(&db), "--json"]);
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["count"], 6);
    assert_eq!(j["format"], "datum");
    assert_eq!(
        j["labels"],
        serde_json::json!([{"label": 0, "count": 3}, {"label": 1, "count": 3}])
    );
    assert_eq!(j["width"], serde_json::json!([40, 56]));

    let keys = data::Lmdb::open(&db).unwrap().keys().unwrap();
    let key0 = String::from_utf8(keys[0].clone()).unwrap();
    let shown = dir.path().join("show.png");
    let (ok, _, err) = c2q(&[
        "db",
        "show",
        p(&db),
        "--key",
        &key0,
        "--out",
        p(&shown),
        "--scale",
        "36",
        "--crop",
        "32",
    ]);
    assert!(ok, "{err}");
    let img = image::open(&shown).unwrap();
    assert_eq!((img.width(), img.height()), (32, 32));
    let (ok, _, err) = c2q(&[
        "db",
        "show",
        p(&db),
        "--key",
        "no_such_key",
        "--out",
        p(&shown),
    ]);
    assert!(!ok && err.contains("no_such_key"), "{err}");

    // The stored image, full size, colours as written: equal to the PNG that made the record.
    let original = dir.path().join("orig.png");
    let (ok, out, err) = c2q(&[
        "db",
        "show",
        p(&db),
        "--key",
        &key0,
        "--out",
        p(&original),
        "--original",
    ]);
    assert!(ok && out.contains("stored"), "{err}");
    let src = key0.split_once('_').unwrap().1.replacen('_', "/", 1);
    let want = image::open(imgs.join(&src)).unwrap().to_rgb8();
    assert_eq!(image::open(&original).unwrap().to_rgb8(), want, "{src}");

    // `db ls`: every key in order with its label, stored bytes, kind and size.
    let (ok, out, err) = c2q(&["db", "ls", p(&db), "--json"]);
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = j.as_array().unwrap();
    assert_eq!(rows.len(), 6);
    let handle = data::Lmdb::open(&db).unwrap();
    for (row, k) in rows.iter().zip(&keys) {
        let key = String::from_utf8(k.clone()).unwrap();
        assert_eq!(row["key"], key.as_str());
        assert_eq!(row["bytes"], handle.get(k).unwrap().unwrap().len());
        assert_eq!(row["kind"], "png");
        let class: i64 = if key.contains("dog") { 1 } else { 0 };
        assert_eq!(row["label"], class);
        let name = key.split_once('_').unwrap().1.replacen('_', "/", 1);
        let img = image::open(imgs.join(&name)).unwrap();
        assert_eq!(row["width"], img.width(), "{key}");
        assert_eq!(row["height"], img.height(), "{key}");
    }
    let (ok, out, err) = c2q(&["db", "ls", p(&db), "--from", &key0[..9], "--limit", "2"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.lines().nth(1).unwrap().starts_with(&key0), "{out}");

    // A database with one corrupt image among good ones.
    let bad_db = dir.path().join("bad_db");
    let mut records = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let v = data::Lmdb::open(&db).unwrap().get(k).unwrap().unwrap();
        records.push((k.clone(), v));
        if i == 2 {
            let junk = data::record::datum_encoded(b"this is not an image", 7).unwrap();
            records.push((b"00000002_zz_broken.png".to_vec(), junk));
        }
    }
    data::make_db::write_records(&bad_db, &records, false).unwrap();
    let (ok, _, err) = c2q(&[
        "db",
        "bench",
        p(&bad_db),
        "--repeat",
        "1",
        "--scale",
        "36",
        "--crop",
        "32",
    ]);
    assert!(!ok && err.contains("00000002_zz_broken.png"), "{err}");
    let (ok, out, err) = c2q(&[
        "db",
        "bench",
        p(&bad_db),
        "--repeat",
        "1",
        "--skip-bad",
        "--scale",
        "36",
        "--crop",
        "32",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("6 images")
            && out.contains("skipped 1 bad records")
            && out.contains("00000002_zz_broken.png"),
        "{out}"
    );
}

#[test]
fn demo_runs_the_whole_flow() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let (ok, stdout, err) = c2q(&["demo", "--out", p(&out)]);
    assert!(ok, "{err}");
    assert!(out.join("db/data.mdb").exists());
    assert!(out.join("model_int8/predict_net.pb").exists());
    let line = stdout
        .lines()
        .find(|l| l.starts_with("6. fp32 vs int8"))
        .unwrap_or_else(|| panic!("no comparison line in:\n{stdout}"));
    let delta: f32 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(delta < 0.05, "{line}");
    // The written int8 model loads and has the DNNLOWP op set.
    let int8 = c2q::Model::load_dir(out.join("model_int8")).unwrap();
    assert!(int8.net.nodes.iter().all(|n| n.is_ready()));
    assert_eq!(int8.net.nodes[1].op_type, "Int8Quantize");
}

/// Zero or absurd counts are refused by the flag parser with the valid range (exit code 2,
/// nothing run): a batch of 0 or 100,000, 100,000 threads (which hung `eval`), 0 or 4e9
/// histogram bins; the largest batch passes the parser.
#[test]
fn absurd_counts_are_refused_with_the_valid_range() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_example_model(&model, 3).unwrap();
    let m = p(&model);
    for (args, flag, range) in [
        (
            vec!["bench", "--model", m, "--batch", "0"],
            "--batch",
            "1..=4096",
        ),
        (
            vec!["bench", "--model", m, "--batch", "100000"],
            "--batch",
            "1..=4096",
        ),
        (
            vec!["bench", "--model", m, "--threads", "100000"],
            "--threads",
            "0..=1024",
        ),
        (
            vec!["eval", "-m", m, "--db", "nowhere", "--threads", "100000"],
            "--threads",
            "0..=1024",
        ),
        (
            vec!["eval", "-m", m, "--db", "nowhere", "--batch=abc"],
            "--batch",
            "whole number",
        ),
        (
            vec![
                "calibrate",
                "--model",
                m,
                "--calib-db",
                "nowhere",
                "--bins",
                "0",
            ],
            "--bins",
            "1..=1048576",
        ),
        (
            vec![
                "calibrate",
                "--model",
                m,
                "--calib-db",
                "nowhere",
                "--bins",
                "4000000000",
            ],
            "--bins",
            "1..=1048576",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_c2q"))
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag) && err.contains(range), "{args:?}: {err}");
    }
    let (ok, _, err) = c2q(&[
        "bench",
        "--model",
        m,
        "--batch",
        "4096",
        "--threads",
        "1",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--input-shape",
        "3,8,8",
    ]);
    assert!(ok || !err.contains("must be in"), "{err}");
}

/// `c2q info --json | head -c 0`: the reader is gone before c2q prints; it ends quietly with
/// status 0 instead of panicking on the broken pipe.
#[test]
fn a_closed_stdout_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_example_model(&model, 3).unwrap();
    for args in [
        vec!["info", "--model", p(&model), "--json"],
        vec!["info", "--model", p(&model), "--shapes"],
    ] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_c2q"))
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Close the read end at once: c2q's first write meets a pipe without readers.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(out.status.success(), "{args:?}: {:?} {err}", out.status);
    }
}

/// `run --input` with a TensorProto whose data does not fill its dims says why (the cause
/// used to be dropped, leaving only "holds no tensor").
#[test]
fn a_bad_input_tensor_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_example_model(&model, 3).unwrap();
    let mut t = TensorProto::new();
    t.dims = vec![1, 3, 32, 32];
    t.float_data = vec![0.5; 7];
    t.set_name("data".into());
    let input = dir.path().join("bad.pb");
    io::write(&t, &input, Format::Binary).unwrap();
    let (ok, _, err) = c2q(&["run", "--model", p(&model), "--input", p(&input)]);
    assert!(!ok);
    assert!(
        err.contains("bad.pb") && err.contains("read as one TensorProto") && err.contains('7'),
        "{err}"
    );
}

/// A folder or a device as `--predict` is refused at once with one plain reason (the OS
/// message used to be printed twice, and `/dev/zero` was read for gigabytes).
#[test]
fn a_folder_or_device_as_predict_is_refused_once() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = c2q(&["info", "--predict", p(dir.path())]);
    assert!(!ok);
    assert_eq!(err.matches("it is a folder").count(), 1, "{err}");
    #[cfg(unix)]
    {
        let (ok, _, err) = c2q(&["info", "--predict", "/dev/zero"]);
        assert!(!ok);
        assert_eq!(err.matches("not a regular file").count(), 1, "{err}");
    }
}

/// An input shape whose tensor would exceed the tensor limit is refused before anything is
/// allocated (it aborted with an allocation failure), by `bench` and by `info`.
#[test]
fn absurd_input_shapes_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    write_example_model(&model, 3).unwrap();
    let m = p(&model);
    let (ok, _, err) = common::c2q(&["bench", "--model", m, "--input-shape", "3,100000,100000"]);
    assert!(
        !ok && err.contains("C2Q_MAX_TENSOR_BYTES") && err.contains("100000"),
        "{err}"
    );
    // A crop of 100,000 makes one preprocessed image 120 GB: refused before the batch buffer.
    let db = c2q::demo::write_example_db(dir.path(), 2, 1).unwrap();
    let (ok, _, err) = common::c2q(&[
        "eval",
        "-m",
        m,
        "--db",
        p(&db),
        "--scale",
        "100000",
        "--crop",
        "100000",
    ]);
    assert!(!ok && err.contains("C2Q_MAX_TENSOR_BYTES"), "{err}");
    // info reports where shape inference stops: the first conv's 320 GB output.
    let (_, out, err) = common::c2q(&["info", "--model", m, "--input-shape", "1,3,100000,100000"]);
    assert!(
        out.contains("op #0 (Conv)") && out.contains("C2Q_MAX_TENSOR_BYTES"),
        "{out}{err}"
    );
}

/// A model whose parameters hold NaN gets a warning naming them from every command that
/// loads it (here `info`, which still succeeds).
#[test]
fn nan_parameters_are_named_in_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir_all(&model).unwrap();
    let (mut init, predict) = c2q::demo::example_net(3);
    for op in &mut init.op {
        if op.output[0] == "fc_w" {
            if let Some(v) = op.arg.iter_mut().find(|a| a.name() == "values") {
                v.floats[3] = f32::NAN;
                v.floats[4] = f32::INFINITY;
            }
        }
    }
    let fmt = caffe2_proto::Format::Binary;
    caffe2_proto::io::write(&init, model.join("init_net.pb"), fmt).unwrap();
    caffe2_proto::io::write(&predict, model.join("predict_net.pb"), fmt).unwrap();
    let (ok, _, err) = common::c2q(&["info", "--model", p(&model)]);
    assert!(ok, "{err}");
    assert!(
        err.contains("warning") && err.contains("fc_w") && err.contains("NaN"),
        "{err}"
    );
    // A clean model gets no such warning.
    let clean = dir.path().join("clean");
    write_example_model(&clean, 3).unwrap();
    let (ok, _, err) = common::c2q(&["info", "--model", p(&clean)]);
    assert!(ok && !err.contains("NaN"), "{err}");
}

#[test]
fn run_image_takes_the_preprocessing_flags_and_checks_synsets() {
    // `run --image` with MobileNet-style flags equals `run --input` of the same image
    // preprocessed by the library with those flags, and differs from the default flags.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    write_example_model(&model, 4).unwrap();
    let img = dir.path().join("cat.png");
    example_image(48, 40, 3).save(&img).unwrap();
    let pre = data::Preprocess {
        scale: 36,
        crop: 32,
        mean: [128.0; 3],
        std: [128.0; 3],
        order: data::ChannelOrder::Rgb,
        ..data::Preprocess::default()
    };
    let decoded = data::decode_bgr(&std::fs::read(&img).unwrap(), "cat.png").unwrap();
    let mut buf = vec![0f32; pre.image_len()];
    pre.apply(&decoded, &mut buf).unwrap();
    let mut t = TensorProto::new();
    t.dims = pre.batch_shape(1).iter().map(|&d| d as i64).collect();
    t.float_data = buf;
    t.set_name("data".into());
    let input = dir.path().join("x.pb");
    io::write(&t, &input, Format::Binary).unwrap();
    let top = |args: &[&str]| -> serde_json::Value {
        let mut v = vec!["run", "--model", p(&model), "--json", "--top", "10"];
        v.extend_from_slice(args);
        let (ok, out, err) = c2q(&v);
        assert!(ok, "{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["top"].clone()
    };
    let flags = [
        "--scale", "36", "--crop", "32", "--mean", "128", "--std", "128", "--rgb",
    ];
    let mut with_flags = vec!["--image", p(&img)];
    with_flags.extend_from_slice(&flags);
    let by_image = top(&with_flags);
    assert_eq!(by_image, top(&["--input", p(&input)]));
    assert_ne!(
        by_image,
        top(&["--image", p(&img), "--scale", "36", "--crop", "32"])
    );

    // Class names: one per output class (10), blank lines at the end ignored; a wrong
    // count is refused with both counts.
    let names: String = (0..10).map(|i| format!("class{i}\n")).collect();
    let good = dir.path().join("synsets.txt");
    std::fs::write(&good, format!("{names}\n")).unwrap();
    let (ok, out, err) = c2q(&[
        "run",
        "--model",
        p(&model),
        "--input",
        p(&input),
        "--synsets",
        p(&good),
    ]);
    assert!(ok && out.contains("class"), "{err}");
    let bad = dir.path().join("labels.tsv");
    std::fs::write(&bad, "a\t0\nb\t1\n").unwrap();
    let (ok, _, err) = c2q(&[
        "run",
        "--model",
        p(&model),
        "--input",
        p(&input),
        "--synsets",
        p(&bad),
    ]);
    assert!(
        !ok && err.contains("labels.tsv") && err.contains("2 lines") && err.contains("10 classes"),
        "{err}"
    );
}

#[test]
fn info_gives_no_shape_for_an_output_whose_last_writer_was_not_inferred() {
    // `out` is written by a Relu, then by a Conv whose weights are unknown without the
    // init_net: shape inference stops at the Conv, so `out`'s final shape is unknown (not
    // the Relu's).
    use c2q::graph::builder::{Arg, NetBuilder};
    let dir = tempfile::tempdir().unwrap();
    let mut b = NetBuilder::new("reused");
    b.input("data")
        .op("Relu", &["data"], &["out"], vec![])
        .op(
            "Conv",
            &["out", "w", "b"],
            &["out"],
            vec![("kernel", Arg::I(3))],
        )
        .output("out");
    let (_, predict) = b.build();
    let path = dir.path().join("predict_net.pb");
    io::write(&predict, &path, Format::Binary).unwrap();
    let (ok, out, err) = c2q(&["info", "--predict", p(&path)]);
    assert!(ok, "{err}");
    let line = out.lines().find(|l| l.starts_with("output:")).unwrap();
    assert_eq!(line.trim_end(), "output:      out", "{out}");
    assert!(out.contains("shape inference stopped"), "{out}");
    let (ok, out, err) = c2q(&["info", "--predict", p(&path), "--json"]);
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(j["outputs"][0]["shape"].is_null(), "{j}");
}

#[test]
fn bench_profile_says_when_the_timed_runs_split_the_batch() {
    // The example net at batch 4 on 2 threads: the timed runs split the batch into 2 parts
    // while the profile runs it whole, and the profile says so; at batch 1 nothing differs.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    write_example_model(&model, 2).unwrap();
    let run = |batch: &str| {
        let (ok, _, err) = c2q(&[
            "bench",
            "--model",
            p(&model),
            "--batch",
            batch,
            "--threads",
            "2",
            "--runs",
            "2",
            "--warmup",
            "0",
            "--profile",
            "--input-shape",
            "3,32,32",
        ]);
        assert!(ok, "{err}");
        err
    };
    let err = run("4");
    assert!(
        err.contains("note: the profile runs the whole batch")
            && err.contains("2 per-thread parts"),
        "{err}"
    );
    assert!(err.contains("per-op time"), "{err}");
    let err = run("1");
    assert!(
        !err.contains("note:") && err.contains("per-op time"),
        "{err}"
    );
}
