//! Dispatch on `tokenizer.ggml.model` and the errors for missing or unknown tokenizers.

use std::collections::BTreeMap;
use std::path::PathBuf;

use lowbit_model::gguf::{GgufFile, GgufValue};
use lowbit_model::tokenizer::gguf::tokenizer_from_gguf;
use lowbit_model::ModelError;

fn file(metadata: Vec<(&str, GgufValue)>) -> GgufFile {
    GgufFile {
        path: PathBuf::from("model.gguf"),
        version: 3,
        metadata: metadata
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<BTreeMap<_, _>>(),
        tensors: Vec::new(),
        alignment: 32,
        data_offset: 0,
    }
}

fn strs(v: &[&str]) -> GgufValue {
    GgufValue::Array(v.iter().map(|s| GgufValue::String(s.to_string())).collect())
}

#[test]
fn missing_or_unknown_tokenizer_is_unsupported() {
    let err = tokenizer_from_gguf(&file(vec![])).err().unwrap();
    assert!(matches!(err, ModelError::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("model.gguf"), "{err}");
    let err = tokenizer_from_gguf(&file(vec![(
        "tokenizer.ggml.model",
        GgufValue::String("rwkv".into()),
    )]))
    .err()
    .unwrap();
    assert!(
        matches!(err, ModelError::Unsupported { .. }) && err.to_string().contains("rwkv"),
        "{err}"
    );
    let err = tokenizer_from_gguf(&file(vec![
        ("tokenizer.ggml.model", GgufValue::String("gpt2".into())),
        ("tokenizer.ggml.pre", GgufValue::String("mystery".into())),
        ("tokenizer.ggml.tokens", strs(&["a"])),
        ("tokenizer.ggml.merges", strs(&[])),
    ]))
    .err()
    .unwrap();
    assert!(
        matches!(err, ModelError::Unsupported { .. }) && err.to_string().contains("mystery"),
        "{err}"
    );
}

#[test]
fn malformed_metadata_is_a_format_error() {
    let base = || {
        vec![
            ("tokenizer.ggml.model", GgufValue::String("llama".into())),
            (
                "tokenizer.ggml.tokens",
                strs(&["<unk>", "<s>", "</s>", "\u{2581}a"]),
            ),
        ]
    };
    // Missing scores.
    let err = tokenizer_from_gguf(&file(base())).err().unwrap();
    assert!(err.to_string().contains("tokenizer.ggml.scores"), "{err}");
    // Wrong element type.
    let mut m = base();
    m.push(("tokenizer.ggml.scores", strs(&["x", "y", "z", "w"])));
    let err = tokenizer_from_gguf(&file(m)).err().unwrap();
    assert!(
        matches!(err, ModelError::Format { .. }) && err.to_string().contains("scores"),
        "{err}"
    );
    // Length mismatch and out-of-range ids.
    let mut m = base();
    m.push((
        "tokenizer.ggml.scores",
        GgufValue::Array(vec![GgufValue::F32(0.0); 3]),
    ));
    assert!(tokenizer_from_gguf(&file(m)).is_err());
    let mut m = base();
    m.push((
        "tokenizer.ggml.scores",
        GgufValue::Array(vec![GgufValue::F32(0.0); 4]),
    ));
    m.push(("tokenizer.ggml.bos_token_id", GgufValue::U32(99)));
    let err = tokenizer_from_gguf(&file(m)).err().unwrap();
    assert!(
        err.to_string().contains("model.gguf") && err.to_string().contains("99"),
        "{err}"
    );
    // A well-formed one works, with llama.cpp's defaults.
    let mut m = base();
    m.push((
        "tokenizer.ggml.scores",
        GgufValue::Array(vec![GgufValue::F32(0.0); 4]),
    ));
    let tok = tokenizer_from_gguf(&file(m)).unwrap();
    assert_eq!(
        (tok.bos(), tok.eos(), tok.add_bos_by_default()),
        (Some(1), Some(2), true)
    );
    assert_eq!(tok.encode("a", true), vec![1, 3]);
}
