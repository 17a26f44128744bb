//! Run-time CPU feature checks and small reductions written so the compiler vectorizes them
//! (independent accumulators instead of one serial sum).

/// AVX2 + FMA available (cached by std after the first call).
#[inline]
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Sum with 16 independent lanes.
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let c = x.chunks_exact(16);
    let r = c.remainder();
    for v in c {
        for i in 0..16 {
            acc[i] += v[i];
        }
    }
    acc.iter().sum::<f32>() + r.iter().sum::<f32>()
}

/// Σ exp(x_i - m) in f64 (f32 exponentials in 16 lanes, flushed to f64 every 1024 values so a
/// 262k-entry row keeps its precision).
pub fn sum_exp_shifted(x: &[f32], m: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: checked above.
        return unsafe { sum_exp_shifted_avx2(x, m) };
    }
    sum_exp_shifted_body(x, m)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sum_exp_shifted_avx2(x: &[f32], m: f32) -> f64 {
    sum_exp_shifted_body(x, m)
}

#[inline(always)]
fn sum_exp_shifted_body(x: &[f32], m: f32) -> f64 {
    let mut total = 0f64;
    for block in x.chunks(1024) {
        let mut acc = [0f32; 16];
        let c = block.chunks_exact(16);
        let r = c.remainder();
        for v in c {
            for i in 0..16 {
                acc[i] += crate::ops::fast_exp(v[i] - m);
            }
        }
        total += acc.iter().sum::<f32>() as f64
            + r.iter().map(|v| crate::ops::fast_exp(v - m)).sum::<f32>() as f64;
    }
    total
}

/// Largest value (NaN-ignoring), 16 lanes.
#[inline]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let c = x.chunks_exact(16);
    let r = c.remainder();
    for v in c {
        for i in 0..16 {
            acc[i] = acc[i].max(v[i]);
        }
    }
    acc.iter()
        .chain(r)
        .copied()
        .fold(f32::NEG_INFINITY, f32::max)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reductions_match_plain_sums() {
        let x: Vec<f32> = (0..5000)
            .map(|i| ((i * 37) % 101) as f32 * 0.01 - 0.5)
            .collect();
        let m = super::max(&x);
        assert_eq!(m, x.iter().copied().fold(f32::NEG_INFINITY, f32::max));
        let want: f64 = x.iter().map(|v| ((*v - m) as f64).exp()).sum();
        let got = super::sum_exp_shifted(&x, m);
        assert!(((got - want) / want).abs() < 1e-6, "{got} vs {want}");
        let s: f64 = x.iter().map(|v| *v as f64).sum();
        assert!((super::sum(&x) as f64 - s).abs() < 1e-3);
    }
}
