//! Dynamic per-token activation quantization (W8A8 checkpoints): before a quantized linear layer,
//! every token's input row is quantized with its own scale, as vLLM's dynamic per-token kernels do,
//! so evaluating such a checkpoint measures the loss of the activation rounding too.
//! - INT8: scale = max|x| / 127, codes round-half-even clamped to [-128, 127].
//! - FP8 E4M3: scale = max|x| / 448, codes the nearest E4M3 value (saturating).
//!
//! A checkpoint asks for it in compressed-tensors' `quantization_config.config_groups.*.
//! input_activations` (`dynamic: true`, `strategy: "token"`); see docs/FORMAT.md.

use lowbit_formats::minifloat::Minifloat;
use lowbit_formats::rounding::Rounding;

use super::blocks::FeedForward;
use super::Transformer;
use crate::error::{ModelError, Result};

const E4M3: Minifloat = Minifloat::E4M3FN.saturating();

/// The element format of dynamically quantized activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActQuant {
    Int8,
    Fp8E4M3,
}

impl ActQuant {
    pub fn parse(s: &str) -> Option<ActQuant> {
        match s.to_ascii_lowercase().as_str() {
            "int8" => Some(ActQuant::Int8),
            "fp8" | "fp8_e4m3" => Some(ActQuant::Fp8E4M3),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ActQuant::Int8 => "int8",
            ActQuant::Fp8E4M3 => "fp8",
        }
    }

    /// Fake-quantize one token's row in place (quantize, then dequantize).
    pub fn fake_quantize_row(self, row: &mut [f32]) {
        let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        if !(amax > 0.0 && amax.is_finite()) {
            return;
        }
        match self {
            ActQuant::Int8 => {
                let scale = amax / 127.0;
                let inv = 1.0 / scale;
                for v in row.iter_mut() {
                    *v = (*v * inv).round_ties_even().clamp(-128.0, 127.0) * scale;
                }
            }
            ActQuant::Fp8E4M3 => {
                let scale = amax / E4M3.max_value() as f32;
                for v in row.iter_mut() {
                    *v = E4M3.decode(E4M3.encode(*v / scale, Rounding::NearestEven)) * scale;
                }
            }
        }
    }

    /// `x` is `tokens × cols`: a copy with each token's row fake-quantized.
    pub fn fake_quantize_tokens(self, x: &[f32], cols: usize) -> Vec<f32> {
        let mut y = x.to_vec();
        for row in y.chunks_mut(cols.max(1)) {
            self.fake_quantize_row(row);
        }
        y
    }

    /// The activation scheme a compressed-tensors `quantization_config` asks for: None when it has
    /// no `input_activations`; an error for ones lowbit cannot run (static scales, other widths).
    pub fn from_quantization_config(
        qc: &serde_json::Value,
    ) -> std::result::Result<Option<ActQuant>, String> {
        let Some(groups) = qc.get("config_groups").and_then(|g| g.as_object()) else {
            return Ok(None);
        };
        let mut found = None;
        for (gname, g) in groups {
            let ia = match g.get("input_activations") {
                None | Some(serde_json::Value::Null) => continue,
                Some(v) => v,
            };
            let bits = ia.get("num_bits").and_then(|v| v.as_u64());
            let ty = ia.get("type").and_then(|v| v.as_str()).unwrap_or("int");
            let dynamic = ia.get("dynamic").and_then(|v| v.as_bool()).unwrap_or(false);
            let strategy = ia.get("strategy").and_then(|v| v.as_str()).unwrap_or("");
            let kind = match (ty, bits) {
                ("int", Some(8)) => ActQuant::Int8,
                ("float", Some(8)) => ActQuant::Fp8E4M3,
                _ => {
                    return Err(format!(
                        "config group {gname}: input_activations {ty} with {bits:?} bits is not \
                         supported (int8 and fp8 are)"
                    ))
                }
            };
            if !dynamic || strategy != "token" {
                return Err(format!(
                    "config group {gname}: only dynamic per-token input_activations are supported \
                     (found dynamic={dynamic}, strategy={strategy:?})"
                ));
            }
            if found.is_some_and(|f| f != kind) {
                return Err("config groups disagree on input_activations".into());
            }
            found = Some(kind);
        }
        Ok(found)
    }
}

impl Transformer {
    /// Quantize the inputs of every decoder-layer linear (not the embedding or the output head,
    /// which quantized checkpoints keep in full precision) with `act`, or stop doing so (None).
    /// Modules the checkpoint keeps in full precision (`config.quant_ignore`) run their inputs
    /// unquantized too, as vLLM does: W8A8 applies to quantized linears only.
    pub fn clear_activation_quant_of_ignored(&mut self) -> Result<()> {
        if self.config.quant_ignore.is_empty() {
            return Ok(());
        }
        let mut exact = std::collections::HashSet::new();
        let mut patterns = Vec::new();
        for e in &self.config.quant_ignore {
            match e.strip_prefix("re:") {
                Some(p) => patterns.push(fancy_regex::Regex::new(p).map_err(|err| {
                    ModelError::Other(format!("quantization_config.ignore pattern {e}: {err}"))
                })?),
                None => {
                    exact.insert(e.as_str());
                }
            }
        }
        let ignored = |name: &str| {
            let module = name.strip_suffix(".weight").unwrap_or(name);
            exact.contains(module) || patterns.iter().any(|p| p.is_match(module).unwrap_or(false))
        };
        for layer in self.layers.iter_mut() {
            let at = &mut layer.attn;
            for l in [&mut at.q, &mut at.k, &mut at.v, &mut at.o] {
                if ignored(&l.tensor.name) {
                    l.act_quant = None;
                }
            }
            if let FeedForward::Dense(m) = &mut layer.ffn {
                for l in [&mut m.gate, &mut m.up, &mut m.down] {
                    if ignored(&l.tensor.name) {
                        l.act_quant = None;
                    }
                }
            }
        }
        Ok(())
    }

    pub fn set_activation_quant(&mut self, act: Option<ActQuant>) -> Result<()> {
        for (i, layer) in self.layers.iter_mut().enumerate() {
            let at = &mut layer.attn;
            for l in [&mut at.q, &mut at.k, &mut at.v, &mut at.o] {
                l.act_quant = act;
            }
            match &mut layer.ffn {
                FeedForward::Dense(m) => {
                    for l in [&mut m.gate, &mut m.up, &mut m.down] {
                        l.act_quant = act;
                    }
                }
                _ if act.is_none() => {}
                _ => {
                    return Err(ModelError::Other(format!(
                        "layer {i}: activation quantization of mixture-of-experts layers is not \
                         supported yet"
                    )))
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_rows_use_their_own_scale() {
        let x = vec![1.0, -0.5, 0.25, 0.0, 100.0, -3.0, 1.0, 0.5];
        let y = ActQuant::Int8.fake_quantize_tokens(&x, 4);
        // Row 0: scale 1/127; row 1: scale 100/127.
        for (a, b) in x[..4].iter().zip(&y[..4]) {
            assert!((a - b).abs() <= 0.5 / 127.0 + 1e-7, "{a} {b}");
        }
        assert_eq!(y[4], 100.0);
        let s = 100.0f32 / 127.0;
        assert_eq!(y[5], (-3.0f32 / s).round_ties_even() * s);
        // 0.5 / s = 0.635 rounds to code 1.
        assert_eq!(y[7], s);
    }

    #[test]
    fn fp8_rows_keep_relative_precision_and_zero_rows_pass() {
        let x: Vec<f32> = (0..16).map(|i| (i as f32 - 7.5) * 0.013).collect();
        let y = ActQuant::Fp8E4M3.fake_quantize_tokens(&x, 8);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() <= a.abs() / 16.0 + 1e-9, "{a} {b}");
        }
        let z = ActQuant::Int8.fake_quantize_tokens(&[0.0; 4], 4);
        assert_eq!(z, vec![0.0; 4]);
    }

    #[test]
    fn parses_compressed_tensors_input_activations() {
        let qc = serde_json::json!({"config_groups": {"group_0": {
            "weights": {"num_bits": 8},
            "input_activations": {"num_bits": 8, "type": "int", "dynamic": true, "strategy": "token"}
        }}});
        assert_eq!(
            ActQuant::from_quantization_config(&qc),
            Ok(Some(ActQuant::Int8))
        );
        let none = serde_json::json!({"config_groups": {"group_0": {"input_activations": null}}});
        assert_eq!(ActQuant::from_quantization_config(&none), Ok(None));
        let stat = serde_json::json!({"config_groups": {"g": {"input_activations":
            {"num_bits": 8, "type": "float", "dynamic": false, "strategy": "tensor"}}}});
        assert!(ActQuant::from_quantization_config(&stat).is_err());
    }
}
