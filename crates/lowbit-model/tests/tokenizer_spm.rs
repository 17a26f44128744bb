//! SentencePiece-style tokenizer: llama.cpp's llama-spm test vectors, a hand-built vocabulary,
//! and Gemma-3 on the whole WikiText-2 test file.

mod tokenizer_support;

use std::time::Instant;

use lowbit_model::tokenizer::gguf::tokenizer_from_gguf;
use lowbit_model::tokenizer::spm::{SpmTokenizer, SpmVocab};
use lowbit_model::tokenizer::Tokenizer;
use sha2::{Digest, Sha256};
use tokenizer_support::*;

/// A tiny vocabulary: control tokens, byte tokens for a few bytes, pieces with scores.
fn tiny(add_space_prefix: bool) -> SpmTokenizer {
    let mut pieces: Vec<(String, f32, i32)> = vec![
        ("<unk>".into(), 0.0, 2),
        ("<s>".into(), 0.0, 3),
        ("</s>".into(), 0.0, 3),
        ("<turn>".into(), 0.0, 4),
    ];
    for b in [0x0Au8, 0xC3, 0xA9, 0xE4, 0xB8, 0x96] {
        pieces.push((format!("<0x{b:02X}>"), 0.0, 6));
    }
    for (p, s) in [
        ("\u{2581}", -1.0),
        ("a", -2.0),
        ("b", -3.0),
        ("\u{2581}a", -4.0),
        ("ab", -5.0),
        ("\u{2581}ab", -0.5),
        ("c", -6.0),
        ("bc", -0.1),
    ] {
        pieces.push((p.into(), s, 1));
    }
    let vocab = SpmVocab {
        tokens: pieces.iter().map(|p| p.0.clone()).collect(),
        scores: pieces.iter().map(|p| p.1).collect(),
        token_types: pieces.iter().map(|p| p.2).collect(),
        bos: Some(1),
        eos: Some(2),
        unk: Some(0),
        pad: None,
        add_bos: true,
        add_space_prefix,
    };
    SpmTokenizer::new(vocab).unwrap()
}

#[test]
fn tiny_vocab_merges_by_score() {
    let t = tiny(true);
    let id = |s: &str| t.token_id(s).unwrap();
    // "▁abc": candidates ▁a(-4), ab(-5), bc(-0.1) → bc first, then ▁a, leaving ▁a|bc.
    assert_eq!(t.encode("abc", false), vec![id("\u{2581}a"), id("bc")]);
    // "▁ab": ▁a(-4) vs ab(-5) → ▁a, then ▁a+b = ▁ab(-0.5).
    assert_eq!(t.encode("ab", true), vec![1, id("\u{2581}ab")]);
    // Unknown characters fall back to bytes; missing byte tokens to <unk>.
    assert_eq!(
        t.encode("é", false),
        vec![id("\u{2581}"), id("<0xC3>"), id("<0xA9>")]
    );
    assert_eq!(t.encode("z", false), vec![id("\u{2581}"), 0]);
    // User-defined tokens are cut out first; text after them gets the space prefix again.
    assert_eq!(
        t.encode("a<turn>a", false),
        vec![id("\u{2581}a"), id("<turn>"), id("\u{2581}a")]
    );
    assert_eq!(t.encode("", false), Vec::<u32>::new());
    assert_eq!(t.encode("", true), vec![1]);
    // Control tokens are plain text unless asked for.
    assert!(!t.encode("<s>", false).contains(&1));
    assert_eq!(
        t.encode_with_special("<s>ab", false, true),
        vec![1, id("\u{2581}ab")]
    );
}

#[test]
fn tiny_vocab_decodes() {
    let t = tiny(true);
    for text in ["abc", "ab ab c", "é世\n"] {
        let ids = t.encode(text, true);
        assert_eq!(t.decode(&ids), text, "{ids:?}");
    }
    // As in llama.cpp, the space prefix added after a special token stays in the decoded text.
    assert_eq!(t.decode(&t.encode("a<turn>b", true)), "a<turn> b");
    let t = tiny(false);
    let ids = t.encode("ab c", true);
    assert_eq!(t.decode(&ids), "ab c");
    assert_eq!(t.token_bytes(1), Vec::<u8>::new());
    assert_eq!(t.token_bytes(9999), Vec::<u8>::new());
}

#[test]
fn llama_spm_vectors() {
    let Some(file) = vocab_gguf("ggml-vocab-llama-spm.gguf") else {
        return;
    };
    let tok = tokenizer_from_gguf(&file).unwrap();
    assert_eq!(tok.vocab_size(), 32000);
    assert_eq!(
        (tok.bos(), tok.eos(), tok.add_bos_by_default()),
        (Some(1), Some(2), true)
    );
    let mut bad = Vec::new();
    let cases = vocab_cases("ggml-vocab-llama-spm.gguf");
    for (text, expected) in &cases {
        // llama.cpp's test-tokenizer-0 encodes without BOS.
        let got = tok.encode(text, false);
        if &got != expected {
            bad.push(format!(
                "{text:?}\n  expected {expected:?}\n  got      {got:?}"
            ));
        }
        // Decoding gives the text back (the vocabulary has byte fallback for everything).
        assert_eq!(tok.decode(&got), *text);
    }
    assert!(
        bad.is_empty(),
        "{} of {} vectors differ:\n{}",
        bad.len(),
        cases.len(),
        bad.join("\n")
    );
}

#[test]
fn gemma3_wikitext() {
    let Some(path) = gemma_gguf_path() else {
        return;
    };
    let file = parse_gguf(&path).unwrap();
    let tok = tokenizer_from_gguf(&file).unwrap();
    assert_eq!(
        (tok.bos(), tok.eos(), tok.add_bos_by_default()),
        (Some(2), Some(1), true)
    );
    let text = std::fs::read_to_string(data_dir().join("text/wikitext-2-raw-test.txt")).unwrap();
    let start = Instant::now();
    let ids = tok.encode(&text, true);
    eprintln!(
        "gemma3: {} bytes -> {} tokens in {:.2?}",
        text.len(),
        ids.len(),
        start.elapsed()
    );

    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures_dir().join("gemma3_wikitext2_test.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(ids.len(), 295_216);
    assert_eq!(ids.len() as u64, fixture["count"].as_u64().unwrap());
    let first: Vec<u32> = fixture["first_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(&ids[..first.len()], &first[..]);
    let mut h = Sha256::new();
    for id in &ids {
        h.update(id.to_le_bytes());
    }
    let digest: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(digest, fixture["sha256_u32le"].as_str().unwrap());
    assert_eq!(tok.decode(&ids), text);

    // Control tokens written in the text are only parsed on request.
    let prompt = "<start_of_turn>user\nHi<end_of_turn>";
    let spm = gemma_spm(&file);
    let start = spm.token_id("<start_of_turn>").unwrap();
    assert!(!spm.encode(prompt, false).contains(&start));
    assert_eq!(spm.encode_with_special(prompt, true, true)[..2], [2, start]);
}

fn gemma_spm(file: &lowbit_model::gguf::GgufFile) -> SpmTokenizer {
    use lowbit_model::gguf::GgufValue;
    let strings = |k: &str| match &file.metadata[k] {
        GgufValue::Array(a) => a
            .iter()
            .map(|v| match v {
                GgufValue::String(s) => s.clone(),
                _ => panic!(),
            })
            .collect(),
        _ => panic!(),
    };
    let tokens: Vec<String> = strings("tokenizer.ggml.tokens");
    let arr = |k: &str| match &file.metadata[k] {
        GgufValue::Array(a) => a.clone(),
        _ => panic!(),
    };
    let scores = arr("tokenizer.ggml.scores")
        .iter()
        .map(|v| match v {
            GgufValue::F32(x) => *x,
            _ => panic!(),
        })
        .collect();
    let token_types = arr("tokenizer.ggml.token_type")
        .iter()
        .map(|v| match v {
            GgufValue::I32(x) => *x,
            _ => panic!(),
        })
        .collect();
    SpmTokenizer::new(SpmVocab {
        tokens,
        scores,
        token_types,
        bos: Some(2),
        eos: Some(1),
        unk: Some(3),
        pad: Some(0),
        add_bos: true,
        add_space_prefix: false,
    })
    .unwrap()
}

#[test]
fn invalid_vocab_is_an_error() {
    assert!(SpmTokenizer::new(SpmVocab::default()).is_err());
    let v = SpmVocab {
        tokens: vec!["a".into()],
        scores: vec![],
        ..Default::default()
    };
    assert!(SpmTokenizer::new(v).is_err());
}
