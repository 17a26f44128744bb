//! Bounded memory: a synthetic Llama whose f32 weights are larger than an imposed `--max-memory`
//! limit is quantized (RTN and GPTQ) under that limit, streaming the output tensor by tensor; a
//! limit that is too small aborts with an error naming it and leaves nothing behind. One test per
//! process, so the resident-set numbers are this test's alone.

use std::io::Write;
use std::path::{Path, PathBuf};

use lowbit_quant::pipeline::{default_ignore, plan, quantize_streaming, Method, Options};
use lowbit_quant::{GptqOptions, ModelWriter, Quantizer, Source, WriteInfo};

const HIDDEN: usize = 512;
const FFN: usize = 1536;
const LAYERS: usize = 16;
const VOCAB: usize = 256;

fn status_mib(key: &str) -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let l = s.lines().find(|l| l.starts_with(key)).unwrap();
    l.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
}

/// Write the model tensor by tensor (never holding more than one), with small pseudo-random values.
fn write_synthetic(dir: &Path) -> usize {
    std::fs::create_dir_all(dir).unwrap();
    let cfg = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": LAYERS,
        "num_attention_heads": 8, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": VOCAB,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2,
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let mut tensors: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![VOCAB, HIDDEN]),
        ("model.norm.weight".into(), vec![HIDDEN]),
    ];
    for i in 0..LAYERS {
        let p = format!("model.layers.{i}.");
        for (m, s) in [
            ("input_layernorm.weight", vec![HIDDEN]),
            ("post_attention_layernorm.weight", vec![HIDDEN]),
            ("self_attn.q_proj.weight", vec![HIDDEN, HIDDEN]),
            ("self_attn.k_proj.weight", vec![HIDDEN, HIDDEN]),
            ("self_attn.v_proj.weight", vec![HIDDEN, HIDDEN]),
            ("self_attn.o_proj.weight", vec![HIDDEN, HIDDEN]),
            ("mlp.gate_proj.weight", vec![FFN, HIDDEN]),
            ("mlp.up_proj.weight", vec![FFN, HIDDEN]),
            ("mlp.down_proj.weight", vec![HIDDEN, FFN]),
        ] {
            tensors.push((format!("{p}{m}"), s));
        }
    }
    let mut header = serde_json::Map::new();
    let mut off = 0usize;
    for (n, s) in &tensors {
        let len = s.iter().product::<usize>() * 4;
        header.insert(
            n.clone(),
            serde_json::json!({"dtype": "F32", "shape": s, "data_offsets": [off, off + len]}),
        );
        off += len;
    }
    let h = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    let f = std::fs::File::create(dir.join("model.safetensors")).unwrap();
    let mut w = std::io::BufWriter::new(f);
    w.write_all(&(h.len() as u64).to_le_bytes()).unwrap();
    w.write_all(&h).unwrap();
    let mut state = 0x9e3779b97f4a7c15u64;
    for (n, s) in &tensors {
        let count: usize = s.iter().product();
        let norm = n.contains("norm");
        let mut buf = Vec::with_capacity(count * 4);
        for _ in 0..count {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            let v = if norm { 1.0 + 0.1 * u } else { 0.08 * u };
            buf.extend_from_slice(&v.to_le_bytes());
        }
        w.write_all(&buf).unwrap();
    }
    w.flush().unwrap();
    off
}

fn run(model: &Path, out: &Path, method: Method, limit_mib: u64) -> anyhow::Result<()> {
    let (cfg, w) = lowbit_model::safetensors_dir::open_hf_dir(model)?;
    let c = lowbit_model::config::from_hf_config(&cfg, &model.join("config.json"))?;
    let q = Quantizer::from_spec(&lowbit_formats::QuantSpec::parse("int4_g128_sym").unwrap())?;
    let opts = Options {
        quantizer: q.clone(),
        method,
        ignore: default_ignore(),
        gptq: GptqOptions::default(),
        max_rss_bytes: Some(limit_mib << 20),
    };
    let calib: Vec<Vec<u32>> = (0..4)
        .map(|s| (0..64).map(|t| ((s * 31 + t * 7) % VOCAB) as u32).collect())
        .collect();
    let src = Source {
        config: &c,
        config_json: Some(cfg),
        dir: None,
        tokenizer_gguf: None,
    };
    let pl = plan(&w, &opts)?;
    let targets = pl.targets.iter().cloned().collect();
    let specs = lowbit_quant::export::plan_specs(&src, &w, &targets, &q)?;
    let mut writer = ModelWriter::create(out, &src, specs, true)?;
    quantize_streaming(
        &c,
        &w,
        &opts,
        &pl,
        &calib,
        &mut |n, t| writer.add(n, &t),
        &mut |_, _, _| {},
    )?;
    let info = WriteInfo {
        scheme: "int4_g128_sym".into(),
        method,
        act_order: false,
        calib_sequences: 4,
        calib_len: 64,
    };
    writer.finish(&pl.ignored, &q, &info)
}

#[test]
fn quantizes_a_model_larger_than_the_memory_limit() {
    let tmp: PathBuf = std::env::temp_dir().join(format!("lowbit-bounded-{}", std::process::id()));
    let model = tmp.join("model");
    let bytes = write_synthetic(&model);
    let limit = 96u64;
    let model_mib = bytes as f64 / 1048576.0;
    assert!(
        model_mib > limit as f64,
        "the synthetic model ({model_mib:.0} MiB) must exceed the limit"
    );
    let start = status_mib("VmRSS:");
    // GPTQ holds one layer's Hessians and their factorizations besides the weights: a looser
    // limit, still below the model's size.
    for (method, limit) in [(Method::Rtn, limit), (Method::Gptq, 2 * limit)] {
        let out = tmp.join(format!("out-{}", method.name()));
        run(&model, &out, method, limit).unwrap_or_else(|e| panic!("{}: {e:#}", method.name()));
        // Every layer is in the output (read from the header only: loading would dequantize the
        // whole model into memory, which is what this test must not do).
        let f = std::fs::read(out.join("model.safetensors")).unwrap();
        let hlen = u64::from_le_bytes(f[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&f[8..8 + hlen]).unwrap();
        drop(f);
        let last = format!("model.layers.{}.mlp.down_proj.weight_packed", LAYERS - 1);
        assert!(header.get(&last).is_some(), "{last} missing");
        eprintln!(
            "{}: model {model_mib:.0} MiB (f32), limit {limit} MiB, peak RSS so far {:.1} MiB (start {start:.1} MiB)",
            method.name(),
            status_mib("VmHWM:")
        );
        // Peak resident memory (the high-water mark, not just the per-layer checks) stayed under.
        assert!(status_mib("VmHWM:") < limit as f64);
    }
    // A limit below what one layer needs aborts, names the limit, and leaves no output behind.
    let out = tmp.join("out-small");
    let e = run(&model, &out, Method::Rtn, 1).unwrap_err().to_string();
    assert!(e.contains("--max-memory limit of 1.0 MiB"), "{e}");
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with(".out-small"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    std::fs::remove_dir_all(&tmp).unwrap();
}
