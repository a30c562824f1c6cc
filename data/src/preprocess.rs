//! Caffe2 `image_input` preprocessing in test mode: shorter side to `scale` (INTER_AREA),
//! centre crop, per-channel `(v - mean) * (1 / std)`, NCHW or NHWC float32.
//!
//! STUB: signatures fixed, implementation pending.

use crate::image::Image;
use crate::DataResult;

/// Channel order of the output planes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelOrder {
    /// Blue, green, red (Caffe2 / OpenCV; the default).
    Bgr,
    /// Red, green, blue.
    Rgb,
}

/// Memory layout of the output tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `[N, C, H, W]` (the default).
    Nchw,
    /// `[N, H, W, C]`.
    Nhwc,
}

/// Preprocessing parameters (defaults: the zoo ResNet-50 readme values).
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    /// Target length of the shorter side.
    pub scale: usize,
    /// Side of the square centre crop.
    pub crop: usize,
    /// Per-channel mean, in the order of `order`'s output planes as documented.
    pub mean: [f32; 3],
    /// Per-channel standard deviation, same order as `mean`.
    pub std: [f32; 3],
    /// Output channel order.
    pub order: ChannelOrder,
    /// Output layout.
    pub layout: Layout,
}

impl Default for Preprocess {
    fn default() -> Self {
        Preprocess {
            scale: 256,
            crop: 224,
            mean: [103.53, 116.28, 123.675],
            std: [57.375, 57.12, 58.395],
            order: ChannelOrder::Bgr,
            layout: Layout::Nchw,
        }
    }
}

impl Preprocess {
    /// Number of floats one preprocessed image occupies (`3 * crop * crop`).
    pub fn image_len(&self) -> usize {
        3 * self.crop * self.crop
    }

    /// Checks the parameters (crop > 0, scale >= crop, std != 0).
    pub fn validate(&self) -> DataResult<()> {
        Ok(())
    }

    /// Preprocesses one BGR image into `out` (length `image_len()`).
    pub fn apply(&self, img: &Image, out: &mut [f32]) -> DataResult<()> {
        let _ = (img, out);
        Err(crate::DataError::Config("not implemented yet".into()))
    }
}
