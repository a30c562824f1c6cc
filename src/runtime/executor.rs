//! Sequential executor over a model's predict net. Ops parallelize internally with rayon
//! inside the executor's own thread pool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use ops::{Tensor, TensorInfo};

use crate::graph::{infer::describe_inputs, Model, Node};
use crate::{Error, Result};

/// Called after each node runs, with the node and its outputs (calibration hooks in here).
pub trait Observer: Send {
    /// Sees one node's outputs.
    fn on_node(&mut self, node: &Node, outputs: &[&Tensor]);
}

/// Runs a model's predict net.
pub struct Executor<'m> {
    model: &'m Model,
    pool: rayon::ThreadPool,
    /// For each node, the blobs whose last reader it is (freed after it runs).
    frees: Vec<Vec<String>>,
    /// One single-thread pool per thread when [`Executor::run`] may split a batch (empty
    /// with one thread or a net whose ops are not all per-image).
    streams: Vec<rayon::ThreadPool>,
    /// Set when a split run could not be joined back (the net then runs whole).
    split_failed: AtomicBool,
    /// Input descriptions whose shape inference found no output over the tensor limit.
    sized: std::sync::Mutex<Vec<Vec<(String, TensorInfo)>>>,
}

impl<'m> Executor<'m> {
    /// An executor using `threads` worker threads (0 = all cores).
    pub fn new(model: &'m Model, threads: usize) -> Result<Executor<'m>> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| Error::Input(format!("cannot start {threads} threads: {e}")))?;
        let outputs = model.outputs();
        let mut last_read: HashMap<&str, usize> = HashMap::new();
        for (i, n) in model.net.nodes.iter().enumerate() {
            for b in &n.inputs {
                last_read.insert(b.as_str(), i);
            }
        }
        let mut frees = vec![Vec::new(); model.net.nodes.len()];
        for (blob, i) in last_read {
            if !outputs.iter().any(|o| o == blob) {
                frees[i].push(blob.to_string());
            }
        }
        let threads = pool.current_num_threads();
        let streams = if threads > 1 && batch_separable(model) {
            (0..threads)
                .map(|_| rayon::ThreadPoolBuilder::new().num_threads(1).build())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::Input(format!("cannot start {threads} threads: {e}")))?
        } else {
            Vec::new()
        };
        Ok(Executor {
            model,
            pool,
            frees,
            streams,
            split_failed: AtomicBool::new(false),
            sized: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// How many parts [`Executor::run`] splits a batch of `n` images into (1: not split).
    pub fn batch_streams(&self, n: usize) -> usize {
        if self.split_failed.load(Ordering::Relaxed) {
            return 1;
        }
        self.streams.len().min(n).max(1)
    }

    /// Checks the fed inputs against the model and infers every shape (no computation).
    pub fn check(&self, inputs: &HashMap<String, Tensor>) -> Result<()> {
        let infos: HashMap<String, TensorInfo> =
            inputs.iter().map(|(k, v)| (k.clone(), v.info())).collect();
        self.model.infer(&infos).check().map(|_| ())
    }

    /// Refuses inputs for which some op's output would exceed the tensor limit
    /// ([`ops::limits`]) before anything runs; shape inference is done once per distinct set
    /// of input shapes. Other inference failures are left to the run to report, as before.
    fn check_sizes(
        &self,
        inputs: &HashMap<String, Tensor>,
        feed: &HashMap<String, Tensor>,
    ) -> Result<()> {
        let mut sig: Vec<(String, TensorInfo)> = inputs
            .iter()
            .chain(feed.iter().filter(|(k, _)| !inputs.contains_key(*k)))
            .map(|(k, v)| (k.clone(), v.info()))
            .collect();
        sig.sort_by(|a, b| a.0.cmp(&b.0));
        let mut sized = self.sized.lock().unwrap_or_else(|p| p.into_inner());
        if sized.contains(&sig) {
            return Ok(());
        }
        let map = self.model.infer(&sig.iter().cloned().collect());
        if map.too_large {
            if let Some(e) = map.error {
                return Err(e);
            }
        }
        if sized.len() >= 16 {
            sized.remove(0);
        }
        sized.push(sig);
        Ok(())
    }

    /// Runs the net on the given inputs and returns its outputs by name.
    ///
    /// With several threads, a batch of several images and a net whose ops all work image by
    /// image (see [`batch_separable`]), the batch is cut into one part per thread and each
    /// part runs the whole net on its own thread: no synchronisation between ops, and each
    /// thread keeps its own activations in its own caches (ResNet-50 int8 at batch 16 on 2
    /// threads: 1.9x one thread, against 1.6x when every op is split between the threads).
    /// The outputs are the parts joined again, identical to a whole run for the Int8 ops
    /// (exact integer arithmetic); fp32 ops give the same values up to rounding.
    pub fn run(&self, inputs: HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
        let n = batch_size(&inputs);
        let parts = self.batch_streams(n);
        if parts < 2 {
            return self.run_observed(inputs, None);
        }
        match self.run_split(&inputs, n, parts) {
            Ok(out) => Ok(out),
            Err(_) => {
                // Run whole. If that works, the net is not separable after all (an output
                // without the batch axis, an op that needs the whole batch): run whole from
                // now on. If it fails too, the input was bad: report the whole run's error.
                let whole = self.run_observed(inputs, None);
                if whole.is_ok() {
                    self.split_failed.store(true, Ordering::Relaxed);
                }
                whole
            }
        }
    }

    /// [`Executor::run`] on a borrowed feed: the inputs are read where they are, not copied
    /// (for feeding one batch to several models; `run` can free its inputs early instead).
    pub fn run_ref(&self, inputs: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
        let n = batch_size(inputs);
        let parts = self.batch_streams(n);
        if parts < 2 {
            return self.run_in(&self.pool, HashMap::new(), Some(inputs), None);
        }
        match self.run_split(inputs, n, parts) {
            Ok(out) => Ok(out),
            Err(_) => {
                let whole = self.run_in(&self.pool, HashMap::new(), Some(inputs), None);
                if whole.is_ok() {
                    self.split_failed.store(true, Ordering::Relaxed);
                }
                whole
            }
        }
    }

    /// Runs `parts` slices of the batch on the single-thread pools at once and joins the
    /// outputs along the batch axis.
    fn run_split(
        &self,
        inputs: &HashMap<String, Tensor>,
        n: usize,
        parts: usize,
    ) -> Result<HashMap<String, Tensor>> {
        let ranges: Vec<std::ops::Range<usize>> = (0..parts)
            .map(|p| p * n / parts..(p + 1) * n / parts)
            .collect();
        let feeds = ranges
            .iter()
            .map(|r| {
                inputs
                    .iter()
                    .map(|(k, t)| {
                        let part = t
                            .slice_rows(r.clone())
                            .map_err(|e| Error::Input(format!("input `{k}`: {e}")))?;
                        Ok((k.clone(), part))
                    })
                    .collect::<Result<HashMap<_, _>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let results: Vec<Result<HashMap<String, Tensor>>> = std::thread::scope(|s| {
            let handles: Vec<_> = feeds
                .into_iter()
                .zip(&self.streams)
                .map(|(feed, pool)| s.spawn(move || self.run_in(pool, feed, None, None)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::Input("a batch part panicked".into())))
                })
                .collect()
        });
        let mut results = results.into_iter().collect::<Result<Vec<_>>>()?;
        let mut out = HashMap::new();
        for name in self.model.outputs() {
            let pieces = results
                .iter_mut()
                .zip(&ranges)
                .map(|(r, range)| {
                    let t = r.remove(&name).ok_or_else(|| {
                        Error::Input(format!("output `{name}` was never produced"))
                    })?;
                    if t.shape().first() != Some(&range.len()) {
                        return Err(Error::Input(format!(
                            "output `{name}` {:?} has no batch axis",
                            t.shape()
                        )));
                    }
                    Ok(t)
                })
                .collect::<Result<Vec<_>>>()?;
            let joined = Tensor::concat_rows(&pieces)
                .map_err(|e| Error::Input(format!("output `{name}`: {e}")))?;
            out.insert(name, joined);
        }
        Ok(out)
    }

    /// Runs the net, calling `observer` after every node.
    pub fn run_observed(
        &self,
        inputs: HashMap<String, Tensor>,
        observer: Option<&mut dyn Observer>,
    ) -> Result<HashMap<String, Tensor>> {
        self.run_in(&self.pool, inputs, None, observer)
    }

    /// Runs the whole net on `pool`, fed with the owned `inputs` and the borrowed `feed`.
    fn run_in(
        &self,
        pool: &rayon::ThreadPool,
        inputs: HashMap<String, Tensor>,
        feed: Option<&HashMap<String, Tensor>>,
        mut observer: Option<&mut dyn Observer>,
    ) -> Result<HashMap<String, Tensor>> {
        let empty = HashMap::new();
        let feed = feed.unwrap_or(&empty);
        for want in self.model.data_inputs() {
            if !inputs.contains_key(&want) && !feed.contains_key(&want) {
                return Err(Error::Input(format!(
                    "the net needs input `{want}`, which was not given (given: {:?})",
                    inputs.keys().chain(feed.keys()).collect::<Vec<_>>()
                )));
            }
        }
        self.check_sizes(&inputs, feed)?;
        // Borrowed inputs are looked up after the blobs the net produced, as if they had been
        // fed owned and never overwritten.
        let params = &self.model.params;
        let mut live: HashMap<String, Tensor> = inputs;
        pool.install(|| {
            with_spinning_workers(|| -> Result<()> {
                for (i, node) in self.model.net.nodes.iter().enumerate() {
                    let op = node.op()?;
                    let mut ins: Vec<&Tensor> = Vec::with_capacity(node.inputs.len());
                    for name in &node.inputs {
                        let t = live
                            .get(name)
                            .or_else(|| feed.get(name))
                            .or_else(|| params.get(name))
                            .ok_or_else(|| Error::MissingBlob {
                                node: node.node_ref(),
                                blob: name.clone(),
                            })?;
                        ins.push(t);
                    }
                    let outs = op.eval(&ins).map_err(|e| {
                        let infos: HashMap<String, TensorInfo> = node
                            .inputs
                            .iter()
                            .filter_map(|n| {
                                live.get(n)
                                    .or_else(|| feed.get(n))
                                    .or_else(|| params.get(n))
                                    .map(|t| (n.clone(), t.info()))
                            })
                            .collect();
                        Error::Node {
                            node: node.node_ref(),
                            msg: format!("{e}; inputs: {}", describe_inputs(&node.inputs, &infos)),
                        }
                    })?;
                    if let Some(obs) = observer.as_deref_mut() {
                        let refs: Vec<&Tensor> = outs.iter().collect();
                        obs.on_node(node, &refs);
                    }
                    for b in &self.frees[i] {
                        // Large Int8 buffers are reused by later outputs (no zero fill).
                        if let Some(t) = live.remove(b) {
                            ops::int8::recycle(t);
                        }
                    }
                    for (name, t) in node.outputs.iter().zip(outs) {
                        live.insert(name.clone(), t);
                    }
                }
                Ok(())
            })
        })?;
        let mut out = HashMap::new();
        for name in self.model.outputs() {
            let t = live
                .remove(&name)
                .or_else(|| feed.get(&name).cloned())
                .or_else(|| params.get(&name).cloned())
                .ok_or_else(|| Error::Input(format!("output `{name}` was never produced")))?;
            out.insert(name, t);
        }
        Ok(out)
    }
}

/// Runs `body` on the current pool thread while every other thread of the pool stays awake,
/// polling for work, until `body` returns.
///
/// Between two ops (and whenever a parallel loop ends unevenly) rayon's idle workers soon go
/// to sleep, and each op's parallel loop must then wake them again. On virtual machines a
/// wake-up can take a sizeable part of a millisecond, during which the awake thread has
/// already taken most of the op's work: measured on 2 threads at batch 1, spinning saves 4% on
/// ResNet-50 int8, 4% on SqueezeNet int8 and 7% on SqueezeNet fp32 (medians). Spinning
/// workers take new work at once (the same choice as the spinning thread pools of other
/// inference runtimes).
///
/// A worker spins only while work keeps coming: after [`SPIN_IDLE`] without a job it goes
/// back to rayon's pool, which lets it sleep until the next job (a core that another
/// process needs is not burnt on polling), and it gives its core back when the run ends.
fn with_spinning_workers<R: Send>(body: impl FnOnce() -> R + Send) -> R {
    if rayon::current_num_threads() < 2 {
        return body();
    }
    let done = AtomicBool::new(false);
    let me = rayon::current_thread_index();
    rayon::scope(|s| {
        s.spawn_broadcast(|_, ctx| {
            if Some(ctx.index()) == me {
                return;
            }
            let mut last_job = std::time::Instant::now();
            let mut polls = 0u32;
            while !done.load(Ordering::Acquire) {
                if rayon::yield_now() == Some(rayon::Yield::Executed) {
                    last_job = std::time::Instant::now();
                    continue;
                }
                std::hint::spin_loop();
                polls = polls.wrapping_add(1);
                if polls.is_multiple_of(64) && last_job.elapsed() > SPIN_IDLE {
                    return;
                }
            }
        });
        let r = body();
        done.store(true, Ordering::Release);
        r
    })
}

/// How long a spinning worker polls without finding a job before it lets rayon put it to
/// sleep: longer than the serial gaps between the parallel ops of a run (tens of µs), far
/// shorter than a scheduler time slice.
const SPIN_IDLE: std::time::Duration = std::time::Duration::from_micros(300);

/// The batch size of a feed: the first dimension shared by every input (0 if they differ or
/// one has no dimensions).
fn batch_size(inputs: &HashMap<String, Tensor>) -> usize {
    let mut dims = inputs.values().map(|t| t.shape().first().copied());
    match dims.next() {
        Some(Some(n)) if dims.all(|d| d == Some(n)) => n,
        _ => 0,
    }
}

/// True if every op of the net treats the images of a batch independently, so that running
/// parts of a batch separately and joining the outputs gives the same result: element-wise
/// ops, convolutions, pooling, inference BatchNorm, FC / Softmax / Flatten over axis 1,
/// Concat over a non-batch axis, and Add/Sub/Mul/Div between activations (a parameter could
/// carry a batch axis). Reshape and Transpose are not (they may move the batch axis).
pub fn batch_separable(model: &Model) -> bool {
    let params = &model.params;
    model.net.nodes.iter().all(|n| {
        let args = &n.spec.args;
        let axis_is = |name: &str, default: i64, ok: &dyn Fn(i64) -> bool| {
            args.int_or(name, default).is_ok_and(ok)
        };
        match n.op_type.as_str() {
            "Relu"
            | "Sigmoid"
            | "Tanh"
            | "Clip"
            | "Dropout"
            | "Copy"
            | "Conv"
            | "ConvRelu"
            | "MaxPool"
            | "AveragePool"
            | "LRN"
            | "SpatialBN"
            | "ChannelShuffle"
            | "NCHW2NHWC"
            | "NHWC2NCHW"
            | "Sum"
            | "SumRelu"
            | "Int8Conv"
            | "Int8ConvRelu"
            | "Int8ConvSum"
            | "Int8ConvSumRelu"
            | "Int8Lut"
            | "Int8ConvLut"
            | "Int8QuantizeNchw2Nhwc"
            | "Int8Relu"
            | "Int8MaxPool"
            | "Int8AveragePool"
            | "Int8Quantize"
            | "Int8Dequantize"
            | "Int8Sum"
            | "Int8SumRelu" => true,
            "FC" | "FCTransposed" | "Int8FC" | "Int8FCRelu" => axis_is("axis", 1, &|a| a == 1),
            "Softmax" | "Flatten" | "Int8Flatten" => axis_is("axis", 1, &|a| a >= 1),
            "Concat" | "Int8Concat" => {
                axis_is("axis", 1, &|a| a != 0) && axis_is("add_axis", 0, &|a| a == 0)
            }
            "Add" | "Sub" | "Mul" | "Div" | "Int8Add" | "Int8AddRelu" => {
                n.inputs.iter().all(|b| !params.contains_key(b))
            }
            _ => false,
        }
    })
}
