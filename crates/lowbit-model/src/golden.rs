//! The golden-logits fixtures (`tests/fixtures/golden/<arch>/`, written by
//! scripts/gen_golden_logits.py): transformers' logits for random-init tiny models, read by the
//! architecture tests of several crates.

use std::path::Path;

use crate::error::{ModelError, Result};

/// One fixture's token ids and transformers' logits (`vocab` per token, row-major).
pub struct Golden {
    pub prefill_ids: Vec<u32>,
    pub decode_ids: Vec<u32>,
    pub prefill_logits: Vec<f32>,
    pub decode_logits: Vec<f32>,
}

/// Read `golden.json` and `golden.safetensors` of the fixture directory `dir`.
pub fn load(dir: &Path) -> Result<Golden> {
    let json_path = dir.join("golden.json");
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&json_path).map_err(|e| ModelError::io(&json_path, e))?,
    )
    .map_err(|e| ModelError::format(&json_path, e.to_string()))?;
    let ids = |key: &str| -> Result<Vec<u32>> {
        meta[key]
            .as_array()
            .ok_or_else(|| ModelError::format(&json_path, format!("{key} is missing")))?
            .iter()
            .map(|x| {
                x.as_u64()
                    .map(|v| v as u32)
                    .ok_or_else(|| ModelError::format(&json_path, format!("{key}: bad id {x}")))
            })
            .collect()
    };
    let st_path = dir.join("golden.safetensors");
    let bytes = std::fs::read(&st_path).map_err(|e| ModelError::io(&st_path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| ModelError::format(&st_path, e.to_string()))?;
    let f32s = |name: &str| -> Result<Vec<f32>> {
        let t = st
            .tensor(name)
            .map_err(|e| ModelError::format(&st_path, format!("{name}: {e}")))?;
        if t.dtype() != safetensors::Dtype::F32 {
            return Err(ModelError::format(&st_path, format!("{name} is not F32")));
        }
        Ok(t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    };
    Ok(Golden {
        prefill_ids: ids("prefill_ids")?,
        decode_ids: ids("decode_ids")?,
        prefill_logits: f32s("prefill_logits")?,
        decode_logits: f32s("decode_logits")?,
    })
}

/// ‖a − b‖ / ‖b‖ in f64, the error measure of every logits comparison.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((*x - *y) as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}
