//! Limits on sizes that input controls (fill shapes, inferred activation shapes), checked
//! before anything is allocated: a tensor larger than [`max_tensor_bytes`] is an error naming
//! it, its size and the limit, never an allocation abort.

use std::sync::OnceLock;

use crate::{OpError, OpResult};

/// Default largest tensor: 8 GiB (ResNet-50's largest activation at batch 256 is 0.8 GB).
pub const DEFAULT_MAX_TENSOR_BYTES: u64 = 8 << 30;

/// The environment variable that sets the limit in bytes.
pub const MAX_TENSOR_BYTES_ENV: &str = "C2Q_MAX_TENSOR_BYTES";

/// The largest tensor, in bytes, any op may create: [`MAX_TENSOR_BYTES_ENV`] when set to a
/// positive integer, else [`DEFAULT_MAX_TENSOR_BYTES`]. Read once.
pub fn max_tensor_bytes() -> u64 {
    static LIMIT: OnceLock<u64> = OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var(MAX_TENSOR_BYTES_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&v| v > 0)
            .unwrap_or(DEFAULT_MAX_TENSOR_BYTES)
    })
}

/// Bytes of a tensor of `shape` with `elem_bytes`-byte elements, or None on overflow.
pub fn tensor_bytes(shape: &[usize], elem_bytes: usize) -> Option<u64> {
    shape
        .iter()
        .try_fold(elem_bytes as u64, |acc, &d| acc.checked_mul(d as u64))
}

/// Checks that a tensor of `shape` (`elem_bytes` per element) fits [`max_tensor_bytes`];
/// `what` names it in the error.
pub fn check_tensor(what: &str, shape: &[usize], elem_bytes: usize) -> OpResult<()> {
    check_tensor_with(what, shape, elem_bytes, max_tensor_bytes())
}

/// [`check_tensor`] against an explicit `limit`.
pub fn check_tensor_with(
    what: &str,
    shape: &[usize],
    elem_bytes: usize,
    limit: u64,
) -> OpResult<()> {
    match tensor_bytes(shape, elem_bytes) {
        Some(b) if b <= limit => Ok(()),
        size => Err(OpError::Shape(format!(
            "{what}: shape {shape:?} needs {} bytes, more than the limit of {limit} \
             ({MAX_TENSOR_BYTES_ENV} raises it)",
            size.map_or_else(|| "more than 2^64".to_string(), |b| b.to_string())
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_errors() {
        assert_eq!(tensor_bytes(&[2, 3, 4], 4), Some(96));
        assert_eq!(tensor_bytes(&[], 4), Some(4));
        assert_eq!(tensor_bytes(&[usize::MAX, 2], 1), None);
        assert!(check_tensor_with("x", &[10, 10], 4, 400).is_ok());
        let e = check_tensor_with("fill `w`", &[10, 11], 4, 400)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("fill `w`") && e.contains("440 bytes") && e.contains("limit of 400"),
            "{e}"
        );
        assert!(e.contains(MAX_TENSOR_BYTES_ENV), "{e}");
        let e = check_tensor_with("y", &[usize::MAX, 3], 4, 400)
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than 2^64"), "{e}");
        // ResNet-50's conv1 output at batch 256 passes the default.
        assert!(check_tensor_with("a", &[256, 64, 112, 112], 4, DEFAULT_MAX_TENSOR_BYTES).is_ok());
    }
}
