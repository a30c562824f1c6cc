//! The integration tests of this crate, one test binary (one build and link instead of
//! one per file; each file is a module named after its subject).

#[macro_use]
mod ops_util;

mod conv_backends;
mod conv_fp32;
mod fc_fp32;
mod fill_ops;
mod int8_conv_lut;
mod int8_fast;
mod int8_fast_eltwise;
mod int8_implicit;
mod int8_ops;
mod ops_activation_norm;
mod ops_elementwise;
mod ops_shape;
mod pool_fp32;
