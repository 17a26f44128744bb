//! `--kv` / `--kv-rotate`: the KV-cache storage of `run`, `eval ppl`, `eval kld` (the model under
//! test only) and `bench`, overriding the model's config.json `kv_cache_scheme`.

use anyhow::{bail, Result};
use clap::Args;
use lowbit_cpu::attention::{KvCacheSpec, KvDtype};
use lowbit_model::Transformer;

/// Seed of the ±1 signs of `--kv-rotate` (any fixed value: the rotation is exact in f32).
pub const KV_ROTATION_SEED: u64 = 0;

#[derive(Args, Clone, Default)]
pub struct KvArgs {
    /// KV-cache storage: f32, f16, q8 (int8, one scale per token and KV head), q4 (int4, one
    /// scale per 32 values) or fp8 (E4M3, one scale per token and KV head). Default: the model's
    /// config.json `kv_cache_scheme`, else f32.
    #[arg(long, value_name = "f32|f16|q8|q4|fp8")]
    pub kv: Option<String>,
    /// Rotate keys and values (and queries) by a randomized Hadamard matrix over head_dim before
    /// they are stored; the attention output is rotated back.
    #[arg(long)]
    pub kv_rotate: bool,
}

impl KvArgs {
    /// The cache these flags ask for on top of `current` (None: nothing asked).
    pub fn spec(&self, current: Option<KvCacheSpec>) -> Result<Option<KvCacheSpec>> {
        let dtype = match &self.kv {
            Some(s) => match KvDtype::parse(s) {
                Some(d) => Some(d),
                None => bail!("--kv {s}: expected f32, f16, q8, q4 or fp8"),
            },
            None => None,
        };
        if dtype.is_none() && !self.kv_rotate {
            return Ok(current);
        }
        let base = current.unwrap_or_default();
        Ok(Some(KvCacheSpec {
            dtype: dtype.unwrap_or(base.dtype),
            rotation_seed: if self.kv_rotate {
                Some(KV_ROTATION_SEED)
            } else if dtype.is_some() {
                None
            } else {
                base.rotation_seed
            },
        }))
    }

    /// Set the model's KV cache (what `new_state` builds) from the flags.
    pub fn apply(&self, model: &mut Transformer) -> Result<()> {
        let spec = self.spec(model.config.kv_cache)?;
        if let Some(s) = &spec {
            s.check(model.config.head_dim)
                .map_err(|e| anyhow::anyhow!("--kv {}: {e}", s.name()))?;
        }
        model.config.kv_cache = spec;
        Ok(())
    }

    /// What the model now runs with, and its cost per token over all layers.
    pub fn describe(model: &Transformer) -> String {
        let c = &model.config;
        let spec = c.kv_cache.unwrap_or_default();
        let bytes = spec.bytes_per_token(c.num_kv_heads, c.head_dim) * c.num_layers;
        format!("KV cache {} ({bytes} bytes per token)", spec.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_config() {
        let none = KvArgs::default();
        let q8 = KvCacheSpec::new(KvDtype::Q8);
        assert_eq!(none.spec(None).unwrap(), None);
        assert_eq!(none.spec(Some(q8)).unwrap(), Some(q8));
        let a = KvArgs {
            kv: Some("q4".into()),
            kv_rotate: false,
        };
        assert_eq!(
            a.spec(Some(q8)).unwrap(),
            Some(KvCacheSpec::new(KvDtype::Q4))
        );
        let r = KvArgs {
            kv: None,
            kv_rotate: true,
        };
        assert_eq!(
            r.spec(Some(q8)).unwrap().unwrap().rotation_seed,
            Some(KV_ROTATION_SEED)
        );
        let bad = KvArgs {
            kv: Some("q3".into()),
            kv_rotate: false,
        };
        assert!(bad.spec(None).unwrap_err().to_string().contains("--kv q3"));
    }
}
