//! The `c2q` command line: argument definitions and one module per command.

pub mod bench;
pub mod calibrate;
pub mod compare;
pub mod db;
pub mod demo;
pub mod eval;
pub mod info;
pub mod make_db;
pub mod model_args;
pub mod preprocess_args;
pub mod progress;
pub mod quantize;
pub mod run;
pub mod sample_args;

/// Most worker threads a command accepts (`0` = all cores).
pub const MAX_THREADS: usize = 1024;
/// Largest batch a command accepts (images per batch).
pub const MAX_BATCH: usize = 4096;
/// Most histogram bins `calibrate` accepts (Caffe2's default is 2048).
pub const MAX_BINS: usize = 1 << 20;

/// A whole number in `lo..=hi` for flag values (clap reports the error with the flag).
fn parse_in(s: &str, lo: usize, hi: usize, what: &str) -> Result<usize, String> {
    let v: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number"))?;
    if v < lo || v > hi {
        return Err(format!("{what} must be in {lo}..={hi}, got {v}"));
    }
    Ok(v)
}

/// `--threads`: 0 (all cores) to [`MAX_THREADS`].
pub fn parse_threads(s: &str) -> Result<usize, String> {
    parse_in(s, 0, MAX_THREADS, "threads (0 = all cores)")
}

/// `--batch`: 1 to [`MAX_BATCH`].
pub fn parse_batch(s: &str) -> Result<usize, String> {
    parse_in(s, 1, MAX_BATCH, "the batch size")
}

/// `--bins`: 1 to [`MAX_BINS`].
pub fn parse_bins(s: &str) -> Result<usize, String> {
    parse_in(s, 1, MAX_BINS, "the number of bins")
}

use clap::{Parser, Subcommand};

/// c2q: read, run, calibrate and quantize Caffe2 models on the CPU.
#[derive(Debug, Parser)]
#[command(name = "c2q", version, about)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// All commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Time a model: median ms per batch and images/s over repeated runs.
    Bench(bench::BenchArgs),
    /// Collect activation histograms over sampled LMDB images (calibration).
    Calibrate(calibrate::CalibrateArgs),
    /// Per-layer error (SQNR, cosine) of an int8 net against its fp32 original.
    Compare(compare::CompareArgs),
    /// Look inside an image LMDB.
    #[command(subcommand)]
    Db(db::DbCommand),
    /// Build an image LMDB from a folder or a list file.
    MakeDb(make_db::MakeDbArgs),
    /// Build an example model and images, and run them (no downloads needed).
    Demo(demo::DemoArgs),
    /// Top-1/top-5 of one or more models over an LMDB, side by side.
    Eval(eval::EvalArgs),
    /// Summarize a model: inputs, outputs, op counts, parameters, shapes, unsupported ops.
    Info(info::InfoArgs),
    /// Calibrate an fp32 model and write its DNNLOWP int8 version.
    Quantize(quantize::QuantizeArgs),
    /// Run a model on a tensor file or an image and print the top classes.
    Run(run::RunArgs),
}

/// Runs a parsed command line.
pub fn main_with(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Bench(a) => bench::run(a),
        Command::Calibrate(a) => calibrate::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Db(c) => db::run(c),
        Command::MakeDb(a) => make_db::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Info(a) => info::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Run(a) => run::run(a),
    }
}
