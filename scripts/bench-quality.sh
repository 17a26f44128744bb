#!/usr/bin/env bash
# Issue 6's quality benchmarks on Gemma-3-270M (BENCHMARKS.md, "Compression quality (issue 6)").
#
# Base = the Q4_K_M GGUF dequantized to f32 (`lowbit eval kld/compare --base` on the GGUF does that).
# Protocol: `--chunks 40 --ctx 512` on wikitext-2-raw-test.txt; calibration text = `tail -n 2000`
# of the same file (its first CALIB_SEQS x CALIB_LEN tokens), which the first 40 chunks never reach.
#
#   scripts/bench-quality.sh [STEP...]     steps: w4 lowbits llamacpp w8 (default: all, in order)
#
# w4        w4g128: RTN and GPTQ + --rotate online (R4)
# lowbits   w3g128 and w2g64 with GPTQ + --rotate online, compared with llama.cpp's Q3_K_M and Q2_K
# llamacpp  (part of lowbits) the base written as an f32 GGUF by lowbit, llama-imatrix on the
#           calibration text, llama-quantize Q3_K_M / Q2_K with and without that imatrix
# w8        W8A8 int8 and FP8 configurations
#
# Every model is written once under WORK and reused; each step's table goes to WORK/STEP.txt and
# WORK/STEP.json (`lowbit eval compare`: bpw, size, PPL, KLD, top-1; base logits computed once).
# Environment: LOWBIT (binary; default target/release/lowbit, built if missing), WORK (default
# $LOWBIT_CACHE/bench-quality), CHUNKS (40), CTX (512), CALIB_SEQS (16), CALIB_LEN (512), THREADS,
# PYTHON (for the llama.cpp build's cmake/ninja; default python3). The 2026-11-23 rows of steps
# lowbits and w8 were measured with CHUNKS=4 (time ran out); step w4 with the default 40.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${LOWBIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lowbit}"
WORK="${WORK:-$CACHE/bench-quality}"
CHUNKS="${CHUNKS:-40}"
CTX="${CTX:-512}"
CALIB_SEQS="${CALIB_SEQS:-16}"
CALIB_LEN="${CALIB_LEN:-512}"
TEXT="${TEXT:-$ROOT/../shared/data/text/wikitext-2-raw-test.txt}"
THREADS_ARG=()
[ -n "${THREADS:-}" ] && THREADS_ARG=(--threads "$THREADS")
LOWBIT="${LOWBIT:-$ROOT/target/release/lowbit}"
if [ ! -x "$LOWBIT" ]; then (cd "$ROOT" && cargo build --release -p lowbit >&2); fi
BASE="$("$ROOT/scripts/fetch-gemma.sh")"
mkdir -p "$WORK"
CALIB="$WORK/calib.txt"
[ -f "$CALIB" ] || tail -n 2000 "$TEXT" >"$CALIB"

# quantize NAME ARGS...: write WORK/NAME once (a directory, or a .gguf with --export gguf).
quantize() {
  local name="$1"; shift
  if [ -e "$WORK/$name" ]; then return 0; fi
  echo "== quantize $name: $*" >&2
  /usr/bin/time -f "$name: %e s wall, %U s user, %M KiB peak" \
    "$LOWBIT" quantize "${THREADS_ARG[@]}" --model "$BASE" --out "$WORK/$name" "$@" --json \
    >"$WORK/$name.quant.json" 2>"$WORK/$name.quant.log"
  tail -n 1 "$WORK/$name.quant.log" >&2
}
gptq() { quantize "$@" --method gptq --calib "$CALIB" --calib-seqs "$CALIB_SEQS" --calib-len "$CALIB_LEN"; }

# compare STEP MODEL...: one `lowbit eval compare --json` of WORK/MODEL... against the base (the
# base runs once per chunk); the JSON goes to WORK/STEP.json, a summary table to stdout.
compare() {
  local step="$1"; shift
  local models=()
  for m in "$@"; do models+=("$WORK/$m"); done
  echo "== compare $step ($CHUNKS chunks of $CTX): $*" >&2
  "$LOWBIT" eval compare "${THREADS_ARG[@]}" --base "$BASE" --text "$TEXT" --ctx "$CTX" \
    --chunks "$CHUNKS" --json "${models[@]}" >"$WORK/$step.json.tmp"
  mv "$WORK/$step.json.tmp" "$WORK/$step.json"
  "${PYTHON:-python3}" - "$WORK/$step.json" <<'PYEOF' | tee "$WORK/$step.txt"
import json, os, sys
d = json.load(open(sys.argv[1]))
print("| model | bpw | PPL | KLD mean ± se | median | p99 | top-1 | RMS Δp |")
print("|---|---|---|---|---|---|---|---|")
for m in d["models"]:
    bpw = m.get("bits_per_weight")
    g = lambda *ks: next((m[k] for k in ks if k in m), float("nan"))
    print(f"| {os.path.basename(m['model'])} | {'-' if bpw is None else f'{bpw:.3f}'} "
          f"| {g('ppl'):.3f} | {g('kld_mean'):.4f} ± {g('kld_stderr'):.4f} "
          f"| {g('kld_median'):.4f} | {g('kld_p99'):.3f} | {100 * g('top1'):.1f}% | {100 * g('rms_dp'):.1f}% |")
PYEOF
}

step_w4() {
  quantize w4-rtn --scheme w4g128
  gptq w4-gptq-r4 --scheme w4g128 --rotate online
  compare w4 w4-rtn w4-gptq-r4
}

step_llamacpp() {
  local bin
  bin="$("$ROOT/scripts/build-llamacpp.sh")"
  export LD_LIBRARY_PATH="$bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  quantize base-f32.gguf --scheme f32 --export gguf
  if [ ! -f "$WORK/imatrix.gguf" ]; then
    "$bin/llama-imatrix" -m "$WORK/base-f32.gguf" -f "$CALIB" -o "$WORK/imatrix.gguf" \
      --chunks "$CALIB_SEQS" -c "$CALIB_LEN" >"$WORK/imatrix.log" 2>&1
  fi
  local t l
  for t in Q3_K_M Q2_K; do
    l=$(echo "$t" | tr 'A-Z' 'a-z')
    [ -f "$WORK/$l.gguf" ] || "$bin/llama-quantize" "$WORK/base-f32.gguf" "$WORK/$l.gguf" "$t" \
      >"$WORK/$l.log" 2>&1
    [ -f "$WORK/$l-imat.gguf" ] || "$bin/llama-quantize" --imatrix "$WORK/imatrix.gguf" \
      "$WORK/base-f32.gguf" "$WORK/$l-imat.gguf" "$t" >"$WORK/$l-imat.log" 2>&1
  done
}

step_lowbits() {
  step_llamacpp
  gptq w3-gptq-r4 --scheme w3g128 --rotate online
  gptq w2-gptq-r4 --scheme w2g64 --rotate online
  # Gemma-3-270M's 640-wide matrices are not multiples of 256, so llama.cpp falls back from
  # Q3_K / Q2_K to Q4_0 / Q5_x on most of them: its files land near 4.5 bpw, so lowbit's w4g128
  # (from step w4) is in the table too, as the equal-or-fewer-bits comparison.
  gptq w4-gptq-r4 --scheme w4g128 --rotate online
  compare lowbits w3-gptq-r4 w2-gptq-r4 w4-gptq-r4 q3_k_m.gguf q3_k_m-imat.gguf q2_k.gguf q2_k-imat.gguf
}

step_w8() {
  # int8 per-channel weights (w8 = int8_channel_sym), alone and with dynamic per-token int8
  # activations (W8A8), plain, with SmoothQuant alpha 0.5, and with the down projections (whose
  # inputs, after GeGLU, carry Gemma's largest activation outliers) left in full precision.
  local s05=(--smooth 0.5 --calib "$CALIB" --calib-seqs "$CALIB_SEQS" --calib-len "$CALIB_LEN")
  quantize w8 --scheme w8
  quantize w8a8 --scheme w8 --act int8
  quantize w8a8-s05 --scheme w8 --act int8 "${s05[@]}"
  quantize w8a8-s05-nodown --scheme w8 --act int8 "${s05[@]}" --ignore 'mlp\.down_proj'
  local a
  for a in 0.6 0.7 0.85; do
    quantize "w8a8-s${a/./}" --scheme w8 --act int8 --smooth "$a" --calib "$CALIB" \
      --calib-seqs "$CALIB_SEQS" --calib-len "$CALIB_LEN"
  done
  # FP8 e4m3 per-channel weights (fp8 = fp8_e4m3_channel), alone and with per-token FP8 activations.
  quantize fp8 --scheme fp8
  quantize fp8a8 --scheme fp8 --act fp8
  quantize fp8a8-nodown --scheme fp8 --act fp8 --ignore 'mlp\.down_proj'
  compare w8 w8 w8a8 w8a8-s05 w8a8-s06 w8a8-s07 w8a8-s085 w8a8-s05-nodown fp8 fp8a8 fp8a8-nodown
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(w4 lowbits w8)
for s in "${steps[@]}"; do
  case "$s" in
    w4|lowbits|llamacpp|w8) "step_$s" ;;
    *) echo "bench-quality: unknown step $s (w4, lowbits, llamacpp, w8)" >&2; exit 2 ;;
  esac
done
