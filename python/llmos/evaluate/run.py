"""Measuring a model: perplexity from the core's logits, and BLEU / chrF / ROUGE / exact match
of its generations against references.

Perplexity is computed from ``Model.logits`` (the C++ core), with log-softmax in float64, and
equals transformers' loss-based perplexity on the same token ids; texts longer than the window
are scored with overlapping windows, each token once, as transformers' perplexity guide does.
BLEU and chrF are sacrebleu's corpus scores (its signature is returned, for reporting); ROUGE is
rouge-score's, with a tokenizer that keeps non-ASCII words and splits Chinese and Japanese into
characters (rouge-score's default tokenizer deletes every non-ASCII character).

Data files are JSONL: ``{"text": ...}`` lines for perplexity, ``{"prompt": ..., "reference": ...}``
(or ``"messages"`` instead of a prompt, ``"references"`` for several) for the other metrics.
"""

from __future__ import annotations

from typing import Any, Sequence

from llmos.errors import DatasetError, InvalidInputError
from llmos.evaluate.metrics import SCORERS
from llmos.extras import require
from llmos.evaluate.perplexity import as_model, perplexity
from llmos.io.jsonl import read_jsonl

GENERATION_METRICS = ("bleu", "chrf", "rouge", "exact")
METRICS = ("perplexity",) + GENERATION_METRICS
DEFAULT_MAX_NEW_TOKENS = 128
_METRIC_PACKAGES = {"bleu": ("sacrebleu",), "chrf": ("sacrebleu",), "rouge": ("rouge_score",)}



def read_text_records(path: str) -> list[str]:
    texts = []
    for line, obj in read_jsonl(path):
        if not isinstance(obj.get("text"), str):
            raise DatasetError(f"{path}:{line}: perplexity data needs a string 'text'", file=path, line=line,
                               field="text")
        texts.append(obj["text"])
    if not texts:
        raise DatasetError(f"{path}: no records", file=path)
    return texts


def read_reference_records(path: str) -> list[dict]:
    """[{"prompt" or "messages", "references": [...]}] from a JSONL file."""
    out = []
    for line, obj in read_jsonl(path):
        rec: dict[str, Any] = {}
        if isinstance(obj.get("messages"), list) and obj["messages"]:
            rec["messages"] = obj["messages"]
        elif isinstance(obj.get("prompt"), str):
            rec["prompt"] = obj["prompt"]
        else:
            raise DatasetError(f"{path}:{line}: expected a string 'prompt' (or a 'messages' list)", file=path,
                               line=line, field="prompt")
        ref = obj.get("reference", obj.get("references"))
        refs = [ref] if isinstance(ref, str) else ref
        if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
            raise DatasetError(f"{path}:{line}: expected 'reference' (a string) or 'references' (a list of "
                               "strings)", file=path, line=line, field="reference")
        rec["references"] = refs
        out.append(rec)
    if not out:
        raise DatasetError(f"{path}: no records", file=path)
    return out


def generate_all(model, records: Sequence[dict], *, chat: bool = False, progress: bool = False,
                 **options) -> list[str]:
    """Greedy generations for the records (options override; the checkpoint's sampling defaults
    do not apply, so scores are reproducible)."""
    from tqdm.auto import tqdm

    model = as_model(model)
    opts = {"do_sample": False, "max_new_tokens": DEFAULT_MAX_NEW_TOKENS, "temperature": None, "top_k": None,
            "top_p": None, **options}
    outs = []
    for rec in tqdm(records, desc="generating", disable=not progress, unit="prompt"):
        if "messages" in rec:
            g = model.chat(rec["messages"], **opts)
        elif chat:
            g = model.chat([{"role": "user", "content": rec["prompt"]}], **opts)
        else:
            g = model.generate(rec["prompt"], **opts)
        outs.append(g.text.strip())
    return outs


def evaluate(model, metric: str, data: str, *, chat: bool = False, stride: int | None = None,
             threads: int | None = None, progress: bool = False, **options) -> dict:
    """`llmos eval`: scores ``model`` (name, folder or Model) on the JSONL file ``data``."""
    if metric not in METRICS:
        raise InvalidInputError(f"metric: expected one of {', '.join(METRICS)}, got {metric!r}", field="metric")
    if metric in _METRIC_PACKAGES:  # before any output is generated
        require("eval", f"--metric {metric}", _METRIC_PACKAGES[metric])
    ref = model if isinstance(model, str) else getattr(model, "path", None)
    m = as_model(model, threads)
    if metric == "perplexity":
        r = perplexity(m, read_text_records(data), stride=stride)
        return {"model": ref, "metric": metric, "data": data, "score": r["perplexity"], **r}
    records = read_reference_records(data)
    hyps = generate_all(m, records, chat=chat, progress=progress, **options)
    r = SCORERS[metric](hyps, [rec["references"] for rec in records])
    return {"model": ref, "data": data, "n": len(records), **r}


def format_result(r: dict) -> str:
    if r["metric"] == "perplexity":
        return (f"perplexity {r['perplexity']:.4f} (mean NLL {r['nll']:.4f} nats over {r['tokens']} tokens "
                f"in {r['texts']} texts)")
    lines = [f"{r['metric']} {r['score']:.2f} over {r['n']} examples"]
    if r["metric"] == "bleu":
        lines.append(r["details"]["text"])
    if r["metric"] == "rouge":
        for t, v in r["details"].items():
            lines.append(f"{t}: P {v['precision']:.4f} R {v['recall']:.4f} F {v['fmeasure']:.4f}")
    lines.append(f"signature: {r['signature']}")
    return "\n".join(lines)
