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
        Ok(Executor { model, pool, frees })
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Checks the fed inputs against the model and infers every shape (no computation).
    pub fn check(&self, inputs: &HashMap<String, Tensor>) -> Result<()> {
        let infos: HashMap<String, TensorInfo> =
            inputs.iter().map(|(k, v)| (k.clone(), v.info())).collect();
        self.model.infer(&infos).check().map(|_| ())
    }

    /// Runs the net on the given inputs and returns its outputs by name.
    pub fn run(&self, inputs: HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>> {
        self.run_observed(inputs, None)
    }

    /// Runs the net, calling `observer` after every node.
    pub fn run_observed(
        &self,
        inputs: HashMap<String, Tensor>,
        mut observer: Option<&mut dyn Observer>,
    ) -> Result<HashMap<String, Tensor>> {
        for want in self.model.data_inputs() {
            if !inputs.contains_key(&want) {
                return Err(Error::Input(format!(
                    "the net needs input `{want}`, which was not given (given: {:?})",
                    inputs.keys().collect::<Vec<_>>()
                )));
            }
        }
        let params = &self.model.params;
        let mut live: HashMap<String, Tensor> = inputs;
        self.pool.install(|| {
            with_spinning_workers(|| -> Result<()> {
                for (i, node) in self.model.net.nodes.iter().enumerate() {
                    let op = node.op()?;
                    let mut ins: Vec<&Tensor> = Vec::with_capacity(node.inputs.len());
                    for name in &node.inputs {
                        let t = live.get(name).or_else(|| params.get(name)).ok_or_else(|| {
                            Error::MissingBlob {
                                node: node.node_ref(),
                                blob: name.clone(),
                            }
                        })?;
                        ins.push(t);
                    }
                    let outs = op.eval(&ins).map_err(|e| {
                        let infos: HashMap<String, TensorInfo> = node
                            .inputs
                            .iter()
                            .filter_map(|n| {
                                live.get(n)
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
                        live.remove(b);
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
/// ResNet-50 int8, 4% on SqueezeNet int8 and 7% on SqueezeNet fp32 (medians). Spinning workers take new work at once (the same choice as the spinning thread
/// pools of other inference runtimes); they give their core back when the run ends.
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
            while !done.load(Ordering::Acquire) {
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    std::hint::spin_loop();
                }
            }
        });
        let r = body();
        done.store(true, Ordering::Release);
        r
    })
}
