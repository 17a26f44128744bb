//! Prefill product (many tokens) on 16-bit integers, accurate to ~1e-4 of each block's range:
//! the activations are quantized to 15 bits per block of 32 (`|q| ≤ 16383`) and the weights,
//! one panel of 16 rows at a time right before use, to exact small integers (Q8_0, Q4_0, Q5_0:
//! their stored quants minus the zero point; MXFP4: doubled E2M1 codes) or to 12 bits per block
//! of 32 (`|q| ≤ 2047`: LB_NVFP4 straight from its codes, other types dequantized first). The inner product is AVX-512 VNNI `vpdpwssd` (32 multiply-adds
//! per instruction, twice an f32 FMA on 512-bit vectors and four times the 256-bit `gemm` path).
//!
//! Integer ranges: a block sum has 32 products of at most 2^11 · 2^14 (or 2^7 · 2^14), so it
//! stays below 2^30 and the 32-bit lanes never overflow. [`matmul_i16_scalar`] is the reference
//! of exactly this computation; the SIMD path differs only in the order of float additions.
//!
//! This is the default prefill path on CPUs with AVX-512 VNNI (the f32 `gemm` path elsewhere):
//! its error (Gemma-3-270M teacher-forced logits ~1e-4 relative L2) is well inside the f32-level
//! bounds of the end-to-end tests, unlike 8-bit activations ([`crate::gemm_q8`]).

use lowbit_formats::{dequantize_row, GgmlType};
use rayon::prelude::*;

use crate::gemm_q8::row_blocks;
use crate::matmul::WeightMatrix;
use crate::q8act::{round_even, QA};
use crate::quant_dot::Isa;

const PANEL: usize = 16;
const TILE: usize = 8;
/// Largest activation quant.
const AMAX_Q: f32 = 16383.0;
/// Largest weight quant of re-quantized types.
const WMAX_Q: f32 = 2047.0;

/// Whether the path applies to `w` on this CPU (same conditions as the 8-bit path).
pub fn usable(w: &WeightMatrix<'_>) -> bool {
    crate::gemm_q8::usable(w)
}

/// Activations of all tokens as i16 (`q[t·cols + c]`) with one scale per block (`d[t·nb + b]`).
struct Acts {
    q: Vec<i16>,
    d: Vec<f32>,
}

fn quantize_block(v: &[f32], qmax: f32, out: &mut [i16]) -> f32 {
    let amax = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    let d = amax / qmax;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (o, x) in out.iter_mut().zip(v) {
        // NaN becomes 0 through the saturating cast.
        *o = round_even((x * id).clamp(-qmax, qmax)) as i16;
    }
    d
}

fn quantize_acts(x: &[f32], tokens: usize, cols: usize) -> Acts {
    let nb = cols / QA;
    let mut q = vec![0i16; tokens * cols];
    let mut d = vec![0f32; tokens * nb];
    // Whole tokens per task (a few hundred KB of work each on prefill).
    q.par_chunks_mut(cols)
        .zip(d.par_chunks_mut(nb))
        .zip(x.par_chunks(cols))
        .with_min_len(16)
        .for_each(|((q, d), x)| {
            #[cfg(target_arch = "x86_64")]
            if Isa::detect() == Isa::Avx512Vnni {
                // SAFETY: AVX-512 F/BW checked; `x` and `q` hold `d.len()` blocks of 32.
                unsafe { x86::quantize_row(x, q, d, AMAX_Q) };
                return;
            }
            for ((xb, qb), s) in x.chunks_exact(QA).zip(q.chunks_exact_mut(QA)).zip(d) {
                *s = quantize_block(xb, AMAX_Q, qb);
            }
        });
    Acts { q, d }
}

/// One weight row as blocks of 32 `d · q` (i16).
fn weight_row(
    t: GgmlType,
    row: &[u8],
    buf: &mut [f32],
    b8: &mut [(f32, [i8; QA])],
    q: &mut [i16],
    d: &mut [f32],
) {
    if matches!(
        t,
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::MXFP4
    ) {
        row_blocks(t, row, buf, b8);
        for ((dst, s), (bd, bq)) in q.chunks_exact_mut(QA).zip(d.iter_mut()).zip(b8.iter()) {
            *s = *bd;
            for (o, &v) in dst.iter_mut().zip(bq) {
                *o = v as i16;
            }
        }
    } else if t == GgmlType::LB_NVFP4 {
        lb_nvfp4_row(row, q, d);
    } else {
        dequantize_row(t, row, buf).expect("validated weight type");
        for ((dst, s), v) in q
            .chunks_exact_mut(QA)
            .zip(d.iter_mut())
            .zip(buf.chunks_exact(QA))
        {
            *s = quantize_block(v, WMAX_Q, dst);
        }
    }
}

/// Codes times this are the 16-bit quants of the sub-block with the larger scale: doubled E2M1
/// codes are at most 12 in magnitude, 12 · 170 = 2040 ≤ [`WMAX_Q`].
const NVFP4_MUL: f32 = 170.0;

/// One `LB_NVFP4` row as blocks of 32 `d · q` without dequantizing: per block of 32 (two
/// sub-blocks of 16 with f32 scales s0, s1) `d = max(|s0|, |s1|) / 340` and `q = round(2e2m1(c) ·
/// 170 · s / max)`. The sub-block with the larger scale is exact (q = 170 · 2e2m1); the other is
/// rounded like the 12-bit re-quantization of the other types (≤ d/2 per weight). AVX-512 looks
/// the codes up in a 16-entry table of quants per sub-block; same results as the scalar loop.
fn lb_nvfp4_row(row: &[u8], q: &mut [i16], d: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if Isa::detect() == Isa::Avx512Vnni {
        // SAFETY: AVX-512 F/BW/VL checked; `q` and `d` hold the row's values and blocks of 32.
        unsafe { x86::lb_nvfp4_row(row, q, d) };
        return;
    }
    lb_nvfp4_row_scalar(row, q, d)
}

/// Quant factors of the two sub-blocks of 16 of a block of 32 with f32 scales `s0`, `s1`, and
/// the block's scale: the codes' doubled E2M1 values times these are the 16-bit quants.
#[inline(always)]
fn nvfp4_factors(s0: f32, s1: f32) -> (f32, f32, f32) {
    let m = s0.abs().max(s1.abs());
    if m > 0.0 {
        (
            NVFP4_MUL * (s0 / m),
            NVFP4_MUL * (s1 / m),
            m / (2.0 * NVFP4_MUL),
        )
    } else {
        (0.0, 0.0, 0.0)
    }
}

fn lb_nvfp4_row_scalar(row: &[u8], q: &mut [i16], d: &mut [f32]) {
    use crate::quant_dot::KVALUES_MXFP4;
    use lowbit_formats::lb_nvfp4::{sub_scales, BLOCK, BLOCK_BYTES};
    let blocks = row.chunks_exact(BLOCK_BYTES);
    for ((b, q), d) in blocks
        .zip(q.chunks_exact_mut(BLOCK))
        .zip(d.chunks_exact_mut(4))
    {
        let sc = sub_scales(b);
        for k in 0..4 {
            let (f0, f1, dk) = nvfp4_factors(sc[2 * k], sc[2 * k + 1]);
            d[k] = dk;
            let qs = &b[12 + 16 * k..28 + 16 * k];
            let out = &mut q[32 * k..32 * k + 32];
            for l in 0..16 {
                let lo = KVALUES_MXFP4[(qs[l] & 0x0F) as usize] as f32;
                let hi = KVALUES_MXFP4[(qs[l] >> 4) as usize] as f32;
                out[l] = round_even(lo * f0) as i16;
                out[l + 16] = round_even(hi * f1) as i16;
            }
        }
    }
}

/// 16 rows packed for `vpdpwssd`: per block of 32, 16 steps of 16 rows × 2 consecutive values
/// (`q[b·512 + k·32 + row·2 + i]` = value `2k + i`), and per row and block the scale.
struct Panel {
    q: Vec<i16>,
    scale: Vec<f32>,
    buf: Vec<f32>,
    b8: Vec<(f32, [i8; QA])>,
    rowq: Vec<i16>,
    rowd: Vec<f32>,
}

impl Panel {
    fn new(cols: usize) -> Panel {
        let nb = cols / QA;
        Panel {
            q: vec![0; nb * QA * PANEL],
            scale: vec![0.0; nb * PANEL],
            buf: vec![0.0; cols],
            b8: vec![(0.0, [0; QA]); nb],
            rowq: vec![0; cols],
            rowd: vec![0.0; nb],
        }
    }

    fn pack(&mut self, w: &WeightMatrix<'_>, r0: usize, n: usize) {
        let rb = w.row_bytes().expect("validated");
        let nb = w.cols / QA;
        for i in 0..PANEL {
            if i < n {
                let r = r0 + i;
                weight_row(
                    w.dtype,
                    &w.data[r * rb..(r + 1) * rb],
                    &mut self.buf,
                    &mut self.b8,
                    &mut self.rowq,
                    &mut self.rowd,
                );
            } else {
                self.rowq.fill(0);
                self.rowd.fill(0.0);
            }
            for b in 0..nb {
                self.scale[b * PANEL + i] = self.rowd[b];
                let src = &self.rowq[b * QA..(b + 1) * QA];
                let dst = &mut self.q[b * QA * PANEL..(b + 1) * QA * PANEL];
                for k in 0..QA / 2 {
                    dst[k * 2 * PANEL + i * 2] = src[2 * k];
                    dst[k * 2 * PANEL + i * 2 + 1] = src[2 * k + 1];
                }
            }
        }
    }
}

/// `y = x · Wᵀ` on the 16-bit path. Returns false (leaving `y` alone) for float weight types,
/// rows not made of blocks of 32, or `isa` other than Scalar (the reference) and an available
/// AVX-512 VNNI. Shapes as [`crate::matmul()`].
pub fn matmul_i16(x: &[f32], w: WeightMatrix<'_>, y: &mut [f32], isa: Isa) -> bool {
    let simd_ok = isa == Isa::Avx512Vnni && usable(&w);
    if !(isa == Isa::Scalar || simd_ok)
        || w.cols % QA != 0
        || matches!(w.dtype, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
    {
        return false;
    }
    let tokens = x.len() / w.cols;
    assert_eq!(x.len(), tokens * w.cols, "x is not tokens × cols");
    assert_eq!(y.len(), tokens * w.rows, "y is not tokens × rows");
    if let Err(e) = w.validate() {
        panic!("invalid weight matrix: {e}");
    }
    if tokens == 0 || w.rows == 0 {
        return true;
    }
    if isa == Isa::Scalar || cfg!(not(target_arch = "x86_64")) {
        matmul_i16_scalar(x, w, y);
        return true;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let acts = quantize_acts(x, tokens, w.cols);
        let out = SendPtr(y.as_mut_ptr());
        let out = &out;
        (0..w.rows.div_ceil(PANEL))
            .into_par_iter()
            .with_max_len(1)
            .for_each_init(
                || Panel::new(w.cols),
                |panel, p| {
                    let r0 = p * PANEL;
                    let n = PANEL.min(w.rows - r0);
                    panel.pack(&w, r0, n);
                    // SAFETY: VNNI checked by `usable`; panels write disjoint rows r0..r0+n of
                    // every token of `y`; panel and activations hold cols / 32 blocks.
                    unsafe {
                        x86::panel_all_tokens(panel, &acts, w.cols, tokens, out.0, w.rows, r0, n)
                    };
                },
            );
    }
    true
}

#[cfg(target_arch = "x86_64")]
struct SendPtr(*mut f32);
#[cfg(target_arch = "x86_64")]
unsafe impl Send for SendPtr {}
#[cfg(target_arch = "x86_64")]
unsafe impl Sync for SendPtr {}

/// Reference of the 16-bit path: the same quantized weights and activations, exact integer
/// block sums, then the float formula in order.
pub fn matmul_i16_scalar(x: &[f32], w: WeightMatrix<'_>, y: &mut [f32]) {
    let cols = w.cols;
    let tokens = x.len() / cols;
    let nb = cols / QA;
    let acts = quantize_acts(x, tokens, cols);
    let rb = w.row_bytes().expect("validated");
    let mut buf = vec![0f32; cols];
    let mut b8 = vec![(0f32, [0i8; QA]); nb];
    let mut q = vec![0i16; cols];
    let mut d = vec![0f32; nb];
    for r in 0..w.rows {
        weight_row(
            w.dtype,
            &w.data[r * rb..(r + 1) * rb],
            &mut buf,
            &mut b8,
            &mut q,
            &mut d,
        );
        for t in 0..tokens {
            let mut acc = 0f32;
            for b in 0..nb {
                let a = &acts.q[t * cols + b * QA..t * cols + (b + 1) * QA];
                let s: i32 = a
                    .iter()
                    .zip(&q[b * QA..(b + 1) * QA])
                    .map(|(&a, &q)| a as i32 * q as i32)
                    .sum();
                acc += acts.d[t * nb + b] * (d[b] * s as f32);
            }
            y[t * w.rows + r] = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Acts, Panel, PANEL, TILE};
    use crate::q8act::QA;

    /// [`super::lb_nvfp4_row_scalar`]: per sub-block of 16 the 16 possible quants are computed
    /// as one vector (the float→int conversion rounds to nearest even, as `round_even`) and the
    /// codes pick theirs with a 16-bit permute.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn lb_nvfp4_row(row: &[u8], q: &mut [i16], d: &mut [f32]) {
        use crate::quant_dot::KVALUES_MXFP4;
        use lowbit_formats::lb_nvfp4::{sub_scales, BLOCK, BLOCK_BYTES};
        let kv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
            KVALUES_MXFP4.as_ptr() as *const __m128i,
        )));
        let table = |f: f32| {
            _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(kv, _mm512_set1_ps(f))))
        };
        let mask = _mm_set1_epi8(0x0F);
        let blocks = row.chunks_exact(BLOCK_BYTES);
        for ((b, q), d) in blocks
            .zip(q.chunks_exact_mut(BLOCK))
            .zip(d.chunks_exact_mut(4))
        {
            let sc = sub_scales(b);
            for k in 0..4 {
                let (f0, f1, dk) = super::nvfp4_factors(sc[2 * k], sc[2 * k + 1]);
                d[k] = dk;
                let x = _mm_loadu_si128(b.as_ptr().add(12 + 16 * k) as *const __m128i);
                let lo = _mm256_cvtepu8_epi16(_mm_and_si128(x, mask));
                let hi = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(x), mask));
                let out = q.as_mut_ptr().add(32 * k) as *mut __m256i;
                _mm256_storeu_si256(out, _mm256_permutexvar_epi16(lo, table(f0)));
                _mm256_storeu_si256(out.add(1), _mm256_permutexvar_epi16(hi, table(f1)));
            }
        }
    }

    /// [`super::quantize_block`] of every block of 32 of `x` on 512-bit vectors (the float→int
    /// conversion rounds to nearest even, as `round_even`; same results for finite inputs).
    ///
    /// # Safety
    /// AVX-512 F/BW available; `x` and `q` hold `d.len()` blocks of 32.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantize_row(x: &[f32], q: &mut [i16], d: &mut [f32], qmax: f32) {
        for (b, s) in d.iter_mut().enumerate() {
            let v0 = _mm512_loadu_ps(x.as_ptr().add(b * QA));
            let v1 = _mm512_loadu_ps(x.as_ptr().add(b * QA + 16));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
            let scale = amax / qmax;
            let id = _mm512_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
            let lim = _mm512_set1_ps(qmax);
            let nlim = _mm512_set1_ps(-qmax);
            let conv = |v: __m512| {
                let v = _mm512_max_ps(_mm512_min_ps(_mm512_mul_ps(v, id), lim), nlim);
                _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(v))
            };
            _mm256_storeu_si256(q.as_mut_ptr().add(b * QA) as *mut __m256i, conv(v0));
            _mm256_storeu_si256(q.as_mut_ptr().add(b * QA + 16) as *mut __m256i, conv(v1));
            *s = scale;
        }
    }

    /// # Safety
    /// AVX-512 F/BW/VNNI available; `out` valid for `tokens × rows` with rows `r0..r0+n` ours.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
    pub(super) unsafe fn panel_all_tokens(
        panel: &Panel,
        acts: &Acts,
        cols: usize,
        tokens: usize,
        out: *mut f32,
        rows: usize,
        r0: usize,
        n: usize,
    ) {
        let mask: __mmask16 = if n >= PANEL { 0xFFFF } else { (1u16 << n) - 1 };
        let mut t0 = 0;
        while t0 < tokens {
            let nt = TILE.min(tokens - t0);
            let o = out.add(t0 * rows + r0);
            match nt {
                8 => tile::<8>(panel, acts, cols, t0, o, rows, mask),
                7 => tile::<7>(panel, acts, cols, t0, o, rows, mask),
                6 => tile::<6>(panel, acts, cols, t0, o, rows, mask),
                5 => tile::<5>(panel, acts, cols, t0, o, rows, mask),
                4 => tile::<4>(panel, acts, cols, t0, o, rows, mask),
                3 => tile::<3>(panel, acts, cols, t0, o, rows, mask),
                2 => tile::<2>(panel, acts, cols, t0, o, rows, mask),
                _ => tile::<1>(panel, acts, cols, t0, o, rows, mask),
            }
            t0 += nt;
        }
    }

    /// `acc + Σ pairs a·b` (`vpdpwssd`). Written as inline assembly: LLVM's generic tuning
    /// splits the intrinsic into `vpmaddwd` + `vpaddd`, two instructions instead of one.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn dpwssd(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
        let mut acc = acc;
        std::arch::asm!(
            "vpdpwssd {acc}, {a}, {b}",
            acc = inout(zmm_reg) acc,
            a = in(zmm_reg) a,
            b = in(zmm_reg) b,
            options(pure, nomem, nostack),
        );
        acc
    }

    /// `T` tokens × 16 rows: per block, 16 `vpdpwssd` steps per token (2 values of the token
    /// broadcast against 2 values of each of the 16 rows), then the block's scales.
    #[inline(always)]
    unsafe fn tile<const T: usize>(
        panel: &Panel,
        acts: &Acts,
        cols: usize,
        t0: usize,
        out: *mut f32,
        rows: usize,
        mask: __mmask16,
    ) {
        let nb = cols / QA;
        let mut accf = [_mm512_setzero_ps(); T];
        let aq = acts.q.as_ptr().add(t0 * cols);
        let ad = acts.d.as_ptr().add(t0 * nb);
        for b in 0..nb {
            let mut acci = [_mm512_setzero_si512(); T];
            let wp = panel.q.as_ptr().add(b * QA * PANEL);
            for k in 0..QA / 2 {
                let wv = _mm512_loadu_si512(wp.add(32 * k) as *const _);
                for (i, acc) in acci.iter_mut().enumerate() {
                    let a = (aq.add(i * cols + b * QA + 2 * k) as *const i32).read_unaligned();
                    *acc = dpwssd(*acc, _mm512_set1_epi32(a), wv);
                }
            }
            let sc = _mm512_loadu_ps(panel.scale.as_ptr().add(b * PANEL));
            for i in 0..T {
                let f = _mm512_mul_ps(_mm512_cvtepi32_ps(acci[i]), sc);
                accf[i] = _mm512_fmadd_ps(f, _mm512_set1_ps(*ad.add(i * nb + b)), accf[i]);
            }
        }
        for (i, acc) in accf.iter().enumerate() {
            _mm512_mask_storeu_ps(out.add(i * rows), mask, *acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::test_util::lcg;

    proptest! {
        /// The LB_NVFP4 row conversion: the dispatched (AVX-512) path equals the scalar one, and
        /// its quants stay within ±2047 and within d/2 of the weights.
        #[test]
        fn lb_nvfp4_rows_match_scalar(blocks in 1usize..4, seed in any::<u64>()) {
            use lowbit_formats::lb_nvfp4::{BLOCK, BLOCK_BYTES};
            let mut s = seed;
            let cols = blocks * BLOCK;
            let mut row: Vec<u8> = (0..blocks * BLOCK_BYTES).map(|_| (lcg(&mut s) * 128.0) as i8 as u8).collect();
            for b in row.chunks_exact_mut(BLOCK_BYTES) {
                b[..4].copy_from_slice(&(1.0 + lcg(&mut s).abs() * 1000.0).to_le_bytes());
                // E4M3 sub-scales without NaNs; some zero.
                for (i, e) in b[4..12].iter_mut().enumerate() {
                    *e = if i == 3 { 0 } else { *e & 0x77 };
                }
            }
            let (mut q, mut d) = (vec![0i16; cols], vec![0f32; cols / 32]);
            let (mut qs, mut ds) = (vec![0i16; cols], vec![0f32; cols / 32]);
            lb_nvfp4_row(&row, &mut q, &mut d);
            lb_nvfp4_row_scalar(&row, &mut qs, &mut ds);
            prop_assert_eq!(&q, &qs);
            prop_assert_eq!(&d, &ds);
            let mut w = vec![0f32; cols];
            dequantize_row(GgmlType::LB_NVFP4, &row, &mut w).unwrap();
            for (i, (&qi, &wi)) in q.iter().zip(&w).enumerate() {
                prop_assert!(qi.abs() <= WMAX_Q as i16);
                let di = d[i / 32];
                prop_assert!((qi as f32 * di - wi).abs() <= di * 0.5 * 1.001 + wi.abs() * 1e-6, "{} {} {}", i, qi as f32 * di, wi);
            }
        }
    }

    const TYPES: [GgmlType; 7] = [
        GgmlType::Q8_0,
        GgmlType::Q5_0,
        GgmlType::Q4_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::Q2_K,
        GgmlType::MXFP4,
    ];

    fn check(t: GgmlType, tokens: usize, rows: usize, blocks: usize, seed: u64) {
        let mut s = seed;
        let cols = blocks * t.block_size();
        let rb = t.byte_len(cols).unwrap();
        let data = crate::test_util::quantized_rows(t, rows, cols, &mut s);
        let w = WeightMatrix {
            dtype: t,
            rows,
            cols,
            data: &data,
        };
        let x: Vec<f32> = (0..tokens * cols)
            .map(|i| lcg(&mut s) * if i % 37 == 0 { 8.0 } else { 1.0 })
            .collect();
        let mut want = vec![0f32; tokens * rows];
        assert!(matmul_i16(&x, w, &mut want, Isa::Scalar));
        // Against the f64 product of the dequantized weights: per output, the rounding of the
        // activations (d/2 per value, d = block max / 16383) and of re-quantized weights
        // (block max / 4094 per value), plus float reordering.
        let reference = crate::matmul_reference(&x, w);
        let mut row = vec![0f32; cols];
        for r in 0..rows {
            dequantize_row(t, &data[r * rb..(r + 1) * rb], &mut row).unwrap();
            for tk in 0..tokens {
                let xt = &x[tk * cols..(tk + 1) * cols];
                let abs: f64 = xt.iter().zip(&row).map(|(a, b)| (a * b).abs() as f64).sum();
                let mut bound = 1e-5 * abs + 1e-6;
                for (xb, wb) in xt.chunks(32).zip(row.chunks(32)) {
                    let xa = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                    let wa = wb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                    let sx: f64 = xb.iter().map(|v| v.abs() as f64).sum();
                    let sw: f64 = wb.iter().map(|v| v.abs() as f64).sum();
                    bound += xa / 2.0 / 16383.0 * sw + wa / 2.0 / 2047.0 * sx * 1.001;
                }
                let i = tk * rows + r;
                let err = (want[i] as f64 - reference[i] as f64).abs();
                assert!(
                    err <= bound,
                    "{t} t{tk} r{r}: {} vs {} (bound {bound})",
                    want[i],
                    reference[i]
                );
            }
        }
        if Isa::detect() != Isa::Avx512Vnni {
            return;
        }
        let mut got = vec![f32::NAN; tokens * rows];
        assert!(matmul_i16(&x, w, &mut got, Isa::Avx512Vnni));
        for r in 0..rows {
            dequantize_row(t, &data[r * rb..(r + 1) * rb], &mut row).unwrap();
            for tk in 0..tokens {
                let xt = &x[tk * cols..(tk + 1) * cols];
                let abs: f64 = xt.iter().zip(&row).map(|(a, b)| (a * b).abs() as f64).sum();
                let i = tk * rows + r;
                assert!(
                    (got[i] - want[i]).abs() as f64 <= 1e-5 * abs + 1e-6,
                    "{t} t{tk} r{r}: {} vs scalar {}",
                    got[i],
                    want[i]
                );
            }
        }
    }

    /// The vector activation quantizer equals the scalar one (exact halves included).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_quantizer_matches_scalar() {
        if Isa::detect() != Isa::Avx512Vnni {
            return;
        }
        let mut s = 5;
        let mut x: Vec<f32> = (0..32 * 40).map(|_| lcg(&mut s) * 3.0).collect();
        x[7] = 0.5 * 3.0 / 16383.0; // a tie after scaling in some blocks
        x[32..64].iter_mut().for_each(|v| *v = 0.0);
        let mut q1 = vec![0i16; x.len()];
        let mut d1 = vec![0f32; 40];
        unsafe { x86::quantize_row(&x, &mut q1, &mut d1, AMAX_Q) };
        let mut q2 = vec![0i16; x.len()];
        let mut d2 = vec![0f32; 40];
        for ((xb, qb), d) in x.chunks_exact(QA).zip(q2.chunks_exact_mut(QA)).zip(&mut d2) {
            *d = quantize_block(xb, AMAX_Q, qb);
        }
        assert_eq!(q1, q2);
        assert_eq!(d1, d2);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Ragged token tiles (1..21 tokens), ragged panels (1..40 rows), 1..4 blocks per row.
        #[test]
        fn i16_gemm_matches_references(ti in 0usize..TYPES.len(), tokens in 1usize..21,
                                       rows in 1usize..40, blocks in 1usize..4, seed in any::<u64>()) {
            check(TYPES[ti], tokens, rows, blocks, seed);
        }
    }
}
