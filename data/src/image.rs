//! Decoding encoded images (JPEG, PNG, ...) to 8-bit BGR pixels, as OpenCV `imdecode` with
//! `IMREAD_COLOR` does.
//!
//! JPEG goes through `zune-jpeg`; everything else through the `image` crate.
//!
//! Fidelity to OpenCV (libjpeg-turbo with its default `JDCT_ISLOW` IDCT and fancy
//! upsampling). zune-jpeg has no IDCT or upsampling options (its SIMD and scalar paths give
//! identical pixels), so the closest setting is: ask it for **YCbCr** and convert here.
//! - YCbCr JPEGs: zune-jpeg's (upsampled) YCbCr samples are converted to BGR with libjpeg's
//!   own 16-bit fixed-point `jdcolor.c` arithmetic, so the colour conversion is bit-exact.
//!   What remains is zune-jpeg's IDCT (stb-style, 12-bit constants; differs from libjpeg's
//!   ISLOW by 1 in under 1 % of samples) and, for subsampled chroma (4:2:0, 4:2:2), its
//!   triangle upsampling, which rounds twice where libjpeg rounds once (~25 % of bytes
//!   differ, by up to ~4). zune-jpeg 0.4 also mis-weights the second-to-last chroma column
//!   when the width is a multiple of the MCU width (fixed in zune-jpeg 0.5).
//! - Grayscale is replicated to three channels; alpha is dropped (not blended).
//! - CMYK / YCCK (Adobe) JPEGs follow libjpeg + OpenCV: YCCK is first turned into inverted
//!   CMYK with the same YCbCr arithmetic, then each of R, G, B is `k - ((255 - v) * k >> 8)`.
//! - 16-bit PNGs keep the high byte of each sample (as OpenCV does).
//! - EXIF orientation is not applied, unlike OpenCV >= 4 `imdecode` with `IMREAD_COLOR`
//!   (none of the imagenet100 JPEGs has an orientation tag that changes the pixels).

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};

use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use crate::{DataError, DataResult};

/// Largest number of pixels a decoded image may have (guards against absurd headers).
pub const MAX_PIXELS: usize = 1 << 28;

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

impl Image {
    /// Wraps interleaved pixel bytes, checking that `data.len() == height * width * channels`.
    pub fn new(height: usize, width: usize, channels: usize, data: Vec<u8>) -> DataResult<Image> {
        let expected = height
            .checked_mul(width)
            .and_then(|n| n.checked_mul(channels));
        if expected != Some(data.len()) {
            return Err(DataError::Config(format!(
                "image {height}x{width}x{channels} needs {expected:?} bytes, got {}",
                data.len()
            )));
        }
        Ok(Image {
            height,
            width,
            channels,
            data,
        })
    }

    /// A black image of the given size.
    pub fn zeros(height: usize, width: usize, channels: usize) -> Image {
        Image {
            height,
            width,
            channels,
            data: vec![0; height * width * channels],
        }
    }

    /// The bytes of row `y` (`width * channels` of them), or `None` past the last row.
    pub fn row(&self, y: usize) -> Option<&[u8]> {
        let stride = self.width * self.channels;
        self.data.get(y * stride..(y + 1) * stride)
    }
}

/// Decodes an encoded image to 3-channel BGR (grayscale is replicated to 3 channels).
/// `key` names the record or file in errors.
pub fn decode_bgr(bytes: &[u8], key: &str) -> DataResult<Image> {
    decode_bgr_window(bytes, key, &|_, _| None)
}

/// Source rows and columns of an image, `(rows, cols)`.
pub type PixelWindow = (Range<usize>, Range<usize>);

/// The source pixels a caller reads from an image of the given height and width (see
/// [`decode_bgr_window`]); `None` for all of them.
pub type WindowFn<'a> = dyn Fn(usize, usize) -> Option<PixelWindow> + Send + Sync + 'a;

/// Like [`decode_bgr`], for a caller that reads only part of the image: `window(height,
/// width)` may name the rows and columns it reads, and the colour conversion of YCbCr JPEGs
/// (a fifth of the decoding time) is then done only there. **Pixels outside the window are
/// left unspecified** (still YCbCr). `None` converts every pixel.
pub fn decode_bgr_window(bytes: &[u8], key: &str, window: &WindowFn<'_>) -> DataResult<Image> {
    let err = |msg: String| DataError::Decode {
        key: key.to_string(),
        msg,
    };
    if bytes.is_empty() {
        return Err(err("empty image data".into()));
    }
    let result = if bytes.starts_with(&[0xFF, 0xD8]) {
        if let Some(msg) = jpeg_truncation(bytes) {
            return Err(err(msg));
        }
        guarded(|| decode_jpeg(bytes, window))
    } else {
        guarded(|| decode_other(bytes))
    };
    result.map_err(err)
}

/// Why a JPEG is cut short, or None: the decoder fills a truncated scan with gray and
/// reports nothing, so c2q checks that an end-of-image marker (FF D9) follows the last
/// start-of-scan (FF DA). Entropy-coded data never holds FF DA or FF D9 (an FF there is
/// followed by 00 or a restart marker), so bytes after a complete image do not matter.
fn jpeg_truncation(bytes: &[u8]) -> Option<String> {
    let find_last = |m: u8| bytes.windows(2).rposition(|w| w == [0xFF, m]);
    let sos = find_last(0xDA)?; // no scan at all: the decoder reports it
    let after = &bytes[sos + 2..];
    if after.windows(2).any(|w| w == [0xFF, 0xD9]) {
        None
    } else {
        Some(format!(
            "truncated JPEG: no end-of-image marker after the scan data ({} bytes; the file \
             was probably cut short)",
            bytes.len()
        ))
    }
}

/// Runs a decoder, turning a panic inside a third-party decoder into an error.
fn guarded(f: impl FnOnce() -> Result<Image, String>) -> Result<Image, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => Err("decoder panicked on malformed data".into()),
    }
}

fn check_size(width: usize, height: usize) -> Result<(), String> {
    if width == 0 || height == 0 {
        return Err(format!("image has an empty size {width}x{height}"));
    }
    if width.saturating_mul(height) > MAX_PIXELS {
        return Err(format!(
            "image {width}x{height} exceeds the limit of {MAX_PIXELS} pixels"
        ));
    }
    Ok(())
}

fn jpeg_options(out: ColorSpace) -> DecoderOptions {
    DecoderOptions::default()
        .set_max_width(usize::from(u16::MAX))
        .set_max_height(usize::from(u16::MAX))
        .set_strict_mode(false)
        .jpeg_set_out_colorspace(out)
}

fn decode_jpeg(bytes: &[u8], window: &WindowFn<'_>) -> Result<Image, String> {
    // Headers first, to learn the size and the stored colour space. The same decoder then
    // decodes the common cases: YCbCr (requested as YCbCr, converted here) and grayscale
    // (for which zune-jpeg switches the output to Luma itself).
    let mut dec = JpegDecoder::new_with_options(bytes, jpeg_options(ColorSpace::YCbCr));
    dec.decode_headers().map_err(|e| format!("JPEG: {e:?}"))?;
    let info = dec.info().ok_or("JPEG: no header information")?;
    let (w, h) = (usize::from(info.width), usize::from(info.height));
    check_size(w, h)?;
    let input = dec.get_input_colorspace().ok_or("JPEG: no colour space")?;
    let comps = usize::from(info.components);
    match (input, comps) {
        (ColorSpace::Luma, 1) => {
            let gray = finish_jpeg(dec, w * h)?;
            Ok(gray_to_bgr(h, w, &gray))
        }
        (ColorSpace::YCbCr, 3) => {
            let mut px = finish_jpeg(dec, w * h * 3)?;
            match window(h, w) {
                Some((rows, cols)) => {
                    let cols = cols.start.min(w)..cols.end.min(w);
                    for y in rows.start.min(h)..rows.end.min(h) {
                        let row = &mut px[y * w * 3..(y + 1) * w * 3];
                        ycc_to_bgr_in_place(&mut row[cols.start * 3..cols.end.max(cols.start) * 3]);
                    }
                }
                None => ycc_to_bgr_in_place(&mut px),
            }
            Ok(Image {
                height: h,
                width: w,
                channels: 3,
                data: px,
            })
        }
        (ColorSpace::CMYK, 4) => {
            let dec = JpegDecoder::new_with_options(bytes, jpeg_options(ColorSpace::CMYK));
            let cmyk = finish_jpeg(dec, w * h * 4)?;
            Ok(cmyk_to_bgr(h, w, &cmyk))
        }
        (ColorSpace::YCCK, 4) => {
            let dec = JpegDecoder::new_with_options(bytes, jpeg_options(ColorSpace::YCCK));
            let mut ycck = finish_jpeg(dec, w * h * 4)?;
            ycck_to_cmyk(&mut ycck);
            Ok(cmyk_to_bgr(h, w, &ycck))
        }
        // Unusual layouts (e.g. Adobe RGB-transform JPEGs): let the `image` crate try.
        _ => decode_other(bytes),
    }
}

/// Decodes the pixels, checking that the decoder produced `expected` bytes.
fn finish_jpeg(mut dec: JpegDecoder<&[u8]>, expected: usize) -> Result<Vec<u8>, String> {
    let pixels = dec.decode().map_err(|e| format!("JPEG: {e:?}"))?;
    if pixels.len() != expected {
        return Err(format!(
            "JPEG: decoder returned {} bytes, expected {expected}",
            pixels.len()
        ));
    }
    Ok(pixels)
}

// ---- libjpeg (jdcolor.c) YCbCr -> RGB, 16-bit fixed point ---------------------------------

const SCALEBITS: i32 = 16;
const ONE_HALF: i32 = 1 << (SCALEBITS - 1);

/// libjpeg's `FIX(x)`: `x * 2^16` rounded, for the four conversion constants.
const FIX_1_40200: i32 = 91881;
const FIX_1_77200: i32 = 116130;
const FIX_0_71414: i32 = 46802;
const FIX_0_34414: i32 = 22554;

/// The four lookup tables of libjpeg's `build_ycc_rgb_table`, indexed by the chroma sample.
struct YccTables {
    cr_r: [i32; 256],
    cb_b: [i32; 256],
    cr_g: [i32; 256],
    cb_g: [i32; 256],
}

const fn build_ycc_tables() -> YccTables {
    let mut t = YccTables {
        cr_r: [0; 256],
        cb_b: [0; 256],
        cr_g: [0; 256],
        cb_g: [0; 256],
    };
    let mut i = 0;
    while i < 256 {
        let x = i as i32 - 128;
        t.cr_r[i] = (FIX_1_40200 * x + ONE_HALF) >> SCALEBITS;
        t.cb_b[i] = (FIX_1_77200 * x + ONE_HALF) >> SCALEBITS;
        t.cr_g[i] = -FIX_0_71414 * x;
        t.cb_g[i] = -FIX_0_34414 * x + ONE_HALF;
        i += 1;
    }
    t
}

static YCC: YccTables = build_ycc_tables();

#[inline(always)]
fn clamp_u8(v: i32) -> u8 {
    // Branch-free `v.clamp(0, 255)`: above 255 every bit is set by the first term, below
    // 0 every bit is cleared by the second (bright or dark areas would mispredict a branch).
    ((v | ((255 - v) >> 31)) & !(v >> 31)) as u8
}

/// libjpeg's YCbCr -> (R, G, B) for one sample.
#[inline]
fn ycc_to_rgb_px(y: u8, cb: u8, cr: u8) -> (u8, u8, u8) {
    let y = i32::from(y);
    let (cb, cr) = (usize::from(cb), usize::from(cr));
    let r = y + YCC.cr_r[cr];
    let g = y + ((YCC.cb_g[cb] + YCC.cr_g[cr]) >> SCALEBITS);
    let b = y + YCC.cb_b[cb];
    (clamp_u8(r), clamp_u8(g), clamp_u8(b))
}

/// Converts interleaved YCbCr to interleaved BGR in place, exactly as libjpeg does (its
/// table entries written out as arithmetic); the AVX2 build when the CPU has it.
pub(crate) fn ycc_to_bgr_in_place(px: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if crate::avx2::available() {
        // SAFETY: the CPU has AVX2 (checked just above).
        unsafe { ycc_to_bgr_avx2(px) };
        return;
    }
    ycc_to_bgr_portable(px);
}

/// [`ycc_to_bgr_portable`] compiled for AVX2 (about 6x faster: LLVM vectorizes the stride-3
/// loads and stores).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn ycc_to_bgr_avx2(px: &mut [u8]) {
    ycc_to_bgr_portable(px);
}

/// The YCbCr -> BGR loop for any CPU.
#[inline(always)]
pub(crate) fn ycc_to_bgr_portable(px: &mut [u8]) {
    for p in px.chunks_exact_mut(3) {
        let y = i32::from(p[0]);
        let cb = i32::from(p[1]) - 128;
        let cr = i32::from(p[2]) - 128;
        let r = y + ((FIX_1_40200 * cr + ONE_HALF) >> SCALEBITS);
        let g = y + ((ONE_HALF - FIX_0_34414 * cb - FIX_0_71414 * cr) >> SCALEBITS);
        let b = y + ((FIX_1_77200 * cb + ONE_HALF) >> SCALEBITS);
        p[0] = clamp_u8(b);
        p[1] = clamp_u8(g);
        p[2] = clamp_u8(r);
    }
}

/// libjpeg's YCCK -> CMYK: colour-convert YCC, then invert; K passes through.
fn ycck_to_cmyk(px: &mut [u8]) {
    for p in px.chunks_exact_mut(4) {
        let (r, g, b) = ycc_to_rgb_px(p[0], p[1], p[2]);
        p[0] = 255 - r;
        p[1] = 255 - g;
        p[2] = 255 - b;
    }
}

/// OpenCV's `icvCvt_CMYK2BGR_8u_C4C3R` (on libjpeg's Adobe-inverted CMYK samples).
fn cmyk_to_bgr(h: usize, w: usize, cmyk: &[u8]) -> Image {
    let mut out = vec![0u8; h * w * 3];
    for (src, dst) in cmyk.chunks_exact(4).zip(out.chunks_exact_mut(3)) {
        let k = i32::from(src[3]);
        let conv = |v: u8| (k - (((255 - i32::from(v)) * k) >> 8)) as u8;
        dst[2] = conv(src[0]);
        dst[1] = conv(src[1]);
        dst[0] = conv(src[2]);
    }
    Image {
        height: h,
        width: w,
        channels: 3,
        data: out,
    }
}

fn gray_to_bgr(h: usize, w: usize, gray: &[u8]) -> Image {
    let mut out = Vec::with_capacity(gray.len() * 3);
    for &g in gray {
        out.extend_from_slice(&[g, g, g]);
    }
    Image {
        height: h,
        width: w,
        channels: 3,
        data: out,
    }
}

// ---- other formats through the `image` crate ---------------------------------------------

fn decode_other(bytes: &[u8]) -> Result<Image, String> {
    use image::DynamicImage as D;
    let img = image::load_from_memory(bytes).map_err(|e| e.to_string())?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    check_size(w, h)?;
    // Each sample as its 8-bit value (16-bit keeps the high byte, as libpng's strip_16).
    let (samples, cn): (Vec<u8>, usize) = match img {
        D::ImageLuma8(b) => (b.into_raw(), 1),
        D::ImageLumaA8(b) => (b.into_raw(), 2),
        D::ImageRgb8(b) => (b.into_raw(), 3),
        D::ImageRgba8(b) => (b.into_raw(), 4),
        D::ImageLuma16(b) => (high_bytes(b.as_raw()), 1),
        D::ImageLumaA16(b) => (high_bytes(b.as_raw()), 2),
        D::ImageRgb16(b) => (high_bytes(b.as_raw()), 3),
        D::ImageRgba16(b) => (high_bytes(b.as_raw()), 4),
        other => (other.to_rgb8().into_raw(), 3),
    };
    if samples.len() != w * h * cn {
        return Err(format!(
            "decoder returned {} samples for {w}x{h}x{cn}",
            samples.len()
        ));
    }
    let mut out = vec![0u8; w * h * 3];
    for (src, dst) in samples.chunks_exact(cn).zip(out.chunks_exact_mut(3)) {
        if cn <= 2 {
            dst.fill(src[0]);
        } else {
            dst[0] = src[2];
            dst[1] = src[1];
            dst[2] = src[0];
        }
    }
    Ok(Image {
        height: h,
        width: w,
        channels: 3,
        data: out,
    })
}

fn high_bytes(v: &[u16]) -> Vec<u8> {
    v.iter().map(|&s| (s >> 8) as u8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JPEG of a gradient written by the `image` crate.
    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 99]));
        let mut buf = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut buf, image::ImageFormat::Jpeg)
            .unwrap();
        buf.into_inner()
    }

    #[test]
    fn truncated_jpegs_are_errors_complete_ones_with_trailing_bytes_are_not() {
        let full = jpeg(200, 150);
        assert!(decode_bgr(&full, "k").is_ok());
        // Cut anywhere inside the scan: the decoder would fill gray and say nothing.
        for frac in [95, 90, 60, 30] {
            let cut = &full[..full.len() * frac / 100];
            let e = decode_bgr(cut, "rec7").unwrap_err().to_string();
            assert!(
                e.contains("rec7") && e.contains("truncated JPEG"),
                "{frac}%: {e}"
            );
        }
        // Bytes after the end-of-image marker (some cameras append data) are fine.
        let mut padded = full.clone();
        padded.extend([0u8, 1, 2, 0xFF, 0x00, 7]);
        assert!(decode_bgr(&padded, "k").is_ok());
    }

    #[test]
    fn branch_free_clamp_matches_clamp() {
        for v in -70_000..70_000 {
            assert_eq!(clamp_u8(v), v.clamp(0, 255) as u8, "{v}");
        }
    }

    /// libjpeg's conversion written out in floating point, rounded as the tables do.
    fn reference_rgb(y: u8, cb: u8, cr: u8) -> (i32, i32, i32) {
        let (y, cb, cr) = (f64::from(y), f64::from(cb) - 128.0, f64::from(cr) - 128.0);
        let r = y + (1.402 * cr).round();
        let b = y + (1.772 * cb).round();
        let g = y + (-0.34414 * cb - 0.71414 * cr).round();
        let c = |v: f64| v.clamp(0.0, 255.0) as i32;
        (c(r), c(g), c(b))
    }

    #[test]
    fn ycc_tables_match_libjpeg_constants() {
        // FIX(x) = round(x * 65536)
        assert_eq!(FIX_1_40200, (1.402f64 * 65536.0 + 0.5) as i32);
        assert_eq!(FIX_1_77200, (1.772f64 * 65536.0 + 0.5) as i32);
        assert_eq!(FIX_0_71414, (0.71414f64 * 65536.0 + 0.5) as i32);
        assert_eq!(FIX_0_34414, (0.34414f64 * 65536.0 + 0.5) as i32);
        // hand-worked: Cr = 255 -> x = 127 -> 1.402 * 127 = 178.05 -> 178
        assert_eq!(YCC.cr_r[255], 178);
        // Cb = 0 -> x = -128 -> 1.772 * -128 = -226.8 -> -227
        assert_eq!(YCC.cb_b[0], -227);
    }

    #[test]
    fn ycc_conversion_close_to_float_reference() {
        // The fixed-point result may differ from the float formula by at most 1 (G rounding
        // of a sum) and never for grey (cb = cr = 128).
        let mut max = 0;
        for y in (0..=255u8).step_by(5) {
            for cb in (0..=255u8).step_by(3) {
                for cr in (0..=255u8).step_by(7) {
                    let (r, g, b) = ycc_to_rgb_px(y, cb, cr);
                    let (rr, rg, rb) = reference_rgb(y, cb, cr);
                    max = max.max((i32::from(r) - rr).abs());
                    max = max.max((i32::from(g) - rg).abs());
                    max = max.max((i32::from(b) - rb).abs());
                }
            }
            assert_eq!(ycc_to_rgb_px(y, 128, 128), (y, y, y));
        }
        assert!(max <= 1, "max deviation {max}");
        // hand-worked: Y=100, Cb=50, Cr=200: R = 100 + round(1.402*72 = 100.944) = 201,
        // B = 100 + round(1.772*-78 = -138.216) = -38 -> 0,
        // G = 100 + floor((-22554*-78 + 32768 - 46802*72) / 65536) = 100 + floor(-24.07) = 75
        assert_eq!(ycc_to_rgb_px(100, 50, 200), (201, 75, 0));
    }

    #[test]
    fn in_place_conversion_equals_tables() {
        let mut px = Vec::new();
        let mut want = Vec::new();
        for y in (0..=255u8).step_by(15) {
            for cb in 0..=255u8 {
                for cr in (0..=255u8).step_by(5) {
                    px.extend_from_slice(&[y, cb, cr]);
                    let (r, g, b) = ycc_to_rgb_px(y, cb, cr);
                    want.extend_from_slice(&[b, g, r]);
                }
            }
        }
        let mut portable = px.clone();
        ycc_to_bgr_in_place(&mut px);
        assert_eq!(px, want);
        ycc_to_bgr_portable(&mut portable);
        assert_eq!(portable, want);
    }

    #[test]
    fn dispatched_conversion_equals_portable_at_every_length() {
        // Lengths around the vector widths, and a tail that is not a whole pixel.
        let src: Vec<u8> = (0..3 * 300 + 2)
            .map(|i: usize| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        for len in (0..200).chain([3 * 300, 3 * 300 + 2]) {
            let (mut a, mut b) = (src[..len].to_vec(), src[..len].to_vec());
            ycc_to_bgr_in_place(&mut a);
            ycc_to_bgr_portable(&mut b);
            assert_eq!(a, b, "length {len}");
            assert_eq!(
                a[len / 3 * 3..],
                src[len / 3 * 3..len],
                "tail of length {len}"
            );
        }
    }

    #[test]
    fn cmyk_formula_matches_opencv() {
        // k - ((255 - v) * k >> 8): v = 255 (no ink, inverted) -> k; v = 0 -> k - (255k >> 8)
        let img = cmyk_to_bgr(1, 2, &[255, 0, 128, 200, 10, 20, 30, 0]);
        // pixel 0: k = 200: c=255 -> 200 (R), m=0 -> 200 - 199 = 1 (G), y=128 -> 200 - 99 = 101
        assert_eq!(&img.data[..3], &[101, 1, 200]);
        // pixel 1: k = 0 -> all 0
        assert_eq!(&img.data[3..], &[0, 0, 0]);
    }

    #[test]
    fn image_new_checks_length() {
        assert!(Image::new(2, 3, 3, vec![0; 18]).is_ok());
        assert!(Image::new(2, 3, 3, vec![0; 17]).is_err());
        assert!(Image::new(usize::MAX, 3, 3, vec![]).is_err());
    }
}
