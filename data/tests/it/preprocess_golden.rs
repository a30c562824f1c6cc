//! End-to-end check against the golden SqueezeNet inputs in `../shared` (made by an OpenCV
//! pipeline: libjpeg decode + INTER_AREA + centre crop + normalize). Skipped, with a message,
//! when `../shared` is absent.
//!
//! - With our decoder (zune-jpeg) the inputs differ by the JPEG decoder's few-LSB deviations
//!   only; the test prints the per-image max / mean absolute difference.
//! - With OpenCV's own decoded pixels (dumped by `fixtures/dump_cv2_decoded.py`, looked up in
//!   `$C2Q_CV2_DECODED` or `/tmp/c2q_cv2_decoded`), resize + crop + normalize must reproduce
//!   the golden inputs to 1e-4.

use std::path::{Path, PathBuf};

use caffe2_proto::{Datum, Message, TensorProto};
use data::{decode_bgr, Image, Lmdb, Preprocess};

const SHARED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared");
const N_GOLDEN: usize = 5;

fn shared_root() -> Option<PathBuf> {
    let root = Path::new(SHARED);
    let ok = root.join("data/imagenet100/data.mdb").is_file()
        && root
            .join("models/squeezenet1_1/golden/0_input.pb")
            .is_file();
    if ok {
        Some(root.to_path_buf())
    } else {
        eprintln!("skipping: {SHARED} (imagenet100 LMDB + squeezenet golden) not found");
        None
    }
}

fn golden(root: &Path, k: usize) -> TensorProto {
    let path = root.join(format!("models/squeezenet1_1/golden/{k}_input.pb"));
    let (t, _) = caffe2_proto::read_tensor(&path).unwrap();
    assert_eq!(t.dims, vec![1, 3, 224, 224], "{}", path.display());
    assert_eq!(t.float_data.len(), 3 * 224 * 224);
    t
}

fn diff(a: &[f32], b: &[f32]) -> (f32, f64) {
    let mut max = 0f32;
    let mut sum = 0f64;
    for (x, y) in a.iter().zip(b) {
        let d = (x - y).abs();
        max = max.max(d);
        sum += f64::from(d);
    }
    (max, sum / a.len() as f64)
}

#[test]
fn golden_inputs_with_our_decoder() {
    let Some(root) = shared_root() else { return };
    let db = Lmdb::open(root.join("data/imagenet100")).unwrap();
    let pp = Preprocess::default();
    let mut worst = 0f32;
    for (k, rec) in db.iter().take(N_GOLDEN).enumerate() {
        let (key, value) = rec.unwrap();
        let key = String::from_utf8_lossy(&key).into_owned();
        let g = golden(&root, k);
        assert_eq!(g.name(), key, "golden {k} belongs to another record");
        let datum = Datum::parse_from_bytes(&value).unwrap();
        assert!(datum.encoded());
        let img = decode_bgr(datum.data(), &key).unwrap();
        let mut out = vec![0f32; pp.image_len()];
        pp.apply(&img, &mut out).unwrap();
        let (max, mean) = diff(&out, &g.float_data);
        eprintln!(
            "golden {k} {key} ({}x{}): max |diff| {max:.5}, mean |diff| {mean:.6} (normalized units)",
            img.width, img.height
        );
        // One 8-bit step is 1/57.x = 0.0175 here; decoder deviations are a few steps at most
        // and mostly averaged away by the resize.
        assert!(max <= 0.06, "golden {k}: max diff {max}");
        assert!(mean <= 1e-3, "golden {k}: mean diff {mean}");
        worst = worst.max(max);
    }
    eprintln!("worst max |diff| over {N_GOLDEN} golden inputs: {worst:.5}");
}

#[test]
fn golden_inputs_with_opencv_decoded_pixels() {
    let Some(root) = shared_root() else { return };
    let dir = std::env::var_os("C2Q_CV2_DECODED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/c2q_cv2_decoded"));
    if !dir.join(format!("{}.bgr", N_GOLDEN - 1)).is_file() {
        eprintln!(
            "skipping: no OpenCV-decoded pixels in {} (run data/tests/fixtures/dump_cv2_decoded.py)",
            dir.display()
        );
        return;
    }
    let pp = Preprocess::default();
    for k in 0..N_GOLDEN {
        let meta = std::fs::read_to_string(dir.join(format!("{k}.txt"))).unwrap();
        let f: Vec<&str> = meta.split_whitespace().collect();
        let (key, h, w): (&str, usize, usize) =
            (f[0], f[1].parse().unwrap(), f[2].parse().unwrap());
        let g = golden(&root, k);
        assert_eq!(g.name(), key);
        let bgr = std::fs::read(dir.join(format!("{k}.bgr"))).unwrap();
        let img = Image::new(h, w, 3, bgr).unwrap();
        let mut out = vec![0f32; pp.image_len()];
        pp.apply(&img, &mut out).unwrap();
        let (max, mean) = diff(&out, &g.float_data);
        eprintln!("golden {k} {key} from OpenCV pixels: max |diff| {max:e}, mean |diff| {mean:e}");
        assert!(max <= 1e-4, "golden {k}: max diff {max}");
    }
}

/// Our decoder against OpenCV's decoded pixels, both through the same preprocessing, for
/// every record dumped by `fixtures/dump_cv2_decoded.py` (run it with N=100 for all).
#[test]
fn decoder_vs_opencv_after_preprocessing() {
    let Some(root) = shared_root() else { return };
    let dir = std::env::var_os("C2Q_CV2_DECODED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/c2q_cv2_decoded"));
    if !dir.join("0.bgr").is_file() {
        eprintln!("skipping: no OpenCV-decoded pixels in {}", dir.display());
        return;
    }
    let db = Lmdb::open(root.join("data/imagenet100")).unwrap();
    let pp = Preprocess::default();
    let (mut worst, mut mean_sum, mut n) = (0f32, 0f64, 0usize);
    for (k, rec) in db.iter().enumerate() {
        let bgr_path = dir.join(format!("{k}.bgr"));
        if !bgr_path.is_file() {
            break;
        }
        let (key, value) = rec.unwrap();
        let key = String::from_utf8_lossy(&key).into_owned();
        let meta = std::fs::read_to_string(dir.join(format!("{k}.txt"))).unwrap();
        let f: Vec<&str> = meta.split_whitespace().collect();
        assert_eq!(f[0], key);
        let (h, w): (usize, usize) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        let cv = Image::new(h, w, 3, std::fs::read(&bgr_path).unwrap()).unwrap();
        let datum = Datum::parse_from_bytes(&value).unwrap();
        let ours = decode_bgr(datum.data(), &key).unwrap();
        assert_eq!((ours.height, ours.width), (h, w), "{key}");
        let mut a = vec![0f32; pp.image_len()];
        let mut b = vec![0f32; pp.image_len()];
        pp.apply(&ours, &mut a).unwrap();
        pp.apply(&cv, &mut b).unwrap();
        let (max, mean) = diff(&a, &b);
        let px = ours
            .data
            .iter()
            .zip(&cv.data)
            .map(|(x, y)| x.abs_diff(*y))
            .max()
            .unwrap_or(0);
        eprintln!("{k:3} {key} {w}x{h}: decoded max |diff| {px} LSB; preprocessed max {max:.5} mean {mean:.6}");
        assert!(max <= 0.1, "{key}: max diff {max}");
        assert!(mean <= 8e-3, "{key}: mean diff {mean}");
        worst = worst.max(max);
        mean_sum += mean;
        n += 1;
    }
    eprintln!(
        "{n} images: worst max |diff| {worst:.5}, average mean |diff| {:.6}",
        mean_sum / n.max(1) as f64
    );
}
