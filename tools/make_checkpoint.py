#!/usr/bin/env python
"""Build a tiny random-weight Hugging Face checkpoint (see tests/checkpoints.py).

    python tools/make_checkpoint.py KIND OUT_DIR [--dtype bf16] [--shards N] [--seed S]
                                    [--legacy-config] [--no-damp-eos] [--set key=value ...]
    python tools/make_checkpoint.py --list

KIND is one of the names printed by --list (gpt2, llama, llama3_rope, mistral_swa, qwen2, ...).
--set overrides a config field (value parsed as JSON when possible), e.g.
``--set num_hidden_layers=4 --set hidden_size=128`` for a slightly larger model for benchmarks.
Needs torch and transformers (the ``test`` extra).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import checkpoints  # noqa: E402


def _parse_set(items):
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", nargs="?", help="checkpoint kind (see --list)")
    ap.add_argument("out_dir", nargs="?", type=Path, help="output folder (created)")
    ap.add_argument("--list", action="store_true", help="list the kinds and exit")
    ap.add_argument("--dtype", default="float32", help="float32 (default), bf16/bfloat16, fp16/float16")
    ap.add_argument("--shards", type=int, default=0, help="split the weights over about N files")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--legacy-config", action="store_true",
                    help="write config.json in the transformers-4 layout (rope_theta + rope_scaling)")
    ap.add_argument("--no-damp-eos", action="store_true", help="leave the EOS logit row as initialised")
    ap.add_argument("--chat-template-file", action="store_true",
                    help="write chat_template.jinja instead of tokenizer_config.json's chat_template")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config field")
    args = ap.parse_args(argv)

    if args.list:
        for name, k in checkpoints.KINDS.items():
            print(f"{name:30s} {k.model_type:8s} {k.notes}")
        return 0
    if not args.kind or args.out_dir is None:
        ap.error("KIND and OUT_DIR are required (or --list)")
    if args.kind not in checkpoints.KINDS:
        ap.error(f"unknown kind {args.kind!r}; choose from: {', '.join(checkpoints.KINDS)}")
    if args.out_dir.exists() and any(args.out_dir.iterdir()):
        ap.error(f"{args.out_dir} exists and is not empty")

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()

    kw = dict(seed=args.seed, damp_eos=not args.no_damp_eos, chat_template_file=args.chat_template_file,
              **_parse_set(args.set))
    if args.legacy_config:
        kw["legacy_config"] = True
    if args.shards > 1:
        out = checkpoints.build_sharded_checkpoint(args.kind, args.out_dir, args.dtype, n_shards=args.shards, **kw)
    else:
        out = checkpoints.build_checkpoint(args.kind, args.out_dir, args.dtype, **kw)
    for f in sorted(out.iterdir()):
        print(f"{f.stat().st_size:>10}  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
