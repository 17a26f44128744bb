//! `lowbit quantize --export gguf`: a model as one GGUF file in llama.cpp's block formats, with
//! its config and tokenizer as GGUF metadata, written atomically (temp file + rename).
//!
//! Schemes: one block type for every matrix (`q8_0`, `q4_0`, `q4_1`, `q5_0`, `q5_1`, `q2_k` ..
//! `q6_k`, `iq4_nl`, `mxfp4`, `f16`, `f32`), or llama.cpp's `q4_k_m` mix: Q4_K, with Q6_K for the
//! output head (or the tied embedding) and for `attn_v` / `ffn_down` of the layers llama.cpp's
//! `use_more_bits` picks (the first and last eighth, and every third layer in between). Like
//! llama.cpp, a matrix whose rows are not whole blocks of its type falls back (Q4_K → Q5_0,
//! Q5_K → Q5_1, Q6_K → Q8_0, Q2_K/Q3_K → IQ4_NL), and to F16 when even that does not fit.
//! Norms and biases stay F32. The block encoders are lowbit-formats' (`quantize_rows`).

use std::path::Path;

use anyhow::{bail, Context, Result};
use lowbit_formats::GgmlType;
use lowbit_model::config::{Arch, ModelConfig, RopeScaling};
use lowbit_model::gguf::GgufValue;
use lowbit_model::gguf_write::GgufTensorWrite;
use lowbit_model::WeightStore;
use rayon::prelude::*;
use regex::Regex;

/// How the matrices of a model get their GGUF types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufScheme {
    /// One type for every matrix.
    Uniform(GgmlType),
    /// llama.cpp's Q4_K_M mix.
    Q4KM,
}

impl GgufScheme {
    /// Parse a scheme name (`q4_k_m`, `q8_0`, `q4_0`, ...).
    pub fn parse(name: &str) -> Result<GgufScheme> {
        use GgmlType::*;
        let n = name.to_ascii_lowercase();
        Ok(match n.as_str() {
            "q4_k_m" => GgufScheme::Q4KM,
            "f32" => GgufScheme::Uniform(F32),
            "f16" => GgufScheme::Uniform(F16),
            "q8_0" => GgufScheme::Uniform(Q8_0),
            "q4_0" => GgufScheme::Uniform(Q4_0),
            "q4_1" => GgufScheme::Uniform(Q4_1),
            "q5_0" => GgufScheme::Uniform(Q5_0),
            "q5_1" => GgufScheme::Uniform(Q5_1),
            "q2_k" => GgufScheme::Uniform(Q2_K),
            "q3_k" => GgufScheme::Uniform(Q3_K),
            "q4_k" | "q4_k_s" => GgufScheme::Uniform(Q4_K),
            "q5_k" | "q5_k_s" => GgufScheme::Uniform(Q5_K),
            "q6_k" => GgufScheme::Uniform(Q6_K),
            "iq4_nl" => GgufScheme::Uniform(IQ4_NL),
            "mxfp4" => GgufScheme::Uniform(MXFP4),
            _ => bail!(
                "scheme '{name}' has no GGUF form: --export gguf takes q4_k_m, q8_0, q4_0, q4_1, \
                 q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, iq4_nl, mxfp4, f16 or f32"
            ),
        })
    }

    /// llama.cpp's `general.file_type` (enum llama_ftype) for this scheme.
    pub fn file_type(self) -> u32 {
        use GgmlType::*;
        match self {
            GgufScheme::Q4KM => 15,
            GgufScheme::Uniform(t) => match t {
                F32 => 0,
                F16 => 1,
                Q4_0 => 2,
                Q4_1 => 3,
                Q8_0 => 7,
                Q5_0 => 8,
                Q5_1 => 9,
                Q2_K => 10,
                Q3_K => 11,
                Q4_K => 14,
                Q5_K => 16,
                Q6_K => 18,
                IQ4_NL => 25,
                MXFP4 => 38,
                _ => 0,
            },
        }
    }

    pub fn name(self) -> String {
        match self {
            GgufScheme::Q4KM => "q4_k_m".into(),
            GgufScheme::Uniform(t) => t.name().to_ascii_lowercase(),
        }
    }
}

/// llama.cpp's `use_more_bits`: layers that get more bits in the _M mixes.
fn use_more_bits(i: usize, n: usize) -> bool {
    // `i - n / 8` cannot underflow: the first test caught i < n / 8.
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The type llama.cpp falls back to when rows are not whole blocks of `t`.
fn fallback(t: GgmlType) -> GgmlType {
    use GgmlType::*;
    match t {
        Q2_K | Q3_K => IQ4_NL,
        Q4_K => Q5_0,
        Q5_K => Q5_1,
        Q6_K => Q8_0,
        _ => F16,
    }
}

/// The GGUF type of matrix `gguf_name` (`cols` values per row) under `scheme`. `layer` is its
/// decoder layer; `is_head` says it computes the output logits (`output.weight`, or the tied
/// `token_embd.weight`).
pub fn tensor_type(
    scheme: GgufScheme,
    gguf_name: &str,
    layer: Option<usize>,
    num_layers: usize,
    cols: usize,
    is_head: bool,
) -> GgmlType {
    use GgmlType::*;
    let wanted = match scheme {
        GgufScheme::Uniform(t) => {
            // As llama.cpp: the head gets Q6_K unless the scheme is already 8 bits or more.
            if is_head && !matches!(t, F32 | F16 | BF16 | Q8_0) {
                Q6_K
            } else {
                t
            }
        }
        GgufScheme::Q4KM => {
            let more = layer.is_some_and(|i| use_more_bits(i, num_layers));
            if is_head
                || (more && (gguf_name.contains(".attn_v.") || gguf_name.contains(".ffn_down.")))
            {
                Q6_K
            } else {
                Q4_K
            }
        }
    };
    let mut t = wanted;
    // The head of a row size that K-quants cannot hold goes to Q8_0 directly, as llama.cpp.
    if is_head && !cols.is_multiple_of(t.block_size()) {
        t = Q8_0;
    }
    while !cols.is_multiple_of(t.block_size()) {
        t = fallback(t);
    }
    t
}

/// The GGUF name of an HF tensor name (the inverse of lowbit-model's `hf_name`).
pub fn gguf_tensor_name(arch: Arch, hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, _) = rest.split_once('.')?;
    let suffix = hf.rsplit_once('.')?.1;
    const BASES: [&str; 13] = [
        "attn_norm",
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "attn_q_norm",
        "attn_k_norm",
        // Before post_attention_norm: Llama's post_attention_layernorm is GGUF's ffn_norm.
        "ffn_norm",
        "post_attention_norm",
        "post_ffw_norm",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    ];
    BASES
        .iter()
        .map(|b| format!("blk.{layer}.{b}.{suffix}"))
        .find(|g| lowbit_model::gguf_model::hf_name(arch, g).as_deref() == Some(hf))
}

fn u32v(v: usize) -> GgufValue {
    GgufValue::U32(v as u32)
}

/// The `{arch}.*` and `general.*` keys llama.cpp (and lowbit's GGUF loader) need for a model
/// that has no GGUF metadata of its own (HF and llama2.c sources).
pub fn config_metadata(c: &ModelConfig, name: &str) -> Result<Vec<(String, GgufValue)>> {
    let arch = match c.arch {
        Arch::Llama | Arch::Qwen2 | Arch::Qwen3 | Arch::Gemma3 => c.arch.name(),
        a => bail!(
            "--export gguf: writing {} metadata is not supported yet (llama, qwen2, qwen3, gemma3)",
            a.name()
        ),
    };
    if c.moe.is_some() {
        bail!("--export gguf: mixture-of-experts models are not supported yet");
    }
    let k = |s: &str| format!("{arch}.{s}");
    let mut m = vec![
        (
            "general.architecture".to_string(),
            GgufValue::String(arch.into()),
        ),
        ("general.name".to_string(), GgufValue::String(name.into())),
        (k("context_length"), u32v(c.max_position)),
        (k("embedding_length"), u32v(c.hidden_size)),
        (k("block_count"), u32v(c.num_layers)),
        (k("feed_forward_length"), u32v(c.intermediate_size)),
        (k("attention.head_count"), u32v(c.num_heads)),
        (k("attention.head_count_kv"), u32v(c.num_kv_heads)),
        (k("attention.key_length"), u32v(c.head_dim)),
        (k("attention.value_length"), u32v(c.head_dim)),
        (
            k("attention.layer_norm_rms_epsilon"),
            GgufValue::F32(c.rms_norm_eps),
        ),
        (k("rope.freq_base"), GgufValue::F32(c.rope_theta)),
        (k("rope.dimension_count"), u32v(c.head_dim)),
        (k("vocab_size"), u32v(c.vocab_size)),
    ];
    match c.rope_scaling {
        RopeScaling::None => {}
        RopeScaling::Linear { factor } => {
            m.push((k("rope.scaling.type"), GgufValue::String("linear".into())));
            m.push((k("rope.scaling.factor"), GgufValue::F32(factor)));
        }
        ref other => bail!("--export gguf: rope scaling {other:?} cannot be written yet"),
    }
    if let Some(w) = c.layer_window.iter().flatten().next() {
        if c.arch != Arch::Gemma3 {
            bail!("--export gguf: sliding-window {arch} models are not supported yet");
        }
        m.push((k("attention.sliding_window"), u32v(*w)));
    }
    Ok(m)
}

/// The metadata of a GGUF source to carry over: everything but what describes the old tensors.
pub fn metadata_from_gguf(g: &lowbit_model::gguf::GgufFile) -> Vec<(String, GgufValue)> {
    g.metadata
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "general.file_type" | "general.quantization_version" | "general.alignment"
            )
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// One written tensor, for the summary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GgufTensorReport {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    /// ‖W − Q‖² / ‖W‖² (0 for tensors kept as F32).
    pub weight_rel_err: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct GgufReport {
    pub tensors: Vec<GgufTensorReport>,
    /// Bits per weight over the quantized matrices.
    pub bits_per_weight: f64,
    pub file_bytes: u64,
}

/// NeoX (rotate-half) q/k rows → llama.cpp's adjacent-pair order, per head: interleaved row
/// 2i+j holds NeoX row j·(head_dim/2)+i. Rows of `cols` values (1 for biases).
fn neox_to_interleaved(v: &[f32], heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0f32; v.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let to = h * head_dim + 2 * i + j;
                let from = h * head_dim + j * half + i;
                out[to * cols..(to + 1) * cols].copy_from_slice(&v[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

fn is_norm(name: &str, shape: &[usize]) -> bool {
    shape.len() == 1 && name.contains("norm")
}

/// Write `config` + `weights` (HF tensor names, as lowbit's loaders give them) as a GGUF file at
/// `out`. `metadata` holds the config and tokenizer keys (see [`config_metadata`],
/// [`metadata_from_gguf`]); `general.file_type` and `general.quantization_version` are added.
/// Matrices whose module name matches an `ignore` regex stay F32.
#[allow(clippy::too_many_arguments)]
pub fn export_gguf(
    out: &Path,
    config: &ModelConfig,
    weights: &WeightStore,
    metadata: Vec<(String, GgufValue)>,
    scheme: GgufScheme,
    ignore: &[Regex],
    force: bool,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<GgufReport> {
    if out.exists() && !force {
        bail!(
            "{} already exists (use --force to replace it)",
            out.display()
        );
    }
    if out.is_dir() {
        bail!(
            "{} is a directory; --export gguf writes one .gguf file",
            out.display()
        );
    }
    if !metadata.iter().any(|(k, _)| k == "tokenizer.ggml.model") {
        bail!(
            "--export gguf needs the tokenizer as GGUF metadata: sources in GGUF or llama2.c form \
             (or a lowbit output directory holding tokenizer.gguf) have it; converting an HF \
             tokenizer.json is not supported yet"
        );
    }
    let arch = config.arch;
    // llama-arch GGUFs hold q/k rows for llama.cpp's adjacent-pair rope.
    let interleave = arch == Arch::Llama && config.rope_style == lowbit_cpu::ops::RopeStyle::Neox;
    let names: Vec<String> = weights.names().map(|s| s.to_string()).collect();
    let tied = !names.iter().any(|n| n == "lm_head.weight");
    let mut encoded: Vec<(String, GgmlType, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut reports = Vec::new();
    let (mut qbits, mut qweights) = (0f64, 0f64);
    let total = names.len();
    for (k, hf) in names.iter().enumerate() {
        progress(hf, k, total);
        let e = weights.entry(hf).expect("listed");
        let shape = e.shape.clone();
        let gname = gguf_tensor_name(arch, hf).with_context(|| {
            format!(
                "tensor {hf}: no GGUF name for it in a {} model",
                arch.name()
            )
        })?;
        let mut v = weights
            .to_f32(hf)
            .with_context(|| format!("tensor {hf}: cannot read it as f32"))?;
        if is_norm(hf, &shape) && config.norm_weight_offset != 0.0 {
            // GGUF stores the weight the norm multiplies by (Gemma: 1 + w).
            v.iter_mut().for_each(|x| *x += config.norm_weight_offset);
        }
        if interleave {
            let heads = if hf.contains(".q_proj.") {
                Some(config.num_heads)
            } else if hf.contains(".k_proj.") {
                Some(config.num_kv_heads)
            } else {
                None
            };
            if let Some(h) = heads {
                let cols = if shape.len() == 2 { shape[1] } else { 1 };
                if shape[0] != h * config.head_dim {
                    bail!(
                        "tensor {hf}: shape {shape:?} is not {h} heads × {} rows",
                        config.head_dim
                    );
                }
                v = neox_to_interleaved(&v, h, config.head_dim, cols);
            }
        }
        let module = hf.strip_suffix(".weight").unwrap_or(hf);
        let matrix = shape.len() == 2;
        let ty = if !matrix || ignore.iter().any(|r| r.is_match(module)) {
            GgmlType::F32
        } else {
            let layer = hf
                .strip_prefix("model.layers.")
                .and_then(|r| r.split('.').next())
                .and_then(|i| i.parse().ok());
            let is_head = hf == "lm_head.weight" || (tied && hf == "model.embed_tokens.weight");
            tensor_type(scheme, &gname, layer, config.num_layers, shape[1], is_head)
        };
        let cols = *shape.last().unwrap_or(&1);
        let row_bytes = ty.byte_len(cols).with_context(|| {
            format!(
                "tensor {hf}: rows of {cols} are not whole {} blocks",
                ty.name()
            )
        })?;
        let rows = v.len() / cols.max(1);
        let mut data = vec![0u8; rows * row_bytes];
        // Rows are independent blocks: encode them in parallel, a few rows per task.
        data.par_chunks_mut(row_bytes * 16)
            .zip(v.par_chunks(cols * 16))
            .try_for_each(|(d, s)| lowbit_formats::quantize_rows(ty, s, cols, d))
            .map_err(|e| anyhow::anyhow!("tensor {hf}: {} encoding failed: {e}", ty.name()))?;
        let mut err = 0.0;
        if matrix && ty != GgmlType::F32 {
            let mut back = vec![0f32; v.len()];
            lowbit_formats::dequantize(ty, &data, &mut back)
                .map_err(|e| anyhow::anyhow!("tensor {hf}: {e}"))?;
            let (num, den) = v.iter().zip(&back).fold((0f64, 0f64), |(n, d), (a, b)| {
                (n + ((a - b) as f64).powi(2), d + (*a as f64).powi(2))
            });
            err = num / den.max(1e-300);
            qbits += data.len() as f64 * 8.0;
            qweights += v.len() as f64;
        }
        reports.push(GgufTensorReport {
            name: gname.clone(),
            dtype: ty.name().into(),
            shape: shape.clone(),
            weight_rel_err: err,
        });
        encoded.push((gname, ty, shape, data));
    }
    progress("writing", total, total);
    let mut meta = metadata;
    meta.retain(|(k, _)| {
        !matches!(
            k.as_str(),
            "general.file_type" | "general.quantization_version"
        )
    });
    meta.push((
        "general.file_type".into(),
        GgufValue::U32(scheme.file_type()),
    ));
    meta.push(("general.quantization_version".into(), GgufValue::U32(2)));
    let tensors: Vec<GgufTensorWrite<'_>> = encoded
        .iter()
        .map(|(n, t, s, d)| GgufTensorWrite {
            name: n.clone(),
            dtype: *t,
            shape: s.clone(),
            data: d,
        })
        .collect();
    lowbit_model::gguf_write::write_gguf(out, meta, &tensors)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
    let file_bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    Ok(GgufReport {
        tensors: reports,
        bits_per_weight: qbits / qweights.max(1.0),
        file_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_k_m_mix_matches_llama_cpp_gemma_270m_types() {
        // What llama.cpp wrote for Gemma-3-270M Q4_K_M (18 layers, hidden 640, ffn 2048, tied):
        // attn_v Q8_0 in the use_more_bits layers (Q6_K fallen back) else Q5_0 (Q4_K fallen back).
        let s = GgufScheme::Q4KM;
        let more = [0, 1, 4, 7, 10, 13, 15, 16, 17];
        for i in 0..18 {
            let v = tensor_type(
                s,
                &format!("blk.{i}.attn_v.weight"),
                Some(i),
                18,
                640,
                false,
            );
            let d = tensor_type(
                s,
                &format!("blk.{i}.ffn_down.weight"),
                Some(i),
                18,
                2048,
                false,
            );
            if more.contains(&i) {
                assert_eq!((v, d), (GgmlType::Q8_0, GgmlType::Q6_K), "layer {i}");
            } else {
                assert_eq!((v, d), (GgmlType::Q5_0, GgmlType::Q4_K), "layer {i}");
            }
            let o = tensor_type(
                s,
                &format!("blk.{i}.attn_output.weight"),
                Some(i),
                18,
                1024,
                false,
            );
            assert_eq!(o, GgmlType::Q4_K);
        }
        assert_eq!(
            tensor_type(s, "token_embd.weight", None, 18, 640, true),
            GgmlType::Q8_0
        );
        assert_eq!(
            tensor_type(s, "output.weight", None, 18, 4096, true),
            GgmlType::Q6_K
        );
        let q4 = GgufScheme::parse("q4_0").unwrap();
        assert_eq!(
            tensor_type(q4, "blk.0.attn_q.weight", Some(0), 18, 640, false),
            GgmlType::Q4_0
        );
        assert_eq!(
            tensor_type(q4, "blk.0.attn_q.weight", Some(0), 18, 100, false),
            GgmlType::F16
        );
        assert!(GgufScheme::parse("int4_g128").is_err());
    }

    #[test]
    fn names_invert_lowbit_model_hf_names() {
        for arch in [Arch::Llama, Arch::Gemma3, Arch::Qwen3] {
            for g in [
                "token_embd.weight",
                "output.weight",
                "output_norm.weight",
                "blk.3.attn_q.weight",
                "blk.3.attn_k_norm.weight",
                "blk.3.ffn_norm.weight",
                "blk.3.ffn_down.weight",
                "blk.3.attn_q.bias",
            ] {
                let hf = lowbit_model::gguf_model::hf_name(arch, g).unwrap();
                assert_eq!(
                    gguf_tensor_name(arch, &hf).as_deref(),
                    Some(g),
                    "{arch:?} {g}"
                );
            }
        }
        // Gemma's post-attention norm is its own tensor; Llama's is the FFN norm.
        assert_eq!(
            gguf_tensor_name(
                Arch::Gemma3,
                "model.layers.0.post_attention_layernorm.weight"
            )
            .as_deref(),
            Some("blk.0.post_attention_norm.weight")
        );
    }

    #[test]
    fn rope_rows_are_the_inverse_of_hf_permute() {
        // NeoX row j*half+i ↔ interleaved row 2i+j (head_dim 4, one head, one column).
        let neox = [0.0f32, 1.0, 2.0, 3.0];
        assert_eq!(
            neox_to_interleaved(&neox, 1, 4, 1),
            vec![0.0, 2.0, 1.0, 3.0]
        );
    }
}
