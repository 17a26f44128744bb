//! `load_model` picks the right source and explains what is missing.

use std::path::{Path, PathBuf};

use lowbit_model::source::load_model;

fn golden(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden")
        .join(arch)
}

fn err(spec: &str) -> String {
    match load_model(spec) {
        Ok(_) => panic!("{spec} loaded but should not"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn hf_directory_without_tokenizer_is_a_clear_error() {
    let dir = golden("llama");
    let e = err(dir.to_str().unwrap());
    assert!(
        e.contains("tokenizer.json") && e.contains("golden/llama"),
        "{e}"
    );
}

#[test]
fn hf_directory_with_unknown_model_type_is_refused_by_name() {
    let tmp = std::env::temp_dir().join(format!("lowbit-src-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let cfg = std::fs::read_to_string(golden("llama").join("config.json")).unwrap();
    std::fs::write(
        tmp.join("config.json"),
        cfg.replace("\"llama\"", "\"falcon_mamba\""),
    )
    .unwrap();
    std::fs::copy(
        golden("llama").join("model.safetensors"),
        tmp.join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(tmp.join("tokenizer.json"), "{}").unwrap();
    let e = err(tmp.to_str().unwrap());
    assert!(e.contains("falcon_mamba"), "{e}");
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn missing_path_and_unknown_file_kinds_are_named() {
    let e = err("/definitely/not/here.gguf");
    assert!(e.contains("/definitely/not/here.gguf"), "{e}");
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let e = err(readme.to_str().unwrap());
    assert!(e.contains("Cargo.toml") && e.contains("not a GGUF"), "{e}");
}
