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
use lowbit_model::gguf::GgufValue;
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
    if q.kind.is_fp4() {
        return fp4_tensors(module, t);
    }
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
        ElemKind::Int { .. } if q.int_quantized => {
            // int-quantized: the signed codes as I8 [rows, cols].
            out.push(StTensor {
                name: format!("{module}.weight"),
                dtype: "I8",
                shape: vec![rows, cols],
                data: t.codes.clone(),
            });
        }
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
        ElemKind::Nvfp4 | ElemKind::Mxfp4 => unreachable!("handled by fp4_tensors"),
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

/// compressed-tensors' `nvfp4-pack-quantized` / `mxfp4-pack-quantized` tensors: `weight_packed`
/// U8 [rows, cols/2] with element 2i in the low nibble and 2i+1 in the high nibble (E2M1 bit
/// patterns), `weight_scale` [rows, groups] as F8_E4M3 codes (NVFP4) or E8M0 bytes in U8 (MXFP4),
/// and for NVFP4 `weight_global_scale` F32 [1].
fn fp4_tensors(module: &str, t: &QuantizedTensor) -> Result<Vec<StTensor>> {
    let q = &t.quantizer;
    let (rows, cols) = (t.rows, t.cols);
    if !cols.is_multiple_of(2) {
        bail!("FP4 packing needs an even number of columns, the weight has {cols}");
    }
    let packed: Vec<u8> = t
        .codes
        .chunks_exact(2)
        .map(|p| (p[0] & 0x0f) | (p[1] << 4))
        .collect();
    let scales: Vec<u8> = t.params.iter().map(|p| q.fp4_scale_byte(*p)).collect();
    let mut out = vec![
        StTensor {
            name: format!("{module}.weight_packed"),
            dtype: "U8",
            shape: vec![rows, cols / 2],
            data: packed,
        },
        StTensor {
            name: format!("{module}.weight_scale"),
            dtype: if q.kind == ElemKind::Nvfp4 {
                "F8_E4M3"
            } else {
                "U8"
            },
            shape: vec![rows, t.groups],
            data: scales,
        },
    ];
    if q.kind == ElemKind::Nvfp4 {
        let gs = q.global_scale.unwrap_or(1.0);
        out.push(StTensor {
            name: format!("{module}.weight_global_scale"),
            dtype: "F32",
            shape: vec![1],
            data: gs.to_le_bytes().to_vec(),
        });
    }
    Ok(out)
}

/// The `quantization_config` object of config.json.
pub fn quantization_config(
    qm: &QuantizedModel,
    q: &crate::quantizer::Quantizer,
    act_order: bool,
) -> Value {
    quantization_config_for(&qm.ignored, q, act_order)
}

/// The `quantization_config` object for these kept-in-full-precision modules.
pub fn quantization_config_for(
    ignored: &[String],
    q: &crate::quantizer::Quantizer,
    act_order: bool,
) -> Value {
    let (num_bits, ty, symmetric, format) = match q.kind {
        ElemKind::Int { bits, asym } if q.int_quantized => (bits, "int", !asym, "int-quantized"),
        ElemKind::Int { bits, asym } => (bits, "int", !asym, "pack-quantized"),
        ElemKind::Fp8E4M3 => (8, "float", true, "float-quantized"),
        ElemKind::Nvfp4 => (4, "float", true, "nvfp4-pack-quantized"),
        ElemKind::Mxfp4 => (4, "float", true, "mxfp4-pack-quantized"),
    };
    let (strategy, group_size) = match q.layout {
        // NVFP4's second-level (global) scale makes it compressed-tensors' "tensor_group".
        ScaleLayout::Group(n) if q.kind == ElemKind::Nvfp4 => ("tensor_group", json!(n)),
        ScaleLayout::Group(n) => ("group", json!(n)),
        ScaleLayout::Channel => ("channel", Value::Null),
        ScaleLayout::Tensor | ScaleLayout::None => ("tensor", Value::Null),
    };
    let mut v = json!({
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
        "ignore": ignored,
        "kv_cache_scheme": null,
    });
    // The stored scale dtype, as compressed-tensors serialises it (its default for these formats).
    let scale_dtype = match q.kind {
        ElemKind::Nvfp4 => Some("torch.float8_e4m3fn"),
        ElemKind::Mxfp4 => Some("torch.uint8"),
        _ => None,
    };
    if let Some(d) = scale_dtype {
        v["config_groups"]["group_0"]["weights"]["scale_dtype"] = json!(d);
    }
    v
}

/// An HF config.json for sources that have none (GGUF, llama2.c). HF uses NeoX rope: interleaved
/// sources must go through [`crate::hf_source::undo_interleaved_rope`] first.
pub fn synthesize_hf_config(c: &ModelConfig) -> Result<Value> {
    if c.rope_style != lowbit_cpu::ops::RopeStyle::Neox {
        bail!(
            "{} from a GGUF/llama2.c source stores q/k for interleaved rope; writing it as an HF checkpoint \
             needs its q/k rows in NeoX order first (lowbit_quant::hf_source::undo_interleaved_rope)",
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
        Arch::Llama => {
            v["model_type"] = json!("llama");
            v["architectures"] = json!(["LlamaForCausalLM"]);
            v["hidden_act"] = json!("silu");
            v["mlp_bias"] = json!(false);
            if c.layer_window.iter().any(|w| w.is_some()) {
                bail!("sliding-window llama sources are not supported by lowbit quantize yet");
            }
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
    /// Tokenizer metadata (`tokenizer.*` GGUF keys) to write as `tokenizer.gguf`, for sources
    /// without tokenizer.json (GGUF, llama2.c).
    pub tokenizer_gguf: Option<Vec<(String, GgufValue)>>,
}

pub struct WriteInfo {
    pub scheme: String,
    pub method: Method,
    pub act_order: bool,
    pub calib_sequences: usize,
    pub calib_len: usize,
}

/// Where one tensor goes in model.safetensors; known before any data is produced so the header
/// can be written first and tensors streamed in as they are quantized.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    pub len: usize,
}

fn scale_dtype(fmt: ScaleFormat) -> (&'static str, usize) {
    match fmt {
        ScaleFormat::F16 => ("F16", 2),
        ScaleFormat::Bf16 => ("BF16", 2),
        _ => ("F32", 4),
    }
}

/// The tensors [`quantized_tensors`] writes for a `rows × cols` module.
pub fn quantized_specs(
    module: &str,
    q: &crate::quantizer::Quantizer,
    rows: usize,
    cols: usize,
) -> Result<Vec<TensorSpec>> {
    let (_, groups) = q.groups(cols)?;
    let per_row = matches!(q.layout, ScaleLayout::Group(_) | ScaleLayout::Channel);
    let spec = |n: &str, dtype, shape: Vec<usize>, elem: usize| TensorSpec {
        name: format!("{module}.{n}"),
        dtype,
        len: shape.iter().product::<usize>() * elem,
        shape,
    };
    let mut out = Vec::new();
    match q.kind {
        ElemKind::Int { .. } if q.int_quantized => {
            out.push(spec("weight", "I8", vec![rows, cols], 1));
        }
        ElemKind::Int { bits, asym } => {
            let words = lowbit_formats::pack::packed_words(cols, bits);
            out.push(spec("weight_packed", "I32", vec![rows, words], 4));
            out.push(spec("weight_shape", "I64", vec![2], 8));
            if asym {
                if per_row {
                    let zwords = lowbit_formats::pack::packed_words(rows, bits);
                    out.push(spec("weight_zero_point", "I32", vec![zwords, groups], 4));
                } else {
                    out.push(spec("weight_zero_point", "I8", vec![1], 1));
                }
            }
        }
        ElemKind::Fp8E4M3 => out.push(spec("weight", "F8_E4M3", vec![rows, cols], 1)),
        ElemKind::Nvfp4 | ElemKind::Mxfp4 => {
            if !cols.is_multiple_of(2) {
                bail!("FP4 packing needs an even number of columns, {module} has {cols}");
            }
            out.push(spec("weight_packed", "U8", vec![rows, cols / 2], 1));
            let sd = if q.kind == ElemKind::Nvfp4 {
                "F8_E4M3"
            } else {
                "U8"
            };
            out.push(spec("weight_scale", sd, vec![rows, groups], 1));
            if q.kind == ElemKind::Nvfp4 {
                out.push(spec("weight_global_scale", "F32", vec![1], 4));
            }
            return Ok(out);
        }
    }
    let (sd, size) = scale_dtype(q.scale_format);
    let scale_shape = if per_row { vec![rows, groups] } else { vec![1] };
    out.push(spec("weight_scale", sd, scale_shape, size));
    Ok(out)
}

/// How a kept (not quantized) tensor is written: float types as stored, except norm weights that
/// need an offset removed (and everything else) as F32.
fn kept_spec(name: &str, dtype: GgmlType, shape: &[usize], norm_shift: f32) -> TensorSpec {
    let float = matches!(dtype, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16);
    let shifted = is_norm(name, shape) && norm_shift != 0.0;
    let dtype = if float && !shifted {
        dtype_name(dtype)
    } else {
        "F32"
    };
    let elem = match dtype {
        "F32" => 4,
        _ => 2,
    };
    TensorSpec {
        name: name.to_string(),
        dtype,
        shape: shape.to_vec(),
        len: shape.iter().product::<usize>() * elem,
    }
}

fn is_norm(name: &str, shape: &[usize]) -> bool {
    shape.len() == 1 && name.contains("norm")
}

/// The output tensors of one pipeline tensor, and their specs.
fn out_specs(name: &str, t: &OutTensor, norm_shift: f32) -> Result<Vec<TensorSpec>> {
    Ok(match t {
        OutTensor::Quantized(qt) => {
            quantized_specs(module_name(name), &qt.quantizer, qt.rows, qt.cols)?
        }
        OutTensor::Plain { shape, .. } => vec![kept_spec(name, GgmlType::F32, shape, norm_shift)],
        OutTensor::Raw { dtype, shape, .. } => vec![kept_spec(name, *dtype, shape, norm_shift)],
        OutTensor::Source { shape, source } => {
            vec![kept_spec(name, source.dtype, shape, norm_shift)]
        }
    })
}

fn module_name(name: &str) -> &str {
    name.strip_suffix(".weight").unwrap_or(name)
}

/// Encode one pipeline tensor as safetensors tensors.
fn encode(name: &str, t: &OutTensor, norm_shift: f32) -> Result<Vec<StTensor>> {
    Ok(match t {
        OutTensor::Quantized(qt) => {
            quantized_tensors(module_name(name), qt).with_context(|| format!("tensor {name}"))?
        }
        OutTensor::Plain { shape, values } => {
            let shift = if is_norm(name, shape) {
                norm_shift
            } else {
                0.0
            };
            vec![StTensor {
                name: name.to_string(),
                dtype: "F32",
                shape: shape.clone(),
                data: values
                    .iter()
                    .flat_map(|v| (v - shift).to_le_bytes())
                    .collect(),
            }]
        }
        OutTensor::Source { shape, source }
            if matches!(source.dtype, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
                && !(is_norm(name, shape) && norm_shift != 0.0) =>
        {
            vec![StTensor {
                name: name.to_string(),
                dtype: dtype_name(source.dtype),
                shape: shape.clone(),
                data: source.data().to_vec(),
            }]
        }
        OutTensor::Source { shape, .. } => {
            let values = t.kept_values().expect("kept")?;
            let shift = if is_norm(name, shape) {
                norm_shift
            } else {
                0.0
            };
            vec![StTensor {
                name: name.to_string(),
                dtype: "F32",
                shape: shape.clone(),
                data: values
                    .iter()
                    .flat_map(|v| (v - shift).to_le_bytes())
                    .collect(),
            }]
        }
        OutTensor::Raw {
            dtype,
            shape,
            bytes,
        } => {
            if is_norm(name, shape) && norm_shift != 0.0 {
                let mut vals = vec![0f32; shape[0]];
                lowbit_formats::dequantize(*dtype, bytes, &mut vals)
                    .map_err(|e| anyhow::anyhow!("tensor {name}: {e}"))?;
                vec![StTensor {
                    name: name.to_string(),
                    dtype: "F32",
                    shape: shape.clone(),
                    data: vals
                        .iter()
                        .flat_map(|v| (v - norm_shift).to_le_bytes())
                        .collect(),
                }]
            } else {
                vec![StTensor {
                    name: name.to_string(),
                    dtype: dtype_name(*dtype),
                    shape: shape.clone(),
                    data: bytes.clone(),
                }]
            }
        }
    })
}

/// The norm-weight shift between the source's convention and HF's for this architecture.
fn norm_shift(src: &Source<'_>) -> f32 {
    // GGUF sources hold norm weights with the offset folded in; HF layout stores them without.
    if src.config_json.is_none() {
        hf_norm_offset(src.config.arch) - src.config.norm_weight_offset
    } else {
        0.0
    }
}

/// The output specs of every tensor of `weights` under a quantization plan: `targets` are
/// quantized with `q`, everything else is kept.
pub fn plan_specs(
    src: &Source<'_>,
    weights: &lowbit_model::WeightStore,
    targets: &std::collections::BTreeSet<String>,
    q: &crate::quantizer::Quantizer,
) -> Result<Vec<TensorSpec>> {
    let shift = norm_shift(src);
    let mut out = Vec::new();
    for n in weights.names() {
        let e = weights.entry(n).expect("listed");
        if targets.contains(n) {
            if e.shape.len() != 2 {
                bail!(
                    "tensor {n}: only 2-D weights can be quantized, shape is {:?}",
                    e.shape
                );
            }
            out.extend(quantized_specs(module_name(n), q, e.shape[0], e.shape[1])?);
        } else {
            out.push(kept_spec(n, e.dtype, &e.shape, shift));
        }
    }
    Ok(out)
}

/// A model directory being written: a temporary directory next to `out` holding a
/// model.safetensors whose header is written up front (from [`TensorSpec`]s) and whose tensors
/// are written at their offsets as they are produced. [`ModelWriter::finish`] adds config.json
/// and the tokenizer and renames it into place; dropping it unfinished removes it.
pub struct ModelWriter {
    out: PathBuf,
    parent: PathBuf,
    base: String,
    tmp: PathBuf,
    st_path: PathBuf,
    file: Option<std::fs::File>,
    /// Tensor name → (spec, absolute file offset, written yet).
    slots: std::collections::HashMap<String, (TensorSpec, u64, bool)>,
    norm_shift: f32,
    cfg: Value,
    tokenizer_dir: Option<PathBuf>,
    tokenizer_gguf: Option<Vec<(String, GgufValue)>>,
    /// `quantization_config.lowbit_rotation` (a lowbit extension), when weights were rotated.
    rotation: Option<Value>,
    /// compressed-tensors `input_activations` of the config group (`--act`, W8A8), when set.
    input_activations: Option<Value>,
    /// The KV cache the checkpoint runs with (`--kv`), when set.
    kv_cache: Option<lowbit_cpu::attention::KvCacheSpec>,
    finished: bool,
}

impl ModelWriter {
    /// Start writing `out` (refused if it exists unless `force`) with these tensors.
    pub fn create(
        out: &Path,
        src: &Source<'_>,
        specs: Vec<TensorSpec>,
        force: bool,
    ) -> Result<ModelWriter> {
        if out.exists() && !force {
            bail!(
                "{} already exists (use --force to replace it)",
                out.display()
            );
        }
        let cfg = match &src.config_json {
            Some(v) => v.clone(),
            None => synthesize_hf_config(src.config)?,
        };
        if !cfg.is_object() {
            bail!("source config.json is not a JSON object");
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
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)
                .with_context(|| format!("cannot clear {}", tmp.display()))?;
        }
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut w = ModelWriter {
            out: out.to_path_buf(),
            parent,
            base,
            st_path: tmp.join("model.safetensors"),
            tmp,
            file: None,
            slots: Default::default(),
            norm_shift: norm_shift(src),
            cfg,
            tokenizer_dir: src.dir.clone(),
            tokenizer_gguf: src.tokenizer_gguf.clone(),
            rotation: None,
            input_activations: None,
            kv_cache: None,
            finished: false,
        };
        w.start_safetensors(specs)?;
        Ok(w)
    }

    fn start_safetensors(&mut self, specs: Vec<TensorSpec>) -> Result<()> {
        let mut header = serde_json::Map::new();
        let mut offset = 0usize;
        for t in &specs {
            if header.contains_key(&t.name) {
                bail!("tensor {} would be written twice", t.name);
            }
            header.insert(
                t.name.clone(),
                json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.len]}),
            );
            offset += t.len;
        }
        header.insert("__metadata__".into(), json!({"format": "pt"}));
        let mut h = serde_json::to_vec(&Value::Object(header))?;
        // The data section starts 8-byte aligned (spaces are valid JSON padding).
        while (8 + h.len()) % 8 != 0 {
            h.push(b' ');
        }
        let path = &self.st_path;
        let io = |e: std::io::Error| anyhow::anyhow!("cannot write {}: {e}", path.display());
        let mut file = std::fs::File::create(path).map_err(io)?;
        file.write_all(&(h.len() as u64).to_le_bytes())
            .map_err(io)?;
        file.write_all(&h).map_err(io)?;
        let data_start = 8 + h.len() as u64;
        // Reserve the whole file now, so a full disk shows up before any quantization work.
        file.set_len(data_start + offset as u64).map_err(io)?;
        let mut off = data_start;
        for t in specs {
            let len = t.len as u64;
            self.slots.insert(t.name.clone(), (t, off, false));
            off += len;
        }
        self.file = Some(file);
        Ok(())
    }

    /// Record that the weights carry a fused rotation (`--rotate`): config.json gets
    /// `quantization_config.lowbit_rotation`, and the output head is marked untied (the rotated
    /// model always stores `lm_head.weight`).
    pub fn set_rotation(&mut self, info: &crate::rotate::RotationInfo) {
        // R1 unties the output head (it differs from the embedding after folding); R4 alone
        // leaves both as they were.
        if info.size > 0 {
            crate::rotate::untie_config_json(&mut self.cfg);
        }
        self.rotation = Some(info.to_json());
    }

    /// Record the activation quantization the checkpoint runs with (`--act`): written as the config
    /// group's `input_activations` (see [`crate::smooth::input_activations`]).
    pub fn set_input_activations(&mut self, v: Value) {
        self.input_activations = Some(v);
    }

    /// Record the KV cache the checkpoint runs with (`lowbit quantize --kv`): written as
    /// `quantization_config.kv_cache_scheme` ([`kv_cache_scheme`]) and, when rotated,
    /// `quantization_config.lowbit_kv_rotation`.
    pub fn set_kv_cache(&mut self, spec: lowbit_cpu::attention::KvCacheSpec) {
        self.kv_cache = Some(spec);
    }

    /// Write one pipeline tensor (all its safetensors tensors) at its place in the file.
    pub fn add(&mut self, name: &str, t: &OutTensor) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let file = self.file.as_ref().context("writer already finished")?;
        // Kept tensors that need no rewriting go straight from their values to the file, a few
        // MB at a time: encoding a 262k-row embedding first would hold it twice more (GBs).
        let direct: Option<(&'static str, &[usize], usize)> = match t {
            OutTensor::Plain { shape, values } if !is_norm(name, shape) => {
                Some(("F32", shape, values.len() * 4))
            }
            OutTensor::Raw {
                dtype,
                shape,
                bytes,
            } if !(is_norm(name, shape) && self.norm_shift != 0.0) => {
                Some((dtype_name(*dtype), shape, bytes.len()))
            }
            OutTensor::Source { shape, source } if !is_norm(name, shape) => {
                if matches!(source.dtype, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
                    Some((dtype_name(source.dtype), shape, source.data().len()))
                } else {
                    Some(("F32", shape, shape.iter().product::<usize>() * 4))
                }
            }
            _ => None,
        };
        if let Some((dtype, shape, len)) = direct {
            let (spec, off, written) = self
                .slots
                .get_mut(name)
                .with_context(|| format!("tensor {name} is not in the planned output"))?;
            if *written {
                bail!("tensor {name} written twice");
            }
            if spec.dtype != dtype || spec.shape != shape || spec.len != len {
                bail!(
                    "tensor {name}: produced {dtype} {shape:?} ({len} bytes), planned {} {:?} ({} bytes)",
                    spec.dtype,
                    spec.shape,
                    spec.len
                );
            }
            let werr =
                |e: std::io::Error| anyhow::anyhow!("cannot write {}: {e}", self.st_path.display());
            match t {
                OutTensor::Plain { values, .. } => {
                    const CHUNK: usize = 1 << 20;
                    let mut buf = Vec::with_capacity(CHUNK * 4);
                    for (i, c) in values.chunks(CHUNK).enumerate() {
                        buf.clear();
                        buf.extend(c.iter().flat_map(|v| v.to_le_bytes()));
                        file.write_all_at(&buf, *off + (i * CHUNK * 4) as u64)
                            .map_err(werr)?;
                    }
                }
                OutTensor::Raw { bytes, .. } => file.write_all_at(bytes, *off).map_err(werr)?,
                OutTensor::Source { source, .. }
                    if matches!(source.dtype, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) =>
                {
                    const CHUNK: usize = 16 << 20;
                    let data = source.data();
                    for (i, c) in data.chunks(CHUNK).enumerate() {
                        file.write_all_at(c, *off + (i * CHUNK) as u64)
                            .map_err(werr)?;
                        crate::pipeline::release_pages(c);
                    }
                }
                OutTensor::Source { shape, source } => {
                    // Rows of the block-quantized source decoded 1024 at a time.
                    let cols = *shape.last().expect("2-D");
                    let rb = source.dtype.byte_len(cols).with_context(|| {
                        format!(
                            "tensor {name}: {cols} columns do not fill {} blocks",
                            source.dtype
                        )
                    })?;
                    let data = source.data();
                    let mut vals = vec![0f32; 1024 * cols];
                    let mut buf = Vec::with_capacity(1024 * cols * 4);
                    for (i, rows) in data.chunks(1024 * rb).enumerate() {
                        let n = rows.len() / rb * cols;
                        lowbit_formats::dequant::dequantize_rows(
                            source.dtype,
                            rows,
                            cols,
                            &mut vals[..n],
                        )
                        .map_err(|e| anyhow::anyhow!("tensor {name}: {e}"))?;
                        buf.clear();
                        buf.extend(vals[..n].iter().flat_map(|v| v.to_le_bytes()));
                        file.write_all_at(&buf, *off + (i * 1024 * cols * 4) as u64)
                            .map_err(werr)?;
                    }
                    crate::pipeline::release_pages(data);
                }
                OutTensor::Quantized(_) => unreachable!("not written directly"),
            }
            *written = true;
            return Ok(());
        }
        for st in encode(name, t, self.norm_shift)? {
            let (spec, off, written) = self
                .slots
                .get_mut(&st.name)
                .with_context(|| format!("tensor {} is not in the planned output", st.name))?;
            if *written {
                bail!("tensor {} written twice", st.name);
            }
            if spec.dtype != st.dtype || spec.shape != st.shape || spec.len != st.data.len() {
                bail!(
                    "tensor {}: produced {} {:?} ({} bytes), planned {} {:?} ({} bytes)",
                    st.name,
                    st.dtype,
                    st.shape,
                    st.data.len(),
                    spec.dtype,
                    spec.shape,
                    spec.len
                );
            }
            file.write_all_at(&st.data, *off)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", self.st_path.display()))?;
            *written = true;
        }
        Ok(())
    }

    /// Check every tensor was written, add config.json and the tokenizer, and move the directory
    /// into place (replacing an existing one only after the new one is complete).
    pub fn finish(
        mut self,
        ignored: &[String],
        q: &crate::quantizer::Quantizer,
        info: &WriteInfo,
    ) -> Result<()> {
        if let Some(missing) = self
            .slots
            .iter()
            .find(|(_, s)| !s.2)
            .map(|(n, _)| n.clone())
        {
            bail!("tensor {missing} was planned but never produced");
        }
        let file = self.file.take().context("writer already finished")?;
        file.sync_all()
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", self.st_path.display()))?;
        drop(file);
        let obj = self.cfg.as_object_mut().expect("checked in create");
        let mut qc = quantization_config_for(ignored, q, info.act_order);
        if let (Some(r), Some(o)) = (&self.rotation, qc.as_object_mut()) {
            o.insert("lowbit_rotation".into(), r.clone());
        }
        if let Some(ia) = &self.input_activations {
            qc["config_groups"]["group_0"]["input_activations"] = ia.clone();
        }
        if let Some(kv) = &self.kv_cache {
            qc["kv_cache_scheme"] = kv_cache_scheme(kv.dtype)?;
            if let Some(seed) = kv.rotation_seed {
                qc["lowbit_kv_rotation"] = json!({"kind": "hadamard", "seed": seed});
            }
        }
        obj.insert("quantization_config".into(), qc);
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
        let tmp = self.tmp.clone();
        let cfg_path = tmp.join("config.json");
        std::fs::write(&cfg_path, serde_json::to_string_pretty(&self.cfg)? + "\n")
            .with_context(|| format!("cannot write {}", cfg_path.display()))?;
        if let Some(dir) = &self.tokenizer_dir {
            for f in TOKENIZER_FILES {
                let p = dir.join(f);
                if p.is_file() {
                    std::fs::copy(&p, tmp.join(f))
                        .with_context(|| format!("cannot copy {}", p.display()))?;
                }
            }
        }
        if let Some(meta) = &self.tokenizer_gguf {
            let mut m = vec![(
                "general.architecture".to_string(),
                GgufValue::String("lowbit-tokenizer".into()),
            )];
            m.extend(meta.iter().cloned());
            lowbit_model::gguf_write::write_gguf(&tmp.join(TOKENIZER_GGUF), m, &[])
                .map_err(|e| anyhow::anyhow!("cannot write the tokenizer: {e}"))?;
        }
        // Replace: move the old directory aside, move the new one in, then delete the old.
        let out = self.out.clone();
        let old = self
            .parent
            .join(format!(".{}.old-{}", self.base, std::process::id()));
        let had_old = out.exists();
        if had_old {
            std::fs::rename(&out, &old)
                .with_context(|| format!("cannot move the existing {} aside", out.display()))?;
        }
        if let Err(e) = std::fs::rename(&tmp, &out) {
            if had_old {
                let _ = std::fs::rename(&old, &out);
            }
            return Err(e)
                .with_context(|| format!("cannot rename {} to {}", tmp.display(), out.display()));
        }
        self.finished = true;
        if had_old {
            std::fs::remove_dir_all(&old)
                .with_context(|| format!("cannot remove the replaced {}", old.display()))?;
        }
        Ok(())
    }
}

impl Drop for ModelWriter {
    fn drop(&mut self) {
        if !self.finished {
            self.file = None;
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// compressed-tensors `kv_cache_scheme` (QuantizationArgs) of a lowbit KV cache type: dynamic,
/// symmetric; int8 and FP8 as `strategy: "token"` (lowbit's scales are finer: one per token
/// *and* KV head), int4 as groups of 32. f32 / f16 caches are not quantization schemes.
pub fn kv_cache_scheme(dtype: lowbit_cpu::attention::KvDtype) -> Result<Value> {
    use lowbit_cpu::attention::KvDtype;
    Ok(match dtype {
        KvDtype::Q8 => {
            json!({"num_bits": 8, "type": "int", "symmetric": true, "strategy": "token", "dynamic": true})
        }
        KvDtype::Fp8 => {
            json!({"num_bits": 8, "type": "float", "symmetric": true, "strategy": "token", "dynamic": true})
        }
        KvDtype::Q4 => json!({"num_bits": 4, "type": "int", "symmetric": true, "strategy": "group",
                              "group_size": lowbit_cpu::attention::Q4_GROUP, "dynamic": true}),
        KvDtype::F32 | KvDtype::F16 => {
            bail!("a {dtype} KV cache is not a quantization scheme: --kv takes int8, int4 or fp8")
        }
    })
}

/// Name of the vocab-only GGUF holding the tokenizer of GGUF / llama2.c sources (lowbit extension).
pub const TOKENIZER_GGUF: &str = "tokenizer.gguf";

/// Write the directory at `out` (refusing an existing one unless `force`) from an in-memory
/// quantized model.
pub fn write_model(
    out: &Path,
    src: &Source<'_>,
    qm: &QuantizedModel,
    q: &crate::quantizer::Quantizer,
    info: &WriteInfo,
    force: bool,
) -> Result<()> {
    let shift = norm_shift(src);
    let mut specs = Vec::new();
    for (name, t) in &qm.tensors {
        specs.extend(out_specs(name, t, shift).with_context(|| format!("tensor {name}"))?);
    }
    let mut w = ModelWriter::create(out, src, specs, force)?;
    for (name, t) in &qm.tensors {
        w.add(name, t)?;
    }
    w.finish(&qm.ignored, q, info)
}
