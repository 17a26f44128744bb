//! Quantize the tiny golden Llama (tests/fixtures/golden/llama) with RTN and GPTQ, write it,
//! load it back, and compare outputs on the calibration tokens.

mod common;

use std::path::Path;

use common::{calib, logits, open, opts, rel};

fn golden() -> std::path::PathBuf {
    common::golden("llama")
}

use lowbit_model::Transformer;
use lowbit_quant::pipeline::{quantize_model, Method};
use lowbit_quant::{Source, WriteInfo};

fn write(out: &Path, spec: &str, method: Method, force: bool) -> anyhow::Result<()> {
    let (cfg, c, w) = open(&golden());
    let o = opts(spec, method);
    let qm = quantize_model(&c, &w, &o, &calib(c.vocab_size), &mut |_, _, _| {})?;
    let src = Source {
        config: &c,
        config_json: Some(cfg),
        dir: Some(golden()),
        tokenizer_gguf: None,
    };
    let info = WriteInfo {
        scheme: spec.into(),
        method,
        act_order: false,
        calib_sequences: 8,
        calib_len: 64,
    };
    lowbit_quant::write_model(out, &src, &qm, &o.quantizer, &info, force)
}

#[test]
fn gptq_beats_rtn_and_round_trips() {
    let tmp = std::env::temp_dir().join(format!("lowbit-quant-golden-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let (_, c, w) = open(&golden());
    let base = Transformer::load(c.clone(), &w).unwrap();
    let seqs = calib(c.vocab_size);
    let want = logits(&base, &seqs);
    let mut errs = Vec::new();
    for spec in [
        "int4_g32_sym",
        "uint4_g32",
        "int3_channel_sym",
        "fp8_e4m3_channel",
    ] {
        for method in [Method::Rtn, Method::Gptq] {
            let out = tmp.join(format!("{spec}-{}", method.name()));
            write(&out, spec, method, false).unwrap();
            // Loading dequantizes the compressed-tensors weights; compare with the in-memory result.
            let (_, c2, w2) = open(&out);
            let o = opts(spec, method);
            let qm = quantize_model(&c, &w, &o, &seqs, &mut |_, _, _| {}).unwrap();
            for (name, t) in &qm.tensors {
                if let lowbit_quant::OutTensor::Quantized(q) = t {
                    assert_eq!(w2.to_f32(name).unwrap(), q.dequantize(), "{spec} {name}");
                }
            }
            let m = Transformer::load(c2, &w2).unwrap();
            errs.push((spec, method, rel(&logits(&m, &seqs), &want)));
        }
    }
    for pair in errs.chunks(2) {
        let ((spec, _, rtn), (_, _, gptq)) = (pair[0], pair[1]);
        eprintln!("{spec}: rtn {rtn:.3e} gptq {gptq:.3e}");
        if !spec.starts_with("fp8") {
            assert!(
                gptq < rtn,
                "{spec}: GPTQ logits error {gptq} is not below RTN's {rtn}"
            );
        }
    }
    // An existing output is refused without force and replaced with it.
    let out = tmp.join("int4_g32_sym-rtn");
    let e = write(&out, "int4_g32_sym", Method::Rtn, false).unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    write(&out, "int4_g32_sym", Method::Rtn, true).unwrap();
    // A scheme the shapes cannot express is an error and leaves nothing behind.
    let bad = tmp.join("bad");
    let e = write(&bad, "int4_g48_sym", Method::Rtn, false).unwrap_err();
    assert!(format!("{e:#}").contains("groups of 48"), "{e:#}");
    assert!(!bad.exists());
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn kld_of_a_model_with_itself_is_zero() {
    let (_, c, w) = open(&golden());
    let m = Transformer::load(c.clone(), &w).unwrap();
    let tokens: Vec<u32> = (0..256)
        .map(|t| ((t * 37 + 11) % c.vocab_size) as u32)
        .collect();
    let r = lowbit_eval::kld::kl_divergence(&m, &m, &tokens, None, 64, None, |_, _, _| {}).unwrap();
    assert!(r.kld_mean.abs() < 1e-9 && r.kld_p99.abs() < 1e-9, "{r:?}");
    assert_eq!(r.top1, 1.0);
    assert_eq!(r.rms_dp, 0.0);
    assert!((r.ppl - r.ppl_base).abs() < 1e-9);
}
