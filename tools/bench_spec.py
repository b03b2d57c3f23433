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


def run_once(model, prompt, tokens, **kw):
    """One greedy run: (result, wall seconds, CPU seconds of this process). Prefill is inside
    the time, as a user sees it. CPU time (all threads) is the steadier number on a shared
    machine: a descheduled thread adds wall time, not CPU time."""
    c, t = time.process_time(), time.perf_counter()
    g = model.generate(prompt, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, **kw)
    return g, time.perf_counter() - t, time.process_time() - c


def forward_cost(model, repeats: int) -> None:
    """The target's forward time for n = 1..7 new tokens after a 16-token prefix (the verify
    forward of k = n - 1 drafts), best of `repeats`, interleaved over n."""
    import numpy as np

    from llmos import _core

    core = model.backend.core
    s = _core.Session(core)
    ids = np.arange(3, 3 + 23, dtype=np.int64) % model.config.vocab_size
    s.forward(core, ids[:16], False, None)
    wall = {n: [] for n in range(1, 8)}
    cpu = {n: [] for n in range(1, 8)}
    for _ in range(repeats):
        for n in wall:
            s.truncate(16)
            c, t = time.process_time(), time.perf_counter()
            s.forward(core, ids[16:16 + n], n > 1, None)
            wall[n].append(time.perf_counter() - t)
            cpu[n].append(time.process_time() - c)
    print("| new tokens n | wall ms (best) | x n=1 | CPU ms (best) | x n=1 |")
    print("|---|---|---|---|---|")
    for n in wall:
        print(f"| {n} | {min(wall[n]) * 1e3:.1f} | {min(wall[n]) / min(wall[1]):.2f} | {min(cpu[n]) * 1e3:.1f} | "
              f"{min(cpu[n]) / min(cpu[1]):.2f} |")


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default=BUNDLED)
    ap.add_argument("--draft", default=None, help="draft model folder (default: the target itself)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--quant", default=None)
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs per row, interleaved with the other rows; the best (least disturbed) is reported")
    ap.add_argument("--forward-cost", action="store_true",
                    help="first print the target's forward time for 1..7 new tokens (what a verify round costs)")
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
    if a.forward_cost:
        forward_cost(target, max(5, 3 * a.repeats))
    print("| prompt | mode | tok/s | x plain | x plain (CPU time) | accepted/drafted | acceptance | target forwards |")
    print("|---|---|---|---|---|---|---|---|")
    bad = 0
    for name in names:
        prompt = PROMPTS[name]
        modes = [("plain", {})]
        modes += [(f"draft k={k}", {"draft_model": draft, "num_assistant_tokens": k}) for k in a.draft_k]
        modes += [(f"lookup k={k}", {"prompt_lookup_num_tokens": k}) for k in a.lookup_k]
        for _, kw in modes:
            target.generate(prompt, max_new_tokens=4, do_sample=False, **kw, **EXTRA)  # warm up
        runs = {label: [] for label, _ in modes}
        for _ in range(a.repeats):  # interleaved: a disturbance spreads over the modes
            for label, kw in modes:
                runs[label].append(run_once(target, prompt, a.tokens, **kw, **EXTRA))
        plain = runs["plain"][0][0]
        base_wall = min(r[1] for r in runs["plain"])
        base_cpu = min(r[2] for r in runs["plain"])
        for label, _ in modes:
            g = runs[label][0][0]
            wall = min(r[1] for r in runs[label])
            cpu = min(r[2] for r in runs[label])
            same = all(r[0].token_ids == plain.token_ids for r in runs[label])
            bad += not same
            s = g.speculation
            if s is None:
                stats = f"- | - | {len(g.token_ids)}"
            else:
                rate = f"{s['accepted'] / s['drafted']:.2f}" if s["drafted"] else "-"
                stats = f"{s['accepted']}/{s['drafted']} | {rate} | {s['forwards']}"
            print(f"| {name} | {label} | {len(g.token_ids) / wall:.1f} | {base_wall / wall:.2f} | {base_cpu / cpu:.2f} | "
                  f"{stats} |" + ("" if same else " **MISMATCH**"), flush=True)
    print(f"load average after: {load_average()}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
