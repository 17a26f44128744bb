//! `lowbit quantize --export gguf`: one GGUF file in llama.cpp's block formats.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use lowbit_quant::gguf_export::{config_metadata, export_gguf, metadata_from_gguf, GgufScheme};
use lowbit_quant::regex::Regex;

/// The metadata to write: a GGUF source's own (config, tokenizer, general.*), else the config
/// synthesized plus the tokenizer of a llama2.c source or of a lowbit directory's tokenizer.gguf.
fn metadata(
    model: &str,
    input: &crate::quantize::Input,
) -> Result<Vec<(String, lowbit_model::gguf::GgufValue)>> {
    let path = Path::new(model);
    if path.is_file() && path.extension().is_some_and(|e| e == "gguf") {
        let (g, _) = lowbit_model::gguf::open_gguf(path)?;
        return Ok(metadata_from_gguf(&g));
    }
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| model.to_string());
    let mut m = config_metadata(&input.config, &name)?;
    if let Some(t) = &input.tokenizer_gguf {
        m.extend(t.iter().cloned());
    } else if let Some(dir) = &input.dir {
        let tg = dir.join(lowbit_quant::export::TOKENIZER_GGUF);
        if tg.is_file() {
            let (g, _) = lowbit_model::gguf::open_gguf(&tg)?;
            m.extend(lowbit_quant::hf_source::tokenizer_metadata_from_gguf(&g));
        }
    }
    Ok(m)
}

pub fn export(
    model: &str,
    scheme: &str,
    out: &Path,
    ignore: &[String],
    force: bool,
    json: bool,
) -> Result<()> {
    let scheme = GgufScheme::parse(scheme)?;
    let ignore: Vec<Regex> = ignore
        .iter()
        .map(|r| Regex::new(r).with_context(|| format!("--ignore {r}: not a valid regex")))
        .collect::<Result<_>>()?;
    let t0 = Instant::now();
    let input = crate::quantize::open_input(model)?;
    let meta = metadata(model, &input).with_context(|| format!("model '{model}'"))?;
    let bar = indicatif::ProgressBar::new(1);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len}  {msg}  [{elapsed_precise}]")
            .unwrap(),
    );
    if json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let r = export_gguf(
        out,
        &input.config,
        &input.weights,
        meta,
        scheme,
        &ignore,
        force,
        &mut |msg, i, n| {
            bar.set_length(n as u64);
            bar.set_position(i as u64);
            bar.set_message(msg.to_string());
        },
    )?;
    bar.finish_and_clear();
    let seconds = t0.elapsed().as_secs_f64();
    if json {
        let j = serde_json::json!({
            "out": out, "scheme": scheme.name(), "export": "gguf", "tensors": r.tensors,
            "bits_per_weight": r.bits_per_weight, "file_bytes": r.file_bytes, "seconds": seconds,
        });
        println!("{j}");
    } else {
        println!(
            "{:<36} {:>8} {:>14} {:>11}",
            "tensor", "type", "shape", "w rel err"
        );
        for t in &r.tensors {
            let shape: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
            println!(
                "{:<36} {:>8} {:>14} {:>11.3e}",
                t.name,
                t.dtype,
                shape.join("x"),
                t.weight_rel_err
            );
        }
        println!(
            "gguf {}: {} tensors, {:.3} bits per weight over the quantized matrices, {:.1} MB, {:.1} s",
            scheme.name(),
            r.tensors.len(),
            r.bits_per_weight,
            r.file_bytes as f64 / 1e6,
            seconds
        );
        println!("wrote {}", out.display());
    }
    Ok(())
}
