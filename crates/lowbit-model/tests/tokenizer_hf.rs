//! HF tokenizer.json wrapper: a byte-level BPE tokenizer.json built from the GPT-2 GGUF vocabulary
//! must tokenize like our own BPE; BOS/EOS come from tokenizer_config.json or special tokens.

mod tokenizer_support;

use std::path::PathBuf;

use lowbit_model::gguf::GgufValue;
use lowbit_model::tokenizer::gguf::tokenizer_from_gguf;
use lowbit_model::tokenizer::hf::HfTokenizer;
use lowbit_model::tokenizer::Tokenizer;
use serde_json::json;
use tokenizer_support::*;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lowbit-tok-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn byte_level_json(
    tokens: &[String],
    merges: &[String],
    specials: &[(u32, &str)],
) -> serde_json::Value {
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let added: Vec<_> = specials
        .iter()
        .map(|(id, c)| json!({"id": id, "content": c, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}))
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": null,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    })
}

fn strings(v: &GgufValue) -> Vec<String> {
    match v {
        GgufValue::Array(a) => a
            .iter()
            .map(|s| match s {
                GgufValue::String(s) => s.clone(),
                _ => panic!("not a string"),
            })
            .collect(),
        _ => panic!("not an array"),
    }
}

#[test]
fn gpt2_tokenizer_json_matches_gguf_bpe() {
    let Some(file) = vocab_gguf("ggml-vocab-gpt-2.gguf") else {
        return;
    };
    let tokens = strings(&file.metadata["tokenizer.ggml.tokens"]);
    let merges = strings(&file.metadata["tokenizer.ggml.merges"]);
    let dir = temp_dir("gpt2");
    let path = dir.join("tokenizer.json");
    std::fs::write(
        &path,
        byte_level_json(&tokens, &merges, &[(50256, "<|endoftext|>")]).to_string(),
    )
    .unwrap();

    let hf = HfTokenizer::open(&dir).unwrap();
    let ours = tokenizer_from_gguf(&file).unwrap();
    assert_eq!(hf.vocab_size(), 50257);
    // No tokenizer_config.json: BOS/EOS are the special <|endoftext|>, not added by default.
    assert_eq!(
        (hf.bos(), hf.eos(), hf.add_bos_by_default()),
        (Some(50256), Some(50256), false)
    );

    let text = std::fs::read_to_string(data_dir().join("text/wikitext-2-raw-test.txt")).unwrap();
    let sample = &text[..text.char_indices().nth(100_000).unwrap().0];
    let ids = hf.encode(sample, false);
    assert_eq!(ids, ours.encode(sample, false));
    assert_eq!(hf.decode(&ids), sample);
    let bytes: Vec<u8> = ids.iter().flat_map(|&id| hf.token_bytes(id)).collect();
    assert_eq!(bytes, sample.as_bytes());
    for (case, _) in vocab_cases("ggml-vocab-gpt-2.gguf") {
        assert_eq!(
            hf.encode(&case, false),
            ours.encode(&case, false),
            "{case:?}"
        );
    }
    assert_eq!(hf.encode("hi", true)[0], 50256);

    // tokenizer_config.json takes precedence.
    std::fs::write(
        dir.join("tokenizer_config.json"),
        json!({"bos_token": {"content": "<|endoftext|>"}, "eos_token": "<|endoftext|>", "add_bos_token": true}).to_string(),
    )
    .unwrap();
    let hf = HfTokenizer::open(&path).unwrap();
    assert_eq!(
        (hf.bos(), hf.eos(), hf.add_bos_by_default()),
        (Some(50256), Some(50256), true)
    );
    assert_eq!(hf.token_bytes(50256), Vec::<u8>::new());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_tokenizer_json_is_an_error() {
    let dir = temp_dir("bad");
    std::fs::write(dir.join("tokenizer.json"), "{\"model\": 5}").unwrap();
    let err = HfTokenizer::open(&dir).err().unwrap();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    assert!(HfTokenizer::open(&dir.join("missing")).is_err());
    std::fs::remove_dir_all(&dir).ok();
}
