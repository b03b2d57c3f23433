"""BLEU and chrF (sacrebleu's corpus scores, with its signature for reporting), ROUGE
(rouge-score's, with a tokenizer that keeps non-ASCII words and splits Chinese and Japanese into
characters: rouge-score's default tokenizer deletes every non-ASCII character) and exact match,
of hypotheses against one or several references each."""

from __future__ import annotations

import re

import numpy as np
from typing import Iterable, Sequence

from llmos.errors import InvalidInputError


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
    "signature", "details", "warnings"}.

    The score stays the standard one (sacrebleu's default, comparable with published numbers),
    so texts shorter than four tokens give no 4-gram and a corpus BLEU of 0 (or a smoothed
    near-0): "warnings" then says so and points to chrF. `effective_order=True` (an option of
    sacrebleu's BLEU) scores only the n-gram orders present instead; the signature records it."""
    from sacrebleu.metrics import BLEU

    refs = _check_pairs(hypotheses, references)
    tok = tokenize or _auto_bleu_tokenize(r for rs in refs for r in rs)
    metric = BLEU(tokenize=tok, **options)
    s = metric.corpus_score(list(hypotheses), _streams(refs))
    return {"metric": "bleu", "score": s.score, "signature": str(metric.get_signature()),
            "details": {"precisions": list(s.precisions), "bp": s.bp, "sys_len": s.sys_len, "ref_len": s.ref_len,
                        "text": str(s)},
            "warnings": [] if metric.effective_order else _unmatched_orders(s.counts, s.totals)}


def _unmatched_orders(counts: Sequence[int], totals: Sequence[int]) -> list[str]:
    """The warning for a corpus BLEU that an n-gram order without a single match holds at 0."""
    for n, (matched, total) in enumerate(zip(counts, totals), start=1):
        if matched == 0:
            why = (f"every prediction is shorter than {n} tokens" if total == 0
                   else f"no {n}-gram of the predictions is in a reference")
            return [f"BLEU is 0 or near it because {why}: corpus BLEU multiplies the 1- to 4-gram precisions, "
                    "so one order without a match holds it at 0 whatever else matches (texts under 4 tokens "
                    "always score 0); report chrF (--metric chrf) for short texts"]
    return []


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
