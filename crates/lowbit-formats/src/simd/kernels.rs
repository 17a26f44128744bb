//! Kernel bodies written for the auto-vectorizer: the same f32 operations as the scalar
//! references, rearranged only where that changes no result (lane-wise max of magnitudes,
//! loop interchange of independent per-element work, bit-level minifloat rounding that is exact).
//!
//! They are `#[inline(always)]` and instantiated inside `#[target_feature]` functions in
//! `x86.rs`, so each one is compiled once per instruction set. Nothing here may use fused
//! multiply-add or reassociate a sum: that is what keeps every level bit-identical.

use crate::minifloat::Minifloat;
use crate::quant::legacy::{e8m0_to_f32_half, floor_log2_f32, inv_or_zero, np_u8, KVALUES_MXFP4};
use crate::quant::put_f16;

/// Lanes of the split reductions (enough for one AVX-512 register of f32).
const LANES: usize = 16;

/// max |x| ignoring NaN, as `x.iter().fold(0.0, |m, v| m.max(v.abs()))`: `f32::max` ignores NaN
/// and max is order-independent on the rest, so per-lane maxima give the same value.
#[inline(always)]
pub(crate) fn absmax(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            acc[l] = acc[l].max(c[l].abs());
        }
    }
    let mut m = 0.0f32;
    for &v in chunks.remainder() {
        m = m.max(v.abs());
    }
    for a in acc {
        m = m.max(a);
    }
    m
}

/// The element of largest magnitude, first one on ties (scalar `signed_absmax`): the lane-split
/// absmax, then the first element that reaches it. An all-zero (or all-NaN) block gives +0.0,
/// like the scalar loop's initial value.
#[inline(always)]
pub(crate) fn signed_absmax(x: &[f32]) -> f32 {
    let a = absmax(x);
    if a == 0.0 {
        return 0.0;
    }
    for &v in x {
        if v.abs() == a {
            return v;
        }
    }
    0.0
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

/// Q8_0 blocks (scalar reference: `quant::legacy::q8_0`).
#[inline(always)]
pub(crate) fn q8_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(32).zip(dst.chunks_exact_mut(34)) {
        let x: &[f32; 32] = x.try_into().unwrap();
        let d = absmax(x) / 127.0;
        let id = inv_or_zero(d);
        put_f16(b, d);
        let q: &mut [u8; 32] = (&mut b[2..34]).try_into().unwrap();
        for i in 0..32 {
            q[i] = np_u8((x[i] * id).round());
        }
    }
}

/// Q4_0 blocks (scalar reference: `quant::legacy::q4_0`).
#[inline(always)]
pub(crate) fn q4_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(32).zip(dst.chunks_exact_mut(18)) {
        let x: &[f32; 32] = x.try_into().unwrap();
        let d = signed_absmax(x) / -8.0;
        let id = inv_or_zero(d);
        let mut q = [0u8; 32];
        for i in 0..32 {
            q[i] = np_u8((x[i] * id + 8.5).trunc()).min(15);
        }
        put_f16(b, d);
        let out: &mut [u8; 16] = (&mut b[2..18]).try_into().unwrap();
        for l in 0..16 {
            out[l] = (q[l] & 0x0F) | (q[l + 16] << 4);
        }
    }
}

/// MXFP4 blocks (scalar reference: `quant::legacy::mxfp4`). The nearest-entry search is
/// interchanged (table entries outer, values inner) so 32 values are compared at once; each
/// value still sees the entries in table order with a strict `<`, so ties and NaN resolve the
/// same way (first entry).
#[inline(always)]
pub(crate) fn mxfp4(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(32).zip(dst.chunks_exact_mut(17)) {
        let x: &[f32; 32] = x.try_into().unwrap();
        let amax = absmax(x);
        let e = if amax > 0.0 {
            np_u8(floor_log2_f32(amax) - 2.0 + 127.0)
        } else {
            0
        };
        let d = e8m0_to_f32_half(e);
        let mut best = [0u8; 32];
        let mut best_err = [0f32; 32];
        let t0 = KVALUES_MXFP4[0] * d;
        for i in 0..32 {
            best_err[i] = (t0 - x[i]).abs();
        }
        for (k, &t) in KVALUES_MXFP4.iter().enumerate().skip(1) {
            let td = t * d;
            for i in 0..32 {
                let err = (td - x[i]).abs();
                if err < best_err[i] {
                    best_err[i] = err;
                    best[i] = k as u8;
                }
            }
        }
        b[0] = e;
        let out: &mut [u8; 16] = (&mut b[1..17]).try_into().unwrap();
        for l in 0..16 {
            out[l] = (best[l] & 0x0F) | (best[l + 16] << 4);
        }
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
