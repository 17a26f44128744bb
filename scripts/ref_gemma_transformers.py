#!/usr/bin/env python3
"""Reference perplexity and greedy logits of Gemma-3-270M (GGUF Q4_K_M) through transformers.

transformers loads the GGUF and dequantizes every tensor to float32 through gguf-py, then runs
the model in float32 with eager attention: an f32 reference of the same weights llama.cpp runs
quantized. Writes:

  tests/fixtures/gemma3-270m/ref_transformers.json
      llama-perplexity's protocol on ../shared/data/text/wikitext-2-raw-test.txt: tokenize the
      whole file with BOS; chunk i = tokens[i*512 : (i+1)*512] with its first token replaced by
      BOS, evaluated from an empty cache; the logit row at position j (j = 256..510) predicts
      token j+1: 255 predictions per chunk. nll = logsumexp(row) - row[target], accumulated in
      f64 with nll^2; PPL = exp(mean nll), stderr = PPL * sqrt((mean(nll^2) - mean^2) / (N-1))
      (llama.cpp tools/perplexity/perplexity.cpp). Results for the first 8 and 10 chunks, and
      per chunk: nll sum, nll^2 sum, count.
  tests/fixtures/gemma3-270m/ref_greedy.json
      greedy continuation (32 tokens) of "The capital of France is" (with BOS), and for each
      step the teacher-forced logits row (prefix = prompt + the generated ids before it): top-1
      id, top1-top2 margin, the 64 largest logits and 64 fixed seeded random ids (id, value),
      the row's L2 norm, mean and logsumexp.

Takes a few minutes on 2 cores (model load ~1 min, tokenizer ~25 s, 10 x 512-token forwards).

Usage: LOWBIT_CACHE=... $PYTHON scripts/ref_gemma_transformers.py [--gguf PATH] [--chunks 10]
(default GGUF path: what scripts/fetch-gemma.sh prints. PYTHON: torch, transformers 5.x,
accelerate, gguf.)
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO, "tests", "fixtures", "gemma3-270m")
TEXT = os.path.join(REPO, "..", "shared", "data", "text", "wikitext-2-raw-test.txt")
N_CTX = 512
PROMPT = "The capital of France is"
N_GEN = 32
N_TOP = 64
N_RANDOM = 64
RANDOM_IDS_SEED = 20240607
LLAMA_CPP_TOKEN_COUNT = 295216  # llama.cpp's count for the test file with BOS


def gguf_path(arg: str | None) -> str:
    if arg:
        return arg
    out = subprocess.run(["bash", os.path.join(REPO, "scripts", "fetch-gemma.sh")],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def ids_sha256(ids) -> str:
    """sha256 of the ids as little-endian u32, so a Rust test can compare a whole tokenization."""
    return hashlib.sha256(np.asarray(ids, dtype="<u4").tobytes()).hexdigest()


def ppl_stats(nll: float, nll2: float, count: int) -> dict:
    """llama.cpp's final estimate: PPL = exp(mean), stderr = PPL * sqrt(var / (count - 1))."""
    mean = nll / count
    var = nll2 / count - mean * mean
    ppl = math.exp(mean)
    stderr = ppl * math.sqrt(var / (count - 1)) if var > 0 else float("nan")
    return {"ppl": ppl, "stderr": stderr, "mean_nll": mean, "count": count}


@torch.no_grad()
def perplexity(model, tokens: list[int], bos: int, n_chunks: int) -> list[dict]:
    first = N_CTX // 2
    chunks = []
    for i in range(n_chunks):
        t0 = time.time()
        chunk = list(tokens[i * N_CTX:(i + 1) * N_CTX])
        targets = torch.tensor(chunk[first + 1:], dtype=torch.long)  # tokens 257..511
        chunk[0] = bos
        # Only the last N_CTX - first rows are needed: rows 256..511; row 511 predicts nothing.
        out = model(input_ids=torch.tensor([chunk]), use_cache=False, logits_to_keep=N_CTX - first)
        rows = out.logits[0, :-1].double()  # positions 256..510, float32 logits widened
        nll = torch.logsumexp(rows, dim=-1) - rows.gather(1, targets[:, None])[:, 0]
        chunks.append({
            "chunk": i,
            "nll_sum": float(nll.sum()),
            "nll2_sum": float((nll * nll).sum()),
            "count": int(nll.numel()),
            "ppl": math.exp(float(nll.mean())),
        })
        print(f"chunk {i}: ppl {chunks[-1]['ppl']:.4f} ({time.time() - t0:.1f} s)", flush=True)
    return chunks


def summary(chunks: list[dict], n: int) -> dict:
    sel = chunks[:n]
    return ppl_stats(sum(c["nll_sum"] for c in sel), sum(c["nll2_sum"] for c in sel),
                     sum(c["count"] for c in sel))


def row_record(row: torch.Tensor, random_ids: np.ndarray) -> dict:
    top = torch.topk(row, N_TOP)
    r = row.double()
    return {
        "top1": int(top.indices[0]),
        "margin": float(top.values[0] - top.values[1]),
        "top_ids": top.indices.tolist(),
        "top_logits": top.values.tolist(),
        "random_logits": row[torch.from_numpy(random_ids)].tolist(),
        "l2_norm": float(r.norm()),
        "mean": float(r.mean()),
        "logsumexp": float(torch.logsumexp(r, 0)),
    }


@torch.no_grad()
def greedy(model, prompt_ids: list[int], vocab: int) -> dict:
    # Greedy without a cache: one full forward per step.
    seq = list(prompt_ids)
    gen = []
    for _ in range(N_GEN):
        logits = model(input_ids=torch.tensor([seq]), use_cache=False, logits_to_keep=1).logits[0, -1]
        nxt = int(torch.argmax(logits))
        gen.append(nxt)
        seq.append(nxt)
    # Teacher forced: one forward over prompt + generated[:-1]; row p-1+k predicts generated[k].
    full = model(input_ids=torch.tensor([seq[:-1]]), use_cache=False).logits[0]
    rows = full[len(prompt_ids) - 1:]
    assert rows.shape[0] == N_GEN
    tf_argmax = rows.argmax(-1).tolist()
    rng = np.random.default_rng(RANDOM_IDS_SEED)
    random_ids = np.sort(rng.choice(vocab, size=N_RANDOM, replace=False)).astype(np.int64)
    steps = [row_record(rows[k], random_ids) for k in range(N_GEN)]
    return {
        "prompt": PROMPT,
        "prompt_ids": list(prompt_ids),
        "generated_ids": gen,
        "teacher_forced_argmax_matches": tf_argmax == gen,
        "random_ids": random_ids.tolist(),
        "steps": steps,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", default=None, help="GGUF path (default: scripts/fetch-gemma.sh)")
    ap.add_argument("--chunks", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=OUT_DIR)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    path = gguf_path(args.gguf)
    d, name = os.path.split(path)

    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    text = open(TEXT, encoding="utf-8").read()
    tokens = tok(text, add_special_tokens=True)["input_ids"]
    bos = tok.bos_token_id
    print(f"tokenized: {len(tokens)} tokens (llama.cpp: {LLAMA_CPP_TOKEN_COUNT}), "
          f"{time.time() - t0:.0f} s", flush=True)
    if tokens[0] != bos:
        raise SystemExit(f"tokenization does not start with BOS {bos}: {tokens[:4]}")

    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    print(f"model loaded in {time.time() - t0:.0f} s", flush=True)
    cfg = model.config

    chunks = perplexity(model, tokens, bos, args.chunks)
    results = {str(n): summary(chunks, n) for n in (8, 10) if n <= len(chunks)}
    for n, r in results.items():
        print(f"{n} chunks: PPL = {r['ppl']:.4f} +/- {r['stderr']:.5f}")

    versions = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "gguf": importlib.metadata.version("gguf"),
    }
    os.makedirs(args.out, exist_ok=True)
    ref = {
        "model": name,
        "engine": "transformers (GGUF dequantized to f32 by gguf-py, float32, eager attention)",
        **versions,
        "text": "wikitext-2-raw-test.txt",
        "n_tokens": len(tokens),
        "n_tokens_matches_llama_cpp": len(tokens) == LLAMA_CPP_TOKEN_COUNT,
        "tokens_sha256_u32le": ids_sha256(tokens),
        "first_tokens": tokens[:64],
        "bos": bos,
        "protocol": {"n_ctx": N_CTX, "first": N_CTX // 2, "scored_per_chunk": N_CTX - N_CTX // 2 - 1,
                     "chunk_first_token": "replaced by BOS",
                     "row_j_predicts": "token j+1, j in 256..510"},
        "config": {"sliding_window": cfg.sliding_window, "layer_types": cfg.layer_types,
                   "rope_parameters": cfg.rope_parameters, "rms_norm_eps": cfg.rms_norm_eps,
                   "query_pre_attn_scalar": cfg.query_pre_attn_scalar,
                   "final_logit_softcapping": cfg.final_logit_softcapping},
        "results": results,
        "chunks": chunks,
    }
    with open(os.path.join(args.out, "ref_transformers.json"), "w") as f:
        json.dump(ref, f, indent=1)
        f.write("\n")

    prompt_ids = tok(PROMPT, add_special_tokens=True)["input_ids"]
    g = greedy(model, prompt_ids, cfg.vocab_size)
    g.update({"model": name, "engine": ref["engine"], **versions,
              "generated_text": tok.decode(g["generated_ids"])})
    with open(os.path.join(args.out, "ref_greedy.json"), "w") as f:
        json.dump(g, f)
        f.write("\n")
    print("greedy:", repr(g["generated_text"]), "tf argmax matches:", g["teacher_forced_argmax_matches"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
