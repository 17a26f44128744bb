#!/usr/bin/env python3
"""Generate the dequantization fixtures of crates/lowbit-formats/tests/fixtures/.

For every GGML type lowbit decodes, this writes `<type>.bin` (cases back to back: the raw block
bytes, then the expected f32 values, little-endian) and one `index.json` that says where each
case lies. Expected values come from gguf-py's `gguf.quants.dequantize` (numpy), the reference
lowbit must match bit for bit.

Cases:
  quantized  seeded data quantized by gguf-py (only for types gguf-py can quantize): normal
             values, all-zero blocks, huge values (scales that overflow f16), tiny and subnormal
             values, constant blocks.
  random     random block bytes with scale fields replaced by chosen f16 values (normal, tiny,
             subnormal, zero, negative, huge, inf, NaN), so every code/bit pattern is exercised.

  gemma      (IQ4_XS only) rows of Gemma-3-270M's blk.0.ffn_down (dequantized from the model's
             Q6_K), encoded as IQ4_XS blocks by a simple numpy encoder in this script (per-32 absmax
             scales, nearest codebook entries), when the model is cached (--gemma PATH, or
             $LOWBIT_CACHE/models/gemma-3-270m-q4_k_m.gguf). These blocks only feed the decoder
             test; the encoder under test is lowbit's.

Q8_K cannot be dequantized by gguf-py; its expected values are `d * q` in f32, computed here
with numpy exactly as llama.cpp's dequantize_row_q8_K does.

Usage: PYTHON=... $PYTHON scripts/gen_format_fixtures.py [--out DIR] [--gemma PATH]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys

import numpy as np

import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

SEED = 20240611

# Byte offsets of the f16 scale fields in each block, so random blocks get chosen scales.
F16_SCALE_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.IQ4_NL: [0],
    T.IQ4_XS: [0],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
    T.TQ1_0: [52],
    T.TQ2_0: [64],
    T.MXFP4: [],  # E8M0 exponent byte: every value is valid, random bytes cover it
    T.F16: [],
    T.BF16: [],
    T.F32: [],
    T.Q8_K: [],  # f32 scale, set separately
}

# Types gguf-py can quantize (checked against gguf-py 0.19); the others get random blocks only.
QUANTIZABLE = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.TQ1_0, T.TQ2_0, T.MXFP4]
# New types go at the end: the cases share one seeded stream, so earlier files stay unchanged.
RANDOM_ONLY = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_K, T.IQ4_NL, T.IQ4_XS]
IQ4NL_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.float32)


def block_info(qtype: T) -> tuple[int, int]:
    return gguf.GGML_QUANT_SIZES[qtype]


def reference_dequantize(qtype: T, raw: np.ndarray) -> np.ndarray:
    if qtype == T.Q8_K:
        blocks = raw.reshape(-1, 292)
        d = blocks[:, :4].copy().view(np.float32)  # (n, 1)
        q = blocks[:, 4:260].copy().view(np.int8).astype(np.float32)
        return (d * q).reshape(-1).astype(np.float32)
    out = dequantize(raw, qtype)
    return np.asarray(out, dtype=np.float32).reshape(-1)


def quantized_data(rng: np.random.Generator, block: int, n_blocks: int) -> np.ndarray:
    """Rows of `block` values per block, each block of a different kind."""
    kinds = [
        lambda: rng.standard_normal(block),
        lambda: np.zeros(block),
        lambda: rng.standard_normal(block) * 1e6,  # scale overflows f16 -> inf
        lambda: rng.standard_normal(block) * 3e4,
        lambda: rng.standard_normal(block) * 1e-6,  # f16 scale is subnormal
        lambda: rng.standard_normal(block) * 1e-40,  # f32 subnormal inputs
        lambda: np.full(block, 0.75),
        lambda: np.full(block, -2.5),
        lambda: rng.uniform(-1, 1, block) * 10.0 ** rng.uniform(-4, 2),
        lambda: np.where(rng.random(block) < 0.8, 0.0, rng.standard_normal(block)),
    ]
    blocks = [kinds[i % len(kinds)]() if i < len(kinds) else kinds[rng.integers(len(kinds))]() for i in range(n_blocks)]
    return np.concatenate(blocks).astype(np.float32)


def chosen_f16_scales(rng: np.random.Generator, n: int) -> np.ndarray:
    """f16 scales: mostly ordinary magnitudes, plus every edge case at least once."""
    special = np.array(
        [0.0, -0.0, 6e-8, 1e-6, 65504.0, -65504.0, np.inf, -np.inf, np.nan, 1.0, -1.0], dtype=np.float16
    )
    ordinary = (rng.standard_normal(n) * 10.0 ** rng.uniform(-4, 1, n)).astype(np.float16)
    ordinary[: min(n, len(special))] = special[: min(n, len(special))]
    return ordinary[rng.permutation(n)]


def random_blocks(rng: np.random.Generator, qtype: T, n_blocks: int) -> np.ndarray:
    _, type_size = block_info(qtype)
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in F16_SCALE_FIELDS[qtype]:
        raw[:, off : off + 2] = chosen_f16_scales(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    if qtype == T.Q8_K:
        d = (rng.standard_normal(n_blocks) * 10.0 ** rng.uniform(-6, 0, n_blocks)).astype(np.float32)
        d[:4] = [0.0, np.float32(1e-42), np.inf, np.nan][: min(4, n_blocks)]
        raw[:, 0:4] = d.view(np.uint8).reshape(n_blocks, 4)
    if qtype == T.MXFP4:
        raw[:4, 0] = [0, 1, 254, 255][: min(4, n_blocks)]
    return raw.reshape(-1)


def iq4_xs_simple(x: np.ndarray) -> np.ndarray:
    """Valid IQ4_XS blocks (136 bytes per 256 values) for real weights, by a simple encoder:
    sub-block scale = signed absmax / -127, super-block d = -(largest scale) / 32 as f16, 6-bit
    sub-block scales round(scale / d) clamped to [-32, 31], codes = nearest of d * l * kvalues.
    Not llama.cpp's scale search: these blocks only exercise the decoder."""
    xb = x.astype(np.float32).reshape(-1, 8, 32)
    nsb = xb.shape[0]
    pick = np.abs(xb).argmax(axis=-1)[..., None]
    s = np.take_along_axis(xb, pick, axis=-1)[..., 0] / np.float32(-127.0)  # (nsb, 8)
    top = np.take_along_axis(s, np.abs(s).argmax(axis=-1)[:, None], axis=-1)[:, 0]
    d = (-top / np.float32(32.0)).astype(np.float16)
    df = d.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        ls = np.where(df[:, None] != 0, np.rint(s / df[:, None]), 0).clip(-32, 31).astype(np.int32)
    dl = df[:, None] * ls.astype(np.float32)  # (nsb, 8)
    err = np.abs(dl[..., None, None] * IQ4NL_VALUES - xb[..., None])  # (nsb, 8, 32, 16)
    codes = err.argmin(axis=-1).astype(np.uint8)
    out = np.zeros((nsb, 136), dtype=np.uint8)
    out[:, 0:2] = d.view(np.uint8).reshape(nsb, 2)
    u = (ls + 32).astype(np.uint16)
    scales_h = ((u >> 4) << (2 * np.arange(8, dtype=np.uint16))).sum(axis=-1).astype("<u2")
    out[:, 2:4] = scales_h.view(np.uint8).reshape(nsb, 2)
    lo = (u & 0xF).astype(np.uint8)
    out[:, 4:8] = lo[:, 0::2] | (lo[:, 1::2] << 4)
    out[:, 8:] = (codes[..., :16] | (codes[..., 16:] << 4)).reshape(nsb, 128)
    return out.reshape(-1)


def blocks_for(qtype: T) -> int:
    block, _ = block_info(qtype)
    # 32-element types get more blocks; k-quants are 256 values each.
    return 24 if block == 32 else (16 if block == 256 else 96)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "crates", "lowbit-formats", "tests", "fixtures"))
    ap.add_argument("--gemma", default=None, help="Gemma-3-270M GGUF for the IQ4_XS real-weight case")
    args = ap.parse_args()
    sys.path.insert(0, here)
    from gen_quant_fixtures import load_gemma  # same rows as the encoder fixtures

    gemma = load_gemma(args.gemma)
    os.makedirs(args.out, exist_ok=True)
    # Overflowing, inf and NaN scales are deliberate test cases.
    np.seterr(all="ignore")

    rng = np.random.default_rng(SEED)
    index = {
        "generator": "scripts/gen_format_fixtures.py",
        "seed": SEED,
        "gguf": importlib.metadata.version("gguf"),
        "numpy": np.__version__,
        "layout": "each case: quant_len raw bytes at quant_offset, then elements f32 LE at f32_offset",
        "cases": [],
    }
    total = 0
    for qtype in QUANTIZABLE + RANDOM_ONLY:
        block, type_size = block_info(qtype)
        n_blocks = blocks_for(qtype)
        cases = []
        if qtype in QUANTIZABLE:
            data = quantized_data(rng, block, n_blocks)
            raw = np.asarray(quantize(data, qtype)).view(np.uint8).reshape(-1)
            cases.append(("quantized", raw))
        cases.append(("random", random_blocks(rng, qtype, n_blocks)))
        if qtype == T.IQ4_XS and gemma is not None:
            cases.append(("gemma", iq4_xs_simple(gemma)))

        name = qtype.name.lower()
        payload = bytearray()
        for case, raw in cases:
            assert raw.size % type_size == 0, (name, case, raw.size)
            expected = reference_dequantize(qtype, raw)
            assert expected.size == raw.size // type_size * block, (name, case, expected.size)
            entry = {
                "type": name,
                "type_id": int(qtype.value),
                "case": case,
                "file": f"{name}.bin",
                "elements": int(expected.size),
                "quant_offset": len(payload),
                "quant_len": int(raw.size),
            }
            payload += raw.tobytes()
            entry["f32_offset"] = len(payload)
            payload += expected.astype("<f4").tobytes()
            index["cases"].append(entry)
        with open(os.path.join(args.out, f"{name}.bin"), "wb") as f:
            f.write(payload)
        total += len(payload)

    with open(os.path.join(args.out, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")
    print(f"wrote {len(index['cases'])} cases, {total} bytes, to {os.path.normpath(args.out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
