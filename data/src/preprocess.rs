//! Caffe2 `image_input` preprocessing in test mode: shorter side to `scale` (INTER_AREA),
//! centre crop, per-channel `(v - mean) * (1 / std)`, NCHW or NHWC float32.
//!
//! Steps, exactly as Caffe2's `ImageInputOp` with `is_test=1` (facts sheet §3.1):
//! 1. target size by [`target_size`] (float32 arithmetic, truncated toward zero);
//! 2. [`resize_area`](crate::resize_area) (OpenCV `INTER_AREA`) only when the size changes
//!    (only the crop window is computed);
//! 3. centre crop at `((W - crop) / 2, (H - crop) / 2)` (integer division);
//! 4. `(v - mean[c]) * inv_std[c]` with `inv_std[c] = 1.0f32 / std[c]`, where `c` is the
//!    **source (OpenCV BGR) channel**: B = 0, G = 1, R = 2, whatever the output order.

use crate::image::{Image, PixelWindow};
use crate::resize::resize_area_window;
use crate::{DataError, DataResult};

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
    /// Per-channel mean, indexed by the **source BGR channel** (`[B, G, R]`, as Caffe2's
    /// `mean_per_channel`), independent of `order`.
    pub mean: [f32; 3],
    /// Per-channel standard deviation, indexed like `mean` (`[B, G, R]`).
    pub std: [f32; 3],
    /// Output channel order: only changes which plane each channel is written to
    /// (`Rgb` writes planes R, G, B), never which mean/std a channel uses.
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

/// Longest side a resize may produce (65536 pixels): more means an absurd aspect ratio (a
/// 1 x 4,000,000 image resized to a shorter side of 256 would be 256 x 1,024,000,000), and
/// the resize tables are sized by it.
pub const MAX_RESIZED_SIDE: usize = 1 << 16;

/// An error when the resized size is over [`MAX_RESIZED_SIDE`].
pub fn check_resized(h: usize, w: usize, nh: usize, nw: usize) -> DataResult<()> {
    if nh > MAX_RESIZED_SIDE || nw > MAX_RESIZED_SIDE {
        return Err(DataError::Config(format!(
            "image {w}x{h} (w x h) would be resized to {nw}x{nh}: a side over \
             {MAX_RESIZED_SIDE} pixels (aspect ratio too extreme)"
        )));
    }
    Ok(())
}

/// Size `(height, width)` an image of `height` x `width` is resized to so that its shorter
/// side becomes `scale`, as Caffe2 computes it: the other side is
/// `trunc(f32(long) * f32(scale) / f32(short))`, all in float32. Square images and
/// landscape images (`height <= width`) get height `scale`. A zero side gives `(0, 0)`.
pub fn target_size(height: usize, width: usize, scale: usize) -> (usize, usize) {
    if height == 0 || width == 0 {
        return (0, 0);
    }
    let s = scale as f32;
    if height > width {
        let h = height as f32 * s / width as f32;
        (h as usize, scale)
    } else {
        let w = width as f32 * s / height as f32;
        (scale, w as usize)
    }
}

impl Preprocess {
    /// Number of floats one preprocessed image occupies (`3 * crop * crop`).
    pub fn image_len(&self) -> usize {
        self.crop.saturating_mul(self.crop).saturating_mul(3)
    }

    /// Shape of a batch of `n` preprocessed images: `[n, 3, crop, crop]` (NCHW) or
    /// `[n, crop, crop, 3]` (NHWC).
    pub fn batch_shape(&self, n: usize) -> [usize; 4] {
        match self.layout {
            Layout::Nchw => [n, 3, self.crop, self.crop],
            Layout::Nhwc => [n, self.crop, self.crop, 3],
        }
    }

    /// Checks the parameters (crop > 0, scale >= crop, std != 0).
    pub fn validate(&self) -> DataResult<()> {
        if self.crop == 0 {
            return Err(DataError::Config("crop must be > 0".into()));
        }
        if self
            .crop
            .checked_mul(self.crop)
            .and_then(|n| n.checked_mul(3))
            .is_none()
        {
            return Err(DataError::Config(format!(
                "crop {} is too large",
                self.crop
            )));
        }
        if self.scale < self.crop {
            return Err(DataError::Config(format!(
                "scale ({}) must be >= crop ({})",
                self.scale, self.crop
            )));
        }
        if let Some(c) = self.std.iter().position(|&s| s == 0.0 || !s.is_finite()) {
            return Err(DataError::Config(format!(
                "std[{c}] = {} must be finite and non-zero",
                self.std[c]
            )));
        }
        if let Some(c) = self.mean.iter().position(|m| !m.is_finite()) {
            return Err(DataError::Config(format!(
                "mean[{c}] = {} must be finite",
                self.mean[c]
            )));
        }
        Ok(())
    }

    /// The source pixels [`apply`](Self::apply) reads from an image of `height` x `width`
    /// (with a margin of two pixels each way), or `None` when it would reject the image.
    /// Decoders use it to colour-convert only those pixels ([`crate::decode_bgr_window`]).
    pub fn source_window(&self, height: usize, width: usize) -> Option<PixelWindow> {
        let (nh, nw) = target_size(height, width, self.scale);
        if nh < self.crop || nw < self.crop || self.crop == 0 {
            return None;
        }
        check_resized(height, width, nh, nw).ok()?;
        let (y0, x0) = ((nh - self.crop) / 2, (nw - self.crop) / 2);
        // Destination index d reads source pixels within [d·src/dst − 1, (d + 1)·src/dst + 1]
        // on every INTER_AREA path (area sums, integer boxes, 2-tap bilinear).
        let span = |d0: usize, src: usize, dst: usize| {
            let lo = (d0 * src / dst).saturating_sub(2);
            let hi = ((d0 + self.crop) * src).div_ceil(dst) + 2;
            lo..hi.min(src)
        };
        Some((span(y0, height, nh), span(x0, width, nw)))
    }

    /// Preprocesses one BGR image into `out` (length `image_len()`).
    ///
    /// A 1-channel (gray) image is treated as if its gray value were replicated to B, G, R.
    pub fn apply(&self, img: &Image, out: &mut [f32]) -> DataResult<()> {
        self.validate()?;
        if out.len() != self.image_len() {
            return Err(DataError::Config(format!(
                "output buffer has {} floats, expected 3 x {} x {} = {}",
                out.len(),
                self.crop,
                self.crop,
                self.image_len()
            )));
        }
        let (h, w, cn) = (img.height, img.width, img.channels);
        if cn != 1 && cn != 3 {
            return Err(DataError::Config(format!(
                "expected a 1- or 3-channel image, got {cn} channels"
            )));
        }
        if Some(img.data.len()) != h.checked_mul(w).and_then(|n| n.checked_mul(cn)) {
            return Err(DataError::Config(format!(
                "image {h}x{w}x{cn} has {} bytes of pixel data",
                img.data.len()
            )));
        }
        let (nh, nw) = target_size(h, w, self.scale);
        check_resized(h, w, nh, nw)?;
        if nh < self.crop || nw < self.crop {
            return Err(DataError::Config(format!(
                "image {w}x{h} (w x h) resized to {nw}x{nh} is smaller than the crop {}",
                self.crop
            )));
        }
        let crop = self.crop;
        let (y0, x0) = ((nh - crop) / 2, (nw - crop) / 2);
        // Only the crop window of the resized image is computed (same bytes as resizing the
        // whole image and cropping).
        let window = resize_area_window(img, nh, nw, y0..y0 + crop, x0..x0 + crop);
        self.normalize(&window, out);
        Ok(())
    }

    /// Normalization of the `crop` x `crop` window (1 or 3 channels, checked by the caller);
    /// the AVX2 build when the CPU has it.
    fn normalize(&self, src: &Image, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if crate::avx2::available() {
            // SAFETY: the CPU has AVX2 (checked just above).
            unsafe { self.normalize_avx2(src, out) };
            return;
        }
        self.normalize_portable(src, out);
    }

    /// [`Preprocess::normalize_portable`] compiled for AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn normalize_avx2(&self, src: &Image, out: &mut [f32]) {
        self.normalize_portable(src, out);
    }

    /// [`Preprocess::normalize`] for any CPU; the channel count is made a constant so the
    /// stride-3 reads vectorize.
    #[inline(always)]
    fn normalize_portable(&self, src: &Image, out: &mut [f32]) {
        if src.channels == 3 {
            self.normalize_cn::<3>(src, out);
        } else {
            self.normalize_cn::<1>(src, out);
        }
    }

    #[inline(always)]
    fn normalize_cn<const CN: usize>(&self, src: &Image, out: &mut [f32]) {
        let crop = self.crop;
        let cn = CN;
        let inv_std = [1.0f32 / self.std[0], 1.0 / self.std[1], 1.0 / self.std[2]];
        // Source channel written to output plane p.
        let plane_src: [usize; 3] = match self.order {
            ChannelOrder::Bgr => [0, 1, 2],
            ChannelOrder::Rgb => [2, 1, 0],
        };
        let plane_len = crop * crop;
        for (y, row) in src.data.chunks_exact(crop * cn).enumerate() {
            match self.layout {
                Layout::Nchw => {
                    for (p, &c) in plane_src.iter().enumerate() {
                        let (m, s) = (self.mean[c], inv_std[c]);
                        let sc = c.min(cn - 1);
                        let dst =
                            &mut out[p * plane_len + y * crop..p * plane_len + (y + 1) * crop];
                        for (d, px) in dst.iter_mut().zip(row.chunks_exact(cn)) {
                            *d = (f32::from(px[sc]) - m) * s;
                        }
                    }
                }
                Layout::Nhwc => {
                    let dst = &mut out[y * crop * 3..(y + 1) * crop * 3];
                    for (d, px) in dst.chunks_exact_mut(3).zip(row.chunks_exact(cn)) {
                        for (p, &c) in plane_src.iter().enumerate() {
                            d[p] = (f32::from(px[c.min(cn - 1)]) - self.mean[c]) * inv_std[c];
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatched_normalize_equals_portable() {
        for cn in [1, 3] {
            for order in [ChannelOrder::Bgr, ChannelOrder::Rgb] {
                for layout in [Layout::Nchw, Layout::Nhwc] {
                    let pre = Preprocess {
                        crop: 13,
                        order,
                        layout,
                        ..Preprocess::default()
                    };
                    let data = (0..13 * 13 * cn)
                        .map(|i: usize| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                        .collect();
                    let img = Image::new(13, 13, cn, data).unwrap();
                    let mut a = vec![f32::NAN; pre.image_len()];
                    let mut b = vec![f32::NAN; pre.image_len()];
                    pre.normalize(&img, &mut a);
                    pre.normalize_portable(&img, &mut b);
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&a), bits(&b), "{cn} channels, {order:?}, {layout:?}");
                    // Spot check against the formula: pixel (2, 5), BGR channel 2 (R).
                    let c = 2.min(cn - 1);
                    let v = f32::from(img.data[(2 * 13 + 5) * cn + c]);
                    let want = (v - pre.mean[2]) * (1.0 / pre.std[2]);
                    let plane = if order == ChannelOrder::Bgr { 2 } else { 0 };
                    let at = match layout {
                        Layout::Nchw => plane * 169 + 2 * 13 + 5,
                        Layout::Nhwc => (2 * 13 + 5) * 3 + plane,
                    };
                    assert_eq!(a[at].to_bits(), want.to_bits());
                }
            }
        }
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[test]
    fn extreme_aspect_ratio_is_an_error_not_an_abort() {
        // 1 x 4,000,000: shorter side 256 would make it 256 x 1,024,000,000.
        let img = Image {
            height: 1,
            width: 4_000_000,
            channels: 3,
            data: vec![0; 12_000_000],
        };
        let pre = Preprocess::default();
        let mut out = vec![0f32; pre.image_len()];
        let err = pre.apply(&img, &mut out).unwrap_err().to_string();
        assert!(
            err.contains("4000000x1") && err.contains("aspect ratio"),
            "{err}"
        );
        assert!(pre.source_window(1, 4_000_000).is_none());
        // 256 x 65536 (aspect 256:1) still works.
        assert!(check_resized(10, 2560, 256, 65536).is_ok());
    }
}
