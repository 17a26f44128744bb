#!/usr/bin/env python3
"""llm-compressor's GPTQ on a local HF model, as the baseline of issue 6's speed/memory comparison.

Three subcommands, run by scripts/bench-gptq-speed.sh: `gptq` and `same-tokens` in its own
llmcompressor venv, `base` under PYTHON (torch, gguf, transformers >= 5.23: 5.17's GGUF tokenizer
conversion splits words into characters).

  base --gguf FILE --out DIR
      Dequantize a GGUF (Gemma 3) to float32 through transformers + gguf-py and save it as an HF
      directory (config.json, tokenizer files, model.safetensors): the one base both tools
      quantize from. Written to DIR.tmp, then renamed, so an interrupted run leaves nothing.
      The GGUF's `tokenizer.ggml.add_bos_token` is carried over (transformers drops it).

  gptq --base DIR --calib TXT --seqs N --len L --out DIR [--threads 2] [--actorder static|none]
      llm-compressor `oneshot` with GPTQModifier(targets="Linear", scheme="W4A16",
      ignore=["lm_head"]) on the CPU, saved compressed (compressed-tensors pack-quantized).
      Calibration = the sequences `lowbit quantize --calib TXT --calib-seqs N --calib-len L` uses
      (crates/lowbit-cli/src/quantize.rs): the whole text tokenized without special tokens, the
      first N consecutive chunks of L tokens, each chunk's first token replaced by BOS. They are
      handed to oneshot already tokenized, in order (no shuffling, batch size 1). Prints one JSON
      line with the phase times; the caller measures wall time and peak RSS of the whole process.

  same-tokens --base DIR --text FILE --lowbit-json FILE
      Check that transformers (this venv's, with DIR's tokenizer) encodes FILE's text, BOS
      included, to the `prompt_ids` of `lowbit run --json -p TEXT`: both tools calibrate on the
      same token sequences only if their tokenizers agree.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time


def gguf_adds_bos(path: str) -> bool:
    import gguf

    field = gguf.GGUFReader(path).fields.get("tokenizer.ggml.add_bos_token")
    return bool(field is not None and field.parts[field.data[0]][0])


def add_bos_to_saved_tokenizer(d: str, bos: str, bos_id: int) -> None:
    """transformers' GGUF tokenizer conversion drops `tokenizer.ggml.add_bos_token`: put BOS back
    in the post-processor and the config, so that transformers and lowbit (which reads
    `add_bos_token`) both start every encoded text with it, as llama.cpp does with the GGUF."""
    path = os.path.join(d, "tokenizer.json")
    with open(path, encoding="utf-8") as f:
        t = json.load(f)
    t["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(t, f, ensure_ascii=False)
    path = os.path.join(d, "tokenizer_config.json")
    with open(path, encoding="utf-8") as f:
        c = json.load(f)
    c["add_bos_token"] = True
    with open(path, "w", encoding="utf-8") as f:
        json.dump(c, f, ensure_ascii=False, indent=2)


def cmd_base(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, name = os.path.split(os.path.abspath(args.gguf))
    tmp = args.out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    # The weights are plain f32 tensors now; drop the GGUF marker that makes transformers refuse
    # to save (and would make the directory look quantized to its readers).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if gguf_adds_bos(args.gguf):
        add_bos_to_saved_tokenizer(tmp, tok.bos_token, tok.bos_token_id)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def calibration_ids(tok, path: str, n: int, length: int) -> list[list[int]]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if len(ids) < n * length:
        raise SystemExit(f"{path}: {len(ids)} tokens, fewer than the {n} x {length} asked for")
    seqs = [ids[i * length:(i + 1) * length] for i in range(n)]
    # As lowbit: BOS replaces each sequence's first token when the tokenizer adds BOS by default.
    bos = tok.bos_token_id
    if bos is not None and tok("a")["input_ids"][0] == bos:
        for s in seqs:
            s[0] = bos
    return seqs


def cmd_gptq(args: argparse.Namespace) -> int:
    t_start = time.time()
    import torch

    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t_import = time.time()
    tok = AutoTokenizer.from_pretrained(args.base)
    seqs = calibration_ids(tok, args.calib, args.seqs, args.len)
    ds = Dataset.from_dict({"input_ids": seqs, "attention_mask": [[1] * len(s) for s in seqs]})
    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    t_load = time.time()

    recipe = GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"],
                          actorder=None if args.actorder == "none" else args.actorder)
    tmp = args.out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    oneshot(model=model, recipe=recipe, dataset=ds, max_seq_length=args.len,
            num_calibration_samples=args.seqs, shuffle_calibration_samples=False, batch_size=1)
    t_quant = time.time()
    model.save_pretrained(tmp, save_compressed=True)
    tok.save_pretrained(tmp)
    shutil.rmtree(args.out, ignore_errors=True)
    os.replace(tmp, args.out)
    t_save = time.time()

    import llmcompressor
    print(json.dumps({
        "llmcompressor": llmcompressor.__version__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "sequences": args.seqs,
        "tokens_per_sequence": args.len,
        "actorder": args.actorder,
        "import_s": round(t_import - t_start, 2),
        "load_s": round(t_load - t_import, 2),
        "quantize_s": round(t_quant - t_load, 2),
        "save_s": round(t_save - t_quant, 2),
    }))
    return 0


def cmd_same_tokens(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.base)
    with open(args.text, encoding="utf-8") as f:
        ids = tok(f.read())["input_ids"]
    with open(args.lowbit_json, encoding="utf-8") as f:
        theirs = json.load(f)["prompt_ids"]
    if ids != theirs:
        first = next((i for i, (a, b) in enumerate(zip(ids, theirs)) if a != b),
                     min(len(ids), len(theirs)))
        raise SystemExit(f"tokenizers disagree on {args.text}: transformers {len(ids)} ids, lowbit "
                         f"{len(theirs)}; first difference at {first}: {ids[first:first + 4]} vs "
                         f"{theirs[first:first + 4]}")
    print(f"same tokens: {len(ids)} ids (BOS {ids[0]})", file=sys.stderr)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("base", help="GGUF -> f32 HF directory")
    b.add_argument("--gguf", required=True)
    b.add_argument("--out", required=True)
    g = sub.add_parser("gptq", help="llm-compressor GPTQ W4A16 g128")
    g.add_argument("--base", required=True)
    g.add_argument("--calib", required=True)
    g.add_argument("--seqs", type=int, default=128)
    g.add_argument("--len", type=int, default=512)
    g.add_argument("--out", required=True)
    g.add_argument("--threads", type=int, default=2)
    g.add_argument("--actorder", choices=["static", "none"], default="static")
    c = sub.add_parser("same-tokens", help="compare with lowbit's tokenization")
    c.add_argument("--base", required=True)
    c.add_argument("--text", required=True)
    c.add_argument("--lowbit-json", required=True)
    args = ap.parse_args()
    return {"base": cmd_base, "gptq": cmd_gptq, "same-tokens": cmd_same_tokens}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
