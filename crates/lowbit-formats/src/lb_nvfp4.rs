//! `LB_NVFP4`: lowbit's in-memory block type for NVFP4 weights (compressed-tensors
//! `nvfp4-pack-quantized`: E2M1 codes, one E4M3 scale per 16 values, one f32 global scale per
//! tensor). ggml has no such type; this one lets `WeightMatrix` and the fused kernels run NVFP4
//! without expanding it to f32. It is lowbit-internal: never read from nor written to GGUF
//! ([`crate::GgmlType::in_gguf`]).
//!
//! A block holds 128 values of a row in 76 bytes (4.75 bits per weight), little-endian:
//!
//! ```text
//! | global f32 (4 B) | 8 E4M3 sub-scales (8 B) | 4 × 16 B of E2M1 nibbles |
//! ```
//!
//! Sub-scale `i` covers values `16i..16i+16`. Nibble chunk `k` covers values `32k..32k+32`:
//! byte `j` holds value `32k + j` in its low nibble and `32k + j + 16` in its high nibble (the
//! order of ggml's 32-value blocks, so the decode kernels share their nibble unpacking).
//! A value is `e2m1(code) · (e4m3(scale) / global)`, both steps rounded to f32 in that order: the
//! order compressed-tensors dequantizes in, so decoding is bit-identical to it. The global scale is
//! repeated in every block so a block is self-contained (128 values: Gemma's 640-wide rows are 5
//! blocks; 256 would not divide them).

use std::sync::OnceLock;

use crate::minifloat::Minifloat;
use crate::FormatError;
use crate::GgmlType;

/// Values per block.
pub const BLOCK: usize = 128;
/// Bytes per block.
pub const BLOCK_BYTES: usize = 76;
/// Values per E4M3 sub-scale.
pub const SUB: usize = 16;

/// The 256 E4M3 (FN) byte values; NaN for 0x7F / 0xFF.
pub fn e4m3_table() -> &'static [f32; 256] {
    static T: OnceLock<[f32; 256]> = OnceLock::new();
    T.get_or_init(|| std::array::from_fn(|b| Minifloat::E4M3FN.decode(b as u32)))
}

/// The 16 E2M1 values by code (sign in bit 3).
pub const E2M1: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// The 8 sub-scales of a block, `e4m3(s) / global` in f32.
#[inline(always)]
pub fn sub_scales(block: &[u8]) -> [f32; 8] {
    let t = e4m3_table();
    let g = f32::from_le_bytes([block[0], block[1], block[2], block[3]]);
    std::array::from_fn(|i| t[block[4 + i] as usize] / g)
}

/// Decode whole blocks (lengths checked by the caller).
pub(crate) fn decode(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src
        .chunks_exact(BLOCK_BYTES)
        .zip(dst.chunks_exact_mut(BLOCK))
    {
        let s = sub_scales(b);
        for k in 0..4 {
            let qs = &b[12 + 16 * k..28 + 16 * k];
            let y = &mut y[32 * k..32 * k + 32];
            for j in 0..16 {
                y[j] = E2M1[(qs[j] & 0x0F) as usize] * s[2 * k];
                y[j + 16] = E2M1[(qs[j] >> 4) as usize] * s[2 * k + 1];
            }
        }
    }
}

/// Repack a compressed-tensors NVFP4 matrix into `LB_NVFP4` rows: `codes` is `rows · cols / 2`
/// bytes (value 2i of a row in the low nibble of byte i), `scales` `rows · cols / 16` E4M3 bytes,
/// `global` the tensor's `weight_global_scale`. `cols` must be a multiple of 128. The values
/// decode bit-identically to the compressed-tensors ones.
pub fn pack(
    codes: &[u8],
    scales: &[u8],
    global: f32,
    rows: usize,
    cols: usize,
) -> Result<Vec<u8>, FormatError> {
    let ty = GgmlType::LB_NVFP4;
    if cols % BLOCK != 0 {
        return Err(FormatError::NotBlockAligned { ty, elements: cols });
    }
    let n = rows
        .checked_mul(cols)
        .ok_or(FormatError::NotBlockAligned { ty, elements: cols })?;
    for (got, expected) in [(codes.len(), n / 2), (scales.len(), n / SUB)] {
        if got != expected {
            return Err(FormatError::WrongByteLength { ty, expected, got });
        }
    }
    let g = global.to_le_bytes();
    let mut out = Vec::with_capacity(n / BLOCK * BLOCK_BYTES);
    for (c, s) in codes
        .chunks_exact(BLOCK / 2)
        .zip(scales.chunks_exact(BLOCK / SUB))
    {
        out.extend_from_slice(&g);
        out.extend_from_slice(s);
        // Value i of the block is nibble i % 2 of byte i / 2 in the source.
        let nib = |i: usize| (c[i / 2] >> (4 * (i % 2))) & 0x0F;
        for k in 0..4 {
            out.extend((0..16).map(|j| nib(32 * k + j) | (nib(32 * k + j + 16) << 4)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_to_lowbit() {
        let t = GgmlType::LB_NVFP4;
        assert!(!t.in_gguf());
        assert_eq!(GgmlType::from_id(t.id()), None);
        assert!((t.bits_per_weight() - 4.75).abs() < 1e-12);
        assert!(GgmlType::MXFP4.in_gguf());
    }

    #[test]
    fn tables_match_minifloat() {
        for (c, v) in E2M1.iter().enumerate() {
            assert_eq!(v.to_bits(), Minifloat::E2M1.decode(c as u32).to_bits());
        }
        assert_eq!(e4m3_table()[0x38], 1.0);
        assert_eq!(e4m3_table()[0x7E], 448.0);
        assert!(e4m3_table()[0xFF].is_nan());
    }

    /// Packed blocks decode to exactly `e2m1(code) · (e4m3(scale) / global)` of the source layout.
    #[test]
    fn pack_then_decode_is_the_compressed_tensors_value() {
        let (rows, cols) = (3, 256);
        let mut s = 0x9E37_79B9u32;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s
        };
        let codes: Vec<u8> = (0..rows * cols / 2).map(|_| next() as u8).collect();
        // Every E4M3 byte but the NaNs.
        let scales: Vec<u8> = (0..rows * cols / 16)
            .map(|_| loop {
                let b = next() as u8;
                if b & 0x7F != 0x7F {
                    break b;
                }
            })
            .collect();
        let global = 1234.567f32;
        let packed = pack(&codes, &scales, global, rows, cols).unwrap();
        assert_eq!(packed.len(), rows * cols / BLOCK * BLOCK_BYTES);
        let mut got = vec![0f32; rows * cols];
        crate::dequantize(GgmlType::LB_NVFP4, &packed, &mut got).unwrap();
        for (i, g) in got.iter().enumerate() {
            let code = (codes[i / 2] >> (4 * (i % 2))) & 0xF;
            let scale = Minifloat::E4M3FN.decode(scales[i / 16] as u32) / global;
            let want = Minifloat::E2M1.decode(code as u32) * scale;
            assert_eq!(g.to_bits(), want.to_bits(), "value {i}");
        }
        assert!(pack(&codes, &scales, global, rows, 128).is_err());
        assert!(pack(&codes[1..], &scales, global, rows, cols).is_err());
        assert!(pack(&codes, &scales, global, rows, 96).is_err());
    }
}
