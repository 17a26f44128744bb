//! llama2.c tok512.bin: ids against run.c's encode() (reference ids computed by
//! scripts/gen_tokenizer_fixtures.py's independent re-implementation), decode, bad files.

mod tokenizer_support;

use std::path::Path;

use lowbit_model::tokenizer::llama2c::Llama2cTokenizer;
use lowbit_model::tokenizer::Tokenizer;
use tokenizer_support::*;

fn tok512() -> Llama2cTokenizer {
    Llama2cTokenizer::open(&data_dir().join("models/tok512.bin"), Some(512)).unwrap()
}

#[test]
fn once_upon_a_time() {
    let t = tok512();
    assert_eq!(t.vocab_size(), 512);
    assert_eq!(
        t.encode("Once upon a time", true),
        vec![1, 403, 407, 261, 378]
    );
    assert_eq!(t.decode(&[1, 403, 407, 261, 378]), "Once upon a time");
}

#[test]
fn fixture_cases() {
    let t = tok512();
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures_dir().join("tok512_expected.json")).unwrap(),
    )
    .unwrap();
    for case in cases.as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let expected: Vec<u32> = case["ids_with_bos"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let ids = t.encode(text, true);
        assert_eq!(ids, expected, "{text:?}");
        assert_eq!(t.decode(&ids), text);
        assert_eq!(t.encode(text, false), expected[1..]);
    }
    assert_eq!(t.encode("", true), vec![1]);
    assert_eq!(t.encode_with_eos("a", false, true).last(), Some(&2));
    // Without a vocabulary size the file is read to its end.
    let all = Llama2cTokenizer::open(&data_dir().join("models/tok512.bin"), None).unwrap();
    assert_eq!(all.vocab_size(), 512);
}

#[test]
fn bad_files_are_errors() {
    let p = Path::new("bad.bin");
    assert!(Llama2cTokenizer::from_bytes(p, &[1, 0], None).is_err());
    let bytes = std::fs::read(data_dir().join("models/tok512.bin")).unwrap();
    let err = Llama2cTokenizer::from_bytes(p, &bytes[..bytes.len() - 3], Some(512))
        .err()
        .unwrap();
    assert!(err.to_string().contains("bad.bin"), "{err}");
    assert!(Llama2cTokenizer::from_bytes(p, &bytes, Some(513)).is_err());
    let mut neg = bytes.clone();
    neg[8..12].copy_from_slice(&(-5i32).to_le_bytes());
    assert!(Llama2cTokenizer::from_bytes(p, &neg, Some(512)).is_err());
}
