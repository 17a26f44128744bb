#!/usr/bin/env bash
# `make demo`: run lowbit's main job on Gemma-3-270M (GGUF Q4_K_M) and print a summary table.
# Until compression lands the main job is: generate, then measure perplexity.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/lowbit
MODEL=$(PYTHON="${PYTHON:-python3}" bash scripts/fetch-gemma.sh)
TEXT=../shared/data/text/wikitext-2-raw-test.txt
[ -f "$TEXT" ] || TEXT=shared/data/text/wikitext-2-raw-test.txt
echo "== lowbit run (greedy, 32 tokens) on $(basename "$MODEL")"
"$BIN" run --model "$MODEL" --prompt "The capital of France is" -n 32
RUN=$("$BIN" run --model "$MODEL" --prompt "The capital of France is" -n 32 --json 2>/dev/null)
echo
echo "== lowbit eval ppl (wikitext-2 test, ctx 512, 4 chunks)"
PPL=$("$BIN" eval ppl --model "$MODEL" --text "$TEXT" --ctx 512 --chunks 4 --json)
SIZE=$(stat -c %s "$MODEL")
"${PYTHON:-python3}" - "$SIZE" "$RUN" "$PPL" <<'PY'
import json, sys
size, run, ppl = int(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
rows = [
    ("model", "gemma-3-270m Q4_K_M (GGUF)"),
    ("file size", f"{size/2**20:.1f} MiB"),
    ("prefill", f"{run['prefill_tokens_per_second']:.1f} tokens/s"),
    ("decode", f"{run['decode_tokens_per_second']:.1f} tokens/s"),
    ("perplexity", f"{ppl['ppl']:.4f} ± {ppl['ppl_stderr']:.4f} ({ppl['chunks']} chunks of {ppl['ctx']})"),
    ("eval speed", f"{ppl['tokens_per_second']:.1f} tokens/s"),
]
w = max(len(k) for k, _ in rows)
print()
print(f"| {'':{w}} | result |")
print(f"|{'-'*(w+2)}|--------|")
for k, v in rows:
    print(f"| {k:{w}} | {v} |")
PY
