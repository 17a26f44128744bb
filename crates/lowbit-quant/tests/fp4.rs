//! NVFP4 / MXFP4 checkpoints of the tiny golden Llama: written in compressed-tensors'
//! `nvfp4-pack-quantized` / `mxfp4-pack-quantized` layouts and loaded back exactly.

use std::path::{Path, PathBuf};

use lowbit_model::Transformer;
use lowbit_quant::pipeline::{default_ignore, quantize_model, Method, Options};
use lowbit_quant::{GptqOptions, OutTensor, Quantizer, Source, WriteInfo};

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/golden/llama")
}

#[test]
fn fp4_checkpoints_round_trip_exactly() {
    let tmp = std::env::temp_dir().join(format!("lowbit-quant-fp4-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let (cfg, w) = lowbit_model::safetensors_dir::open_hf_dir(&golden()).unwrap();
    let c = lowbit_model::config::from_hf_config(&cfg, &golden().join("config.json")).unwrap();
    let base = Transformer::load(c.clone(), &w).unwrap();
    let tokens: Vec<u32> = (0..48)
        .map(|t| ((t * 37 + 5) % c.vocab_size) as u32)
        .collect();
    let want = base.forward(&mut base.new_state(48), &tokens, 0).unwrap();
    for (spec, format) in [
        ("nvfp4", "nvfp4-pack-quantized"),
        ("mxfp4", "mxfp4-pack-quantized"),
    ] {
        let q = Quantizer::from_spec(&lowbit_formats::QuantSpec::parse(spec).unwrap()).unwrap();
        let o = Options {
            quantizer: q.clone(),
            method: Method::Rtn,
            ignore: default_ignore(),
            gptq: GptqOptions::default(),
            max_rss_bytes: None,
        };
        let qm = quantize_model(&c, &w, &o, &[], &mut |_, _, _| {}).unwrap();
        let src = Source {
            config: &c,
            config_json: Some(cfg.clone()),
            dir: Some(golden()),
            tokenizer_gguf: None,
        };
        let info = WriteInfo {
            scheme: spec.into(),
            method: Method::Rtn,
            act_order: false,
            calib_sequences: 0,
            calib_len: 0,
        };
        let out = tmp.join(spec);
        lowbit_quant::write_model(&out, &src, &qm, &q, &info, false).unwrap();
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(written["quantization_config"]["format"], format);
        let (cfg2, w2) = lowbit_model::safetensors_dir::open_hf_dir(&out).unwrap();
        for (name, t) in &qm.tensors {
            if let OutTensor::Quantized(qt) = t {
                assert_eq!(w2.to_f32(name).unwrap(), qt.dequantize(), "{spec} {name}");
            }
        }
        let c2 = lowbit_model::config::from_hf_config(&cfg2, &out.join("config.json")).unwrap();
        let m = Transformer::load(c2, &w2).unwrap();
        let got = m.forward(&mut m.new_state(48), &tokens, 0).unwrap();
        let num: f64 = got
            .iter()
            .zip(&want)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let den: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
        eprintln!("{spec}: logits relative error {:.3e}", num / den);
        // A 4-bit random-weight toy model: only a sanity bound (the exact check is above).
        assert!(num / den < 0.5, "{spec}: {}", num / den);
    }
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// (name, dtype, shape, bytes per element) of a header entry.
type Tensor<'a> = (&'a str, &'a str, Vec<usize>, usize);

/// A one-module nvfp4 checkpoint with these extra header entries (all data zero).
fn tiny_checkpoint(dir: &Path, tensors: &[Tensor<'_>]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut header = serde_json::Map::new();
    let mut off = 0;
    for (name, dtype, shape, elem) in tensors {
        let len = shape.iter().product::<usize>() * elem;
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [off, off + len]}),
        );
        off += len;
    }
    let h = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend(h);
    bytes.extend(vec![0u8; off]);
    std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    let cfg = std::fs::read_to_string(golden().join("config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    cfg["quantization_config"] = serde_json::json!({
        "quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "float",
            "strategy": "tensor_group", "group_size": 16, "symmetric": true}}}});
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
}

#[test]
fn broken_fp4_checkpoints_are_errors_naming_the_tensor() {
    let tmp = std::env::temp_dir().join(format!("lowbit-quant-fp4-bad-{}", std::process::id()));
    let m = "model.layers.0.mlp.up_proj";
    let packed = format!("{m}.weight_packed");
    let scale = format!("{m}.weight_scale");
    let gs = format!("{m}.weight_global_scale");
    let cases: Vec<(Vec<Tensor<'_>>, &str)> = vec![
        (
            vec![(&packed, "U8", vec![4, 8], 1)],
            "weight_scale is missing",
        ),
        (
            vec![
                (&packed, "U8", vec![4, 8], 1),
                (&scale, "F8_E4M3", vec![4, 1], 1),
            ],
            "weight_global_scale is missing",
        ),
        (
            vec![
                (&packed, "U8", vec![4, 8], 1),
                (&scale, "F8_E4M3", vec![3, 1], 1),
            ],
            "does not fit",
        ),
        (
            vec![
                (&packed, "U8", vec![4, 8], 1),
                (&scale, "I32", vec![4, 1], 4),
            ],
            "F8_E4M3 (nvfp4) or U8",
        ),
        // A zero global scale would divide by zero.
        (
            vec![
                (&packed, "U8", vec![4, 8], 1),
                (&scale, "F8_E4M3", vec![4, 1], 1),
                (&gs, "F32", vec![1], 4),
            ],
            "one positive value",
        ),
    ];
    for (k, (tensors, want)) in cases.into_iter().enumerate() {
        let dir = tmp.join(k.to_string());
        tiny_checkpoint(&dir, &tensors);
        let e = match lowbit_model::safetensors_dir::open_hf_dir(&dir) {
            Ok(_) => panic!("case {k}: loaded a broken checkpoint"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(want) && e.contains(m), "case {k}: {e}");
    }
    std::fs::remove_dir_all(&tmp).unwrap();
}
