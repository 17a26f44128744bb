#!/usr/bin/env bash
# Run the GPU test suite and the synthetic benchmarks on a CUDA machine in one command.
#
# Where Rust is installed:   scripts/gpu-suite.sh
# Where it is not (the GPU machine): build here first with
#   scripts/gpu-suite.sh --build-only     # puts dist/gpu/{lowbit,lowbit-cuda-tests-*}
# then on the GPU machine run `scripts/gpu-suite.sh --prebuilt` with dist/ carried along.
# Results go to stdout; set OUT to also keep a log there.
set -euo pipefail
cd "$(dirname "$0")/.."
DIST=dist/gpu
mode=${1:-}

if [[ "$mode" != "--prebuilt" ]]; then
    cargo build --release -p lowbit
    rm -rf "$DIST" && mkdir -p "$DIST"
    # Debug info stripped: dist/ travels to the GPU machine (64 MiB limit).
    strip -o "$DIST/lowbit" "${CARGO_TARGET_DIR:-target}/release/lowbit"
    # Test executables of lowbit-cuda, built with the same profile as the benchmark binary.
    cargo test --release -p lowbit-cuda --no-run --message-format=json 2>/dev/null |
        sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | while read -r exe; do
            strip -o "$DIST/lowbit-cuda-tests-$(basename "$exe")" "$exe"
        done
    # The small real checkpoint and text the real-model checks use (the GPU machine has no
    # shared data folder).
    mkdir -p "$DIST/data/models" "$DIST/data/text"
    cp ../shared/data/models/stories260K.bin ../shared/data/models/tok512.bin "$DIST/data/models/"
    cp ../shared/data/text/wikitext-2-raw-test.txt "$DIST/data/text/"
    [[ "$mode" == "--build-only" ]] && { ls -la "$DIST"; exit 0; }
fi
# Test binaries find fixtures and data through these (they were built elsewhere).
export LOWBIT_REPO=$PWD
if [[ -z "${LOWBIT_DATA:-}" ]]; then
    if [[ -d "$DIST/data" ]]; then export LOWBIT_DATA=$PWD/$DIST/data; else export LOWBIT_DATA=$PWD/../shared/data; fi
fi

log=${OUT:-/tmp}/gpu-suite.log
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    date -u +"date: %Y-%m-%dT%H:%MZ"
    # NVRTC: prefer the toolkit's; LOWBIT_NVRTC_LIB overrides.
    if [[ -z "${LOWBIT_NVRTC_LIB:-}" ]]; then
        for f in /usr/local/cuda/lib64/libnvrtc.so.13 /usr/local/cuda/lib64/libnvrtc.so; do
            [[ -f "$f" ]] && { export LOWBIT_NVRTC_LIB=$f; break; }
        done
    fi
    echo "== tests"
    [[ -n "${SKIP_TESTS:-}" ]] ||
    for t in "$DIST"/lowbit-cuda-tests-*; do "$t" --test-threads=1; done
    echo "== real checkpoint on the GPU vs the CPU (stories260K)"
    stories=$LOWBIT_DATA/models/stories260K.bin
    wiki=$LOWBIT_DATA/text/wikitext-2-raw-test.txt
    "$DIST/lowbit" run --model "$stories" -n 48 --device cuda
    for dev in cpu cuda; do
        "$DIST/lowbit" eval ppl --model "$stories" --text "$wiki" --ctx 256 --chunks 16 --device $dev | tail -1
    done
    "$DIST/lowbit" bench --model "$stories" -p 256 -n 128 -r 3 --device cuda
    echo "== GEMV bandwidth and synthetic decode"
    # FORMATS / INT4_KERNELS narrow the run (INT4_KERNELS=all compares every INT4 GEMV kernel).
    "$DIST/lowbit" gpu-bench --synthetic llama-3-8b --format "${FORMATS:-int4g128,q4_k,q8_0,bf16}" \
        --batches 1,2,4,8 --decode-tokens 128 --device cuda ${INT4_KERNELS:+--int4-kernels "$INT4_KERNELS"}
    # cuBLAS bf16 GEMV reference through PyTorch, if present.
    python3 - <<'PY' || echo "(no PyTorch: cuBLAS reference skipped)"
import torch
x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
def bench(f, n=20):
    for _ in range(3): f()
    s = [torch.cuda.Event(enable_timing=True) for _ in range(2 * n)]
    for i in range(n): s[2*i].record(); f(); s[2*i+1].record()
    torch.cuda.synchronize(); t = sorted(s[2*i].elapsed_time(s[2*i+1]) for i in range(n)); return t[n // 2]
copy = 2 * x.numel() / (bench(lambda: y.copy_(x)) * 1e-3) / 1e9
print(f"torch copy: {copy:.0f} GB/s")
for n, k in [(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336)]:
    ws = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(max(2, (256 << 20) // (2 * n * k)))]
    v = torch.randn(k, 1, device="cuda", dtype=torch.bfloat16)
    ms = bench(lambda: [w @ v for w in ws]) / len(ws)
    print(f"cuBLAS bf16 GEMV {n}x{k}: {ms*1e3:.1f} us, {2*n*k/(ms*1e-3)/1e9:.0f} GB/s ({100*2*n*k/(ms*1e-3)/1e9/copy:.1f}% of copy)")
PY
} 2>&1 | tee "$log"
