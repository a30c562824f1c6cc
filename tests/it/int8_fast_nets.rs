//! Whole int8 nets: the fast kernels give the same bytes as the scalar reference executor for
//! every blob of real-sized nets (SqueezeNet and ResNet-50 quantized by c2q, and the published
//! `resnet50_quantized` graph with synthetic weights).

use crate::common;

use common::int8::{first_images, quantized};

use std::collections::HashMap;

use c2q::{Executor, Model, ModelPaths, Node, Observer};
use caffe2_proto::NetDef;
use ndarray::{ArrayD, IxDyn};
use ops::{QParams, Tensor};

/// Every output of every node, as bytes, in execution order.
#[derive(Default)]
struct Record(Vec<(String, Vec<u8>)>);

impl Observer for Record {
    fn on_node(&mut self, node: &Node, outputs: &[&Tensor]) {
        for (name, t) in node.outputs.iter().zip(outputs) {
            self.0.push((name.clone(), tensor_bytes(t)));
        }
    }
}

/// A tensor's values (and quantization parameters) as bytes.
fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    match t {
        Tensor::QU8(a, q) => {
            let mut v: Vec<u8> = a.iter().copied().collect();
            v.extend(q.scale.to_le_bytes());
            v.extend(q.zero_point.to_le_bytes());
            v
        }
        Tensor::F32(a) => a.iter().flat_map(|x| x.to_le_bytes()).collect(),
        other => format!("{other:?}").into_bytes(),
    }
}

fn record(model: &Model, feed: &HashMap<String, Tensor>, threads: usize) -> Record {
    let mut r = Record::default();
    Executor::new(model, threads)
        .unwrap()
        .run_observed(feed.clone(), Some(&mut r))
        .unwrap();
    r
}

/// Runs `int8` with the fast kernels (1 and 2 threads) and the reference, and asserts that
/// every blob is identical. Returns the number of distinct codes in the last Int8 blob.
fn assert_fast_equals_reference(int8: &Model, feed: &HashMap<String, Tensor>) -> usize {
    assert!(!int8.uses_reference());
    let fast1 = record(int8, feed, 1);
    let fast2 = record(int8, feed, 2);
    let mut reference = Model::from_parts(
        int8.paths.clone(),
        int8.init_def.clone(),
        int8.predict_def.clone(),
        int8.params.clone(),
    );
    reference.set_reference(true);
    let slow = record(&reference, feed, 2);
    assert_eq!(fast1.0.len(), slow.0.len());
    for ((a, b), (c, d)) in fast1.0.iter().zip(&slow.0) {
        assert_eq!(a, c);
        assert!(b == d, "blob `{a}` differs between fast and reference");
    }
    assert!(
        fast1.0 == fast2.0,
        "fast results depend on the thread count"
    );
    // `run` on 2 threads cuts a batch into per-thread parts: the joined outputs are the
    // same bytes as the whole-batch run.
    let batch = feed.values().next().unwrap().shape()[0];
    let exec = Executor::new(int8, 2).unwrap();
    let split = exec.run(feed.clone()).unwrap();
    assert_eq!(exec.batch_streams(batch), batch.min(2));
    for name in int8.outputs() {
        let (_, whole) = fast1.0.iter().rev().find(|(n, _)| *n == name).unwrap();
        assert!(
            tensor_bytes(&split[&name]) == *whole,
            "output `{name}` differs when split"
        );
    }
    // `run` on 1 thread runs the first layers image by image when the batch's activations
    // would spill from the caches (`prefix_cut`): the same bytes again.
    let one = Executor::new(int8, 1).unwrap().run(feed.clone()).unwrap();
    for name in int8.outputs() {
        let (_, whole) = fast1.0.iter().rev().find(|(n, _)| *n == name).unwrap();
        assert!(
            tensor_bytes(&one[&name]) == *whole,
            "output `{name}` differs when run image by image"
        );
    }
    let last_int8 = int8
        .net
        .nodes
        .iter()
        .rposition(|n| n.op_type.starts_with("Int8") && n.op_type != "Int8Dequantize")
        .unwrap();
    let name = &int8.net.nodes[last_int8].outputs[0];
    let (_, bytes) = fast1.0.iter().rev().find(|(n, _)| n == name).unwrap();
    let mut codes: Vec<u8> = bytes[..bytes.len() - 8].to_vec();
    codes.sort_unstable();
    codes.dedup();
    codes.len()
}

#[test]
fn squeezenet_int8_fast_equals_reference_per_tensor_and_per_channel() {
    let (Some(dir), Some(db)) = (
        common::shared("models/squeezenet1_1"),
        common::shared("data/imagenet100"),
    ) else {
        return;
    };
    let model = Model::load_dir(&dir).unwrap().optimized().unwrap().0;
    let x = first_images(&db, 2);
    for per_channel in [false, true] {
        let int8 = quantized(&model, &db, 4, per_channel);
        let feed = HashMap::from([(model.data_input().unwrap(), x.clone())]);
        // Two images of SqueezeNet spill from L2: the first layers run image by image.
        let sig: Vec<_> = feed.iter().map(|(k, t)| (k.clone(), t.info())).collect();
        assert!(c2q::runtime::executor::prefix_cut(&int8, &sig).is_some());
        let distinct = assert_fast_equals_reference(&int8, &feed);
        assert!(
            distinct > 50,
            "last int8 blob has only {distinct} distinct codes"
        );
    }
}

#[test]
fn resnet50_int8_fast_equals_reference() {
    let (Some(dir), Some(db)) = (
        common::shared("models/resnet50"),
        common::shared("data/imagenet100"),
    ) else {
        return;
    };
    let model = Model::load_dir(&dir).unwrap().optimized().unwrap().0;
    let int8 = quantized(&model, &db, 1, false);
    let feed = HashMap::from([(model.data_input().unwrap(), first_images(&db, 1))]);
    let distinct = assert_fast_equals_reference(&int8, &feed);
    assert!(
        distinct > 20,
        "last int8 blob has only {distinct} distinct codes"
    );
}

#[test]
fn published_resnet50_quantized_runs_with_synthetic_weights() {
    let Some((model, feed)) = common::int8::published_resnet50_quantized() else {
        return;
    };
    let distinct = assert_fast_equals_reference(&model, &feed);
    assert!(
        distinct > 20,
        "last int8 blob has only {distinct} distinct codes"
    );
}

/// A QNNPACK-style int8 net (engine "" and `NNPACK,DEPTHWISE_3x3`, uint8 weights with their own
/// zero points, a separate Int8Relu, a depthwise conv, Int8Add, global pooling, Int8FC), as
/// the mobile nets of the Caffe2 zoo are built: the fast kernels match the reference.
#[test]
fn qnnpack_style_net_fast_equals_reference() {
    use c2q::graph::builder::{op_def, Arg};
    let q = |scale: f32, zero_point: i32| QParams { scale, zero_point };
    let mut rng = ops::rng::Rng::new(11);
    let mut codes =
        |n: usize| -> Vec<u8> { (0..n).map(|_| (rng.next_u64() >> 56) as u8).collect() };
    let qu8 = |shape: &[usize], v: Vec<u8>, p: QParams| {
        Tensor::QU8(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap(), p)
    };
    let qi32 = |v: Vec<i32>, s: f32| {
        Tensor::QI32(
            ArrayD::from_shape_vec(IxDyn(&[v.len()]), v).unwrap(),
            q(s, 0),
        )
    };
    let (x_q, c1_q, dw_q, add_q, fc_q) = (
        q(0.02, 114),
        q(0.05, 90),
        q(0.04, 100),
        q(0.06, 110),
        q(0.1, 78),
    );
    let (w1_q, wd_q, wf_q) = (q(0.004, 100), q(0.01, 131), q(0.003, 120));
    let mut params = HashMap::new();
    params.insert("w1".to_string(), qu8(&[16, 3, 3, 3], codes(16 * 27), w1_q));
    params.insert(
        "b1".to_string(),
        qi32((0..16).map(|i| i * 37 - 300).collect(), 0.02 * 0.004),
    );
    params.insert("wd".to_string(), qu8(&[16, 3, 3, 1], codes(16 * 9), wd_q));
    params.insert(
        "bd".to_string(),
        qi32((0..16).map(|i| 50 - i * 11).collect(), 0.05 * 0.01),
    );
    params.insert("wf".to_string(), qu8(&[10, 16], codes(160), wf_q));
    params.insert(
        "bf".to_string(),
        qi32((0..10).map(|i| i * 200 - 900).collect(), 0.06 * 0.003),
    );
    let y = |p: QParams| -> Vec<(&'static str, Arg)> {
        vec![
            ("Y_scale", Arg::F(p.scale)),
            ("Y_zero_point", Arg::I(p.zero_point as i64)),
        ]
    };
    let conv = |k: i64, pad: i64, group: i64, p: QParams| {
        let mut a = vec![
            ("kernel", Arg::I(k)),
            ("pad", Arg::I(pad)),
            ("group", Arg::I(group)),
            ("order", Arg::S("NHWC".into())),
        ];
        a.extend(y(p));
        a
    };
    let mut net = NetDef::new();
    net.set_name("qnnpack_style".into());
    net.external_input = ["data", "w1", "b1", "wd", "bd", "wf", "bf"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    net.external_output = vec!["prob".into()];
    let mut ops = vec![
        op_def("NCHW2NHWC", &["data"], &["data_nhwc"], vec![]),
        op_def("Int8Quantize", &["data_nhwc"], &["x"], y(x_q)),
        op_def("Int8Conv", &["x", "w1", "b1"], &["c1"], conv(3, 1, 1, c1_q)),
        op_def("Int8Relu", &["c1"], &["r1"], y(c1_q)),
        op_def(
            "Int8Conv",
            &["r1", "wd", "bd"],
            &["dw"],
            conv(3, 1, 16, dw_q),
        ),
        op_def("Int8Add", &["dw", "r1"], &["s"], y(add_q)),
        op_def(
            "Int8AveragePool",
            &["s"],
            &["p"],
            [
                vec![
                    ("global_pooling", Arg::I(1)),
                    ("order", Arg::S("NHWC".into())),
                ],
                y(add_q),
            ]
            .concat(),
        ),
        op_def("Int8FC", &["p", "wf", "bf"], &["f"], y(fc_q)),
        op_def("Int8Dequantize", &["f"], &["logits"], vec![]),
        op_def("Softmax", &["logits"], &["prob"], vec![]),
    ];
    ops[4].set_engine("NNPACK,DEPTHWISE_3x3".into());
    net.op = ops;
    let model = Model::from_parts(
        ModelPaths {
            init: None,
            predict: "<memory>/predict_net".into(),
        },
        None,
        net,
        params,
    );
    let x: Vec<f32> = (0..2 * 3 * 16 * 16)
        .map(|i| ((i * 7919) % 211) as f32 / 50.0 - 2.0)
        .collect();
    let feed = HashMap::from([("data".to_string(), Tensor::from_f32(&[2, 3, 16, 16], x))]);
    let distinct = assert_fast_equals_reference(&model, &feed);
    assert!(distinct > 5, "FC output has only {distinct} distinct codes");
}
