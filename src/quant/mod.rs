//! Quantization: activation histograms, choosing scale/zero point, graph rewrite passes.
//!
//! Calibration math (facts §7): [`histogram`] (Caffe2 `DynamicHistogram`), [`hist_file`]
//! (histogram text files), [`qparams`] (FBGEMM `ChooseQuantizationParams`, weight and bias
//! conventions), range searches [`norm_min`] (literal L2 brute force), [`l2_fast`] (the same
//! answer quickly), [`l2_approx`], [`kl`], [`p99`], and [`choose`] (dispatch by [`QuantKind`]).

#![warn(missing_docs)]

pub mod bias_correction;
pub mod calibrate;
pub mod choose;
pub mod clip;
pub mod fallback;
pub mod hist_file;
pub mod histogram;
pub mod kl;
pub mod l2_approx;
pub mod l2_fast;
pub mod norm_min;
pub mod p99;
pub mod pipeline;
pub mod qparams;
pub mod weights;

pub use crate::passes::quantize::{
    quantize_model, Int8Model, Outcome, QuantizeOptions, RewriteNote, WeightGranularity,
};
pub use choose::{
    choose_from_histogram, choose_from_histogram_with, choose_from_values, ChooseOptions, QuantKind,
};
pub use fallback::{quantize_within_loss, FallbackOptions, FallbackResult, FallbackStep};
pub use hist_file::{check_coverage, read_histogram_file, write_histogram_file, HistogramRecord};
pub use histogram::{DynamicHistogram, Histogram};
pub use pipeline::{quantize_db, QuantizeConfig, Quantized};
pub use qparams::{choose_quantization_params, QParamsOptions};
