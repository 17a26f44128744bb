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

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn q8_0_avx512(src: &[f32], dst: &mut [u8]) {
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

/// Q4_0 (reference `quant::legacy::q4_0`): d = max / -8 with max the first element of
/// largest magnitude (+0.0 for a block without non-zero non-NaN values), codes
/// min(15, uint8(trunc(x / d + 8.5))); `cvttps2dq` truncates and gives numpy's x86 cast bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn q4_0_avx512(src: &[f32], dst: &mut [u8]) {
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
