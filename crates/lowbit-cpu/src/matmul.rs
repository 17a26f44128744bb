//! `y = x · Wᵀ` with `W` in any GGML storage type.
//!
//! Prefill (many tokens): W is cut into blocks of rows; each block is dequantized into a
//! per-thread f32 scratch and multiplied by `gemm`. Decode (few tokens): each row is dequantized
//! and dotted with the token vectors. Both split rows across rayon threads.

use lowbit_formats::{dequantize_row, GgmlType};
use rayon::prelude::*;

/// A `rows × cols` weight matrix in its stored type. `data` holds `rows` rows of
/// `dtype.byte_len(cols)` bytes each.
#[derive(Clone, Copy, Debug)]
pub struct WeightMatrix<'a> {
    pub dtype: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> WeightMatrix<'a> {
    /// Bytes per row; None when `cols` is not a multiple of the block size.
    pub fn row_bytes(&self) -> Option<usize> {
        self.dtype.byte_len(self.cols)
    }

    /// Checks that `data` has exactly `rows` rows of `cols` values.
    pub fn validate(&self) -> Result<(), String> {
        let rb = self
            .row_bytes()
            .ok_or_else(|| format!("{} columns is not a multiple of the {} block size", self.cols, self.dtype))?;
        if rb.checked_mul(self.rows) != Some(self.data.len()) {
            return Err(format!(
                "{}x{} {} needs {} bytes, got {}",
                self.rows,
                self.cols,
                self.dtype,
                rb.saturating_mul(self.rows),
                self.data.len()
            ));
        }
        Ok(())
    }

    fn row(&self, r: usize, rb: usize) -> &'a [u8] {
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Dequantize row `r` into `out` (`cols` values).
    pub fn dequantize_row_into(&self, r: usize, out: &mut [f32]) {
        let rb = self.row_bytes().expect("validated");
        dequantize_row(self.dtype, self.row(r, rb), out).expect("validated weight type");
    }
}

/// Rows per dequantize-then-gemm block in the prefill path: small enough that the f32 block stays
/// in L2 (64 rows × 2048 cols × 4 B = 512 KiB), large enough to amortize the gemm call.
const GEMM_BLOCK_ROWS: usize = 64;
/// Below this many tokens the row-by-row path is used.
const GEMV_MAX_TOKENS: usize = 4;

/// `y[t, r] = Σ_c x[t, c] · W[r, c]` for `t` in `0..tokens`. `x` is `tokens × w.cols`, `y` is
/// `tokens × w.rows`. Panics if the shapes disagree (callers validate weights at load time).
pub fn matmul(x: &[f32], w: WeightMatrix<'_>, y: &mut [f32]) {
    let tokens = x.len() / w.cols;
    assert_eq!(x.len(), tokens * w.cols, "x is not tokens × cols");
    assert_eq!(y.len(), tokens * w.rows, "y is not tokens × rows");
    if let Err(e) = w.validate() {
        panic!("invalid weight matrix: {e}");
    }
    if tokens == 0 {
        return;
    }
    if tokens <= GEMV_MAX_TOKENS {
        matmul_rows(x, w, y, tokens);
    } else {
        matmul_blocked(x, w, y, tokens);
    }
}

fn matmul_rows(x: &[f32], w: WeightMatrix<'_>, y: &mut [f32], tokens: usize) {
    let rb = w.row_bytes().unwrap();
    let cols = w.cols;
    // Each task computes a chunk of output rows for all tokens, into a local buffer.
    let chunk = (w.rows / (rayon::current_num_threads() * 8)).clamp(16, 1024);
    let parts: Vec<(usize, Vec<f32>)> = (0..w.rows.div_ceil(chunk))
        .into_par_iter()
        .map(|ci| {
            let r0 = ci * chunk;
            let r1 = (r0 + chunk).min(w.rows);
            let mut out = vec![0f32; (r1 - r0) * tokens];
            let mut buf = vec![0f32; cols];
            for r in r0..r1 {
                if w.dtype == GgmlType::F32 {
                    let row = w.row(r, rb);
                    for (b, s) in buf.iter_mut().zip(row.chunks_exact(4)) {
                        *b = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                    }
                } else {
                    dequantize_row(w.dtype, w.row(r, rb), &mut buf).unwrap();
                }
                for t in 0..tokens {
                    out[(r - r0) * tokens + t] = dot(&buf, &x[t * cols..(t + 1) * cols]);
                }
            }
            (r0, out)
        })
        .collect();
    for (r0, out) in parts {
        let n = out.len() / tokens;
        for i in 0..n {
            for t in 0..tokens {
                y[t * w.rows + r0 + i] = out[i * tokens + t];
            }
        }
    }
}

struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

fn matmul_blocked(x: &[f32], w: WeightMatrix<'_>, y: &mut [f32], tokens: usize) {
    let rb = w.row_bytes().unwrap();
    let cols = w.cols;
    let rows = w.rows;
    let y_ptr = SendPtr(y.as_mut_ptr());
    let y_ptr = &y_ptr;
    let block_rows = GEMM_BLOCK_ROWS;
    let f32_le_aligned = w.dtype == GgmlType::F32 && (w.data.as_ptr() as usize) % 4 == 0 && cfg!(target_endian = "little");
    (0..rows.div_ceil(block_rows)).into_par_iter().for_each_init(
        || vec![0f32; block_rows * cols],
        |scratch, bi| {
            let r0 = bi * block_rows;
            let n = block_rows.min(rows - r0);
            let block: &[f32] = if f32_le_aligned {
                let bytes = &w.data[r0 * rb..(r0 + n) * rb];
                // SAFETY: aligned to 4, little-endian f32 data, length a multiple of 4.
                unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const f32, n * cols) }
            } else {
                for i in 0..n {
                    dequantize_row(w.dtype, w.row(r0 + i, rb), &mut scratch[i * cols..(i + 1) * cols]).unwrap();
                }
                &scratch[..n * cols]
            };
            // SAFETY: blocks write disjoint column ranges [r0, r0+n) of y; all pointers and
            // strides describe in-bounds matrices: dst tokens×n (row stride rows), lhs
            // tokens×cols, rhs cols×n read from the row-major n×cols block.
            unsafe {
                gemm::gemm(
                    tokens,
                    n,
                    cols,
                    y_ptr.0.add(r0),
                    1,
                    rows as isize,
                    false,
                    x.as_ptr(),
                    1,
                    cols as isize,
                    block.as_ptr(),
                    cols as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        },
    );
}

#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators so the compiler can vectorize without reassociating.
    let mut acc = [0f32; 16];
    let ca = a.chunks_exact(16);
    let cb = b.chunks_exact(16);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Plain reference: dequantize everything, then triple loop in f64.
pub fn matmul_reference(x: &[f32], w: WeightMatrix<'_>) -> Vec<f32> {
    let tokens = x.len() / w.cols;
    let mut wf = vec![0f32; w.rows * w.cols];
    let rb = w.row_bytes().unwrap();
    for r in 0..w.rows {
        dequantize_row(w.dtype, w.row(r, rb), &mut wf[r * w.cols..(r + 1) * w.cols]).unwrap();
    }
    let mut y = vec![0f32; tokens * w.rows];
    for t in 0..tokens {
        for r in 0..w.rows {
            let mut s = 0f64;
            for c in 0..w.cols {
                s += x[t * w.cols + c] as f64 * wf[r * w.cols + c] as f64;
            }
            y[t * w.rows + r] = s as f32;
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
        let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        (num / den.max(1e-30)).sqrt()
    }

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// f32 and f16 weights, ragged shapes, both paths (few and many tokens): within 1e-5
        /// relative L2 of the f64 reference.
        #[test]
        fn matmul_matches_reference(tokens in 1usize..20, rows in 1usize..150, cols in 1usize..90, half in any::<bool>(), seed in any::<u64>()) {
            let mut s = seed;
            let x: Vec<f32> = (0..tokens * cols).map(|_| lcg(&mut s)).collect();
            let wv: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut s)).collect();
            let (dtype, bytes): (GgmlType, Vec<u8>) = if half {
                (GgmlType::F16, wv.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect())
            } else {
                (GgmlType::F32, wv.iter().flat_map(|v| v.to_le_bytes()).collect())
            };
            let w = WeightMatrix { dtype, rows, cols, data: &bytes };
            let mut y = vec![0f32; tokens * rows];
            matmul(&x, w, &mut y);
            let r = matmul_reference(&x, w);
            prop_assert!(rel_l2(&y, &r) < 1e-5, "rel err {}", rel_l2(&y, &r));
        }
    }
}
