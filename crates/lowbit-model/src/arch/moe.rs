//! Mixture-of-experts families: Mixtral (top-k routing, renormalized), Qwen2-MoE (shared expert
//! with a sigmoid gate, optional dense layers) and Qwen3-MoE (QK-norm). Attention is Llama's.
//!
//! Expert weights come in three layouts, all read in place:
//! - one 2-D tensor per expert (`experts.{e}.gate_proj.weight`, Mixtral's `w1/w3/w2`);
//! - 3-D tensors `experts.{gate,up,down}_proj.weight` `[experts, rows, cols]` (GGUF `*_exps`);
//! - transformers 5's fused `experts.gate_up_proj` `[experts, 2·inter, hidden]` + `experts.down_proj`.

use super::blocks::{load_vec, FeedForward, Layer, Linear, Mlp, Moe};
use super::{load_attention, load_mlp};
use crate::config::{Arch, ModelConfig};
use crate::error::{ModelError, Result};
use crate::weights::WeightStore;

pub fn build_layer(c: &ModelConfig, w: &WeightStore, i: usize) -> Result<Layer> {
    let p = format!("model.layers.{i}.");
    let moe_cfg = c
        .moe
        .as_ref()
        .ok_or_else(|| ModelError::format(&w.path, "MoE architecture without MoE config"))?;
    let ffn = if moe_cfg.dense_layers.contains(&i) {
        FeedForward::Dense(load_mlp(
            w,
            &format!("{p}mlp."),
            c.hidden_size,
            c.intermediate_size,
            c.activation,
        )?)
    } else {
        let base =
            if c.arch == Arch::Mixtral && w.contains(&format!("{p}block_sparse_moe.gate.weight")) {
                format!("{p}block_sparse_moe.")
            } else {
                format!("{p}mlp.")
            };
        let (h, inter, n) = (
            c.hidden_size,
            moe_cfg.expert_intermediate_size,
            moe_cfg.num_experts,
        );
        let experts = (0..n)
            .map(|e| load_expert(c, w, &base, e, n, h, inter))
            .collect::<Result<Vec<_>>>()?;
        let shared = match moe_cfg.shared_expert_intermediate_size {
            Some(si) => {
                let mlp = load_mlp(w, &format!("{base}shared_expert."), h, si, c.activation)?;
                let gname = format!("{base}shared_expert_gate.weight");
                let gate = if w.contains(&gname) {
                    Some(Linear::load(w, &gname, 1, h)?)
                } else {
                    None
                };
                Some((mlp, gate))
            }
            None => None,
        };
        FeedForward::Moe(Moe {
            router: Linear::load(w, &format!("{base}gate.weight"), n, h)?,
            experts,
            top_k: moe_cfg.top_k,
            norm_topk_prob: moe_cfg.norm_topk_prob,
            shared,
        })
    };
    Ok(Layer {
        attn_norm: load_vec(w, &format!("{p}input_layernorm.weight"), c.hidden_size)?,
        attn: load_attention(c, w, &format!("{p}self_attn."), i)?,
        post_attn_norm: None,
        ffn_norm: load_vec(
            w,
            &format!("{p}post_attention_layernorm.weight"),
            c.hidden_size,
        )?,
        ffn,
        post_ffn_norm: None,
    })
}

fn load_expert(
    c: &ModelConfig,
    w: &WeightStore,
    base: &str,
    e: usize,
    n: usize,
    h: usize,
    inter: usize,
) -> Result<Mlp> {
    let act = c.activation;
    let per = format!("{base}experts.{e}.");
    if w.contains(&format!("{per}w1.weight")) {
        return Ok(Mlp {
            gate: Linear::load(w, &format!("{per}w1.weight"), inter, h)?,
            up: Linear::load(w, &format!("{per}w3.weight"), inter, h)?,
            down: Linear::load(w, &format!("{per}w2.weight"), h, inter)?,
            act,
            down_rotation: None,
        });
    }
    if w.contains(&format!("{per}gate_proj.weight")) {
        return load_mlp(w, &per, h, inter, act);
    }
    let fused = format!("{base}experts.gate_up_proj");
    let fused = [fused.clone(), format!("{fused}.weight")]
        .into_iter()
        .find(|n| w.contains(n));
    if let Some(fused) = fused {
        let gu = Linear::load_expert(w, &fused, e, n, 2 * inter, h)?;
        let row_bytes = gu.matrix().row_bytes().expect("checked");
        let gate = Linear {
            rows: inter,
            ..gu.clone()
        };
        let up = Linear {
            rows: inter,
            byte_offset: gu.byte_offset + inter * row_bytes,
            ..gu
        };
        let down_name = [
            format!("{base}experts.down_proj"),
            format!("{base}experts.down_proj.weight"),
        ]
        .into_iter()
        .find(|n| w.contains(n))
        .ok_or_else(|| {
            ModelError::tensor(
                &w.path,
                format!("{base}experts.down_proj"),
                "missing from the model",
            )
        })?;
        let down = Linear::load_expert(w, &down_name, e, n, h, inter)?;
        return Ok(Mlp {
            gate,
            up,
            down,
            act,
            down_rotation: None,
        });
    }
    Ok(Mlp {
        gate: Linear::load_expert(
            w,
            &format!("{base}experts.gate_proj.weight"),
            e,
            n,
            inter,
            h,
        )?,
        up: Linear::load_expert(w, &format!("{base}experts.up_proj.weight"), e, n, inter, h)?,
        down: Linear::load_expert(
            w,
            &format!("{base}experts.down_proj.weight"),
            e,
            n,
            h,
            inter,
        )?,
        act,
        down_rotation: None,
    })
}
