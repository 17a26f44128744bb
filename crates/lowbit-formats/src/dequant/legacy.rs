//! The 32-element block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, MXFP4.
//!
//! In all 4-bit layouts byte `l` of `qs` holds element `l` in its low nibble and element `l + 16`
//! in its high nibble.

use super::f16_le;

const QK: usize = 32;

/// Iterate over (block bytes, 32 outputs) pairs as fixed-size arrays (no bounds checks inside).
#[inline(always)]
fn blocks<'a, const N: usize>(
    src: &'a [u8],
    dst: &'a mut [f32],
) -> impl Iterator<Item = (&'a [u8; N], &'a mut [f32; QK])> {
    src.chunks_exact(N)
        .zip(dst.chunks_exact_mut(QK))
        .map(|(b, y)| {
            let b: &[u8; N] = b.try_into().unwrap();
            let y: &mut [f32; QK] = y.try_into().unwrap();
            (b, y)
        })
}

/// The 16 quantized nibbles of a block as a fixed array.
#[inline(always)]
fn qs16<const N: usize>(b: &[u8; N]) -> &[u8; 16] {
    b[N - 16..].try_into().unwrap()
}

/// Q4_0 (18 bytes): f16 d, 16 bytes of nibbles. y = d * (q - 8).
pub(super) fn q4_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<18>(src, dst) {
        let d = f16_le(b[0], b[1]);
        let qs = qs16(b);
        for l in 0..16 {
            y[l] = d * ((qs[l] & 0x0F) as i32 - 8) as f32;
            y[l + 16] = d * ((qs[l] >> 4) as i32 - 8) as f32;
        }
    }
}

/// Q4_1 (20 bytes): f16 d, f16 m, 16 bytes of nibbles. y = d * q + m.
pub(super) fn q4_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<20>(src, dst) {
        let d = f16_le(b[0], b[1]);
        let m = f16_le(b[2], b[3]);
        let qs = qs16(b);
        for l in 0..16 {
            y[l] = d * (qs[l] & 0x0F) as f32 + m;
            y[l + 16] = d * (qs[l] >> 4) as f32 + m;
        }
    }
}

/// Q5_0 (22 bytes): f16 d, u32 qh (bit i = 5th bit of element i), 16 bytes of nibbles.
/// y = d * (q - 16).
pub(super) fn q5_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<22>(src, dst) {
        let d = f16_le(b[0], b[1]);
        let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
        let qs = qs16(b);
        for l in 0..16 {
            let h0 = ((qh >> l) & 1) << 4;
            let h1 = ((qh >> (l + 16)) & 1) << 4;
            y[l] = d * (((qs[l] & 0x0F) as u32 | h0) as i32 - 16) as f32;
            y[l + 16] = d * (((qs[l] >> 4) as u32 | h1) as i32 - 16) as f32;
        }
    }
}

/// Q5_1 (24 bytes): f16 d, f16 m, u32 qh, 16 bytes of nibbles. y = d * q + m.
pub(super) fn q5_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<24>(src, dst) {
        let d = f16_le(b[0], b[1]);
        let m = f16_le(b[2], b[3]);
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let qs = qs16(b);
        for l in 0..16 {
            let h0 = ((qh >> l) & 1) << 4;
            let h1 = ((qh >> (l + 16)) & 1) << 4;
            y[l] = d * ((qs[l] & 0x0F) as u32 | h0) as f32 + m;
            y[l + 16] = d * ((qs[l] >> 4) as u32 | h1) as f32 + m;
        }
    }
}

/// Q8_0 (34 bytes): f16 d, 32 signed bytes. y = q * d.
pub(super) fn q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<34>(src, dst) {
        let d = f16_le(b[0], b[1]);
        let qs: &[u8; 32] = b[2..].try_into().unwrap();
        for l in 0..QK {
            y[l] = (qs[l] as i8) as f32 * d;
        }
    }
}

/// IQ4_NL's non-linear 4-bit codebook (llama.cpp `kvalues_iq4nl`).
pub(super) const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// IQ4_NL (18 bytes): f16 d, 16 bytes of nibbles indexing the codebook. y = d * kvalues[q].
pub(super) fn iq4_nl(src: &[u8], dst: &mut [f32]) {
    let table = KVALUES_IQ4NL.map(|v| v as f32);
    for (b, y) in blocks::<18>(src, dst) {
        let d = f16_le(b[0], b[1]);
        let qs = qs16(b);
        for l in 0..16 {
            y[l] = d * table[(qs[l] & 0x0F) as usize];
            y[l + 16] = d * table[(qs[l] >> 4) as usize];
        }
    }
}

/// E2M1 values times two (llama.cpp `kvalues_mxfp4`); the block scale is halved to match.
const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Half of the E8M0 scale 2^(e - 127) as an f32 (llama.cpp `ggml_e8m0_to_fp32_half`):
/// 2^(e - 128), which is subnormal for e < 2.
#[inline(always)]
fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        ((e - 1) as u32) << 23
    };
    f32::from_bits(bits)
}

/// MXFP4 (17 bytes): E8M0 exponent byte, 16 bytes of E2M1 nibbles. y = d/2 * (2 * e2m1).
pub(super) fn mxfp4(src: &[u8], dst: &mut [f32]) {
    let table = KVALUES_MXFP4.map(|v| v as f32);
    for (b, y) in blocks::<17>(src, dst) {
        let d = e8m0_to_f32_half(b[0]);
        let qs = qs16(b);
        for l in 0..16 {
            y[l] = d * table[(qs[l] & 0x0F) as usize];
            y[l + 16] = d * table[(qs[l] >> 4) as usize];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e8m0_half() {
        assert_eq!(e8m0_to_f32_half(127), 0.5);
        assert_eq!(e8m0_to_f32_half(128), 1.0);
        assert_eq!(e8m0_to_f32_half(1), 2f32.powi(-127));
        assert_eq!(e8m0_to_f32_half(0), 2f32.powi(-128));
        assert_eq!(e8m0_to_f32_half(255), 2f32.powi(127));
    }
}
