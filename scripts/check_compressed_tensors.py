#!/usr/bin/env python3
"""Decompress a `lowbit quantize` output with PyPI compressed-tensors and compare each weight with
lowbit's dequantization rule (docs/FORMAT.md) evaluated independently in numpy.

Usage: PYTHON=... $PYTHON scripts/check_compressed_tensors.py OUT_DIR
Needs torch, safetensors, numpy and compressed-tensors (not run in CI: torch is heavy).
Integer formats must match bit for bit (compressed-tensors computes in the scale dtype, so
lowbit's exact f32 products are rounded to that dtype before comparing).
NVFP4 / MXFP4 (`nvfp4-pack-quantized`, `mxfp4-pack-quantized`): compressed-tensors unpacks the
E2M1 codes to bf16, computes scale / global_scale in f32 (NVFP4) or 2^(e-127) in bf16 (MXFP4),
multiplies and rounds to bf16. lowbit computes e2m1 * (e4m3 / global_scale) in f32 (exactly
what its loader does); rounded to bf16 the two must agree bit for bit."""
import json
import sys

import numpy as np
import torch
from safetensors.torch import load_file
from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
from compressed_tensors.quantization import QuantizationScheme

E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], dtype=np.float32)


def e4m3_to_f32(b: np.ndarray) -> np.ndarray:
    """F8_E4M3FN bytes (bias 7, no infinities) to f32, independent of torch."""
    b = b.astype(np.int32)
    sign = np.where(b & 0x80, -1.0, 1.0)
    e = (b >> 3) & 0xF
    m = b & 0x7
    v = np.where(e == 0, m / 8.0 * 2.0 ** -6, (1 + m / 8.0) * 2.0 ** (e - 7.0))
    v = np.where((e == 0xF) & (m == 0x7), np.nan, v)
    return (sign * v).astype(np.float32)


def check_fp4(sd, fmt: str, scheme) -> int:
    """Decompress NVFP4 / MXFP4 modules with compressed-tensors and compare to lowbit's rule."""
    if fmt == "nvfp4-pack-quantized":
        from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor as C
    else:
        from compressed_tensors.compressors.mxfp4.base import MXFP4PackedCompressor as C
    if qc["format"] == "int-quantized":
        return check_int_quantized(sd, scheme)
    modules = sorted(k[: -len(".weight_packed")] for k in sd if k.endswith(".weight_packed"))
    worst = 0.0
    worst_rel_f32 = 0.0
    for m in modules:
        local = {k[len(m) + 1 :]: v for k, v in sd.items() if k.startswith(m + ".")}
        ref = C.decompress(local, scheme)["weight"]
        packed = local["weight_packed"].numpy()
        rows, half = packed.shape
        codes = np.stack([packed & 0x0F, packed >> 4], axis=2).reshape(rows, half * 2)
        raw = local["weight_scale"]
        if fmt == "nvfp4-pack-quantized":
            gs = np.float32(local["weight_global_scale"].float().item())
            scale = e4m3_to_f32(raw.view(torch.uint8).numpy()) / gs
        else:
            scale = np.ldexp(np.float32(1.0), raw.numpy().astype(np.int32) - 127).astype(np.float32)
        gsize = codes.shape[1] // scale.shape[1]
        mine = E2M1[codes] * np.repeat(scale, gsize, axis=1)
        mine_t = torch.from_numpy(mine)
        diff = (mine_t.to(ref.dtype).float() - ref.float()).abs().max().item()
        # How far the bf16 result is from lowbit's f32 values (bf16 rounding: <= 2^-9 relative).
        rel = ((mine_t - ref.float()).abs() / mine_t.abs().clamp(min=1e-30)).max().item()
        worst = max(worst, diff)
        worst_rel_f32 = max(worst_rel_f32, rel)
        print(f"{m:50s} {rows}x{half * 2} {str(ref.dtype):14s} max |lowbit - compressed_tensors| = {diff:.3g}")
    print(
        f"{len(modules)} modules ({fmt}), worst difference at {ref.dtype if modules else '-'} {worst:.3g}: "
        f"{'BIT-EXACT' if worst == 0 else 'MISMATCH'}; compressed-tensors' bf16 output vs lowbit's f32: "
        f"max relative difference {worst_rel_f32:.3g} (bf16 rounding)"
    )
    return 0 if worst == 0 and modules else 1


def unpack_rows(words: np.ndarray, bits: int, n: int) -> np.ndarray:
    """lowbit's layout: per row, code i at stream bits [i*bits, (i+1)*bits), LSB first."""
    w = words.astype(np.uint32).view(np.uint32)
    bitstream = np.unpackbits(w.view(np.uint8).reshape(w.shape[0], -1), axis=1, bitorder="little")
    bitstream = bitstream[:, : n * bits].reshape(w.shape[0], n, bits)
    return (bitstream * (1 << np.arange(bits))).sum(axis=2).astype(np.int32)


def check_int_quantized(sd, scheme) -> int:
    """int-quantized (W8A8): I8 `weight` times `weight_scale`, decompressed by compressed-tensors'
    IntQuantizationCompressor and compared to codes * scale in numpy (rounded to the scale dtype)."""
    from compressed_tensors.compressors.naive_quantized.base import IntQuantizationCompressor

    modules = sorted(k[: -len(".weight")] for k, v in sd.items() if k.endswith(".weight") and v.dtype == torch.int8)
    worst = 0
    for m in modules:
        local = {k[len(m) + 1 :]: v for k, v in sd.items() if k.startswith(m + ".")}
        ref = IntQuantizationCompressor.decompress(local, scheme)["weight"]
        codes = local["weight"].numpy().astype(np.float32)
        rows, cols = codes.shape
        scale = local["weight_scale"].float().numpy()
        groups = scale.shape[-1] if scale.ndim == 2 else 1
        s = np.repeat(scale.reshape(rows, groups) if scale.size > 1 else np.full((rows, 1), scale.item()), cols // groups, axis=1)
        mine_t = torch.from_numpy(codes * s.astype(np.float32)).to(ref.dtype)
        diff = (mine_t.float() - ref.float()).abs().max().item()
        worst = max(worst, diff)
        print(f"{m:50s} {rows}x{cols} {str(ref.dtype):14s} max |lowbit - compressed_tensors| = {diff:.3g}")
    print(f"{len(modules)} int-quantized modules, worst difference {worst:.3g}: {'BIT-EXACT' if worst == 0 else 'MISMATCH'}")
    return 0 if worst == 0 and modules else 1


def main(out_dir: str) -> int:
    cfg = json.load(open(f"{out_dir}/config.json"))
    qc = cfg["quantization_config"]
    group = next(iter(qc["config_groups"].values()))
    scheme = QuantizationScheme(targets=group["targets"], weights=group["weights"])
    wa = group["weights"]
    bits = wa["num_bits"]
    sd = load_file(f"{out_dir}/model.safetensors")
    if qc["format"] in ("nvfp4-pack-quantized", "mxfp4-pack-quantized"):
        return check_fp4(sd, qc["format"], scheme)
    if qc["format"] == "int-quantized":
        return check_int_quantized(sd, scheme)
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
