//! Dequantization of GGML tensor types to f32.
//!
//! Every type has a plain per-block decoder written from the block layouts in llama.cpp's
//! ggml-common.h. The float operations are done in the same order as gguf-py's numpy
//! `gguf.quants.dequantize` (and llama.cpp's `dequantize_row_*`), so the output is bit-identical:
//! e.g. for Q4_K the sub-block scale `d * sc` and offset `dmin * m` are rounded to f32 first and
//! then each value is `d1 * q - m1` (two roundings, never a fused multiply-add).
//!
//! The decoders are straightforward loops over fixed-size arrays so the compiler vectorizes them;
//! they are also the scalar reference that tests compare against gguf-py fixtures.

mod kquants;
mod legacy;
mod ternary;

use crate::{FormatError, GgmlType};

/// Dequantize `dst.len()` values stored as `ty` in `src` (exactly `ty.byte_len(dst.len())` bytes).
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), FormatError> {
    check_lengths(ty, src, dst.len())?;
    decode(ty, src, dst)
}

/// Dequantize one row (or any run of whole blocks): `dst.len()` values from `src`.
///
/// Meant for the hot path, one call per row; the length check is O(1) and is kept so that a
/// caller's mistake is an error, never a panic or a silently half-written row.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), FormatError> {
    check_lengths(ty, src, dst.len())?;
    decode(ty, src, dst)
}

/// Dequantize `dst.len() / cols` consecutive rows of `cols` elements each.
///
/// GGML rows are stored back to back without padding, so `src` must be exactly
/// `row_bytes(ty, cols) * rows` bytes. `cols` must be a multiple of the block size and
/// `dst.len()` a multiple of `cols`.
pub fn dequantize_rows(
    ty: GgmlType,
    src: &[u8],
    cols: usize,
    dst: &mut [f32],
) -> Result<(), FormatError> {
    let Some(row_len) = check_rows(ty, cols, dst.len(), src.len())? else {
        return Ok(());
    };
    for (s, d) in src.chunks_exact(row_len).zip(dst.chunks_exact_mut(cols)) {
        decode(ty, s, d)?;
    }
    Ok(())
}

/// Bytes of one row of `cols` elements, or None if `cols` is not a multiple of the block size.
pub fn row_bytes(ty: GgmlType, cols: usize) -> Option<usize> {
    ty.byte_len(cols)
}

/// Whether [`dequantize`] can decode `ty`.
pub fn is_supported(ty: GgmlType) -> bool {
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
            | Q8_K
            | IQ4_NL
            | IQ4_XS
            | MXFP4
            | LB_NVFP4
            | TQ1_0
            | TQ2_0
    )
}

fn check_lengths(ty: GgmlType, src: &[u8], elements: usize) -> Result<(), FormatError> {
    let expected = ty
        .byte_len(elements)
        .ok_or(FormatError::NotBlockAligned { ty, elements })?;
    if src.len() != expected {
        return Err(FormatError::WrongByteLength {
            ty,
            expected,
            got: src.len(),
        });
    }
    Ok(())
}

/// Decode whole blocks; lengths are already checked (the loops below only ever visit the blocks
/// present in both slices, so they cannot index out of bounds either way).
fn decode(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), FormatError> {
    use GgmlType::*;
    match ty {
        F32 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
            }
        }
        F16 => f16_row(src, dst),
        BF16 => {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f32::from_bits((u16::from_le_bytes([s[0], s[1]]) as u32) << 16);
            }
        }
        Q4_0 => legacy::q4_0(src, dst),
        Q4_1 => legacy::q4_1(src, dst),
        Q5_0 => legacy::q5_0(src, dst),
        Q5_1 => legacy::q5_1(src, dst),
        Q8_0 => legacy::q8_0(src, dst),
        IQ4_NL => legacy::iq4_nl(src, dst),
        IQ4_XS => kquants::iq4_xs(src, dst),
        MXFP4 => legacy::mxfp4(src, dst),
        LB_NVFP4 => crate::lb_nvfp4::decode(src, dst),
        Q2_K => kquants::q2_k(src, dst),
        Q3_K => kquants::q3_k(src, dst),
        Q4_K => kquants::q4_k(src, dst),
        Q5_K => kquants::q5_k(src, dst),
        Q6_K => kquants::q6_k(src, dst),
        Q8_K => kquants::q8_k(src, dst),
        TQ1_0 => ternary::tq1_0(src, dst),
        TQ2_0 => ternary::tq2_0(src, dst),
        other => return Err(FormatError::Unsupported(other)),
    }
    Ok(())
}

/// F16 rows: gather into an aligned buffer so `half` can use its F16C slice conversion.
fn f16_row(src: &[u8], dst: &mut [f32]) {
    use half::slice::HalfFloatSliceExt;
    const CHUNK: usize = 64;
    let mut buf = [half::f16::ZERO; CHUNK];
    for (s, d) in src.chunks(2 * CHUNK).zip(dst.chunks_mut(CHUNK)) {
        let n = d.len().min(s.len() / 2);
        for (h, b) in buf.iter_mut().zip(s.chunks_exact(2)) {
            *h = half::f16::from_le_bytes([b[0], b[1]]);
        }
        buf[..n].convert_to_f32_slice(&mut d[..n]);
    }
}

/// An f16 stored little-endian, as f32 (exact).
#[inline(always)]
fn f16_le(b0: u8, b1: u8) -> f32 {
    half::f16::from_le_bytes([b0, b1]).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_checked() {
        let mut out = [0f32; 32];
        assert_eq!(
            dequantize(GgmlType::Q4_0, &[0u8; 17], &mut out),
            Err(FormatError::WrongByteLength {
                ty: GgmlType::Q4_0,
                expected: 18,
                got: 17
            })
        );
        assert_eq!(
            dequantize_row(GgmlType::Q4_K, &[0u8; 144], &mut out),
            Err(FormatError::NotBlockAligned {
                ty: GgmlType::Q4_K,
                elements: 32
            })
        );
        assert_eq!(
            dequantize(GgmlType::IQ2_XXS, &[0u8; 66], &mut [0f32; 256]),
            Err(FormatError::Unsupported(GgmlType::IQ2_XXS))
        );
    }

    #[test]
    fn rows_helper() {
        assert_eq!(row_bytes(GgmlType::Q4_K, 512), Some(288));
        assert_eq!(row_bytes(GgmlType::Q4_K, 100), None);
        assert_eq!(row_bytes(GgmlType::F16, 3), Some(6));

        // Two rows of 64 Q8_0 values: scale 1.0 (f16 0x3C00), values 0..32 / -32..0.
        let mut src = Vec::new();
        for block in 0..4 {
            src.extend_from_slice(&[0x00, 0x3C]);
            for i in 0..32i32 {
                src.push(((i - if block % 2 == 1 { 32 } else { 0 }) as i8) as u8);
            }
        }
        let mut out = vec![0f32; 128];
        dequantize_rows(GgmlType::Q8_0, &src, 64, &mut out).unwrap();
        assert_eq!(out[1], 1.0);
        assert_eq!(out[32], -32.0);
        assert_eq!(out[64 + 31], 31.0);

        assert!(dequantize_rows(GgmlType::Q8_0, &src, 48, &mut out).is_err());
        assert!(dequantize_rows(GgmlType::Q8_0, &src, 64, &mut out[..96]).is_err());
        assert!(dequantize_rows(GgmlType::Q8_0, &src[1..], 64, &mut out).is_err());
        assert!(dequantize_rows(GgmlType::Q8_0, &[], 0, &mut []).is_ok());
    }

    #[test]
    fn f16_rows_of_odd_length() {
        let vals: Vec<f32> = (0..131).map(|i| i as f32 * 0.5 - 20.0).collect();
        let src: Vec<u8> = vals
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        let mut out = vec![f32::NAN; vals.len()];
        dequantize(GgmlType::F16, &src, &mut out).unwrap();
        assert_eq!(out, vals);
    }
}

/// Shared validation of a row-wise conversion between `values` f32 values and `bytes` stored
/// bytes with rows of `cols` values: returns the bytes per row, or None for an empty tensor.
pub(crate) fn check_rows(
    ty: GgmlType,
    cols: usize,
    values: usize,
    bytes: usize,
) -> Result<Option<usize>, FormatError> {
    let row_len = row_bytes(ty, cols).ok_or(FormatError::NotBlockAligned { ty, elements: cols })?;
    if cols == 0 {
        // Zero-width rows: only an empty tensor makes sense.
        if values != 0 || bytes != 0 {
            return Err(FormatError::WrongByteLength {
                ty,
                expected: 0,
                got: bytes,
            });
        }
        return Ok(None);
    }
    if values % cols != 0 {
        return Err(FormatError::NotBlockAligned {
            ty,
            elements: values,
        });
    }
    let expected = row_len
        .checked_mul(values / cols)
        .ok_or(FormatError::NotBlockAligned {
            ty,
            elements: values,
        })?;
    if bytes != expected {
        return Err(FormatError::WrongByteLength {
            ty,
            expected,
            got: bytes,
        });
    }
    Ok(Some(row_len))
}
