"""Speculative decoding against plain decoding: tokens/s, acceptance, identical greedy output.

    nice python3 tools/bench_spec.py [--target DIR] [--draft DIR] [--threads 2] [--tokens 96]
                                     [--draft-k 2,3,4,5,6] [--lookup-k 3,6] [--prompts a,b]

Target and draft default to the bundled model (python/llmos/runtime/default_model): with the
target as its own draft every draft is accepted, so that row measures the machinery's cost and the
ceiling of acceptance, not a speed-up (a useful draft is a smaller model with the same tokenizer).
A bandwidth-bound target that agrees with the bundled model: tools/make_spec_pair.py.
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
    # The bundled model's own domain (Jane Austen's novels): where a draft trained like it agrees most.
    "austen": "It is a truth universally acknowledged, that a single man in possession of a good fortune",
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


def load_average() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "unknown"


def timed(model, prompt, tokens, repeats, **kw):
    """The run and its best tokens/s over `repeats` runs (the machine is shared: the best run is
    the one least disturbed). Prefill is inside the time, as a user sees it."""
    kw.update(EXTRA)
    model.generate(prompt, max_new_tokens=4, do_sample=False, **kw)  # warm up
    best, g = 0.0, None
    for _ in range(repeats):
        t = time.perf_counter()
        g = model.generate(prompt, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, **kw)
        best = max(best, len(g.token_ids) / (time.perf_counter() - t))
    return g, best


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default=BUNDLED)
    ap.add_argument("--draft", default=None, help="draft model folder (default: the target itself)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--quant", default=None)
    ap.add_argument("--repeats", type=int, default=1, help="runs per row; the best tokens/s is reported")
    ap.add_argument("--draft-k", type=ints, default=[4], help="num_assistant_tokens values, e.g. 2,3,4,5,6")
    ap.add_argument("--lookup-k", type=ints, default=[3, 6], help="prompt_lookup_num_tokens values ('' for none)")
    ap.add_argument("--prompts", default=",".join(PROMPTS), help=f"comma-separated, of: {', '.join(PROMPTS)}")
    ap.add_argument("--repetition-penalty", type=float, default=None,
                    help="override the checkpoint's (the bundled model's 1.15 fights copying)")
    a = ap.parse_args()
    if a.repetition_penalty is not None:
        EXTRA["repetition_penalty"] = a.repetition_penalty
    target = llmos.load(a.target, threads=a.threads, quant=a.quant)
    draft = target if a.draft is None else llmos.load(a.draft, threads=a.threads, quant=a.quant)
    names = [n.strip() for n in a.prompts.split(",") if n.strip()]
    unknown = [n for n in names if n not in PROMPTS]
    if unknown:
        ap.error(f"--prompts: unknown {unknown}; known: {', '.join(PROMPTS)}")
    print(f"CPU: {cpu_name()}, {a.threads} threads, isa={target.isa}; target {a.target}; "
          f"draft {'the target itself' if a.draft is None else a.draft}; {a.tokens} new tokens, greedy, "
          f"best of {a.repeats}; load average {load_average()}")
    print("| prompt | mode | tok/s | x plain | accepted/drafted | acceptance | target forwards |")
    print("|---|---|---|---|---|---|---|")
    bad = 0
    for name in names:
        prompt = PROMPTS[name]
        plain, base = timed(target, prompt, a.tokens, a.repeats)
        print(f"| {name} | plain | {base:.1f} | 1.00 | - | - | {len(plain.token_ids)} |", flush=True)
        modes = [(f"draft k={k}", {"draft_model": draft, "num_assistant_tokens": k}) for k in a.draft_k]
        modes += [(f"lookup k={k}", {"prompt_lookup_num_tokens": k}) for k in a.lookup_k]
        for label, kw in modes:
            g, tps = timed(target, prompt, a.tokens, a.repeats, **kw)
            s = g.speculation
            same = g.token_ids == plain.token_ids
            bad += not same
            rate = f"{s['accepted'] / s['drafted']:.2f}" if s["drafted"] else "-"
            print(f"| {name} | {label} | {tps:.1f} | {tps / base:.2f} | {s['accepted']}/{s['drafted']} | {rate} | "
                  f"{s['forwards']} |" + ("" if same else " **MISMATCH**"), flush=True)
    print(f"load average after: {load_average()}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
