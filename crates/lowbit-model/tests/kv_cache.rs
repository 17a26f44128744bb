//! Quantized KV caches on whole models: the golden tiny models (tests/fixtures/golden) run with
//! every cache type, rotated or not, and their logits (prefill, then decode steps through the
//! cache) stay within a per-type bound of the f32 cache's; `kv_cache_scheme` in config.json
//! selects the cache.

use std::path::{Path, PathBuf};

use lowbit_cpu::attention::{KvCacheSpec, KvDtype};
use lowbit_model::config::from_hf_config;
use lowbit_model::safetensors_dir::open_hf_dir;
use lowbit_model::Transformer;

fn fixture(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden")
        .join(arch)
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((*x - *y) as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn load(arch: &str) -> (serde_json::Value, Transformer) {
    let dir = fixture(arch);
    let (cfg, w) = open_hf_dir(&dir).unwrap();
    let config = from_hf_config(&cfg, &dir.join("config.json")).unwrap();
    (cfg, Transformer::load(config, &w).unwrap())
}

/// Logits of a 24-token prefill and 6 decode steps (all positions of the prefill, so the
/// prefill attention path is measured too).
fn run(m: &Transformer) -> Vec<f32> {
    let prompt: Vec<u32> = (0..24u32).map(|i| (i * 37 + 5) % 100).collect();
    let mut st = m.new_state(32);
    let mut out = m.forward(&mut st, &prompt, 0).unwrap();
    for i in 0..6u32 {
        out.extend(m.forward(&mut st, &[(i * 11 + 3) % 100], 0).unwrap());
    }
    out
}

/// Relative L2 bound on logits against the f32 cache (random-init models with head_dim 16, which
/// amplify errors far more than trained ones): about 2.5× the largest error measured on the two
/// fixtures, rotated or not (f16 4.8e-4, q8 1.1e-2, fp8 5.4e-2, q4 1.7e-1).
fn bound(d: KvDtype) -> f64 {
    match d {
        KvDtype::F32 => 1e-5,
        KvDtype::F16 => 1.2e-3,
        KvDtype::Q8 => 3e-2,
        KvDtype::Fp8 => 1.4e-1,
        KvDtype::Q4 => 4e-1,
    }
}

#[test]
fn every_cache_type_stays_close_to_f32() {
    for arch in ["llama", "gemma3"] {
        let (_, mut m) = load(arch);
        let want = run(&m);
        let mut unrotated = Vec::new();
        for dtype in KvDtype::ALL {
            for rotation_seed in [None, Some(3)] {
                let spec = KvCacheSpec {
                    dtype,
                    rotation_seed,
                };
                m.config.kv_cache = Some(spec);
                let st = m.new_state(32);
                assert_eq!(
                    st.bytes(),
                    32 * m.config.num_layers
                        * spec.bytes_per_token(m.config.num_kv_heads, m.config.head_dim)
                );
                let e = rel_l2(&run(&m), &want);
                println!("{arch} {}: logits rel L2 {e:.2e}", spec.name());
                if rotation_seed.is_none() {
                    unrotated.push(e);
                }
                assert!(e < bound(dtype), "{arch} {}: {e:.3e}", spec.name());
                // A quantized cache must actually change something.
                if matches!(dtype, KvDtype::Q4 | KvDtype::Fp8) {
                    assert!(e > 1e-5, "{arch} {}: no effect", spec.name());
                }
            }
        }
        // Fewer bits, larger error: f16 < q8 < fp8 < q4 (ALL's order is f32, f16, q8, q4, fp8).
        let [_, f16, q8, q4, fp8] = unrotated[..] else {
            unreachable!()
        };
        assert!(f16 < q8 && q8 < fp8 && fp8 < q4, "{arch}: {unrotated:?}");
    }
}

#[test]
fn kv_cache_scheme_in_config_json() {
    let (mut cfg, _) = load("llama");
    let path = fixture("llama").join("config.json");
    assert_eq!(from_hf_config(&cfg, &path).unwrap().kv_cache, None);
    let cases = [
        (
            serde_json::json!({"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": false, "symmetric": true}),
            KvDtype::Fp8,
        ),
        (
            serde_json::json!({"num_bits": 8, "type": "int", "strategy": "token", "dynamic": true}),
            KvDtype::Q8,
        ),
        (
            serde_json::json!({"num_bits": 4, "type": "int", "strategy": "group", "group_size": 32, "dynamic": true}),
            KvDtype::Q4,
        ),
        (
            serde_json::json!({"num_bits": 16, "type": "float"}),
            KvDtype::F16,
        ),
    ];
    for (scheme, dtype) in cases {
        cfg["quantization_config"] = serde_json::json!({"kv_cache_scheme": scheme});
        let c = from_hf_config(&cfg, &path).unwrap();
        assert_eq!(c.kv_cache, Some(KvCacheSpec::new(dtype)), "{scheme}");
    }
    cfg["quantization_config"]["lowbit_kv_rotation"] =
        serde_json::json!({"kind": "hadamard", "seed": 9});
    let c = from_hf_config(&cfg, &path).unwrap();
    assert_eq!(c.kv_cache.unwrap().rotation_seed, Some(9));
    // Errors name the key and what was expected.
    for (key, bad) in [
        (
            "kv_cache_scheme",
            serde_json::json!({"num_bits": 2, "type": "int"}),
        ),
        (
            "kv_cache_scheme",
            serde_json::json!({"num_bits": 8, "type": "int", "symmetric": false}),
        ),
        ("lowbit_kv_rotation", serde_json::json!({"kind": "other"})),
    ] {
        let mut c = cfg.clone();
        c["quantization_config"][key] = bad;
        let e = from_hf_config(&c, &path).unwrap_err().to_string();
        assert!(e.contains(key), "{e}");
    }
}
