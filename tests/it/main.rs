//! The integration tests of `c2q`, one test binary (one build and link instead of one per
//! file; each file is a module named after its subject).

mod common;

mod calibrate;
mod cli;
mod equalize;
mod errors;
mod eval_accuracy;
mod executor_split;
mod fuzz_corpus;
mod int8_fast_nets;
mod isa_nets;
mod passes;
mod quant_calibration;
mod quant_one_sided;
mod quant_rewrite;
mod real_models;
