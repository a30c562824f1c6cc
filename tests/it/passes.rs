//! The fp32 rewrite passes leave outputs unchanged and produce the expected graphs.

use crate::common;

use std::collections::HashMap;

use c2q::graph::builder::{Arg, NetBuilder};
use c2q::passes::{fuse_relu::fuse_relu, remove_dropout::remove_dropout};
use c2q::{Executor, Model};
use ops::Tensor;

fn vals(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 16) % 1000) as f32 / 500.0
                - 1.0
        })
        .collect()
}

fn run(model: &Model, x: &Tensor, out: &str) -> Vec<f32> {
    let exec = Executor::new(model, 1).unwrap();
    let y = exec
        .run(HashMap::from([("data".to_string(), x.clone())]))
        .unwrap();
    y[out].f32_slice().unwrap().to_vec()
}

fn types(model: &Model) -> Vec<String> {
    model
        .predict_def
        .op
        .iter()
        .map(|o| o.type_().to_string())
        .collect()
}

/// Conv (with or without bias) -> SpatialBN -> Relu (in place) -> Conv (shares nothing).
fn conv_bn_net(with_bias: bool) -> Model {
    let mut b = NetBuilder::new("bn");
    b.input("data").param("w", &[4, 3, 3, 3], vals(108, 1));
    let mut conv_in = vec!["data", "w"];
    if with_bias {
        b.param("b", &[4], vals(4, 2));
        conv_in.push("b");
    }
    b.param("s", &[4], vec![0.5, 1.5, -2.0, 1.0])
        .param("bb", &[4], vec![0.1, -0.2, 0.3, 0.0])
        .param("rm", &[4], vec![0.2, -0.1, 0.05, 0.0])
        .param("riv", &[4], vec![0.5, 2.0, 1.0, 0.25])
        .op(
            "Conv",
            &conv_in,
            &["c"],
            vec![("kernel", Arg::I(3)), ("pad", Arg::I(1))],
        )
        .op(
            "SpatialBN",
            &["c", "s", "bb", "rm", "riv"],
            &["c_bn"],
            vec![("is_test", Arg::I(1)), ("epsilon", Arg::F(1e-3))],
        )
        .op("Relu", &["c_bn"], &["c_bn"], vec![])
        .output("c_bn");
    let (i, p) = b.build();
    Model::from_nets(i, p).unwrap()
}

#[test]
fn fold_bn_and_fuse_relu_keep_outputs() {
    let x = Tensor::from_f32(&[2, 3, 5, 5], vals(150, 9));
    for with_bias in [false, true] {
        let model = conv_bn_net(with_bias);
        let want = run(&model, &x, "c_bn");
        let (opt, report) = model.optimized().unwrap();
        assert_eq!(
            report,
            vec![
                ("remove_dropout", 0),
                ("fold_bn", 1),
                ("fuse_relu", 1),
                ("fuse_int8_sum", 0),
                ("fuse_int8_lut", 0),
                ("fuse_conv_lut", 0),
                ("fuse_quantize_layout", 0)
            ]
        );
        assert_eq!(types(&opt), vec!["ConvRelu"]);
        let conv = &opt.predict_def.op[0];
        assert_eq!(conv.output, vec!["c_bn"]);
        // Without a conv bias, the BN bias blob becomes the conv's bias (as Caffe2 fuse_bn).
        assert_eq!(conv.input[2], if with_bias { "b" } else { "bb" });
        let got = run(&opt, &x, "c_bn");
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(
            common::max_abs_diff(&got, &want) <= 1e-5 * scale,
            "bias {with_bias}"
        );
        // Folded parameters, checked by hand for channel 2: A = -2/sqrt(1+1e-3).
        let a = -2.0f64 / (1.0f64 + 1e-3).sqrt();
        let w = opt.params["w"].f32_slice().unwrap();
        let w0 = model.params["w"].f32_slice().unwrap();
        assert!(((w[2 * 27] as f64) - w0[2 * 27] as f64 * a).abs() < 1e-6);
        let b0 = if with_bias {
            model.params["b"].f32_slice().unwrap()[2] as f64
        } else {
            0.0
        };
        let bias = opt.params[&conv.input[2]].f32_slice().unwrap()[2] as f64;
        assert!((bias - (b0 * a + 0.3 - 0.05 * a)).abs() < 1e-6, "{bias}");
    }
}

#[test]
fn shared_weights_and_multiple_readers_are_left_alone() {
    let mut b = NetBuilder::new("shared");
    b.input("data")
        .param("w", &[2, 2, 1, 1], vals(4, 3))
        .param("s", &[2], vec![1.0, 2.0])
        .param("bb", &[2], vec![0.0, 1.0])
        .param("rm", &[2], vec![0.0, 0.0])
        .param("riv", &[2], vec![1.0, 1.0])
        .op("Conv", &["data", "w"], &["c1"], vec![("kernel", Arg::I(1))])
        .op(
            "SpatialBN",
            &["c1", "s", "bb", "rm", "riv"],
            &["c1_bn"],
            vec![("is_test", Arg::I(1))],
        )
        // Second conv shares `w`: folding would change it.
        .op(
            "Conv",
            &["c1_bn", "w"],
            &["c2"],
            vec![("kernel", Arg::I(1))],
        )
        // c2 has two readers: Relu and Sum, so no fusion.
        .op("Relu", &["c2"], &["r"], vec![])
        .op("Sum", &["c2", "r"], &["out"], vec![])
        .output("out");
    let (i, p) = b.build();
    let model = Model::from_nets(i, p).unwrap();
    let (opt, report) = model.optimized().unwrap();
    assert_eq!(
        report,
        vec![
            ("remove_dropout", 0),
            ("fold_bn", 0),
            ("fuse_relu", 0),
            ("fuse_int8_sum", 0),
            ("fuse_int8_lut", 0),
            ("fuse_conv_lut", 0),
            ("fuse_quantize_layout", 0)
        ]
    );
    assert_eq!(types(&opt), types(&model));
}

#[test]
fn sum_relu_fuses_and_matches() {
    let mut b = NetBuilder::new("sum");
    b.input("data")
        .param("w", &[3, 3, 1, 1], vals(9, 4))
        .op("Conv", &["data", "w"], &["c"], vec![("kernel", Arg::I(1))])
        .op("Sum", &["c", "data"], &["c"], vec![])
        .op("Relu", &["c"], &["c"], vec![])
        .output("c");
    let (i, p) = b.build();
    let model = Model::from_nets(i, p).unwrap();
    let x = Tensor::from_f32(&[1, 3, 4, 4], vals(48, 5));
    let want = run(&model, &x, "c");
    let mut net = model.predict_def.clone();
    let mut params = model.params.clone();
    assert_eq!(fuse_relu(&mut net, &mut params).unwrap(), 1);
    assert_eq!(
        net.op.iter().map(|o| o.type_()).collect::<Vec<_>>(),
        vec!["Conv", "SumRelu"]
    );
    let fused = Model::from_defs(model.paths.clone(), model.init_def.clone(), net).unwrap();
    assert_eq!(run(&fused, &x, "c"), want);
    assert!(want.contains(&0.0) && want.iter().any(|v| *v > 0.0));
}

#[test]
fn dropout_is_removed_and_readers_renamed() {
    let mut b = NetBuilder::new("drop");
    b.input("data")
        .op("Relu", &["data"], &["r"], vec![])
        .op(
            "Dropout",
            &["r"],
            &["d", "mask"],
            vec![("is_test", Arg::I(1)), ("ratio", Arg::F(0.5))],
        )
        .op("Sigmoid", &["d"], &["s"], vec![])
        .op("Dropout", &["s"], &["s"], vec![("is_test", Arg::I(1))])
        .op("Dropout", &["s"], &["out"], vec![("is_test", Arg::I(1))])
        .output("out");
    let (i, p) = b.build();
    let model = Model::from_nets(i, p).unwrap();
    let x = Tensor::from_f32(&[1, 6], vals(6, 7));
    let want = run(&model, &x, "out");
    let mut net = model.predict_def.clone();
    let mut params = model.params.clone();
    // The last Dropout writes the external output, so it stays.
    assert_eq!(remove_dropout(&mut net, &mut params).unwrap(), 2);
    assert_eq!(
        net.op.iter().map(|o| o.type_()).collect::<Vec<_>>(),
        vec!["Relu", "Sigmoid", "Dropout"]
    );
    assert_eq!(net.op[1].input, vec!["r"]);
    let m2 = Model::from_defs(model.paths.clone(), model.init_def.clone(), net).unwrap();
    assert_eq!(run(&m2, &x, "out"), want);
}

#[test]
fn resnet50_optimized_matches_fp32() {
    let Some(dir) = common::shared("models/resnet50") else {
        return;
    };
    let model = Model::load_dir(&dir).unwrap();
    let (opt, report) = model.optimized().unwrap();
    assert_eq!(
        report,
        vec![
            ("remove_dropout", 0),
            ("fold_bn", 53),
            ("fuse_relu", 49),
            ("fuse_int8_sum", 0),
            ("fuse_int8_lut", 0),
            ("fuse_conv_lut", 0),
            ("fuse_quantize_layout", 0)
        ]
    );
    let count = |t: &str| opt.predict_def.op.iter().filter(|o| o.type_() == t).count();
    assert_eq!(
        (count("ConvRelu"), count("Conv"), count("SumRelu")),
        (33, 20, 16)
    );
    assert_eq!(opt.predict_def.op.len(), 73);
    let mut x = vec![0f32; 3 * 224 * 224];
    for (i, v) in x.iter_mut().enumerate() {
        *v = ((i * 7919) % 1000) as f32 / 500.0 - 1.0;
    }
    let feed = || {
        HashMap::from([(
            "gpu_0/data".to_string(),
            Tensor::from_f32(&[1, 3, 224, 224], x.clone()),
        )])
    };
    // Compare the logits (softmax of random-weight nets saturates).
    let logits = |m: &Model| {
        let mut def = m.predict_def.clone();
        def.external_output = vec!["gpu_0/pred".into()];
        let mm = Model::from_parts(m.paths.clone(), None, def, m.params.clone());
        let exec = Executor::new(&mm, 2).unwrap();
        exec.run(feed()).unwrap()["gpu_0/pred"]
            .f32_slice()
            .unwrap()
            .to_vec()
    };
    let a = logits(&model);
    let b = logits(&opt);
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = common::max_abs_diff(&a, &b);
    eprintln!("resnet50 fold/fuse: max |Δlogit| {d:.3e}, max |logit| {scale:.3e}");
    assert!(d <= 1e-4 * scale, "relative difference {}", d / scale);
}

// ---------------------------------------------------------------------------------------
// fuse_int8_sum: Int8Conv + Int8Sum → Int8ConvSum
// ---------------------------------------------------------------------------------------

/// Codes from a seed (uint8 weights around the zero point 128).
fn u8s(n: usize, seed: u32) -> Vec<u8> {
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 24) as u8)
        .collect()
}

/// A small ResNet-like int8 net (NHWC): quantize → 3x3 ConvRelu `a` → 1x1 Conv `c` → 1x1
/// shortcut Conv `sc` of the input (after `c`, as in ResNet's first block of a stage) →
/// SumRelu(c, sc) → 1x1 Conv `c2` without bias → Sum(out, c2) → dequantize. `extra` adds a
/// second reader of `sc` (which must prevent fusing `sc`'s Sum).
fn int8_res_net(extra: bool) -> Model {
    use c2q::graph::builder::op_def;
    let mut b = NetBuilder::new("int8res");
    b.input("data");
    let fill = |name: &str, shape: &[i64], seed: u32| {
        let n: i64 = shape.iter().product();
        op_def(
            "Int8GivenTensorFill",
            &[],
            &[name],
            vec![
                ("shape", Arg::Ints(shape.to_vec())),
                ("values", Arg::B(u8s(n as usize, seed))),
                ("Y_scale", Arg::F(0.01)),
                ("Y_zero_point", Arg::I(128)),
            ],
        )
    };
    let bias = |name: &str, n: i64, scale: f32| {
        op_def(
            "Int8GivenIntTensorFill",
            &[],
            &[name],
            vec![
                ("shape", Arg::Ints(vec![n])),
                ("values", Arg::Ints((0..n).map(|i| i * 37 - 90).collect())),
                ("Y_scale", Arg::F(scale)),
                ("Y_zero_point", Arg::I(0)),
            ],
        )
    };
    b.init_op(fill("w1", &[8, 3, 3, 4], 1))
        .init_op(bias("b1", 8, 0.05 * 0.01))
        .init_op(fill("w2", &[8, 1, 1, 8], 2))
        .init_op(bias("b2", 8, 0.04 * 0.01))
        .init_op(fill("w3", &[8, 1, 1, 4], 3))
        .init_op(bias("b3", 8, 0.05 * 0.01))
        .init_op(fill("w4", &[8, 1, 1, 8], 4));
    let q = |s: f32, z: i64| vec![("Y_scale", Arg::F(s)), ("Y_zero_point", Arg::I(z))];
    let conv = |k: i64, s: f32, z: i64| {
        let mut a = q(s, z);
        a.push(("kernel", Arg::I(k)));
        a.push(("pad", Arg::I(k / 2)));
        a.push(("order", Arg::S("NHWC".into())));
        a
    };
    b.op("Int8Quantize", &["data"], &["xq"], q(0.05, 128))
        .op(
            "Int8ConvRelu",
            &["xq", "w1", "b1"],
            &["a"],
            conv(3, 0.04, 0),
        )
        .op("Int8Conv", &["a", "w2", "b2"], &["c"], conv(1, 0.03, 120))
        .op("Int8Conv", &["xq", "w3", "b3"], &["sc"], conv(1, 0.06, 130))
        .op("Int8SumRelu", &["c", "sc"], &["out"], q(0.05, 0))
        .op("Int8Conv", &["out", "w4"], &["c2"], conv(1, 0.02, 125))
        .op("Int8Sum", &["out", "c2"], &["out2"], q(0.07, 110))
        .op("Int8Dequantize", &["out2"], &["y"], vec![]);
    if extra {
        b.op("Int8Dequantize", &["sc"], &["sc_f"], vec![])
            .output("sc_f");
    }
    b.output("y");
    let (i, p) = b.build();
    Model::from_nets(i, p).unwrap()
}

#[test]
fn fuse_int8_sum_keeps_outputs_bit_for_bit() {
    let x = Tensor::from_f32(&[2, 6, 6, 4], vals(288, 5));
    let model = int8_res_net(false);
    let want = run(&model, &x, "y");
    let (opt, report) = model.optimized().unwrap();
    assert!(report.contains(&("fuse_int8_sum", 2)), "{report:?}");
    assert_eq!(
        types(&opt),
        vec![
            "Int8Quantize",
            "Int8ConvRelu",
            "Int8Conv",
            "Int8ConvSumRelu",
            "Int8ConvSum",
            "Int8Dequantize"
        ]
    );
    // The shortcut convolution absorbed the first Sum (its other input `c` exists already).
    assert_eq!(opt.predict_def.op[3].input, ["xq", "w3", "b3", "c"]);
    assert_eq!(opt.predict_def.op[3].output, ["out"]);
    // Bit-identical to the unfused net, with the fast kernels, the reference and 2 threads.
    let got = run(&opt, &x, "y");
    assert_eq!(got, want);
    let mut r = model.optimized().unwrap().0;
    r.set_reference(true);
    assert_eq!(run(&r, &x, "y"), want);
    let exec = Executor::new(&opt, 2).unwrap();
    let y2 = exec
        .run(HashMap::from([("data".to_string(), x.clone())]))
        .unwrap();
    assert_eq!(y2["y"].f32_slice().unwrap(), want.as_slice());
}

#[test]
fn fuse_int8_sum_leaves_shared_and_reordered_values_alone() {
    // `sc` has a second reader: its convolution cannot absorb the Sum, and `c`'s cannot
    // either (the Sum's other input `sc` is written between `c`'s convolution and the Sum).
    // The second Sum still fuses.
    let x = Tensor::from_f32(&[1, 6, 6, 4], vals(144, 8));
    let model = int8_res_net(true);
    let want = run(&model, &x, "y");
    let (opt, report) = model.optimized().unwrap();
    assert!(report.contains(&("fuse_int8_sum", 1)), "{report:?}");
    let t = types(&opt);
    assert!(t.contains(&"Int8SumRelu".to_string()) && t.contains(&"Int8ConvSum".to_string()));
    assert_eq!(run(&opt, &x, "y"), want);
}

// ---------------------------------------------------------------------------------------
// fuse_int8_lut: Int8Dequantize → layout/Clip/Relu → Int8Quantize → Int8Lut
// ---------------------------------------------------------------------------------------

/// quantize → 1x1 Int8Conv (NHWC) → dequantize → `middle` (fp32 ops, in order, each
/// `(type, args)`) → quantize → dequantize.
fn lut_net(middle: &[(&str, Vec<(&str, Arg)>)], extra_reader: bool, conv_reader: bool) -> Model {
    use c2q::graph::builder::op_def;
    let mut b = NetBuilder::new("lut");
    b.input("data");
    b.init_op(op_def(
        "Int8GivenTensorFill",
        &[],
        &["w"],
        vec![
            ("shape", Arg::Ints(vec![6, 1, 1, 4])),
            ("values", Arg::B(u8s(24, 9))),
            ("Y_scale", Arg::F(0.02)),
            ("Y_zero_point", Arg::I(128)),
        ],
    ));
    let q = |s: f32, z: i64| vec![("Y_scale", Arg::F(s)), ("Y_zero_point", Arg::I(z))];
    let mut conv = q(0.03, 100);
    conv.push(("kernel", Arg::I(1)));
    conv.push(("order", Arg::S("NHWC".into())));
    b.op("Int8Quantize", &["data"], &["xq"], q(0.02, 128))
        .op("Int8Conv", &["xq", "w"], &["c"], conv)
        .op("Int8Dequantize", &["c"], &["f0"], vec![]);
    let mut cur = "f0".to_string();
    for (i, (t, args)) in middle.iter().enumerate() {
        let out = format!("f{}", i + 1);
        b.op(t, &[cur.as_str()], &[out.as_str()], args.clone());
        cur = out;
    }
    b.op("Int8Quantize", &[cur.as_str()], &["cq"], q(0.025, 3))
        .op("Int8Dequantize", &["cq"], &["y"], vec![]);
    if extra_reader {
        b.op("Relu", &["f1"], &["side"], vec![]).output("side");
    }
    if conv_reader {
        b.op("Int8Dequantize", &["c"], &["side2"], vec![])
            .output("side2");
    }
    b.output("y");
    let (i, p) = b.build();
    Model::from_nets(i, p).unwrap()
}

#[test]
fn fuse_int8_lut_keeps_outputs_bit_for_bit() {
    let clip = |lo: f32, hi: f32| ("Clip", vec![("min", Arg::F(lo)), ("max", Arg::F(hi))]);
    let x = Tensor::from_f32(&[2, 5, 5, 4], vals(200, 3));
    for middle in [
        vec![("NHWC2NCHW", vec![]), clip(0.0, 6.0), ("NCHW2NHWC", vec![])],
        vec![clip(-0.5, 0.7)],
        vec![("Relu", vec![]), clip(0.0, 0.3)],
        vec![],
    ] {
        let model = lut_net(&middle, false, false);
        let want = run(&model, &x, "y");
        let (opt, report) = model.optimized().unwrap();
        assert!(
            report.contains(&("fuse_int8_lut", 1)) && report.contains(&("fuse_conv_lut", 1)),
            "{middle:?} {report:?}"
        );
        // The Int8Lut then moves into the convolution (fuse_conv_lut), which still works
        // image by image (batches split over threads).
        assert_eq!(
            types(&opt),
            ["Int8Quantize", "Int8ConvLut", "Int8Dequantize"]
        );
        assert!(c2q::runtime::executor::batch_separable(&opt));
        assert_eq!(run(&opt, &x, "y"), want, "{middle:?}");
        // With a second reader of the convolution's codes the Int8Lut stays apart, and both
        // outputs keep their values.
        let model = lut_net(&middle, false, true);
        let side = run(&model, &x, "side2");
        let (opt, report) = model.optimized().unwrap();
        assert!(report.contains(&("fuse_conv_lut", 0)), "{report:?}");
        assert_eq!(
            types(&opt),
            [
                "Int8Quantize",
                "Int8Conv",
                "Int8Lut",
                "Int8Dequantize",
                "Int8Dequantize"
            ]
        );
        assert_eq!(run(&opt, &x, "y"), want, "{middle:?}");
        assert_eq!(run(&opt, &x, "side2"), side, "{middle:?}");
        let mut r = model.optimized().unwrap().0;
        r.set_reference(true);
        assert_eq!(run(&r, &x, "y"), want, "reference {middle:?}");
        // The values really pass through the clip (not all codes equal).
        let distinct: std::collections::BTreeSet<u32> = want.iter().map(|v| v.to_bits()).collect();
        assert!(distinct.len() > 3, "{middle:?}: {distinct:?}");
    }
}

#[test]
fn fuse_int8_lut_leaves_other_chains_alone() {
    let x = Tensor::from_f32(&[1, 5, 5, 4], vals(100, 4));
    let relu = ("Relu", vec![]);
    // A layout switch that does not cancel, an op outside the allowed set, and an
    // intermediate blob with a second reader.
    for (middle, extra) in [
        (vec![("NHWC2NCHW", vec![]), relu.clone()], false),
        (vec![("Sigmoid", vec![])], false),
        (vec![relu.clone(), relu.clone()], true),
    ] {
        let model = lut_net(&middle, extra, false);
        let want = run(&model, &x, "y");
        let (opt, report) = model.optimized().unwrap();
        assert!(
            report.contains(&("fuse_int8_lut", 0)),
            "{middle:?} {report:?}"
        );
        assert!(!types(&opt).contains(&"Int8Lut".to_string()));
        assert_eq!(run(&opt, &x, "y"), want);
    }
}

#[test]
fn fuse_quantize_layout_keeps_outputs_bit_for_bit() {
    use c2q::graph::builder::op_def;
    // NCHW f32 image → NCHW2NHWC → Int8Quantize → 1x1 Int8Conv → dequantize, at 1 and 3
    // channels (the one-pass transpose) and 11 (the tiled one).
    for c in [1usize, 3, 11] {
        let mut b = NetBuilder::new("qlayout");
        b.input("data").init_op(op_def(
            "Int8GivenTensorFill",
            &[],
            &["w"],
            vec![
                ("shape", Arg::Ints(vec![5, 1, 1, c as i64])),
                ("values", Arg::B(u8s(5 * c, 2))),
                ("Y_scale", Arg::F(0.02)),
                ("Y_zero_point", Arg::I(128)),
            ],
        ));
        let q = |s: f32, z: i64| vec![("Y_scale", Arg::F(s)), ("Y_zero_point", Arg::I(z))];
        let mut conv = q(0.05, 100);
        conv.push(("kernel", Arg::I(1)));
        conv.push(("order", Arg::S("NHWC".into())));
        b.op("NCHW2NHWC", &["data"], &["d_nhwc"], vec![])
            .op("Int8Quantize", &["d_nhwc"], &["xq"], q(0.013, 120))
            .op("Int8Conv", &["xq", "w"], &["c"], conv)
            .op("Int8Dequantize", &["c"], &["y"], vec![])
            .output("y");
        let (i, p) = b.build();
        let model = Model::from_nets(i, p).unwrap();
        // Small images, and ones of several pixel blocks with a partial last block.
        for (h, w) in [(4, 5), (40, 53)] {
            let x = Tensor::from_f32(&[2, c, h, w], vals(2 * c * h * w, 7));
            let want = run(&model, &x, "y");
            let (opt, report) = model.optimized().unwrap();
            assert!(report.contains(&("fuse_quantize_layout", 1)), "{report:?}");
            assert_eq!(
                types(&opt),
                ["Int8QuantizeNchw2Nhwc", "Int8Conv", "Int8Dequantize"]
            );
            assert_eq!(run(&opt, &x, "y"), want, "C = {c}, {h}x{w}");
            let mut r = model.optimized().unwrap().0;
            r.set_reference(true);
            assert_eq!(run(&r, &x, "y"), want, "reference, C = {c}, {h}x{w}");
        }
    }
}
