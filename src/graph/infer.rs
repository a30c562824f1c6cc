//! Shape inference over a whole net before anything runs.

use std::collections::HashMap;

use ops::TensorInfo;

use super::net::{Net, NodeStatus};
use crate::{Error, Result};

/// Result of shape inference: output descriptions per node, and every blob's final one.
#[derive(Debug, Default)]
pub struct ShapeMap {
    /// For each node, its outputs' descriptions (None from the first failing node on).
    pub per_node: Vec<Option<Vec<TensorInfo>>>,
    /// Final description of every blob known after the last inferred node.
    pub blobs: HashMap<String, TensorInfo>,
    /// The first problem met (inference stops there).
    pub error: Option<Error>,
    /// That problem is an output larger than the tensor limit ([`ops::limits`]): running
    /// would try to allocate it.
    pub too_large: bool,
}

impl ShapeMap {
    /// Fails with the first problem, if any.
    pub fn check(self) -> Result<ShapeMap> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(ShapeMap {
                error: None,
                too_large: false,
                ..self
            }),
        }
    }
}

/// Describes the inputs of a node for error messages: `name f32[1, 3, 224, 224], ...`.
pub fn describe_inputs(names: &[String], blobs: &HashMap<String, TensorInfo>) -> String {
    names
        .iter()
        .map(|n| match blobs.get(n) {
            Some(i) => format!("`{n}` {i}"),
            None => format!("`{n}` (missing)"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Infers every node's output types and shapes from the known blobs (parameters and fed
/// inputs). Stops at the first node that cannot be inferred and records why.
pub fn infer_shapes(net: &Net, known: HashMap<String, TensorInfo>) -> ShapeMap {
    let mut blobs = known;
    let mut per_node = Vec::with_capacity(net.nodes.len());
    let mut error = None;
    let mut first_too_large = false;
    for node in &net.nodes {
        let too_large = std::cell::Cell::new(false);
        if error.is_some() {
            per_node.push(None);
            continue;
        }
        let step = (|| -> Result<Vec<TensorInfo>> {
            let mut ins = Vec::with_capacity(node.inputs.len());
            for name in &node.inputs {
                match blobs.get(name) {
                    Some(i) => ins.push(i.clone()),
                    None => {
                        return Err(Error::MissingBlob {
                            node: node.node_ref(),
                            blob: name.clone(),
                        })
                    }
                }
            }
            let op = node.op()?;
            let outs = op.infer(&ins).map_err(|e| Error::Node {
                node: node.node_ref(),
                msg: format!("{e}; inputs: {}", describe_inputs(&node.inputs, &blobs)),
            })?;
            for (name, info) in node.outputs.iter().zip(&outs) {
                ops::limits::check_tensor(
                    &format!("output `{name}`"),
                    &info.shape,
                    info.dtype.size_of(),
                )
                .map_err(|e| {
                    too_large.set(true);
                    Error::Node {
                        node: node.node_ref(),
                        msg: format!("{e}; inputs: {}", describe_inputs(&node.inputs, &blobs)),
                    }
                })?;
            }
            if outs.len() != node.outputs.len() {
                return Err(Error::Node {
                    node: node.node_ref(),
                    msg: format!(
                        "operator produced {} outputs, the net names {}",
                        outs.len(),
                        node.outputs.len()
                    ),
                });
            }
            Ok(outs)
        })();
        match step {
            Ok(outs) => {
                for (name, info) in node.outputs.iter().zip(&outs) {
                    blobs.insert(name.clone(), info.clone());
                }
                per_node.push(Some(outs));
            }
            Err(e) => {
                if !matches!(node.status, NodeStatus::Ready(_)) || error.is_none() {
                    error = Some(e);
                    first_too_large = too_large.get();
                }
                per_node.push(None);
            }
        }
    }
    ShapeMap {
        per_node,
        blobs,
        error,
        too_large: first_too_large,
    }
}
