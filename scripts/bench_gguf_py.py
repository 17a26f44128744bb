#!/usr/bin/env python3
"""Throughput of gguf-py's numpy quantizers, for the lowbit/gguf-py ratios in BENCHMARKS.md.

Measures `gguf.quants.quantize` and `gguf.quants.dequantize` on 256 rows x 4096 values (4 MiB
of f32, the size crates/lowbit-formats/benches/formats.rs uses) of weight-like data (Gaussian,
sd 0.02, one value in 512 ten times larger) for Q8_0, Q4_0 and MXFP4, and dequantize for Q4_K and
IQ4_XS (gguf-py has no quantizer for those; their input is random bytes with sane f16 scales).
GB/s = 4 MiB of f32 (input of quantize, output of dequantize) / median wall time of --repeat
runs. numpy runs these element-wise on one core.

Usage: PYTHON=... $PYTHON scripts/bench_gguf_py.py [--repeat 7] [--json OUT]
Benchmark with OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unset in that command only, e.g.
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $PYTHON scripts/bench_gguf_py.py
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import statistics
import time

import numpy as np

from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

ROWS, COLS = 256, 4096


def weights(rng: np.random.Generator) -> np.ndarray:
    x = rng.normal(0.0, 0.02, size=(ROWS, COLS)).astype(np.float32)
    flat = x.reshape(-1)
    flat[7::512] *= 10.0
    return x


def q4_k_bytes(rng: np.random.Generator) -> np.ndarray:
    """Random Q4_K super-blocks (144 bytes each) with d = dmin = 0.01 as f16."""
    blocks = ROWS * COLS // 256
    b = rng.integers(0, 256, size=(blocks, 144), dtype=np.uint8)
    scale = np.frombuffer(np.float16(0.01).tobytes(), dtype=np.uint8)
    b[:, 0:2] = scale
    b[:, 2:4] = scale
    return b.reshape(ROWS, COLS // 256 * 144)


def iq4_xs_bytes(rng: np.random.Generator) -> np.ndarray:
    """Random IQ4_XS super-blocks (136 bytes each) with d = 0.001 as f16."""
    blocks = ROWS * COLS // 256
    b = rng.integers(0, 256, size=(blocks, 136), dtype=np.uint8)
    b[:, 0:2] = np.frombuffer(np.float16(0.001).tobytes(), dtype=np.uint8)
    return b.reshape(ROWS, COLS // 256 * 136)


def median_seconds(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--rows", type=int, default=256,
                    help="rows of 4096 values (64 = 1 MiB, L2-resident; the Rust bench: LOWBIT_BENCH_ROWS)")
    args = ap.parse_args()
    global ROWS
    ROWS = args.rows

    rng = np.random.default_rng(20240612)
    x = weights(rng)
    nbytes = x.size * 4
    results = []

    def record(fmt: str, op: str, seconds: float) -> None:
        gbs = nbytes / seconds / 1e9
        results.append({"format": fmt, "op": op, "seconds": seconds, "gb_per_s": gbs})
        print(f"{fmt:6s} {op:10s} {gbs:8.4f} GB/s  ({seconds * 1e3:8.2f} ms median of {args.repeat})")

    for ty in (T.Q8_0, T.Q4_0, T.MXFP4):
        packed = quantize(x, ty)
        record(ty.name.lower(), "quantize", median_seconds(lambda: quantize(x, ty), args.repeat))
        record(ty.name.lower(), "dequantize", median_seconds(lambda: dequantize(packed, ty), args.repeat))
    q4k = q4_k_bytes(rng)
    record("q4_k", "dequantize", median_seconds(lambda: dequantize(q4k, T.Q4_K), args.repeat))
    iq4xs = iq4_xs_bytes(rng)
    record("iq4_xs", "dequantize", median_seconds(lambda: dequantize(iq4xs, T.IQ4_XS), args.repeat))

    info = {
        "gguf": importlib.metadata.version("gguf"),
        "numpy": np.__version__,
        "rows": ROWS,
        "cols": COLS,
        "repeat": args.repeat,
    }
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [
            {k: p.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for p in threadpool_info()
        ]
    except ImportError:
        info["blas"] = "threadpoolctl not installed"
    print(json.dumps(info))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
