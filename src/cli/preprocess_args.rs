//! Preprocessing flags shared by every command that reads images (defaults = zoo readme).

use clap::Args;

/// Caffe2 `image_input` parameters on the command line.
#[derive(Debug, Clone, Args)]
pub struct PreprocessArgs {
    /// Shorter side after resizing (INTER_AREA).
    #[arg(long, default_value_t = 256)]
    pub scale: usize,
    /// Side of the centre crop.
    #[arg(long, default_value_t = 224)]
    pub crop: usize,
    /// Per-channel mean in B,G,R order.
    #[arg(long, default_value = "103.53,116.28,123.675", value_parser = parse3)]
    pub mean: [f32; 3],
    /// Per-channel std in B,G,R order.
    #[arg(long, default_value = "57.375,57.12,58.395", value_parser = parse3)]
    pub std: [f32; 3],
    /// Output planes in R,G,B order instead of B,G,R.
    #[arg(long)]
    pub rgb: bool,
    /// Output NHWC instead of NCHW.
    #[arg(long)]
    pub nhwc: bool,
}

fn parse3(s: &str) -> Result<[f32; 3], String> {
    let v: Vec<f32> = s
        .split(',')
        .map(|x| {
            x.trim()
                .parse::<f32>()
                .map_err(|_| format!("bad number `{x}` in `{s}`"))
        })
        .collect::<Result<_, _>>()?;
    match v.as_slice() {
        [a] => Ok([*a; 3]),
        [a, b, c] => Ok([*a, *b, *c]),
        _ => Err(format!(
            "expected 1 or 3 comma-separated numbers, got `{s}`"
        )),
    }
}

impl PreprocessArgs {
    /// The preprocessing configuration, validated.
    pub fn to_preprocess(&self) -> anyhow::Result<data::Preprocess> {
        let p = data::Preprocess {
            scale: self.scale,
            crop: self.crop,
            mean: self.mean,
            std: self.std,
            order: if self.rgb {
                data::ChannelOrder::Rgb
            } else {
                data::ChannelOrder::Bgr
            },
            layout: if self.nhwc {
                data::Layout::Nhwc
            } else {
                data::Layout::Nchw
            },
        };
        p.validate()?;
        Ok(p)
    }
}
