//! Shared helpers of the tokenizer tests: data paths, loading GGUF vocabularies, the llama.cpp
//! `.inp`/`.out` test vectors.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use lowbit_model::gguf::GgufFile;

/// `../shared/data` as seen from the repository root.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer")
}

pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LOWBIT_CACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    Path::new(&home).join(".cache/lowbit")
}

pub fn parse_gguf(path: &Path) -> Result<GgufFile, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    GgufFile::parse(path, &bytes).map_err(|e| e.to_string())
}

/// One of llama.cpp's vocabulary-only GGUFs. The shared copies were damaged by a UTF-8
/// round trip (see scripts/gen_tokenizer_fixtures.py); when they do not parse, the copy rebuilt by
/// `gen_tokenizer_fixtures.py repair-vocab` under $LOWBIT_CACHE/tokenizers is used. `None` (with a
/// message) when neither is usable.
pub fn vocab_gguf(name: &str) -> Option<GgufFile> {
    let shared = data_dir().join("tokenizers").join(name);
    let shared_err = match parse_gguf(&shared) {
        Ok(f) => return Some(f),
        Err(e) => e,
    };
    let repaired = cache_dir().join("tokenizers").join(name);
    match parse_gguf(&repaired) {
        Ok(f) => {
            eprintln!(
                "NOTE: shared {name} unusable ({shared_err}); using {}",
                repaired.display()
            );
            Some(f)
        }
        Err(e) => {
            require(&format!("vocab {name}"));
            eprintln!(
                "SKIP: no usable {name}: shared copy: {shared_err}; repaired copy: {e} \
                 (run scripts/gen_tokenizer_fixtures.py repair-vocab)"
            );
            None
        }
    }
}

/// The test vectors of `name` (e.g. "ggml-vocab-llama-spm.gguf"): inputs separated by
/// "\n__ggml_vocab_test__\n" in `.inp`, one line of space-separated ids per input in `.out`.
pub fn vocab_cases(name: &str) -> Vec<(String, Vec<u32>)> {
    let dir = data_dir().join("tokenizers");
    let inp = std::fs::read_to_string(dir.join(format!("{name}.inp"))).expect("read .inp");
    let out = std::fs::read_to_string(dir.join(format!("{name}.out"))).expect("read .out");
    let mut inputs: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    // The file ends with a separator, leaving an empty tail.
    assert_eq!(
        inputs.pop(),
        Some(""),
        "{name}.inp must end with a separator line"
    );
    let outputs: Vec<Vec<u32>> = out
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|t| t.parse().expect("token id"))
                .collect()
        })
        .collect();
    assert_eq!(
        inputs.len(),
        outputs.len(),
        "{name}: inputs vs expected outputs"
    );
    inputs
        .into_iter()
        .map(str::to_string)
        .zip(outputs)
        .collect()
}

/// The Gemma-3 270M GGUF: $LOWBIT_GEMMA_GGUF, else $LOWBIT_CACHE/models/..., else
/// ~/.cache/lowbit/models/...; `None` with a message when absent.
pub fn gemma_gguf_path() -> Option<PathBuf> {
    let path = match std::env::var_os("LOWBIT_GEMMA_GGUF") {
        Some(p) => PathBuf::from(p),
        None => cache_dir().join("models/gemma-3-270m-q4_k_m.gguf"),
    };
    if path.exists() {
        Some(path)
    } else {
        require("the Gemma GGUF");
        eprintln!(
            "SKIP: {} not found (scripts/fetch-gemma.sh downloads it)",
            path.display()
        );
        None
    }
}

/// `make test` sets LOWBIT_REQUIRE_DATA=1 after fetching everything: there a missing input is a
/// failure, not a skip.
pub fn require(what: &str) {
    if std::env::var_os("LOWBIT_REQUIRE_DATA").is_some() {
        panic!("LOWBIT_REQUIRE_DATA is set but {what} is unavailable");
    }
}
