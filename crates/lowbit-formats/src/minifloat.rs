//! Small floating-point formats ("minifloats"): FP8, FP6, FP4 and the unsigned scale formats.
//!
//! A [`Minifloat`] is described by its field widths, exponent bias and special-value rules.
//! Encoding is exact: the f32 input is split into sign and magnitude, the magnitude is measured
//! in units of the format's spacing in its binade (an exact f64 division by a power of two),
//! rounded with a [`Rounding`] mode, and the result is range-checked (saturate, inf or NaN).
//!
//! Conventions (checked bit for bit against `ml_dtypes` casts, nearest-even, except E8M0):
//! - overflow: to inf where the format has inf, else to NaN where it has NaN, else saturate
//!   (or always saturate when `saturate` is set).
//! - NaN input: the format's NaN with the input's sign; formats without NaN give a zero whose
//!   sign is the *opposite* of the input's (what ml_dtypes does; never rely on it).
//! - unsigned formats: negative inputs (and -0) are NaN if the format has NaN, else 0.
//! - formats without subnormals or zero (E8M0): exponent field 0 is a normal binade; zero and
//!   negative inputs are NaN, inputs below the smallest value give the smallest value.
//!   ml_dtypes rounds E8M0 ties away from zero (1.5 -> 2, 3 -> 4); use `Rounding::NearestAway`
//!   to match it.

use crate::rounding::{round_magnitude, Rounding, SplitMix64};

/// Which codes are NaN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NanPolicy {
    /// IEEE 754: all-ones exponent with a non-zero mantissa (all-ones exponent, zero mantissa is
    /// inf when `has_inf`).
    Ieee,
    /// Only the all-ones exponent *and* all-ones mantissa code (E4M3FN, E8M0).
    AllOnes,
    /// No NaN at all (FP6, FP4).
    None,
}

/// A minifloat format of 1 + `exp_bits` + `man_bits` bits (no sign bit when `signed` is false).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Minifloat {
    pub name: &'static str,
    pub exp_bits: u32,
    pub man_bits: u32,
    pub bias: i32,
    pub signed: bool,
    pub has_inf: bool,
    pub nan: NanPolicy,
    /// Exponent field 0 holds subnormals (and zero). False for E8M0.
    pub subnormals: bool,
    /// Clamp overflow to the largest finite value instead of inf/NaN.
    pub saturate: bool,
}

impl Minifloat {
    pub const E4M3FN: Minifloat =
        Minifloat::new("fp8_e4m3", 4, 3, 7, true, false, NanPolicy::AllOnes);
    pub const E5M2: Minifloat = Minifloat::new("fp8_e5m2", 5, 2, 15, true, true, NanPolicy::Ieee);
    pub const E2M3: Minifloat = Minifloat::new("fp6_e2m3", 2, 3, 1, true, false, NanPolicy::None);
    pub const E3M2: Minifloat = Minifloat::new("fp6_e3m2", 3, 2, 3, true, false, NanPolicy::None);
    pub const E2M1: Minifloat = Minifloat::new("fp4_e2m1", 2, 1, 1, true, false, NanPolicy::None);
    /// OCP MX shared scale: 2^(e - 127), code 0xFF is NaN, no zero.
    pub const UE8M0: Minifloat = Minifloat {
        subnormals: false,
        ..Minifloat::new("ue8m0", 8, 0, 127, false, false, NanPolicy::AllOnes)
    };
    /// NVFP4 block scale: unsigned E4M3 (0x7F is NaN).
    pub const UE4M3: Minifloat = Minifloat::new("ue4m3", 4, 3, 7, false, false, NanPolicy::AllOnes);
    pub const UE5M3: Minifloat =
        Minifloat::new("ue5m3", 5, 3, 15, false, false, NanPolicy::AllOnes);

    /// A format with subnormals, not saturating.
    pub const fn new(
        name: &'static str,
        exp_bits: u32,
        man_bits: u32,
        bias: i32,
        signed: bool,
        has_inf: bool,
        nan: NanPolicy,
    ) -> Minifloat {
        Minifloat {
            name,
            exp_bits,
            man_bits,
            bias,
            signed,
            has_inf,
            nan,
            subnormals: true,
            saturate: false,
        }
    }

    /// All named formats.
    pub fn named() -> [Minifloat; 8] {
        [
            Self::E4M3FN,
            Self::E5M2,
            Self::E2M3,
            Self::E3M2,
            Self::E2M1,
            Self::UE8M0,
            Self::UE4M3,
            Self::UE5M3,
        ]
    }

    /// Look a named format up (`fp8_e4m3`, `e4m3`, `e4m3fn`, `fp4`, `e8m0`, ...).
    pub fn by_name(name: &str) -> Option<Minifloat> {
        let n = name.to_ascii_lowercase();
        let n = n
            .trim_start_matches("fp8_")
            .trim_start_matches("fp6_")
            .trim_start_matches("fp4_");
        Some(match n {
            "e4m3" | "e4m3fn" => Self::E4M3FN,
            "e5m2" => Self::E5M2,
            "e2m3" | "e2m3fn" => Self::E2M3,
            "e3m2" | "e3m2fn" => Self::E3M2,
            "e2m1" | "e2m1fn" | "fp4" => Self::E2M1,
            "ue8m0" | "e8m0" | "e8m0fnu" => Self::UE8M0,
            "ue4m3" => Self::UE4M3,
            "ue5m3" => Self::UE5M3,
            _ => return None,
        })
    }

    pub const fn saturating(self) -> Minifloat {
        Minifloat {
            saturate: true,
            ..self
        }
    }

    /// Total bits per code.
    pub const fn bits(&self) -> u32 {
        self.signed as u32 + self.exp_bits + self.man_bits
    }

    fn exp_max_field(&self) -> u32 {
        (1 << self.exp_bits) - 1
    }

    fn sign_bit(&self) -> u32 {
        if self.signed {
            1 << (self.exp_bits + self.man_bits)
        } else {
            0
        }
    }

    /// The largest finite value's (exponent field, mantissa field).
    fn max_fields(&self) -> (u32, u32) {
        let man_all = (1u32 << self.man_bits) - 1;
        let emax = self.exp_max_field();
        if self.nan == NanPolicy::Ieee || self.has_inf {
            (emax - 1, man_all)
        } else if self.nan == NanPolicy::AllOnes {
            if self.man_bits == 0 {
                (emax - 1, 0)
            } else {
                (emax, man_all - 1)
            }
        } else {
            (emax, man_all)
        }
    }

    /// Exponent (unbiased) of the lowest binade, and whether codes below it exist.
    fn min_exp(&self) -> i32 {
        if self.subnormals {
            1 - self.bias
        } else {
            -self.bias
        }
    }

    fn value_of_fields(&self, e: u32, m: u32) -> f64 {
        let scale = |k: i32| (2f64).powi(k);
        if e == 0 && self.subnormals {
            m as f64 * scale(1 - self.bias - self.man_bits as i32)
        } else {
            (((1u64 << self.man_bits) + m as u64) as f64)
                * scale(e as i32 - self.bias - self.man_bits as i32)
        }
    }

    /// Largest finite value.
    pub fn max_value(&self) -> f64 {
        let (e, m) = self.max_fields();
        self.value_of_fields(e, m)
    }

    /// Smallest positive value (subnormal where the format has them).
    pub fn min_positive(&self) -> f64 {
        if self.subnormals {
            self.value_of_fields(0, 1)
        } else {
            self.value_of_fields(0, 0)
        }
    }

    /// The canonical NaN code, if any (sign bit clear).
    pub fn nan_code(&self) -> Option<u32> {
        let emax = self.exp_max_field() << self.man_bits;
        match self.nan {
            NanPolicy::Ieee => Some(emax | (1 << (self.man_bits.max(1) - 1))),
            NanPolicy::AllOnes => Some(emax | ((1 << self.man_bits) - 1)),
            NanPolicy::None => None,
        }
    }

    /// Whether `code` is a NaN.
    pub fn is_nan(&self, code: u32) -> bool {
        let c = code & !self.sign_bit();
        let e = c >> self.man_bits;
        let m = c & ((1 << self.man_bits) - 1);
        match self.nan {
            NanPolicy::Ieee => e == self.exp_max_field() && m != 0,
            NanPolicy::AllOnes => e == self.exp_max_field() && m == (1 << self.man_bits) - 1,
            NanPolicy::None => false,
        }
    }

    /// Decode a code (only the low `bits()` bits are used).
    pub fn decode(&self, code: u32) -> f32 {
        let code = code & ((1u32 << self.bits()) - 1);
        if self.is_nan(code) {
            return f32::NAN;
        }
        let neg = code & self.sign_bit() != 0;
        let c = code & !self.sign_bit();
        let e = c >> self.man_bits;
        let m = c & ((1 << self.man_bits) - 1);
        let mag = if self.has_inf && e == self.exp_max_field() && m == 0 {
            f64::INFINITY
        } else {
            self.value_of_fields(e, m)
        };
        (if neg { -mag } else { mag }) as f32
    }

    /// Encode with a deterministic rounding mode (Stochastic falls back to nearest-even).
    pub fn encode(&self, x: f32, mode: Rounding) -> u32 {
        self.encode_impl(x, mode, None)
    }

    /// Encode with stochastic rounding driven by `rng`.
    pub fn encode_stochastic(&self, x: f32, rng: &mut SplitMix64) -> u32 {
        self.encode_impl(x, Rounding::Stochastic, Some(rng))
    }

    /// Round to the nearest representable value (as f32), i.e. decode(encode(x)).
    pub fn quantize(&self, x: f32, mode: Rounding) -> f32 {
        self.decode(self.encode(x, mode))
    }

    fn overflow_code(&self, sign: u32) -> u32 {
        let (e, m) = self.max_fields();
        let max_code = sign | (e << self.man_bits) | m;
        if self.saturate {
            max_code
        } else if self.has_inf {
            sign | (self.exp_max_field() << self.man_bits)
        } else if let Some(nan) = self.nan_code() {
            sign | nan
        } else {
            max_code
        }
    }

    pub(crate) fn encode_impl(&self, x: f32, mode: Rounding, rng: Option<&mut SplitMix64>) -> u32 {
        let neg = x.is_sign_negative();
        if x.is_nan() {
            return match self.nan_code() {
                Some(nan) => nan | if neg { self.sign_bit() } else { 0 },
                None => {
                    if neg {
                        0
                    } else {
                        self.sign_bit()
                    }
                }
            };
        }
        if !self.signed && ((neg && x != 0.0) || (!self.subnormals && x == 0.0)) {
            return self.nan_code().unwrap_or(0);
        }
        let sign = if neg { self.sign_bit() } else { 0 }; // unsigned: sign_bit() is 0
        let a = (x as f64).abs();
        if a.is_infinite() {
            return self.overflow_code(sign);
        }
        if a == 0.0 {
            return sign;
        }
        // Spacing of representable values in a's binade (clamped to the lowest binade).
        let bits = a.to_bits();
        let exp = ((bits >> 52) & 0x7ff) as i32 - 1023; // a is an f32, never subnormal in f64
        let e_unb = exp.max(self.min_exp());
        let ulp_exp = e_unb - self.man_bits as i32;
        let t = a * (2f64).powi(-ulp_exp);
        let n = round_magnitude(t, neg, mode, rng);
        let lowest = if self.subnormals {
            0.0
        } else {
            (1u64 << self.man_bits) as f64
        };
        if n < lowest {
            // Only formats without zero get here: clamp to the smallest value.
            return sign;
        }
        let v = n * (2f64).powi(ulp_exp);
        if v > self.max_value() {
            return self.overflow_code(sign);
        }
        if n == 0.0 {
            return sign;
        }
        // Fields of v: exponent from its binade, mantissa from the remainder.
        let vexp = ((v.to_bits() >> 52) & 0x7ff) as i32 - 1023;
        let (e_field, m_field) = if self.subnormals && vexp < 1 - self.bias {
            (
                0u32,
                (v * (2f64).powi(self.bias - 1 + self.man_bits as i32)) as u32,
            )
        } else {
            let e_field = (vexp + self.bias) as u32;
            let frac =
                v * (2f64).powi(self.man_bits as i32 - vexp) - (1u64 << self.man_bits) as f64;
            (e_field, frac as u32)
        };
        sign | (e_field << self.man_bits) | m_field
    }

    /// Encode a slice into codes (one u8 per code; formats are at most 8 bits wide here).
    pub fn encode_slice(&self, src: &[f32], dst: &mut [u8], mode: Rounding) {
        if mode == Rounding::NearestEven && crate::simd::current() != crate::simd::Level::Scalar {
            if let Some(f) = crate::simd::kernels::FastMinifloat::new(self) {
                let n = src.len().min(dst.len());
                crate::simd::dispatch!(minifloat_encode(&f, &src[..n], &mut dst[..n]), scalar: {});
                return;
            }
        }
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = self.encode(s, mode) as u8;
        }
    }

    /// Decode a slice of codes.
    pub fn decode_slice(&self, src: &[u8], dst: &mut [f32]) {
        // A 256-entry table: decoding is then a lookup.
        let mut table = [0f32; 256];
        if self.bits() <= 8 {
            for (c, t) in table.iter_mut().enumerate() {
                *t = self.decode(c as u32);
            }
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = table[s as usize];
            }
        } else {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = self.decode(s as u32);
            }
        }
    }
}

/// One line describing a format (range and precision).
pub fn describe(f: &Minifloat) -> String {
    format!(
        "{}: {} bits (E{}M{}, bias {}{}), max {}, min subnormal {}",
        f.name,
        f.bits(),
        f.exp_bits,
        f.man_bits,
        f.bias,
        if f.signed { "" } else { ", unsigned" },
        f.max_value(),
        f.min_positive()
    )
}
