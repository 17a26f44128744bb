//! Qwen2/2.5 (q/k/v biases, picked up from the weights) and Qwen3 (per-head q/k RMSNorm, from
//! `config.qk_norm`). Otherwise the Llama layer.

use super::blocks::Layer;
use crate::config::ModelConfig;
use crate::error::Result;
use crate::weights::WeightStore;

pub fn build_layer(c: &ModelConfig, w: &WeightStore, i: usize) -> Result<Layer> {
    super::llama::build_layer(c, w, i)
}
