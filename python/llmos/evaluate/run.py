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
A file of ``{"prediction": ..., "reference": ...}`` lines is scored as it is, without a model
(as sacrebleu's command scores a hypothesis file).
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


def _references(path: str, line: int, obj: dict) -> list[str]:
    ref = obj.get("reference", obj.get("references"))
    refs = [ref] if isinstance(ref, str) else ref
    if not isinstance(refs, list) or not refs or not all(isinstance(r, str) for r in refs):
        raise DatasetError(f"{path}:{line}: expected 'reference' (a string) or 'references' (a list of "
                           "strings)", file=path, line=line, field="reference")
    return refs


def read_reference_records(path: str) -> list[dict]:
    """[{"prompt" or "messages", "references": [...]}] from a JSONL file."""
    out = []
    for line, obj in read_jsonl(path):
        rec: dict[str, Any] = {}
        if "prediction" in obj:
            raise DatasetError(f"{path}:{line}: the file already holds predictions; score them without a model "
                               f"(llmos eval --metric METRIC --data {path})", file=path, line=line,
                               field="prediction")
        if isinstance(obj.get("messages"), list) and obj["messages"]:
            rec["messages"] = obj["messages"]
        elif isinstance(obj.get("prompt"), str):
            rec["prompt"] = obj["prompt"]
        else:
            raise DatasetError(f"{path}:{line}: expected a string 'prompt' (or a 'messages' list)", file=path,
                               line=line, field="prompt")
        rec["references"] = _references(path, line, obj)
        out.append(rec)
    if not out:
        raise DatasetError(f"{path}: no records", file=path)
    return out


def read_prediction_records(path: str) -> tuple[list[str], list[list[str]]]:
    """(predictions, references of each) from a JSONL file of {"prediction", "reference"} lines."""
    hyps, refs = [], []
    for line, obj in read_jsonl(path):
        if not isinstance(obj.get("prediction"), str):
            raise DatasetError(f"{path}:{line}: expected a string 'prediction' (without a model, the file is "
                               "scored as it is; give a model to generate from 'prompt' lines)", file=path,
                               line=line, field="prediction")
        hyps.append(obj["prediction"])
        refs.append(_references(path, line, obj))
    if not hyps:
        raise DatasetError(f"{path}: no records", file=path)
    return hyps, refs


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
             threads: int | None = None, progress: bool = False, adapter: str | None = None, **options) -> dict:
    """`llmos eval`: scores ``model`` (name, folder or Model, with a LoRA ``adapter`` merged if
    given) on the JSONL file ``data``. With ``model`` None, ``data`` holds {"prediction",
    "reference"} lines, which are scored as they are."""
    if metric not in METRICS:
        raise InvalidInputError(f"metric: expected one of {', '.join(METRICS)}, got {metric!r}", field="metric")
    if metric in _METRIC_PACKAGES:  # before any output is generated
        require("eval", f"--metric {metric}", _METRIC_PACKAGES[metric])
    if model is None:
        if metric == "perplexity":
            raise InvalidInputError("perplexity needs a model (predictions alone have no likelihood)",
                                    field="model")
        if adapter is not None:
            raise InvalidInputError("adapter: give the model it goes with (or the adapter folder as the model)",
                                    field="adapter")
        hyps, refs = read_prediction_records(data)
        return {"model": None, "data": data, "n": len(hyps), **SCORERS[metric](hyps, refs)}
    ref = model if isinstance(model, str) else getattr(model, "path", None)
    m = as_model(model, threads, adapter)
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
    # ROUGE has several variants: the headline names the one that is the score.
    name = f"{r['main']} F1 (x100)" if r["metric"] == "rouge" else r["metric"]
    lines = [f"{name} {r['score']:.2f} over {r['n']} examples"]
    if r["metric"] == "bleu":
        lines.append(r["details"]["text"])
    if r["metric"] == "rouge":
        for t, v in r["details"].items():
            lines.append(f"{t}: P {v['precision']:.4f} R {v['recall']:.4f} F {v['fmeasure']:.4f}")
    lines.append(f"signature: {r['signature']}")
    return "\n".join(lines)
