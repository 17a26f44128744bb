//! The fused integer kernels against their scalar integer reference (every instruction set this
//! CPU has) and against the f64 reference of the dequantized weights.
//!
//! Bounds:
//! - SIMD vs the scalar integer reference: the integer sums are identical, only float additions
//!   are reordered: |Δ| ≤ 1e-5 · Σ|x·w| per output.
//! - Fused vs f64 reference: the only approximation is the activation rounding (|δa| ≤ d/2 per
//!   block of 32, d = max|a|/127), so per output |Δ| ≤ Σ_blocks d/2 · Σ|w| (+1e-5 · Σ|x·w|),
//!   and on random data with outliers (every 37th activation ×8) the relative L2 error over all
//!   outputs is ≤ 3e-2 (≈ 0.5% without outliers).

use lowbit_cpu::{matmul, matmul_f32, matmul_q8, matmul_reference, Isa, WeightMatrix};
use lowbit_formats::{dequantize_row, quantize, GgmlType};
use proptest::prelude::*;

const TYPES: [GgmlType; 10] = [
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q5_0,
    GgmlType::IQ4_NL,
    GgmlType::MXFP4,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// Random weights with a per-row magnitude, quantized to `t`.
fn random_weights(t: GgmlType, rows: usize, cols: usize, seed: &mut u64) -> Vec<u8> {
    let rb = t.byte_len(cols).unwrap();
    let mut out = vec![0u8; rows * rb];
    for r in 0..rows {
        let mag = 0.05 + (r % 7) as f32 * 0.3;
        let v: Vec<f32> = (0..cols).map(|_| lcg(seed) * mag).collect();
        quantize(t, &v, &mut out[r * rb..(r + 1) * rb]).unwrap();
    }
    out
}

fn dequant(w: &WeightMatrix<'_>) -> Vec<f32> {
    let rb = w.row_bytes().unwrap();
    let mut out = vec![0f32; w.rows * w.cols];
    for r in 0..w.rows {
        dequantize_row(
            w.dtype,
            &w.data[r * rb..(r + 1) * rb],
            &mut out[r * w.cols..(r + 1) * w.cols],
        )
        .unwrap();
    }
    out
}

fn isas() -> Vec<Isa> {
    let best = Isa::detect();
    match best {
        Isa::Avx512Vnni => vec![Isa::Avx512Vnni, Isa::Avx2],
        Isa::Avx2 => vec![Isa::Avx2],
        Isa::Scalar => vec![],
    }
}

fn check(
    t: GgmlType,
    tokens: usize,
    rows: usize,
    blocks: usize,
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut s = seed;
    let bs = t.block_size();
    let cols = blocks * bs;
    let data = random_weights(t, rows, cols, &mut s);
    let w = WeightMatrix {
        dtype: t,
        rows,
        cols,
        data: &data,
    };
    // Activations with outliers in some blocks, as real hidden states have.
    let x: Vec<f32> = (0..tokens * cols)
        .map(|i| lcg(&mut s) * if i % 37 == 0 { 8.0 } else { 1.0 })
        .collect();
    let wf = dequant(&w);
    let reference = matmul_reference(&x, w);
    let mut scalar = vec![0f32; tokens * rows];
    prop_assert!(matmul_q8(&x, w, &mut scalar, Isa::Scalar));
    let (mut num, mut den) = (0f64, 0f64);
    for tk in 0..tokens {
        let xt = &x[tk * cols..(tk + 1) * cols];
        for r in 0..rows {
            let wr = &wf[r * cols..(r + 1) * cols];
            let abs: f64 = xt.iter().zip(wr).map(|(a, b)| (a * b).abs() as f64).sum();
            let mut bound = 1e-5 * abs;
            for (xb, wb) in xt.chunks(32).zip(wr.chunks(32)) {
                let d = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64 / 127.0;
                bound += d / 2.0 * wb.iter().map(|v| v.abs() as f64).sum::<f64>() * 1.0001;
            }
            let i = tk * rows + r;
            let err = (scalar[i] as f64 - reference[i] as f64).abs();
            prop_assert!(
                err <= bound + 1e-6,
                "{t} r{r} t{tk}: {} vs {} (bound {bound})",
                scalar[i],
                reference[i]
            );
            num += err * err;
            den += (reference[i] as f64).powi(2);
            for &isa in &isas() {
                let mut y = vec![0f32; tokens * rows];
                if matmul_q8(&x, w, &mut y, isa) {
                    let e = (y[i] as f64 - scalar[i] as f64).abs();
                    prop_assert!(
                        e <= 1e-5 * abs + 1e-6,
                        "{t} {isa:?} r{r} t{tk}: {} vs scalar {}",
                        y[i],
                        scalar[i]
                    );
                }
            }
        }
    }
    if den > 1e-12 && tokens * rows >= 8 {
        prop_assert!(
            (num / den).sqrt() < 3e-2,
            "{t}: relative L2 error {}",
            (num / den).sqrt()
        );
    }
    // The public entry point (whatever path it takes) agrees with the f32 path within the same bound.
    let mut y = vec![0f32; tokens * rows];
    matmul(&x, w, &mut y);
    let mut yf = vec![0f32; tokens * rows];
    matmul_f32(&x, w, &mut yf);
    let n: f64 = y
        .iter()
        .zip(&yf)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let d: f64 = yf.iter().map(|b| (*b as f64).powi(2)).sum();
    prop_assert!(
        d < 1e-12 || tokens * rows < 8 || (n / d).sqrt() < 3e-2,
        "{t}: matmul vs matmul_f32 rel L2 {}",
        (n / d).sqrt()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]
    /// Every type, ragged row counts, 1 to 5 tokens, 1 to 6 blocks per row.
    #[test]
    fn fused_kernels_match_references(ti in 0usize..TYPES.len(), tokens in 1usize..6, rows in 1usize..37, blocks in 1usize..7, seed in any::<u64>()) {
        check(TYPES[ti], tokens, rows, blocks, seed)?;
    }
}

#[test]
fn every_type_once() {
    for (i, t) in TYPES.iter().enumerate() {
        check(*t, 3, 13, 3, 1234 + i as u64).unwrap();
    }
}

/// A matrix large enough to be split across threads (several rayon tasks).
#[test]
fn threaded_split_matches_scalar() {
    let mut s = 7;
    for t in [GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
        let (rows, cols) = (3001, 512);
        let data = random_weights(t, rows, cols, &mut s);
        let w = WeightMatrix {
            dtype: t,
            rows,
            cols,
            data: &data,
        };
        let x: Vec<f32> = (0..2 * cols).map(|_| lcg(&mut s)).collect();
        let mut a = vec![0f32; 2 * rows];
        let mut b = vec![0f32; 2 * rows];
        assert!(matmul_q8(&x, w, &mut a, Isa::Scalar));
        matmul(&x, w, &mut b);
        for (i, (p, q)) in a.iter().zip(&b).enumerate() {
            assert!(
                (p - q).abs() <= 1e-4 * (1.0 + p.abs()),
                "{t} {i}: {p} vs {q}"
            );
        }
    }
}

/// Zero activations give exact zeros; unsupported types report false.
#[test]
fn edge_cases() {
    let mut s = 3;
    let data = random_weights(GgmlType::Q4_K, 5, 256, &mut s);
    let w = WeightMatrix {
        dtype: GgmlType::Q4_K,
        rows: 5,
        cols: 256,
        data: &data,
    };
    let mut y = vec![1f32; 5];
    assert!(matmul_q8(&[0.0; 256], w, &mut y, Isa::Scalar));
    assert!(y.iter().all(|v| *v == 0.0));
    let f16: Vec<u8> = vec![0; 2 * 64];
    let w = WeightMatrix {
        dtype: GgmlType::F16,
        rows: 2,
        cols: 32,
        data: &f16,
    };
    assert!(!matmul_q8(&[0.0; 32], w, &mut [0.0; 2], Isa::Scalar));
}
