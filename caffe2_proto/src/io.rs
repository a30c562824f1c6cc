//! Reading and writing protobuf messages as binary (`.pb`) or text (`.pbtxt`) files.
//!
//! The format of a file is detected from its content, never from its extension.

use std::path::{Path, PathBuf};

use protobuf::MessageFull;

/// The two serializations of a protobuf message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Protobuf wire format (`.pb`).
    Binary,
    /// Protobuf text format (`.pbtxt`).
    Text,
}

/// Errors from reading or writing protobuf files.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The content is not a valid message of the expected type.
    #[error("{path}: not a valid {what} in {format:?} format: {msg}")]
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
}

/// Guesses the format of serialized bytes: text if the content is valid UTF-8 that starts
/// (after whitespace and comments) like a text-format field, binary otherwise.
pub fn detect_format(bytes: &[u8]) -> Format {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Format::Binary;
    };
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('#') {
            rest = after.split_once('\n').map_or("", |(_, r)| r);
            continue;
        }
        break;
    }
    if rest.is_empty() {
        // An empty message is the same in both formats.
        return Format::Binary;
    }
    let first = rest.as_bytes()[0];
    if first.is_ascii_alphabetic() || first == b'_' || first == b'[' {
        Format::Text
    } else {
        Format::Binary
    }
}

/// Parses a message from bytes in the given format. `path` is only used in errors.
pub fn parse_as<M: MessageFull>(bytes: &[u8], format: Format, path: &Path) -> Result<M, ProtoError> {
    let err = |msg: String| ProtoError::Parse {
        path: path.to_path_buf(),
        what: M::NAME,
        format,
        msg,
    };
    match format {
        Format::Binary => M::parse_from_bytes(bytes).map_err(|e| err(e.to_string())),
        Format::Text => {
            let text = std::str::from_utf8(bytes).map_err(|e| err(e.to_string()))?;
            crate::text::parse::<M>(text).map_err(err)
        }
    }
}

/// Parses a message from bytes, detecting the format.
pub fn parse<M: MessageFull>(bytes: &[u8], path: &Path) -> Result<(M, Format), ProtoError> {
    let format = detect_format(bytes);
    parse_as(bytes, format, path).map(|m| (m, format))
}

/// Reads a message from a file, detecting the format from its content.
pub fn read<M: MessageFull>(path: impl AsRef<Path>) -> Result<(M, Format), ProtoError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| ProtoError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&bytes, path)
}

/// Serializes a message in the given format.
pub fn to_bytes<M: MessageFull>(msg: &M, format: Format) -> Vec<u8> {
    match format {
        Format::Binary => msg
            .write_to_bytes()
            .expect("serializing an in-memory message cannot fail"),
        Format::Text => crate::text::print(msg).into_bytes(),
    }
}

/// Writes a message to `path` atomically: into a temporary file beside it, then renamed.
pub fn write<M: MessageFull>(msg: &M, path: impl AsRef<Path>, format: Format) -> Result<(), ProtoError> {
    write_bytes_atomic(path.as_ref(), &to_bytes(msg, format))
}

/// Writes bytes to `path` atomically (temporary file in the same folder, then rename), so an
/// existing file is never left half-written.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<(), ProtoError> {
    use std::io::Write;
    let io_err = |source| ProtoError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_err)
}

/// Chooses the format for an output path from its extension: `.pbtxt`/`.txt`/`.prototxt`
/// mean text, anything else binary.
pub fn format_for_path(path: &Path) -> Format {
    match path.extension().and_then(|e| e.to_str()) {
        Some("pbtxt") | Some("txt") | Some("prototxt") => Format::Text,
        _ => Format::Binary,
    }
}
