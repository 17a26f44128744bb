//! Encoders of the k-quants (256-element super-blocks), following llama.cpp's reference
//! quantizers (`quantize_row_q{2,3,4,5,6}_K_ref`, no importance matrix). Every float operation
//! is written in the reference's order, as plain f32 multiply and add (no FMA), so the bytes
//! match a llama.cpp build without FMA contraction.

use super::{f16_round, put_f16};
use crate::ggml::QK_K;

const GROUP_MAX_EPS: f32 = 1e-15;

/// llama.cpp `nearest_int`: round to nearest (ties to even) via the 1.5 * 2^23 trick. Exact for
/// |x| < 2^22; outside that it returns what the bit trick returns, like the reference.
#[inline(always)]
pub(crate) fn nearest_int(x: f32) -> i32 {
    let bits = (x + 12_582_912.0f32).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

/// llama.cpp `make_qx_quants` for signed codes in [-nmax, nmax); returns the scale, L holds
/// codes + nmax. `rmse_type` 1 weighs by x^2 (or by `qw` when given).
fn make_qx_quants(
    x: &[f32],
    nmax: i32,
    l_out: &mut [i8],
    rmse_type: i32,
    qw: Option<&[f32]>,
) -> f32 {
    let n = x.len();
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let nmaxf = nmax as f32;
    let mut iscale = -nmaxf / max;
    if rmse_type == 0 {
        for i in 0..n {
            let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
            l_out[i] = (nmax + l) as i8;
        }
        return 1.0 / iscale;
    }
    let (rmse_type, return_early) = if rmse_type < 0 {
        (-rmse_type, true)
    } else {
        (rmse_type, false)
    };
    let weight = |i: usize| -> f32 {
        match qw {
            Some(w) => w[i],
            None => match rmse_type {
                1 => x[i] * x[i],
                2 => 1.0,
                3 => x[i].abs(),
                _ => x[i].abs().sqrt(),
            },
        }
    };
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l_out[i] = (l + nmax) as i8;
        let w = weight(i);
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    if return_early {
        return if suml2 > 0.0 {
            0.5 * (scale + 1.0 / iscale)
        } else {
            1.0 / iscale
        };
    }
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmaxf + 0.1f32 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for i in 0..n {
            let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
            let w = weight(i);
            sumlx += w * x[i] * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                let l = nearest_int(iscale * x[i]);
                l_out[i] = (nmax + l.clamp(-nmax, nmax - 1)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// llama.cpp `make_q3_quants` with do_rmse: iterative refinement of codes in [-nmax, nmax).
fn make_q3_quants(x: &[f32], nmax: i32, l_out: &mut [i8]) -> f32 {
    let n = x.len();
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l_out[..n].fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l_out[i] = l as i8;
        let w = x[i] * x[i];
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = x[i] * x[i];
            let li = l_out[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != l_out[i] as i32 {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l_out[i] = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for l in l_out[..n].iter_mut() {
        *l += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// llama.cpp `make_qkx2_quants`: codes in [0, nmax] with a scale and a (negated) min, found by
/// a grid search over nstep+1 candidate scales and a weighted least-squares fit for each.
/// Returns (scale, the_min) where value ~ scale * L - the_min.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    l_out: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out[..n].fill(0);
        return (0.0, -min);
    }
    let nmaxf = nmax as f32;
    let mut iscale = nmaxf / (max - min);
    let mut scale = 1.0 / iscale;
    let err = |d: f32| if use_mad { d.abs() } else { d * d };
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * err(diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    let mut laux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmaxf) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * err(diff);
            }
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// The 6-bit scale and min of sub-block j from the packed 12-byte Q4_K/Q5_K scales field.
#[inline(always)]
pub(crate) fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Pack eight 6-bit scales and mins into the 12-byte Q4_K/Q5_K layout.
pub(crate) fn pack_scales_k4(ls: &[u8; 8], lm: &[u8; 8], out: &mut [u8]) {
    out[..12].fill(0);
    for j in 0..8 {
        if j < 4 {
            out[j] = ls[j];
            out[j + 4] = lm[j];
        } else {
            out[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            out[j - 4] |= (ls[j] >> 4) << 6;
            out[j] |= (lm[j] >> 4) << 6;
        }
    }
}

/// Shared part of Q4_K and Q5_K: per-32 scales/mins by make_qkx2_quants, quantized to 6 bits
/// under f16 super-scales; returns the final codes in [0, nmax]. Writes d, dmin, scales.
fn qkx_superblock(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    head: &mut [u8],
    l_all: &mut [u8; QK_K],
) {
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    let mut weights = [0.0f32; 32];
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (s, m) = make_qkx2_quants(
            xs,
            &weights,
            nmax,
            &mut l_all[32 * j..32 * j + 32],
            rmin,
            rdelta,
            nstep,
            false,
        );
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        // C assigns the int to a uint8_t (keeps the low byte) before MIN(63, .).
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    put_f16(&mut head[0..2], max_scale / 63.0);
    put_f16(&mut head[2..4], max_min / 63.0);
    pack_scales_k4(&ls, &lm, &mut head[4..16]);
    let d_all = f16_round(max_scale / 63.0);
    let dmin_all = f16_round(max_min / 63.0);
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, &head[4..16]);
        let d = d_all * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * m as f32;
        for ii in 0..32 {
            let l = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, nmax);
            l_all[32 * j + ii] = l as u8;
        }
    }
}

/// Q4_K (144 bytes): f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles.
pub(super) fn q4_k(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(144)) {
        let mut l = [0u8; QK_K];
        qkx_superblock(x, 15, -1.0, 0.1, 20, &mut b[..16], &mut l);
        let q = &mut b[16..];
        for (c, j) in (0..QK_K).step_by(64).enumerate() {
            for i in 0..32 {
                q[32 * c + i] = l[j + i] | (l[j + i + 32] << 4);
            }
        }
    }
}

/// Q4_K with plain min/max sub-block scales, no search (NOT llama.cpp's encoder): sub-block j
/// takes lo = min(min x, 0), hi = max x, scale (hi - lo) / 15 and min -lo; the super-block
/// scales are the largest of each over 63 (stored as f16), the 6-bit sub-block scale and min
/// are round-to-nearest multiples of them, and codes are round((x + dmin m) / (d sc)) clamped
/// to [0, 15] (multiplying by the reciprocal). Valid Q4_K blocks for any decoder; error a bit
/// above the searched encoder's. Written as straight loops over fixed-size arrays so the
/// compiler vectorizes it (instantiated per SIMD level in `simd::x86`).
#[inline(always)]
pub(crate) fn q4_k_fast(src: &[f32], dst: &mut [u8]) {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: (v + MAGIC) - MAGIC rounds |v| < 2^22
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(144)) {
        let x: &[f32; QK_K] = x.try_into().unwrap();
        let b: &mut [u8; 144] = b.try_into().unwrap();
        let mut scales = [0.0f32; 8];
        let mut mins = [0.0f32; 8];
        for j in 0..8 {
            let xs: &[f32; 32] = x[32 * j..32 * j + 32].try_into().unwrap();
            // Selects rather than f32::min/max (one instruction each, NaN ignored), per lane
            // over the two halves, then a tree over the 16 lanes: loops the compiler vectorizes.
            let mut lo = [0.0f32; 16];
            let mut hi = [f32::NEG_INFINITY; 16];
            for h in 0..2 {
                for i in 0..16 {
                    let v = xs[16 * h + i];
                    lo[i] = if v < lo[i] { v } else { lo[i] };
                    hi[i] = if v > hi[i] { v } else { hi[i] };
                }
            }
            let (lo, mut hi) = (
                fold16(lo, |a, b| if b < a { b } else { a }),
                fold16(hi, |a, b| if b > a { b } else { a }),
            );
            if hi < lo {
                hi = lo; // an all-NaN sub-block
            }
            scales[j] = (hi - lo) / 15.0;
            mins[j] = -lo;
        }
        let (d, dmin, ls, lm) = q4_k_fast_head(&scales, &mins, b);
        let mut l = [0u8; QK_K];
        for j in 0..8 {
            let dl = d * ls[j] as f32;
            let dm = dmin * lm[j] as f32;
            let idl = if dl > 0.0 { 1.0 / dl } else { 0.0 };
            let xs: &[f32; 32] = x[32 * j..32 * j + 32].try_into().unwrap();
            let lj: &mut [u8; 32] = (&mut l[32 * j..32 * j + 32]).try_into().unwrap();
            for i in 0..32 {
                // NaN.clamp stays NaN and `as u8` turns it into 0.
                lj[i] = (((xs[i] + dm) * idl).clamp(0.0, 15.0) + MAGIC - MAGIC) as i32 as u8;
            }
        }
        let q: &mut [u8; 128] = (&mut b[16..]).try_into().unwrap();
        for c in 0..4 {
            for i in 0..32 {
                q[32 * c + i] = l[64 * c + i] | (l[64 * c + i + 32] << 4);
            }
        }
    }
}

/// The fast Q4_K encoder's super-block part: from the eight sub-block scales and mins, write d,
/// dmin (f16) and the packed 6-bit scales/mins into `b[0..16]`; returns (d, dmin, ls, lm) as
/// the decoder will see them. Shared by the scalar and AVX-512 versions.
#[inline(always)]
pub(crate) fn q4_k_fast_head(
    scales: &[f32; 8],
    mins: &[f32; 8],
    b: &mut [u8],
) -> (f32, f32, [u8; 8], [u8; 8]) {
    const MAGIC: f32 = 12_582_912.0;
    let max_scale = scales
        .iter()
        .fold(0.0f32, |m, &v| if v > m { v } else { m });
    let max_min = mins.iter().fold(0.0f32, |m, &v| if v > m { v } else { m });
    put_f16(&mut b[0..2], max_scale / 63.0);
    put_f16(&mut b[2..4], max_min / 63.0);
    let d = f16_round(max_scale / 63.0);
    let dmin = f16_round(max_min / 63.0);
    let (id, idmin) = (
        if d > 0.0 { 1.0 / d } else { 0.0 },
        if dmin > 0.0 { 1.0 / dmin } else { 0.0 },
    );
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        ls[j] = ((scales[j] * id).clamp(0.0, 63.0) + MAGIC - MAGIC) as i32 as u8;
        lm[j] = ((mins[j] * idmin).clamp(0.0, 63.0) + MAGIC - MAGIC) as i32 as u8;
    }
    pack_scales_k4(&ls, &lm, &mut b[4..16]);
    (d, dmin, ls, lm)
}

/// Tree reduction of 16 lanes with fixed-width steps (constant trip counts, so every step
/// compiles to straight vector code at any instruction set).
#[inline(always)]
fn fold16(mut a: [f32; 16], op: impl Fn(f32, f32) -> f32) -> f32 {
    for i in 0..8 {
        a[i] = op(a[i], a[i + 8]);
    }
    for i in 0..4 {
        a[i] = op(a[i], a[i + 4]);
    }
    for i in 0..2 {
        a[i] = op(a[i], a[i + 2]);
    }
    op(a[0], a[1])
}

/// Q5_K (176 bytes): f16 d, f16 dmin, 12 bytes scales, 32 bytes high bits, 128 bytes nibbles.
pub(super) fn q5_k(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(176)) {
        let mut l = [0u8; QK_K];
        qkx_superblock(x, 31, -0.5, 0.1, 15, &mut b[..16], &mut l);
        let (qh, ql) = b[16..].split_at_mut(32);
        qh.fill(0);
        let (mut m1, mut m2) = (1u8, 2u8);
        for (c, n) in (0..QK_K).step_by(64).enumerate() {
            for j in 0..32 {
                let mut l1 = l[n + j];
                if l1 > 15 {
                    l1 -= 16;
                    qh[j] |= m1;
                }
                let mut l2 = l[n + j + 32];
                if l2 > 15 {
                    l2 -= 16;
                    qh[j] |= m2;
                }
                ql[32 * c + j] = l1 | (l2 << 4);
            }
            m1 = m1.wrapping_shl(2);
            m2 = m2.wrapping_shl(2);
        }
    }
}

/// Q6_K (210 bytes): 128 bytes low nibbles, 64 bytes high 2-bit pairs, 16 i8 scales, f16 d.
pub(super) fn q6_k(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(210)) {
        let mut l = [0i8; QK_K];
        let mut scales = [0.0f32; 16];
        let mut max_scale = 0.0f32;
        let mut max_abs_scale = 0.0f32;
        for ib in 0..16 {
            let s = make_qx_quants(
                &x[16 * ib..16 * ib + 16],
                32,
                &mut l[16 * ib..16 * ib + 16],
                1,
                None,
            );
            scales[ib] = s;
            if s.abs() > max_abs_scale {
                max_abs_scale = s.abs();
                max_scale = s;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            b.fill(0);
            continue;
        }
        let iscale = -128.0 / max_scale;
        put_f16(&mut b[208..], 1.0 / iscale);
        let d_all = f16_round(1.0 / iscale);
        let mut sc = [0i8; 16];
        for ib in 0..16 {
            sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
            b[192 + ib] = sc[ib] as u8;
        }
        for j in 0..16 {
            let d = d_all * sc[j] as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
                l[16 * j + ii] = (q + 32) as i8;
            }
        }
        let l = l.map(|v| v as u8);
        let (ql, rest) = b.split_at_mut(128);
        let qh = &mut rest[..64];
        for (c, j) in (0..QK_K).step_by(128).enumerate() {
            for i in 0..32 {
                let q1 = l[j + i] & 0xF;
                let q2 = l[j + i + 32] & 0xF;
                let q3 = l[j + i + 64] & 0xF;
                let q4 = l[j + i + 96] & 0xF;
                ql[64 * c + i] = q1 | (q3 << 4);
                ql[64 * c + i + 32] = q2 | (q4 << 4);
                qh[32 * c + i] = (l[j + i] >> 4)
                    | ((l[j + i + 32] >> 4) << 2)
                    | ((l[j + i + 64] >> 4) << 4)
                    | ((l[j + i + 96] >> 4) << 6);
            }
        }
    }
}

/// Q3_K (110 bytes): 32 bytes hmask, 64 bytes 2-bit low parts, 12 bytes 6-bit scales, f16 d.
pub(super) fn q3_k(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(110)) {
        let mut l = [0i8; QK_K];
        let mut scales = [0.0f32; 16];
        let mut max_scale = 0.0f32;
        let mut amax = 0.0f32;
        for j in 0..16 {
            scales[j] = make_q3_quants(&x[16 * j..16 * j + 16], 4, &mut l[16 * j..16 * j + 16]);
            if scales[j].abs() > amax {
                amax = scales[j].abs();
                max_scale = scales[j];
            }
        }
        let (hmask, rest) = b.split_at_mut(32);
        let (qs, rest) = rest.split_at_mut(64);
        let (sc_bytes, dbytes) = rest.split_at_mut(12);
        sc_bytes.fill(0);
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for j in 0..16 {
                // int8_t l = nearest_int(...): low byte, then clamp and offset.
                let l8 = nearest_int(iscale * scales[j]) as i8;
                let v = (l8.clamp(-32, 31) + 32) as u8;
                if j < 8 {
                    sc_bytes[j] = v & 0xF;
                } else {
                    sc_bytes[j - 8] |= (v & 0xF) << 4;
                }
                sc_bytes[j % 4 + 8] |= (v >> 4) << (2 * (j / 4));
            }
            put_f16(dbytes, 1.0 / iscale);
        } else {
            put_f16(dbytes, 0.0);
        }
        let d_all = half::f16::from_le_bytes([dbytes[0], dbytes[1]]).to_f32();
        for j in 0..16 {
            let low = if j < 8 {
                sc_bytes[j] & 0xF
            } else {
                sc_bytes[j - 8] >> 4
            };
            let sc = (low | (((sc_bytes[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i32 - 32;
            let d = d_all * sc as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(x[16 * j + ii] / d).clamp(-4, 3);
                l[16 * j + ii] = (q + 4) as i8;
            }
        }
        hmask.fill(0);
        let mut l = l.map(|v| v as u8);
        let mut m = 0usize;
        let mut hm = 1u8;
        for v in l.iter_mut() {
            if *v > 3 {
                hmask[m] |= hm;
                *v -= 4;
            }
            m += 1;
            if m == QK_K / 8 {
                m = 0;
                hm = hm.wrapping_shl(1);
            }
        }
        pack_2bit(&l, qs);
    }
}

/// Four 2-bit codes per byte: byte l of each 32-byte group holds elements l, l+32, l+64, l+96.
fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8]) {
    for (c, j) in (0..QK_K).step_by(128).enumerate() {
        for i in 0..32 {
            qs[32 * c + i] = (l[j + i] & 3)
                | ((l[j + i + 32] & 3) << 2)
                | ((l[j + i + 64] & 3) << 4)
                | ((l[j + i + 96] & 3) << 6);
        }
    }
}

/// Q2_K (84 bytes): 16 bytes of 4-bit scale|min<<4, 64 bytes 2-bit codes, f16 d, f16 dmin.
pub(super) fn q2_k(src: &[f32], dst: &mut [u8]) {
    const Q4SCALE: f32 = 15.0;
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(84)) {
        let mut l = [0u8; QK_K];
        let mut scales = [0.0f32; 16];
        let mut mins = [0.0f32; 16];
        let mut weights = [0.0f32; 16];
        let mut max_scale = 0.0f32;
        let mut max_min = 0.0f32;
        for j in 0..16 {
            let xs = &x[16 * j..16 * j + 16];
            for (w, &v) in weights.iter_mut().zip(xs) {
                *w = v.abs();
            }
            let (s, m) = make_qkx2_quants(
                xs,
                &weights,
                3,
                &mut l[16 * j..16 * j + 16],
                -0.5,
                0.1,
                15,
                true,
            );
            scales[j] = s;
            mins[j] = m;
            if s > max_scale {
                max_scale = s;
            }
            if m > max_min {
                max_min = m;
            }
        }
        let (sc_bytes, rest) = b.split_at_mut(16);
        let (qs, tail) = rest.split_at_mut(64);
        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for j in 0..16 {
                sc_bytes[j] = nearest_int(iscale * scales[j]) as u8;
            }
            put_f16(&mut tail[0..2], max_scale / Q4SCALE);
        } else {
            sc_bytes.fill(0);
            put_f16(&mut tail[0..2], 0.0);
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for j in 0..16 {
                sc_bytes[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
            }
            put_f16(&mut tail[2..4], max_min / Q4SCALE);
        } else {
            put_f16(&mut tail[2..4], 0.0);
        }
        let d_all = half::f16::from_le_bytes([tail[0], tail[1]]).to_f32();
        let dmin_all = half::f16::from_le_bytes([tail[2], tail[3]]).to_f32();
        for j in 0..16 {
            let d = d_all * (sc_bytes[j] & 0xF) as f32;
            if d == 0.0 {
                continue;
            }
            let dm = dmin_all * (sc_bytes[j] >> 4) as f32;
            for ii in 0..16 {
                let q = nearest_int((x[16 * j + ii] + dm) / d).clamp(0, 3);
                l[16 * j + ii] = q as u8;
            }
        }
        pack_2bit(&l, qs);
    }
}
