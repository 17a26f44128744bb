//! `lowbit quantize` on bad input (issue 6): each case fails with a clear error and leaves no
//! output behind — including a full disk (simulated with a file-size limit, so writes fail with
//! EFBIG) and a process killed in the middle of writing (the same limit with its signal left at
//! the default action, SIGXFSZ, which kills the process on the first oversized write).

use std::path::{Path, PathBuf};
use std::process::Command;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
}

fn model() -> String {
    data()
        .join("models/stories260K.bin")
        .to_string_lossy()
        .into_owned()
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lowbit-badinput-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Run lowbit under `sh -c`, with `prelude` (ulimit / trap) applied to the shell first.
fn lowbit_sh(prelude: &str, args: &[&str]) -> (Option<i32>, String) {
    let exe = env!("CARGO_BIN_EXE_lowbit");
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!("{prelude} exec '{exe}' {}", quoted.join(" "));
    let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn lowbit(args: &[&str]) -> (bool, String) {
    let (code, stderr) = lowbit_sh("", args);
    (code == Some(0), stderr)
}

/// Nothing named like the output (no final directory, no temporary sibling) is left in `dir`.
fn assert_nothing_left(dir: &Path, what: &str) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("out"))
        .collect();
    assert!(left.is_empty(), "{what}: left behind {left:?}");
}

#[test]
fn unsupported_architecture_is_a_clear_error() {
    let dir = tmpdir("arch");
    let m = dir.join("model");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(
        m.join("config.json"),
        r#"{"architectures":["FooForCausalLM"],"model_type":"foo","hidden_size":64}"#,
    )
    .unwrap();
    // A valid one-tensor safetensors file, so the architecture is what fails.
    let header =
        br#"{"model.embed_tokens.weight":{"dtype":"F32","shape":[1,1],"data_offsets":[0,4]}}"#;
    let mut st = (header.len() as u64).to_le_bytes().to_vec();
    st.extend_from_slice(header);
    st.extend_from_slice(&[0u8; 4]);
    std::fs::write(m.join("model.safetensors"), st).unwrap();
    let out = dir.join("out");
    let (ok, stderr) = lowbit(&[
        "quantize",
        "-m",
        m.to_str().unwrap(),
        "-s",
        "w4g128",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(stderr.contains("foo") || stderr.contains("Foo"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_nothing_left(&dir, "unsupported architecture");
}

#[test]
fn calibration_text_shorter_than_asked() {
    let dir = tmpdir("calib");
    let text = dir.join("short.txt");
    std::fs::write(&text, "Once upon a time there was a cat.").unwrap();
    let out = dir.join("out");
    let m = model();
    let (ok, stderr) = lowbit(&[
        "quantize",
        "-m",
        &m,
        "-s",
        "int4_channel_sym",
        "--method",
        "gptq",
        "--calib",
        text.to_str().unwrap(),
        "--calib-seqs",
        "8",
        "--calib-len",
        "64",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("token"),
        "should say how many tokens it has and needs: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_nothing_left(&dir, "short calibration text");
}

#[test]
fn scheme_the_format_cannot_express() {
    let dir = tmpdir("scheme");
    let m = model();
    for scheme in ["int9_g128_sym", "int4_g100_sym", "not_a_scheme"] {
        let out = dir.join("out");
        let (ok, stderr) = lowbit(&[
            "quantize",
            "-m",
            &m,
            "-s",
            scheme,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(!ok, "{scheme} was accepted");
        assert!(stderr.contains("lowbit: error"), "{scheme}: {stderr}");
        assert!(!stderr.contains("panicked"), "{scheme}: {stderr}");
        assert_nothing_left(&dir, scheme);
    }
}

#[test]
fn full_disk_is_an_error_and_leaves_nothing() {
    let dir = tmpdir("full");
    let out = dir.join("out");
    let m = model();
    // 64 KiB file-size limit, SIGXFSZ ignored: the write that crosses it fails with EFBIG.
    let (code, stderr) = lowbit_sh(
        "ulimit -f 64; trap '' XFSZ;",
        &[
            "quantize",
            "-m",
            &m,
            "-s",
            "w8",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("lowbit: error"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_nothing_left(&dir, "full disk");
}

#[test]
fn killed_mid_write_leaves_no_model() {
    let dir = tmpdir("kill");
    let out = dir.join("out");
    let m = model();
    // Same limit with SIGXFSZ at its default action: the process dies in the middle of a write.
    let (code, stderr) = lowbit_sh(
        "ulimit -f 64;",
        &[
            "quantize",
            "-m",
            &m,
            "-s",
            "w8",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, None, "expected death by signal: {stderr}");
    assert!(
        !out.exists(),
        "a half-written model was left at {}",
        out.display()
    );
    // A temporary directory may survive a kill; it never has the output's name, and the next
    // run replaces the output cleanly.
    let (ok, stderr) = lowbit(&[
        "quantize",
        "-m",
        &m,
        "-s",
        "w8",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(out.join("config.json").exists());
}
