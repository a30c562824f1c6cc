//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod int8;

use std::path::PathBuf;
use std::process::Command;

/// `../shared` beside the repository, or None (with a printed skip message) when absent.
pub fn shared(sub: &str) -> Option<PathBuf> {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")).join(sub);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("SKIP: {} is absent (../shared not available)", p.display());
        None
    }
}

/// Largest absolute difference between two slices of equal length.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Runs the `c2q` binary: (success, stdout, stderr).
pub fn c2q(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_c2q"))
        .args(args)
        .output()
        .expect("c2q runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
