//! `y = x · Wᵀ` with `W` in any GGML storage type.
//!
//! Prefill (many tokens): W is cut into blocks of rows; each block is dequantized into a
//! per-thread f32 scratch and multiplied by `gemm`. Decode (few tokens): the activations are
//! quantized to 8-bit blocks once and each weight row is dotted with them by the fused integer
//! kernels of [`crate::quant_dot`] (weights never expanded); types without a kernel, or
//! `LOWBIT_MATMUL=f32` in the environment, dequantize each row to f32 instead. Both split rows
//! across rayon threads.

use std::cell::RefCell;
use std::sync::OnceLock;

use lowbit_formats::{dequantize_row, GgmlType};
use rayon::prelude::*;

use crate::q8act::{quantize_q8, Q8Block, QA};
use crate::quant_dot::{self, Isa, RowsJob};

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
        let rb = self.row_bytes().ok_or_else(|| {
            format!(
                "{} columns is not a multiple of the {} block size",
                self.cols, self.dtype
            )
        })?;
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
        let isa = Isa::detect();
        if !f32_forced() && isa != Isa::Scalar && quant_dot::has_simd_kernel(w.dtype) {
            gemv_q8(x, w, y, tokens, isa);
        } else if !f32_forced() && isa != Isa::Scalar && crate::half_gemv::is_supported(w.dtype) {
            // BF16/F16 read in place with f32 activations (no per-row f32 copy).
            crate::half_gemv::gemv_half(w.dtype, w.data, w.rows, w.cols, x, y, isa);
        } else {
            matmul_rows(x, w, y, tokens);
        }
    } else if prefill_int8() && !f32_forced() && crate::gemm_q8::usable(&w) {
        crate::gemm_q8::matmul_int8(x, w, y, Isa::Avx512Vnni);
    } else if !f32_forced() && crate::gemm_i16::usable(&w) {
        crate::gemm_i16::matmul_i16(x, w, y, Isa::Avx512Vnni);
    } else {
        matmul_blocked(x, w, y, tokens);
    }
}

/// 0: not decided yet (read `LOWBIT_PREFILL`), 1: f32 prefill, 2: int8 prefill.
static PREFILL_INT8: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Run many-token products (prefill) on 8-bit integers ([`crate::gemm_q8`], AVX-512 VNNI) instead
/// of 16-bit ones ([`crate::gemm_i16`]). Off by default: quantizing the activations of every prefill
/// product to 8 bits moves Gemma-3-270M's teacher-forced logits by ~1e-2 relative L2 (perplexity
/// +0.2%), beyond the f32-level bounds the end-to-end tests hold prefill to; decode always
/// quantizes. `LOWBIT_PREFILL=int8` in the environment turns it on too.
pub fn set_prefill_int8(on: bool) {
    PREFILL_INT8.store(if on { 2 } else { 1 }, std::sync::atomic::Ordering::Relaxed);
}

fn prefill_int8() -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    match PREFILL_INT8.load(Relaxed) {
        0 => {
            let on = std::env::var("LOWBIT_PREFILL").is_ok_and(|v| v.eq_ignore_ascii_case("int8"));
            // A concurrent `set_prefill_int8` wins over the environment.
            let _ = PREFILL_INT8.compare_exchange(0, if on { 2 } else { 1 }, Relaxed, Relaxed);
            PREFILL_INT8.load(Relaxed) == 2
        }
        v => v == 2,
    }
}

/// `LOWBIT_MATMUL=f32`: every product on the f32 path (accuracy checks).
fn f32_forced() -> bool {
    static F32: OnceLock<bool> = OnceLock::new();
    *F32.get_or_init(|| std::env::var("LOWBIT_MATMUL").is_ok_and(|v| v.eq_ignore_ascii_case("f32")))
}

/// The f32 path whatever the token count: weights dequantized to f32, activations kept in f32.
/// Same contract as [`matmul`].
pub fn matmul_f32(x: &[f32], w: WeightMatrix<'_>, y: &mut [f32]) {
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

/// The quantized-activation path whatever the token count, with a chosen instruction set
/// (`Isa::Scalar` is the integer reference). Returns false, leaving `y` alone, when the weight
/// type has no fused kernel or the CPU lacks `isa`. Same shape contract as [`matmul`].
pub fn matmul_q8(x: &[f32], w: WeightMatrix<'_>, y: &mut [f32], isa: Isa) -> bool {
    let tokens = x.len() / w.cols;
    assert_eq!(x.len(), tokens * w.cols, "x is not tokens × cols");
    assert_eq!(y.len(), tokens * w.rows, "y is not tokens × rows");
    if let Err(e) = w.validate() {
        panic!("invalid weight matrix: {e}");
    }
    let best = Isa::detect();
    let available = match isa {
        Isa::Scalar => true,
        Isa::Avx2 => best != Isa::Scalar,
        Isa::Avx512Vnni => best == Isa::Avx512Vnni,
    };
    if !available || !quant_dot::is_supported(w.dtype) {
        return false;
    }
    if isa != Isa::Scalar && !quant_dot::has_simd_kernel(w.dtype) {
        return false;
    }
    if tokens > 0 {
        gemv_q8(x, w, y, tokens, isa);
    }
    true
}

/// Weight bytes one task of the GEMV should at least stream, so the rayon split pays off on the
/// small matrices of small models (a 256 × 640 Q5_0 projection is one task).
const GEMV_MIN_TASK_BYTES: usize = 96 * 1024;

thread_local! {
    /// Quantized activations of the current product (reused: no allocation per decoded token).
    static ACT: RefCell<Vec<Q8Block>> = const { RefCell::new(Vec::new()) };
}

struct SendMutPtr(*mut f32);
unsafe impl Send for SendMutPtr {}
unsafe impl Sync for SendMutPtr {}

/// Quantize the token rows to 8-bit blocks, then fused integer dot products per weight row.
fn gemv_q8(x: &[f32], w: WeightMatrix<'_>, y: &mut [f32], tokens: usize, isa: Isa) {
    gemv_q8_many(x, &[w], &mut [y], tokens, isa);
}

/// [`gemv_q8`] of several matrices with the same input (Q/K/V, gate/up): the activations are
/// quantized once and all rows go to the threads in one parallel call, which saves a fork/join
/// (tens of µs on a small VM) per matrix.
fn gemv_q8_many(
    x: &[f32],
    ws: &[WeightMatrix<'_>],
    ys: &mut [&mut [f32]],
    tokens: usize,
    isa: Isa,
) {
    let cols = ws[0].cols;
    let nb = cols / QA;
    let outs: Vec<SendMutPtr> = ys.iter_mut().map(|y| SendMutPtr(y.as_mut_ptr())).collect();
    // (matrix, first row, end row) of every task; a task streams at least GEMV_MIN_TASK_BYTES
    // (unless its matrix is smaller) and there are at most ~8 per thread.
    let total: usize = ws.iter().map(|w| w.data.len()).sum();
    let threads = rayon::current_num_threads().max(1);
    let task_bytes = GEMV_MIN_TASK_BYTES.max(total.div_ceil(threads * 8));
    let mut tasks: Vec<(usize, usize, usize)> = Vec::new();
    for (m, w) in ws.iter().enumerate() {
        debug_assert!(quant_dot::row_matches(
            w.dtype,
            w.row_bytes().unwrap_or(0),
            nb
        ));
        let n = w.data.len().div_ceil(task_bytes).clamp(1, w.rows.max(1));
        // A multiple of 4 rows, so the kernels' row groups stay whole.
        let chunk = w.rows.div_ceil(n).next_multiple_of(4);
        let mut r0 = 0;
        while r0 < w.rows {
            let r1 = (r0 + chunk).min(w.rows);
            tasks.push((m, r0, r1));
            r0 = r1;
        }
    }
    let run = |act: &[Q8Block]| {
        let job = |m: usize| {
            let w = &ws[m];
            RowsJob {
                dtype: w.dtype,
                data: w.data,
                row_bytes: w.row_bytes().expect("validated"),
                rows: w.rows,
                act,
                tokens,
                nb,
            }
        };
        let one = |&(m, r0, r1): &(usize, usize, usize)| {
            // SAFETY: shapes validated by the callers; every `ys[m]` is tokens × rows and
            // exclusively ours; tasks write disjoint row ranges r0..r1 of every token; `isa` is
            // supported (checked by the callers).
            unsafe { quant_dot::dot_rows(isa, &job(m), r0, r1, outs[m].0) };
        };
        if tasks.len() <= 1 {
            tasks.iter().for_each(one);
        } else {
            tasks.par_iter().with_max_len(1).for_each(one);
        }
    };
    let quantize = |buf: &mut Vec<Q8Block>| {
        buf.clear();
        buf.resize(tokens * nb, Q8Block::default());
        for t in 0..tokens {
            quantize_q8(&x[t * cols..(t + 1) * cols], &mut buf[t * nb..(t + 1) * nb]);
        }
    };
    // The scratch may already be borrowed if a matmul runs inside another's rayon task.
    ACT.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            quantize(&mut buf);
            run(&buf);
        }
        Err(_) => {
            let mut buf = Vec::new();
            quantize(&mut buf);
            run(&buf);
        }
    });
}

/// `ys[i] = x · ws[i]ᵀ` for matrices that share the input `x` (same `cols`), as [`matmul`] on
/// each but with one quantization of `x` and one parallel call for all of them on the decode
/// path. Panics if the shapes disagree.
pub fn matmul_many(x: &[f32], ws: &[WeightMatrix<'_>], ys: &mut [&mut [f32]]) {
    assert_eq!(ws.len(), ys.len(), "one output per matrix");
    let Some(first) = ws.first() else { return };
    let tokens = x.len() / first.cols;
    for (w, y) in ws.iter().zip(ys.iter()) {
        assert_eq!(
            w.cols, first.cols,
            "matmul_many: matrices differ in columns"
        );
        assert_eq!(x.len(), tokens * w.cols, "x is not tokens × cols");
        assert_eq!(y.len(), tokens * w.rows, "y is not tokens × rows");
        if let Err(e) = w.validate() {
            panic!("invalid weight matrix: {e}");
        }
    }
    let isa = Isa::detect();
    let fused = tokens > 0
        && tokens <= GEMV_MAX_TOKENS
        && !f32_forced()
        && isa != Isa::Scalar
        && ws.iter().all(|w| quant_dot::has_simd_kernel(w.dtype));
    if fused {
        gemv_q8_many(x, ws, ys, tokens, isa);
    } else {
        for (w, y) in ws.iter().zip(ys.iter_mut()) {
            matmul(x, *w, y);
        }
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
    let f32_le_aligned = w.dtype == GgmlType::F32
        && (w.data.as_ptr() as usize) % 4 == 0
        && cfg!(target_endian = "little");
    (0..rows.div_ceil(block_rows))
        .into_par_iter()
        .for_each_init(
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
                        dequantize_row(
                            w.dtype,
                            w.row(r0 + i, rb),
                            &mut scratch[i * cols..(i + 1) * cols],
                        )
                        .unwrap();
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

    use crate::test_util::lcg;

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
