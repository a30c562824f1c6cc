//! OpenCV `INTER_AREA` resizing of 8-bit images, re-implemented to match OpenCV exactly.
//!
//! STUB: signatures fixed, implementation pending.

use crate::image::Image;

/// Resizes to `new_height` x `new_width` with OpenCV `INTER_AREA` semantics.
pub fn resize_area(src: &Image, new_height: usize, new_width: usize) -> Image {
    let _ = (new_height, new_width);
    src.clone()
}
