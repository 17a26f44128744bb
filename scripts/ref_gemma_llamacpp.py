#!/usr/bin/env python3
"""Reference perplexity and greedy continuation of Gemma-3-270M (GGUF Q4_K_M) through llama.cpp.

Runs llama.cpp through the PyPI package llama-cpp-python (built from source on install:
`CMAKE_ARGS="-DGGML_NATIVE=ON" $PYTHON -m pip install llama-cpp-python==0.3.36`) on the CPU,
with the quantized weights as llama.cpp uses them. Writes
tests/fixtures/gemma3-270m/ref_llamacpp.json:

  - llama-perplexity's protocol (tools/perplexity/perplexity.cpp) on
    ../shared/data/text/wikitext-2-raw-test.txt: tokenize the whole file with BOS (no special
    token parsing); chunk i = tokens[i*512 : (i+1)*512] with its first token replaced by BOS,
    evaluated from a cleared KV cache in one 512-token batch; the logit row at position j
    (j = 256..510) predicts token j+1: 255 predictions per chunk; nll accumulated in f64 with
    nll^2; PPL = exp(mean nll), stderr = PPL * sqrt((mean(nll^2) - mean^2) / (N-1)).
    Results for the first 8 and 10 chunks and per-chunk nll sums.
  - greedy (argmax, i.e. temperature 0) continuation of "The capital of France is" with BOS,
    32 tokens, through the KV cache.
  - the token count and sha256 of the tokenization (ids as u32 little-endian), comparable with
    ref_transformers.json.

Settings: n_ctx 512, n_batch 512, logits_all, flash attention off, 2 threads, and by default
use_extra_bufts off (no AMX / repacked weight buffers: the AMX path crashed in the
GGML_NATIVE build on this AMX CPU; --extra-bufts turns them back on).

Usage: LOWBIT_CACHE=... $PYTHON scripts/ref_gemma_llamacpp.py [--gguf PATH] [--chunks 10]
(default GGUF path: what scripts/fetch-gemma.sh prints.)
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO, "tests", "fixtures", "gemma3-270m")
TEXT = os.path.join(REPO, "..", "shared", "data", "text", "wikitext-2-raw-test.txt")
N_CTX = 512
PROMPT = "The capital of France is"
N_GEN = 32


def gguf_path(arg: str | None) -> str:
    if arg:
        return arg
    out = subprocess.run(["bash", os.path.join(REPO, "scripts", "fetch-gemma.sh")],
                         check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def ids_sha256(ids) -> str:
    return hashlib.sha256(np.asarray(ids, dtype="<u4").tobytes()).hexdigest()


def ppl_stats(nll: float, nll2: float, count: int) -> dict:
    mean = nll / count
    var = nll2 / count - mean * mean
    ppl = math.exp(mean)
    stderr = ppl * math.sqrt(var / (count - 1)) if var > 0 else float("nan")
    return {"ppl": ppl, "stderr": stderr, "mean_nll": mean, "count": count}


def open_model(path: str, threads: int, extra_bufts: bool):
    import llama_cpp
    import llama_cpp.llama_cpp as low

    if not extra_bufts:
        # Llama() starts from llama_model_default_params(); turn off the extra weight buffer
        # types (AMX, CPU repacking) there. With -DGGML_NATIVE=ON on an AMX CPU, llama.cpp's AMX
        # matmul segfaults in this build (ggml_backend_amx_mul_mat); the plain CPU path is the
        # one every other x86 CPU runs.
        default = low.llama_model_default_params

        def no_extra_bufts():
            p = default()
            p.use_extra_bufts = False
            return p

        low.llama_model_default_params = no_extra_bufts
    # flash_attn=False maps to LLAMA_FLASH_ATTN_TYPE_DISABLED in llama-cpp-python 0.3.36.
    llm = llama_cpp.Llama(model_path=path, n_ctx=N_CTX, n_batch=N_CTX, n_ubatch=N_CTX,
                          logits_all=True, flash_attn=False, n_threads=threads,
                          n_threads_batch=threads, seed=0, verbose=False)
    fa_type = int(llm.context_params.flash_attn_type)
    if fa_type != llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED:
        raise SystemExit(f"flash attention is not disabled (flash_attn_type {fa_type})")
    assert bool(llm.model_params.use_extra_bufts) == extra_bufts
    return llm, f"off (flash_attn=False, flash_attn_type={fa_type} = DISABLED)"


def eval_fresh(llm, ids: list[int]) -> np.ndarray:
    """Evaluate ids from an empty cache; returns the logits of every position [len, vocab]."""
    import llama_cpp

    llm.reset()  # n_tokens = 0
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)
    llm.eval(ids)
    return np.asarray(llm.scores[: len(ids)], dtype=np.float32)


def perplexity(llm, tokens: list[int], bos: int, n_chunks: int) -> list[dict]:
    first = N_CTX // 2
    chunks = []
    for i in range(n_chunks):
        t0 = time.time()
        chunk = list(tokens[i * N_CTX:(i + 1) * N_CTX])
        targets = np.asarray(chunk[first + 1:], dtype=np.int64)
        chunk[0] = bos
        rows = eval_fresh(llm, chunk)[first:N_CTX - 1].astype(np.float64)  # positions 256..510
        m = rows.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(rows - m).sum(axis=1))
        nll = lse - rows[np.arange(len(targets)), targets]
        chunks.append({
            "chunk": i,
            "nll_sum": float(nll.sum()),
            "nll2_sum": float((nll * nll).sum()),
            "count": int(nll.size),
            "ppl": math.exp(float(nll.mean())),
        })
        print(f"chunk {i}: ppl {chunks[-1]['ppl']:.4f} ({time.time() - t0:.1f} s)", flush=True)
    return chunks


def greedy(llm, prompt_ids: list[int]) -> dict:
    eval_fresh(llm, prompt_ids)
    gen, top1_logit, margin = [], [], []
    for _ in range(N_GEN):
        row = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        top2 = np.argsort(row)[-2:]
        nxt = int(top2[1])
        gen.append(nxt)
        top1_logit.append(float(row[nxt]))
        margin.append(float(row[nxt] - row[top2[0]]))
        llm.eval([nxt])
    return {"prompt": PROMPT, "prompt_ids": prompt_ids, "generated_ids": gen,
            "top1_logits": top1_logit, "margins": margin,
            "generated_text": llm.detokenize(gen).decode("utf-8", errors="replace")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", default=None)
    ap.add_argument("--chunks", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=OUT_DIR)
    ap.add_argument("--extra-bufts", action="store_true",
                    help="keep llama.cpp's extra weight buffer types (AMX / repacking)")
    args = ap.parse_args()
    path = gguf_path(args.gguf)

    llm, fa = open_model(path, args.threads, args.extra_bufts)
    bos = llm.token_bos()
    text = open(TEXT, encoding="utf-8").read()
    t0 = time.time()
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    print(f"tokenized: {len(tokens)} tokens in {time.time() - t0:.1f} s", flush=True)
    if tokens[0] != bos:
        raise SystemExit(f"tokenization does not start with BOS {bos}: {tokens[:4]}")

    chunks = perplexity(llm, tokens, bos, args.chunks)
    results = {}
    for n in (8, 10):
        if n <= len(chunks):
            sel = chunks[:n]
            results[str(n)] = ppl_stats(sum(c["nll_sum"] for c in sel),
                                        sum(c["nll2_sum"] for c in sel),
                                        sum(c["count"] for c in sel))
            print(f"{n} chunks: PPL = {results[str(n)]['ppl']:.4f} +/- {results[str(n)]['stderr']:.5f}")

    prompt_ids = llm.tokenize(PROMPT.encode("utf-8"), add_bos=True, special=False)
    g = greedy(llm, prompt_ids)
    print("greedy:", repr(g["generated_text"]))

    import llama_cpp

    ref = {
        "model": os.path.basename(path),
        "engine": "llama.cpp via llama-cpp-python (CPU, quantized weights)",
        "llama_cpp_python": importlib.metadata.version("llama-cpp-python"),
        "llama_cpp_system_info": llama_cpp.llama_print_system_info().decode(errors="replace"),
        "flash_attention": fa,
        "n_threads": args.threads,
        "use_extra_bufts": args.extra_bufts,
        "n_batch": N_CTX,
        "text": "wikitext-2-raw-test.txt",
        "n_tokens": len(tokens),
        "tokens_sha256_u32le": ids_sha256(tokens),
        "first_tokens": tokens[:64],
        "bos": bos,
        "protocol": {"n_ctx": N_CTX, "first": N_CTX // 2, "scored_per_chunk": N_CTX - N_CTX // 2 - 1,
                     "chunk_first_token": "replaced by BOS",
                     "row_j_predicts": "token j+1, j in 256..510"},
        "results": results,
        "chunks": chunks,
        "greedy": g,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ref_llamacpp.json"), "w") as f:
        json.dump(ref, f, indent=1)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
