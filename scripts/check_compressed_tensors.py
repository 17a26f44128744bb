#!/usr/bin/env python3
"""Decompress a `lowbit quantize` output with PyPI compressed-tensors and compare each weight with
lowbit's dequantization rule (docs/FORMAT.md) evaluated independently in numpy.

Usage: PYTHON=... $PYTHON scripts/check_compressed_tensors.py OUT_DIR
Needs torch, safetensors, numpy and compressed-tensors (not run in CI: torch is heavy).
Integer formats must match bit for bit (compressed-tensors computes in the scale dtype, so
lowbit's exact f32 products are rounded to that dtype before comparing)."""
import json
import sys

import numpy as np
import torch
from safetensors.torch import load_file
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.quantization import QuantizationScheme


def unpack_rows(words: np.ndarray, bits: int, n: int) -> np.ndarray:
    """lowbit's layout: per row, code i at stream bits [i*bits, (i+1)*bits), LSB first."""
    w = words.astype(np.uint32).view(np.uint32)
    bitstream = np.unpackbits(w.view(np.uint8).reshape(w.shape[0], -1), axis=1, bitorder="little")
    bitstream = bitstream[:, : n * bits].reshape(w.shape[0], n, bits)
    return (bitstream * (1 << np.arange(bits))).sum(axis=2).astype(np.int32)


def main(out_dir: str) -> int:
    cfg = json.load(open(f"{out_dir}/config.json"))
    qc = cfg["quantization_config"]
    group = next(iter(qc["config_groups"].values()))
    scheme = QuantizationScheme(targets=group["targets"], weights=group["weights"])
    wa = group["weights"]
    bits = wa["num_bits"]
    sd = load_file(f"{out_dir}/model.safetensors")
    modules = sorted(k[: -len(".weight_packed")] for k in sd if k.endswith(".weight_packed"))
    if qc["format"] != "pack-quantized" or not modules:
        print(f"nothing to check: format {qc['format']}")
        return 0
    worst = 0
    for m in modules:
        local = {k[len(m) + 1 :]: v for k, v in sd.items() if k.startswith(m + ".")}
        ref = PackedQuantizationCompressor.decompress(local, scheme)["weight"]
        rows, cols = [int(x) for x in local["weight_shape"]]
        codes = unpack_rows(local["weight_packed"].numpy(), bits, cols) - (1 << (bits - 1))
        scale = local["weight_scale"].float().numpy()
        groups = scale.shape[-1] if scale.ndim == 2 else 1
        gs = cols // groups
        s = np.repeat(scale.reshape(rows, groups) if scale.size > 1 else np.full((rows, 1), scale.item()), gs, axis=1)
        z = 0
        if "weight_zero_point" in local:
            zp = unpack_rows(local["weight_zero_point"].numpy().T.copy(), bits, rows).T - (1 << (bits - 1))
            z = np.repeat(zp, gs, axis=1)
        mine = ((codes - z).astype(np.float32) * s.astype(np.float32))
        mine_t = torch.from_numpy(mine).to(ref.dtype)
        diff = (mine_t.float() - ref.float()).abs().max().item()
        worst = max(worst, diff)
        print(f"{m:50s} {rows}x{cols} {str(ref.dtype):14s} max |lowbit - compressed_tensors| = {diff:.3g}")
    print(f"{len(modules)} modules, worst difference {worst:.3g}: {'BIT-EXACT' if worst == 0 else 'MISMATCH'}")
    return 0 if worst == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
