"""Speculative decoding against plain decoding: tokens/s, acceptance, identical greedy output.

    nice python3 tools/bench_spec.py [--target DIR] [--draft DIR] [--threads 2] [--tokens 96]

Target and draft default to the bundled model (python/llmos/runtime/default_model): with the
target as its own draft every draft is accepted, so that row measures the machinery's cost and the
ceiling of acceptance, not a speed-up (a useful draft is a smaller model with the same tokenizer).
Prompt lookup runs on prompts whose continuation repeats them (editing code, quoting a passage).
Every speculative run is checked token-identical to the plain greedy run; a mismatch exits 1.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import llmos

BUNDLED = os.path.join(os.path.dirname(llmos.__file__), "runtime", "default_model")

EXTRA: dict = {}  # options for every run (--repetition-penalty)

PROMPTS = {
    "code edit": ("Rename the variable total to sum in this code and print the whole code again.\n"
                  "def add(values):\n    total = 0\n    for v in values:\n        total = total + v\n"
                  "    return total\n\ndef add(values):\n    total = 0\n    for v in values:\n"),
    "quote": ("Repeat the sentence exactly. The quick brown fox jumps over the lazy dog and runs into the "
              "forest. Sentence: The quick brown fox jumps over the lazy dog and runs"),
    "free text": "Once upon a time",
}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(model, prompt, tokens, **kw):
    kw.update(EXTRA)
    model.generate(prompt, max_new_tokens=4, do_sample=False, **kw)  # warm up
    t = time.perf_counter()
    g = model.generate(prompt, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, **kw)
    return g, len(g.token_ids) / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default=BUNDLED)
    ap.add_argument("--draft", default=None, help="draft model folder (default: the target itself)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--quant", default=None)
    ap.add_argument("--repetition-penalty", type=float, default=None,
                    help="override the checkpoint's (the bundled model's 1.15 fights copying)")
    a = ap.parse_args()
    if a.repetition_penalty is not None:
        EXTRA["repetition_penalty"] = a.repetition_penalty
    target = llmos.load(a.target, threads=a.threads, quant=a.quant)
    draft = target if a.draft is None else llmos.load(a.draft, threads=a.threads, quant=a.quant)
    print(f"CPU: {cpu_name()}, {a.threads} threads, isa={target.isa}; target {a.target}; "
          f"draft {'the target itself' if a.draft is None else a.draft}; {a.tokens} new tokens, greedy")
    print(f"| prompt | mode | tok/s | x plain | accepted/drafted | target forwards |")
    print("|---|---|---|---|---|---|")
    bad = 0
    for name, prompt in PROMPTS.items():
        plain, base = timed(target, prompt, a.tokens)
        print(f"| {name} | plain | {base:.1f} | 1.00 | - | {len(plain.token_ids)} |")
        modes = [("draft k=4", {"draft_model": draft, "num_assistant_tokens": 4})]
        modes += [(f"lookup k={k}", {"prompt_lookup_num_tokens": k}) for k in (3, 6)]
        for label, kw in modes:
            g, tps = timed(target, prompt, a.tokens, **kw)
            s = g.speculation
            same = g.token_ids == plain.token_ids
            bad += not same
            print(f"| {name} | {label} | {tps:.1f} | {tps / base:.2f} | {s['accepted']}/{s['drafted']} | "
                  f"{s['forwards']} |" + ("" if same else " **MISMATCH**"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
