//! Prefill product (many tokens) on 8-bit integers: `y = x · Wᵀ` with the activations quantized
//! to 8 bits per block of 32 (as the decode path) and the weights re-quantized to 8 bits per
//! block of 32, one panel of 16 rows at a time, right before use (so a quantized model never
//! exists as f32 or int8 in memory). The inner product is AVX-512 VNNI `vpdpbusd`: 64
//! multiply-adds per instruction instead of 16 for an f32 FMA on 256-bit vectors.
//!
//! Per (token t, row r, block b) the kernel computes the exact integer sum
//! `S = Σ (a+128)·w = Σ a·w + 128·Σ w` (`vpdpbusd` wants one unsigned operand) and adds
//! `da[t,b] · dw[r,b] · (S − 128·Σ w)` to the output. [`matmul_int8_scalar`] is the reference of
//! exactly that computation; the SIMD path differs from it only in the order of float additions.
//!
//! Weights: Q8_0, Q4_0, Q5_0 and MXFP4 blocks are used as stored (quants minus the zero point, f16
//! scale), so the product is exact up to the activation rounding. Other types are dequantized
//! and re-quantized, `dw = max|w| / 127`, `q = round(w / dw)`, which adds a rounding of at most
//! `dw/2` per weight, well below their own quantization step.

use lowbit_formats::{dequantize_row, GgmlType};
use rayon::prelude::*;

use crate::matmul::WeightMatrix;
use crate::q8act::{quantize_q8, round_even, Q8Block, QA};
use crate::quant_dot::Isa;

/// Rows per packed panel: the 16 lanes of a 512-bit register.
const PANEL: usize = 16;
/// Tokens per micro-tile: 8 integer and 8 float accumulators.
const TILE: usize = 8;

/// Whether the integer prefill path applies to `w` on this CPU: a quantized (not float) type,
/// rows of whole blocks of 32, and AVX-512 VNNI.
pub fn usable(w: &WeightMatrix<'_>) -> bool {
    !matches!(w.dtype, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
        && w.cols % QA == 0
        && w.cols > 0
        && Isa::detect() == Isa::Avx512Vnni
}

/// Activations of all tokens: `q[t·cols + c] = a + 128` (unsigned), `d[t·nb + b]` the scales.
struct Acts {
    q: Vec<u8>,
    d: Vec<f32>,
}

fn quantize_acts(x: &[f32], tokens: usize, cols: usize) -> Acts {
    let nb = cols / QA;
    let mut blocks = vec![Q8Block::default(); nb];
    let mut q = vec![0u8; tokens * cols];
    let mut d = vec![0f32; tokens * nb];
    for t in 0..tokens {
        quantize_q8(&x[t * cols..(t + 1) * cols], &mut blocks);
        for (b, blk) in blocks.iter().enumerate() {
            d[t * nb + b] = blk.d;
            let dst = &mut q[t * cols + b * QA..t * cols + (b + 1) * QA];
            for (o, &v) in dst.iter_mut().zip(&blk.qs) {
                *o = (v as i16 + 128) as u8;
            }
        }
    }
    Acts { q, d }
}

/// 16 rows of weights re-quantized to int8, laid out for `vpdpbusd`: per block of 32, 8 steps of
/// 16 rows × 4 consecutive values (`q[b·512 + k·64 + row·4 + i]` = value `4k + i` of the block),
/// plus per row and block the scale and `128 · Σ q` (the correction of the unsigned activations).
struct Panel {
    q: Vec<i8>,
    scale: Vec<f32>,
    corr: Vec<i32>,
    row: Vec<f32>,
}

impl Panel {
    fn new(cols: usize) -> Panel {
        let nb = cols / QA;
        Panel {
            q: vec![0; nb * QA * PANEL],
            scale: vec![0.0; nb * PANEL],
            corr: vec![0; nb * PANEL],
            row: vec![0.0; cols],
        }
    }

    /// Pack rows `r0..r0+n` (n ≤ 16); missing rows are zero.
    fn pack(&mut self, w: &WeightMatrix<'_>, r0: usize, n: usize, blocks: &mut [(f32, [i8; QA])]) {
        let rb = w.row_bytes().expect("validated");
        for i in 0..PANEL {
            if i < n {
                let r = r0 + i;
                row_blocks(
                    w.dtype,
                    &w.data[r * rb..(r + 1) * rb],
                    &mut self.row,
                    blocks,
                );
            } else {
                blocks.iter_mut().for_each(|b| *b = (0.0, [0; QA]));
            }
            for (b, (d, q)) in blocks.iter().enumerate() {
                self.scale[b * PANEL + i] = *d;
                self.corr[b * PANEL + i] = 128 * q.iter().map(|&v| v as i32).sum::<i32>();
                let dst = &mut self.q[b * QA * PANEL..(b + 1) * QA * PANEL];
                for k in 0..QA / 4 {
                    dst[k * 4 * PANEL + i * 4..k * 4 * PANEL + i * 4 + 4]
                        .copy_from_slice(&q[4 * k..4 * k + 4]);
                }
            }
        }
    }
}

/// One weight row as blocks of 32 `d · q` with q in -127..=127 (or -128 for Q8_0, fine for
/// `vpdpbusd`). Q8_0, Q4_0, Q5_0 and MXFP4 are taken over exactly (their quants minus the zero
/// point; MXFP4's doubled E2M1 codes with half its scale); other types are dequantized into `buf` and re-quantized ([`quantize_block`]).
pub(crate) fn row_blocks(t: GgmlType, row: &[u8], buf: &mut [f32], out: &mut [(f32, [i8; QA])]) {
    let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    match t {
        GgmlType::Q8_0 => {
            for (b, o) in row.chunks_exact(34).zip(out.iter_mut()) {
                o.0 = f16(b);
                for (q, &v) in o.1.iter_mut().zip(&b[2..34]) {
                    *q = v as i8;
                }
            }
        }
        GgmlType::Q4_0 => {
            for (b, o) in row.chunks_exact(18).zip(out.iter_mut()) {
                o.0 = f16(b);
                for l in 0..16 {
                    o.1[l] = (b[2 + l] & 0x0F) as i8 - 8;
                    o.1[l + 16] = (b[2 + l] >> 4) as i8 - 8;
                }
            }
        }
        GgmlType::Q5_0 => {
            for (b, o) in row.chunks_exact(22).zip(out.iter_mut()) {
                o.0 = f16(b);
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                for l in 0..16 {
                    let lo = (b[6 + l] & 0x0F) | (((qh >> l) & 1) << 4) as u8;
                    let hi = (b[6 + l] >> 4) | (((qh >> (l + 16)) & 1) << 4) as u8;
                    o.1[l] = lo as i8 - 16;
                    o.1[l + 16] = hi as i8 - 16;
                }
            }
        }
        GgmlType::MXFP4 => {
            // Doubled E2M1 codes (-12..12) with half the E8M0 scale: ggml's own decoding, exact.
            use crate::quant_dot::{e8m0_half, KVALUES_MXFP4};
            for (b, o) in row.chunks_exact(17).zip(out.iter_mut()) {
                o.0 = e8m0_half(b[0]);
                for l in 0..16 {
                    o.1[l] = KVALUES_MXFP4[(b[1 + l] & 0x0F) as usize];
                    o.1[l + 16] = KVALUES_MXFP4[(b[1 + l] >> 4) as usize];
                }
            }
        }
        _ => {
            dequantize_row(t, row, buf).expect("validated weight type");
            for (v, o) in buf.chunks_exact(QA).zip(out.iter_mut()) {
                *o = quantize_block(v);
            }
        }
    }
}

/// One block of 32 weights as `d · q`, `d = max|w| / 127`, q rounded to nearest (ties to even).
fn quantize_block(w: &[f32]) -> (f32, [i8; QA]) {
    let amax = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0i8; QA];
    for (o, v) in q.iter_mut().zip(w) {
        *o = round_even((v * id).clamp(-127.0, 127.0)) as i8;
    }
    (d, q)
}

/// `y = x · Wᵀ` on the integer path. Returns false (leaving `y` alone) when [`usable`] is false.
/// Shapes as [`crate::matmul()`]; `isa` picks the kernel (`Isa::Scalar` is the reference).
pub fn matmul_int8(x: &[f32], w: WeightMatrix<'_>, y: &mut [f32], isa: Isa) -> bool {
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
        matmul_int8_scalar(x, w, y);
        return true;
    }
    #[cfg(target_arch = "x86_64")]
    matmul_int8_avx512(x, w, y, tokens);
    true
}

#[cfg(target_arch = "x86_64")]
fn matmul_int8_avx512(x: &[f32], w: WeightMatrix<'_>, y: &mut [f32], tokens: usize) {
    let acts = quantize_acts(x, tokens, w.cols);
    let panels = w.rows.div_ceil(PANEL);
    let out = SendPtr(y.as_mut_ptr());
    let out = &out;
    (0..panels).into_par_iter().with_max_len(1).for_each_init(
        || (Panel::new(w.cols), vec![(0f32, [0i8; QA]); w.cols / QA]),
        |(panel, blocks), p| {
            let r0 = p * PANEL;
            let n = PANEL.min(w.rows - r0);
            panel.pack(&w, r0, n, blocks);
            // SAFETY: `usable` checked AVX-512 VNNI; panels write disjoint rows r0..r0+n
            // of every token of `y` (tokens × rows); the panel and activations hold `nb`
            // blocks each.
            unsafe { x86::panel_all_tokens(panel, &acts, w.cols, tokens, out.0, w.rows, r0, n) };
        },
    );
}

struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Reference of the integer path: the same re-quantized weights and activations, exact integer
/// block sums, then the float formula in the natural order.
pub fn matmul_int8_scalar(x: &[f32], w: WeightMatrix<'_>, y: &mut [f32]) {
    let cols = w.cols;
    let tokens = x.len() / cols;
    let nb = cols / QA;
    let acts = quantize_acts(x, tokens, cols);
    let rb = w.row_bytes().expect("validated");
    let mut row = vec![0f32; cols];
    let mut blocks = vec![(0f32, [0i8; QA]); nb];
    for r in 0..w.rows {
        row_blocks(
            w.dtype,
            &w.data[r * rb..(r + 1) * rb],
            &mut row,
            &mut blocks,
        );
        for t in 0..tokens {
            let mut acc = 0f32;
            for (b, (dw, q)) in blocks.iter().enumerate() {
                let a = &acts.q[t * cols + b * QA..t * cols + (b + 1) * QA];
                let s: i32 = a.iter().zip(q).map(|(&a, &q)| a as i32 * q as i32).sum();
                let corr = 128 * q.iter().map(|&v| v as i32).sum::<i32>();
                acc += acts.d[t * nb + b] * (dw * (s - corr) as f32);
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

    /// All tokens against one packed panel, in tiles of [`TILE`] tokens.
    ///
    /// # Safety
    /// AVX-512 F/BW/VNNI must be available; `out` must be valid for `tokens × rows` f32 with rows
    /// `r0..r0+n` of every token ours alone; `panel` and `acts` hold `cols / 32` blocks.
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

    /// `T` tokens from `t0` × 16 rows: per block, 8 `vpdpbusd` steps per token (4 values of the
    /// token broadcast against 4 values of each of the 16 rows), then the block's scales.
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
            for k in 0..QA / 4 {
                let wv = _mm512_loadu_si512(wp.add(64 * k) as *const _);
                for (i, acc) in acci.iter_mut().enumerate() {
                    let a = (aq.add(i * cols + b * QA + 4 * k) as *const i32).read_unaligned();
                    *acc = _mm512_dpbusd_epi32(*acc, _mm512_set1_epi32(a), wv);
                }
            }
            let corr = _mm512_loadu_si512(panel.corr.as_ptr().add(b * PANEL) as *const _);
            let sc = _mm512_loadu_ps(panel.scale.as_ptr().add(b * PANEL));
            for i in 0..T {
                let f = _mm512_cvtepi32_ps(_mm512_sub_epi32(acci[i], corr));
                let da = _mm512_set1_ps(*ad.add(i * nb + b));
                accf[i] = _mm512_fmadd_ps(_mm512_mul_ps(f, sc), da, accf[i]);
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

    const TYPES: [GgmlType; 6] = [
        GgmlType::Q8_0,
        GgmlType::Q5_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::Q4_0,
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
        assert!(matmul_int8(&x, w, &mut want, Isa::Scalar));
        let reference = crate::matmul_reference(&x, w);
        // Integer path vs f64 reference: activation and weight rounding only.
        let num: f64 = want
            .iter()
            .zip(&reference)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let den: f64 = reference.iter().map(|b| (*b as f64).powi(2)).sum();
        assert!(
            den < 1e-12 || (num / den).sqrt() < 3e-2,
            "{t}: rel L2 {}",
            (num / den).sqrt()
        );
        if Isa::detect() != Isa::Avx512Vnni {
            return;
        }
        let mut got = vec![f32::NAN; tokens * rows];
        assert!(matmul_int8(&x, w, &mut got, Isa::Avx512Vnni));
        for tk in 0..tokens {
            let xt = &x[tk * cols..(tk + 1) * cols];
            for r in 0..rows {
                let mut row = vec![0f32; cols];
                dequantize_row(t, &data[r * rb..(r + 1) * rb], &mut row).unwrap();
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Ragged token tiles (1..21 tokens), ragged panels (1..40 rows), 1..4 blocks per row.
        #[test]
        fn int8_gemm_matches_scalar_reference(ti in 0usize..TYPES.len(), tokens in 1usize..21,
                                              rows in 1usize..40, blocks in 1usize..4, seed in any::<u64>()) {
            check(TYPES[ti], tokens, rows, blocks, seed);
        }
    }

    #[test]
    fn float_types_are_refused() {
        let data = vec![0u8; 4 * 32 * 4];
        let w = WeightMatrix {
            dtype: GgmlType::F32,
            rows: 4,
            cols: 32,
            data: &data,
        };
        assert!(!matmul_int8(&[0.0; 32 * 5], w, &mut [0.0; 20], Isa::Scalar));
    }
}
