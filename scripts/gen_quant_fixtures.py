#!/usr/bin/env python3
"""Generate the quantization (encoder) fixtures of crates/lowbit-formats/tests/fixtures/quant/.

For every GGML type gguf-py can quantize (those with a `quantize_blocks`), this writes
`<type>.bin`: cases back to back, each the f32 input (little-endian) followed by the bytes
gguf-py's `gguf.quants.quantize` produces for it. `index.json` says where each case lies.
lowbit's encoders must reproduce these bytes exactly.

Cases (seeded): normal data at several scales, an all-zero block, huge values (f16 scale
overflow), tiny values (f16-subnormal scales), f32 subnormals, a constant block, one block with
one outlier, values just below powers of two (MXFP4 exponent edge), exact ties (x.5 grid points),
and real weights: rows of Gemma-3-270M's blk.0.ffn_down (Q6_K, dequantized to f32) when the
model is cached (--gemma PATH, or $LOWBIT_CACHE/models/gemma-3-270m-q4_k_m.gguf).

Types gguf-py cannot quantize (IQ4_XS, IQ4_NL and the k-quants) get the same cases from
llama.cpp's own reference quantizers (`quantize_row_<type>_ref`, no importance matrix), called
through ctypes in the libggml-base that PyPI's llama-cpp-python wheel ships, when that package
is installed. Their index entries carry "reference": "llama.cpp" and the library's version.

The Gemma rows are also written as `gemma_rows.f32` for the round-trip tests of the k-quants,
which gguf-py cannot quantize.

Usage: PYTHON=... $PYTHON scripts/gen_quant_fixtures.py [--out DIR] [--gemma PATH]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import warnings

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

SEED = 20240612

TYPES = [T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.TQ1_0, T.TQ2_0, T.MXFP4]
# Encoded by llama.cpp's reference quantizers (llama-cpp-python's libggml-base), when installed.
LLAMA_TYPES = [T.IQ4_XS, T.IQ4_NL, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]


def llama_cpp_quantizer():
    """(quantize(x, qtype) -> bytes, version) from llama-cpp-python's libggml-base, or None."""
    try:
        import ctypes
        import glob

        import llama_cpp
    except ImportError:
        print("llama-cpp-python not installed: skipping llama.cpp reference cases")
        return None
    libdir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    libs = sorted(glob.glob(os.path.join(libdir, "libggml-base.so*")))
    if not libs:
        print(f"no libggml-base in {libdir}: skipping llama.cpp reference cases")
        return None
    lib = ctypes.CDLL(libs[0])

    def run(x: np.ndarray, qtype: T) -> np.ndarray:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        fn = getattr(lib, f"quantize_row_{qtype.name.lower().replace('_k', '_K')}_ref")
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        fn.restype = None
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.zeros(x.size // block * size, dtype=np.uint8)
        fn(x.ctypes.data, out.ctypes.data, x.size)
        return out

    return run, importlib.metadata.version("llama_cpp_python")


def cases(rng: np.random.Generator, block: int, gemma: np.ndarray | None) -> list[tuple[str, np.ndarray]]:
    nb = max(1, 256 // block)  # cases are whole 256-element chunks so every type can take them
    n = nb * block
    out = []
    out.append(("normal", rng.standard_normal(4 * n).astype(np.float32)))
    out.append(("scaled", (rng.standard_normal(4 * n) * np.repeat(10.0 ** rng.uniform(-4, 4, 4 * nb), block)).astype(np.float32)))
    out.append(("zero", np.zeros(n, np.float32)))
    out.append(("huge", (rng.standard_normal(n) * 3e37).astype(np.float32)))
    out.append(("tiny", (rng.standard_normal(n) * 1e-6).astype(np.float32)))
    out.append(("subnormal", (rng.standard_normal(n) * 1e-39).astype(np.float32)))
    out.append(("constant", np.full(n, -0.375, np.float32)))
    x = (rng.standard_normal(n) * 0.02).astype(np.float32)
    x[rng.integers(0, n)] = 25.0
    out.append(("outlier", x))
    # |x| just below powers of two: floor(log2) edge of the MXFP4 exponent.
    p = 2.0 ** rng.integers(-20, 20, n)
    out.append(("pow2_edge", (p * np.float32(1 - 2**-24) * rng.choice([-1, 1], n)).astype(np.float32)))
    # values on a half-integer grid, so x * id lands on rounding ties
    out.append(("ties", (rng.integers(-16, 17, n) * 0.5).astype(np.float32)))
    if gemma is not None:
        out.append(("gemma_ffn_down", gemma))
    return out


def load_gemma(path: str | None) -> np.ndarray | None:
    if path is None:
        cache = os.environ.get("LOWBIT_CACHE", os.path.expanduser("~/.cache/lowbit"))
        path = os.path.join(cache, "models", "gemma-3-270m-q4_k_m.gguf")
    if not os.path.exists(path):
        print(f"no Gemma model at {path}: skipping real-weight cases")
        return None
    reader = gguf.GGUFReader(path)
    t = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
    cols = int(t.shape[0])
    row_bytes = cols // 256 * 210
    raw = np.asarray(t.data).reshape(-1)[: 2 * row_bytes].view(np.uint8)
    return dequantize(raw, T(t.tensor_type)).reshape(-1).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "crates", "lowbit-formats", "tests", "fixtures", "quant"))
    ap.add_argument("--gemma", default=None)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    gemma = load_gemma(args.gemma)
    if gemma is not None:
        gemma.astype("<f4").tofile(os.path.join(args.out, "gemma_rows.f32"))

    index = {
        "generator": "scripts/gen_quant_fixtures.py",
        "seed": SEED,
        "gguf": importlib.metadata.version("gguf"),
        "numpy": np.__version__,
        "layout": "each case: elements f32 LE at f32_offset, then quant_len bytes at quant_offset",
        "cases": [],
    }
    llama = llama_cpp_quantizer()
    jobs = [(qtype, None) for qtype in TYPES]
    if llama is not None:
        jobs += [(qtype, llama) for qtype in LLAMA_TYPES]
    for qtype, ref in jobs:
        rng = np.random.default_rng(SEED + int(qtype))
        block, _ = gguf.GGML_QUANT_SIZES[qtype]
        blob = bytearray()
        for name, x in cases(rng, block, gemma):
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                if ref is None:
                    q = np.asarray(quantize(x.reshape(1, -1), qtype)).reshape(-1).view(np.uint8)
                else:
                    q = ref[0](x, qtype)
            f32_offset = len(blob)
            blob += x.astype("<f4").tobytes()
            quant_offset = len(blob)
            blob += q.tobytes()
            index["cases"].append({
                "type": qtype.name.lower(), "type_id": int(qtype), "case": name,
                "file": f"{qtype.name.lower()}.bin", "elements": int(x.size),
                "f32_offset": f32_offset, "quant_offset": quant_offset, "quant_len": int(q.size),
                **({} if ref is None else {"reference": "llama.cpp", "llama_cpp_python": ref[1]}),
            })
        with open(os.path.join(args.out, f"{qtype.name.lower()}.bin"), "wb") as f:
            f.write(blob)
    with open(os.path.join(args.out, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
    total = sum(os.path.getsize(os.path.join(args.out, p)) for p in os.listdir(args.out))
    print(f"wrote {len(index['cases'])} cases, {total} bytes, to {args.out}")


if __name__ == "__main__":
    main()
