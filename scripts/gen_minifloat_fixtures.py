#!/usr/bin/env python3
"""Generate the minifloat cast fixtures of crates/lowbit-formats/tests/fixtures/minifloat/.

For each ml_dtypes format (float8_e4m3fn, float8_e5m2, float6_e2m3fn, float6_e3m2fn,
float4_e2m1fn, float8_e8m0fnu) this writes `<name>.bin`: n f32 inputs (little-endian) followed
by the n u8 codes ml_dtypes' `astype` gives for them. Inputs: every representable value (both
signs), the exact midpoints between neighbours and the f32 values one ulp either side of them,
values past the largest finite value, +-inf, NaN of both signs, f32 subnormals, zeros and seeded
random values over a wide exponent range. `index.json` lists the files.

Usage: PYTHON=... $PYTHON scripts/gen_minifloat_fixtures.py [--out DIR]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import warnings

import numpy as np
import ml_dtypes

SEED = 20240613
FORMATS = {
    "fp8_e4m3": ("float8_e4m3fn", 8),
    "fp8_e5m2": ("float8_e5m2", 8),
    "fp6_e2m3": ("float6_e2m3fn", 6),
    "fp6_e3m2": ("float6_e3m2fn", 6),
    "fp4_e2m1": ("float4_e2m1fn", 4),
    "ue8m0": ("float8_e8m0fnu", 8),
}


def inputs(dtype, bits: int, rng: np.random.Generator) -> np.ndarray:
    codes = np.arange(1 << bits, dtype=np.uint8)
    vals = codes.view(dtype).astype(np.float32)
    finite = np.unique(vals[np.isfinite(vals)])
    pos = np.unique(np.abs(finite))
    mids = ((pos[:-1].astype(np.float64) + pos[1:]) / 2).astype(np.float32)
    up = np.nextafter(mids, np.float32(np.inf))
    down = np.nextafter(mids, np.float32(0))
    big = pos.max()
    beyond = np.array([big * 1.01, big * 1.5, big * 2, big * 1e3, 3.0e38], np.float32)
    special = np.array([np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 1e-40, 1.17e-38], np.float32)
    nans = np.array([0x7FC00000, 0xFFC00000, 0x7F800001], np.uint32).view(np.float32)
    rand = (rng.standard_normal(512) * 2.0 ** rng.integers(-40, 40, 512)).astype(np.float32)
    rand_small = (rng.standard_normal(512) * pos[len(pos) // 2]).astype(np.float32)
    parts = [finite, pos, mids, up, down, beyond, special, rand, rand_small]
    x = np.concatenate([np.concatenate([p, -p]) for p in parts] + [nans])
    return x.astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "crates", "lowbit-formats", "tests", "fixtures", "minifloat"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(SEED)
    index = {
        "generator": "scripts/gen_minifloat_fixtures.py",
        "ml_dtypes": importlib.metadata.version("ml_dtypes"),
        "numpy": np.__version__,
        "layout": "n f32 LE inputs, then n u8 codes",
        "files": [],
    }
    for name, (dt_name, bits) in FORMATS.items():
        dtype = getattr(ml_dtypes, dt_name)
        x = inputs(dtype, bits, rng)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            codes = x.astype(dtype).view(np.uint8)
        with open(os.path.join(args.out, f"{name}.bin"), "wb") as f:
            f.write(x.astype("<f4").tobytes())
            f.write(codes.tobytes())
        index["files"].append({"format": name, "ml_dtypes": dt_name, "file": f"{name}.bin", "n": int(x.size)})
    with open(os.path.join(args.out, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
    print("wrote", [e["n"] for e in index["files"]], "cases to", args.out)


if __name__ == "__main__":
    main()
