//! GGUF models: `ModelConfig` from `{arch}.*` metadata and tensor names mapped to HF names, so
//! the architecture files see one naming scheme whatever the source.

use std::path::Path;

use lowbit_cpu::ops::RopeStyle;

use crate::config::{Activation, Arch, ModelConfig, MoeConfig, RopeScaling};
use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, GgufValue};
use crate::weights::WeightStore;

fn arch_of(path: &Path, name: &str) -> Result<Arch> {
    Ok(match name {
        "llama" | "mistral" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        "qwen3" => Arch::Qwen3,
        "gemma3" => Arch::Gemma3,
        "qwen2moe" => Arch::Qwen2Moe,
        "qwen3moe" => Arch::Qwen3Moe,
        other => {
            return Err(ModelError::unsupported(
                path,
                format!("unsupported GGUF architecture '{other}' (lowbit runs llama, mistral, qwen2, qwen3, gemma3, qwen2moe, qwen3moe)"),
            ))
        }
    })
}

fn num(v: Option<&GgufValue>) -> Option<f64> {
    match v? {
        GgufValue::U8(x) => Some(*x as f64),
        GgufValue::I8(x) => Some(*x as f64),
        GgufValue::U16(x) => Some(*x as f64),
        GgufValue::I16(x) => Some(*x as f64),
        GgufValue::U32(x) => Some(*x as f64),
        GgufValue::I32(x) => Some(*x as f64),
        GgufValue::U64(x) => Some(*x as f64),
        GgufValue::I64(x) => Some(*x as f64),
        GgufValue::F32(x) => Some(*x as f64),
        GgufValue::F64(x) => Some(*x),
        GgufValue::Bool(b) => Some(*b as u8 as f64),
        _ => None,
    }
}

/// Config from GGUF metadata; `w` holds the tensors under their GGUF names (for shapes).
pub fn config_from_gguf(g: &GgufFile, w: &WeightStore) -> Result<ModelConfig> {
    let path = g.path.as_path();
    let arch_name = match g.metadata.get("general.architecture") {
        Some(GgufValue::String(s)) => s.clone(),
        _ => return Err(ModelError::format(path, "GGUF lacks general.architecture")),
    };
    let arch = arch_of(path, &arch_name)?;
    // Mixtral is stored as "llama" with expert tensors.
    let arch = if arch == Arch::Llama
        && g.metadata
            .contains_key(&format!("{arch_name}.expert_count"))
    {
        Arch::Mixtral
    } else {
        arch
    };
    let key = |k: &str| format!("{arch_name}.{k}");
    let get = |k: &str| num(g.metadata.get(&key(k)));
    let need = |k: &str| {
        get(k)
            .map(|v| v as usize)
            .ok_or_else(|| ModelError::format(path, format!("GGUF lacks {}", key(k))))
    };
    let hidden_size = need("embedding_length")?;
    let num_layers = need("block_count")?;
    let num_heads = need("attention.head_count")?;
    let num_kv_heads = get("attention.head_count_kv")
        .map(|v| v as usize)
        .unwrap_or(num_heads);
    let head_dim = get("attention.key_length")
        .map(|v| v as usize)
        .unwrap_or(hidden_size / num_heads.max(1));
    let vocab_size = match w.entry("token_embd.weight") {
        Some(e) if e.shape.len() == 2 => e.shape[0],
        _ => {
            return Err(ModelError::tensor(
                path,
                "token_embd.weight",
                "missing or not 2-D",
            ))
        }
    };
    let rope_theta = get("rope.freq_base").unwrap_or(10000.0) as f32;
    let scaling_type = match g.metadata.get(&key("rope.scaling.type")) {
        Some(GgufValue::String(s)) => s.clone(),
        _ => "none".into(),
    };
    let factor = get("rope.scaling.factor").unwrap_or(1.0) as f32;
    let rope_scaling = match scaling_type.as_str() {
        "linear" if factor != 1.0 => RopeScaling::Linear { factor },
        "none" | "linear" => RopeScaling::None,
        other => {
            return Err(ModelError::unsupported(
                path,
                format!("rope scaling '{other}' is not supported"),
            ))
        }
    };
    let mut layer_window = vec![None; num_layers];
    let sliding = get("attention.sliding_window").map(|v| v as usize);
    let mut cfg = ModelConfig {
        arch,
        hidden_size,
        intermediate_size: get("feed_forward_length").map(|v| v as usize).unwrap_or(0),
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        vocab_size,
        max_position: get("context_length").map(|v| v as usize).unwrap_or(4096),
        rms_norm_eps: get("attention.layer_norm_rms_epsilon").unwrap_or(1e-5) as f32,
        rope_theta,
        rope_local_theta: None,
        rope_scaling,
        // llama.cpp's converter permutes Q/K of llama-arch models for its adjacent-pair rope.
        rope_style: if matches!(arch, Arch::Llama | Arch::Mixtral) {
            RopeStyle::Interleaved
        } else {
            RopeStyle::Neox
        },
        tie_word_embeddings: !w.contains("output.weight"),
        attention_bias: w.contains("blk.0.attn_q.bias"),
        qk_norm: w.contains("blk.0.attn_q_norm.weight"),
        layer_window: vec![],
        embedding_scale: None,
        // Gemma GGUF files store norm weights with the +1 already added.
        norm_weight_offset: 0.0,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        activation: Activation::Silu,
        post_norms: false,
        moe: None,
        bos_token_id: num(g.metadata.get("tokenizer.ggml.bos_token_id")).map(|v| v as u32),
        eos_token_id: num(g.metadata.get("tokenizer.ggml.eos_token_id")).map(|v| v as u32),
        act_quant: None,
        quant_ignore: Vec::new(),
        online_rotations: Vec::new(),
        kv_cache: None,
    };
    match arch {
        Arch::Gemma3 => {
            // llama.cpp hard-codes these for Gemma 3: 5 local layers per global one, local base 10k.
            for (i, wdw) in layer_window.iter_mut().enumerate() {
                if (i + 1) % 6 != 0 {
                    *wdw = sliding;
                }
            }
            cfg.rope_local_theta = Some(10000.0);
            cfg.embedding_scale = Some((hidden_size as f32).sqrt());
            cfg.post_norms = true;
            cfg.activation = Activation::GeluTanh;
            cfg.qk_norm = true;
        }
        Arch::Llama | Arch::Mixtral | Arch::Qwen2 | Arch::Qwen3 => {
            if let Some(wdw) = sliding {
                layer_window.iter_mut().for_each(|x| *x = Some(wdw));
            }
        }
        _ => {}
    }
    cfg.layer_window = layer_window;
    if let Some(n) = get("expert_count").map(|v| v as usize).filter(|&n| n > 0) {
        let shared = get("expert_shared_feed_forward_length")
            .map(|v| v as usize)
            .filter(|&s| s > 0);
        cfg.moe = Some(MoeConfig {
            num_experts: n,
            top_k: need("expert_used_count")?,
            norm_topk_prob: match arch {
                Arch::Qwen2Moe => false,
                Arch::Qwen3Moe => get("expert_weights_norm").map(|v| v != 0.0).unwrap_or(true),
                _ => true,
            },
            expert_intermediate_size: get("expert_feed_forward_length")
                .map(|v| v as usize)
                .unwrap_or(cfg.intermediate_size),
            shared_expert_intermediate_size: shared,
            dense_layers: (0..num_layers)
                .filter(|i| !w.contains(&format!("blk.{i}.ffn_gate_inp.weight")))
                .collect(),
        });
    }
    cfg.validate(path)?;
    Ok(cfg)
}

/// The HF name of a GGUF tensor for this architecture (None: keep the GGUF name).
pub fn hf_name(arch: Arch, gguf_name: &str) -> Option<String> {
    match gguf_name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf_name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (base, suffix) = rest.rsplit_once('.')?;
    let gemma = arch == Arch::Gemma3;
    let mapped = match base {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "post_attention_norm" => "post_attention_layernorm",
        "ffn_norm" if gemma => "pre_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "post_ffw_norm" => "post_feedforward_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "ffn_gate_inp" => "mlp.gate",
        "ffn_gate_exps" => "mlp.experts.gate_proj",
        "ffn_up_exps" => "mlp.experts.up_proj",
        "ffn_down_exps" => "mlp.experts.down_proj",
        "ffn_gate_shexp" => "mlp.shared_expert.gate_proj",
        "ffn_up_shexp" => "mlp.shared_expert.up_proj",
        "ffn_down_shexp" => "mlp.shared_expert.down_proj",
        "ffn_gate_inp_shexp" => "mlp.shared_expert_gate",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{mapped}.{suffix}"))
}

/// Rename every tensor of a GGUF store to its HF name.
pub fn rename_to_hf(arch: Arch, w: &mut WeightStore) {
    let names: Vec<String> = w.names().map(|s| s.to_string()).collect();
    for n in names {
        if let Some(h) = hf_name(arch, &n) {
            w.rename(&n, &h);
        }
    }
}
