//! lowbit-cpu: the CPU kernels the architectures call.
//!
//! Activations are f32 row-major slices (`[tokens, features]`). Weights stay in their stored
//! type ([`WeightMatrix`]). Few-token products (decode) quantize the activations to 8-bit blocks
//! and run fused integer kernels on the stored weights ([`quant_dot`], [`int4`] for lowbit's own
//! INT4 groups); many-token products (prefill) pack 16 rows at a time into 16-bit integers right
//! before a VNNI GEMM ([`gemm_i16`]; 8-bit on request, [`gemm_q8`]) or, without AVX-512 VNNI,
//! dequantize a block of rows before `gemm`. A quantized model never exists as f32 in memory.

pub mod attention;
pub mod gemm_i16;
pub mod gemm_q8;
pub mod hadamard;
pub mod half_gemv;
pub mod int4;
pub mod matmul;
pub mod nvfp4;
pub mod ops;
pub mod q8act;
pub mod quant_dot;
pub mod simd;

pub use matmul::{
    matmul, matmul_f32, matmul_many, matmul_q8, matmul_reference, set_prefill_int8, WeightMatrix,
};
pub use quant_dot::Isa;

/// Deterministic test data shared by the kernels' tests.
#[cfg(test)]
pub(crate) mod test_util {
    use lowbit_formats::GgmlType;

    /// Uniform in [-1, 1) from a 64-bit LCG (Knuth's constants).
    pub fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// `rows` rows of `cols` random values encoded as `t`, row r scaled by 0.1 + 0.05 r so rows
    /// differ in magnitude.
    pub fn quantized_rows(t: GgmlType, rows: usize, cols: usize, seed: &mut u64) -> Vec<u8> {
        let rb = t.byte_len(cols).unwrap();
        let mut data = vec![0u8; rows * rb];
        for r in 0..rows {
            let v: Vec<f32> = (0..cols)
                .map(|_| lcg(seed) * (0.1 + r as f32 * 0.05))
                .collect();
            lowbit_formats::quantize(t, &v, &mut data[r * rb..(r + 1) * rb]).unwrap();
        }
        data
    }
}
