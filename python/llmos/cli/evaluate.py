"""`llmos eval`: perplexity, BLEU, chrF, ROUGE or exact match of a model on a JSONL file, or of
the predictions a file already holds."""

from __future__ import annotations

import json
import sys

from llmos.cli.generate import ADAPTER_HELP
from llmos.cli.progress import wanted

METRICS = ("perplexity", "bleu", "chrf", "rouge", "exact")


def _eval(args) -> int:
    from llmos import evaluate as E

    gen = {}
    if args.max_new_tokens is not None:
        gen["max_new_tokens"] = args.max_new_tokens
    model, adapter = args.model, args.adapter
    if model is None and adapter is not None:
        model, adapter = adapter, None  # the adapter folder loads on the base it names
    result = E.evaluate(model, args.metric, args.data, chat=args.chat, stride=args.stride, threads=args.threads,
                        progress=wanted(args.quiet or args.json), adapter=adapter, **gen)
    for warning in result.get("warnings") or ():
        print(f"llmos: warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(E.format_result(result))
    return 0


def add_evaluate_commands(subparsers) -> None:
    """Adds `eval` to the `llmos` parser's subparsers."""
    p = subparsers.add_parser(
        "eval", help="measure a model: perplexity, BLEU, chrF, ROUGE or exact match",
        description="Scores a model's generations (or, for perplexity, its likelihood) on a JSONL file. "
                    'Without NAME, the file holds {"prediction": ..., "reference": ...} lines, which are '
                    "scored as they are. ROUGE's score is rougeL F1 x 100.")
    p.add_argument("model", metavar="NAME", nargs="?", default=None,
                   help="registry name, model folder or adapter folder (leave out to score the file's predictions)")
    p.add_argument("--adapter", metavar="PATH", default=None, help=ADAPTER_HELP)
    p.add_argument("--metric", required=True, choices=METRICS)
    p.add_argument("--data", required=True, metavar="FILE.jsonl",
                   help='{"prompt": ..., "reference": ...} lines, {"text": ...} for perplexity, or '
                        '{"prediction": ..., "reference": ...} without a model')
    p.add_argument("--max-new-tokens", type=int, default=None, help="generation length (default 128)")
    p.add_argument("--chat", action="store_true", help="send each prompt as a user message through the chat template")
    p.add_argument("--stride", type=int, default=None, help="perplexity: window stride for long texts")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=_eval)
