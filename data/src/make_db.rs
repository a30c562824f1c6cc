//! Building an LMDB of images, as Caffe's `convert_imageset` and Caffe2's `make_image_db` do.
//!
//! Inputs: a folder (searched recursively, sorted by relative path; the label is the index of
//! the top-level sub-folder among the sorted top-level sub-folders, 0 for files directly in
//! the folder) or a list file of `file<TAB>label` / `file label` lines (split at the last
//! space or tab, as `convert_imageset` does, so names may contain spaces).
//!
//! Record `i` (0-based, in input order) gets the key `%08d_<name>` where `<name>` is the file
//! name as written in the list (or the `/`-separated path relative to the folder). Values:
//! - [`RecordFormat::Datum`]: `Datum{data = file bytes, label, encoded = true}`
//!   (`convert_imageset --encoded` without re-encoding); with `raw = Some(scale)`, the image is
//!   decoded, its shorter side resized to `scale` with INTER_AREA (the size rule of
//!   [`target_size`], as in preprocessing) and the pixels stored as a raw `Datum` (CHW, BGR,
//!   `encoded = false`).
//! - [`RecordFormat::TensorProtos`]: `protos[0]` STRING dims `[1]` with the file bytes, `protos[1]`
//!   INT32 dims `[1]` with the label; with `raw`, `protos[0]` is BYTE dims `[H, W, 3]` (HWC BGR).
//!
//! Encoded mode stores the files as they are, without checking that they decode.
//!
//! The database is written into a temporary folder beside the target and renamed into place
//! at the end, so the target never holds a partial database. An existing target is an error
//! unless `overwrite` is set, and even then only a folder holding nothing but `data.mdb` /
//! `lock.mdb` is replaced. The map grows (doubling) whenever it fills up.

use std::fs;
use std::path::{Path, PathBuf};

use heed::types::Bytes;
use heed::{CommitOrAbort, Database, Env, EnvOpenOptions, MdbError};
use rayon::prelude::*;

use crate::image::{decode_bgr, Image};
use crate::preprocess::target_size;
use crate::record::RecordFormat;
use crate::record::{datum_encoded, datum_raw, tensor_protos_encoded, tensor_protos_raw};
use crate::resize::resize_area;
use crate::{DataError, DataResult};

/// One input image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// The name as written in the list (or relative to the folder); used in the key.
    pub name: String,
    /// Where the file is read from.
    pub path: PathBuf,
    /// Its label.
    pub label: i32,
}

/// Where the images come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An image folder (see the module docs for labels and order).
    Folder(PathBuf),
    /// A list file; names are relative to `root`.
    List {
        /// The list file.
        list: PathBuf,
        /// Folder the names are relative to.
        root: PathBuf,
    },
}

/// How to write the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MakeDbOptions {
    /// Record format.
    pub format: RecordFormat,
    /// Store decoded pixels with the shorter side resized to this length (raw records).
    pub raw: Option<usize>,
    /// Replace an existing database at the target.
    pub overwrite: bool,
}

impl Default for MakeDbOptions {
    fn default() -> Self {
        MakeDbOptions {
            format: RecordFormat::Datum,
            raw: None,
            overwrite: false,
        }
    }
}

/// What [`make_db`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MakeDbSummary {
    /// The database folder.
    pub path: PathBuf,
    /// Number of records.
    pub count: usize,
    /// Total bytes of record values.
    pub value_bytes: u64,
}

/// File extensions (lower case) taken from folders.
const IMAGE_EXTS: &[&str] = &["jpg", "jpeg", "jpe", "jfif", "png"];

/// Maximum folder nesting followed (guards against symlink cycles).
const MAX_DEPTH: usize = 64;

/// Records per write transaction (and per parallel preparation step).
const CHUNK: usize = 64;

fn io_err(path: &Path, source: std::io::Error) -> DataError {
    DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
}

fn is_image_name(name: &str) -> bool {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Sorted non-hidden entries of a folder as (name, path, is_dir).
fn read_dir_sorted(dir: &Path) -> DataResult<Vec<(String, PathBuf, bool)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let path = entry.path();
        let name = entry.file_name().into_string().map_err(|_| {
            DataError::Config(format!("{}: file name is not valid UTF-8", path.display()))
        })?;
        if is_hidden(&name) {
            continue;
        }
        let is_dir = fs::metadata(&path).map_err(|e| io_err(&path, e))?.is_dir();
        out.push((name, path, is_dir));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn collect_images(
    dir: &Path,
    rel: &str,
    depth: usize,
    out: &mut Vec<(String, PathBuf)>,
) -> DataResult<()> {
    if depth > MAX_DEPTH {
        return Err(DataError::Config(format!(
            "{}: folders nested deeper than {MAX_DEPTH} levels (symlink cycle?)",
            dir.display()
        )));
    }
    for (name, path, is_dir) in read_dir_sorted(dir)? {
        let rel_name = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if is_dir {
            collect_images(&path, &rel_name, depth + 1, out)?;
        } else if is_image_name(&name) {
            out.push((rel_name, path));
        }
    }
    Ok(())
}

/// Lists the images of a folder (recursively, `jpg/jpeg/jpe/jfif/png`, hidden entries
/// ignored), sorted by relative path. Label = index of the top-level sub-folder among the
/// sorted non-hidden top-level sub-folders; 0 for files directly in `root`.
pub fn entries_from_folder(root: &Path) -> DataResult<Vec<ListEntry>> {
    let top = read_dir_sorted(root)?;
    let mut out = Vec::new();
    let mut class = 0usize;
    let mut files = Vec::new();
    for (name, path, is_dir) in top {
        if is_dir {
            let label = i32::try_from(class)
                .map_err(|_| DataError::Config("too many class folders".into()))?;
            let mut imgs = Vec::new();
            collect_images(&path, &name, 1, &mut imgs)?;
            out.extend(imgs.into_iter().map(|(n, p)| (n, p, label)));
            class += 1;
        } else if is_image_name(&name) {
            files.push((name, path, 0));
        }
    }
    out.extend(files);
    let mut entries: Vec<ListEntry> = out
        .into_iter()
        .map(|(name, path, label)| ListEntry { name, path, label })
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

/// Parses list-file text: one `file<TAB>label` or `file label` per line, split at the last
/// space or tab; blank lines are ignored. `root` is joined to each name. `origin` names the
/// list in errors.
pub fn parse_list(text: &str, root: &Path, origin: &Path) -> DataResult<Vec<ListEntry>> {
    let mut out = Vec::new();
    for (lineno, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.trim().is_empty() {
            continue;
        }
        let bad =
            |msg: String| DataError::Config(format!("{}:{}: {msg}", origin.display(), lineno + 1));
        let pos = line
            .rfind([' ', '\t'])
            .ok_or_else(|| bad(format!("expected `file<TAB>label`, got `{line}`")))?;
        let name = line[..pos].trim_end();
        let label_text = &line[pos + 1..];
        if name.is_empty() {
            return Err(bad("missing file name".into()));
        }
        let label: i32 = label_text
            .parse()
            .map_err(|_| bad(format!("label `{label_text}` is not an integer")))?;
        out.push(ListEntry {
            name: name.to_string(),
            path: root.join(name),
            label,
        });
    }
    Ok(out)
}

/// Reads a list file (see [`parse_list`]).
pub fn entries_from_list(list: &Path, root: &Path) -> DataResult<Vec<ListEntry>> {
    let text = crate::file::read_text_bounded(list, crate::file::MAX_TEXT_BYTES, "image list")?;
    parse_list(&text, root, list)
}

/// Builds the record value of one entry.
fn make_value(entry: &ListEntry, opts: &MakeDbOptions) -> DataResult<Vec<u8>> {
    let bytes = crate::file::read_bounded(&entry.path, crate::file::MAX_IMAGE_BYTES, "image file")?;
    match opts.raw {
        None => match opts.format {
            RecordFormat::Datum => datum_encoded(&bytes, entry.label),
            RecordFormat::TensorProtos => tensor_protos_encoded(&bytes, entry.label),
        },
        Some(scale) => {
            let img = decode_bgr(&bytes, &entry.name)?;
            if img.height == 0 || img.width == 0 {
                return Err(DataError::Decode {
                    key: entry.name.clone(),
                    msg: "image is empty".into(),
                });
            }
            let (h, w) = target_size(img.height, img.width, scale);
            crate::preprocess::check_resized(img.height, img.width, h, w).map_err(|e| {
                DataError::Decode {
                    key: entry.name.clone(),
                    msg: e.to_string(),
                }
            })?;
            let img: Image = if (h, w) == (img.height, img.width) {
                img
            } else {
                resize_area(&img, h, w)
            };
            match opts.format {
                RecordFormat::Datum => datum_raw(&img, entry.label),
                RecordFormat::TensorProtos => tensor_protos_raw(&img, entry.label),
            }
        }
    }
}

/// The key of record `index`: `%08d_<name>`.
pub fn record_key(index: usize, name: &str) -> String {
    format!("{index:08}_{name}")
}

/// Rounds up to a multiple of 1 MiB (a multiple of every common page size).
fn round_map(bytes: u64) -> usize {
    const MIB: u64 = 1 << 20;
    let r = bytes.div_ceil(MIB).max(1).saturating_mul(MIB);
    usize::try_from(r).unwrap_or(usize::MAX & !(MIB as usize - 1))
}

/// Removes the temporary folder unless disarmed.
struct TempDir {
    path: PathBuf,
    armed: bool,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

/// Checks that `out` may be replaced: a folder holding only `data.mdb` / `lock.mdb`.
fn check_replaceable(out: &Path) -> DataResult<()> {
    let meta = fs::metadata(out).map_err(|e| io_err(out, e))?;
    let refuse =
        |why: &str| DataError::Config(format!("refusing to overwrite {}: {why}", out.display()));
    if !meta.is_dir() {
        return Err(refuse("not a folder"));
    }
    for entry in fs::read_dir(out).map_err(|e| io_err(out, e))? {
        let entry = entry.map_err(|e| io_err(out, e))?;
        let name = entry.file_name();
        if name != "data.mdb" && name != "lock.mdb" {
            return Err(refuse("it holds files other than data.mdb and lock.mdb"));
        }
    }
    Ok(())
}

fn lmdb_err(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Lmdb {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

/// Writes one chunk in one transaction. `Ok(false)` means the map is full (nothing written).
fn put_chunk(
    env: &Env,
    db: Database<'static, Bytes, Bytes>,
    chunk: &[(Vec<u8>, Vec<u8>)],
    tmp: &Path,
) -> DataResult<bool> {
    let mut wtxn = env.write_txn().map_err(|e| lmdb_err(tmp, e))?;
    for (k, v) in chunk {
        match db.put(&mut wtxn, k, v) {
            Ok(()) => {}
            Err(heed::Error::Mdb(MdbError::MapFull)) => return Ok(false),
            Err(e) => {
                let k = String::from_utf8_lossy(k);
                return Err(lmdb_err(tmp, format!("writing `{k}`: {e}")));
            }
        }
    }
    match wtxn.commit() {
        Ok(()) => Ok(true),
        Err(heed::Error::Mdb(MdbError::MapFull)) => Ok(false),
        Err(e) => Err(lmdb_err(tmp, e)),
    }
}

/// LMDB creates its files with mode 0600; give them the usual 0644 so other users can read
/// the database, as with databases written by Caffe or Python.
#[cfg(unix)]
fn make_readable(dir: &Path) -> DataResult<()> {
    use std::os::unix::fs::PermissionsExt;
    for name in ["data.mdb", "lock.mdb"] {
        let p = dir.join(name);
        if p.exists() {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o644))
                .map_err(|e| io_err(&p, e))?;
        }
    }
    Ok(())
}

/// Nothing to do where LMDB does not restrict file modes.
#[cfg(not(unix))]
fn make_readable(_dir: &Path) -> DataResult<()> {
    Ok(())
}

/// A database being written in a temporary folder beside its target.
struct Writer {
    env: Env,
    db: Database<'static, Bytes, Bytes>,
    tmp: TempDir,
    map_size: usize,
    out: PathBuf,
    parent: PathBuf,
    file_name: String,
    overwrite: bool,
}

impl Writer {
    /// Checks the target and creates the temporary database with an initial map size.
    fn create(out: &Path, overwrite: bool, initial_map: u64) -> DataResult<Writer> {
        if out.exists() {
            if !overwrite {
                return Err(DataError::Config(format!(
                    "{} already exists (use overwrite to replace it)",
                    out.display()
                )));
            }
            check_replaceable(out)?;
        }
        let file_name = out
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| DataError::Config(format!("{}: not a valid target", out.display())))?
            .to_string();
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp_path = parent.join(format!(".{file_name}.tmp-{}", unique_suffix()));
        fs::create_dir(&tmp_path).map_err(|e| io_err(&tmp_path, e))?;
        let tmp = TempDir {
            path: tmp_path.clone(),
            armed: true,
        };
        let map_size = round_map(initial_map);
        let mut env_opts = EnvOpenOptions::new();
        env_opts.map_size(map_size);
        // SAFETY: the folder was just created with a unique name and nothing else opens it;
        // we write through this environment from one thread and close it before renaming.
        let env = unsafe { env_opts.open(&tmp_path) }.map_err(|e| lmdb_err(&tmp_path, e))?;
        let wtxn = env.write_txn().map_err(|e| lmdb_err(&tmp_path, e))?;
        let created = env
            .create_databases_and_commit(wtxn, |dbo, wtxn| {
                dbo.create_database::<Bytes, Bytes>(wtxn, None)
                    .map(CommitOrAbort::<_, ()>::Commit)
            })
            .map_err(|e: heed::Error| lmdb_err(&tmp_path, e))?;
        let db = match created {
            CommitOrAbort::Commit(db) => db,
            CommitOrAbort::Abort(()) => return Err(lmdb_err(&tmp_path, "cannot create database")),
        };
        Ok(Writer {
            env,
            db,
            tmp,
            map_size,
            out: out.to_path_buf(),
            parent,
            file_name,
            overwrite,
        })
    }

    /// Writes records in one transaction, growing the map as needed.
    fn put(&mut self, records: &[(Vec<u8>, Vec<u8>)]) -> DataResult<()> {
        while !put_chunk(&self.env, self.db, records, &self.tmp.path)? {
            self.map_size = self.map_size.saturating_mul(2);
            // SAFETY: no transaction is active (the failed one was dropped, i.e. aborted,
            // inside `put_chunk`), and this thread is the environment's only user.
            unsafe { self.env.resize(self.map_size) }.map_err(|e| lmdb_err(&self.tmp.path, e))?;
        }
        Ok(())
    }

    /// Syncs, closes and moves the database into place.
    fn finish(self) -> DataResult<()> {
        let Writer {
            env,
            mut tmp,
            out,
            parent,
            file_name,
            overwrite,
            ..
        } = self;
        env.force_sync().map_err(|e| lmdb_err(&tmp.path, e))?;
        // Dropping the only handle closes the environment; wait until it is closed.
        env.prepare_for_closing().wait();
        make_readable(&tmp.path)?;
        if out.exists() {
            if !overwrite {
                return Err(DataError::Config(format!(
                    "{} appeared while writing (use overwrite to replace it)",
                    out.display()
                )));
            }
            check_replaceable(&out)?;
            let old = parent.join(format!(".{file_name}.old-{}", unique_suffix()));
            fs::rename(&out, &old).map_err(|e| io_err(&out, e))?;
            if let Err(e) = fs::rename(&tmp.path, &out) {
                let _ = fs::rename(&old, &out);
                return Err(io_err(&out, e));
            }
            let _ = fs::remove_dir_all(&old);
        } else {
            fs::rename(&tmp.path, &out).map_err(|e| io_err(&out, e))?;
        }
        tmp.armed = false;
        Ok(())
    }
}

/// Writes arbitrary `(key, value)` records as a new database at `out` (atomically, as
/// [`write_db`] does; an existing target is an error unless `overwrite`).
pub fn write_records(
    out: &Path,
    records: &[(Vec<u8>, Vec<u8>)],
    overwrite: bool,
) -> DataResult<()> {
    let bytes: u64 = records
        .iter()
        .map(|(k, v)| (k.len() + v.len() + 64) as u64)
        .sum();
    let mut w = Writer::create(out, overwrite, bytes + bytes / 2 + (4 << 20))?;
    for chunk in records.chunks(CHUNK) {
        w.put(chunk)?;
    }
    w.finish()
}

/// Writes `entries` as a database at `out` (see the module docs). `progress` is called with
/// the number of records written so far after every chunk.
pub fn write_db(
    entries: &[ListEntry],
    out: &Path,
    opts: &MakeDbOptions,
    progress: Option<&dyn Fn(usize)>,
) -> DataResult<MakeDbSummary> {
    if entries.is_empty() {
        return Err(DataError::Config("no images to write".into()));
    }
    if opts.raw == Some(0) {
        return Err(DataError::Config("raw scale must be positive".into()));
    }
    // Initial map size from the input size; it doubles whenever it fills up.
    let estimate: u64 = match opts.raw {
        None => entries
            .iter()
            .map(|e| fs::metadata(&e.path).map(|m| m.len()).unwrap_or(0) + 512)
            .sum::<u64>(),
        Some(s) => (entries.len() as u64).saturating_mul(6 * (s as u64) * (s as u64) + 512),
    };
    let mut w = Writer::create(
        out,
        opts.overwrite,
        estimate
            .saturating_add(estimate / 4)
            .saturating_add(4 << 20),
    )?;
    let mut written = 0usize;
    let mut value_bytes = 0u64;
    for (ci, chunk) in entries.chunks(CHUNK).enumerate() {
        let base = ci * CHUNK;
        let values: Vec<DataResult<(Vec<u8>, Vec<u8>)>> = chunk
            .par_iter()
            .enumerate()
            .map(|(j, e)| {
                let key = record_key(base + j, &e.name).into_bytes();
                Ok((key, make_value(e, opts)?))
            })
            .collect();
        let records: Vec<(Vec<u8>, Vec<u8>)> = values.into_iter().collect::<DataResult<_>>()?;
        w.put(&records)?;
        written += records.len();
        value_bytes += records.iter().map(|(_, v)| v.len() as u64).sum::<u64>();
        if let Some(p) = progress {
            p(written);
        }
    }
    w.finish()?;
    Ok(MakeDbSummary {
        path: out.to_path_buf(),
        count: written,
        value_bytes,
    })
}

/// Lists the source's images and writes them as a database at `out` (see [`write_db`]).
pub fn make_db(
    source: &Source,
    out: &Path,
    opts: &MakeDbOptions,
    progress: Option<&dyn Fn(usize)>,
) -> DataResult<MakeDbSummary> {
    let entries = match source {
        Source::Folder(dir) => entries_from_folder(dir)?,
        Source::List { list, root } => entries_from_list(list, root)?,
    };
    write_db(&entries, out, opts, progress)
}
