//! Errors of the data pipeline. Each names the file or the LMDB key involved.

use std::path::PathBuf;

/// Why reading, decoding or preprocessing image data failed.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The database could not be opened or read.
    #[error("LMDB {path}: {msg}")]
    Lmdb {
        /// The database folder or file.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
    /// A record value is not a valid Datum / TensorProtos record.
    #[error("record `{key}`: {msg}")]
    Record {
        /// The LMDB key (lossy UTF-8).
        key: String,
        /// What is wrong with it.
        msg: String,
    },
    /// The image bytes of a record (or file) could not be decoded.
    #[error("image `{key}`: {msg}")]
    Decode {
        /// The LMDB key or file name.
        key: String,
        /// The decoder's explanation.
        msg: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Invalid options (e.g. crop larger than scale).
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Shorthand for data results.
pub type DataResult<T> = Result<T, DataError>;
