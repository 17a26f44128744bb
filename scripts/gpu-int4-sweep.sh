#!/usr/bin/env bash
# INT4 GEMV investigation on the GPU machine, in one call (build here with
# `scripts/gpu-suite.sh --build-only`, carry dist/). Runs the lowbit-cuda tests, dumps PTX and
# the ptxas resource report of the INT4 kernels, then measures the row-major INT4 kernel against
# the tiled streaming kernel (int4g128t) at batch 1..16 with tuning variants, and cuBLAS bf16
# GEMV/GEMM through PyTorch on the same shapes as the peer. Logs go to $OUT when set.
set -uo pipefail
cd "$(dirname "$0")/.."
D=dist/gpu
OUT=${OUT:-/tmp}
export LOWBIT_NVRTC_LIB=${LOWBIT_NVRTC_LIB:-/usr/local/cuda/lib64/libnvrtc.so.13}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
date -u +"date: %Y-%m-%dT%H:%MZ"
if [[ -z "${SKIP_TESTS:-}" ]]; then
    for t in "$D"/lowbit-cuda-tests-*; do "$t" --test-threads=1 2>&1 | grep -E "^test |test result|SKIP|panicked|rel L2|grid" ; done
fi
mkdir -p "$OUT/ptx"
LOWBIT_DUMP_PTX="$OUT/ptx" "$D/lowbit" gpu-bench --format int4g128t --batches 1 --decode-tokens 0 --reps 3 > /dev/null 2>&1
/usr/local/cuda/bin/ptxas -arch=sm_90 -v "$OUT/ptx/gemv.sm_90.ptx" -o /dev/null 2>&1 |
    grep -A4 -E "gemv_int4t_(smem_)?b(1|8|16)'|gemv_int4_g128_b1'" | grep -E "Compiling|Used|spill" | tee "$OUT/ptxas.txt"
bench() { "$D/lowbit" gpu-bench --synthetic llama-3-8b --device cuda "$@" 2>&1 | grep -vE "^(device|format) "; }
echo "== row-major vs tiled: fused decode step, programmatic dependent launch (defaults)"
bench --format int4g128,int4g128t,q4_k,q8_0,bf16 --batches 1,8,16 --decode-tokens 128 | tee "$OUT/main.txt"
echo "== unfused step (one kernel per op)"
LOWBIT_DECODE_UNFUSED=1 bench --format int4g128 --batches 1 --decode-tokens 128 | grep decode
echo "== PDL off"
LOWBIT_PDL=0 bench --format int4g128 --batches 1 --decode-tokens 128 | grep decode
python3 - <<'PY' 2>&1 | tee "$OUT/torch.txt" || echo "(no PyTorch)"
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
    for b in (1, 16):
        v = torch.randn(k, b, device="cuda", dtype=torch.bfloat16)
        ms = bench(lambda: [w @ v for w in ws]) / len(ws)
        print(f"cuBLAS bf16 {n}x{k} batch {b}: {ms*1e3:.1f} us, {2*n*k/(ms*1e-3)/1e9:.0f} GB/s ({100*2*n*k/(ms*1e-3)/1e9/copy:.1f}% of copy)")
PY
