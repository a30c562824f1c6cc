//! A Caffe2 model: init_net (parameters) + predict_net (the computation).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use caffe2_proto::{io, NetDef};
use ops::{Tensor, TensorInfo};

use super::infer::{infer_shapes, ShapeMap};
use super::net::{Net, NodeStatus};
use crate::{Error, Result};

/// Where a model's two nets live.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPaths {
    /// The init_net file (parameters); None when only the predict net is known.
    pub init: Option<PathBuf>,
    /// The predict_net file.
    pub predict: PathBuf,
}

impl ModelPaths {
    /// Finds `init_net.{pb,pbtxt}` and `predict_net.{pb,pbtxt}` in a folder (binary preferred
    /// when both exist).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<ModelPaths> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::File {
                path: dir.to_path_buf(),
                msg: "is not a folder (expected a folder holding init_net and predict_net .pb/.pbtxt)"
                    .into(),
            });
        }
        let find = |stem: &str| {
            ["pb", "pbtxt"]
                .iter()
                .map(|ext| dir.join(format!("{stem}.{ext}")))
                .find(|p| p.is_file())
        };
        let predict = find("predict_net").ok_or_else(|| Error::File {
            path: dir.to_path_buf(),
            msg: "no predict_net.pb or predict_net.pbtxt in this folder".into(),
        })?;
        Ok(ModelPaths {
            init: find("init_net"),
            predict,
        })
    }
}

/// A loaded model: both nets, the parameters made by the init_net, and the built predict net.
#[derive(Debug)]
pub struct Model {
    /// Where it was loaded from.
    pub paths: ModelPaths,
    /// The init_net as read (None when loaded from a predict_net alone).
    pub init_def: Option<NetDef>,
    /// The predict_net as read.
    pub predict_def: NetDef,
    /// Parameter blobs produced by the init_net.
    pub params: HashMap<String, Tensor>,
    /// The predict net with built operators.
    pub net: Net,
}

impl Model {
    /// Loads a model folder (see [`ModelPaths::from_dir`]).
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<Model> {
        Self::load(ModelPaths::from_dir(dir)?)
    }

    /// Loads a model from explicit paths: reads both nets, runs the init_net's fill ops, builds
    /// the predict net's operators and lets them prepare (pack) their constant weights.
    pub fn load(paths: ModelPaths) -> Result<Model> {
        let (predict_def, _) = io::read::<NetDef>(&paths.predict)?;
        let init_def = match &paths.init {
            Some(p) => Some(io::read::<NetDef>(p)?.0),
            None => None,
        };
        Self::from_defs(paths, init_def, predict_def)
    }

    /// Builds a model from in-memory nets (paths are recorded as `<memory>`).
    pub fn from_nets(init_def: NetDef, predict_def: NetDef) -> Result<Model> {
        let paths = ModelPaths {
            init: Some(PathBuf::from("<memory>/init_net")),
            predict: PathBuf::from("<memory>/predict_net"),
        };
        Self::from_defs(paths, Some(init_def), predict_def)
    }

    /// Builds a model from in-memory nets.
    pub fn from_defs(
        paths: ModelPaths,
        init_def: Option<NetDef>,
        predict_def: NetDef,
    ) -> Result<Model> {
        let params = match &init_def {
            Some(def) => run_init_net(def)?,
            None => HashMap::new(),
        };
        Ok(Self::from_parts(paths, init_def, predict_def, params))
    }

    /// Names of the f32 parameters holding a NaN or an infinity, sorted.
    pub fn non_finite_params(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .params
            .iter()
            .filter(|(_, t)| {
                t.f32_slice()
                    .is_ok_and(|s| s.iter().any(|x| !x.is_finite()))
            })
            .map(|(k, _)| k.clone())
            .collect();
        v.sort();
        v
    }

    /// The same model after the fp32 rewrite passes (Dropout removal, SpatialBN folded into
    /// Conv, Relu fused into Conv/Sum): fewer ops, the same outputs up to float rounding.
    /// Returns the model and (pass, rewrites) counts.
    pub fn optimized(&self) -> Result<(Model, Vec<(&'static str, usize)>)> {
        let mut predict_def = self.predict_def.clone();
        let mut params = self.params.clone();
        let (report, origins) = crate::passes::optimize_fp32_traced(&mut predict_def, &mut params)?;
        let read: HashSet<&String> = predict_def.op.iter().flat_map(|o| o.input.iter()).collect();
        params.retain(|k, _| read.contains(k));
        let mut model = Model::from_parts(
            self.paths.clone(),
            self.init_def.clone(),
            predict_def,
            params,
        );
        if self.uses_reference() {
            model.set_reference(true);
        }
        // Positions in this model's net, then in its file (when it was rewritten already).
        for (node, from) in model.net.nodes.iter_mut().zip(origins) {
            let mut file: Vec<usize> = from
                .iter()
                .flat_map(|&k| match self.net.nodes.get(k) {
                    Some(n) if !n.file_ops.is_empty() => n.file_ops.clone(),
                    _ => vec![k],
                })
                .collect();
            file.sort_unstable();
            file.dedup();
            node.file_ops = file;
        }
        Ok((model, report))
    }

    /// Builds a model from a predict net and ready parameters (no init_net is run); ops pack
    /// their constant weights from `params`.
    pub fn from_parts(
        paths: ModelPaths,
        init_def: Option<NetDef>,
        predict_def: NetDef,
        params: HashMap<String, Tensor>,
    ) -> Model {
        let mut net = Net::from_def("predict_net", &predict_def);
        prepare_constants(&mut net, &params);
        Model {
            paths,
            init_def,
            predict_def,
            params,
            net,
        }
    }

    /// Rebuilds every operator with the scalar reference implementation (`true`) or the fast
    /// kernels (`false`, the default) where an op has both (the Int8 family); results are
    /// bit-identical, only speed differs. Constant weights are packed again.
    pub fn set_reference(&mut self, reference: bool) {
        for node in &mut self.net.nodes {
            if node.spec.reference == reference {
                continue;
            }
            node.spec.reference = reference;
            node.status = NodeStatus::build(&node.spec);
        }
        prepare_constants(&mut self.net, &self.params);
    }

    /// True when the ops were built with [`Model::set_reference`]`(true)`.
    pub fn uses_reference(&self) -> bool {
        self.net.nodes.iter().any(|n| n.spec.reference)
    }

    /// The blobs the caller must feed: external inputs that some op reads and the init_net
    /// does not produce (or, if the net declares none, blobs read before being written that
    /// are not parameters). Declared but unused inputs (e.g. a stray reader queue) are skipped.
    pub fn data_inputs(&self) -> Vec<String> {
        let read: HashSet<&String> = self
            .net
            .nodes
            .iter()
            .flat_map(|n| n.inputs.iter())
            .collect();
        let declared: Vec<String> = self
            .net
            .external_inputs
            .iter()
            .filter(|n| !self.params.contains_key(*n) && read.contains(n))
            .cloned()
            .collect();
        if !declared.is_empty() && self.init_def.is_some() {
            return declared;
        }
        let free = free_inputs(&self.net);
        let free: Vec<String> = free
            .into_iter()
            .filter(|n| !self.params.contains_key(n))
            .collect();
        if self.init_def.is_none() {
            // Without parameters every external input looks free; prefer the first one read.
            return free.into_iter().take(1).collect();
        }
        free
    }

    /// The first data input (the image blob of a classifier), or an error if there is none.
    pub fn data_input(&self) -> Result<String> {
        self.data_inputs()
            .into_iter()
            .next()
            .ok_or_else(|| Error::Input("the model has no data input".into()))
    }

    /// The declared outputs (or the last op's outputs when none are declared).
    pub fn outputs(&self) -> Vec<String> {
        if !self.net.external_outputs.is_empty() {
            return self.net.external_outputs.clone();
        }
        self.net
            .nodes
            .last()
            .map(|n| n.outputs.clone())
            .unwrap_or_default()
    }

    /// Descriptions of all parameters.
    pub fn param_infos(&self) -> HashMap<String, TensorInfo> {
        self.params
            .iter()
            .map(|(k, v)| (k.clone(), v.info()))
            .collect()
    }

    /// Infers every op's output shapes for the given input descriptions.
    pub fn infer(&self, inputs: &HashMap<String, TensorInfo>) -> ShapeMap {
        let mut known = self.param_infos();
        known.extend(inputs.iter().map(|(k, v)| (k.clone(), v.clone())));
        infer_shapes(&self.net, known)
    }

    /// Total number of parameter elements and bytes.
    pub fn param_totals(&self) -> (usize, usize) {
        self.params
            .values()
            .fold((0, 0), |(n, b), t| (n + t.len(), b + t.nbytes()))
    }
}

/// Blobs read by some op before any op writes them, in first-read order.
pub fn free_inputs(net: &Net) -> Vec<String> {
    let mut written = HashSet::new();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for node in &net.nodes {
        for i in &node.inputs {
            if !written.contains(i) && seen.insert(i.clone()) {
                out.push(i.clone());
            }
        }
        written.extend(node.outputs.iter().cloned());
    }
    out
}

/// Runs an init_net's ops in order and returns the blobs it produced.
pub fn run_init_net(def: &NetDef) -> Result<HashMap<String, Tensor>> {
    let net = Net::from_def("init_net", def);
    let mut blobs: HashMap<String, Tensor> = HashMap::new();
    for node in &net.nodes {
        let op = node.op()?;
        let mut ins = Vec::with_capacity(node.inputs.len());
        for name in &node.inputs {
            ins.push(blobs.get(name).ok_or_else(|| Error::MissingBlob {
                node: node.node_ref(),
                blob: name.clone(),
            })?);
        }
        let outs = op.eval(&ins).map_err(|e| Error::Node {
            node: node.node_ref(),
            msg: e.to_string(),
        })?;
        for (name, t) in node.outputs.iter().zip(outs) {
            blobs.insert(name.clone(), t);
        }
    }
    Ok(blobs)
}

/// Hands each op the inputs that are still the init_net's parameters when it runs. An op
/// whose constants do not fit is marked invalid (so `info` still works; running fails).
fn prepare_constants(net: &mut Net, params: &HashMap<String, Tensor>) {
    let mut overwritten: HashSet<String> = HashSet::new();
    for node in &mut net.nodes {
        let consts: Vec<Option<&Tensor>> = node
            .inputs
            .iter()
            .map(|n| {
                if overwritten.contains(n) {
                    None
                } else {
                    params.get(n)
                }
            })
            .collect();
        if let NodeStatus::Ready(op) = &mut node.status {
            if consts.iter().any(|c| c.is_some()) {
                if let Err(e) = op.prepare(&consts) {
                    node.status = NodeStatus::Invalid(e);
                }
            }
        }
        overwritten.extend(node.outputs.iter().cloned());
    }
}
