"""A stand-in for llmos.Engine (ENGINE_API.md §3) while the real one is being written: the same
surface (submit -> Request with sync / async iteration over Pieces, cancel, result, stats, close,
BusyError when the queue is full), built from threads over Model.generate. Test-only; it batches
nothing. Delete it once llmos.Engine has landed."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

from llmos import _core
from llmos.errors import BusyError, CancelledError, ContextLengthError
from llmos.runtime.generation import to_core_options
from llmos.runtime.model import CancelToken
from llmos.text.stream import IncrementalDecoder


@dataclass
class Piece:
    index: int
    text: str
    token_ids: list
    logprobs: list | None
    top_logprobs: list | None
    finish_reason: str | None


class Request:
    def __init__(self, engine, ids, n, generation_config, options):
        self.prompt_token_ids = ids
        self.n = n
        self.submit_time = time.monotonic()
        self.first_token_time = None
        self.done = False
        self._engine, self._cfg, self._options = engine, generation_config, options
        self._token = CancelToken()
        self._items: list = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._waiters: list = []
        self._result = None
        self._error: BaseException | None = None

    def _put(self, item) -> None:
        with self._lock:
            self._items.append(item)
            self._changed.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            loop.call_soon_threadsafe(lambda f=fut: f.done() or f.set_result(None))

    def _run(self) -> None:
        e = self._engine
        try:
            with e._slots:
                with e._lock:
                    e._waiting -= 1
                    e._running += 1
                try:
                    if self._token.cancelled():
                        raise CancelledError("cancelled")
                    out = e.model.generate(self.prompt_token_ids, self._cfg, cancel=self._token, **self._options)
                finally:
                    with e._lock:
                        e._running -= 1
            gens = out if isinstance(out, list) else [out]
            self.first_token_time = time.monotonic()
            for i, g in enumerate(gens):
                for piece in _pieces(e.model.tokenizer, self.prompt_token_ids, i, g):
                    if self._token.cancelled():
                        raise CancelledError("cancelled")
                    self._put(piece)
            self._result = out
        except BaseException as exc:
            self._error = CancelledError("the request was cancelled") if self._token.cancelled() else exc
        self.done = True
        self._put(None)

    def cancel(self) -> None:
        self._token.cancel()

    def __iter__(self):
        i = 0
        while True:
            with self._lock:
                while i >= len(self._items):
                    self._changed.wait()
                item = self._items[i]
            i += 1
            if item is None:
                if self._error is not None:
                    raise self._error
                return
            yield item

    async def __aiter__(self):
        i = 0
        loop = asyncio.get_running_loop()
        while True:
            with self._lock:
                fut = None
                if i >= len(self._items):
                    fut = loop.create_future()
                    self._waiters.append((loop, fut))
            if fut is not None:
                await fut
                continue
            item = self._items[i]
            i += 1
            if item is None:
                if self._error is not None:
                    raise self._error
                return
            yield item

    def result(self, timeout=None):
        for _ in self:
            pass
        return self._result

    async def aresult(self):
        async for _ in self:
            pass
        return self._result


def _pieces(tokenizer, prompt, index, g):
    decoder = IncrementalDecoder(tokenizer, skip_special_tokens=True, prefix_ids=prompt)
    sent = ""
    ids = g.token_ids
    for k, t in enumerate(ids):
        last = k == len(ids) - 1
        text = decoder.push(t)
        if last:
            text += decoder.flush()
        if not g.text.startswith(sent + text) or last:
            text = g.text[len(sent):] if last else ""
        sent += text
        yield Piece(index, text, [t], [g.logprobs[k]] if g.logprobs else None,
                    [g.top_logprobs[k]] if g.top_logprobs else None, g.finish_reason if last else None)


class Engine:
    def __init__(self, model, *, max_running=64, max_waiting=256, **_ignored):
        self.model = model
        self._slots = threading.Semaphore(max_running)
        self._max_waiting = max_waiting
        self._lock = threading.Lock()
        self._running = self._waiting = 0
        self._closed = False

    def submit(self, prompt, generation_config=None, *, cancel=None, constraint=None, **options) -> Request:
        m = self.model
        ids = m._ids(prompt)
        cfg, explicit = m._config(generation_config, options)
        core, _ = to_core_options(_core, cfg, len(ids), m.config.vocab_size, m.config.max_position_embeddings,
                                  explicit_limit=explicit)
        if explicit and len(ids) + core.max_new_tokens > m.config.max_position_embeddings:
            raise ContextLengthError(f"max_new_tokens: {len(ids)} + {core.max_new_tokens} > context",
                                     field="max_new_tokens")
        with self._lock:
            if self._closed:
                raise BusyError("the engine is closed", retry_after=1.0)
            if self._waiting >= self._max_waiting and self._running > 0:
                raise BusyError(f"{self._waiting} requests wait already", retry_after=1.0)
            self._waiting += 1
        req = Request(self, ids, int(cfg.get("num_return_sequences")), generation_config, options)
        threading.Thread(target=req._run, daemon=True, name="stand-in-engine").start()
        return req

    def stats(self) -> dict:
        with self._lock:
            return {"running": self._running, "waiting": self._waiting, "kv_blocks_total": 0, "kv_blocks_used": 0,
                    "kv_blocks_cached": 0, "prefix_queries": 0, "prefix_hits": 0, "preemptions": 0, "steps": 0}

    def close(self, drain_seconds: float = 0.0) -> None:
        with self._lock:
            self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
