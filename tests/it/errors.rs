//! Bad models and bad inputs give clear errors naming the file or the op, never a panic.

use std::collections::HashMap;

use c2q::graph::builder::{Arg, NetBuilder};
use c2q::{Error, Executor, Model, ModelPaths};
use caffe2_proto::{io, Format};
use ops::{Tensor, TensorInfo};

/// data [1,2,4,4] -> Conv(k3, pad 1, 3 filters) -> Relu -> out.
fn small_net() -> NetBuilder {
    let mut b = NetBuilder::new("small");
    b.input("data")
        .param(
            "w",
            &[3, 2, 3, 3],
            (0..54).map(|i| i as f32 * 0.01).collect(),
        )
        .param("b", &[3], vec![0.1, 0.2, 0.3])
        .op(
            "Conv",
            &["data", "w", "b"],
            &["c"],
            vec![("kernel", Arg::I(3)), ("pad", Arg::I(1))],
        )
        .op("Relu", &["c"], &["out"], vec![])
        .output("out");
    b
}

fn input(shape: &[usize]) -> HashMap<String, Tensor> {
    let n = shape.iter().product();
    HashMap::from([("data".to_string(), Tensor::from_f32(shape, vec![1.0; n]))])
}

#[test]
fn unknown_op_loads_but_running_names_it() {
    let mut b = small_net();
    b.op("FancyOp", &["out"], &["fancy"], vec![]);
    b.predict.op.last_mut().unwrap().set_name("my_fancy".into());
    let (init, predict) = b.build();
    let model = Model::from_nets(init, predict).expect("unknown ops still load");
    assert_eq!(
        model.net.unsupported_ops(),
        vec![("FancyOp".to_string(), 1)]
    );
    let exec = Executor::new(&model, 1).unwrap();
    let err = exec.check(&input(&[1, 2, 4, 4])).unwrap_err().to_string();
    assert!(
        err.contains("op #2") && err.contains("FancyOp") && err.contains("my_fancy"),
        "{err}"
    );
    assert!(err.contains("not supported"), "{err}");
}

#[test]
fn missing_blob_is_named() {
    let mut b = small_net();
    b.op("Relu", &["nowhere"], &["x"], vec![]);
    let (init, predict) = b.build();
    let model = Model::from_nets(init, predict).unwrap();
    let exec = Executor::new(&model, 1).unwrap();
    let err = exec.check(&input(&[1, 2, 4, 4])).unwrap_err();
    assert!(
        matches!(err, Error::MissingBlob { ref blob, .. } if blob == "nowhere"),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("op #2") && msg.contains("Relu") && msg.contains("`nowhere`"),
        "{msg}"
    );
}

#[test]
fn shape_mismatch_names_op_and_shapes() {
    let (init, predict) = small_net().build();
    let model = Model::from_nets(init, predict).unwrap();
    let exec = Executor::new(&model, 1).unwrap();
    // 5 channels where the weights expect 2.
    let err = exec.check(&input(&[1, 5, 4, 4])).unwrap_err().to_string();
    assert!(err.contains("op #0") && err.contains("Conv"), "{err}");
    assert!(
        err.contains("[1, 5, 4, 4]") && err.contains("[3, 2, 3, 3]"),
        "{err}"
    );
    // Running without checking reports the same kind of error, not a panic.
    let err = exec.run(input(&[1, 5, 4, 4])).unwrap_err().to_string();
    assert!(err.contains("op #0") && err.contains("Conv"), "{err}");
}

#[test]
fn missing_input_is_reported() {
    let (init, predict) = small_net().build();
    let model = Model::from_nets(init, predict).unwrap();
    let exec = Executor::new(&model, 1).unwrap();
    let err = exec.run(HashMap::new()).unwrap_err().to_string();
    assert!(err.contains("`data`"), "{err}");
}

#[test]
fn bad_argument_is_reported_with_op() {
    let mut b = small_net();
    b.op(
        "Softmax",
        &["out"],
        &["sm"],
        vec![("axis", Arg::S("one".into()))],
    );
    let (init, predict) = b.build();
    let model = Model::from_nets(init, predict).unwrap();
    let exec = Executor::new(&model, 1).unwrap();
    let err = exec.check(&input(&[1, 2, 4, 4])).unwrap_err().to_string();
    assert!(
        err.contains("op #2") && err.contains("Softmax") && err.contains("axis"),
        "{err}"
    );
}

#[test]
fn truncated_and_garbage_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (init, predict) = small_net().build();
    let good = io::to_bytes(&predict, Format::Binary).unwrap();
    let trunc = dir.path().join("predict_net.pb");
    std::fs::write(&trunc, &good[..good.len() - 3]).unwrap();
    io::write(&init, dir.path().join("init_net.pb"), Format::Binary).unwrap();
    let err = Model::load_dir(dir.path()).unwrap_err().to_string();
    assert!(err.contains("predict_net.pb"), "{err}");

    let garbage = dir.path().join("garbage.pbtxt");
    std::fs::write(&garbage, "op { type: \"Relu\" input: \n ]]] nonsense {{").unwrap();
    let err = Model::load(ModelPaths {
        init: None,
        predict: garbage.clone(),
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("garbage.pbtxt"), "{err}");

    let err = Model::load_dir(dir.path().join("nope"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn conv_relu_net_matches_hand_computation() {
    // 1 input channel 3x3 of ones, one 3x3 filter of ones, pad 1, bias -4: interior = 9-4,
    // edges 6-4, corners 4-4; Relu keeps them (all >= 0).
    let mut b = NetBuilder::new("hand");
    b.input("data")
        .param("w", &[1, 1, 3, 3], vec![1.0; 9])
        .param("b", &[1], vec![-4.0])
        .op(
            "Conv",
            &["data", "w", "b"],
            &["c"],
            vec![("kernel", Arg::I(3)), ("pad", Arg::I(1))],
        )
        .op("Relu", &["c"], &["c"], vec![])
        .output("c");
    let (init, predict) = b.build();
    let model = Model::from_nets(init, predict).unwrap();
    let shapes = model
        .infer(&HashMap::from([(
            "data".to_string(),
            TensorInfo::f32(vec![1, 1, 3, 3]),
        )]))
        .check()
        .unwrap();
    assert_eq!(shapes.blobs["c"].shape, vec![1, 1, 3, 3]);
    let exec = Executor::new(&model, 1).unwrap();
    let out = exec
        .run(HashMap::from([(
            "data".to_string(),
            Tensor::from_f32(&[1, 1, 3, 3], vec![1.0; 9]),
        )]))
        .unwrap();
    assert_eq!(
        out["c"].f32_slice().unwrap(),
        &[0.0, 2.0, 0.0, 2.0, 5.0, 2.0, 0.0, 2.0, 0.0]
    );
}

/// Sizes the input controls are checked against the tensor limit before anything is
/// allocated: a ConstantFill of [60000, 60000] floats (14.4 GB) and a Conv whose pad of
/// 1,000,000 asks for a 48 TB output are errors naming the op, the shape and the limit.
#[test]
fn absurd_tensor_sizes_are_refused_before_allocating() {
    let mut b = small_net();
    b.init.op.push(caffe2_proto::OperatorDef::new());
    let fill = b.init.op.last_mut().unwrap();
    fill.set_type("ConstantFill".into());
    fill.output.push("huge".into());
    let mut shape = caffe2_proto::Argument::new();
    shape.set_name("shape".into());
    shape.ints = vec![60000, 60000];
    fill.arg.push(shape);
    let (init, predict) = b.build();
    let err = Model::from_nets(init, predict).unwrap_err().to_string();
    assert!(
        err.contains("ConstantFill")
            && err.contains("[60000, 60000]")
            && err.contains("C2Q_MAX_TENSOR_BYTES"),
        "{err}"
    );

    let mut b = small_net();
    for a in &mut b.predict.op[0].arg {
        if a.name() == "pad" {
            a.set_i(1_000_000);
        }
    }
    let (init, predict) = b.build();
    let model = Model::from_nets(init, predict).unwrap();
    let exec = Executor::new(&model, 1).unwrap();
    let err = exec.check(&input(&[1, 2, 4, 4])).unwrap_err().to_string();
    assert!(err.contains("op #0") && err.contains("limit"), "{err}");
    let err = exec.run(input(&[1, 2, 4, 4])).unwrap_err().to_string();
    assert!(err.contains("op #0") && err.contains("limit"), "{err}");
}

#[test]
fn errors_after_the_passes_give_the_op_numbers_of_the_file() {
    // File: #0 Dropout, #1 Conv, #2 SpatialBN, #3 Relu, #4 FancyOp. The passes drop the
    // Dropout and fold #2 and #3 into the Conv: the optimized net is ConvRelu, FancyOp.
    let mut b = NetBuilder::new("renumbered");
    b.input("data")
        .param(
            "w",
            &[3, 2, 3, 3],
            (0..54).map(|i| i as f32 * 0.01).collect(),
        )
        .param("b", &[3], vec![0.1, 0.2, 0.3])
        .param("s", &[3], vec![1.0, 2.0, 0.5])
        .param("o", &[3], vec![0.0, 0.1, 0.2])
        .param("m", &[3], vec![0.3, 0.2, 0.1])
        .param("v", &[3], vec![1.0, 1.5, 2.0])
        .op("Dropout", &["data"], &["d"], vec![("is_test", Arg::I(1))])
        .op(
            "Conv",
            &["d", "w", "b"],
            &["c"],
            vec![("kernel", Arg::I(3)), ("pad", Arg::I(1))],
        )
        .op(
            "SpatialBN",
            &["c", "s", "o", "m", "v"],
            &["c"],
            vec![("is_test", Arg::I(1))],
        )
        .op("Relu", &["c"], &["r"], vec![])
        .op("FancyOp", &["r"], &["out"], vec![])
        .output("out");
    let (init, predict) = b.build();
    let model = Model::from_nets(init, predict).unwrap();
    let (opt, _) = model.optimized().unwrap();
    let types: Vec<&str> = opt.net.nodes.iter().map(|n| n.op_type.as_str()).collect();
    assert_eq!(types, ["ConvRelu", "FancyOp"]);
    assert_eq!(opt.net.nodes[0].file_ops, [1, 2, 3]);
    assert_eq!(opt.net.nodes[1].file_ops, [4]);
    // The rewritten net carries no trace of the bookkeeping.
    assert!(opt
        .predict_def
        .op
        .iter()
        .all(|o| o.arg.iter().all(|a| !a.name().contains("c2q"))));
    let err = Executor::new(&opt, 1)
        .unwrap()
        .check(&input(&[1, 2, 4, 4]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("op #1 (FancyOp; op #4 in the file)"), "{err}");
    assert_eq!(
        opt.net.nodes[0].node_ref().to_string(),
        "predict_net op #0 (ConvRelu; ops #1 + #2 + #3 in the file)"
    );
    // Optimizing again keeps the file's numbers; an unchanged op says only its own.
    let (again, _) = opt.optimized().unwrap();
    assert_eq!(again.net.nodes[0].file_ops, [1, 2, 3]);
    assert_eq!(again.net.nodes[1].file_ops, [4]);
    assert_eq!(
        model.net.nodes[4].node_ref().to_string(),
        "predict_net op #4 (FancyOp)"
    );
}
