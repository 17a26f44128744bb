//! The k-quants: 256-element super-blocks made of 16- or 32-element sub-blocks with their own
//! scales. Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K.
//!
//! Sub-block scales are always rounded to f32 first (`dl = d * sc`), then applied per value,
//! exactly as llama.cpp and gguf-py do.

use super::f16_le;
use crate::ggml::QK_K;

/// Iterate over (super-block bytes, 256 outputs) pairs as fixed-size arrays.
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

/// A fixed-size sub-array `b[START..START + LEN]`.
#[inline(always)]
fn field<const START: usize, const LEN: usize, const N: usize>(b: &[u8; N]) -> &[u8; LEN] {
    b[START..START + LEN].try_into().unwrap()
}

/// A fixed-size mutable sub-array of the output.
#[inline(always)]
fn out<const LEN: usize>(y: &mut [f32; QK_K], start: usize) -> &mut [f32; LEN] {
    (&mut y[start..start + LEN]).try_into().unwrap()
}

/// Q2_K (84 bytes): scales[16] (low nibble scale, high nibble min), qs[64] (2-bit), f16 d,
/// f16 dmin. Element `128 n + 32 j + l` is bits `2j..2j+2` of `qs[32 n + l]`; sub-block = /16.
/// y = (d * sc) * q - (dmin * m).
pub(super) fn q2_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<84>(src, dst) {
        let scales: &[u8; 16] = field::<0, 16, 84>(b);
        let qs: &[u8; 64] = field::<16, 64, 84>(b);
        let d = f16_le(b[80], b[81]);
        let dmin = f16_le(b[82], b[83]);
        for n in 0..2 {
            for j in 0..4 {
                for half in 0..2 {
                    let sub = n * 8 + j * 2 + half;
                    let sc = scales[sub];
                    let dl = d * (sc & 0x0F) as f32;
                    let ml = dmin * (sc >> 4) as f32;
                    let q: &[u8; 16] = qs[n * 32 + half * 16..][..16].try_into().unwrap();
                    let o = out::<16>(y, sub * 16);
                    for l in 0..16 {
                        o[l] = dl * ((q[l] >> (2 * j)) & 3) as f32 - ml;
                    }
                }
            }
        }
    }
}

/// The 16 signed 6-bit scales of Q3_K: the low 4 bits are the nibbles of bytes 0..8 (low nibbles
/// first), the high 2 bits are the bit pairs of bytes 8..12.
#[inline(always)]
fn q3_k_scales(s: &[u8; 12]) -> [i32; 16] {
    let mut out = [0i32; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 { s[j] & 0x0F } else { s[j - 8] >> 4 };
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = (low | (high << 4)) as i32 - 32;
    }
    out
}

/// Q3_K (110 bytes): hmask[32], qs[64] (low 2 bits), scales[12] (16 x 6-bit), f16 d.
/// Element `128 n + 32 j + l` has low bits `2j..2j+2` of `qs[32 n + l]` and high bit `4n + j` of
/// `hmask[l]`; a clear high bit means minus 4. y = (d * (sc - 32)) * q.
pub(super) fn q3_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<110>(src, dst) {
        let hmask: &[u8; 32] = field::<0, 32, 110>(b);
        let qs: &[u8; 64] = field::<32, 64, 110>(b);
        let scales = q3_k_scales(field::<96, 12, 110>(b));
        let d = f16_le(b[108], b[109]);
        for n in 0..2 {
            for j in 0..4 {
                let bit = n * 4 + j;
                for half in 0..2 {
                    let sub = n * 8 + j * 2 + half;
                    let dl = d * scales[sub] as f32;
                    let q: &[u8; 16] = qs[n * 32 + half * 16..][..16].try_into().unwrap();
                    let h: &[u8; 16] = hmask[half * 16..][..16].try_into().unwrap();
                    let o = out::<16>(y, sub * 16);
                    for l in 0..16 {
                        let low = ((q[l] >> (2 * j)) & 3) as i32;
                        // 4 when the high bit is clear, 0 when it is set.
                        let minus = ((!h[l] >> bit) & 1) as i32 * 4;
                        o[l] = dl * (low - minus) as f32;
                    }
                }
            }
        }
    }
}

/// Unpack the 8 (scale, min) pairs of 6 bits each of Q4_K / Q5_K (llama.cpp `get_scale_min_k4`).
#[inline(always)]
fn scale_min_k4(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..4 {
        sc[j] = s[j] & 0x3F;
        mn[j] = s[j + 4] & 0x3F;
        sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, mn)
}

/// Q4_K (144 bytes): f16 d, f16 dmin, scales[12], qs[128]. Element `64 c + 32 h + l` is nibble
/// `h` of `qs[32 c + l]`, in sub-block `2c + h`. y = (d * sc) * q - (dmin * m).
pub(super) fn q4_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<144>(src, dst) {
        let d = f16_le(b[0], b[1]);
        let dmin = f16_le(b[2], b[3]);
        let (sc, mn) = scale_min_k4(field::<4, 12, 144>(b));
        let qs: &[u8; 128] = field::<16, 128, 144>(b);
        for c in 0..4 {
            let d1 = d * sc[2 * c] as f32;
            let m1 = dmin * mn[2 * c] as f32;
            let d2 = d * sc[2 * c + 1] as f32;
            let m2 = dmin * mn[2 * c + 1] as f32;
            let q: &[u8; 32] = qs[c * 32..][..32].try_into().unwrap();
            let o = out::<64>(y, c * 64);
            for l in 0..32 {
                o[l] = d1 * (q[l] & 0x0F) as f32 - m1;
                o[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

/// Q5_K (176 bytes): f16 d, f16 dmin, scales[12], qh[32], qs[128]. As Q4_K, plus a fifth bit:
/// bit `2c + h` of `qh[l]`. y = (d * sc) * q - (dmin * m).
pub(super) fn q5_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<176>(src, dst) {
        let d = f16_le(b[0], b[1]);
        let dmin = f16_le(b[2], b[3]);
        let (sc, mn) = scale_min_k4(field::<4, 12, 176>(b));
        let qh: &[u8; 32] = field::<16, 32, 176>(b);
        let qs: &[u8; 128] = field::<48, 128, 176>(b);
        for c in 0..4 {
            let d1 = d * sc[2 * c] as f32;
            let m1 = dmin * mn[2 * c] as f32;
            let d2 = d * sc[2 * c + 1] as f32;
            let m2 = dmin * mn[2 * c + 1] as f32;
            let q: &[u8; 32] = qs[c * 32..][..32].try_into().unwrap();
            let o = out::<64>(y, c * 64);
            for l in 0..32 {
                let h1 = ((qh[l] >> (2 * c)) & 1) << 4;
                let h2 = ((qh[l] >> (2 * c + 1)) & 1) << 4;
                o[l] = d1 * ((q[l] & 0x0F) | h1) as f32 - m1;
                o[l + 32] = d2 * ((q[l] >> 4) | h2) as f32 - m2;
            }
        }
    }
}

/// Q6_K (210 bytes): ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (i8), f16 d.
/// Element `128 n + 32 j + l`: low nibble `j / 2` of `ql[64 n + 32 (j % 2) + l]`, high bits
/// `2j..2j+2` of `qh[32 n + l]`. y = (d * sc) * (q - 32).
pub(super) fn q6_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<210>(src, dst) {
        let ql: &[u8; 128] = field::<0, 128, 210>(b);
        let qh: &[u8; 64] = field::<128, 64, 210>(b);
        let scales: &[u8; 16] = field::<192, 16, 210>(b);
        let d = f16_le(b[208], b[209]);
        for n in 0..2 {
            let h: &[u8; 32] = qh[n * 32..][..32].try_into().unwrap();
            for j in 0..4 {
                let lo: &[u8; 32] = ql[n * 64 + (j % 2) * 32..][..32].try_into().unwrap();
                let lshift = 4 * (j / 2);
                for half in 0..2 {
                    let sub = n * 8 + j * 2 + half;
                    let dl = d * (scales[sub] as i8) as f32;
                    let lo: &[u8; 16] = lo[half * 16..][..16].try_into().unwrap();
                    let hi: &[u8; 16] = h[half * 16..][..16].try_into().unwrap();
                    let o = out::<16>(y, sub * 16);
                    for l in 0..16 {
                        let q = ((lo[l] >> lshift) & 0x0F) | (((hi[l] >> (2 * j)) & 3) << 4);
                        o[l] = dl * (q as i32 - 32) as f32;
                    }
                }
            }
        }
    }
}

/// Q8_K (292 bytes): f32 d, qs[256] (i8), bsums[16] (i16, only used by dot products). y = d * q.
pub(super) fn q8_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in blocks::<292>(src, dst) {
        let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let qs: &[u8; 256] = field::<4, 256, 292>(b);
        for l in 0..QK_K {
            y[l] = d * (qs[l] as i8) as f32;
        }
    }
}

/// IQ4_XS (136 bytes): f16 d, u16 scales_h (2 high bits of each sub-block scale), scales_l[4]
/// (4 low bits, two sub-blocks per byte, low nibble first), qs[128]. Sub-block ib (32 values)
/// has scale ls = scales_l nibble | scales_h bits << 4 (6 bits, offset 32) and its codes in
/// qs[16 ib..16 ib + 16] (element j low nibble, j + 16 high). y = (d * (ls - 32)) * kvalues[q].
pub(super) fn iq4_xs(src: &[u8], dst: &mut [f32]) {
    let table = super::legacy::KVALUES_IQ4NL.map(|v| v as f32);
    for (b, y) in blocks::<136>(src, dst) {
        let d = f16_le(b[0], b[1]);
        let scales_h = u16::from_le_bytes([b[2], b[3]]);
        let scales_l = field::<4, 4, 136>(b);
        let qs = field::<8, 128, 136>(b);
        for ib in 0..8 {
            let lo = (scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0F;
            let hi = ((scales_h >> (2 * ib)) & 3) as u8;
            let dl = d * ((lo | (hi << 4)) as i32 - 32) as f32;
            let q: &[u8; 16] = qs[16 * ib..16 * ib + 16].try_into().unwrap();
            let yb = out::<32>(y, 32 * ib);
            for j in 0..16 {
                yb[j] = dl * table[(q[j] & 0x0F) as usize];
                yb[j + 16] = dl * table[(q[j] >> 4) as usize];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_min_unpacking() {
        // Scales 0..8 = 1..8 and mins = 10..17, packed by hand as in llama.cpp's quantizer.
        let sc: [u8; 8] = [1, 2, 3, 4, 40, 50, 60, 63];
        let mn: [u8; 8] = [10, 11, 12, 13, 33, 44, 55, 62];
        let mut s = [0u8; 12];
        for j in 0..4 {
            s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            s[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
            s[j + 8] = (sc[j + 4] & 0x0F) | ((mn[j + 4] & 0x0F) << 4);
        }
        assert_eq!(scale_min_k4(&s), (sc, mn));
    }
}
