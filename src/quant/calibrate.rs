//! Calibration: run the fp32 net over sampled images and collect a histogram of every
//! activation (each op output, plus the fed data inputs), as Caffe2's
//! `HistogramNetObserver` does. The executor calls [`Calibrator`] after every node; there is
//! no second executor.

use std::collections::{BTreeMap, HashMap};

use ops::{QParams, Tensor};

use super::choose::{choose_from_histogram_with, ChooseOptions};
use super::hist_file::HistogramRecord;
use super::histogram::{DynamicHistogram, Histogram};
use crate::graph::{Model, Node};
use crate::runtime::{Executor, Observer};
use crate::{Error, Result};

/// Op type written for data inputs in histogram files (their `op_index` is the number of ops
/// of the net, one past the last op, so it never collides with a real op).
pub const INPUT_OP_TYPE: &str = "ExternalInput";

/// Collects histograms of f32 op outputs and data inputs (other element types are skipped).
#[derive(Debug)]
pub struct Calibrator {
    nbins: usize,
    per_op: Vec<Vec<Option<DynamicHistogram>>>,
    inputs: BTreeMap<String, DynamicHistogram>,
    /// Images seen so far.
    pub images: usize,
}

impl Calibrator {
    /// A calibrator for `model`'s predict net with `nbins` bins per histogram (Caffe2: 2048).
    pub fn new(model: &Model, nbins: usize) -> Calibrator {
        Calibrator {
            nbins,
            per_op: model
                .net
                .nodes
                .iter()
                .map(|n| vec![None; n.outputs.len()])
                .collect(),
            inputs: BTreeMap::new(),
            images: 0,
        }
    }

    /// Records the data inputs of one run.
    pub fn observe_inputs(&mut self, feed: &HashMap<String, Tensor>) {
        for (name, t) in feed {
            if let Ok(v) = t.f32_slice() {
                let nbins = self.nbins;
                self.inputs
                    .entry(name.clone())
                    .or_insert_with(|| DynamicHistogram::new(nbins))
                    .add(v);
            }
        }
    }

    /// Runs one batch through `exec`, observing every activation.
    pub fn run_batch(
        &mut self,
        exec: &Executor,
        feed: HashMap<String, Tensor>,
        images: usize,
    ) -> Result<()> {
        self.observe_inputs(&feed);
        exec.run_observed(feed, Some(self))?;
        self.images += images;
        Ok(())
    }

    /// The finished histograms, as histogram-file records (ops in order, then inputs).
    pub fn finish(&self, model: &Model) -> Calibration {
        let mut records = Vec::new();
        for (node, outs) in model.net.nodes.iter().zip(&self.per_op) {
            for (k, h) in outs.iter().enumerate() {
                if let Some(h) = h.as_ref().filter(|h| !h.is_empty()) {
                    records.push(HistogramRecord {
                        op_index: node.index,
                        op_type: Some(node.op_type.clone()),
                        output_index: k,
                        blob_name: node.outputs[k].clone(),
                        hist: h.finalize(),
                    });
                }
            }
        }
        for (name, h) in &self.inputs {
            if !h.is_empty() {
                records.push(HistogramRecord {
                    op_index: model.net.nodes.len(),
                    op_type: Some(INPUT_OP_TYPE.to_string()),
                    output_index: 0,
                    blob_name: name.clone(),
                    hist: h.finalize(),
                });
            }
        }
        Calibration {
            records,
            images: self.images,
        }
    }
}

impl Observer for Calibrator {
    fn on_node(&mut self, node: &Node, outputs: &[&Tensor]) {
        let nbins = self.nbins;
        let Some(slots) = self.per_op.get_mut(node.index) else {
            return;
        };
        for (slot, t) in slots.iter_mut().zip(outputs) {
            if let Ok(v) = t.f32_slice() {
                slot.get_or_insert_with(|| DynamicHistogram::new(nbins))
                    .add(v);
            }
        }
    }
}

/// Histograms of every activation of a net, and how many images produced them.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    /// One record per observed op output (and data input).
    pub records: Vec<HistogramRecord>,
    /// Images run.
    pub images: usize,
}

/// Chosen quantization of every observed activation.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivationParams {
    /// `per_op[i][k]`: params of output k of op i (None if not observed).
    pub per_op: Vec<Vec<Option<QParams>>>,
    /// Params of each data input.
    pub inputs: HashMap<String, QParams>,
    /// Per observed blob: (op index, output index, blob, observed min, observed max, chosen
    /// min, chosen max, params). Inputs have op index = number of ops.
    pub table: Vec<ChosenRange>,
}

/// The range chosen for one activation.
#[derive(Debug, Clone, PartialEq)]
pub struct ChosenRange {
    /// Op index (number of ops for a data input).
    pub op_index: usize,
    /// Output index.
    pub output_index: usize,
    /// Blob name.
    pub blob: String,
    /// Observed minimum.
    pub min: f32,
    /// Observed maximum.
    pub max: f32,
    /// Chosen range start.
    pub chosen_min: f32,
    /// Chosen range end.
    pub chosen_max: f32,
    /// Fraction of observed values outside the chosen range (clipped).
    pub clipped: f64,
    /// Resulting parameters.
    pub q: QParams,
}

/// Fraction of a histogram's mass outside `[lo, hi]` (bins counted by their centres).
pub fn clipped_fraction(h: &Histogram, lo: f32, hi: f32) -> f64 {
    let total = h.total();
    if total == 0 {
        return 0.0;
    }
    let w = h.bin_width() as f64;
    let mut out = 0u64;
    for (i, &c) in h.counts.iter().enumerate() {
        let centre = h.min as f64 + (i as f64 + 0.5) * w;
        if centre < lo as f64 || centre > hi as f64 {
            out += c;
        }
    }
    out as f64 / total as f64
}

impl Calibration {
    /// Chooses params for every record with the given options.
    pub fn choose(&self, model: &Model, opts: &ChooseOptions) -> Result<ActivationParams> {
        let n_ops = model.net.nodes.len();
        let mut per_op: Vec<Vec<Option<QParams>>> = model
            .net
            .nodes
            .iter()
            .map(|n| vec![None; n.outputs.len()])
            .collect();
        let mut inputs = HashMap::new();
        let mut table = Vec::with_capacity(self.records.len());
        for r in &self.records {
            let (lo, hi, q) = choose_from_histogram_with(&r.hist, opts);
            table.push(ChosenRange {
                op_index: r.op_index,
                output_index: r.output_index,
                blob: r.blob_name.clone(),
                min: r.hist.min,
                max: r.hist.max,
                chosen_min: lo,
                chosen_max: hi,
                clipped: clipped_fraction(&r.hist, lo, hi),
                q,
            });
            if r.op_index == n_ops && r.op_type.as_deref() == Some(INPUT_OP_TYPE) {
                inputs.insert(r.blob_name.clone(), q);
                continue;
            }
            let node = model.net.nodes.get(r.op_index).ok_or_else(|| Error::Input(format!(
                "histogram for op #{} (`{}`) but the net has {n_ops} ops: histograms come from another net",
                r.op_index, r.blob_name
            )))?;
            if node.outputs.get(r.output_index) != Some(&r.blob_name)
                || r.op_type.as_deref().is_some_and(|t| t != node.op_type)
            {
                return Err(Error::Input(format!(
                    "histogram for op #{} output {} (`{}`, {}) does not match the net's op #{} ({} -> {:?})",
                    r.op_index,
                    r.output_index,
                    r.blob_name,
                    r.op_type.as_deref().unwrap_or("?"),
                    node.index,
                    node.op_type,
                    node.outputs
                )));
            }
            per_op[r.op_index][r.output_index] = Some(q);
        }
        Ok(ActivationParams {
            per_op,
            inputs,
            table,
        })
    }
}

/// Runs `model` over the images `opts` selects from the LMDB at `db` and returns the
/// histograms and the records skipped as bad (with `opts.skip_bad`). `progress` gets the
/// number of images done and the number selected (at most the records the database has),
/// once before the first batch and after each. Fails if no image could be used.
pub fn calibrate_db(
    model: &Model,
    db: &std::path::Path,
    opts: data::BatchOptions,
    threads: usize,
    nbins: usize,
    progress: Option<&dyn Fn(usize, usize)>,
) -> Result<(Calibration, Vec<data::Skipped>)> {
    let input = model.data_input()?;
    let pre = opts.preprocess.clone();
    if opts.sample == Some(0) || opts.limit == Some(0) {
        return Err(Error::Input(format!(
            "{}: zero calibration images requested (ask for at least 1)",
            db.display()
        )));
    }
    let batches = data::Batches::open(db, opts)?;
    if batches.planned() == 0 {
        return Err(Error::Input(format!(
            "{}: no calibration images (the database is empty)",
            db.display()
        )));
    }
    // Normal priority: observed runs split every op between threads that spin between ops,
    // so there are no idle moments for an idle-priority decoder to fill (measured on
    // SqueezeNet, 100 images, 2 threads: the same time either way).
    let planned = batches.planned();
    if let Some(p) = progress {
        p(0, planned);
    }
    let mut batches = batches.prefetch(crate::eval::DEFAULT_PREFETCH)?;
    let exec = Executor::new(model, threads)?;
    let mut cal = Calibrator::new(model, nbins);
    for b in batches.by_ref() {
        let b = b?;
        let shape = pre.batch_shape(b.n);
        let x = Tensor::from_f32(&shape, b.images);
        cal.run_batch(&exec, HashMap::from([(input.clone(), x)]), b.n)?;
        if let Some(p) = progress {
            p(cal.images, planned);
        }
    }
    let skipped = batches.skipped();
    if cal.images == 0 {
        return Err(Error::Input(format!(
            "{}: no calibration image could be used ({} bad records)",
            db.display(),
            skipped.len()
        )));
    }
    Ok((cal.finish(model), skipped))
}
