//! lowbit's NVFP4 blocks (`GgmlType::LB_NVFP4`) through `WeightMatrix`: the fused decode kernels
//! (every instruction set this CPU has) against their scalar integer reference, and decode and
//! prefill against the f64 reference of the dequantized weights, on ragged shapes. The blocks are
//! built from random compressed-tensors NVFP4 data, which also checks that they decode exactly as
//! `lowbit_cpu::nvfp4` (the compressed-tensors layout read in place).
//!
//! Bounds as tests/quant_dot.rs: SIMD vs scalar integer reference ≤ 1e-5 · Σ|x·w| per output
//! (same integer sums, float additions reordered); fused (8-bit activations) vs f64 reference
//! ≤ Σ_blocks d/2 · Σ|w| + 1e-5 · Σ|x·w| per output; prefill (16-bit activations, weights
//! re-quantized to 12 bits per 32) ≤ 2e-3 relative L2 over all outputs.

use lowbit_cpu::gemm_i16::matmul_i16;
use lowbit_cpu::nvfp4::{matmul_nvfp4, Nvfp4Matrix};
use lowbit_cpu::q8act::{quantize_q8, Q8Block};
use lowbit_cpu::quant_dot::{row_dot_scalar, row_dot_with};
use lowbit_cpu::{matmul, matmul_f32, matmul_q8, matmul_reference, Isa, WeightMatrix};
use lowbit_formats::{dequantize_row, GgmlType};
use proptest::prelude::*;

const T: GgmlType = GgmlType::LB_NVFP4;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f32 {
        (self.next() % 2001) as f32 / 1000.0 - 1.0
    }
}

/// Compressed-tensors NVFP4 data: random codes, positive E4M3 scales of a realistic range
/// (2^-4 .. 448, as a quantizer with a tensor-wide global scale writes), a global scale.
fn random_nvfp4(rows: usize, cols: usize, rng: &mut Rng) -> (Vec<u8>, Vec<u8>, f32) {
    let codes = (0..rows * cols / 2).map(|_| rng.next() as u8).collect();
    let scales = (0..rows * cols / 16)
        .map(|_| 0x18 + (rng.next() % (0x7F - 0x18)) as u8)
        .collect();
    let global = 448.0 * 6.0 / (0.5 + rng.unit().abs());
    (codes, scales, global)
}

fn isas() -> Vec<Isa> {
    match Isa::detect() {
        Isa::Avx512Vnni => vec![Isa::Avx512Vnni, Isa::Avx2],
        Isa::Avx2 => vec![Isa::Avx2],
        Isa::Scalar => vec![],
    }
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let n: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let d: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    if d < 1e-30 {
        n.sqrt()
    } else {
        (n / d).sqrt()
    }
}

fn check(tokens: usize, rows: usize, blocks: usize, seed: u64) -> Result<(), TestCaseError> {
    let mut rng = Rng(seed | 1);
    let cols = blocks * 128;
    let (codes, scales, global) = random_nvfp4(rows, cols, &mut rng);
    let ct = Nvfp4Matrix {
        rows,
        cols,
        codes: &codes,
        scales: &scales,
        global_scale: global,
    };
    let data = ct.to_blocks().unwrap();
    let w = WeightMatrix {
        dtype: T,
        rows,
        cols,
        data: &data,
    };
    w.validate().unwrap();
    let rb = w.row_bytes().unwrap();

    // Same values as the compressed-tensors layout, bit for bit.
    let mut wf = vec![0f32; rows * cols];
    let mut ctrow = vec![0f32; cols];
    for r in 0..rows {
        let row = &mut wf[r * cols..(r + 1) * cols];
        dequantize_row(T, &data[r * rb..(r + 1) * rb], row).unwrap();
        ct.dequantize_row(r, &mut ctrow);
        for (a, b) in row.iter().zip(&ctrow) {
            prop_assert_eq!(a.to_bits(), b.to_bits());
        }
    }

    // Activations with outliers in some blocks, as real hidden states have.
    let x: Vec<f32> = (0..tokens * cols)
        .enumerate()
        .map(|(i, _)| rng.unit() * if i % 37 == 0 { 8.0 } else { 1.0 })
        .collect();
    let reference = matmul_reference(&x, w);

    // Decode kernels, row by row: SIMD vs scalar integer reference, scalar vs f64 reference.
    let mut act = vec![Q8Block::default(); cols / 32];
    for tk in 0..tokens {
        let xt = &x[tk * cols..(tk + 1) * cols];
        quantize_q8(xt, &mut act);
        for r in 0..rows {
            let wr = &wf[r * cols..(r + 1) * cols];
            let row = &data[r * rb..(r + 1) * rb];
            let abs: f64 = xt.iter().zip(wr).map(|(a, b)| (a * b).abs() as f64).sum();
            let scalar = row_dot_scalar(T, row, &act).unwrap();
            let mut bound = 1e-5 * abs;
            for (xb, wb) in xt.chunks(32).zip(wr.chunks(32)) {
                let d = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64 / 127.0;
                bound += d / 2.0 * wb.iter().map(|v| v.abs() as f64).sum::<f64>() * 1.0001;
            }
            let want = reference[tk * rows + r] as f64;
            prop_assert!(
                (scalar as f64 - want).abs() <= bound + 1e-6,
                "r{} t{}: {} vs {} (bound {})",
                r,
                tk,
                scalar,
                want,
                bound
            );
            for &isa in &isas() {
                let v = row_dot_with(isa, T, row, &act).unwrap();
                prop_assert!(
                    (v - scalar).abs() as f64 <= 1e-5 * abs + 1e-6,
                    "{:?} r{} t{}: {} vs scalar {}",
                    isa,
                    r,
                    tk,
                    v,
                    scalar
                );
            }
        }
    }

    // Whole products: the quantized-activation path with each ISA equals its scalar reference
    // up to float order; the dispatched `matmul` (decode ≤ 4 tokens, else the 16-bit prefill
    // GEMM) and the f32 path stay near the f64 reference.
    let mut scalar = vec![0f32; tokens * rows];
    prop_assert!(matmul_q8(&x, w, &mut scalar, Isa::Scalar));
    for &isa in &isas() {
        let mut y = vec![0f32; tokens * rows];
        prop_assert!(matmul_q8(&x, w, &mut y, isa));
        prop_assert!(rel_l2(&y, &scalar) < 1e-5, "{:?}", isa);
    }
    let mut yf = vec![0f32; tokens * rows];
    matmul_f32(&x, w, &mut yf);
    prop_assert!(rel_l2(&yf, &reference) < 1e-5);
    let mut y = vec![0f32; tokens * rows];
    matmul(&x, w, &mut y);
    let bound = if tokens <= 4 { 3e-2 } else { 2e-3 };
    prop_assert!(
        tokens * rows < 8 || rel_l2(&y, &reference) < bound,
        "matmul vs reference: rel L2 {}",
        rel_l2(&y, &reference)
    );
    // The 16-bit prefill GEMM: SIMD against its scalar reference.
    let mut p_scalar = vec![0f32; tokens * rows];
    prop_assert!(matmul_i16(&x, w, &mut p_scalar, Isa::Scalar));
    prop_assert!(
        tokens * rows < 8 || rel_l2(&p_scalar, &reference) < 2e-3,
        "i16 scalar vs reference: {}",
        rel_l2(&p_scalar, &reference)
    );
    let mut p = vec![0f32; tokens * rows];
    if matmul_i16(&x, w, &mut p, Isa::Avx512Vnni) {
        prop_assert!(rel_l2(&p, &p_scalar) < 1e-5);
    }
    // And the f32-activation NVFP4 kernel on the compressed-tensors layout.
    let mut yc = vec![0f32; tokens * rows];
    matmul_nvfp4(&x, ct, &mut yc);
    prop_assert!(rel_l2(&yc, &reference) < 1e-5);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// Ragged row counts, 1 to 9 tokens (decode and prefill), 1 to 5 blocks of 128 per row.
    #[test]
    fn lb_nvfp4_matches_references(tokens in 1usize..10, rows in 1usize..40, blocks in 1usize..6, seed in any::<u64>()) {
        check(tokens, rows, blocks, seed)?;
    }
}

#[test]
fn fixed_shapes() {
    check(1, 640, 5, 11).unwrap();
    check(3, 13, 2, 12).unwrap();
    check(17, 33, 3, 13).unwrap();
}

/// Subnormal and extreme E4M3 scales (and a negative one) decode exactly in the SIMD path too.
#[test]
fn extreme_scales() {
    let (rows, cols) = (4, 256);
    let mut rng = Rng(99);
    let codes: Vec<u8> = (0..rows * cols / 2).map(|_| rng.next() as u8).collect();
    let pick = [0x00u8, 0x01, 0x07, 0x08, 0x7E, 0xFE, 0x81, 0x38];
    let scales: Vec<u8> = (0..rows * cols / 16)
        .map(|i| pick[i % pick.len()])
        .collect();
    let ct = Nvfp4Matrix {
        rows,
        cols,
        codes: &codes,
        scales: &scales,
        global_scale: 3.0,
    };
    let data = ct.to_blocks().unwrap();
    let w = WeightMatrix {
        dtype: T,
        rows,
        cols,
        data: &data,
    };
    let x: Vec<f32> = (0..cols).map(|_| rng.unit()).collect();
    let mut act = vec![Q8Block::default(); cols / 32];
    quantize_q8(&x, &mut act);
    let rb = w.row_bytes().unwrap();
    for r in 0..rows {
        let row = &data[r * rb..(r + 1) * rb];
        let s = row_dot_scalar(T, row, &act).unwrap();
        for isa in isas() {
            let v = row_dot_with(isa, T, row, &act).unwrap();
            assert!(
                (v - s).abs() <= 1e-5 * s.abs() + 1e-6,
                "{isa:?}: {v} vs {s}"
            );
        }
    }
}
