//! Per-layer error of an int8 net against its fp32 original: every int8 blob `b_int8` the
//! quantizer wrote is dequantized and compared with fp32 blob `b` on the same images.
//!
//! Blobs are matched by name (`b_int8` ↔ `b`) and by how many times the name was written
//! before, so blobs reused in place still pair up with the right value. 4-D int8 blobs are
//! NHWC and are compared with the NCHW fp32 value transposed. Two figures per blob:
//! `SQNR = 10·log10(Σ r² / Σ (r − q)²)` in dB (∞ when equal) and the cosine similarity, both
//! summed over every image seen.

use std::collections::HashMap;

use ops::Tensor;

use crate::{Error, Executor, Model, Node, Observer, Result};

/// The error of one int8 blob against its fp32 twin.
#[derive(Debug, Clone, PartialEq)]
pub struct BlobError {
    /// The fp32 blob name (the int8 blob is `<blob>_int8`).
    pub blob: String,
    /// Index of the int8 op that writes the blob (in the int8 predict net).
    pub op_index: usize,
    /// Type of that op.
    pub op_type: String,
    /// Name of that op (often the fp32 op's name).
    pub op_name: String,
    /// Number of values compared.
    pub values: u64,
    /// Signal-to-quantization-noise ratio in dB.
    pub sqnr_db: f64,
    /// Cosine similarity of the fp32 and dequantized values.
    pub cosine: f64,
    /// Largest absolute difference.
    pub max_abs_err: f64,
}

/// Running sums for one blob.
#[derive(Debug, Default, Clone)]
struct Acc {
    op_index: usize,
    op_type: String,
    op_name: String,
    n: u64,
    ref2: f64,
    q2: f64,
    dot: f64,
    err2: f64,
    max_abs: f64,
}

/// Records every f32 output of the fp32 net by `(name, write count)`.
struct Fp32Recorder {
    seen: HashMap<String, usize>,
    values: HashMap<(String, usize), Tensor>,
}

impl Observer for Fp32Recorder {
    fn on_node(&mut self, node: &Node, outputs: &[&Tensor]) {
        for (name, t) in node.outputs.iter().zip(outputs) {
            let k = self.seen.entry(name.clone()).or_default();
            if matches!(t, Tensor::F32(_)) {
                self.values.insert((name.clone(), *k), (*t).clone());
            }
            *k += 1;
        }
    }
}

/// Compares the int8 net's outputs with the recorded fp32 values as they are produced.
struct Int8Comparer<'a> {
    fp32: &'a HashMap<(String, usize), Tensor>,
    seen: HashMap<String, usize>,
    acc: &'a mut HashMap<String, Acc>,
}

impl Observer for Int8Comparer<'_> {
    fn on_node(&mut self, node: &Node, outputs: &[&Tensor]) {
        for (name, t) in node.outputs.iter().zip(outputs) {
            let Some(base) = name.strip_suffix("_int8") else {
                continue;
            };
            let k = self.seen.entry(base.to_string()).or_default();
            let key = (base.to_string(), *k);
            *k += 1;
            let (Tensor::QU8(q, p), Some(Tensor::F32(r))) = (*t, self.fp32.get(&key)) else {
                continue;
            };
            let rs = r.shape();
            let qs = q.shape();
            // Same layout, or int8 NHWC against fp32 NCHW.
            let q_view = if qs == rs {
                q.view()
            } else if qs.len() == 4
                && rs.len() == 4
                && qs == [rs[0], rs[2], rs[3], rs[1]].as_slice()
            {
                q.view().permuted_axes(vec![0, 3, 1, 2])
            } else {
                continue;
            };
            let label = blob_label(base, key.1);
            let a = self.acc.entry(label).or_insert_with(|| Acc {
                op_index: node.index,
                op_type: node.op_type.clone(),
                op_name: node.name.clone(),
                ..Acc::default()
            });
            for (&rv, &qv) in r.iter().zip(q_view.iter()) {
                let dq = f64::from(p.scale) * f64::from(i32::from(qv) - p.zero_point);
                let rv = f64::from(rv);
                let e = rv - dq;
                a.ref2 += rv * rv;
                a.q2 += dq * dq;
                a.dot += rv * dq;
                a.err2 += e * e;
                a.max_abs = a.max_abs.max(e.abs());
            }
            a.n += r.len() as u64;
        }
    }
}

/// Accumulates [`BlobError`]s of an (fp32, int8) model pair over several input batches.
pub struct LayerErrors<'m> {
    fp32: Executor<'m>,
    int8: Executor<'m>,
    acc: HashMap<String, Acc>,
    images: usize,
}

impl<'m> LayerErrors<'m> {
    /// Prepares executors for both models (`threads` workers each, 0 = all cores).
    pub fn new(fp32: &'m Model, int8: &'m Model, threads: usize) -> Result<LayerErrors<'m>> {
        Ok(LayerErrors {
            fp32: Executor::new(fp32, threads)?,
            int8: Executor::new(int8, threads)?,
            acc: HashMap::new(),
            images: 0,
        })
    }

    /// Runs both nets on one batch (`feed` maps each data input to its tensor; `n` images).
    pub fn add_batch(&mut self, feed: HashMap<String, Tensor>, n: usize) -> Result<()> {
        let mut rec = Fp32Recorder {
            seen: HashMap::new(),
            values: HashMap::new(),
        };
        self.fp32.run_observed(feed.clone(), Some(&mut rec))?;
        let mut cmp = Int8Comparer {
            fp32: &rec.values,
            seen: HashMap::new(),
            acc: &mut self.acc,
        };
        self.int8.run_observed(feed, Some(&mut cmp))?;
        self.images += n;
        Ok(())
    }

    /// Images seen so far.
    pub fn images(&self) -> usize {
        self.images
    }

    /// The errors so far, worst (lowest SQNR) first; fails when no blob could be matched.
    pub fn finish(&self) -> Result<Vec<BlobError>> {
        if self.acc.is_empty() {
            return Err(Error::Input(
                "no int8 blob of the int8 net matches an fp32 blob of the fp32 net (blob `x` \
                 is expected to appear as `x_int8`, as c2q quantize names them)"
                    .into(),
            ));
        }
        let mut v: Vec<BlobError> = self
            .acc
            .iter()
            .map(|(blob, a)| BlobError {
                blob: blob.clone(),
                op_index: a.op_index,
                op_type: a.op_type.clone(),
                op_name: a.op_name.clone(),
                values: a.n,
                sqnr_db: sqnr_db(a.ref2, a.err2),
                cosine: cosine(a.dot, a.ref2, a.q2),
                max_abs_err: a.max_abs,
            })
            .collect();
        v.sort_by(|a, b| {
            a.sqnr_db
                .total_cmp(&b.sqnr_db)
                .then(a.op_index.cmp(&b.op_index))
        });
        Ok(v)
    }
}

/// How a blob is named in the report: `name` for its first write, `name#k` for the k-th
/// rewrite of a reused name (k counted from 0).
pub fn blob_label(name: &str, nth: usize) -> String {
    if nth == 0 {
        name.to_string()
    } else {
        format!("{name}#{nth}")
    }
}

/// Blob label (`name`, or `name#k` for the k-th write of a reused name) → (op index, op type)
/// of the fp32 op that writes it, labelled the way [`LayerErrors`] labels blobs. The index is
/// the one `--exclude-nodes` takes.
pub fn blob_owners(model: &Model) -> HashMap<String, (usize, String)> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut out = HashMap::new();
    for (i, n) in model.net.nodes.iter().enumerate() {
        for o in &n.outputs {
            let k = seen.entry(o.as_str()).or_default();
            out.insert(blob_label(o, *k), (i, n.op_type.clone()));
            *k += 1;
        }
    }
    out
}

/// `10·log10(signal / noise)`; +∞ without noise, −∞ without signal (but with noise).
pub fn sqnr_db(signal: f64, noise: f64) -> f64 {
    if noise == 0.0 {
        f64::INFINITY
    } else if signal == 0.0 {
        f64::NEG_INFINITY
    } else {
        10.0 * (signal / noise).log10()
    }
}

/// `dot / (|a|·|b|)`, 1 when both vectors are zero, 0 when exactly one is.
pub fn cosine(dot: f64, a2: f64, b2: f64) -> f64 {
    if a2 == 0.0 && b2 == 0.0 {
        1.0
    } else if a2 == 0.0 || b2 == 0.0 {
        0.0
    } else {
        dot / (a2.sqrt() * b2.sqrt())
    }
}

/// [`LayerErrors`] over the first images of an LMDB (`opts.limit`, in key order unless
/// `opts.sample` is set), both nets fed the same preprocessed batches.
pub fn layer_errors_on_db(
    fp32: &Model,
    int8: &Model,
    db: &std::path::Path,
    opts: data::BatchOptions,
    threads: usize,
) -> Result<(Vec<BlobError>, usize)> {
    layer_errors_on_db_with(fp32, int8, db, opts, threads, None)
}

/// [`layer_errors_on_db`] calling `progress(images done, images selected)` before the first
/// batch and after each.
pub fn layer_errors_on_db_with(
    fp32: &Model,
    int8: &Model,
    db: &std::path::Path,
    opts: data::BatchOptions,
    threads: usize,
    progress: Option<&dyn Fn(usize, usize)>,
) -> Result<(Vec<BlobError>, usize)> {
    let pre = opts.preprocess.clone();
    let input = fp32.data_input()?;
    let int8_input = int8.data_input()?;
    let mut le = LayerErrors::new(fp32, int8, threads)?;
    let batches = data::Batches::open(db, opts)?;
    let planned = batches.planned();
    if let Some(p) = progress {
        p(0, planned);
    }
    for b in batches {
        let b = b?;
        let x = Tensor::from_f32(&pre.batch_shape(b.n), b.images);
        let mut feed = HashMap::from([(input.clone(), x.clone())]);
        if int8_input != input {
            feed.insert(int8_input.clone(), x);
        }
        le.add_batch(feed, b.n)?;
        if let Some(p) = progress {
            p(le.images(), planned);
        }
    }
    if le.images() == 0 {
        return Err(Error::Input(format!(
            "{}: no image to compare on",
            db.display()
        )));
    }
    Ok((le.finish()?, le.images()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqnr_and_cosine_by_hand() {
        // Signal {3, 4}: Σr² = 25; noise {0.3, -0.4}: Σe² = 0.25 -> 10·log10(100) = 20 dB.
        assert!((sqnr_db(25.0, 0.25) - 20.0).abs() < 1e-12);
        assert_eq!(sqnr_db(1.0, 0.0), f64::INFINITY);
        assert_eq!(sqnr_db(0.0, 1.0), f64::NEG_INFINITY);
        // r = (1, 0), q = (1, 1): dot 1, |r| 1, |q| √2.
        assert!((cosine(1.0, 1.0, 2.0) - 0.5f64.sqrt()).abs() < 1e-12);
        assert_eq!(cosine(0.0, 0.0, 0.0), 1.0);
        assert_eq!(cosine(0.0, 1.0, 0.0), 0.0);
    }
}
