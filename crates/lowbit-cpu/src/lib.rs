//! lowbit-cpu: the CPU kernels the architectures call.
//!
//! Activations are f32 row-major slices (`[tokens, features]`). Weights stay in their stored
//! type ([`WeightMatrix`]). Few-token products (decode) quantize the activations to 8-bit blocks
//! and run fused integer kernels on the stored weights ([`quant_dot`]); many-token products
//! (prefill) dequantize a block of rows at a time right before `gemm`, so a quantized model never
//! exists as f32 in memory.

pub mod attention;
pub mod matmul;
pub mod ops;
pub mod q8act;
pub mod quant_dot;
pub mod simd;

pub use matmul::{matmul, matmul_f32, matmul_q8, matmul_reference, WeightMatrix};
pub use quant_dot::Isa;
