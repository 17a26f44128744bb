//! Making non-HF sources (GGUF, llama2.c) writable as Hugging Face checkpoints: undo the
//! interleaved-rope q/k row layout of llama-family weights, and carry the tokenizer over as a
//! vocab-only GGUF (`tokenizer.gguf`, a lowbit extension documented in docs/FORMAT.md).

use anyhow::{bail, Context, Result};
use lowbit_cpu::ops::RopeStyle;
use lowbit_model::gguf::{GgufFile, GgufValue};
use lowbit_model::tokenizer::llama2c::Llama2cTokenizer;
use lowbit_model::{Backing, ModelConfig, TensorEntry, WeightStore};

/// Row `r` of an interleaved-rope (Meta / llama.cpp) q or k head holds what HF (NeoX, rotate-half)
/// order keeps at row `neox_row(r)`: interleaved row 2i+j ↔ NeoX row j·(head_dim/2)+i.
fn interleaved_row_for_neox(neox_row: usize, head_dim: usize) -> usize {
    let half = head_dim / 2;
    let (j, i) = (neox_row / half, neox_row % half);
    2 * i + j
}

/// Permute the rows of `name` (heads × head_dim rows) from interleaved to NeoX order. Works for
/// any stored type: each row is a whole number of blocks.
fn permute_rows(
    weights: &mut WeightStore,
    name: &str,
    heads: usize,
    head_dim: usize,
) -> Result<()> {
    let e = weights
        .entry(name)
        .with_context(|| format!("{}: tensor {name} is missing", weights.path.display()))?
        .clone();
    if e.shape.is_empty() || e.shape[0] != heads * head_dim {
        bail!(
            "{}: tensor {name} has shape {:?}, expected {heads} heads × {head_dim} rows",
            weights.path.display(),
            e.shape
        );
    }
    let rows = e.shape[0];
    let row_bytes = e.len / rows;
    let src = weights.require(name)?.data.to_vec();
    let mut dst = vec![0u8; src.len()];
    for h in 0..heads {
        for r in 0..head_dim {
            let from = h * head_dim + interleaved_row_for_neox(r, head_dim);
            let to = h * head_dim + r;
            dst[to * row_bytes..(to + 1) * row_bytes]
                .copy_from_slice(&src[from * row_bytes..(from + 1) * row_bytes]);
        }
    }
    let b = weights.add_backing(Backing::Owned(dst));
    weights.insert(
        name,
        TensorEntry {
            backing: b,
            offset: 0,
            ..e
        },
    )?;
    Ok(())
}

/// Llama-family GGUF and llama2.c sources store q/k rows for adjacent-pair (interleaved) rope.
/// Rewrite them in HF's NeoX order and switch the config to NeoX rope, so the model computes the
/// same function and can be written as an HF checkpoint. No-op for NeoX sources.
pub fn undo_interleaved_rope(config: &mut ModelConfig, weights: &mut WeightStore) -> Result<()> {
    if config.rope_style != RopeStyle::Interleaved {
        return Ok(());
    }
    if config.head_dim % 2 != 0 {
        bail!("head_dim {} is odd: rope needs pairs", config.head_dim);
    }
    for i in 0..config.num_layers {
        for (m, heads) in [
            ("q_proj", config.num_heads),
            ("k_proj", config.num_kv_heads),
        ] {
            let w = format!("model.layers.{i}.self_attn.{m}.weight");
            permute_rows(weights, &w, heads, config.head_dim)?;
            let b = format!("model.layers.{i}.self_attn.{m}.bias");
            if weights.contains(&b) {
                permute_rows(weights, &b, heads, config.head_dim)?;
            }
        }
    }
    config.rope_style = RopeStyle::Neox;
    Ok(())
}

/// The tokenizer keys (`tokenizer.*`) of a GGUF source, to be written as `tokenizer.gguf`.
pub fn tokenizer_metadata_from_gguf(g: &GgufFile) -> Vec<(String, GgufValue)> {
    g.metadata
        .iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A llama2.c tokenizer as GGUF SentencePiece metadata (`tokenizer.ggml.model = "llama"`): pieces
/// with `▁` for spaces, their scores, byte tokens `<0xHH>` typed as bytes, ids 0/1/2 as unk/bos/eos.
pub fn tokenizer_metadata_from_llama2c(tok: &Llama2cTokenizer) -> Result<Vec<(String, GgufValue)>> {
    let (mut tokens, mut scores, mut types) = (Vec::new(), Vec::new(), Vec::new());
    let mut id = 0u32;
    while let Some(p) = tok.piece(id) {
        let text = std::str::from_utf8(p)
            .with_context(|| format!("llama2.c tokenizer: piece {id} is not UTF-8"))?;
        let is_byte = text.len() == 6
            && text.starts_with("<0x")
            && text.ends_with('>')
            && u8::from_str_radix(&text[3..5], 16).is_ok();
        let ty = match id {
            0 => 2,     // unknown
            1 | 2 => 3, // control (bos, eos)
            _ if is_byte => 6,
            _ => 1,
        };
        tokens.push(GgufValue::String(text.replace(' ', "\u{2581}")));
        scores.push(GgufValue::F32(tok.score(id).unwrap_or(0.0)));
        types.push(GgufValue::I32(ty));
        id += 1;
    }
    Ok(vec![
        (
            "tokenizer.ggml.model".into(),
            GgufValue::String("llama".into()),
        ),
        ("tokenizer.ggml.tokens".into(), GgufValue::Array(tokens)),
        ("tokenizer.ggml.scores".into(), GgufValue::Array(scores)),
        ("tokenizer.ggml.token_type".into(), GgufValue::Array(types)),
        ("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(2)),
        ("tokenizer.ggml.unknown_token_id".into(), GgufValue::U32(0)),
        ("tokenizer.ggml.add_bos_token".into(), GgufValue::Bool(true)),
        (
            "tokenizer.ggml.add_space_prefix".into(),
            GgufValue::Bool(true),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_map_is_a_permutation_matching_hf_permute() {
        // HF's permute: view(heads, hd/2, 2, cols).transpose(1, 2): NeoX row j*hd/2+i ← 2i+j.
        let hd = 8;
        let rows: Vec<usize> = (0..hd).map(|r| interleaved_row_for_neox(r, hd)).collect();
        assert_eq!(rows, vec![0, 2, 4, 6, 1, 3, 5, 7]);
    }
}
