//! Reading and writing protobuf messages as binary (`.pb`) or text (`.pbtxt`) files.
//!
//! The format of a file is detected from its content, never from its extension. Detection
//! is a guess ([`detect_format`]); when the guessed format fails to parse and the guess was
//! not certain, the other format is tried, and the error names the file and both failures.
//!
//! Binary output is rust-protobuf's encoding: fields in field-number order, repeated scalars
//! packed exactly where the schema says `[packed = true]`. That is also what Caffe2 (C++
//! protobuf) writes, so a real `.pb` read and written back is byte-identical. Text output
//! uses [`crate::text`], which round-trips every value bit for bit (NaN payloads aside).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use protobuf::reflect::{ReflectFieldRef, ReflectValueRef};
use protobuf::{MessageDyn, MessageFull};

use crate::{NetDef, TensorProto, TensorProtos};

/// The two serializations of a protobuf message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Protobuf wire format (`.pb`).
    Binary,
    /// Protobuf text format (`.pbtxt`).
    Text,
}

impl Format {
    /// The other format.
    pub fn other(self) -> Format {
        match self {
            Format::Binary => Format::Text,
            Format::Text => Format::Binary,
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Binary => "binary",
            Format::Text => "text",
        })
    }
}

/// Errors from reading or writing protobuf files. Every message starts with the file path
/// (`<memory>` for in-memory data).
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The file could not be read or written.
    #[error("{path}: cannot {action}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was attempted (`read`, `write`, ...).
        action: &'static str,
        /// The OS error (part of the message, not a separate source: reports that print an
        /// error's chain would say it twice).
        cause: std::io::Error,
    },
    /// The file holds no data (or, as text, only whitespace and comments).
    #[error(
        "{path}: the file is empty (no data, or only whitespace and comments); expected a {what}"
    )]
    Empty {
        /// The file.
        path: PathBuf,
        /// The message type expected.
        what: &'static str,
    },
    /// The content is not a valid message of the expected type in the given format.
    #[error("{path}: not a valid {what} in {format} format: {msg}")]
    Parse {
        /// The file (or `<memory>`).
        path: PathBuf,
        /// The message type expected.
        what: &'static str,
        /// The format that was tried.
        format: Format,
        /// The parser's explanation.
        msg: String,
    },
    /// The content parses in neither format.
    #[error(
        "{path}: not a valid {what} in either format; as {first} (the likelier): {first_msg}; as {}: {second_msg}",
        .first.other()
    )]
    Unrecognized {
        /// The file (or `<memory>`).
        path: PathBuf,
        /// The message type expected.
        what: &'static str,
        /// The format tried first (the detected one).
        first: Format,
        /// Why the first format failed.
        first_msg: String,
        /// Why the other format failed.
        second_msg: String,
    },
    /// The message cannot be serialized (e.g. a required field is unset).
    #[error("{path}: cannot write this {what}: {msg}")]
    Serialize {
        /// The destination file (or `<memory>`).
        path: PathBuf,
        /// The message type.
        what: &'static str,
        /// What is wrong.
        msg: String,
    },
}

fn memory_path() -> PathBuf {
    PathBuf::from("<memory>")
}

/// Bytes that never occur in text format (which escapes control characters in strings).
fn is_binary_only_byte(b: u8) -> bool {
    matches!(b, 0x00..=0x08 | 0x0e..=0x1f | 0x7f)
}

/// Skips text-format whitespace and `#` comments; returns the rest.
fn skip_text_blank(mut rest: &[u8]) -> &[u8] {
    loop {
        match rest.first() {
            Some(b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) => rest = &rest[1..],
            Some(b'#') => {
                rest = match rest.iter().position(|&b| b == b'\n') {
                    Some(p) => &rest[p + 1..],
                    None => &[],
                }
            }
            _ => return rest,
        }
    }
}

/// Guesses the format and whether the guess is certain. Binary is certain when the data
/// contains a control byte that text format never holds; every other guess is tentative.
fn classify(bytes: &[u8]) -> (Format, bool) {
    if bytes.iter().any(|&b| is_binary_only_byte(b)) {
        return (Format::Binary, true);
    }
    if std::str::from_utf8(bytes).is_err() {
        return (Format::Binary, false);
    }
    match skip_text_blank(bytes).first() {
        // Blank (whitespace/comments only) content is text.
        None => (Format::Text, false),
        // A field name, an extension `[`, or an unknown field number.
        Some(&b) if b.is_ascii_alphanumeric() || b == b'_' || b == b'[' => (Format::Text, false),
        Some(_) => (Format::Binary, false),
    }
}

/// Guesses the format of serialized bytes. Binary when the data holds control bytes (every
/// real binary message with a nested or repeated field does) or is not UTF-8; text when it
/// starts, after whitespace and `#` comments, like a text-format field. The guess can be
/// wrong for tiny all-printable binary messages, which is why [`parse`] falls back to the
/// other format.
pub fn detect_format(bytes: &[u8]) -> Format {
    classify(bytes).0
}

/// Parses a message from bytes in the given format. `path` is only used in errors.
/// Unlike [`parse`], empty input is accepted (it is the empty message in both formats).
pub fn parse_as<M: MessageFull>(
    bytes: &[u8],
    format: Format,
    path: &Path,
) -> Result<M, ProtoError> {
    let err = |msg: String| ProtoError::Parse {
        path: path.to_path_buf(),
        what: M::NAME,
        format,
        msg,
    };
    match format {
        Format::Binary => M::parse_from_bytes(bytes).map_err(|e| {
            let mut msg = e.to_string();
            if msg.contains("EOF") || msg.contains("Truncated") {
                msg.push_str(" (the data ends in the middle of a field: truncated or corrupt)");
            }
            err(msg)
        }),
        Format::Text => crate::text::parse::<M>(bytes).map_err(|e| err(e.to_string())),
    }
}

/// Parses a message from bytes, detecting the format (see [`detect_format`]); if the
/// detected format fails and the detection was not certain, the other format is tried.
/// Empty input, or input with only whitespace and comments, is [`ProtoError::Empty`] (unless
/// it happens to be a valid binary message containing a `#`). `path` is only used in errors.
pub fn parse<M: MessageFull>(bytes: &[u8], path: &Path) -> Result<(M, Format), ProtoError> {
    let (first, certain) = classify(bytes);
    if skip_text_blank(bytes).is_empty() {
        // Nothing but whitespace and comments as text. A tiny binary message can look like a
        // comment (a NetDef holding only a 35-byte name starts with "\n#"), so when there is
        // a `#`, binary is tried; pure whitespace is always an empty file.
        let binary = if bytes.contains(&b'#') {
            parse_as::<M>(bytes, Format::Binary, path).ok()
        } else {
            None
        };
        return match binary {
            Some(m) => Ok((m, Format::Binary)),
            None => Err(ProtoError::Empty {
                path: path.to_path_buf(),
                what: M::NAME,
            }),
        };
    }
    let first_err = match parse_as::<M>(bytes, first, path) {
        Ok(m) => return Ok((m, first)),
        Err(e) => e,
    };
    if certain {
        return Err(first_err);
    }
    let second = first.other();
    match parse_as::<M>(bytes, second, path) {
        Ok(m) => Ok((m, second)),
        Err(second_err) => Err(ProtoError::Unrecognized {
            path: path.to_path_buf(),
            what: M::NAME,
            first,
            first_msg: parse_msg(first_err),
            second_msg: parse_msg(second_err),
        }),
    }
}

fn parse_msg(e: ProtoError) -> String {
    match e {
        ProtoError::Parse { msg, .. } => msg,
        other => other.to_string(),
    }
}

/// Reads a message from a file, detecting the format from its content.
pub fn read<M: MessageFull>(path: impl AsRef<Path>) -> Result<(M, Format), ProtoError> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    parse(&bytes, path)
}

/// The most bytes a protobuf message can hold (its length fields are 32-bit signed).
pub const MAX_MESSAGE_BYTES: u64 = (1 << 31) - 1;

/// Reads a whole model or tensor file: a regular file of at most [`MAX_MESSAGE_BYTES`],
/// checked before reading (a folder, a device such as `/dev/zero` or a pipe would otherwise
/// be read without end or fail with a bare OS message).
pub fn read_file(path: &Path) -> Result<Vec<u8>, ProtoError> {
    let io_err = |cause| ProtoError::Io {
        path: path.to_path_buf(),
        action: "read",
        cause,
    };
    let refuse = |msg: String| io_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, msg));
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if meta.is_dir() {
        return Err(refuse(
            "it is a folder, not a file (a model folder goes with --model)".into(),
        ));
    }
    if !meta.is_file() {
        return Err(refuse(
            "not a regular file (a device, pipe or socket)".into(),
        ));
    }
    if meta.len() > MAX_MESSAGE_BYTES {
        return Err(refuse(format!(
            "{} bytes, more than the {MAX_MESSAGE_BYTES} a protobuf message can hold",
            meta.len()
        )));
    }
    std::fs::read(path).map_err(io_err)
}

/// Finds an unset required field, returning its path inside `msg`
/// (e.g. `arg[2].qtensors[0].precision`).
pub fn missing_required(msg: &dyn MessageDyn) -> Option<String> {
    let d = msg.descriptor_dyn();
    for f in d.fields() {
        if f.is_required() && !f.has_field(msg) {
            return Some(f.name().to_string());
        }
        let nested = |v: ReflectValueRef, label: String| match v {
            ReflectValueRef::Message(m) => missing_required(&*m).map(|p| format!("{label}.{p}")),
            _ => None,
        };
        let found = match f.get_reflect(msg) {
            ReflectFieldRef::Optional(o) => o.value().and_then(|v| nested(v, f.name().into())),
            ReflectFieldRef::Repeated(r) => r
                .into_iter()
                .enumerate()
                .find_map(|(i, v)| nested(v, format!("{}[{i}]", f.name()))),
            ReflectFieldRef::Map(m) => (&m)
                .into_iter()
                .find_map(|(_, v)| nested(v, format!("{}[..]", f.name()))),
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

/// Serializes a message in the given format. Fails when a required field is unset (such
/// a message would not read back) or the message exceeds protobuf's 2 GiB limit.
pub fn to_bytes<M: MessageFull>(msg: &M, format: Format) -> Result<Vec<u8>, ProtoError> {
    to_bytes_at(msg, format, &memory_path())
}

fn to_bytes_at<M: MessageFull>(
    msg: &M,
    format: Format,
    path: &Path,
) -> Result<Vec<u8>, ProtoError> {
    let err = |msg: String| ProtoError::Serialize {
        path: path.to_path_buf(),
        what: M::NAME,
        msg,
    };
    if let Some(field) = missing_required(msg) {
        return Err(err(format!("required field `{field}` is not set")));
    }
    match format {
        Format::Binary => msg.write_to_bytes().map_err(|e| err(e.to_string())),
        Format::Text => Ok(crate::text::print(msg).into_bytes()),
    }
}

/// Writes a message to `path` atomically: into a temporary file beside it, then renamed.
pub fn write<M: MessageFull>(
    msg: &M,
    path: impl AsRef<Path>,
    format: Format,
) -> Result<(), ProtoError> {
    let path = path.as_ref();
    write_bytes_atomic(path, &to_bytes_at(msg, format, path)?)
}

/// Writes bytes to `path` atomically (temporary file in the same folder, flushed, then
/// renamed over `path`), so an existing file is never left half-written.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<(), ProtoError> {
    use std::io::Write;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let io_err = |action: &'static str| {
        move |cause| ProtoError::Io {
            path: path.to_path_buf(),
            action,
            cause,
        }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(name) = path.file_name() else {
        return Err(io_err("write")(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path does not name a file",
        )));
    };
    let tmp = dir.join(format!(
        ".{}.tmp{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    let result = written
        .map_err(io_err("write"))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(io_err("replace")));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Chooses the format for an output path from its extension: `.pbtxt`, `.txt`, `.prototxt`
/// and `.pb_txt` (any case) mean text, anything else binary.
pub fn format_for_path(path: impl AsRef<Path>) -> Format {
    let ext = path
        .as_ref()
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("pbtxt" | "txt" | "prototxt" | "pb_txt") => Format::Text,
        _ => Format::Binary,
    }
}

/// Reads a `caffe2.NetDef` (init or predict net) in either format.
pub fn read_net(path: impl AsRef<Path>) -> Result<(NetDef, Format), ProtoError> {
    read(path)
}

/// Writes a `caffe2.NetDef` atomically in the given format.
pub fn write_net(net: &NetDef, path: impl AsRef<Path>, format: Format) -> Result<(), ProtoError> {
    write(net, path, format)
}

/// Reads a single serialized `caffe2.TensorProto` (e.g. a golden input/output file).
pub fn read_tensor(path: impl AsRef<Path>) -> Result<(TensorProto, Format), ProtoError> {
    read(path)
}

/// Writes a single `caffe2.TensorProto` atomically in the given format.
pub fn write_tensor(
    tensor: &TensorProto,
    path: impl AsRef<Path>,
    format: Format,
) -> Result<(), ProtoError> {
    write(tensor, path, format)
}

/// Reads a `caffe2.TensorProtos` (a list of tensors) in either format.
pub fn read_tensors(path: impl AsRef<Path>) -> Result<(TensorProtos, Format), ProtoError> {
    read(path)
}

/// Writes a `caffe2.TensorProtos` atomically in the given format.
pub fn write_tensors(
    tensors: &TensorProtos,
    path: impl AsRef<Path>,
    format: Format,
) -> Result<(), ProtoError> {
    write(tensors, path, format)
}
