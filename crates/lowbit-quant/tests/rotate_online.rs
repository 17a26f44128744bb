//! `--rotate online` (R4): the down projection's weights are multiplied by a randomized Hadamard
//! `Q` and its input is rotated by `Q` at inference, so a full-precision model computes the same
//! function on every dense architecture — Gemma 3 (sandwich norms, where R1 cannot be fused)
//! included — and the written config.json tells lowbit's loader to apply it.

use std::path::{Path, PathBuf};

use lowbit_model::{ModelConfig, Transformer, WeightStore};
use lowbit_quant::rotate::{
    online_seed, rotate_down_online, rotate_model, set_online_rotation, RotateKind,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden")
        .join(name)
}

fn open(dir: &Path) -> (serde_json::Value, ModelConfig, WeightStore) {
    let (cfg, w) = lowbit_model::safetensors_dir::open_hf_dir(dir).unwrap();
    let c = lowbit_model::config::from_hf_config(&cfg, &dir.join("config.json")).unwrap();
    (cfg, c, w)
}

fn logits(m: &Transformer, ids: &[u32]) -> Vec<f32> {
    let mut st = m.new_state(ids.len());
    m.forward(&mut st, ids, 0).unwrap()
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let n: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let d: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (n / d).sqrt()
}

#[test]
fn online_rotation_keeps_full_precision_logits() {
    let ids: Vec<u32> = (0..24).map(|i| (i * 37 + 5) % 200).collect();
    let tmp = std::env::temp_dir();
    for name in ["llama", "llama_tied", "mistral", "qwen2", "qwen3", "gemma3"] {
        let (_, c, w) = open(&fixture(name));
        let base = logits(&Transformer::load(c.clone(), &w).unwrap(), &ids);
        let r = rotate_down_online(&c, &w, online_seed(7), &tmp, None).unwrap();
        // The weights really changed ...
        let a = w.to_f32("model.layers.0.mlp.down_proj.weight").unwrap();
        let b = r
            .weights
            .to_f32("model.layers.0.mlp.down_proj.weight")
            .unwrap();
        assert!(rel_l2(&b, &a) > 0.1, "{name}: down_proj not rotated");
        // ... without the online rotation the model is wrong, with it the function is the same.
        let without = logits(
            &Transformer::load(r.config.clone(), &r.weights).unwrap(),
            &ids,
        );
        assert!(
            rel_l2(&without, &base) > 1e-2,
            "{name}: rotation had no effect"
        );
        let mut cfg = r.config.clone();
        set_online_rotation(&mut cfg, &r.info);
        let with = logits(&Transformer::load(cfg, &r.weights).unwrap(), &ids);
        let err = rel_l2(&with, &base);
        assert!(
            err < 1e-5,
            "{name}: online rotation changed logits by {err:e}"
        );
        let j = r.info.to_json();
        assert_eq!(j["online"][0]["module"], "down_proj", "{name}: {j}");
        assert_eq!(j["online"][0]["size"], c.intermediate_size, "{name}: {j}");
    }
}

#[test]
fn r1_and_r4_compose() {
    let tmp = std::env::temp_dir();
    let ids: Vec<u32> = (0..16).map(|i| (i * 11 + 3) % 200).collect();
    let (_, c, w) = open(&fixture("qwen2"));
    let base = logits(&Transformer::load(c.clone(), &w).unwrap(), &ids);
    let r1 = rotate_model(&c, &w, 3, &tmp).unwrap();
    let r =
        rotate_down_online(&r1.config, &r1.weights, online_seed(3), &tmp, Some(r1.info)).unwrap();
    assert!(r.info.size > 0 && r.info.online.len() == 1);
    let mut cfg = r.config.clone();
    set_online_rotation(&mut cfg, &r.info);
    let got = logits(&Transformer::load(cfg, &r.weights).unwrap(), &ids);
    let err = rel_l2(&got, &base);
    assert!(err < 1e-5, "R1 + R4 changed logits by {err:e}");
}

#[test]
fn config_json_online_rotation_is_parsed_and_checked() {
    let dir = fixture("gemma3");
    let (mut cfg, c, _) = open(&dir);
    cfg["quantization_config"] = serde_json::json!({
        "lowbit_rotation": {"online": [{"module": "down_proj", "seed": 5, "size": c.intermediate_size}]}
    });
    let p = dir.join("config.json");
    let parsed = lowbit_model::config::from_hf_config(&cfg, &p).unwrap();
    assert_eq!(parsed.online_rotations.len(), 1);
    assert_eq!(parsed.online_rotations[0].seed, 5);
    cfg["quantization_config"]["lowbit_rotation"]["online"][0]["size"] = serde_json::json!(7);
    let e = lowbit_model::config::from_hf_config(&cfg, &p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("down_proj") && e.contains("size"), "{e}");
    assert!(RotateKind::parse("online").unwrap().online());
    assert!(RotateKind::parse("hadamard+online").unwrap().fused());
    assert!(RotateKind::parse("sideways").is_err());
}
