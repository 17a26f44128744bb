//! `lowbit bench`: llama-bench's two tests on one model.
//!
//! - pp: prefill of `-p` tokens into an empty cache, logits of the last token only;
//! - tg: `-n` single-token decode steps from an empty cache.
//!
//! Tokens are fixed pseudo-random ids (speed does not depend on them). Each test runs once to warm
//! up, then `-r` times; we report the median tokens/s and the spread. Threads come from the
//! global `-t`.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use lowbit_model::source::load_model;

#[derive(Args)]
pub struct BenchArgs {
    /// Model: GGUF file, HF directory, llama2.c .bin, or hub id.
    #[arg(short, long, required_unless_present = "synthetic")]
    model: Option<String>,
    /// Instead of a model file: a model of this shape with random weights built on the GPU
    /// (llama-3-8b, qwen2.5-7b; needs --device cuda), decode measured as `gpu-bench` does.
    #[arg(long, value_name = "NAME")]
    synthetic: Option<String>,
    /// Weight format of --synthetic (int4g128t, int4g128, q4_k, q6_k, q8_0, nvfp4, mxfp4, bf16).
    #[arg(long, default_value = "int4g128t", requires = "synthetic")]
    format: String,
    /// Prompt tokens of the pp test (0 skips it).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
    prompt: usize,
    /// Generated tokens of the tg test (0 skips it).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    gen: usize,
    /// Repetitions of each test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    reps: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Prefill products on 8-bit integers (faster, llama.cpp-level accuracy; see
    /// `lowbit_cpu::set_prefill_int8`). Also `LOWBIT_PREFILL=int8`.
    #[arg(long)]
    prefill_int8: bool,
    /// cpu, or cuda[:N] for an NVIDIA GPU.
    #[arg(long, default_value = "cpu")]
    device: String,
    #[command(flatten)]
    kv: crate::kv::KvArgs,
}

/// Median, min, max and standard deviation of tokens/s over the repetitions.
struct Stats {
    median: f64,
    min: f64,
    max: f64,
    stddev: f64,
    samples: Vec<f64>,
}

fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    let mean = v.iter().sum::<f64>() / n.max(1) as f64;
    let var =
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n.saturating_sub(1)).max(1) as f64;
    Stats {
        median,
        min: v.first().copied().unwrap_or(0.0),
        max: v.last().copied().unwrap_or(0.0),
        stddev: var.sqrt(),
        samples: v,
    }
}

/// Peak resident set size (VmHWM) in MiB, if the kernel reports it.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.reps == 0 {
        bail!("--repetitions must be at least 1");
    }
    if a.prompt == 0 && a.gen == 0 {
        bail!("nothing to run: -p and -n are both 0");
    }
    if a.prefill_int8 {
        lowbit_cpu::set_prefill_int8(true);
    }
    if let Some(name) = &a.synthetic {
        if a.device == "cpu" {
            bail!("--synthetic builds its model on the GPU: add --device cuda");
        }
        return crate::gpu::synthetic_bench(name, &a.format, &a.device, a.gen);
    }
    let model_path = a.model.clone().unwrap_or_default();
    let m = load_model(&model_path).with_context(|| format!("cannot load model '{model_path}'"))?;
    let mut model = m.transformer()?;
    a.kv.apply(&mut model)?;
    let vocab = m.config.vocab_size as u64;
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next_token = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) % vocab) as u32
    };
    let prompt: Vec<u32> = (0..a.prompt).map(|_| next_token()).collect();
    let gen: Vec<u32> = (0..a.gen).map(|_| next_token()).collect();
    let device = crate::gpu::Device::parse(&a.device)?;
    let be = device.backend()?;
    let mut dec = crate::gpu::decoder(&model, be.as_ref(), a.prompt.max(a.gen).max(1))?;

    let mut pp = Vec::new();
    if a.prompt > 0 {
        for rep in 0..=a.reps {
            dec.reset();
            let t = Instant::now();
            let logits = dec.forward(&prompt, a.prompt - 1)?;
            let s = t.elapsed().as_secs_f64();
            std::hint::black_box(logits);
            if rep > 0 {
                pp.push(a.prompt as f64 / s.max(1e-12));
            }
        }
    }
    let mut tg = Vec::new();
    if a.gen > 0 {
        for rep in 0..=a.reps {
            dec.reset();
            // The warm-up pass decodes a few tokens only.
            let steps = if rep == 0 { a.gen.min(8) } else { a.gen };
            let t = Instant::now();
            for &tok in &gen[..steps] {
                let logits = dec.forward(&[tok], 0)?;
                std::hint::black_box(logits);
            }
            let s = t.elapsed().as_secs_f64();
            if rep > 0 {
                tg.push(steps as f64 / s.max(1e-12));
            }
        }
    }
    let (pp, tg) = (stats(pp), stats(tg));
    let rss = peak_rss_mib();
    let threads = rayon::current_num_threads();
    let isa = match &be {
        Some(be) => format!("{} ({})", be.device_name(), be.arch()),
        None => format!("{:?}", lowbit_cpu::Isa::detect()),
    };
    if a.json {
        let test = |s: &Stats, n: usize| {
            serde_json::json!({"tokens": n, "tps_median": s.median, "tps_min": s.min, "tps_max": s.max,
                               "tps_stddev": s.stddev, "samples": s.samples})
        };
        let j = serde_json::json!({
            "model": model_path,
            "threads": threads,
            "isa": isa,
            "device": a.device,
            "reps": a.reps,
            "prefill_int8": a.prefill_int8 || std::env::var("LOWBIT_PREFILL").is_ok_and(|v| v.eq_ignore_ascii_case("int8")),
            "pp": if a.prompt > 0 { test(&pp, a.prompt) } else { serde_json::Value::Null },
            "tg": if a.gen > 0 { test(&tg, a.gen) } else { serde_json::Value::Null },
            "pp_tps": if a.prompt > 0 { serde_json::json!(pp.median) } else { serde_json::Value::Null },
            "tg_tps": if a.gen > 0 { serde_json::json!(tg.median) } else { serde_json::Value::Null },
            "peak_rss_mib": rss,
            "kv_cache": model.config.kv_cache.unwrap_or_default().name(),
        });
        println!("{j}");
    } else {
        println!(
            "model: {}  threads: {threads}  kernels: {isa}  reps: {}  {}",
            model_path,
            a.reps,
            crate::kv::KvArgs::describe(&model)
        );
        println!(
            "{:>8} {:>12} {:>10} {:>10} {:>10}",
            "test", "t/s median", "min", "max", "stddev"
        );
        if a.prompt > 0 {
            println!(
                "{:>8} {:>12.2} {:>10.2} {:>10.2} {:>10.2}",
                format!("pp{}", a.prompt),
                pp.median,
                pp.min,
                pp.max,
                pp.stddev
            );
        }
        if a.gen > 0 {
            println!(
                "{:>8} {:>12.2} {:>10.2} {:>10.2} {:>10.2}",
                format!("tg{}", a.gen),
                tg.median,
                tg.min,
                tg.max,
                tg.stddev
            );
        }
        match rss {
            Some(r) => println!("peak RSS: {r:.1} MiB"),
            None => println!("peak RSS: unknown (no /proc/self/status)"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let s = stats(vec![3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert!((s.stddev - 1.0).abs() < 1e-12);
        assert_eq!(stats(vec![1.0, 4.0]).median, 2.5);
        if cfg!(target_os = "linux") {
            assert!(peak_rss_mib().unwrap() > 0.0);
        }
    }
}
