//! Database summaries (`c2q db info`) and single-record previews (`c2q db show`).

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::PathBuf;

use crate::batch::{detect_db_format, Skipped};
use crate::image::Image;
use crate::lmdb::{Lmdb, Start};
use crate::preprocess::{ChannelOrder, Layout, Preprocess};
use crate::record::{detect_format, parse_record, Payload, RecordFormat};
use crate::{DataError, DataResult};

/// Summary of a database.
#[derive(Debug, Clone, PartialEq)]
pub struct DbInfo {
    /// The database path.
    pub path: PathBuf,
    /// Number of records.
    pub count: usize,
    /// Record format (given or detected).
    pub format: RecordFormat,
    /// Label -> number of records (FLOAT labels rounded to nearest).
    pub labels: BTreeMap<i64, usize>,
    /// Records with a FLOAT label.
    pub float_labels: usize,
    /// Records holding an encoded image.
    pub encoded: usize,
    /// Records holding raw pixels.
    pub raw: usize,
    /// Image kinds: `jpeg`, `png`, ... for encoded records (from the file signature),
    /// `raw` for raw ones.
    pub kinds: BTreeMap<String, usize>,
    /// Smallest and largest image width (`None` if no image size could be read). Encoded
    /// images are measured from their headers only (stored size, before any EXIF rotation).
    pub width: Option<(usize, usize)>,
    /// Smallest and largest image height.
    pub height: Option<(usize, usize)>,
    /// Records that could not be parsed or measured, with reasons, in key order.
    pub bad: Vec<Skipped>,
}

fn widen(range: &mut Option<(usize, usize)>, v: usize) {
    *range = Some(match *range {
        None => (v, v),
        Some((lo, hi)) => (lo.min(v), hi.max(v)),
    });
}

/// Reads the format and dimensions of an encoded image from its header.
fn header_info(bytes: &[u8]) -> Result<(String, usize, usize), String> {
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let kind = match reader.format() {
        Some(f) => format!("{f:?}").to_ascii_lowercase(),
        None => return Err("unrecognised image format".into()),
    };
    let (w, h) = reader.into_dimensions().map_err(|e| e.to_string())?;
    Ok((kind, h as usize, w as usize))
}

/// Scans every record of `db` and summarizes it. Bad records are listed, not fatal.
/// `progress` is called with the number of records examined, every 256 records and at the
/// end.
pub fn db_info(
    db: &Lmdb,
    format: Option<RecordFormat>,
    progress: Option<&dyn Fn(usize)>,
) -> DataResult<DbInfo> {
    let format = match format {
        Some(f) => f,
        None => detect_db_format(db)?,
    };
    let mut info = DbInfo {
        path: db.path().to_path_buf(),
        count: 0,
        format,
        labels: BTreeMap::new(),
        float_labels: 0,
        encoded: 0,
        raw: 0,
        kinds: BTreeMap::new(),
        width: None,
        height: None,
        bad: Vec::new(),
    };
    db.scan(Start::First, |k, v| {
        info.count += 1;
        let key = String::from_utf8_lossy(k).into_owned();
        match parse_record(v, format, &key) {
            Err(e) => info.bad.push(Skipped {
                key,
                reason: e.to_string(),
            }),
            Ok(rec) => {
                *info.labels.entry(rec.label.as_i64()).or_insert(0) += 1;
                if matches!(rec.label, crate::record::Label::Float(_)) {
                    info.float_labels += 1;
                }
                match &rec.payload {
                    Payload::Raw(img) => {
                        info.raw += 1;
                        *info.kinds.entry("raw".into()).or_insert(0) += 1;
                        widen(&mut info.width, img.width);
                        widen(&mut info.height, img.height);
                    }
                    Payload::Encoded(bytes) => {
                        info.encoded += 1;
                        match header_info(bytes) {
                            Ok((kind, h, w)) => {
                                *info.kinds.entry(kind).or_insert(0) += 1;
                                widen(&mut info.width, w);
                                widen(&mut info.height, h);
                            }
                            Err(msg) => {
                                *info.kinds.entry("unknown".into()).or_insert(0) += 1;
                                info.bad.push(Skipped {
                                    reason: DataError::Decode {
                                        key: key.clone(),
                                        msg,
                                    }
                                    .to_string(),
                                    key,
                                });
                            }
                        }
                    }
                }
            }
        }
        if info.count.is_multiple_of(256) {
            if let Some(p) = progress {
                p(info.count);
            }
        }
        Ok(true)
    })?;
    if let Some(p) = progress {
        p(info.count);
    }
    Ok(info)
}

/// One record as `c2q db ls` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordEntry {
    /// The key (lossy UTF-8).
    pub key: String,
    /// Bytes of the stored value.
    pub bytes: usize,
    /// The label (None when the record does not parse).
    pub label: Option<i64>,
    /// `jpeg`, `png`, … from the encoded image's header, or `raw`.
    pub kind: Option<String>,
    /// Stored image height and width (from the header for encoded images).
    pub size: Option<(usize, usize)>,
    /// Why the record or its image header cannot be read, if so.
    pub problem: Option<String>,
}

/// The records of `db` in key order from the first key at or after `from` (all with
/// `None`), at most `limit` of them: key, size, label and image kind and size read from the
/// header (nothing is decoded). A bad record is listed with its problem, not fatal.
pub fn list_records(
    db: &Lmdb,
    format: Option<RecordFormat>,
    from: Option<&str>,
    limit: Option<usize>,
) -> DataResult<Vec<RecordEntry>> {
    let format = match format {
        Some(f) => f,
        None => detect_db_format(db)?,
    };
    let start = match from {
        Some(k) => Start::AtOrAfter(k.as_bytes()),
        None => Start::First,
    };
    let limit = limit.unwrap_or(usize::MAX);
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    db.scan(start, |k, v| {
        let key = String::from_utf8_lossy(k).into_owned();
        let mut e = RecordEntry {
            key: key.clone(),
            bytes: v.len(),
            label: None,
            kind: None,
            size: None,
            problem: None,
        };
        match parse_record(v, format, &key) {
            Err(err) => e.problem = Some(err.to_string()),
            Ok(rec) => {
                e.label = Some(rec.label.as_i64());
                match &rec.payload {
                    Payload::Raw(img) => {
                        e.kind = Some("raw".into());
                        e.size = Some((img.height, img.width));
                    }
                    Payload::Encoded(bytes) => match header_info(bytes) {
                        Ok((kind, h, w)) => {
                            e.kind = Some(kind);
                            e.size = Some((h, w));
                        }
                        Err(msg) => e.problem = Some(msg),
                    },
                }
            }
        }
        out.push(e);
        Ok(out.len() < limit)
    })?;
    Ok(out)
}

/// The stored image of the record under `key`, decoded (BGR or gray as stored), for
/// `c2q db show --original`. The format is detected from the record if `None`.
pub fn original_image(db: &Lmdb, key: &str, format: Option<RecordFormat>) -> DataResult<Image> {
    let value = db.get(key.as_bytes())?.ok_or_else(|| DataError::Record {
        key: key.to_string(),
        msg: format!("no such key in {}", db.path().display()),
    })?;
    let format = match format {
        Some(f) => f,
        None => detect_format(&value, key)?,
    };
    parse_record(&value, format, key)?.into_image(key)
}

/// Turns preprocessed floats (one image, `pre.image_len()` of them, in `pre`'s layout and
/// channel order) back into an 8-bit **RGB** interleaved image of `crop` x `crop`:
/// `v = x * std[c] + mean[c]` with `c` the source BGR channel of the plane (as
/// [`Preprocess`] indexes mean/std), rounded and clamped to 0..=255.
pub fn denormalize_rgb(floats: &[f32], pre: &Preprocess) -> DataResult<Image> {
    let n = pre.crop;
    if floats.len() != 3 * n * n {
        return Err(DataError::Config(format!(
            "expected {} floats for a {n}x{n} crop, got {}",
            3 * n * n,
            floats.len()
        )));
    }
    let mut data = vec![0u8; 3 * n * n];
    for p in 0..3 {
        // Source (BGR) channel written to plane p; mean/std are indexed by it.
        let src = match pre.order {
            ChannelOrder::Bgr => p,
            ChannelOrder::Rgb => 2 - p,
        };
        for i in 0..n * n {
            let x = match pre.layout {
                Layout::Nchw => floats[p * n * n + i],
                Layout::Nhwc => floats[i * 3 + p],
            };
            let v = (x * pre.std[src] + pre.mean[src]).round().clamp(0.0, 255.0);
            data[i * 3 + (2 - src)] = v as u8;
        }
    }
    Ok(Image {
        height: n,
        width: n,
        channels: 3,
        data,
    })
}

/// The preprocessed crop of the record under `key`, de-normalized back to an RGB image
/// (see [`denormalize_rgb`]); for `c2q db show`. The format is detected from the record if
/// `None`.
pub fn preprocessed_rgb(
    db: &Lmdb,
    key: &str,
    format: Option<RecordFormat>,
    pre: &Preprocess,
) -> DataResult<Image> {
    pre.validate()?;
    let value = db.get(key.as_bytes())?.ok_or_else(|| DataError::Record {
        key: key.to_string(),
        msg: format!("no such key in {}", db.path().display()),
    })?;
    let format = match format {
        Some(f) => f,
        None => detect_format(&value, key)?,
    };
    let img = parse_record(&value, format, key)?.into_image(key)?;
    let mut out = vec![0f32; pre.image_len()];
    pre.apply(&img, &mut out)?;
    denormalize_rgb(&out, pre)
}
