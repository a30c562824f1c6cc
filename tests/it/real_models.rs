//! The real models in ../shared: SqueezeNet golden outputs, ResNet-50 load/infer/run, and the
//! published int8 ResNet-50 graph in `info`. Skipped with a message when ../shared is absent.

use crate::common;

use std::collections::HashMap;

use c2q::graph::convert::tensor_from_proto;
use c2q::{Executor, Model};
use caffe2_proto::{io, TensorProto};
use ops::{Tensor, TensorInfo};

fn read_tensor(path: &std::path::Path) -> (String, Tensor) {
    let (t, _) = io::read::<TensorProto>(path).expect("golden tensor reads");
    (
        t.name().to_string(),
        tensor_from_proto(&t).expect("golden tensor converts"),
    )
}

#[test]
fn squeezenet_reproduces_golden_outputs() {
    let Some(dir) = common::shared("models/squeezenet1_1") else {
        return;
    };
    let model = Model::load_dir(&dir).expect("squeezenet loads");
    assert_eq!(model.data_inputs(), vec!["data".to_string()]);
    let exec = Executor::new(&model, 2).unwrap();
    let mut worst = 0f32;
    for k in 0..5 {
        let (_, input) = read_tensor(&dir.join(format!("golden/{k}_input.pb")));
        let (_, want) = read_tensor(&dir.join(format!("golden/{k}_output.pb")));
        let out = exec
            .run(HashMap::from([("data".to_string(), input)]))
            .expect("squeezenet runs");
        let got = &out["softmax"];
        assert_eq!(got.shape(), want.shape());
        let d = common::max_abs_diff(got.f32_slice().unwrap(), want.f32_slice().unwrap());
        eprintln!("squeezenet golden {k}: max abs diff {d:.3e}");
        worst = worst.max(d);
    }
    assert!(worst <= 1e-4, "max abs diff {worst} > 1e-4");
}

#[test]
fn resnet50_loads_infers_and_runs() {
    let Some(dir) = common::shared("models/resnet50") else {
        return;
    };
    let model = Model::load_dir(&dir).expect("resnet50 loads");
    assert_eq!(model.net.nodes.len(), 175);
    assert_eq!(model.data_inputs(), vec!["gpu_0/data".to_string()]);
    let shapes = model
        .infer(&HashMap::from([(
            "gpu_0/data".to_string(),
            TensorInfo::f32(vec![2, 3, 224, 224]),
        )]))
        .check()
        .expect("shape inference succeeds");
    assert_eq!(shapes.blobs["gpu_0/softmax"].shape, vec![2, 1000]);
    // conv1 -> 112, pool1 -> 56, res5 -> 7 (facts §4.1).
    assert_eq!(shapes.blobs["gpu_0/conv1"].shape, vec![2, 64, 112, 112]);
    assert_eq!(shapes.blobs["gpu_0/pool1"].shape, vec![2, 64, 56, 56]);
    assert_eq!(
        shapes.blobs["gpu_0/res5_2_branch2c"].shape,
        vec![2, 2048, 7, 7]
    );
    // Independent count: the product of every fill op's `shape` argument in the init_net.
    let expected: usize = model
        .init_def
        .as_ref()
        .unwrap()
        .op
        .iter()
        .map(|op| {
            let shape = op
                .arg
                .iter()
                .find(|a| a.name() == "shape")
                .expect("fill op has a shape");
            shape.ints.iter().product::<i64>() as usize
        })
        .sum();
    let (params, bytes) = model.param_totals();
    assert_eq!(params, expected);
    assert_eq!(params, 25_610_152);
    assert_eq!(bytes, 4 * expected);
    assert_eq!(
        model.params.len(),
        model.init_def.as_ref().unwrap().op.len()
    );
    let exec = Executor::new(&model, 2).unwrap();
    let mut x = vec![0f32; 3 * 224 * 224];
    for (i, v) in x.iter_mut().enumerate() {
        *v = ((i * 7919) % 1000) as f32 / 500.0 - 1.0;
    }
    let out = exec
        .run(HashMap::from([(
            "gpu_0/data".to_string(),
            Tensor::from_f32(&[1, 3, 224, 224], x),
        )]))
        .expect("resnet50 runs");
    let p = out["gpu_0/softmax"].f32_slice().unwrap();
    assert_eq!(p.len(), 1000);
    let sum: f32 = p.iter().sum();
    assert!((sum - 1.0).abs() < 1e-4, "softmax sums to {sum}");
    assert!(p.iter().all(|v| v.is_finite() && *v >= 0.0));
}

#[test]
fn resnet50_quantized_predict_net_loads_for_info() {
    let Some(dir) = common::shared("models/resnet50_quantized") else {
        return;
    };
    let model = Model::load(c2q::ModelPaths {
        init: None,
        predict: dir.join("predict_net.pb"),
    })
    .expect("int8 predict net loads without init_net");
    assert_eq!(model.net.nodes.len(), 76);
    assert_eq!(model.net.name, "quant_resnet50_1");
    assert_eq!(model.data_inputs(), vec!["gpu_0/data_0".to_string()]);
    assert_eq!(model.outputs(), vec!["gpu_0/softmax_1".to_string()]);
    let count = |t: &str| model.net.nodes.iter().filter(|n| n.op_type == t).count();
    assert_eq!(count("Int8ConvRelu"), 33);
    assert_eq!(count("Int8Conv"), 20);
    assert_eq!(count("Int8SumRelu"), 16);
    // The text twin describes the same net.
    let text = Model::load(c2q::ModelPaths {
        init: None,
        predict: dir.join("predict_net.pbtxt"),
    })
    .unwrap();
    assert_eq!(text.predict_def, model.predict_def);
}
