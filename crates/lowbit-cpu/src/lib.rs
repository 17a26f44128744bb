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
