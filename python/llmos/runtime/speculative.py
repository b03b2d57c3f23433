"""Speculative decoding: a cheap draft proposes k tokens, the target checks them in one forward.

Two drafts, with transformers' option names: another llmos model sharing the tokenizer
(`draft_model=`, `num_assistant_tokens=` tokens per round) and n-gram prompt lookup
(`prompt_lookup_num_tokens=`, `max_matching_ngram_size=`), which copies what followed the last
n-gram's earlier occurrence in the prompt and output.

The target prefills the whole prompt in one forward and takes the first token from it, as plain
decoding does (a long prompt then takes the same many-token kernels). Each round then runs
[last token] + draft as one k + 1 token forward on its own contiguous KV cache
(`_core.Session`) and gets a row of logits per position; the cache is then cut back to the
accepted tokens (`Session.truncate`, the only thing the core adds for this). Each row goes
through the same processors and warpers as plain decoding (`_core.process_logits`), so:
- greedy: the target's choice at each position is the argmax plain decoding would take; a draft
  token is kept while it equals it, and the first disagreement is replaced by it. Output is
  token-identical to plain decoding (the forward keeps the row kernels: limits.max_speculative_tokens).
- sampling: the standard rule (Leviathan et al. 2023, Chen et al. 2023): draft token d drawn from
  q is kept with probability min(1, p(d) / q(d)); on rejection the token is drawn from
  norm(max(0, p - q)); when all k are kept one more is drawn from p. Prompt lookup's draft is
  deterministic (q one-hot). Each emitted token is then distributed as p, the target's processed
  distribution; the random stream differs from plain sampling's, so a seed gives other tokens.

Each emitted token goes through `on_token` as in the core's loop (stop strings, streaming), and
EOS, a stop, or max_new_tokens inside an accepted run ends generation at that token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmos import _core, limits
from llmos.errors import InvalidInputError

# transformers' default for prompt lookup's n-gram size.
DEFAULT_MAX_MATCHING_NGRAM_SIZE = 2
# Draft length when a draft model is given without num_assistant_tokens (transformers starts at
# 20 and adapts; here the verify forward must stay within limits.max_speculative_tokens).
DEFAULT_NUM_ASSISTANT_TOKENS = 5


@dataclass
class Speculation:
    """What drafts the target verifies: a draft model's core (with num_assistant_tokens per
    round) or prompt lookup (num_tokens, max_ngram)."""

    draft_core: object | None
    num_tokens: int
    max_ngram: int = DEFAULT_MAX_MATCHING_NGRAM_SIZE


def _int_option(name, value, low, high=None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{name}: expected an integer, got {value!r}", field=name)
    if value < low:
        raise InvalidInputError(f"{name}: must be >= {low}, got {value}", field=name)
    if high is not None:
        limits.check(high, value, what=name)
    return value


def speculation_for(target, draft_model, cfg) -> Speculation | None:
    """The Speculation that `draft_model` and cfg's prompt_lookup_num_tokens /
    max_matching_ngram_size / num_assistant_tokens ask for, or None; refuses what it cannot do."""
    lookup = cfg.prompt_lookup_num_tokens
    if draft_model is None and lookup is None:
        if cfg.num_assistant_tokens is not None:
            raise InvalidInputError("num_assistant_tokens: needs draft_model=", field="num_assistant_tokens")
        return None
    if draft_model is not None and lookup is not None:
        raise InvalidInputError("prompt_lookup_num_tokens: give either draft_model= or prompt_lookup_num_tokens, "
                                "not both", field="prompt_lookup_num_tokens")
    for name, why in (("num_beams", "beam search"), ("num_return_sequences", "several returned sequences")):
        if cfg.get(name) != 1:
            raise InvalidInputError(f"{name}: speculative decoding does not support {why} ({name}=1 needed)",
                                    field=name)
    if cfg.get("logprobs") or cfg.get("top_logprobs"):
        raise InvalidInputError("logprobs: not returned by speculative decoding", field="logprobs")
    for name in ("response_format", "guided_json", "guided_regex", "guided_grammar"):
        if getattr(cfg, name) is not None:
            raise InvalidInputError(f"{name}: structured output is not supported with speculative decoding",
                                    field=name)
    if target.backend.name != "cpu":
        raise InvalidInputError(f"draft_model: speculative decoding needs the cpu backend, not {target.backend.name}",
                                field="draft_model")
    if lookup is not None:
        n = _int_option("prompt_lookup_num_tokens", lookup, 1, "max_speculative_tokens")
        g = cfg.max_matching_ngram_size
        g = DEFAULT_MAX_MATCHING_NGRAM_SIZE if g is None else _int_option("max_matching_ngram_size", g, 1)
        return Speculation(None, n, g)
    _check_draft(target, draft_model)
    n = cfg.num_assistant_tokens
    n = DEFAULT_NUM_ASSISTANT_TOKENS if n is None else _int_option("num_assistant_tokens", n, 1,
                                                                   "max_speculative_tokens")
    return Speculation(draft_model.backend.core, n)


def _check_draft(target, draft) -> None:
    from llmos.runtime.model import Model  # same layer; imported here to avoid a cycle

    if not isinstance(draft, Model):
        raise InvalidInputError(f"draft_model: expected an llmos.Model, got {type(draft).__name__}", field="draft_model")
    if draft.backend.name != "cpu":
        raise InvalidInputError(f"draft_model: {draft.path} runs on the {draft.backend.name} backend; the draft needs "
                                "the cpu backend", field="draft_model")
    if draft.config.vocab_size != target.config.vocab_size:
        raise InvalidInputError(f"draft_model: {draft.path} has a vocabulary of {draft.config.vocab_size} tokens, the "
                                f"target {target.path} {target.config.vocab_size}; the draft must share the target's "
                                "tokenizer", field="draft_model")
    a = draft.tokenizer._backend.get_vocab(with_added_tokens=True)
    b = target.tokenizer._backend.get_vocab(with_added_tokens=True)
    if a != b:
        differ = sorted(set(a.items()) ^ set(b.items()))[:3]
        raise InvalidInputError(f"draft_model: {draft.path}'s tokenizer differs from the target's {target.path} "
                                f"(e.g. {differ}); the draft must share the target's tokenizer", field="draft_model")


def prompt_lookup(seq: list[int], num_tokens: int, max_ngram: int) -> list[int]:
    """transformers' PromptLookupCandidateGenerator: for n from max_ngram down to 1, the first
    earlier occurrence of seq's last n tokens that has tokens after it gives up to num_tokens of them."""
    L = len(seq)
    for n in range(min(max_ngram, L - 1), 0, -1):
        tail = seq[L - n:]
        for start in range(0, L - n):
            if seq[start:start + n] == tail:
                follow = seq[start + n:min(start + n + num_tokens, L)]
                if follow:
                    return follow
    return []


def _softmax(row: np.ndarray) -> np.ndarray:
    m = np.max(row)
    e = np.exp(row - m)
    return e / e.sum()


def _draw(p: np.ndarray, rng: np.random.Generator) -> int:
    # searchsorted on the running sum: exact for a distribution with zeros (banned tokens).
    c = np.cumsum(p, dtype=np.float64)
    return int(min(np.searchsorted(c, rng.random() * c[-1], side="right"), len(p) - 1))


def generate(target_core, spec: Speculation, prompts, options, on_token=None, cancel=None) -> list[dict]:
    """The backend.generate contract (one result dict per prompt) with speculation; `stats`
    in each dict counts drafted and accepted tokens and target forwards."""
    return [_one(target_core, spec, i, list(p), options, on_token, cancel) for i, p in enumerate(prompts)]


def _one(core, spec: Speculation, index, prompt, o, on_token, cancel) -> dict:
    eos = set(o.eos_token_ids)
    plen = len(prompt)
    sampling = o.do_sample
    rng = np.random.default_rng(o.seed)
    seq = list(prompt)
    out: list[int] = []
    stats = {"drafted": 0, "accepted": 0, "forwards": 0}

    def check():
        if cancel is not None and cancel.cancelled():
            from llmos.errors import CancelledError
            raise CancelledError("generation was cancelled")

    def emit(tokens) -> str | None:
        """Emits one token at a time as the core's loop does; the finish reason when EOS, a stop
        string or the length limit ends generation (at that token), else None."""
        for t in tokens:
            out.append(t)
            seq.append(t)
            stop = bool(on_token(index, t)) if on_token else False
            if t in eos:
                return "eos"
            if stop:
                return "stop"
            if len(out) >= o.max_new_tokens:
                return "length"
        return None

    def choose(row, work) -> int:
        """The token plain decoding takes from this row of logits after `work`."""
        scores = _core.process_logits(o, work, plen, row)
        return _draw(_softmax(scores.astype(np.float64)), rng) if sampling else int(np.argmax(scores))

    target = _core.Session(core)
    drafter = _Draft(spec.draft_core) if spec.draft_core is not None else None
    if o.max_new_tokens == 0:
        return _result(index, out, "length", stats)
    # Prefill the whole prompt in one forward and take the first token from it, as plain
    # decoding does: the prompt then goes through the same kernels (a prompt of
    # kMinPrefillTokens or more takes the many-token kernels, whose rounding differs from the
    # row kernels'), so its cache and the first token match plain decoding's exactly.
    first = target.forward(core, np.asarray(prompt, np.int64), False, cancel)[0]
    stats["forwards"] += 1
    finish = emit([choose(first, seq)])
    if finish:
        return _result(index, out, finish, stats)
    # From here the cache holds seq[:-1]; each round feeds [last] + draft.
    while True:
        check()
        remaining = o.max_new_tokens - len(out)
        # Never draft past max_new_tokens (the round emits up to k + 1 tokens).
        k = min(spec.num_tokens, remaining - 1)
        qs: list[np.ndarray | None] = []
        if k <= 0:
            draft = []
        elif drafter is None:
            draft = prompt_lookup(seq, k, spec.max_ngram)
            qs = [None] * len(draft)
        else:
            draft, qs = drafter.propose(seq, plen, k, o, rng, cancel)
        stats["drafted"] += len(draft)
        base = len(seq)  # the target's cache will hold seq + accepted drafts after the round
        rows = target.forward(core, np.asarray([seq[-1]] + draft, np.int64), True, cancel)
        stats["forwards"] += 1
        emitted: list[int] = []
        for j in range(len(draft) + 1):
            work = seq + emitted
            scores = _core.process_logits(o, work, plen, rows[j])
            if not sampling:
                t = int(np.argmax(scores))
                if j < len(draft) and t == draft[j]:
                    emitted.append(t)
                    continue
                emitted.append(t)
                break
            p = _softmax(scores.astype(np.float64))
            if j == len(draft):
                emitted.append(_draw(p, rng))
                break
            d = draft[j]
            q = qs[j]
            qd = 1.0 if q is None else float(q[d])
            if rng.random() * qd < p[d]:  # accept with probability min(1, p(d) / q(d))
                emitted.append(d)
                continue
            if q is None:
                resid = p.copy()
                resid[d] = 0.0
            else:
                resid = np.maximum(p - q, 0.0)
            if resid.sum() <= 0.0:  # p == q: rejection has probability 0; guard float dust
                resid = p
            emitted.append(_draw(resid, rng))
            break
        stats["accepted"] += min(len(emitted) - 1, len(draft))  # every emitted token but the last was drafted
        finish = emit(emitted)
        if finish:
            return _result(index, out, finish, stats)
        # The cache holds seq_before + draft; keep seq_before + the accepted drafts.
        target.truncate(min(base + len(emitted) - 1, target.n_past))


class _Draft:
    """The draft model's cache and the tokens in it (the core keeps history() only for paged
    and longrope sessions)."""

    def __init__(self, core):
        self.core = core
        self.session = _core.Session(core)
        self.tokens: list[int] = []

    def propose(self, seq, plen, k, o, rng, cancel):
        """k tokens after seq, and for sampling the distribution q each was drawn from (the
        options' processors and warpers applied to the draft's logits)."""
        # Roll back to the longest prefix shared with seq (drafts the target rejected go), then
        # feed what the draft has not seen; one token of seq is always fed to get logits.
        common, lim = 0, min(len(self.tokens), len(seq) - 1)
        while common < lim and self.tokens[common] == seq[common]:
            common += 1
        self.session.truncate(common)
        del self.tokens[common:]
        work = list(seq)
        feed = work[common:]
        draft, qs = [], []
        for _ in range(k):
            logits = self.session.forward(self.core, np.asarray(feed, np.int64), False, cancel)[0]
            self.tokens.extend(feed)
            scores = _core.process_logits(o, work, plen, logits)
            if o.do_sample:
                q = _softmax(scores.astype(np.float64))
                t = _draw(q, rng)
                qs.append(q)
            else:
                t = int(np.argmax(scores))
                qs.append(None)
            draft.append(t)
            work.append(t)
            feed = [t]
        return draft, qs


def _result(index, tokens, finish, stats) -> dict:
    return {"prompt_index": index, "tokens": tokens, "finish_reason": finish, "logprobs": [], "top_logprobs": [],
            "score": 0.0, "stats": stats}
