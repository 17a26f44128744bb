//! `lowbit quantize` end to end on the llama2.c stories260K model: RTN and GPTQ outputs load,
//! `lowbit eval kld` compares them with the base, `lowbit run` generates from them, and an existing
//! output and an over-tight `--max-memory` are refused with clear errors.

mod common;
use common::lowbit;

#[test]
fn quantize_then_eval_kld_and_run() {
    let Some((model, text)) = common::stories_and_text() else {
        return;
    };
    let tmp = std::env::temp_dir().join(format!("lowbit-cli-quantize-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for (method, extra) in [
        ("rtn", vec![]),
        (
            "gptq",
            vec![
                "--calib",
                text.as_str(),
                "--calib-seqs",
                "4",
                "--calib-len",
                "128",
            ],
        ),
    ] {
        let out = tmp.join(method);
        let out_s = out.to_str().unwrap();
        let mut args = vec![
            "quantize",
            "-m",
            &model,
            "-s",
            "int4_channel_sym",
            "--method",
            method,
            "--out",
            out_s,
            "--json",
        ];
        args.extend(extra.iter().copied());
        let (ok, stdout, stderr) = lowbit(&args);
        assert!(ok, "quantize {method} failed: {stderr}");
        let j: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(j["method"], method);
        assert!(j["peak_rss_bytes"].as_u64().unwrap() > 0);
        assert!(out.join("tokenizer.gguf").exists() && out.join("config.json").exists());

        let (ok, stdout, stderr) = lowbit(&[
            "eval", "kld", "-m", out_s, "--base", &model, "--text", &text, "--ctx", "128",
            "--chunks", "2", "--json",
        ]);
        assert!(ok, "eval kld failed: {stderr}");
        let j: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        for k in [
            "ppl",
            "ppl_base",
            "kld_mean",
            "kld_median",
            "kld_p99",
            "top1",
            "rms_dp",
        ] {
            assert!(j[k].is_number(), "{k} missing from {j}");
        }
        let kld = j["kld_mean"].as_f64().unwrap();
        assert!(kld > 0.0 && kld < 1.0, "{method}: mean KLD {kld}");
        eprintln!(
            "{method}: ppl {} base {} kld {kld} top1 {}",
            j["ppl"], j["ppl_base"], j["top1"]
        );

        let (ok, stdout, stderr) = lowbit(&["run", "-m", out_s, "-n", "16"]);
        assert!(ok, "run failed: {stderr}");
        assert!(stdout.starts_with("Once upon a time"), "{stdout}");
    }
    // An existing output is refused without --force.
    let out = tmp.join("rtn");
    let (ok, _, stderr) = lowbit(&[
        "quantize",
        "-m",
        &model,
        "-s",
        "w8",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("already exists"), "{stderr}");
    // A memory limit below what is resident aborts and names the limit; nothing is left behind.
    let out = tmp.join("tight");
    let (ok, _, stderr) = lowbit(&[
        "quantize",
        "-m",
        &model,
        "-s",
        "w8",
        "--out",
        out.to_str().unwrap(),
        "--max-memory",
        "1",
    ]);
    assert!(
        !ok && stderr.contains("--max-memory limit of 1.0 MiB"),
        "{stderr}"
    );
    assert!(!out.exists());
    std::fs::remove_dir_all(&tmp).unwrap();
}
