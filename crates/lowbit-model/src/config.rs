//! `ModelConfig`: one normalized description of every supported decoder, built from HF
//! `config.json`, GGUF metadata or a llama2.c header. Architecture files read only this.

use std::path::Path;

use lowbit_cpu::ops::RopeStyle;
use serde_json::Value;

use crate::error::{ModelError, Result};

/// The architecture families lowbit runs. Each has one file in `arch/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 1/2/3 and Mistral (Mistral is Llama with a sliding window).
    Llama,
    /// Qwen2 / Qwen2.5: Llama with q/k/v biases.
    Qwen2,
    /// Qwen3: Llama with per-head RMSNorm on q and k.
    Qwen3,
    Gemma3,
    /// Mixtral: Llama with top-k routed experts.
    Mixtral,
    /// Qwen2-MoE: routed experts plus a gated shared expert; q/k/v biases.
    Qwen2Moe,
    /// Qwen3-MoE: routed experts, QK-norm.
    Qwen3Moe,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
            Arch::Mixtral => "mixtral",
            Arch::Qwen2Moe => "qwen2_moe",
            Arch::Qwen3Moe => "qwen3_moe",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    Silu,
    GeluTanh,
}

/// Rope frequency scaling.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f32,
    },
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position: f32,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub num_experts: usize,
    pub top_k: usize,
    /// Renormalize the top-k routing weights to sum to one.
    pub norm_topk_prob: bool,
    pub expert_intermediate_size: usize,
    /// Qwen2-MoE's always-on expert (with a sigmoid gate), if any.
    pub shared_expert_intermediate_size: Option<usize>,
    /// Layers whose index is in this set use a dense MLP instead.
    pub dense_layers: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub max_position: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    /// Rope base of sliding-window layers, when it differs (Gemma 3: 10,000).
    pub rope_local_theta: Option<f32>,
    pub rope_scaling: RopeScaling,
    pub rope_style: RopeStyle,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub qk_norm: bool,
    /// Per layer: `Some(w)` for sliding-window attention of width `w`, None for global.
    pub layer_window: Vec<Option<usize>>,
    /// Gemma: embeddings are multiplied by sqrt(hidden_size).
    pub embedding_scale: Option<f32>,
    /// Added to RMSNorm weights: 1.0 for Gemma in HF layout (GGUF stores `1 + w` already).
    pub norm_weight_offset: f32,
    /// Attention score scale; default 1/sqrt(head_dim).
    pub attn_scale: f32,
    pub activation: Activation,
    /// Gemma 3 sandwich norms: extra RMSNorm after attention and after the MLP.
    pub post_norms: bool,
    pub moe: Option<MoeConfig>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// Dynamic per-token quantization of linear-layer inputs (W8A8 checkpoints: compressed-tensors
    /// `input_activations`); None runs activations in f32.
    pub act_quant: Option<crate::arch::act_quant::ActQuant>,
    /// Modules `quantization_config.ignore` keeps in full precision (exact names or `re:`
    /// patterns, as compressed-tensors writes them): their inputs are not quantized either.
    pub quant_ignore: Vec<String>,
    /// Rotations applied to activations at inference because the checkpoint's weights were
    /// rotated on that side (`quantization_config.lowbit_rotation.online`, docs/FORMAT.md).
    pub online_rotations: Vec<OnlineRotationSpec>,
    /// KV-cache storage for `Transformer::new_state` (`quantization_config.kv_cache_scheme`, plus
    /// lowbit's `quantization_config.lowbit_kv_rotation`; docs/FORMAT.md); None is an f32 cache.
    /// The CLI's `--kv` overrides it.
    pub kv_cache: Option<lowbit_cpu::attention::KvCacheSpec>,
}

/// `x ← x · Q` on the input of `module` in every layer, `Q` lowbit's randomized Hadamard
/// rotation of `size` with `seed` (lowbit_cpu::hadamard). Only `down_proj` exists today (R4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineRotationSpec {
    pub module: String,
    pub seed: u64,
    pub size: usize,
}

/// The online rotations a config.json asks for, checked against the model's shape.
fn online_rotations(
    root: &Value,
    intermediate: usize,
    path: &Path,
) -> Result<Vec<OnlineRotationSpec>> {
    let Some(list) = root
        .pointer("/quantization_config/lowbit_rotation/online")
        .and_then(|v| v.as_array())
    else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|o| {
            let module = o.get("module").and_then(|v| v.as_str()).unwrap_or("");
            let seed = o.get("seed").and_then(|v| v.as_u64());
            let size = o.get("size").and_then(|v| v.as_u64()).map(|v| v as usize);
            match (module, seed, size) {
                ("down_proj", Some(seed), Some(size)) if size == intermediate => Ok(OnlineRotationSpec {
                    module: module.to_string(),
                    seed,
                    size,
                }),
                _ => Err(ModelError::format(
                    path,
                    format!(
                        "quantization_config.lowbit_rotation.online: expected {{module: \"down_proj\", \
                         seed, size: {intermediate}}}, got {o}"
                    ),
                )),
            }
        })
        .collect()
}

/// The KV cache a config.json asks for: compressed-tensors' `quantization_config.kv_cache_scheme`
/// (QuantizationArgs: `num_bits`, `type` int/float, `symmetric`, `strategy`, `dynamic`) mapped to a
/// lowbit storage type — int 8 → q8, int 4 → q4, float 8 → fp8 (E4M3), float 16 → f16 — and
/// `quantization_config.lowbit_kv_rotation` (`{"kind": "hadamard", "seed": S}`, a lowbit
/// extension). lowbit always scales per (token, KV head) row (q4: per group of 32) dynamically,
/// whatever `strategy`/`dynamic` say; static `k_scale`/`v_scale` tensors are not read.
pub fn kv_cache_from_config(
    root: &Value,
    head_dim: usize,
    path: &Path,
) -> Result<Option<lowbit_cpu::attention::KvCacheSpec>> {
    use lowbit_cpu::attention::{KvCacheSpec, KvDtype};
    let Some(qc) = root.get("quantization_config") else {
        return Ok(None);
    };
    let bad = |m: String| Err(ModelError::format(path, format!("quantization_config.{m}")));
    let rotation_seed = match qc.get("lowbit_kv_rotation") {
        None | Some(Value::Null) => None,
        Some(r) => match (r.get("kind").and_then(|v| v.as_str()), r.get("seed")) {
            (Some("hadamard"), Some(s)) if s.is_u64() => s.as_u64(),
            _ => {
                return bad(format!(
                    "lowbit_kv_rotation: expected {{\"kind\": \"hadamard\", \"seed\": S}}, got {r}"
                ))
            }
        },
    };
    let scheme = match qc.get("kv_cache_scheme") {
        None | Some(Value::Null) => {
            if rotation_seed.is_some() {
                return bad("lowbit_kv_rotation needs a kv_cache_scheme".into());
            }
            return Ok(None);
        }
        Some(s) => s,
    };
    let bits = scheme.get("num_bits").and_then(|v| v.as_u64()).unwrap_or(8);
    let ty = scheme.get("type").and_then(|v| v.as_str()).unwrap_or("int");
    if scheme.get("symmetric").and_then(|v| v.as_bool()) == Some(false) {
        return bad(format!(
            "kv_cache_scheme: asymmetric KV caches are not supported (lowbit's are symmetric), got {scheme}"
        ));
    }
    let dtype = match (ty, bits) {
        ("int", 8) => KvDtype::Q8,
        ("int", 4) => KvDtype::Q4,
        ("float", 8) => KvDtype::Fp8,
        ("float", 16) => KvDtype::F16,
        _ => {
            return bad(format!(
                "kv_cache_scheme: expected int 8/4 or float 8/16 bits, got {scheme}"
            ))
        }
    };
    let spec = KvCacheSpec {
        dtype,
        rotation_seed,
    };
    if let Err(e) = spec.check(head_dim) {
        return bad(format!("kv_cache_scheme: {e}"));
    }
    Ok(Some(spec))
}

impl ModelConfig {
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }

    /// Inverse rope frequencies for a base, with this model's scaling.
    pub fn rope_inv_freq(&self, theta: f32) -> Vec<f32> {
        let half = self.head_dim / 2;
        let mut inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / (theta as f64).powf(2.0 * i as f64 / self.head_dim as f64) as f32)
            .collect();
        match self.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => inv.iter_mut().for_each(|f| *f /= factor),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position,
            } => {
                let low_wavelen = original_max_position / low_freq_factor;
                let high_wavelen = original_max_position / high_freq_factor;
                for f in inv.iter_mut() {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    if wavelen < high_wavelen {
                        // high frequencies kept
                    } else if wavelen > low_wavelen {
                        *f /= factor;
                    } else {
                        let smooth = (original_max_position / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
        }
        inv
    }

    /// Checks the numbers make sense together, so architectures can index without surprises.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |m: String| Err(ModelError::format(path, m));
        if self.hidden_size == 0
            || self.num_layers == 0
            || self.num_heads == 0
            || self.num_kv_heads == 0
            || self.head_dim == 0
        {
            return bad(format!("config has a zero dimension: {self:?}"));
        }
        if self.num_heads % self.num_kv_heads != 0 {
            return bad(format!(
                "{} attention heads is not a multiple of {} KV heads",
                self.num_heads, self.num_kv_heads
            ));
        }
        if self.head_dim % 2 != 0 {
            return bad(format!(
                "head_dim {} is odd; rope needs pairs",
                self.head_dim
            ));
        }
        if self.layer_window.len() != self.num_layers {
            return bad("layer window list does not match the layer count".into());
        }
        if self.hidden_size > 1 << 20
            || self.num_layers > 4096
            || self.vocab_size > 1 << 24
            || self.num_heads > 4096
        {
            return bad("config dimensions are absurdly large".into());
        }
        if let Some(kv) = &self.kv_cache {
            if let Err(e) = kv.check(self.head_dim) {
                return bad(e.to_string());
            }
        }
        if let Some(m) = &self.moe {
            if m.top_k == 0 || m.top_k > m.num_experts {
                return bad(format!(
                    "MoE top_k {} with {} experts",
                    m.top_k, m.num_experts
                ));
            }
        }
        Ok(())
    }
}

fn get_usize(cfg: &Value, key: &str) -> Option<usize> {
    cfg.get(key).and_then(|v| v.as_u64()).map(|v| v as usize)
}
fn get_f32(cfg: &Value, key: &str) -> Option<f32> {
    cfg.get(key).and_then(|v| v.as_f64()).map(|v| v as f32)
}
fn get_bool(cfg: &Value, key: &str) -> Option<bool> {
    cfg.get(key).and_then(|v| v.as_bool())
}
fn first_id(v: Option<&Value>) -> Option<u32> {
    match v? {
        Value::Number(n) => n.as_u64().map(|x| x as u32),
        Value::Array(a) => a.first().and_then(|x| x.as_u64()).map(|x| x as u32),
        _ => None,
    }
}

/// Build the config from an HF `config.json` value. `path` is used in error messages.
pub fn from_hf_config(cfg: &Value, path: &Path) -> Result<ModelConfig> {
    let root = cfg;
    // Multimodal wrappers keep the language model under text_config.
    let cfg = cfg
        .get("text_config")
        .filter(|t| t.get("hidden_size").is_some())
        .unwrap_or(cfg);
    let model_type = cfg.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
    let arch = match model_type {
        "llama" | "mistral" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        "qwen3" => Arch::Qwen3,
        "gemma3" | "gemma3_text" => Arch::Gemma3,
        "mixtral" => Arch::Mixtral,
        "qwen2_moe" => Arch::Qwen2Moe,
        "qwen3_moe" => Arch::Qwen3Moe,
        other => {
            return Err(ModelError::unsupported(
                path,
                format!("unsupported model_type '{other}' (lowbit runs llama, mistral, qwen2, qwen3, gemma3, mixtral, qwen2_moe, qwen3_moe)"),
            ))
        }
    };
    let need = |k: &str| {
        get_usize(cfg, k)
            .ok_or_else(|| ModelError::format(path, format!("config.json lacks '{k}'")))
    };
    let hidden_size = need("hidden_size")?;
    let num_heads = need("num_attention_heads")?;
    let num_layers = need("num_hidden_layers")?;
    let num_kv_heads = get_usize(cfg, "num_key_value_heads").unwrap_or(num_heads);
    let head_dim = get_usize(cfg, "head_dim").unwrap_or(hidden_size / num_heads.max(1));
    // transformers < 5: rope_theta + rope_scaling; transformers 5: rope_parameters, either flat or
    // keyed by layer type (Gemma 3: full_attention / sliding_attention).
    let rope_params = cfg.get("rope_parameters").filter(|v| v.is_object());
    let global_params = rope_params.map(|r| r.get("full_attention").unwrap_or(r));
    let local_params = rope_params.and_then(|r| r.get("sliding_attention"));
    let rope_theta = get_f32(cfg, "rope_theta")
        .or_else(|| global_params.and_then(|r| get_f32(r, "rope_theta")))
        .unwrap_or(10000.0);
    let scaling_v = cfg
        .get("rope_scaling")
        .filter(|v| !v.is_null())
        .or(global_params);
    let rope_scaling = match scaling_v {
        None => RopeScaling::None,
        Some(s) => {
            let kind = s
                .get("rope_type")
                .or_else(|| s.get("type"))
                .and_then(|v| v.as_str())
                .unwrap_or("default");
            let factor = get_f32(s, "factor").unwrap_or(1.0);
            match kind {
                "default" => RopeScaling::None,
                "linear" => RopeScaling::Linear { factor },
                "llama3" => RopeScaling::Llama3 {
                    factor,
                    low_freq_factor: get_f32(s, "low_freq_factor").unwrap_or(1.0),
                    high_freq_factor: get_f32(s, "high_freq_factor").unwrap_or(4.0),
                    original_max_position: get_f32(s, "original_max_position_embeddings")
                        .unwrap_or(8192.0),
                },
                other => {
                    return Err(ModelError::unsupported(
                        path,
                        format!("rope scaling '{other}' is not supported"),
                    ))
                }
            }
        }
    };
    let sliding = get_usize(cfg, "sliding_window");
    let mut layer_window = vec![None; num_layers];
    let mut rope_local_theta = None;
    let mut embedding_scale = None;
    let mut norm_weight_offset = 0.0;
    let mut post_norms = false;
    let mut attn_scale = 1.0 / (head_dim as f32).sqrt();
    let mut activation = Activation::Silu;
    match arch {
        Arch::Gemma3 => {
            let types = cfg.get("layer_types").and_then(|v| v.as_array());
            let pattern = get_usize(cfg, "sliding_window_pattern").unwrap_or(6);
            for (i, w) in layer_window.iter_mut().enumerate() {
                let is_sliding = match types {
                    Some(t) => t.get(i).and_then(|v| v.as_str()) == Some("sliding_attention"),
                    None => (i + 1) % pattern != 0,
                };
                if is_sliding {
                    *w = sliding;
                }
            }
            rope_local_theta = Some(
                get_f32(cfg, "rope_local_base_freq")
                    .or_else(|| local_params.and_then(|r| get_f32(r, "rope_theta")))
                    .unwrap_or(10000.0),
            );
            embedding_scale = Some((hidden_size as f32).sqrt());
            norm_weight_offset = 1.0;
            post_norms = true;
            if let Some(s) = get_f32(cfg, "query_pre_attn_scalar") {
                attn_scale = 1.0 / s.sqrt();
            }
            activation = Activation::GeluTanh;
        }
        Arch::Llama | Arch::Mixtral => {
            // Mistral and Mixtral configs carry sliding_window (null when unused).
            if let Some(w) = sliding {
                layer_window.iter_mut().for_each(|x| *x = Some(w));
            }
        }
        Arch::Qwen2 | Arch::Qwen3 | Arch::Qwen2Moe | Arch::Qwen3Moe => {
            if get_bool(cfg, "use_sliding_window") == Some(true) {
                let max_window_layers = get_usize(cfg, "max_window_layers").unwrap_or(num_layers);
                for (i, w) in layer_window.iter_mut().enumerate() {
                    if i >= max_window_layers {
                        *w = sliding;
                    }
                }
            }
        }
    }
    let moe = match arch {
        Arch::Mixtral => Some(MoeConfig {
            num_experts: need("num_local_experts")?,
            top_k: need("num_experts_per_tok")?,
            norm_topk_prob: true,
            expert_intermediate_size: need("intermediate_size")?,
            shared_expert_intermediate_size: None,
            dense_layers: vec![],
        }),
        Arch::Qwen2Moe | Arch::Qwen3Moe => {
            let step = get_usize(cfg, "decoder_sparse_step").unwrap_or(1).max(1);
            let mlp_only: Vec<usize> = cfg
                .get("mlp_only_layers")
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_u64().map(|x| x as usize))
                        .collect()
                })
                .unwrap_or_default();
            let num_experts = get_usize(cfg, "num_experts")
                .or_else(|| get_usize(cfg, "num_local_experts"))
                .ok_or_else(|| ModelError::format(path, "config.json lacks 'num_experts'"))?;
            let dense_layers = (0..num_layers)
                .filter(|i| mlp_only.contains(i) || num_experts == 0 || (i + 1) % step != 0)
                .collect();
            Some(MoeConfig {
                num_experts,
                top_k: need("num_experts_per_tok")?,
                norm_topk_prob: get_bool(cfg, "norm_topk_prob").unwrap_or(arch == Arch::Qwen3Moe),
                expert_intermediate_size: need("moe_intermediate_size")?,
                shared_expert_intermediate_size: if arch == Arch::Qwen2Moe {
                    get_usize(cfg, "shared_expert_intermediate_size").filter(|&s| s > 0)
                } else {
                    None
                },
                dense_layers,
            })
        }
        _ => None,
    };
    let config = ModelConfig {
        arch,
        hidden_size,
        intermediate_size: get_usize(cfg, "intermediate_size").unwrap_or(0),
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        vocab_size: need("vocab_size")?,
        max_position: get_usize(cfg, "max_position_embeddings").unwrap_or(4096),
        rms_norm_eps: get_f32(cfg, "rms_norm_eps").unwrap_or(1e-6),
        rope_theta,
        rope_local_theta,
        rope_scaling,
        rope_style: RopeStyle::Neox,
        tie_word_embeddings: get_bool(cfg, "tie_word_embeddings").unwrap_or(arch == Arch::Gemma3),
        attention_bias: get_bool(cfg, "attention_bias")
            .unwrap_or(matches!(arch, Arch::Qwen2 | Arch::Qwen2Moe)),
        qk_norm: matches!(arch, Arch::Qwen3 | Arch::Qwen3Moe | Arch::Gemma3),
        layer_window,
        embedding_scale,
        norm_weight_offset,
        attn_scale,
        activation,
        post_norms,
        moe,
        bos_token_id: first_id(cfg.get("bos_token_id")),
        eos_token_id: first_id(cfg.get("eos_token_id")),
        act_quant: match cfg.get("quantization_config") {
            Some(qc) => crate::arch::act_quant::ActQuant::from_quantization_config(qc)
                .map_err(|e| ModelError::format(path, format!("quantization_config: {e}")))?,
            None => None,
        },
        quant_ignore: cfg
            .get("quantization_config")
            .and_then(|qc| qc.get("ignore"))
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
        online_rotations: online_rotations(
            root,
            get_usize(cfg, "intermediate_size").unwrap_or(0),
            path,
        )?,
        kv_cache: kv_cache_from_config(root, head_dim, path)?,
    };
    config.validate(path)?;
    Ok(config)
}
