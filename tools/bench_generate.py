#!/usr/bin/env python
"""Decode throughput by batch size, and what sampling and beam bookkeeping cost.

    python tools/bench_generate.py [--shape smollm|gpt2|qwen05] [--threads 2] [--new 32]

Builds a random-weight checkpoint of the chosen shape (tests/checkpoints.py, cached under
/tmp/llmos-bench, shared with tools/bench.py), then reports:
  * decode tokens/s (all sequences together) at batch 1, 4 and 16, greedy;
  * the time of one decode step, greedy vs sampling (temperature, top-k, top-p, min-p,
    repetition penalty) vs beam search with 4 beams per token, so the sampler's share of a
    step is visible. The budget: sampling and beam bookkeeping < 5% of a step at
    vocabulary 150k (use --shape qwen05, whose vocabulary is 151936).
Absolute numbers on a shared machine are noise; compare the rows of one run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import SHAPES, checkpoint  # noqa: E402  (tools/bench.py: shapes and the cached checkpoints)


def timed(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="smollm")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--new", type=int, default=32, help="new tokens per sequence")
    ap.add_argument("--dtype", default=None)
    args = ap.parse_args()

    import llmos

    m = llmos.load(checkpoint(args.shape), dtype=args.dtype, threads=args.threads)
    rng = np.random.default_rng(0)
    V = m.config.vocab_size
    print(f"{args.shape}: {m!r}")

    print("\nbatch  decode tok/s (all sequences)")
    for b in (1, 4, 16):
        prompts = [rng.integers(10, V, 16).tolist() for _ in range(b)]
        t_prefill = timed(lambda: m.generate(prompts, max_new_tokens=1, eos_token_id=[]), 2)
        t_total = timed(lambda: m.generate(prompts, max_new_tokens=args.new + 1, eos_token_id=[]), 2)
        print(f"{b:5d}  {b * args.new / max(t_total - t_prefill, 1e-9):10.1f}")

    prompt = rng.integers(10, V, 16).tolist()
    n = args.new

    def per_step(**opts):
        t1 = timed(lambda: m.generate(prompt, max_new_tokens=1, eos_token_id=[], **opts), 2)
        tn = timed(lambda: m.generate(prompt, max_new_tokens=n + 1, eos_token_id=[], **opts), 2)
        return (tn - t1) / n

    greedy = per_step()
    sampled = per_step(do_sample=True, seed=1, temperature=0.8, top_k=50, top_p=0.9, min_p=0.02,
                       repetition_penalty=1.1)
    sampled_p = per_step(do_sample=True, seed=1, top_k=0, top_p=0.9)
    beams = per_step(num_beams=4, early_stopping="never", length_penalty=1.0) / 4
    print(f"\nvocab {V}: one decode step (ms)")
    print(f"  greedy                              {greedy * 1e3:8.2f}")
    print(f"  sampling (T, top-k, top-p, min-p, rep) {sampled * 1e3:8.2f}  ({(sampled / greedy - 1) * 100:+.1f}%)")
    print(f"  sampling (top-p only, full vocab)   {sampled_p * 1e3:8.2f}  ({(sampled_p / greedy - 1) * 100:+.1f}%)")
    print(f"  beam search, per beam-token         {beams * 1e3:8.2f}  ({(beams / greedy - 1) * 100:+.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
