//! Which instruction set the int8 kernels use, detected once per process.
//!
//! Every int8 kernel family keeps a table of function pointers filled from [`Isa::current`],
//! so the feature test runs once and the hot loops never branch on it. `C2Q_ISA=scalar` in
//! the environment forces the portable path (useful to compare speeds).

use std::sync::OnceLock;

/// An instruction-set level the int8 kernels are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust, no SIMD intrinsics.
    Scalar,
    /// x86-64 AVX2 (with FMA).
    Avx2,
}

impl Isa {
    /// The best level this CPU supports (ignoring `C2Q_ISA`).
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }

    /// The level in use: [`Isa::detect`], unless `C2Q_ISA=scalar` forces the portable path.
    pub fn current() -> Isa {
        static CURRENT: OnceLock<Isa> = OnceLock::new();
        *CURRENT.get_or_init(|| match std::env::var("C2Q_ISA").as_deref() {
            Ok("scalar") => Isa::Scalar,
            _ => Isa::detect(),
        })
    }

    /// A short name for reports (`avx2`, `scalar`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
        }
    }
}
