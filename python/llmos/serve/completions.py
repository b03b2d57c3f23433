"""/v1/completions: continue prompts (text or token ids, one or several), n choices each, with
OpenAI's legacy logprobs object and `echo`.

echo with logprobs scores the prompt itself: log_softmax of `model.logits(prompt)` gives each
prompt token's logprob given the ones before it (the first has none), with the top
alternatives, which is how lm-evaluation-harness's `local-completions` model scores a
continuation (it sends context + continuation with echo=True, logprobs=1, max_tokens=1)."""

from __future__ import annotations

import time
import uuid

import anyio
import numpy as np

from llmos.serve.api_errors import invalid
from llmos.serve.options import check_context, sampling_options, token_ids
from llmos.serve.streaming import DONE, Run, finish_reason, sse, submit_all


def prompts_of(req) -> list:
    p = req.prompt
    if isinstance(p, str) or (p and isinstance(p[0], int)):
        return [p]
    if not p:
        raise invalid("prompt: is empty", param="prompt")
    return list(p)


def check(req) -> None:
    if req.suffix:
        raise invalid("suffix: insertion (fill-in-the-middle) is not supported", param="suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise invalid(f"best_of: only best_of == n is supported (got best_of={req.best_of}, n={req.n})",
                      param="best_of")


def engine_options(req) -> dict:
    o = sampling_options(req)
    if req.max_tokens is not None:
        o["max_new_tokens"] = req.max_tokens
    if req.logprobs is not None:
        o["logprobs"] = True
        o["top_logprobs"] = req.logprobs
    return o


class Completion:
    """One /v1/completions request against one model."""

    def __init__(self, req, model, engine, metrics, name: str):
        self.req, self.model, self.engine, self.metrics, self.name = req, model, engine, metrics, name
        self.id = "cmpl-" + uuid.uuid4().hex
        self.created = int(time.time())
        check(req)
        self.texts = prompts_of(req)
        self.options = engine_options(req)
        self.prompts: list[list[int]] = []
        self.run: Run | None = None

    def prepare(self) -> None:
        """Tokenizes and checks the prompts against the context (in a worker thread)."""
        self.prompts = [token_ids(self.model, p, param="prompt") for p in self.texts]
        for ids in self.prompts:
            check_context(self.model, len(ids), self.req.max_tokens, param="prompt")

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    def _token_text(self, t: int) -> str:
        return self.model.tokenizer.decode([t], skip_special_tokens=False)

    def _prompt_text(self, i: int) -> str:
        p = self.texts[i]
        return p if isinstance(p, str) else self.model.tokenizer.decode(p)

    async def _echo_logprobs(self, i: int) -> dict | None:
        if self.req.logprobs is None:
            return None
        ids = self.prompts[i]
        logits = await anyio.to_thread.run_sync(self.model.logits, ids)
        shifted = logits - logits.max(axis=-1, keepdims=True)
        logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        tokens = [self._token_text(t) for t in ids]
        token_lps: list = [None]
        tops: list = [None]
        k = self.req.logprobs
        for pos in range(1, len(ids)):
            row = logp[pos - 1]
            token_lps.append(float(row[ids[pos]]))
            top = {tokens[pos]: float(row[ids[pos]])}
            if k:
                for t in np.argsort(-row, kind="stable")[:k]:
                    top.setdefault(self._token_text(int(t)), float(row[t]))
            tops.append(top)
        return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops,
                "text_offset": _offsets(tokens, 0)}

    def _logprobs(self, token_ids_, logprobs, top_logprobs, start: int) -> dict | None:
        if self.req.logprobs is None or logprobs is None:
            return None
        tokens = [self._token_text(t) for t in token_ids_]
        tops = []
        for k, t in enumerate(token_ids_):
            top = {tokens[k]: float(logprobs[k])}
            for alt, lp in (top_logprobs[k] if top_logprobs else [])[: self.req.logprobs]:
                top.setdefault(self._token_text(int(alt)), float(lp))
            tops.append(top if self.req.logprobs else None)
        return {"tokens": tokens, "token_logprobs": [float(x) for x in logprobs], "top_logprobs": tops,
                "text_offset": _offsets(tokens, start)}

    def submit(self) -> None:
        if self.req.max_tokens == 0:
            self.run = Run([], self.metrics, self.name)
            return
        self.run = Run(submit_all(self.engine, self.prompts, self.options, prompt_param="prompt"), self.metrics,
                       self.name)

    def usage(self, completion_tokens: int) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    async def respond(self, http_request) -> dict:
        results = await self.run.results(http_request) if self.run.requests else [None] * len(self.prompts)
        choices = []
        n = self.req.n
        for i, res in enumerate(results):
            gens = [None] * n if res is None else (res if isinstance(res, list) else [res])
            echo_lp = await self._echo_logprobs(i) if self.req.echo else None
            for j, g in enumerate(gens):
                text = g.text if g is not None else ""
                lp = self._logprobs(g.token_ids, g.logprobs, g.top_logprobs, 0) if g is not None else None
                if self.req.echo:
                    prompt_text = self._prompt_text(i)
                    text = prompt_text + text
                    if echo_lp is not None:
                        lp = _join(echo_lp, lp, len(prompt_text))
                choices.append({"index": i * n + j, "text": text, "logprobs": lp,
                                "finish_reason": finish_reason(g.finish_reason) if g is not None else "length"})
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.name,
                "choices": choices, "usage": self.usage(self.run.tokens_out)}

    async def stream(self):
        """The SSE events, after submit() (whose refusals are then plain 4xx answers)."""
        n = self.req.n
        include_usage = bool(self.req.stream_options and self.req.stream_options.include_usage)

        def chunk(index, text, lp=None, reason=None):
            return sse({"id": self.id, "object": "text_completion", "created": self.created, "model": self.name,
                        "choices": [{"index": index, "text": text, "logprobs": lp, "finish_reason": reason}]})

        offsets = {}
        if self.req.echo:
            for i in range(len(self.prompts)):
                prompt_text = self._prompt_text(i)
                echo_lp = await self._echo_logprobs(i)
                for j in range(n):
                    offsets[i * n + j] = len(prompt_text)
                    yield chunk(i * n + j, prompt_text, echo_lp,
                                "length" if not self.run.requests else None)
        async for tagged in self.run.pieces():
            p = tagged.piece
            index = tagged.source * n + p.index
            start = offsets.get(index, 0)
            offsets[index] = start + len(p.text)
            lp = self._logprobs(p.token_ids, p.logprobs, p.top_logprobs, start)
            yield chunk(index, p.text, lp, finish_reason(p.finish_reason))
        if include_usage:
            yield sse({"id": self.id, "object": "text_completion", "created": self.created, "model": self.name,
                       "choices": [], "usage": self.usage(self.run.tokens_out)})
        yield DONE


def _offsets(tokens: list[str], start: int) -> list[int]:
    out, at = [], start
    for t in tokens:
        out.append(at)
        at += len(t)
    return out


def _join(echo: dict, gen: dict | None, shift: int) -> dict:
    if gen is None:
        return echo
    return {key: echo[key] + gen[key] if key != "text_offset" else echo[key] + [o + shift for o in gen[key]]
            for key in echo}
