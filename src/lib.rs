//! c2q: read, run, calibrate and quantize Caffe2 models on the CPU.
//!
//! The library mirrors the `c2q` command line:
//!
//! | CLI | library |
//! |---|---|
//! | `c2q info` / `run` | [`Model::load_dir`], [`Executor::run`] |
//! | `c2q db ...` | [`data::Batches`] (re-exported crate [`data`]) |
//! | `c2q calibrate` | [`quant::calibrate::calibrate_db`], [`quant::calibrate::Calibration::choose`] |
//! | `c2q quantize` | [`quant::quantize_db`] (or [`quant::quantize_model`] step by step), [`quant::quantize_within_loss`] |
//! | `c2q eval` | [`eval::evaluate`] |
//! | `c2q compare` | [`eval::LayerErrors`], [`eval::layer_errors_on_db`] |
//!
//! The whole job on generated data (an example CNN and an LMDB of generated images):
//!
//! ```
//! use c2q::{demo, eval, quant, Model};
//!
//! let dir = tempfile::tempdir()?;
//! demo::write_example_model(&dir.path().join("fp32"), 7)?;
//! let db = demo::write_example_db(dir.path(), 4, 4)?;
//!
//! // Calibrate on the images and quantize the DNNLOWP way (L2 ranges, per-channel weights,
//! // bias correction).
//! let fp32 = Model::load_dir(dir.path().join("fp32"))?;
//! let cfg = quant::QuantizeConfig {
//!     calib_images: 16,
//!     preprocess: demo::example_preprocess(),
//!     ..quant::QuantizeConfig::default()
//! };
//! let q = quant::quantize_db(&fp32, &db, &cfg)?;
//! q.int8.write_dir(&dir.path().join("int8"))?;
//!
//! // Evaluate fp32 and int8 side by side on the same images.
//! let int8 = Model::load_dir(dir.path().join("int8"))?;
//! let opts = eval::EvalOptions {
//!     batches: c2q::BatchOptions {
//!         batch_size: 8,
//!         preprocess: demo::example_preprocess(),
//!         ..c2q::BatchOptions::default()
//!     },
//!     ..eval::EvalOptions::default()
//! };
//! let report = eval::evaluate(&[&q.fp32, &int8], &db, &opts, None)?;
//! assert_eq!(report.images, 16);
//! assert!(report.agreement().unwrap() >= 0.9);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Running a model on a tensor:
//!
//! ```
//! use std::collections::HashMap;
//! use c2q::{demo, Executor, Model, Tensor};
//!
//! let dir = tempfile::tempdir()?;
//! demo::write_example_model(dir.path(), 7)?;
//! let model = Model::load_dir(dir.path())?;
//! let exec = Executor::new(&model, 1)?;
//! let x = Tensor::from_f32(&[1, 3, 32, 32], vec![0.5; 3 * 32 * 32]);
//! let out = exec.run(HashMap::from([("data".to_string(), x)]))?;
//! let p = out["softmax"].f32_slice()?;
//! assert_eq!(p.len(), demo::EXAMPLE_CLASSES);
//! assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-5);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod cli;
pub mod demo;
pub mod error;
pub mod eval;
pub mod fuzz;
pub mod graph;
pub mod passes;
pub mod quant;
pub mod runtime;

pub use data;
pub use data::{BatchOptions, Batches, Preprocess};
pub use error::{Error, NodeRef, Result};
pub use graph::{Model, ModelPaths, Net, Node};
pub use ops::{QParams, Tensor, TensorInfo};
pub use runtime::{Executor, Observer};
