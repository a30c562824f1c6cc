//! `Preprocess` and `target_size` against hand-worked values and naive reference loops.

use data::preprocess::target_size;
use data::{resize_area, ChannelOrder, Image, Layout, Preprocess};

/// A test image with a distinct, formula-known value per (row, column, channel).
fn pattern(h: usize, w: usize, cn: usize) -> Image {
    let mut data = Vec::new();
    for y in 0..h {
        for x in 0..w {
            for c in 0..cn {
                data.push(((y * 37 + x * 11 + c * 71) % 256) as u8);
            }
        }
    }
    Image::new(h, w, cn, data).unwrap()
}

/// Naive crop + normalize of an image already at its target size, written independently:
/// plain division by std (the std values used below are powers of two, so `/ s` and
/// `* (1 / s)` are the same float), `order` picks the source channel of each plane.
fn reference(img: &Image, pp: &Preprocess) -> Vec<f32> {
    let crop = pp.crop;
    let y0 = (img.height - crop) / 2;
    let x0 = (img.width - crop) / 2;
    let mut planes = vec![vec![0f32; crop * crop]; 3];
    for (p, plane) in planes.iter_mut().enumerate() {
        let c = if pp.order == ChannelOrder::Rgb {
            2 - p
        } else {
            p
        };
        for y in 0..crop {
            for x in 0..crop {
                let idx = ((y0 + y) * img.width + (x0 + x)) * img.channels;
                let v = if img.channels == 1 {
                    img.data[idx]
                } else {
                    img.data[idx + c]
                };
                plane[y * crop + x] = (f32::from(v) - pp.mean[c]) / pp.std[c];
            }
        }
    }
    match pp.layout {
        Layout::Nchw => planes.concat(),
        Layout::Nhwc => (0..crop * crop)
            .flat_map(|i| [planes[0][i], planes[1][i], planes[2][i]])
            .collect(),
    }
}

fn params(scale: usize, crop: usize) -> Preprocess {
    Preprocess {
        scale,
        crop,
        mean: [10.0, 20.5, 30.25],
        std: [2.0, 4.0, 0.5],
        order: ChannelOrder::Bgr,
        layout: Layout::Nchw,
    }
}

fn run(pp: &Preprocess, img: &Image) -> Vec<f32> {
    let mut out = vec![f32::NAN; pp.image_len()];
    pp.apply(img, &mut out).unwrap();
    out
}

#[test]
fn target_size_hand_worked() {
    // (height, width, scale) -> (new height, new width)
    // 500x375 (w x h) landscape: 500 * 256 / 375 = 341.33 -> 341
    assert_eq!(target_size(375, 500, 256), (256, 341));
    // portrait: 500 * 256 / 375 rows
    assert_eq!(target_size(500, 375, 256), (341, 256));
    // 500 * 256 / 376 = 340.43 -> 340; 500 * 256 / 308 = 415.58 -> 415
    assert_eq!(target_size(376, 500, 256), (256, 340));
    assert_eq!(target_size(308, 500, 256), (256, 415));
    // exact quotient: 400 * 240 / 300 = 320
    assert_eq!(target_size(300, 400, 240), (240, 320));
    // square -> the "landscape" branch, both sides = scale
    assert_eq!(target_size(300, 300, 256), (256, 256));
    // enlarging: 20 * 224 / 10 = 448
    assert_eq!(target_size(10, 20, 224), (224, 448));
    // 2 rows x 1 column: portrait, 2 * 3 / 1 = 6
    assert_eq!(target_size(2, 1, 3), (6, 3));
    assert_eq!(target_size(0, 5, 256), (0, 0));
}

#[test]
fn target_size_uses_float32() {
    // 5123 * 4096 / 2049 = 10240.9995... exactly (10240 in f64 or integer arithmetic),
    // but in float32 the product 20_983_808 rounds (> 2^24) and the quotient to 10241.
    assert_eq!((5123u64 * 4096) / 2049, 10240);
    assert_eq!((5123.0f64 * 4096.0 / 2049.0) as usize, 10240);
    assert_eq!(target_size(2049, 5123, 4096), (4096, 10241));
    assert_eq!(target_size(5123, 2049, 4096), (10241, 4096));
    // 5651 * 4096 / 333 = 69508.6: float32 gives 69509
    assert_eq!((5651u64 * 4096) / 333, 69508);
    assert_eq!(target_size(333, 5651, 4096), (4096, 69509));
}

#[test]
fn crop_offsets_floor_without_resize() {
    // 5 x 7 at scale 5 is already at its target size (7 * 5 / 5 = 7): no resize.
    // Offsets: x0 = (7 - 2) / 2 = 2, y0 = (5 - 2) / 2 = 1.
    let img = pattern(5, 7, 3);
    let pp = params(5, 2);
    let out = run(&pp, &img);
    // Hand-worked corner: plane 0 (B), output (0, 0) = source (1, 2) channel 0:
    // (1 * 37 + 2 * 11) = 59 -> (59 - 10) / 2 = 24.5
    assert_eq!(out[0], 24.5);
    // plane 2 (R), output (1, 1) = source (2, 3) channel 2: 74 + 33 + 142 = 249
    // -> (249 - 30.25) / 0.5 = 437.5
    assert_eq!(out[2 * 4 + 3], 437.5);
    assert_eq!(out, reference(&img, &pp));
}

#[test]
fn rgb_order_and_nhwc_layout() {
    let img = pattern(6, 9, 3);
    let mut pp = params(6, 4);
    let bgr = run(&pp, &img);
    pp.order = ChannelOrder::Rgb;
    let rgb = run(&pp, &img);
    assert_eq!(rgb, reference(&img, &pp));
    // Rgb only swaps planes 0 and 2 (mean/std follow the source channel).
    let n = 16;
    assert_eq!(&rgb[..n], &bgr[2 * n..]);
    assert_eq!(&rgb[n..2 * n], &bgr[n..2 * n]);
    assert_eq!(&rgb[2 * n..], &bgr[..n]);
    pp.layout = Layout::Nhwc;
    let nhwc = run(&pp, &img);
    assert_eq!(nhwc, reference(&img, &pp));
    // pixel (0, 1) of NHWC = (plane0, plane1, plane2)[1] of NCHW
    assert_eq!(&nhwc[3..6], &[rgb[1], rgb[n + 1], rgb[2 * n + 1]]);
    pp.order = ChannelOrder::Bgr;
    assert_eq!(run(&pp, &img), reference(&img, &pp));
}

#[test]
fn gray_image_uses_each_channels_mean_and_std() {
    let img = pattern(4, 4, 1);
    let pp = params(4, 2);
    let out = run(&pp, &img);
    assert_eq!(out, reference(&img, &pp));
    // source (1, 1) = 48: planes (48 - 10) / 2, (48 - 20.5) / 4, (48 - 30.25) / 0.5
    assert_eq!([out[0], out[4], out[8]], [19.0, 6.875, 35.5]);
}

#[test]
fn downscale_landscape_by_box_average() {
    // 8 x 12 at scale 4: target 4 x 6, an exact 2x2 box average, then crop 4 at x0 = 1.
    let img = pattern(8, 12, 3);
    let pp = params(4, 4);
    let mut small = vec![0u8; 4 * 6 * 3];
    for y in 0..4 {
        for x in 0..6 {
            for c in 0..3 {
                let at = |yy: usize, xx: usize| u32::from(img.data[(yy * 12 + xx) * 3 + c]);
                let s = at(2 * y, 2 * x)
                    + at(2 * y, 2 * x + 1)
                    + at(2 * y + 1, 2 * x)
                    + at(2 * y + 1, 2 * x + 1);
                small[(y * 6 + x) * 3 + c] = ((s + 2) / 4) as u8;
            }
        }
    }
    let small = Image::new(4, 6, 3, small).unwrap();
    assert_eq!(run(&pp, &img), reference(&small, &pp));
}

#[test]
fn downscale_portrait_and_square_fractional() {
    // portrait 30 x 20 at scale 8: target (12, 8); square 9 x 9 at scale 6: target (6, 6)
    for (h, w, scale, crop, th, tw) in [(30, 20, 8, 6, 12, 8), (9, 9, 6, 5, 6, 6)] {
        let img = pattern(h, w, 3);
        let pp = params(scale, crop);
        assert_eq!(target_size(h, w, scale), (th, tw));
        let resized = resize_area(&img, th, tw);
        assert_eq!(run(&pp, &img), reference(&resized, &pp), "{h}x{w}");
    }
}

#[test]
fn upscale_portrait_by_replication() {
    // 3 x 2 at scale 4: portrait, rows = 3 * 4 / 2 = 6 -> 6 x 4, an exact 2x enlargement,
    // which INTER_AREA does by pixel replication; crop 4 at y0 = 1.
    let img = pattern(3, 2, 3);
    let pp = params(4, 4);
    let mut big = vec![0u8; 6 * 4 * 3];
    for y in 0..6 {
        for x in 0..4 {
            for c in 0..3 {
                big[(y * 4 + x) * 3 + c] = img.data[((y / 2) * 2 + x / 2) * 3 + c];
            }
        }
    }
    let big = Image::new(6, 4, 3, big).unwrap();
    assert_eq!(run(&pp, &img), reference(&big, &pp));
}

#[test]
fn default_parameters_are_the_readme_values() {
    let pp = Preprocess::default();
    assert_eq!((pp.scale, pp.crop), (256, 224));
    // [0.406, 0.456, 0.485] * 255 and [0.225, 0.224, 0.229] * 255, in B, G, R order
    assert_eq!(pp.mean, [103.53, 116.28, 123.675]);
    assert_eq!(pp.std, [57.375, 57.12, 58.395]);
    assert_eq!(pp.image_len(), 3 * 224 * 224);
    // The multiply-by-reciprocal rule: value 0 in channel B is -103.53 * (1 / 57.375).
    let img = Image::zeros(256, 256, 3);
    let out = run(&pp, &img);
    assert_eq!(out[0], -103.53f32 * (1.0f32 / 57.375));
    assert_eq!(out[224 * 224 * 2], -123.675f32 * (1.0f32 / 58.395));
}

#[test]
fn invalid_parameters_and_images_are_errors() {
    let img = pattern(8, 8, 3);
    let mut out = vec![0f32; 3 * 4 * 4];
    let bad = |pp: Preprocess| pp.validate().is_err();
    assert!(bad(Preprocess {
        crop: 0,
        ..params(4, 4)
    }));
    assert!(bad(params(3, 4)));
    assert!(bad(Preprocess {
        std: [1.0, 0.0, 1.0],
        ..params(4, 4)
    }));
    assert!(bad(Preprocess {
        mean: [f32::NAN, 0.0, 1.0],
        ..params(4, 4)
    }));
    assert!(params(4, 4).validate().is_ok());
    assert!(
        params(4, 3).apply(&img, &mut out).is_err(),
        "wrong output length"
    );
    assert!(params(3, 4).apply(&img, &mut out).is_err(), "scale < crop");
    let two = Image::new(8, 8, 2, vec![0; 128]).unwrap();
    assert!(params(4, 4).apply(&two, &mut out).is_err(), "2 channels");
    let empty = Image::zeros(0, 8, 3);
    let err = params(4, 4)
        .apply(&empty, &mut out)
        .unwrap_err()
        .to_string();
    assert!(err.contains("smaller than the crop"), "{err}");
    assert!(params(4, 4).apply(&img, &mut out).is_ok());
}
