//! Bit-exact comparison of `resize_area` with OpenCV `cv::resize(..., INTER_AREA)`.
//!
//! The expected outputs come from `fixtures/resize_area.bin`, written by
//! `fixtures/make_resize_fixtures.py` with OpenCV (see that script for the cases).

use data::{resize_area, Image};

struct Case {
    h: usize,
    w: usize,
    cn: usize,
    nh: usize,
    nw: usize,
    kind: u32,
    src: Vec<u8>,
    dst: Vec<u8>,
}

fn u32_at(b: &[u8], pos: &mut usize) -> u32 {
    let v = u32::from_le_bytes(b[*pos..*pos + 4].try_into().unwrap());
    *pos += 4;
    v
}

fn load_cases() -> Vec<Case> {
    let bytes = include_bytes!("../fixtures/resize_area.bin");
    assert_eq!(&bytes[..8], b"C2QRSZ1\n");
    let mut pos = 8;
    let n = u32_at(bytes, &mut pos);
    let mut cases = Vec::new();
    for _ in 0..n {
        let h = u32_at(bytes, &mut pos) as usize;
        let w = u32_at(bytes, &mut pos) as usize;
        let cn = u32_at(bytes, &mut pos) as usize;
        let nh = u32_at(bytes, &mut pos) as usize;
        let nw = u32_at(bytes, &mut pos) as usize;
        let kind = u32_at(bytes, &mut pos);
        let src = bytes[pos..pos + h * w * cn].to_vec();
        pos += h * w * cn;
        let dst = bytes[pos..pos + nh * nw * cn].to_vec();
        pos += nh * nw * cn;
        cases.push(Case {
            h,
            w,
            cn,
            nh,
            nw,
            kind,
            src,
            dst,
        });
    }
    assert_eq!(pos, bytes.len(), "trailing bytes in fixture file");
    cases
}

#[test]
fn matches_opencv_inter_area_bit_exact() {
    let cases = load_cases();
    assert!(cases.len() >= 50);
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let src = Image::new(c.h, c.w, c.cn, c.src.clone()).unwrap();
        let out = resize_area(&src, c.nh, c.nw);
        assert_eq!((out.height, out.width, out.channels), (c.nh, c.nw, c.cn));
        let diff = out.data.iter().zip(&c.dst).filter(|(a, b)| a != b).count();
        if diff > 0 {
            let first = out
                .data
                .iter()
                .zip(&c.dst)
                .position(|(a, b)| a != b)
                .unwrap();
            failures.push(format!(
                "case {i}: {}x{}x{} -> {}x{} (kind {}): {diff} of {} bytes differ, first at {first}: got {} want {}",
                c.h, c.w, c.cn, c.nh, c.nw, c.kind, c.dst.len(), out.data[first], c.dst[first]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every path of `cv::resize` appears in the fixture set (guards against a regenerated file
/// silently losing coverage).
#[test]
fn fixtures_cover_all_paths() {
    let cases = load_cases();
    let is_int = |s: usize, d: usize| s.is_multiple_of(d);
    let down = |c: &Case| c.nh <= c.h && c.nw <= c.w;
    assert!(cases.iter().any(|c| down(c)
        && is_int(c.h, c.nh)
        && is_int(c.w, c.nw)
        && c.h == 2 * c.nh
        && c.w == 2 * c.nw));
    assert!(cases
        .iter()
        .any(|c| down(c) && c.h == 4 * c.nh && c.w == 4 * c.nw));
    assert!(cases
        .iter()
        .any(|c| down(c) && !is_int(c.h, c.nh) && !is_int(c.w, c.nw)));
    assert!(cases.iter().any(|c| c.nh > c.h && c.nw > c.w));
    assert!(cases.iter().any(|c| c.nh < c.h && c.nw > c.w));
    assert!(cases.iter().any(|c| c.nh > c.h && c.nw < c.w));
    for cn in [1, 2, 3, 4] {
        assert!(cases.iter().any(|c| c.cn == cn), "no {cn}-channel case");
    }
}

/// `resize_area_window` gives the same bytes as cropping the full resize, for every fixture
/// size and a spread of windows (including empty and out-of-range ones, which are clamped).
#[test]
fn window_equals_crop_of_full_resize() {
    use data::resize_area_window;
    for c in load_cases() {
        let src = Image::new(c.h, c.w, c.cn, c.src.clone()).unwrap();
        let full = resize_area(&src, c.nh, c.nw);
        let windows = [
            (0, c.nh, 0, c.nw),
            (c.nh / 3, c.nh, c.nw / 2, c.nw),
            (
                0,
                c.nh.div_ceil(2),
                c.nw / 4,
                c.nw.saturating_sub(1).max(c.nw / 4),
            ),
            (c.nh / 2, c.nh / 2 + 1, c.nw / 2, c.nw / 2 + 1),
            (1, 1, 0, c.nw),
            (0, c.nh + 5, 2, c.nw + 9),
        ];
        for (y0, y1, x0, x1) in windows {
            let win = resize_area_window(&src, c.nh, c.nw, y0..y1, x0..x1);
            let (y1, x1) = (y1.min(c.nh), x1.min(c.nw));
            let (y0, x0) = (y0.min(y1), x0.min(x1));
            assert_eq!((win.height, win.width), (y1 - y0, x1 - x0));
            let mut want = Vec::new();
            for y in y0..y1 {
                want.extend_from_slice(&full.row(y).unwrap()[x0 * c.cn..x1 * c.cn]);
            }
            assert_eq!(
                win.data, want,
                "{}x{} -> {}x{} window {y0}..{y1} x {x0}..{x1}",
                c.h, c.w, c.nh, c.nw
            );
        }
    }
}
