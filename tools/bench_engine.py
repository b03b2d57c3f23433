#!/usr/bin/env python
"""The serving engine's throughput and time to first token, against the same requests one at a time.

    python tools/bench_engine.py [--threads 2] [--streams 1,8,32] [--new 64] [--prompt 32] [--json out.json]

On the SmolLM2-135M shape of tools/bench.py (random weights, 2,048-token context), int8:
  - aggregate output tokens/s with N requests submitted at once to one llmos.Engine, and p50 /
    p99 time to first token, for each N in --streams;
  - the same requests one at a time through the core's own decode loop (model.backend.generate),
    the sequential baseline (its rate does not depend on N, so it runs min(N, 4) of them);
  - prefix cache: time to first token of a request whose first 1,000 tokens another request
    computed just before, against the first one's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import bench  # noqa: E402  tools/bench.py: the shapes and the cached checkpoints

import llmos  # noqa: E402
from llmos import _core  # noqa: E402
from llmos.runtime.generation import to_core_options  # noqa: E402


def prompts(n: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(10, vocab, size=length)] for _ in range(n)]


def sequential(model, ps, new: int) -> float:
    """Output tokens/s of the requests one after another in the core's decode loop."""
    o = core_options(model, len(ps[0]), new)
    t = time.perf_counter()
    for p in ps:
        model.backend.generate([p], o)
    return len(ps) * new / (time.perf_counter() - t)


def core_options(model, prompt_len: int, new: int):
    cfg, explicit = model._config(None, dict(max_new_tokens=new, do_sample=False, eos_token_id=[]))
    o, _ = to_core_options(_core, cfg, prompt_len, model.config.vocab_size, model.config.max_position_embeddings,
                           explicit_limit=explicit)
    return o


def concurrent(engine, ps, new: int) -> dict:
    t = time.perf_counter()
    reqs = [engine.submit(p, max_new_tokens=new, do_sample=False, eos_token_id=[]) for p in ps]
    for r in reqs:
        r.result(600)
    wall = time.perf_counter() - t
    ttft = np.array([r.first_token_time - r.submit_time for r in reqs]) * 1e3
    return {"tok_s": len(ps) * new / wall, "ttft_p50_ms": float(np.percentile(ttft, 50)),
            "ttft_p99_ms": float(np.percentile(ttft, 99))}


def prefix_ttft(engine, vocab: int) -> dict:
    shared = prompts(1, 1000, vocab, seed=99)[0]
    a, b = [shared + s for s in prompts(2, 12, vocab, seed=7)]
    out = {}
    for name, p in (("first", a), ("second", b)):
        r = engine.submit(p, max_new_tokens=1, do_sample=False)
        r.result(600)
        out[f"ttft_{name}_ms"] = (r.first_token_time - r.submit_time) * 1e3
    out["speedup"] = out["ttft_first_ms"] / out["ttft_second_ms"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--streams", default="1,8,32")
    ap.add_argument("--new", type=int, default=64, help="tokens generated per request")
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens per request")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()

    path = bench.llmos_quantized("smollm", "int8")
    model = llmos.load(str(path), threads=args.threads)
    vocab = model.config.vocab_size
    streams = [int(s) for s in args.streams.split(",")]
    results: dict = {"shape": "smollm", "quant": "int8", "threads": args.threads, "new": args.new,
                     "prompt": args.prompt}
    base = sequential(model, prompts(min(4, max(streams)), args.prompt, vocab, seed=1), args.new)
    results["sequential_tok_s"] = base
    print(f"sequential: {base:.1f} tok/s")
    with llmos.Engine(model, max_running=max(streams)) as engine:
        concurrent(engine, prompts(2, args.prompt, vocab, seed=2), 4)  # warm-up
        for n in streams:
            r = concurrent(engine, prompts(n, args.prompt, vocab, seed=3 + n), args.new)
            r["vs_sequential"] = r["tok_s"] / base
            results[f"streams_{n}"] = r
            print(f"{n:3d} streams: {r['tok_s']:.1f} tok/s ({r['vs_sequential']:.2f}x sequential), "
                  f"TTFT p50 {r['ttft_p50_ms']:.0f} ms, p99 {r['ttft_p99_ms']:.0f} ms")
    with llmos.Engine(model) as engine:
        r = prefix_ttft(engine, vocab)
        results["prefix_1000"] = r
        print(f"1000-token shared prefix: TTFT {r['ttft_first_ms']:.0f} ms first, {r['ttft_second_ms']:.0f} ms "
              f"second ({r['speedup']:.1f}x lower)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
