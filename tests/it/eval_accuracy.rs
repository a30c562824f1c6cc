//! `evaluate` against a plain loop: the same batches run one model at a time with
//! `Executor::run`, top-1/top-5 counted by a full sort, agreement and mean |Δ| summed by hand.
//! Every decoding schedule (prefetch thread or inline, one or two threads) gives those figures.

use std::collections::HashMap;

use c2q::demo::{example_image, example_net, EXAMPLE_CLASSES};
use c2q::eval::{evaluate, EvalOptions};
use c2q::{Executor, Model};
use ops::Tensor;

fn make_db(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    for k in 0..n {
        let class = k % 3;
        let folder = dir.join(format!("imgs/c{class}"));
        std::fs::create_dir_all(&folder).unwrap();
        example_image(40 + k as u32, 36 + (k % 5) as u32, k)
            .save(folder.join(format!("{k:02}.png")))
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
fn evaluate_counts_like_a_plain_loop() {
    let dir = tempfile::tempdir().unwrap();
    let db = make_db(dir.path(), 11);
    let models: Vec<Model> = [5, 9]
        .into_iter()
        .map(|seed| {
            let (init, predict) = example_net(seed);
            Model::from_nets(init, predict).unwrap()
        })
        .collect();
    let batches = data::BatchOptions {
        batch_size: 4,
        preprocess: data::Preprocess {
            scale: 36,
            crop: 32,
            ..data::Preprocess::default()
        },
        ..data::BatchOptions::default()
    };

    // The plain loop.
    let (mut top1, mut top5) = ([0usize; 2], [0usize; 2]);
    let (mut agree, mut dsum, mut images) = (0usize, 0f64, 0usize);
    let pre = batches.preprocess.clone();
    let execs: Vec<Executor> = models
        .iter()
        .map(|m| Executor::new(m, 1).unwrap())
        .collect();
    for b in data::Batches::open(&db, batches.clone()).unwrap() {
        let b = b.unwrap();
        let x = Tensor::from_f32(&pre.batch_shape(b.n), b.images);
        let ys: Vec<Vec<f32>> = models
            .iter()
            .zip(&execs)
            .map(|(m, e)| {
                let out = e
                    .run(HashMap::from([(m.data_input().unwrap(), x.clone())]))
                    .unwrap();
                out["softmax"].f32_slice().unwrap().to_vec()
            })
            .collect();
        let mut best = [vec![], vec![]];
        for (k, y) in ys.iter().enumerate() {
            for (row, &label) in y.chunks_exact(EXAMPLE_CLASSES).zip(&b.labels) {
                let mut idx: Vec<usize> = (0..EXAMPLE_CLASSES).collect();
                idx.sort_by(|&p, &q| row[q].total_cmp(&row[p]).then(p.cmp(&q)));
                top1[k] += usize::from(idx[0] as i64 == label);
                top5[k] += usize::from(idx[..5].contains(&(label as usize)));
                best[k].push(idx[0]);
            }
        }
        agree += best[0].iter().zip(&best[1]).filter(|(p, q)| p == q).count();
        for (r0, r1) in ys[0]
            .chunks_exact(EXAMPLE_CLASSES)
            .zip(ys[1].chunks_exact(EXAMPLE_CLASSES))
        {
            let d: f64 = r0
                .iter()
                .zip(r1)
                .map(|(p, q)| f64::from((p - q).abs()))
                .sum();
            dsum += d / EXAMPLE_CLASSES as f64;
        }
        images += b.n;
    }
    assert_eq!(images, 11);
    // The two nets must not agree everywhere, or agreement would not be tested.
    assert!(agree < 11, "agreement {agree}");

    let refs: Vec<&Model> = models.iter().collect();
    let (normal, idle) = (data::DecodePriority::Normal, data::DecodePriority::Idle);
    for (threads, prefetch, decode_priority) in [
        (1, 2, normal),
        (1, 0, normal),
        (2, 0, normal),
        (2, 1, normal),
        (2, 2, idle),
        (1, 2, idle),
    ] {
        let opts = EvalOptions {
            batches: batches.clone(),
            threads,
            labels_offset: 0,
            prefetch,
            decode_priority,
        };
        let r = evaluate(&refs, &db, &opts, None).unwrap();
        let what = format!("{threads} threads, prefetch {prefetch}, {decode_priority:?}");
        assert_eq!(r.images, 11, "{what}");
        for k in 0..2 {
            assert_eq!(r.models[k].top1, top1[k], "model {k} top-1, {what}");
            assert_eq!(r.models[k].top5, top5[k], "model {k} top-5, {what}");
        }
        assert_eq!(r.agree, agree, "{what}");
        let mean = dsum / 11.0;
        assert!(
            (r.mean_abs_delta - mean).abs() <= 1e-12 * mean.max(1.0),
            "{what}"
        );
    }

    // Three models: each one after the first is compared with the first. The first model
    // again agrees on every image with no difference; the second model in third place gives
    // the counts of the independent loop.
    let opts = EvalOptions {
        batches: batches.clone(),
        threads: 1,
        ..EvalOptions::default()
    };
    let three = [&models[0], &models[0], &models[1]];
    let r = evaluate(&three, &db, &opts, None).unwrap();
    assert_eq!(r.agreement_with_first(0), None);
    assert_eq!(r.models[1].agree_with_first, 11);
    assert_eq!(r.mean_abs_delta_with_first(1), Some(0.0));
    assert_eq!(r.models[2].agree_with_first, agree);
    assert_eq!(r.agreement_with_first(2), Some(agree as f64 / 11.0));
    let mean = dsum / 11.0;
    let got = r.mean_abs_delta_with_first(2).unwrap();
    assert!((got - mean).abs() <= 1e-12 * mean.max(1.0));
    assert_eq!(r.agreement(), Some(1.0));
    assert_eq!(r.agreement_with_first(3), None);
}

/// A model whose outputs are NaN for some images: those images are counted and named, never
/// scored as a class and never agreeing; a label outside the model's classes is an error
/// naming the record.
#[test]
fn nan_outputs_are_reported_and_bad_labels_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = make_db(dir.path(), 6);
    let (init, predict) = example_net(5);
    let good = Model::from_nets(init.clone(), predict.clone()).unwrap();
    // NaN classifier weights: every output is NaN.
    let mut nan_init = init.clone();
    for op in &mut nan_init.op {
        if op.output[0] == "fc_w" {
            if let Some(v) = op.arg.iter_mut().find(|a| a.name() == "values") {
                v.floats.iter_mut().for_each(|x| *x = f32::NAN);
            }
        }
    }
    let bad = Model::from_nets(nan_init, predict).unwrap();
    let opts = EvalOptions {
        batches: data::BatchOptions {
            batch_size: 4,
            preprocess: data::Preprocess {
                scale: 36,
                crop: 32,
                ..data::Preprocess::default()
            },
            ..data::BatchOptions::default()
        },
        threads: 1,
        ..EvalOptions::default()
    };
    let r = evaluate(&[&good, &bad], &db, &opts, None).unwrap();
    assert_eq!(r.images, 6);
    assert_eq!((r.models[0].non_finite, r.models[1].non_finite), (0, 6));
    assert_eq!((r.models[1].top1, r.models[1].top5), (0, 0));
    assert_eq!(r.agree, 0);
    let first = r.models[1].first_non_finite.clone().unwrap();
    assert!(first.ends_with("00.png"), "{first}");
    // Classes 1 and 2 become 10 and 11, outside 0..9: refused with the record's key.
    let opts = EvalOptions {
        labels_offset: 9,
        ..opts
    };
    let err = evaluate(&[&good], &db, &opts, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("label")
            && err.contains("outside the model's 10 classes")
            && err.contains(".png"),
        "{err}"
    );
}
