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


def _autoscale(text: str):
    low, sep, high = text.partition(":")
    if not sep or not low.isdigit() or not high.isdigit() or int(low) > int(high) or int(high) < 1:
        raise ValueError(text)
    return int(low), int(high)


_autoscale.__name__ = "MIN:MAX"


def _serve(args) -> int:
    require("serve", "llmos serve")
    from llmos.serve.run import read_api_keys, serve

    ray_only = [f for f, v in (("--replicas", args.replicas), ("--autoscale", args.autoscale),
                               ("--address", args.address), ("--num-cpus", args.num_cpus)) if v is not None]
    if ray_only and not args.ray:
        from llmos.errors import InvalidInputError

        raise InvalidInputError(f"{ray_only[0]} is for --ray (replicas on Ray Serve); add --ray", field=ray_only[0])
    keys = read_api_keys(args.api_keys) if args.api_keys else None
    load_options = {k: v for k, v in (("threads", args.threads), ("quant", args.quant), ("dtype", args.dtype))
                    if v is not None}
    engine_options = {k: v for k, v in (("kv_memory", args.kv_memory), ("kv_dtype", args.kv_dtype)) if v is not None}
    if args.ray:
        return _serve_on_ray(args, keys, load_options, engine_options)
    return serve(args.models, host=args.host, port=args.port, api_keys=keys, max_concurrency=args.max_concurrency,
                 max_queue=args.max_queue, drain_seconds=args.drain_seconds, load_options=load_options,
                 engine_options=engine_options, idle_unload=args.idle_unload, apps=args.apps,
                 allow_tools=args.allow_tools)


def _serve_on_ray(args, keys, load_options, engine_options) -> int:
    from llmos.errors import InvalidInputError

    if args.port == 0:  # Serve's proxy takes the port as given; it cannot report a picked one
        raise InvalidInputError("--port 0: --ray needs a fixed port", field="port")
    if args.replicas is not None and args.autoscale is not None:
        raise InvalidInputError("give --replicas or --autoscale, not both", field="replicas")
    require("ray", "llmos serve --ray")
    import sys

    from llmos.ray import deployment
    from llmos.ray.run import serve_on_ray

    threads = load_options.pop("threads", None)
    application = deployment(args.models, apps=args.apps, replicas=args.replicas, autoscale=args.autoscale,
                             threads=threads, num_cpus=args.num_cpus, api_keys=keys,
                             max_concurrency=args.max_concurrency, max_queue=args.max_queue,
                             drain_seconds=args.drain_seconds, load_options=load_options,
                             engine_options=engine_options, idle_unload=args.idle_unload,
                             allow_tools=args.allow_tools)

    def ready(seconds: float) -> None:
        print(f"llmos: serving on Ray at http://{args.host}:{args.port} ({seconds:.1f} s to start)",
              file=sys.stderr, flush=True)

    return serve_on_ray(application, host=args.host, port=args.port, address=args.address, api_keys=keys,
                        on_ready=ready)


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
    ray = p.add_argument_group("replicas on Ray Serve (pip install \"llmos[ray]\")")
    ray.add_argument("--ray", action="store_true",
                     help="run as a Ray Serve application: replicas of this server, each with its own engines")
    ray.add_argument("--replicas", type=_POSITIVE_INT, default=None, metavar="N", help="a fixed number of replicas")
    ray.add_argument("--autoscale", type=_autoscale, default=None, metavar="MIN:MAX",
                     help="between MIN and MAX replicas, following the requests queued per replica")
    ray.add_argument("--num-cpus", type=_at_least(float, 1e-3, "positive number"), default=None, metavar="N",
                     help="CPUs each replica reserves (default: --threads, else 1; fractions share a core)")
    ray.add_argument("--address", default=None, metavar="ADDR",
                     help="a running cluster (auto, HOST:6379, ray://HOST:10001); default: start one on loopback")
    p.set_defaults(run=_serve)
