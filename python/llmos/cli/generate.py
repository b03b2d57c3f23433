"""`llmos generate` (any model) and `llmos run` (the bundled model unless --model): continue
a prompt, streaming the text to the terminal."""

from __future__ import annotations

import sys

from llmos.backends.device import DEVICE_HELP
from llmos.runtime.default_model import default_model_path
from llmos.runtime.generation import GenerationConfig
from llmos.runtime.load import load


ADAPTER_HELP = ("a LoRA adapter folder (llmos train --lora ... --adapter-only) merged into the model as it "
                "loads; an adapter folder also works alone as --model")


def _decoding_options(args) -> GenerationConfig:
    """The decoding flags of `generate` and `run`, checked in one place (GenerationConfig, as
    the Python API checks them): --temperature 0 is greedy, a negative one is an error."""
    options = {}
    for name in ("max_new_tokens", "seed", "top_k", "top_p", "stop"):
        value = getattr(args, name, None)
        if value is not None:
            options[name] = value
    if args.temperature is not None:
        if args.temperature == 0:
            options["do_sample"] = False
        else:
            options.update(temperature=args.temperature, do_sample=True)
    return GenerationConfig.from_dict(options)


def _stream(model, prompt: str, options: GenerationConfig, *, echo: bool) -> int:
    out = sys.stdout
    pieces = model.stream(prompt, options)  # checks the options against the model before any output
    if echo:
        out.write(prompt)
        out.flush()
    for piece in pieces:
        out.write(piece)
        out.flush()
    out.write("\n")
    return 0


def _generate(args) -> int:
    options = _decoding_options(args)
    model = load(args.model, dtype=args.dtype, threads=args.threads, adapter=args.adapter, device=args.device)
    return _stream(model, args.prompt, options, echo=False)


def _run(args) -> int:
    options = _decoding_options(args)
    if args.model is None and args.adapter is not None:
        model = load(args.adapter, threads=args.threads, device=args.device)  # on the base it names
    else:
        model = load(default_model_path() if args.model is None else args.model, threads=args.threads,
                     adapter=args.adapter, device=args.device)
    return _stream(model, args.prompt, options, echo=True)


def add_generate_commands(subparsers) -> None:
    """Adds `generate` and `run` to the `llmos` parser's subparsers."""
    g = subparsers.add_parser("generate", help="continue a prompt, streaming the text to the terminal",
                              description="Prints only the new text (for scripts), then a newline.")
    g.add_argument("prompt")
    g.add_argument("--model", required=True,
                   help="registry name, checkpoint folder (config.json, *.safetensors, tokenizer.json) "
                        "or adapter folder")
    g.add_argument("--adapter", metavar="PATH", default=None, help=ADAPTER_HELP)
    g.add_argument("--max-new-tokens", type=int, default=None)
    g.add_argument("--temperature", type=float, default=None, help="0 = greedy; > 0 samples")
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    g.add_argument("--threads", type=int, default=None)
    g.add_argument("--device", default="auto", help=DEVICE_HELP)
    g.set_defaults(run=_generate)

    p = subparsers.add_parser("run", help="continue a prompt with the bundled default model (no download)",
                              description="Prints the prompt and its continuation as one text (to read), "
                                          "then a newline.")
    p.add_argument("prompt")
    p.add_argument("--model", default=None,
                   help="another model (registry name or folder; default: the bundled one, or --adapter's base)")
    p.add_argument("--adapter", metavar="PATH", default=None, help=ADAPTER_HELP)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(run=_run)
