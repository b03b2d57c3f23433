#!/usr/bin/env python
"""What structured output costs per decode step, and which library computes the masks fastest.

    python tools/bench_structured.py [--threads 2] [--tokens 128] [--rounds 3]
    python tools/bench_structured.py --libraries

Default: a SmolLM2-135M-shaped random checkpoint (tools/bench.py's "smollm" shape, int8 at
load, --threads threads) with a realistic 49,152-token byte-level BPE (trained here on Python's
own sources, cached in $LLMOS_BENCH_CACHE/smollm-structured), decoding --tokens tokens
(sampled, one seed) from a short prompt, unconstrained and under a nested JSON schema (an array of at least 50
nested objects, so that both runs are cut at exactly --tokens tokens). Rounds interleave the
two; the best round of each counts. It also replays the constrained tokens through a fresh
constraint to show what the masks would add if computed serially, not while the forward runs.

--libraries: llguidance against xgrammar on the same tokenizer and schema (one thread): time
to build the tokenizer object, to compile the schema, per mask and per accepted token, over
the tokens of a JSON instance of the schema (xgrammar needs torch and transformers for this).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "python"))
CACHE = Path(os.environ.get("LLMOS_BENCH_CACHE", "/tmp/llmos-bench"))
SPECIALS = ["<|endoftext|>", "<|bos|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

ITEM = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 999999},
        "name": {"type": "string", "maxLength": 24},
        "email": {"type": "string", "pattern": "^[a-z]{1,12}@[a-z]{1,12}\\.(com|org)$"},
        "role": {"enum": ["admin", "user", "guest"]},
        "address": {
            "type": "object",
            "properties": {
                "street": {"type": "string", "maxLength": 32},
                "city": {"type": "string", "maxLength": 16},
                "geo": {"type": "object", "properties": {"lat": {"type": "number", "minimum": -90, "maximum": 90},
                                                          "lon": {"type": "number", "minimum": -180, "maximum": 180}},
                        "required": ["lat", "lon"], "additionalProperties": False},
            },
            "required": ["street", "city", "geo"],
            "additionalProperties": False,
        },
        "orders": {"type": "array", "maxItems": 3, "items": {
            "type": "object",
            "properties": {"sku": {"type": "string", "maxLength": 8}, "qty": {"type": "integer", "minimum": 1, "maximum": 99},
                           "paid": {"type": "boolean"}},
            "required": ["sku", "qty", "paid"], "additionalProperties": False}},
    },
    "required": ["id", "name", "email", "role", "address", "orders"],
    "additionalProperties": False,
}
SCHEMA = {"type": "array", "items": ITEM, "minItems": 50}
INSTANCE = [{"id": 1, "name": "Ada Lovelace", "email": "ada@example.org", "role": "admin",
             "address": {"street": "12 St James's Square", "city": "London", "geo": {"lat": 51.5074, "lon": -0.1278}},
             "orders": [{"sku": "A-100", "qty": 2, "paid": True}, {"sku": "B-7", "qty": 1, "paid": False}]},
            {"id": 2, "name": "Alan Turing", "email": "alan@bletchley.com", "role": "user",
             "address": {"street": "Hollymeade", "city": "Wilmslow", "geo": {"lat": 53.3269, "lon": -2.2311}},
             "orders": []}]


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def tokenizer_json() -> Path:
    """A 49,152-token byte-level BPE trained on the standard library's sources and docs."""
    out = CACHE / "bpe49k-tokenizer.json"
    if out.exists():
        return out
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    def texts(limit=40_000_000):
        n = 0
        for p in sorted(glob.glob(os.path.dirname(os.__file__) + "/**/*", recursive=True)):
            if not p.endswith((".py", ".txt", ".rst", ".html", ".json")):
                continue
            try:
                s = open(p, encoding="utf-8").read()
            except (OSError, UnicodeDecodeError):
                continue
            n += len(s)
            yield s
            if n > limit:
                return

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts(), trainer=trainers.BpeTrainer(
        vocab_size=49152, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    CACHE.mkdir(parents=True, exist_ok=True)
    tok.save(str(out))
    return out


def checkpoint() -> Path:
    """tools/bench.py's smollm checkpoint, with the realistic tokenizer instead of the test one."""
    import bench

    src = bench.checkpoint("smollm")
    out = CACHE / "smollm-structured"
    if not (out / "model.safetensors").exists():
        out.mkdir(parents=True, exist_ok=True)
        for f in ("config.json", "generation_config.json", "tokenizer_config.json"):
            shutil.copy(src / f, out / f)
        (out / "model.safetensors").symlink_to(src / "model.safetensors")
        shutil.copy(tokenizer_json(), out / "tokenizer.json")
    return out


def bench_overhead(args) -> None:
    import llmos
    from llmos.runtime.generation import GenerationConfig
    from llmos.text.structured import constraint_factory

    m = llmos.load(str(checkpoint()), threads=args.threads, quant="int8")
    prompt = "Here are the users as JSON:"
    # No EOS: the unconstrained run then also decodes exactly --tokens tokens. Sampled (same
    # seed in both runs), so the constrained reply walks the whole schema rather than repeating
    # one digit, as a random model's greedy reply does.
    common = dict(max_new_tokens=args.tokens, eos_token_id=[], do_sample=True, seed=0)
    runs = {"unconstrained": {}, "nested schema": {"guided_json": SCHEMA}}
    m.generate(prompt, max_new_tokens=4)  # warm up
    best: dict[str, float] = {}
    last = None
    for _ in range(args.rounds):
        for name, extra in runs.items():
            t0 = time.perf_counter()
            g = m.generate(prompt, **common, **extra)
            dt = time.perf_counter() - t0
            if len(g.token_ids) != args.tokens:
                raise SystemExit(f"{name}: decoded {len(g.token_ids)} tokens, expected {args.tokens}")
            best[name] = min(best.get(name, dt), dt)
            if extra:
                last = g
    # What the masks cost when computed serially: replay the constrained tokens.
    factory = constraint_factory(m.tokenizer, GenerationConfig(guided_json=SCHEMA), vocab_size=m.config.vocab_size,
                                 eos_token_ids=[])
    c = factory()
    mask = np.zeros((m.config.vocab_size + 31) // 32, dtype=np.uint32)
    t0 = time.perf_counter()
    for t in last.token_ids:
        mask[:] = 0
        c.fill_mask(mask, m.config.vocab_size)
        c.accept(t)
    serial = (time.perf_counter() - t0) / len(last.token_ids)

    per = {k: v / args.tokens for k, v in best.items()}
    over = per["nested schema"] / per["unconstrained"] - 1
    print(f"CPU: {cpu_name()}; SmolLM2-135M shape, int8, {args.threads} threads, vocab {m.config.vocab_size}, "
          f"{args.tokens} tokens, best of {args.rounds}")
    for k, v in per.items():
        print(f"  {k:14s} {v * 1e3:7.2f} ms/token (prefill included)")
    print(f"  overhead       {over * 100:+6.1f}% (target < 5%)")
    print(f"  masks + accept if serial: {serial * 1e3:.3f} ms/token ({serial / per['unconstrained'] * 100:.1f}% "
          "of a step)")
    print(f"  sample: {last.text[:120]!r}")


def bench_libraries(args) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json()))
    V = tok.get_vocab_size(with_added_tokens=True)
    eos = 0
    ids = tok.encode(json.dumps(INSTANCE), add_special_tokens=False).ids
    schema = {**SCHEMA, "minItems": 1}

    def llguidance_run():
        import llguidance as llg

        t0 = time.perf_counter()
        lt = llg.LLTokenizer(tok.to_str(), n_vocab=V, eos_token=eos)
        t_tok = time.perf_counter() - t0
        g = llg.LLMatcher.grammar_from_json_schema(
            schema, defaults={"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "})
        t0 = time.perf_counter()
        m = llg.LLMatcher(lt, g, log_level=0)
        t_comp = time.perf_counter() - t0
        mask = np.zeros((V + 31) // 32, dtype=np.uint32)
        fill, acc = [], []
        for t in ids + [eos]:
            t0 = time.perf_counter()
            m.unsafe_compute_mask_ptr(mask.ctypes.data, mask.nbytes)
            fill.append(time.perf_counter() - t0)
            assert (mask[t >> 5] >> (t & 31)) & 1, f"llguidance refuses token {t}"
            t0 = time.perf_counter()
            assert m.consume_token(t), m.get_error()
            acc.append(time.perf_counter() - t0)
        return t_tok, t_comp, fill, acc

    def xgrammar_run():
        import transformers
        import xgrammar as xgr

        hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=SPECIALS[0])
        t0 = time.perf_counter()
        info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=V, stop_token_ids=[eos])
        t_tok = time.perf_counter() - t0
        compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        t0 = time.perf_counter()
        cg = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
        t_comp = time.perf_counter() - t0
        m = xgr.GrammarMatcher(cg)
        mask = xgr.allocate_token_bitmask(1, V)
        fill, acc = [], []
        for t in ids + [eos]:
            t0 = time.perf_counter()
            m.fill_next_token_bitmask(mask)
            fill.append(time.perf_counter() - t0)
            assert (int(mask[0, t >> 5]) >> (t & 31)) & 1, f"xgrammar refuses token {t}"
            t0 = time.perf_counter()
            assert m.accept_token(t)
            acc.append(time.perf_counter() - t0)
        return t_tok, t_comp, fill, acc

    print(f"CPU: {cpu_name()}; vocab {V}, {len(ids) + 1} tokens replayed, best of {args.rounds}")
    print(f"  {'library':10s} {'tokenizer':>9s} {'compile':>8s}   mask median / p90 / max / mean   accept median")
    for name, run in (("llguidance", llguidance_run), ("xgrammar", xgrammar_run)):
        try:
            results = [run() for _ in range(args.rounds)]
        except ImportError as e:
            print(f"  {name:10s} not installed ({e})")
            continue
        t_tok, t_comp, fill, acc = min(results, key=lambda r: np.mean(r[2]))
        f, a = 1e6 * np.asarray(fill), 1e6 * np.asarray(acc)
        print(f"  {name:10s} {t_tok * 1e3:7.0f}ms {t_comp * 1e3:6.1f}ms   {np.median(f):5.0f} / "
              f"{np.percentile(f, 90):4.0f} / {f.max():5.0f} / {f.mean():4.0f} us         {np.median(a):5.1f} us")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--libraries", action="store_true", help="compare llguidance and xgrammar")
    args = ap.parse_args()
    bench_libraries(args) if args.libraries else bench_overhead(args)


if __name__ == "__main__":
    main()
