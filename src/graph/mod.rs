//! Caffe2 nets as graphs of built operators: loading models, the parameter store, shape
//! inference.

pub mod builder;
pub mod convert;
pub mod infer;
pub mod model;
pub mod net;

pub use builder::{Arg, NetBuilder};
pub use infer::{infer_shapes, ShapeMap};
pub use model::{Model, ModelPaths};
pub use net::{Net, Node, NodeStatus};
