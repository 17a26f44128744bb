//! `lowbit eval kld`: a model against a base model over the same text chunks.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args)]
pub struct KldArgs {
    /// The model to judge (e.g. a `lowbit quantize` output; a directory without a tokenizer uses
    /// the base model's).
    #[arg(short, long)]
    model: String,
    /// The reference model.
    #[arg(long)]
    base: String,
    #[arg(long)]
    text: PathBuf,
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    #[arg(long)]
    chunks: Option<usize>,
    #[arg(long)]
    json: bool,
    /// cpu, or cuda[:N]: both models run there.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// `--kv` / `--kv-rotate` apply to the model under test only; the base keeps its own cache.
    #[command(flatten)]
    kv: crate::kv::KvArgs,
}

/// The text both `eval kld` and `eval compare` score, tokenized by the base model's tokenizer
/// (with its BOS convention), and a chunk progress bar (hidden with `--json`).
pub fn scored_text(
    base: &lowbit_model::source::LoadedModel,
    text: &std::path::Path,
    ctx: usize,
    chunks: Option<usize>,
    json: bool,
) -> Result<(Vec<u32>, Option<u32>, indicatif::ProgressBar)> {
    let text_s = std::fs::read_to_string(text)
        .with_context(|| format!("cannot read text file {}", text.display()))?;
    let tok = &base.tokenizer;
    let add_bos = tok.add_bos_by_default();
    let tokens = tok.encode(&text_s, add_bos);
    let bos = if add_bos { tok.bos() } else { None };
    let total = (tokens.len() / ctx.max(1)).min(chunks.unwrap_or(usize::MAX));
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} chunks  {msg}  [{elapsed_precise}, eta {eta}]",
        )
        .unwrap(),
    );
    if json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    Ok((tokens, bos, bar))
}

pub fn eval_kld(a: KldArgs) -> Result<()> {
    let base = lowbit_model::source::load_model(&a.base)
        .with_context(|| format!("cannot load base model '{}'", a.base))?;
    let input = crate::quantize::open_input(&a.model)?;
    let mut model = lowbit_model::Transformer::load(input.config.clone(), &input.weights)?;
    a.kv.apply(&mut model)?;
    let base_t = base.transformer()?;
    let (tokens, bos, bar) = scored_text(&base, &a.text, a.ctx, a.chunks, a.json)?;
    let be = crate::gpu::Device::parse(&a.device)?.backend()?;
    let mut dec = crate::gpu::decoder(&model, be.as_ref(), a.ctx)?;
    let mut base_dec = crate::gpu::decoder(&base_t, be.as_ref(), a.ctx)?;
    let r = lowbit_eval::kld::kl_divergence_many_with(
        &mut [&mut *dec],
        &mut *base_dec,
        &tokens,
        bos,
        a.ctx,
        a.chunks,
        |_, _, k| {
            bar.inc(1);
            bar.set_message(format!("kld {:.5}", k[0]));
        },
    )?
    .remove(0);
    bar.finish_and_clear();
    if a.json {
        let mut j = serde_json::to_value(&r)?;
        j["model"] = serde_json::json!(a.model);
        j["base"] = serde_json::json!(a.base);
        j["kv_cache"] = serde_json::json!(model.config.kv_cache.unwrap_or_default().name());
        println!("{j}");
    } else {
        println!("PPL(model)  = {:.4} +/- {:.4}", r.ppl, r.ppl_stderr);
        println!(
            "PPL(base)   = {:.4} +/- {:.4}",
            r.ppl_base, r.ppl_base_stderr
        );
        println!("ΔPPL        = {:+.4}", r.delta_ppl);
        println!(
            "KLD mean    = {:.6} +/- {:.6}   median {:.6}   p99 {:.6}   max {:.6}",
            r.kld_mean, r.kld_stderr, r.kld_median, r.kld_p99, r.kld_max
        );
        println!(
            "top-1 agree = {:.3}% +/- {:.3}%",
            100.0 * r.top1,
            100.0 * r.top1_stderr
        );
        println!(
            "RMS Δp      = {:.3}% +/- {:.3}%",
            100.0 * r.rms_dp,
            100.0 * r.rms_dp_stderr
        );
        println!(
            "({} chunks of {}, {} scored tokens; model {})",
            r.chunks,
            r.ctx,
            r.scored,
            crate::kv::KvArgs::describe(&model)
        );
    }
    Ok(())
}
