//! `lowbit quantize --method imatrix|awq` and `--act int8|fp8 [--smooth α]` end to end on the
//! llama2.c stories260K model: the calibrated methods lower RTN's KL-divergence, W8A8 checkpoints
//! declare their activation quantization the way compressed-tensors does and `lowbit eval kld`
//! measures its loss, and bad combinations are refused with clear errors.

use std::path::{Path, PathBuf};
use std::process::Command;

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data")
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

struct Case<'a> {
    model: &'a str,
    text: &'a str,
    tmp: &'a Path,
}

impl Case<'_> {
    /// Quantize into `name` with extra arguments; returns the output directory.
    fn quantize(&self, name: &str, scheme: &str, extra: &[&str]) -> PathBuf {
        let out = self.tmp.join(name);
        let mut args = vec![
            "quantize",
            "-m",
            self.model,
            "-s",
            scheme,
            "--out",
            out.to_str().unwrap(),
            "--json",
        ];
        args.extend(extra);
        let (ok, _, stderr) = lowbit(&args);
        assert!(ok, "quantize {name} failed: {stderr}");
        out
    }

    fn calib<'b>(&'b self, method: &'b str) -> Vec<&'b str> {
        vec![
            "--method",
            method,
            "--calib",
            self.text,
            "--calib-seqs",
            "4",
            "--calib-len",
            "128",
        ]
    }

    fn kld(&self, out: &Path) -> serde_json::Value {
        let (ok, stdout, stderr) = lowbit(&[
            "eval",
            "kld",
            "-m",
            out.to_str().unwrap(),
            "--base",
            self.model,
            "--text",
            self.text,
            "--ctx",
            "128",
            "--chunks",
            "2",
            "--json",
        ]);
        assert!(ok, "eval kld failed: {stderr}");
        serde_json::from_str(stdout.trim()).unwrap()
    }

    fn fails(&self, scheme: &str, extra: &[&str], want: &str) {
        let out = self.tmp.join("refused");
        let mut args = vec![
            "quantize",
            "-m",
            self.model,
            "-s",
            scheme,
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        let (ok, _, stderr) = lowbit(&args);
        assert!(!ok && stderr.contains(want), "{extra:?}: {stderr}");
        assert!(!out.exists());
    }
}

#[test]
fn calibrated_methods_and_activation_quantization() {
    let model = data().join("models/stories260K.bin");
    let text = data().join("text/wikitext-2-raw-test.txt");
    if !model.exists() || !text.exists() {
        eprintln!("skipping: test data not found under {}", data().display());
        return;
    }
    let tmp = std::env::temp_dir().join(format!("lowbit-cli-methods-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let c = Case {
        model: model.to_str().unwrap(),
        text: text.to_str().unwrap(),
        tmp: &tmp,
    };

    let kld = |j: &serde_json::Value| j["kld_mean"].as_f64().unwrap();
    let rtn = kld(&c.kld(&c.quantize("rtn", "int4_channel_sym", &[])));
    let imat = tmp.join("imatrix.json");
    for method in ["imatrix", "awq"] {
        let mut args = c.calib(method);
        if method == "imatrix" {
            args.extend(["--imatrix-out", imat.to_str().unwrap()]);
        }
        let out = c.quantize(method, "int4_channel_sym", &args);
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["lowbit"]["method"], method);
        let k = kld(&c.kld(&out));
        eprintln!("{method}: kld {k:.4} (rtn {rtn:.4})");
        assert!(k < rtn, "{method}: KLD {k} not below RTN's {rtn}");
    }
    // The saved importances quantize again without calibration text.
    let out = c.quantize(
        "imatrix-file",
        "int4_channel_sym",
        &["--method", "imatrix", "--imatrix", imat.to_str().unwrap()],
    );
    let k = kld(&c.kld(&out));
    assert!(k < rtn, "imatrix from file: KLD {k} not below RTN's {rtn}");

    // W8A8: the checkpoint declares dynamic per-token INT8 activations and eval applies them,
    // so its loss is above the weight-only W8 model's.
    let w8 = kld(&c.kld(&c.quantize("w8", "w8", &[])));
    let mut a8 = c.calib("rtn");
    a8.extend(["--act", "int8", "--smooth", "0.5"]);
    let out = c.quantize("w8a8", "w8", &a8);
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    let ia = &cfg["quantization_config"]["config_groups"]["group_0"]["input_activations"];
    assert_eq!(ia["dynamic"], true, "{ia}");
    assert_eq!(ia["strategy"], "token");
    assert_eq!(ia["type"], "int");
    assert_eq!(ia["num_bits"], 8);
    // vLLM's W8A8 INT8 kernels read unpacked int8 weights: the int-quantized layout.
    let qc = &cfg["quantization_config"];
    assert_eq!(qc["format"], "int-quantized", "{qc}");
    assert_eq!(qc["config_groups"]["group_0"]["format"], "int-quantized");
    let st = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    let (name, w) = st
        .tensors()
        .into_iter()
        .find(|(n, _)| n.ends_with("mlp.down_proj.weight"))
        .expect("an I8 down_proj weight");
    assert_eq!(w.dtype(), safetensors::Dtype::I8, "{name}");
    assert!(st
        .tensor(&name.replace(".weight", ".weight_packed"))
        .is_err());
    let w8a8 = kld(&c.kld(&out));
    eprintln!("w8 kld {w8:.5}, w8a8 + smooth 0.5 kld {w8a8:.5}");
    assert!(w8a8 > w8 && w8a8 < 0.1, "w8 {w8}, w8a8 {w8a8}");
    // FP8 weights with FP8 activations.
    let out = c.quantize("fp8", "fp8", &["--act", "fp8"]);
    let fp8 = kld(&c.kld(&out));
    assert!(fp8 < 0.1, "fp8 {fp8}");

    c.fails("w4g128", &["--act", "fp8"], "--act fp8 needs FP8 weights");
    c.fails("w8", &["--act", "int4"], "expected int8 or fp8");
    c.fails("w8", &["--smooth", "0.5"], "add --act");
    c.fails(
        "w8",
        &["--act", "int8", "--smooth", "0.5"],
        "--smooth needs --calib",
    );
    c.fails("w8", &["--method", "imatrix"], "needs --calib");
    c.fails("w8", &["--method", "awq"], "needs --calib");
    c.fails("w8", &["--method", "magic"], "unknown method");
    c.fails(
        "w8",
        &["--method", "rtn", "--imatrix", imat.to_str().unwrap()],
        "--method imatrix only",
    );
    let mut both = c.calib("awq");
    both.extend(["--act", "int8", "--smooth", "0.5"]);
    c.fails("w8", &both, "--smooth and --method awq");
    std::fs::remove_dir_all(&tmp).unwrap();
}
