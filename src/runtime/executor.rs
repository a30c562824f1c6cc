//! Sequential executor over a model's predict net. Ops parallelize internally with rayon
//! inside the executor's own thread pool.

use std::collections::HashMap;

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
        self.pool.install(|| -> Result<()> {
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
