#!/usr/bin/env python
"""Rows/s of `llmos batch` on one input: the local engine alone against 1 and 2 Ray actors.

    python tools/bench_batch.py [--rows 64] [--max-new-tokens 32] [--in-flight 16] [--modes local,ray1,ray2]

Every mode runs the same command a user runs (`llmos batch default --input ... --temperature 0`),
on the bundled default model, into a fresh output; the outputs are checked equal (greedy). Two
numbers per mode: `job rows/s` is the command's own count (rows / seconds from the first row
submitted, so for Ray it includes starting the local cluster and loading each actor's model), and
`wall s` is the whole process, model load and Python start-up included. On a machine of few cores
the actors share them with each other (threads are split: cores / actors each), so more actors
help only where one engine leaves cores idle.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import cpu_info  # noqa: E402  (model name and SIMD flags, as bench_serve prints them)

MODES = {"local": [], "ray1": ["--ray", "--actors", "1"], "ray2": ["--ray", "--actors", "2"]}
PROMPTS = ["Once upon a time", "The garden was", "She opened the letter and", "In the morning the",
           "It was a dark", "He said that", "The old house", "Dear Sir,"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--in-flight", type=int, default=16)
    ap.add_argument("--modes", default="local,ray1,ray2")
    args = ap.parse_args()
    env = {**os.environ, "LLMOS_PROGRESS": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1] / "python"),
                                                     os.environ.get("PYTHONPATH")) if p)}
    results, outputs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "in.jsonl"
        inp.write_text("".join(json.dumps({"id": i, "prompt": f"{PROMPTS[i % len(PROMPTS)]} ({i})"}) + "\n"
                               for i in range(args.rows)))
        for mode in args.modes.split(","):
            out = Path(tmp) / f"{mode}.jsonl"
            cmd = [sys.executable, "-m", "llmos", "batch", "default", "--input", str(inp), "--output", str(out),
                   "--max-new-tokens", str(args.max_new_tokens), "--temperature", "0",
                   "--in-flight", str(args.in_flight), *MODES[mode]]
            start = time.monotonic()
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
            wall = time.monotonic() - start
            if r.returncode != 0:
                print(r.stderr[-3000:], file=sys.stderr)
                return 1
            rate = float(re.search(r"([0-9.]+) rows/s", r.stdout).group(1))
            outputs[mode] = out.read_text()
            tokens = sum(json.loads(line)["tokens"] for line in outputs[mode].splitlines())
            results.append((mode, rate, wall, tokens))
    same = len(set(outputs.values())) == 1
    cpu = cpu_info()
    print(f"CPU: {cpu['model']} ({cpu['cpus']} logical CPUs), SIMD: {' '.join(cpu['simd_flags'])}")
    print(f"{args.rows} rows x {args.max_new_tokens} new tokens (greedy), --in-flight {args.in_flight}; "
          f"outputs identical across modes: {same}")
    print(f"{'mode':<8}{'job rows/s':>12}{'wall s':>10}{'tokens/s':>10}")
    for mode, rate, wall, tokens in results:
        print(f"{mode:<8}{rate:>12.2f}{wall:>10.1f}{tokens * rate / args.rows:>10.1f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
