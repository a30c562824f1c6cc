//! The integration tests of this crate, one test binary (one build and link instead of
//! one per file; each file is a module named after its subject).

mod batch_bad;
mod batch_pipeline;
mod batch_select;
mod decode_window;
mod lmdb_info;
mod lmdb_read;
mod lmdb_records;
mod make_db_roundtrip;
mod preprocess_decode;
mod preprocess_golden;
mod preprocess_rules;
mod resize_opencv;
