//! Running a model one layer at a time, for calibration (GPTQ and friends): embed tokens, then run
//! layer `i` on hidden states while handing the input of each linear layer to a callback. Only the
//! current layer's activations are live, so memory grows with one layer, not the model.

use lowbit_cpu::attention::{attention, KvCache};
use lowbit_cpu::ops;

use super::blocks::{FeedForward, Layer, Linear};
use super::Transformer;
use crate::error::{ModelError, Result};

/// Which linear layers of a decoder layer read a captured activation. Linears in one slot share
/// the same input (q/k/v read the normed residual; gate/up read the normed residual of the MLP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LinearSlot {
    /// Input of q_proj, k_proj and v_proj.
    AttnIn,
    /// Input of o_proj (the attention heads' output).
    AttnOut,
    /// Input of gate_proj and up_proj.
    MlpIn,
    /// Input of down_proj (the gated activation).
    MlpAct,
}

impl LinearSlot {
    pub const ALL: [LinearSlot; 4] = [
        LinearSlot::AttnIn,
        LinearSlot::AttnOut,
        LinearSlot::MlpIn,
        LinearSlot::MlpAct,
    ];

    /// HF module names (relative to `model.layers.{i}.`) of the linears reading this slot.
    pub fn modules(self) -> &'static [&'static str] {
        match self {
            LinearSlot::AttnIn => &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
            LinearSlot::AttnOut => &["self_attn.o_proj"],
            LinearSlot::MlpIn => &["mlp.gate_proj", "mlp.up_proj"],
            LinearSlot::MlpAct => &["mlp.down_proj"],
        }
    }
}

impl Transformer {
    /// Embedding rows of `tokens` (`tokens × hidden`), scaled as the architecture wants.
    pub fn embed_tokens(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let c = &self.config;
        let h = c.hidden_size;
        let mut x = vec![0f32; tokens.len() * h];
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
        Ok(x)
    }

    /// A KV cache for one layer of this model.
    pub fn layer_cache(&self, capacity: usize) -> KvCache {
        KvCache::new(self.config.num_kv_heads, self.config.head_dim, capacity)
    }

    /// Run layer `i` on `x` (`tokens × hidden`, positions `pos0..`) in place, as
    /// [`Transformer::forward`] does, calling `capture(slot, input)` with the input of each group
    /// of linears (`tokens × in_features`). Dense feed-forward layers only.
    pub fn layer_forward_with_hooks(
        &self,
        i: usize,
        x: &mut [f32],
        cache: &mut KvCache,
        pos0: usize,
        capture: &mut dyn FnMut(LinearSlot, &[f32]),
    ) -> Result<()> {
        let c = &self.config;
        let layer: &Layer = self.layers.get(i).ok_or_else(|| {
            ModelError::Other(format!(
                "layer {i} does not exist ({} layers)",
                self.layers.len()
            ))
        })?;
        let FeedForward::Dense(mlp) = &layer.ffn else {
            return Err(ModelError::Other(format!(
                "layer {i}: calibration of mixture-of-experts layers is not supported yet"
            )));
        };
        let h = c.hidden_size;
        if x.len() % h != 0 {
            return Err(ModelError::Other(format!(
                "hidden states of {} values are not rows of {h}",
                x.len()
            )));
        }
        let tokens = x.len() / h;
        if pos0 + tokens > cache.capacity {
            return Err(ModelError::Other(format!(
                "sequence of {} tokens exceeds the KV cache capacity {}",
                pos0 + tokens,
                cache.capacity
            )));
        }
        // Attention, spelled out so the heads' output (o_proj's input) can be captured.
        let mut a = x.to_vec();
        ops::rmsnorm(
            &mut a,
            &layer.attn_norm,
            c.rms_norm_eps,
            c.norm_weight_offset,
        );
        capture(LinearSlot::AttnIn, &a);
        let at = &layer.attn;
        let mut q = at.q.forward(&a);
        let mut k = at.k.forward(&a);
        let mut v = at.v.forward(&a);
        add_bias(&mut q, &at.q_bias);
        add_bias(&mut k, &at.k_bias);
        add_bias(&mut v, &at.v_bias);
        if let Some(n) = &at.q_norm {
            ops::rmsnorm(&mut q, n, at.norm_eps, at.norm_offset);
        }
        if let Some(n) = &at.k_norm {
            ops::rmsnorm(&mut k, n, at.norm_eps, at.norm_offset);
        }
        at.rope.apply(&mut q, at.n_heads, at.head_dim, pos0);
        at.rope.apply(&mut k, at.n_kv_heads, at.head_dim, pos0);
        cache.write(pos0, &k, &v);
        let mut heads = vec![0f32; q.len()];
        attention(&q, cache, at.n_heads, pos0, at.scale, at.window, &mut heads);
        capture(LinearSlot::AttnOut, &heads);
        let mut a = at.o.forward(&heads);
        add_bias(&mut a, &at.o_bias);
        if let Some(nw) = &layer.post_attn_norm {
            ops::rmsnorm(&mut a, nw, c.rms_norm_eps, c.norm_weight_offset);
        }
        ops::add_assign(x, &a);
        // Gated MLP.
        let mut f = x.to_vec();
        ops::rmsnorm(
            &mut f,
            &layer.ffn_norm,
            c.rms_norm_eps,
            c.norm_weight_offset,
        );
        capture(LinearSlot::MlpIn, &f);
        let mut g = mlp.gate.forward(&f);
        let u = mlp.up.forward(&f);
        ops::gated_activation(&mut g, &u, mlp.act == crate::config::Activation::GeluTanh);
        // Calibration sees what the down projection multiplies: the rotated input (R4).
        mlp.rotate_down_input(&mut g);
        capture(LinearSlot::MlpAct, &g);
        let mut f = mlp.down.forward(&g);
        if let Some(nw) = &layer.post_ffn_norm {
            ops::rmsnorm(&mut f, nw, c.rms_norm_eps, c.norm_weight_offset);
        }
        ops::add_assign(x, &f);
        Ok(())
    }

    /// The linear `module` (`self_attn.q_proj`, `mlp.down_proj`, ...) of dense layer `i`, mutable,
    /// so a calibrated quantizer can swap in the quantized weight before running the next layer.
    pub fn layer_linear_mut(&mut self, i: usize, module: &str) -> Result<&mut Linear> {
        let n = self.layers.len();
        let layer = self
            .layers
            .get_mut(i)
            .ok_or_else(|| ModelError::Other(format!("layer {i} does not exist ({n} layers)")))?;
        let FeedForward::Dense(mlp) = &mut layer.ffn else {
            return Err(ModelError::Other(format!(
                "layer {i}: mixture-of-experts layers have no single {module}"
            )));
        };
        Ok(match module {
            "self_attn.q_proj" => &mut layer.attn.q,
            "self_attn.k_proj" => &mut layer.attn.k,
            "self_attn.v_proj" => &mut layer.attn.v,
            "self_attn.o_proj" => &mut layer.attn.o,
            "mlp.gate_proj" => &mut mlp.gate,
            "mlp.up_proj" => &mut mlp.up,
            "mlp.down_proj" => &mut mlp.down,
            other => {
                return Err(ModelError::Other(format!(
                    "layer {i}: unknown linear module {other}"
                )))
            }
        })
    }
}

fn add_bias(y: &mut [f32], b: &Option<Vec<f32>>) {
    if let Some(b) = b {
        for row in y.chunks_exact_mut(b.len()) {
            ops::add_assign(row, b);
        }
    }
}
