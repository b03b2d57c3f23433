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

import math
import re
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import DatasetError, InvalidInputError
from .train_data import read_jsonl

GENERATION_METRICS = ("bleu", "chrf", "rouge", "exact")
METRICS = ("perplexity",) + GENERATION_METRICS
DEFAULT_MAX_NEW_TOKENS = 128


def _model(model, threads: int | None = None):
    """An llmos.Model, loading a registry name or folder."""
    from .model import Model, load

    if isinstance(model, Model):
        return model
    from .registry import resolve

    return load(resolve(model), threads=threads)


# ---- perplexity --------------------------------------------------------------------------------


def _log_softmax64(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def token_nll(model, ids: Sequence[int], *, max_length: int | None = None,
              stride: int | None = None) -> np.ndarray:
    """Negative log-likelihood of every scored token, in nats (float64, in text order): every
    token after the first, except those that open a window with no overlap (stride == max_length).

    A text longer than ``max_length`` is scored in windows that start ``stride`` tokens apart;
    each token is scored once, in the first window that holds it with the most context before
    it that this schedule allows (transformers' strided perplexity)."""
    model = _model(model)
    ids = [int(i) for i in ids]
    n = len(ids)
    if n < 2:
        return np.zeros(0)
    ctx = model.config.max_position_embeddings
    max_length = min(max_length or ctx, ctx)
    stride = stride or max(1, max_length // 2)
    if not 1 <= stride <= max_length:
        raise InvalidInputError(f"stride: expected 1..{max_length}, got {stride}", field="stride")
    out = np.full(n - 1, np.nan)
    prev_end = 0
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        first = max(prev_end, begin + 1)  # global index of the first token this window scores
        if first < end:
            logp = _log_softmax64(model.logits(ids[begin:end]))
            rows = np.arange(first - 1 - begin, end - 1 - begin)
            out[first - 1:end - 1] = -logp[rows, np.asarray(ids[first:end])]
        prev_end = end
        if end == n:
            break
    return out[~np.isnan(out)]


def perplexity(model, texts: str | Iterable[str], *, stride: int | None = None, max_length: int | None = None,
               add_special_tokens: bool = True) -> dict:
    """Corpus perplexity: exp(mean NLL over every predicted token of every text).

    Texts are tokenized as transformers' tokenizer(text) does (BOS if the tokenizer adds it).
    Returns {"perplexity", "nll" (mean, nats), "tokens" (predicted), "texts"}."""
    model = _model(model)
    if isinstance(texts, str):
        texts = [texts]
    total, count, n_texts = 0.0, 0, 0
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInputError(f"texts[{i}]: expected a string, got {type(text).__name__}", field="texts")
        n_texts += 1
        nll = token_nll(model, model.tokenizer.encode(text, add_special_tokens=add_special_tokens),
                        max_length=max_length, stride=stride)
        total += float(nll.sum())
        count += nll.size
    if count == 0:
        raise InvalidInputError("perplexity: no text has two or more tokens", field="texts")
    return {"perplexity": math.exp(total / count), "nll": total / count, "tokens": count, "texts": n_texts}


# ---- references and generations ---------------------------------------------------------------------


def _ref_lists(references: Sequence) -> list[list[str]]:
    out = []
    for i, r in enumerate(references):
        refs = [r] if isinstance(r, str) else list(r) if isinstance(r, (list, tuple)) else None
        if not refs or not all(isinstance(x, str) for x in refs):
            raise InvalidInputError(f"references[{i}]: expected a string or a non-empty list of strings",
                                    field="references")
        out.append(refs)
    return out


def _check_pairs(hypotheses: Sequence[str], references: Sequence) -> list[list[str]]:
    if isinstance(hypotheses, str):
        raise InvalidInputError("hypotheses: expected a list of strings", field="hypotheses")
    refs = _ref_lists(references)
    if len(refs) != len(hypotheses):
        raise InvalidInputError(f"{len(hypotheses)} hypotheses but {len(refs)} references", field="references")
    if not refs:
        raise InvalidInputError("no hypotheses to score", field="hypotheses")
    for i, h in enumerate(hypotheses):
        if not isinstance(h, str):
            raise InvalidInputError(f"hypotheses[{i}]: expected a string", field="hypotheses")
    return refs


def _streams(refs: list[list[str]]) -> list[list[str | None]]:
    """Per-hypothesis reference lists -> sacrebleu's reference streams (None where one has fewer)."""
    width = max(len(r) for r in refs)
    return [[r[k] if k < len(r) else None for r in refs] for k in range(width)]


_HAN = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff"
_KANA = r"\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f"
_CJK_CHAR = re.compile(f"[{_HAN}{_KANA}\u3005\u3006\u3007]")
_KANA_CHAR = re.compile(f"[{_KANA}]")
_TOKEN = re.compile(f"[{_HAN}{_KANA}\u3005\u3006\u3007]|(?:(?![{_HAN}{_KANA}\u3005\u3006\u3007])[^\\W_])+")


def cjk_tokenize(text: str) -> list[str]:
    """Lower-cased tokens: each Chinese/Japanese character alone, runs of other letters and
    digits as words (on ASCII text: exactly rouge-score's default tokens without stemming)."""
    return _TOKEN.findall(text.lower())



class CJKTokenizer:
    """A rouge-score tokenizer (an object with ``tokenize``) built on `cjk_tokenize`."""

    def tokenize(self, text: str) -> list[str]:
        return cjk_tokenize(text)


def _auto_bleu_tokenize(texts: Iterable[str]) -> str:
    """sacrebleu's tokenizer for the language: 'zh' for Chinese, 'char' for Japanese (its
    'ja-mecab' needs MeCab), else the standard '13a'."""
    sample = "".join(t for t in texts if t)[:20000]
    if not sample:
        return "13a"
    cjk = len(_CJK_CHAR.findall(sample))
    if cjk < 0.1 * len(sample):
        return "13a"
    return "char" if _KANA_CHAR.search(sample) else "zh"


def bleu(hypotheses: Sequence[str], references: Sequence, *, tokenize: str | None = None, **options) -> dict:
    """sacrebleu's corpus BLEU. ``references``: one string or a list of strings per hypothesis.
    ``tokenize`` None picks by language (see `_auto_bleu_tokenize`). Returns {"score",
    "signature", "details"}."""
    from sacrebleu.metrics import BLEU

    refs = _check_pairs(hypotheses, references)
    tok = tokenize or _auto_bleu_tokenize(r for rs in refs for r in rs)
    metric = BLEU(tokenize=tok, **options)
    s = metric.corpus_score(list(hypotheses), _streams(refs))
    return {"metric": "bleu", "score": s.score, "signature": str(metric.get_signature()),
            "details": {"precisions": list(s.precisions), "bp": s.bp, "sys_len": s.sys_len, "ref_len": s.ref_len,
                        "text": str(s)}}


def chrf(hypotheses: Sequence[str], references: Sequence, **options) -> dict:
    """sacrebleu's corpus chrF (``word_order=2`` gives chrF++). Returns {"score", "signature"}."""
    from sacrebleu.metrics import CHRF

    refs = _check_pairs(hypotheses, references)
    metric = CHRF(**options)
    s = metric.corpus_score(list(hypotheses), _streams(refs))
    return {"metric": "chrf", "score": s.score, "signature": str(metric.get_signature()),
            "details": {"text": str(s)}}


def rouge(hypotheses: Sequence[str], references: Sequence, *,
          types: Sequence[str] = ("rouge1", "rouge2", "rougeL"), tokenizer=None) -> dict:
    """rouge-score's ROUGE, averaged over the pairs (best reference where there are several).
    ``score`` is the mean ROUGE-L F1 x 100 (the last type's); ``details`` has precision, recall
    and F1 (0..1) of every type."""
    from rouge_score import rouge_scorer

    refs = _check_pairs(hypotheses, references)
    scorer = rouge_scorer.RougeScorer(list(types), tokenizer=tokenizer or CJKTokenizer())
    sums = {t: np.zeros(3) for t in types}
    for h, rs in zip(hypotheses, refs):
        scores = scorer.score(rs[0], h) if len(rs) == 1 else scorer.score_multi(rs, h)
        for t in types:
            sums[t] += (scores[t].precision, scores[t].recall, scores[t].fmeasure)
    n = len(refs)
    details = {t: {"precision": v[0] / n, "recall": v[1] / n, "fmeasure": v[2] / n} for t, v in sums.items()}
    main = "rougeL" if "rougeL" in details else list(types)[-1]
    return {"metric": "rouge", "score": 100 * details[main]["fmeasure"], "main": main,
            "signature": f"rouge-score|types:{'+'.join(types)}|tok:cjk-char+words|stem:no|agg:mean",
            "details": details}


def _norm(text: str) -> str:
    return " ".join(text.split())


def exact(hypotheses: Sequence[str], references: Sequence) -> dict:
    """Share of hypotheses equal to one of their references (whitespace runs collapsed), x 100."""
    refs = _check_pairs(hypotheses, references)
    hits = sum(any(_norm(h) == _norm(r) for r in rs) for h, rs in zip(hypotheses, refs))
    return {"metric": "exact", "score": 100.0 * hits / len(refs), "matches": hits,
            "signature": "exact|normalize:whitespace|case:sensitive"}


SCORERS = {"bleu": bleu, "chrf": chrf, "rouge": rouge, "exact": exact}


# ---- datasets ---------------------------------------------------------------------------------------


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

    model = _model(model)
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
    ref = model if isinstance(model, str) else getattr(model, "path", None)
    m = _model(model, threads)
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
