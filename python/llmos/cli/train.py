"""The `llmos train`, `llmos eval` and `llmos run` verbs. Thin: each calls the Python API.

`add_train_commands(subparsers)` adds them to the `llmos` parser; `python -m llmos.cli.train`
runs them on their own.
"""

from __future__ import annotations

import json
import os

from llmos.cli.progress import wanted
from llmos.errors import InvalidInputError
from llmos.extras import require
from llmos.paths import home

def _set_threads(n: int | None) -> None:
    if n is not None:
        import torch

        torch.set_num_threads(n)


def _checkpoint_dir(args, out_label: str) -> str | None:
    if args.no_resume:
        return None
    if args.checkpoint_dir:
        return args.checkpoint_dir
    import re

    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", out_label).strip("-.") or "run"
    return str(home() / "training" / slug)


def _train(args) -> int:
    require("train", "llmos train")
    from llmos.train import trainer as T

    _set_threads(args.threads)
    common = dict(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, eval_data=args.eval,
                  max_steps=args.max_steps, seed=args.seed, device=args.device, progress=wanted(args.quiet),
                  force=args.force)
    if args.from_scratch:
        if not args.config or not args.tokenizer_from:
            raise InvalidInputError("--from-scratch needs --config small.json and --tokenizer-from DATA")
        out = args.out or args.model or "scratch"
        ckpt = _checkpoint_dir(args, os.path.abspath(out) if T.looks_like_path(out) else out)
        if args.no_resume is False and ckpt and args.fresh:
            import shutil

            shutil.rmtree(ckpt, ignore_errors=True)
        result = T.train_from_scratch(args.config, args.tokenizer_from, args.data, out=out,
                                      max_seq_len=args.max_seq_len or 256, checkpoint_dir=ckpt,
                                      save_dtype=args.save_dtype or "float32", **common)
    else:
        if not args.model:
            raise InvalidInputError("give the model to fine-tune (NAME or folder), or --from-scratch")
        if args.config or args.tokenizer_from:
            raise InvalidInputError("--config and --tokenizer-from go with --from-scratch")
        label = args.out or f"{args.model}-{'lora' if args.lora else 'ft'}"
        ckpt = _checkpoint_dir(args, os.path.abspath(label) if T.looks_like_path(label) else label)
        if ckpt and args.fresh:
            import shutil

            shutil.rmtree(ckpt, ignore_errors=True)
        result = T.train(args.model, args.data, out=args.out, lora=args.lora, keep_adapter=args.adapter_only,
                         max_seq_len=args.max_seq_len or 512, checkpoint_dir=ckpt, save_dtype=args.save_dtype,
                         **common)
    summary = {"out": result.ref, "path": result.path, "adapter": result.adapter, "steps": result.steps,
               "epochs": result.epochs, "train_loss": result.train_loss, "eval_loss": result.eval_loss,
               "eval_perplexity": result.eval_perplexity, "seconds": round(result.seconds, 1),
               "tokens": result.tokens}
    if args.json:
        print(json.dumps(summary))
    else:
        what = "adapter" if result.adapter else "model"
        print(f"wrote {what} {result.ref} ({result.steps} steps, {result.seconds:.0f} s, "
              f"final loss {result.train_loss:.4f})" if result.train_loss is not None else f"wrote {result.ref}")
        if result.eval_loss is not None:
            print(f"held-out loss {result.eval_loss:.4f}, perplexity {result.eval_perplexity:.2f}")
    return 0


def add_train_commands(subparsers) -> None:
    """Adds `train` to the `llmos` parser's subparsers."""
    p = subparsers.add_parser("train", help="fine-tune a model (full or LoRA), or train a new one from scratch")
    p.add_argument("model", metavar="NAME", nargs="?", help="registry name or folder of the model to fine-tune")
    p.add_argument("--data", required=True, action="append",
                   help=".txt, or .jsonl of {messages}, {prompt, completion} or {text} (repeatable)")
    p.add_argument("--lora", metavar="r=16,alpha=32", help="train a LoRA adapter instead of every weight")
    p.add_argument("--adapter-only", action="store_true",
                   help="with --lora: write the adapter folder (to --out) instead of merging it")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default 2e-5 full, 2e-4 LoRA, 1e-3 from scratch)")
    p.add_argument("--max-seq-len", type=int, default=None, help="tokens per example (default 512; 256 from scratch)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval", metavar="FILE", action="append", help="held-out data whose loss is reported")
    p.add_argument("--out", metavar="NAME", help="registry name, or a folder path (contains '/'); "
                                                "default NAME-ft / NAME-lora")
    p.add_argument("--force", action="store_true", help="replace the registry entry --out if it exists")
    p.add_argument("--from-scratch", action="store_true", help="train a new model and tokenizer")
    p.add_argument("--config", metavar="small.json", help="with --from-scratch: the model's LlamaConfig fields")
    p.add_argument("--tokenizer-from", metavar="DATA", action="append",
                   help="with --from-scratch: text to train the BPE tokenizer on")
    p.add_argument("--save-dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="dtype of the written weights (default: the base model's; float32 from scratch)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--checkpoint-dir", default=None,
                   help="where resumable state is kept (default $LLMOS_HOME/training/OUT)")
    p.add_argument("--no-resume", action="store_true", help="keep no resumable state")
    p.add_argument("--fresh", action="store_true", help="discard a checkpoint of an earlier run and start over")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=_train)
