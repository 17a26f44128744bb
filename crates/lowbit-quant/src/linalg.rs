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
pub fn cholesky_lower(a: &mut [f64], n: usize) -> Result<()> {
    for i in 0..n {
        for j in 0..=i {
            let (ri, rj) = (i * n, j * n);
            let mut s = a[ri + j];
            s -= dot(&a[ri..ri + j], &a[rj..rj + j]);
            if i == j {
                if !(s > 0.0) || !s.is_finite() {
                    bail!("matrix is not positive definite (pivot {s:e} at row {i}); raise the dampening");
                }
                a[ri + i] = s.sqrt();
            } else {
                a[ri + j] = s / a[rj + j];
            }
        }
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

/// Inverse of a lower-triangular matrix (also lower triangular), row by row:
/// row i of L⁻¹ = (e_i − Σ_{k<i} L[i,k] · row k of L⁻¹) / L[i,i].
pub fn inverse_lower(l: &[f64], n: usize) -> Vec<f64> {
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
