#!/usr/bin/env python3
"""Reference data for lowbit-model's tokenizer tests.

Subcommands:
  repair-vocab  The shared copies of llama.cpp's ggml-vocab-{llama-spm,gpt-2}.gguf were once passed
                through a UTF-8 decode with replacement: every byte that was not valid UTF-8 became
                U+FFFD (EF BF BD), which breaks numbers (array lengths, scores, ids). This rebuilds
                the original files and checks that re-applying the same damage gives the shared file
                byte for byte. Output: $LOWBIT_CACHE/tokenizers/ (default ~/.cache/lowbit).
  llama2c       Ids of "Once upon a time" (with BOS) for tok512.bin, from an independent
                re-implementation of llama2.c's run.c encode().
  gemma         Reference tokenization of wikitext-2-raw-test.txt with the Gemma-3 GGUF tokenizer
                loaded in transformers; writes count, first 2000 ids and the sha256 of all ids
                (little-endian u32).

Run with PYTHON=/path/to/venv/bin/python "$PYTHON" scripts/gen_tokenizer_fixtures.py all
"""

import hashlib
import json
import os
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
FIXTURES = ROOT / "crates" / "lowbit-model" / "tests" / "fixtures" / "tokenizer"
CACHE = Path(os.environ.get("LOWBIT_CACHE", Path.home() / ".cache" / "lowbit"))

REPLACEMENT = b"\xef\xbf\xbd"


def damage(raw: bytes) -> bytes:
    return raw.decode("utf-8", "replace").encode("utf-8")


# ---------------------------------------------------------------- repair-vocab

class Damaged:
    """Cursor over a damaged GGUF. Numbers are read as units: EF BF BD is one unknown byte."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def units(self, n):
        out = []
        for _ in range(n):
            if self.data[self.pos:self.pos + 3] == REPLACEMENT:
                out.append(None)
                self.pos += 3
            else:
                out.append(self.data[self.pos])
                self.pos += 1
        return out

    def raw(self, n):
        b = self.data[self.pos:self.pos + n]
        if len(b) != n:
            raise ValueError(f"truncated at {self.pos}")
        self.pos += n
        return b


def known_int(units):
    if any(u is None for u in units):
        return None
    return int.from_bytes(bytes(units), "little")


def candidates(units):
    """All integers the units can stand for: each unknown byte was a lone byte >= 0x80."""
    vals = [0]
    for i, u in enumerate(units):
        opts = range(0x80, 0x100) if u is None else [u]
        vals = [v + (b << (8 * i)) for v in vals for b in opts]
    return vals


SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def read_string(cur: Damaged, lookahead):
    """u64 length + bytes. An unknown length byte is resolved by the caller-supplied check of
    what must follow the string."""
    start = cur.pos
    units = cur.units(8)
    n = known_int(units)
    if n is not None:
        return cur.raw(n).decode("utf-8")
    after_len = cur.pos
    good = []
    for cand in candidates(units):
        content = cur.data[after_len:after_len + cand]
        # Vocabulary strings hold no NUL bytes; a longer candidate would swallow the next
        # elements' length prefixes.
        if len(content) != cand or b"\0" in content:
            continue
        cur.pos = after_len + cand
        if lookahead(cur):
            good.append(cand)
    if len(good) != 1:
        raise ValueError(f"string length at {start}: {len(good)} consistent candidates")
    cur.pos = after_len
    return cur.raw(good[0]).decode("utf-8")


def plausible_string_next(cur: Damaged, chain=64):
    """Do `chain` plausible strings (array elements) or a key follow here?"""
    save = cur.pos
    try:
        for _ in range(chain):
            if plausible_kv(cur):
                return True
            n = known_int(cur.units(8))
            if n is None or n > 512:
                return False
            cur.raw(n).decode("utf-8")
        return True
    except (ValueError, UnicodeDecodeError):
        return False
    finally:
        cur.pos = save


def plausible_kv(cur: Damaged):
    save = cur.pos
    try:
        if cur.pos == len(cur.data):
            return True
        n = known_int(cur.units(8))
        if n is None or n > 256:
            return False
        key = cur.raw(n).decode("ascii")
        t = known_int(cur.units(4))
        return t is not None and t <= 12 and "." in key and key.replace(".", "").replace("_", "").isalnum()
    except (ValueError, UnicodeDecodeError):
        return False
    finally:
        cur.pos = save


def llama_spm_scores(tokens):
    # SentencePiece BPE scores of the llama vocabulary: 0 for <unk>/<s>/</s> and the byte tokens,
    # -1e9 for the pieces made only of U+2581, minus the merge order otherwise. Verified below by
    # re-damaging the rebuilt file.
    out = []
    for i, t in enumerate(tokens):
        if i < 259:
            out.append(0.0)
        elif set(t) == {"\u2581"}:
            out.append(-1e9)
        else:
            out.append(-float(i - 259))
    return out


def repair(path: Path) -> bytes:
    data = path.read_bytes()
    cur = Damaged(data)
    if cur.raw(4) != b"GGUF":
        raise ValueError("not GGUF")
    version = known_int(cur.units(4))
    n_tensors = known_int(cur.units(8))
    n_kv = known_int(cur.units(8))
    if n_tensors != 0 or None in (version, n_kv):
        raise ValueError("expected a vocabulary-only GGUF with an intact header")
    kvs = []
    for _ in range(n_kv):
        key = read_string(cur, lambda c: True)
        vtype = known_int(cur.units(4))
        if vtype == 8:
            kvs.append((key, 8, read_string(cur, plausible_kv)))
        elif vtype == 9:
            etype = known_int(cur.units(4))
            len_units = cur.units(8)
            n = known_int(len_units)
            if etype == 8:
                if n is None:
                    # Count elements up to the next key; the count must fit the damaged length.
                    allowed = set(candidates(len_units))
                    after = cur.pos
                    n = 0
                    while not (n in allowed and plausible_kv(cur)):
                        if n > max(allowed):
                            raise ValueError(f"{key}: array length not recoverable")
                        read_string(cur, plausible_string_next)
                        n += 1
                    cur.pos = after
                items = [read_string(cur, plausible_string_next) for _ in range(n)]
                kvs.append((key, (9, 8), items))
            elif etype == 6 and key == "tokenizer.ggml.scores":
                tokens = dict((k, v) for k, _, v in kvs)["tokenizer.ggml.tokens"]
                if n != len(tokens):
                    raise ValueError("scores length differs from tokens")
                scores = llama_spm_scores(tokens)
                expect = damage(struct.pack(f"<{n}f", *scores))
                if cur.raw(len(expect)) != expect:
                    raise ValueError("llama-spm score rule does not reproduce the damaged scores")
                kvs.append((key, (9, 6), scores))
            elif etype in SCALAR:
                size = struct.calcsize(SCALAR[etype])
                if n is None:
                    # Undamaged elements: the count is where the next key starts.
                    after = cur.pos
                    good = []
                    for cand in candidates(len_units):
                        cur.pos = after + cand * size
                        if REPLACEMENT not in cur.data[after:cur.pos] and plausible_kv(cur):
                            good.append(cand)
                    cur.pos = after
                    if len(good) != 1:
                        raise ValueError(f"{key}: array length not recoverable ({len(good)} candidates)")
                    n = good[0]
                vals = []
                for _ in range(n):
                    v = known_int(cur.units(size))
                    if v is None:
                        raise ValueError(f"{key}: damaged array element")
                    vals.append(struct.unpack("<" + SCALAR[etype], v.to_bytes(size, "little"))[0])
                kvs.append((key, (9, etype), vals))
            else:
                raise ValueError(f"{key}: cannot repair array of type {etype}")
        elif vtype in SCALAR:
            size = struct.calcsize(SCALAR[vtype])
            start = cur.pos
            units = cur.units(size)
            v = known_int(units)
            if v is None:
                # The value cannot matter to a tokenizer unless it is an id; ids are resolved by
                # requiring a following key. Other scalars (epsilons) keep their known bytes and
                # take a common value that damages identically.
                if vtype == 6:
                    fits = [x for x in (1e-5, 1e-6, 1e-12) if _units_match(struct.pack("<f", x), units)]
                    if not fits:
                        raise ValueError(f"{key}: damaged float at {start}")
                    v = int.from_bytes(struct.pack("<f", fits[0]), "little")
                else:
                    after = cur.pos
                    good = []
                    for cand in candidates(units):
                        cur.pos = after
                        if plausible_kv(cur):
                            good.append(cand)
                    cur.pos = after
                    if key.endswith("_token_id"):
                        # Ids must name a token; among the byte values that damage the same way,
                        # the vocabulary's last token (<|endoftext|> for GPT-2) is llama.cpp's.
                        tokens = dict((k, val) for k, _, val in kvs).get("tokenizer.ggml.tokens", [])
                        named = [c for c in good if c < len(tokens)]
                        good = [max(named)] if named else []
                    elif good:
                        # Not tokenizer data (e.g. rope.dimension_count): every candidate damages
                        # identically; the smallest lone high byte (0x80 = 128) is the usual one.
                        good = [min(good)]
                    if len(good) != 1:
                        raise ValueError(f"{key}: damaged integer at {start} ({len(good)} candidates)")
                    v = good[0]
            kvs.append((key, vtype, struct.unpack("<" + SCALAR[vtype], v.to_bytes(size, "little"))[0]))
        else:
            raise ValueError(f"{key}: unknown type {vtype}")
    if cur.pos != len(data):
        raise ValueError(f"{len(data) - cur.pos} unparsed bytes at the end")

    out = bytearray(b"GGUF")
    out += struct.pack("<IQQ", version, 0, len(kvs))

    def put_str(s):
        b = s.encode("utf-8")
        out.extend(struct.pack("<Q", len(b)) + b)

    for key, vtype, value in kvs:
        put_str(key)
        if isinstance(vtype, tuple):
            out.extend(struct.pack("<IIQ", 9, vtype[1], len(value)))
            for item in value:
                if vtype[1] == 8:
                    put_str(item)
                else:
                    out.extend(struct.pack("<" + SCALAR[vtype[1]], item))
        else:
            out.extend(struct.pack("<I", vtype))
            if vtype == 8:
                put_str(value)
            else:
                out.extend(struct.pack("<" + SCALAR[vtype], value))
    out = bytes(out)
    if damage(out) != data:
        raise ValueError("rebuilt file does not damage back to the shared copy")
    return out


def _units_match(raw: bytes, units) -> bool:
    return all(u is None or u == b for b, u in zip(raw, units))


def cmd_repair_vocab():
    dest = CACHE / "tokenizers"
    dest.mkdir(parents=True, exist_ok=True)
    for name in ["ggml-vocab-llama-spm.gguf", "ggml-vocab-gpt-2.gguf"]:
        src = DATA / "tokenizers" / name
        data = src.read_bytes()
        try:
            data.decode("utf-8")
            damaged = REPLACEMENT in data
        except UnicodeDecodeError:
            damaged = False
        if not damaged:
            print(f"{src}: not damaged, nothing to do")
            continue
        fixed = repair(src)
        (dest / name).write_bytes(fixed)
        print(f"{dest / name}: {len(fixed)} bytes, sha256 {hashlib.sha256(fixed).hexdigest()}")


# ---------------------------------------------------------------- llama2c

def llama2c_encode(tok_path: Path, text: str, bos: bool):
    """run.c encode(): dummy prefix, per-codepoint lookup with byte fallback, best-score merges."""
    raw = tok_path.read_bytes()
    pos = 4
    vocab, scores = [], []
    while pos < len(raw):
        score, n = struct.unpack_from("<fi", raw, pos)
        pos += 8
        vocab.append(raw[pos:pos + n])
        scores.append(score)
        pos += n
    lookup = {}
    for i, v in enumerate(vocab):
        lookup.setdefault(v, i)
    toks = [1] if bos else []
    if text:
        toks.append(lookup[b" "])
    for ch in text:
        b = ch.encode("utf-8")
        if b in lookup:
            toks.append(lookup[b])
        else:
            toks.extend(x + 3 for x in b)
    while True:
        best = (-1e10, None, None)
        for i in range(len(toks) - 1):
            merged = lookup.get(vocab[toks[i]] + vocab[toks[i + 1]])
            if merged is not None and scores[merged] > best[0]:
                best = (scores[merged], merged, i)
        if best[2] is None:
            break
        toks[best[2]:best[2] + 2] = [best[1]]
    return toks


def cmd_llama2c():
    tok = DATA / "models" / "tok512.bin"
    cases = {}
    for text in ["Once upon a time", "Once upon a time, there was a little girl named Lily.", "Hello\nworld \u00e9\u4e16"]:
        cases[text] = llama2c_encode(tok, text, True)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    out = FIXTURES / "tok512_expected.json"
    out.write_text(json.dumps([{"text": t, "ids_with_bos": ids} for t, ids in cases.items()], indent=1) + "\n")
    print(f"{out}: {cases}")


# ---------------------------------------------------------------- gemma

def gemma_gguf() -> Path:
    if os.environ.get("LOWBIT_GEMMA_GGUF"):
        return Path(os.environ["LOWBIT_GEMMA_GGUF"])
    return CACHE / "models" / "gemma-3-270m-q4_k_m.gguf"


def cmd_gemma():
    from transformers import AutoTokenizer

    gguf = gemma_gguf()
    if not gguf.exists():
        sys.exit(f"{gguf} not found (scripts/fetch-gemma.sh downloads it)")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    text = (DATA / "text" / "wikitext-2-raw-test.txt").read_text(encoding="utf-8")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    ids = [tok.bos_token_id] + list(ids)
    blob = struct.pack(f"<{len(ids)}I", *ids)
    fixture = {
        "source": "transformers AutoTokenizer(gguf_file=gemma-3-270m-q4_k_m.gguf), wikitext-2-raw-test.txt, BOS prepended",
        "count": len(ids),
        "sha256_u32le": hashlib.sha256(blob).hexdigest(),
        "first_ids": ids[:2000],
    }
    FIXTURES.mkdir(parents=True, exist_ok=True)
    out = FIXTURES / "gemma3_wikitext2_test.json"
    out.write_text(json.dumps(fixture) + "\n")
    print(f"{out}: count {len(ids)}, sha256 {fixture['sha256_u32le']}")


def main():
    cmds = {"repair-vocab": cmd_repair_vocab, "llama2c": cmd_llama2c, "gemma": cmd_gemma}
    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    if which == "all":
        for c in cmds.values():
            c()
    elif which in cmds:
        cmds[which]()
    else:
        sys.exit(f"usage: {sys.argv[0]} [all|{'|'.join(cmds)}]")


if __name__ == "__main__":
    main()
