//! KV-cache storage types and the row kernels attention runs on them.
//!
//! A cache row is the `head_dim` values of one (position, KV head). Every type is symmetric and
//! quantized dynamically when the row is written (no calibration, no static scales):
//!
//! | type | stored per row of `d` values | bytes per row (d = 256) |
//! |---|---|---|
//! | f32 | `d` f32 | 1024 |
//! | f16 | `d` IEEE half | 512 |
//! | q8  | `d` int8 codes in [-127, 127] + one f32 scale `amax / 127` | 260 |
//! | q4  | per group of 32 values (the last group shorter when `d` is not a multiple of 32): 4-bit codes in [-8, 7] (stored +8) + one f16 scale `d = m / -8`, `m` the value of largest magnitude (llama.cpp's Q4_0 rule: `m` maps to -8 exactly) | 144 |
//! | fp8 | `d` FP8 E4M3 codes (saturating, nearest-even) + one f32 scale `amax / 448` | 260 |
//!
//! In a q4 group of `L` values, byte `i < L/2` holds value `i` in its low nibble and value
//! `i + L/2` in its high nibble (Q4_0's order), so 16 bytes widen to two contiguous 16-lane
//! vectors.
//!
//! The kernels read the stored codes and widen them to f32 in registers (`dot` against a query,
//! `axpy` into an output); no f32 copy of the cache is made on the decode path. The AVX-512 kernels
//! differ from the scalar ones only in the order of the f32 additions.

use lowbit_formats::minifloat::Minifloat;
use lowbit_formats::rounding::Rounding;

use crate::hadamard::Hadamard;

/// Values per q4 scale group.
pub const Q4_GROUP: usize = 32;

/// FP8 E4M3 (saturating) as used by the cache.
const E4M3: Minifloat = Minifloat::E4M3FN.saturating();
/// Largest finite E4M3 value.
const E4M3_MAX: f32 = 448.0;

/// How a KV cache stores its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KvDtype {
    /// Full precision (what the model computes; the default).
    #[default]
    F32,
    F16,
    /// int8 codes, one f32 scale per (position, KV head) row.
    Q8,
    /// int4 codes, one f16 scale per group of 32 values of a row.
    Q4,
    /// FP8 E4M3 codes, one f32 scale per (position, KV head) row.
    Fp8,
}

impl KvDtype {
    pub const ALL: [KvDtype; 5] = [
        KvDtype::F32,
        KvDtype::F16,
        KvDtype::Q8,
        KvDtype::Q4,
        KvDtype::Fp8,
    ];

    /// `f32`, `f16`, `q8` (or `int8`), `q4` (or `int4`), `fp8` (or `fp8_e4m3`).
    pub fn parse(s: &str) -> Option<KvDtype> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" => KvDtype::F32,
            "f16" | "fp16" => KvDtype::F16,
            "q8" | "int8" => KvDtype::Q8,
            "q4" | "int4" => KvDtype::Q4,
            "fp8" | "fp8_e4m3" | "e4m3" => KvDtype::Fp8,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
            KvDtype::Q8 => "q8",
            KvDtype::Q4 => "q4",
            KvDtype::Fp8 => "fp8",
        }
    }

    /// Bytes of one stored row of `head_dim` values, scales included.
    pub fn row_bytes(self, head_dim: usize) -> usize {
        match self {
            KvDtype::F32 => 4 * head_dim,
            KvDtype::F16 => 2 * head_dim,
            KvDtype::Q8 | KvDtype::Fp8 => head_dim + 4,
            KvDtype::Q4 => head_dim / 2 + 2 * head_dim.div_ceil(Q4_GROUP),
        }
    }
}

impl std::fmt::Display for KvDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A KV cache's storage type and optional rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KvCacheSpec {
    pub dtype: KvDtype,
    /// `Some(seed)`: keys and values are rotated by `Q = D·H/√head_dim` (randomized Hadamard,
    /// ±1 signs `D` from `seed`) before they are stored, queries by the same `Q` (so scores are
    /// unchanged in exact arithmetic), and the attention output by `Qᵀ` (undoing it on values).
    pub rotation_seed: Option<u64>,
}

impl KvCacheSpec {
    pub fn new(dtype: KvDtype) -> KvCacheSpec {
        KvCacheSpec {
            dtype,
            rotation_seed: None,
        }
    }

    /// Cache bytes per token of one layer (keys and values of every KV head).
    pub fn bytes_per_token(&self, n_kv_heads: usize, head_dim: usize) -> usize {
        2 * n_kv_heads * self.dtype.row_bytes(head_dim)
    }

    /// Whether a cache of this spec can be built for `head_dim` (q4 needs an even `head_dim`; a
    /// rotation needs a Hadamard matrix of that size).
    pub fn check(&self, head_dim: usize) -> Result<(), KvError> {
        if head_dim == 0 {
            return Err(KvError("head_dim is 0".into()));
        }
        if self.dtype == KvDtype::Q4 && !head_dim.is_multiple_of(2) {
            return Err(KvError(format!(
                "a q4 KV cache packs value pairs: head_dim {head_dim} is odd"
            )));
        }
        if let Some(seed) = self.rotation_seed {
            Rotation::new(head_dim, seed)?;
        }
        Ok(())
    }

    /// `f16`, `q8+rot`, ...
    pub fn name(&self) -> String {
        match self.rotation_seed {
            None => self.dtype.name().to_string(),
            Some(_) => format!("{}+rot", self.dtype.name()),
        }
    }
}

/// Why a KV cache could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvError(pub String);

impl std::fmt::Display for KvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KV cache: {}", self.0)
    }
}

impl std::error::Error for KvError {}

/// The rows of one of K or V: `rows = capacity × n_kv_heads` rows of `head_dim` values.
#[derive(Debug, Clone)]
pub(crate) enum Store {
    F32(Vec<f32>),
    /// IEEE half bits.
    F16(Vec<u16>),
    Q8 {
        codes: Vec<i8>,
        scales: Vec<f32>,
    },
    /// `head_dim / 2` bytes per row; `ceil(head_dim / 32)` f16 scale bits per row.
    Q4 {
        codes: Vec<u8>,
        scales: Vec<u16>,
    },
    Fp8 {
        codes: Vec<u8>,
        scales: Vec<f32>,
    },
}

/// One stored row, borrowed.
#[derive(Clone, Copy)]
pub(crate) enum Row<'a> {
    F32(&'a [f32]),
    F16(&'a [u16]),
    Q8(&'a [i8], f32),
    /// Packed codes and the f16 scale bits of each group.
    Q4(&'a [u8], &'a [u16]),
    Fp8(&'a [u8], f32),
}

impl Store {
    pub(crate) fn new(dtype: KvDtype, rows: usize, hd: usize) -> Store {
        let n = rows * hd;
        match dtype {
            KvDtype::F32 => Store::F32(vec![0.0; n]),
            KvDtype::F16 => Store::F16(vec![0; n]),
            KvDtype::Q8 => Store::Q8 {
                codes: vec![0; n],
                scales: vec![0.0; rows],
            },
            KvDtype::Q4 => Store::Q4 {
                codes: vec![0; n / 2],
                scales: vec![0; rows * hd.div_ceil(Q4_GROUP)],
            },
            KvDtype::Fp8 => Store::Fp8 {
                codes: vec![0; n],
                scales: vec![0.0; rows],
            },
        }
    }

    /// Row `r` (= position × n_kv_heads + head).
    #[inline(always)]
    pub(crate) fn row(&self, r: usize, hd: usize) -> Row<'_> {
        match self {
            Store::F32(v) => Row::F32(&v[r * hd..(r + 1) * hd]),
            Store::F16(v) => Row::F16(&v[r * hd..(r + 1) * hd]),
            Store::Q8 { codes, scales } => Row::Q8(&codes[r * hd..(r + 1) * hd], scales[r]),
            Store::Q4 { codes, scales } => {
                let g = hd.div_ceil(Q4_GROUP);
                Row::Q4(
                    &codes[r * hd / 2..(r + 1) * hd / 2],
                    &scales[r * g..(r + 1) * g],
                )
            }
            Store::Fp8 { codes, scales } => Row::Fp8(&codes[r * hd..(r + 1) * hd], scales[r]),
        }
    }

    /// Quantize `x` (`hd` values) into row `r`. `tmp` is scratch (reused, so no allocation per
    /// token once it has grown).
    pub(crate) fn write_row(&mut self, r: usize, hd: usize, x: &[f32], tmp: &mut Vec<f32>) {
        debug_assert_eq!(x.len(), hd);
        match self {
            Store::F32(v) => v[r * hd..(r + 1) * hd].copy_from_slice(x),
            Store::F16(v) => {
                for (d, &s) in v[r * hd..(r + 1) * hd].iter_mut().zip(x) {
                    *d = half::f16::from_f32(s).to_bits();
                }
            }
            Store::Q8 { codes, scales } => {
                let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                let scale = amax / 127.0;
                let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                for (d, &s) in codes[r * hd..(r + 1) * hd].iter_mut().zip(x) {
                    *d = (s * inv).round().clamp(-127.0, 127.0) as i8;
                }
                scales[r] = scale;
            }
            Store::Q4 { codes, scales } => {
                let g = hd.div_ceil(Q4_GROUP);
                let row_codes = &mut codes[r * hd / 2..(r + 1) * hd / 2];
                for (gi, (xs, cs)) in x
                    .chunks(Q4_GROUP)
                    .zip(row_codes.chunks_mut(Q4_GROUP / 2))
                    .enumerate()
                {
                    let m = xs
                        .iter()
                        .copied()
                        .fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
                    // Clamped to f16's range so a huge row cannot store an infinite scale.
                    let d = (m / -8.0).clamp(-65504.0, 65504.0);
                    let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
                    let half_len = xs.len() / 2;
                    for (i, c) in cs.iter_mut().enumerate() {
                        let code = |v: f32| ((v * inv).round().clamp(-8.0, 7.0) as i32 + 8) as u8;
                        *c = code(xs[i]) | (code(xs[i + half_len]) << 4);
                    }
                    scales[r * g + gi] = half::f16::from_f32(d).to_bits();
                }
            }
            Store::Fp8 { codes, scales } => {
                let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                let scale = amax / E4M3_MAX;
                let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                tmp.clear();
                tmp.extend(x.iter().map(|v| v * inv));
                E4M3.encode_slice(tmp, &mut codes[r * hd..(r + 1) * hd], Rounding::NearestEven);
                scales[r] = scale;
            }
        }
    }

    /// Bytes held (codes and scales).
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Store::F32(v) => 4 * v.len(),
            Store::F16(v) => 2 * v.len(),
            Store::Q8 { codes, scales } => codes.len() + 4 * scales.len(),
            Store::Q4 { codes, scales } => codes.len() + 2 * scales.len(),
            Store::Fp8 { codes, scales } => codes.len() + 4 * scales.len(),
        }
    }
}

/// E4M3 code → its value × 2⁻⁸, exactly: the 7 magnitude bits shifted into an f16 (exponent bias
/// 15 instead of 7; E4M3 subnormals land on f16 subnormals of the same mantissa). The NaN codes
/// (0x7f, 0xff) read as ±480 × 2⁻⁸; the saturating encoder never writes them.
#[inline(always)]
fn fp8_as_f16(c: u8) -> u16 {
    (((c & 0x7f) as u16) << 7) | (((c & 0x80) as u16) << 8)
}

/// E4M3 code → value.
#[inline(always)]
pub(crate) fn fp8_value(c: u8) -> f32 {
    f16_value(fp8_as_f16(c)) * 256.0
}

/// IEEE half → f32, exactly, in integer and f32 operations the compiler vectorizes (the scalar
/// path has no F16C): the 15 magnitude bits placed under an f32's exponent field read as the
/// value × 2⁻¹¹², subnormals included; infinities and NaN are patched.
#[inline(always)]
fn f16_value(b: u16) -> f32 {
    let em = (b & 0x7fff) as u32;
    let sign = ((b & 0x8000) as u32) << 16;
    let mag = if em >= 0x7c00 {
        0x7f80_0000 | ((em & 0x3ff) << 13)
    } else {
        (f32::from_bits(em << 13) * f32::from_bits(0x7780_0000)).to_bits() // × 2¹¹²
    };
    f32::from_bits(mag | sign)
}

/// The stored values of a row (what the cache holds, dequantized): the first `out.len()` of them
/// (for q4 a whole number of groups, or the rest of the row).
pub(crate) fn dequantize_row(row: Row<'_>, out: &mut [f32]) {
    match row {
        Row::F32(v) => out.copy_from_slice(&v[..out.len()]),
        Row::F16(v) => {
            for (o, &b) in out.iter_mut().zip(v) {
                *o = f16_value(b);
            }
        }
        Row::Q8(c, s) => {
            for (o, &b) in out.iter_mut().zip(c) {
                *o = b as f32 * s;
            }
        }
        Row::Fp8(c, s) => {
            for (o, &b) in out.iter_mut().zip(c) {
                *o = fp8_value(b) * s;
            }
        }
        Row::Q4(c, scales) => {
            for ((os, cs), &sb) in out
                .chunks_mut(Q4_GROUP)
                .zip(c.chunks(Q4_GROUP / 2))
                .zip(scales)
            {
                let d = f16_value(sb);
                let h = os.len() / 2;
                for (i, &b) in cs.iter().enumerate() {
                    os[i] = ((b & 15) as i32 - 8) as f32 * d;
                    os[i + h] = ((b >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
    }
}

/// `Σ q[i] · f(w[i])` with 16 independent lanes (so the compiler vectorizes the scalar path).
#[inline(always)]
fn lanes_dot<T: Copy>(q: &[f32], w: &[T], f: impl Fn(T) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let (qc, wc) = (q.chunks_exact(16), w.chunks_exact(16));
    let (qr, wr) = (qc.remainder(), wc.remainder());
    for (a, b) in qc.zip(wc) {
        for l in 0..16 {
            acc[l] += a[l] * f(b[l]);
        }
    }
    acc.iter().sum::<f32>() + qr.iter().zip(wr).map(|(a, &b)| a * f(b)).sum::<f32>()
}

/// The row kernels of the decode path. Each takes one stored row and the `G` query heads that
/// share its KV head, so the row is widened once per group.
pub(crate) trait RowKernel {
    /// `out[g] = Σ_i qs[g·n + i] · row[i]` for `g < out.len()` (`n` the row's length).
    ///
    /// # Safety
    /// The CPU supports the kernel's instructions; `qs` holds `out.len()` rows of the row's length.
    unsafe fn dots(row: Row<'_>, qs: &[f32], out: &mut [f32]);
    /// `o[g·n + i] += a[g] · row[i]` for `g < a.len()`.
    ///
    /// # Safety
    /// As [`RowKernel::dots`], with `o` holding `a.len()` rows of the row's length.
    unsafe fn axpys(row: Row<'_>, a: &[f32], o: &mut [f32]);
}

/// Portable kernels (the reference the SIMD ones are tested against).
pub(crate) struct Scalar;

impl Scalar {
    /// `Σ q[i] · row[i]`.
    #[inline(always)]
    fn dot(row: Row<'_>, q: &[f32]) -> f32 {
        match row {
            Row::F32(v) => crate::matmul::dot(q, v),
            Row::F16(v) => lanes_dot(q, v, f16_value),
            Row::Q8(c, s) => lanes_dot(q, c, |b| b as f32) * s,
            Row::Fp8(c, s) => lanes_dot(q, c, fp8_value) * s,
            Row::Q4(c, scales) => {
                let mut total = 0f32;
                for ((qs, cs), &sb) in q.chunks(Q4_GROUP).zip(c.chunks(Q4_GROUP / 2)).zip(scales) {
                    let h = qs.len() / 2;
                    let mut acc = 0f32;
                    for (i, &b) in cs.iter().enumerate() {
                        acc += qs[i] * ((b & 15) as i32 - 8) as f32
                            + qs[i + h] * ((b >> 4) as i32 - 8) as f32;
                    }
                    total += acc * f16_value(sb);
                }
                total
            }
        }
    }

    /// `o[i] += a · row[i]`.
    #[inline(always)]
    fn axpy(row: Row<'_>, a: f32, o: &mut [f32]) {
        match row {
            Row::F32(v) => o.iter_mut().zip(v).for_each(|(x, y)| *x += a * y),
            Row::F16(v) => o
                .iter_mut()
                .zip(v)
                .for_each(|(x, &y)| *x += a * f16_value(y)),
            Row::Q8(c, s) => {
                let a = a * s;
                o.iter_mut().zip(c).for_each(|(x, &y)| *x += a * y as f32)
            }
            Row::Fp8(c, s) => {
                let a = a * s;
                o.iter_mut()
                    .zip(c)
                    .for_each(|(x, &y)| *x += a * fp8_value(y))
            }
            Row::Q4(c, scales) => {
                for ((os, cs), &sb) in o
                    .chunks_mut(Q4_GROUP)
                    .zip(c.chunks(Q4_GROUP / 2))
                    .zip(scales)
                {
                    let ad = a * f16_value(sb);
                    let h = os.len() / 2;
                    for (i, &b) in cs.iter().enumerate() {
                        os[i] += ad * ((b & 15) as i32 - 8) as f32;
                        os[i + h] += ad * ((b >> 4) as i32 - 8) as f32;
                    }
                }
            }
        }
    }
}

/// Values the portable kernels widen at a time (a multiple of the q4 group).
const SCALAR_CHUNK: usize = 64;

/// The portable group kernels widen each chunk of 64 stored values once into a stack buffer
/// (simple loops the compiler vectorizes), then run f32 dot products / axpys on it for every
/// query head.
impl RowKernel for Scalar {
    #[inline(always)]
    unsafe fn dots(row: Row<'_>, qs: &[f32], out: &mut [f32]) {
        let n = qs.len() / out.len().max(1);
        out.iter_mut().for_each(|o| *o = 0.0);
        let mut buf = [0f32; SCALAR_CHUNK];
        for c0 in (0..n).step_by(SCALAR_CHUNK) {
            let w = &mut buf[..SCALAR_CHUNK.min(n - c0)];
            dequantize_row(skip(row, c0), w);
            for (g, o) in out.iter_mut().enumerate() {
                *o += crate::matmul::dot(&qs[g * n + c0..g * n + c0 + w.len()], w);
            }
        }
    }

    #[inline(always)]
    unsafe fn axpys(row: Row<'_>, a: &[f32], o: &mut [f32]) {
        let n = o.len() / a.len().max(1);
        let mut buf = [0f32; SCALAR_CHUNK];
        for c0 in (0..n).step_by(SCALAR_CHUNK) {
            let w = &mut buf[..SCALAR_CHUNK.min(n - c0)];
            dequantize_row(skip(row, c0), w);
            for (g, &ag) in a.iter().enumerate() {
                let og = &mut o[g * n + c0..g * n + c0 + w.len()];
                og.iter_mut().zip(w.iter()).for_each(|(x, y)| *x += ag * y);
            }
        }
    }
}

/// The row without its first `k` values (k a multiple of 32 for q4).
#[inline(always)]
fn skip(row: Row<'_>, k: usize) -> Row<'_> {
    match row {
        Row::F32(v) => Row::F32(&v[k..]),
        Row::F16(v) => Row::F16(&v[k..]),
        Row::Q8(c, s) => Row::Q8(&c[k..], s),
        Row::Fp8(c, s) => Row::Fp8(&c[k..], s),
        Row::Q4(c, sc) => Row::Q4(&c[k / 2..], &sc[k / Q4_GROUP..]),
    }
}

/// AVX-512F (+ F16C, AVX2) kernels: 16 stored values widened per instruction.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx512;

/// AVX-512F, F16C, AVX2 and FMA are available.
pub(crate) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        has!("avx512f") && has!("f16c") && has!("avx2") && has!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{f16_value, skip, Avx512, Row, RowKernel, Scalar, Q4_GROUP};

    #[inline(always)]
    unsafe fn f16x16(p: *const u16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }

    #[inline(always)]
    unsafe fn i8x16(p: *const i8) -> __m512 {
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i)))
    }

    /// 16 E4M3 codes → values × 2⁻⁸ (see `fp8_as_f16`).
    #[inline(always)]
    unsafe fn fp8x16(p: *const u8) -> __m512 {
        let b = _mm256_cvtepu8_epi16(_mm_loadu_si128(p as *const __m128i));
        let mag = _mm256_slli_epi16::<7>(_mm256_and_si256(b, _mm256_set1_epi16(0x7f)));
        let sign = _mm256_slli_epi16::<8>(_mm256_and_si256(b, _mm256_set1_epi16(0x80)));
        _mm512_cvtph_ps(_mm256_or_si256(mag, sign))
    }

    /// 16 bytes of a q4 group of 32 → (values 0..16, values 16..32) as codes in [-8, 7].
    #[inline(always)]
    unsafe fn q4x32(p: *const u8) -> (__m512, __m512) {
        let b = _mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i));
        let eight = _mm512_set1_epi32(8);
        let lo = _mm512_sub_epi32(_mm512_and_si512(b, _mm512_set1_epi32(15)), eight);
        let hi = _mm512_sub_epi32(_mm512_srli_epi32::<4>(b), eight);
        (_mm512_cvtepi32_ps(lo), _mm512_cvtepi32_ps(hi))
    }

    /// `Σ_i q[g·n + i]·w(i)` for each of G query rows over the first `n16` values (a multiple
    /// of 16): each 16 stored values are widened once and used G times.
    #[inline(always)]
    unsafe fn dots16<const G: usize>(
        n16: usize,
        n: usize,
        q: *const f32,
        w: impl Fn(usize) -> __m512,
    ) -> [f32; G] {
        let mut acc = [_mm512_setzero_ps(); G];
        let mut i = 0;
        while i < n16 {
            let wv = w(i);
            for (g, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(wv, _mm512_loadu_ps(q.add(g * n + i)), *a);
            }
            i += 16;
        }
        let mut out = [0f32; G];
        for g in 0..G {
            out[g] = _mm512_reduce_add_ps(acc[g]);
        }
        out
    }

    /// `o[g·n + i] += a[g]·w(i)` over the first `n16` values.
    #[inline(always)]
    unsafe fn axpys16<const G: usize>(
        n16: usize,
        n: usize,
        a: [f32; G],
        o: *mut f32,
        w: impl Fn(usize) -> __m512,
    ) {
        let mut av = [_mm512_setzero_ps(); G];
        for g in 0..G {
            av[g] = _mm512_set1_ps(a[g]);
        }
        let mut i = 0;
        while i < n16 {
            let wv = w(i);
            for (g, ag) in av.iter().enumerate() {
                let p = o.add(g * n + i);
                _mm512_storeu_ps(p, _mm512_fmadd_ps(wv, *ag, _mm512_loadu_ps(p)));
            }
            i += 16;
        }
    }

    /// [`RowKernel::dots`] for exactly G query rows.
    #[inline(always)]
    unsafe fn dots_g<const G: usize>(row: Row<'_>, q: &[f32], out: &mut [f32]) {
        let n = q.len() / G;
        let qp = q.as_ptr();
        // Codes × `scale` are the values; `done` values are handled here, the rest by Scalar.
        let (sums, scale, done) = match row {
            Row::F32(v) => {
                let p = v.as_ptr();
                let n16 = n / 16 * 16;
                (
                    dots16::<G>(n16, n, qp, |i| _mm512_loadu_ps(p.add(i))),
                    1.0,
                    n16,
                )
            }
            Row::F16(v) => {
                let p = v.as_ptr();
                let n16 = n / 16 * 16;
                (dots16::<G>(n16, n, qp, |i| f16x16(p.add(i))), 1.0, n16)
            }
            Row::Q8(c, s) => {
                let p = c.as_ptr();
                let n16 = n / 16 * 16;
                (dots16::<G>(n16, n, qp, |i| i8x16(p.add(i))), s, n16)
            }
            Row::Fp8(c, s) => {
                let p = c.as_ptr();
                let n16 = n / 16 * 16;
                // fp8x16 reads values × 2⁻⁸.
                (
                    dots16::<G>(n16, n, qp, |i| fp8x16(p.add(i))),
                    s * 256.0,
                    n16,
                )
            }
            Row::Q4(c, scales) => {
                let full = n / Q4_GROUP;
                let mut acc = [_mm512_setzero_ps(); G];
                for (gr, &sb) in scales[..full].iter().enumerate() {
                    let (lo, hi) = q4x32(c.as_ptr().add(gr * Q4_GROUP / 2));
                    let d = _mm512_set1_ps(f16_value(sb));
                    for (g, a) in acc.iter_mut().enumerate() {
                        let qg = qp.add(g * n + gr * Q4_GROUP);
                        let t = _mm512_fmadd_ps(
                            hi,
                            _mm512_loadu_ps(qg.add(16)),
                            _mm512_mul_ps(lo, _mm512_loadu_ps(qg)),
                        );
                        *a = _mm512_fmadd_ps(t, d, *a);
                    }
                }
                let mut sums = [0f32; G];
                for g in 0..G {
                    sums[g] = _mm512_reduce_add_ps(acc[g]);
                }
                (sums, 1.0, full * Q4_GROUP)
            }
        };
        let tail = skip(row, done);
        for g in 0..G {
            out[g] = sums[g] * scale;
            if done < n {
                out[g] += Scalar::dot(tail, &q[g * n + done..(g + 1) * n]);
            }
        }
    }

    /// [`RowKernel::axpys`] for exactly G output rows.
    #[inline(always)]
    unsafe fn axpys_g<const G: usize>(row: Row<'_>, a: &[f32], o: &mut [f32]) {
        let n = o.len() / G;
        let op = o.as_mut_ptr();
        let scaled = |s: f32| {
            let mut x = [0f32; G];
            for g in 0..G {
                x[g] = a[g] * s;
            }
            x
        };
        let done = match row {
            Row::F32(v) => {
                let p = v.as_ptr();
                let n16 = n / 16 * 16;
                axpys16::<G>(n16, n, scaled(1.0), op, |i| _mm512_loadu_ps(p.add(i)));
                n16
            }
            Row::F16(v) => {
                let p = v.as_ptr();
                let n16 = n / 16 * 16;
                axpys16::<G>(n16, n, scaled(1.0), op, |i| f16x16(p.add(i)));
                n16
            }
            Row::Q8(c, s) => {
                let p = c.as_ptr();
                let n16 = n / 16 * 16;
                axpys16::<G>(n16, n, scaled(s), op, |i| i8x16(p.add(i)));
                n16
            }
            Row::Fp8(c, s) => {
                let p = c.as_ptr();
                let n16 = n / 16 * 16;
                axpys16::<G>(n16, n, scaled(s * 256.0), op, |i| fp8x16(p.add(i)));
                n16
            }
            Row::Q4(c, scales) => {
                let full = n / Q4_GROUP;
                for (gr, &sb) in scales[..full].iter().enumerate() {
                    let (lo, hi) = q4x32(c.as_ptr().add(gr * Q4_GROUP / 2));
                    let d = f16_value(sb);
                    for (g, &ag) in a[..G].iter().enumerate() {
                        let ad = _mm512_set1_ps(ag * d);
                        let p = op.add(g * n + gr * Q4_GROUP);
                        _mm512_storeu_ps(p, _mm512_fmadd_ps(lo, ad, _mm512_loadu_ps(p)));
                        let p = p.add(16);
                        _mm512_storeu_ps(p, _mm512_fmadd_ps(hi, ad, _mm512_loadu_ps(p)));
                    }
                }
                full * Q4_GROUP
            }
        };
        if done < n {
            let tail = skip(row, done);
            for g in 0..G {
                Scalar::axpy(tail, a[g], &mut o[g * n + done..(g + 1) * n]);
            }
        }
    }

    /// Query heads per pass: up to 4 (4 accumulators, or 4 output rows, per widened vector).
    const PASS: usize = 4;

    impl RowKernel for Avx512 {
        #[inline(always)]
        unsafe fn dots(row: Row<'_>, qs: &[f32], out: &mut [f32]) {
            let n = qs.len() / out.len().max(1);
            for (q, o) in qs.chunks(PASS * n).zip(out.chunks_mut(PASS)) {
                match o.len() {
                    1 => dots_g::<1>(row, q, o),
                    2 => dots_g::<2>(row, q, o),
                    3 => dots_g::<3>(row, q, o),
                    _ => dots_g::<4>(row, q, o),
                }
            }
        }

        #[inline(always)]
        unsafe fn axpys(row: Row<'_>, a: &[f32], o: &mut [f32]) {
            let n = o.len() / a.len().max(1);
            for (a, o) in a.chunks(PASS).zip(o.chunks_mut(PASS * n)) {
                match a.len() {
                    1 => axpys_g::<1>(row, a, o),
                    2 => axpys_g::<2>(row, a, o),
                    3 => axpys_g::<3>(row, a, o),
                    _ => axpys_g::<4>(row, a, o),
                }
            }
        }
    }
}

/// The rotation of a rotated cache: `Q = D·H/√n` (`H` lowbit_cpu::hadamard's plain Hadamard
/// matrix of size n, `D` ±1 signs drawn by SplitMix64 from the seed). Q is orthogonal, so
/// `(q·Q)·(k·Q) = q·k`.
#[derive(Debug, Clone)]
pub(crate) struct Rotation {
    h: Hadamard,
    signs: Vec<f32>,
    /// `H/√n` row-major when n is not a power of two (H is then not symmetric and the inverse
    /// needs `Hᵀ`); None for powers of two (Sylvester's H is symmetric: the fast transform
    /// serves both ways).
    dense: Option<Vec<f32>>,
}

impl Rotation {
    pub(crate) fn new(n: usize, seed: u64) -> Result<Rotation, KvError> {
        let h = Hadamard::plain(n).map_err(|e| KvError(format!("rotation: {e}")))?;
        let mut state = seed;
        let signs = (0..n)
            .map(|_| {
                // SplitMix64.
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                if (z ^ (z >> 31)) >> 63 == 0 {
                    1.0
                } else {
                    -1.0
                }
            })
            .collect();
        let dense =
            (!n.is_power_of_two()).then(|| h.dense().into_iter().map(|v| v as f32).collect());
        Ok(Rotation { h, signs, dense })
    }

    /// Every row of n values: `x ← x·Q = (x ∘ d)·H/√n`.
    pub(crate) fn forward(&self, rows: &mut [f32]) {
        for row in rows.chunks_exact_mut(self.signs.len()) {
            row.iter_mut().zip(&self.signs).for_each(|(v, s)| *v *= s);
        }
        self.h
            .apply_rows_f32(rows)
            .expect("cache rows are whole rows of head_dim");
    }

    /// Every row of n values: `x ← x·Qᵀ = (x·Hᵀ/√n) ∘ d`.
    pub(crate) fn inverse(&self, rows: &mut [f32]) {
        let n = self.signs.len();
        match &self.dense {
            None => self
                .h
                .apply_rows_f32(rows)
                .expect("cache rows are whole rows of head_dim"),
            Some(m) => {
                // (x·Hᵀ/√n)[j] = Σ_i x[i]·(H/√n)[j][i]: row j of H/√n dotted with x.
                let mut tmp = vec![0f32; n];
                for row in rows.chunks_exact_mut(n) {
                    for (j, t) in tmp.iter_mut().enumerate() {
                        *t = crate::matmul::dot(&m[j * n..(j + 1) * n], row);
                    }
                    row.copy_from_slice(&tmp);
                }
            }
        }
        for row in rows.chunks_exact_mut(n) {
            row.iter_mut().zip(&self.signs).for_each(|(v, s)| *v *= s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    /// The bit-level f16 conversion is exact for every half, infinities and NaN included.
    #[test]
    fn f16_conversion_is_exact() {
        for b in 0..=u16::MAX {
            let want = half::f16::from_bits(b).to_f32();
            let got = f16_value(b);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{b:#06x}: {got} vs {want}"
            );
        }
    }

    /// The shift trick decodes every non-NaN E4M3 code exactly as the format's decoder.
    #[test]
    fn fp8_shift_decoding_is_exact() {
        for c in 0..=255u8 {
            if E4M3.is_nan(c as u32) {
                continue;
            }
            assert_eq!(fp8_value(c), E4M3.decode(c as u32), "code {c:#04x}");
        }
    }

    fn rows(hd: usize, n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n * hd)
            .map(|i| crate::test_util::lcg(&mut s) * (1.0 + (i % 7) as f32))
            .collect()
    }

    /// Each type's round trip stays within its step: f16 2⁻¹¹ relative, q8 half a step of
    /// amax/127, fp8 2⁻⁴ relative (+ a subnormal step), q4 one step of its group's scale (half a
    /// step, but values of the sign opposite to the largest one clip at 7 steps, not 8).
    #[test]
    fn round_trip_errors_are_within_a_step() {
        for hd in [2usize, 16, 40, 64, 256] {
            let x = rows(hd, 3, hd as u64);
            for dtype in KvDtype::ALL {
                let mut st = Store::new(dtype, 3, hd);
                let mut tmp = Vec::new();
                let mut y = vec![0f32; hd];
                for r in 0..3 {
                    let xr = &x[r * hd..(r + 1) * hd];
                    st.write_row(r, hd, xr, &mut tmp);
                    dequantize_row(st.row(r, hd), &mut y);
                    let amax = xr.iter().fold(0f32, |m, v| m.max(v.abs()));
                    for (i, (a, b)) in xr.iter().zip(&y).enumerate() {
                        let group_max = xr[i / Q4_GROUP * Q4_GROUP..]
                            .iter()
                            .take(Q4_GROUP)
                            .fold(0f32, |m, v| m.max(v.abs()));
                        let bound = match dtype {
                            KvDtype::F32 => 0.0,
                            KvDtype::F16 => a.abs() * 4.9e-4,
                            KvDtype::Q8 => amax / 127.0 * 0.5001,
                            KvDtype::Fp8 => a.abs() / 16.0 + amax / 448.0 * 2f32.powi(-9),
                            KvDtype::Q4 => group_max / 8.0 * 1.0001 + group_max * 1e-3,
                        };
                        assert!(
                            (a - b).abs() <= bound + 1e-7,
                            "{dtype} hd {hd} row {r} [{i}]: {a} → {b} (bound {bound})"
                        );
                    }
                }
                assert_eq!(st.bytes(), 3 * dtype.row_bytes(hd), "{dtype} hd {hd}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// SIMD row kernels against the scalar ones, every type, 1-6 query heads per row (passes
        /// of 4 and a remainder), odd lengths and short q4 groups.
        #[test]
        fn simd_kernels_match_scalar(half_hd in 1usize..80, group in 1usize..7, a in -3f32..3.0, seed in any::<u64>()) {
            let hd = half_hd * 2;
            if !has_avx512() {
                return Ok(());
            }
            let x = rows(hd, 1, seed);
            let q = rows(hd, group, seed ^ 0x55);
            let w: Vec<f32> = (0..group).map(|g| a + g as f32).collect();
            for dtype in KvDtype::ALL {
                let mut st = Store::new(dtype, 1, hd);
                st.write_row(0, hd, &x, &mut Vec::new());
                let row = st.row(0, hd);
                #[cfg(target_arch = "x86_64")]
                // SAFETY: AVX-512F, F16C, AVX2 checked by has_avx512; q, o hold `group` rows.
                unsafe {
                    let (mut s, mut v) = (vec![0f32; group], vec![0f32; group]);
                    Scalar::dots(row, &q, &mut s);
                    Avx512::dots(row, &q, &mut v);
                    for g in 0..group {
                        let mag: f32 = q[g * hd..(g + 1) * hd].iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
                        prop_assert!((s[g] - v[g]).abs() <= 1e-5 * mag + 1e-6, "{} dot {} vs {}", dtype, s[g], v[g]);
                        let one = Scalar::dot(row, &q[g * hd..(g + 1) * hd]);
                        prop_assert!((s[g] - one).abs() <= 1e-5 * mag + 1e-6, "{} dots {} vs dot {}", dtype, s[g], one);
                    }
                    let (mut o1, mut o2) = (q.clone(), q.clone());
                    Scalar::axpys(row, &w, &mut o1);
                    Avx512::axpys(row, &w, &mut o2);
                    for (u, v) in o1.iter().zip(&o2) {
                        prop_assert!((u - v).abs() <= 1e-5 * (1.0 + u.abs()), "{} axpy {} vs {}", dtype, u, v);
                    }
                }
            }
        }
    }

    /// Rotation: orthogonal (forward then inverse is the identity; norms kept) for power-of-two
    /// and Paley sizes.
    #[test]
    fn rotation_round_trips() {
        for n in [8usize, 16, 12, 20, 80, 256] {
            let r = Rotation::new(n, 7).unwrap();
            let x = rows(n, 3, n as u64);
            let mut y = x.clone();
            r.forward(&mut y);
            let nx: f32 = x.iter().map(|v| v * v).sum();
            let ny: f32 = y.iter().map(|v| v * v).sum();
            assert!((nx - ny).abs() <= 1e-5 * nx, "n {n}: norm {nx} → {ny}");
            assert!(x.iter().zip(&y).any(|(a, b)| (a - b).abs() > 1e-3));
            r.inverse(&mut y);
            for (a, b) in x.iter().zip(&y) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "n {n}: {a} vs {b}");
            }
        }
        assert!(KvCacheSpec {
            dtype: KvDtype::Q8,
            rotation_seed: Some(0)
        }
        .check(14)
        .is_err());
        assert!(KvCacheSpec::new(KvDtype::Q4).check(7).is_err());
    }
}
