//! lowbit-formats: the number formats lowbit reads, writes and emulates.
//!
//! Pure Rust, no dependencies beyond `half`. Today it holds the llama.cpp (GGML) tensor types that
//! model files use and their dequantization; element formats, rounding modes and encoders grow here.

pub mod catalog;
pub mod codebook;
pub mod dequant;
pub mod fake;
pub mod ggml;
pub mod lb_nvfp4;
pub mod minifloat;
pub mod pack;
pub mod qtensor;
pub mod quant;
pub mod rounding;
pub mod simd;
pub mod spec;
pub mod stats;

pub use catalog::{catalog, FormatInfo};
pub use dequant::{dequantize, dequantize_row, dequantize_rows, row_bytes};
pub use fake::{fake_quantize, fake_quantize_matrix_rounding, fake_quantized};
pub use ggml::GgmlType;
pub use qtensor::QTensor;
pub use quant::{quantize, quantize_q4_k_fast, quantize_rows};
pub use spec::QuantSpec;

/// Errors of this crate. Callers add the file and tensor name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// The number of elements is not a multiple of the type's block size.
    NotBlockAligned { ty: GgmlType, elements: usize },
    /// The byte slice does not hold exactly the expected number of bytes.
    WrongByteLength {
        ty: GgmlType,
        expected: usize,
        got: usize,
    },
    /// lowbit knows the type id but cannot decode it yet.
    Unsupported(GgmlType),
}

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FormatError::NotBlockAligned { ty, elements } => write!(
                f,
                "{elements} elements is not a multiple of the {} block size {}",
                ty.name(),
                ty.block_size()
            ),
            FormatError::WrongByteLength { ty, expected, got } => write!(
                f,
                "{} data should be {expected} bytes, found {got}",
                ty.name()
            ),
            FormatError::Unsupported(ty) => {
                write!(f, "tensor type {} is not supported yet", ty.name())
            }
        }
    }
}

impl std::error::Error for FormatError {}
