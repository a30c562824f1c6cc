//! Tensors, operators and kernels for c2q. This crate knows nothing about protobuf: operators
//! are built from a neutral [`NodeSpec`] and tested with plain tensors.

pub mod args;
pub mod error;
pub mod fill;
pub mod fp32;
pub mod int8;
pub mod kernels;
pub mod limits;
pub mod op;
pub mod registry;
pub mod rng;
pub mod tensor;

pub use args::{ArgValue, Args};
pub use error::{OpError, OpResult};
pub use op::{expect_inputs, NodeSpec, Op};
pub use registry::{build_op, SUPPORTED_OPS};
pub use tensor::{DType, QParams, Tensor, TensorInfo};
