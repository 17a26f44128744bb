//! `lowbit quantize`: RTN, GPTQ, imatrix or AWQ weight quantization (optionally with W8A8 activation
//! quantization and SmoothQuant) into a compressed-tensors directory.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use lowbit_model::{ModelConfig, WeightStore};
use lowbit_quant::regex::Regex;
use lowbit_quant::{GptqOptions, Method, Options, Quantizer, Source, WriteInfo};

#[derive(Args)]
pub struct QuantizeArgs {
    /// Input model: HF directory, GGUF file (Gemma 3 / Qwen), or hub id.
    #[arg(short, long)]
    model: String,
    /// Scheme: a preset (w4g128, w4g128_asym, w3g128, w2g64, w8, w8a16, fp8, nvfp4, mxfp4) or a
    /// spec (int4_g64_sym, uint4_g128, int8_channel, fp8_e4m3_channel, ...); with --export gguf a
    /// GGUF scheme (q4_k_m, q8_0, q4_0, q6_k, ...).
    #[arg(short, long)]
    scheme: String,
    /// rtn, gptq, imatrix (importance-weighted scale search), awq (activation-aware channel
    /// scaling, then RTN), awq+gptq or awq+imatrix.
    #[arg(long, default_value = "rtn")]
    method: String,
    /// Quantize activations too, dynamically per token (W8A8 / W4A8): int8 (with integer weights)
    /// or fp8 (with --scheme fp8). Written as compressed-tensors `input_activations`.
    #[arg(long, value_name = "int8|fp8")]
    act: Option<String>,
    /// SmoothQuant: move activation outliers into the weights with strength ALPHA in [0, 1]
    /// (0.5 is the usual choice), folded into the preceding norms / v_proj / up_proj. Needs --calib.
    #[arg(long, value_name = "ALPHA")]
    smooth: Option<f64>,
    /// --method imatrix: read the importance values from FILE (written by --imatrix-out; JSON,
    /// see docs) instead of calibrating.
    #[arg(long, value_name = "FILE")]
    imatrix: Option<PathBuf>,
    /// Save the importance values (mean squared input activation per channel of every linear)
    /// gathered from the calibration text to FILE.
    #[arg(long, value_name = "FILE")]
    imatrix_out: Option<PathBuf>,
    /// Calibration text (gptq, imatrix, awq, --smooth).
    #[arg(long)]
    calib: Option<PathBuf>,
    /// Calibration sequences.
    #[arg(long, default_value_t = 64)]
    calib_seqs: usize,
    /// Tokens per calibration sequence.
    #[arg(long, default_value_t = 512)]
    calib_len: usize,
    /// GPTQ activation ordering (static groups).
    #[arg(long)]
    act_order: bool,
    /// GPTQ dampening, as a fraction of the mean Hessian diagonal.
    #[arg(long, default_value_t = 0.01)]
    damp: f64,
    /// Output directory (a .gguf file with --export gguf).
    #[arg(short, long)]
    out: PathBuf,
    /// Output form: compressed-tensors (an HF directory), or gguf (one GGUF file in llama.cpp's
    /// block formats; --scheme q4_k_m, q8_0, q4_0, q6_k, ...; RTN only).
    #[arg(
        long,
        default_value = "compressed-tensors",
        value_name = "compressed-tensors|gguf"
    )]
    export: String,
    /// Replace an existing output directory.
    #[arg(long)]
    force: bool,
    /// Keep linear modules whose name matches in full precision (repeatable; lm_head always kept).
    #[arg(long)]
    ignore: Vec<String>,
    /// Print one JSON summary.
    #[arg(long)]
    json: bool,
    /// Rotate before quantizing: none; hadamard (randomized Hadamard R1 of the residual stream
    /// fused into the weights, norms folded first; Llama/Mistral/Qwen2/Qwen3 dense models);
    /// online (R4: the down projection's input, rotated again at inference; any dense model,
    /// Gemma 3 included); or hadamard+online.
    #[arg(
        long,
        default_value = "none",
        value_name = "none|hadamard|online|hadamard+online"
    )]
    rotate: String,
    /// Seed of the rotation's random ±1 signs.
    #[arg(long, default_value_t = 0)]
    rotate_seed: u64,
    /// Record a quantized KV cache in config.json (`quantization_config.kv_cache_scheme`): int8,
    /// int4 (groups of 32) or fp8 (E4M3), dynamic per token and KV head. lowbit's loader then
    /// runs the model with that cache (`--kv` of run/eval/bench overrides it).
    #[arg(long, value_name = "int8|int4|fp8")]
    kv: Option<String>,
    /// With --kv: Hadamard-rotate keys, values and queries before the cache quantizes them
    /// (`quantization_config.lowbit_kv_rotation`, a lowbit extension).
    #[arg(long)]
    kv_rotate: bool,
    /// Abort (leaving nothing behind) if resident memory goes over this many MiB.
    #[arg(long, value_name = "MIB")]
    max_memory: Option<u64>,
}

/// Preset scheme names → spec names.
pub fn preset(name: &str) -> String {
    match name.to_ascii_lowercase().as_str() {
        "w4g128" | "w4a16" => "int4_g128_sym".into(),
        "w4g128_asym" => "uint4_g128".into(),
        "w3g128" => "int3_g128_sym".into(),
        "w2g64" => "int2_g64_sym".into(),
        "w8" | "w8a16" => "int8_channel_sym".into(),
        "fp8" => "fp8_e4m3_channel".into(),
        other => other.to_string(),
    }
}

/// What the quantizer needs of a model: config, weights, and where config/tokenizer came from.
pub struct Input {
    pub config: ModelConfig,
    pub weights: WeightStore,
    pub tokenizer: Option<Box<dyn lowbit_model::tokenizer::Tokenizer>>,
    pub dir: Option<PathBuf>,
    pub config_json: Option<serde_json::Value>,
    /// Tokenizer to write as tokenizer.gguf (GGUF and llama2.c sources).
    pub tokenizer_gguf: Option<Vec<(String, lowbit_model::gguf::GgufValue)>>,
}

/// Open a model; an HF directory without a tokenizer opens weights-only.
pub fn open_input(spec: &str) -> Result<Input> {
    let path = Path::new(spec);
    if path.is_dir()
        && !path.join("tokenizer.json").exists()
        && !path.join(lowbit_quant::export::TOKENIZER_GGUF).exists()
    {
        let (cfg, weights) = lowbit_model::safetensors_dir::open_hf_dir(path)
            .with_context(|| format!("cannot load model '{spec}'"))?;
        let config = lowbit_model::config::from_hf_config(&cfg, &path.join("config.json"))?;
        return Ok(Input {
            config,
            weights,
            tokenizer: None,
            dir: Some(path.to_path_buf()),
            config_json: Some(cfg),
            tokenizer_gguf: None,
        });
    }
    let m = lowbit_model::source::load_model(spec)
        .with_context(|| format!("cannot load model '{spec}'"))?;
    let (dir, config_json) = if m.source == "hf" {
        let dir = if m.path.is_dir() {
            m.path.clone()
        } else {
            m.path.parent().unwrap_or(Path::new(".")).to_path_buf()
        };
        let text = std::fs::read(dir.join("config.json"))
            .with_context(|| format!("cannot read {}/config.json", dir.display()))?;
        (
            Some(dir),
            Some(serde_json::from_slice(&text).context("config.json")?),
        )
    } else {
        (None, None)
    };
    let tokenizer_gguf = match m.source {
        "gguf" => {
            let (g, _) = lowbit_model::gguf::open_gguf(&m.path)?;
            Some(lowbit_quant::hf_source::tokenizer_metadata_from_gguf(&g))
        }
        "llama2c" => {
            let tok = llama2c_tokenizer_path(&m.path, m.config.vocab_size)?;
            let t = lowbit_model::tokenizer::llama2c::Llama2cTokenizer::open(
                &tok,
                Some(m.config.vocab_size),
            )?;
            Some(lowbit_quant::hf_source::tokenizer_metadata_from_llama2c(
                &t,
            )?)
        }
        _ => None,
    };
    let (mut config, mut weights) = (m.config, m.weights);
    // HF checkpoints use NeoX rope: put interleaved q/k rows (llama GGUF, llama2.c) in that order.
    lowbit_quant::hf_source::undo_interleaved_rope(&mut config, &mut weights)
        .with_context(|| format!("model '{spec}'"))?;
    Ok(Input {
        config,
        weights,
        tokenizer: Some(m.tokenizer),
        dir,
        config_json,
        tokenizer_gguf,
    })
}

/// The tokenizer llama2.c's loader uses: `tok{vocab}.bin` or `tokenizer.bin` next to the checkpoint.
fn llama2c_tokenizer_path(model: &Path, vocab: usize) -> Result<PathBuf> {
    let dir = model.parent().unwrap_or(Path::new("."));
    [
        dir.join(format!("tok{vocab}.bin")),
        dir.join("tokenizer.bin"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .with_context(|| format!("no llama2.c tokenizer next to {}", model.display()))
}

pub fn quantize(a: QuantizeArgs) -> Result<()> {
    if a.out.exists() && !a.force {
        bail!(
            "{} already exists (use --force to replace it)",
            a.out.display()
        );
    }
    let kv = match (&a.kv, a.kv_rotate) {
        (None, true) => bail!("--kv-rotate needs --kv int8|int4|fp8"),
        (None, false) => None,
        (Some(s), _) => {
            let dtype = match s.to_ascii_lowercase().as_str() {
                "int8" => lowbit_cpu::attention::KvDtype::Q8,
                "int4" => lowbit_cpu::attention::KvDtype::Q4,
                "fp8" => lowbit_cpu::attention::KvDtype::Fp8,
                _ => bail!("--kv {s}: expected int8, int4 or fp8"),
            };
            Some(lowbit_cpu::attention::KvCacheSpec {
                dtype,
                rotation_seed: a.kv_rotate.then_some(crate::kv::KV_ROTATION_SEED),
            })
        }
    };
    match a.export.as_str() {
        "compressed-tensors" => {}
        "gguf" => {
            if a.method != "rtn"
                || a.act.is_some()
                || a.smooth.is_some()
                || a.rotate != "none"
                || kv.is_some()
            {
                bail!("--export gguf quantizes with llama.cpp's block encoders: --method rtn only, no --act/--smooth/--rotate/--kv");
            }
            return crate::export_gguf::export(
                &a.model, &a.scheme, &a.out, &a.ignore, a.force, a.json,
            );
        }
        other => bail!("--export {other}: expected compressed-tensors or gguf"),
    }
    let spec_name = preset(&a.scheme);
    let spec = lowbit_formats::QuantSpec::parse(&spec_name)
        .map_err(|e| anyhow::anyhow!("--scheme {}: {}", a.scheme, e.0))?;
    let quantizer = Quantizer::from_spec(&spec)?;
    let method = Method::parse(&a.method)?;
    let act = match &a.act {
        None => None,
        Some(s) => Some(
            lowbit_quant::smooth::ActQuant::parse(s)
                .with_context(|| format!("--act {s}: expected int8 or fp8"))?,
        ),
    };
    if let Some(act) = act {
        lowbit_quant::smooth::check_combination(act, &quantizer)
            .with_context(|| format!("--scheme {}", a.scheme))?;
    }
    let mut quantizer = quantizer;
    if act == Some(lowbit_quant::smooth::ActQuant::Int8)
        && quantizer.kind
            == (lowbit_quant::quantizer::ElemKind::Int {
                bits: 8,
                asym: false,
            })
    {
        // vLLM's W8A8 INT8 kernels read unpacked int8 weights (`int-quantized`).
        quantizer.set_int_quantized()?;
    }
    if a.smooth.is_some() && act.is_none() {
        bail!("--smooth only helps activation quantization: add --act int8|fp8");
    }
    let extra = lowbit_quant::ExtraOptions {
        smooth: a.smooth,
        imatrix: a.imatrix.clone(),
        imatrix_out: a.imatrix_out.clone(),
    };
    let rotate = lowbit_quant::rotate::RotateKind::parse(&a.rotate)
        .with_context(|| format!("--rotate {}", a.rotate))?;
    let mut ignore = lowbit_quant::pipeline::default_ignore();
    for r in &a.ignore {
        ignore.push(Regex::new(r).with_context(|| format!("--ignore {r}: not a valid regex"))?);
    }
    let t0 = Instant::now();
    let mut input = open_input(&a.model)?;
    if let Some(spec) = &kv {
        spec.check(input.config.head_dim)
            .map_err(|e| anyhow::anyhow!("--kv {}: {e}", spec.name()))?;
    }
    // R1 is fused into the f32 weights before anything is quantized or calibrated; the rotated
    // tensors live in a scratch file next to the output (unlinked once mapped).
    let mut rotation = None;
    let scratch = match a.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if rotate.fused() {
        let r = lowbit_quant::rotate::rotate_model(
            &input.config,
            &input.weights,
            a.rotate_seed,
            &scratch,
        )
        .with_context(|| format!("model '{}'", a.model))?;
        input.config = r.config;
        input.weights = r.weights;
        rotation = Some(r.info);
    }
    // R4: the down projections are rotated here and their inputs at inference (the model built
    // for calibration applies it too, so GPTQ sees the rotated activations).
    if rotate.online() {
        let r = lowbit_quant::rotate::rotate_down_online(
            &input.config,
            &input.weights,
            lowbit_quant::rotate::online_seed(a.rotate_seed),
            &scratch,
            rotation.take(),
        )
        .with_context(|| format!("model '{}'", a.model))?;
        input.config = r.config;
        input.weights = r.weights;
        lowbit_quant::rotate::set_online_rotation(&mut input.config, &r.info);
        rotation = Some(r.info);
    }
    let calib = match (&a.calib, method) {
        (None, Method::Imatrix) if a.imatrix.is_some() && a.smooth.is_none() => Vec::new(),
        (None, m) if m.needs_calibration() => {
            bail!("--method {} needs --calib TEXT", m.name())
        }
        (None, _) if a.smooth.is_some() => bail!("--smooth needs --calib TEXT"),
        (None, _) => Vec::new(),
        (Some(p), _) => {
            let tok = input
                .tokenizer
                .as_ref()
                .context("the model has no tokenizer to read the calibration text with")?;
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read calibration text {}", p.display()))?;
            let ids = tok.encode(&text, false);
            let mut seqs =
                lowbit_quant::pipeline::calibration_sequences(&ids, a.calib_seqs, a.calib_len)
                    .with_context(|| format!("calibration text {}", p.display()))?;
            if let Some(b) = tok.bos().filter(|_| tok.add_bos_by_default()) {
                seqs.iter_mut().for_each(|s| s[0] = b);
            }
            seqs
        }
    };
    let opts = Options {
        quantizer: quantizer.clone(),
        method,
        ignore,
        gptq: GptqOptions {
            damp: a.damp,
            block: 128,
            act_order: a.act_order,
        },
        max_rss_bytes: a.max_memory.map(|m| m * 1024 * 1024),
    };
    let bar = indicatif::ProgressBar::new(1);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len}  {msg}  [{elapsed_precise}]")
            .unwrap(),
    );
    if a.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let src = Source {
        config: &input.config,
        config_json: input.config_json.clone(),
        dir: input.dir.clone(),
        tokenizer_gguf: input.tokenizer_gguf.clone(),
    };
    let info = WriteInfo {
        scheme: spec.to_string(),
        method,
        act_order: a.act_order,
        calib_sequences: calib.len(),
        calib_len: a.calib_len,
    };
    // Stream: the safetensors header is written from the plan, then each tensor as it is made.
    let plan = lowbit_quant::pipeline::plan(&input.weights, &opts)?;
    let targets = plan.targets.iter().cloned().collect();
    let specs = lowbit_quant::export::plan_specs(&src, &input.weights, &targets, &quantizer)?;
    let mut writer = lowbit_quant::ModelWriter::create(&a.out, &src, specs, a.force)?;
    if let Some(r) = &rotation {
        writer.set_rotation(r);
    }
    if let Some(act) = act {
        writer.set_input_activations(lowbit_quant::smooth::input_activations(act));
    }
    if let Some(spec) = kv {
        writer.set_kv_cache(spec);
    }
    let reports = lowbit_quant::quantize_streaming_ext(
        &input.config,
        &input.weights,
        &opts,
        &extra,
        &plan,
        &calib,
        &mut |name, t| writer.add(name, &t),
        &mut |msg, i, n| {
            bar.set_length(n as u64);
            bar.set_position(i as u64);
            bar.set_message(msg.to_string());
        },
    )?;
    bar.finish_and_clear();
    writer.finish(&plan.ignored, &quantizer, &info)?;
    let qm = lowbit_quant::QuantizedModel {
        tensors: Default::default(),
        reports,
        ignored: plan.ignored,
    };
    let seconds = t0.elapsed().as_secs_f64();
    let peak = lowbit_quant::pipeline::peak_rss_bytes();
    let (mut wsum, mut bits) = (0f64, 0f64);
    for r in &qm.reports {
        let n = (r.rows * r.cols) as f64;
        wsum += n;
        bits += n * r.bits_per_weight;
    }
    let bpw = bits / wsum.max(1.0);
    if a.json {
        let j = serde_json::json!({
            "out": a.out, "scheme": spec.to_string(), "method": method.name(), "layers": qm.reports,
            "ignored": qm.ignored, "bits_per_weight": bpw, "seconds": seconds, "peak_rss_bytes": peak,
            "act": act.map(|x| x.name()), "smooth": a.smooth,
            "kv_cache": kv.map(|k| k.name()),
        });
        println!("{j}");
    } else {
        println!(
            "{:<44} {:>12} {:>6} {:>11} {:>11} {:>11} {:>7}",
            "layer", "shape", "bpw", "w rel err", "out err", "rtn out", "s"
        );
        let f = |v: Option<f64>| v.map(|x| format!("{x:.3e}")).unwrap_or_else(|| "-".into());
        for r in &qm.reports {
            println!(
                "{:<44} {:>12} {:>6.3} {:>11.3e} {:>11} {:>11} {:>7.2}",
                r.module,
                format!("{}x{}", r.rows, r.cols),
                r.bits_per_weight,
                r.weight_rel_err,
                f(r.output_rel_err),
                f(r.rtn_output_rel_err),
                r.seconds
            );
        }
        println!(
            "{} {}: {} layers at {:.3} bits per weight (kept in full precision: {}), {:.1} s, peak RSS {}",
            method.name(),
            spec,
            qm.reports.len(),
            bpw,
            if qm.ignored.is_empty() { "-".to_string() } else { qm.ignored.join(", ") },
            seconds,
            peak.map(|b| format!("{:.0} MiB", b as f64 / 1048576.0)).unwrap_or_else(|| "?".into())
        );
        println!("wrote {}", a.out.display());
    }
    Ok(())
}
