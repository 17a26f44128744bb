#!/usr/bin/env python3
"""`lowbit quantize --export gguf` checked against llama.cpp: export Gemma-3-270M in each scheme,
run llama.cpp's llama-perplexity and `lowbit eval ppl` on the same file (same text, ctx 512,
same chunks) and require the two perplexities to agree within 0.5%.

Usage: python3 scripts/check_gguf_export.py [SCHEME ...]      (default: q4_k_m q8_0 q4_0)
Env: CHUNKS (default 8), THREADS (default 2), LOWBIT_CACHE (for fetch-gemma.sh / build-llamacpp.sh).
Builds lowbit (release) and llama.cpp (scripts/build-llamacpp.sh) when needed. Not run in CI
(llama.cpp's build takes minutes). Prints one JSON line per scheme and exits non-zero on a miss."""
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = os.path.join(ROOT, "..", "shared", "data", "text", "wikitext-2-raw-test.txt")
TOLERANCE = 0.005


def sh(*cmd, env=None) -> str:
    return subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True, env=env).stdout.strip()


def main(schemes: list[str]) -> int:
    chunks = os.environ.get("CHUNKS", "8")
    threads = os.environ.get("THREADS", "2")
    source = sh("bash", "scripts/fetch-gemma.sh")
    llama_bin = sh("bash", "scripts/build-llamacpp.sh")
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "lowbit"], cwd=ROOT, check=True)
    lowbit = os.path.join(ROOT, "target", "release", "lowbit")
    env = dict(os.environ, LD_LIBRARY_PATH=llama_bin)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for scheme in schemes:
            out = os.path.join(tmp, f"gemma-3-270m-{scheme}.gguf")
            q = json.loads(sh(lowbit, "quantize", "--model", source, "--scheme", scheme,
                              "--export", "gguf", "--out", out, "--json"))
            log = subprocess.run(
                [os.path.join(llama_bin, "llama-perplexity"), "-m", out, "-f", TEXT, "-c", "512",
                 "-b", "512", "--chunks", chunks, "-t", threads],
                cwd=ROOT, capture_output=True, text=True, env=env)
            m = re.search(r"Final estimate: PPL = ([\d.]+)", log.stdout + log.stderr)
            if log.returncode != 0 or not m:
                print(f"{scheme}: llama-perplexity failed to load or run lowbit's GGUF:\n{log.stderr[-2000:]}")
                ok = False
                continue
            llama_ppl = float(m.group(1))
            r = json.loads(sh(lowbit, "-t", threads, "eval", "ppl", "--model", out, "--text", TEXT,
                              "--ctx", "512", "--chunks", chunks, "--json"))
            rel = abs(r["ppl"] - llama_ppl) / llama_ppl
            passed = rel <= TOLERANCE
            ok &= passed
            print(json.dumps({"scheme": scheme, "file_mb": round(os.path.getsize(out) / 1e6, 1),
                              "bits_per_weight": round(q["bits_per_weight"], 3), "chunks": int(chunks),
                              "ppl_llama_cpp": llama_ppl, "ppl_lowbit": round(r["ppl"], 4),
                              "rel_diff": round(rel, 5), "pass": passed}))
    print("ALL WITHIN 0.5%" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["q4_k_m", "q8_0", "q4_0"]))
