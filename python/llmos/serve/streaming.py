"""Running engine requests for one HTTP request: pieces of several engine requests merged into
one stream (a completion with several prompts, n choices), server-sent events, the client's
disconnect turned into cancel(), and the latency metrics taken on the way.

A request's slot is freed by cancel(): the engine drops the sequence at its next step."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from starlette.responses import StreamingResponse

from llmos.errors import CancelledError, LlmosError
from llmos.serve.api_errors import APIError, from_llmos

DONE = "data: [DONE]\n\n"


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


def finish_reason(engine_reason: str | None) -> str | None:
    return None if engine_reason is None else ("length" if engine_reason == "length" else "stop")


@dataclass
class Tagged:
    """A piece of engine request `source` (its index among the HTTP request's engine requests)."""

    source: int
    piece: object


class Run:
    """The engine requests of one HTTP request, and the bookkeeping every route shares."""

    def __init__(self, requests: list, metrics, model_name: str):
        self.requests = requests
        self._metrics = metrics
        self._model = model_name
        self.tokens_out = 0
        self._last: dict[int, float] = {}
        self._first_seen = False

    def cancel(self) -> None:
        for r in self.requests:
            r.cancel()

    def _timing(self, source: int, piece) -> None:
        now = time.monotonic()
        n = len(piece.token_ids)
        self.tokens_out += n
        if not n:
            return
        key = source * 1_000_003 + piece.index
        if not self._first_seen:
            self._first_seen = True
            r = self.requests[source]
            self._metrics.ttft.labels(model=self._model).observe(now - r.submit_time)
        elif key in self._last:
            self._metrics.itl.labels(model=self._model).observe((now - self._last[key]) / n)
        self._last[key] = now

    async def pieces(self) -> AsyncIterator[Tagged]:
        """Every piece of every engine request, as produced."""
        if len(self.requests) == 1:
            async for piece in self.requests[0]:
                self._timing(0, piece)
                yield Tagged(0, piece)
            return
        queue: asyncio.Queue = asyncio.Queue()
        end = object()

        async def pump(i, r):
            try:
                async for piece in r:
                    await queue.put(Tagged(i, piece))
                await queue.put(end)
            except BaseException as e:  # handed to the consumer
                await queue.put(e)

        tasks = [asyncio.ensure_future(pump(i, r)) for i, r in enumerate(self.requests)]
        try:
            left = len(tasks)
            while left:
                item = await queue.get()
                if item is end:
                    left -= 1
                    continue
                if isinstance(item, BaseException):
                    raise item
                self._timing(item.source, item.piece)
                yield item
        finally:
            for t in tasks:
                t.cancel()

    async def results(self, http_request) -> list:
        """Each engine request's result (a Generation, or a list for n > 1), cancelling all of them
        when the client goes away first."""
        watcher = asyncio.ensure_future(disconnected(http_request))
        try:
            gathered = asyncio.ensure_future(asyncio.gather(*(r.aresult() for r in self.requests)))
            done, _ = await asyncio.wait({watcher, gathered}, return_when=asyncio.FIRST_COMPLETED)
            if gathered not in done:
                self.cancel()
                gathered.cancel()
                raise CancelledError("the client disconnected")
            results = gathered.result()
        finally:
            watcher.cancel()
        now = time.monotonic()
        for r, res in zip(self.requests, results):
            gens = res if isinstance(res, list) else [res]
            self.tokens_out += sum(len(g.token_ids) for g in gens)
            first = getattr(r, "first_token_time", None)
            if first is not None:
                self._metrics.ttft.labels(model=self._model).observe(first - r.submit_time)
                n = sum(len(g.token_ids) for g in gens)
                if n > 1:
                    self._metrics.itl.labels(model=self._model).observe((now - first) / (n - 1))
        return results


async def disconnected(http_request) -> None:
    while True:
        message = await http_request.receive()
        if message["type"] == "http.disconnect":
            return


def submit_all(engine, prompts: list[list[int]], options: dict, *, prompt_param: str) -> list:
    """engine.submit for every prompt; on a refusal the ones already queued are cancelled."""
    requests = []
    try:
        for ids in prompts:
            requests.append(engine.submit(ids, **options))
    except LlmosError as e:
        for r in requests:
            r.cancel()
        raise from_llmos(e, prompt_param=prompt_param) from e
    return requests


def error_event(e: BaseException) -> str:
    err = e if isinstance(e, APIError) else (from_llmos(e) if isinstance(e, LlmosError) else
                                             APIError(500, f"{type(e).__name__}: {e}", type="server_error"))
    return sse(err.body())


class EventStream(StreamingResponse):
    """Server-sent events whose `finish` (free the slot, cancel what still runs, count the
    outcome) runs exactly once however the response ends: completed, failed, or cancelled by a
    disconnect, even one that comes before the first event, when the generator never started
    and so never reaches a finally of its own."""

    def __init__(self, events, finish: Callable[[], None]):
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._finish = finish

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._finish()
            await self.body_iterator.aclose()
