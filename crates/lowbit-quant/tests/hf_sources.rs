//! Sources without an HF layout (llama2.c here; llama GGUF shares the q/k layout): the q/k rows are
//! put in NeoX order, the tokenizer travels as tokenizer.gguf, and the written directory loads and
//! generates like the original.

use std::path::{Path, PathBuf};

use lowbit_model::source::{load_llama2c, load_model};
use lowbit_model::Transformer;
use lowbit_quant::pipeline::{default_ignore, plan, quantize_streaming, Method, Options};
use lowbit_quant::{GptqOptions, ModelWriter, Quantizer, Source, WriteInfo};

fn stories() -> Option<PathBuf> {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/models/stories260K.bin");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping: {} not found", p.display());
        None
    }
}

fn greedy(m: &Transformer, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut st = m.new_state(prompt.len() + n);
    let mut logits = m.forward(&mut st, prompt, prompt.len() - 1).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let next = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0 as u32;
        out.push(next);
        logits = m.forward(&mut st, &[next], 0).unwrap();
    }
    out
}

#[test]
fn neox_permutation_keeps_logits() {
    let Some(p) = stories() else { return };
    let src = load_llama2c(&p).unwrap();
    let base = src.transformer().unwrap();
    let (mut c, mut w) = (src.config.clone(), src.weights);
    lowbit_quant::hf_source::undo_interleaved_rope(&mut c, &mut w).unwrap();
    assert_eq!(c.rope_style, lowbit_cpu::ops::RopeStyle::Neox);
    let perm = Transformer::load(c, &w).unwrap();
    let toks: Vec<u32> = (1..60).map(|t| (t * 37 % 512) as u32).collect();
    let a = base
        .forward(&mut base.new_state(toks.len()), &toks, 0)
        .unwrap();
    let b = perm
        .forward(&mut perm.new_state(toks.len()), &toks, 0)
        .unwrap();
    let err = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(err < 1e-4, "max logit difference {err}");
}

#[test]
fn llama2c_w8_round_trips_with_tokenizer() {
    let Some(p) = stories() else { return };
    let src = load_llama2c(&p).unwrap();
    let text =
        "Once upon a time, there was a little dog named Max. He liked to run and jump.\nThe end.";
    let want_ids = src.tokenizer.encode(text, true);
    let prompt = src.tokenizer.encode("Once upon a time", true);
    let want = greedy(&src.transformer().unwrap(), &prompt, 40);

    let tok_meta = {
        let t = lowbit_model::tokenizer::llama2c::Llama2cTokenizer::open(
            &p.with_file_name("tok512.bin"),
            Some(512),
        )
        .unwrap();
        lowbit_quant::hf_source::tokenizer_metadata_from_llama2c(&t).unwrap()
    };
    let (mut c, mut w) = (src.config.clone(), src.weights);
    lowbit_quant::hf_source::undo_interleaved_rope(&mut c, &mut w).unwrap();
    let q = Quantizer::from_spec(&lowbit_formats::QuantSpec::parse("int8_channel_sym").unwrap())
        .unwrap();
    let opts = Options {
        quantizer: q.clone(),
        method: Method::Rtn,
        ignore: default_ignore(),
        gptq: GptqOptions::default(),
        max_rss_bytes: None,
    };
    let s = Source {
        config: &c,
        config_json: None,
        dir: None,
        tokenizer_gguf: Some(tok_meta),
    };
    let out = std::env::temp_dir().join(format!("lowbit-hf-sources-{}", std::process::id()));
    let pl = plan(&w, &opts).unwrap();
    let targets = pl.targets.iter().cloned().collect();
    let specs = lowbit_quant::export::plan_specs(&s, &w, &targets, &q).unwrap();
    let mut writer = ModelWriter::create(&out, &s, specs, true).unwrap();
    quantize_streaming(
        &c,
        &w,
        &opts,
        &pl,
        &[],
        &mut |n, t| writer.add(n, &t),
        &mut |_, _, _| {},
    )
    .unwrap();
    let info = WriteInfo {
        scheme: "int8_channel_sym".into(),
        method: Method::Rtn,
        act_order: false,
        calib_sequences: 0,
        calib_len: 0,
    };
    writer.finish(&pl.ignored, &q, &info).unwrap();

    let m = load_model(out.to_str().unwrap()).unwrap();
    assert_eq!(m.source, "hf");
    assert!(out.join("tokenizer.gguf").exists());
    // The SentencePiece tokenizer built from the llama2.c vocabulary encodes as llama2.c does.
    assert_eq!(m.tokenizer.encode(text, true), want_ids);
    let got = greedy(&m.transformer().unwrap(), &prompt, 40);
    let (gt, wt) = (m.tokenizer.decode(&got), m.tokenizer.decode(&want));
    let first = |s: &str| s.split('.').next().unwrap().to_string();
    eprintln!("original: {wt}\nw8:       {gt}");
    assert_eq!(first(&gt), first(&wt));
    std::fs::remove_dir_all(&out).unwrap();
}
