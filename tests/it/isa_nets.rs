//! Whole int8 nets at every instruction-set level this CPU has (`Isa::force`, the same switch
//! as `C2Q_ISA`), with the runtime fusions of `Model::optimized`, at 1 and 2 threads: every
//! blob both runs produce is the same bytes as in the scalar reference run (SqueezeNet,
//! MobileNetV2 and ResNet-50 quantized by c2q, the published `resnet50_quantized` graph).
//!
//! A test binary of its own: forcing a level is process-wide.

use crate::common;

use std::collections::HashMap;

use c2q::{Executor, Model, Node, Observer};
use common::int8::{first_images, published_resnet50_quantized, quantized};
use ops::kernels::isa::Isa;
use ops::Tensor;

/// Every value every blob took, as bytes, in order. A run with fused ops writes fewer values
/// (a fused convolution's output is never written; the Sum's output is written earlier, but
/// in the same order among that blob's writes), so for every blob its values must be a
/// subsequence of the reference run's values for that blob.
#[derive(Default)]
struct Record(HashMap<String, Vec<Vec<u8>>>);

impl Record {
    /// Compares with `want`; returns how many values were compared.
    fn check(&self, want: &Record, what: &str) -> usize {
        let mut compared = 0;
        for (name, vals) in &self.0 {
            let Some(w) = want.0.get(name) else {
                continue;
            };
            let mut next = w.iter();
            for (i, v) in vals.iter().enumerate() {
                assert!(
                    next.any(|r| r == v),
                    "{what}: value {i} of blob {name} is not the reference's ({} values there)",
                    w.len()
                );
                compared += 1;
            }
        }
        compared
    }
}

impl Observer for Record {
    fn on_node(&mut self, node: &Node, outputs: &[&Tensor]) {
        for (name, t) in node.outputs.iter().zip(outputs) {
            let bytes = match t {
                Tensor::QU8(a, q) => {
                    let mut v: Vec<u8> = a.iter().copied().collect();
                    v.extend(q.scale.to_le_bytes());
                    v.extend(q.zero_point.to_le_bytes());
                    v
                }
                Tensor::F32(a) => a.iter().flat_map(|x| x.to_le_bytes()).collect(),
                other => format!("{other:?}").into_bytes(),
            };
            self.0.entry(name.clone()).or_default().push(bytes);
        }
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

/// A fresh copy of `m` (weights packed again, for the level current now).
fn reload(m: &Model) -> Model {
    Model::from_parts(
        m.paths.clone(),
        m.init_def.clone(),
        m.predict_def.clone(),
        m.params.clone(),
    )
}

/// Runs `int8` (unoptimized, scalar reference) once, then at every level with the runtime
/// fusions, and compares. Returns how many levels ran.
fn check_every_level(what: &str, int8: &Model, feed: &HashMap<String, Tensor>) -> usize {
    let mut reference = reload(int8);
    reference.set_reference(true);
    let want = record(&reference, feed, 2);
    let total: usize = want.0.values().map(Vec::len).sum();
    let outputs = int8.outputs();
    let mut levels = 0;
    for isa in Isa::available() {
        Isa::force(Some(isa));
        let (opt, _) = reload(int8).optimized().unwrap();
        for threads in [1, 2] {
            let got = record(&opt, feed, threads);
            let compared = got.check(&want, &format!("{what} at {isa}, {threads} threads"));
            for o in &outputs {
                assert!(got.0.contains_key(o), "{what}: output {o} missing");
            }
            // Every value the fused run wrote was found in the reference run (asserted in
            // `check`); at least one per op of the fused net.
            let ops = opt.predict_def.op.len();
            assert!(
                compared >= ops,
                "{what}: {compared} values for {ops} ops (of {total})"
            );
        }
        levels += 1;
    }
    Isa::force(None);
    eprintln!(
        "{what}: identical at {levels} levels ({:?})",
        Isa::available()
    );
    levels
}

#[test]
fn every_level_gives_the_reference_bytes() {
    let Some(db) = common::shared("data/imagenet100") else {
        return;
    };
    for (name, per_channel) in [
        ("models/squeezenet1_1", false),
        ("models/mobilenet_v2", true),
        ("models/resnet50", false),
    ] {
        let Some(dir) = common::shared(name) else {
            continue;
        };
        let model = Model::load_dir(&dir).unwrap().optimized().unwrap().0;
        let int8 = quantized(&model, &db, 2, per_channel);
        let feed = HashMap::from([(model.data_input().unwrap(), first_images(&db, 1))]);
        assert!(check_every_level(name, &int8, &feed) >= 1);
    }
    if let Some((model, feed)) = published_resnet50_quantized() {
        check_every_level("resnet50_quantized", &model, &feed);
    }
}
