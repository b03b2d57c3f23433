"""`llmos generate` (any model) and `llmos run` (the bundled model unless --model): continue
a prompt, streaming the text to the terminal."""

from __future__ import annotations

import sys

from llmos.runtime.default_model import default_model_path
from llmos.runtime.load import load


def _generate(args) -> int:
    model = load(args.model, dtype=args.dtype, threads=args.threads)
    options = dict(max_new_tokens=args.max_new_tokens, seed=args.seed, stop=args.stop or None)
    if args.temperature is not None:
        options.update(temperature=args.temperature, do_sample=args.temperature > 0)
        if args.temperature == 0:
            options["temperature"] = None
    if args.top_k is not None:
        options["top_k"] = args.top_k
    if args.top_p is not None:
        options["top_p"] = args.top_p
    out = sys.stdout
    for piece in model.stream(args.prompt, **options):
        out.write(piece)
        out.flush()
    out.write("\n")
    return 0


def _run(args) -> int:
    path = default_model_path() if args.model is None else args.model
    model = load(path, threads=args.threads)
    options = {}
    if args.max_new_tokens is not None:
        options["max_new_tokens"] = args.max_new_tokens
    if args.temperature is not None:
        options.update(do_sample=args.temperature > 0, temperature=args.temperature if args.temperature > 0 else None)
    if args.seed is not None:
        options["seed"] = args.seed
    out = sys.stdout
    out.write(args.prompt)
    out.flush()
    for piece in model.stream(args.prompt, **options):
        out.write(piece)
        out.flush()
    out.write("\n")
    return 0



def add_generate_commands(subparsers) -> None:
    """Adds `generate` and `run` to the `llmos` parser's subparsers."""
    g = subparsers.add_parser("generate", help="continue a prompt, streaming the text to the terminal")
    g.add_argument("prompt")
    g.add_argument("--model", required=True,
                   help="registry name or checkpoint folder (config.json, *.safetensors, tokenizer.json)")
    g.add_argument("--max-new-tokens", type=int, default=None)
    g.add_argument("--temperature", type=float, default=None, help="0 = greedy; > 0 samples")
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    g.add_argument("--threads", type=int, default=None)
    g.set_defaults(run=_generate)

    p = subparsers.add_parser("run", help="continue a prompt with the bundled default model (no download)")
    p.add_argument("prompt")
    p.add_argument("--model", default=None, help="another model (registry name or folder)")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(run=_run)
