//! Compute kernels (GEMM and friends). Operators call these; kernels know nothing of graphs.

pub mod gemm;
pub mod packed;
