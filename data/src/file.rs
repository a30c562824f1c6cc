//! Reading whole input files with a size limit checked before any byte is read: a folder, a
//! device such as `/dev/zero`, or a file larger than the limit is an error naming the path,
//! never an unbounded read.

use std::path::Path;

use crate::error::{DataError, DataResult};

/// Largest text file (image lists, class names, histogram files) read whole: 1 GiB.
pub const MAX_TEXT_BYTES: u64 = 1 << 30;

/// Largest image file read whole: 256 MiB (the largest ImageNet JPEG is about 15 MB).
pub const MAX_IMAGE_BYTES: u64 = 256 << 20;

/// The bytes of the regular file `path` if it holds at most `limit` bytes; `what` names the
/// kind of file in the error ("image list", "histogram file", ...).
pub fn read_bounded(path: &Path, limit: u64, what: &str) -> DataResult<Vec<u8>> {
    let fail = |msg: String| DataError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, msg),
    };
    let meta = std::fs::metadata(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_dir() {
        return Err(fail(format!("is a folder, not a {what}")));
    }
    if !meta.is_file() {
        return Err(fail(format!(
            "is not a regular file (a device, pipe or socket), not a {what}"
        )));
    }
    if meta.len() > limit {
        return Err(fail(format!(
            "{} bytes: a {what} is limited to {limit} bytes",
            meta.len()
        )));
    }
    std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// [`read_bounded`] as UTF-8 text.
pub fn read_text_bounded(path: &Path, limit: u64, what: &str) -> DataResult<String> {
    let bytes = read_bounded(path, limit, what)?;
    String::from_utf8(bytes).map_err(|e| DataError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "{what} is not UTF-8 text (byte {})",
                e.utf8_error().valid_up_to()
            ),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_folders_devices_and_large_files_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_bounded(dir.path(), 10, "image list")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is a folder") && err.contains("image list"),
            "{err}"
        );
        let err = read_bounded(Path::new("/dev/zero"), 10, "image list")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a regular file"), "{err}");
        let f = dir.path().join("big.txt");
        std::fs::write(&f, vec![b'a'; 11]).unwrap();
        let err = read_bounded(&f, 10, "image list").unwrap_err().to_string();
        assert!(
            err.contains("11 bytes") && err.contains("limited to 10"),
            "{err}"
        );
        assert_eq!(read_bounded(&f, 11, "image list").unwrap().len(), 11);
        std::fs::write(&f, [b'o', b'k', 0xff]).unwrap();
        let err = read_text_bounded(&f, 10, "class list")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not UTF-8") && err.contains("byte 2"), "{err}");
        let err = read_bounded(&dir.path().join("missing"), 10, "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing"), "{err}");
    }
}
