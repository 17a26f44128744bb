//! The 32-value GGML block encoders in explicit AVX2 / AVX-512 intrinsics: Q8_0, Q4_0 and
//! MXFP4, each bit-identical to its reference in `quant::legacy` (gguf-py's numpy quantizers):
//! - absmax ignores NaN: `max_ps(|x|, acc)` returns acc when |x| is NaN, like `f32::max`;
//! - scales are stored with F16C's round-to-nearest-even conversion, which equals
//!   `half::f16::from_f32` for every non-NaN value (the scales are never NaN);
//! - `roundf` (half away from zero) is trunc(v) plus sign(v) where |v - trunc(v)| >= 0.5, both
//!   steps exact;
//! - numpy's uint8 cast (`np_u8`) is the low byte of `cvttps2dq`: NaN, inf and values outside
//!   i32 give 0x80000000, whose low byte is 0, exactly what the reference returns.

#![cfg(target_arch = "x86_64")]

use crate::quant::legacy::inv_or_zero;
use std::arch::x86_64::*;

/// f32 -> IEEE f16 bits, round to nearest even (F16C).
#[target_feature(enable = "f16c")]
#[inline]
unsafe fn f16_bits(v: f32) -> u16 {
    _mm_extract_epi16::<0>(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(v))) as u16
}

/// Q8_0 one block at a time (the tail after the 16-block groups of `q8_0_avx512`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn q8_0_avx512_blocks(src: &[f32], dst: &mut [u8]) {
    let sign = _mm512_set1_epi32(i32::MIN);
    let abs_mask = _mm512_set1_epi32(i32::MAX);
    let half = _mm512_set1_ps(0.5);
    let one = _mm512_set1_ps(1.0);
    let zero = _mm512_setzero_ps();
    for (x, b) in src.chunks_exact(32).zip(dst.chunks_exact_mut(34)) {
        let x0 = _mm512_loadu_ps(x.as_ptr());
        let x1 = _mm512_loadu_ps(x.as_ptr().add(16));
        let a0 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x0), abs_mask));
        let a1 = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x1), abs_mask));
        let m = _mm512_max_ps(a1, _mm512_max_ps(a0, zero));
        let amax = _mm512_reduce_max_ps(m);
        let d = amax / 127.0;
        let id = _mm512_set1_ps(inv_or_zero(d));
        b[..2].copy_from_slice(&f16_bits(d).to_le_bytes());
        for (h, xv) in [x0, x1].into_iter().enumerate() {
            let v = _mm512_mul_ps(xv, id);
            let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
            let frac = _mm512_sub_ps(v, t);
            let frac_abs =
                _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(frac), abs_mask));
            let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(frac_abs, half);
            let sgn_one = _mm512_castsi512_ps(_mm512_or_si512(
                _mm512_castps_si512(one),
                _mm512_and_si512(_mm512_castps_si512(v), sign),
            ));
            let r = _mm512_mask_add_ps(t, up, t, sgn_one);
            let q = _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(r));
            _mm_storeu_si128(b.as_mut_ptr().add(2 + 16 * h) as *mut __m128i, q);
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q8_0_avx2(src: &[f32], dst: &mut [u8]) {
    let sign = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN));
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
    let half = _mm256_set1_ps(0.5);
    let one = _mm256_set1_ps(1.0);
    let byte = _mm256_set1_epi32(0xFF);
    // After packus32 + packus16 the bytes of the four vectors sit interleaved by 128-bit lane.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (x, b) in src.chunks_exact(32).zip(dst.chunks_exact_mut(34)) {
        let xs = [
            _mm256_loadu_ps(x.as_ptr()),
            _mm256_loadu_ps(x.as_ptr().add(8)),
            _mm256_loadu_ps(x.as_ptr().add(16)),
            _mm256_loadu_ps(x.as_ptr().add(24)),
        ];
        let mut m = _mm256_setzero_ps();
        for xv in xs {
            m = _mm256_max_ps(_mm256_and_ps(xv, abs_mask), m);
        }
        // Horizontal max of non-NaN values (order does not matter).
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let m1 = _mm_max_ss(m2, _mm_shuffle_ps::<1>(m2, m2));
        let amax = _mm_cvtss_f32(m1);
        let d = amax / 127.0;
        let id = _mm256_set1_ps(inv_or_zero(d));
        b[..2].copy_from_slice(&f16_bits(d).to_le_bytes());
        let mut qi = [_mm256_setzero_si256(); 4];
        for (k, xv) in xs.into_iter().enumerate() {
            let v = _mm256_mul_ps(xv, id);
            let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
            let frac_abs = _mm256_and_ps(_mm256_sub_ps(v, t), abs_mask);
            let up = _mm256_cmp_ps::<_CMP_GE_OQ>(frac_abs, half);
            let sgn_one = _mm256_or_ps(one, _mm256_and_ps(v, sign));
            let r = _mm256_add_ps(t, _mm256_and_ps(up, sgn_one));
            qi[k] = _mm256_and_si256(_mm256_cvttps_epi32(r), byte);
        }
        let p01 = _mm256_packus_epi32(qi[0], qi[1]);
        let p23 = _mm256_packus_epi32(qi[2], qi[3]);
        let p = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(p01, p23), order);
        _mm256_storeu_si256(b.as_mut_ptr().add(2) as *mut __m256i, p);
    }
}

/// MXFP4 block exponent and half-scale from the block's absmax (the reference's scalar steps).
#[inline(always)]
fn mxfp4_scale(amax: f32) -> (u8, f32) {
    use crate::quant::legacy::{e8m0_to_f32_half, np_u8};
    let e = if amax > 0.0 {
        np_u8(super::kernels::floor_log2_fast(amax) - 2.0 + 127.0)
    } else {
        0
    };
    (e, e8m0_to_f32_half(e))
}

/// MXFP4 (reference `quant::legacy::mxfp4`): nearest of the 16 `kvalues * d` by f32 absolute
/// error, the first entry on ties (strict `<`, so NaN keeps entry 0), 16 values per register.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn mxfp4_avx512(src: &[f32], dst: &mut [u8]) {
    use crate::quant::legacy::KVALUES_MXFP4;
    let abs_mask = _mm512_set1_epi32(i32::MAX);
    let abs = |v: __m512| _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), abs_mask));
    for (x, b) in src.chunks_exact(32).zip(dst.chunks_exact_mut(17)) {
        let xs = [
            _mm512_loadu_ps(x.as_ptr()),
            _mm512_loadu_ps(x.as_ptr().add(16)),
        ];
        let m = _mm512_max_ps(abs(xs[1]), _mm512_max_ps(abs(xs[0]), _mm512_setzero_ps()));
        let (e, d) = mxfp4_scale(_mm512_reduce_max_ps(m));
        let mut best = [_mm512_setzero_si512(); 2];
        let t0 = _mm512_set1_ps(KVALUES_MXFP4[0] * d);
        let mut best_err = [abs(_mm512_sub_ps(t0, xs[0])), abs(_mm512_sub_ps(t0, xs[1]))];
        for (k, &t) in KVALUES_MXFP4.iter().enumerate().skip(1) {
            let td = _mm512_set1_ps(t * d);
            let kv = _mm512_set1_epi32(k as i32);
            for h in 0..2 {
                let err = abs(_mm512_sub_ps(td, xs[h]));
                let better = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(err, best_err[h]);
                best_err[h] = _mm512_mask_mov_ps(best_err[h], better, err);
                best[h] = _mm512_mask_mov_epi32(best[h], better, kv);
            }
        }
        b[0] = e;
        let packed = _mm512_or_si512(best[0], _mm512_slli_epi32::<4>(best[1]));
        _mm_storeu_si128(
            b.as_mut_ptr().add(1) as *mut __m128i,
            _mm512_cvtepi32_epi8(packed),
        );
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn mxfp4_avx2(src: &[f32], dst: &mut [u8]) {
    use crate::quant::legacy::KVALUES_MXFP4;
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
    for (x, b) in src.chunks_exact(32).zip(dst.chunks_exact_mut(17)) {
        let xs = [
            _mm256_loadu_ps(x.as_ptr()),
            _mm256_loadu_ps(x.as_ptr().add(8)),
            _mm256_loadu_ps(x.as_ptr().add(16)),
            _mm256_loadu_ps(x.as_ptr().add(24)),
        ];
        let mut m = _mm256_setzero_ps();
        for xv in xs {
            m = _mm256_max_ps(_mm256_and_ps(xv, abs_mask), m);
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let m1 = _mm_max_ss(m2, _mm_shuffle_ps::<1>(m2, m2));
        let (e, d) = mxfp4_scale(_mm_cvtss_f32(m1));
        let t0 = _mm256_set1_ps(KVALUES_MXFP4[0] * d);
        let mut best_err = xs.map(|xv| _mm256_and_ps(_mm256_sub_ps(t0, xv), abs_mask));
        let mut best = [_mm256_setzero_ps(); 4]; // entry indices as i32 bits
        for (k, &t) in KVALUES_MXFP4.iter().enumerate().skip(1) {
            let td = _mm256_set1_ps(t * d);
            let kv = _mm256_castsi256_ps(_mm256_set1_epi32(k as i32));
            for h in 0..4 {
                let err = _mm256_and_ps(_mm256_sub_ps(td, xs[h]), abs_mask);
                let better = _mm256_cmp_ps::<_CMP_LT_OQ>(err, best_err[h]);
                best_err[h] = _mm256_blendv_ps(best_err[h], err, better);
                best[h] = _mm256_blendv_ps(best[h], kv, better);
            }
        }
        b[0] = e;
        let q = best.map(|v| _mm256_castps_si256(v));
        // Byte l = q[l] | q[l + 16] << 4: vectors 0,1 hold values 0..16, vectors 2,3 16..32.
        let c0 = _mm256_or_si256(q[0], _mm256_slli_epi32::<4>(q[2]));
        let c1 = _mm256_or_si256(q[1], _mm256_slli_epi32::<4>(q[3]));
        let p = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(c0, c1));
        let bytes = _mm_packus_epi16(_mm256_castsi256_si128(p), _mm256_extracti128_si256::<1>(p));
        _mm_storeu_si128(b.as_mut_ptr().add(1) as *mut __m128i, bytes);
    }
}

/// Q4_0 one block at a time (reference `quant::legacy::q4_0`): d = max / -8 with max the first element of
/// largest magnitude (+0.0 for a block without non-zero non-NaN values), codes
/// min(15, uint8(trunc(x / d + 8.5))); `cvttps2dq` truncates and gives numpy's x86 cast bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn q4_0_avx512_blocks(src: &[f32], dst: &mut [u8]) {
    let abs_mask = _mm512_set1_epi32(i32::MAX);
    let abs = |v: __m512| _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), abs_mask));
    let byte = _mm512_set1_epi32(0xFF);
    let fifteen = _mm512_set1_epi32(15);
    let bias = _mm512_set1_ps(8.5);
    for (x, b) in src.chunks_exact(32).zip(dst.chunks_exact_mut(18)) {
        let xs = [
            _mm512_loadu_ps(x.as_ptr()),
            _mm512_loadu_ps(x.as_ptr().add(16)),
        ];
        let a = [abs(xs[0]), abs(xs[1])];
        let m = _mm512_max_ps(a[1], _mm512_max_ps(a[0], _mm512_setzero_ps()));
        let amax = _mm512_reduce_max_ps(m);
        let max = if amax == 0.0 {
            0.0
        } else {
            let av = _mm512_set1_ps(amax);
            let hits = (_mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a[0], av) as u32)
                | ((_mm512_cmp_ps_mask::<_CMP_EQ_OQ>(a[1], av) as u32) << 16);
            x[hits.trailing_zeros() as usize & 31]
        };
        let d = max / -8.0;
        let id = _mm512_set1_ps(inv_or_zero(d));
        b[..2].copy_from_slice(&f16_bits(d).to_le_bytes());
        let q = xs.map(|xv| {
            let v = _mm512_add_ps(_mm512_mul_ps(xv, id), bias);
            _mm512_min_epu32(_mm512_and_si512(_mm512_cvttps_epi32(v), byte), fifteen)
        });
        let packed = _mm512_or_si512(q[0], _mm512_slli_epi32::<4>(q[1]));
        _mm_storeu_si128(
            b.as_mut_ptr().add(2) as *mut __m128i,
            _mm512_cvtepi32_epi8(packed),
        );
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q4_0_avx2(src: &[f32], dst: &mut [u8]) {
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
    let byte = _mm256_set1_epi32(0xFF);
    let fifteen = _mm256_set1_epi32(15);
    let bias = _mm256_set1_ps(8.5);
    for (x, b) in src.chunks_exact(32).zip(dst.chunks_exact_mut(18)) {
        let xs = [
            _mm256_loadu_ps(x.as_ptr()),
            _mm256_loadu_ps(x.as_ptr().add(8)),
            _mm256_loadu_ps(x.as_ptr().add(16)),
            _mm256_loadu_ps(x.as_ptr().add(24)),
        ];
        let a = xs.map(|v| _mm256_and_ps(v, abs_mask));
        let mut m = _mm256_setzero_ps();
        for av in a {
            m = _mm256_max_ps(av, m);
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let m1 = _mm_max_ss(m2, _mm_shuffle_ps::<1>(m2, m2));
        let amax = _mm_cvtss_f32(m1);
        let max = if amax == 0.0 {
            0.0
        } else {
            let av = _mm256_set1_ps(amax);
            let mut hits = 0u32;
            for (k, v) in a.into_iter().enumerate() {
                let eq = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(v, av)) as u32;
                hits |= eq << (8 * k);
            }
            x[hits.trailing_zeros() as usize & 31]
        };
        let d = max / -8.0;
        let id = _mm256_set1_ps(inv_or_zero(d));
        b[..2].copy_from_slice(&f16_bits(d).to_le_bytes());
        let q = xs.map(|xv| {
            let v = _mm256_add_ps(_mm256_mul_ps(xv, id), bias);
            _mm256_min_epu32(_mm256_and_si256(_mm256_cvttps_epi32(v), byte), fifteen)
        });
        let c0 = _mm256_or_si256(q[0], _mm256_slli_epi32::<4>(q[2]));
        let c1 = _mm256_or_si256(q[1], _mm256_slli_epi32::<4>(q[3]));
        let p = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(c0, c1));
        let bytes = _mm_packus_epi16(_mm256_castsi256_si128(p), _mm256_extracti128_si256::<1>(p));
        _mm_storeu_si128(b.as_mut_ptr().add(2) as *mut __m128i, bytes);
    }
}

/// Software prefetch of the block `PREFETCH` bytes ahead (both of its cache lines): one core
/// streaming from L3 is limited by how many misses are in flight, and the hardware prefetcher
/// alone does not keep enough of them going. Prefetching past the end of the input is harmless
/// (prefetches never fault).
#[inline(always)]
unsafe fn prefetch_ahead(p: *const f32) {
    const PREFETCH: usize = 2048;
    let ahead = (p as *const i8).wrapping_add(PREFETCH);
    _mm_prefetch::<_MM_HINT_T0>(ahead);
    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
}

/// Blocks per group in the grouped AVX-512 encoders: one register of per-block scales.
const GROUP: usize = 16;

/// Per-lane maxima (or minima) of 16 vectors reduced to one vector whose lane k is the max (min)
/// of vector k: a transposing tree of shuffles, 31 shuffles and 15 max for 16 blocks instead of
/// 16 separate horizontal reductions. Inputs must hold no NaN (then max/min are associative and
/// commutative, so the order of the tree does not matter).
macro_rules! transpose_reduce16 {
    ($name:ident, $op:ident) => {
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn $name(v: &[__m512; 16]) -> __m512 {
            // 256-bit halves: t[i] = [v[2i] partial x8, v[2i+1] partial x8].
            let mut t = [_mm512_setzero_ps(); 8];
            for i in 0..8 {
                let (a, b) = (v[2 * i], v[2 * i + 1]);
                t[i] = $op(
                    _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
                    _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
                );
            }
            // 128-bit lanes: u[m] = [v[4m], v[4m+1], v[4m+2], v[4m+3]] partials x4.
            let mut u = [_mm512_setzero_ps(); 4];
            for m in 0..4 {
                let (a, b) = (t[2 * m], t[2 * m + 1]);
                u[m] = $op(
                    _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
                    _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
                );
            }
            // Pairs within 128-bit lanes: w[p] lane j = [v[8p+j] x2, v[8p+4+j] x2].
            let mut w = [_mm512_setzero_ps(); 2];
            for p in 0..2 {
                let (a, b) = (u[2 * p], u[2 * p + 1]);
                w[p] = $op(
                    _mm512_shuffle_ps::<0b01_00_01_00>(a, b),
                    _mm512_shuffle_ps::<0b11_10_11_10>(a, b),
                );
            }
            // Singles: lane 4j + i holds vector 4i + j; permute to lane k = vector k.
            let r = $op(
                _mm512_shuffle_ps::<0b10_00_10_00>(w[0], w[1]),
                _mm512_shuffle_ps::<0b11_01_11_01>(w[0], w[1]),
            );
            let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
            _mm512_permutexvar_ps(order, r)
        }
    };
}
transpose_reduce16!(transpose_max16, _mm512_max_ps);
transpose_reduce16!(transpose_min16, _mm512_min_ps);

/// `roundf` (half away from zero) then truncation by `cvttps2dq`: v + copysign(0.5 - 2^-25, v)
/// rounds (in f32, nearest even) to a value whose truncation is roundf(v) for every f32 v: below
/// a half the sum stays under the next integer, from a half on it reaches it, and from 2^23 on
/// (integers) the addend is below half an ulp. NaN and out-of-range values still give
/// 0x80000000, as the reference's cast expects.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn round_away_bias(v: __m512) -> __m512 {
    let sign = _mm512_set1_epi32(i32::MIN);
    let c = _mm512_set1_epi32(0x3EFF_FFFF); // 0.49999997 = 0.5 - 2^-25
                                            // (v & sign) | c in one instruction: truth table of (a & b) | c is 0xEA.
    let biased = _mm512_ternarylogic_epi32::<0xEA>(_mm512_castps_si512(v), sign, c);
    _mm512_add_ps(v, _mm512_castsi512_ps(biased))
}

/// Q8_0 in groups of 16 blocks: per-block absmax of the group reduced together, the 16 scales,
/// inverses and f16 conversions done in one register, then each block's codes. The tail
/// (fewer than 16 blocks) goes one block at a time. Same results as the reference.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn q8_0_avx512(src: &[f32], dst: &mut [u8]) {
    let abs_mask = _mm512_set1_epi32(i32::MAX);
    let abs = |v: __m512| _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v), abs_mask));
    let groups = src.len() / (32 * GROUP);
    let (head, tail) = src.split_at(groups * 32 * GROUP);
    let (dhead, dtail) = dst.split_at_mut(groups * 34 * GROUP);
    for (x, b) in head
        .chunks_exact(32 * GROUP)
        .zip(dhead.chunks_exact_mut(34 * GROUP))
    {
        let p = x.as_ptr();
        let mut m = [_mm512_setzero_ps(); GROUP];
        for (k, mk) in m.iter_mut().enumerate() {
            prefetch_ahead(p.add(32 * k));
            let x0 = _mm512_loadu_ps(p.add(32 * k));
            let x1 = _mm512_loadu_ps(p.add(32 * k + 16));
            // |x| first, then the accumulator as second operand: max_ps returns it for NaN.
            *mk = _mm512_max_ps(abs(x1), _mm512_max_ps(abs(x0), _mm512_setzero_ps()));
        }
        let amax = transpose_max16(&m);
        let d = _mm512_div_ps(amax, _mm512_set1_ps(127.0));
        let nonzero = _mm512_cmp_ps_mask::<_CMP_NEQ_OQ>(d, _mm512_setzero_ps());
        let id = _mm512_maskz_div_ps(nonzero, _mm512_set1_ps(1.0), d);
        let mut ids = [0f32; GROUP];
        let mut dh = [0u16; GROUP];
        _mm512_storeu_ps(ids.as_mut_ptr(), id);
        _mm256_storeu_si256(
            dh.as_mut_ptr() as *mut __m256i,
            _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(d),
        );
        for k in 0..GROUP {
            let o = b.as_mut_ptr().add(34 * k);
            (o as *mut [u8; 2]).write_unaligned(dh[k].to_le_bytes());
            let idv = _mm512_set1_ps(ids[k]);
            for h in 0..2 {
                let v = _mm512_mul_ps(_mm512_loadu_ps(p.add(32 * k + 16 * h)), idv);
                let q = _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(round_away_bias(v)));
                _mm_storeu_si128(o.add(2 + 16 * h) as *mut __m128i, q);
            }
        }
    }
    q8_0_avx512_blocks(tail, dtail);
}

/// Q4_0 in groups of 16 blocks. The signed absmax comes from each block's max and min: the one
/// of larger magnitude, unless both have the same magnitude (a block holding +a and -a as its
/// largest values), where the reference takes whichever comes first: those rare blocks are
/// resolved by the scalar scan. Max and min start at +0.0 and ignore NaN (max_ps/min_ps return
/// the second operand, the accumulator, for NaN or equal zeros), as the reference does.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn q4_0_avx512(src: &[f32], dst: &mut [u8]) {
    let bias = _mm512_set1_ps(8.5);
    let zero = _mm512_setzero_ps();
    let groups = src.len() / (32 * GROUP);
    let (head, tail) = src.split_at(groups * 32 * GROUP);
    let (dhead, dtail) = dst.split_at_mut(groups * 18 * GROUP);
    for (x, b) in head
        .chunks_exact(32 * GROUP)
        .zip(dhead.chunks_exact_mut(18 * GROUP))
    {
        let p = x.as_ptr();
        let mut hi = [zero; GROUP];
        let mut lo = [zero; GROUP];
        for k in 0..GROUP {
            prefetch_ahead(p.add(32 * k));
            let x0 = _mm512_loadu_ps(p.add(32 * k));
            let x1 = _mm512_loadu_ps(p.add(32 * k + 16));
            hi[k] = _mm512_max_ps(x1, _mm512_max_ps(x0, zero));
            lo[k] = _mm512_min_ps(x1, _mm512_min_ps(x0, zero));
        }
        let hi = transpose_max16(&hi);
        let lo = transpose_min16(&lo);
        let neg_lo = _mm512_castsi512_ps(_mm512_xor_si512(
            _mm512_castps_si512(lo),
            _mm512_set1_epi32(i32::MIN),
        ));
        // hi >= -lo: the max is hi (also for an all-zero block, where hi = +0.0).
        let take_hi = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(hi, neg_lo);
        let max = _mm512_mask_blend_ps(take_hi, lo, hi);
        let ties = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(hi, neg_lo)
            & _mm512_cmp_ps_mask::<_CMP_GT_OQ>(hi, zero);
        let max = if ties == 0 {
            max
        } else {
            let mut maxs = [0f32; GROUP];
            _mm512_storeu_ps(maxs.as_mut_ptr(), max);
            let mut t = ties;
            while t != 0 {
                let k = t.trailing_zeros() as usize;
                maxs[k] = crate::quant::legacy::signed_absmax(&x[32 * k..32 * k + 32]);
                t &= t - 1;
            }
            _mm512_loadu_ps(maxs.as_ptr())
        };
        let d = _mm512_div_ps(max, _mm512_set1_ps(-8.0));
        let nonzero = _mm512_cmp_ps_mask::<_CMP_NEQ_OQ>(d, zero);
        let id = _mm512_maskz_div_ps(nonzero, _mm512_set1_ps(1.0), d);
        let mut ids = [0f32; GROUP];
        let mut dh = [0u16; GROUP];
        _mm512_storeu_ps(ids.as_mut_ptr(), id);
        _mm256_storeu_si256(
            dh.as_mut_ptr() as *mut __m256i,
            _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(d),
        );
        // Two blocks per step: codes as i32 (4 vectors), packed to bytes with unsigned
        // saturation (the 0x80000000 of NaN / inf / out-of-range becomes 0, the low byte the
        // reference keeps; everything else is already in 0..=16), clamped to 15, then byte l of
        // each block's half 1 joins byte l of half 0 as its high nibble.
        let order = _mm512_setr_epi32(0, 4, 8, 12, 2, 6, 10, 14, 0, 0, 0, 0, 0, 0, 0, 0);
        let fifteen8 = _mm512_set1_epi8(15);
        for k in (0..GROUP).step_by(2) {
            let o = b.as_mut_ptr().add(18 * k);
            (o as *mut [u8; 2]).write_unaligned(dh[k].to_le_bytes());
            (o.add(18) as *mut [u8; 2]).write_unaligned(dh[k + 1].to_le_bytes());
            let code = |blk: usize, h: usize| {
                let idv = _mm512_set1_ps(ids[blk]);
                let xv = _mm512_loadu_ps(p.add(32 * blk + 16 * h));
                _mm512_cvttps_epi32(_mm512_add_ps(_mm512_mul_ps(xv, idv), bias))
            };
            // Per 128-bit lane j: words [k half 0, k half 1], [k+1 half 0, k+1 half 1] (4 each),
            // then bytes [k h0 | k h1 | k+1 h0 | k+1 h1] (values 4j..4j+4 of each half).
            let w0 = _mm512_packus_epi32(code(k, 0), code(k, 1));
            let w1 = _mm512_packus_epi32(code(k + 1, 0), code(k + 1, 1));
            let bytes = _mm512_min_epu8(_mm512_packus_epi16(w0, w1), fifteen8);
            // Half 1's bytes sit 4 bytes above half 0's: shift them onto bits 4..8.
            let nib = _mm512_or_si512(bytes, _mm512_srli_epi64::<28>(bytes));
            let packed = _mm512_permutexvar_epi32(order, nib);
            _mm_storeu_si128(o.add(2) as *mut __m128i, _mm512_castsi512_si128(packed));
            _mm_storeu_si128(
                o.add(20) as *mut __m128i,
                _mm512_extracti32x4_epi32::<1>(packed),
            );
        }
    }
    q4_0_avx512_blocks(tail, dtail);
}

/// The fast Q4_K encoder (reference `quant::kquants::q4_k_fast`) in AVX-512: the same
/// operations, with the sub-block min/max as vector min/max (NaN skipped: the accumulator is
/// the second operand) and horizontal reductions, whose order does not matter for non-NaN
/// values (a max that could be +0.0 or -0.0 gives the same bytes either way).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
pub(crate) unsafe fn q4_k_fast_avx512(src: &[f32], dst: &mut [u8]) {
    use crate::quant::kquants::q4_k_fast_head;
    const MAGIC: f32 = 12_582_912.0;
    let zero = _mm512_setzero_ps();
    let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
    let magic = _mm512_set1_ps(MAGIC);
    let fifteen = _mm512_set1_ps(15.0);
    for (x, b) in src.chunks_exact(256).zip(dst.chunks_exact_mut(144)) {
        let p = x.as_ptr();
        let mut scales = [0.0f32; 8];
        let mut mins = [0.0f32; 8];
        for j in 0..8 {
            let v0 = _mm512_loadu_ps(p.add(32 * j));
            let v1 = _mm512_loadu_ps(p.add(32 * j + 16));
            let lo = _mm512_reduce_min_ps(_mm512_min_ps(v1, _mm512_min_ps(v0, zero)));
            let mut hi = _mm512_reduce_max_ps(_mm512_max_ps(v1, _mm512_max_ps(v0, ninf)));
            if hi < lo {
                hi = lo; // an all-NaN sub-block
            }
            scales[j] = (hi - lo) / 15.0;
            mins[j] = -lo;
        }
        let (d, dmin, ls, lm) = q4_k_fast_head(&scales, &mins, b);
        // Codes of sub-block j, half h: round(clamp((x + dm) * idl, 0, 15)).
        let codes = |j: usize, h: usize| {
            let dl = d * ls[j] as f32;
            let dm = dmin * lm[j] as f32;
            let idl = if dl > 0.0 { 1.0 / dl } else { 0.0 };
            let v = _mm512_mul_ps(
                _mm512_add_ps(_mm512_loadu_ps(p.add(32 * j + 16 * h)), _mm512_set1_ps(dm)),
                _mm512_set1_ps(idl),
            );
            // max_ps(v, 0) maps NaN to 0, as the reference's NaN -> `as i32` does.
            let c = _mm512_min_ps(_mm512_max_ps(v, zero), fifteen);
            _mm512_cvttps_epi32(_mm512_sub_ps(_mm512_add_ps(c, magic), magic))
        };
        // Byte 32c + i: value 64c + i (sub-block 2c) low, value 64c + 32 + i (2c + 1) high.
        let q = b.as_mut_ptr().add(16);
        for c in 0..4 {
            for h in 0..2 {
                let packed =
                    _mm512_or_si512(codes(2 * c, h), _mm512_slli_epi32::<4>(codes(2 * c + 1, h)));
                _mm_storeu_si128(
                    q.add(32 * c + 16 * h) as *mut __m128i,
                    _mm512_cvtepi32_epi8(packed),
                );
            }
        }
    }
}
