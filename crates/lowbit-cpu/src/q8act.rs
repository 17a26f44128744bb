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

/// Quantize `x` (a multiple of 32 values) into `out` (`x.len() / 32` blocks): per block
/// `d = max|x| / 127`, `q = round(x / d)` (ties away from zero), as llama.cpp's Q8_0.
pub fn quantize_q8(x: &[f32], out: &mut [Q8Block]) {
    assert_eq!(
        x.len() % QA,
        0,
        "activation length {} is not a multiple of {QA}",
        x.len()
    );
    assert_eq!(out.len(), x.len() / QA, "wrong number of activation blocks");
    for (xb, ob) in x.chunks_exact(QA).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sums = [0i32; 2];
        for (i, (q, v)) in ob.qs.iter_mut().zip(xb).enumerate() {
            // NaN becomes 0 through the saturating cast; |v * id| <= 127 up to rounding.
            let r = (v * id).round().clamp(-127.0, 127.0) as i8;
            *q = r;
            sums[i / 16] += r as i32;
        }
        ob.d = d;
        ob.sum = sums[0] + sums[1];
        ob.half_sums = sums;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut z = vec![Q8Block::default(); 1];
        quantize_q8(&[0.0; 32], &mut z);
        assert_eq!(z[0].d, 0.0);
        assert!(z[0].qs.iter().all(|&q| q == 0));
    }
}
