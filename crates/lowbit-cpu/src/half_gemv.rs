//! Few-token products (decode) with weights stored as BF16 or F16, read in place: each 16-bit
//! value is widened to f32 in registers and multiplied by the f32 activations. No f32 copy of the
//! matrix (nor of a row) is ever made, so a BF16 matrix streams 2 bytes per weight — this is what
//! the tied 262144 × 640 embedding/output matrix of Gemma-3 costs per decoded token.
//!
//! [`row_dot_scalar`] is the reference (widen, multiply, add in index order); the AVX-512 path
//! differs from it only in the order of the f32 additions.

use rayon::prelude::*;

use lowbit_formats::GgmlType;

use crate::quant_dot::Isa;

/// Whether this module handles `t`.
pub fn is_supported(t: GgmlType) -> bool {
    matches!(t, GgmlType::BF16 | GgmlType::F16)
}

/// Rows per rayon task: 64 rows × 640 cols × 2 B = 80 KiB streamed per task.
const TASK_ROWS: usize = 64;

#[inline(always)]
fn widen(t: GgmlType, lo: u8, hi: u8) -> f32 {
    if t == GgmlType::BF16 {
        half::bf16::from_le_bytes([lo, hi]).to_f32()
    } else {
        half::f16::from_le_bytes([lo, hi]).to_f32()
    }
}

/// Reference: `Σ_c w[c] · x[c]` over one stored row, f32 products summed in index order.
pub fn row_dot_scalar(t: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    row.chunks_exact(2)
        .zip(x)
        .map(|(b, &v)| widen(t, b[0], b[1]) * v)
        .sum()
}

struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// `y[t, r] = Σ_c x[t, c] · W[r, c]` for a `rows × cols` BF16/F16 matrix `data` (row-major,
/// little-endian), `x` tokens × cols, `y` tokens × rows. `Isa::Scalar` forces the reference; other
/// values use AVX-512 when this CPU has it. Panics on inconsistent shapes or an unsupported type.
pub fn gemv_half(
    t: GgmlType,
    data: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    y: &mut [f32],
    isa: Isa,
) {
    assert!(is_supported(t), "gemv_half: {t} is not BF16/F16");
    assert_eq!(
        data.len(),
        rows * cols * 2,
        "gemv_half: data is not rows × cols"
    );
    let tokens = x.len().checked_div(cols).unwrap_or(0);
    assert_eq!(x.len(), tokens * cols, "x is not tokens × cols");
    assert_eq!(y.len(), tokens * rows, "y is not tokens × rows");
    if tokens == 0 || rows == 0 {
        return;
    }
    let simd = isa != Isa::Scalar && has_avx512();
    let out = SendPtr(y.as_mut_ptr());
    let out = &out;
    let task = |ci: usize| {
        let r0 = ci * TASK_ROWS;
        let r1 = (r0 + TASK_ROWS).min(rows);
        for r in r0..r1 {
            let row = &data[r * cols * 2..(r + 1) * cols * 2];
            for tk in 0..tokens {
                let xs = &x[tk * cols..(tk + 1) * cols];
                let v = if simd {
                    // SAFETY: AVX-512F checked by `has_avx512`; row and xs hold `cols` values.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        x86::row_dot(t == GgmlType::BF16, row, xs)
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    row_dot_scalar(t, row, xs)
                } else {
                    row_dot_scalar(t, row, xs)
                };
                // SAFETY: tasks own disjoint row ranges; index < tokens · rows.
                unsafe { *out.0.add(tk * rows + r) = v };
            }
        }
    };
    let n = rows.div_ceil(TASK_ROWS);
    if n == 1 {
        task(0);
    } else {
        (0..n).into_par_iter().for_each(task);
    }
}

fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// 16 stored values at `p` widened to f32.
    #[inline(always)]
    unsafe fn load16(bf16: bool, p: *const u8) -> __m512 {
        let h = _mm256_loadu_si256(p as *const __m256i);
        if bf16 {
            // bf16 is the top half of an f32: zero-extend and shift into place (exact).
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        } else {
            _mm512_cvtph_ps(h)
        }
    }

    #[target_feature(enable = "avx512f,f16c")]
    pub(super) unsafe fn row_dot(bf16: bool, row: &[u8], x: &[f32]) -> f32 {
        let cols = x.len();
        let (wp, xp) = (row.as_ptr(), x.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut c = 0;
        // Four independent accumulators hide the FMA latency.
        while c + 64 <= cols {
            for (k, a) in acc.iter_mut().enumerate() {
                let o = c + 16 * k;
                *a = _mm512_fmadd_ps(load16(bf16, wp.add(2 * o)), _mm512_loadu_ps(xp.add(o)), *a);
            }
            c += 64;
        }
        while c + 16 <= cols {
            acc[0] = _mm512_fmadd_ps(
                load16(bf16, wp.add(2 * c)),
                _mm512_loadu_ps(xp.add(c)),
                acc[0],
            );
            c += 16;
        }
        let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        let mut sum = _mm512_reduce_add_ps(s);
        if c < cols {
            sum += super::row_dot_scalar(
                if bf16 {
                    lowbit_formats::GgmlType::BF16
                } else {
                    lowbit_formats::GgmlType::F16
                },
                &row[2 * c..],
                &x[c..],
            );
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use crate::test_util::lcg;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Ragged shapes, both 16-bit types: the SIMD path equals the reference up to f32
        /// summation order, and the reference equals an f64 sum of the widened values.
        #[test]
        fn simd_matches_reference(tokens in 1usize..5, rows in 1usize..200, cols in 1usize..300, bf in any::<bool>(), seed in any::<u64>()) {
            let mut s = seed;
            let t = if bf { GgmlType::BF16 } else { GgmlType::F16 };
            let x: Vec<f32> = (0..tokens * cols).map(|_| lcg(&mut s)).collect();
            let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut s)).collect();
            let data: Vec<u8> = w.iter().flat_map(|&v| if bf { half::bf16::from_f32(v).to_le_bytes() } else { half::f16::from_f32(v).to_le_bytes() }).collect();
            let mut ys = vec![0f32; tokens * rows];
            let mut yr = vec![0f32; tokens * rows];
            gemv_half(t, &data, rows, cols, &x, &mut ys, Isa::detect());
            gemv_half(t, &data, rows, cols, &x, &mut yr, Isa::Scalar);
            for tk in 0..tokens {
                for r in 0..rows {
                    let row = &data[r * cols * 2..(r + 1) * cols * 2];
                    let exact: f64 = row.chunks_exact(2).zip(&x[tk * cols..(tk + 1) * cols]).map(|(b, &v)| widen(t, b[0], b[1]) as f64 * v as f64).sum();
                    let mag: f64 = x[tk * cols..(tk + 1) * cols].iter().map(|v| v.abs() as f64).sum::<f64>() + 1e-6;
                    for y in [ys[tk * rows + r], yr[tk * rows + r]] {
                        prop_assert!(((y as f64) - exact).abs() <= 1e-6 * mag, "{y} vs {exact}");
                    }
                }
            }
        }
    }
}
