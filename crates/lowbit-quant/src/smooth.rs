//! Activation quantization (`lowbit quantize --act int8|fp8`, W8A8 / W4A8): which weight formats it
//! combines with, and how a checkpoint declares it. Activations are quantized dynamically per token
//! at inference (lowbit's runtime: `lowbit_model::arch::act_quant`; vLLM: its dynamic per-token
//! kernels), so nothing is calibrated for them; `--smooth α` (SmoothQuant, folded into the weights by
//! the pipeline: see [`crate::awq::smooth_scales`]) makes them easier to quantize.

use anyhow::{bail, Result};
use serde_json::{json, Value};

pub use lowbit_model::arch::act_quant::ActQuant;

use crate::quantizer::{ElemKind, Quantizer};

/// Check that weights in `q`'s format can be paired with activations in `act`'s: integer weights
/// with INT8 activations, FP8 weights with FP8 activations (the pairs compressed-tensors
/// schemes and vLLM's kernels define).
pub fn check_combination(act: ActQuant, q: &Quantizer) -> Result<()> {
    match (act, q.kind) {
        (ActQuant::Int8, ElemKind::Int { .. }) | (ActQuant::Fp8E4M3, ElemKind::Fp8E4M3) => Ok(()),
        (ActQuant::Int8, _) => bail!(
            "--act int8 needs integer weights (e.g. --scheme w8 or w4g128), not {:?}",
            q.kind
        ),
        (ActQuant::Fp8E4M3, _) => bail!(
            "--act fp8 needs FP8 weights (--scheme fp8), not {:?}",
            q.kind
        ),
    }
}

/// The compressed-tensors `input_activations` entry of dynamic per-token quantization.
pub fn input_activations(act: ActQuant) -> Value {
    json!({
        "num_bits": 8,
        "type": match act { ActQuant::Int8 => "int", ActQuant::Fp8E4M3 => "float" },
        "symmetric": true,
        "strategy": "token",
        "group_size": null,
        "block_structure": null,
        "dynamic": true,
        "actorder": null,
        "observer": null,
        "observer_kwargs": {},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lowbit_formats::QuantSpec;

    #[test]
    fn combinations_and_round_trip_through_the_loader_parser() {
        let q = |s: &str| Quantizer::from_spec(&QuantSpec::parse(s).unwrap()).unwrap();
        assert!(check_combination(ActQuant::Int8, &q("int8_channel_sym")).is_ok());
        assert!(check_combination(ActQuant::Int8, &q("int4_g128_sym")).is_ok());
        assert!(check_combination(ActQuant::Fp8E4M3, &q("fp8_e4m3_channel")).is_ok());
        assert!(check_combination(ActQuant::Fp8E4M3, &q("int8_channel_sym")).is_err());
        assert!(check_combination(ActQuant::Int8, &q("fp8_e4m3_channel")).is_err());
        for act in [ActQuant::Int8, ActQuant::Fp8E4M3] {
            let qc = json!({"config_groups": {"group_0": {"input_activations": input_activations(act)}}});
            assert_eq!(ActQuant::from_quantization_config(&qc), Ok(Some(act)));
        }
    }
}
