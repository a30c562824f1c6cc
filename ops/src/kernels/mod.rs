//! Compute kernels (GEMM and friends). Operators call these; kernels know nothing of graphs.

pub mod aligned;
pub mod gemm;
pub mod isa;
pub mod lut;
pub mod packed;
pub mod qdepthwise;
pub mod qeltwise;
pub mod qgemm;
