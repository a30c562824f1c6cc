//! Evaluation: accuracy over an image database and per-layer error of int8 nets.

pub mod accuracy;
pub mod layer_error;

pub use accuracy::{
    default_decode_priority, evaluate, top_k, EvalOptions, EvalReport, ModelScore, DEFAULT_PREFETCH,
};
pub use layer_error::{
    blob_owners, cosine, layer_errors_on_db, layer_errors_on_db_with, sqnr_db, BlobError,
    LayerErrors,
};
