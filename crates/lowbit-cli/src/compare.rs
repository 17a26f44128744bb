//! `lowbit eval compare A B C … --base B0`: every model against one base over the same chunks, in
//! one table (bits per weight, size, PPL, ΔPPL, KLD mean / p99, top-1), the base run once.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use lowbit_eval::compare::{json, svg_plot, table, write_atomic, CompareRow};

#[derive(Args)]
pub struct CompareArgs {
    /// Models to compare (GGUF files, HF / `lowbit quantize` directories, llama.cpp .bin).
    #[arg(required = true)]
    models: Vec<String>,
    /// The reference model (its tokenizer is used for the text).
    #[arg(long)]
    base: String,
    /// Text file to score (e.g. wikitext-2-raw test).
    #[arg(long)]
    text: PathBuf,
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Only the first N chunks.
    #[arg(long)]
    chunks: Option<usize>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write an SVG of mean KLD against bits per weight, Pareto front marked.
    #[arg(long, value_name = "OUT.svg")]
    plot: Option<PathBuf>,
}

/// Bytes on disk of a file, or of every file in a directory (not recursing).
fn disk_size(p: &Path) -> u64 {
    if p.is_dir() {
        std::fs::read_dir(p)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    } else {
        std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
    }
}

/// Bits per weight of the decoder layers' linear weights: stored bytes (codes, scales, zero
/// points) over their values. Directories are read from their safetensors headers (a quantized
/// module's `weight*` tensors); other files from the loaded tensors as stored (GGUF blocks).
fn bits_per_weight(spec: &str, weights: &lowbit_model::WeightStore) -> Option<f64> {
    let path = Path::new(spec);
    let stored = if path.is_dir() {
        Some(lowbit_model::safetensors_dir::tensor_bytes(path).ok()?)
    } else {
        None
    };
    let (mut bits, mut values) = (0f64, 0f64);
    for n in weights.names() {
        let e = weights.entry(n)?;
        if e.shape.len() != 2 || !n.starts_with("model.layers.") || !n.ends_with(".weight") {
            continue;
        }
        let bytes = match &stored {
            Some(st) => st
                .range(n.to_string()..)
                .take_while(|(k, _)| k.starts_with(n))
                .map(|(_, b)| *b)
                .sum::<usize>(),
            None => e.len,
        };
        bits += bytes as f64 * 8.0;
        values += e.shape.iter().product::<usize>() as f64;
    }
    (values > 0.0).then(|| bits / values)
}

pub fn eval_compare(a: CompareArgs) -> Result<()> {
    if let Some(p) = &a.plot {
        if p.is_dir() {
            bail!(
                "--plot {}: is a directory, expected an .svg file path",
                p.display()
            );
        }
    }
    let base = lowbit_model::source::load_model(&a.base)
        .with_context(|| format!("cannot load base model '{}'", a.base))?;
    let base_t = base.transformer()?;
    // All models are held at once so the base runs once per chunk.
    let mut inputs = Vec::new();
    for m in &a.models {
        let input = crate::quantize::open_input(m)?;
        let bpw = bits_per_weight(m, &input.weights);
        let t = lowbit_model::Transformer::load(input.config.clone(), &input.weights)
            .with_context(|| format!("model '{m}'"))?;
        inputs.push((m.clone(), bpw, disk_size(Path::new(m)), t, input));
    }
    let (tokens, bos, bar) = crate::eval_kld::scored_text(&base, &a.text, a.ctx, a.chunks, a.json)?;
    let models: Vec<&lowbit_model::Transformer> = inputs.iter().map(|i| &i.3).collect();
    let results = lowbit_eval::kld::kl_divergence_many(
        &models,
        &base_t,
        &tokens,
        bos,
        a.ctx,
        a.chunks,
        |_, _, _| bar.inc(1),
    )?;
    bar.finish_and_clear();
    let rows: Vec<CompareRow> = inputs
        .iter()
        .zip(results)
        .map(|((m, bpw, size, _, _), kld)| CompareRow {
            model: m.clone(),
            bits_per_weight: *bpw,
            size_bytes: *size,
            kld,
        })
        .collect();
    if a.json {
        println!("{}", json(&rows, &a.base));
    } else {
        print!("{}", table(&rows, &a.base));
    }
    if let Some(p) = &a.plot {
        write_atomic(p, svg_plot(&rows, &a.base).as_bytes())
            .with_context(|| format!("cannot write {}", p.display()))?;
        if !a.json {
            println!("wrote {}", p.display());
        }
    }
    Ok(())
}
