//! Randomized Hadamard rotations (QuaRot / SpinQuant R1 fused into weights, R4 online): `Q = D · H / √n`, with `D` a seeded ±1
//! diagonal and `H` an n×n Hadamard matrix (entries ±1, `H Hᵀ = n I`), so `Q` is orthogonal.
//!
//! `H = H_p ⊗ H_m`: `H_p` is Sylvester's 2^k Hadamard matrix (applied by the in-place fast
//! Walsh–Hadamard transform, O(n log n)) and `H_m` a small dense Hadamard matrix for sizes that are
//! not powers of two, built by Paley's constructions: Paley I gives m = q + 1 for a prime
//! q ≡ 3 (mod 4) (12, 20, 24, 32, 44, 48, 60, ...), Paley II gives m = 2(q + 1) for a prime
//! q ≡ 1 (mod 4) (12, 28, 36, 60, ...). So 640 = 32 · 20, 896 = 32 · 28, 1536 = 128 · 12.

use rayon::prelude::*;

/// Why a rotation could not be built or applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HadamardError(pub String);

impl std::fmt::Display for HadamardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HadamardError {}

pub type Result<T> = std::result::Result<T, HadamardError>;

macro_rules! bail {
    ($($t:tt)*) => {
        return Err(HadamardError(format!($($t)*)))
    };
}

/// Largest dense factor accepted (its application costs O(m) per element).
const MAX_BASE: usize = 1024;

/// A randomized Hadamard rotation of size `n`.
#[derive(Debug, Clone)]
pub struct Hadamard {
    n: usize,
    /// Size of the Sylvester (power-of-two) factor.
    pow2: usize,
    /// Size of the dense factor (1 when n is a power of two).
    base: usize,
    /// `base × base` row-major ±1 entries of the dense factor.
    base_matrix: Vec<f64>,
    /// The ±1 diagonal D.
    signs: Vec<f64>,
}

fn is_prime(q: usize) -> bool {
    q >= 2
        && (2..)
            .take_while(|d| d * d <= q)
            .all(|d| !q.is_multiple_of(d))
}

/// Quadratic character of `a` modulo the odd prime `q`: 0, 1 (a square) or -1.
fn legendre(a: usize, q: usize) -> i32 {
    let a = a % q;
    if a == 0 {
        return 0;
    }
    // Euler's criterion: a^((q-1)/2) ≡ ±1 (mod q).
    let (mut r, mut b, mut e) = (1u64, a as u64, ((q - 1) / 2) as u64);
    let m = q as u64;
    while e > 0 {
        if e & 1 == 1 {
            r = r * b % m;
        }
        b = b * b % m;
        e >>= 1;
    }
    if r == 1 {
        1
    } else {
        -1
    }
}

/// The (q+1)×(q+1) conference-like core of both Paley constructions:
/// `[[0, 1ᵀ], [s·1, J]]` with `J[i][j] = χ(j − i)` (Jacobsthal) and `s` = -1 (Paley I) or 1 (II).
fn paley_core(q: usize, first_col_sign: i32) -> Vec<i32> {
    let n = q + 1;
    let mut c = vec![0i32; n * n];
    for j in 1..n {
        c[j] = 1;
        c[j * n] = first_col_sign;
    }
    for i in 0..q {
        for j in 0..q {
            c[(i + 1) * n + j + 1] = legendre(j + q - i, q);
        }
    }
    c
}

/// A dense Hadamard matrix of size `m` (row-major ±1) from Paley's constructions, if one applies.
pub fn paley(m: usize) -> Option<Vec<f64>> {
    if m >= 4 && is_prime(m - 1) && (m - 1) % 4 == 3 {
        // Paley I: H = I + S with S the skew conference matrix [[0, 1ᵀ], [-1, J]].
        let c = paley_core(m - 1, -1);
        let mut h: Vec<f64> = c.iter().map(|&v| v as f64).collect();
        for i in 0..m {
            h[i * m + i] += 1.0;
        }
        return Some(h);
    }
    if m >= 12 && m.is_multiple_of(2) && is_prime(m / 2 - 1) && (m / 2 - 1) % 4 == 1 {
        // Paley II: C = [[0, 1ᵀ], [1, J]] is a symmetric conference matrix; replace each 0 with
        // [[1, -1], [-1, -1]] and each ±1 with ±[[1, 1], [1, -1]].
        let q = m / 2 - 1;
        let c = paley_core(q, 1);
        let k = q + 1;
        let mut h = vec![0f64; m * m];
        for i in 0..k {
            for j in 0..k {
                let block: [[f64; 2]; 2] = match c[i * k + j] {
                    0 => [[1.0, -1.0], [-1.0, -1.0]],
                    s => {
                        let s = s as f64;
                        [[s, s], [s, -s]]
                    }
                };
                for (a, row) in block.iter().enumerate() {
                    for (b, v) in row.iter().enumerate() {
                        h[(2 * i + a) * m + 2 * j + b] = *v;
                    }
                }
            }
        }
        return Some(h);
    }
    None
}

/// Split `n` as `2^k · m` with a constructible dense factor `m` (1 for powers of two), taking the
/// smallest such `m`.
fn factor(n: usize) -> Result<(usize, Vec<f64>)> {
    if n == 0 {
        bail!("a Hadamard rotation needs a size of at least 1");
    }
    if n.is_power_of_two() {
        return Ok((1, vec![1.0]));
    }
    let odd = n >> n.trailing_zeros();
    let mut m = odd;
    while m <= n.min(MAX_BASE) {
        if n.is_multiple_of(m) {
            if let Some(h) = paley(m) {
                return Ok((m, h));
            }
        }
        m *= 2;
    }
    bail!(
        "no Hadamard matrix of size {n} = 2^{} · {odd}: lowbit builds 2^k · m with m = q + 1 \
         (q a prime ≡ 3 mod 4) or m = 2(q + 1) (q a prime ≡ 1 mod 4), m ≤ {MAX_BASE}",
        n.trailing_zeros()
    )
}

/// SplitMix64: a small, well-mixed seeded generator for the ±1 diagonal.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// [`fwht_blocks`] in f32 (the online path). The innermost loop runs over contiguous values, so
/// the compiler vectorizes it once blocks are 8 or more values long.
fn fwht_blocks_f32(x: &mut [f32], p: usize, m: usize) {
    let mut h = 1;
    while h < p {
        for i in (0..p).step_by(2 * h) {
            let (lo, hi) = x[i * m..(i + 2 * h) * m].split_at_mut(h * m);
            for (u, v) in lo.iter_mut().zip(hi.iter_mut()) {
                let (a, b) = (*u, *v);
                *u = a + b;
                *v = a - b;
            }
        }
        h *= 2;
    }
}

/// In-place fast Walsh–Hadamard transform (unnormalized) of `p` blocks of `m` values each: block
/// `a` becomes Σ_a' H_p[a][a'] · block `a'`.
fn fwht_blocks(x: &mut [f64], p: usize, m: usize) {
    let mut h = 1;
    while h < p {
        for i in (0..p).step_by(2 * h) {
            for j in i..i + h {
                let (lo, hi) = x.split_at_mut((j + h) * m);
                for (u, v) in lo[j * m..(j + 1) * m].iter_mut().zip(&mut hi[..m]) {
                    let (a, b) = (*u, *v);
                    *u = a + b;
                    *v = a - b;
                }
            }
        }
        h *= 2;
    }
}

impl Hadamard {
    /// The rotation `Q = D · H / √n` with the signs of `D` drawn from `seed`.
    pub fn new(n: usize, seed: u64) -> Result<Hadamard> {
        let mut h = Hadamard::plain(n)?;
        let mut state = seed;
        for s in h.signs.iter_mut() {
            *s = if splitmix64(&mut state) >> 63 == 0 {
                1.0
            } else {
                -1.0
            };
        }
        Ok(h)
    }

    /// The unrandomized rotation `H / √n` (D = I).
    pub fn plain(n: usize) -> Result<Hadamard> {
        let (base, base_matrix) = factor(n)?;
        Ok(Hadamard {
            n,
            pow2: n / base,
            base,
            base_matrix,
            signs: vec![1.0; n],
        })
    }

    pub fn size(&self) -> usize {
        self.n
    }

    /// Size of the dense (non-power-of-two) factor; 1 for powers of two.
    pub fn base(&self) -> usize {
        self.base
    }

    /// Size of the power-of-two (Sylvester) factor: `size() == pow2() * base()`.
    pub fn pow2(&self) -> usize {
        self.pow2
    }

    /// The `base × base` row-major ±1 entries of the dense factor (`[1.0]` for powers of two).
    pub fn base_matrix(&self) -> &[f64] {
        &self.base_matrix
    }

    /// The ±1 diagonal D, one sign per value.
    pub fn signs(&self) -> &[f64] {
        &self.signs
    }

    /// `y = x · H` (unnormalized) for one row of n values in f64, `transpose` giving `x · Hᵀ`.
    fn hadamard_row(&self, x: &mut [f64], tmp: &mut [f64], transpose: bool) {
        let m = self.base;
        if m > 1 {
            // Each block of m values times H_m (or H_mᵀ).
            let hm = &self.base_matrix;
            for blk in x.chunks_exact_mut(m) {
                for (bp, t) in tmp[..m].iter_mut().enumerate() {
                    *t = (0..m)
                        .map(|b| {
                            let h = if transpose {
                                hm[bp * m + b]
                            } else {
                                hm[b * m + bp]
                            };
                            blk[b] * h
                        })
                        .sum();
                }
                blk.copy_from_slice(&tmp[..m]);
            }
        }
        // H_p is symmetric, so the same transform serves x·H_p and x·H_pᵀ.
        fwht_blocks(x, self.pow2, m);
    }

    /// `x ← x · Q` for one row vector (what every residual-stream row becomes).
    pub fn apply_row(&self, x: &mut [f32]) {
        let mut buf = vec![0f64; self.n];
        let mut tmp = vec![0f64; self.base];
        self.apply_row_with(x, &mut buf, &mut tmp, false);
    }

    /// `x ← x · Qᵀ` (the inverse rotation) for one row vector.
    pub fn apply_row_inverse(&self, x: &mut [f32]) {
        let mut buf = vec![0f64; self.n];
        let mut tmp = vec![0f64; self.base];
        self.apply_row_with(x, &mut buf, &mut tmp, true);
    }

    fn apply_row_with(&self, x: &mut [f32], buf: &mut [f64], tmp: &mut [f64], inverse: bool) {
        assert_eq!(x.len(), self.n, "row length must be the rotation size");
        let norm = 1.0 / (self.n as f64).sqrt();
        if inverse {
            // x Qᵀ = (x Hᵀ / √n) ∘ d.
            for (b, v) in buf.iter_mut().zip(x.iter()) {
                *b = *v as f64;
            }
            self.hadamard_row(buf, tmp, true);
            for ((v, b), s) in x.iter_mut().zip(buf.iter()).zip(&self.signs) {
                *v = (b * norm * s) as f32;
            }
        } else {
            // x Q = (x ∘ d) H / √n.
            for ((b, v), s) in buf.iter_mut().zip(x.iter()).zip(&self.signs) {
                *b = *v as f64 * s;
            }
            self.hadamard_row(buf, tmp, false);
            for (v, b) in x.iter_mut().zip(buf.iter()) {
                *v = (b * norm) as f32;
            }
        }
    }

    /// `X ← X · Q` for a row-major matrix of rows of n values (in parallel over rows).
    pub fn apply_rows(&self, data: &mut [f32]) -> Result<()> {
        if !data.len().is_multiple_of(self.n) {
            bail!(
                "{} values are not rows of the rotation size {}",
                data.len(),
                self.n
            );
        }
        data.par_chunks_mut(self.n).for_each_init(
            || (vec![0f64; self.n], vec![0f64; self.base]),
            |(buf, tmp), row| self.apply_row_with(row, buf, tmp, false),
        );
        Ok(())
    }

    /// `X ← X · Q` for rows of activations at inference (the online rotation), in f32 with no
    /// allocation for power-of-two sizes: signs, the dense factor (if any) per block of `base`,
    /// then the in-place fast Walsh–Hadamard transform and the 1/√n scale. Agrees with
    /// [`Hadamard::apply_row`] (computed in f64) to f32 rounding.
    pub fn apply_rows_f32(&self, data: &mut [f32]) -> Result<()> {
        if !data.len().is_multiple_of(self.n) {
            bail!(
                "{} values are not rows of the rotation size {}",
                data.len(),
                self.n
            );
        }
        let norm = (1.0 / (self.n as f64).sqrt()) as f32;
        let signs: Vec<f32> = self.signs.iter().map(|&s| s as f32).collect();
        let base: Vec<f32> = self.base_matrix.iter().map(|&v| v as f32).collect();
        let m = self.base;
        let rows = data.len() / self.n;
        let row_op = |row: &mut [f32], tmp: &mut Vec<f32>| {
            for (v, s) in row.iter_mut().zip(&signs) {
                *v *= s;
            }
            if m > 1 {
                tmp.resize(m, 0.0);
                for blk in row.chunks_exact_mut(m) {
                    for (bp, t) in tmp.iter_mut().enumerate() {
                        *t = (0..m).map(|b| blk[b] * base[b * m + bp]).sum();
                    }
                    blk.copy_from_slice(tmp);
                }
            }
            fwht_blocks_f32(row, self.pow2, m);
            for v in row.iter_mut() {
                *v *= norm;
            }
        };
        // Decode (one row) stays on the calling thread; prefill rows go in parallel.
        if rows == 1 {
            row_op(data, &mut Vec::new());
        } else {
            data.par_chunks_mut(self.n)
                .for_each_init(Vec::new, |tmp, row| row_op(row, tmp));
        }
        Ok(())
    }

    /// The dense n×n rotation Q (row-major, f64): the O(n²) reference.
    pub fn dense(&self) -> Vec<f64> {
        let (n, m) = (self.n, self.base);
        let norm = 1.0 / (n as f64).sqrt();
        let mut q = vec![0f64; n * n];
        for i in 0..n {
            let (a, b) = (i / m, i % m);
            for j in 0..n {
                let (ap, bp) = (j / m, j % m);
                let hp = if (a & ap).count_ones() % 2 == 0 {
                    1.0
                } else {
                    -1.0
                };
                q[i * n + j] = self.signs[i] * hp * self.base_matrix[b * m + bp] * norm;
            }
        }
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_orthogonality_error(q: &[f64], n: usize) -> f64 {
        let mut worst = 0f64;
        for i in 0..n {
            for j in 0..n {
                let dot: f64 = (0..n).map(|k| q[k * n + i] * q[k * n + j]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                worst = worst.max((dot - want).abs());
            }
        }
        worst
    }

    #[test]
    fn paley_matrices_are_hadamard() {
        for m in [4, 12, 20, 24, 28, 36, 44, 60, 108] {
            let h = paley(m).unwrap_or_else(|| panic!("no Paley matrix of size {m}"));
            assert!(h.iter().all(|v| *v == 1.0 || *v == -1.0));
            for i in 0..m {
                for j in 0..m {
                    let dot: f64 = (0..m).map(|k| h[i * m + k] * h[j * m + k]).sum();
                    let want = if i == j { m as f64 } else { 0.0 };
                    assert_eq!(dot, want, "size {m}, rows {i} {j}");
                }
            }
        }
        assert!(paley(10).is_none());
    }

    #[test]
    fn orthogonal_and_fast_matches_dense() {
        // Property over sizes and seeds: QᵀQ = I, and the fast transform equals x · Q_dense.
        for n in [1, 2, 8, 64, 12, 20, 28, 40, 56, 96, 160, 224, 640] {
            for seed in [0u64, 7, 12345] {
                let h = Hadamard::new(n, seed).unwrap();
                let q = h.dense();
                let err = max_orthogonality_error(&q, n);
                assert!(err < 1e-5, "n {n} seed {seed}: |QᵀQ - I| = {err}");
                let mut state = seed ^ 0xABCD;
                let x: Vec<f32> = (0..n)
                    .map(|_| (splitmix64(&mut state) % 2001) as f32 / 1000.0 - 1.0)
                    .collect();
                let want: Vec<f64> = (0..n)
                    .map(|j| (0..n).map(|i| x[i] as f64 * q[i * n + j]).sum())
                    .collect();
                let mut y = x.clone();
                h.apply_row(&mut y);
                for (a, b) in y.iter().zip(&want) {
                    assert!(
                        (*a as f64 - b).abs() < 1e-5,
                        "n {n} seed {seed}: {a} vs {b}"
                    );
                }
                // The inverse undoes it.
                h.apply_row_inverse(&mut y);
                for (a, b) in y.iter().zip(&x) {
                    assert!((a - b).abs() < 1e-5, "n {n}: inverse {a} vs {b}");
                }
                // Many rows at once agree with one row at a time.
                let mut rows: Vec<f32> = x.iter().chain(x.iter()).copied().collect();
                h.apply_rows(&mut rows).unwrap();
                let mut one = x.clone();
                h.apply_row(&mut one);
                assert_eq!(&rows[..n], &one[..]);
                assert_eq!(&rows[n..], &one[..]);
            }
        }
    }

    #[test]
    fn online_f32_path_matches_f64_rows() {
        for n in [1, 2, 64, 12, 28, 640, 2048, 14336] {
            let h = Hadamard::new(n, 3).unwrap();
            let mut state = n as u64;
            let x: Vec<f32> = (0..3 * n)
                .map(|_| (splitmix64(&mut state) % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let mut want = x.clone();
            for row in want.chunks_exact_mut(n) {
                h.apply_row(row);
            }
            for rows in [1, 3] {
                let mut got = x[..rows * n].to_vec();
                h.apply_rows_f32(&mut got).unwrap();
                let num: f64 = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| ((a - b) as f64).powi(2))
                    .sum();
                let den: f64 = want[..rows * n].iter().map(|b| (*b as f64).powi(2)).sum();
                assert!(
                    (num / den).sqrt() < 1e-6,
                    "n {n} rows {rows}: rel err {}",
                    (num / den).sqrt()
                );
            }
        }
        let mut bad = vec![0f32; 7];
        assert!(Hadamard::new(8, 0)
            .unwrap()
            .apply_rows_f32(&mut bad)
            .is_err());
    }

    #[test]
    fn seeds_differ_and_unsupported_sizes_error() {
        let a = Hadamard::new(64, 1).unwrap().dense();
        let b = Hadamard::new(64, 2).unwrap().dense();
        assert_ne!(a, b);
        let e = Hadamard::new(10, 0).unwrap_err().to_string();
        assert!(e.contains("size 10"), "{e}");
        assert!(Hadamard::new(0, 0).is_err());
        let mut x = vec![0f32; 7];
        assert!(Hadamard::new(8, 0).unwrap().apply_rows(&mut x).is_err());
    }
}
