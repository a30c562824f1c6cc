//! fp32 operators with Caffe2 semantics, one file per op family.

pub mod activation;
pub mod batch_norm;
pub mod concat;
pub mod conv;
pub mod conv_pool;
pub mod elementwise;
pub mod fc;
pub mod identity;
pub mod layout;
pub mod lrn;
pub mod pool;
pub mod reshape;
pub mod softmax;
