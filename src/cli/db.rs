//! `c2q db info`, `c2q db ls` and `c2q db show`: look inside an image LMDB.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;

use super::preprocess_args::PreprocessArgs;
use super::progress::bar;

/// `c2q db` subcommands.
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Count, record format, label histogram and image size range of an LMDB.
    Info(DbInfoArgs),
    /// List records in key order: key, label, stored bytes, image kind and size.
    Ls(DbLsArgs),
    /// Write one record's image as a picture: the preprocessed crop, de-normalized, or with
    /// --original the stored image.
    Show(DbShowArgs),
    /// Read, decode and preprocess records in batches and report images/s (the input
    /// pipeline alone, no model).
    Bench(DbBenchArgs),
}

/// Flags of `c2q db bench`.
#[derive(Debug, Args)]
pub struct DbBenchArgs {
    /// The LMDB folder (or its data.mdb).
    pub db: PathBuf,
    /// Images per batch.
    #[arg(long, default_value_t = 32, value_parser = super::parse_batch)]
    pub batch: usize,
    /// Worker threads for decoding and preprocessing (0 = all cores).
    #[arg(long, default_value_t = 0, value_parser = super::parse_threads)]
    pub threads: usize,
    /// Read at most this many records.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Passes over the records (the median pass is reported).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Skip undecodable or malformed records (counted and listed) instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
    /// Record format; detected when omitted.
    #[arg(long)]
    pub format: Option<data::RecordFormat>,
    /// Preprocessing.
    #[command(flatten)]
    pub pre: PreprocessArgs,
}

/// Flags of `c2q db info`.
#[derive(Debug, Args)]
pub struct DbInfoArgs {
    /// The LMDB folder (or its data.mdb).
    pub db: PathBuf,
    /// Record format (`datum` or `tensorprotos`); detected when omitted.
    #[arg(long)]
    pub format: Option<data::RecordFormat>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Print every label's count (default: a summary).
    #[arg(long)]
    pub labels: bool,
}

/// Flags of `c2q db ls`.
#[derive(Debug, Args)]
pub struct DbLsArgs {
    /// The LMDB folder (or its data.mdb).
    pub db: PathBuf,
    /// Start at the first key at or after this one.
    #[arg(long)]
    pub from: Option<String>,
    /// List at most this many records.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Record format (`datum` or `tensorprotos`); detected when omitted.
    #[arg(long)]
    pub format: Option<data::RecordFormat>,
    /// Machine-readable output (one JSON array).
    #[arg(long)]
    pub json: bool,
}

/// Flags of `c2q db show`.
#[derive(Debug, Args)]
pub struct DbShowArgs {
    /// The LMDB folder (or its data.mdb).
    pub db: PathBuf,
    /// The record's key.
    #[arg(long)]
    pub key: String,
    /// Output picture (PNG or JPEG by extension).
    #[arg(long)]
    pub out: PathBuf,
    /// Write the stored image as it is (decoded, full size) instead of the preprocessed
    /// crop.
    #[arg(long)]
    pub original: bool,
    /// Record format; detected when omitted.
    #[arg(long)]
    pub format: Option<data::RecordFormat>,
    /// Preprocessing.
    #[command(flatten)]
    pub pre: PreprocessArgs,
}

/// Runs a `c2q db` subcommand.
pub fn run(cmd: DbCommand) -> anyhow::Result<()> {
    match cmd {
        DbCommand::Info(a) => info(a),
        DbCommand::Ls(a) => ls(a),
        DbCommand::Show(a) => show(a),
        DbCommand::Bench(a) => bench(a),
    }
}

fn info(a: DbInfoArgs) -> anyhow::Result<()> {
    let db = data::Lmdb::open(&a.db)?;
    let pb = bar(db.len()? as u64, "scanning");
    let progress = |n: usize| pb.set_position(n as u64);
    let info = data::db_info(&db, a.format, Some(&progress))?;
    pb.finish_and_clear();
    if a.json {
        let j = json!({
            "path": info.path, "count": info.count, "format": info.format.to_string(),
            "labels": info.labels.iter().map(|(l, c)| json!({"label": l, "count": c})).collect::<Vec<_>>(),
            "float_labels": info.float_labels, "encoded": info.encoded, "raw": info.raw,
            "kinds": info.kinds, "width": info.width, "height": info.height,
            "bad": info.bad.iter().map(|b| json!({"key": b.key, "reason": b.reason})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    println!("database: {}", info.path.display());
    println!("records:  {}", info.count);
    println!("format:   {}", info.format);
    println!("payload:  {} encoded, {} raw", info.encoded, info.raw);
    for (k, c) in &info.kinds {
        println!("  {k:<10} {c}");
    }
    if let (Some((wmin, wmax)), Some((hmin, hmax))) = (info.width, info.height) {
        println!("width:    {wmin}..{wmax}");
        println!("height:   {hmin}..{hmax}");
    }
    let n_labels = info.labels.len();
    if let (Some((lo, _)), Some((hi, _))) =
        (info.labels.iter().next(), info.labels.iter().next_back())
    {
        println!("labels:   {n_labels} distinct, {lo}..{hi}");
    }
    if info.float_labels > 0 {
        println!(
            "          ({} float labels, rounded in the histogram)",
            info.float_labels
        );
    }
    if a.labels {
        for (l, c) in &info.labels {
            println!("  {l:>6} {c}");
        }
    }
    if !info.bad.is_empty() {
        println!("bad records: {}", info.bad.len());
        for b in info.bad.iter().take(20) {
            println!("  {}: {}", b.key, b.reason);
        }
    }
    Ok(())
}

fn ls(a: DbLsArgs) -> anyhow::Result<()> {
    let db = data::Lmdb::open(&a.db)?;
    let entries = data::list_records(&db, a.format, a.from.as_deref(), a.limit)?;
    if a.json {
        let j: Vec<_> = entries
            .iter()
            .map(|e| {
                json!({"key": e.key, "bytes": e.bytes, "label": e.label, "kind": e.kind,
                       "height": e.size.map(|s| s.0), "width": e.size.map(|s| s.1),
                       "problem": e.problem})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    let width = entries
        .iter()
        .map(|e| e.key.len())
        .max()
        .unwrap_or(3)
        .max(3);
    println!(
        "{:<width$} {:>7} {:>9} {:>5} {:>11}",
        "key", "label", "bytes", "kind", "HxW"
    );
    for e in &entries {
        let label = e.label.map_or("?".to_string(), |l| l.to_string());
        let size = e.size.map_or("?".to_string(), |(h, w)| format!("{h}x{w}"));
        print!(
            "{:<width$} {:>7} {:>9} {:>5} {:>11}",
            e.key,
            label,
            e.bytes,
            e.kind.as_deref().unwrap_or("?"),
            size
        );
        match &e.problem {
            Some(p) => println!("  ({p})"),
            None => println!(),
        }
    }
    Ok(())
}

fn show(a: DbShowArgs) -> anyhow::Result<()> {
    let db = data::Lmdb::open(&a.db)?;
    let (img, what) = if a.original {
        let img = data::db_info::original_image(&db, &a.key, a.format)?;
        let what = format!("stored {}x{} image", img.width, img.height);
        // Stored images are BGR (or gray): the picture is RGB.
        let rgb: Vec<u8> = match img.channels {
            3 => img
                .data
                .chunks_exact(3)
                .flat_map(|p| [p[2], p[1], p[0]])
                .collect(),
            1 => img.data.iter().flat_map(|&g| [g, g, g]).collect(),
            c => anyhow::bail!("record `{}`: cannot show an image of {c} channels", a.key),
        };
        (
            data::Image {
                data: rgb,
                channels: 3,
                ..img
            },
            what,
        )
    } else {
        let pre = a.pre.to_preprocess()?;
        let img = data::db_info::preprocessed_rgb(&db, &a.key, a.format, &pre)?;
        let what = format!("{}x{} crop", img.width, img.height);
        (img, what)
    };
    let rgb = image::RgbImage::from_raw(img.width as u32, img.height as u32, img.data)
        .ok_or_else(|| anyhow::anyhow!("internal: image buffer size mismatch"))?;
    let tmp = a.out.with_file_name(format!(
        ".{}.tmp{}",
        a.out
            .file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let fmt = image::ImageFormat::from_path(&a.out).unwrap_or(image::ImageFormat::Png);
    rgb.save_with_format(&tmp, fmt)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.out.display()))?;
    std::fs::rename(&tmp, &a.out).map_err(|e| anyhow::anyhow!("{}: {e}", a.out.display()))?;
    println!("wrote {} ({what} of `{}`)", a.out.display(), a.key);
    Ok(())
}

fn bench(a: DbBenchArgs) -> anyhow::Result<()> {
    let opts = data::BatchOptions {
        batch_size: a.batch.max(1),
        limit: a.limit,
        skip_bad: a.skip_bad,
        format: a.format,
        preprocess: a.pre.to_preprocess()?,
        ..data::BatchOptions::default()
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads)
        .build()?;
    let threads = pool.current_num_threads();
    let mut rates = Vec::new();
    let mut last_skipped = Vec::new();
    let mut images = 0;
    for _ in 0..a.repeat.max(1) {
        let (n, secs, skipped) = pool.install(|| -> anyhow::Result<_> {
            let mut batches = data::Batches::open(&a.db, opts.clone())?;
            let pb = bar(batches.planned() as u64, "decoding");
            let t0 = std::time::Instant::now();
            let mut n = 0;
            for b in batches.by_ref() {
                n += b?.n;
                pb.set_position(n as u64);
            }
            pb.finish_and_clear();
            Ok((n, t0.elapsed().as_secs_f64(), batches.skipped()))
        })?;
        images = n;
        rates.push(n as f64 / secs);
        last_skipped = skipped;
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    println!(
        "{images} images, {threads} threads, batch {}: median {median:.1} images/s over {} passes (min {:.1}, max {:.1})",
        a.batch,
        rates.len(),
        rates[0],
        rates[rates.len() - 1]
    );
    if !last_skipped.is_empty() {
        println!("skipped {} bad records:", last_skipped.len());
        for s in &last_skipped {
            println!("  {}: {}", s.key, s.reason);
        }
    }
    Ok(())
}
