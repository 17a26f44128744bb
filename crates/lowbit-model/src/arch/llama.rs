//! Llama 1/2/3 and Mistral: pre-norm, rope, GQA, SwiGLU. Mistral's sliding window comes from the
//! config (`layer_window`).

use super::blocks::{load_vec, FeedForward, Layer};
use super::{load_attention, load_mlp};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::weights::WeightStore;

pub fn build_layer(c: &ModelConfig, w: &WeightStore, i: usize) -> Result<Layer> {
    let p = format!("model.layers.{i}.");
    Ok(Layer {
        attn_norm: load_vec(w, &format!("{p}input_layernorm.weight"), c.hidden_size)?,
        attn: load_attention(c, w, &format!("{p}self_attn."), i)?,
        post_attn_norm: None,
        ffn_norm: load_vec(
            w,
            &format!("{p}post_attention_layernorm.weight"),
            c.hidden_size,
        )?,
        ffn: FeedForward::Dense(load_mlp(
            w,
            &format!("{p}mlp."),
            c.hidden_size,
            c.intermediate_size,
            c.activation,
        )?),
        post_ffn_norm: None,
    })
}
