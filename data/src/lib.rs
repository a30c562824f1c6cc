//! LMDB image databases (Caffe `Datum` and Caffe2 `TensorProtos` records), image decoding,
//! Caffe2 `image_input` preprocessing and batching.

pub mod error;
pub mod image;
pub mod preprocess;
pub mod resize;

pub use error::{DataError, DataResult};
pub use image::{decode_bgr, Image};
pub use preprocess::{ChannelOrder, Layout, Preprocess};
pub use resize::resize_area;
