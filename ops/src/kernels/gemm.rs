//! Single-precision GEMM.
//!
//! STUB: not implemented yet.
