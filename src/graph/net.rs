//! A net: its ops, built into operators where possible, and its external inputs/outputs.

use caffe2_proto::{NetDef, OperatorDef};
use ops::{NodeSpec, Op, OpError};

use super::convert::args_from_proto;
use crate::error::NodeRef;

/// Whether a node can run.
#[derive(Debug)]
pub enum NodeStatus {
    /// Built and ready.
    Ready(Box<dyn Op>),
    /// The op type is not implemented (kept so `info` works on any net).
    Unknown,
    /// The op type is known but its arguments or arity are invalid.
    Invalid(OpError),
}

impl NodeStatus {
    /// Builds the operator a spec describes (unknown type → `Unknown`, bad spec → `Invalid`).
    pub fn build(spec: &NodeSpec) -> NodeStatus {
        match ops::build_op(spec) {
            Ok(Some(op)) => NodeStatus::Ready(op),
            Ok(None) => NodeStatus::Unknown,
            Err(e) => NodeStatus::Invalid(e),
        }
    }
}

/// One op of a net.
#[derive(Debug)]
pub struct Node {
    /// Which net it belongs to (`init_net` / `predict_net`).
    pub net: &'static str,
    /// Position in the net.
    pub index: usize,
    /// Positions in the model's file of the ops this node stands for when the net was
    /// rewritten ([`crate::Model::optimized`]); empty when `index` is the file position.
    pub file_ops: Vec<usize>,
    /// Op type.
    pub op_type: String,
    /// Op name (may be empty).
    pub name: String,
    /// Engine (may be empty).
    pub engine: String,
    /// Input blob names.
    pub inputs: Vec<String>,
    /// Output blob names.
    pub outputs: Vec<String>,
    /// The operator's spec (type, arguments, arity).
    pub spec: NodeSpec,
    /// The built operator, or why there is none.
    pub status: NodeStatus,
}

impl Node {
    /// Builds a node from an `OperatorDef`.
    pub fn from_def(net: &'static str, index: usize, def: &OperatorDef) -> Node {
        let spec = NodeSpec {
            op_type: def.type_().to_string(),
            engine: def.engine().to_string(),
            args: args_from_proto(&def.arg),
            n_inputs: def.input.len(),
            n_outputs: def.output.len(),
            seed: node_seed(def),
            reference: false,
        };
        let status = NodeStatus::build(&spec);
        Node {
            net,
            index,
            file_ops: Vec::new(),
            op_type: spec.op_type.clone(),
            name: def.name().to_string(),
            engine: spec.engine.clone(),
            inputs: def.input.clone(),
            outputs: def.output.clone(),
            spec,
            status,
        }
    }

    /// The reference used in error messages.
    pub fn node_ref(&self) -> NodeRef {
        NodeRef {
            net: self.net,
            index: self.index,
            op_type: self.op_type.clone(),
            name: self.name.clone(),
            file_ops: self.file_ops.clone(),
        }
    }

    /// The operator, or an error saying why the node cannot run.
    pub fn op(&self) -> crate::Result<&dyn Op> {
        match &self.status {
            NodeStatus::Ready(op) => Ok(op.as_ref()),
            NodeStatus::Unknown => Err(crate::Error::Node {
                node: self.node_ref(),
                msg: format!("op type `{}` is not supported by c2q", self.op_type),
            }),
            NodeStatus::Invalid(e) => Err(crate::Error::Node {
                node: self.node_ref(),
                msg: e.to_string(),
            }),
        }
    }

    /// True if the node has a built operator.
    pub fn is_ready(&self) -> bool {
        matches!(self.status, NodeStatus::Ready(_))
    }
}

/// Deterministic seed for random fill ops: the op's `random_seed` device option if set,
/// otherwise a hash (FNV-1a) of its first output name.
fn node_seed(def: &OperatorDef) -> u64 {
    if let Some(d) = def.device_option.as_ref() {
        if d.has_random_seed() {
            return d.random_seed() as u64;
        }
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in def.output.first().map(|s| s.as_bytes()).unwrap_or(&[]) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A net: ops in execution order plus its declared external inputs and outputs.
#[derive(Debug)]
pub struct Net {
    /// Net name.
    pub name: String,
    /// Ops in order.
    pub nodes: Vec<Node>,
    /// Declared external inputs (data and parameters).
    pub external_inputs: Vec<String>,
    /// Declared external outputs.
    pub external_outputs: Vec<String>,
}

impl Net {
    /// Builds every op of a `NetDef` (unknown or invalid ops are kept, marked).
    pub fn from_def(which: &'static str, def: &NetDef) -> Net {
        Net {
            name: def.name().to_string(),
            nodes: def
                .op
                .iter()
                .enumerate()
                .map(|(i, op)| Node::from_def(which, i, op))
                .collect(),
            external_inputs: def.external_input.clone(),
            external_outputs: def.external_output.clone(),
        }
    }

    /// Op types that cannot run (unknown to c2q), with counts, in first-seen order.
    pub fn unsupported_ops(&self) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = Vec::new();
        for n in &self.nodes {
            if matches!(n.status, NodeStatus::Unknown) {
                match out.iter_mut().find(|(t, _)| *t == n.op_type) {
                    Some(e) => e.1 += 1,
                    None => out.push((n.op_type.clone(), 1)),
                }
            }
        }
        out
    }
}
