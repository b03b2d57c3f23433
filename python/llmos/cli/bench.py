"""`llmos bench MODEL`: prefill and decode tokens/s and peak memory, like llama-bench (pp512 /
tg128 by default, scaled down to fit a smaller context). The timing is llmos.runtime.benchmark,
which tools/bench.py uses too."""

from __future__ import annotations

import json
import sys

from llmos.cli.progress import bar


def _bench(args) -> int:
    from llmos.runtime import benchmark
    from llmos.runtime.load import load

    # Sizes that can never fit are refused before the model loads.
    for name in ("prompt", "gen", "reps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            from llmos.errors import InvalidInputError

            raise InvalidInputError(f"--{name}: expected a positive number, got {value}", field=name)
    model = load(args.model, threads=args.threads, quant=args.quant, dtype=args.dtype)
    prompt, gen, note = benchmark.plan_sizes(model.config.max_position_embeddings, args.prompt, args.gen)
    if note:
        print(f"llmos: {note}", file=sys.stderr)
    with bar("benchmarking", "tok", quiet=args.quiet or args.json) as progress:
        r = benchmark.bench(model, prompt, gen, reps=args.reps, seed=args.seed, progress=progress)
    info = {"model": args.model, "path": model.path, "quant": model.quant.name if model.quant else None,
            "dtype": model.dtype, "threads": model.threads, "isa": model.isa,
            "context": model.config.max_position_embeddings, **r.to_dict()}
    if args.json:
        print(json.dumps(info))
        return 0
    weights = info["quant"] or info["dtype"]
    print("| model | weights | threads | test | tokens/s |\n|---|---|---|---|---|")
    print(f"| {args.model} | {weights} | {info['threads']} | pp{prompt} | {r.prefill_tps:.1f} ± {r.prefill_tps_sd:.1f} |")
    print(f"| {args.model} | {weights} | {info['threads']} | tg{gen} | {r.decode_tps:.1f} ± {r.decode_tps_sd:.1f} |")
    print(f"peak memory (RSS): {r.peak_rss_mb:.0f} MB; {r.reps} reps, {info['isa']}")
    return 0


def add_bench_commands(subparsers) -> None:
    """Adds `bench` to the `llmos` parser's subparsers."""
    p = subparsers.add_parser(
        "bench", help="measure prefill and decode speed and peak memory",
        description="Times a forward over a prompt of random token ids (prefill, ppN) and greedy decoding "
                    "from a one-token prompt (decode, tgN), as llama-bench does, and reports tokens/s (mean ± "
                    "standard deviation over the reps) and the process's peak resident memory. Defaults: "
                    "512 + 128 tokens, halved together until they fit the model's context.")
    p.add_argument("model", metavar="MODEL", help="registry name (`default`: the bundled model) or model folder")
    p.add_argument("--quant", default=None, help="quantize at load: int8, int4, int4-asym (optionally -gN)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    p.add_argument("--prompt", type=int, default=None, metavar="N", help="prompt tokens (default 512, or what fits)")
    p.add_argument("--gen", type=int, default=None, metavar="N", help="generated tokens (default 128, or what fits)")
    p.add_argument("--reps", type=int, default=3, metavar="N", help="repetitions (default 3)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompt")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(run=_bench)
