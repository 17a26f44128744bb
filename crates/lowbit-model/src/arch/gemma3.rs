//! Gemma 3: sandwich norms (pre and post, around attention and MLP), per-head q/k RMSNorm,
//! GeGLU (tanh GELU), embeddings scaled by sqrt(hidden), norm weights stored as `w - 1` in HF
//! layout, and 5 sliding-window layers (local rope base) per global layer.

use super::blocks::{load_vec, FeedForward, Layer};
use super::{load_attention, load_mlp};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::weights::WeightStore;

pub fn build_layer(c: &ModelConfig, w: &WeightStore, i: usize) -> Result<Layer> {
    let p = format!("model.layers.{i}.");
    let norm = |s: &str| load_vec(w, &format!("{p}{s}.weight"), c.hidden_size);
    Ok(Layer {
        attn_norm: norm("input_layernorm")?,
        attn: load_attention(c, w, &format!("{p}self_attn."), i)?,
        post_attn_norm: Some(norm("post_attention_layernorm")?),
        ffn_norm: norm("pre_feedforward_layernorm")?,
        ffn: FeedForward::Dense(load_mlp(
            w,
            &format!("{p}mlp."),
            c.hidden_size,
            c.intermediate_size,
            c.activation,
        )?),
        post_ffn_norm: Some(norm("post_feedforward_layernorm")?),
    })
}
