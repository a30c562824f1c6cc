//! c2q: read, run, calibrate and quantize Caffe2 models on the CPU.
//!
//! ```no_run
//! use c2q::{Model, Executor};
//! let model = Model::load_dir("models/squeezenet1_1")?;
//! let exec = Executor::new(&model, 0)?;
//! # Ok::<(), c2q::Error>(())
//! ```

pub mod cli;
pub mod demo;
pub mod error;
pub mod eval;
pub mod graph;
pub mod passes;
pub mod quant;
pub mod runtime;

pub use error::{Error, NodeRef, Result};
pub use graph::{Model, ModelPaths, Net, Node};
pub use runtime::{Executor, Observer};
