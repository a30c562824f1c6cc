//! Int8 models for the whole-net tests: c2q-quantized real nets and the published
//! `resnet50_quantized` graph with synthetic weights.

use std::collections::HashMap;

use c2q::quant::calibrate::calibrate_db;
use c2q::quant::{quantize_model, ChooseOptions, QuantKind, QuantizeOptions, WeightGranularity};
use c2q::{Model, ModelPaths};
use caffe2_proto::{io, NetDef};
use ndarray::{ArrayD, IxDyn};
use ops::{QParams, Tensor};

/// `model` quantized by c2q (min/max activation ranges from `images` images of `db`).
pub fn quantized(model: &Model, db: &std::path::Path, images: usize, per_channel: bool) -> Model {
    let pre = data::Preprocess::default();
    let opts = data::BatchOptions {
        batch_size: images,
        limit: Some(images),
        preprocess: pre.clone(),
        ..data::BatchOptions::default()
    };
    let (cal, _) = calibrate_db(model, db, opts, 2, 2048, None).unwrap();
    let act = cal
        .choose(model, &ChooseOptions::new(QuantKind::MinMax, false))
        .unwrap();
    let mut q = QuantizeOptions {
        weights: if per_channel {
            WeightGranularity::PerChannel
        } else {
            WeightGranularity::PerTensor
        },
        ..QuantizeOptions::default()
    };
    q.input_shapes
        .insert(model.data_input().unwrap(), pre.batch_shape(1).to_vec());
    let int8 = quantize_model(model, &act.per_op, &act.inputs, &q).unwrap();
    Model::from_nets(int8.init, int8.predict).unwrap()
}

/// The first `n` images of `db`, preprocessed as one batch.
pub fn first_images(db: &std::path::Path, n: usize) -> Tensor {
    let pre = data::Preprocess::default();
    let opts = data::BatchOptions {
        batch_size: n,
        limit: Some(n),
        preprocess: pre.clone(),
        ..data::BatchOptions::default()
    };
    let b = data::Batches::open(db, opts)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    Tensor::from_f32(&pre.batch_shape(b.n), b.images)
}

/// The published `resnet50_quantized` predict net with synthetic weights (shapes from the
/// fp32 zoo net, codes around 128, weight scales that keep the outputs spread over tens of
/// codes) and a synthetic input, or None when `../shared` is absent.
pub fn published_resnet50_quantized() -> Option<(Model, HashMap<String, Tensor>)> {
    let qdir = super::shared("models/resnet50_quantized")?;
    let fdir = super::shared("models/resnet50")?;
    let (predict, _) = io::read::<NetDef>(qdir.join("predict_net.pb")).unwrap();
    // Weight shapes from the fp32 zoo init_net (`shape` args), transposed to NHWC filters.
    let (finit, _) = io::read::<NetDef>(fdir.join("init_net.pbtxt")).unwrap();
    let shapes: HashMap<String, Vec<usize>> = finit
        .op
        .iter()
        .filter_map(|op| {
            let s = op.arg.iter().find(|a| a.name() == "shape")?;
            Some((
                op.output[0].clone(),
                s.ints.iter().map(|&d| d as usize).collect(),
            ))
        })
        .collect();
    // Scales of every blob as the net is walked (names are reused, so in order).
    let arg_f = |op: &caffe2_proto::OperatorDef, n: &str| {
        op.arg.iter().find(|a| a.name() == n).map(|a| a.f())
    };
    let mut scale: HashMap<String, f32> = HashMap::new();
    let mut params: HashMap<String, Tensor> = HashMap::new();
    let mut rng = ops::rng::Rng::new(7);
    for op in &predict.op {
        let t = op.type_();
        if t.starts_with("Int8Conv") || t == "Int8FC" {
            let sx = scale[&op.input[0]];
            let sy = arg_f(op, "Y_scale").unwrap();
            let fp32_name = op.input[1].replace("_w_0_int8", "_w");
            let s = &shapes[&fp32_name];
            let shape: Vec<usize> = if s.len() == 4 {
                vec![s[0], s[2], s[3], s[1]]
            } else {
                s.clone()
            };
            let m = shape[0];
            let k: usize = shape[1..].iter().product();
            // Codes uniform in 128 ± 40 (std ≈ 23); pick the weight scale so that the output
            // spread is tens of codes: s_w = s_y / (s_x · √K · 23) · 30/30.
            let sw = sy / (sx * (k as f32).sqrt() * 23.0);
            let codes: Vec<u8> = (0..m * k)
                .map(|_| 88 + rng.uniform_i64(0, 80) as u8)
                .collect();
            params.insert(
                op.input[1].clone(),
                Tensor::QU8(
                    ArrayD::from_shape_vec(IxDyn(&shape), codes).unwrap(),
                    QParams {
                        scale: sw,
                        zero_point: 128,
                    },
                ),
            );
            let sb = sx * sw;
            let bias: Vec<i32> = (0..m)
                .map(|_| (rng.uniform_i64(0, 20) as i32 - 10) * ((sy / sb) as i32).max(1))
                .collect();
            params.insert(
                op.input[2].clone(),
                Tensor::QI32(
                    ArrayD::from_shape_vec(IxDyn(&[m]), bias).unwrap(),
                    QParams {
                        scale: sb,
                        zero_point: 0,
                    },
                ),
            );
        }
        let out_scale =
            arg_f(op, "Y_scale").or_else(|| op.input.first().and_then(|i| scale.get(i).copied()));
        if let Some(s) = out_scale {
            scale.insert(op.output[0].clone(), s);
        }
    }
    assert_eq!(params.len(), 2 * 54);
    let model = Model::from_parts(
        ModelPaths {
            init: None,
            predict: qdir.join("predict_net.pb"),
        },
        None,
        predict,
        params,
    );
    assert_eq!(model.data_inputs(), ["gpu_0/data_0"]);
    let x: Vec<f32> = (0..3 * 224 * 224)
        .map(|i| ((i * 2_654_435_761usize) % 1000) as f32 / 400.0 - 1.25)
        .collect();
    let feed = HashMap::from([(
        "gpu_0/data_0".to_string(),
        Tensor::from_f32(&[1, 3, 224, 224], x),
    )]);
    Some((model, feed))
}
