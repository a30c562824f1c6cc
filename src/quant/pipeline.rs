//! The whole quantization job in one call, as `c2q quantize` does it: optimize the fp32
//! model, calibrate on a seeded sample of an image LMDB, choose activation ranges, rewrite.

use std::collections::HashMap;
use std::path::Path;

use crate::quant::bias_correction::{measure_channel_means, ChannelMeans};
use crate::quant::calibrate::{calibrate_db, ActivationParams};
use crate::quant::{
    quantize_model, ChooseOptions, Int8Model, QuantKind, QuantizeOptions, WeightGranularity,
};
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
    /// Records skipped at the start of the database (e.g. held out for evaluation).
    pub skip: usize,
    /// Skip bad records (reported by the calibration) instead of failing.
    pub skip_bad: bool,
    /// Record format; detected when `None`.
    pub format: Option<data::RecordFormat>,
    /// Worker threads (0 = all cores).
    pub threads: usize,
    /// Image preprocessing (must match the model's training).
    pub preprocess: data::Preprocess,
    /// Activation range search.
    pub kind: QuantKind,
    /// Symmetric activation ranges.
    pub preserve_sparsity: bool,
    /// Weight scales per tensor, per output channel (c2q extension) or `Auto` (per channel
    /// only where per tensor loses too much).
    pub weights: WeightGranularity,
    /// Weight range search (`MinMax` default, or e.g. `L2`).
    pub weight_kind: QuantKind,
    /// Op types kept in fp32.
    pub exclude_ops: Vec<String>,
    /// Op indices (of the optimized net) kept in fp32.
    pub exclude_nodes: Vec<usize>,
    /// Cross-layer equalization of Conv → (Relu) → Conv pairs before calibrating
    /// ([`crate::passes::equalize`]).
    pub equalize: bool,
    /// Images (the first of the calibration database after `skip`) over which the Conv/FC
    /// input means for bias correction are measured; 0 turns bias correction off.
    pub bias_correction_images: usize,
}

impl Default for QuantizeConfig {
    fn default() -> Self {
        QuantizeConfig {
            calib_images: 10_000,
            seed: 0,
            batch: 16,
            skip: 0,
            skip_bad: false,
            format: None,
            threads: 0,
            preprocess: data::Preprocess::default(),
            kind: QuantKind::L2,
            preserve_sparsity: false,
            weights: WeightGranularity::PerChannel,
            weight_kind: QuantKind::MinMax,
            exclude_ops: Vec::new(),
            exclude_nodes: Vec::new(),
            bias_correction_images: DEFAULT_BIAS_CORRECTION_IMAGES,
            equalize: false,
        }
    }
}

/// Default of [`QuantizeConfig::bias_correction_images`].
pub const DEFAULT_BIAS_CORRECTION_IMAGES: usize = 64;

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

impl QuantizeConfig {
    /// The calibration sample: `calib_images` seeded records after the first `skip`.
    pub fn batch_options(&self) -> data::BatchOptions {
        data::BatchOptions {
            batch_size: self.batch.max(1),
            sample: Some(self.calib_images),
            skip: self.skip,
            seed: self.seed,
            skip_bad: self.skip_bad,
            format: self.format,
            preprocess: self.preprocess.clone(),
            ..data::BatchOptions::default()
        }
    }

    /// The rewrite settings for the optimized fp32 model `fp32` (its data input gets the
    /// preprocessed image shape).
    pub fn quantize_options(&self, fp32: &Model) -> Result<QuantizeOptions> {
        Ok(QuantizeOptions {
            weights: self.weights,
            weight_kind: self.weight_kind,
            exclude_ops: self.exclude_ops.clone(),
            exclude_nodes: self.exclude_nodes.clone(),
            input_shapes: HashMap::from([(
                fp32.data_input()?,
                self.preprocess.batch_shape(1).to_vec(),
            )]),
            ..QuantizeOptions::default()
        })
    }

    /// The channel means bias correction needs, measured with the fp32 `model` on `db` (None
    /// when `bias_correction_images` is 0).
    pub fn measure_bias_correction(
        &self,
        model: &Model,
        db: &Path,
    ) -> Result<Option<ChannelMeans>> {
        if self.bias_correction_images == 0 {
            return Ok(None);
        }
        let opts = data::BatchOptions {
            sample: None,
            limit: Some(self.bias_correction_images),
            ..self.batch_options()
        };
        measure_channel_means(model, db, opts, self.threads).map(Some)
    }

    /// The optimized fp32 `model`, equalized when [`QuantizeConfig::equalize`] asks, and the
    /// number of pairs equalized.
    pub fn equalized(&self, model: Model) -> Result<(Model, usize)> {
        if self.equalize {
            crate::passes::equalize::equalize(&model)
        } else {
            Ok((model, 0))
        }
    }

    /// The activation range search.
    pub fn choose_options(&self) -> ChooseOptions {
        ChooseOptions::new(self.kind, self.preserve_sparsity)
    }
}

/// Quantizes `model` with activation ranges calibrated on the LMDB `db`.
pub fn quantize_db(model: &Model, db: &Path, cfg: &QuantizeConfig) -> Result<Quantized> {
    let (fp32, _) = cfg.equalized(model.optimized()?.0)?;
    let (calibration, _) = calibrate_db(&fp32, db, cfg.batch_options(), cfg.threads, 2048, None)?;
    let activations = calibration.choose(&fp32, &cfg.choose_options())?;
    let mut q = cfg.quantize_options(&fp32)?;
    q.bias_correction = cfg.measure_bias_correction(&fp32, db)?;
    let int8 = quantize_model(&fp32, &activations.per_op, &activations.inputs, &q)?;
    Ok(Quantized {
        fp32,
        activations,
        int8,
        images: calibration.images,
    })
}
