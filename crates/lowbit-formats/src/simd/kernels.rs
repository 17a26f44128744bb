//! Kernel bodies written for the auto-vectorizer: the same f32 operations as the scalar
//! references, rearranged only where that changes no result (lane-wise max of magnitudes,
//! loop interchange of independent per-element work, bit-level minifloat rounding that is exact).
//!
//! They are `#[inline(always)]` and instantiated inside `#[target_feature]` functions in
//! `x86.rs`, so each one is compiled once per instruction set. Nothing here may use fused
//! multiply-add or reassociate a sum: that is what keeps every level bit-identical.

use crate::minifloat::Minifloat;
use crate::quant::legacy::floor_log2_f32;

/// Lanes of the split reductions (enough for one AVX-512 register of f32).
const LANES: usize = 16;

/// max |x| ignoring NaN, as `x.iter().fold(0.0, |m, v| m.max(v.abs()))`: `f32::max` ignores NaN
/// and max is order-independent on the rest, so per-lane maxima give the same value.
#[inline(always)]
pub(crate) fn absmax(x: &[f32]) -> f32 {
    // `if v > acc { v } else { acc }` is `max` that keeps acc when v is NaN: one max
    // instruction per vector, no NaN fix-ups (acc itself is never NaN).
    let mut acc = [0.0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            let v = c[l].abs();
            acc[l] = if v > acc[l] { v } else { acc[l] };
        }
    }
    // Tree reduction of the lanes.
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            acc[l] = if acc[l + width] > acc[l] {
                acc[l + width]
            } else {
                acc[l]
            };
        }
        width /= 2;
    }
    let mut m = acc[0];
    for &v in chunks.remainder() {
        m = m.max(v.abs());
    }
    m
}

/// `round(x / s)` clamped to [lo, hi], times s, in place (fake-quant `scale_round_clamp`).
#[inline(always)]
pub(crate) fn scale_round_clamp(g: &mut [f32], inv: f32, s: f32, lo: f32, hi: f32) {
    for v in g.iter_mut() {
        *v = (*v * inv).round_ties_even().clamp(lo, hi) * s;
    }
}

/// Parameters of exact round-to-nearest-even into a signed minifloat with subnormals, done on
/// f32 bits: the quantum of |x| is 2^(max(exponent(|x|), emin) - man_bits), and dividing by a
/// power of two, rounding to an integer and multiplying back are all exact in f32.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FastMinifloat {
    /// Exponent (unbiased) of the lowest binade.
    emin: i32,
    /// Exponent of the binade holding the largest finite value.
    emax: i32,
    man: i32,
    max: f32,
    /// Codes for overflow and NaN, per sign (only used by `encode`).
    overflow: [u8; 2],
    nan: [u8; 2],
    bias: i32,
    sign_bit: u8,
}

impl FastMinifloat {
    /// The fast path exists for signed formats of at most 8 bits with subnormals whose
    /// quanta are normal f32 (all named FP8/FP6/FP4 formats).
    pub(crate) fn new(m: &Minifloat) -> Option<FastMinifloat> {
        if !m.signed || !m.subnormals || m.bits() > 8 || m.exp_bits == 0 {
            return None;
        }
        let emin = 1 - m.bias;
        let max = m.max_value() as f32;
        let emax = (max.to_bits() >> 23) as i32 - 127;
        let man = m.man_bits as i32;
        if emin - man < -100 || emax + 2 > 100 {
            return None;
        }
        let enc = |x: f32| m.encode(x, crate::rounding::Rounding::NearestEven) as u8;
        Some(FastMinifloat {
            emin,
            emax,
            man,
            max,
            overflow: [enc(f32::INFINITY), enc(f32::NEG_INFINITY)],
            nan: [enc(f32::NAN), enc(-f32::NAN)],
            bias: m.bias,
            sign_bit: 1u8 << (m.exp_bits + m.man_bits),
        })
    }

    /// |x| rounded to the format's grid (nearest even), x finite or infinite; the exponent is
    /// clamped to [emin, emax + 1] so that the quantum stays a normal f32 (anything at or above
    /// 2^(emax+1) is an overflow whichever quantum is used).
    #[inline(always)]
    fn round_magnitude(&self, a: f32) -> f32 {
        let e = (((a.to_bits() >> 23) as i32) - 127).clamp(self.emin, self.emax + 1);
        let k = e - self.man;
        let q = f32::from_bits(((k + 127) as u32) << 23);
        let inv_q = f32::from_bits(((127 - k) as u32) << 23);
        (a * inv_q).round_ties_even() * q
    }

    /// `m.saturating().quantize(x, NearestEven)` for non-NaN x.
    #[inline(always)]
    pub(crate) fn quantize_saturating(&self, x: f32) -> f32 {
        let a = x.abs().min(self.max);
        let r = self.round_magnitude(a);
        f32::from_bits(r.to_bits() | (x.to_bits() & 0x8000_0000))
    }

    /// `m.encode(x, NearestEven)` (the format's own overflow rule, NaN codes included).
    #[inline(always)]
    pub(crate) fn encode(&self, x: f32) -> u8 {
        let bits = x.to_bits();
        let neg = (bits >> 31) as usize;
        let a = x.abs();
        let r = self.round_magnitude(a);
        let rb = r.to_bits();
        let re = (rb >> 23) as i32 - 127;
        // Integer-only code extraction (no float -> int conversion, which vectorizes poorly).
        // Normal r: the f32 exponent and top mantissa bits, exponent rebiased. Subnormal r
        // (a multiple n of 2^(emin - man) below 2^emin): r + 2^emin has n as its top mantissa
        // bits, exactly.
        let shift = (23 - self.man) as u32;
        let normal = (rb >> shift).wrapping_sub(((127 - self.bias) as u32) << self.man);
        let two_emin = f32::from_bits(((self.emin + 127) as u32) << 23);
        let subnormal = ((r + two_emin).to_bits() >> shift) & ((1u32 << self.man) - 1);
        let mag = if re >= self.emin { normal } else { subnormal } as u8;
        // Selects instead of indexing by the sign keep the loop branch-free.
        let neg = neg == 1;
        let sign = if neg { self.sign_bit } else { 0 };
        let overflow = if neg {
            self.overflow[1]
        } else {
            self.overflow[0]
        };
        let nan = if neg { self.nan[1] } else { self.nan[0] };
        let code = if r > self.max { overflow } else { mag | sign };
        if x.is_nan() {
            nan
        } else {
            code
        }
    }
}

/// Fake quantization of a group into a saturating minifloat: `quantize(v * inv) * s`.
#[inline(always)]
pub(crate) fn minifloat_fake(g: &mut [f32], f: &FastMinifloat, inv: f32, s: f32) {
    for v in g.iter_mut() {
        *v = f.quantize_saturating(*v * inv) * s;
    }
}

#[inline(always)]
pub(crate) fn minifloat_encode(f: &FastMinifloat, src: &[f32], dst: &mut [u8]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f.encode(s);
    }
}

/// `floor_log2_f32(a)` (numpy's f32 `floor(log2(a))`) for a > 0 without calling log2 in the
/// common case: a = m 2^e with m < 1.999 gives e + log2(m) <= e + 0.99928, which rounds to
/// an f32 below e + 1 for every |e| <= 149 (f32 spacing there is at most 2^-16), so the
/// result is e. Mantissas closer to 2 may round up to e + 1: those take the reference path.
#[inline(always)]
pub(crate) fn floor_log2_fast(a: f32) -> f32 {
    let b = (a as f64).to_bits();
    let e = ((b >> 52) & 0x7ff) as i32 - 1023;
    let frac = b & ((1u64 << 52) - 1);
    // m < 1.999  <=>  frac < 0.999 * 2^52
    const LIMIT: u64 = (0.999 * (1u64 << 52) as f64) as u64;
    if a.is_finite() && a > 0.0 && frac < LIMIT {
        e as f32
    } else {
        floor_log2_f32(a)
    }
}

/// Fake quantization of consecutive groups of `n` values of a row into a saturating minifloat,
/// each with the scale `scale(absmax(group))` (fake.rs `float_groups_fast`; the same steps as
/// its per-group path). Groups of 16 and 32 run on fixed-size arrays so they fill whole vectors.
#[inline(always)]
pub(crate) fn minifloat_groups(
    row: &mut [f32],
    n: usize,
    f: &FastMinifloat,
    m: &Minifloat,
    scale: &dyn Fn(f32) -> f32,
) -> bool {
    #[inline(always)]
    fn one(g: &mut [f32], f: &FastMinifloat, m: &Minifloat, scale: &dyn Fn(f32) -> f32) {
        let s = scale(absmax(g));
        if s == 0.0 || !s.is_finite() {
            g.fill(0.0);
            return;
        }
        let inv = 1.0 / s;
        if inv.is_finite() {
            minifloat_fake(g, f, inv, s);
        } else {
            for v in g.iter_mut() {
                *v = m.quantize(*v * inv, crate::rounding::Rounding::NearestEven) * s;
            }
        }
    }
    #[inline(always)]
    fn fixed<const G: usize>(
        row: &mut [f32],
        f: &FastMinifloat,
        m: &Minifloat,
        scale: &dyn Fn(f32) -> f32,
    ) {
        let mut groups = row.chunks_exact_mut(G);
        for g in &mut groups {
            let g: &mut [f32; G] = g.try_into().unwrap();
            one(g, f, m, scale);
        }
        let rest = groups.into_remainder();
        if !rest.is_empty() {
            one(rest, f, m, scale);
        }
    }
    match n {
        16 => fixed::<16>(row, f, m, scale),
        32 => fixed::<32>(row, f, m, scale),
        _ => {
            for g in row.chunks_mut(n.max(1)) {
                one(g, f, m, scale);
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_log2_fast_matches_reference() {
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        let check = |a: f32| {
            assert_eq!(
                floor_log2_fast(a).to_bits(),
                floor_log2_f32(a).to_bits(),
                "a = {a:e} ({:#x})",
                a.to_bits()
            );
        };
        for _ in 0..200_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let a = f32::from_bits((s >> 33) as u32); // positive, any exponent
            check(a);
        }
        // Every binade: the powers of two, their neighbours and the fast-path limit.
        for e in -149..=127 {
            let p = 2f32.powi(e);
            for d in -3i32..=3 {
                check(f32::from_bits((p.to_bits() as i32).wrapping_add(d) as u32));
            }
            check(p * 1.999);
            check(p * f32::from_bits(1.999f32.to_bits() - 1)); // just below the limit
        }
        check(f32::MAX);
        check(f32::INFINITY);
    }
}
