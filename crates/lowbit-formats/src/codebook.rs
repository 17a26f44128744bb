//! Fixed 4-bit codebooks (non-uniform element formats) and user tables.
//!
//! Tables are stored normalized so that the largest magnitude is 1; a group scale (its absmax
//! by default) multiplies them.

/// bitsandbytes NF4: quantiles of N(0, 1) scaled to [-1, 1] (QLoRA, Dettmers et al. 2023).
pub const NF4: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// bitsandbytes FP4 (E2M1 variant with its own subnormal), normalized to max 1, in code order.
pub const FP4_BNB: [f32; 16] = [
    0.0,
    0.005_208_333,
    0.666_666_7,
    1.0,
    0.333_333_34,
    0.5,
    0.166_666_67,
    0.25,
    -0.0,
    -0.005_208_333,
    -0.666_666_7,
    -1.0,
    -0.333_333_34,
    -0.5,
    -0.166_666_67,
    -0.25,
];

/// llama.cpp IQ4_NL values (`kvalues_iq4nl`) divided by 127.
pub fn iq4_nl() -> [f32; 16] {
    crate::quant::KVALUES_IQ4NL_PUB.map(|v| v as f32 / 127.0)
}

/// A codebook: entries in code order plus a sorted copy for nearest-value search.
#[derive(Debug, Clone, PartialEq)]
pub struct Codebook {
    pub name: String,
    /// Values in code order (code i decodes to values[i]).
    pub values: Vec<f32>,
    sorted: Vec<(f32, u8)>,
}

impl Codebook {
    /// A user table (1..=256 finite entries). It is used as given (not normalized): with absmax
    /// scaling the largest |entry| should be 1.
    pub fn new(name: &str, values: &[f32]) -> Result<Codebook, String> {
        if values.is_empty() || values.len() > 256 {
            return Err(format!(
                "codebook {name}: needs 1..=256 entries, got {}",
                values.len()
            ));
        }
        if let Some(v) = values.iter().find(|v| !v.is_finite()) {
            return Err(format!("codebook {name}: entry {v} is not finite"));
        }
        let mut sorted: Vec<(f32, u8)> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| (v, i as u8))
            .collect();
        // Stable sort keeps the first code of equal values (e.g. +0 before -0).
        sorted.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        sorted.dedup_by(|b, a| a.0 == b.0);
        Ok(Codebook {
            name: name.to_string(),
            values: values.to_vec(),
            sorted,
        })
    }

    pub fn nf4() -> Codebook {
        Codebook::new("nf4", &NF4).unwrap()
    }
    pub fn fp4_bnb() -> Codebook {
        Codebook::new("fp4bnb", &FP4_BNB).unwrap()
    }
    pub fn iq4_nl() -> Codebook {
        Codebook::new("iq4nl", &iq4_nl()).unwrap()
    }

    /// Bits per code.
    pub fn bits(&self) -> u32 {
        (usize::BITS - (self.values.len() - 1).leading_zeros()).max(1)
    }

    /// Code of the nearest entry (ties go to the smaller value).
    #[inline]
    pub fn encode(&self, x: f32) -> u8 {
        let s = &self.sorted;
        // First entry >= x, then compare with its left neighbour.
        let i = s.partition_point(|e| e.0 < x);
        if i == 0 {
            return s[0].1;
        }
        if i == s.len() {
            return s[s.len() - 1].1;
        }
        let (lo, hi) = (s[i - 1], s[i]);
        if x - lo.0 <= hi.0 - x {
            lo.1
        } else {
            hi.1
        }
    }

    #[inline]
    pub fn decode(&self, code: u8) -> f32 {
        self.values.get(code as usize).copied().unwrap_or(0.0)
    }

    /// The nearest entry's value.
    #[inline]
    pub fn nearest(&self, x: f32) -> f32 {
        self.decode(self.encode(x))
    }

    /// Largest magnitude.
    pub fn max_abs(&self) -> f32 {
        self.values.iter().fold(0.0, |m, v| m.max(v.abs()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables() {
        for cb in [Codebook::nf4(), Codebook::fp4_bnb(), Codebook::iq4_nl()] {
            assert_eq!(cb.bits(), 4);
            assert_eq!(cb.max_abs(), 1.0);
            for (i, &v) in cb.values.iter().enumerate() {
                // Every entry maps to a code with the same value.
                assert_eq!(cb.decode(cb.encode(v)), v, "{} entry {i}", cb.name);
            }
            assert_eq!(
                cb.nearest(5.0),
                1.0_f32.min(cb.values.iter().cloned().fold(f32::MIN, f32::max))
            );
        }
        let cb = Codebook::new("u", &[-1.0, 0.0, 0.5, 1.0]).unwrap();
        assert_eq!(cb.bits(), 2);
        assert_eq!(cb.nearest(0.25), 0.0);
        assert_eq!(cb.nearest(0.26), 0.5);
        assert!(Codebook::new("bad", &[f32::NAN]).is_err());
        assert!(Codebook::new("empty", &[]).is_err());
    }
}
