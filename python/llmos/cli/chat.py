"""`llmos chat MODEL`: a terminal chat with a model (its chat template, no app around it)."""

from __future__ import annotations

from llmos.backends.device import DEVICE_HELP
from llmos.cli.chat_repl import ChatLoop, ModelPartner
from llmos.runtime.load import load


def initial_params(args) -> dict:
    """The decoding flags shared by `chat` and `app chat`, as the options /params shows:
    --temperature 0 is greedy, as for `llmos run`."""
    params = {}
    if args.max_new_tokens is not None:
        params["max_new_tokens"] = args.max_new_tokens
    if args.seed is not None:
        params["seed"] = args.seed
    if args.temperature is not None:
        params.update(do_sample=False) if args.temperature == 0 else params.update(
            do_sample=True, temperature=args.temperature)
    return params


def add_decoding_flags(p) -> None:
    p.add_argument("--max-new-tokens", type=int, default=None, help="tokens per reply at most")
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy")
    p.add_argument("--seed", type=int, default=None)


def _chat(args) -> int:
    model = load(args.model, threads=args.threads, quant=args.quant, dtype=args.dtype, device=args.device)
    loop = ChatLoop(ModelPartner(model, args.model, system=args.system), params=initial_params(args),
                    meta={"model": args.model, "system": args.system})
    loop.partner.check_params(loop.params)  # a bad flag is an error before the first prompt
    return loop.run()


def add_chat_command(subparsers) -> None:
    p = subparsers.add_parser(
        "chat", help="chat with a model in the terminal",
        description="A chat through the model's chat template: the reply streams as it is generated; "
                    "/reset, /save [FILE], /params [k=v ...], /help, /quit. Ctrl-C stops a reply; "
                    "Ctrl-D (or Ctrl-C at an empty prompt) leaves.")
    p.add_argument("model", metavar="MODEL", help="registry name, checkpoint folder, or `default` (the bundled model)")
    p.add_argument("--system", default=None, help="a system message put before the conversation")
    add_decoding_flags(p)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quant", default=None, help="quantize at load: int8, int4, int4-asym (as llmos.load)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.set_defaults(run=_chat)
