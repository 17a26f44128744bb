//! NVFP4 weights (compressed-tensors `nvfp4-pack-quantized`) read in place: E2M1 codes packed
//! two per byte (element 2i in the low nibble), one E4M3 scale byte per 16 consecutive values of
//! a row, and one f32 global scale. A weight is `e2m1(code) · (e4m3(scale) / global)`, each step
//! rounded to f32 in that order — the order compressed-tensors (and lowbit's f32 loader) use, so
//! the weights seen here are bit-identical to the dequantized ones.
//!
//! Decode ([`matmul_nvfp4`] with ≤ 4 tokens): f32 activations, each block of 16 codes expanded in
//! registers by a 16-entry table permute (AVX-512), multiplied by its scale and fused-multiply-added
//! into the sums; [`row_dot_scalar`] is the reference. Prefill: blocks of rows dequantized to f32
//! and multiplied by `gemm` through [`crate::matmul_f32`].
//!
//! The model loader does not use this path: it repacks NVFP4 into lowbit's `LB_NVFP4` blocks
//! ([`Nvfp4Matrix::to_blocks`]) so that [`crate::matmul`] runs them like any other block type
//! (8-bit activations and VNNI for decode, the 16-bit GEMM for prefill). This module stays as the
//! f32-activation kernel and as an independent reference for those blocks.

use rayon::prelude::*;

use lowbit_formats::minifloat::Minifloat;
use lowbit_formats::GgmlType;

use crate::quant_dot::Isa;

/// Values per E4M3 scale.
pub const BLOCK: usize = 16;

/// A `rows × cols` NVFP4 matrix.
#[derive(Clone, Copy, Debug)]
pub struct Nvfp4Matrix<'a> {
    pub rows: usize,
    pub cols: usize,
    /// `rows · cols / 2` bytes.
    pub codes: &'a [u8],
    /// `rows · cols / 16` E4M3 bytes.
    pub scales: &'a [u8],
    pub global_scale: f32,
}

/// The 16 E2M1 values by code (sign in bit 3).
pub fn e2m1_table() -> [f32; 16] {
    std::array::from_fn(|c| Minifloat::E2M1.decode(c as u32))
}

impl Nvfp4Matrix<'_> {
    /// Checks the shapes, the global scale and that no scale byte is an E4M3 NaN.
    pub fn validate(&self) -> Result<(), String> {
        if self.cols % BLOCK != 0 {
            return Err(format!(
                "NVFP4 rows of {} values do not split into blocks of {BLOCK}",
                self.cols
            ));
        }
        let n = self
            .rows
            .checked_mul(self.cols)
            .ok_or("NVFP4 shape overflows")?;
        if self.codes.len() != n / 2 || self.scales.len() != n / BLOCK {
            return Err(format!(
                "{}x{} NVFP4 needs {} code bytes and {} scales, got {} and {}",
                self.rows,
                self.cols,
                n / 2,
                n / BLOCK,
                self.codes.len(),
                self.scales.len()
            ));
        }
        if !(self.global_scale.is_finite() && self.global_scale > 0.0) {
            return Err(format!(
                "NVFP4 global scale must be positive and finite, got {}",
                self.global_scale
            ));
        }
        if let Some(b) = self.scales.iter().find(|&&b| b & 0x7F == 0x7F) {
            return Err(format!("NVFP4 scale byte {b:#04x} is an E4M3 NaN"));
        }
        Ok(())
    }

    /// The matrix as `LB_NVFP4` rows (bit-identical values) for [`crate::WeightMatrix`]; needs
    /// `cols` a multiple of 128.
    pub fn to_blocks(&self) -> Result<Vec<u8>, String> {
        self.validate()?;
        lowbit_formats::lb_nvfp4::pack(
            self.codes,
            self.scales,
            self.global_scale,
            self.rows,
            self.cols,
        )
        .map_err(|e| e.to_string())
    }

    /// Scale of every E4M3 byte divided by the global scale (f32, as compressed-tensors).
    fn scale_table(&self) -> [f32; 256] {
        std::array::from_fn(|b| Minifloat::E4M3FN.decode(b as u32) / self.global_scale)
    }

    /// Row `r` as f32, bit-exact with compressed-tensors' dequantization.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        self.dequantize_row_with(&e2m1_table(), &self.scale_table(), r, out)
    }

    fn dequantize_row_with(&self, e2m1: &[f32; 16], st: &[f32; 256], r: usize, out: &mut [f32]) {
        let codes = &self.codes[r * self.cols / 2..(r + 1) * self.cols / 2];
        let scales = &self.scales[r * self.cols / BLOCK..(r + 1) * self.cols / BLOCK];
        for (i, v) in out[..self.cols].iter_mut().enumerate() {
            let b = codes[i / 2];
            let c = if i % 2 == 0 { b & 0xF } else { b >> 4 };
            *v = e2m1[c as usize] * st[scales[i / BLOCK] as usize];
        }
    }
}

/// Reference: the dequantized weights of row `r` dotted with `x`, summed in index order.
pub fn row_dot_scalar(w: &Nvfp4Matrix<'_>, r: usize, x: &[f32]) -> f32 {
    let mut row = vec![0f32; w.cols];
    w.dequantize_row(r, &mut row);
    row.iter().zip(x).map(|(a, b)| a * b).sum()
}

const GEMV_MAX_TOKENS: usize = 4;
const TASK_ROWS: usize = 64;
/// Rows dequantized per prefill block (256 × 640 × 4 B = 640 KiB).
const PREFILL_ROWS: usize = 256;

struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// `y = x · Wᵀ` (`x` tokens × cols, `y` tokens × rows) with the fastest path this CPU has.
/// Panics on inconsistent shapes (see [`Nvfp4Matrix::validate`]).
pub fn matmul_nvfp4(x: &[f32], w: Nvfp4Matrix<'_>, y: &mut [f32]) {
    matmul_nvfp4_with(x, w, y, Isa::detect())
}

/// The same with a chosen instruction set for the decode path (`Isa::Scalar`: the reference).
pub fn matmul_nvfp4_with(x: &[f32], w: Nvfp4Matrix<'_>, y: &mut [f32], isa: Isa) {
    if let Err(e) = w.validate() {
        panic!("invalid NVFP4 matrix: {e}");
    }
    let tokens = x.len().checked_div(w.cols).unwrap_or(0);
    assert_eq!(x.len(), tokens * w.cols, "x is not tokens × cols");
    assert_eq!(y.len(), tokens * w.rows, "y is not tokens × rows");
    if tokens == 0 || w.rows == 0 {
        return;
    }
    let e2m1 = e2m1_table();
    let st = w.scale_table();
    if tokens > GEMV_MAX_TOKENS {
        prefill(x, &w, y, tokens, &e2m1, &st);
        return;
    }
    let simd = isa != Isa::Scalar && has_avx512();
    let out = SendPtr(y.as_mut_ptr());
    let out = &out;
    let task = |ci: usize| {
        let r0 = ci * TASK_ROWS;
        let r1 = (r0 + TASK_ROWS).min(w.rows);
        let mut row = Vec::new();
        for r in r0..r1 {
            for t in 0..tokens {
                let xs = &x[t * w.cols..(t + 1) * w.cols];
                let v = if simd {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: AVX-512F checked; validated shapes.
                    unsafe {
                        x86::row_dot(&w, &e2m1, &st, r, xs)
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    unreachable!()
                } else {
                    row.resize(w.cols, 0f32);
                    w.dequantize_row_with(&e2m1, &st, r, &mut row);
                    row.iter().zip(xs).map(|(a, b)| a * b).sum()
                };
                // SAFETY: tasks own disjoint rows; index < tokens · rows.
                unsafe { *out.0.add(t * w.rows + r) = v };
            }
        }
    };
    let n = w.rows.div_ceil(TASK_ROWS);
    if n == 1 {
        task(0);
    } else {
        (0..n).into_par_iter().for_each(task);
    }
}

fn prefill(
    x: &[f32],
    w: &Nvfp4Matrix<'_>,
    y: &mut [f32],
    tokens: usize,
    e2m1: &[f32; 16],
    st: &[f32; 256],
) {
    let cols = w.cols;
    let mut block = vec![0f32; PREFILL_ROWS * cols];
    let mut yb = vec![0f32; tokens * PREFILL_ROWS];
    for r0 in (0..w.rows).step_by(PREFILL_ROWS) {
        let n = PREFILL_ROWS.min(w.rows - r0);
        block[..n * cols]
            .par_chunks_mut(cols)
            .enumerate()
            .for_each(|(i, row)| w.dequantize_row_with(e2m1, st, r0 + i, row));
        // SAFETY: an f32 slice viewed as its bytes (alignment 1, same length × 4).
        let data = unsafe { std::slice::from_raw_parts(block.as_ptr() as *const u8, n * cols * 4) };
        let wm = crate::WeightMatrix {
            dtype: GgmlType::F32,
            rows: n,
            cols,
            data,
        };
        let yb = &mut yb[..tokens * n];
        crate::matmul_f32(x, wm, yb);
        for t in 0..tokens {
            y[t * w.rows + r0..t * w.rows + r0 + n].copy_from_slice(&yb[t * n..(t + 1) * n]);
        }
    }
}

fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Nvfp4Matrix, BLOCK};

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn row_dot(
        w: &Nvfp4Matrix<'_>,
        e2m1: &[f32; 16],
        st: &[f32; 256],
        r: usize,
        x: &[f32],
    ) -> f32 {
        let nb = w.cols / BLOCK;
        let codes = w.codes.as_ptr().add(r * w.cols / 2);
        let scales = &w.scales[r * nb..(r + 1) * nb];
        let table = _mm512_loadu_ps(e2m1.as_ptr());
        // Lanes hold byte i/2; odd lanes shift its high nibble down. The permute reads only the
        // low 4 bits of each index, so the even lanes need no mask.
        let shifts = _mm512_set_epi32(4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0);
        let mut acc = [_mm512_setzero_ps(), _mm512_setzero_ps()];
        for (b, &s) in scales.iter().enumerate() {
            let bytes = _mm_loadl_epi64(codes.add(b * 8) as *const __m128i);
            let dup = _mm_unpacklo_epi8(bytes, bytes);
            let idx = _mm512_srlv_epi32(_mm512_cvtepu8_epi32(dup), shifts);
            // Same f32 products as the dequantization: e2m1 · (scale / global).
            let wv = _mm512_mul_ps(
                _mm512_permutexvar_ps(idx, table),
                _mm512_set1_ps(st[s as usize]),
            );
            let xv = _mm512_loadu_ps(x.as_ptr().add(b * BLOCK));
            acc[b & 1] = _mm512_fmadd_ps(wv, xv, acc[b & 1]);
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc[0], acc[1]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Ragged shapes, random codes and finite scales: decode (SIMD and reference) and prefill
        /// match an f64 sum over the dequantized weights.
        #[test]
        fn matches_dequantized(tokens in 1usize..9, rows in 1usize..150, blocks in 1usize..12, seed in any::<u64>()) {
            let cols = blocks * BLOCK;
            let mut s = seed | 1;
            let mut next = || { s ^= s << 13; s ^= s >> 7; s ^= s << 17; s };
            let codes: Vec<u8> = (0..rows * cols / 2).map(|_| next() as u8).collect();
            // E4M3 bytes without the NaN codes (x111_1111).
            let scales: Vec<u8> = (0..rows * blocks).map(|_| (next() % 0x7F) as u8 | ((next() & 1) as u8) << 7).collect();
            let x: Vec<f32> = (0..tokens * cols).map(|_| (next() % 2001) as f32 / 1000.0 - 1.0).collect();
            let w = Nvfp4Matrix { rows, cols, codes: &codes, scales: &scales, global_scale: 3.5 };
            let mut wf = vec![0f32; rows * cols];
            for r in 0..rows {
                w.dequantize_row(r, &mut wf[r * cols..(r + 1) * cols]);
            }
            for isa in [Isa::detect(), Isa::Scalar] {
                let mut y = vec![0f32; tokens * rows];
                matmul_nvfp4_with(&x, w, &mut y, isa);
                for t in 0..tokens {
                    for r in 0..rows {
                        let xs = &x[t * cols..(t + 1) * cols];
                        let ws = &wf[r * cols..(r + 1) * cols];
                        let exact: f64 = ws.iter().zip(xs).map(|(a, b)| *a as f64 * *b as f64).sum();
                        let mag: f64 = ws.iter().zip(xs).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum::<f64>();
                        let got = y[t * rows + r] as f64;
                        prop_assert!((got - exact).abs() <= 1e-5 * mag + 1e-30, "{got} vs {exact}");
                    }
                }
            }
        }
    }

    #[test]
    fn rejects_bad_shapes() {
        let w = Nvfp4Matrix {
            rows: 2,
            cols: 16,
            codes: &[0; 16],
            scales: &[0; 2],
            global_scale: 1.0,
        };
        assert!(w.validate().is_ok());
        assert!(Nvfp4Matrix { cols: 15, ..w }.validate().is_err());
        assert!(Nvfp4Matrix {
            codes: &[0; 15],
            ..w
        }
        .validate()
        .is_err());
        assert!(Nvfp4Matrix {
            global_scale: 0.0,
            ..w
        }
        .validate()
        .is_err());
        assert!(Nvfp4Matrix {
            scales: &[0x7F, 0],
            ..w
        }
        .validate()
        .is_err());
    }
}
