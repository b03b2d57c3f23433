"""Many requests on one model: the Python side of the serving engine (cpp/serving/engine.h).

The core's step thread batches every running sequence into one forward per step and samples
each with its own seeded sampler, so a request's tokens are those `Model.generate` gives
alone. This file turns its events into text: one dispatcher thread per engine polls the core
for the events of all requests (the wait runs without the GIL) and hands each request its
pieces, detokenized and cut at stop strings exactly as `Model.stream` does (the same
IncrementalDecoder and StopMatcher), into a queue that sync and async consumers read.

    with llmos.Engine(model) as engine:
        reqs = [engine.submit(p, max_new_tokens=32) for p in prompts]
        texts = [r.result().text for r in reqs]
"""

from __future__ import annotations

import asyncio
import atexit
import re
import threading
import time
import weakref
from dataclasses import dataclass
from typing import AsyncIterator, Iterator

from llmos import _core, errors, limits
from llmos.errors import BusyError, CancelledError, InvalidInputError
from llmos.runtime.generation import Generation, to_core_options
from llmos.text.stream import IncrementalDecoder, StopMatcher
from llmos.text.structured import constraint_factory

_POLL_S = 0.5           # the dispatcher's longest wait for events (shutdown wakes it at once)
_END = object()         # an async queue's end marker
_DEFAULT_KV_CAP = 1 << 30
_KV_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "int8": 1}


@dataclass
class Piece:
    """New output of one sequence. Joining a sequence's pieces' text gives its final text."""

    index: int                # which sequence (0 .. n-1)
    text: str                 # final text (valid UTF-8, never cut later by a stop string); may be ""
    token_ids: list[int]      # the tokens this piece covers
    logprobs: list[float] | None
    top_logprobs: list[list[tuple[int, float]]] | None
    finish_reason: str | None  # on the last piece of a sequence: "length" | "eos" | "stop"


def parse_memory(value, *, field: str = "kv_memory") -> int:
    """Bytes from an int or a string such as "512MiB", "2GiB", "1.5GB"."""
    if isinstance(value, bool):
        raise InvalidInputError(f"{field}: expected bytes or a size such as '512MiB', got {value!r}", field=field)
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B|B)?\s*", value, re.IGNORECASE)
        if not m:
            raise InvalidInputError(f"{field}: expected a size such as '512MiB' or '2GiB', got {value!r}", field=field)
        unit = (m.group(2) or "B").upper()
        scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
                 "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}[unit]
        n = int(float(m.group(1)) * scale)
    else:
        raise InvalidInputError(f"{field}: expected bytes or a size such as '512MiB', got {type(value).__name__}",
                                field=field)
    if n <= 0:
        raise InvalidInputError(f"{field}: must be positive, got {value!r}", field=field)
    return n


class _Seq:
    """One sequence's text state in the dispatcher: what Model._text_callback keeps per call."""

    def __init__(self, req: "Request", index: int):
        self.index = index
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.top: list[list[tuple[int, float]]] = []
        self.text: list[str] = []
        self.finish: str | None = None
        self.score: float | None = None
        self.remaining = req._options.max_new_tokens
        self.decoder = IncrementalDecoder(req._tokenizer, skip_special_tokens=True,
                                          prefix_ids=req.prompt_token_ids) if req._detok else None
        self.matcher = StopMatcher(req._stop) if req._stop else None


class Request:
    """A submitted request: iterate it (sync or `async for`) for its Pieces, or wait for
    result(). Pieces of all its sequences come in the order they were produced."""

    def __init__(self, engine: "Engine", ids: list[int], options, stop: list[str], constraints, detok: bool):
        self.prompt_token_ids = list(ids)
        self.n = options.num_return_sequences
        self.submit_time = time.monotonic()
        self.first_token_time: float | None = None
        self._engine = engine
        self._options = options
        self._stop = stop
        self._eos = set(options.eos_token_ids)
        self._tokenizer = engine._model.tokenizer
        self._detok = detok
        self._constraints = constraints  # kept alive while the core calls them
        self._id: int | None = None
        self._cond = threading.Condition()
        self._pieces: list[Piece] = []
        self._seqs = [_Seq(self, i) for i in range(self.n)]
        self._open = self.n
        self._error: BaseException | None = None
        self._done = False
        self._async: list = []

    # ---- consumer side ----------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._done

    def cancel(self) -> None:
        """Ends the request within one step and frees its memory; the iterator then raises
        CancelledError."""
        if not self._done and self._id is not None:
            self._engine._core.cancel(self._id)

    def __iter__(self) -> Iterator[Piece]:
        i = 0
        while True:
            with self._cond:
                while i >= len(self._pieces) and not self._done:
                    self._cond.wait()
                batch = self._pieces[i:]
                finished = self._done
            i += len(batch)
            yield from batch
            if finished and i >= len(self._pieces):
                if self._error is not None:
                    raise self._error
                return

    def __aiter__(self) -> AsyncIterator[Piece]:
        return self._aiter()

    async def _aiter(self):
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        with self._cond:
            for p in self._pieces:
                q.put_nowait(p)
            if self._done:
                q.put_nowait(_END)
            else:
                self._async.append((loop, q))
        try:
            while True:
                item = await q.get()
                if item is _END:
                    break
                yield item
        finally:
            with self._cond:
                if (loop, q) in self._async:
                    self._async.remove((loop, q))
        if self._error is not None:
            raise self._error

    def result(self, timeout: float | None = None):
        """The Generation (a list of n for n > 1), as Model.generate returns it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._done:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"the request did not finish within {timeout} s")
                self._cond.wait(left)
        if self._error is not None:
            raise self._error
        return self._generations()

    async def aresult(self):
        async for _ in self:
            pass
        return self.result(0)

    def _generations(self):
        o = self._options
        out = [Generation(
            text="".join(s.text), token_ids=list(s.tokens), finish_reason=s.finish or "length",
            logprobs=list(s.logprobs) if o.logprobs else None,
            top_logprobs=[[(int(t), float(v)) for t, v in row] for row in s.top] if o.top_logprobs > 0 else None,
            score=s.score if o.num_beams > 1 else None, prompt_token_ids=list(self.prompt_token_ids),
        ) for s in self._seqs]
        return out[0] if self.n == 1 and o.num_beams == 1 else out

    # ---- dispatcher side (holds the engine's lock) ------------------------------------

    def _on_event(self, seq: int, tokens, logprobs, top, finish, score, error) -> bool:
        """Takes one core event; returns True once the request is over."""
        if isinstance(error, BaseException):  # raised by Python code the core called (a constraint)
            self._finish(error)
            return True
        if error is not None:
            cls, field, message = error
            self._finish(getattr(errors, cls, errors.LlmosError)(message, field=field or None))
            return True
        s = self._seqs[seq]
        if s.finish is not None:
            return False  # tokens the core made before it heard of a stop string
        if tokens and self.first_token_time is None:
            self.first_token_time = time.monotonic()
        if self._options.num_beams > 1:
            s.score = float(score)
            self._emit_whole(s, tokens, logprobs, top, finish)
        elif not tokens:
            self._emit(s, [], [], [], self._flush(s, True)[0], finish)
        for k, tok in enumerate(tokens if self._options.num_beams == 1 else ()):
            s.remaining -= 1
            last = tok in self._eos or s.remaining <= 0 or (finish is not None and k == len(tokens) - 1)
            text = "" if (tok in self._eos or s.decoder is None) else s.decoder.push(tok)
            text, stopped = self._flush(s, last, text)
            done = None
            if stopped:
                done = "eos" if tok in self._eos else "stop"
                if not last:
                    self._engine._core.finish(self._id, seq)
            elif last:
                done = finish or ("eos" if tok in self._eos else "length")
            self._emit(s, [tok], logprobs[k:k + 1] if logprobs else None, top[k:k + 1] if top else None, text, done)
            if done:
                break
        if self._open == 0:
            self._finish(None)
            return True
        return False

    def _flush(self, s: _Seq, last: bool, text: str = "") -> tuple[str, bool]:
        """Model._text_callback's rule: text is final once no stop string can still cut it."""
        if last and s.decoder is not None:
            text += s.decoder.flush()
        stopped = False
        if s.matcher is not None:
            text, stopped = s.matcher.feed(text)
            if last and not stopped:
                text += s.matcher.flush()
                stopped = s.matcher.stopped
        return text, stopped

    def _emit_whole(self, s: _Seq, tokens, logprobs, top, finish) -> None:
        # A beam comes whole; its text is what Model.generate gives it.
        new = tokens[:-1] if finish == "eos" else tokens
        text = self._engine._model._new_text(self.prompt_token_ids, new) if self._detok else ""
        self._emit(s, list(tokens), logprobs, top, text, finish or "length")

    def _emit(self, s: _Seq, tokens, logprobs, top, text, finish) -> None:
        s.tokens.extend(tokens)
        if logprobs:
            s.logprobs.extend(float(v) for v in logprobs)
        if top:
            s.top.extend(top)
        if text:
            s.text.append(text)
        if finish is not None:
            s.finish = finish
            self._open -= 1
        o = self._options
        piece = Piece(index=s.index, text=text, token_ids=list(tokens),
                      logprobs=[float(v) for v in logprobs] if o.logprobs and logprobs is not None else None,
                      top_logprobs=[[(int(t), float(v)) for t, v in row] for row in top]
                      if o.top_logprobs > 0 and top is not None else None,
                      finish_reason=finish)
        with self._cond:
            self._pieces.append(piece)
            self._cond.notify_all()
            for loop, q in self._async:
                _post(loop, q, piece)

    def _finish(self, error: BaseException | None) -> None:
        with self._cond:
            self._error = error
            self._done = True
            self._constraints = None
            self._cond.notify_all()
            for loop, q in self._async:
                _post(loop, q, _END)


def _post(loop, q, item) -> None:
    try:
        loop.call_soon_threadsafe(q.put_nowait, item)
    except RuntimeError:  # the consumer's loop is closed: nobody is left to read
        pass


class Engine:
    """Continuous batching over one core-backed Model; thread-safe. See the module docstring."""

    def __init__(self, model, *, max_batch_tokens: int = 512, prefill_chunk: int = 256, kv_memory=None,
                 kv_dtype: str = "float32", block_tokens: int = 16, prefix_cache: bool = True,
                 max_running: int = 64, max_waiting: int = 256):
        if getattr(model.backend, "name", None) != "cpu":
            raise InvalidInputError(f"model: the engine runs on the C++ core; this model's backend is "
                                    f"{getattr(model.backend, 'name', type(model.backend).__name__)}", field="model")
        for name, value in (("max_batch_tokens", max_batch_tokens), ("prefill_chunk", prefill_chunk),
                            ("block_tokens", block_tokens), ("max_running", max_running),
                            ("max_waiting", max_waiting)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "max_waiting" else 1):
                raise InvalidInputError(f"{name}: expected a positive integer, got {value!r}", field=name)
        if kv_dtype not in _KV_BYTES:
            raise InvalidInputError(f"kv_dtype: expected one of {', '.join(_KV_BYTES)}, got {kv_dtype!r}",
                                    field="kv_dtype")
        limits.check("max_engine_batch_tokens", max_batch_tokens, what="max_batch_tokens")
        c = model.config
        if kv_memory is None:
            per_token = 2 * c.num_layers * c.num_kv_heads * c.head_dim * _KV_BYTES[kv_dtype]
            kv_memory = min(_DEFAULT_KV_CAP, max_running * c.max_position_embeddings * per_token)
        kv_bytes = parse_memory(kv_memory)
        limits.check("max_engine_kv_bytes", kv_bytes, what="kv_memory")
        self._model = model
        self._core = _core.Engine(model.backend.core, max_batch_tokens, prefill_chunk, kv_bytes,
                                  kv_dtype, block_tokens, bool(prefix_cache), max_running, max_waiting)
        self._lock = threading.Lock()
        self._requests: dict[int, Request] = {}
        self._accepting = True
        self._shut = False
        self._dispatcher = threading.Thread(target=_dispatch, args=(weakref.ref(self), self._core),
                                            name="llmos-engine", daemon=True)
        self._dispatcher.start()
        weakref.finalize(self, self._core.shutdown)
        _open_engines.add(self)

    def submit(self, prompt, generation_config=None, *, cancel=None, constraint=None, **options) -> Request:
        """Queues `prompt` (a string or token ids) with any option Model.generate takes.

        constraint: an llmos._core.TokenConstraint, or a factory called once per sequence; the
        options response_format / guided_json / guided_regex / guided_grammar make one.
        Raises BusyError when max_waiting requests wait already, and the errors generate
        raises for bad input."""
        m = self._model
        if cancel is not None and not isinstance(cancel, _core.CancelToken):
            raise InvalidInputError(f"cancel: expected an llmos.CancelToken or None, got {type(cancel).__name__}",
                                    field="cancel")
        ids = m._ids(prompt)
        cfg, explicit = m._config(generation_config, options)
        if cfg.prompt_lookup_num_tokens is not None or cfg.num_assistant_tokens is not None:
            name = "prompt_lookup_num_tokens" if cfg.prompt_lookup_num_tokens is not None else "num_assistant_tokens"
            raise InvalidInputError(f"{name}: speculative decoding is not supported by the batching engine (or the "
                                    "server); use Model.generate", field=name)
        core_opts, stop = to_core_options(_core, cfg, len(ids), m.config.vocab_size, m.config.max_position_embeddings,
                                          explicit_limit=explicit)
        # Structured output asked by the options (response_format, guided_json, ...).
        factory = constraint_factory(m.tokenizer, cfg, vocab_size=m.config.vocab_size,
                                     eos_token_ids=core_opts.eos_token_ids)
        if factory is not None:
            if constraint is not None:
                raise InvalidInputError(f"constraint: give either constraint= or {factory.field}, not both",
                                        field="constraint")
            if core_opts.num_beams > 1:
                raise InvalidInputError(f"{factory.field}: structured output needs num_beams=1", field=factory.field)
            constraint = factory
        return self._submit_ids(ids, core_opts, stop, cancel, constraint)

    def _submit_ids(self, ids, core_opts, stop, cancel=None, constraint=None, *, detok: bool = True) -> Request:
        constraints = None
        if constraint is not None:
            n = core_opts.num_return_sequences
            if isinstance(constraint, (list, tuple)):  # one per sequence, made already
                if len(constraint) != n:
                    raise InvalidInputError(f"constraint: expected {n} constraints (one per sequence), got "
                                            f"{len(constraint)}", field="constraint")
                constraints = list(constraint)
            elif isinstance(constraint, _core.TokenConstraint):
                if n > 1:
                    raise InvalidInputError("constraint: one constraint instance cannot follow several sequences; "
                                            "pass a factory (called once per sequence)", field="constraint")
                constraints = [constraint]
            elif callable(constraint):
                constraints = [constraint() for _ in range(n)]
            else:
                raise InvalidInputError(f"constraint: expected an llmos._core.TokenConstraint or a factory, got "
                                        f"{type(constraint).__name__}", field="constraint")
        req = Request(self, ids, core_opts, stop, constraints, detok)
        with self._lock:  # registered before the dispatcher can see its first event
            if not self._accepting:
                raise CancelledError("the engine is closed", field="engine")
            rid = self._core.submit(ids, core_opts, constraints, cancel)
            if rid is None:
                raise BusyError("the engine's queue is full (max_waiting requests wait already)", retry_after=1.0)
            req._id = rid
            self._requests[rid] = req
        return req

    def stats(self) -> dict:
        """running, waiting, kv_blocks_total, kv_blocks_used, kv_blocks_cached, prefix_queries,
        prefix_hits, preemptions, steps."""
        return self._core.stats()

    def close(self, drain_seconds: float = 0.0) -> None:
        """Stops accepting requests, lets running ones finish for up to drain_seconds, cancels
        the rest and joins the engine's threads."""
        with self._lock:
            self._accepting = False
        deadline = time.monotonic() + max(0.0, float(drain_seconds))
        while time.monotonic() < deadline:
            with self._lock:
                if not self._requests:
                    break
            time.sleep(0.01)
        self._core.shutdown()
        self._shut = True
        _open_engines.discard(self)
        if self._dispatcher is not threading.current_thread():
            self._dispatcher.join()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _deliver(self, events) -> None:
        """Hands each event to its request (on the dispatcher thread)."""
        with self._lock:
            for rid, seq, tokens, lps, tops, finish, score, error in events:
                req = self._requests.get(rid)
                if req is None:
                    continue
                try:
                    over = req._on_event(seq, tokens, lps, tops, finish, score, error)
                except Exception as e:  # a tokenizer failing on this request ends only it
                    self._core.cancel(rid)
                    req._finish(e)
                    over = True
                if over:
                    del self._requests[rid]

    def _abandon_all(self) -> None:
        with self._lock:  # the core ended every request; anything left was never told
            for req in self._requests.values():
                req._finish(CancelledError("the engine was closed", field="engine"))
            self._requests.clear()


def _dispatch(ref: "weakref.ref[Engine]", core) -> None:
    """The dispatcher thread. It holds the engine only weakly, between polls, so an engine
    nobody references (a dropped Model's) is collected: its finalizer shuts the core down,
    which wakes this poll, and the thread ends. A strong reference here would keep every
    engine, its model's weights and two threads alive for the life of the process."""
    while True:
        events = core.poll(_POLL_S)
        engine = ref()
        if engine is None:
            return
        if events:
            engine._deliver(events)
        elif engine._shut:
            engine._abandon_all()
            return
        del engine


# At exit, Python ends daemon threads as they take the GIL back; one inside the core's poll()
# would then unwind through C++ and abort the process. Engines left open close first.
_open_engines: "weakref.WeakSet[Engine]" = weakref.WeakSet()


@atexit.register
def _close_open_engines() -> None:
    for engine in list(_open_engines):
        engine.close()
