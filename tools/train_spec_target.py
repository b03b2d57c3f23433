#!/usr/bin/env python3
"""A trained target for speculative decoding, with the bundled model as its draft.

tools/make_spec_pair.py *constructs* a target from the bundled model (its acceptance rate is a
dial); this one trains a larger model from random weights on the bundled model's data, so the
acceptance measured with tools/bench_spec.py is that of two independently trained models:

1. Data: the same Jane Austen corpus and held-out split as tools/train_default_model.py.
2. Model: a llama of --hidden / --layers / --intermediate (default 512 / 8 / 1536: 29.4M
   parameters, 118 MB in float32) with the bundled model's tokenizer, so the two share token
   ids, initialised at random by transformers.
3. Training: `llmos train` on every weight (not LoRA) from that random start, --minutes of
   wall time at most (--max-steps from a measured step time), saved as --save-dtype.

Usage: python tools/train_spec_target.py [--out DIR] [--minutes M] [--threads N] ...
Then:  python tools/bench_spec.py --target DIR --draft python/llmos/runtime/default_model ...
At its default size the target fits a large L3 cache and is not bandwidth-bound there; widening
it without changing its function (tools/make_spec_pair.py --draft DIR --noise 0) makes each
decode step read 411 MB while keeping the trained pair's acceptance (docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DRAFT = ROOT / "python" / "llmos" / "runtime" / "default_model"


def init_target(out: Path, hidden: int, layers: int, intermediate: int, heads: int, seed: int) -> Path:
    """A random-weight llama with the draft's tokenizer and generation defaults."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = json.loads((DRAFT / "config.json").read_text())
    cfg.update(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=intermediate,
               num_attention_heads=heads, num_key_value_heads=heads, head_dim=hidden // heads, dtype="float32")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in cfg.items() if k != "architectures"}))
    # the draft's tokenizer, chat template and generation defaults; not its card or weights
    shutil.copytree(DRAFT, out, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("model.safetensors", "config.json", "__init__.py", "MODEL_CARD.md"))
    model.save_pretrained(out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=str(ROOT / "build" / "spec_train"))
    p.add_argument("--out", default=str(ROOT / "build" / "spec_target"))
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--intermediate", type=int, default=1536)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--minutes", type=float, default=30.0, help="training wall time at most")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save-dtype", default="bfloat16")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_default_model import build_corpus

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train_txt, held_txt, _ = build_corpus(work)
    init = init_target(work / "init", args.hidden, args.layers, args.intermediate, args.heads, args.seed)
    common = ["--data", str(train_txt), "--eval", str(held_txt), "--threads", str(args.threads),
              "--batch-size", str(args.batch_size), "--max-seq-len", str(args.max_seq_len), "--lr", str(args.lr),
              "--save-dtype", args.save_dtype, "--seed", str(args.seed), "--no-resume", "--json", "--quiet"]
    # The step time, from two short runs (their difference drops load and save), sets
    # --max-steps for the time budget.
    def probe(n: int) -> float:
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "llmos", "train", str(init), "--out", str(work / "probe"), "--force",
                        "--max-steps", str(n), *common], check=True, stdout=subprocess.PIPE)
        return time.time() - t0

    per_step = (probe(8) - probe(2)) / 6
    steps = max(10, int(args.minutes * 60 / per_step))
    print(f"~{per_step:.2f} s a step: {steps} steps in {args.minutes:g} minutes", file=sys.stderr)
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "llmos", "train", str(init), "--out", args.out, "--force",
                          "--max-steps", str(steps), "--epochs", "100", *common],
                         check=True, stdout=subprocess.PIPE, text=True)
    meta = json.loads(res.stdout.strip().splitlines()[-1])
    meta.update(wall_minutes=(time.time() - t0) / 60, hidden=args.hidden, layers=args.layers,
                intermediate=args.intermediate, heads=args.heads)
    (Path(args.out) / "spec_target_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
