//! IQ4_XS encoder, following llama.cpp's reference `quantize_row_iq4_xs_ref` (which runs
//! `quantize_row_iq4_nl_impl` on 256-value super-blocks of eight 32-value sub-blocks, no
//! importance matrix, `ntry = 7`). Every f32 operation is in the reference's order, as plain
//! multiply and add (no FMA).
//!
//! Per sub-block: weights w = x^2, a first scale -max / kvalues[0] (max = the element of largest
//! magnitude, with its sign), codes = nearest codebook entries, the scale refit by weighted least
//! squares, then 15 more reciprocal scales `(itry + kvalues[0]) / max` (itry = -7..7) each refit
//! the same way, keeping the one with the best `sumqx^2 / sumq2`. The super-block scale is
//! d = -max_scale / 32 (max_scale = the sub-block scale of largest magnitude); each sub-block
//! stores l = clamp(nearest_int(scale / d), -32, 31) + 32 in 6 bits, and its codes are chosen
//! again against `d * l` (the f32 d, not its f16 rounding, as llama.cpp does).

use super::kquants::nearest_int;
use super::legacy::KVALUES_IQ4NL;
use super::put_f16;
use crate::ggml::QK_K;

const GROUP_MAX_EPS: f32 = 1e-15;
/// Bytes per IQ4_XS super-block: f16 d, u16 scales_h, 4 bytes scales_l, 128 bytes of nibbles.
pub(crate) const BLOCK_BYTES: usize = 136;
const NTRY: i32 = 7;

/// llama.cpp `best_index_int8`: the index of the ascending table entry nearest to x (the upper
/// one on exact ties); below the first entry gives 0, above the last 15. A NaN x fails every
/// comparison and ends at 15, as in C.
#[inline(always)]
pub(crate) fn best_index_int8(values: &[f32; 16], x: f32) -> u8 {
    if x <= values[0] {
        return 0;
    }
    if x >= values[15] {
        return 15;
    }
    let (mut ml, mut mu) = (0usize, 15usize);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < values[mav] {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - values[mu - 1] < values[mu] - x {
        (mu - 1) as u8
    } else {
        mu as u8
    }
}

/// Weighted least-squares pieces for codes chosen at reciprocal scale `id`:
/// (sum w q x, sum w q^2), accumulated in element order. Writes the codes to `l`.
#[inline(always)]
fn fit(x: &[f32; 32], w: &[f32; 32], values: &[f32; 16], id: f32, l: &mut [u8; 32]) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for j in 0..32 {
        let code = best_index_int8(values, id * x[j]);
        l[j] = code;
        let q = values[code as usize];
        sumqx += w[j] * q * x[j];
        sumq2 += w[j] * q * q;
    }
    (sumqx, sumq2)
}

/// The sub-block scale of one 32-value sub-block (0 for a block below GROUP_MAX_EPS).
fn sub_block_scale(x: &[f32; 32], values: &[f32; 16]) -> f32 {
    let mut w = [0.0f32; 32];
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for (wj, &v) in w.iter_mut().zip(x) {
        *wj = v * v;
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let mut l = [0u8; 32];
    let d0 = -max / values[0];
    let (sumqx, sumq2) = fit(x, &w, values, 1.0 / d0, &mut l);
    // No guard on sumq2 here, like the reference (it is > 0 whenever amax >= GROUP_MAX_EPS
    // and the squares do not underflow).
    let mut d = sumqx / sumq2;
    let mut best = d * sumqx;
    for itry in -NTRY..=NTRY {
        // C: (itry + values[0]) is an int, converted to float before the division.
        let id = (itry + values[0] as i32) as f32 / max;
        let (sumqx, sumq2) = fit(x, &w, values, id, &mut l);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// Encode one 256-value super-block into its 136 bytes.
fn encode_block(x: &[f32; QK_K], b: &mut [u8; BLOCK_BYTES], values: &[f32; 16]) {
    let mut scales = [0.0f32; 8];
    let mut max_scale = 0.0f32;
    let mut amax_scale = 0.0f32;
    for (ib, s) in scales.iter_mut().enumerate() {
        let xb: &[f32; 32] = x[32 * ib..32 * ib + 32].try_into().unwrap();
        *s = sub_block_scale(xb, values);
        if s.abs() > amax_scale {
            amax_scale = s.abs();
            max_scale = *s;
        }
    }
    let d = -max_scale / 32.0;
    put_f16(&mut b[0..2], d);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut scales_h = 0u16;
    let mut scales_l = [0u8; 4];
    let mut l = [0u8; QK_K];
    for ib in 0..8 {
        let ls = nearest_int(id * scales[ib]).clamp(-32, 31);
        let dl = d * ls as f32;
        let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        for j in 0..32 {
            l[32 * ib + j] = best_index_int8(values, idl * x[32 * ib + j]);
        }
        let ls = (ls + 32) as u8;
        scales_l[ib / 2] |= (ls & 0xF) << (4 * (ib % 2));
        scales_h |= ((ls >> 4) as u16) << (2 * ib);
    }
    b[2..4].copy_from_slice(&scales_h.to_le_bytes());
    b[4..8].copy_from_slice(&scales_l);
    // Sub-block ib's 16 bytes: element j in the low nibble, element j + 16 in the high one.
    for ib in 0..8 {
        for j in 0..16 {
            b[8 + 16 * ib + j] = l[32 * ib + j] | (l[32 * ib + 16 + j] << 4);
        }
    }
}

/// IQ4_XS (136 bytes per 256 values), llama.cpp's reference encoder.
pub(super) fn iq4_xs(src: &[f32], dst: &mut [u8]) {
    let values = KVALUES_IQ4NL.map(|v| v as f32);
    for (x, b) in src
        .chunks_exact(QK_K)
        .zip(dst.chunks_exact_mut(BLOCK_BYTES))
    {
        encode_block(x.try_into().unwrap(), b.try_into().unwrap(), &values);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// best_index_int8 equals the exact nearest-entry rule (2x against the sum of neighbours,
    /// upper entry on ties) on a dense sweep, and sends NaN to 15 as the C code does.
    #[test]
    fn best_index_matches_exact_rule() {
        let values = KVALUES_IQ4NL.map(|v| v as f32);
        let exact = |x: f32| -> u8 {
            let x2 = x as f64 * 2.0;
            let mut idx = 0;
            for j in 1..16 {
                if x2 >= values[j - 1] as f64 + values[j] as f64 {
                    idx = j;
                }
            }
            idx as u8
        };
        let mut x = -140.0f32;
        while x < 140.0 {
            assert_eq!(best_index_int8(&values, x), exact(x), "x = {x}");
            x += 0.0137;
        }
        for j in 1..16 {
            let mid = (values[j - 1] + values[j]) / 2.0;
            for x in [
                mid,
                f32::from_bits(mid.to_bits() - 1),
                f32::from_bits(mid.to_bits() + 1),
            ] {
                assert_eq!(best_index_int8(&values, x), exact(x), "x = {x}");
            }
        }
        assert_eq!(best_index_int8(&values, f32::NAN), 15);
        assert_eq!(best_index_int8(&values, f32::NEG_INFINITY), 0);
        assert_eq!(best_index_int8(&values, f32::INFINITY), 15);
    }
}
