"""`llmos serve MODEL...`: an OpenAI-compatible HTTP server (llmos.serve) for one or more
models, each loaded on its first request. Loopback only unless --api-keys is given."""

from __future__ import annotations

from llmos.extras import require


def _at_least(kind, low, name):
    def parse(text: str):
        value = kind(text)
        if not value >= low:  # also refuses nan
            raise ValueError(text)
        return value
    parse.__name__ = name  # argparse's message: "invalid positive int value: '0'"
    return parse


_POSITIVE_INT = _at_least(int, 1, "positive int")
_COUNT = _at_least(int, 0, "non-negative int")
_POSITIVE_SECONDS = _at_least(float, 1e-3, "positive number of seconds")
_SECONDS = _at_least(float, 0.0, "non-negative number of seconds")


def _kv_memory(text: str):
    return int(text) if text.isdigit() else text  # bytes, or "512MiB" / "2GiB" (the engine parses it)


def _serve(args) -> int:
    require("serve", "llmos serve")
    from llmos.serve.run import read_api_keys, serve

    keys = read_api_keys(args.api_keys) if args.api_keys else None
    load_options = {k: v for k, v in (("threads", args.threads), ("quant", args.quant), ("dtype", args.dtype))
                    if v is not None}
    engine_options = {k: v for k, v in (("kv_memory", args.kv_memory), ("kv_dtype", args.kv_dtype)) if v is not None}
    return serve(args.models, host=args.host, port=args.port, api_keys=keys, max_concurrency=args.max_concurrency,
                 max_queue=args.max_queue, drain_seconds=args.drain_seconds, load_options=load_options,
                 engine_options=engine_options, idle_unload=args.idle_unload, apps=args.apps,
                 allow_tools=args.allow_tools)


def add_serve_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="serve models over an OpenAI-compatible HTTP API",
        description="Serves /v1/completions, /v1/chat/completions (streaming, tools), /v1/models, "
                    "/v1/tokenize, /v1/detokenize, /health and /metrics (and with --app, /v1/apps and a web page "
                    "per app at /apps/NAME). A request's `model` names one of "
                    "MODEL (as given here); each is loaded on its first request. SIGTERM drains and exits.")
    p.add_argument("models", nargs="+", metavar="MODEL", help="registry name, checkpoint folder, or `default`")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; any other needs --api-keys)")
    p.add_argument("--port", type=_COUNT, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument("--api-keys", metavar="FILE", default=None,
                   help="file of API keys, one a line; requests then need Authorization: Bearer <key>")
    p.add_argument("--max-concurrency", type=_POSITIVE_INT, default=64, metavar="N",
                   help="requests decoding at once (default 64)")
    p.add_argument("--max-queue", type=_COUNT, default=256, metavar="N",
                   help="requests waiting beyond those; more get 429 with Retry-After (default 256)")
    p.add_argument("--drain-seconds", type=_SECONDS, default=30.0, metavar="S",
                   help="on SIGTERM, how long running requests may finish (default 30)")
    p.add_argument("--kv-memory", type=_kv_memory, default=None, metavar="SIZE",
                   help="KV cache budget per model: bytes, or 512MiB / 2GiB")
    p.add_argument("--kv-dtype", choices=["float32", "bfloat16", "float16", "int8"], default=None)
    p.add_argument("--threads", type=_POSITIVE_INT, default=None)
    p.add_argument("--quant", default=None, help="quantize at load: int8, int4, int4-asym (as llmos.load)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    p.add_argument("--idle-unload", type=_POSITIVE_SECONDS, default=None, metavar="SECONDS",
                   help="unload a model after this many seconds without requests (loaded again on the next)")
    p.add_argument("--app", dest="apps", action="append", default=[], metavar="FILE",
                   help="serve an app (NAME.app.md) at /v1/apps/NAME and its page at /apps/NAME; repeatable")
    p.add_argument("--allow-tools", action="store_true",
                   help="let served apps run their tools' Python functions (off: a tool call is refused and logged)")
    p.set_defaults(run=_serve)
