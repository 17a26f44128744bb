//! Byte-level BPE: llama.cpp's gpt-2 test vectors and a hand-built vocabulary.

mod tokenizer_support;

use lowbit_model::tokenizer::bpe::{bytes_to_unicode, BpeTokenizer, BpeVocab};
use lowbit_model::tokenizer::gguf::tokenizer_from_gguf;
use lowbit_model::tokenizer::Tokenizer;
use tokenizer_support::*;

fn tiny() -> BpeTokenizer {
    // All 256 byte characters, then merged pieces, then a control token.
    let table = bytes_to_unicode();
    let mut tokens: Vec<String> = table.iter().map(|c| c.to_string()).collect();
    let merges = ["h e", "l l", "he ll", "hell o", "\u{120} w", "\u{120}w o"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    tokens.push("<|end|>".into());
    let n = tokens.len();
    let mut token_types = vec![1; n];
    token_types[n - 1] = 3;
    BpeTokenizer::new(BpeVocab {
        tokens,
        token_types,
        merges: merges.iter().map(|s| s.to_string()).collect(),
        pre: "gpt-2".into(),
        bos: Some(n as u32 - 1),
        eos: Some(n as u32 - 1),
        unk: None,
        pad: None,
        add_bos: false,
    })
    .unwrap()
}

#[test]
fn tiny_vocab() {
    let t = tiny();
    let id = |s: &str| t.token_id(s).unwrap();
    assert_eq!(t.encode("hello", false), vec![id("hello")]);
    assert_eq!(
        t.encode("hello wo", false),
        vec![id("hello"), id("\u{120}wo")]
    );
    // Merges never cross pre-token boundaries: "o" and " w" are separate words.
    assert_eq!(
        t.encode("hellllo", false),
        vec![id("hell"), id("ll"), id("o")]
    );
    assert_eq!(t.encode("<|end|>", false).len(), 7);
    assert_eq!(
        t.encode_with_special("<|end|>", false, true),
        vec![id("<|end|>")]
    );
    for text in ["hello world\n\n  é世 's", ""] {
        assert_eq!(t.decode(&t.encode(text, false)), text);
    }
    assert!(BpeTokenizer::new(BpeVocab {
        tokens: vec!["a".into()],
        pre: "nope".into(),
        ..Default::default()
    })
    .is_err());
    assert!(BpeTokenizer::new(BpeVocab {
        tokens: vec!["a".into()],
        merges: vec!["ab".into()],
        pre: "gpt-2".into(),
        ..Default::default()
    })
    .is_err());
}

#[test]
fn gpt2_vectors() {
    let Some(file) = vocab_gguf("ggml-vocab-gpt-2.gguf") else {
        return;
    };
    let tok = tokenizer_from_gguf(&file).unwrap();
    assert_eq!(tok.vocab_size(), 50257);
    assert_eq!((tok.bos(), tok.eos()), (Some(50256), Some(50256)));
    let cases = vocab_cases("ggml-vocab-gpt-2.gguf");
    let mut bad = Vec::new();
    for (text, expected) in &cases {
        let got = tok.encode(text, false);
        if &got != expected {
            bad.push(format!(
                "{text:?}\n  expected {expected:?}\n  got      {got:?}"
            ));
        }
        assert_eq!(tok.decode(&got), *text);
    }
    // Whole-file speed: the per-call word cache keeps this well under a second.
    let text = std::fs::read_to_string(data_dir().join("text/wikitext-2-raw-test.txt")).unwrap();
    let start = std::time::Instant::now();
    let ids = tok.encode(&text, false);
    eprintln!(
        "gpt-2: {} bytes -> {} tokens in {:.2?}",
        text.len(),
        ids.len(),
        start.elapsed()
    );
    assert_eq!(tok.decode(&ids), text);
    assert!(
        bad.is_empty(),
        "{} of {} vectors differ:\n{}",
        bad.len(),
        cases.len(),
        bad.join("\n")
    );
}
