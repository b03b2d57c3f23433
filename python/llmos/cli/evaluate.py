"""`llmos eval`: perplexity, BLEU, chrF, ROUGE or exact match of a model on a JSONL file."""

from __future__ import annotations

import json

METRICS = ("perplexity", "bleu", "chrf", "rouge", "exact")


def _eval(args) -> int:
    from llmos import evaluate as E

    gen = {}
    if args.max_new_tokens is not None:
        gen["max_new_tokens"] = args.max_new_tokens
    result = E.evaluate(args.model, args.metric, args.data, chat=args.chat, stride=args.stride,
                        threads=args.threads, progress=not args.quiet and not args.json, **gen)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(E.format_result(result))
    return 0



def add_evaluate_commands(subparsers) -> None:
    """Adds `eval` to the `llmos` parser's subparsers."""
    p = subparsers.add_parser("eval", help="measure a model: perplexity, BLEU, chrF, ROUGE or exact match")
    p.add_argument("model", metavar="NAME", help="registry name or model folder")
    p.add_argument("--metric", required=True, choices=METRICS)
    p.add_argument("--data", required=True, metavar="FILE.jsonl",
                   help='{"prompt": ..., "reference": ...} lines, or {"text": ...} for perplexity')
    p.add_argument("--max-new-tokens", type=int, default=None, help="generation length (default 128)")
    p.add_argument("--chat", action="store_true", help="send each prompt as a user message through the chat template")
    p.add_argument("--stride", type=int, default=None, help="perplexity: window stride for long texts")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=_eval)
