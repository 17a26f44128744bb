//! Element-wise and row-wise ops on f32 activations.

/// RMSNorm of each `dim`-sized row of `x` in place: `x / rms(x) * (offset + w)`.
/// `offset` is 1.0 for Gemma checkpoints in HF layout (which store `w - 1`), else 0.0.
pub fn rmsnorm(x: &mut [f32], w: &[f32], eps: f32, offset: f32) {
    let dim = w.len();
    for row in x.chunks_exact_mut(dim) {
        let ss: f64 = row.iter().map(|v| (*v as f64) * (*v as f64)).sum();
        let inv = 1.0 / ((ss / dim as f64) as f32 + eps).sqrt();
        for (v, g) in row.iter_mut().zip(w) {
            *v = *v * inv * (offset + g);
        }
    }
}

/// How rotary embeddings pair the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Dimension i is paired with i + head_dim/2 (HF `rotate_half`, GPT-NeoX).
    Neox,
    /// Dimension 2i is paired with 2i+1 (llama2.c, GGUF llama with its permuted Q/K).
    Interleaved,
}

/// Precomputed inverse frequencies for one rope configuration.
#[derive(Debug, Clone)]
pub struct Rope {
    pub style: RopeStyle,
    /// Rotated dimensions per head (≤ head_dim).
    pub rot_dim: usize,
    pub inv_freq: Vec<f32>,
    /// Multiplier on cos/sin (YaRN attention factor); 1.0 otherwise.
    pub mscale: f32,
}

impl Rope {
    /// Rotate the heads of `x` (`tokens × n_heads × head_dim`) for positions `pos0..pos0+tokens`.
    pub fn apply(&self, x: &mut [f32], n_heads: usize, head_dim: usize, pos0: usize) {
        let half = self.rot_dim / 2;
        let tokens = x.len() / (n_heads * head_dim);
        let mut cos = vec![0f32; half];
        let mut sin = vec![0f32; half];
        for t in 0..tokens {
            let p = (pos0 + t) as f32;
            for i in 0..half {
                let a = p * self.inv_freq[i];
                cos[i] = a.cos() * self.mscale;
                sin[i] = a.sin() * self.mscale;
            }
            for h in 0..n_heads {
                let v = &mut x[(t * n_heads + h) * head_dim..(t * n_heads + h + 1) * head_dim];
                match self.style {
                    RopeStyle::Neox => {
                        for i in 0..half {
                            let (a, b) = (v[i], v[i + half]);
                            v[i] = a * cos[i] - b * sin[i];
                            v[i + half] = b * cos[i] + a * sin[i];
                        }
                    }
                    RopeStyle::Interleaved => {
                        for i in 0..half {
                            let (a, b) = (v[2 * i], v[2 * i + 1]);
                            v[2 * i] = a * cos[i] - b * sin[i];
                            v[2 * i + 1] = b * cos[i] + a * sin[i];
                        }
                    }
                }
            }
        }
    }
}

/// `e^x` for f32 without a libm call, so loops over it vectorize. Range reduction
/// `x = n·ln2 + r`, |r| ≤ ln2/2, then a degree-6 polynomial: relative error below 3e-7 (2–3 ulp)
/// over the whole range (tested against f64 exp); exact 0 below -87.3, +inf above 88.7.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.5, 88.7);
    // Round to nearest by the 1.5·2^23 trick: `f32::round` is a libm call without SSE4.1 and
    // would stop the loops around this function from vectorizing.
    const MAGIC: f32 = 12_582_912.0;
    let n = (x * LOG2E + MAGIC) - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Taylor coefficients 1/k! up to r^6.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n through the exponent bits; n in [-127, 128] after the clamp. Split in two factors so
    // n = 128 and n = -127 stay representable.
    let n = n as i32;
    let a = n / 2;
    let b = n - a;
    let pa = f32::from_bits(((a + 127) as u32) << 23);
    let pb = f32::from_bits(((b + 127) as u32) << 23);
    let y = p * pa * pb;
    if x <= -87.4 {
        0.0
    } else {
        y
    }
}

#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + fast_exp(-x))
}

/// GELU with the tanh approximation (`gelu_pytorch_tanh`), with tanh(u) = 1 - 2/(e^{2u} + 1).
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // sqrt(2/pi)
    let u = C * (x + 0.044715 * x * x * x);
    let t = 1.0 - 2.0 / (fast_exp(2.0 * u) + 1.0);
    0.5 * x * (1.0 + t)
}

/// `gate[i] = act(gate[i]) * up[i]`, the gated-MLP combine, as tight loops per activation.
pub fn gated_activation(gate: &mut [f32], up: &[f32], gelu: bool) {
    if gelu {
        for (a, b) in gate.iter_mut().zip(up) {
            *a = gelu_tanh(*a) * b;
        }
    } else {
        for (a, b) in gate.iter_mut().zip(up) {
            *a = silu(*a) * b;
        }
    }
}

/// Softmax in place, in f32 with max subtraction.
pub fn softmax(x: &mut [f32]) {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut s = 0f32;
    for v in x.iter_mut() {
        *v = fast_exp(*v - m);
        s += *v;
    }
    let inv = 1.0 / s;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `a += b` element-wise.
pub fn add_assign(a: &mut [f32], b: &[f32]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// Online log-sum-exp: fold one slice of a row into a running (max, Σ exp(x − max)), so a row can
/// be scored slice by slice; the result is `max + ln(sum)`. Start from (−∞, 0).
pub fn lse_accumulate(slice: &[f32], max: &mut f64, sum: &mut f64) {
    if slice.is_empty() {
        return;
    }
    let mf = crate::simd::max(slice);
    let m = mf as f64;
    let s = crate::simd::sum_exp_shifted(slice, mf);
    if m > *max {
        *sum = *sum * (*max - m).exp() + s;
        *max = m;
    } else {
        *sum += s * (m - *max).exp();
    }
}

/// log-sum-exp of a row, in f64 for the perplexity sums.
pub fn log_sum_exp(x: &[f32]) -> f64 {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let s: f64 = x.iter().map(|v| ((*v as f64) - m).exp()).sum();
    m + s.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_styles_agree_up_to_permutation() {
        // Interleaved on a permuted vector equals Neox on the original.
        let hd = 8;
        let rope_n = Rope {
            style: RopeStyle::Neox,
            rot_dim: hd,
            inv_freq: vec![1.0, 0.1, 0.01, 0.001],
            mscale: 1.0,
        };
        let rope_i = Rope {
            style: RopeStyle::Interleaved,
            ..rope_n.clone()
        };
        let x: Vec<f32> = (0..hd).map(|i| i as f32 * 0.3 - 1.0).collect();
        let perm: Vec<usize> = (0..hd / 2).flat_map(|i| [i, i + hd / 2]).collect();
        let mut a = x.clone();
        rope_n.apply(&mut a, 1, hd, 5);
        let mut b: Vec<f32> = perm.iter().map(|&p| x[p]).collect();
        rope_i.apply(&mut b, 1, hd, 5);
        for (k, &p) in perm.iter().enumerate() {
            assert!((a[p] - b[k]).abs() < 1e-6);
        }
    }

    #[test]
    fn rmsnorm_unit() {
        let mut x = vec![3.0f32, 4.0];
        rmsnorm(&mut x, &[1.0, 2.0], 0.0, 0.0);
        let r = (12.5f32).sqrt();
        assert!((x[0] - 3.0 / r).abs() < 1e-6 && (x[1] - 8.0 / r).abs() < 1e-6);
    }

    /// Slice-by-slice log-sum-exp equals the f64 one-pass value (rel 1e-6) for any split.
    #[test]
    fn lse_accumulate_matches_one_pass() {
        let mut seed = 12345u64;
        for n in [1usize, 7, 100, 5000] {
            let x: Vec<f32> = (0..n)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((seed >> 40) as f32 / (1u64 << 24) as f32) * 40.0 - 20.0
                })
                .collect();
            let m = x
                .iter()
                .map(|v| *v as f64)
                .fold(f64::NEG_INFINITY, f64::max);
            let want = m + x.iter().map(|v| (*v as f64 - m).exp()).sum::<f64>().ln();
            for slice in [1usize, 3, 64, 4096] {
                let (mut mx, mut s) = (f64::NEG_INFINITY, 0f64);
                for c in x.chunks(slice) {
                    lse_accumulate(c, &mut mx, &mut s);
                }
                let got = mx + s.ln();
                assert!(
                    ((got - want) / want.abs().max(1.0)).abs() < 1e-6,
                    "n {n} slice {slice}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn fast_exp_matches_f64_exp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.5 {
            let want = (x as f64).exp();
            let got = fast_exp(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x += 0.0173;
        }
        assert!(worst < 3e-7, "fast_exp worst relative error {worst:e}");
        assert_eq!(fast_exp(-200.0), 0.0);
        assert_eq!(fast_exp(0.0), 1.0);
    }

    #[test]
    fn gelu_tanh_matches_reference() {
        for i in -2000..2000 {
            let x = i as f32 * 0.005;
            let xf = x as f64;
            let want = 0.5
                * xf
                * (1.0
                    + ((2.0f64 / std::f64::consts::PI).sqrt() * (xf + 0.044715 * xf.powi(3)))
                        .tanh());
            let got = gelu_tanh(x) as f64;
            assert!(
                (got - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "gelu({x}) = {got}, want {want}"
            );
        }
    }

    #[test]
    fn softmax_sums_to_one() {
        let mut x = vec![1.0f32, 2.0, 3.0, -1e4];
        softmax(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[3] == 0.0);
    }
}
