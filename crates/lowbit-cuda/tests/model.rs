//! The GPU model runner (`--device cuda`) against transformers' golden logits, against the CPU
//! runner, and on the real stories260K checkpoint. Each test prints "SKIP: ..." and passes when
//! no CUDA device exists (CI).
//!
//! Paths: the test binaries are built on one machine and run on the GPU machine, so
//! `LOWBIT_REPO` (the repository root) and `LOWBIT_DATA` (the shared data folder) override the
//! build-time locations.

use std::path::PathBuf;
use std::sync::Arc;

use lowbit_cpu::hadamard::Hadamard;
use lowbit_cuda::{CudaBackend, GpuHadamard, GpuModel};
use lowbit_model::arch::blocks::FeedForward;
use lowbit_model::config::from_hf_config;
use lowbit_model::safetensors_dir::open_hf_dir;
use lowbit_model::{CpuDecoder, Decoder, Transformer};

/// GPU vs transformers (f32) and GPU vs CPU: the KV cache is bf16 (relative 2^-9 per value),
/// everything else f32; the bound is bf16-level, 1e-2 relative L2.
const BOUND: f64 = 1e-2;

fn backend() -> Option<CudaBackend> {
    match CudaBackend::new(0) {
        Ok(b) => Some(b),
        Err(e) => {
            println!("SKIP: no CUDA device ({e})");
            None
        }
    }
}

fn repo() -> PathBuf {
    std::env::var_os("LOWBIT_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

fn data() -> PathBuf {
    std::env::var_os("LOWBIT_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/data"))
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((*x - *y) as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn read_f32(st: &safetensors::SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn ids(v: &serde_json::Value, key: &str) -> Vec<u32> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("golden.json lacks {key}"))
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn fmt(e: Option<f64>) -> String {
    e.map_or("-".into(), |e| format!("{e:.2e}"))
}

fn load_golden(arch: &str) -> (Transformer, serde_json::Value, Vec<u8>) {
    let dir = repo().join("tests/fixtures/golden").join(arch);
    let (cfg_json, weights) = open_hf_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
    let config = from_hf_config(&cfg_json, &dir.join("config.json")).unwrap();
    let model = Transformer::load(config, &weights).unwrap();
    let meta = serde_json::from_slice(&std::fs::read(dir.join("golden.json")).unwrap()).unwrap();
    let golden = std::fs::read(dir.join("golden.safetensors")).unwrap();
    (model, meta, golden)
}

/// Prefill then 4 decode steps on the GPU: against transformers' logits (unless the model was
/// changed, `golden` = None) and against the CPU runner on the same model.
fn check(be: &CudaBackend, name: &str, model: &Transformer, meta: &serde_json::Value, golden: Option<&[u8]>) {
    let prefill = ids(meta, "prefill_ids");
    let decode = ids(meta, "decode_ids");
    let vocab = model.config.vocab_size;
    let cap = prefill.len() + decode.len();
    let mut gpu = GpuModel::upload(be, model, cap).unwrap();
    let mut cpu = CpuDecoder::new(model, cap);
    println!("{name}: layouts {:?}", gpu.formats());
    let st = golden.map(|g| safetensors::SafeTensors::deserialize(g).unwrap());
    let g = gpu.forward(&prefill, 0).unwrap();
    let c = cpu.forward(&prefill, 0).unwrap();
    let e_cpu = rel_l2(&g, &c);
    let e_gold = st
        .as_ref()
        .map(|st| rel_l2(&g, &read_f32(st, "prefill_logits")));
    println!(
        "{name}: prefill {} tokens: vs CPU {e_cpu:.2e}, vs transformers {}",
        prefill.len(),
        fmt(e_gold)
    );
    assert!(e_cpu < BOUND, "{name}: prefill vs CPU {e_cpu:.3e}");
    assert!(e_gold.is_none_or(|e| e < BOUND), "{name}: prefill vs transformers");
    for (i, &t) in decode.iter().enumerate() {
        let g = gpu.forward(&[t], 0).unwrap();
        let c = cpu.forward(&[t], 0).unwrap();
        let e_cpu = rel_l2(&g, &c);
        let e_gold = st.as_ref().map(|st| {
            rel_l2(&g, &read_f32(st, "decode_logits")[i * vocab..(i + 1) * vocab])
        });
        println!(
            "{name}: decode {i}: vs CPU {e_cpu:.2e}, vs transformers {}",
            fmt(e_gold)
        );
        assert!(e_cpu < BOUND, "{name}: decode {i} vs CPU {e_cpu:.3e}");
        assert!(e_gold.is_none_or(|e| e < BOUND), "{name}: decode {i} vs transformers");
    }
    // A reset starts a new sequence: the first prefill again.
    gpu.reset();
    let again = gpu.forward(&prefill, prefill.len() - 1).unwrap();
    let first = &g;
    assert_eq!(again.len(), vocab);
    assert!(first.iter().all(|v| v.is_finite()));
}

#[test]
fn golden_architectures_match_transformers_and_cpu() {
    let Some(be) = backend() else { return };
    for arch in ["llama", "llama_tied", "mistral", "qwen2", "qwen3", "gemma3"] {
        let (model, meta, golden) = load_golden(arch);
        check(&be, arch, &model, &meta, Some(&golden));
    }
}

#[test]
fn online_rotation_runs_like_the_cpu() {
    let Some(be) = backend() else { return };
    for arch in ["llama", "gemma3"] {
        let (mut model, meta, _) = load_golden(arch);
        // Rotating only the down projection's input changes the model, identically on both.
        let h = Arc::new(Hadamard::new(model.config.intermediate_size, 11).unwrap());
        for l in model.layers.iter_mut() {
            if let FeedForward::Dense(m) = &mut l.ffn {
                m.down_rotation = Some(h.clone());
            }
        }
        check(&be, &format!("{arch}+R4"), &model, &meta, None);
    }
}

#[test]
fn mixture_of_experts_is_a_clear_error() {
    let Some(be) = backend() else { return };
    let (model, _, _) = load_golden("mixtral");
    let e = GpuModel::upload(&be, &model, 8).err().expect("MoE must be refused");
    println!("{e}");
    assert!(e.to_string().contains("mixture-of-experts"));
}

#[test]
fn hadamard_kernel_matches_cpu() {
    let Some(be) = backend() else { return };
    // Powers of two, and sizes with a dense Paley factor (640 = 32·20, 1536 = 128·12,
    // 14336 = 512·28: Llama-3-8B's intermediate size).
    for n in [64usize, 640, 1536, 2048, 14336] {
        let h = Hadamard::new(n, 5).unwrap();
        let rows = 3;
        let x: Vec<f32> = (0..rows * n)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i % 13) as f32))
            .collect();
        let mut want = x.clone();
        h.apply_rows_f32(&mut want).unwrap();
        let gh = GpuHadamard::new(&be, &h).unwrap();
        let mut xd = be.upload(&x).unwrap();
        gh.apply(&be, &mut xd, rows).unwrap();
        let got = be.download(&xd).unwrap();
        let e = rel_l2(&got, &want);
        println!("hadamard {n}: rel L2 {e:.2e}");
        assert!(e < 1e-5, "hadamard {n}: {e:.3e}");
    }
}

#[test]
fn stories260k_greedy_text_on_the_gpu() {
    let Some(be) = backend() else { return };
    let path = data().join("models/stories260K.bin");
    if !path.exists() {
        println!("SKIP: {} not found (set LOWBIT_DATA)", path.display());
        return;
    }
    let m = lowbit_model::source::load_model(path.to_str().unwrap()).unwrap();
    let model = m.transformer().unwrap();
    let tok = &m.tokenizer;
    let prompt = tok.encode("Once upon a time", tok.add_bos_by_default());
    let mut gpu = GpuModel::upload(&be, &model, 64).unwrap();
    let mut cpu = CpuDecoder::new(&model, 64);
    let mut logits = gpu.forward(&prompt, prompt.len() - 1).unwrap();
    let c = cpu.forward(&prompt, prompt.len() - 1).unwrap();
    assert!(rel_l2(&logits, &c) < BOUND);
    let mut text = Vec::new();
    for _ in 0..40 {
        let next = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0 as u32;
        text.extend_from_slice(&tok.token_bytes(next));
        logits = gpu.forward(&[next], 0).unwrap();
    }
    let text = String::from_utf8_lossy(&text).into_owned();
    println!("stories260K on the GPU: Once upon a time{text}");
    assert!(
        text.starts_with(", there was a little girl named Lily. She loved to play outside in the park."),
        "{text}"
    );
}
