//! Helpers shared by the tests that quantize the tiny golden models (tests/fixtures/golden).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use lowbit_model::{ModelConfig, Transformer, WeightStore};
use lowbit_quant::pipeline::{default_ignore, Method, Options};
use lowbit_quant::{GptqOptions, Quantizer};

pub fn golden(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../tests/fixtures/golden/{arch}"))
}

pub fn open(dir: &Path) -> (serde_json::Value, ModelConfig, WeightStore) {
    let (cfg, w) = lowbit_model::safetensors_dir::open_hf_dir(dir).unwrap();
    let c = lowbit_model::config::from_hf_config(&cfg, &dir.join("config.json")).unwrap();
    (cfg, c, w)
}

pub fn calib(vocab: usize) -> Vec<Vec<u32>> {
    (0..8)
        .map(|s| {
            (0..64)
                .map(|t| ((s * 131 + t * 17 + t * t) % vocab) as u32)
                .collect()
        })
        .collect()
}

pub fn logits(m: &Transformer, seqs: &[Vec<u32>]) -> Vec<f32> {
    let mut out = Vec::new();
    for s in seqs {
        let mut st = m.new_state(s.len());
        out.extend(m.forward(&mut st, s, 0).unwrap());
    }
    out
}

pub fn rel(a: &[f32], b: &[f32]) -> f64 {
    let n: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let d: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    n / d
}

pub fn opts(spec: &str, method: Method) -> Options {
    let q = Quantizer::from_spec(&lowbit_formats::QuantSpec::parse(spec).unwrap()).unwrap();
    Options {
        quantizer: q,
        method,
        ignore: default_ignore(),
        gptq: GptqOptions::default(),
        max_rss_bytes: None,
    }
}
