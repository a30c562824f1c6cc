//! Histogram files in Caffe2's `HistogramNetObserver` text format (facts §7.1).
//!
//! One line per (op, output):
//! `op_index op_type output_index blob_name min max nbins c_0 ... c_{nbins-1}` (7 + nbins
//! words). The older format has no `op_type` (6 + nbins words). As in Caffe2, the format is
//! decided by the first non-empty line and every other line must follow it.

use std::path::{Path, PathBuf};

use super::histogram::Histogram;
use crate::error::{Error, Result};

/// One line of a histogram file: the histogram of output `output_index` of op `op_index`.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramRecord {
    /// Position of the op in the net.
    pub op_index: usize,
    /// Op type (`None` in the old 6 + nbins format).
    pub op_type: Option<String>,
    /// Which output of the op.
    pub output_index: usize,
    /// Blob name of that output.
    pub blob_name: String,
    /// The histogram.
    pub hist: Histogram,
}

/// Which of the two line layouts a file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistFileFormat {
    /// `op_index op_type output_index blob_name min max nbins counts...`
    WithOpType,
    /// `op_index output_index blob_name min max nbins counts...` (older Caffe2)
    WithoutOpType,
}

/// Formats an f32 so that it parses back to the same value (shortest round-trip form).
fn fmt_f32(v: f32) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-4..1e9).contains(&a) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// Renders records as histogram-file text (with op types; records without one get `Unknown`).
///
/// Fails when a name is empty or contains whitespace (the format is whitespace-separated).
pub fn histogram_file_text(records: &[HistogramRecord]) -> std::result::Result<String, String> {
    let mut out = String::new();
    for (k, r) in records.iter().enumerate() {
        let op_type = r.op_type.as_deref().unwrap_or("Unknown");
        for (what, name) in [("blob name", r.blob_name.as_str()), ("op type", op_type)] {
            if name.is_empty() || name.chars().any(char::is_whitespace) {
                return Err(format!(
                    "record {k}: {what} {name:?} is empty or contains whitespace"
                ));
            }
        }
        if !r.hist.min.is_finite() || !r.hist.max.is_finite() {
            return Err(format!(
                "record {k} (`{}`): non-finite range [{}, {}]",
                r.blob_name, r.hist.min, r.hist.max
            ));
        }
        out.push_str(&format!(
            "{} {} {} {} {} {} {}",
            r.op_index,
            op_type,
            r.output_index,
            r.blob_name,
            fmt_f32(r.hist.min),
            fmt_f32(r.hist.max),
            r.hist.counts.len()
        ));
        for c in &r.hist.counts {
            out.push(' ');
            out.push_str(&c.to_string());
        }
        out.push('\n');
    }
    Ok(out)
}

/// Writes records to `path` in the 7 + nbins format, atomically (a temporary file beside
/// it, flushed, then renamed: an interrupted write never leaves a half file).
pub fn write_histogram_file(path: &Path, records: &[HistogramRecord]) -> Result<()> {
    let file_err = |msg: String| Error::File {
        path: path.to_path_buf(),
        msg,
    };
    let text = histogram_file_text(records).map_err(file_err)?;
    caffe2_proto::io::write_bytes_atomic(path, text.as_bytes()).map_err(|e| match e {
        // The path is in `Error::File` already.
        caffe2_proto::ProtoError::Io { action, cause, .. } => {
            file_err(format!("cannot {action}: {cause}"))
        }
        other => file_err(other.to_string()),
    })
}

/// Checks that histograms read from `path` can quantize `model`: at least one record, and
/// one for the output of every convolution and FC (a missing range would silently leave that
/// layer in fp32, as an empty or cut-short file did).
pub fn check_coverage(
    model: &crate::Model,
    records: &[HistogramRecord],
    path: &Path,
) -> Result<()> {
    let file_err = |msg: String| Error::File {
        path: path.to_path_buf(),
        msg,
    };
    if records.is_empty() {
        return Err(file_err(
            "holds no histograms (empty or not a histogram file): calibrate again with --save-hist"
                .into(),
        ));
    }
    let missing: Vec<String> = model
        .net
        .nodes
        .iter()
        .filter(|n| {
            matches!(
                n.op_type.as_str(),
                "Conv" | "ConvRelu" | "FC" | "FCRelu" | "FCTransposed"
            ) && !records
                .iter()
                .any(|r| r.op_index == n.index && r.output_index == 0)
        })
        .map(|n| format!("op #{} ({} -> {})", n.index, n.op_type, n.outputs[0]))
        .collect();
    if let Some(first) = missing.first() {
        return Err(file_err(format!(
            "has no histogram for {} layer(s) of this net, first {first} (cut short, or saved \
             for another net): calibrate again with --save-hist",
            missing.len()
        )));
    }
    Ok(())
}

/// The cause of a file error without the path (the caller names the file itself).
fn io_cause(e: &data::DataError) -> String {
    match e {
        data::DataError::Io { source, .. } => source.to_string(),
        other => other.to_string(),
    }
}

/// Reads a histogram file (either format).
pub fn read_histogram_file(path: &Path) -> Result<Vec<HistogramRecord>> {
    let text =
        data::read_text_bounded(path, data::MAX_TEXT_BYTES, "histogram file").map_err(|e| {
            Error::File {
                path: path.to_path_buf(),
                msg: format!("cannot read histogram file: {}", io_cause(&e)),
            }
        })?;
    parse_histogram_text(&text, path)
}

/// Detects the format of one line from its word count: 7 + nbins (word 7) or 6 + nbins (word 6).
fn detect(words: &[&str]) -> Option<HistFileFormat> {
    let fits = |idx: usize, fixed: usize| {
        words
            .get(idx)
            .and_then(|w| w.parse::<usize>().ok())
            .is_some_and(|n| n.checked_add(fixed) == Some(words.len()))
    };
    if fits(6, 7) {
        Some(HistFileFormat::WithOpType)
    } else if fits(5, 6) {
        Some(HistFileFormat::WithoutOpType)
    } else {
        None
    }
}

/// Parses histogram-file text; `path` is only used in error messages (`file: line N: ...`).
pub fn parse_histogram_text(text: &str, path: &Path) -> Result<Vec<HistogramRecord>> {
    let err = |line: usize, msg: String| Error::File {
        path: PathBuf::from(path),
        msg: format!("line {line}: {msg}"),
    };
    let mut format = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() {
            continue;
        }
        let fmt = match format {
            Some(f) => f,
            None => {
                let f = detect(&words).ok_or_else(|| {
                    err(
                        lineno,
                        format!(
                            "not a histogram line: {} words, expected `op_index op_type \
                             output_index blob_name min max nbins` + nbins counts (or the old \
                             format without op_type)",
                            words.len()
                        ),
                    )
                })?;
                format = Some(f);
                f
            }
        };
        let fixed = match fmt {
            HistFileFormat::WithOpType => 7,
            HistFileFormat::WithoutOpType => 6,
        };
        if words.len() < fixed {
            return Err(err(
                lineno,
                format!("{} words, need at least {fixed}", words.len()),
            ));
        }
        let (op_type, rest) = match fmt {
            HistFileFormat::WithOpType => (Some(words[1].to_string()), &words[2..]),
            HistFileFormat::WithoutOpType => (None, &words[1..]),
        };
        let int = |w: &str, what: &str| {
            w.parse::<usize>().map_err(|_| {
                err(
                    lineno,
                    format!("{what} `{w}` is not a non-negative integer"),
                )
            })
        };
        let float = |w: &str, what: &str| match w.parse::<f32>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(err(lineno, format!("{what} `{w}` is not a finite number"))),
        };
        let op_index = int(words[0], "op_index")?;
        let output_index = int(rest[0], "output_index")?;
        let blob_name = rest[1].to_string();
        let min = float(rest[2], "min")?;
        let max = float(rest[3], "max")?;
        let nbins = int(rest[4], "nbins")?;
        let counts_words = &rest[5..];
        if counts_words.len() != nbins {
            return Err(err(
                lineno,
                format!(
                    "blob `{blob_name}`: nbins is {nbins} but {} counts follow",
                    counts_words.len()
                ),
            ));
        }
        if nbins == 0 {
            return Err(err(lineno, format!("blob `{blob_name}`: nbins is 0")));
        }
        if max < min {
            return Err(err(
                lineno,
                format!("blob `{blob_name}`: max {max} is below min {min}"),
            ));
        }
        let mut counts = Vec::with_capacity(nbins);
        for (k, w) in counts_words.iter().enumerate() {
            counts.push(w.parse::<u64>().map_err(|_| {
                err(
                    lineno,
                    format!("blob `{blob_name}`: count {k} `{w}` is not a non-negative integer"),
                )
            })?);
        }
        out.push(HistogramRecord {
            op_index,
            op_type,
            output_index,
            blob_name,
            hist: Histogram { min, max, counts },
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(op: usize, ty: &str, out: usize, name: &str, h: Histogram) -> HistogramRecord {
        HistogramRecord {
            op_index: op,
            op_type: Some(ty.into()),
            output_index: out,
            blob_name: name.into(),
            hist: h,
        }
    }

    #[test]
    fn round_trip_through_a_file() {
        let recs = vec![
            rec(
                0,
                "Conv",
                0,
                "conv1",
                Histogram {
                    min: -1.2345678,
                    max: 3.1e-7,
                    counts: vec![1, 0, 5, 18446744073709551615],
                },
            ),
            rec(
                3,
                "Relu",
                0,
                "conv1_relu",
                Histogram {
                    min: 0.0,
                    max: 123456789000.0,
                    counts: vec![7],
                },
            ),
        ];
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hist.txt");
        write_histogram_file(&p, &recs).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("0 Conv 0 conv1 -1.2345678 3.1e-7 4 1 0 5 18446744073709551615\n"));
        assert_eq!(read_histogram_file(&p).unwrap(), recs);
    }

    #[test]
    fn reads_caffe2_lines_and_old_format() {
        let new = "0 Conv 0 conv1 -0.5 2 3 10 0 4\n\n1 Relu 0 relu1 0 2 3 1 2 3\n";
        let r = parse_histogram_text(new, Path::new("h.txt")).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].op_type.as_deref(), Some("Conv"));
        assert_eq!(r[0].hist.counts, vec![10, 0, 4]);
        assert_eq!((r[1].hist.min, r[1].hist.max), (0.0, 2.0));
        let old = "5 1 data_out -3 3 2 7 9\n";
        let r = parse_histogram_text(old, Path::new("h.txt")).unwrap();
        assert_eq!(r[0].op_index, 5);
        assert_eq!(r[0].op_type, None);
        assert_eq!(r[0].output_index, 1);
        assert_eq!(r[0].blob_name, "data_out");
        assert_eq!(r[0].hist.counts, vec![7, 9]);
    }

    #[test]
    fn errors_name_file_and_line() {
        let cases = [
            ("0 Conv 0 c 0 1 3 1 2 3\n0 Conv 0 d 0 1 3 1 2\n", "line 2"),
            ("0 Conv 0 c 0 1 3 1 x 3\n", "count 1 `x`"),
            ("0 Conv 0 c nan 1 1 3\n", "min `nan`"),
            ("0 Conv 0 c 2 1 1 3\n", "below min"),
            ("hello world\n", "not a histogram line"),
            ("0 Conv 0 c 0 1 0\n", "nbins is 0"),
        ];
        for (text, needle) in cases {
            let e = parse_histogram_text(text, Path::new("/tmp/h.hist")).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("/tmp/h.hist"), "{msg}");
            assert!(msg.contains(needle), "{msg} should contain {needle}");
        }
        let e = read_histogram_file(Path::new("/nonexistent/h.hist")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/h.hist"));
    }

    #[test]
    fn refuses_names_with_spaces() {
        let r = rec(0, "Conv", 0, "a b", Histogram::new(1, 0.0, 1.0));
        assert!(histogram_file_text(&[r]).is_err());
    }
}
