//! `lowbit`: run, evaluate and (soon) compress language models.

mod compare;
mod eval_kld;
mod export_gguf;
mod quantize;

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use lowbit_model::sampling::Sampler;
use lowbit_model::source::{load_model, LoadedModel};

mod bench;
mod gpu;
mod kv;

#[derive(Parser)]
#[command(
    name = "lowbit",
    version,
    about = "Compress, evaluate and run large language models in low precision"
)]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(short = 't', long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a continuation of a prompt, streamed to stdout.
    Run(RunArgs),
    /// Measure model quality.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Show a model's config, tokenizer and tensors.
    Info(InfoArgs),
    /// List number formats with their bits per weight, or measure a format's error on real weights.
    Formats(FormatsArgs),
    /// Quantize a model's weights (RTN or GPTQ) into a compressed-tensors directory.
    Quantize(quantize::QuantizeArgs),
    /// GPU benchmarks on a synthetic model built on the device (issue 7).
    GpuBench(gpu::GpuBenchArgs),
    /// Prefill (pp) and decode (tg) speed and peak memory on the CPU, as llama-bench.
    Bench(bench::BenchArgs),
}

#[derive(Args)]
struct FormatsArgs {
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Option<FormatsCommand>,
}

#[derive(Subcommand)]
enum FormatsCommand {
    /// Quantization error of a model's weights in a format, per tensor.
    Error(FormatErrorArgs),
}

#[derive(Args)]
struct FormatErrorArgs {
    /// Format: a llama.cpp type (q4_k, q8_0, mxfp4, ...) or a spec (int4_g128_sym, nvfp4, fp8_e4m3, nf4_g64, ...).
    #[arg(short, long)]
    format: String,
    /// Group size, for specs written without one (int4 + --group 128 = int4_g128).
    #[arg(long)]
    group: Option<usize>,
    #[arg(short, long)]
    model: String,
    /// Only tensors whose name contains this text.
    #[arg(long)]
    tensor: Option<String>,
}

#[derive(Args)]
struct RunArgs {
    /// Model: GGUF file, HF directory, llama2.c .bin, or hub id (org/name).
    #[arg(short, long)]
    model: String,
    /// Prompt text.
    #[arg(short, long, default_value = "Once upon a time")]
    prompt: String,
    /// Tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 64)]
    n: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Do not stop at the end-of-sequence token.
    #[arg(long)]
    ignore_eos: bool,
    /// Print one JSON object (text, token ids, timings) instead of streaming.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    kv: kv::KvArgs,
    /// cpu, or cuda[:N] for an NVIDIA GPU.
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Perplexity with llama.cpp's llama-perplexity protocol.
    Ppl(PplArgs),
    /// KL-divergence, top-1 agreement and PPL of a model against a base model.
    Kld(eval_kld::KldArgs),
    /// Several models against one base: one table of bits per weight, size, PPL, ΔPPL, KLD and
    /// top-1 (base logits computed once); --plot writes KLD vs bits per weight as SVG.
    Compare(compare::CompareArgs),
}

#[derive(Args)]
struct PplArgs {
    #[arg(short, long)]
    model: String,
    /// Text file to score (e.g. wikitext-2-raw test).
    #[arg(long)]
    text: PathBuf,
    /// Tokens per chunk.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Score only the first N chunks.
    #[arg(long)]
    chunks: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// cpu, or cuda[:N] for an NVIDIA GPU.
    #[arg(long, default_value = "cpu")]
    device: String,
    #[command(flatten)]
    kv: kv::KvArgs,
}

#[derive(Args)]
struct InfoArgs {
    #[arg(short, long)]
    model: String,
    /// List every tensor.
    #[arg(long)]
    tensors: bool,
}

/// Die quietly on a closed pipe (`lowbit formats | head`), as command-line tools do.
#[cfg(unix)]
fn reset_sigpipe() {
    extern "C" {
        fn signal(signum: i32, handler: usize) -> usize;
    }
    const SIGPIPE: i32 = 13;
    const SIG_DFL: usize = 0;
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        signal(SIGPIPE, SIG_DFL);
    }
}
#[cfg(not(unix))]
fn reset_sigpipe() {}

fn main() {
    reset_sigpipe();
    let cli = Cli::parse();
    if let Some(t) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(t.max(1))
            .build_global()
        {
            eprintln!("lowbit: cannot set threads: {e}");
        }
    }
    let result = match cli.command {
        Command::Run(a) => run(a),
        Command::Eval(EvalCommand::Ppl(a)) => eval_ppl(a),
        Command::Info(a) => info(a),
        Command::Formats(a) => formats(a),
        Command::Quantize(a) => quantize::quantize(a),
        Command::Eval(EvalCommand::Kld(a)) => eval_kld::eval_kld(a),
        Command::Eval(EvalCommand::Compare(a)) => compare::eval_compare(a),
        Command::GpuBench(a) => gpu::gpu_bench(a),
        Command::Bench(a) => bench::run(a),
    };
    if let Err(e) = result {
        eprintln!("lowbit: error: {e:#}");
        std::process::exit(1);
    }
}

fn open(spec: &str) -> Result<LoadedModel> {
    load_model(spec).with_context(|| format!("cannot load model '{spec}'"))
}

/// Emits whole UTF-8 characters as token bytes arrive.
struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        match std::str::from_utf8(&self.pending) {
            Ok(s) => {
                let out = s.to_string();
                self.pending.clear();
                out
            }
            Err(e) => {
                let valid = e.valid_up_to();
                let out = String::from_utf8_lossy(&self.pending[..valid]).into_owned();
                if e.error_len().is_some() {
                    // Invalid, not merely incomplete: emit replacement and drop.
                    let rest = String::from_utf8_lossy(&self.pending[valid..]).into_owned();
                    self.pending.clear();
                    return out + &rest;
                }
                self.pending.drain(..valid);
                out
            }
        }
    }
}

fn run(a: RunArgs) -> Result<()> {
    let m = open(&a.model)?;
    let mut model = m.transformer()?;
    a.kv.apply(&mut model)?;
    let tok = &m.tokenizer;
    let prompt_ids = tok.encode(&a.prompt, tok.add_bos_by_default());
    if prompt_ids.is_empty() {
        bail!("the prompt encodes to no tokens");
    }
    let capacity = prompt_ids.len() + a.n;
    if capacity > m.config.max_position {
        eprintln!(
            "lowbit: warning: {} tokens is beyond the model's trained context of {}",
            capacity, m.config.max_position
        );
    }
    let be = gpu::Device::parse(&a.device)?.backend()?;
    let mut dec = gpu::decoder(&model, be.as_ref(), capacity)?;
    let mut sampler = Sampler::new(a.temperature, a.top_p, a.seed);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut stream = Utf8Stream {
        pending: Vec::new(),
    };
    let mut text = a.prompt.clone();
    if !a.json {
        write!(out, "{}", a.prompt)?;
        out.flush()?;
    }
    let t0 = Instant::now();
    let logits = dec.forward(&prompt_ids, prompt_ids.len() - 1)?;
    let prefill_s = t0.elapsed().as_secs_f64();
    let mut next = sampler.sample(&logits);
    let mut generated = Vec::new();
    let t1 = Instant::now();
    for i in 0..a.n {
        if !a.ignore_eos && Some(next) == tok.eos() {
            break;
        }
        generated.push(next);
        let piece = stream.push(&tok.token_bytes(next));
        text.push_str(&piece);
        if !a.json {
            write!(out, "{piece}")?;
            out.flush()?;
        }
        if i + 1 == a.n {
            break;
        }
        let logits = dec.forward(&[next], 0)?;
        next = sampler.sample(&logits);
    }
    let decode_s = t1.elapsed().as_secs_f64();
    let prefill_tps = prompt_ids.len() as f64 / prefill_s.max(1e-9);
    let decode_tps = generated.len().saturating_sub(1) as f64 / decode_s.max(1e-9);
    if a.json {
        let j = serde_json::json!({
            "text": text,
            "prompt_ids": prompt_ids,
            "ids": generated,
            "prefill_tokens_per_second": prefill_tps,
            "decode_tokens_per_second": decode_tps,
        });
        writeln!(out, "{j}")?;
    } else {
        writeln!(out)?;
    }
    eprintln!(
        "lowbit: prefill {} tokens at {:.1} tokens/s, decode {} tokens at {:.1} tokens/s",
        prompt_ids.len(),
        prefill_tps,
        generated.len(),
        decode_tps
    );
    Ok(())
}

fn eval_ppl(a: PplArgs) -> Result<()> {
    let m = open(&a.model)?;
    let mut model = m.transformer()?;
    a.kv.apply(&mut model)?;
    let text = std::fs::read_to_string(&a.text)
        .with_context(|| format!("cannot read text file {}", a.text.display()))?;
    if a.ctx > m.config.max_position {
        eprintln!(
            "lowbit: warning: --ctx {} is beyond the model's trained context of {}",
            a.ctx, m.config.max_position
        );
    }
    let add_bos = m.tokenizer.add_bos_by_default();
    let t0 = Instant::now();
    let tokens = m.tokenizer.encode(&text, add_bos);
    let tok_s = t0.elapsed().as_secs_f64();
    let bos = if add_bos { m.tokenizer.bos() } else { None };
    let total = (tokens.len() / a.ctx.max(1)).min(a.chunks.unwrap_or(usize::MAX));
    if !a.json {
        eprintln!(
            "lowbit: {} tokens ({:.2} s to tokenize), {} chunks of {}",
            tokens.len(),
            tok_s,
            total,
            a.ctx
        );
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} chunks  {msg}  [{elapsed_precise}, eta {eta}]",
        )
        .unwrap(),
    );
    if a.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let be = gpu::Device::parse(&a.device)?.backend()?;
    let mut dec = gpu::decoder(&model, be.as_ref(), a.ctx)?;
    let r = lowbit_eval::perplexity_with(&mut *dec, &tokens, bos, a.ctx, a.chunks, |_, _, ppl| {
        bar.inc(1);
        bar.set_message(format!("ppl {ppl:.4}"));
    })?;
    bar.finish_and_clear();
    if a.json {
        let mut j = serde_json::to_value(&r)?;
        j["model"] = serde_json::json!(a.model);
        j["text"] = serde_json::json!(a.text);
        j["text_tokens"] = serde_json::json!(tokens.len());
        println!("{j}");
    } else {
        for (i, p) in r.chunk_ppl.iter().enumerate() {
            println!("chunk {:>4}  ppl {:.4}", i + 1, p);
        }
        println!(
            "PPL = {:.4} +/- {:.5}   ({} chunks of {}, {} scored tokens, {:.1} tokens/s, {:.1} s)",
            r.ppl, r.ppl_stderr, r.chunks, r.ctx, r.scored, r.tokens_per_second, r.seconds
        );
    }
    Ok(())
}

fn info(a: InfoArgs) -> Result<()> {
    let m = open(&a.model)?;
    println!("source: {}  path: {}", m.source, m.path.display());
    println!("{:#?}", m.config);
    println!(
        "tokenizer: vocab {}  bos {:?}  eos {:?}  add_bos {}",
        m.tokenizer.vocab_size(),
        m.tokenizer.bos(),
        m.tokenizer.eos(),
        m.tokenizer.add_bos_by_default()
    );
    println!(
        "tensors: {}  bytes: {}",
        m.weights.names().count(),
        m.weights.total_bytes()
    );
    if a.tensors {
        for n in m.weights.names() {
            let e = m.weights.entry(n).unwrap();
            println!("{n:60} {:>8} {:?}", e.dtype.name(), e.shape);
        }
    }
    Ok(())
}

fn formats(a: FormatsArgs) -> Result<()> {
    match a.command {
        None => {
            let list = lowbit_formats::catalog();
            if a.json {
                let v: Vec<_> = list
                    .iter()
                    .map(|f| serde_json::json!({"name": f.name, "bpw": f.bpw, "kind": f.kind, "description": f.description}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                println!("{:<20} {:>7}  {:<9} description", "name", "bpw", "kind");
                for f in list {
                    println!(
                        "{:<20} {:>7.3}  {:<9} {}",
                        f.name, f.bpw, f.kind, f.description
                    );
                }
            }
            Ok(())
        }
        Some(FormatsCommand::Error(e)) => format_error(e, a.json),
    }
}

/// How to round-trip a tensor through a format.
enum Codec {
    Ggml(lowbit_formats::GgmlType),
    Spec(lowbit_formats::QuantSpec),
}

fn ggml_type_by_name(name: &str) -> Option<lowbit_formats::GgmlType> {
    (0..64)
        .filter_map(lowbit_formats::GgmlType::from_id)
        .find(|t| t.name() == name)
}

fn format_error(a: FormatErrorArgs, json: bool) -> Result<()> {
    let name = a.format.trim().to_ascii_lowercase();
    let codec = match ggml_type_by_name(&name)
        .filter(|t| lowbit_formats::quant::is_quantize_supported(*t))
    {
        Some(t) => Codec::Ggml(t),
        None => {
            let spec_name = match a.group {
                Some(g) if !name.contains("_g") => format!("{name}_g{g}"),
                _ => name.clone(),
            };
            Codec::Spec(
                lowbit_formats::QuantSpec::parse(&spec_name)
                    .map_err(|e| anyhow::anyhow!("--format {}: {}", a.format, e.0))?,
            )
        }
    };
    let m = open(&a.model)?;
    let names: Vec<String> = m
        .weights
        .names()
        .filter(|n| a.tensor.as_deref().is_none_or(|t| n.contains(t)))
        .filter(|n| m.weights.entry(n).is_some_and(|e| e.shape.len() == 2))
        .map(|s| s.to_string())
        .collect();
    if names.is_empty() {
        bail!("no 2-D tensor in {} matches {:?}", a.model, a.tensor);
    }
    let bar = indicatif::ProgressBar::new(names.len() as u64);
    if json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut rows = Vec::new();
    let (mut sig_total, mut noise_total, mut n_total) = (0f64, 0f64, 0usize);
    for n in &names {
        bar.inc(1);
        let e = m.weights.entry(n).unwrap().clone();
        let x = m.weights.to_f32(n).with_context(|| format!("tensor {n}"))?;
        let cols = e.shape[1];
        let mut y = x.clone();
        let result = match &codec {
            Codec::Ggml(t) => {
                let Some(rb) = t.byte_len(cols) else {
                    rows.push(serde_json::json!({"tensor": n, "skipped": format!("{cols} columns is not a multiple of the {t} block size")}));
                    continue;
                };
                let mut q = vec![0u8; rb * e.shape[0]];
                lowbit_formats::quantize_rows(*t, &x, cols, &mut q)
                    .and_then(|_| lowbit_formats::dequantize_rows(*t, &q, cols, &mut y))
                    .map_err(|e| e.to_string())
            }
            Codec::Spec(s) => s.fake_quantize_matrix(&mut y, cols).map_err(|e| e.0),
        };
        if let Err(msg) = result {
            rows.push(serde_json::json!({"tensor": n, "skipped": msg}));
            continue;
        }
        let st = lowbit_formats::stats::error_stats(&x, &y);
        sig_total += x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>();
        noise_total += st.mse * x.len() as f64;
        n_total += x.len();
        rows.push(serde_json::json!({
            "tensor": n, "shape": e.shape, "stored": e.dtype.name(),
            "mse": st.mse, "sqnr_db": st.sqnr_db, "max_abs_err": st.max_abs_err, "rel_rmse": st.rel_rmse,
        }));
    }
    bar.finish_and_clear();
    let total_sqnr = 10.0 * (sig_total / noise_total.max(1e-300)).log10();
    let bpw = match &codec {
        Codec::Ggml(t) => t.bits_per_weight(),
        Codec::Spec(s) => s.bits_per_weight(4096),
    };
    if json {
        println!(
            "{}",
            serde_json::json!({"format": a.format, "bpw": bpw, "tensors": rows, "elements": n_total, "sqnr_db": total_sqnr, "mse": noise_total / n_total.max(1) as f64})
        );
    } else {
        println!(
            "{:<56} {:>8} {:>12} {:>9} {:>10}",
            "tensor", "stored", "mse", "sqnr dB", "max err"
        );
        for r in &rows {
            if let Some(s) = r.get("skipped") {
                println!(
                    "{:<56} skipped: {}",
                    r["tensor"].as_str().unwrap_or(""),
                    s.as_str().unwrap_or("")
                );
            } else {
                println!(
                    "{:<56} {:>8} {:>12.4e} {:>9.2} {:>10.4}",
                    r["tensor"].as_str().unwrap_or(""),
                    r["stored"].as_str().unwrap_or(""),
                    r["mse"].as_f64().unwrap_or(0.0),
                    r["sqnr_db"].as_f64().unwrap_or(0.0),
                    r["max_abs_err"].as_f64().unwrap_or(0.0)
                );
            }
        }
        println!(
            "{}: {bpw:.3} bits per weight, {n_total} weights, SQNR {total_sqnr:.2} dB overall",
            a.format
        );
    }
    Ok(())
}
