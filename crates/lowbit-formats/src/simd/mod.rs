//! Run-time dispatch between the scalar reference code and AVX2 / AVX-512 kernels.
//!
//! Every SIMD kernel computes exactly what its scalar reference computes, bit for bit: the same
//! f32 operations in the same order (no fused multiply-adds, no reassociated sums), so results
//! never depend on the machine. Tests compare each path with the scalar code on random inputs
//! and edge values (`tests/simd_parity.rs`).
//!
//! The level is detected once (`is_x86_feature_detected!`). `LOWBIT_SIMD=scalar|avx2|avx512`
//! caps it for the whole process; [`with_level`] caps it for the current thread (benchmarks and
//! parity tests use it to run each path in one process).

use std::cell::Cell;
use std::sync::OnceLock;

#[cfg(target_arch = "x86_64")]
pub(crate) mod decode;
pub(crate) mod kernels;
pub(crate) mod kq;
#[cfg(target_arch = "x86_64")]
pub(crate) mod q8;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

/// An instruction-set level, ordered: a kernel for a level runs on every higher one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Portable Rust (the reference).
    Scalar,
    /// AVX2 + FMA + F16C (FMA is never used for arithmetic that must match the reference).
    Avx2,
    /// AVX-512 F/BW/VL/DQ.
    Avx512,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    pub fn parse(s: &str) -> Option<Level> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" | "none" | "off" => Some(Level::Scalar),
            "avx2" => Some(Level::Avx2),
            "avx512" | "avx-512" => Some(Level::Avx512),
            _ => None,
        }
    }

    /// Every level, lowest first.
    pub const ALL: [Level; 3] = [Level::Scalar, Level::Avx2, Level::Avx512];
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What this CPU supports.
pub fn hardware() -> Level {
    static HW: OnceLock<Level> = OnceLock::new();
    *HW.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("f16c")
            {
                return Level::Avx512;
            }
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                return Level::Avx2;
            }
        }
        Level::Scalar
    })
}

/// The process-wide level: the hardware's, capped by `LOWBIT_SIMD` when set.
pub fn detected() -> Level {
    static DETECTED: OnceLock<Level> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        let hw = hardware();
        match std::env::var("LOWBIT_SIMD")
            .ok()
            .as_deref()
            .and_then(Level::parse)
        {
            Some(cap) => cap.min(hw),
            None => hw,
        }
    })
}

thread_local! {
    static THREAD_CAP: Cell<Option<Level>> = const { Cell::new(None) };
}

/// The level kernels use on this thread now.
#[inline]
pub fn current() -> Level {
    let d = detected();
    match THREAD_CAP.with(|c| c.get()) {
        Some(cap) => cap.min(d),
        None => d,
    }
}

/// Run `f` with kernels capped at `level` on this thread (never above what the CPU supports,
/// so asking for AVX-512 on an AVX2 machine runs AVX2).
pub fn with_level<R>(level: Level, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Level>);
    impl Drop for Restore {
        fn drop(&mut self) {
            THREAD_CAP.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(THREAD_CAP.with(|c| c.replace(Some(level))));
    f()
}

/// Call kernel `$name` at the current level, or evaluate the scalar reference `$scalar`.
macro_rules! dispatch {
    ($name:ident($($arg:expr),*), scalar: $scalar:expr) => {{
        match $crate::simd::current() {
            // SAFETY: current() never exceeds the level the CPU reports.
            #[cfg(target_arch = "x86_64")]
            $crate::simd::Level::Avx512 => unsafe { $crate::simd::x86::avx512::$name($($arg),*) },
            #[cfg(target_arch = "x86_64")]
            $crate::simd::Level::Avx2 => unsafe { $crate::simd::x86::avx2::$name($($arg),*) },
            _ => $scalar,
        }
    }};
}
pub(crate) use dispatch;
