//! Ternary types (values -1, 0, +1 times a block scale): TQ1_0 and TQ2_0.

use super::f16_le;
use crate::ggml::QK_K;

/// Iterate over (block bytes, 256 outputs) pairs as fixed-size arrays.
#[inline(always)]
fn blocks<'a, const N: usize>(
    src: &'a [u8],
    dst: &'a mut [f32],
) -> impl Iterator<Item = (&'a [u8; N], &'a mut [f32; QK_K])> {
    src.chunks_exact(N)
        .zip(dst.chunks_exact_mut(QK_K))
        .map(|(b, y)| {
            let b: &[u8; N] = b.try_into().unwrap();
            let y: &mut [f32; QK_K] = y.try_into().unwrap();
            (b, y)
        })
}

/// One base-3 digit of a TQ1_0 byte. The byte stores a 5-trit number `v` as
/// `ceil(v * 256 / 243)`; multiplying by 3^k (mod 256) shifts digit k to the top, and
/// `(x * 3) >> 8` reads it. Returns the digit minus one.
#[inline(always)]
fn trit(byte: u8, pow3: u8) -> i32 {
    let x = byte.wrapping_mul(pow3) as u32;
    ((x * 3) >> 8) as i32 - 1
}

const POW3: [u8; 5] = [1, 3, 9, 27, 81];

/// TQ1_0 (54 bytes): qs[48] (5 trits per byte), qh[4] (4 trits per byte), f16 d.
/// Elements 0..160: digit `k` of `qs[l]` (l < 32) is element `32 k + l`; elements 160..240: digit
/// `k` of `qs[32 + l]` (l < 16) is `160 + 16 k + l`; elements 240..256: digit `k` of `qh[l]`
/// is `240 + 4 k + l`. y = d * (digit - 1).
pub(super) fn tq1_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<54>(src, dst) {
        let qs0: &[u8; 32] = b[0..32].try_into().unwrap();
        let qs1: &[u8; 16] = b[32..48].try_into().unwrap();
        let qh: &[u8; 4] = b[48..52].try_into().unwrap();
        let d = f16_le(b[52], b[53]);
        for (k, &p) in POW3.iter().enumerate() {
            let o: &mut [f32; 32] = (&mut y[32 * k..32 * k + 32]).try_into().unwrap();
            for l in 0..32 {
                o[l] = d * trit(qs0[l], p) as f32;
            }
        }
        for (k, &p) in POW3.iter().enumerate() {
            let o: &mut [f32; 16] = (&mut y[160 + 16 * k..176 + 16 * k]).try_into().unwrap();
            for l in 0..16 {
                o[l] = d * trit(qs1[l], p) as f32;
            }
        }
        for (k, &p) in POW3[..4].iter().enumerate() {
            for l in 0..4 {
                y[240 + 4 * k + l] = d * trit(qh[l], p) as f32;
            }
        }
    }
}

/// TQ2_0 (66 bytes): qs[64] (2-bit codes 0..3 meaning -1..2), f16 d. Element `128 n + 32 j + l`
/// is bits `2j..2j+2` of `qs[32 n + l]`. y = d * (code - 1).
pub(super) fn tq2_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<66>(src, dst) {
        let qs: &[u8; 64] = b[0..64].try_into().unwrap();
        let d = f16_le(b[64], b[65]);
        for n in 0..2 {
            let q: &[u8; 32] = qs[32 * n..32 * n + 32].try_into().unwrap();
            for j in 0..4 {
                let start = 128 * n + 32 * j;
                let o: &mut [f32; 32] = (&mut y[start..start + 32]).try_into().unwrap();
                for l in 0..32 {
                    o[l] = d * (((q[l] >> (2 * j)) & 3) as i32 - 1) as f32;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trits_roundtrip() {
        // Encode every 5-trit number the way llama.cpp's quantizer does and read it back.
        for v in 0u32..243 {
            let byte = (v * 256).div_ceil(243) as u8;
            let mut digits = [0i32; 5];
            let mut rest = v;
            for k in (0..5).rev() {
                digits[k] = (rest % 3) as i32;
                rest /= 3;
            }
            for k in 0..5 {
                assert_eq!(trit(byte, POW3[k]), digits[k] - 1, "v={v} k={k}");
            }
        }
    }
}
