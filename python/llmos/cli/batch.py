"""`llmos batch MODEL|APP --input FILE --output FILE [--ray]`: one request per row, resumable.

Run the same command again after a kill and it carries on; a different input or configuration
against an existing output is refused (llmos.batch.store)."""

from __future__ import annotations

import os
import sys
import time

from llmos import limits
from llmos.batch.local import run_local
from llmos.batch.rows import input_format, read_rows
from llmos.batch.store import Store
from llmos.batch.work import Target, is_app
from llmos.cli import progress
from llmos.errors import InvalidInputError
from llmos.io.files import sha256_file


def _options(args) -> dict:
    options = {}
    if args.max_new_tokens is not None:
        options["max_new_tokens"] = args.max_new_tokens
    if args.temperature is not None:
        options.update(do_sample=False) if args.temperature == 0 else options.update(
            do_sample=True, temperature=args.temperature)
    if args.seed is not None:
        options["seed"] = args.seed
    return options


def _check(args) -> None:
    for name, limit in (("in_flight", "max_batch_in_flight"), ("shard_rows", "max_batch_shard_rows"),
                        ("actors", "max_batch_actors")):
        value = getattr(args, name)
        if value < 1:
            raise InvalidInputError(f"--{name.replace('_', '-')}: must be at least 1, got {value}", field=name)
        limits.check(limit, value, what=f"--{name.replace('_', '-')}")


def _batch(args) -> int:
    _check(args)
    input_format(args.input)
    if not os.path.isfile(args.input):
        raise InvalidInputError(f"{args.input}: no such input file", file=args.input, field="input")
    options = _options(args)
    target = os.path.abspath(args.target) if is_app(args.target) else args.target
    manifest = {"input_sha256": sha256_file(args.input), "target": target, "options": options}
    if is_app(target):
        if not os.path.isfile(target):
            raise InvalidInputError(f"{args.target}: no such app file", file=args.target, field="app")
        manifest["app_sha256"] = sha256_file(target)
    store = Store(args.output, manifest).open()
    total = sum(1 for _ in read_rows(args.input))
    todo = total - len(store.done)
    start = time.monotonic()
    bar = None
    if progress.wanted(args.quiet):
        from tqdm.auto import tqdm
        bar = tqdm(desc="llmos batch", total=total, initial=total - todo, unit="row", file=sys.stderr,
                   dynamic_ncols=True)
    on_row = bar.update if bar is not None else None
    try:
        if todo:
            if args.ray:
                from llmos.batch.on_ray import run_ray
                run_ray(target, options, read_rows(args.input), store, actors=args.actors,
                        in_flight=args.in_flight, shard_rows=args.shard_rows, address=args.address,
                        threads=args.threads, on_row=on_row)
            else:
                run_local(Target(target, options=options, threads=args.threads), read_rows(args.input), store,
                          in_flight=args.in_flight, shard_rows=args.shard_rows, on_row=on_row)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.monotonic() - start
    n_ok, n_err = store.finish()
    rate = f"{todo / seconds:.2f} rows/s" if todo and seconds > 0 else "nothing left to run"
    print(f"{args.output}: {n_ok} results, {n_err} errors ({store.errors}); {todo} rows run in {seconds:.1f} s, {rate}")
    return 0


def add_batch_command(subparsers) -> None:
    p = subparsers.add_parser(
        "batch", help="run a model or app over every row of a JSONL or Parquet file (resumable)",
        description="One request per row: `prompt` or `messages` for a model; the app's inputs (and "
                    "`message` for a chat app) for an app file; optional `id` (default: the row number, "
                    "from 0) and `params` (decoding options). Writes one JSON line per row to OUTPUT "
                    "(id, text, tokens, finish_reason) and failed rows to OUTPUT.errors.jsonl. Finished "
                    "rows are kept in OUTPUT.parts/, so running the same command again after a kill "
                    "carries on where it stopped.")
    p.add_argument("target", metavar="MODEL|APP", help="registry name, checkpoint folder, `default`, or a NAME.app.md")
    p.add_argument("--input", required=True, help="a .jsonl or .parquet file, one request per row")
    p.add_argument("--output", required=True, help="the results file (JSON lines)")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--in-flight", type=int, default=16, help="rows decoding together per engine (default 16)")
    p.add_argument("--shard-rows", type=int, default=64, help="finished rows per output shard (default 64)")
    p.add_argument("--threads", type=int, default=None, help="compute threads per engine")
    p.add_argument("--ray", action="store_true", help="run as a Ray Data pipeline over an actor pool of engines")
    p.add_argument("--actors", type=int, default=1, help="with --ray: engines (actors) in the pool (default 1)")
    p.add_argument("--address", default=None,
                   help="with --ray: the cluster to join (default: start a local one on 127.0.0.1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_batch)
