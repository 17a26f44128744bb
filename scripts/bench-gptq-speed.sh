#!/usr/bin/env bash
# Issue 6's GPTQ speed/memory comparison: lowbit `quantize --method gptq --rotate online` (w4g128)
# against PyPI llmcompressor's GPTQModifier (W4A16, group 128), same machine, model, calibration
# and thread count, one after the other in the same run. Goal: >= 3x faster at <= 0.5x peak RSS.
#
#   scripts/bench-gptq-speed.sh [--seqs N] [--len L] [--threads T] [--actorder static|none]
#                               [--chunks C] [--no-eval] [--lowbit-base hf|gguf]
#
# --seqs 128 --len 512 is the issue's measurement (the default); --seqs 8 is a quick check that
# everything works. --actorder: GPTQ column order for both tools (static = llmcompressor's default;
# lowbit gets --act-order). --chunks: `lowbit eval compare` of both outputs against the base on
# wikitext-2-raw-test.txt (ctx 512; default 4), a quality cross-check; --no-eval skips it.
# --lowbit-base: what lowbit reads, the f32 HF base below (default: the same input as
# llmcompressor) or the GGUF itself (dequantized to the same f32 weights at load).
#
# Base: Gemma-3-270M, the cached Q4_K_M GGUF dequantized to f32 and saved once as an HF directory
# (WORK/base-f32: config.json, tokenizer, model.safetensors) by transformers + gguf-py under
# PYTHON (default python3; needs torch, transformers >= 5.23 (5.17 mis-converts the GGUF
# tokenizer), gguf). Both tools quantize from it unless --lowbit-base gguf.
# llmcompressor runs in its own venv LLMC_VENV (default $LOWBIT_CACHE/venv-llmc), created from
# PYTHON with `pip install llmcompressor==LLMC_VERSION` (default 0.14.0.1; it pins torch <= 2.14 and
# transformers <= 5.17, so it cannot share the lowbit venv; PyPI's torch wheel is the CUDA build,
# which costs ~0.6 GiB RSS at `import torch` even on the CPU: the table shows that baseline).
#
# Calibration: the first N x L tokens of CALIB (default $LOWBIT_CACHE/bench-quality/calib.txt, the
# tail of wikitext-2 test: 132,520 Gemma tokens, enough for 128 x 512; both tools stop with an
# error on a text too short for N x L) as lowbit cuts them:
# consecutive chunks of L tokens, the first token of each replaced by BOS. The helper
# scripts/llmcompressor_gptq.py hands llmcompressor exactly those sequences, pre-tokenized, in
# order; a check first confirms both tokenizers encode the start of CALIB identically.
#
# Each tool runs under /usr/bin/time -v (wall time, user+sys CPU, max RSS), after the base's
# safetensors file was read once so both start from a warm page cache. Output: a table on stdout,
# WORK/speed-sN.md and WORK/speed-sN.json; logs in WORK/*-sN.{log,json}. The load average is
# printed before and after: timings are only meaningful on an otherwise idle machine.
# Environment: LOWBIT (binary; default target/release/lowbit, built if missing), LOWBIT_CACHE,
# WORK, CALIB, PYTHON, LLMC_VENV, LLMC_VERSION.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${LOWBIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lowbit}"
WORK="${WORK:-$CACHE/bench-gptq-speed}"
CALIB="${CALIB:-$CACHE/bench-quality/calib.txt}"
TEXT="$ROOT/../shared/data/text/wikitext-2-raw-test.txt"
PY="${PYTHON:-python3}"
LLMC_VENV="${LLMC_VENV:-$CACHE/venv-llmc}"
LLMC_VERSION="${LLMC_VERSION:-0.14.0.1}"
LOWBIT="${LOWBIT:-$ROOT/target/release/lowbit}"
HELPER="$ROOT/scripts/llmcompressor_gptq.py"

SEQS=128 LEN=512 THREADS=2 ACTORDER=static CHUNKS=4 EVAL=1 LOWBIT_BASE=hf
while [ $# -gt 0 ]; do
  case "$1" in
    --seqs) SEQS="$2"; shift 2 ;;
    --len) LEN="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --actorder) ACTORDER="$2"; shift 2 ;;
    --chunks) CHUNKS="$2"; shift 2 ;;
    --no-eval) EVAL=0; shift ;;
    --lowbit-base) LOWBIT_BASE="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-gptq-speed: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$ACTORDER" in
  static) LOWBIT_ACTORDER=(--act-order) ;;
  none) LOWBIT_ACTORDER=() ;;
  *) echo "bench-gptq-speed: --actorder is static or none, not $ACTORDER" >&2; exit 2 ;;
esac
[ -x /usr/bin/time ] || { echo "bench-gptq-speed: needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
mkdir -p "$WORK"
if [ ! -x "$LOWBIT" ]; then (cd "$ROOT" && cargo build --release -p lowbit >&2); fi
if [ ! -f "$CALIB" ]; then mkdir -p "$(dirname "$CALIB")"; tail -n 2000 "$TEXT" >"$CALIB"; fi

# llmcompressor's venv, once.
if ! "$LLMC_VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('llmcompressor') != '$LLMC_VERSION')" 2>/dev/null; then
  echo "== installing llmcompressor==$LLMC_VERSION into $LLMC_VENV (log: $WORK/venv-llmc-install.log)" >&2
  "$PY" -m venv "$LLMC_VENV"
  "$LLMC_VENV/bin/pip" install "llmcompressor==$LLMC_VERSION" >"$WORK/venv-llmc-install.log" 2>&1
fi
LLMC_PY="$LLMC_VENV/bin/python"

# The f32 HF base, once.
BASE="$WORK/base-f32"
GGUF="$("$ROOT/scripts/fetch-gemma.sh")"
case "$LOWBIT_BASE" in
  hf) LOWBIT_MODEL="$BASE" ;;
  gguf) LOWBIT_MODEL="$GGUF" ;;
  *) echo "bench-gptq-speed: --lowbit-base is hf or gguf, not $LOWBIT_BASE" >&2; exit 2 ;;
esac
if [ ! -f "$BASE/model.safetensors" ]; then
  echo "== writing the f32 base $BASE from $GGUF" >&2
  "$PY" "$HELPER" base --gguf "$GGUF" --out "$BASE" >"$WORK/base.log" 2>&1 \
    || { tail -n 20 "$WORK/base.log" >&2; exit 1; }
fi

# Both tools must see the same token ids: compare their encodings of CALIB's first lines.
head -n 12 "$CALIB" >"$WORK/tokens-check.txt"
"$LOWBIT" run --threads "$THREADS" --model "$LOWBIT_MODEL" -n 1 --json \
  -p "$(cat "$WORK/tokens-check.txt")" >"$WORK/tokens-check.json" 2>/dev/null
# `$(cat ...)` drops trailing newlines: the Python side must read the same string.
printf '%s' "$(cat "$WORK/tokens-check.txt")" >"$WORK/tokens-check.txt.tmp"
mv "$WORK/tokens-check.txt.tmp" "$WORK/tokens-check.txt"
"$LLMC_PY" "$HELPER" same-tokens --base "$BASE" --text "$WORK/tokens-check.txt" \
  --lowbit-json "$WORK/tokens-check.json" >&2

S="s$SEQS"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
echo "== load average before: $LOAD_BEFORE (2 cores; timings are noisy above ~1.5)" >&2
warm() { cat "$BASE/model.safetensors" "$LOWBIT_MODEL" >/dev/null 2>&1 || true; }

# timed NAME CMD...: run CMD under /usr/bin/time -v; stdout to WORK/NAME-S.json, the rest to .log.
timed() {
  local name="$1"; shift
  warm
  echo "== $name ($SEQS x $LEN tokens, $THREADS threads): $*" >&2
  /usr/bin/time -v -o "$WORK/$name-$S.time" "$@" >"$WORK/$name-$S.json" 2>"$WORK/$name-$S.log" \
    || { tail -n 20 "$WORK/$name-$S.log" >&2; exit 1; }
  grep -E "Elapsed|Maximum resident" "$WORK/$name-$S.time" | sed 's/^\s*/   /' >&2
}

timed lowbit "$LOWBIT" quantize --threads "$THREADS" --model "$LOWBIT_MODEL" --scheme w4g128 \
  --method gptq --rotate online "${LOWBIT_ACTORDER[@]}" --calib "$CALIB" --calib-seqs "$SEQS" \
  --calib-len "$LEN" --out "$WORK/lowbit-w4g128-$S" --force --json
timed llmc env OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" TOKENIZERS_PARALLELISM=false \
  "$LLMC_PY" "$HELPER" gptq --base "$BASE" --calib "$CALIB" --seqs "$SEQS" --len "$LEN" \
  --threads "$THREADS" --actorder "$ACTORDER" --out "$WORK/llmc-w4a16-$S"
# What `import torch, transformers, llmcompressor` alone holds resident (the CUDA torch build).
/usr/bin/time -v -o "$WORK/llmc-import.time" "$LLMC_PY" -c "import torch, transformers, llmcompressor" \
  >/dev/null 2>&1
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

if [ "$EVAL" = 1 ]; then
  echo "== quality: lowbit eval compare, $CHUNKS chunks of 512 of wikitext-2 test" >&2
  "$LOWBIT" eval compare --threads "$THREADS" --base "$BASE" --text "$TEXT" --ctx 512 \
    --chunks "$CHUNKS" --json "$WORK/lowbit-w4g128-$S" "$WORK/llmc-w4a16-$S" >"$WORK/quality-$S.json"
fi

"$PY" - "$WORK" "$S" "$SEQS" "$LEN" "$THREADS" "$ACTORDER" "$LOAD_BEFORE" "$LOAD_AFTER" "$EVAL" \
  "$LOWBIT_BASE" <<'PYEOF' | tee "$WORK/speed-$S.md"
import json, os, re, sys
work, s, seqs, length, threads, actorder, load_before, load_after, ev, lowbit_base = sys.argv[1:]

def timing(path):
    t = open(path).read()
    m = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", t)
    wall = int(m.group(1) or 0) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", t).group(1)) for k in ("User", "System"))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1)) / 1024
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mib": rss}

lb = timing(f"{work}/lowbit-{s}.time")
lc = timing(f"{work}/llmc-{s}.time")
imp = timing(f"{work}/llmc-import.time")
# llmcompressor logs to stdout too: the helper's summary is the last JSON line.
llmc_info = json.loads([l for l in open(f"{work}/llmc-{s}.json") if l.startswith("{")][-1])
res = {
    "sequences": int(seqs), "tokens_per_sequence": int(length), "threads": int(threads),
    "actorder": actorder, "lowbit_base": lowbit_base, "load_before": load_before, "load_after": load_after,
    "lowbit": lb, "llmcompressor": {**lc, **llmc_info}, "llmcompressor_import_only": imp,
    "speedup": lc["wall_s"] / lb["wall_s"], "cpu_ratio": lc["cpu_s"] / lb["cpu_s"],
    "rss_ratio": lb["peak_rss_mib"] / lc["peak_rss_mib"],
}
print(f"GPTQ w4g128 of Gemma-3-270M (f32 base), {seqs} x {length} calibration tokens, "
      f"{threads} threads, actorder {actorder}; load average {load_before} -> {load_after}\n")
print("| run | wall s | CPU s | peak RSS MiB |")
print("|---|---|---|---|")
print(f"| lowbit quantize --method gptq --rotate online (from {lowbit_base}) | {lb['wall_s']:.1f} | {lb['cpu_s']:.1f} | {lb['peak_rss_mib']:.0f} |")
print(f"| llmcompressor {llmc_info['llmcompressor']} GPTQModifier W4A16 (torch {llmc_info['torch']}) "
      f"| {lc['wall_s']:.1f} | {lc['cpu_s']:.1f} | {lc['peak_rss_mib']:.0f} |")
print(f"| (llmcompressor: import only) | {imp['wall_s']:.1f} | {imp['cpu_s']:.1f} | {imp['peak_rss_mib']:.0f} |")
print(f"\nspeedup (llmcompressor wall / lowbit wall): {res['speedup']:.2f}x (goal >= 3)")
print(f"CPU-time ratio (llmcompressor / lowbit; less sensitive to a busy machine): {res['cpu_ratio']:.2f}x")
print(f"peak RSS ratio (lowbit / llmcompressor): {res['rss_ratio']:.2f} (goal <= 0.5)")
print(f"llmcompressor phases: import {llmc_info['import_s']} s, load {llmc_info['load_s']} s, "
      f"oneshot {llmc_info['quantize_s']} s, save {llmc_info['save_s']} s")
if ev == "1":
    q = json.load(open(f"{work}/quality-{s}.json"))
    res["quality"] = q
    print("\n| model | bpw | PPL | KLD mean ± se | top-1 |")
    print("|---|---|---|---|---|")
    for m in q["models"]:
        bpw = m.get("bits_per_weight")
        g = lambda k: m.get(k, float("nan"))
        print(f"| {os.path.basename(m['model'])} | {'-' if bpw is None else f'{bpw:.3f}'} "
              f"| {g('ppl'):.3f} | {g('kld_mean'):.4f} ± {g('kld_stderr'):.4f} | {100 * g('top1'):.1f}% |")
json.dump(res, open(f"{work}/speed-{s}.json", "w"), indent=1)
PYEOF
