//! The dense linear algebra GPTQ needs, in f64: Cholesky factorization, triangular inverse, and
//! matrix products through the `gemm` crate. Matrices are row-major `n × n` slices.

use anyhow::{bail, Result};

/// `dst (m × n) = [dst +] sign · a (m × k) · b (k × n)`, all row-major and contiguous.
pub fn matmul_f64(
    dst: &mut [f64],
    a: &[f64],
    b: &[f64],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
    sign: f64,
) {
    matmul_f64_strided(dst, n, a, k, b, n, m, k, n, accumulate, sign);
}

/// `dst (m × n) = a (m × k) · b (k × n)`, all row-major f32 (the gemm crate, rayon-parallel).
pub fn matmul_f32(dst: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    assert!(dst.len() >= m * n && a.len() >= m * k && b.len() >= k * n);
    // SAFETY: the assert shows every element addressed lies inside the slices; dst does not
    // alias a or b (borrow rules).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
}

/// As [`matmul_f64`] with row strides (`*_rs`) for sub-matrices of larger row-major matrices.
#[allow(clippy::too_many_arguments)]
pub fn matmul_f64_strided(
    dst: &mut [f64],
    dst_rs: usize,
    a: &[f64],
    a_rs: usize,
    b: &[f64],
    b_rs: usize,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
    sign: f64,
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let need = |rs: usize, r: usize, c: usize| (r - 1) * rs + c;
    assert!(dst_rs >= n && a_rs >= k && b_rs >= n);
    assert!(
        dst.len() >= need(dst_rs, m, n)
            && a.len() >= need(a_rs, m, k)
            && b.len() >= need(b_rs, k, n)
    );
    // SAFETY: the asserts above show every element addressed with these strides lies inside the
    // slices, and dst does not alias a or b (borrow rules).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.as_ptr(),
            1,
            a_rs as isize,
            b.as_ptr(),
            1,
            b_rs as isize,
            1.0,
            sign,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
}

/// `h (n × n) += xᵀ x` for `x` of `tokens × n` (f32 activations). Each block of 256 tokens is
/// one f32 GEMM (reading `x` in place as the transposed left operand: no copy) whose result is
/// added to `h` in f64, so rounding stays at f32 sums of 256 products (relative ~1e-6, far below
/// what GPTQ's dampening hides) while the products run at f32 GEMM speed (this was the slowest
/// part of calibration in f64).
pub fn add_gram(h: &mut [f64], x: &[f32], n: usize) {
    let tokens = x.len() / n;
    const BLOCK: usize = 256;
    let mut g = vec![0f32; n * n];
    for t0 in (0..tokens).step_by(BLOCK) {
        let bt = (t0 + BLOCK).min(tokens) - t0;
        let xb = &x[t0 * n..(t0 + bt) * n];
        // g = xbᵀ · xb: lhs is xbᵀ (n × bt: element (i, t) at xb[t * n + i], column stride n),
        // rhs is xb (bt × n, row stride n).
        // SAFETY: every index below lies in `xb` (bt rows of n) or `g` (n × n); no aliasing.
        unsafe {
            gemm::gemm(
                n,
                n,
                bt,
                g.as_mut_ptr(),
                1,
                n as isize,
                false,
                xb.as_ptr(),
                n as isize,
                1,
                xb.as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
        for (hv, gv) in h.iter_mut().zip(&g) {
            *hv += *gv as f64;
        }
    }
}

/// In-place lower Cholesky factor `L` of a symmetric positive definite matrix (`a = L Lᵀ`); the
/// upper triangle is zeroed. Errors if the matrix is not positive definite.
///
/// Blocked, right-looking: each 64-column panel is factored by the unblocked algorithm, the
/// rows below it solved against it, and the trailing matrix updated by one GEMM (where the
/// O(n³) work goes, at GEMM speed).
pub fn cholesky_lower(a: &mut [f64], n: usize) -> Result<()> {
    const NB: usize = 64;
    assert!(a.len() >= n * n);
    let mut panel_t = Vec::new();
    for k0 in (0..n).step_by(NB) {
        let k1 = (k0 + NB).min(n);
        // Diagonal block, unblocked (rows k0..k1 only see columns k0.. after earlier updates).
        for i in k0..k1 {
            for j in k0..=i {
                let (ri, rj) = (i * n, j * n);
                let s = a[ri + j] - dot(&a[ri + k0..ri + j], &a[rj + k0..rj + j]);
                if i == j {
                    if !(s > 0.0) || !s.is_finite() {
                        bail!("matrix is not positive definite (pivot {s:e} at row {i}); raise the dampening");
                    }
                    a[ri + i] = s.sqrt();
                } else {
                    a[ri + j] = s / a[rj + j];
                }
            }
        }
        if k1 == n {
            break;
        }
        // Rows below: L21 = A21 · L11⁻ᵀ, row by row.
        for i in k1..n {
            for j in k0..k1 {
                let (ri, rj) = (i * n, j * n);
                let s = a[ri + j] - dot(&a[ri + k0..ri + j], &a[rj + k0..rj + j]);
                a[ri + j] = s / a[rj + j];
            }
        }
        // Trailing update: A22 -= L21 · L21ᵀ (L21ᵀ copied into a row-major kb × m buffer).
        let (m, kb) = (n - k1, k1 - k0);
        panel_t.clear();
        panel_t.resize(kb * m, 0.0);
        for i in 0..m {
            for j in 0..kb {
                panel_t[j * m + i] = a[(k1 + i) * n + k0 + j];
            }
        }
        let tail = &mut a[k1 * n..];
        // dst = rows k1.. from column k1; lhs = the same rows from column k0 (read from a copy
        // of the panel rows, since dst and lhs share the matrix).
        let lhs: Vec<f64> = (0..m)
            .flat_map(|i| tail[i * n + k0..i * n + k1].iter().copied())
            .collect();
        matmul_f64_strided(
            &mut tail[k1..],
            n,
            &lhs,
            kb,
            &panel_t,
            m,
            m,
            kb,
            m,
            true,
            -1.0,
        );
    }
    for i in 0..n {
        a[i * n + i + 1..(i + 1) * n].fill(0.0);
    }
    Ok(())
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    // Four accumulators so the loop vectorizes.
    let mut acc = [0f64; 4];
    let chunks = a.len() / 4;
    for k in 0..chunks {
        for l in 0..4 {
            acc[l] += a[4 * k + l] * b[4 * k + l];
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for k in chunks * 4..a.len() {
        s += a[k] * b[k];
    }
    s
}

/// Inverse of a lower-triangular matrix (also lower triangular). Recursive 2×2 blocks,
/// `[[L11, 0], [L21, L22]]⁻¹ = [[L11⁻¹, 0], [−L22⁻¹ L21 L11⁻¹, L22⁻¹]]`, the products by GEMM;
/// blocks of ≤ 64 rows by [`inverse_lower_unblocked`].
pub fn inverse_lower(l: &[f64], n: usize) -> Vec<f64> {
    if n <= 64 {
        return inverse_lower_unblocked(l, n);
    }
    let h = n / 2;
    let m = n - h;
    let sub = |r0: usize, c0: usize, rows: usize, cols: usize| -> Vec<f64> {
        (0..rows)
            .flat_map(|i| {
                l[(r0 + i) * n + c0..(r0 + i) * n + c0 + cols]
                    .iter()
                    .copied()
            })
            .collect()
    };
    let a = inverse_lower(&sub(0, 0, h, h), h);
    let c = inverse_lower(&sub(h, h, m, m), m);
    let l21 = sub(h, 0, m, h);
    let mut t = vec![0f64; m * h];
    matmul_f64(&mut t, &l21, &a, m, h, h, false, 1.0);
    let mut b = vec![0f64; m * h];
    matmul_f64(&mut b, &c, &t, m, m, h, false, -1.0);
    let mut inv = vec![0f64; n * n];
    for i in 0..h {
        inv[i * n..i * n + h].copy_from_slice(&a[i * h..(i + 1) * h]);
    }
    for i in 0..m {
        let r = (h + i) * n;
        inv[r..r + h].copy_from_slice(&b[i * h..(i + 1) * h]);
        inv[r + h..r + n].copy_from_slice(&c[i * m..(i + 1) * m]);
    }
    inv
}

/// Inverse of a lower-triangular matrix, row by row (the reference and the small-block case):
/// row i of L⁻¹ = (e_i − Σ_{k<i} L[i,k] · row k of L⁻¹) / L[i,i].
pub fn inverse_lower_unblocked(l: &[f64], n: usize) -> Vec<f64> {
    let mut inv = vec![0f64; n * n];
    let mut row = vec![0f64; n];
    for i in 0..n {
        row[..=i].fill(0.0);
        row[i] = 1.0;
        for k in 0..i {
            let f = l[i * n + k];
            if f != 0.0 {
                let rk = &inv[k * n..k * n + k + 1];
                for (r, v) in row[..=k].iter_mut().zip(rk) {
                    *r -= f * v;
                }
            }
        }
        let d = 1.0 / l[i * n + i];
        for (o, r) in inv[i * n..i * n + i + 1].iter_mut().zip(&row[..=i]) {
            *o = r * d;
        }
    }
    inv
}

/// The upper Cholesky factor `U` of `h⁻¹` (`h⁻¹ = Uᵀ U`), as GPTQ uses it.
///
/// With J the reversal permutation, factor J h J = L Lᵀ; then h = R Rᵀ with R = J L J upper
/// triangular, so h⁻¹ = R⁻ᵀ R⁻¹ and, by uniqueness of the factor, U = R⁻¹ = J L⁻¹ J. One
/// factorization and one triangular inverse instead of inverse-then-factor.
pub fn upper_cholesky_of_inverse(h: &[f64], n: usize) -> Result<Vec<f64>> {
    let mut rev = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            rev[i * n + j] = h[(n - 1 - i) * n + (n - 1 - j)];
        }
    }
    cholesky_lower(&mut rev, n)?;
    let linv = inverse_lower(&rev, n);
    let mut u = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            u[i * n + j] = linv[(n - 1 - i) * n + (n - 1 - j)];
        }
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spd(n: usize) -> Vec<f64> {
        // A Gram matrix of pseudo-random rows plus a ridge.
        let m = n + 3;
        let x: Vec<f64> = (0..m * n)
            .map(|i| ((i * 7919 % 1013) as f64 / 1013.0) - 0.5)
            .collect();
        let mut h = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                h[i * n + j] = (0..m).map(|r| x[r * n + i] * x[r * n + j]).sum::<f64>()
                    + if i == j { 0.1 } else { 0.0 };
            }
        }
        h
    }

    #[test]
    fn upper_factor_of_inverse_times_h_is_identity() {
        let n = 9;
        let h = spd(n);
        let u = upper_cholesky_of_inverse(&h, n).unwrap();
        for i in 0..n {
            for j in 0..i {
                assert_eq!(u[i * n + j], 0.0);
            }
        }
        // h · (Uᵀ U) = I.
        let mut ut = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                ut[i * n + j] = u[j * n + i];
            }
        }
        let mut hinv = vec![0f64; n * n];
        matmul_f64(&mut hinv, &ut, &u, n, n, n, false, 1.0);
        let mut id = vec![0f64; n * n];
        matmul_f64(&mut id, &h, &hinv, n, n, n, false, 1.0);
        for i in 0..n {
            for j in 0..n {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!(
                    (id[i * n + j] - want).abs() < 1e-9,
                    "{i},{j}: {}",
                    id[i * n + j]
                );
            }
        }
    }

    /// The blocked Cholesky and triangular inverse against the textbook unblocked ones, on a
    /// size that leaves a ragged last block (and recursion levels of uneven halves).
    #[test]
    fn blocked_factorizations_match_unblocked() {
        let n = 301;
        let x: Vec<f32> = (0..(n + 40) * n)
            .map(|i| (i as f32 * 0.61).sin() + (i % 7) as f32 * 0.1)
            .collect();
        let mut h = vec![0f64; n * n];
        add_gram(&mut h, &x, n);
        for i in 0..n {
            h[i * n + i] += 1.0;
        }
        // Textbook Cholesky–Banachiewicz.
        let mut want = h.clone();
        for i in 0..n {
            for j in 0..=i {
                let s: f64 = want[i * n + j]
                    - (0..j)
                        .map(|k| want[i * n + k] * want[j * n + k])
                        .sum::<f64>();
                want[i * n + j] = if i == j {
                    s.sqrt()
                } else {
                    s / want[j * n + j]
                };
            }
            for j in i + 1..n {
                want[i * n + j] = 0.0;
            }
        }
        let mut got = h.clone();
        cholesky_lower(&mut got, n).unwrap();
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(&want)
            .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(err < 1e-10 * scale, "cholesky: {err:e}");
        let inv = inverse_lower(&got, n);
        let inv_ref = inverse_lower_unblocked(&got, n);
        let scale = inv_ref.iter().fold(0f64, |m, v| m.max(v.abs()));
        let err = inv
            .iter()
            .zip(&inv_ref)
            .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(err < 1e-10 * scale, "inverse: {err:e}");
    }

    #[test]
    fn gram_matches_naive_sum_and_indefinite_is_an_error() {
        // 600 tokens: two full f32 blocks of 256 and a ragged one, summed in f64.
        let (n, tokens) = (5, 600);
        let x: Vec<f32> = (0..tokens * n).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut h = vec![0f64; n * n];
        add_gram(&mut h, &x, n);
        for i in 0..n {
            for j in 0..n {
                let want: f64 = (0..tokens)
                    .map(|t| x[t * n + i] as f64 * x[t * n + j] as f64)
                    .sum();
                // f32 sums of ≤ 256 products of values ≤ 1: absolute error ≤ 256 · 2^-24 per
                // block; the diagonal is ≈ tokens / 2.
                assert!(
                    (h[i * n + j] - want).abs() < 1e-4,
                    "({i}, {j}): {} vs {want}",
                    h[i * n + j]
                );
            }
        }
        let mut bad = vec![1.0, 2.0, 2.0, 1.0];
        assert!(cholesky_lower(&mut bad, 2).is_err());
    }
}
