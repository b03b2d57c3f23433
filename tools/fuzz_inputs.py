#!/usr/bin/env python
"""Fuzz config.json contents and generation options for longer than the test suite does.

    python tools/fuzz_inputs.py [--minutes 10] [--target config|generation|both]
                                [--kinds gpt2,llama,...] [--wild-sizes]

Builds tiny checkpoints of every family (tests/checkpoints.py; needs torch and transformers),
then runs the targets of tests/fuzz_inputs.py in child processes limited in address space
and time, each with a fresh random search. Prints what each target reached (outcome counts)
and, on a failure, hypothesis' minimal example; exits 1 if any target failed.
--wild-sizes lets num_beams, num_return_sequences and stop take huge values too.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import checkpoints  # noqa: E402
import fuzz_inputs  # noqa: E402

DEFAULT_KINDS = ["gpt2", "llama", "mistral_swa", "qwen2", "qwen2_swa", "qwen3", "phi3", "phi3_longrope", "gemma",
                 "gemma2", "llama3_rope", "llama_dynamic_rope", "llama_legacy_config"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=5.0, help="search time per target (default 5)")
    p.add_argument("--target", choices=["config", "generation", "both"], default="both")
    p.add_argument("--kinds", default=",".join(DEFAULT_KINDS), help="checkpoint kinds for the config target")
    p.add_argument("--wild-sizes", action="store_true")
    args = p.parse_args()
    seconds = args.minutes * 60
    failed = False
    with tempfile.TemporaryDirectory(prefix="llmos-fuzz-") as tmp:
        kinds = args.kinds.split(",")
        folders = []
        for kind in kinds:
            out = Path(tmp) / kind
            checkpoints.build_checkpoint(kind, out)
            folders.append(str(out))
        runs = []
        if args.target in ("config", "both"):
            runs.append(("config", dict(folders=folders, examples=None, seconds=seconds, derandomize=False)))
        if args.target in ("generation", "both"):
            llama = folders[kinds.index("llama")] if "llama" in kinds else folders[0]
            runs.append(("generation", dict(folder=llama, examples=None, seconds=seconds, derandomize=False,
                                            wild_sizes=args.wild_sizes)))
        for target, kwargs in runs:
            print(f"== {target}: {args.minutes:g} min", flush=True)
            try:
                r = fuzz_inputs.run_guarded(target, kwargs, timeout=seconds + 300)
            except subprocess.TimeoutExpired:
                print(f"{target}: the child did not finish within {seconds + 300:.0f} s (a hang?)")
                failed = True
                continue
            print(r.stdout)
            if r.returncode != 0:
                failed = True
                print(r.stderr[-20000:])
                print(f"{target}: FAILED (exit {r.returncode})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
