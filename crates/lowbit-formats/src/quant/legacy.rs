//! Encoders of the 32-element block types and of the ternary TQ types, mirroring gguf-py's numpy
//! `quantize_blocks` step by step (which in turn matches llama.cpp's `quantize_row_*_ref`).

use super::put_f16;

const QK: usize = 32;

/// numpy's `astype(np.uint8)` of an f32 on x86-64: truncate to i32 and keep the low byte;
/// NaN, inf and values outside i32 become 0 (cvttss2si's "integer indefinite" has a zero low byte).
#[inline(always)]
pub(crate) fn np_u8(v: f32) -> u8 {
    if v.is_finite() && v.abs() < 2_147_483_648.0 {
        (v as i32) as u8
    } else {
        0
    }
}

/// `np_roundf` of gguf-py (= C `roundf`): round half away from zero.
#[inline(always)]
fn roundf(v: f32) -> f32 {
    v.round()
}

/// 1/d, or 0 where d is 0 (gguf-py `np.where(d == 0, 0, 1 / d)`).
#[inline(always)]
pub(crate) fn inv_or_zero(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// The element with the largest magnitude (the first one on ties), with its sign.
#[inline(always)]
pub(crate) fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    max
}

fn absmax(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

fn min_max(x: &[f32]) -> (f32, f32) {
    let mut lo = f32::INFINITY;
    let mut hi = f32::NEG_INFINITY;
    for &v in x {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    (lo, hi)
}

/// Pack 32 4-bit codes: byte l = q[l] | q[l + 16] << 4.
#[inline(always)]
fn pack_nibbles(q: &[u8; QK], out: &mut [u8]) {
    for l in 0..16 {
        out[l] = (q[l] & 0x0F) | (q[l + 16] << 4);
    }
}

/// The 5th bits of 32 codes as a little-endian u32 (bit i = bit 4 of q[i]).
#[inline(always)]
fn high_bits(q: &[u8; QK]) -> [u8; 4] {
    let mut qh = 0u32;
    for (i, &v) in q.iter().enumerate() {
        qh |= (((v >> 4) & 1) as u32) << i;
    }
    qh.to_le_bytes()
}

/// Q8_0: d = absmax / 127, q = round(x / d).
pub(super) fn q8_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(34)) {
        let d = absmax(x) / 127.0;
        let id = inv_or_zero(d);
        put_f16(b, d);
        for (o, &v) in b[2..].iter_mut().zip(x) {
            *o = np_u8(roundf(v * id));
        }
    }
}

/// Q4_0: d = max / -8 (max = signed absmax), q = min(15, trunc(x / d + 8.5)).
pub(super) fn q4_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(18)) {
        let d = signed_absmax(x) / -8.0;
        let id = inv_or_zero(d);
        let mut q = [0u8; QK];
        for (qi, &v) in q.iter_mut().zip(x) {
            *qi = np_u8((v * id + 8.5).trunc()).min(15);
        }
        put_f16(b, d);
        pack_nibbles(&q, &mut b[2..]);
    }
}

/// Q4_1: d = (max - min) / 15, m = min, q = min(15, trunc((x - min) / d + 0.5)).
pub(super) fn q4_1(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(20)) {
        let (lo, hi) = min_max(x);
        let d = (hi - lo) / 15.0;
        let id = inv_or_zero(d);
        let mut q = [0u8; QK];
        for (qi, &v) in q.iter_mut().zip(x) {
            *qi = np_u8(((v - lo) * id + 0.5).trunc()).min(15);
        }
        put_f16(b, d);
        put_f16(&mut b[2..], lo);
        pack_nibbles(&q, &mut b[4..]);
    }
}

/// Q5_0: d = max / -16, q = min(31, trunc(x / d + 16.5)).
pub(super) fn q5_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(22)) {
        let d = signed_absmax(x) / -16.0;
        let id = inv_or_zero(d);
        let mut q = [0u8; QK];
        for (qi, &v) in q.iter_mut().zip(x) {
            *qi = np_u8((v * id + 16.5).trunc()).min(31);
        }
        put_f16(b, d);
        b[2..6].copy_from_slice(&high_bits(&q));
        pack_nibbles(&q, &mut b[6..]);
    }
}

/// Q5_1: d = (max - min) / 31, m = min, q = min(31, trunc((x - min) / d + 0.5)).
pub(super) fn q5_1(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(24)) {
        let (lo, hi) = min_max(x);
        let d = (hi - lo) / 31.0;
        let id = inv_or_zero(d);
        let mut q = [0u8; QK];
        for (qi, &v) in q.iter_mut().zip(x) {
            *qi = np_u8(((v - lo) * id + 0.5).trunc()).min(31);
        }
        put_f16(b, d);
        put_f16(&mut b[2..], lo);
        b[4..8].copy_from_slice(&high_bits(&q));
        pack_nibbles(&q, &mut b[8..]);
    }
}

/// E2M1 values times two (llama.cpp `kvalues_mxfp4`).
pub(crate) const KVALUES_MXFP4: [f32; 16] = [
    0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 0.0, -1.0, -2.0, -3.0, -4.0, -6.0, -8.0, -12.0,
];

/// IQ4_NL's non-linear 4-bit codebook (llama.cpp `kvalues_iq4nl`).
pub(crate) const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Half of the E8M0 scale, 2^(e - 128) (llama.cpp `ggml_e8m0_to_fp32_half`).
#[inline(always)]
pub(crate) fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        ((e - 1) as u32) << 23
    };
    f32::from_bits(bits)
}

/// floor(log2(a)) as numpy computes it on an f32: log2 rounded to f32 first (so values just
/// below a large power of two round up to it), then floored.
#[inline(always)]
pub(crate) fn floor_log2_f32(a: f32) -> f32 {
    ((a as f64).log2() as f32).floor()
}

/// Index of the table entry closest to x (first one on ties), errors computed in f32.
#[inline(always)]
fn best_index(table: &[f32; 16], d: f32, x: f32) -> u8 {
    let mut best = 0usize;
    let mut best_err = (table[0] * d - x).abs();
    for (i, &k) in table.iter().enumerate().skip(1) {
        let err = (k * d - x).abs();
        if err < best_err {
            best = i;
            best_err = err;
        }
    }
    best as u8
}

/// MXFP4: e = floor(log2(absmax)) - 2 + 127, each value the nearest E2M1 times 2^(e-127).
pub(super) fn mxfp4(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(17)) {
        let amax = absmax(x);
        let e = if amax > 0.0 {
            np_u8(floor_log2_f32(amax) - 2.0 + 127.0)
        } else {
            0
        };
        let d = e8m0_to_f32_half(e);
        let mut q = [0u8; QK];
        for (qi, &v) in q.iter_mut().zip(x) {
            *qi = best_index(&KVALUES_MXFP4, d, v);
        }
        b[0] = e;
        pack_nibbles(&q, &mut b[1..]);
    }
}

/// IQ4_NL as llama.cpp's `quantize_row_iq4_nl_ref`: weights w = x^2, initial scale
/// d = max / kvalues[0], codes = nearest table entries, then d refit by weighted least squares.
/// (The reference passes ntry = -1, so the scale search of the importance-matrix path is skipped.)
pub(super) fn iq4_nl(src: &[f32], dst: &mut [u8]) {
    let table = KVALUES_IQ4NL.map(|v| v as f32);
    for (x, b) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(18)) {
        let mut q = [0u8; QK];
        let d = iq4_nl_block(x.try_into().unwrap(), &table, -1, &mut q);
        put_f16(b, d);
        pack_nibbles(&q, &mut b[2..]);
    }
}

/// One IQ4_NL block (llama.cpp `quantize_row_iq4_nl_impl`, one 32-block, no importance weights).
/// With `ntry > 0` it also tries 2*ntry+1 reciprocal scales around the first guess.
fn iq4_nl_block(x: &[f32; QK], table: &[f32; 16], ntry: i32, q: &mut [u8; QK]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    let mut w = [0.0f32; QK];
    for (wi, &v) in w.iter_mut().zip(x) {
        *wi = v * v;
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < 1e-15 {
        q.fill(0);
        return 0.0;
    }
    let fit = |id: f32, lq: &mut [u8; QK]| {
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for j in 0..QK {
            let l = best_index_sorted(table, id * x[j]);
            lq[j] = l;
            let t = table[l as usize];
            sumqx += w[j] * t * x[j];
            sumq2 += w[j] * t * t;
        }
        (sumqx, sumq2)
    };
    let d0 = if ntry > 0 {
        -max / table[0]
    } else {
        max / table[0]
    };
    let (sumqx, sumq2) = fit(1.0 / d0, q);
    let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    let mut lq = [0u8; QK];
    for itry in -ntry..=ntry {
        let (sumqx, sumq2) = fit((itry as f32 + table[0]) / max, &mut lq);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    if ntry > 0 {
        // The searched scale's codes are recomputed from the final d (as llama.cpp does).
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for j in 0..QK {
            q[j] = best_index_sorted(table, id * x[j]);
        }
    }
    d
}

/// The nearest entry of the ascending table (ties to the lower one), as llama.cpp's
/// `best_index_int8`: compare 2x with the sum of neighbours, which is exact.
#[inline(always)]
fn best_index_sorted(table: &[f32; 16], x: f32) -> u8 {
    let x2 = x + x;
    let mut idx = 0usize;
    let mut step = 8usize;
    while step > 0 {
        let j = idx + step;
        if x2 >= table[j - 1] + table[j] {
            idx = j;
        }
        step >>= 1;
    }
    idx as u8
}

/// TQ1_0: ternary values {-1, 0, 1} * d (d = absmax), five trits per byte in base 3, stored as
/// ceil(v * 256 / 243) so that the decoder can extract trits with multiplications.
pub(super) fn tq1_0(src: &[f32], dst: &mut [u8]) {
    const POW5: [u16; 5] = [81, 27, 9, 3, 1];
    for (x, b) in src.chunks_exact(256).zip(dst.chunks_exact_mut(54)) {
        let d = absmax(x);
        let id = inv_or_zero(d);
        let mut q = [0u8; 256];
        for (qi, &v) in q.iter_mut().zip(x) {
            *qi = (np_u8(roundf(v * id)) as i8 as i16 + 1) as u8;
        }
        let scale = |v: u16| ((v * 256 + 242) / 243) as u8;
        // qs[0..32]: elements 0..160, byte j holds elements j + 32n (n = 0..5).
        for j in 0..32 {
            let v: u16 = (0..5).map(|n| q[n * 32 + j] as u16 * POW5[n]).sum();
            b[j] = scale(v);
        }
        // qs[32..48]: elements 160..240, byte j holds elements 160 + j + 16n.
        for j in 0..16 {
            let v: u16 = (0..5).map(|n| q[160 + n * 16 + j] as u16 * POW5[n]).sum();
            b[32 + j] = scale(v);
        }
        // qh[0..4]: elements 240..256, byte j holds elements 240 + j + 4n (n = 0..4).
        for j in 0..4 {
            let v: u16 = (0..4).map(|n| q[240 + n * 4 + j] as u16 * POW5[n]).sum();
            b[48 + j] = scale(v);
        }
        put_f16(&mut b[52..], d);
    }
}

/// TQ2_0: ternary values stored as 2-bit q + 1; byte j of each 32-byte group holds elements
/// j, j + 32, j + 64, j + 96 of its 128-element half, low bits first.
pub(super) fn tq2_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(256).zip(dst.chunks_exact_mut(66)) {
        let d = absmax(x);
        let id = inv_or_zero(d);
        let mut q = [0u8; 256];
        for (qi, &v) in q.iter_mut().zip(x) {
            *qi = (np_u8(roundf(v * id)) as i8 as i16 + 1) as u8;
        }
        for half in 0..2 {
            for j in 0..32 {
                let base = half * 128 + j;
                b[half * 32 + j] = (q[base] & 3)
                    | (q[base + 32] & 3) << 2
                    | (q[base + 64] & 3) << 4
                    | (q[base + 96] & 3) << 6;
            }
        }
        put_f16(&mut b[64..], d);
    }
}
