//! The calibration-sample flags shared by `c2q calibrate` and `c2q quantize`.

use clap::Args;

use crate::quant::QuantizeConfig;

/// Which calibration images are read, and how.
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// Size of the seeded random sample (all records if the database is smaller).
    #[arg(long, default_value_t = 10_000)]
    pub calib_images: usize,
    /// Seed of the sample.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per batch.
    #[arg(long, default_value_t = 16, value_parser = super::parse_batch)]
    pub batch: usize,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0, value_parser = super::parse_threads)]
    pub threads: usize,
    /// Skip undecodable or malformed records (counted and reported) instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
    /// Record format; detected when omitted.
    #[arg(long)]
    pub format: Option<data::RecordFormat>,
}

impl SampleArgs {
    /// A [`QuantizeConfig`] with these sample settings and `preprocess` (the rest default).
    pub fn config(&self, preprocess: data::Preprocess) -> QuantizeConfig {
        QuantizeConfig {
            calib_images: self.calib_images,
            seed: self.seed,
            batch: self.batch.max(1),
            threads: self.threads,
            skip_bad: self.skip_bad,
            format: self.format,
            preprocess,
            ..QuantizeConfig::default()
        }
    }
}
