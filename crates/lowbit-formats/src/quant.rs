//! Quantization (encoding) of f32 data into GGML block types.
//!
//! Two references, per type:
//! - Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, MXFP4, TQ1_0, TQ2_0 (and F32/F16/BF16) follow gguf-py's numpy
//!   `gguf.quants.quantize` operation by operation and are tested byte-for-byte against it.
//!   Where numpy's float -> uint8 cast matters (out-of-range or NaN intermediate values) we mimic
//!   what it does on x86-64: truncate to i32, keep the low byte, NaN/inf give 0.
//! - Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL and IQ4_XS follow llama.cpp's reference quantizers
//!   (`quantize_row_*_ref` in ggml-quants.c, no importance matrix) with the same f32 operation
//!   order and no fused multiply-adds. gguf-py cannot quantize these; they are tested byte for
//!   byte against the reference functions of the libggml-base that PyPI's llama-cpp-python
//!   ships (scripts/gen_quant_fixtures.py), plus round-trip properties. (IQ4_NL differs only
//!   in the codes of all-zero blocks, which llama.cpp leaves uninitialized.)

pub(crate) mod iq4_xs;
pub(crate) mod kquants;
pub(crate) mod legacy;

use crate::simd::dispatch;
use crate::{FormatError, GgmlType};

/// Whether [`quantize`] can encode `ty`.
pub fn is_quantize_supported(ty: GgmlType) -> bool {
    use GgmlType::*;
    matches!(
        ty,
        F32 | F16
            | BF16
            | Q4_0
            | Q4_1
            | Q5_0
            | Q5_1
            | Q8_0
            | Q2_K
            | Q3_K
            | Q4_K
            | Q5_K
            | Q6_K
            | IQ4_NL
            | IQ4_XS
            | MXFP4
            | TQ1_0
            | TQ2_0
    )
}

/// Quantize `src` (a whole number of blocks) into `dst` (exactly `ty.byte_len(src.len())` bytes).
pub fn quantize(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), FormatError> {
    let expected = ty.byte_len(src.len()).ok_or(FormatError::NotBlockAligned {
        ty,
        elements: src.len(),
    })?;
    if dst.len() != expected {
        return Err(FormatError::WrongByteLength {
            ty,
            expected,
            got: dst.len(),
        });
    }
    encode(ty, src, dst)
}

/// Quantize `src.len() / cols` rows of `cols` elements; `dst` holds the rows back to back.
pub fn quantize_rows(
    ty: GgmlType,
    src: &[f32],
    cols: usize,
    dst: &mut [u8],
) -> Result<(), FormatError> {
    let Some(row_len) = crate::dequant::check_rows(ty, cols, src.len(), dst.len())? else {
        return Ok(());
    };
    // Rows are block-aligned, so quantizing row by row equals quantizing the whole buffer;
    // the loop keeps the per-call working set small.
    for (s, d) in src.chunks_exact(cols).zip(dst.chunks_exact_mut(row_len)) {
        encode(ty, s, d)?;
    }
    Ok(())
}

/// Q4_K encoded with plain min/max sub-block scales instead of llama.cpp's scale search: about
/// 10x faster, valid Q4_K blocks that any Q4_K decoder reads, somewhat larger error. NOT
/// llama.cpp's encoder (that is [`quantize`] with `GgmlType::Q4_K`, bit-exact with
/// `quantize_row_q4_K_ref`). `src` is a whole number of 256-value blocks, `dst` exactly
/// `GgmlType::Q4_K.byte_len(src.len())` bytes. Every SIMD level gives the same bytes.
pub fn quantize_q4_k_fast(src: &[f32], dst: &mut [u8]) -> Result<(), FormatError> {
    let ty = GgmlType::Q4_K;
    let expected = ty.byte_len(src.len()).ok_or(FormatError::NotBlockAligned {
        ty,
        elements: src.len(),
    })?;
    if dst.len() != expected {
        return Err(FormatError::WrongByteLength {
            ty,
            expected,
            got: dst.len(),
        });
    }
    dispatch!(q4_k_fast(src, dst), scalar: kquants::q4_k_fast(src, dst));
    Ok(())
}

/// llama.cpp's IQ4_NL table (`kvalues_iq4nl`).
pub(crate) const KVALUES_IQ4NL_PUB: [i8; 16] = legacy::KVALUES_IQ4NL;

fn encode(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), FormatError> {
    use GgmlType::*;
    match ty {
        F32 => {
            for (d, s) in dst.chunks_exact_mut(4).zip(src) {
                d.copy_from_slice(&s.to_le_bytes());
            }
        }
        F16 => {
            for (d, s) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&half::f16::from_f32(*s).to_le_bytes());
            }
        }
        BF16 => {
            for (d, s) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&f32_to_bf16_ggml(*s).to_le_bytes());
            }
        }
        Q4_0 => dispatch!(q4_0(src, dst), scalar: legacy::q4_0(src, dst)),
        Q4_1 => legacy::q4_1(src, dst),
        Q5_0 => legacy::q5_0(src, dst),
        Q5_1 => legacy::q5_1(src, dst),
        Q8_0 => dispatch!(q8_0(src, dst), scalar: legacy::q8_0(src, dst)),
        MXFP4 => dispatch!(mxfp4(src, dst), scalar: legacy::mxfp4(src, dst)),
        IQ4_NL => legacy::iq4_nl(src, dst),
        IQ4_XS => iq4_xs::iq4_xs(src, dst),
        TQ1_0 => legacy::tq1_0(src, dst),
        TQ2_0 => legacy::tq2_0(src, dst),
        Q2_K => kquants::q2_k(src, dst),
        Q3_K => kquants::q3_k(src, dst),
        Q4_K => dispatch!(q4_k(src, dst), scalar: kquants::q4_k(src, dst)),
        Q5_K => kquants::q5_k(src, dst),
        Q6_K => kquants::q6_k(src, dst),
        other => return Err(FormatError::Unsupported(other)),
    }
    Ok(())
}

/// f32 -> bf16 as ggml (and gguf-py) do it: NaN made quiet, otherwise round to nearest even.
pub fn f32_to_bf16_ggml(x: f32) -> u16 {
    let n = x.to_bits();
    if n & 0x7fff_ffff > 0x7f80_0000 {
        return ((n >> 16) | 64) as u16;
    }
    ((n as u64 + (0x7fff + ((n >> 16) & 1)) as u64) >> 16) as u16
}

/// An f32 stored as little-endian f16 (round to nearest even, overflow to inf).
#[inline(always)]
pub(crate) fn put_f16(dst: &mut [u8], v: f32) {
    dst[..2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
}

/// The f16 value an f32 becomes when stored (what the decoder will see).
#[inline(always)]
pub(crate) fn f16_round(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}
