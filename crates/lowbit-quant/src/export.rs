//! Writing a quantized model as a Hugging Face directory in vLLM's compressed-tensors layout
//! (docs/FORMAT.md): `config.json` with `quantization_config`, `model.safetensors`, tokenizer
//! files copied from the source. The directory is built under a temporary name next to the
//! target and renamed into place at the end, so a failure never leaves a half-written model.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lowbit_formats::spec::ScaleFormat;
use lowbit_formats::GgmlType;
use lowbit_model::config::Arch;
use lowbit_model::ModelConfig;
use serde_json::{json, Value};

use crate::pipeline::{Method, OutTensor, QuantizedModel};
use crate::quantizer::{ElemKind, QuantizedTensor, ScaleLayout};

/// Files copied next to the weights when the source directory has them.
pub const TOKENIZER_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "generation_config.json",
];

/// One tensor of the safetensors file being written.
struct StTensor {
    name: String,
    dtype: &'static str,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn scale_bytes(fmt: ScaleFormat, v: f32) -> (&'static str, Vec<u8>) {
    match fmt {
        ScaleFormat::F16 => ("F16", half::f16::from_f32(v).to_le_bytes().to_vec()),
        ScaleFormat::Bf16 => ("BF16", half::bf16::from_f32(v).to_le_bytes().to_vec()),
        _ => ("F32", v.to_le_bytes().to_vec()),
    }
}

/// compressed-tensors tensors for one quantized module.
fn quantized_tensors(module: &str, t: &QuantizedTensor) -> Result<Vec<StTensor>> {
    let q = &t.quantizer;
    let (rows, cols) = (t.rows, t.cols);
    let mut out = Vec::new();
    // Scales: [rows, groups] for group/channel, [1] for tensor-wide and no-scale layouts.
    let per_row = matches!(q.layout, ScaleLayout::Group(_) | ScaleLayout::Channel);
    let (scale_shape, scale_vals): (Vec<usize>, Vec<f32>) = if per_row {
        (
            vec![rows, t.groups],
            t.params.iter().map(|p| p.scale).collect(),
        )
    } else {
        (vec![1], vec![t.params[0].scale])
    };
    let mut scale_data = Vec::new();
    let mut scale_dtype = "F32";
    for v in scale_vals {
        let (d, b) = scale_bytes(q.scale_format, v);
        scale_dtype = d;
        scale_data.extend_from_slice(&b);
    }
    match q.kind {
        ElemKind::Int { bits, asym } => {
            // Dense per-row packing of unsigned codes q + 2^(b-1), lowest bits first (the same
            // bit stream as lowbit_formats::pack).
            let offset = 1i32 << (bits - 1);
            let words = lowbit_formats::pack::packed_words(cols, bits);
            let mut data = Vec::with_capacity(rows * words * 4);
            let mut ucodes = vec![0u8; cols];
            let mut packed = vec![0u32; words];
            for r in 0..rows {
                for (u, &c) in ucodes.iter_mut().zip(&t.codes[r * cols..(r + 1) * cols]) {
                    *u = (c as i8 as i32 + offset) as u8;
                }
                lowbit_formats::pack::pack_into(&ucodes, bits, &mut packed)
                    .map_err(anyhow::Error::msg)?;
                data.extend(packed.iter().flat_map(|w| w.to_le_bytes()));
            }
            out.push(StTensor {
                name: format!("{module}.weight_packed"),
                dtype: "I32",
                shape: vec![rows, words],
                data,
            });
            out.push(StTensor {
                name: format!("{module}.weight_shape"),
                dtype: "I64",
                shape: vec![2],
                data: [rows as i64, cols as i64]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            });
            if asym {
                if per_row {
                    // Zero points [rows, groups] packed along rows: column g of the result holds
                    // the stream of rows' zero points of group g.
                    let zwords = lowbit_formats::pack::packed_words(rows, bits);
                    let mut zp = vec![0u32; zwords * t.groups];
                    let mut col = vec![0u8; rows];
                    let mut packed = vec![0u32; zwords];
                    for g in 0..t.groups {
                        for (r, c) in col.iter_mut().enumerate() {
                            *c = (t.params[r * t.groups + g].zero + offset) as u8;
                        }
                        lowbit_formats::pack::pack_into(&col, bits, &mut packed)
                            .map_err(anyhow::Error::msg)?;
                        for (wi, w) in packed.iter().enumerate() {
                            zp[wi * t.groups + g] = *w;
                        }
                    }
                    out.push(StTensor {
                        name: format!("{module}.weight_zero_point"),
                        dtype: "I32",
                        shape: vec![zwords, t.groups],
                        data: zp.iter().flat_map(|w| w.to_le_bytes()).collect(),
                    });
                } else {
                    out.push(StTensor {
                        name: format!("{module}.weight_zero_point"),
                        dtype: "I8",
                        shape: vec![1],
                        data: vec![t.params[0].zero as i8 as u8],
                    });
                }
            }
        }
        ElemKind::Fp8E4M3 => {
            out.push(StTensor {
                name: format!("{module}.weight"),
                dtype: "F8_E4M3",
                shape: vec![rows, cols],
                data: t.codes.clone(),
            });
        }
    }
    let scale_shape = if per_row { scale_shape } else { vec![1] };
    out.push(StTensor {
        name: format!("{module}.weight_scale"),
        dtype: scale_dtype,
        shape: scale_shape,
        data: scale_data,
    });
    Ok(out)
}

/// The `quantization_config` object of config.json.
pub fn quantization_config(
    qm: &QuantizedModel,
    q: &crate::quantizer::Quantizer,
    act_order: bool,
) -> Value {
    let (num_bits, ty, symmetric, format) = match q.kind {
        ElemKind::Int { bits, asym } => (bits, "int", !asym, "pack-quantized"),
        ElemKind::Fp8E4M3 => (8, "float", true, "float-quantized"),
    };
    let (strategy, group_size) = match q.layout {
        ScaleLayout::Group(n) => ("group", json!(n)),
        ScaleLayout::Channel => ("channel", Value::Null),
        ScaleLayout::Tensor | ScaleLayout::None => ("tensor", Value::Null),
    };
    json!({
        "quant_method": "compressed-tensors",
        "format": format,
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {
                    "num_bits": num_bits,
                    "type": ty,
                    "symmetric": symmetric,
                    "strategy": strategy,
                    "group_size": group_size,
                    "dynamic": false,
                    "observer": "minmax",
                    // Static groups: columns were reordered while quantizing, no g_idx is stored.
                    "actorder": if act_order { json!("weight") } else { Value::Null },
                },
                "input_activations": null,
                "output_activations": null,
                "format": format,
            }
        },
        "ignore": qm.ignored,
        "kv_cache_scheme": null,
    })
}

/// An HF config.json for sources that have none (GGUF). Only rope layouts HF shares (NeoX) can be
/// expressed without permuting q/k, so interleaved-rope sources are refused.
pub fn synthesize_hf_config(c: &ModelConfig) -> Result<Value> {
    if c.rope_style != lowbit_cpu::ops::RopeStyle::Neox {
        bail!(
            "{} from a GGUF/llama2.c source stores q/k for interleaved rope; writing it as an HF checkpoint \
             needs the q/k permutation, which lowbit quantize does not do yet (use the HF checkpoint as input)",
            c.arch.name()
        );
    }
    if c.moe.is_some() {
        bail!("writing a config.json for a mixture-of-experts GGUF source is not supported yet");
    }
    let mut v = json!({
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.max_position,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "tie_word_embeddings": c.tie_word_embeddings,
        "attention_bias": c.attention_bias,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "torch_dtype": "float32",
    });
    match c.rope_scaling {
        lowbit_model::config::RopeScaling::None => {}
        lowbit_model::config::RopeScaling::Linear { factor } => {
            v["rope_scaling"] = json!({"rope_type": "linear", "factor": factor})
        }
        _ => bail!(
            "rope scaling {:?} cannot be written to config.json yet",
            c.rope_scaling
        ),
    }
    match c.arch {
        Arch::Gemma3 => {
            v["model_type"] = json!("gemma3_text");
            v["architectures"] = json!(["Gemma3ForCausalLM"]);
            v["hidden_activation"] = json!("gelu_pytorch_tanh");
            v["query_pre_attn_scalar"] = json!(1.0 / (c.attn_scale as f64 * c.attn_scale as f64));
            v["rope_local_base_freq"] = json!(c.rope_local_theta.unwrap_or(10000.0));
            let window = c.layer_window.iter().flatten().next().copied();
            v["sliding_window"] = json!(window);
            v["layer_types"] = json!(c
                .layer_window
                .iter()
                .map(|w| if w.is_some() {
                    "sliding_attention"
                } else {
                    "full_attention"
                })
                .collect::<Vec<_>>());
        }
        Arch::Qwen2 | Arch::Qwen3 => {
            v["model_type"] = json!(c.arch.name());
            v["architectures"] = json!([if c.arch == Arch::Qwen2 {
                "Qwen2ForCausalLM"
            } else {
                "Qwen3ForCausalLM"
            }]);
            v["hidden_act"] = json!("silu");
            if c.layer_window.iter().any(|w| w.is_some()) {
                bail!("sliding-window Qwen GGUF sources are not supported by lowbit quantize yet");
            }
        }
        a => bail!(
            "writing a config.json for {} from a GGUF source is not supported yet",
            a.name()
        ),
    }
    Ok(v)
}

/// HF norm weights of this architecture are stored as `w - offset`; GGUF stores `w` (offset 0).
fn hf_norm_offset(arch: Arch) -> f32 {
    if arch == Arch::Gemma3 {
        1.0
    } else {
        0.0
    }
}

fn dtype_name(t: GgmlType) -> &'static str {
    match t {
        GgmlType::F16 => "F16",
        GgmlType::BF16 => "BF16",
        _ => "F32",
    }
}

/// Everything about where the model came from that the writer needs.
pub struct Source<'a> {
    pub config: &'a ModelConfig,
    /// The source config.json (HF sources), or None to synthesize one.
    pub config_json: Option<Value>,
    /// Directory to copy tokenizer files from.
    pub dir: Option<PathBuf>,
}

pub struct WriteInfo {
    pub scheme: String,
    pub method: Method,
    pub act_order: bool,
    pub calib_sequences: usize,
    pub calib_len: usize,
}

/// Write the directory at `out` (refusing an existing one unless `force`).
pub fn write_model(
    out: &Path,
    src: &Source<'_>,
    qm: &QuantizedModel,
    q: &crate::quantizer::Quantizer,
    info: &WriteInfo,
    force: bool,
) -> Result<()> {
    if out.exists() && !force {
        bail!(
            "{} already exists (use --force to replace it)",
            out.display()
        );
    }
    let mut cfg = match &src.config_json {
        Some(v) => v.clone(),
        None => synthesize_hf_config(src.config)?,
    };
    // GGUF sources hold norm weights with the offset folded in; HF layout stores them without.
    let norm_shift = if src.config_json.is_none() {
        hf_norm_offset(src.config.arch) - src.config.norm_weight_offset
    } else {
        0.0
    };
    let obj = cfg
        .as_object_mut()
        .context("source config.json is not a JSON object")?;
    obj.insert(
        "quantization_config".into(),
        quantization_config(qm, q, info.act_order),
    );
    obj.insert(
        "lowbit".into(),
        json!({
            "scheme": info.scheme,
            "method": info.method.name(),
            "act_order": info.act_order,
            "calibration": {"sequences": info.calib_sequences, "tokens_per_sequence": info.calib_len},
            "version": env!("CARGO_PKG_VERSION"),
        }),
    );

    let mut tensors = Vec::new();
    for (name, t) in &qm.tensors {
        match t {
            OutTensor::Quantized(qt) => {
                let module = name.strip_suffix(".weight").unwrap_or(name);
                tensors.extend(
                    quantized_tensors(module, qt).with_context(|| format!("tensor {name}"))?,
                );
            }
            OutTensor::Plain { shape, values } => {
                let shift = if shape.len() == 1 && name.contains("norm") {
                    norm_shift
                } else {
                    0.0
                };
                let data = values
                    .iter()
                    .flat_map(|v| (v - shift).to_le_bytes())
                    .collect();
                tensors.push(StTensor {
                    name: name.clone(),
                    dtype: "F32",
                    shape: shape.clone(),
                    data,
                });
            }
            OutTensor::Raw {
                dtype,
                shape,
                bytes,
            } => {
                if shape.len() == 1 && name.contains("norm") && norm_shift != 0.0 {
                    let mut vals = vec![0f32; shape[0]];
                    lowbit_formats::dequantize(*dtype, bytes, &mut vals)
                        .map_err(|e| anyhow::anyhow!("tensor {name}: {e}"))?;
                    let data = vals
                        .iter()
                        .flat_map(|v| (v - norm_shift).to_le_bytes())
                        .collect();
                    tensors.push(StTensor {
                        name: name.clone(),
                        dtype: "F32",
                        shape: shape.clone(),
                        data,
                    });
                } else {
                    tensors.push(StTensor {
                        name: name.clone(),
                        dtype: dtype_name(*dtype),
                        shape: shape.clone(),
                        data: bytes.clone(),
                    });
                }
            }
        }
    }

    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base = out
        .file_name()
        .context("output path has no directory name")?
        .to_string_lossy()
        .into_owned();
    let tmp = parent.join(format!(".{base}.tmp-{}", std::process::id()));
    let result = (|| -> Result<()> {
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)
                .with_context(|| format!("cannot clear {}", tmp.display()))?;
        }
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        write_safetensors(&tmp.join("model.safetensors"), &tensors)?;
        let cfg_path = tmp.join("config.json");
        std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg)? + "\n")
            .with_context(|| format!("cannot write {}", cfg_path.display()))?;
        if let Some(dir) = &src.dir {
            for f in TOKENIZER_FILES {
                let p = dir.join(f);
                if p.is_file() {
                    std::fs::copy(&p, tmp.join(f))
                        .with_context(|| format!("cannot copy {}", p.display()))?;
                }
            }
        }
        // Replace: move the old directory aside, move the new one in, then delete the old.
        let old = parent.join(format!(".{base}.old-{}", std::process::id()));
        let had_old = out.exists();
        if had_old {
            std::fs::rename(out, &old)
                .with_context(|| format!("cannot move the existing {} aside", out.display()))?;
        }
        if let Err(e) = std::fs::rename(&tmp, out) {
            if had_old {
                let _ = std::fs::rename(&old, out);
            }
            return Err(e)
                .with_context(|| format!("cannot rename {} to {}", tmp.display(), out.display()));
        }
        if had_old {
            std::fs::remove_dir_all(&old)
                .with_context(|| format!("cannot remove the replaced {}", old.display()))?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn write_safetensors(path: &Path, tensors: &[StTensor]) -> Result<()> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for t in tensors {
        header.insert(
            t.name.clone(),
            json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.data.len()]}),
        );
        offset += t.data.len();
    }
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut h = serde_json::to_vec(&Value::Object(header))?;
    // The data section starts 8-byte aligned (spaces are valid JSON padding).
    while (8 + h.len()) % 8 != 0 {
        h.push(b' ');
    }
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let io = |e: std::io::Error| anyhow::anyhow!("cannot write {}: {e}", path.display());
    w.write_all(&(h.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(&h).map_err(io)?;
    for t in tensors {
        w.write_all(&t.data).map_err(io)?;
    }
    let file = w.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(())
}
