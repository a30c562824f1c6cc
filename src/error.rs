//! Errors of the c2q library. Every failure names the file, or the op (index, type, name).

use std::path::PathBuf;

/// Where in a net something went wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRef {
    /// Which net (`init_net` or `predict_net`).
    pub net: &'static str,
    /// Position of the op in the net.
    pub index: usize,
    /// Op type.
    pub op_type: String,
    /// Op name (often empty in Caffe2 nets).
    pub name: String,
    /// Positions in the file of the ops this one stands for, when the net was rewritten
    /// (fused or renumbered by the passes); empty when `index` is the position in the file.
    pub file_ops: Vec<usize>,
}

impl std::fmt::Display for NodeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} op #{} ({}", self.net, self.index, self.op_type)?;
        if !self.name.is_empty() {
            write!(f, " \"{}\"", self.name)?;
        }
        if !self.file_ops.is_empty() && self.file_ops != [self.index] {
            let list: Vec<String> = self.file_ops.iter().map(|i| format!("#{i}")).collect();
            let s = if list.len() > 1 { "s" } else { "" };
            write!(f, "; op{s} {} in the file", list.join(" + "))?;
        }
        write!(f, ")")
    }
}

/// Errors of loading, checking and running models.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or parsing a protobuf file failed.
    #[error(transparent)]
    Proto(#[from] caffe2_proto::ProtoError),
    /// A file or folder problem outside protobuf parsing.
    #[error("{path}: {msg}")]
    File {
        /// The path involved.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// An op failed to build, infer or run.
    #[error("{node}: {msg}")]
    Node {
        /// The op.
        node: NodeRef,
        /// What went wrong, including blob names and shapes.
        msg: String,
    },
    /// A blob the net needs does not exist.
    #[error("{node}: input blob `{blob}` does not exist (not produced by an earlier op, not a parameter from init_net, not a fed input)")]
    MissingBlob {
        /// The op reading it.
        node: NodeRef,
        /// The blob name.
        blob: String,
    },
    /// A tensor in a file cannot be converted.
    #[error("tensor `{name}`: {msg}")]
    Tensor {
        /// Tensor (blob) name.
        name: String,
        /// What is wrong.
        msg: String,
    },
    /// Wrong inputs handed to a run.
    #[error("input: {0}")]
    Input(String),
    /// Errors from the data pipeline.
    #[error(transparent)]
    Data(#[from] data::DataError),
}

/// Shorthand for c2q results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
