//! Architectures: one file per family, each building `Layer`s from shared blocks. Registration is
//! the match in [`layer_builder`].

pub mod act_quant;
pub mod blocks;
pub mod calib;
pub mod gemma3;
pub mod llama;
pub mod moe;
pub mod qwen;

use lowbit_cpu::attention::KvCache;
use lowbit_cpu::ops::{self, Rope};

use crate::config::{Activation, Arch, ModelConfig};
use crate::error::{ModelError, Result};
use crate::weights::WeightStore;
use blocks::{load_vec, load_vec_opt, Attention, FeedForward, Layer, Linear, Mlp};

/// Builds layer `i` of a model from its weights.
pub type LayerBuilder = fn(&ModelConfig, &WeightStore, usize) -> Result<Layer>;

pub fn layer_builder(arch: Arch) -> LayerBuilder {
    match arch {
        Arch::Llama => llama::build_layer,
        Arch::Qwen2 | Arch::Qwen3 => qwen::build_layer,
        Arch::Gemma3 => gemma3::build_layer,
        Arch::Mixtral | Arch::Qwen2Moe | Arch::Qwen3Moe => moe::build_layer,
    }
}

/// A loaded decoder-only transformer, weights in their stored types.
pub struct Transformer {
    pub config: ModelConfig,
    pub embed: Linear,
    pub layers: Vec<Layer>,
    pub final_norm: Vec<f32>,
    pub lm_head: Linear,
}

/// The per-sequence state: one KV cache per layer and the next position.
pub struct KvState {
    pub caches: Vec<KvCache>,
    pub pos: usize,
}

impl KvState {
    pub fn capacity(&self) -> usize {
        self.caches.first().map(|c| c.capacity).unwrap_or(0)
    }
    /// Bytes held by every layer's keys and values.
    pub fn bytes(&self) -> usize {
        self.caches.iter().map(|c| c.bytes()).sum()
    }
    /// Forget the sequence (the memory is kept).
    pub fn clear(&mut self) {
        self.pos = 0;
    }
}

impl Transformer {
    pub fn load(config: ModelConfig, w: &WeightStore) -> Result<Transformer> {
        config.validate(&w.path)?;
        let c = &config;
        let embed = Linear::load(w, "model.embed_tokens.weight", c.vocab_size, c.hidden_size)?;
        // Tied models (and checkpoints that drop the duplicate) reuse the embedding matrix.
        let lm_head = if w.contains("lm_head.weight") {
            Linear::load(w, "lm_head.weight", c.vocab_size, c.hidden_size)?
        } else {
            embed.clone()
        };
        let build = layer_builder(c.arch);
        let layers = (0..c.num_layers)
            .map(|i| build(c, w, i))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = load_vec(w, "model.norm.weight", c.hidden_size)?;
        let mut layers = layers;
        for r in &config.online_rotations {
            // Only the down projection's input (R4) exists; the config parser checked the size.
            let h = lowbit_cpu::hadamard::Hadamard::new(r.size, r.seed).map_err(|e| {
                crate::error::ModelError::format(&w.path, format!("online rotation: {e}"))
            })?;
            let h = std::sync::Arc::new(h);
            for layer in layers.iter_mut() {
                match &mut layer.ffn {
                    FeedForward::Dense(mlp) => mlp.down_rotation = Some(h.clone()),
                    FeedForward::Moe(_) => {
                        return Err(crate::error::ModelError::format(
                            &w.path,
                            "online rotations of mixture-of-experts layers are not supported",
                        ))
                    }
                }
            }
        }
        let act_quant = config.act_quant;
        let mut t = Transformer {
            config,
            embed,
            layers,
            final_norm,
            lm_head,
        };
        if act_quant.is_some() {
            t.set_activation_quant(act_quant)?;
            t.clear_activation_quant_of_ignored()?;
        }
        Ok(t)
    }

    /// A state for `capacity` positions, its caches stored as `config.kv_cache` asks (f32 when
    /// None). Panics only if that spec does not fit the model, which `ModelConfig::validate` and
    /// the parsers reject; [`Transformer::try_new_state`] returns the error instead.
    pub fn new_state(&self, capacity: usize) -> KvState {
        self.try_new_state(capacity)
            .unwrap_or_else(|e| panic!("KV cache of {:?}: {e}", self.config.kv_cache))
    }

    pub fn try_new_state(&self, capacity: usize) -> Result<KvState> {
        let c = &self.config;
        let spec = c.kv_cache.unwrap_or_default();
        let caches = (0..c.num_layers)
            .map(|_| KvCache::with_spec(c.num_kv_heads, c.head_dim, capacity, spec))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| ModelError::format(std::path::Path::new("<model>"), e.to_string()))?;
        Ok(KvState { caches, pos: 0 })
    }

    /// Run `tokens` at positions `state.pos..` and advance the state. Returns the logits of the
    /// last `tokens.len() - logits_from` tokens (`logits_from..tokens.len()`), row-major.
    pub fn forward(
        &self,
        state: &mut KvState,
        tokens: &[u32],
        logits_from: usize,
    ) -> Result<Vec<f32>> {
        rayon::scope(|_| {
            let hidden = self.forward_hidden_in_pool(state, tokens, logits_from)?;
            Ok(self.lm_head.forward(&hidden))
        })
    }

    /// Like `forward`, but stops before the output projection: the final-normed hidden states
    /// of tokens `logits_from..`.
    pub fn forward_hidden(
        &self,
        state: &mut KvState,
        tokens: &[u32],
        logits_from: usize,
    ) -> Result<Vec<f32>> {
        // Run on a pool thread: the parallel kernels inside then fork and join within the pool
        // instead of parking and waking the calling thread for every matrix (tens of µs each).
        rayon::scope(|_| self.forward_hidden_in_pool(state, tokens, logits_from))
    }

    fn forward_hidden_in_pool(
        &self,
        state: &mut KvState,
        tokens: &[u32],
        logits_from: usize,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let n = tokens.len();
        if state.pos + n > state.capacity() {
            return Err(ModelError::Other(format!(
                "sequence of {} tokens exceeds the KV cache capacity {}",
                state.pos + n,
                state.capacity()
            )));
        }
        let h = c.hidden_size;
        let mut x = vec![0f32; n * h];
        for (t, &id) in tokens.iter().enumerate() {
            if id as usize >= c.vocab_size {
                return Err(ModelError::Other(format!(
                    "token id {id} is outside the vocabulary ({})",
                    c.vocab_size
                )));
            }
            self.embed.row(id as usize, &mut x[t * h..(t + 1) * h]);
        }
        if let Some(s) = c.embedding_scale {
            x.iter_mut().for_each(|v| *v *= s);
        }
        let pos0 = state.pos;
        for (layer, cache) in self.layers.iter().zip(state.caches.iter_mut()) {
            let mut a = x.clone();
            ops::rmsnorm(
                &mut a,
                &layer.attn_norm,
                c.rms_norm_eps,
                c.norm_weight_offset,
            );
            let mut a = layer.attn.forward(&a, cache, pos0);
            if let Some(nw) = &layer.post_attn_norm {
                ops::rmsnorm(&mut a, nw, c.rms_norm_eps, c.norm_weight_offset);
            }
            ops::add_assign(&mut x, &a);
            let mut f = x.clone();
            ops::rmsnorm(
                &mut f,
                &layer.ffn_norm,
                c.rms_norm_eps,
                c.norm_weight_offset,
            );
            let mut f = layer.ffn.forward(&f);
            if let Some(nw) = &layer.post_ffn_norm {
                ops::rmsnorm(&mut f, nw, c.rms_norm_eps, c.norm_weight_offset);
            }
            ops::add_assign(&mut x, &f);
        }
        state.pos += n;
        let from = logits_from.min(n);
        let mut last = x.split_off(from * h);
        ops::rmsnorm(
            &mut last,
            &self.final_norm,
            c.rms_norm_eps,
            c.norm_weight_offset,
        );
        Ok(last)
    }

    /// Negative log-likelihood of `targets[t]` under the logits of hidden row `t`, without ever
    /// holding the full `tokens × vocab` logits: the output projection runs over slices of the
    /// vocabulary and a running log-sum-exp is kept per token (a 262k vocabulary × 256 tokens would
    /// otherwise be 268 MB).
    pub fn nll(&self, hidden: &[f32], targets: &[u32]) -> Vec<f64> {
        let h = self.config.hidden_size;
        let n = hidden.len() / h;
        assert_eq!(n, targets.len());
        let vocab = self.lm_head.rows;
        let slice_rows = 4096.min(vocab);
        let mut max = vec![f64::NEG_INFINITY; n];
        let mut sum = vec![0f64; n];
        let mut target_logit = vec![0f64; n];
        let full = self.lm_head.matrix();
        let rb = full.row_bytes().expect("validated");
        let mut y = vec![0f32; n * slice_rows];
        for r0 in (0..vocab).step_by(slice_rows) {
            let rows = slice_rows.min(vocab - r0);
            let w = lowbit_cpu::WeightMatrix {
                rows,
                data: &full.data[r0 * rb..(r0 + rows) * rb],
                ..full
            };
            let y = &mut y[..n * rows];
            lowbit_cpu::matmul(hidden, w, y);
            for t in 0..n {
                let row = &y[t * rows..(t + 1) * rows];
                lowbit_cpu::ops::lse_accumulate(row, &mut max[t], &mut sum[t]);
                let tg = targets[t] as usize;
                if tg >= r0 && tg < r0 + rows {
                    target_logit[t] = row[tg - r0] as f64;
                }
            }
        }
        (0..n)
            .map(|t| max[t] + sum[t].ln() - target_logit[t])
            .collect()
    }
}

/// The rope of layer `i`: sliding-window layers may use their own base (Gemma 3).
pub fn layer_rope(c: &ModelConfig, i: usize) -> Rope {
    let theta = match (c.layer_window[i], c.rope_local_theta) {
        (Some(_), Some(local)) => local,
        _ => c.rope_theta,
    };
    let mut cfg = c.clone();
    if c.layer_window[i].is_some() && c.rope_local_theta.is_some() {
        // Gemma 3's local layers use plain rope; scaling applies to global layers only.
        cfg.rope_scaling = crate::config::RopeScaling::None;
    }
    Rope {
        style: c.rope_style,
        rot_dim: c.head_dim,
        inv_freq: cfg.rope_inv_freq(theta),
        mscale: 1.0,
    }
}

/// Attention of layer `i` under `prefix` (`model.layers.{i}.self_attn.`): biases are used when
/// present; q/k norms are required when the config says so.
pub fn load_attention(
    c: &ModelConfig,
    w: &WeightStore,
    prefix: &str,
    i: usize,
) -> Result<Attention> {
    let (h, qd, kvd, hd) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.head_dim);
    let name = |s: &str| format!("{prefix}{s}");
    let (q_norm, k_norm) = if c.qk_norm {
        (
            Some(load_vec(w, &name("q_norm.weight"), hd)?),
            Some(load_vec(w, &name("k_norm.weight"), hd)?),
        )
    } else {
        (None, None)
    };
    Ok(Attention {
        q: Linear::load(w, &name("q_proj.weight"), qd, h)?,
        k: Linear::load(w, &name("k_proj.weight"), kvd, h)?,
        v: Linear::load(w, &name("v_proj.weight"), kvd, h)?,
        o: Linear::load(w, &name("o_proj.weight"), h, qd)?,
        q_bias: load_vec_opt(w, &name("q_proj.bias"), qd)?,
        k_bias: load_vec_opt(w, &name("k_proj.bias"), kvd)?,
        v_bias: load_vec_opt(w, &name("v_proj.bias"), kvd)?,
        o_bias: load_vec_opt(w, &name("o_proj.bias"), h)?,
        q_norm,
        k_norm,
        n_heads: c.num_heads,
        n_kv_heads: c.num_kv_heads,
        head_dim: hd,
        scale: c.attn_scale,
        norm_eps: c.rms_norm_eps,
        norm_offset: c.norm_weight_offset,
        rope: layer_rope(c, i),
        window: c.layer_window[i],
    })
}

/// Gated MLP under `prefix` (`...mlp.`) with HF names gate_proj/up_proj/down_proj.
pub fn load_mlp(
    w: &WeightStore,
    prefix: &str,
    hidden: usize,
    inter: usize,
    act: Activation,
) -> Result<Mlp> {
    Ok(Mlp {
        gate: Linear::load(w, &format!("{prefix}gate_proj.weight"), inter, hidden)?,
        up: Linear::load(w, &format!("{prefix}up_proj.weight"), inter, hidden)?,
        down: Linear::load(w, &format!("{prefix}down_proj.weight"), hidden, inter)?,
        act,
        down_rotation: None,
    })
}
