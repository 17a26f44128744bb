//! Fused GEMV for lowbit's own symmetric INT4 group format (`int4_g128_sym`, what
//! `lowbit quantize --scheme w4g128` writes; [`lowbit_formats::QTensor`]): 4-bit two's-complement
//! codes packed little-endian (code `i` of the row-major stream in bits `4i..4i+4`, so byte `j`
//! of a row holds codes `2j` (low nibble) and `2j + 1` (high nibble)), one f16 scale per group of
//! `group` consecutive values of a row, value = code · scale.
//!
//! The activations are quantized to 8-bit blocks of 32 ([`Q8Block`]) and, once per product,
//! reordered to `a0 a2 … a30 a1 a3 … a31` so the low and high nibbles of 16 weight bytes line up
//! with them without any byte shuffle. A code `c` enters the unsigned integer dot product as
//! `c ^ 8 = c + 8` and the `8 · Σ a` excess is taken off through the start value.

use rayon::prelude::*;

use crate::q8act::{quantize_q8, Q8Block, QA};
use crate::quant_dot::Isa;

/// A `rows × cols` matrix in the INT4 group format: `codes` is the packed code stream
/// (`rows · cols / 8` words), `scales` one f16 per group, row-major (`cols / group` per row).
#[derive(Clone, Copy, Debug)]
pub struct Int4Matrix<'a> {
    pub rows: usize,
    pub cols: usize,
    pub group: usize,
    pub codes: &'a [u32],
    pub scales: &'a [half::f16],
}

impl Int4Matrix<'_> {
    /// Checks the shapes the kernels need: `group` a multiple of 32 dividing `cols`, and the
    /// code and scale lengths.
    pub fn validate(&self) -> Result<(), String> {
        if self.group == 0 || self.group % QA != 0 || self.cols % self.group != 0 {
            return Err(format!(
                "INT4 group {} must be a multiple of {QA} dividing the {} columns",
                self.group, self.cols
            ));
        }
        if self.codes.len() * 8 != self.rows * self.cols {
            return Err(format!(
                "{}x{} INT4 needs {} code words, got {}",
                self.rows,
                self.cols,
                self.rows * self.cols / 8,
                self.codes.len()
            ));
        }
        if self.scales.len() * self.group != self.rows * self.cols {
            return Err(format!(
                "{}x{} INT4 with groups of {} needs {} scales, got {}",
                self.rows,
                self.cols,
                self.group,
                self.rows * self.cols / self.group,
                self.scales.len()
            ));
        }
        Ok(())
    }

    fn row_bytes(&self, r: usize) -> &[u8] {
        let words = &self.codes[r * self.cols / 8..(r + 1) * self.cols / 8];
        // SAFETY: u32 → u8 view of the same memory; the stream is little-endian, which is the
        // byte order of x86-64 (the only target with a SIMD kernel; the scalar path below reads
        // the words themselves).
        unsafe { std::slice::from_raw_parts(words.as_ptr() as *const u8, words.len() * 4) }
    }
}

/// Signed value of code `i` of a row's words.
#[inline(always)]
fn code(words: &[u32], i: usize) -> i32 {
    let c = (words[i / 8] >> (4 * (i % 8))) & 0xF;
    ((c as i32) << 28) >> 28
}

/// `y = x · Wᵀ` (`x` tokens × cols, `y` tokens × rows) with the fastest kernel this CPU has.
/// Panics on inconsistent shapes (see [`Int4Matrix::validate`]).
pub fn matmul_int4(x: &[f32], w: Int4Matrix<'_>, y: &mut [f32]) {
    matmul_int4_with(x, w, y, Isa::detect());
}

/// The same with a chosen instruction set (`Isa::Scalar`: the integer reference; a set this
/// CPU lacks falls back to the reference).
pub fn matmul_int4_with(x: &[f32], w: Int4Matrix<'_>, y: &mut [f32], isa: Isa) {
    if let Err(e) = w.validate() {
        panic!("invalid INT4 matrix: {e}");
    }
    let tokens = x.len() / w.cols.max(1);
    assert_eq!(x.len(), tokens * w.cols, "x is not tokens × cols");
    assert_eq!(y.len(), tokens * w.rows, "y is not tokens × rows");
    let nb = w.cols / QA;
    let mut act = vec![Q8Block::default(); tokens * nb];
    for t in 0..tokens {
        quantize_q8(
            &x[t * w.cols..(t + 1) * w.cols],
            &mut act[t * nb..(t + 1) * nb],
        );
    }
    let simd = cfg!(target_arch = "x86_64") && isa == Isa::Avx512Vnni && Isa::detect() == isa;
    if !simd {
        for r in 0..w.rows {
            for t in 0..tokens {
                y[t * w.rows + r] = row_dot_scalar(&w, r, &act[t * nb..(t + 1) * nb]);
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        // Even values first, then odd ones, per block (see the module docs).
        for b in act.iter_mut() {
            let q = b.qs;
            for l in 0..16 {
                b.qs[l] = q[2 * l];
                b.qs[16 + l] = q[2 * l + 1];
            }
        }
        // Groups of a multiple of 64: two blocks per 512-bit step, activations of the pair as
        // [even b0, even b1, odd b0, odd b1] (the order of 32 weight bytes and their high
        // nibbles), with the matching scale per lane.
        let pairs: Vec<Pair> = if w.group % 64 == 0 {
            act.chunks_exact(2)
                .map(|p| {
                    let mut q = [0i8; 64];
                    q[..16].copy_from_slice(&p[0].qs[..16]);
                    q[16..32].copy_from_slice(&p[1].qs[..16]);
                    q[32..48].copy_from_slice(&p[0].qs[16..]);
                    q[48..].copy_from_slice(&p[1].qs[16..]);
                    let d = std::array::from_fn(|i| if (i / 4) % 2 == 0 { p[0].d } else { p[1].d });
                    Pair { q, d }
                })
                .collect()
        } else {
            Vec::new()
        };
        let out = SendPtr(y.as_mut_ptr());
        let out = &out;
        let chunk = 256usize;
        (0..w.rows.div_ceil(chunk)).into_par_iter().for_each(|c| {
            let (r0, r1) = (c * chunk, ((c + 1) * chunk).min(w.rows));
            // SAFETY: VNNI checked above; chunks write disjoint rows of every token.
            unsafe { x86::rows_vnni(&w, &act, &pairs, tokens, r0, r1, out.0) };
        });
    }
}

/// Activations of two blocks for the 512-bit kernel (see `matmul_int4_with`).
#[cfg(target_arch = "x86_64")]
#[repr(C, align(64))]
struct Pair {
    q: [i8; 64],
    d: [f32; 16],
}

#[cfg(target_arch = "x86_64")]
struct SendPtr(*mut f32);
#[cfg(target_arch = "x86_64")]
unsafe impl Send for SendPtr {}
#[cfg(target_arch = "x86_64")]
unsafe impl Sync for SendPtr {}

/// Reference: exact integer sums per block of 32, then `scale · da · sum` in order.
fn row_dot_scalar(w: &Int4Matrix<'_>, r: usize, a: &[Q8Block]) -> f32 {
    let words = &w.codes[r * w.cols / 8..(r + 1) * w.cols / 8];
    let groups = w.cols / w.group;
    let mut acc = 0f32;
    for (b, blk) in a.iter().enumerate() {
        let s: i32 = (0..QA)
            .map(|i| code(words, b * QA + i) * blk.qs[i] as i32)
            .sum();
        let scale = w.scales[r * groups + b * QA / w.group].to_f32();
        acc += scale * blk.d * s as f32;
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Int4Matrix, Pair};
    use crate::q8act::{Q8Block, QA};

    const GROUP: usize = 4;

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn rows_vnni(
        w: &Int4Matrix<'_>,
        act: &[Q8Block],
        pairs: &[Pair],
        tokens: usize,
        r0: usize,
        r1: usize,
        out: *mut f32,
    ) {
        let nb = w.cols / QA;
        let mut r = r0;
        if r0 >= r1 {
            return;
        }
        let row_len = w.cols / 2;
        let end = w.row_bytes(r1 - 1).as_ptr().add(row_len);
        while r + GROUP <= r1 {
            let rows: [*const u8; GROUP] = std::array::from_fn(|k| w.row_bytes(r + k).as_ptr());
            // Software prefetch one group (at least 4 KiB) ahead, as the GGML kernels
            // (`quant_dot`): the hardware prefetcher alone leaves DRAM bandwidth unused.
            let from = rows[0].add((GROUP * row_len).max(4096));
            let mut p = from;
            while p < from.add(GROUP * row_len) && p < end {
                _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
                p = p.add(64);
            }
            for t in 0..tokens {
                let v = dot::<GROUP>(w, r, rows, &act[t * nb..(t + 1) * nb], pairs, t);
                for (k, v) in v.into_iter().enumerate() {
                    *out.add(t * w.rows + r + k) = v;
                }
            }
            r += GROUP;
        }
        for r in r..r1 {
            let rows = [w.row_bytes(r).as_ptr()];
            for t in 0..tokens {
                *out.add(t * w.rows + r) =
                    dot::<1>(w, r, rows, &act[t * nb..(t + 1) * nb], pairs, t)[0];
            }
        }
    }

    /// Groups of a multiple of 64 values: two blocks (32 bytes of codes) per 512-bit step;
    /// per group the steps accumulate `da · Σ` and the group's scale is applied once.
    #[inline(always)]
    unsafe fn dot<const N: usize>(
        w: &Int4Matrix<'_>,
        r: usize,
        rows: [*const u8; N],
        a: &[Q8Block],
        pairs: &[Pair],
        t: usize,
    ) -> [f32; N] {
        if w.group % 64 != 0 {
            return dot256::<N>(w, r, rows, a);
        }
        let groups = w.cols / w.group;
        let ppg = w.group / 64;
        let pairs = &pairs[t * w.cols / 64..(t + 1) * w.cols / 64];
        let eight = _mm512_set1_epi8(8);
        let low = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); N];
        for g in 0..groups {
            let mut accg = [_mm512_setzero_ps(); N];
            for p in g * ppg..(g + 1) * ppg {
                let pa = &pairs[p];
                let av = _mm512_loadu_si512(pa.q.as_ptr() as *const _);
                // -(8 · Σ a) per lane of 4: the offset of the codes entered as c + 8.
                let init = _mm512_sub_epi32(
                    _mm512_setzero_si512(),
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), eight, av),
                );
                let da = _mm512_loadu_ps(pa.d.as_ptr());
                for k in 0..N {
                    let x = _mm256_loadu_si256(rows[k].add(32 * p) as *const __m256i);
                    // [low nibbles of blocks 2p, 2p+1 | their high nibbles].
                    let z = _mm512_inserti64x4::<1>(
                        _mm512_castsi256_si512(x),
                        _mm256_srli_epi16::<4>(x),
                    );
                    // (z & 0x0F) ^ 0x08 in one ternary-logic op (A & B ^ C).
                    let q = _mm512_ternarylogic_epi32::<0x6A>(z, low, eight);
                    let s = _mm512_dpbusd_epi32(init, q, av);
                    accg[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), da, accg[k]);
                }
            }
            for k in 0..N {
                let sc = w.scales.get_unchecked((r + k) * groups + g).to_bits();
                let scale = _mm512_cvtph_ps(_mm256_set1_epi16(sc as i16));
                acc[k] = _mm512_fmadd_ps(accg[k], scale, acc[k]);
            }
        }
        std::array::from_fn(|k| _mm512_reduce_add_ps(acc[k]))
    }

    #[inline(always)]
    unsafe fn dot256<const N: usize>(
        w: &Int4Matrix<'_>,
        r: usize,
        rows: [*const u8; N],
        a: &[Q8Block],
    ) -> [f32; N] {
        let groups = w.cols / w.group;
        let per_group = w.group / QA;
        let mask = _mm256_set1_epi8(0x0F);
        let eight = _mm256_set1_epi8(8);
        let mut acc = [_mm256_setzero_ps(); N];
        for (b, blk) in a.iter().enumerate() {
            let av = _mm256_loadu_si256(blk.qs.as_ptr() as *const __m256i);
            // -(8 · Σ a) per lane of 4: the offset of the codes entered as c + 8.
            let init = _mm256_sub_epi32(
                _mm256_setzero_si256(),
                _mm256_dpbusd_epi32(_mm256_setzero_si256(), eight, av),
            );
            let da = _mm256_set1_ps(blk.d);
            let g = b / per_group;
            for k in 0..N {
                let x = _mm_loadu_si128(rows[k].add(16 * b) as *const __m128i);
                let q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(x), x), mask);
                let q = _mm256_xor_si256(q, eight);
                let s = _mm256_dpbusd_epi32(init, q, av);
                let sc = w.scales.get_unchecked((r + k) * groups + g).to_bits();
                let scale = _mm256_mul_ps(_mm256_cvtph_ps(_mm_set1_epi16(sc as i16)), da);
                acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc[k]);
            }
        }
        std::array::from_fn(|k| {
            let v = acc[k];
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lowbit_formats::{QTensor, QuantSpec};
    use proptest::prelude::*;

    use crate::test_util::lcg;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Real `int4_g128_sym` tensors (lowbit-formats' encoder), ragged row counts, 1..4 groups
        /// per row, 1..5 tokens: the VNNI kernel equals the integer reference up to float
        /// reordering, and the reference is within the activation-rounding bound of the f64
        /// product of the decoded weights.
        #[test]
        fn int4_matches_references(rows in 1usize..23, groups in 1usize..4, tokens in 1usize..5, seed in any::<u64>()) {
            let cols = groups * 128;
            let mut s = seed;
            let wv: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut s)).collect();
            let spec = QuantSpec::parse("int4_g128_sym").unwrap();
            let qt = QTensor::encode(&spec, &wv, rows, cols).unwrap();
            let lowbit_formats::qtensor::StoredScales::F16(scales) = qt.scales() else {
                panic!("int4_g128_sym scales are not f16");
            };
            let w = Int4Matrix { rows, cols, group: 128, codes: qt.codes(), scales };
            let mut dec = vec![0f32; rows * cols];
            qt.decode(&mut dec).unwrap();
            let x: Vec<f32> = (0..tokens * cols).map(|_| lcg(&mut s)).collect();
            let mut want = vec![0f32; tokens * rows];
            matmul_int4_with(&x, w, &mut want, Isa::Scalar);
            let mut got = vec![0f32; tokens * rows];
            matmul_int4(&x, w, &mut got);
            for t in 0..tokens {
                let xt = &x[t * cols..(t + 1) * cols];
                for r in 0..rows {
                    let wr = &dec[r * cols..(r + 1) * cols];
                    let abs: f64 = xt.iter().zip(wr).map(|(a, b)| (a * b).abs() as f64).sum();
                    let exact: f64 = xt.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum();
                    let mut bound = 1e-5 * abs + 1e-6;
                    for (xb, wb) in xt.chunks(32).zip(wr.chunks(32)) {
                        let d = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64 / 127.0;
                        bound += d / 2.0 * wb.iter().map(|v| v.abs() as f64).sum::<f64>() * 1.0001;
                    }
                    let i = t * rows + r;
                    prop_assert!((want[i] as f64 - exact).abs() <= bound, "r{r} t{t}: {} vs {exact}", want[i]);
                    prop_assert!(((got[i] - want[i]) as f64).abs() <= 1e-5 * abs + 1e-6, "r{r} t{t}: {} vs {}", got[i], want[i]);
                }
            }
        }
    }

    #[test]
    fn bad_shapes_are_reported() {
        let codes = vec![0u32; 16];
        let scales = vec![half::f16::ZERO; 1];
        let w = Int4Matrix {
            rows: 1,
            cols: 128,
            group: 100,
            codes: &codes,
            scales: &scales,
        };
        assert!(w.validate().unwrap_err().contains("multiple of 32"));
        let w = Int4Matrix { group: 128, ..w };
        assert!(w.validate().is_ok());
        let w = Int4Matrix { rows: 2, ..w };
        assert!(w.validate().is_err());
    }
}
