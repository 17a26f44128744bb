//! Every architecture against transformers: random-init tiny configs written by
//! scripts/gen_golden_logits.py (tests/fixtures/golden/<arch>/). Prefill logits and 4 decode
//! steps through the KV cache must match within 1e-4 relative L2 error.

use std::path::{Path, PathBuf};

use lowbit_model::config::from_hf_config;
use lowbit_model::golden::{self, rel_l2};
use lowbit_model::safetensors_dir::open_hf_dir;
use lowbit_model::Transformer;

const BOUND: f64 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden")
}

fn check_arch(arch: &str) {
    let dir = fixtures().join(arch);
    let (cfg_json, weights) = open_hf_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
    let config =
        from_hf_config(&cfg_json, &dir.join("config.json")).unwrap_or_else(|e| panic!("{e}"));
    let vocab = config.vocab_size;
    let model = Transformer::load(config, &weights).unwrap_or_else(|e| panic!("{arch}: {e}"));
    let g = golden::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    let (prefill, decode) = (g.prefill_ids, g.decode_ids);
    let (want_prefill, want_decode) = (g.prefill_logits, g.decode_logits);

    let mut state = model.new_state(prefill.len() + decode.len());
    let got = model.forward(&mut state, &prefill, 0).unwrap();
    let e = rel_l2(&got, &want_prefill);
    println!(
        "{arch}: prefill of {} tokens: rel L2 {e:.2e}",
        prefill.len()
    );
    assert!(
        e < BOUND,
        "{arch}: prefill logits rel L2 error {e:.3e} > {BOUND:e}"
    );
    for (i, &t) in decode.iter().enumerate() {
        let got = model.forward(&mut state, &[t], 0).unwrap();
        let e = rel_l2(&got, &want_decode[i * vocab..(i + 1) * vocab]);
        println!("{arch}: decode step {i}: rel L2 {e:.2e}");
        assert!(
            e < BOUND,
            "{arch}: decode step {i} logits rel L2 error {e:.3e} > {BOUND:e}"
        );
    }
}

#[test]
fn all_golden_architectures_are_present() {
    for arch in [
        "llama",
        "llama_tied",
        "mistral",
        "qwen2",
        "qwen3",
        "gemma3",
        "mixtral",
        "qwen2_moe",
        "qwen3_moe",
    ] {
        assert!(
            fixtures().join(arch).join("golden.json").exists(),
            "missing golden fixture for {arch}"
        );
    }
}

#[test]
fn golden_llama() {
    check_arch("llama");
}
#[test]
fn golden_llama_tied() {
    check_arch("llama_tied");
}
#[test]
fn golden_mistral() {
    check_arch("mistral");
}
#[test]
fn golden_qwen2() {
    check_arch("qwen2");
}
#[test]
fn golden_qwen3() {
    check_arch("qwen3");
}
#[test]
fn golden_gemma3() {
    check_arch("gemma3");
}
#[test]
fn golden_mixtral() {
    check_arch("mixtral");
}
#[test]
fn golden_qwen2_moe() {
    check_arch("qwen2_moe");
}
#[test]
fn golden_qwen3_moe() {
    check_arch("qwen3_moe");
}
