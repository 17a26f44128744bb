//! The calibrated methods beyond GPTQ (imatrix, AWQ, AWQ+GPTQ, SmoothQuant) on the tiny golden
//! models: each lowers the logits error of RTN on the calibration tokens, is deterministic, and
//! survives write → load (AWQ's scales folded into the RMSNorm weights, Gemma's +1 offset included,
//! and into v_proj/up_proj rows); bad combinations are refused.

mod common;

use std::path::Path;

use common::{calib, golden, logits, open, opts, rel};

use lowbit_model::Transformer;
use lowbit_quant::pipeline::{plan, quantize_streaming_ext, ExtraOptions, Method, OutTensor};
use lowbit_quant::{Source, WriteInfo};

/// Quantize the golden model `arch`, write it to `out`, and return the loaded result's logits
/// on the calibration tokens plus the codes of every quantized tensor (for determinism).
/// Codes of every quantized tensor by name.
type Codes = std::collections::BTreeMap<String, Vec<u8>>;

fn quantize_write_load(
    arch: &str,
    spec: &str,
    method: Method,
    extra: &ExtraOptions,
    out: &Path,
) -> anyhow::Result<(Vec<f32>, Codes)> {
    let (cfg, c, w) = open(&golden(arch));
    let o = opts(spec, method);
    let p = plan(&w, &o)?;
    let src = Source {
        config: &c,
        config_json: Some(cfg),
        dir: Some(golden(arch)),
        tokenizer_gguf: None,
    };
    let targets = p.targets.iter().cloned().collect();
    let specs = lowbit_quant::export::plan_specs(&src, &w, &targets, &o.quantizer)?;
    let mut writer = lowbit_quant::ModelWriter::create(out, &src, specs, true)?;
    let mut codes = Codes::new();
    quantize_streaming_ext(
        &c,
        &w,
        &o,
        extra,
        &p,
        &calib(c.vocab_size),
        &mut |n, t| {
            if let OutTensor::Quantized(q) = &t {
                codes.insert(n.to_string(), q.codes.clone());
            }
            writer.add(n, &t)
        },
        &mut |_, _, _| {},
    )?;
    let info = WriteInfo {
        scheme: spec.into(),
        method,
        act_order: false,
        calib_sequences: 8,
        calib_len: 64,
    };
    writer.finish(&p.ignored, &o.quantizer, &info)?;
    let (_, c2, w2) = open(out);
    let m = Transformer::load(c2, &w2)?;
    Ok((logits(&m, &calib(c.vocab_size)), codes))
}

#[test]
fn imatrix_and_awq_beat_rtn_on_every_dense_golden_arch() {
    let tmp = std::env::temp_dir().join(format!("lowbit-quant-methods-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let none = ExtraOptions::default();
    for arch in ["llama", "qwen2", "qwen3", "gemma3"] {
        let (_, c, w) = open(&golden(arch));
        let base = logits(
            &Transformer::load(c.clone(), &w).unwrap(),
            &calib(c.vocab_size),
        );
        let spec = "int3_g16_sym";
        let out = tmp.join(format!("{arch}-rtn"));
        let (l, _) = quantize_write_load(arch, spec, Method::Rtn, &none, &out).unwrap();
        let e_rtn = rel(&l, &base);
        let mut line = format!("{arch}: rtn {e_rtn:.3e}");
        for method in [
            Method::Imatrix,
            Method::Awq,
            Method::AwqGptq,
            Method::AwqImatrix,
            Method::Gptq,
        ] {
            let out = tmp.join(format!("{arch}-{}", method.name()));
            let (l, codes) = quantize_write_load(arch, spec, method, &none, &out).unwrap();
            let e = rel(&l, &base);
            line += &format!(", {} {e:.3e}", method.name());
            assert!(e < e_rtn, "{arch} {}: {e} vs rtn {e_rtn}", method.name());
            let (l2, codes2) = quantize_write_load(arch, spec, method, &none, &out).unwrap();
            assert_eq!(codes, codes2, "{arch} {}: not deterministic", method.name());
            assert_eq!(l, l2);
        }
        eprintln!("{line}");
    }
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn smoothquant_keeps_w8_models_close_and_bad_combinations_fail() {
    let tmp = std::env::temp_dir().join(format!("lowbit-quant-smooth-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for arch in ["llama", "gemma3"] {
        let (_, c, w) = open(&golden(arch));
        let base = logits(
            &Transformer::load(c.clone(), &w).unwrap(),
            &calib(c.vocab_size),
        );
        let smooth = ExtraOptions {
            smooth: Some(0.5),
            ..Default::default()
        };
        let out = tmp.join(format!("{arch}-smooth"));
        let (l, _) =
            quantize_write_load(arch, "int8_channel_sym", Method::Rtn, &smooth, &out).unwrap();
        let (l0, _) = quantize_write_load(
            arch,
            "int8_channel_sym",
            Method::Rtn,
            &ExtraOptions::default(),
            &out,
        )
        .unwrap();
        // Smoothing is folded exactly; 8-bit weights stay close to the base either way.
        let (e, e0) = (rel(&l, &base), rel(&l0, &base));
        eprintln!("{arch}: W8 logits error {e0:.3e}, smoothed {e:.3e}");
        assert!(e < 1e-3 && e0 < 1e-3, "{arch}: W8 error {e0}, smoothed {e}");
    }
    let out = tmp.join("bad");
    let awq_and_smooth = quantize_write_load(
        "llama",
        "int4_g16_sym",
        Method::Awq,
        &ExtraOptions {
            smooth: Some(0.5),
            ..Default::default()
        },
        &out,
    )
    .unwrap_err();
    assert!(
        awq_and_smooth.to_string().contains("--smooth"),
        "{awq_and_smooth}"
    );
    let bad_alpha = quantize_write_load(
        "llama",
        "int8_channel_sym",
        Method::Rtn,
        &ExtraOptions {
            smooth: Some(1.5),
            ..Default::default()
        },
        &out,
    )
    .unwrap_err();
    assert!(bad_alpha.to_string().contains("[0, 1]"), "{bad_alpha}");
    // AWQ needs a dense architecture whose norms it can fold into.
    let moe = quantize_write_load(
        "mixtral",
        "int4_g16_sym",
        Method::Awq,
        &ExtraOptions::default(),
        &out,
    )
    .unwrap_err();
    assert!(format!("{moe:#}").contains("AWQ"), "{moe:#}");
    // Calibrated methods need calibration data.
    let (_, c, w) = open(&golden("llama"));
    for method in [Method::Imatrix, Method::Awq] {
        let o = opts("int4_g16_sym", method);
        let p = plan(&w, &o).unwrap();
        let e = quantize_streaming_ext(
            &c,
            &w,
            &o,
            &ExtraOptions::default(),
            &p,
            &[],
            &mut |_, _| Ok(()),
            &mut |_, _, _| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("--calib"), "{e}");
    }
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn imatrix_file_round_trip() {
    let tmp = std::env::temp_dir().join(format!("lowbit-quant-imat-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let file = tmp.join("imatrix.json");
    let save = ExtraOptions {
        imatrix_out: Some(file.clone()),
        ..Default::default()
    };
    let (l1, c1) = quantize_write_load(
        "qwen3",
        "int4_g16_sym",
        Method::Imatrix,
        &save,
        &tmp.join("a"),
    )
    .unwrap();
    let f = lowbit_quant::imatrix::ImatrixFile::load(&file).unwrap();
    assert_eq!(f.tokens, 8 * 64);
    assert!(f.importance.contains_key("model.layers.0.mlp.down_proj"));
    // Quantizing from the file (no calibration) makes (nearly) the same codes: the file holds
    // f32 means, calibration f64 sums.
    let (_, cfg, w) = open(&golden("qwen3"));
    let o = opts("int4_g16_sym", Method::Imatrix);
    let p = plan(&w, &o).unwrap();
    let load = ExtraOptions {
        imatrix: Some(file.clone()),
        ..Default::default()
    };
    let mut c2 = Codes::new();
    quantize_streaming_ext(
        &cfg,
        &w,
        &o,
        &load,
        &p,
        &[],
        &mut |n, t| {
            if let OutTensor::Quantized(q) = &t {
                c2.insert(n.to_string(), q.codes.clone());
            }
            Ok(())
        },
        &mut |_, _, _| {},
    )
    .unwrap();
    assert_eq!(c1.keys().collect::<Vec<_>>(), c2.keys().collect::<Vec<_>>());
    let (same, total) = c1.values().zip(c2.values()).fold((0, 0), |(s, t), (a, b)| {
        (
            s + a.iter().zip(b).filter(|(x, y)| x == y).count(),
            t + a.len(),
        )
    });
    assert!(
        same as f64 >= 0.999 * total as f64,
        "{same} of {total} codes agree"
    );
    assert!(l1.iter().all(|v| v.is_finite()));
    // Other methods do not read it; a file missing a module or of another format is refused.
    let o = opts("int4_g16_sym", Method::Gptq);
    let e = quantize_streaming_ext(
        &cfg,
        &w,
        &o,
        &load,
        &p,
        &[],
        &mut |_, _| Ok(()),
        &mut |_, _, _| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("--method imatrix only"), "{e}");
    let mut g = f.clone();
    g.importance.remove("model.layers.1.self_attn.o_proj");
    g.save(&file).unwrap();
    let o = opts("int4_g16_sym", Method::Imatrix);
    let e = quantize_streaming_ext(
        &cfg,
        &w,
        &o,
        &load,
        &p,
        &[],
        &mut |_, _| Ok(()),
        &mut |_, _, _| {},
    )
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("no entry for model.layers.1.self_attn.o_proj"),
        "{e:#}"
    );
    std::fs::remove_dir_all(&tmp).ok();
}

/// AWQ and SmoothQuant with an online (R4) rotation of down_proj's input: the down projection's
/// slot stays unscaled (its input is rotated), the others are scaled, and the results stay right.
#[test]
fn scaling_composes_with_the_online_down_rotation() {
    let tmp = std::env::temp_dir().join(format!("lowbit-quant-awq-r4-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let (cfg, c, w) = open(&golden("llama"));
    let base = logits(
        &Transformer::load(c.clone(), &w).unwrap(),
        &calib(c.vocab_size),
    );
    let run = |method: Method, spec: &str, extra: &ExtraOptions| -> f64 {
        let r = lowbit_quant::rotate::rotate_down_online(&c, &w, 7, &tmp, None).unwrap();
        let mut c2 = r.config.clone();
        lowbit_quant::rotate::set_online_rotation(&mut c2, &r.info);
        let o = opts(spec, method);
        let p = plan(&r.weights, &o).unwrap();
        let src = Source {
            config: &c2,
            config_json: Some(cfg.clone()),
            dir: Some(golden("llama")),
            tokenizer_gguf: None,
        };
        let targets = p.targets.iter().cloned().collect();
        let specs =
            lowbit_quant::export::plan_specs(&src, &r.weights, &targets, &o.quantizer).unwrap();
        let out = tmp.join(method.name());
        let mut writer = lowbit_quant::ModelWriter::create(&out, &src, specs, true).unwrap();
        writer.set_rotation(&r.info);
        quantize_streaming_ext(
            &c2,
            &r.weights,
            &o,
            extra,
            &p,
            &calib(c.vocab_size),
            &mut |n, t| writer.add(n, &t),
            &mut |_, _, _| {},
        )
        .unwrap();
        let info = WriteInfo {
            scheme: spec.into(),
            method,
            act_order: false,
            calib_sequences: 8,
            calib_len: 64,
        };
        writer.finish(&p.ignored, &o.quantizer, &info).unwrap();
        let (_, c3, w3) = open(&out);
        assert!(!c3.online_rotations.is_empty());
        let l = logits(&Transformer::load(c3, &w3).unwrap(), &calib(c.vocab_size));
        rel(&l, &base)
    };
    let none = ExtraOptions::default();
    let (rtn, awq) = (
        run(Method::Rtn, "int3_g16_sym", &none),
        run(Method::Awq, "int3_g16_sym", &none),
    );
    let smooth = ExtraOptions {
        smooth: Some(0.5),
        ..Default::default()
    };
    let w8 = run(Method::Rtn, "int8_channel_sym", &smooth);
    eprintln!("R4: rtn {rtn:.3e}, awq {awq:.3e}, smoothed w8 {w8:.3e}");
    assert!(awq < rtn, "awq {awq} vs rtn {rtn}");
    assert!(w8 < 1e-3, "smoothed W8 with R4: {w8}");
    std::fs::remove_dir_all(&tmp).ok();
}
