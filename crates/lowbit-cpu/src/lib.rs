//! lowbit-cpu: the CPU kernels the architectures call.
//!
//! Activations are f32 row-major slices (`[tokens, features]`). Weights stay in their stored
//! type ([`WeightMatrix`]) and are dequantized a block of rows at a time right before they are
//! multiplied, so a quantized model never exists as f32 in memory.

pub mod matmul;
pub mod ops;
pub mod attention;
pub mod simd;

pub use matmul::{matmul, matmul_reference, WeightMatrix};
