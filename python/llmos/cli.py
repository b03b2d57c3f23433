"""The `llmos` command line. Thin: every verb calls the public Python API."""

from __future__ import annotations

import argparse
import sys

from .errors import LlmosError


def _generate(args) -> int:
    from . import load

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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llmos", description="Embedded LLM runtime")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="continue a prompt, streaming the text to the terminal")
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

    from .onnx.cli import add_onnx_commands
    from .registry_cli import add_registry_commands

    from .train_cli import add_train_commands

    add_registry_commands(sub)
    add_onnx_commands(sub)
    add_train_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except LlmosError as e:
        print(f"llmos: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if getattr(args, "command", None) == "train":
            print("\nllmos: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
