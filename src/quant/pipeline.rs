//! The whole quantization job in one call, as `c2q quantize` does it: optimize the fp32
//! model, calibrate on a seeded sample of an image LMDB, choose activation ranges, rewrite.

use std::collections::HashMap;
use std::path::Path;

use crate::quant::calibrate::{calibrate_db, ActivationParams};
use crate::quant::{quantize_model, ChooseOptions, Int8Model, QuantKind, QuantizeOptions};
use crate::{Model, Result};

/// Settings of [`quantize_db`]; the defaults are those of `c2q quantize`.
#[derive(Debug, Clone)]
pub struct QuantizeConfig {
    /// Size of the seeded calibration sample.
    pub calib_images: usize,
    /// Seed of the sample.
    pub seed: u64,
    /// Images per calibration batch.
    pub batch: usize,
    /// Worker threads (0 = all cores).
    pub threads: usize,
    /// Image preprocessing (must match the model's training).
    pub preprocess: data::Preprocess,
    /// Activation range search.
    pub kind: QuantKind,
    /// Symmetric activation ranges.
    pub preserve_sparsity: bool,
    /// Per-output-channel weight scales (c2q extension) instead of one per tensor.
    pub per_channel: bool,
    /// Weight range search (`MinMax` default, or e.g. `L2`).
    pub weight_kind: QuantKind,
    /// Op types kept in fp32.
    pub exclude_ops: Vec<String>,
    /// Op indices (of the optimized net) kept in fp32.
    pub exclude_nodes: Vec<usize>,
}

impl Default for QuantizeConfig {
    fn default() -> Self {
        QuantizeConfig {
            calib_images: 10_000,
            seed: 0,
            batch: 16,
            threads: 0,
            preprocess: data::Preprocess::default(),
            kind: QuantKind::L2,
            preserve_sparsity: false,
            per_channel: false,
            weight_kind: QuantKind::MinMax,
            exclude_ops: Vec::new(),
            exclude_nodes: Vec::new(),
        }
    }
}

/// What [`quantize_db`] produced.
#[derive(Debug)]
pub struct Quantized {
    /// The fp32 model after BN folding and ReLU fusion (what was calibrated and rewritten;
    /// compare the int8 net with this one).
    pub fp32: Model,
    /// Chosen activation parameters, with the observed and chosen range of every blob.
    pub activations: ActivationParams,
    /// The int8 nets and the rewrite report.
    pub int8: Int8Model,
    /// Calibration images actually used.
    pub images: usize,
}

/// Quantizes `model` with activation ranges calibrated on the LMDB `db`.
pub fn quantize_db(model: &Model, db: &Path, cfg: &QuantizeConfig) -> Result<Quantized> {
    let (fp32, _) = model.optimized()?;
    let opts = data::BatchOptions {
        batch_size: cfg.batch.max(1),
        sample: Some(cfg.calib_images),
        seed: cfg.seed,
        preprocess: cfg.preprocess.clone(),
        ..data::BatchOptions::default()
    };
    let (calibration, _) = calibrate_db(&fp32, db, opts, cfg.threads, 2048, None)?;
    let activations =
        calibration.choose(&fp32, &ChooseOptions::new(cfg.kind, cfg.preserve_sparsity))?;
    let q = QuantizeOptions {
        per_channel: cfg.per_channel,
        weight_kind: cfg.weight_kind,
        exclude_ops: cfg.exclude_ops.clone(),
        exclude_nodes: cfg.exclude_nodes.clone(),
        input_shapes: HashMap::from([(fp32.data_input()?, cfg.preprocess.batch_shape(1).to_vec())]),
        ..QuantizeOptions::default()
    };
    let int8 = quantize_model(&fp32, &activations.per_op, &activations.inputs, &q)?;
    Ok(Quantized {
        fp32,
        activations,
        int8,
        images: calibration.images,
    })
}
