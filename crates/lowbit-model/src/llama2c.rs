//! llama2.c checkpoints (`.bin`, format version 0 as written by llama2.c's export): a header of
//! seven i32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative
//! vocab_size means the classifier is stored separately), then f32 tensors in a fixed order.
//! The tensors are registered zero-copy under HF names; llama2.c uses interleaved rope.

use std::path::Path;

use lowbit_cpu::ops::RopeStyle;
use lowbit_formats::GgmlType;

use crate::config::{Activation, Arch, ModelConfig, RopeScaling};
use crate::error::{ModelError, Result};
use crate::weights::{Backing, TensorEntry, WeightStore};

const HEADER_BYTES: usize = 7 * 4;

pub fn open_llama2c(path: &Path) -> Result<(ModelConfig, WeightStore)> {
    let backing = Backing::map_file(path)?;
    let bytes = backing.bytes();
    if bytes.len() < HEADER_BYTES {
        return Err(ModelError::format(
            path,
            format!(
                "llama2.c checkpoint is {} bytes, shorter than its 28-byte header",
                bytes.len()
            ),
        ));
    }
    let h: Vec<i32> = bytes[..HEADER_BYTES]
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let (dim, hidden, layers, heads, kv_heads, vocab_signed, seq_len) =
        (h[0], h[1], h[2], h[3], h[4], h[5], h[6]);
    let shared = vocab_signed > 0;
    let vocab = vocab_signed.unsigned_abs() as usize;
    let positive = [dim, hidden, layers, heads, kv_heads, seq_len]
        .iter()
        .all(|&v| v > 0 && v < 1 << 20);
    if !positive || vocab == 0 || vocab > 1 << 22 || dim % heads != 0 || heads % kv_heads != 0 {
        return Err(ModelError::format(
            path,
            format!("not a llama2.c checkpoint: header dim={dim} hidden_dim={hidden} n_layers={layers} n_heads={heads} n_kv_heads={kv_heads} vocab_size={vocab_signed} seq_len={seq_len}"),
        ));
    }
    let (dim, hidden, layers, heads, kv_heads, seq_len) = (
        dim as usize,
        hidden as usize,
        layers as usize,
        heads as usize,
        kv_heads as usize,
        seq_len as usize,
    );
    let head_dim = dim / heads;
    let kv_dim = kv_heads * head_dim;

    // (name pattern, rows, cols) per layer-stacked tensor, in file order.
    let mut store = WeightStore::new(path);
    let len = bytes.len();
    let b = store.add_backing(backing);
    let mut off = HEADER_BYTES;
    let take = |store: &mut WeightStore,
                off: &mut usize,
                name: String,
                shape: Vec<usize>|
     -> Result<()> {
        let n: usize = shape.iter().product::<usize>() * 4;
        if *off + n > len {
            return Err(ModelError::format(
                path,
                format!("llama2.c checkpoint is truncated: tensor {name} needs bytes {}..{} but the file has {len}", *off, *off + n),
            ));
        }
        store.insert(
            name,
            TensorEntry {
                dtype: GgmlType::F32,
                shape,
                backing: b,
                offset: *off,
                len: n,
            },
        )?;
        *off += n;
        Ok(())
    };
    take(
        &mut store,
        &mut off,
        "model.embed_tokens.weight".into(),
        vec![vocab, dim],
    )?;
    let per_layer: [(&str, usize, usize); 9] = [
        ("input_layernorm.weight", 1, dim),
        ("self_attn.q_proj.weight", dim, dim),
        ("self_attn.k_proj.weight", kv_dim, dim),
        ("self_attn.v_proj.weight", kv_dim, dim),
        ("self_attn.o_proj.weight", dim, dim),
        ("post_attention_layernorm.weight", 1, dim),
        ("mlp.gate_proj.weight", hidden, dim),
        ("mlp.down_proj.weight", dim, hidden),
        ("mlp.up_proj.weight", hidden, dim),
    ];
    for (suffix, rows, cols) in per_layer {
        for l in 0..layers {
            let shape = if rows == 1 {
                vec![cols]
            } else {
                vec![rows, cols]
            };
            take(
                &mut store,
                &mut off,
                format!("model.layers.{l}.{suffix}"),
                shape,
            )?;
        }
    }
    take(&mut store, &mut off, "model.norm.weight".into(), vec![dim])?;
    // Precomputed rope tables (unused: lowbit computes its own) sit between the norm and wcls.
    off += seq_len * head_dim * 4;
    if !shared {
        take(
            &mut store,
            &mut off,
            "lm_head.weight".into(),
            vec![vocab, dim],
        )?;
    }
    let config = ModelConfig {
        arch: Arch::Llama,
        hidden_size: dim,
        intermediate_size: hidden,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        vocab_size: vocab,
        max_position: seq_len,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_local_theta: None,
        rope_scaling: RopeScaling::None,
        rope_style: RopeStyle::Interleaved,
        tie_word_embeddings: shared,
        attention_bias: false,
        qk_norm: false,
        layer_window: vec![None; layers],
        embedding_scale: None,
        norm_weight_offset: 0.0,
        attn_scale: 1.0 / (head_dim as f32).sqrt(),
        activation: Activation::Silu,
        post_norms: false,
        moe: None,
        bos_token_id: Some(1),
        eos_token_id: Some(2),
        act_quant: None,
        quant_ignore: Vec::new(),
        online_rotations: Vec::new(),
        kv_cache: None,
    };
    config.validate(path)?;
    Ok((config, store))
}
