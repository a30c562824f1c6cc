//! `Executor::run` on several threads cuts a batch into per-thread parts: the joined outputs
//! equal a one-thread run of the whole batch, and nets with ops that may mix images are run
//! whole.

use std::collections::HashMap;

use c2q::demo::{example_net, EXAMPLE_SIZE};
use c2q::graph::builder::{op_def, Arg};
use c2q::runtime::executor::batch_separable;
use c2q::{Executor, Model};
use ops::Tensor;

fn feed(model: &Model, n: usize) -> HashMap<String, Tensor> {
    let len = n * 3 * EXAMPLE_SIZE * EXAMPLE_SIZE;
    let x: Vec<f32> = (0..len)
        .map(|i| ((i * 7919) % 1013) as f32 / 506.0 - 1.0)
        .collect();
    HashMap::from([(
        model.data_input().unwrap(),
        Tensor::from_f32(&[n, 3, EXAMPLE_SIZE, EXAMPLE_SIZE], x),
    )])
}

#[test]
fn split_batch_equals_whole_run_and_unsplittable_nets_run_whole() {
    let (init, predict) = example_net(3);
    let model = Model::from_nets(init.clone(), predict.clone()).unwrap();
    assert!(batch_separable(&model));
    let one = Executor::new(&model, 1).unwrap();
    let two = Executor::new(&model, 2).unwrap();
    assert_eq!(one.batch_streams(5), 1);
    assert_eq!(two.batch_streams(5), 2);
    assert_eq!(two.batch_streams(1), 1);
    for n in [1, 2, 5] {
        let f = feed(&model, n);
        let whole = one.run(f.clone()).unwrap();
        let split = two.run(f).unwrap();
        assert_eq!(whole.len(), split.len());
        for (name, w) in &whole {
            let s = &split[name];
            assert_eq!(w.shape(), s.shape(), "{name}");
            // Each image goes through the same kernels on the same K order whatever the
            // batch, so even fp32 values agree exactly.
            assert_eq!(
                w.f32_slice().unwrap(),
                s.f32_slice().unwrap(),
                "{name}, n = {n}"
            );
        }
    }

    // A bad input fails both ways and does not stop later runs from being split.
    let mut bad = feed(&model, 4);
    let x = bad.values_mut().next().unwrap();
    // Two channels where the first conv wants three.
    *x = Tensor::zeros_f32(&[4, 2, EXAMPLE_SIZE, EXAMPLE_SIZE]);
    assert!(two.run(bad).is_err());
    assert_eq!(two.batch_streams(5), 2);

    // A Reshape may move the batch axis: such a net is not split.
    let mut predict2 = predict.clone();
    let last = predict2.op.len() - 1;
    let out = predict2.op[last].output[0].clone();
    predict2.op.push(op_def(
        "Reshape",
        &[&out],
        &[&out, "old_shape"],
        vec![("shape", Arg::Ints(vec![-1]))],
    ));
    let model2 = Model::from_nets(init, predict2).unwrap();
    assert!(!batch_separable(&model2));
    let two2 = Executor::new(&model2, 2).unwrap();
    assert_eq!(two2.batch_streams(4), 1);
    let f = feed(&model2, 4);
    let whole = Executor::new(&model2, 1).unwrap().run(f.clone()).unwrap();
    let split = two2.run(f).unwrap();
    assert_eq!(whole[&out].shape().len(), 1);
    assert_eq!(whole[&out].shape(), split[&out].shape());
    assert_eq!(
        whole[&out].f32_slice().unwrap(),
        split[&out].f32_slice().unwrap()
    );
}

#[test]
fn an_output_without_batch_axis_makes_the_executor_run_whole() {
    // A separable net that also exports a parameter (no batch axis): the split run cannot be
    // joined, so the run is redone whole, with the same result as one thread, and later runs
    // are not split.
    let (init, mut predict) = example_net(4);
    let last = predict.op.last().unwrap().output[0].clone();
    predict.external_output = vec![last.clone(), "fc_b".into()];
    let model = Model::from_nets(init, predict).unwrap();
    assert!(batch_separable(&model));
    let two = Executor::new(&model, 2).unwrap();
    assert_eq!(two.batch_streams(4), 2);
    let f = feed(&model, 4);
    let whole = Executor::new(&model, 1).unwrap().run(f.clone()).unwrap();
    let out = two.run(f).unwrap();
    assert_eq!(two.batch_streams(4), 1);
    for name in [&last, "fc_b"] {
        assert_eq!(whole[name].shape(), out[name].shape(), "{name}");
        assert_eq!(
            whole[name].f32_slice().unwrap(),
            out[name].f32_slice().unwrap(),
            "{name}"
        );
    }
    assert_eq!(out[&last].shape()[0], 4);
}

#[test]
fn tensor_rows_slice_and_join() {
    let t = Tensor::from_f32(&[3, 2], vec![0., 1., 2., 3., 4., 5.]);
    let a = t.slice_rows(0..1).unwrap();
    let b = t.slice_rows(1..3).unwrap();
    assert_eq!(a.shape(), &[1, 2]);
    assert_eq!(b.f32_slice().unwrap(), &[2., 3., 4., 5.]);
    assert_eq!(Tensor::concat_rows(&[a, b.clone()]).unwrap(), t);
    assert!(t.slice_rows(2..4).is_err());
    // Int8 tensors keep their parameters; different parameters cannot be joined.
    let q = |s: f32| ops::QParams {
        scale: s,
        zero_point: 3,
    };
    let codes = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[2, 2]), vec![1u8, 2, 3, 4]);
    let u = Tensor::QU8(codes.unwrap(), q(0.5));
    let (u0, u1) = (u.slice_rows(0..1).unwrap(), u.slice_rows(1..2).unwrap());
    assert_eq!(Tensor::concat_rows(&[u0.clone(), u1]).unwrap(), u);
    let other = Tensor::QU8(
        ndarray::ArrayD::from_elem(ndarray::IxDyn(&[1, 2]), 9u8),
        q(0.25),
    );
    assert!(Tensor::concat_rows(&[u0.clone(), other]).is_err());
    assert!(Tensor::concat_rows(&[u0, b]).is_err());
    let wide = Tensor::from_f32(&[1, 3], vec![0.; 3]);
    assert!(Tensor::concat_rows(&[t, wide]).is_err());
}

#[test]
fn borrowed_feed_runs_like_an_owned_one() {
    // `run_ref` reads the feed in place: same outputs as `run` on one and two threads (split
    // and whole), the feed left as it was, an input that is also an output handed back, and
    // a missing input named.
    let (init, mut predict) = example_net(5);
    let last = predict.op.last().unwrap().output[0].clone();
    let model0 = Model::from_nets(init.clone(), predict.clone()).unwrap();
    let data = model0.data_input().unwrap();
    predict.external_output = vec![last.clone(), data.clone()];
    let model = Model::from_nets(init, predict).unwrap();
    for threads in [1, 2] {
        let exec = Executor::new(&model, threads).unwrap();
        for n in [1, 5] {
            let f = feed(&model, n);
            let before = f.clone();
            let owned = exec.run(f.clone()).unwrap();
            let borrowed = exec.run_ref(&f).unwrap();
            assert_eq!(f, before);
            assert_eq!(owned.len(), 2);
            for name in [&last, &data] {
                assert_eq!(
                    owned[name], borrowed[name],
                    "{name}, {threads} threads, n = {n}"
                );
            }
            assert_eq!(borrowed[&data], f[&data]);
        }
        let err = exec.run_ref(&HashMap::new()).unwrap_err().to_string();
        assert!(err.contains(&format!("`{data}`")), "{err}");
    }
}

/// A net with large early activations and a large late weight: Conv (3 → 8, 3×3) on 64×64,
/// Relu, MaxPool 4×4, then FC (2048 → 512: 4 MiB of weights) and FC (512 → 10).
fn early_wide_late_heavy(with_fc: bool) -> Model {
    use c2q::graph::builder::NetBuilder;
    let mut seed = 17u64;
    let mut vals = |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
            })
            .collect()
    };
    let mut b = NetBuilder::new("early_wide");
    b.input("data")
        .param("cw", &[8, 3, 3, 3], vals(8 * 27, 0.5))
        .param("cb", &[8], vals(8, 0.1))
        .param("f1w", &[512, 2048], vals(512 * 2048, 0.05))
        .param("f1b", &[512], vals(512, 0.1))
        .param("f2w", &[10, 512], vals(10 * 512, 0.1))
        .param("f2b", &[10], vals(10, 0.1))
        .op(
            "Conv",
            &["data", "cw", "cb"],
            &["c"],
            vec![("kernel", Arg::I(3)), ("pad", Arg::I(1))],
        )
        .op("Relu", &["c"], &["r"], vec![])
        .op(
            "MaxPool",
            &["r"],
            &["p"],
            vec![("kernel", Arg::I(4)), ("stride", Arg::I(4))],
        )
        .output("r");
    if with_fc {
        b.op("FC", &["p", "f1w", "f1b"], &["f1"], vec![])
            .op("FC", &["f1", "f2w", "f2b"], &["out"], vec![])
            .output("out");
    } else {
        b.output("p");
    }
    let (init, predict) = b.build();
    Model::from_nets(init, predict).unwrap()
}

fn wide_feed(n: usize) -> HashMap<String, Tensor> {
    let x: Vec<f32> = (0..n * 3 * 64 * 64)
        .map(|i| ((i * 7919) % 1013) as f32 / 506.0 - 1.0)
        .collect();
    HashMap::from([("data".to_string(), Tensor::from_f32(&[n, 3, 64, 64], x))])
}

#[test]
fn prefix_cut_stops_before_the_heavy_weights_and_only_when_the_batch_spills() {
    use c2q::runtime::executor::prefix_cut;
    use ops::TensorInfo;
    let model = early_wide_late_heavy(true);
    let sig = |n: usize| vec![("data".to_string(), TensorInfo::f32([n, 3, 64, 64]))];
    // Per image: Conv 48 KiB in + 128 KiB out, Relu 128 + 128, MaxPool 128 + 8, FC 8 KiB of
    // activations against 4 MiB of weights: the running gain peaks after MaxPool (node 3).
    let fc = model
        .net
        .nodes
        .iter()
        .position(|n| n.op_type == "FC")
        .unwrap();
    assert_eq!(fc, 3);
    assert_eq!(prefix_cut(&model, &sig(8)), Some(3));
    assert_eq!(prefix_cut(&model, &sig(4)), Some(3));
    // 1 image: nothing to split; 2 images: 2 × 256 KiB fit in the caches.
    assert_eq!(prefix_cut(&model, &sig(1)), None);
    assert_eq!(prefix_cut(&model, &sig(2)), None);
    // Without the FCs the whole net runs image by image.
    let light = early_wide_late_heavy(false);
    assert_eq!(light.net.nodes.len(), 3);
    assert_eq!(prefix_cut(&light, &sig(8)), Some(3));
}

#[test]
fn image_by_image_prefix_gives_the_whole_batch_results() {
    // One thread at batch 8 and two threads (parts of 4) run the first three nodes image by
    // image (see the cut test above); every output, including the wide `r` that crosses the
    // cut, equals the whole-batch run (observed runs are never split) and each image's own
    // run, bit for bit: each image meets the same kernels in the same order.
    struct Nothing;
    impl c2q::Observer for Nothing {
        fn on_node(&mut self, _: &c2q::Node, _: &[&Tensor]) {}
    }
    let model = early_wide_late_heavy(true);
    let f = wide_feed(8);
    let one = Executor::new(&model, 1).unwrap();
    let whole = one.run_observed(f.clone(), Some(&mut Nothing)).unwrap();
    for threads in [1, 2] {
        let exec = Executor::new(&model, threads).unwrap();
        // One part of 8 images or two of 4: the first three nodes image by image either way.
        assert_eq!(exec.plan(&f).unwrap(), (threads, Some(3)));
        let out = exec.run(f.clone()).unwrap();
        let borrowed = exec.run_ref(&f).unwrap();
        for name in ["out", "r"] {
            assert_eq!(out[name].shape(), whole[name].shape(), "{name}");
            assert_eq!(out[name], whole[name], "{name}, {threads} threads");
            assert_eq!(borrowed[name], whole[name], "{name}, {threads} threads");
        }
    }
    let x = &f["data"];
    let per = one.run_observed(wide_feed(8), None).unwrap();
    assert_eq!(per["out"], whole["out"]);
    for i in [0, 5] {
        let single = HashMap::from([("data".to_string(), x.slice_rows(i..i + 1).unwrap())]);
        let alone = one.run(single).unwrap();
        assert_eq!(
            alone["out"],
            whole["out"].slice_rows(i..i + 1).unwrap(),
            "image {i}"
        );
    }
}
