//! LMDB image databases (Caffe `Datum` and Caffe2 `TensorProtos` records), image decoding,
//! Caffe2 `image_input` preprocessing and batching.

mod avx2;
pub mod batch;
pub mod db_info;
pub mod error;
pub mod file;
pub mod image;
pub mod lmdb;
pub mod make_db;
pub mod preprocess;
pub mod record;
pub mod resize;

pub use batch::{Batch, BatchOptions, Batches, DecodePriority, Prefetch, Skipped};
pub use db_info::{db_info, list_records, DbInfo, RecordEntry};
pub use error::{DataError, DataResult};
pub use file::{read_bounded, read_text_bounded, MAX_IMAGE_BYTES, MAX_TEXT_BYTES};
pub use image::{decode_bgr, decode_bgr_window, Image, PixelWindow, WindowFn};
pub use lmdb::Lmdb;
pub use make_db::{make_db, MakeDbOptions, MakeDbSummary, Source};
pub use preprocess::{target_size, ChannelOrder, Layout, Preprocess};
pub use record::{Label, Record, RecordFormat};
pub use resize::{resize_area, resize_area_window};
