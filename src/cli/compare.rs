//! `c2q compare FP32_DIR INT8_DIR --db DB`: per-layer error of an int8 net against its fp32
//! original on a few images, worst layers first.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::preprocess_args::PreprocessArgs;
use crate::eval::{blob_owners, layer_errors_on_db_with};
use crate::Model;

/// Flags of `c2q compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The fp32 model folder (optimized the same way `c2q quantize` does before comparing).
    pub fp32: PathBuf,
    /// The int8 model folder written by `c2q quantize`.
    pub int8: PathBuf,
    /// Images (LMDB) to run both nets on.
    #[arg(long)]
    pub db: PathBuf,
    /// Number of images (first in key order).
    #[arg(long, default_value_t = 16)]
    pub images: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 8, value_parser = super::parse_batch)]
    pub batch: usize,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0, value_parser = super::parse_threads)]
    pub threads: usize,
    /// Record format; detected when omitted.
    #[arg(long)]
    pub format: Option<data::RecordFormat>,
    /// Run Int8 ops with the scalar reference implementation (slow; bit-identical).
    #[arg(long)]
    pub reference: bool,
    /// Machine-readable report.
    #[arg(long)]
    pub json: bool,
    /// Preprocessing.
    #[command(flatten)]
    pub pre: PreprocessArgs,
}

/// Runs `c2q compare`.
pub fn run(a: CompareArgs) -> anyhow::Result<()> {
    if a.images == 0 {
        anyhow::bail!("--images 0: nothing to compare on");
    }
    let fp32 = Model::load_dir(&a.fp32)?.optimized()?.0;
    let mut int8 = Model::load_dir(&a.int8)?;
    if a.reference {
        int8.set_reference(true);
    }
    let opts = data::BatchOptions {
        batch_size: a.batch.max(1).min(a.images),
        limit: Some(a.images),
        format: a.format,
        preprocess: a.pre.to_preprocess()?,
        ..data::BatchOptions::default()
    };
    let pb = super::progress::bar(0, "comparing");
    let progress = |done: usize, total: usize| super::progress::show(&pb, done, total);
    let (errs, images) =
        layer_errors_on_db_with(&fp32, &int8, &a.db, opts, a.threads, Some(&progress))?;
    pb.finish_and_clear();
    // The fp32 op index of each blob: what `quantize --exclude-nodes` takes.
    let owners = blob_owners(&fp32);
    let fp32_op = |blob: &str| owners.get(blob).map(|(i, _)| *i);
    if a.json {
        let j = json!({
            "images": images,
            "layers": errs.iter().map(|e| json!({
                "blob": e.blob, "fp32_op_index": fp32_op(&e.blob), "int8_op_index": e.op_index,
                "op_type": e.op_type, "op_name": e.op_name,
                "values": e.values, "sqnr_db": e.sqnr_db.is_finite().then_some(e.sqnr_db),
                "cosine": e.cosine, "max_abs_err": e.max_abs_err,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    println!(
        "{} quantized blobs compared on {images} images from {} (worst first)",
        errs.len(),
        a.db.display()
    );
    println!(
        "(`fp32 op` is the index `c2q quantize --exclude-nodes` takes to keep that op in fp32)"
    );
    println!(
        "{:>7}  {:<40} {:<16} {:>9} {:>9} {:>11}",
        "fp32 op", "blob", "int8 op", "SQNR dB", "cosine", "max |err|"
    );
    for e in &errs {
        let i = fp32_op(&e.blob).map_or("-".to_string(), |i| i.to_string());
        println!(
            "{:>7}  {:<40} {:<16} {:>9.2} {:>9.5} {:>11.4}",
            i, e.blob, e.op_type, e.sqnr_db, e.cosine, e.max_abs_err
        );
    }
    Ok(())
}
