//! `c2q make-db`: build an image LMDB from a folder or a `file<TAB>label` list.

use std::path::PathBuf;

use clap::Args;

use super::progress::bar;

/// Flags of `c2q make-db`.
#[derive(Debug, Args)]
pub struct MakeDbArgs {
    /// Image folder (sub-folders become labels 0, 1, ... in sorted order).
    #[arg(long, conflicts_with = "list", required_unless_present = "list")]
    pub folder: Option<PathBuf>,
    /// List file: `file<TAB>label` (or `file label`) per line.
    #[arg(long)]
    pub list: Option<PathBuf>,
    /// Folder the list's file names are relative to (default: the list's folder).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Output LMDB folder (written to a temporary folder, then renamed).
    #[arg(long)]
    pub out: PathBuf,
    /// Record format: `datum` (Caffe convert_imageset) or `tensorprotos` (Caffe2 make_image_db).
    #[arg(long, default_value = "datum")]
    pub format: data::RecordFormat,
    /// Store decoded pixels resized so the shorter side is `--scale`, instead of the files.
    #[arg(long)]
    pub raw: bool,
    /// Shorter side for `--raw`.
    #[arg(long, default_value_t = 256)]
    pub scale: usize,
    /// Replace an existing database at `--out`.
    #[arg(long)]
    pub overwrite: bool,
}

/// Runs `c2q make-db`.
pub fn run(a: MakeDbArgs) -> anyhow::Result<()> {
    let source = match (&a.folder, &a.list) {
        (Some(f), _) => data::Source::Folder(f.clone()),
        (None, Some(l)) => data::Source::List {
            list: l.clone(),
            root: a
                .root
                .clone()
                .or_else(|| l.parent().map(|p| p.to_path_buf()))
                .unwrap_or_else(|| PathBuf::from(".")),
        },
        (None, None) => anyhow::bail!("give --folder DIR or --list FILE"),
    };
    let opts = data::MakeDbOptions {
        format: a.format,
        raw: a.raw.then_some(a.scale),
        overwrite: a.overwrite,
    };
    let pb = bar(0, "writing");
    let progress = |n: usize| pb.set_position(n as u64);
    let s = data::make_db(&source, &a.out, &opts, Some(&progress))?;
    pb.finish_and_clear();
    println!(
        "wrote {} records ({} bytes of values) to {} as {}{}",
        s.count,
        s.value_bytes,
        s.path.display(),
        a.format,
        if a.raw {
            format!(", raw pixels, shorter side {}", a.scale)
        } else {
            String::new()
        }
    );
    Ok(())
}
