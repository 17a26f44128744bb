//! Token sampling: greedy, or temperature + nucleus (top-p) with a seeded, documented generator.

/// SplitMix64: small, fast, reproducible across platforms; enough for sampling.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1) with 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, Clone)]
pub struct Sampler {
    pub temperature: f32,
    pub top_p: f32,
    rng: SplitMix64,
}

impl Sampler {
    pub fn new(temperature: f32, top_p: f32, seed: u64) -> Self {
        Sampler {
            temperature,
            top_p,
            rng: SplitMix64::new(seed),
        }
    }

    pub fn greedy() -> Self {
        Sampler::new(0.0, 1.0, 0)
    }

    /// Pick a token from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.temperature <= 0.0 {
            return argmax(logits) as u32;
        }
        let mut probs: Vec<(usize, f64)> = logits
            .iter()
            .map(|&l| (l / self.temperature) as f64)
            .enumerate()
            .collect();
        let m = probs.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0.0;
        for p in probs.iter_mut() {
            p.1 = (p.1 - m).exp();
            sum += p.1;
        }
        for p in probs.iter_mut() {
            p.1 /= sum;
        }
        probs.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
        // Keep the smallest prefix whose mass reaches top_p.
        let mut cut = probs.len();
        if self.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, p) in probs.iter().enumerate() {
                acc += p.1;
                if acc >= self.top_p as f64 {
                    cut = i + 1;
                    break;
                }
            }
        }
        let kept = &probs[..cut];
        let total: f64 = kept.iter().map(|p| p.1).sum();
        let r = self.rng.next_f64() * total;
        let mut acc = 0.0;
        for p in kept {
            acc += p.1;
            if r < acc {
                return p.0 as u32;
            }
        }
        kept.last().map(|p| p.0 as u32).unwrap_or(0)
    }
}

/// Index of the largest value (the first one on ties, like torch.argmax).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax_and_seeded_sampling_repeats() {
        let logits = [0.1f32, 2.0, 1.9, -1.0];
        assert_eq!(Sampler::greedy().sample(&logits), 1);
        let a: Vec<u32> = {
            let mut s = Sampler::new(1.0, 0.9, 7);
            (0..50).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(1.0, 0.9, 7);
            (0..50).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b);
        // top_p 0.9 excludes the smallest-probability token.
        assert!(!a.contains(&3));
    }
}
