"""Perplexity from the model's logits, with log-softmax in float64: equal to transformers'
loss-based perplexity on the same token ids. Texts longer than the window are scored with
overlapping windows, each token once, as transformers' perplexity guide does."""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from llmos.errors import InvalidInputError
from llmos.runtime.load import load
from llmos.runtime.model import Model


def as_model(model, threads: int | None = None, adapter: str | None = None):
    """An llmos.Model, loading a registry name or folder (with a LoRA adapter merged if given)."""
    if isinstance(model, Model):
        if adapter is not None:
            raise InvalidInputError("adapter: a loaded Model already has its weights; load it with "
                                    "llmos.load(..., adapter=...)", field="adapter")
        return model
    return load(model, threads=threads, adapter=adapter)


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
    model = as_model(model)
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
    model = as_model(model)
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
