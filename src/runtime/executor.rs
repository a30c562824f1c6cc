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

/// Input descriptions (name order) and the image-by-image prefix chosen for them.
type InputPlan = (Vec<(String, TensorInfo)>, Option<usize>);

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
    /// Input descriptions whose shape inference found no output over the tensor limit,
    /// with the number of first nodes run image by image for them ([`prefix_cut`]).
    sized: std::sync::Mutex<Vec<InputPlan>>,
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

    /// How [`Executor::run`] executes a feed with these inputs: the number of per-thread
    /// parts the batch is cut into (1: not split), and how many of the first nodes the
    /// (first) part runs image by image (None: whole batches). No computation.
    pub fn plan(&self, inputs: &HashMap<String, Tensor>) -> Result<(usize, Option<usize>)> {
        let n = batch_size(inputs);
        let parts = self.batch_streams(n);
        // The parts are rows `p·n/parts .. (p+1)·n/parts` (see `run_split`).
        let rows = if parts > 1 { n / parts } else { n };
        let cut = self.check_sizes(inputs, &HashMap::new(), (parts > 1).then_some(rows))?;
        Ok((parts, cut.filter(|_| rows >= 2)))
    }

    /// Checks the fed inputs against the model and infers every shape (no computation).
    pub fn check(&self, inputs: &HashMap<String, Tensor>) -> Result<()> {
        let infos: HashMap<String, TensorInfo> =
            inputs.iter().map(|(k, v)| (k.clone(), v.info())).collect();
        self.model.infer(&infos).check().map(|_| ())
    }

    /// Refuses inputs (with `rows` images, when given, instead of their own batch size) for
    /// which some op's output would exceed the tensor limit ([`ops::limits`]) before anything
    /// runs, and returns how many of the first nodes run
    /// image by image for inputs of these shapes ([`prefix_cut`]). Shape inference is done
    /// once per distinct set of input shapes. Other inference failures are left to the run
    /// to report, as before.
    fn check_sizes(
        &self,
        inputs: &HashMap<String, Tensor>,
        feed: &HashMap<String, Tensor>,
        rows: Option<usize>,
    ) -> Result<Option<usize>> {
        let mut sig: Vec<(String, TensorInfo)> = inputs
            .iter()
            .chain(feed.iter().filter(|(k, _)| !inputs.contains_key(*k)))
            .map(|(k, v)| {
                let mut info = v.info();
                if let (Some(n), Some(d)) = (rows, info.shape.first_mut()) {
                    *d = n;
                }
                (k.clone(), info)
            })
            .collect();
        sig.sort_by(|a, b| a.0.cmp(&b.0));
        let mut sized = self.sized.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, cut)) = sized.iter().find(|(s, _)| *s == sig) {
            return Ok(*cut);
        }
        let map = self.model.infer(&sig.iter().cloned().collect());
        if map.too_large {
            if let Some(e) = map.error {
                return Err(e);
            }
        }
        let cut = if map.error.is_none() {
            prefix_cut(self.model, &sig)
        } else {
            None
        };
        if sized.len() >= 16 {
            sized.remove(0);
        }
        sized.push((sig, cut));
        Ok(cut)
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
            return self.run_in(&self.pool, HashMap::new(), Some(inputs), None, None);
        }
        match self.run_split(inputs, n, parts) {
            Ok(out) => Ok(out),
            Err(_) => {
                let whole = self.run_in(&self.pool, HashMap::new(), Some(inputs), None, None);
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
        // Each part reads its rows of the borrowed inputs (copied once, where it runs).
        let results: Vec<Result<HashMap<String, Tensor>>> = std::thread::scope(|s| {
            let handles: Vec<_> = ranges
                .iter()
                .zip(&self.streams)
                .map(|(r, pool)| {
                    let r = r.clone();
                    s.spawn(move || self.run_in(pool, HashMap::new(), Some(inputs), Some(r), None))
                })
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
        self.run_in(&self.pool, inputs, None, None, observer)
    }

    /// Runs the whole net on `pool`, fed with the owned `inputs` and the borrowed `feed` (only
    /// rows `rows` of `feed`, when given: a part of a split batch, with no owned inputs).
    fn run_in(
        &self,
        pool: &rayon::ThreadPool,
        inputs: HashMap<String, Tensor>,
        feed: Option<&HashMap<String, Tensor>>,
        rows: Option<std::ops::Range<usize>>,
        observer: Option<&mut dyn Observer>,
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
        let cut = self.check_sizes(&inputs, feed, rows.as_ref().map(|r| r.len()))?;
        let rows = rows.unwrap_or(0..batch_size_of(inputs.values().chain(feed.values())));
        // Observers see whole batches.
        let by_image = cut.filter(|_| observer.is_none() && rows.len() >= 2);
        // Borrowed inputs are looked up after the blobs the net produced, as if they had been
        // fed owned and never overwritten.
        let params = &self.model.params;
        let (mut live, feed) = if by_image.is_none() && rows.len() < batch_size_of(feed.values()) {
            (slice_feed(feed, rows.clone())?, &empty)
        } else {
            (inputs, feed)
        };
        let nodes = self.model.net.nodes.len();
        pool.install(|| {
            with_spinning_workers(|| -> Result<()> {
                let start = match by_image {
                    Some(k) => {
                        live =
                            self.run_prefix_by_image(k, rows, std::mem::take(&mut live), feed)?;
                        k
                    }
                    None => 0,
                };
                self.run_nodes(start..nodes, &mut live, feed, observer)
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

    /// Runs nodes `range` in order on the current pool, reading and updating `live` (the
    /// blobs produced so far) and reading `feed` and the parameters; frees each blob after
    /// its last reader.
    fn run_nodes(
        &self,
        range: std::ops::Range<usize>,
        live: &mut HashMap<String, Tensor>,
        feed: &HashMap<String, Tensor>,
        mut observer: Option<&mut dyn Observer>,
    ) -> Result<()> {
        let params = &self.model.params;
        for i in range {
            let node = &self.model.net.nodes[i];
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
    }

    /// Runs the first `cut` nodes image by image over images `rows` of the batch (the owned
    /// `inputs` and the borrowed `feed`, all with the batch axis first) and returns the blobs
    /// live after them, each joined back along the batch axis: the batch's other nodes then
    /// run on whole batches. See [`prefix_cut`] for why.
    fn run_prefix_by_image(
        &self,
        cut: usize,
        rows: std::ops::Range<usize>,
        inputs: HashMap<String, Tensor>,
        feed: &HashMap<String, Tensor>,
    ) -> Result<HashMap<String, Tensor>> {
        let empty = HashMap::new();
        let mut parts: Vec<HashMap<String, Tensor>> = Vec::with_capacity(rows.len());
        for i in rows {
            let mut live = slice_feed(&inputs, i..i + 1)?;
            // An owned input shadows a borrowed one of the same name (as in `run_nodes`).
            for (k, t) in slice_feed(feed, i..i + 1)? {
                live.entry(k).or_insert(t);
            }
            self.run_nodes(0..cut, &mut live, &empty, None)?;
            parts.push(live);
        }
        drop(inputs);
        let names: Vec<String> = parts[0].keys().cloned().collect();
        let mut joined = HashMap::with_capacity(names.len());
        for name in names {
            let pieces = parts
                .iter_mut()
                .map(|p| {
                    p.remove(&name)
                        .ok_or_else(|| Error::Input(format!("blob `{name}` missing in an image")))
                })
                .collect::<Result<Vec<_>>>()?;
            let t = Tensor::concat_rows(&pieces)
                .map_err(|e| Error::Input(format!("blob `{name}`: {e}")))?;
            for p in pieces {
                ops::int8::recycle(p);
            }
            joined.insert(name, t);
        }
        Ok(joined)
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
    batch_size_of(inputs.values())
}

/// Rows `rows` of every tensor of `feed` (copies).
fn slice_feed(
    feed: &HashMap<String, Tensor>,
    rows: std::ops::Range<usize>,
) -> Result<HashMap<String, Tensor>> {
    feed.iter()
        .map(|(k, t)| {
            let part = t
                .slice_rows(rows.clone())
                .map_err(|e| Error::Input(format!("input `{k}`: {e}")))?;
            Ok((k.clone(), part))
        })
        .collect()
}

/// [`batch_size`] of any set of tensors.
fn batch_size_of<'a>(tensors: impl Iterator<Item = &'a Tensor>) -> usize {
    common_batch(tensors.map(|t| t.shape().first().copied()))
}

/// The first dimension shared by every shape (0 if they differ, one is a scalar or there are
/// none).
fn common_batch(mut dims: impl Iterator<Item = Option<usize>>) -> usize {
    match dims.next() {
        Some(Some(n)) if dims.all(|d| d == Some(n)) => n,
        _ => 0,
    }
}

/// Working sets below this many bytes stay in a core's caches at any batch size: nets this
/// small always run whole batches.
const SPILL_BYTES: usize = 1 << 20;

/// How many of the first nodes should run image by image for a feed of these shapes (None:
/// run whole batches).
///
/// A batched op streams every image's activations through the caches once, and its
/// weights once; run image by image it keeps one image's activations in L2 but reads its
/// weights once per image. Early layers of a CNN have large activations and few weights
/// (ResNet-50's first stages: 0.2–1 MB of activations per image against 10–150 KB of
/// weights), late layers the reverse, so the best order runs a prefix image by image and the
/// rest batched (measured on ResNet-50 int8 at batch 8 on one core: the layers of stages 1–3
/// took 1.3–3.5x longer per image batched than alone, those of stages 4–5 0.4–0.9x). Each
/// node counts `activation bytes − 2 · weight bytes` per image; the cut is where the running
/// sum peaks, within the nodes that treat images independently ([`node_separable`]), and
/// only when the batch's activations would not fit in the caches anyway.
pub fn prefix_cut(model: &Model, inputs: &[(String, TensorInfo)]) -> Option<usize> {
    let n = common_batch(inputs.iter().map(|(_, t)| t.shape.first().copied()));
    if n < 2 {
        return None;
    }
    let one: HashMap<String, TensorInfo> = inputs
        .iter()
        .map(|(k, t)| {
            let mut t = t.clone();
            t.shape[0] = 1;
            (k.clone(), t)
        })
        .collect();
    let bytes = |t: &TensorInfo| t.numel().saturating_mul(t.dtype.size_of());
    let map = model.infer(&one);
    let mut size: HashMap<&str, usize> = one.iter().map(|(k, t)| (k.as_str(), bytes(t))).collect();
    let (mut gain, mut best, mut cut, mut widest) = (0i128, 0i128, 0usize, 0usize);
    for (i, node) in model.net.nodes.iter().enumerate() {
        let Some(Some(outs)) = map.per_node.get(i) else {
            break;
        };
        if !node_separable(model, node) {
            break;
        }
        let (mut act, mut weights) = (0usize, 0usize);
        for b in &node.inputs {
            match model.params.get(b) {
                Some(p) => weights = weights.saturating_add(p.nbytes()),
                None => act = act.saturating_add(size.get(b.as_str()).copied().unwrap_or(0)),
            }
        }
        for (name, t) in node.outputs.iter().zip(outs) {
            act = act.saturating_add(bytes(t));
            size.insert(name.as_str(), bytes(t));
        }
        widest = widest.max(act);
        gain += act as i128 - 2 * weights as i128;
        if gain > best {
            (best, cut) = (gain, i + 1);
        }
    }
    (cut > 0 && widest.saturating_mul(n) >= SPILL_BYTES).then_some(cut)
}

/// True if every op of the net treats the images of a batch independently, so that running
/// parts of a batch separately and joining the outputs gives the same result: element-wise
/// ops, convolutions, pooling, inference BatchNorm, FC / Softmax / Flatten over axis 1,
/// Concat over a non-batch axis, and Add/Sub/Mul/Div between activations (a parameter could
/// carry a batch axis). Reshape and Transpose are not (they may move the batch axis).
pub fn batch_separable(model: &Model) -> bool {
    model.net.nodes.iter().all(|n| node_separable(model, n))
}

/// True if node `n` of `model` treats the images of a batch independently (see
/// [`batch_separable`]).
pub fn node_separable(model: &Model, n: &Node) -> bool {
    let params = &model.params;
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
}
