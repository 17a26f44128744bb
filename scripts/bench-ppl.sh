#!/usr/bin/env bash
# Perplexity throughput: lowbit eval ppl vs llama.cpp's llama-perplexity on Gemma-3-270M Q4_K_M,
# same file, same 8 chunks of 512, same threads, interleaved in one run (REPS each), medians.
# Peak RSS from /usr/bin/time. Usage: scripts/bench-ppl.sh [REPS]   (builds what it needs)
set -euo pipefail
cd "$(dirname "$0")/.."
REPS="${1:-3}"
THREADS="${THREADS:-2}"
CHUNKS="${CHUNKS:-8}"
MODEL=$(bash scripts/fetch-gemma.sh)
TEXT=../shared/data/text/wikitext-2-raw-test.txt
LLAMA_BIN=$(bash scripts/build-llamacpp.sh)
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q -p lowbit
OUT=$(mktemp -d)
for r in $(seq "$REPS"); do
  /usr/bin/time -f "%M" -o "$OUT/lowbit.rss.$r" target/release/lowbit -t "$THREADS" eval ppl --model "$MODEL" \
    --text "$TEXT" --ctx 512 --chunks "$CHUNKS" --json > "$OUT/lowbit.$r.json"
  for fa in off on; do
    /usr/bin/time -f "%M" -o "$OUT/llama.$fa.rss.$r" "$LLAMA_BIN/llama-perplexity" -m "$MODEL" -f "$TEXT" -c 512 -b 512 \
      --chunks "$CHUNKS" -t "$THREADS" -fa "$fa" > "$OUT/llama.$fa.$r.log" 2>&1
  done
done
python3 - "$OUT" "$REPS" "$MODEL" <<'PY'
import json, os, re, statistics, sys
out, reps, model = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def rss(p): return int(open(p).read().split()[-1]) / 1024
lb = [json.load(open(f"{out}/lowbit.{r}.json")) for r in range(1, reps + 1)]
lb_tps = statistics.median(x["tokens_per_second"] for x in lb)
lb_rss = max(rss(f"{out}/lowbit.rss.{r}") for r in range(1, reps + 1))
res = {"lowbit": {"tps": lb_tps, "tps_all": [x["tokens_per_second"] for x in lb], "ppl": lb[0]["ppl"], "peak_rss_mib": lb_rss}}
for fa in ("off", "on"):
    tps, ppl = [], None
    for r in range(1, reps + 1):
        log = open(f"{out}/llama.{fa}.{r}.log").read()
        # Wall time from "calculating perplexity" to "Final estimate" (log timestamps m.ss.mmm).
        def ts(pat):
            line = next(l for l in log.splitlines() if pat in l)
            mm, ss, ms = line.split()[0].split(".")[:3]
            return int(mm) * 60 + int(ss) + int(ms) / 1000
        n = int(re.search(r"over (\d+) chunks, n_ctx=(\d+)", log).group(1)) * 512
        tps.append(n / (ts("Final estimate") - ts("calculating perplexity")))
        p = re.search(r"Final estimate: PPL = ([\d.]+)", log)
        ppl = float(p.group(1)) if p else None
    res[f"llama.cpp fa={fa}"] = {"tps": statistics.median(tps), "tps_all": tps, "ppl": ppl,
                                  "peak_rss_mib": max(rss(f"{out}/llama.{fa}.rss.{r}") for r in range(1, reps + 1))}
best = max(v["tps"] for k, v in res.items() if k.startswith("llama"))
size = os.path.getsize(model) / 2**20
print(json.dumps(res, indent=1))
print(f"\nlowbit {lb_tps:.1f} tok/s vs llama.cpp best {best:.1f} tok/s: ratio {lb_tps/best:.2f}x; "
      f"lowbit peak RSS {lb_rss:.0f} MiB = {lb_rss/size:.2f}x the GGUF file ({size:.0f} MiB)")
PY
