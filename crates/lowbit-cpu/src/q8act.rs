//! Activations quantized to 8-bit blocks of 32 for the integer dot-product kernels.
//!
//! Every weight format the fused kernels handle has blocks or sub-blocks of 32 (or 16) values, so
//! one activation block of 32 lines up with one weight block or sub-block and both scales can be
//! applied once per 32 products. The block also carries the sums of its quants, which the
//! unsigned-weight formats need (`Σ (q - z) a = Σ q a - z Σ a`).

/// Values per activation block.
pub const QA: usize = 32;

/// 32 activations as `d * qs[i]`, with `qs` in -127..=127.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C, align(16))]
pub struct Q8Block {
    pub qs: [i8; QA],
    pub d: f32,
    /// Σ qs.
    pub sum: i32,
    /// Σ qs[0..16] and Σ qs[16..32] (formats with 16-value sub-blocks).
    pub half_sums: [i32; 2],
}

/// Round to the nearest integer, ties to even (as llama.cpp's SIMD Q8_0 quantizer), for
/// |v| < 2^22. Written with the 1.5·2^23 trick because `f32::round` is a libm call on baseline
/// x86-64, which keeps the quantization loops from vectorizing.
#[inline(always)]
pub fn round_even(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

/// Quantize `x` (a multiple of 32 values) into `out` (`x.len() / 32` blocks): per block
/// `d = max|x| / 127`, `q = round(x / d)` (ties to even), as llama.cpp's Q8_0.
pub fn quantize_q8(x: &[f32], out: &mut [Q8Block]) {
    assert_eq!(
        x.len() % QA,
        0,
        "activation length {} is not a multiple of {QA}",
        x.len()
    );
    assert_eq!(out.len(), x.len() / QA, "wrong number of activation blocks");
    #[cfg(target_arch = "x86_64")]
    if crate::quant_dot::Isa::detect() == crate::quant_dot::Isa::Avx512Vnni {
        // SAFETY: AVX-512 F/BW checked at run time; `x` holds 32 values per block of `out`.
        unsafe { quantize_q8_avx512(x, out) };
        return;
    }
    quantize_q8_scalar(x, out);
}

/// The scalar reference of [`quantize_q8`] (same results for finite inputs).
pub fn quantize_q8_scalar(x: &[f32], out: &mut [Q8Block]) {
    for (xb, ob) in x.chunks_exact(QA).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sums = [0i32; 2];
        for (i, (q, v)) in ob.qs.iter_mut().zip(xb).enumerate() {
            // NaN becomes 0 through the saturating cast; |v * id| <= 127 up to rounding.
            let r = round_even((v * id).clamp(-127.0, 127.0)) as i8;
            *q = r;
            sums[i / 16] += r as i32;
        }
        ob.d = d;
        ob.sum = sums[0] + sums[1];
        ob.half_sums = sums;
    }
}

/// [`quantize_q8`] on 512-bit vectors: the float→int conversion rounds to nearest even (the
/// default MXCSR mode), as [`round_even`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_q8_avx512(x: &[f32], out: &mut [Q8Block]) {
    use std::arch::x86_64::*;
    for (xb, ob) in x.chunks_exact(QA).zip(out.iter_mut()) {
        let v0 = _mm512_loadu_ps(xb.as_ptr());
        let v1 = _mm512_loadu_ps(xb.as_ptr().add(16));
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        let d = amax / 127.0;
        let id = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        let lim = _mm512_set1_epi32(127);
        let neg = _mm512_set1_epi32(-127);
        let clamp = |v: __m512| {
            _mm512_max_epi32(
                _mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v, id)), lim),
                neg,
            )
        };
        let (q0, q1) = (clamp(v0), clamp(v1));
        _mm_storeu_si128(ob.qs.as_mut_ptr() as *mut __m128i, _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128(
            ob.qs.as_mut_ptr().add(16) as *mut __m128i,
            _mm512_cvtepi32_epi8(q1),
        );
        let (s0, s1) = (_mm512_reduce_add_epi32(q0), _mm512_reduce_add_epi32(q1));
        ob.d = d;
        ob.sum = s0 + s1;
        ob.half_sums = [s0, s1];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The dispatched (vector) quantizer equals the scalar reference on random blocks,
        /// including ones with exact halves and zeros.
        #[test]
        fn vector_path_matches_scalar(v in proptest::collection::vec(-300i32..300, 32..200)) {
            let n = v.len() / 32 * 32;
            let x: Vec<f32> = v[..n].iter().map(|&i| i as f32 * 0.25).collect();
            let mut a = vec![Q8Block::default(); n / 32];
            let mut b = a.clone();
            quantize_q8(&x, &mut a);
            quantize_q8_scalar(&x, &mut b);
            proptest::prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn roundtrip_error_is_half_a_step() {
        let x: Vec<f32> = (0..96)
            .map(|i| ((i * 29) % 53) as f32 * 0.37 - 9.0)
            .collect();
        let mut b = vec![Q8Block::default(); 3];
        quantize_q8(&x, &mut b);
        for (xb, bb) in x.chunks(32).zip(&b) {
            assert_eq!(bb.sum, bb.qs.iter().map(|&q| q as i32).sum::<i32>());
            assert_eq!(bb.half_sums[0] + bb.half_sums[1], bb.sum);
            for (v, q) in xb.iter().zip(bb.qs) {
                assert!((v - bb.d * q as f32).abs() <= bb.d * 0.5 + 1e-6);
            }
        }
        // The vector path gives the very same blocks.
        let mut v = vec![Q8Block::default(); 3];
        quantize_q8_scalar(&x, &mut v);
        assert_eq!(v, b);
        let mut z = vec![Q8Block::default(); 1];
        quantize_q8(&[0.0; 32], &mut z);
        assert_eq!(z[0].d, 0.0);
        assert!(z[0].qs.iter().all(|&q| q == 0));
    }
}
