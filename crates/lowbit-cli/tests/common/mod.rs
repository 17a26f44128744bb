//! Helpers shared by the CLI end-to-end tests: the shared data folder and running the binary.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

/// The read-only data folder beside the repository (`../shared/data`).
pub fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}

/// Run the lowbit binary: (success, stdout, stderr).
pub fn lowbit(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lowbit"))
        .args(args)
        .output()
        .expect("run lowbit");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Paths of stories260K and the WikiText-2 test text, or None (with a message) when the data
/// folder is missing.
pub fn stories_and_text() -> Option<(String, String)> {
    let model = data().join("models/stories260K.bin");
    let text = data().join("text/wikitext-2-raw-test.txt");
    if !model.exists() || !text.exists() {
        eprintln!("skipping: test data not found under {}", data().display());
        return None;
    }
    Some((
        model.to_str().unwrap().to_string(),
        text.to_str().unwrap().to_string(),
    ))
}
