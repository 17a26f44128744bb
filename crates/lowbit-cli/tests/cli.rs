//! The `lowbit` binary end to end on the small real model (stories260K).

use std::path::{Path, PathBuf};
use std::process::Command;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}

fn lowbit(args: &[&str]) -> (bool, String, String) {
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

fn stories() -> String {
    data()
        .join("models/stories260K.bin")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn run_streams_the_llama2c_story_and_reports_speed() {
    let (ok, out, err) = lowbit(&[
        "run",
        "--model",
        &stories(),
        "--prompt",
        "Once upon a time",
        "-n",
        "30",
        "--temperature",
        "0",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("Once upon a time, there was a little girl named Lily."),
        "{out}"
    );
    assert!(err.contains("tokens/s"), "{err}");
}

#[test]
fn run_with_sampling_is_reproducible_by_seed() {
    let args = [
        "run",
        "--model",
        &stories(),
        "-n",
        "20",
        "--temperature",
        "0.8",
        "--top-p",
        "0.9",
        "--seed",
        "3",
        "--json",
    ];
    let (ok1, a, _) = lowbit(&args);
    let (ok2, b, _) = lowbit(&args);
    assert!(ok1 && ok2);
    let a: serde_json::Value = serde_json::from_str(&a).unwrap();
    let b: serde_json::Value = serde_json::from_str(&b).unwrap();
    assert_eq!(a["ids"], b["ids"]);
    assert_eq!(a["ids"].as_array().unwrap().len(), 20);
}

#[test]
fn eval_ppl_json_has_the_documented_fields() {
    let text = data().join("text/tinyshakespeare.txt");
    let (ok, out, err) = lowbit(&[
        "eval",
        "ppl",
        "--model",
        &stories(),
        "--text",
        text.to_str().unwrap(),
        "--ctx",
        "128",
        "--chunks",
        "3",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    for k in ["ppl", "ppl_stderr", "tokens", "chunks", "seconds"] {
        assert!(v.get(k).is_some(), "missing {k} in {out}");
    }
    assert_eq!(v["chunks"], 3);
    assert_eq!(v["tokens"], 3 * 128);
    let ppl = v["ppl"].as_f64().unwrap();
    // A 260K-parameter TinyStories model on Shakespeare: far better than uniform (512), far from perfect.
    assert!(ppl > 2.0 && ppl < 512.0, "ppl {ppl}");
}

#[test]
fn formats_json_lists_names_and_bits_per_weight() {
    let (ok, out, _) = lowbit(&["formats", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    for n in ["q4_k", "mxfp4", "fp8_e4m3", "q8_0", "nvfp4"] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    let q8 = v
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "q8_0")
        .unwrap();
    assert_eq!(q8["bpw"].as_f64().unwrap(), 8.5);
}

#[test]
fn formats_error_reports_per_tensor_error() {
    let (ok, out, err) = lowbit(&[
        "formats",
        "error",
        "--format",
        "int4",
        "--group",
        "32",
        "--model",
        &stories(),
        "--tensor",
        "q_proj",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tensors"].as_array().unwrap().len(), 5);
    let sqnr = v["sqnr_db"].as_f64().unwrap();
    assert!(sqnr > 10.0 && sqnr < 40.0, "int4 SQNR {sqnr}");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let (ok, _, err) = lowbit(&["run", "--model", "/nonexistent/model.gguf"]);
    assert!(!ok && err.contains("/nonexistent/model.gguf"), "{err}");
    let text = data().join("text/tinyshakespeare.txt");
    let (ok, _, err) = lowbit(&["run", "--model", text.to_str().unwrap()]);
    assert!(!ok && err.contains("tinyshakespeare.txt"), "{err}");
    let (ok, _, err) = lowbit(&[
        "eval",
        "ppl",
        "--model",
        &stories(),
        "--text",
        "/nonexistent.txt",
    ]);
    assert!(!ok && err.contains("/nonexistent.txt"), "{err}");
    let (ok, _, err) = lowbit(&[
        "formats",
        "error",
        "--format",
        "int99",
        "--model",
        &stories(),
    ]);
    assert!(!ok && err.contains("int99"), "{err}");
    assert!(!err.contains("panicked"));
}
