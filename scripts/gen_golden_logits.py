#!/usr/bin/env python3
"""Golden logits of tiny random-init transformers models, for lowbit's architecture tests.

For every architecture in ARCHS this writes tests/fixtures/golden/<arch>/:
  config.json, model.safetensors   the model as `save_pretrained` writes it (tied embeddings are
                                   stored once, as transformers does: no lm_head.weight)
  golden.safetensors               prefill_logits F32 [20, vocab], decode_logits F32 [4, vocab]
  golden.json                      arch, model_type, prefill_ids (20), decode_ids (4), versions,
                                   notes (what each model exercises and what was checked)

Protocol: the 20 prefill ids are run in one forward from an empty cache (logits of all 20
positions); then the 4 decode ids are fed one at a time through the KV cache (`past_key_values`).
The script checks that the decode logits match a no-cache forward over all 24 tokens
(relative L2 error < 1e-5) so the cache path is known right.

Models are float32, eager attention, eval mode; hidden 64, 4 heads, 2 KV heads (GQA), head_dim 16,
intermediate 128 (experts smaller, to keep each directory < 1 MB), vocab 256, max_position 128,
2 layers (gemma3: 6, so five sliding layers and one global one appear). Every norm weight is
set to random values (around 1; gemma3's (1+w) norms get w around 0) and every linear bias to
random values, so a norm or bias bug changes the logits.

Deterministic: every random draw comes from torch.manual_seed / numpy seeds fixed here.

Usage: $PYTHON scripts/gen_golden_logits.py [--out tests/fixtures/golden] [--only llama,qwen3]
(PYTHON: a python with torch, transformers 5.x, safetensors, numpy.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "tests", "fixtures", "golden")

N_PREFILL = 20
N_DECODE = 4
VOCAB = 256
INIT_STD = 0.15

# Shared tiny shape.
BASE = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    intermediate_size=128,
    num_hidden_layers=2,
    max_position_embeddings=128,
    initializer_range=INIT_STD,
    rms_norm_eps=1e-6,
    torch_dtype="float32",
)


def arch_specs():
    """(name, seed, config class name, model class name, config kwargs, notes)."""
    T = transformers
    specs = []
    specs.append((
        "llama", 1001, T.LlamaConfig, T.LlamaForCausalLM,
        dict(BASE, tie_word_embeddings=False,
             # llama3 scaling. original_max_position_embeddings 64 (not 32) so that with
             # head_dim 16 and theta 5e5 all three bands appear: pair 0 (wavelength 6.3 < 16)
             # is kept, pair 1 (wavelength 32.4, between 16 and 64) is smoothly interpolated,
             # pairs 2..7 (wavelength > 64) are divided by the factor.
             rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 64}),
        "Llama 3 style: untied lm_head, rope theta 5e5 with llama3 frequency scaling "
        "(factor 8, low 1, high 4, original max pos 64: pair 0 unscaled, pair 1 smooth band, "
        "pairs 2-7 divided by 8)."))
    specs.append((
        "llama_tied", 1002, T.LlamaConfig, T.LlamaForCausalLM,
        dict(BASE, tie_word_embeddings=True,
             rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
        "Llama 2 style: lm_head tied to embed_tokens (no lm_head.weight in model.safetensors), "
        "rope theta 1e4, no scaling."))
    specs.append((
        "mistral", 1003, T.MistralConfig, T.MistralForCausalLM,
        dict(BASE, tie_word_embeddings=False, sliding_window=8,
             rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
        "Mistral with sliding_window 8: each query sees itself and the 7 previous tokens."))
    specs.append((
        "qwen2", 1004, T.Qwen2Config, T.Qwen2ForCausalLM,
        dict(BASE, tie_word_embeddings=False, use_sliding_window=False,
             rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
        "Qwen2: biases on q/k/v (random, non-zero), none on o; rope theta 1e6; no sliding window."))
    specs.append((
        "qwen3", 1005, T.Qwen3Config, T.Qwen3ForCausalLM,
        dict(BASE, tie_word_embeddings=True, attention_bias=False, use_sliding_window=False,
             rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
        "Qwen3: per-head RMSNorm on q and k (q_norm/k_norm, weights random) before rope; "
        "explicit head_dim 16; tied embeddings."))
    specs.append((
        "gemma3", 1006, T.Gemma3TextConfig, T.Gemma3ForCausalLM,
        dict(BASE, num_hidden_layers=6, tie_word_embeddings=True, sliding_window=8,
             layer_types=["sliding_attention"] * 5 + ["full_attention"],
             rope_parameters={
                 "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
                 "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
             },
             query_pre_attn_scalar=16, hidden_activation="gelu_pytorch_tanh",
             final_logit_softcapping=None, attn_logit_softcapping=None,
             pad_token_id=0, bos_token_id=2, eos_token_id=1),
        "Gemma3 text: 6 layers, layers 0-4 sliding (window 8, rope theta 1e4), layer 5 global "
        "(rope theta 1e6); embeddings scaled by sqrt(hidden)=8; norms are x*(1+w) with random w; "
        "q_norm/k_norm; pre and post attention/feedforward norms; GELU-tanh gated MLP; "
        "attention scale query_pre_attn_scalar**-0.5 = 0.25; no softcapping; tied embeddings."))
    specs.append((
        "mixtral", 1007, T.MixtralConfig, T.MixtralForCausalLM,
        dict(BASE, tie_word_embeddings=False, intermediate_size=32, num_local_experts=8,
             num_experts_per_tok=2, sliding_window=None,
             rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
        "Mixtral: 8 experts (intermediate 32), top-2; router softmax over all experts, "
        "top-2 weights renormalised to sum 1."))
    specs.append((
        "qwen2_moe", 1008, T.Qwen2MoeConfig, T.Qwen2MoeForCausalLM,
        dict(BASE, tie_word_embeddings=False, num_experts=8, num_experts_per_tok=2,
             moe_intermediate_size=32, shared_expert_intermediate_size=64,
             norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[],
             use_sliding_window=False, qkv_bias=True,
             rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
        "Qwen2-MoE: 8 experts (intermediate 32), top-2 with softmax weights NOT renormalised "
        "(norm_topk_prob False); shared expert (intermediate 64) scaled by sigmoid(shared_expert_gate); "
        "q/k/v biases."))
    specs.append((
        "qwen3_moe", 1009, T.Qwen3MoeConfig, T.Qwen3MoeForCausalLM,
        dict(BASE, tie_word_embeddings=False, num_experts=8, num_experts_per_tok=2,
             moe_intermediate_size=32, norm_topk_prob=True, decoder_sparse_step=1,
             mlp_only_layers=[], attention_bias=False, use_sliding_window=False,
             rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
        "Qwen3-MoE: 8 experts (intermediate 32), top-2 renormalised (norm_topk_prob True); "
        "q_norm/k_norm; no shared expert."))
    return specs


def perturb(model: torch.nn.Module, gemma_norms: bool, gen: torch.Generator) -> list[str]:
    """Randomise every norm weight and linear bias; returns the names touched."""
    touched = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[0].rsplit(".", 1)[-1]
            if "norm" in leaf and name.endswith("weight"):
                noise = torch.randn(p.shape, generator=gen) * 0.2
                # Gemma norms compute x*(1+w): w around 0 means a scale around 1.
                p.copy_(noise if gemma_norms else 1.0 + noise)
                touched.append(name)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
                touched.append(name)
    return touched


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@torch.no_grad()
def run_protocol(model, prefill_ids: torch.Tensor, decode_ids: torch.Tensor):
    out = model(input_ids=prefill_ids[None], use_cache=True)
    prefill_logits = out.logits[0].clone()
    past = out.past_key_values
    decode = []
    for i, tok in enumerate(decode_ids.tolist()):
        pos = N_PREFILL + i
        o = model(input_ids=torch.tensor([[tok]]), past_key_values=past, use_cache=True,
                  cache_position=torch.tensor([pos]))
        past = o.past_key_values
        decode.append(o.logits[0, -1].clone())
    decode_logits = torch.stack(decode)
    full = model(input_ids=torch.cat([prefill_ids, decode_ids])[None], use_cache=False).logits[0]
    return prefill_logits, decode_logits, full


@torch.no_grad()
def window_effect(model, cfg_cls, model_cls, kwargs, ids) -> float:
    """Relative change of the logits when the sliding window is widened past the sequence."""
    kw = dict(kwargs)
    # A window wider than the sequence: same layer types (and gemma3's per-type rope), no limit.
    kw["sliding_window"] = 4096
    cfg = cfg_cls(**kw)
    cfg._attn_implementation = "eager"
    other = model_cls(cfg).eval()
    other.load_state_dict(model.state_dict())
    a = model(input_ids=ids[None], use_cache=False).logits[0]
    b = other(input_ids=ids[None], use_cache=False).logits[0]
    return rel_err(a, b)


@torch.no_grad()
def rope_scaling_effect(model, cfg_cls, model_cls, kwargs, ids) -> float:
    """Relative change of the logits when llama3 rope scaling is replaced by plain rope."""
    kw = dict(kwargs)
    kw["rope_parameters"] = {"rope_type": "default",
                             "rope_theta": kwargs["rope_parameters"]["rope_theta"]}
    cfg = cfg_cls(**kw)
    cfg._attn_implementation = "eager"
    other = model_cls(cfg).eval()
    other.load_state_dict(model.state_dict())
    a = model(input_ids=ids[None], use_cache=False).logits[0]
    b = other(input_ids=ids[None], use_cache=False).logits[0]
    return rel_err(a, b)


def build(name, seed, cfg_cls, model_cls, kwargs, notes, out_root):
    torch.manual_seed(seed)
    cfg = cfg_cls(**kwargs)
    model = model_cls._from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    gen = torch.Generator().manual_seed(seed + 1)
    touched = perturb(model, gemma_norms=name.startswith("gemma"), gen=gen)
    if cfg.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), \
            f"{name}: tie_word_embeddings set but lm_head is not tied"

    ids_gen = torch.Generator().manual_seed(seed + 2)
    # Avoid nothing: every id in [0, vocab) is a valid input for a random model.
    all_ids = torch.randint(0, VOCAB, (N_PREFILL + N_DECODE,), generator=ids_gen)
    prefill_ids, decode_ids = all_ids[:N_PREFILL], all_ids[N_PREFILL:]

    prefill_logits, decode_logits, full = run_protocol(model, prefill_ids, decode_ids)
    e_prefill = rel_err(prefill_logits, full[:N_PREFILL])
    e_decode = rel_err(decode_logits, full[N_PREFILL:])
    assert e_prefill < 1e-5, f"{name}: prefill vs full forward rel err {e_prefill}"
    assert e_decode < 1e-5, f"{name}: cached decode vs full forward rel err {e_decode}"
    std = float(prefill_logits.std())
    assert std > 0.1, f"{name}: logits nearly constant (std {std}); raise the init range"

    meta_extra = {}
    if getattr(cfg, "sliding_window", None):
        eff = window_effect(model, cfg_cls, model_cls, kwargs, all_ids)
        meta_extra["sliding_window_applied"] = eff > 1e-6
        meta_extra["sliding_window_effect_rel_err"] = eff

    rope = kwargs.get("rope_parameters", {})
    if rope.get("rope_type") not in (None, "default"):
        eff = rope_scaling_effect(model, cfg_cls, model_cls, kwargs, all_ids)
        assert eff > 1e-4, f"{name}: rope scaling has no effect on the logits ({eff})"
        meta_extra["rope_scaling_effect_rel_err"] = eff

    d = os.path.join(out_root, name)
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d)
    # save_pretrained may leave a generation_config.json; lowbit does not need it.
    gc = os.path.join(d, "generation_config.json")
    if os.path.exists(gc):
        os.remove(gc)
    save_file({"prefill_logits": prefill_logits.contiguous(),
               "decode_logits": decode_logits.contiguous()},
              os.path.join(d, "golden.safetensors"))
    with open(os.path.join(d, "config.json")) as f:
        written = json.load(f)
    meta = {
        "arch": name,
        "model_type": written.get("model_type"),
        "architectures": written.get("architectures"),
        "prefill_ids": prefill_ids.tolist(),
        "decode_ids": decode_ids.tolist(),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "seed": seed,
        "attn_implementation": "eager",
        "dtype": "float32",
        "check_prefill_vs_full_rel_err": e_prefill,
        "check_decode_vs_full_rel_err": e_decode,
        "prefill_logits_std": std,
        "randomised_params": len(touched),
        **meta_extra,
        "notes": notes + " Logits: prefill = one forward over prefill_ids from an empty cache "
                 "(all positions); decode row i = logits after feeding decode_ids[i] at position "
                 "20+i through the KV cache. Norm weights random (~1, gemma w ~0), biases random.",
    }
    with open(os.path.join(d, "golden.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    size = sum(os.path.getsize(os.path.join(d, x)) for x in os.listdir(d))
    assert size < 1 << 20, f"{name}: fixture dir is {size} bytes (> 1 MB)"
    print(f"{name:11s} model_type={meta['model_type']:12s} size={size:7d}B std={std:.3f} "
          f"cache_err={e_decode:.2e} {meta_extra}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--only", default="", help="comma separated arch names")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    only = set(filter(None, args.only.split(",")))
    for spec in arch_specs():
        if only and spec[0] not in only:
            continue
        build(*spec, out_root=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
