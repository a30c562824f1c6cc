//! Which instruction set the kernels use, detected once per process.
//!
//! The levels form a chain, each a set of CPU features the kernels of that level may use:
//!
//! | level | needs | int8 GEMM |
//! |---|---|---|
//! | `scalar` | nothing | portable Rust |
//! | `avx2` | AVX2 + FMA | `vpmaddwd` / `vpmaddubsw` (exact, with outliers) |
//! | `avxvnni` | `avx2` + AVX-VNNI (VEX `vpdpbusd`, 256-bit) | `vpdpbusd` on ymm |
//! | `avx512` | `avx2` + AVX-512 F, BW, VL, DQ, CD | as `avx2`; 512-bit elementwise kernels |
//! | `avx512vnni` | `avx512` + AVX512-VNNI | `vpdpbusd` on zmm |
//! | `amx` | `avx512vnni` + AMX-TILE + AMX-INT8, granted by the OS | `tdpbusd` tiles |
//!
//! [`Isa::detect`] picks the highest level the CPU (and for AMX the kernel) supports;
//! `C2Q_ISA=<level>` in the environment caps it ([`Isa::current`]): the level used is the
//! highest supported one not above the requested one. Kernel families keep a table of
//! function pointers chosen from [`Isa::current`], so hot loops never test CPU features.
//! `avxvnni` sits below `avx512` in the chain but is not implied by it (Zen 4 has
//! AVX512-VNNI without AVX-VNNI): asking for it on such a CPU gives `avx2`.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// [`Isa::force`]'s level as its index in [`Isa::ALL`], or [`NOT_FORCED`].
static FORCED: AtomicU8 = AtomicU8::new(NOT_FORCED);
const NOT_FORCED: u8 = u8::MAX;

/// An instruction-set level the kernels are written for (ordered: later levels are faster).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable Rust, no SIMD intrinsics.
    Scalar,
    /// x86-64 AVX2 with FMA.
    Avx2,
    /// AVX2 + AVX-VNNI: 256-bit `vpdpbusd` (Intel Alder Lake and later clients, AMD Zen 5).
    AvxVnni,
    /// AVX-512 F/BW/VL/DQ/CD (512-bit lanes, mask registers).
    Avx512,
    /// AVX-512 + AVX512-VNNI: 512-bit `vpdpbusd` (Intel Cascade Lake and later, AMD Zen 4).
    Avx512Vnni,
    /// AVX512-VNNI + AMX-INT8 tiles (Intel Sapphire Rapids and later).
    Amx,
}

impl Isa {
    /// Every level, lowest first.
    pub const ALL: [Isa; 6] = [
        Isa::Scalar,
        Isa::Avx2,
        Isa::AvxVnni,
        Isa::Avx512,
        Isa::Avx512Vnni,
        Isa::Amx,
    ];

    /// The highest level this CPU supports (ignoring `C2Q_ISA`).
    pub fn detect() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            Isa::ALL
                .into_iter()
                .rev()
                .find(|l| l.supported())
                .unwrap_or(Isa::Scalar)
        })
    }

    /// True when this CPU (and OS, for AMX) can run the kernels of this level (probed once
    /// per process).
    pub fn supported(self) -> bool {
        static PROBED: OnceLock<[bool; 6]> = OnceLock::new();
        PROBED.get_or_init(|| Isa::ALL.map(Isa::probe))[self as usize]
    }

    /// Asks the CPU (and OS) whether this level's kernels can run.
    fn probe(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma");
            let avx512 = avx2
                && has!("avx512f")
                && has!("avx512bw")
                && has!("avx512vl")
                && has!("avx512dq")
                && has!("avx512cd");
            match self {
                Isa::Scalar => true,
                Isa::Avx2 => avx2,
                Isa::AvxVnni => avx2 && has!("avxvnni"),
                Isa::Avx512 => avx512,
                Isa::Avx512Vnni => avx512 && has!("avx512vnni"),
                Isa::Amx => avx512 && has!("avx512vnni") && amx_int8_cpuid() && amx_permission(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Scalar
        }
    }

    /// The level in use: the level set by [`Isa::force`] if any, else the highest supported
    /// level not above `C2Q_ISA` (when set to a level name), else [`Isa::detect`]. An unknown
    /// `C2Q_ISA` value is ignored.
    pub fn current() -> Isa {
        static FROM_ENV: OnceLock<Isa> = OnceLock::new();
        match FORCED.load(Ordering::Relaxed) {
            NOT_FORCED => *FROM_ENV.get_or_init(|| {
                let cap = std::env::var("C2Q_ISA")
                    .ok()
                    .and_then(|v| Isa::parse(&v))
                    .unwrap_or(Isa::Amx);
                Isa::capped(cap)
            }),
            f => Isa::capped(Isa::ALL[usize::from(f)]),
        }
    }

    /// Makes [`Isa::current`] return `Isa::capped(cap)` from now on in this process (`None`
    /// returns to `C2Q_ISA` / detection), for tests and benchmarks that compare levels in
    /// one process. Weights are packed for the level current when a model is loaded, so
    /// load models after forcing.
    pub fn force(cap: Option<Isa>) {
        FORCED.store(cap.map_or(NOT_FORCED, |l| l as u8), Ordering::Relaxed);
    }

    /// The highest supported level not above `cap`.
    pub fn capped(cap: Isa) -> Isa {
        static CAPPED: OnceLock<[Isa; 6]> = OnceLock::new();
        CAPPED.get_or_init(|| {
            Isa::ALL.map(|cap| {
                Isa::ALL
                    .into_iter()
                    .rev()
                    .find(|l| *l <= cap && l.supported())
                    .unwrap_or(Isa::Scalar)
            })
        })[cap as usize]
    }

    /// Every level this CPU supports, lowest first (for tests that compare kernels).
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|l| l.supported()).collect()
    }

    /// The level named `name` (`scalar`, `avx2`, `avxvnni`, `avx512`, `avx512vnni`, `amx`).
    pub fn parse(name: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|l| l.name() == name)
    }

    /// A short name for reports (`scalar`, `avx2`, ... as accepted by `C2Q_ISA`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avxvnni",
            Isa::Avx512 => "avx512",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Amx => "amx",
        }
    }

    /// True at levels with AVX2 + FMA.
    pub fn has_avx2(self) -> bool {
        self >= Isa::Avx2
    }

    /// True at levels with AVX-512 F/BW/VL/DQ.
    pub fn has_avx512(self) -> bool {
        self >= Isa::Avx512
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// CPUID leaf 7: AMX-TILE (EDX bit 24) and AMX-INT8 (EDX bit 25). (`is_x86_feature_detected!`
/// does not name the AMX features on stable Rust.)
#[cfg(target_arch = "x86_64")]
fn amx_int8_cpuid() -> bool {
    use std::arch::x86_64::{__cpuid, __cpuid_count};
    // Leaf 7 is read only when leaf 0 reports it.
    if __cpuid(0).eax < 7 {
        return false;
    }
    let edx = __cpuid_count(7, 0).edx;
    edx & (1 << 24) != 0 && edx & (1 << 25) != 0
}

/// Asks Linux for permission to use the AMX tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)`); without it the first tile instruction raises SIGILL. The grant is
/// per process and permanent.
#[cfg(target_arch = "x86_64")]
fn amx_permission() -> bool {
    #[cfg(target_os = "linux")]
    {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: a plain system call with integer arguments; it changes only which
        // register state this process may use.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        rc == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_order() {
        for l in Isa::ALL {
            assert_eq!(Isa::parse(l.name()), Some(l));
        }
        assert_eq!(Isa::parse("sse"), None);
        assert!(Isa::Scalar < Isa::Avx2 && Isa::Avx512Vnni < Isa::Amx);
    }

    #[test]
    fn capping_never_exceeds_the_cap_or_the_cpu() {
        for cap in Isa::ALL {
            let l = Isa::capped(cap);
            assert!(l <= cap && l.supported(), "{cap} -> {l}");
        }
        assert_eq!(Isa::capped(Isa::Scalar), Isa::Scalar);
        assert!(Isa::detect().supported());
    }

    #[test]
    fn forcing_overrides_and_resets() {
        let before = Isa::current();
        Isa::force(Some(Isa::Scalar));
        assert_eq!(Isa::current(), Isa::Scalar);
        Isa::force(Some(Isa::Amx));
        assert_eq!(Isa::current(), Isa::capped(Isa::Amx));
        Isa::force(None);
        assert_eq!(Isa::current(), before);
    }
}
