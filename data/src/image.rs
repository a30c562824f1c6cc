//! Decoding encoded images (JPEG, PNG, ...) to 8-bit BGR pixels, as OpenCV `imdecode` does.
//!
//! STUB: signatures fixed, implementation pending.

use crate::{DataError, DataResult};

/// An 8-bit image, interleaved HWC. Colour images are in **BGR** order (as OpenCV).
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Channels per pixel (3 for BGR, 1 for gray).
    pub channels: usize,
    /// `height * width * channels` bytes, row-major, channels interleaved.
    pub data: Vec<u8>,
}

/// Decodes an encoded image to 3-channel BGR (grayscale is replicated to 3 channels).
/// `key` names the record or file in errors.
pub fn decode_bgr(bytes: &[u8], key: &str) -> DataResult<Image> {
    let _ = bytes;
    Err(DataError::Decode {
        key: key.to_string(),
        msg: "not implemented yet".into(),
    })
}
