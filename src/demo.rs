//! `c2q demo`: a small example CNN and example images generated on the spot, so the main job
//! can be tried on a fresh machine with nothing downloaded.

use std::path::{Path, PathBuf};

use caffe2_proto::{io, Format, NetDef};

use crate::graph::builder::{Arg, NetBuilder};

/// Deterministic pseudo-random numbers for example weights (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-a, a).
    fn uniform(&mut self, a: f32) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
    }
    fn vec(&mut self, n: usize, a: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(a)).collect()
    }
}

/// Input side of the example net.
pub const EXAMPLE_SIZE: usize = 32;
/// Number of classes of the example net.
pub const EXAMPLE_CLASSES: usize = 10;

/// The example CNN (input `data` `[N, 3, 32, 32]` BGR, output `softmax` `[N, 10]`):
/// Conv+SpatialBN+Relu, MaxPool, a residual block (Conv+Relu, 1x1 Conv, Sum, Relu),
/// global AveragePool, FC, Softmax — the op mix of ResNet-style nets. Weights are seeded.
pub fn example_net(seed: u64) -> (NetDef, NetDef) {
    let mut r = Rng(seed);
    let c = 8;
    let mut b = NetBuilder::new("c2q_example");
    let conv = |k: i64, pad: i64| {
        vec![
            ("kernel", Arg::I(k)),
            ("pad", Arg::I(pad)),
            ("order", Arg::S("NCHW".into())),
        ]
    };
    b.input("data")
        .param("conv1_w", &[c, 3, 3, 3], r.vec(c * 27, 0.25))
        .param("conv1_b", &[c], r.vec(c, 0.1))
        .param(
            "bn1_s",
            &[c],
            (0..c).map(|i| 1.0 + 0.05 * i as f32).collect(),
        )
        .param("bn1_b", &[c], r.vec(c, 0.1))
        .param("bn1_rm", &[c], r.vec(c, 0.2))
        .param(
            "bn1_riv",
            &[c],
            (0..c).map(|i| 0.5 + 0.1 * i as f32).collect(),
        )
        .param("conv2_w", &[c, c, 3, 3], r.vec(c * c * 9, 0.15))
        .param("conv2_b", &[c], r.vec(c, 0.1))
        .param("conv3_w", &[c, c, 1, 1], r.vec(c * c, 0.3))
        .param("conv3_b", &[c], r.vec(c, 0.1))
        .param(
            "fc_w",
            &[EXAMPLE_CLASSES, c],
            r.vec(EXAMPLE_CLASSES * c, 1.0),
        )
        .param("fc_b", &[EXAMPLE_CLASSES], r.vec(EXAMPLE_CLASSES, 0.1))
        .op(
            "Conv",
            &["data", "conv1_w", "conv1_b"],
            &["conv1"],
            conv(3, 1),
        )
        .op(
            "SpatialBN",
            &["conv1", "bn1_s", "bn1_b", "bn1_rm", "bn1_riv"],
            &["conv1"],
            vec![("is_test", Arg::I(1)), ("epsilon", Arg::F(1e-5))],
        )
        .op("Relu", &["conv1"], &["conv1"], vec![])
        .op(
            "MaxPool",
            &["conv1"],
            &["pool1"],
            vec![("kernel", Arg::I(2)), ("stride", Arg::I(2))],
        )
        .op(
            "Conv",
            &["pool1", "conv2_w", "conv2_b"],
            &["conv2"],
            conv(3, 1),
        )
        .op("Relu", &["conv2"], &["conv2"], vec![])
        .op(
            "Conv",
            &["conv2", "conv3_w", "conv3_b"],
            &["conv3"],
            conv(1, 0),
        )
        .op("Sum", &["conv3", "pool1"], &["res"], vec![])
        .op("Relu", &["res"], &["res"], vec![])
        .op(
            "AveragePool",
            &["res"],
            &["pool2"],
            vec![("global_pooling", Arg::I(1))],
        )
        .op("FC", &["pool2", "fc_w", "fc_b"], &["pred"], vec![])
        .op("Softmax", &["pred"], &["softmax"], vec![])
        .output("softmax");
    b.build()
}

/// Writes the example net as `init_net.pb` and `predict_net.pb` (plus `predict_net.pbtxt` for
/// reading) into `dir`.
pub fn write_example_model(dir: &Path, seed: u64) -> crate::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::File {
        path: dir.to_path_buf(),
        msg: e.to_string(),
    })?;
    let (init, predict) = example_net(seed);
    io::write(&init, dir.join("init_net.pb"), Format::Binary)?;
    io::write(&predict, dir.join("predict_net.pb"), Format::Binary)?;
    io::write(&predict, dir.join("predict_net.pbtxt"), Format::Text)?;
    Ok(())
}

/// Writes `per_class` generated images of each of `classes` classes (PNG files under
/// `dir/images/class<c>/`) and an LMDB of them (`dir/db`, Caffe `Datum` records, labels = class
/// index); returns the LMDB path. An existing `dir/images` or `dir/db` is replaced.
pub fn write_example_db(dir: &Path, classes: usize, per_class: usize) -> crate::Result<PathBuf> {
    let file_err = |p: &Path, e: &dyn std::fmt::Display| crate::Error::File {
        path: p.to_path_buf(),
        msg: e.to_string(),
    };
    let images = dir.join("images");
    if images.exists() {
        std::fs::remove_dir_all(&images).map_err(|e| file_err(&images, &e))?;
    }
    for c in 0..classes {
        let d = images.join(format!("class{c}"));
        std::fs::create_dir_all(&d).map_err(|e| file_err(&d, &e))?;
        for k in 0..per_class {
            let path = d.join(format!("{k}.png"));
            example_image(44 + 3 * k as u32, 38 + 2 * k as u32, c)
                .save(&path)
                .map_err(|e| file_err(&path, &e))?;
        }
    }
    let db = dir.join("db");
    let opts = data::MakeDbOptions {
        format: data::RecordFormat::Datum,
        raw: None,
        overwrite: true,
    };
    data::make_db(&data::Source::Folder(images), &db, &opts, None)?;
    Ok(db)
}

/// The preprocessing that fits the example images and net: shorter side to 36, centre crop
/// 32, the zoo mean/std.
pub fn example_preprocess() -> data::Preprocess {
    data::Preprocess {
        scale: EXAMPLE_SIZE + 4,
        crop: EXAMPLE_SIZE,
        ..data::Preprocess::default()
    }
}

/// A synthetic RGB test picture: smooth colour gradients plus a disc whose position and colour
/// depend on `class`, so different classes look different.
pub fn example_image(width: u32, height: u32, class: usize) -> image::RgbImage {
    let cx = (width as f32) * (0.25 + 0.05 * (class % 10) as f32);
    let cy = (height as f32) * (0.3 + 0.04 * (class % 10) as f32);
    let rad = width.min(height) as f32 * 0.25;
    image::RgbImage::from_fn(width, height, |x, y| {
        let fx = x as f32 / width as f32;
        let fy = y as f32 / height as f32;
        let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
        if d < rad {
            let c = (class * 37 % 256) as u8;
            image::Rgb([c, 255 - c, (c / 2).wrapping_add(64)])
        } else {
            image::Rgb([
                (fx * 255.0) as u8,
                (fy * 255.0) as u8,
                ((1.0 - fx) * 128.0) as u8,
            ])
        }
    })
}
