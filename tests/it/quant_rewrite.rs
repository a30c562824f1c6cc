//! The int8 rewrite pass: op sequences, weight/bias codes, fp32 boundaries, and int8 runs
//! close to fp32.

use crate::common;

use std::collections::HashMap;

use c2q::graph::builder::{Arg, NetBuilder};
use c2q::quant::bias_correction::ChannelMeans;
use c2q::quant::qparams::choose_activation_params;
use c2q::quant::{
    quantize_model, Int8Model, Outcome, QuantKind, QuantizeOptions, WeightGranularity,
};
use c2q::{Executor, Model, Node, Observer};
use caffe2_proto::{io, NetDef, OperatorDef};
use ops::{QParams, Tensor};

/// Deterministic pseudo-random values in [-amp, amp].
fn values(n: usize, seed: u64, amp: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32 * 2.0 - 1.0) * amp
        })
        .collect()
}

/// data [1,3,8,8] -> Conv+Relu -> MaxPool -> (Conv+Relu, Conv 1x1 on the pool) -> Sum+Relu
/// -> global AveragePool -> FC -> Softmax.
fn small_cnn() -> NetBuilder {
    let mut b = NetBuilder::new("small_cnn");
    b.input("data")
        .param("w1", &[4, 3, 3, 3], values(108, 1, 0.5))
        .param("b1", &[4], vec![0.1, -0.2, 0.05, 0.3])
        .param("w2", &[4, 4, 3, 3], values(144, 2, 0.3))
        .param("b2", &[4], vec![0.0, 0.1, -0.1, 0.2])
        .param("w3", &[4, 4, 1, 1], values(16, 3, 0.8))
        .param("b3", &[4], vec![0.05, 0.0, -0.05, 0.1])
        .param("fc_w", &[5, 4], values(20, 4, 1.0))
        .param("fc_b", &[5], vec![0.1, 0.0, -0.1, 0.2, -0.2])
        .op(
            "Conv",
            &["data", "w1", "b1"],
            &["c1"],
            vec![("kernel", Arg::I(3)), ("pad", Arg::I(1))],
        )
        .op("Relu", &["c1"], &["c1"], vec![])
        .op(
            "MaxPool",
            &["c1"],
            &["p1"],
            vec![("kernel", Arg::I(2)), ("stride", Arg::I(2))],
        )
        .op(
            "Conv",
            &["p1", "w2", "b2"],
            &["c2"],
            vec![("kernel", Arg::I(3)), ("pad", Arg::I(1))],
        )
        .op("Relu", &["c2"], &["c2"], vec![])
        .op(
            "Conv",
            &["c2", "w3", "b3"],
            &["c3"],
            vec![("kernel", Arg::I(1))],
        )
        .op("Sum", &["c3", "p1"], &["s"], vec![])
        .op("Relu", &["s"], &["s"], vec![])
        .op(
            "AveragePool",
            &["s"],
            &["g"],
            vec![("kernel", Arg::I(4)), ("stride", Arg::I(1))],
        )
        .op("FC", &["g", "fc_w", "fc_b"], &["fc"], vec![])
        .op("Softmax", &["fc"], &["prob"], vec![])
        .output("prob");
    b
}

/// Min/max of every op output.
#[derive(Default)]
struct MinMax(HashMap<(usize, usize), (f32, f32)>);

impl Observer for MinMax {
    fn on_node(&mut self, node: &Node, outputs: &[&Tensor]) {
        for (k, t) in outputs.iter().enumerate() {
            if let Ok(v) = t.f32_slice() {
                let e = self.0.entry((node.index, k)).or_insert((0.0, 0.0));
                for &x in v {
                    e.0 = e.0.min(x);
                    e.1 = e.1.max(x);
                }
            }
        }
    }
}

fn feed(name: &str, shape: &[usize], v: Vec<f32>) -> HashMap<String, Tensor> {
    HashMap::from([(name.to_string(), Tensor::from_f32(shape, v))])
}

/// Calibrates `model` (already optimized) on one input: min/max params per output.
fn calibrate(model: &Model, input: &HashMap<String, Tensor>) -> Vec<Vec<Option<QParams>>> {
    let exec = Executor::new(model, 1).unwrap();
    let mut obs = MinMax::default();
    exec.run_observed(input.clone(), Some(&mut obs)).unwrap();
    model
        .predict_def
        .op
        .iter()
        .enumerate()
        .map(|(i, op)| {
            (0..op.output.len())
                .map(|k| {
                    obs.0
                        .get(&(i, k))
                        .map(|&(lo, hi)| choose_activation_params(lo, hi, false))
                })
                .collect()
        })
        .collect()
}

fn types(net: &NetDef) -> Vec<String> {
    net.op.iter().map(|o| o.type_().to_string()).collect()
}

fn arg_names(op: &OperatorDef) -> Vec<String> {
    let mut v: Vec<String> = op.arg.iter().map(|a| a.name().to_string()).collect();
    v.sort();
    v
}

fn arg_f(op: &OperatorDef, name: &str) -> f32 {
    op.arg.iter().find(|a| a.name() == name).unwrap().f()
}

fn arg_i(op: &OperatorDef, name: &str) -> i64 {
    op.arg.iter().find(|a| a.name() == name).unwrap().i()
}

fn run_out(model: &Model, input: &HashMap<String, Tensor>, out: &str) -> Vec<f32> {
    let exec = Executor::new(model, 1).unwrap();
    exec.run(input.clone()).unwrap()[out]
        .f32_slice()
        .unwrap()
        .to_vec()
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::MIN),
            |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) },
        )
        .0
}

struct Setup {
    fp32: Model,
    input: HashMap<String, Tensor>,
    act: Vec<Vec<Option<QParams>>>,
    input_q: HashMap<String, QParams>,
    opts: QuantizeOptions,
}

fn setup(b: &NetBuilder, shape: &[usize]) -> Setup {
    let (init, predict) = b.build();
    let model = Model::from_nets(init, predict).unwrap();
    let (fp32, _) = model.optimized().unwrap();
    let n = shape.iter().product();
    let x = values(n, 99, 1.0);
    let (lo, hi) = x
        .iter()
        .fold((0f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
    let input = feed("data", shape, x);
    let act = calibrate(&fp32, &input);
    let input_q = HashMap::from([("data".to_string(), choose_activation_params(lo, hi, false))]);
    let mut opts = QuantizeOptions {
        weights: WeightGranularity::PerTensor,
        ..QuantizeOptions::default()
    };
    opts.input_shapes.insert("data".into(), shape.to_vec());
    Setup {
        fp32,
        input,
        act,
        input_q,
        opts,
    }
}

/// Activation parameters for a net with `ops` single-output ops, all (0.05, 128), the data
/// input quantized with `input`, and options giving the data input `shape`.
fn fixed_params(
    ops: usize,
    input: QParams,
    shape: &[usize],
) -> (
    Vec<Vec<Option<QParams>>>,
    HashMap<String, QParams>,
    QuantizeOptions,
) {
    let q1 = QParams {
        scale: 0.05,
        zero_point: 128,
    };
    let mut opts = QuantizeOptions {
        weights: WeightGranularity::PerTensor,
        ..QuantizeOptions::default()
    };
    opts.input_shapes.insert("data".into(), shape.to_vec());
    (
        vec![vec![Some(q1)]; ops],
        HashMap::from([("data".to_string(), input)]),
        opts,
    )
}

fn load(q: &Int8Model) -> Model {
    Model::from_nets(q.init.clone(), q.predict.clone()).unwrap()
}

#[test]
fn small_cnn_op_sequence_args_and_accuracy() {
    let s = setup(&small_cnn(), &[1, 3, 8, 8]);
    assert_eq!(
        types(&s.fp32.predict_def),
        [
            "ConvRelu",
            "MaxPool",
            "ConvRelu",
            "Conv",
            "SumRelu",
            "AveragePool",
            "FC",
            "Softmax"
        ]
    );
    let q = quantize_model(&s.fp32, &s.act, &s.input_q, &s.opts).unwrap();
    assert_eq!(
        types(&q.predict),
        [
            "NCHW2NHWC",
            "Int8Quantize",
            "Int8ConvRelu",
            "Int8MaxPool",
            "Int8ConvRelu",
            "Int8Conv",
            "Int8SumRelu",
            "Int8AveragePool",
            "Int8FC",
            "Int8Dequantize",
            "Softmax"
        ]
    );
    let p = &q.predict.op;
    assert_eq!(p[0].engine(), "");
    assert_eq!(p[10].engine(), "");
    for op in &p[1..10] {
        assert_eq!(op.engine(), "DNNLOWP", "{}", op.type_());
    }
    assert_eq!(arg_names(&p[1]), ["Y_scale", "Y_zero_point"]);
    assert_eq!(
        arg_names(&p[2]),
        ["Y_scale", "Y_zero_point", "kernel", "order", "pad"]
    );
    assert_eq!(p[2].input, ["data_int8", "w1_int8", "b1_int8"]);
    assert_eq!(
        arg_names(&p[3]),
        ["Y_scale", "Y_zero_point", "kernel", "order", "stride"]
    );
    assert_eq!(p[10].input, ["fc"]);
    assert_eq!(p[9].input, ["fc_int8"]);
    // Quantize params = input_q; MaxPool params = its input's (the ConvRelu output's).
    assert_eq!(arg_f(&p[1], "Y_scale"), s.input_q["data"].scale);
    assert_eq!(
        arg_i(&p[1], "Y_zero_point"),
        s.input_q["data"].zero_point as i64
    );
    assert_eq!(arg_f(&p[3], "Y_scale"), arg_f(&p[2], "Y_scale"));
    assert_eq!(arg_i(&p[2], "Y_zero_point"), 0);
    assert_eq!(arg_i(&p[6], "Y_zero_point"), 0);
    assert_eq!(arg_f(&p[5], "Y_scale"), s.act[3][0].unwrap().scale);
    // Net interface unchanged.
    assert_eq!(q.predict.external_output, ["prob"]);
    assert_eq!(q.predict.external_input[0], "data");
    assert_eq!(q.init.op.len(), 8);
    assert!(q
        .init
        .op
        .iter()
        .all(|o| o.type_() == "Int8GivenTensorFill" || o.type_() == "Int8GivenIntTensorFill"));
    // Conv weights are stored NHWC [M, kH, kW, C/G].
    assert_eq!(q.params["w2_int8"].shape(), &[4, 3, 3, 4]);
    assert_eq!(q.quantized_count(), 7);
    assert!(matches!(&q.report[7].outcome, Outcome::KeptFp32(r) if r.contains("Softmax")));

    let m = load(&q);
    let want = run_out(&s.fp32, &s.input, "prob");
    let got = run_out(&m, &s.input, "prob");
    let d = common::max_abs_diff(&want, &got);
    eprintln!("small cnn: fp32 {want:?} int8 {got:?} max diff {d:.4}");
    assert_eq!(argmax(&want), argmax(&got));
    assert!(d < 0.03, "max |Δp| {d}");
}

#[test]
fn fc_on_spatial_input_permutes_weight_columns() {
    // data [1,2,3,3] -> Conv 1x1 (+Relu) -> FC over C*H*W = 18 -> out (external, 2-D).
    let mut b = NetBuilder::new("fc_perm");
    b.input("data")
        .param("w", &[2, 2, 1, 1], vec![1.0, -0.5, 0.3, 0.8])
        .param("b", &[2], vec![0.1, -0.1])
        .param("fw", &[3, 18], values(54, 7, 1.0))
        .param("fb", &[3], vec![0.0, 0.1, -0.1])
        .op(
            "Conv",
            &["data", "w", "b"],
            &["c"],
            vec![("kernel", Arg::I(1))],
        )
        .op("Relu", &["c"], &["c"], vec![])
        .op("FC", &["c", "fw", "fb"], &["out"], vec![])
        .output("out");
    let s = setup(&b, &[1, 2, 3, 3]);
    let q = quantize_model(&s.fp32, &s.act, &s.input_q, &s.opts).unwrap();
    assert_eq!(
        types(&q.predict),
        [
            "NCHW2NHWC",
            "Int8Quantize",
            "Int8ConvRelu",
            "Int8FC",
            "Int8Dequantize"
        ]
    );
    assert_eq!(q.predict.op[4].output, ["out"]);
    // Column (c, h, w) of the fp32 weight moves to column (h, w, c).
    let fw = &s.fp32.params["fw"];
    let fw = fw.f32_slice().unwrap();
    let Tensor::QU8(codes, wq) = &q.params["fw_int8"] else {
        panic!("fw_int8 is not QU8");
    };
    let codes = codes.as_slice().unwrap();
    for n in 0..3 {
        for c in 0..2 {
            for hw in 0..9 {
                let real = wq.scale * (codes[n * 18 + hw * 2 + c] as i32 - wq.zero_point) as f32;
                let orig = fw[n * 18 + c * 9 + hw];
                assert!((real - orig).abs() <= wq.scale / 2.0 + 1e-6, "{n} {c} {hw}");
            }
        }
    }
    let want = run_out(&s.fp32, &s.input, "out");
    let got = run_out(&load(&q), &s.input, "out");
    let range = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = common::max_abs_diff(&want, &got);
    eprintln!("fc permute: fp32 {want:?} int8 {got:?}");
    assert!(d < 0.05 * range, "max |Δ| {d} of {range}");
}

#[test]
fn tiny_conv_weight_and_bias_codes_by_hand() {
    // w [M=1, C=2, kH=1, kW=2] = [-1, 0.5, 0.25, 1]: w[0,c,0,k] at c*2 + k.
    let mut b = NetBuilder::new("tiny");
    b.input("data")
        .param("w", &[1, 2, 1, 2], vec![-1.0, 0.5, 0.25, 1.0])
        .param("b", &[1], vec![0.3])
        .op(
            "Conv",
            &["data", "w", "b"],
            &["y"],
            vec![("kernel_h", Arg::I(1)), ("kernel_w", Arg::I(2))],
        )
        .output("y");
    let (init, predict) = b.build();
    let model = Model::from_nets(init, predict).unwrap();
    let act = vec![vec![Some(QParams {
        scale: 0.1,
        zero_point: 128,
    })]];
    let input_q = HashMap::from([(
        "data".to_string(),
        QParams {
            scale: 0.02,
            zero_point: 128,
        },
    )]);
    let mut opts = QuantizeOptions::default();
    opts.input_shapes.insert("data".into(), vec![1, 2, 2, 3]);
    let q = quantize_model(&model, &act, &input_q, &opts).unwrap();
    // Symmetric: t = max(1/128, 1/127) = 1/127; range [-128/127, 1] -> scale 1/127, zp 128.
    let Tensor::QU8(w, wq) = &q.params["w_int8"] else {
        panic!("w_int8 is not QU8");
    };
    assert!((wq.scale - 1.0 / 127.0).abs() < 1e-9, "{}", wq.scale);
    assert_eq!(wq.zero_point, 128);
    // NHWC [1, 1, 2, 2] order (k, c): -1, 0.25, 0.5, 1 -> -127, 32 (31.75), 64 (63.5), 127 + 128.
    assert_eq!(w.shape(), &[1, 1, 2, 2]);
    assert_eq!(w.as_slice().unwrap(), &[1, 160, 192, 255]);
    // Bias: 0.3 / (0.02 / 127) = 1905, scale 0.02/127, zero point 0.
    let Tensor::QI32(bq, bp) = &q.params["b_int8"] else {
        panic!("b_int8 is not QI32");
    };
    assert_eq!(bq.as_slice().unwrap(), &[1905]);
    assert!((bp.scale - 0.02 / 127.0).abs() < 1e-9);
    assert_eq!(bp.zero_point, 0);
    // The fill ops carry the same numbers.
    let wf = &q.init.op[0];
    assert_eq!(wf.type_(), "Int8GivenTensorFill");
    let vals = wf.arg.iter().find(|a| a.name() == "values").unwrap();
    assert_eq!(vals.s(), &[1u8, 160, 192, 255]);
    assert_eq!(arg_i(wf, "Y_zero_point"), 128);
    let bf = &q.init.op[1];
    assert_eq!(bf.type_(), "Int8GivenIntTensorFill");
    assert_eq!(
        bf.arg.iter().find(|a| a.name() == "values").unwrap().ints,
        [1905]
    );
    // Output y is 4-D: Dequantize then NHWC2NCHW back to `y`.
    assert_eq!(
        types(&q.predict),
        [
            "NCHW2NHWC",
            "Int8Quantize",
            "Int8Conv",
            "Int8Dequantize",
            "NHWC2NCHW"
        ]
    );
    assert_eq!(q.predict.op[4].output, ["y"]);
    // Run: x = 0.02 * [1..12]; y = conv by hand, compared within one output step (0.1).
    let x: Vec<f32> = (1..=12).map(|i| i as f32 * 0.02).collect();
    let input = feed("data", &[1, 2, 2, 3], x.clone());
    let got = run_out(&load(&q), &input, "y");
    let wv = [-1.0f32, 0.5, 0.25, 1.0];
    let mut want = Vec::new();
    for h in 0..2 {
        for ow in 0..2 {
            let mut acc = 0.3f32;
            for c in 0..2 {
                for k in 0..2 {
                    acc += wv[c * 2 + k] * x[c * 6 + h * 3 + ow + k];
                }
            }
            want.push(acc);
        }
    }
    assert_eq!(got.len(), 4);
    let d = common::max_abs_diff(&want, &got);
    assert!(d <= 0.051, "{want:?} vs {got:?}");
}

#[test]
fn excluded_ops_get_dequantize_and_quantize_boundaries() {
    let base = setup(&small_cnn(), &[1, 3, 8, 8]);
    // Keep op 2 (the second ConvRelu) fp32 by index.
    let mut opts = base.opts.clone();
    opts.exclude_nodes = vec![2];
    let q = quantize_model(&base.fp32, &base.act, &base.input_q, &opts).unwrap();
    assert_eq!(
        types(&q.predict),
        [
            "NCHW2NHWC",
            "Int8Quantize",
            "Int8ConvRelu",
            "Int8MaxPool",
            "Int8Dequantize",
            "NHWC2NCHW",
            "ConvRelu",
            "NCHW2NHWC",
            "Int8Quantize",
            "Int8Conv",
            "Int8SumRelu",
            "Int8AveragePool",
            "Int8FC",
            "Int8Dequantize",
            "Softmax"
        ]
    );
    let p = &q.predict.op;
    assert_eq!(p[4].input, ["p1_int8"]);
    assert_eq!(p[5].output, ["p1"]);
    assert_eq!(p[6].input, ["p1", "w2", "b2"]);
    assert_eq!(p[8].output, ["c2_int8"]);
    assert_eq!(arg_f(&p[8], "Y_scale"), base.act[2][0].unwrap().scale);
    // The fp32 conv's parameters are plain fills.
    let fills: Vec<&str> = q.init.op.iter().map(|o| o.type_()).collect();
    assert_eq!(fills.iter().filter(|t| **t == "GivenTensorFill").count(), 2);
    assert!(matches!(&q.report[2].outcome, Outcome::KeptFp32(r) if r.contains("index")));
    let want = run_out(&base.fp32, &base.input, "prob");
    let got = run_out(&load(&q), &base.input, "prob");
    assert_eq!(argmax(&want), argmax(&got));
    assert!(common::max_abs_diff(&want, &got) < 0.03);

    // Keep every MaxPool fp32 by type.
    let mut opts = base.opts.clone();
    opts.exclude_ops = vec!["MaxPool".into()];
    let q = quantize_model(&base.fp32, &base.act, &base.input_q, &opts).unwrap();
    assert_eq!(
        types(&q.predict)[..9],
        [
            "NCHW2NHWC",
            "Int8Quantize",
            "Int8ConvRelu",
            "Int8Dequantize",
            "NHWC2NCHW",
            "MaxPool",
            "NCHW2NHWC",
            "Int8Quantize",
            "Int8ConvRelu"
        ]
    );
    let got = run_out(&load(&q), &base.input, "prob");
    assert_eq!(argmax(&want), argmax(&got));

    // An unobserved output keeps its reader fp32 too.
    let mut act = base.act.clone();
    act[5][0] = None;
    let q = quantize_model(&base.fp32, &act, &base.input_q, &base.opts).unwrap();
    assert_eq!(
        types(&q.predict)[7..],
        [
            "Int8Dequantize",
            "NHWC2NCHW",
            "AveragePool",
            "FC",
            "Softmax"
        ]
    );
}

#[test]
fn shared_bias_gets_one_copy_per_scale_and_per_channel_scales_are_written() {
    // Two convs share w and b but read inputs with different scales.
    let mut b = NetBuilder::new("shared");
    b.input("data")
        .param("w", &[2, 2, 1, 1], vec![1.0, -0.5, 0.3, 0.8])
        .param("b", &[2], vec![0.1, -0.11])
        .op(
            "Conv",
            &["data", "w", "b"],
            &["c1"],
            vec![("kernel", Arg::I(1))],
        )
        .op(
            "Conv",
            &["c1", "w", "b"],
            &["c2"],
            vec![("kernel", Arg::I(1))],
        )
        .output("c2");
    let (init, predict) = b.build();
    let model = Model::from_nets(init, predict).unwrap();
    let input = QParams {
        scale: 0.01,
        zero_point: 128,
    };
    let (act, input_q, mut opts) = fixed_params(2, input, &[1, 2, 2, 2]);
    let q = quantize_model(&model, &act, &input_q, &opts).unwrap();
    assert_eq!(q.predict.op[2].input, ["data_int8", "w_int8", "b_int8"]);
    assert_eq!(q.predict.op[3].input, ["c1_int8", "w_int8", "b_v1_int8"]);
    let (Tensor::QI32(_, p0), Tensor::QI32(_, p1)) = (&q.params["b_int8"], &q.params["b_v1_int8"])
    else {
        panic!("biases are not QI32");
    };
    assert!((p1.scale / p0.scale - 5.0).abs() < 1e-5);
    load(&q); // loads and validates

    opts.weights = WeightGranularity::PerChannel;
    let q = quantize_model(&model, &act, &input_q, &opts).unwrap();
    // Symmetric per channel (facts §7.3): range [-a, a] with a = max|w| gives scale
    // t = max(a/128, a/127) = a/127 and zero point 128. Channel 0 holds {1.0, -0.5}: scale
    // 1/127; channel 1 holds {0.3, 0.8} (one sign only, still symmetric): scale 0.8/127.
    let conv = &q.predict.op[2];
    assert_eq!(arg_i(conv, "quantize_channelwise"), 1);
    let ws = &conv
        .arg
        .iter()
        .find(|a| a.name() == "W_scales")
        .expect("W_scales")
        .floats;
    assert_eq!(ws.len(), 2);
    assert!((ws[0] - 1.0 / 127.0).abs() < 1e-8, "{ws:?}");
    assert!((ws[1] - 0.8 / 127.0).abs() < 1e-8, "{ws:?}");
    let Tensor::QU8(w, wq) = &q.params["w_int8"] else {
        panic!("weight is not QU8");
    };
    assert_eq!(wq.zero_point, 128);
    assert!(
        (wq.scale - ws[0]).abs() < 1e-9,
        "tensor scale is the largest channel scale"
    );
    // 1.0·127 = 127 + 128 = 255; -0.5·127 = -63.5 -> -64 (ties to even) + 128 = 64;
    // 0.3·127/0.8 = 47.625 -> 48 + 128 = 176; 0.8·127/0.8 = 127 + 128 = 255.
    assert_eq!(w.iter().copied().collect::<Vec<u8>>(), [255, 64, 176, 255]);
    // Bias per channel with s_x = 0.01: 0.1 / (0.01/127) = 1270; -0.11 / (0.01·0.8/127) =
    // -1746.25 -> -1746.
    let Tensor::QI32(b, bq) = &q.params["b_int8"] else {
        panic!("bias is not QI32");
    };
    assert_eq!(b.iter().copied().collect::<Vec<i32>>(), [1270, -1746]);
    assert!((bq.scale - 0.01 * ws[0]).abs() < 1e-9);
    load(&q);
}

#[test]
fn resnet50_matches_published_op_sequence() {
    let (Some(dir), Some(qdir)) = (
        common::shared("models/resnet50"),
        common::shared("models/resnet50_quantized"),
    ) else {
        return;
    };
    let model = Model::load_dir(&dir).unwrap();
    let (opt, _) = model.optimized().unwrap();
    let act: Vec<Vec<Option<QParams>>> = opt
        .predict_def
        .op
        .iter()
        .map(|op| {
            let zp = if op.type_().ends_with("Relu") || op.type_().ends_with("Pool") {
                0
            } else {
                128
            };
            op.output
                .iter()
                .map(|_| {
                    Some(QParams {
                        scale: 0.05,
                        zero_point: zp,
                    })
                })
                .collect()
        })
        .collect();
    let input = opt.data_inputs();
    assert_eq!(input, ["gpu_0/data"]);
    let input_q = HashMap::from([(
        input[0].clone(),
        QParams {
            scale: 0.02,
            zero_point: 128,
        },
    )]);
    let mut opts = QuantizeOptions::default();
    opts.input_shapes
        .insert(input[0].clone(), vec![1, 3, 224, 224]);
    let q = quantize_model(&opt, &act, &input_q, &opts).unwrap();
    let (published, _) = io::read::<NetDef>(qdir.join("predict_net.pb")).unwrap();
    assert_eq!(published.op.len(), 76);
    // The fp32 zoo net runs each projection shortcut (branch1) after branch2c, the published
    // net before branch2a: both are valid schedules. Compare the type counts, the sequence of
    // the other ops, and every conv with the published conv of the same weight.
    let count = |net: &NetDef| {
        let mut m: HashMap<String, usize> = HashMap::new();
        for t in types(net) {
            *m.entry(t).or_default() += 1;
        }
        m
    };
    assert_eq!(count(&q.predict), count(&published));
    assert_eq!(count(&published)["Int8ConvRelu"], 33);
    assert_eq!(count(&published)["Int8Conv"], 20);
    assert_eq!(count(&published)["Int8SumRelu"], 16);
    let is_conv = |o: &&OperatorDef| o.type_().starts_with("Int8Conv");
    let others = |net: &NetDef| -> Vec<OperatorDef> {
        net.op.iter().filter(|o| !is_conv(o)).cloned().collect()
    };
    let (mine, theirs) = (others(&q.predict), others(&published));
    assert_eq!(
        mine.iter().map(|o| o.type_()).collect::<Vec<_>>(),
        theirs.iter().map(|o| o.type_()).collect::<Vec<_>>()
    );
    let relevant = |op: &OperatorDef| -> Vec<String> {
        let mut v: Vec<String> = op
            .arg
            .iter()
            .map(|a| a.name().to_string())
            .filter(|n| {
                matches!(
                    n.as_str(),
                    "kernel" | "stride" | "order" | "Y_scale" | "Y_zero_point"
                )
            })
            .collect();
        v.sort();
        v
    };
    let geo = |o: &OperatorDef, name: &str| {
        o.arg
            .iter()
            .find(|x| x.name() == name)
            .map(|x| x.i())
            .unwrap_or(if name == "pad" { 0 } else { 1 })
    };
    let check = |k: &str, a: &OperatorDef, b: &OperatorDef| {
        assert_eq!(a.type_(), b.type_(), "{k}");
        assert_eq!(relevant(a), relevant(b), "{k} {}", a.type_());
        assert_eq!(a.engine(), b.engine(), "{k} {}", a.type_());
        assert_eq!(a.input.len(), b.input.len(), "{k}");
        if a.type_().starts_with("Int8Conv") || a.type_().ends_with("Pool") {
            for name in ["kernel", "stride", "pad"] {
                assert_eq!(geo(a, name), geo(b, name), "{k} {} {name}", a.type_());
            }
        }
        if a.type_().starts_with("Int8") && a.type_() != "Int8Dequantize" {
            let zp = |o: &OperatorDef| arg_i(o, "Y_zero_point");
            assert_eq!(zp(a), zp(b), "{k} {} zero point", a.type_());
        }
    };
    for (k, (a, b)) in mine.iter().zip(&theirs).enumerate() {
        check(&format!("non-conv op {k}"), a, b);
    }
    let mut matched = 0;
    for b in published.op.iter().filter(|o| is_conv(o)) {
        // Published `gpu_0/<layer>_w_0_int8`, ours `gpu_0/<layer>_w_int8`.
        let w = b.input[1].replace("_w_0_int8", "_w_int8");
        let a = q
            .predict
            .op
            .iter()
            .find(|o| o.input.get(1) == Some(&w))
            .unwrap_or_else(|| panic!("no conv with weight {w}"));
        check(&w, a, b);
        matched += 1;
    }
    assert_eq!(matched, 53);
    // 53 conv weights + 53 biases + FC weight and bias, all Int8 fills.
    assert_eq!(q.init.op.len(), 108);
    // Drop-in: the fp32 net's output name (the published net renamed blobs memonger-style).
    assert_eq!(q.predict.external_output, opt.predict_def.external_output);
    assert_eq!(q.predict.external_input.len(), 109);
    // The net loads and infers with the Int8 ops.
    let m = load(&q);
    let infos = HashMap::from([(input[0].clone(), ops::TensorInfo::f32(vec![1, 3, 224, 224]))]);
    let shapes = m.infer(&infos).check().unwrap();
    assert_eq!(shapes.blobs["gpu_0/softmax"].shape, [1, 1000]);
}

#[test]
fn concat_relu_flatten_net_runs_close_to_fp32() {
    // data [1,2,5,5] -> (Conv 1x1 -> a, Conv 3x3 pad 1 -> b) -> Concat axis 1 -> Relu
    // -> global AveragePool -> Flatten -> FC -> out.
    let mut b = NetBuilder::new("concat");
    b.input("data")
        .param("wa", &[3, 2, 1, 1], values(6, 11, 1.0))
        .param("ba", &[3], vec![0.1, 0.0, -0.1])
        .param("wb", &[2, 2, 3, 3], values(36, 12, 0.5))
        .param("bb", &[2], vec![0.2, -0.2])
        .param("fw", &[4, 5], values(20, 13, 1.0))
        .param("fb", &[4], vec![0.0, 0.1, 0.2, 0.3])
        .op(
            "Conv",
            &["data", "wa", "ba"],
            &["a"],
            vec![("kernel", Arg::I(1))],
        )
        .op(
            "Conv",
            &["data", "wb", "bb"],
            &["b"],
            vec![("kernel", Arg::I(3)), ("pad", Arg::I(1))],
        )
        .op("Concat", &["a", "b"], &["cat", "split"], vec![])
        .op("Relu", &["cat"], &["r"], vec![])
        .op(
            "AveragePool",
            &["r"],
            &["g"],
            vec![("global_pooling", Arg::I(1))],
        )
        .op("Flatten", &["g"], &["f"], vec![])
        .op("FC", &["f", "fw", "fb"], &["out"], vec![])
        .output("out");
    let s = setup(&b, &[1, 2, 5, 5]);
    // The int32 split_info output has no parameters.
    assert_eq!(s.act[2][1], None);
    let q = quantize_model(&s.fp32, &s.act, &s.input_q, &s.opts).unwrap();
    assert_eq!(
        types(&q.predict),
        [
            "NCHW2NHWC",
            "Int8Quantize",
            "Int8Conv",
            "Int8Conv",
            "Int8Concat",
            "Int8Relu",
            "Int8AveragePool",
            "Int8Flatten",
            "Int8FC",
            "Int8Dequantize"
        ]
    );
    let cat = &q.predict.op[4];
    assert_eq!(arg_i(cat, "axis"), 3, "channel axis of NHWC");
    assert_eq!(cat.output, ["cat_int8", "split"]);
    // Relu and Flatten keep their input's parameters.
    assert_eq!(
        arg_f(&q.predict.op[5], "Y_scale"),
        s.act[2][0].unwrap().scale
    );
    assert_eq!(
        arg_f(&q.predict.op[7], "Y_scale"),
        s.act[4][0].unwrap().scale
    );
    let want = run_out(&s.fp32, &s.input, "out");
    let got = run_out(&load(&q), &s.input, "out");
    let range = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = common::max_abs_diff(&want, &got);
    eprintln!("concat net: fp32 {want:?} int8 {got:?}");
    assert!(d < 0.05 * range, "max |Δ| {d} of {range}");
}

#[test]
fn relu_fused_output_with_nonzero_zero_point_is_rederived() {
    let mut b = NetBuilder::new("relu_zp");
    b.input("data")
        .param("w", &[1, 1, 1, 1], vec![0.5])
        .op("Conv", &["data", "w"], &["y"], vec![("kernel", Arg::I(1))])
        .op("Relu", &["y"], &["y"], vec![])
        .output("y");
    let (init, predict) = b.build();
    let (model, _) = Model::from_nets(init, predict)
        .unwrap()
        .optimized()
        .unwrap();
    assert_eq!(types(&model.predict_def), ["ConvRelu"]);
    // Y covers [-12.8, 12.7] (scale 0.1, zp 128): after ReLU only [0, 12.7] is used, so the
    // op works with scale 12.7 / 255 and zero point 0, and the rewrite writes exactly that.
    let act = vec![vec![Some(QParams {
        scale: 0.1,
        zero_point: 128,
    })]];
    let input_q = HashMap::from([(
        "data".to_string(),
        QParams {
            scale: 0.05,
            zero_point: 128,
        },
    )]);
    let mut opts = QuantizeOptions::default();
    opts.input_shapes.insert("data".into(), vec![1, 1, 1, 2]);
    let q = quantize_model(&model, &act, &input_q, &opts).unwrap();
    let conv = &q.predict.op[2];
    assert_eq!(conv.type_(), "Int8ConvRelu");
    assert_eq!(arg_i(conv, "Y_zero_point"), 0);
    let want = (0.1f64 * 127.0) as f32 / 255.0;
    assert!((arg_f(conv, "Y_scale") - want).abs() < 1e-7);
    assert!(matches!(&q.report[0].outcome, Outcome::Quantized(t) if t.contains("zero point 128")));
    // x = [-1, 2] -> relu(0.5 x) = [0, 1].
    let input = feed("data", &[1, 1, 1, 2], vec![-1.0, 2.0]);
    let got = run_out(&load(&q), &input, "y");
    assert!(got[0] == 0.0 && (got[1] - 1.0).abs() <= want, "{got:?}");
}

#[test]
fn resnet50_int8_run_tracks_fp32_logits() {
    let Some(dir) = common::shared("models/resnet50") else {
        return;
    };
    let model = Model::load_dir(&dir).unwrap();
    let (opt, _) = model.optimized().unwrap();
    // Compare the logits (random-weight zoo nets saturate the softmax).
    let mut def = opt.predict_def.clone();
    def.external_output = vec!["gpu_0/pred".into()];
    let fp32 = Model::from_parts(opt.paths.clone(), None, def, opt.params.clone());
    let x = values(3 * 224 * 224, 5, 1.0);
    let input = feed("gpu_0/data", &[1, 3, 224, 224], x);
    let t0 = std::time::Instant::now();
    let act = calibrate(&fp32, &input);
    let t_fp32 = t0.elapsed();
    let input_q = HashMap::from([(
        "gpu_0/data".to_string(),
        choose_activation_params(-1.0, 1.0, false),
    )]);
    let mut opts = QuantizeOptions::default();
    opts.input_shapes
        .insert("gpu_0/data".into(), vec![1, 3, 224, 224]);
    let q = quantize_model(&fp32, &act, &input_q, &opts).unwrap();
    assert_eq!(q.quantized_count(), 72);
    let want = run_out(&fp32, &input, "gpu_0/pred");
    let t1 = std::time::Instant::now();
    let got = run_out(&load(&q), &input, "gpu_0/pred");
    let t_int8 = t1.elapsed();
    let range = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = common::max_abs_diff(&want, &got);
    eprintln!(
        "resnet50 int8 vs fp32 logits: max |Δ| {d:.3e} of max |logit| {range:.3e}, top-1 {} vs {}; \
         fp32 calibration run {t_fp32:?}, int8 run {t_int8:?}",
        argmax(&want),
        argmax(&got)
    );
    assert!(d < 0.05 * range, "relative {}", d / range);
}

#[test]
fn average_pool_counting_padding_stays_fp32() {
    let mut b = NetBuilder::new("avgpad");
    b.input("data")
        .param("w", &[2, 2, 1, 1], vec![1.0, -0.5, 0.3, 0.8])
        .op("Conv", &["data", "w"], &["c1"], vec![("kernel", Arg::I(1))])
        .op(
            "AveragePool",
            &["c1"],
            &["p"],
            vec![
                ("kernel", Arg::I(3)),
                ("pad", Arg::I(1)),
                ("count_include_pad", Arg::I(1)),
            ],
        )
        .output("p");
    let (init, predict) = b.build();
    let model = Model::from_nets(init, predict).unwrap();
    let q1 = QParams {
        scale: 0.05,
        zero_point: 128,
    };
    let (act, input_q, opts) = fixed_params(2, q1, &[1, 2, 4, 4]);
    let q = quantize_model(&model, &act, &input_q, &opts).unwrap();
    match &q.report[1].outcome {
        Outcome::KeptFp32(why) => assert!(why.contains("count_include_pad"), "{why}"),
        other => panic!("AveragePool was rewritten: {other:?}"),
    }
    assert!(q.predict.op.iter().any(|o| o.type_() == "AveragePool"));
    // The mixed net still computes the same pooling as fp32 (up to conv quantization).
    let x: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) / 10.0).collect();
    let feed = HashMap::from([("data".to_string(), Tensor::from_f32(&[1, 2, 4, 4], x))]);
    let (a, b) = (run_out(&model, &feed, "p"), run_out(&load(&q), &feed, "p"));
    assert!(common::max_abs_diff(&a, &b) < 0.06, "{a:?} vs {b:?}");
}

#[test]
fn l2_weight_ranges_clip_long_tails_for_lower_total_error() {
    // 2 output channels x 500 inputs with a long (exponential) tail: most weights are tiny,
    // a few are large. Channel 1 is ten times smaller than channel 0.
    let w: Vec<f32> = (0..1000)
        .map(|i| {
            let u = (((i * 7919) % 9973) as f32 + 0.5) / 9973.0;
            let sign = if i % 2 == 0 { 1.0 } else { -1.0 };
            let scale = if i < 500 { 0.01 } else { 0.001 };
            sign * scale * -u.ln()
        })
        .collect();
    let mut b = NetBuilder::new("wkind");
    b.input("data")
        .param("w", &[2, 500], w.clone())
        .param("b", &[2], vec![0.0, 0.0])
        .op("FC", &["data", "w", "b"], &["y"], vec![])
        .output("y");
    let (init, predict) = b.build();
    let model = Model::from_nets(init, predict).unwrap();
    let q1 = QParams {
        scale: 0.05,
        zero_point: 128,
    };
    let (act, input_q, mut opts) = fixed_params(1, q1, &[1, 500]);
    opts.weights = WeightGranularity::PerTensor;
    // Σ (w − s_m·(q − 128))² over the written codes, computed here from the codes.
    let l2_error = |codes: &[u8], scales: &[f32]| -> f64 {
        w.iter()
            .zip(codes)
            .enumerate()
            .map(|(i, (&v, &c))| {
                let s = scales[(i / 500).min(scales.len() - 1)];
                (f64::from(v) - f64::from(s) * (f64::from(c) - 128.0)).powi(2)
            })
            .sum()
    };
    let max_abs = w.iter().fold(0f32, |a, v| a.max(v.abs()));
    let quantized = |opts: &QuantizeOptions| {
        let q = quantize_model(&model, &act, &input_q, opts).unwrap();
        let Tensor::QU8(codes, p) = &q.params["w_int8"] else {
            panic!("no int8 weight");
        };
        let scales = match q.predict.op[1].arg.iter().find(|a| a.name() == "W_scales") {
            Some(a) => a.floats.clone(),
            None => vec![p.scale],
        };
        (scales, codes.iter().copied().collect::<Vec<u8>>())
    };
    let (mm, mm_codes) = quantized(&opts);
    assert!(
        (mm[0] - max_abs / 127.0).abs() < 1e-9,
        "min_max keeps the full range"
    );
    opts.weight_kind = QuantKind::L2;
    let (l2, l2_codes) = quantized(&opts);
    assert!(l2[0] < mm[0], "L2 clips the tail: {l2:?} vs {mm:?}");
    let (e_mm, e_l2) = (l2_error(&mm_codes, &mm), l2_error(&l2_codes, &l2));
    assert!(e_l2 < e_mm, "L2 error {e_l2} vs min_max {e_mm}");
    // Per channel: the small channel gets its own, ten-times-finer grid.
    opts.weights = WeightGranularity::PerChannel;
    let (pc, pc_codes) = quantized(&opts);
    assert_eq!(pc.len(), 2);
    assert!(pc[1] < pc[0] / 5.0, "{pc:?}");
    assert!(l2_error(&pc_codes, &pc) < e_l2);
}

/// data -> Conv -> Clip(0, 6) -> Conv: the ReLU6 disappears into the first conv's output
/// range, and the net computes exactly what the same int8 net computes with the Clip done
/// in fp32 between an Int8Dequantize and an Int8Quantize.
#[test]
fn relu6_is_absorbed_into_the_producer_range_exactly() {
    let mut b = NetBuilder::new("relu6");
    b.input("data")
        .param("w1", &[4, 3, 3, 3], values(108, 11, 1.5))
        .param("b1", &[4], vec![0.5, -0.2, 1.0, 0.3])
        .param("w2", &[2, 4, 1, 1], values(8, 12, 0.8))
        .param("b2", &[2], vec![0.1, -0.1])
        .op(
            "Conv",
            &["data", "w1", "b1"],
            &["c1"],
            vec![("kernel", Arg::I(3)), ("pad", Arg::I(1))],
        )
        .op(
            "Clip",
            &["c1"],
            &["a1"],
            vec![("min", Arg::F(0.0)), ("max", Arg::F(6.0))],
        )
        .op(
            "Conv",
            &["a1", "w2", "b2"],
            &["c2"],
            vec![("kernel", Arg::I(1))],
        )
        .output("c2");
    let mut s = setup(&b, &[1, 3, 6, 6]);
    // The conv output spans well beyond [0, 6] (so the Clip matters) ...
    let conv_q = s.act[0][0].unwrap();
    let (lo, hi) = (
        -conv_q.scale * conv_q.zero_point as f32,
        conv_q.scale * (255 - conv_q.zero_point) as f32,
    );
    assert!(lo < -1.0 && hi > 6.5, "conv output range [{lo}, {hi}]");
    // ... and the Clip output's own range is what the conv gets.
    let clip_q = s.act[1][0].unwrap();
    assert_eq!(clip_q.zero_point, 0);
    let q = quantize_model(&s.fp32, &s.act, &s.input_q, &s.opts).unwrap();
    assert_eq!(
        types(&q.predict),
        [
            "NCHW2NHWC",
            "Int8Quantize",
            "Int8Conv",
            "Int8Conv",
            "Int8Dequantize",
            "NHWC2NCHW"
        ]
    );
    let conv1 = &q.predict.op[2];
    assert_eq!(conv1.output, ["a1_int8"]);
    assert_eq!(arg_f(conv1, "Y_scale"), clip_q.scale);
    assert_eq!(arg_i(conv1, "Y_zero_point"), 0);
    assert_eq!(q.predict.op[3].input[0], "a1_int8");
    assert!(matches!(&q.report[1].outcome, Outcome::Absorbed(n) if n.contains("op #0")));
    assert!(matches!(&q.report[0].outcome, Outcome::Quantized(n) if n.contains("absorbs Clip #1")));
    assert_eq!(q.absorbed_count(), 1);

    // The same int8 net with the clip spelled out in fp32.
    let mut explicit = q.clone();
    explicit.predict.op[2].output[0] = "c1_int8".into();
    let engine = conv1.engine().to_string();
    let mut extra = NetBuilder::new("x");
    extra
        .op("Int8Dequantize", &["c1_int8"], &["c1_nhwc"], vec![])
        .op(
            "Clip",
            &["c1_nhwc"],
            &["a1_nhwc"],
            vec![("min", Arg::F(0.0)), ("max", Arg::F(6.0))],
        )
        .op(
            "Int8Quantize",
            &["a1_nhwc"],
            &["a1_int8"],
            vec![
                ("Y_scale", Arg::F(clip_q.scale)),
                ("Y_zero_point", Arg::I(0)),
            ],
        );
    let (_, extra) = extra.build();
    for (k, mut op) in extra.op.into_iter().enumerate() {
        if op.type_().starts_with("Int8") {
            op.set_engine(engine.clone());
        }
        explicit.predict.op.insert(3 + k, op);
    }
    let a = run_out(&load(&q), &s.input, "c2");
    let e = run_out(&load(&explicit), &s.input, "c2");
    assert_eq!(a, e);
    // And close to fp32.
    let f = run_out(&s.fp32, &s.input, "c2");
    let amp = f.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (x, y) in a.iter().zip(&f) {
        assert!((x - y).abs() < 0.05 * amp, "{x} vs {y}");
    }

    // An excluded Clip stays fp32 and the conv keeps its own range.
    s.opts.exclude_ops = vec!["Clip".into()];
    let q = quantize_model(&s.fp32, &s.act, &s.input_q, &s.opts).unwrap();
    assert!(types(&q.predict).contains(&"Clip".to_string()));
    assert_eq!(q.absorbed_count(), 0);
    assert_eq!(
        arg_f(&q.predict.op[2], "Y_scale"),
        s.act[0][0].unwrap().scale
    );
}

#[test]
fn channel_sqnr_by_hand() {
    // Scale 1/127, zero point 128. Channel 0 {1, -1} is exact. Channel 1 {0.01, 0.004}:
    // 1.27 -> 1 and 0.508 -> 1, both 1/127 = 0.0078740; errors 0.0021260 and -0.0038740;
    // signal 1.16e-4, noise 4.5199e-6 + 1.50079e-5 = 1.95278e-5: 10·log10(5.9402) = 7.738 dB.
    let w = [1.0f32, -1.0, 0.01, 0.004];
    let codes = [255u8, 1, 129, 129];
    let db = c2q::quant::weights::channel_sqnr_p10(&w, &codes, &[1.0 / 127.0], 128, 2);
    assert!((db - 7.738).abs() < 0.005, "{db}");
    // All-zero channels do not count.
    let db = c2q::quant::weights::channel_sqnr_p10(
        &[0.0, 0.0, 0.01, 0.004],
        &codes,
        &[1.0 / 127.0],
        128,
        2,
    );
    assert!((db - 7.738).abs() < 0.005, "{db}");
}

/// `Auto` keeps ordinary layers per tensor and gives a layer with one crushed channel
/// per-channel scales; per tensor that layer gets a warning naming it and the fix.
#[test]
fn auto_weights_go_per_channel_only_where_per_tensor_fails() {
    let mut w2 = values(16, 22, 1.0);
    for v in &mut w2[8..] {
        *v *= 0.003; // output channel 1 of conv2 is 300x smaller than channel 0
    }
    let mut b = NetBuilder::new("auto");
    b.input("data")
        .param("w1", &[2, 2, 2, 2], values(16, 21, 1.0))
        .param("b1", &[2], vec![0.0, 0.0])
        .param("w2", &[2, 2, 2, 2], w2)
        .param("b2", &[2], vec![0.0, 0.0])
        .op(
            "Conv",
            &["data", "w1", "b1"],
            &["c1"],
            vec![("kernel", Arg::I(2))],
        )
        .op(
            "Conv",
            &["c1", "w2", "b2"],
            &["c2"],
            vec![("kernel", Arg::I(2))],
        )
        .output("c2");
    let (init, predict) = b.build();
    let model = Model::from_nets(init, predict).unwrap();
    let q1 = QParams {
        scale: 0.05,
        zero_point: 128,
    };
    let (act, input_q, mut opts) = fixed_params(2, q1, &[1, 2, 4, 4]);
    opts.weights = WeightGranularity::Auto;
    let q = quantize_model(&model, &act, &input_q, &opts).unwrap();
    let has_scales = |op: &OperatorDef| op.arg.iter().any(|a| a.name() == "W_scales");
    assert!(!has_scales(&q.predict.op[2]), "conv1 stays per tensor");
    assert!(has_scales(&q.predict.op[3]), "conv2 goes per channel");
    assert!(
        matches!(&q.report[1].outcome, Outcome::Quantized(n) if n.contains("per-channel weights")),
        "{:?}",
        q.report[1]
    );
    assert!(q.warnings.is_empty(), "{:?}", q.warnings);
    opts.weights = WeightGranularity::PerTensor;
    let q = quantize_model(&model, &act, &input_q, &opts).unwrap();
    assert!(!has_scales(&q.predict.op[3]));
    assert_eq!(q.warnings.len(), 1, "{:?}", q.warnings);
    assert!(q.warnings[0].contains("op #1 Conv") && q.warnings[0].contains("per-channel"));
}

/// Per-tensor weights with a planted error: fifteen small weights per output channel all
/// round the same way, so the output mean shifts by `Σ_c (W_q − W)[m, c]·E[x_c]`. Bias
/// correction with the measured input means removes that shift.
#[test]
fn bias_correction_removes_a_planted_mean_error() {
    // Output channel 0: weight 1.0 on input 0 and 0.0055 on inputs 1..48; channel 1 the
    // negatives. Symmetric per-tensor scale s = max(1/128, 1/127) = 1/127; 0.0055·127 =
    // 0.6985 -> 1 code: each small weight is off by 1/127 − 0.0055 = 0.0023740, and 1.0 is
    // exact. Shift Δ0 = 0.0023740·Σ_{c≥1} E[x_c] (about +0.56 for means near 5), Δ1 = −Δ0.
    // What remains is output rounding (steps of about 0.05, not averaging out exactly since
    // the inputs sit on their own grid).
    let c = 48;
    let mut w = vec![0.0055f32; 2 * c];
    w[0] = 1.0;
    for v in &mut w[c..] {
        *v = -0.0055;
    }
    w[c] = -1.0;
    let mut b = NetBuilder::new("bc");
    b.input("data")
        .param("w", &[2, c, 1, 1], w)
        .param("b", &[2], vec![0.0, 0.0])
        .op(
            "Conv",
            &["data", "w", "b"],
            &["y"],
            vec![("kernel", Arg::I(1))],
        )
        .output("y");
    let (init, predict) = b.build();
    let model = Model::from_nets(init, predict).unwrap();
    let hw = 64;
    let shape = [1, c, 8, 8];
    let x: Vec<f32> = values(c * hw, 5, 0.5)
        .into_iter()
        .map(|v| v + 5.0)
        .collect();
    let means: Vec<f64> = x
        .chunks(hw)
        .map(|ch| ch.iter().map(|&v| f64::from(v)).sum::<f64>() / hw as f64)
        .collect();
    let input = feed("data", &shape, x);
    // Output range with room for the shifted int8 values (fp32 y spans about ±6.3).
    let act = vec![vec![Some(choose_activation_params(-10.0, 10.0, false))]];
    let input_q = HashMap::from([(
        "data".to_string(),
        choose_activation_params(4.5, 5.5, false),
    )]);
    let mut opts = QuantizeOptions {
        weights: WeightGranularity::PerTensor,
        ..QuantizeOptions::default()
    };
    opts.input_shapes.insert("data".into(), shape.to_vec());
    let fp32 = run_out(&model, &input, "y");
    // Mean error of each output channel of an int8 run against fp32.
    let mean_err = |opts: &QuantizeOptions| -> Vec<f64> {
        let q = quantize_model(&model, &act, &input_q, opts).unwrap();
        let y = run_out(&load(&q), &input, "y");
        y.chunks(hw)
            .zip(fp32.chunks(hw))
            .map(|(a, b)| a.iter().zip(b).map(|(p, r)| f64::from(p - r)).sum::<f64>() / hw as f64)
            .collect()
    };
    let before = mean_err(&opts);
    let d0 = (1.0 / 127.0 - 0.0055f64) * means[1..].iter().sum::<f64>();
    for (got, want) in before.iter().zip([d0, -d0]) {
        assert!(
            (got - want).abs() < 0.03,
            "planted shift {want}, measured {got}"
        );
    }
    opts.bias_correction = Some(ChannelMeans {
        means: HashMap::from([("data".to_string(), means)]),
        images: 1,
    });
    let after = mean_err(&opts);
    for (a, b) in after.iter().zip(&before) {
        assert!(
            a.abs() < 0.03 && a.abs() < b.abs() / 10.0,
            "before {before:?}, after {after:?}"
        );
    }
}

/// Every fp32 op type the quantizer rewrites has its row in `docs/ops.md`, and that row says
/// what it becomes (the column is not "stays fp32").
#[test]
fn every_rewrite_rule_is_documented_in_ops_md() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/ops.md")).unwrap();
    let rows: Vec<&str> = doc.lines().filter(|l| l.starts_with("| ")).collect();
    for t in c2q::passes::quantize::rewritten_op_types() {
        let row = rows
            .iter()
            .find(|r| {
                let first = r.split('|').nth(1).unwrap_or("");
                first
                    .split(|c: char| !c.is_ascii_alphanumeric())
                    .any(|w| w == t)
            })
            .unwrap_or_else(|| panic!("docs/ops.md has no row for `{t}`"));
        let int8_col = row.split('|').nth(3).unwrap_or("");
        assert!(
            !int8_col.trim().starts_with("stay"),
            "docs/ops.md says `{t}` stays fp32, but the quantizer rewrites it: {row}"
        );
    }
}

/// `Int8Model::to_model` reuses the rewrite's tensors: the same parameters as running the
/// init net it wrote, and the same outputs.
#[test]
fn to_model_matches_the_written_init_net() {
    let s = setup(&small_cnn(), &[1, 3, 8, 8]);
    let q = quantize_model(&s.fp32, &s.act, &s.input_q, &s.opts).unwrap();
    let direct = q.to_model().unwrap();
    let from_nets = load(&q);
    assert_eq!(direct.params, from_nets.params);
    assert_eq!(
        run_out(&direct, &s.input, "prob"),
        run_out(&from_nets, &s.input, "prob")
    );
}
