//! `lowbit quantize --export gguf` and `lowbit eval compare` end to end on llama2.c stories260K:
//! a GGUF export and an MXFP4 checkpoint compared with the base in one table, JSON and SVG.

mod common;
use common::{data, lowbit};

#[test]
fn export_gguf_then_compare_with_plot() {
    let model = data().join("models/stories260K.bin");
    let text = data().join("text/wikitext-2-raw-test.txt");
    if !model.exists() || !text.exists() {
        eprintln!("skipping: test data not found under {}", data().display());
        return;
    }
    let (model, text) = (model.to_str().unwrap(), text.to_str().unwrap());
    let tmp = std::env::temp_dir().join(format!("lowbit-cli-compare-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let gguf = tmp.join("q8_0.gguf");
    let gguf = gguf.to_str().unwrap();
    let (ok, _, err) = lowbit(&[
        "quantize", "--model", model, "--scheme", "q8_0", "--export", "gguf", "--out", gguf,
    ]);
    assert!(ok, "{err}");
    // An existing file is refused without --force; a scheme GGUF cannot express is refused.
    let (ok, _, err) = lowbit(&[
        "quantize", "--model", model, "--scheme", "q8_0", "--export", "gguf", "--out", gguf,
    ]);
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, _, err) = lowbit(&[
        "quantize",
        "--model",
        model,
        "--scheme",
        "w4g128",
        "--export",
        "gguf",
        "--out",
        tmp.join("x.gguf").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("no GGUF form"), "{err}");
    // MXFP4 needs rows of whole groups of 32: stories260K's down_proj (172 columns) is refused
    // with an error naming it, and kept in full precision with --ignore.
    let mx = tmp.join("mxfp4");
    let mxs = mx.to_str().unwrap();
    let (ok, _, err) = lowbit(&[
        "quantize", "--model", model, "--scheme", "mxfp4", "--out", mxs,
    ]);
    assert!(
        !ok && err.contains("down_proj") && err.contains("groups of 32"),
        "{err}"
    );
    let (ok, _, err) = lowbit(&[
        "quantize",
        "--model",
        model,
        "--scheme",
        "mxfp4",
        "--ignore",
        "down_proj",
        "--out",
        mxs,
    ]);
    assert!(ok, "{err}");
    let svg = tmp.join("plot.svg");
    let (ok, out, err) = lowbit(&[
        "eval",
        "compare",
        gguf,
        mx.to_str().unwrap(),
        "--base",
        model,
        "--text",
        text,
        "--ctx",
        "128",
        "--chunks",
        "2",
        "--json",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let rows = j["models"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        for key in [
            "ppl",
            "ppl_base",
            "delta_ppl",
            "kld_mean",
            "kld_p99",
            "top1",
            "bits_per_weight",
            "size_bytes",
        ] {
            assert!(r[key].is_number(), "{key}: {r}");
        }
    }
    // Both share the base PPL (computed once); q8_0 is far closer to the base than MXFP4.
    assert_eq!(rows[0]["ppl_base"], rows[1]["ppl_base"]);
    assert!(rows[0]["kld_mean"].as_f64().unwrap() < rows[1]["kld_mean"].as_f64().unwrap());
    // MXFP4 at 4.25 bits with the f32 down_proj (32 bits) counted too.
    let bpw = rows[1]["bits_per_weight"].as_f64().unwrap();
    assert!(bpw > 4.25 && bpw < 32.0, "mxfp4 bpw {bpw}");
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.trim_end().ends_with("</svg>"));
    assert_eq!(plot.matches("<circle class=\"point").count(), 2);
    // The table form names both models.
    let (ok, out, err) = lowbit(&[
        "eval",
        "compare",
        gguf,
        mx.to_str().unwrap(),
        "--base",
        model,
        "--text",
        text,
        "--ctx",
        "128",
        "--chunks",
        "1",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("q8_0.gguf") && out.contains("mxfp4") && out.contains("KLD mean"),
        "{out}"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}
