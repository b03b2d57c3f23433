"""The models a server answers for, one engine each, chosen by a request's `model`.

A model is loaded on its first request (not at start, so `llmos serve a b c` starts at once and
holds only what is used) and, with idle_unload, unloaded after that many seconds without a
request, as Ollama does. Loading runs in a worker thread; requests for a model that is loading
wait for it, requests for others go on.

A model that apps use is pinned: loaded at start, never unloaded, its engine made the Model's own
(Model.use_engine), so the apps' calls and the model routes' requests batch in one engine. A
model only apps use is held the same way but not listed (requests cannot name it)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import anyio

from llmos.runtime.engine import Engine
from llmos.runtime.load import load
from llmos.serve.api_errors import invalid


@dataclass
class Served:
    name: str
    model: Any = None
    engine: Any = None
    active: int = 0
    last_used: float = field(default_factory=time.monotonic)
    pinned: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ModelPool:
    def __init__(self, names: list[str], *, engine_factory: Callable, load_options: dict | None = None,
                 engine_options: dict | None = None, idle_unload: float | None = None):
        self._served = {n: Served(n) for n in names}
        self._unlisted: dict[str, Served] = {}
        self._engine_factory = engine_factory
        self._load_options = dict(load_options or {})
        self._engine_options = dict(engine_options or {})
        self.idle_unload = idle_unload

    def names(self) -> list[str]:
        return list(self._served)

    def engines(self) -> dict:
        return {s.name: s.engine for s in self._all() if s.engine is not None}

    def _all(self) -> list[Served]:
        return [*self._served.values(), *self._unlisted.values()]

    def pin(self, name: str):
        """The Model for `name`, loaded now (before the server starts) and kept: see the module
        docstring. `name` is matched to a served model by name, or by folder for paths."""
        s = self._served.get(self._served_name(name)) or self._unlisted.setdefault(name, Served(name))
        if s.engine is None:
            model = load(s.name, **self._load_options)
            s.engine = self._engine_factory(model, **self._engine_options)
            s.model = model
            if isinstance(s.engine, Engine):
                model.use_engine(s.engine)
        s.pinned = True
        return s.model

    def _served_name(self, name: str) -> str:
        if name in self._served:
            return name
        try:
            wanted = Path(name).resolve()
            return next((n for n in self._served if Path(n).exists() and Path(n).resolve() == wanted), name)
        except OSError:
            return name

    def _get(self, name: str) -> Served:
        s = self._served.get(name)
        if s is None:
            raise invalid(f"model: {name!r} is not served here; served: {', '.join(self._served)}",
                          param="model", code="model_not_found")
        return s

    async def model(self, name: str):
        """The loaded Model (for tokenize / detokenize), loading it if needed."""
        s = self._get(name)
        await self._ensure(s)
        return s.model

    async def acquire(self, name: str) -> Served:
        """The model, loaded, held for one request (not unloaded until release())."""
        s = self._get(name)
        s.active += 1
        try:
            await self._ensure(s)
        except BaseException:
            self.release(s)
            raise
        return s

    def release(self, s: Served) -> None:
        s.active -= 1
        s.last_used = time.monotonic()

    async def _ensure(self, s: Served) -> None:
        if s.engine is not None:
            return
        async with s.lock:
            if s.engine is None:
                model = await anyio.to_thread.run_sync(lambda: load(s.name, **self._load_options))
                s.engine = self._engine_factory(model, **self._engine_options)
                s.model = model
        s.last_used = time.monotonic()

    async def unload_idle(self) -> list[str]:
        """Closes the engines idle for idle_unload seconds; returns their names."""
        gone = []
        if self.idle_unload is None:
            return gone
        now = time.monotonic()
        for s in self._served.values():
            if s.engine is not None and not s.pinned and s.active == 0 and now - s.last_used >= self.idle_unload and not s.lock.locked():
                async with s.lock:
                    engine, s.engine, s.model = s.engine, None, None
                await anyio.to_thread.run_sync(engine.close)
                gone.append(s.name)
        return gone

    def close(self, drain_seconds: float = 0.0) -> None:
        for s in self._all():
            if s.engine is not None:
                s.engine.close(drain_seconds)
                s.engine = s.model = None
