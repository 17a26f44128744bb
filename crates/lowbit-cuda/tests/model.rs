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
use lowbit_cuda::{CudaBackend, GpuHadamard, GpuKvCache, GpuModel};
use lowbit_model::arch::blocks::FeedForward;
use lowbit_model::config::from_hf_config;
use lowbit_model::golden::{self, rel_l2, Golden};
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

fn fmt(e: Option<f64>) -> String {
    e.map_or("-".into(), |e| format!("{e:.2e}"))
}

fn load_golden(arch: &str) -> (Transformer, Golden) {
    let dir = repo().join("tests/fixtures/golden").join(arch);
    let (cfg_json, weights) = open_hf_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
    let config = from_hf_config(&cfg_json, &dir.join("config.json")).unwrap();
    let model = Transformer::load(config, &weights).unwrap();
    (model, golden::load(&dir).unwrap_or_else(|e| panic!("{e}")))
}

/// Prefill then 4 decode steps on the GPU: against transformers' logits (unless the model was
/// changed: `vs_transformers` false) and against the CPU runner on the same model.
fn check(be: &CudaBackend, name: &str, model: &Transformer, fx: &Golden, vs_transformers: bool) {
    check_with(
        be,
        name,
        model,
        fx,
        vs_transformers,
        GpuKvCache::Bf16,
        BOUND,
    )
}

fn check_pair(
    be: &CudaBackend,
    name: &str,
    model: &Transformer,
    cpu_model: &Transformer,
    fx: &Golden,
    kv: GpuKvCache,
    bound: f64,
) {
    check_full(be, name, model, cpu_model, fx, false, kv, bound)
}

fn check_with(
    be: &CudaBackend,
    name: &str,
    model: &Transformer,
    fx: &Golden,
    vs_transformers: bool,
    kv: GpuKvCache,
    bound: f64,
) {
    check_full(be, name, model, model, fx, vs_transformers, kv, bound)
}

/// `model` on the GPU against `cpu_model` on the CPU (the same model, or the same values in
/// f32) and against transformers' logits when given.
#[allow(clippy::too_many_arguments)]
fn check_full(
    be: &CudaBackend,
    name: &str,
    model: &Transformer,
    cpu_model: &Transformer,
    fx: &Golden,
    vs_transformers: bool,
    kv: GpuKvCache,
    bound: f64,
) {
    let (prefill, decode) = (&fx.prefill_ids, &fx.decode_ids);
    let vocab = model.config.vocab_size;
    let cap = prefill.len() + decode.len();
    let mut gpu = GpuModel::upload_with_cache(be, model, cap, kv).unwrap();
    let mut cpu = CpuDecoder::new(cpu_model, cap);
    println!("{name}: layouts {:?}", gpu.formats());
    let g = gpu.forward(prefill, 0).unwrap();
    let c = cpu.forward(prefill, 0).unwrap();
    let e_cpu = rel_l2(&g, &c);
    let e_gold = vs_transformers.then(|| rel_l2(&g, &fx.prefill_logits));
    println!(
        "{name}: prefill {} tokens: vs CPU {e_cpu:.2e}, vs transformers {}",
        prefill.len(),
        fmt(e_gold)
    );
    assert!(e_cpu < bound, "{name}: prefill vs CPU {e_cpu:.3e}");
    assert!(
        e_gold.is_none_or(|e| e < bound),
        "{name}: prefill vs transformers"
    );
    for (i, &t) in decode.iter().enumerate() {
        let g = gpu.forward(&[t], 0).unwrap();
        let c = cpu.forward(&[t], 0).unwrap();
        let e_cpu = rel_l2(&g, &c);
        let e_gold =
            vs_transformers.then(|| rel_l2(&g, &fx.decode_logits[i * vocab..(i + 1) * vocab]));
        println!(
            "{name}: decode {i}: vs CPU {e_cpu:.2e}, vs transformers {}",
            fmt(e_gold)
        );
        assert!(e_cpu < bound, "{name}: decode {i} vs CPU {e_cpu:.3e}");
        assert!(
            e_gold.is_none_or(|e| e < bound),
            "{name}: decode {i} vs transformers"
        );
    }
    // A reset starts a new sequence: the first prefill again.
    gpu.reset();
    let again = gpu.forward(prefill, prefill.len() - 1).unwrap();
    let first = &g;
    assert_eq!(again.len(), vocab);
    assert!(first.iter().all(|v| v.is_finite()));
}

#[test]
fn golden_architectures_match_transformers_and_cpu() {
    let Some(be) = backend() else { return };
    for arch in ["llama", "llama_tied", "mistral", "qwen2", "qwen3", "gemma3"] {
        let (model, fx) = load_golden(arch);
        check(&be, arch, &model, &fx, true);
    }
}

/// The GPU's FP8 cache is the CPU's `--kv fp8` format (E4M3, one absmax/448 scale per position
/// and KV head): the two agree to 2e-2 (a value near a rounding boundary may round apart), and
/// both stay within 0.15 of transformers' f32 logits on these tiny random-weight models (3
/// mantissa bits: relative 2^-4 per cached value).
#[test]
fn fp8_kv_cache_matches_the_cpu_fp8_cache() {
    let Some(be) = backend() else { return };
    for arch in ["llama", "qwen3", "gemma3"] {
        let (mut model, fx) = load_golden(arch);
        model.config.kv_cache = Some(lowbit_cpu::attention::KvCacheSpec {
            dtype: lowbit_cpu::attention::KvDtype::Fp8,
            rotation_seed: None,
        });
        let name = format!("{arch} fp8 KV");
        check_with(&be, &name, &model, &fx, false, GpuKvCache::Fp8, 2e-2);
        check_with(&be, &name, &model, &fx, true, GpuKvCache::Fp8, 0.15);
    }
}

#[test]
fn online_rotation_runs_like_the_cpu() {
    let Some(be) = backend() else { return };
    for arch in ["llama", "gemma3"] {
        let (mut model, fx) = load_golden(arch);
        // Rotating only the down projection's input changes the model, identically on both.
        let h = Arc::new(Hadamard::new(model.config.intermediate_size, 11).unwrap());
        for l in model.layers.iter_mut() {
            if let FeedForward::Dense(m) = &mut l.ffn {
                m.down_rotation = Some(h.clone());
            }
        }
        check(&be, &format!("{arch}+R4"), &model, &fx, false);
    }
}

/// W8A8 checkpoints: every linear input quantized per token (INT8 or FP8) on both devices.
/// Rounding to 8 bits is discontinuous: an input that differs in its last f32 bit between the
/// devices can round to the neighbouring code, so GPU and CPU agree to the size of a few such
/// flips (bound 5e-2), and the GPU's total W8A8 error against the unquantized model must be
/// the CPU's within a factor 1.5 (the quantization is the same, not worse).
#[test]
fn w8a8_activation_quantization_runs_like_the_cpu() {
    use lowbit_model::arch::act_quant::ActQuant;
    let Some(be) = backend() else { return };
    for act in [ActQuant::Int8, ActQuant::Fp8E4M3] {
        for arch in ["llama", "gemma3"] {
            let (mut model, fx) = load_golden(arch);
            let prefill = fx.prefill_ids;
            let exact = CpuDecoder::new(&model, prefill.len())
                .forward(&prefill, 0)
                .unwrap();
            model.set_activation_quant(Some(act)).unwrap();
            let cpu = CpuDecoder::new(&model, prefill.len())
                .forward(&prefill, 0)
                .unwrap();
            let mut gpu = GpuModel::upload(&be, &model, prefill.len()).unwrap();
            let g = gpu.forward(&prefill, 0).unwrap();
            let (e_dev, e_cpu, e_gpu) =
                (rel_l2(&g, &cpu), rel_l2(&cpu, &exact), rel_l2(&g, &exact));
            println!(
                "{arch} {}: GPU vs CPU {e_dev:.2e}; vs unquantized: CPU {e_cpu:.2e}, GPU {e_gpu:.2e}",
                act.name()
            );
            assert!(
                e_gpu < 1.5 * e_cpu + 1e-3,
                "{arch} {}: GPU {e_gpu:.3e} vs CPU {e_cpu:.3e}",
                act.name()
            );
        }
    }
}

/// The device's per-token quantizer is the CPU's, bit for bit, on identical inputs (ties at
/// half steps, zero rows, a single huge value, FP8 subnormal range included).
#[test]
fn w8a8_quantizer_is_bit_identical_to_the_cpu() {
    use lowbit_model::arch::act_quant::ActQuant;
    let Some(be) = backend() else { return };
    let mut rng = lowbit_cuda::reference::Rng::new(9);
    let cols = 640;
    let mut rows: Vec<Vec<f32>> = (0..6).map(|_| rng.vec(cols, 3.0)).collect();
    rows.push(vec![0.0; cols]);
    let mut spike = rng.vec(cols, 1e-3);
    spike[17] = 1e4;
    rows.push(spike);
    // Exact half steps of the int8 grid: amax 127 makes the step 1.
    let mut ties: Vec<f32> = (0..cols).map(|i| (i as f32 - 320.0) * 0.25 + 0.5).collect();
    ties[0] = 127.0;
    rows.push(ties);
    let x: Vec<f32> = rows.concat();
    let n = rows.len();
    for act in [ActQuant::Int8, ActQuant::Fp8E4M3] {
        let xd = be.upload(&x).unwrap();
        let mut yd = be.upload(&vec![f32::NAN; x.len()]).unwrap();
        lowbit_cuda::model::act_quantize(&be, act, &xd, &mut yd, n, cols).unwrap();
        let got = be.download(&yd).unwrap();
        let want = act.fake_quantize_tokens(&x, cols);
        let diff = got
            .iter()
            .zip(&want)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        println!("{}: {diff} of {} values differ", act.name(), x.len());
        assert_eq!(diff, 0, "{}", act.name());
    }
}

#[test]
fn mixture_of_experts_is_a_clear_error() {
    let Some(be) = backend() else { return };
    let (model, _) = load_golden("mixtral");
    let e = GpuModel::upload(&be, &model, 8)
        .err()
        .expect("MoE must be refused");
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
        text.starts_with(
            ", there was a little girl named Lily. She loved to play outside in the park."
        ),
        "{text}"
    );
}

/// A 2-layer Llama of width 256 built in memory with every projection in a different stored
/// type, so each native GPU layout runs inside a whole model: Q4_K, Q6_K, Q8_0, MXFP4, LB_NVFP4,
/// bf16, int4 g128 (Q4_0 blocks sharing one scale per 128 values) and a Q5_0 fallback to f32.
/// Returns (the model, the same values stored as f32).
fn quantized_llama() -> (Transformer, Transformer) {
    use lowbit_formats::GgmlType as T;
    use lowbit_model::{Backing, TensorEntry, WeightStore};
    let (h, inter, vocab, layers) = (256usize, 512usize, 300usize, 2usize);
    let cfg = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": h, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": vocab,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "hidden_act": "silu", "tie_word_embeddings": false
    });
    let path = PathBuf::from("synthetic-quantized-llama");
    let config = from_hf_config(&cfg, &path).unwrap();
    let mut rng = lowbit_cuda::reference::Rng::new(42);
    let mut bytes = Vec::new();
    let mut entries = Vec::new();
    let mut add = |name: String, dtype: T, shape: Vec<usize>, data: Vec<u8>| {
        entries.push((name, dtype, shape, bytes.len(), data.len()));
        bytes.extend_from_slice(&data);
    };
    let matrix = |ty: T, rows: usize, cols: usize, rng: &mut lowbit_cuda::reference::Rng| {
        let scale = 1.0 / (cols as f32).sqrt();
        match ty {
            T::LB_NVFP4 => {
                let f = lowbit_cuda::WeightFormat::Nvfp4;
                lowbit_cuda::reference::random_matrix(f, rows, cols, rng).0
            }
            T::Q4_0 => {
                // One f16 scale per 128 values, repeated in the four 32-value blocks.
                let mut out = Vec::new();
                for _ in 0..rows * cols / 128 {
                    let d = half::f16::from_f32(scale / 6.0 * (0.5 + rng.uniform().abs()));
                    for _ in 0..4 {
                        out.extend_from_slice(&d.to_bits().to_le_bytes());
                        out.extend((0..16).map(|_| rng.next_u64() as u8));
                    }
                }
                out
            }
            _ => {
                let v = rng.vec(rows * cols, scale * 1.7);
                let mut out = vec![0u8; ty.byte_len(rows * cols).unwrap()];
                lowbit_formats::quant::quantize_rows(ty, &v, cols, &mut out).unwrap();
                out
            }
        }
    };
    let f32_bytes = |v: Vec<f32>| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    add(
        "model.embed_tokens.weight".into(),
        T::F32,
        vec![vocab, h],
        f32_bytes(rng.vec(vocab * h, 1.0)),
    );
    add(
        "model.norm.weight".into(),
        T::F32,
        vec![h],
        f32_bytes(vec![1.0; h]),
    );
    add(
        "lm_head.weight".into(),
        T::Q8_0,
        vec![vocab, h],
        matrix(T::Q8_0, vocab, h, &mut rng),
    );
    let kinds = [
        [
            T::Q4_K,
            T::Q6_K,
            T::Q8_0,
            T::MXFP4,
            T::LB_NVFP4,
            T::BF16,
            T::Q4_0,
        ],
        [
            T::Q4_0,
            T::LB_NVFP4,
            T::MXFP4,
            T::Q5_0,
            T::Q4_K,
            T::Q6_K,
            T::BF16,
        ],
    ];
    for (l, kinds) in kinds.iter().enumerate().take(layers) {
        let p = format!("model.layers.{l}.");
        let shapes = [
            ("self_attn.q_proj", 256, h),
            ("self_attn.k_proj", 128, h),
            ("self_attn.v_proj", 128, h),
            ("self_attn.o_proj", h, 256),
            ("mlp.gate_proj", inter, h),
            ("mlp.up_proj", inter, h),
            ("mlp.down_proj", h, inter),
        ];
        for ((name, rows, cols), &ty) in shapes.iter().zip(kinds.iter()) {
            let data = if ty == T::BF16 {
                rng.vec(rows * cols, 1.7 / (*cols as f32).sqrt())
                    .iter()
                    .flat_map(|x| half::bf16::from_f32(*x).to_bits().to_le_bytes())
                    .collect()
            } else {
                matrix(ty, *rows, *cols, &mut rng)
            };
            add(format!("{p}{name}.weight"), ty, vec![*rows, *cols], data);
        }
        for n in ["input_layernorm", "post_attention_layernorm"] {
            add(
                format!("{p}{n}.weight"),
                T::F32,
                vec![h],
                f32_bytes(vec![1.0; h]),
            );
        }
    }
    let mut store = WeightStore::new(&path);
    let b = store.add_backing(Backing::Owned(bytes));
    for (name, dtype, shape, offset, len) in entries {
        let entry = TensorEntry {
            dtype,
            shape,
            backing: b,
            offset,
            len,
        };
        store.insert(name, entry).unwrap();
    }
    // The same values stored as f32: the CPU reference without activation quantization.
    let mut exact = WeightStore::new(&path);
    let mut f32_data = Vec::new();
    let mut f32_entries = Vec::new();
    for name in store.names() {
        let v = store.to_f32(name).unwrap();
        let shape = store.entry(name).unwrap().shape.clone();
        f32_entries.push((name.to_string(), shape, f32_data.len(), v.len() * 4));
        f32_data.extend(v.iter().flat_map(|x| x.to_le_bytes()));
    }
    let b = exact.add_backing(Backing::Owned(f32_data));
    for (name, shape, offset, len) in f32_entries {
        let entry = TensorEntry {
            dtype: T::F32,
            shape,
            backing: b,
            offset,
            len,
        };
        exact.insert(name, entry).unwrap();
    }
    (
        Transformer::load(config.clone(), &store).unwrap(),
        Transformer::load(config, &exact).unwrap(),
    )
}

#[test]
fn every_native_layout_runs_in_a_model_like_the_cpu() {
    // Built and run on the CPU everywhere (CI too), so the model itself is known to be sound.
    let (model, exact) = quantized_llama();
    let logits = CpuDecoder::new(&model, 8).forward(&[1, 2, 3], 2).unwrap();
    let want = CpuDecoder::new(&exact, 8).forward(&[1, 2, 3], 2).unwrap();
    // The CPU's fused kernels quantize activations to 8 bits: close to, not equal to, f32.
    let e = rel_l2(&logits, &want);
    println!("quantized llama on the CPU vs its f32 copy: {e:.2e}");
    assert!(e < 5e-2, "{e}");
    let Some(be) = backend() else { return };
    let gpu = GpuModel::upload(&be, &model, 64).unwrap();
    let layouts: Vec<&str> = gpu.formats().keys().map(|s| s.as_str()).collect();
    println!("layouts: {:?}", gpu.formats());
    for want in [
        "q4_k",
        "q6_k",
        "q8_0",
        "mxfp4",
        "nvfp4",
        "bf16",
        "int4g128t",
        "f32 (from q5_0)",
    ] {
        assert!(layouts.contains(&want), "{want} not used: {layouts:?}");
    }
    drop(gpu);
    let fx = Golden {
        prefill_ids: (0..37).map(|i| (i * 7 + 3) % 300).collect(),
        decode_ids: vec![5, 77, 123, 299],
        prefill_logits: Vec::new(),
        decode_logits: Vec::new(),
    };
    // The GPU decodes the weights exactly and keeps f32 activations: compare it with the CPU
    // running the same values in f32.
    check_pair(
        &be,
        "quantized llama",
        &model,
        &exact,
        &fx,
        GpuKvCache::Bf16,
        BOUND,
    );
}
