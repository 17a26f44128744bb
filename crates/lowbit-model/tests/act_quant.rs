//! Dynamic per-token activation quantization (W8A8) reaches every decoder-layer linear on the
//! normal forward path (including fused multi-linear calls): the forward's hidden states match a
//! layer-by-layer run through the per-linear calibration path, which calls each Linear on its own.

use std::path::Path;

use lowbit_model::arch::act_quant::ActQuant;
use lowbit_model::Transformer;

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let n: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let d: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    n / d
}

/// The final-normed hidden states, one layer at a time through `layer_forward_with_hooks`.
fn by_layers(m: &Transformer, tokens: &[u32]) -> Vec<f32> {
    let c = &m.config;
    let mut x = m.embed_tokens(tokens).unwrap();
    for i in 0..c.num_layers {
        let mut cache = m.layer_cache(tokens.len());
        m.layer_forward_with_hooks(i, &mut x, &mut cache, 0, &mut |_, _| {})
            .unwrap();
    }
    lowbit_cpu::ops::rmsnorm(&mut x, &m.final_norm, c.rms_norm_eps, c.norm_weight_offset);
    x
}

#[test]
fn every_linear_quantizes_its_input() {
    for arch in ["llama", "gemma3", "qwen2"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../../tests/fixtures/golden/{arch}"));
        let (cfg, w) = lowbit_model::safetensors_dir::open_hf_dir(&dir).unwrap();
        let c = lowbit_model::config::from_hf_config(&cfg, &dir.join("config.json")).unwrap();
        assert_eq!(c.act_quant, None);
        let tokens: Vec<u32> = (0..24).map(|t| (t * 37 % c.vocab_size) as u32).collect();
        let mut m = Transformer::load(c.clone(), &w).unwrap();
        let mut st = m.new_state(tokens.len());
        let plain = m.forward_hidden(&mut st, &tokens, 0).unwrap();
        for act in [ActQuant::Int8, ActQuant::Fp8E4M3] {
            m.set_activation_quant(Some(act)).unwrap();
            let mut st = m.new_state(tokens.len());
            let got = m.forward_hidden(&mut st, &tokens, 0).unwrap();
            let want = by_layers(&m, &tokens);
            let (e_path, e_quant) = (rel(&got, &want), rel(&got, &plain));
            assert!(e_path < 1e-9, "{arch} {act:?}: paths differ by {e_path}");
            assert!(
                e_quant > 1e-8,
                "{arch} {act:?}: activation quantization had no effect"
            );
        }
        // A config asking for it through compressed-tensors' input_activations gets it at load.
        let mut c8 = c.clone();
        c8.act_quant = Some(ActQuant::Int8);
        let m8 = Transformer::load(c8, &w).unwrap();
        assert_eq!(m8.layers[0].attn.q.act_quant, Some(ActQuant::Int8));
        assert_eq!(m8.lm_head.act_quant, None);
        // Modules quantization_config.ignore keeps in full precision keep f32 inputs too
        // (exact names and compressed-tensors' `re:` patterns).
        let mut ci = c.clone();
        ci.act_quant = Some(ActQuant::Int8);
        ci.quant_ignore = vec![
            "model.layers.0.self_attn.q_proj".into(),
            "re:.*mlp\\.down_proj$".into(),
        ];
        let mi = Transformer::load(ci, &w).unwrap();
        assert_eq!(mi.layers[0].attn.q.act_quant, None);
        assert_eq!(mi.layers[0].attn.k.act_quant, Some(ActQuant::Int8));
        assert_eq!(mi.layers[1].attn.q.act_quant, Some(ActQuant::Int8));
        for l in &mi.layers {
            let lowbit_model::arch::blocks::FeedForward::Dense(mlp) = &l.ffn else {
                unreachable!()
            };
            assert_eq!(mlp.down.act_quant, None);
            assert_eq!(mlp.up.act_quant, Some(ActQuant::Int8));
        }
    }
}
